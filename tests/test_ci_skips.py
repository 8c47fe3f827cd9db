"""The test session's own rules: under CI=true a skip fails unless it is
allow-listed (tests/conftest.py), and a failing property test is reported like
any other failure (pyproject.toml's filterwarnings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CI_ALLOWED_SKIPS, ci_allowed_skip

REPO = Path(__file__).resolve().parents[1]
PROBE = "tests/fixtures/skip_probe.py"


def run_probe(ci: str | None, probe: str = PROBE, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", *args, probe],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_under_ci_every_skip_not_allow_listed_fails() -> None:
    proc = run_probe("true")
    assert proc.returncode == 1, proc.stdout
    assert f"FAILED {PROBE}::test_plain_skip" in proc.stdout
    assert f"ERROR {PROBE}::test_marker_skip" in proc.stdout  # a skip at setup fails the setup
    assert "skipped under CI=true: a tool is missing" in proc.stdout
    assert "CI_ALLOWED_SKIPS" in proc.stdout
    assert f"SKIPPED [1] {PROBE}" in proc.stdout and "allowed to skip" in proc.stdout
    assert f"XFAIL {PROBE}::test_xfail" in proc.stdout
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in proc.stdout


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_control_outside_ci_a_skip_is_a_skip(ci: str | None) -> None:
    proc = run_probe(ci)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 3 skipped, 1 xfailed" in proc.stdout


def test_every_allow_listed_skip_says_why_and_names_a_real_file() -> None:
    for pattern, reason in CI_ALLOWED_SKIPS.items():
        assert len(reason.split()) >= 3, pattern
        assert (REPO / pattern.split("::")[0]).is_file(), pattern
    assert ci_allowed_skip("tests/fixtures/skip_probe.py::test_allowed_skip")
    assert ci_allowed_skip("tests/fixtures/skip_probe.py::test_plain_skip") is None


HYPOTHESIS_PROBE = "tests/fixtures/hypothesis_probe.py"


def test_a_hypothesis_failure_is_reported_and_the_session_goes_on() -> None:
    proc = run_probe(None, HYPOTHESIS_PROBE)
    assert "INTERNALERROR" not in proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "2 failed" in proc.stdout and "x=10," in proc.stdout  # the shrunk example


def test_control_without_the_ignore_a_hypothesis_failure_stops_the_session() -> None:
    """-W on the command line overrides pyproject's ignore: the INTERNALERROR is back
    (only while mypy_extensions' TypedDict warns; then this control has nothing to show)."""
    import importlib.util

    proc = run_probe(None, HYPOTHESIS_PROBE, "-W", "error::DeprecationWarning")
    if importlib.util.find_spec("mypy_extensions") is not None:
        assert "INTERNALERROR" in proc.stdout + proc.stderr and "mypy_extensions.TypedDict" in proc.stdout + proc.stderr
        assert "2 failed" not in proc.stdout

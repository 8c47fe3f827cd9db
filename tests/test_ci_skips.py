"""tests/conftest.py's hook: under CI=true a skip fails, unless it is allow-listed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CI_ALLOWED_SKIPS, ci_allowed_skip

REPO = Path(__file__).resolve().parents[1]
PROBE = "tests/fixtures/skip_probe.py"


def run_probe(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", PROBE],
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

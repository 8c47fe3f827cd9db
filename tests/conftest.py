"""Shared fixtures: an isolated HOME/DOCKER_CONFIG per test, and ways to run authscope."""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from authscope import cli
from tests.helpers import LOCAL_PASSWORD, TARGET_PASSWORD, write_config
from tests.privilege import reachable_dir  # noqa: F401 - a fixture, for tests that drop root

# -- under CI=true, a skip is a failure -------------------------------------------------
#
# A CI image that lost a tool, a privilege or a package must not go green by
# skipping what it cannot run. Under CI=true every skip fails its test, unless
# the test is listed here with the reason it may skip in CI. Patterns are
# fnmatch'ed against the node id (tests/file.py::test_name[param]). Selecting
# tests away (-m, --ignore, -k) is not skipping: a job that cannot run a suite
# deselects it in .gitlab-ci.yml, and tests/test_project_pipeline.py checks
# that every suite runs in some job.
CI_ALLOWED_SKIPS: dict[str, str] = {
    # The hook's own probe (tests/test_ci_skips.py runs it under CI=true): an
    # allow-listed skip stays a skip.
    "tests/fixtures/skip_probe.py::test_allowed_skip": "proves that an allow-listed skip stays a skip",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def ci_allowed_skip(nodeid: str) -> str | None:
    """The reason ``nodeid`` may skip under CI=true, or None."""
    for pattern, reason in CI_ALLOWED_SKIPS.items():
        if fnmatch.fnmatchcase(nodeid, pattern):
            return reason
    return None


def _skip_reason(report: Any) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return str(reason).removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return  # an expected failure (xfail) is reported as skipped too: not ours to judge
    if ci_allowed_skip(item.nodeid) is not None:
        return
    reason = _skip_reason(report)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI=true: {reason}\n"
        f"CI must run every test; install what it needs (scripts/install-deps.sh), or list "
        f"{item.nodeid!r} with a reason in CI_ALLOWED_SKIPS (tests/conftest.py)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    # A module that skips itself (pytest.importorskip, allow_module_level).
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and ci_allowed_skip(report.nodeid) is None:
        reason = _skip_reason(report)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true: {reason} (not in CI_ALLOWED_SKIPS, tests/conftest.py)"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment whose HOME, XDG_* and DOCKER_CONFIG all live in tmp_path."""
    home = tmp_path / "home"
    scopes = tmp_path / "scopes"
    for d in (home, scopes, tmp_path / "xdg-runtime", tmp_path / "xdg-config"):
        d.mkdir(mode=0o700)
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(tmp_path / "xdg-runtime"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "DOCKER_CONFIG": str(tmp_path / "base"),
        "AUTHSCOPE_SCOPE_DIR": str(scopes),
        "LOCAL_PASSWORD": LOCAL_PASSWORD,
        "TARGET_PASSWORD": TARGET_PASSWORD,
        "LANG": "C.UTF-8",
    }
    if "PYTHONPATH" in os.environ:
        environ["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return environ


@pytest.fixture
def base(env: dict[str, str]) -> Path:
    return Path(env["DOCKER_CONFIG"])


@pytest.fixture
def scopes(env: dict[str, str]) -> Path:
    return Path(env["AUTHSCOPE_SCOPE_DIR"])


@pytest.fixture
def main(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cli.main`` in-process with the isolated environment."""

    def call(*args: str, stdin: str | None = None) -> int:
        if stdin is not None:
            import io

            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return cli.main(list(args), environ=env)

    return call


@pytest.fixture
def logged_in(base: Path, env: dict[str, str], main: Any) -> Path:
    """A base holding the local registry's login (and a key tools don't know)."""
    write_config(base, {"auths": {}, "HttpHeaders": {"User-Agent": "authscope-tests"}, "x-unknown": [1, 2]})
    assert main("login", "gitlab.local:4567", "-u", "ci", "--password-env", "LOCAL_PASSWORD") == 0
    return base / "config.json"

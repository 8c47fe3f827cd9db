"""A restore is always reported (issue 12, item 2): exit 3, BASE INTEGRITY, and the reports name it.

Whatever else ended the command or the target — a failing command, a failed
target, a retry, a signal — a base entry the guard had to restore makes the
run exit 3 and says what was restored. Before this, a wipe followed by
`exit 1` was repaired silently and the job exited 1, and a signal made the
restore invisible (exit 143).
"""

from __future__ import annotations

import json
import signal
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from authscope import report as R
from tests.helpers import AUTHSCOPE, LOCAL_PASSWORD, TARGET_PASSWORD, read_json, run_authscope
from tests.test_report import report, result
from tests.test_scope import EXEC

WIPE_BASE = 'printf \'{"auths": {}}\' > "$BASE_CONFIG"'


def _env(env: dict[str, str], logged_in: Path) -> dict[str, str]:
    return dict(env, BASE_CONFIG=str(logged_in))


def _assert_restored(logged_in: Path, before: bytes, stderr: str) -> None:
    assert "BASE INTEGRITY" in stderr, stderr
    assert "auths entry 'gitlab.local:4567' was removed by a tool outside its scope; restored" in stderr
    assert read_json(logged_in) == json.loads(before)
    assert LOCAL_PASSWORD not in stderr and TARGET_PASSWORD not in stderr


def test_exec_wipe_then_failing_command_exits_3(logged_in: Path, env: dict[str, str]) -> None:
    before = logged_in.read_bytes()
    result = run_authscope(EXEC + ["sh", "-c", f"{WIPE_BASE}; exit 1"], _env(env, logged_in))
    assert result.returncode == 3, result.stderr
    _assert_restored(logged_in, before, result.stderr)


def test_exec_control_failing_command_without_a_wipe_keeps_its_code(logged_in: Path, env: dict[str, str]) -> None:
    """Control: the 3 above comes from the restore, not from the failure."""
    result = run_authscope(EXEC + ["sh", "-c", "exit 1"], _env(env, logged_in))
    assert result.returncode == 1, result.stderr
    assert "BASE INTEGRITY" not in result.stderr


def _exec_then_signal(script: str, env: dict[str, str], signum: int) -> tuple[int, str]:
    """Run `exec -- sh -c SCRIPT`; once SCRIPT prints its first line, signal authscope.
    (exit code, stderr)."""
    proc = subprocess.Popen(
        [*AUTHSCOPE, *EXEC, "sh", "-c", script],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_exec_wipe_then_signal_exits_3(logged_in: Path, env: dict[str, str], signum: int) -> None:
    """The command wipes the base, then authscope is signalled: the guard's
    restore is still reported, and outranks 128+N."""
    before = logged_in.read_bytes()
    code, stderr = _exec_then_signal(f"{WIPE_BASE}; echo wiped; sleep 30", _env(env, logged_in), signum)
    assert code == 3, stderr
    assert f"interrupted by signal {int(signum)}" in stderr
    _assert_restored(logged_in, before, stderr)


def test_exec_control_signal_without_a_wipe_exits_128_plus_n(logged_in: Path, env: dict[str, str]) -> None:
    code, stderr = _exec_then_signal("echo ready; sleep 30", _env(env, logged_in), signal.SIGTERM)
    assert code == 143, stderr
    assert "BASE INTEGRITY" not in stderr


# -- the fan-out's exit code and reports --------------------------------------------------------------

NOTE = "auths entry 'gitlab.local:4567' was removed by a tool outside its scope; restored"


@pytest.mark.parametrize(
    ("results", "kw"),
    [
        ([result("a", R.FAILED, error="copy failed", restored=(NOTE,))], {}),
        ([result("a", R.INTERRUPTED, restored=(NOTE,))], {"signal": 15}),
        ([result("a", R.INTERRUPTED)], {"signal": 2, "guard": (f"pull: {NOTE}",)}),
        ([result("a", R.FAILED, error="source")], {"source_digest": None, "guard": (f"pull: {NOTE}",)}),
    ],
    ids=["failed-target", "signal", "signal-pull", "failed-pull"],
)
def test_fanout_restore_outranks_failure_and_signal(
    results: list[R.Result], kw: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from authscope.cli import _fanout_exit

    rep = report(results, **kw)
    assert _fanout_exit(rep) == 3
    err = capsys.readouterr().err
    assert "BASE INTEGRITY" in err and NOTE in err


def test_reports_name_what_was_restored() -> None:
    rep = report([result("a", restored=(NOTE,)), result("b")], guard=(f"pull: {NOTE}",))
    doc = json.loads(R.to_json(rep))
    assert doc["restored"] == [f"pull: {NOTE}", f"a: {NOTE}"]
    assert doc["targets"][0]["restored"] == [NOTE] and doc["targets"][1]["restored"] == []

    root = ET.fromstring(R.junit(rep))
    cases = {c.get("name"): c for c in root.iter("testcase")}
    failure = cases["a"].find("failure")
    assert failure is not None and failure.get("type") == "base-integrity"
    assert NOTE in (failure.get("message") or "") and NOTE in (failure.text or "")
    assert cases["b"].find("failure") is None
    assert root.get("failures") == "1"

    table = R.summary_table(rep)
    assert "OK (BASE RESTORED)" in table and f"BASE INTEGRITY: a: {NOTE}" in table
    assert "AUTHSCOPE_BASE_RESTORED=true" in R.dotenv(rep)


def test_control_reports_of_an_intact_base_name_nothing() -> None:
    rep = report([result("a"), result("b")])
    assert json.loads(R.to_json(rep))["restored"] == []
    assert ET.fromstring(R.junit(rep)).get("failures") == "0"
    assert "BASE" not in R.summary_table(rep)
    assert "AUTHSCOPE_BASE_RESTORED=false" in R.dotenv(rep)

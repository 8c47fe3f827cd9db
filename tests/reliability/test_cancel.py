"""3. Cancel: SIGINT and SIGTERM in every phase of a real ``authscope fanout``, and sweep after SIGKILL.

Each run has 3 targets, 2 at a time, ``tool: custom`` against a fake
registry (tests/reliability/fakeregistry.py) that can hold a request:
- source: resolving the source's digest (before any target starts);
- preflight: a target's credentials check at /v2/ (before the copy);
- copy: the custom commands run (``exec sleep 60``), scopes open;
- verify: reading back a destination's digest, scopes open;
- report: every target failed with a long output tail; the test stops
  reading authscope's stdout, so printing the sections blocks on the pipe.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.reliability import measure

SIGNALS = [signal.SIGINT, signal.SIGTERM]
RUNNING_PHASES = ["source", "preflight", "copy", "verify"]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("phase", RUNNING_PHASES)
def test_signal_in_every_phase_removes_scopes_and_reports(phase: str, sig: int, tmp_path: Path) -> None:
    r = measure.cancel(tmp_path, phase, sig)
    print(r.line())
    assert r.exit_code == 128 + sig, r.stderr
    assert f"interrupted by signal {int(sig)}" in r.stderr
    assert r.scopes_left == 0, "a scope outlived the run"
    if phase in ("copy", "verify"):
        assert r.scopes_during == 2  # the signal did arrive while scopes were open
    assert r.base_unchanged
    assert r.children_left == 0
    assert r.json_status == "interrupted"
    assert set(r.statuses) == {"t1", "t2", "t3"}, "every target is accounted for"
    interrupted = [name for name, status in r.statuses.items() if status == "interrupted"]
    if phase == "verify":
        # Two targets took the two slots (whichever credential checks ended first:
        # a target starts when its own check is done, not in file order), copied,
        # were held in their read-back, and verified once the registry answered;
        # the third never started its copy.
        assert sorted(r.statuses.values()) == ["interrupted", "ok", "ok"], r.statuses
        (never,) = interrupted
        copied = set(re.findall(r"copied \S+/release/(t\d):", r.stdout))
        assert copied == set(r.statuses) - {never}, r.stdout
    else:
        assert sorted(interrupted) == ["t1", "t2", "t3"]
    assert r.junit_cases == 3 and r.junit_interrupted == len(interrupted)
    assert r.dotenv_written
    assert r.seconds_to_exit < 10


@pytest.fixture(scope="module", params=SIGNALS, ids=lambda s: signal.Signals(s).name)
def during_reporting(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> measure.Cancel:
    return measure.cancel(tmp_path_factory.mktemp("report"), "report", request.param)


def test_signal_during_reporting_still_writes_every_report(during_reporting: measure.Cancel) -> None:
    r = during_reporting
    print(r.line())
    assert r.scopes_left == 0 and r.base_unchanged and r.children_left == 0
    assert set(r.statuses) == {"t1", "t2", "t3"} and r.junit_cases == 3 and r.dotenv_written


def test_signal_during_reporting_exits_128_plus_n(during_reporting: measure.Cancel) -> None:
    assert during_reporting.exit_code == 128 + during_reporting.signal


def test_sweep_after_sigkill_removes_the_dead_runs_scopes_only(tmp_path: Path) -> None:
    r = measure.sweep_after_kill(tmp_path)
    print(r.line())
    assert r.scopes_of_killed == 2 and r.scopes_of_live == 2
    assert r.sweep_exit == 0 and r.swept == 2, r.sweep_stderr
    assert r.left_after_sweep == 2 and r.live_scopes_kept, "sweep touched a live run's scopes"
    assert r.live_exit == 143 and r.left_at_end == 0

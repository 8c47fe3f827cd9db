"""1. Concurrency: many processes log in, exec (a command that wipes its config) and log out on one base.

The main measurement calls authscope's own functions (``base.login``,
``scope.open_scope`` + ``run.run_captured``, ``base.logout``: what the CLI
commands call) from 16 separate processes: through the real CLI, 16 x 50
cycles are 2400 Python start-ups of ~0.21 s of CPU each, over 4 minutes on a
2-core runner. A smaller run through the real CLI (``python -m authscope``)
checks that the CLI path behaves the same. A reader process checks every
read of the base in between.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import measure
from tests.reliability.conftest import CLI_CYCLES, CLI_PROCS, CYCLES, PROCS


@pytest.mark.slow
def test_concurrent_login_exec_logout_lose_nothing(tmp_path: Path) -> None:
    r = measure.concurrency(tmp_path, PROCS, CYCLES, "cycle")
    print(r.line())
    assert r.errors == []
    assert r.logins == PROCS * CYCLES and r.execs == PROCS * CYCLES
    assert r.lost == set(), "committed entries went missing"
    assert r.resurrected == set(), "logged-out entries came back"
    assert r.false_restores == 0, "the guard restored what another authscope did legitimately"
    assert r.reads > 1000, "the reader hardly read: the check means nothing"
    assert r.broken_reads == 0 and r.reads_without_local == 0 and r.reads_without_keys == 0
    assert r.scopes_left == 0


@pytest.mark.slow
def test_concurrent_real_cli_lose_nothing(tmp_path: Path) -> None:
    r = measure.concurrency(tmp_path, CLI_PROCS, CLI_CYCLES, "cli")
    print(r.line())
    assert r.errors == []  # includes every exit 3 / "BASE INTEGRITY" (false restores)
    assert r.logins == CLI_PROCS * CLI_CYCLES and r.execs == CLI_PROCS * CLI_CYCLES
    assert r.lost == set() and r.resurrected == set() and r.false_restores == 0
    assert r.broken_reads == 0 and r.reads_without_local == 0
    assert r.scopes_left == 0


@pytest.mark.slow
def test_control_naive_writers_lose_entries_and_tear_reads(tmp_path: Path) -> None:
    """The same logins and logouts without a lock, written in place: the damage is visible."""
    r = measure.concurrency(tmp_path, PROCS, CYCLES, "naive")
    print(r.line())
    assert len(r.lost) + len(r.resurrected) > 0
    assert r.broken_reads > 0


@pytest.mark.slow
def test_control_authscope_without_its_lock_loses_entries(tmp_path: Path) -> None:
    """authscope's own login and logout with the lock a no-op: updates are lost."""
    r = measure.concurrency(tmp_path, PROCS, CYCLES, "nolock")
    print(r.line())
    assert len(r.lost) + len(r.resurrected) > 0


@pytest.mark.slow
def test_control_authscope_writing_in_place_tears_reads(tmp_path: Path) -> None:
    """authscope's own login and logout, locked, but rewriting the file in place: readers see torn files."""
    r = measure.concurrency(tmp_path, PROCS, CYCLES, "inplace")
    print(r.line())
    assert r.broken_reads > 0

"""2. Crash: SIGKILL processes at random points of their base writes.

Writers loop ``base.login`` of new entries and log each entry as committed
only after ``login()`` returned. After every kill the base must parse and
hold every committed entry; after all of them, the stale lock file must not
stop the next login.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import measure
from tests.reliability.conftest import KILLS


@pytest.mark.slow
def test_sigkill_during_base_writes_loses_nothing_committed(tmp_path: Path) -> None:
    r = measure.crash(tmp_path, kills=KILLS, writers=4)
    print(r.line())
    assert r.errors == []
    assert r.checks == KILLS + 1
    assert r.unparsable == 0, "a kill left a base that does not parse"
    assert r.lost == set(), "an entry committed before a kill was missing after it"
    assert r.journal_unparsable == 0
    # The kills really landed inside writes: most victims had a login under way.
    assert r.kills_mid_login >= KILLS // 2
    assert r.committed > 0


def test_stale_lock_does_not_wedge_the_next_login(tmp_path: Path) -> None:
    r = measure.crash(tmp_path, kills=10, writers=2, seed=7)
    assert r.lock_left  # the killed holders left their lock file behind ...
    assert r.login_after_ok and r.login_after_seconds < 5  # ... and it stops nobody (flock dies with its holder)

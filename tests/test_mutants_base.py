"""Base-guard behaviour that tests/test_base.py left unpinned (found by mutation testing,
benchmarks/mutation.py; docs/RELIABILITY.md "Mutation testing")."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from authscope import base as B
from authscope.errors import ConfigError

ENTRY = ("auths", "gitlab.local:4567")
VALUE = '{"auth":"Y2k6cGFzc3dvcmQ="}'


def test_a_damaged_journal_still_lets_the_guard_restore_a_removed_login() -> None:
    # A journal that does not parse only costs precision: a removed entry is put
    # back, never taken for a logout whose record was pruned.
    journal = B.parse_journal(b"{ not json")
    assert journal.pruned_through == 0
    snap = B.Snapshot(generation=0, config={}, values={ENTRY: VALUE})
    assert B.find_damage(snap, {}, journal) == [B.Damage(ENTRY, "removed", VALUE, True)]


def test_control_a_pruned_logout_is_not_resurrected() -> None:
    """Control: past the pruning horizon the same missing entry is "gone", not restored."""
    snap = B.Snapshot(generation=0, config={}, values={ENTRY: VALUE})
    damage = B.find_damage(snap, {}, B.Journal(5, {}, pruned_through=3))
    assert damage == [B.Damage(ENTRY, "gone", None, False)]


def test_a_leak_is_described_by_what_leaked() -> None:
    # Users read these under BASE INTEGRITY: the scope's marker and a target's
    # credentials copied into the base are told apart.
    marker = B.Damage(("auths", B.dc.SENTINEL), "leaked", None, True).describe()
    assert marker == (
        "auths entry 'authscope-scope.invalid', which only a scope's config holds, "
        "was written by a tool outside its scope; removed"
    )
    other = B.Damage(("auths", "harbor.example"), "leaked", None, True).describe()
    assert other == (
        "auths entry 'harbor.example' was written with this scope's target credentials "
        "by a tool outside its scope; removed"
    )


def test_a_removed_scope_marker_is_described_as_removed() -> None:
    # The marker's own wording is for a leak only: the same entry removed,
    # changed or lost is described by what happened to it.
    marker = ("auths", B.dc.SENTINEL)
    assert B.Damage(marker, "removed", VALUE, True).describe() == (
        "auths entry 'authscope-scope.invalid' was removed by a tool outside its scope; restored"
    )
    assert "cannot be restored from here" in B.Damage(marker, "lost", None, False).describe()


def test_a_base_made_a_directory_is_reported_not_a_guard_crash(logged_in: Path) -> None:
    # A tool replaced config.json by a directory: the guard's fast byte compare
    # must not raise; the full check says the login is gone.
    b = B.Base(str(logged_in.parent))
    snap = b.snapshot()
    logged_in.unlink()
    logged_in.mkdir()
    with pytest.raises(ConfigError):  # what the guard's fast path has to survive
        B.dc.read_bytes(str(logged_in))
    damage = b.check(snap)
    assert [(d.path, d.what) for d in damage if d.path == ENTRY] == [(ENTRY, "removed")]


def test_a_leak_into_a_base_that_had_no_file_is_removed_privately(base: Path) -> None:
    # No config.json when the scope opened; a tool creates one world-readable
    # with a target's credentials. The guard removes them and leaves a file
    # only the owner can read (0600, the mode of a new base file).
    base.mkdir()
    b = B.Base(str(base))
    snap = b.snapshot()
    assert snap.mode is None
    secret = "cm9ib3Q6dGFyZ2V0LXNlY3JldA=="
    path = base / "config.json"
    old = os.umask(0o022)
    try:
        path.write_text(json.dumps({"auths": {"harbor.example": {"auth": secret}}}))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    damage = b.check(snap, leaks=[secret])
    assert [(d.path, d.what) for d in damage] == [(("auths", "harbor.example"), "leaked")]
    assert secret not in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600


def test_prune_keeps_the_newest_records_and_drops_logouts_first() -> None:
    # KEEP_ABSENT records of absent entries stay; what goes is the oldest
    # logouts, never the record of a login a tool removed while one is left.
    entries: dict[B.EntryPath, tuple[int, str | None]] = {
        ("auths", f"r{i:03d}.example"): (i + 1, None) for i in range(B.KEEP_ABSENT + 4)
    }
    entries[("auths", "removed-by-a-tool.example")] = (1, "f" * 64)
    entries[ENTRY] = (2, "e" * 64)  # present: never pruned
    horizon = B.prune(entries, {ENTRY}, 0)
    assert horizon == 5  # the newest generation dropped
    assert len(entries) == B.KEEP_ABSENT + 1
    assert [p for p in [("auths", f"r{i:03d}.example") for i in range(6)] if p in entries] == [
        ("auths", "r005.example")
    ]
    assert ("auths", "removed-by-a-tool.example") in entries and ENTRY in entries


def test_an_entry_rewritten_with_its_keys_in_another_order_is_not_damage(logged_in: Path) -> None:
    # A tool that rewrites the base (docker login of another registry) may
    # reorder an entry's keys: the same login, nothing to restore or report.
    b = B.Base(str(logged_in.parent))
    cfg = json.loads(logged_in.read_text())
    cfg["auths"]["gitlab.local:4567"] = {"email": "ci@example.invalid", **cfg["auths"]["gitlab.local:4567"]}
    logged_in.write_text(json.dumps(cfg))
    snap = b.snapshot()
    cfg["auths"]["gitlab.local:4567"] = dict(reversed(list(cfg["auths"]["gitlab.local:4567"].items())))
    logged_in.write_text(json.dumps(cfg, indent=2))
    assert b.check(snap) == []
    cfg["auths"]["gitlab.local:4567"]["email"] = "other@example.invalid"  # control: a changed value is damage
    logged_in.write_text(json.dumps(cfg))
    assert [d.what for d in b.check(snap)] == ["changed"]


def test_a_restore_into_a_base_that_parses_keeps_no_corrupt_copy(logged_in: Path) -> None:
    # The forensic copy is for a base a tool left unparseable; a removed login
    # in a valid file is restored without one.
    b = B.Base(str(logged_in.parent))
    snap = b.snapshot()
    cfg = json.loads(logged_in.read_text())
    del cfg["auths"]["gitlab.local:4567"]
    logged_in.write_text(json.dumps(cfg))
    assert [d.what for d in b.check(snap)] == ["removed"]
    assert not [p for p in os.listdir(logged_in.parent) if ".corrupt-" in p]
    logged_in.write_text("{ not json")  # control: an unparseable one is kept
    assert b.check(snap)
    assert len([p for p in os.listdir(logged_in.parent) if ".corrupt-" in p]) == 1


def test_a_base_login_with_the_targets_own_credentials_is_not_a_leak() -> None:
    # A target may use the very login the base holds (the job's registry, the
    # same token): that entry, unchanged since the scope opened, is the base's
    # own, not a leak. The snapshot and the guard each read the file, so the
    # equal values are distinct strings: compared by value, not identity.
    text = '{"auths": {"gitlab.local:4567": {"auth": "Y2k6cGFzc3dvcmQ="}}}'
    snap_values, current = B.flatten(json.loads(text)), B.flatten(json.loads(text))
    assert snap_values[ENTRY] is not current[ENTRY] and snap_values[ENTRY] == current[ENTRY]
    snap = B.Snapshot(generation=0, config=json.loads(text), values=snap_values)
    leaks = ["Y2k6cGFzc3dvcmQ="]
    assert B.find_damage(snap, current, B.Journal(0, {}), leaks) == []
    # control: the same credentials written for another registry are a leak
    current[("auths", "harbor.example")] = current[ENTRY]
    assert B.find_damage(snap, current, B.Journal(0, {}), leaks) == [
        B.Damage(("auths", "harbor.example"), "leaked", None, True)
    ]

"""Base-guard behaviour that tests/test_base.py left unpinned (found by mutation testing,
benchmarks/mutation.py; docs/RELIABILITY.md "Mutation testing")."""

from __future__ import annotations

from authscope import base as B

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

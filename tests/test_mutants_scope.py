"""Scope behaviour that tests/test_scope.py left unpinned (found by mutation testing,
benchmarks/mutation.py; docs/RELIABILITY.md "Mutation testing")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from authscope.errors import ScopeError
from authscope.scope import Scope, check_root, make_scope_dir
from tests.privilege import as_unprivileged


def test_reset_accepts_its_directory_for_a_user_whose_uid_is_not_a_small_number(reachable_dir: Path) -> None:
    # Run as nobody (uid 65534) when the tests run as root: the owner check compares
    # uids by value, so it holds for any uid, not only for root's 0 (which Python caches).
    scope = Scope(str(reachable_dir / "scope"), False, b'{"auths": {}}')

    def reset_and_read() -> tuple[int, bytes]:
        scope.reset()
        return os.stat(scope.path).st_uid, Path(scope.config_file).read_bytes()

    outcome, value = as_unprivileged(reset_and_read)
    assert outcome == "returned", value
    uid, config = value
    assert uid > 256 or os.geteuid() != 0
    assert config == b'{"auths": {}}'


def test_control_reset_refuses_a_directory_of_another_user() -> None:
    """Control: the same unprivileged reset of a directory root owns ("/") is refused, untouched."""
    outcome, value = as_unprivileged(Scope("/", False, b"{}").reset)
    assert outcome == "raised" and "was replaced by something that is not this scope's directory" in value
    assert not os.path.exists("/config.json")


def test_a_scope_root_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    below_a_file = tmp_path / "file" / "scopes"
    with pytest.raises(ScopeError) as info:
        check_root(str(below_a_file))
    assert str(info.value) == f"scope directory {below_a_file}: Not a directory"
    with pytest.raises(ScopeError) as info:
        check_root("/proc/self/no-such-entry/scopes")  # /proc takes no new directories, even from root
    assert "cannot create it:" in str(info.value)


def test_make_scope_dir_draws_a_new_name_when_one_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([b"\x01" * 6, b"\x01" * 6, b"\x02" * 6])
    monkeypatch.setattr(os, "urandom", lambda n: next(draws))
    first = make_scope_dir(str(tmp_path))
    second = make_scope_dir(str(tmp_path))  # the first draw collides with `first`
    assert first.endswith("010101010101") and second.endswith("020202020202")
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(first), os.path.basename(second)])

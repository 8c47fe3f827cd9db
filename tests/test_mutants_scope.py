"""Scope behaviour that tests/test_scope.py left unpinned (found by mutation testing,
benchmarks/mutation.py; docs/RELIABILITY.md "Mutation testing")."""

from __future__ import annotations

import os
from pathlib import Path

from authscope.scope import Scope
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

"""Scope behaviour that tests/test_scope.py left unpinned (found by mutation testing,
benchmarks/mutation.py; docs/RELIABILITY.md "Mutation testing")."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from authscope.errors import ScopeError
from authscope.scope import Scope, check_root, make_scope_dir, own_directories, process_start, remove_tree
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


def test_process_start_is_the_start_time_in_clock_ticks() -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    ours = process_start(os.getpid())
    child = subprocess.Popen(["sleep", "5"])
    try:
        theirs = process_start(child.pid)
    finally:
        child.kill()
        child.wait()
    # Since boot, in ticks: at most the uptime, and a child starts no earlier than us.
    assert 0 < ours <= theirs <= (uptime + 10) * ticks


def test_own_directories_passes_over_a_root_that_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "authscope-x").mkdir()
    found = list(own_directories([str(tmp_path / "missing"), str(tmp_path)], lambda name: name or None))
    assert [path for path, _ in found] == [str(tmp_path / "authscope-x")]


def test_an_unprivileged_owner_removes_a_scope_with_locked_directories(reachable_dir: Path) -> None:
    # `chmod 000` / `chmod 500` left by a command: the owner gives itself rwx back and removes all.
    def make_and_remove() -> tuple[list[str], bool]:
        scope = reachable_dir / "scope"
        for sub in ("none", "readonly"):
            (scope / sub / "inner").mkdir(parents=True)
            (scope / sub / "inner" / "file").write_text("x")
        (scope / "none").chmod(0o000)
        (scope / "readonly").chmod(0o500)
        return remove_tree(str(scope)), scope.exists()

    assert as_unprivileged(make_and_remove) == ("returned", ([], False))


def test_shims_are_never_written_through_a_link_planted_after_the_unlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A command racing the reset plants a link at a shim's name between its unlink and its open.
    scope = Scope(str(tmp_path / "scope"), False, b"{}")
    scope.reset()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    real_unlink = os.unlink

    def unlink_then_plant(path: str, *args: object, **kwargs: object) -> None:
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]
        if str(path).endswith("docker-credential-desktop"):
            os.symlink(victim, path)

    monkeypatch.setattr(os, "unlink", unlink_then_plant)
    with pytest.raises(ScopeError, match="cannot lay config.json afresh"):
        scope.reset()
    monkeypatch.undo()
    assert victim.read_text() == "precious"

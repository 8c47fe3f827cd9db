"""dockerconfig behaviour that tests/test_dockerconfig.py left unpinned (found by mutation
testing, benchmarks/mutation.py; docs/RELIABILITY.md "Mutation testing")."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from authscope import dockerconfig as dc
from authscope.errors import BaseWriteError, ConfigError


class _Blocked(Exception):
    pass


@pytest.fixture
def alarm() -> Iterator[None]:
    """SIGALRM after 3 s raises _Blocked: a call that would block forever fails the test instead."""

    def fire(signum: int, frame: FrameType | None) -> None:
        raise _Blocked

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(3)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_a_fifo_in_place_of_config_json_is_refused_without_waiting_for_a_writer(tmp_path: Path, alarm: None) -> None:
    path = tmp_path / "config.json"
    os.mkfifo(path)
    with pytest.raises(ConfigError, match="FIFO"):
        dc.read_bytes(str(path))


def test_control_a_plain_open_of_the_fifo_blocks(tmp_path: Path, alarm: None) -> None:
    """Control: without O_NONBLOCK the same open waits for a writer that never comes."""
    path = tmp_path / "config.json"
    os.mkfifo(path)
    with pytest.raises(_Blocked):
        os.close(os.open(path, os.O_RDONLY))


def _dead_pid_below(pid: int) -> int:
    for candidate in range(pid - 1, 1, -1):
        if not os.path.exists(f"/proc/{candidate}"):
            return candidate
    raise AssertionError("no free pid below ours")


def test_stale_temps_of_dead_writers_are_removed_whatever_their_pid(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{}")
    lower, higher = _dead_pid_below(os.getpid()), os.getpid() + 1
    while os.path.exists(f"/proc/{higher}"):
        higher += 1
    dead = [tmp_path / f".config.json.{pid}.{'a' * 12}.tmp" for pid in (lower, higher)]
    ours = tmp_path / f".config.json.{os.getpid()}.{'b' * 12}.tmp"  # a write of this process, under way
    for f in [*dead, ours]:
        f.write_text("partial")
    dc.remove_stale_temps(str(path))
    assert [f.exists() for f in dead] == [False, False]
    assert ours.exists() and path.read_text() == "{}"


def test_interrupt_right_after_the_rename_keeps_the_new_file_and_the_interrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C arriving just after os.replace renamed the temp file: the cleanup finds
    # no temp file to remove, and must neither fail on that nor hide the interrupt.
    path = tmp_path / "config.json"
    path.write_text('{"old": 1}')
    real_replace = os.replace

    def replace_then_interrupted(src: str, dst: str) -> None:
        real_replace(src, dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        dc.write_atomic(str(path), b'{"new": 1}')
    monkeypatch.undo()
    assert path.read_text() == '{"new": 1}'
    assert os.listdir(tmp_path) == ["config.json"]


@pytest.mark.parametrize(
    "host", ["127.attacker.example", "127.0.0.1.nip.io:5000", "1e100.net", "[::1", "[::1]x", "::ffff:127.0.0.1"]
)
def test_names_that_only_look_like_loopback_literals_are_not_loopback(host: str) -> None:
    # Only literals count: these resolve wherever their owner wants, and a loopback
    # registry would get plain HTTP.
    assert dc.is_loopback(host) is False


@pytest.mark.parametrize("host", ["[::1]:5000", "::1", "LOCALHOST"])
def test_ipv6_and_uppercase_loopback_literals_are_loopback(host: str) -> None:
    assert dc.is_loopback(host) is True


def _plant_link_at_the_temp_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A link at the very temp name write_atomic will pick (its random part made known), to a victim file."""
    path, victim = tmp_path / "config.json", tmp_path / "victim"
    path.write_text('{"old": 1}')
    victim.write_text("precious")
    monkeypatch.setattr(os, "urandom", lambda n: b"\x01" * n)
    (tmp_path / f".config.json.{os.getpid()}.{'01' * 6}.tmp").symlink_to(victim)
    return path, victim


def test_write_atomic_never_writes_through_a_link_planted_at_its_temp_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, victim = _plant_link_at_the_temp_name(tmp_path, monkeypatch)
    with pytest.raises(BaseWriteError):
        dc.write_atomic(str(path), b'{"new": 1}')
    assert victim.read_text() == "precious"
    assert path.read_text() == '{"old": 1}'


def test_control_an_open_without_excl_and_nofollow_writes_through_the_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: the same temp name opened with O_CREAT alone writes into the victim."""
    path, victim = _plant_link_at_the_temp_name(tmp_path, monkeypatch)
    fd = os.open(tmp_path / f".config.json.{os.getpid()}.{'01' * 6}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, b'{"new": 1}')
    os.close(fd)
    assert victim.read_text() == '{"new": 1}'


def test_a_temp_file_of_another_live_writer_is_kept(tmp_path: Path) -> None:
    # Another process (not us) is writing: its temp file is the one it will
    # rename into place, so the sweep of stale temps must leave it alone.
    path = tmp_path / "config.json"
    writer = subprocess.Popen(["sleep", "30"])
    try:
        live = tmp_path / f".config.json.{writer.pid}.{'d' * 12}.tmp"
        live.write_text("partial")
        dc.remove_stale_temps(str(path))
        assert live.exists()
    finally:
        writer.kill()
        writer.wait()
    dc.remove_stale_temps(str(path))  # control: once its writer is gone, the same file goes
    assert not live.exists()


@pytest.mark.parametrize("mode", [0o751, 0o6640, 0o1604])
def test_a_rewrite_keeps_every_permission_bit_of_the_file(tmp_path: Path, mode: int) -> None:
    # The owner chose the base's mode (shared with a group, o+x, setgid, the
    # sticky bit): a rewrite keeps all twelve bits, not only the usual ones.
    path = tmp_path / "config.json"
    path.write_text("{}")
    path.chmod(mode)
    assert dc.file_mode(str(path)) == mode
    dc.write_atomic(str(path), b'{"auths": {}}\n', dc.file_mode(str(path)))
    assert os.stat(path).st_mode & 0o7777 == mode
    assert dc.file_mode(str(tmp_path / "missing")) == 0o600  # control: no file, the private default

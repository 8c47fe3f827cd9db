"""Invariant 3 (safe base writes) and invariant 1 (the guard), with controls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from authscope import base as B
from authscope import dockerconfig as dc
from authscope.errors import ConfigError
from tests.helpers import AUTHSCOPE, LOCAL_PASSWORD, read_json, run_authscope, write_config


def test_login_creates_private_file_in_private_dir(base: Path, main: Any) -> None:
    assert main("login", "https://gitlab.local:4567/", "-u", "ci", "--password-env", "LOCAL_PASSWORD") == 0
    assert base.stat().st_mode & 0o777 == 0o700
    cfg_path = base / "config.json"
    assert cfg_path.stat().st_mode & 0o777 == 0o600
    assert read_json(cfg_path) == {"auths": {"gitlab.local:4567": dc.auth_entry("ci", LOCAL_PASSWORD)}}


def test_login_keeps_unknown_keys_and_mode(base: Path, main: Any) -> None:
    path = write_config(base, {"auths": {"other": {"auth": "eDp5"}}, "x-tool": {"a": [1]}, "proxies": {}}, mode=0o640)
    assert main("login", "gitlab.local:4567", "-u", "ci", "--password-stdin", stdin=LOCAL_PASSWORD + "\n") == 0
    cfg = read_json(path)
    assert cfg["x-tool"] == {"a": [1]} and cfg["proxies"] == {}
    assert cfg["auths"]["other"] == {"auth": "eDp5"}
    assert cfg["auths"]["gitlab.local:4567"] == dc.auth_entry("ci", LOCAL_PASSWORD)
    assert path.stat().st_mode & 0o777 == 0o640


def test_logout_removes_every_spelling_and_nothing_else(base: Path, main: Any) -> None:
    path = write_config(
        base,
        {"auths": {"h:5000": {}, "https://h:5000": {}, "http://h:5000/v1/": {}, "h:5001": {}, "keep": {}}},
    )
    assert main("logout", "h:5000") == 0
    assert read_json(path) == {"auths": {"h:5001": {}, "keep": {}}}


def test_logout_of_absent_entry_does_not_write(base: Path, main: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(base, {"auths": {"keep": {}}})
    before = path.stat().st_mtime_ns, path.read_bytes()
    assert main("logout", "absent.example") == 0
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before
    assert "nothing to do" in capsys.readouterr().err


@pytest.mark.parametrize("garbage", [b'{"auths": {', b"\x00\x01binary", b'\xef\xbb\xbf{"auths":{}}', b'{"auths": 3}'])
def test_corrupt_base_refused_and_left_byte_for_byte(
    base: Path, main: Any, garbage: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    base.mkdir()
    path = base / "config.json"
    path.write_bytes(garbage)
    for args in (["login", "x.example", "-u", "u", "--password-env", "LOCAL_PASSWORD"], ["logout", "x.example"]):
        assert main(*args) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "left as it is" in err
        assert "Traceback" not in err
    assert path.read_bytes() == garbage
    # Nothing was written beside it: no journal, no temp file. (The lock file
    # is made before the read, so it may be there; its effect is tested below.)
    assert set(os.listdir(base)) - {"config.json.lock"} == {"config.json"}


def test_control_login_that_starts_empty_loses_a_corrupt_base(
    base: Path, main: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: authscope with its refusal switched off (the usual `load or start
    empty`) destroys what it can't parse."""
    base.mkdir()
    path = base / "config.json"
    path.write_bytes(b'{"auths": {"keep": {}}, }')  # one stray comma
    read_config = dc.read_config

    def load_or_start_empty(p: str) -> Any:
        try:
            return read_config(p)
        except ConfigError:
            return None, {}

    monkeypatch.setattr(dc, "read_config", load_or_start_empty)
    assert main("login", "x.example", "-u", "u", "--password-env", "LOCAL_PASSWORD") == 0
    assert "keep" not in path.read_text()


def test_symlinked_config_written_through_to_its_target(base: Path, tmp_path: Path, main: Any) -> None:
    target = tmp_path / "dotfiles" / "docker.json"
    target.parent.mkdir()
    target.write_text('{"auths": {"keep": {}}}')
    base.mkdir()
    (base / "config.json").symlink_to(target)
    assert main("login", "x.example", "-u", "u", "--password-env", "LOCAL_PASSWORD") == 0
    assert (base / "config.json").is_symlink()
    assert set(read_json(target)["auths"]) == {"keep", "x.example"}
    # That the lock guards the real file: test_logins_through_two_links_to_one_file_lose_nothing.


def test_dangling_symlink_refused(base: Path, tmp_path: Path, main: Any, capsys: pytest.CaptureFixture[str]) -> None:
    base.mkdir()
    (base / "config.json").symlink_to(tmp_path / "nowhere.json")
    assert main("login", "x.example", "-u", "u", "--password-env", "LOCAL_PASSWORD") == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nowhere.json").exists()


# -- concurrency: real processes ------------------------------------------------------

WRITERS, ROUNDS = 6, 8

# Each writer logs in ROUNDS registries of its own through base.login, all
# writers released at once (a go file) after their imports. LOCK selects the
# lock: "real" is authscope's; "none" replaces it with a no-op (the protection
# switched off); "beside-link" takes it in the directory that holds the
# config.json link instead of beside the file the link points to.
AUTHSCOPE_WRITER = """
import contextlib, os, sys, time
import filelock
from authscope import base
directory, name, rounds, go, lock = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
if lock == "none":
    base.Base._locked = lambda self: contextlib.nullcontext()
elif lock == "beside-link":
    init = base.Base.__init__
    def beside_link(self, directory):
        init(self, directory)
        self.lock_path = os.path.join(directory, "config.json.lock")
    base.Base.__init__ = beside_link
while not os.path.exists(go):
    time.sleep(0.001)
for i in range(rounds):
    base.login(directory, f"{name}-{i}.example", {"auth": "eDp5"})
"""


def _race(directories: list[Path], env: dict[str, str], tmp: Path, lock: str = "real") -> list[int]:
    """Run WRITERS writers (spread over ``directories``) at once; their exit codes."""
    go = tmp / f"go-{lock}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                AUTHSCOPE_WRITER,
                str(directories[n % len(directories)]),
                f"w{n}",
                str(ROUNDS),
                str(go),
                lock,
            ],
            env=env,
        )
        for n in range(WRITERS)
    ]
    time.sleep(0.5)  # every writer has started and is waiting for the go
    go.touch()
    return [p.wait(timeout=120) for p in procs]


def test_concurrent_logins_lose_nothing(base: Path, env: dict[str, str], tmp_path: Path) -> None:
    path = write_config(base, {"auths": {}})
    assert _race([base], env, tmp_path) == [0] * WRITERS
    assert len(read_json(path)["auths"]) == WRITERS * ROUNDS


def test_control_logins_without_the_lock_lose_entries(base: Path, env: dict[str, str], tmp_path: Path) -> None:
    """Control: the same logins with authscope's lock replaced by a no-op lose some."""
    path = write_config(base, {"auths": {}})
    assert _race([base], env, tmp_path, lock="none") == [0] * WRITERS
    assert len(read_json(path)["auths"]) < WRITERS * ROUNDS


def test_logins_through_two_links_to_one_file_lose_nothing(env: dict[str, str], tmp_path: Path) -> None:
    """Two base directories whose config.json links to one file: the lock is the real file's."""
    real = tmp_path / "dotfiles" / "docker.json"
    real.parent.mkdir()
    real.write_text('{"auths": {}}')
    links = [tmp_path / "job-a", tmp_path / "job-b"]
    for d in links:
        d.mkdir()
        (d / "config.json").symlink_to(real)
    assert _race(links, env, tmp_path) == [0] * WRITERS
    assert len(read_json(real)["auths"]) == WRITERS * ROUNDS
    # Control: a lock taken beside each link lets the two directories race.
    real.write_text('{"auths": {}}')
    assert _race(links, env, tmp_path, lock="beside-link") == [0] * WRITERS
    assert len(read_json(real)["auths"]) < WRITERS * ROUNDS


# -- the guard -----------------------------------------------------------------------


def _snap_and_base(path: Path) -> tuple[B.Base, B.Snapshot]:
    b = B.Base(str(path.parent))
    return b, b.snapshot()


def test_guard_restores_removed_and_changed_entries(logged_in: Path) -> None:
    b, snap = _snap_and_base(logged_in)
    original = logged_in.read_bytes()
    cfg = read_json(logged_in)
    cfg["auths"]["gitlab.local:4567"] = {"auth": "ZXZpbDpldmls"}
    del cfg["x-unknown"]
    logged_in.write_text(json.dumps(cfg))
    damage = b.check(snap)
    assert {(d.path, d.what) for d in damage} == {
        (("auths", "gitlab.local:4567"), "changed"),
        (("", "x-unknown"), "removed"),
    }
    assert read_json(logged_in) == json.loads(original)


def test_guard_restores_a_deleted_or_corrupted_base(logged_in: Path) -> None:
    b, snap = _snap_and_base(logged_in)
    before = read_json(logged_in)
    logged_in.write_text("{ this is not json")
    assert b.check(snap)
    assert read_json(logged_in) == before
    kept = [p for p in os.listdir(logged_in.parent) if ".corrupt-" in p]
    assert len(kept) == 1  # what the tool left is kept for forensics
    logged_in.unlink()
    assert b.check(snap)
    assert read_json(logged_in) == before


def test_guard_removes_target_credentials_leaked_into_base(logged_in: Path) -> None:
    b, snap = _snap_and_base(logged_in)
    leaked = dc.auth_entry("robot$p+ci", "target-secret-zz")
    cfg = read_json(logged_in)
    cfg["auths"]["harbor.x"] = leaked
    logged_in.write_text(json.dumps(cfg))
    damage = b.check(snap, leaks=[leaked["auth"]])
    assert [(d.path, d.what) for d in damage] == [(("auths", "harbor.x"), "leaked")]
    assert "harbor.x" not in read_json(logged_in)["auths"]


def test_guard_is_silent_when_nothing_changed(logged_in: Path) -> None:
    b, snap = _snap_and_base(logged_in)
    before = logged_in.stat().st_mtime_ns
    assert b.check(snap) == []
    assert logged_in.stat().st_mtime_ns == before


def test_guard_accepts_changes_another_authscope_made(logged_in: Path) -> None:
    b, snap = _snap_and_base(logged_in)
    B.logout(str(logged_in.parent), "gitlab.local:4567")
    B.login(str(logged_in.parent), "new.example", {"auth": "bmV3Om5ldw=="})
    assert b.check(snap) == []
    assert set(read_json(logged_in)["auths"]) == {"new.example"}


def test_control_guard_without_journal_resurrects_legit_logout(logged_in: Path) -> None:
    """Control: a plain snapshot diff can't tell a legit logout from damage."""
    b, snap = _snap_and_base(logged_in)
    B.logout(str(logged_in.parent), "gitlab.local:4567")
    current = B.flatten(read_json(logged_in))
    assert B.find_damage(snap, current, B.Journal(0, {}))  # would restore it
    assert not B.find_damage(snap, current, b.read_journal())


def test_guard_reports_entry_damaged_after_a_legit_change(logged_in: Path) -> None:
    b, snap = _snap_and_base(logged_in)
    B.login(str(logged_in.parent), "gitlab.local:4567", {"auth": "bmV3Om5ldw=="})
    cfg = read_json(logged_in)
    del cfg["auths"]["gitlab.local:4567"]
    logged_in.write_text(json.dumps(cfg))
    damage = b.check(snap)
    assert [(d.path, d.what, d.restorable) for d in damage] == [(("auths", "gitlab.local:4567"), "lost", False)]
    assert "authscope login" in damage[0].describe()


def test_damaged_journal_errs_on_keeping_the_base() -> None:
    assert B.parse_journal(b"not json") == B.Journal(0, {})
    assert B.parse_journal(b'{"generation": 1, "entries": [{"section": 1}]}') == B.Journal(0, {})


HOLD = 'while [ ! -e "$GO" ]; do sleep 0.05; done; touch "$DONE"'


def _open_scope_and_hold(env: dict[str, str], tmp: Path, name: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    henv = dict(env, GO=str(tmp / f"{name}.go"), DONE=str(tmp / f"{name}.done"))
    proc = subprocess.Popen(
        AUTHSCOPE
        + [
            "exec",
            "--registry",
            "harbor.x",
            "-u",
            "robot$p+ci",
            "--password-env",
            "TARGET_PASSWORD",
            "--",
            "sh",
            "-c",
            HOLD,
        ],
        env=henv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not any(Path(env["AUTHSCOPE_SCOPE_DIR"]).iterdir()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    return proc, henv


def test_concurrent_authscope_logout_is_not_resurrected(logged_in: Path, env: dict[str, str], tmp_path: Path) -> None:
    """Two jobs, one base: job B logs out and logs in while job A's scope is open."""
    a, aenv = _open_scope_and_hold(env, tmp_path, "a")
    assert run_authscope(["logout", "gitlab.local:4567"], env).returncode == 0
    assert run_authscope(["login", "other.example", "-u", "u", "--password-env", "LOCAL_PASSWORD"], env).returncode == 0
    Path(aenv["GO"]).touch()
    out, err = a.communicate(timeout=60)
    assert a.returncode == 0, err
    assert "BASE INTEGRITY" not in err
    assert set(read_json(logged_in)["auths"]) == {"other.example"}


def test_control_concurrent_naive_logout_is_restored(logged_in: Path, env: dict[str, str], tmp_path: Path) -> None:
    """Control: the same logout by a tool that bypasses authscope is damage."""
    a, aenv = _open_scope_and_hold(env, tmp_path, "a")
    cfg = read_json(logged_in)
    del cfg["auths"]["gitlab.local:4567"]
    logged_in.write_text(json.dumps(cfg))
    Path(aenv["GO"]).touch()
    out, err = a.communicate(timeout=60)
    assert a.returncode == 3
    assert "gitlab.local:4567" in err and "restored" in err
    assert LOCAL_PASSWORD not in err
    assert "gitlab.local:4567" in read_json(logged_in)["auths"]


def test_many_scopes_and_writers_at_once(logged_in: Path, env: dict[str, str], tmp_path: Path) -> None:
    """Four scopes open while another process logs in and out repeatedly: no false restores."""
    holders = [_open_scope_and_hold(env, tmp_path, f"h{i}") for i in range(4)]
    for i in range(5):
        assert (
            run_authscope(["login", f"r{i}.example", "-u", "u", "--password-env", "LOCAL_PASSWORD"], env).returncode
            == 0
        )
        if i % 2:
            assert run_authscope(["logout", f"r{i - 1}.example"], env).returncode == 0
    for _, henv in holders:
        Path(henv["GO"]).touch()
    for proc, _ in holders:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "BASE INTEGRITY" not in err, err
    assert set(read_json(logged_in)["auths"]) == {"gitlab.local:4567", "r1.example", "r3.example", "r4.example"}
    assert not list(Path(env["AUTHSCOPE_SCOPE_DIR"]).iterdir())


@pytest.mark.parametrize("garbage", [b"{", b"\xef\xbb\xbf{}", b'{"auths": 3}', b"\xff\xfe"])
def test_parse_error_is_not_a_guard_crash(logged_in: Path, garbage: bytes) -> None:
    """A base a tool left unparseable: the guard restores it instead of raising."""
    b, snap = _snap_and_base(logged_in)
    before = read_json(logged_in)
    logged_in.write_bytes(garbage)
    with pytest.raises(ConfigError):  # what the guard has to survive
        dc.read_config(str(logged_in))
    damage = b.check(snap)
    assert ("auths", "gitlab.local:4567") in {d.path for d in damage}
    assert read_json(logged_in) == before


def test_parse_error_on_an_empty_snapshot_is_not_a_guard_crash(base: Path) -> None:
    """Nothing to restore (the base had no file), and a tool wrote garbage: no crash, nothing written."""
    base.mkdir()
    b, snap = B.Base(str(base)), B.Base(str(base)).snapshot()
    (base / "config.json").write_bytes(b"{")
    assert b.check(snap) == []
    assert (base / "config.json").read_bytes() == b"{"


def test_guard_narrows_a_widened_mode_and_restores_privately(logged_in: Path) -> None:
    b, snap = _snap_and_base(logged_in)
    logged_in.chmod(0o644)  # content untouched, permissions widened
    damage = b.check(snap)
    assert [d.what for d in damage] == ["mode"] and "0644" in damage[0].describe()
    assert logged_in.stat().st_mode & 0o777 == 0o600
    # A tool that recreates the file world-readable and empty: the login comes
    # back, in a file only the owner can read.
    logged_in.unlink()
    old = os.umask(0o022)
    try:
        logged_in.write_text('{"auths": {}}')
    finally:
        os.umask(old)
    assert logged_in.stat().st_mode & 0o777 == 0o644
    assert b.check(snap)
    assert "gitlab.local:4567" in read_json(logged_in)["auths"]
    assert logged_in.stat().st_mode & 0o777 == 0o600


def test_next_locked_write_removes_temp_files_of_killed_writers(base: Path, env: dict[str, str]) -> None:
    path = write_config(base, {"auths": {}})
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [
        base / f".config.json.{dead.pid}.{'a' * 12}.tmp",
        base / f".config.json.authscope.{dead.pid}.{'b' * 12}.tmp",
    ]
    live = base / f".config.json.{os.getpid()}.{'c' * 12}.tmp"  # ours: a write under way
    other = base / ".config.json.notes.tmp"  # not a temp file of write_atomic
    for f in [*stale, live, other]:
        f.write_text("partial")
    B.login(str(base), "x.example", {"auth": "eDp5"})
    assert not any(f.exists() for f in stale)
    assert live.exists() and other.exists()
    assert "x.example" in read_json(path)["auths"]


def test_guard_removes_target_credentials_leaked_into_another_key(logged_in: Path) -> None:
    # A tool outside the scope adds the target's auth as a header of every
    # request (a new HttpHeaders: the docker CLI sends it to every registry): a
    # leak like one under auths, removed, the rest of the base kept. (A key the
    # snapshot had is guarded whole already: any change to it is restored.)
    cfg = read_json(logged_in)
    del cfg["HttpHeaders"]
    logged_in.write_text(json.dumps(cfg))
    b, snap = _snap_and_base(logged_in)
    leaked = dc.auth_entry("robot$p+ci", "target-secret-zz")
    logged_in.write_text(json.dumps({**cfg, "HttpHeaders": {"Authorization": "Basic " + leaked["auth"]}}))
    damage = b.check(snap, leaks=[leaked["auth"]])
    assert [(d.path, d.what) for d in damage] == [(("", "HttpHeaders"), "leaked")]
    assert read_json(logged_in) == cfg
    # Control: a new key that carries no secret of this scope's target is not ours to undo.
    logged_in.write_text(json.dumps({**cfg, "HttpHeaders": {"X-Meta": "1"}}))
    assert b.check(snap, leaks=[leaked["auth"]]) == []
    assert read_json(logged_in)["HttpHeaders"] == {"X-Meta": "1"}

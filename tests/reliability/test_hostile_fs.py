"""5. Hostile filesystem: planted links and foreign directories, read-only and full filesystems.

We run as root, so permission bits stop nothing: "another user" is uid 65534
(files made with os.chown), a read-only base is a read-only bind mount (and
``chattr +i``), and a full disk is a 64 KiB tmpfs. Every mount is undone by
the ``mounts`` fixture, whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from authscope import scope as S
from tests.reliability import measure
from tests.reliability.conftest import Mounts, need_root

NOBODY = 65534
PASSWORD = "hostile-test-password-0005"  # fake
LOCAL = measure.LOCAL


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authscope", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def job(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose base (tmp_path/base) holds the local login."""
    base = tmp_path / "base"
    measure.make_base(base)
    scopes = tmp_path / "scopes"
    scopes.mkdir(mode=0o700)
    env = measure.worker_env(
        tmp_path, {"DOCKER_CONFIG": str(base), "AUTHSCOPE_SCOPE_DIR": str(scopes), "TARGET_PASSWORD": PASSWORD}
    )
    return env, base


def exec_args(*command: str, scope_dir: str = "") -> list[str]:
    args = ["exec", "-q", "--registry", "harbor.remote-1", "-u", "ci", "--password-env", "TARGET_PASSWORD"]
    if scope_dir:
        args += ["--scope-dir", scope_dir]
    return [*args, "--", *command]


def tree(path: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry under ``path``: (mode, uid, content or link target), links not followed."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root) / name
            st = p.lstat()
            data = os.readlink(p).encode() if p.is_symlink() else (p.read_bytes() if p.is_file() else b"")
            out[str(p.relative_to(path))] = (st.st_mode, st.st_uid, data)
    return out


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def scope_name(pid: int) -> str:
    return f"authscope-{pid}-{123456}-{S.pid_namespace()}-{os.urandom(6).hex()}"


# -- a world-writable scope root with things planted in it ---------------------------------------


@pytest.fixture
def planted(tmp_path: Path) -> Iterator[tuple[Path, Path, dict[str, Path]]]:
    """A /tmp-like root (1777) where "another user" planted links and directories named like scopes."""
    need_root("makes files owned by another uid")
    root = tmp_path / "shared-tmp"
    root.mkdir()
    root.chmod(0o1777)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("do not touch\n")
    pid = dead_pid()
    things = {
        "link-to-victim": root / scope_name(pid),  # a symlink named like a dead scope
        "foreign-dir": root / scope_name(pid),  # a directory of another user, named like a dead scope
        "file": root / scope_name(pid),  # a regular file named like a scope
        "own-dead-scope": root / scope_name(pid),  # a real dead scope of ours, with links inside
    }
    things["link-to-victim"].symlink_to(victim)
    os.lchown(things["link-to-victim"], NOBODY, NOBODY)
    things["foreign-dir"].mkdir()
    (things["foreign-dir"] / "config.json").write_text("{}")
    for p in (things["foreign-dir"], things["foreign-dir"] / "config.json"):
        os.chown(p, NOBODY, NOBODY)
    things["file"].write_text("not a scope")
    os.chown(things["file"], NOBODY, NOBODY)
    things["own-dead-scope"].mkdir(mode=0o700)
    (things["own-dead-scope"] / "config.json").symlink_to(victim / "precious")
    (things["own-dead-scope"] / "cli-plugins").symlink_to(victim)
    yield root, victim, things


def test_planted_links_and_foreign_dirs_are_never_followed(
    planted: tuple[Path, Path, dict[str, Path]], job: tuple[dict[str, str], Path]
) -> None:
    root, victim, things = planted
    env, base = job
    before_victim, before_base = tree(victim), (base / "config.json").read_bytes()
    result = cli(env, *exec_args("sh", "-c", 'echo "$DOCKER_CONFIG"; rm -rf "$DOCKER_CONFIG"/*', scope_dir=str(root)))
    assert result.returncode == 0, result.stderr
    scope = Path(result.stdout.strip())
    assert scope.parent == root and not scope.exists()
    swept = cli(env, "sweep", "--scope-dir", str(root))
    assert swept.returncode == 0, swept.stderr
    assert str(things["own-dead-scope"]) in swept.stderr
    assert swept.stderr.count("removed stale scope") == 1, "sweep removed something that is not a dead scope of ours"
    assert not things["own-dead-scope"].exists()
    for name in ("link-to-victim", "foreign-dir", "file"):
        assert os.path.lexists(things[name]), f"sweep removed the planted {name}"
    assert tree(victim) == before_victim, "something was written or removed through a planted link"
    assert (base / "config.json").read_bytes() == before_base


def test_world_writable_root_without_sticky_bit_is_refused(tmp_path: Path, job: tuple[dict[str, str], Path]) -> None:
    env, _ = job
    root = tmp_path / "open"
    root.mkdir()
    root.chmod(0o777)
    result = cli(env, *exec_args("touch", str(tmp_path / "ran"), scope_dir=str(root)))
    assert result.returncode == 2 and "sticky" in result.stderr
    assert not list(root.iterdir()) and not (tmp_path / "ran").exists()


@pytest.mark.parametrize("mode", [0o775, 0o1777], ids=oct)
def test_root_another_user_can_write_through_group_or_other_bits_is_refused(
    mode: int, tmp_path: Path, job: tuple[dict[str, str], Path]
) -> None:
    need_root("makes a directory owned by another uid")
    env, _ = job
    root = tmp_path / "theirs"
    root.mkdir()
    os.chown(root, NOBODY, NOBODY)
    root.chmod(mode)
    result = cli(env, *exec_args("touch", str(tmp_path / "ran"), scope_dir=str(root)))
    assert result.returncode == 2 and "another user" in result.stderr
    assert not list(root.iterdir()) and not (tmp_path / "ran").exists()


@pytest.mark.parametrize("via", ["direct", "symlink-in-sticky-tmp"])
def test_root_owned_by_another_user_is_refused(via: str, tmp_path: Path, job: tuple[dict[str, str], Path]) -> None:
    need_root("makes a directory owned by another uid")
    env, _ = job
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    theirs.chmod(0o755)
    root = theirs
    if via != "direct":
        shared = tmp_path / "shared-tmp"
        shared.mkdir()
        shared.chmod(0o1777)
        root = shared / "authscope-scopes"  # a well-known name, planted first by the other user
        root.symlink_to(theirs)
        os.lchown(root, NOBODY, NOBODY)
    result = cli(env, *exec_args("touch", str(tmp_path / "ran"), scope_dir=str(root)))
    assert result.returncode == 2, result.stderr
    assert not (tmp_path / "ran").exists()


def test_command_planting_links_in_its_scope_cannot_reach_outside(
    tmp_path: Path, job: tuple[dict[str, str], Path]
) -> None:
    env, base = job
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep\n")
    before = tree(victim)
    plant = (
        f'rm -f "$DOCKER_CONFIG/config.json"; ln -s {victim}/precious "$DOCKER_CONFIG/config.json"; '
        f'ln -s {victim} "$DOCKER_CONFIG/escape"; chmod 0 "$DOCKER_CONFIG"'
    )
    result = cli(env, *exec_args("sh", "-c", plant))
    assert result.returncode == 0, result.stderr
    assert tree(victim) == before
    assert not list(Path(env["AUTHSCOPE_SCOPE_DIR"]).iterdir())
    assert json.loads((base / "config.json").read_bytes())["auths"][LOCAL]


def test_links_planted_at_the_lock_and_journal_are_not_written_through(
    tmp_path: Path, job: tuple[dict[str, str], Path]
) -> None:
    env, base = job
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "lock-target").write_text("keep\n")
    (victim / "journal-target").write_text("keep\n")
    before = tree(victim)
    (base / "config.json.lock").unlink()
    (base / "config.json.lock").symlink_to(victim / "lock-target")
    result = cli(env, "login", "new.example", "-u", "ci", "--password-env", "TARGET_PASSWORD")
    assert result.returncode == 1 and "config.json.lock" in result.stderr  # refused, not followed
    (base / "config.json.lock").unlink()
    (base / "config.json.authscope").unlink()
    (base / "config.json.authscope").symlink_to(victim / "journal-target")
    result = cli(env, "login", "new.example", "-u", "ci", "--password-env", "TARGET_PASSWORD")
    assert result.returncode == 0, result.stderr
    assert not (base / "config.json.authscope").is_symlink()  # the link was replaced, not written through
    assert tree(victim) == before


# -- read-only base --------------------------------------------------------------------------------


def test_read_only_base_mount_refuses_writes_and_keeps_the_base(
    mounts: Mounts, job: tuple[dict[str, str], Path]
) -> None:
    env, base = job
    before = tree(base)
    mounts.read_only_bind(base)
    for args in (
        ["login", "new.example", "-u", "ci", "--password-env", "TARGET_PASSWORD"],
        ["logout", LOCAL],
    ):
        result = cli(env, *args)
        assert result.returncode == 1, result.stderr
        assert "Read-only file system" in result.stderr and "Traceback" not in result.stderr
    # exec only reads the base: it works, and its guard has nothing to write.
    result = cli(env, *exec_args("sh", "-c", 'echo "{}" > "$DOCKER_CONFIG/config.json"'))
    assert result.returncode == 0, result.stderr
    assert tree(base) == before


@pytest.mark.parametrize("what", ["config.json", "directory"])
def test_immutable_base_refuses_writes_and_leaves_no_temp_file(what: str, job: tuple[dict[str, str], Path]) -> None:
    need_root("chattr +i")
    env, base = job
    target = base / "config.json" if what == "config.json" else base
    if shutil.which("chattr") is None:
        pytest.skip("no chattr here")
    made = subprocess.run(["chattr", "+i", str(target)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i not supported here: {made.stderr.strip()}")
    try:
        before = tree(base)
        result = cli(env, "login", "new.example", "-u", "ci", "--password-env", "TARGET_PASSWORD")
        assert result.returncode == 1, result.stderr
        assert "Operation not permitted" in result.stderr and "Traceback" not in result.stderr
        assert tree(base) == before, "a temp file or a change was left behind"
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=False)


# -- full disk -------------------------------------------------------------------------------------

PAGE = 4096


def fill(directory: Path, leave_pages: int) -> None:
    """Fill the filesystem of ``directory`` until ``leave_pages`` pages are free."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    size = free - leave_pages * PAGE
    assert size >= 0
    with open(directory / "filler", "wb") as f:
        f.write(b"\0" * size)
    st = os.statvfs(directory)
    assert st.f_bavail * st.f_frsize == leave_pages * PAGE


@pytest.mark.parametrize("free_pages", [0, 1, 2, 3])
def test_full_base_filesystem_never_leaves_a_half_written_base(free_pages: int, mounts: Mounts, tmp_path: Path) -> None:
    """A 64 KiB tmpfs filled to ``free_pages`` pages: a login either lands whole or not at all."""
    base = mounts.tmpfs(tmp_path / "base")
    measure.make_base(base)
    env = measure.worker_env(tmp_path, {"DOCKER_CONFIG": str(base), "TARGET_PASSWORD": PASSWORD})
    fill(base, free_pages)
    before = (base / "config.json").read_bytes()
    result = cli(env, "login", "new.example", "-u", "ci", "--password-env", "TARGET_PASSWORD")
    assert "Traceback" not in result.stderr
    after = (base / "config.json").read_bytes()
    cfg = json.loads(after)  # parses, whatever happened
    assert cfg["auths"][LOCAL]["auth"] == measure.LOCAL_AUTH and cfg["x-unknown"] == [1, 2]
    assert after == before or set(cfg["auths"]) == {LOCAL, "new.example"}
    print(f"{free_pages} free pages: exit {result.returncode}, login stored: {'new.example' in cfg['auths']}")
    if result.returncode == 0:
        assert "new.example" in cfg["auths"]
    else:
        assert result.returncode == 1 and "No space left on device" in result.stderr
    assert not [p.name for p in base.iterdir() if p.name.endswith(".tmp")], "a temp file was left"


def test_config_too_big_to_copy_on_a_full_filesystem_is_left_whole(mounts: Mounts, tmp_path: Path) -> None:
    """A 40 KiB config fits once on 64 KiB, not twice: the atomic write cannot be made, the old file stays."""
    base = mounts.tmpfs(tmp_path / "base")
    measure.make_base(base)
    cfg = json.loads((base / "config.json").read_bytes())
    cfg["x-big"] = "b" * 40 * 1024
    (base / "config.json").write_text(json.dumps(cfg, indent="\t") + "\n")
    before = (base / "config.json").read_bytes()
    env = measure.worker_env(tmp_path, {"DOCKER_CONFIG": str(base), "TARGET_PASSWORD": PASSWORD})
    result = cli(env, "login", "new.example", "-u", "ci", "--password-env", "TARGET_PASSWORD")
    assert result.returncode == 1 and "No space left on device" in result.stderr
    assert (base / "config.json").read_bytes() == before
    assert not [p.name for p in base.iterdir() if p.name.endswith(".tmp")]


def test_full_scope_filesystem_is_a_clean_error(
    mounts: Mounts, tmp_path: Path, job: tuple[dict[str, str], Path]
) -> None:
    env, base = job
    scopes = mounts.tmpfs(tmp_path / "full-scopes")
    fill(scopes, 0)
    env = dict(env, AUTHSCOPE_SCOPE_DIR=str(scopes))
    before = (base / "config.json").read_bytes()
    result = cli(env, *exec_args("touch", str(tmp_path / "ran")))
    assert [p.name for p in scopes.iterdir()] == ["filler"]  # holds today: the half-made scope is removed
    assert (base / "config.json").read_bytes() == before
    assert not (tmp_path / "ran").exists()
    assert "Traceback" not in result.stderr and result.returncode in (1, 2), result.stderr


def test_guard_that_cannot_restore_says_what_was_lost(mounts: Mounts, tmp_path: Path) -> None:
    base = mounts.tmpfs(tmp_path / "base")
    measure.make_base(base)
    scopes = tmp_path / "scopes"
    scopes.mkdir(mode=0o700)
    env = measure.worker_env(
        tmp_path, {"DOCKER_CONFIG": str(base), "AUTHSCOPE_SCOPE_DIR": str(scopes), "TARGET_PASSWORD": PASSWORD}
    )
    fill(base, 0)
    # A tool that ignores DOCKER_CONFIG empties the real base (in place: no space is needed for that).
    result = cli(env, *exec_args("sh", "-c", f"echo '{{\"auths\":{{}}}}' > {base}/config.json"))
    assert result.returncode != 0
    assert "BASE INTEGRITY" in result.stderr and LOCAL in result.stderr, result.stderr


def test_first_login_on_a_full_filesystem_leaves_a_whole_base_or_none(mounts: Mounts, tmp_path: Path) -> None:
    """With one free page, the new config.json fits and its journal does not: the login is stored, yet exit 1
    (reported in docs/RELIABILITY.md); what matters here is that the file is whole."""
    base = mounts.tmpfs(tmp_path / "base")
    env = measure.worker_env(tmp_path, {"DOCKER_CONFIG": str(base), "TARGET_PASSWORD": PASSWORD})
    fill(base, 1)
    result = cli(env, "login", "new.example", "-u", "ci", "--password-env", "TARGET_PASSWORD")
    assert "Traceback" not in result.stderr
    stored = (base / "config.json").exists() and "new.example" in json.loads((base / "config.json").read_bytes())[
        "auths"
    ]
    print(f"first login with 1 free page: exit {result.returncode}, login stored: {stored}: {result.stderr.strip()}")
    assert result.returncode == 0 or "No space left on device" in result.stderr
    assert result.returncode != 0 or stored
    assert not [p.name for p in base.iterdir() if p.name.endswith(".tmp")]

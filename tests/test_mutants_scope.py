"""Scope behaviour that tests/test_scope.py left unpinned (found by mutation testing,
benchmarks/mutation.py; docs/RELIABILITY.md "Mutation testing")."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from authscope import scope as S
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


def test_a_pid_namespace_that_cannot_be_read_is_0_and_a_scope_still_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some sandboxes hide /proc/self/ns (EACCES): the namespace field is then 0,
    # never an exception that stops the scope from being made.
    assert S.pid_namespace() != 0  # control: readable here, so the 0 below is the fallback

    def hidden(path: str) -> str:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "readlink", hidden)
    assert S.pid_namespace() == 0
    match = S.NAME.fullmatch(os.path.basename(make_scope_dir(str(tmp_path))))
    assert match is not None and match.group(3) == "0"


def test_default_roots_pass_over_a_runtime_dir_that_is_missing_a_file_or_not_writable(
    tmp_path: Path, reachable_dir: Path
) -> None:
    missing, a_file = tmp_path / "missing", tmp_path / "file"
    a_file.write_text("")
    for runtime in (missing, a_file):
        assert str(runtime) not in S.default_roots({"XDG_RUNTIME_DIR": str(runtime)})
    # As nobody: a directory nobody may not write (root's, 0755) is passed over;
    # control: one it may write (0777, sticky) is taken, first.
    closed, open_ = reachable_dir / "closed", reachable_dir / "open"
    closed.mkdir(mode=0o755)
    open_.mkdir()
    open_.chmod(0o1777)
    if os.geteuid() == 0:
        os.chown(closed, 0, 0)
    else:
        closed.chmod(0o555)
    outcome, roots = as_unprivileged(lambda: S.default_roots({"XDG_RUNTIME_DIR": str(closed)}))
    assert outcome == "returned" and str(closed) not in roots
    assert as_unprivileged(lambda: S.default_roots({"XDG_RUNTIME_DIR": str(open_)})[0]) == ("returned", str(open_))


def test_a_scope_directory_that_cannot_be_made_is_a_scope_error(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ScopeError) as info:
        make_scope_dir(str(a_file))  # ENOTDIR: not an OSError traceback
    assert str(info.value).startswith(f"scope directory {a_file}{os.sep}authscope-") and "Not a directory" in str(
        info.value
    )


def test_the_shims_and_isolated_home_directories_are_private(tmp_path: Path) -> None:
    # 0700 whatever the umask lets through: nobody else may list or replace the
    # shims a tool finds on PATH, or read what a tool writes under HOME.
    old = os.umask(0o022)
    try:
        scope = Scope(str(tmp_path / "scope"), True, b"{}")
        scope.reset()
        os.unlink(scope.config_file)
        S._populate(scope, str(tmp_path / "base"))
    finally:
        os.umask(old)
    for sub in (S.SHIMS, "home", "home/.config", "run"):
        assert os.stat(os.path.join(scope.path, sub)).st_mode & 0o777 == 0o700, sub


def _owned_by_another_user(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)  # nobody's: a uid above ours (root's 0)
    else:
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real - 1)  # ours is then a uid below another user's


def test_a_scope_directory_of_another_user_is_refused_by_reset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root resetting a scope another user took over (its uid above root's 0):
    # the owner check is "not ours", not "a uid below ours".
    scope = Scope(str(tmp_path / "scope"), False, b"{}")
    scope.reset()
    scope.reset()  # control: its own directory is reused
    _owned_by_another_user(scope.path, monkeypatch)
    with pytest.raises(ScopeError, match="was replaced by something that is not this scope's directory"):
        scope.reset()


def test_a_shims_directory_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scope = Scope(str(tmp_path / "scope"), False, b"{}")
    scope.reset()
    S._lay_shims(scope.path)  # control: its own shims directory is reused
    _owned_by_another_user(os.path.join(scope.path, S.SHIMS), monkeypatch)
    with pytest.raises(ScopeError, match="was replaced by something that is not this scope's directory"):
        S._lay_shims(scope.path)


def test_a_directory_replaced_by_a_file_just_before_it_is_opened_is_unlinked_not_walked(tmp_path: Path) -> None:
    # The walk saw a directory; a command swapped in a file before the open:
    # the open refuses it (O_DIRECTORY) and the file is unlinked like any other.
    (tmp_path / "was-a-dir").write_text("x")
    left: dict[str, str] = {}
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert S._open_dir(dir_fd, "was-a-dir", str(tmp_path / "was-a-dir"), left) is None
    finally:
        os.close(dir_fd)
    assert left == {} and not (tmp_path / "was-a-dir").exists()


def test_the_chmod_fallback_without_fchmodat_nofollow_never_follows_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where fchmodat cannot skip links (glibc < 2.32, musl: NotImplementedError)
    # the owner's rwx goes back through an O_PATH|O_NOFOLLOW descriptor: a link
    # planted in the scope is never followed to chmod what it points to.
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    victim.chmod(0o755)
    (tmp_path / "link").symlink_to(victim)
    (tmp_path / "locked").mkdir(mode=0o000)
    real_chmod = os.chmod

    def no_nofollow(path: object, mode: int, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> None:
        if not follow_symlinks:
            raise NotImplementedError("chmod: follow_symlinks unavailable on this platform")
        real_chmod(path, mode, dir_fd=dir_fd)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "chmod", no_nofollow)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        S._chmod_no_follow(dir_fd, "locked")  # control: the fallback does give rwx back
        with pytest.raises(OSError):
            S._chmod_no_follow(dir_fd, "link")
    finally:
        os.close(dir_fd)
    assert (tmp_path / "locked").stat().st_mode & 0o777 == 0o700
    assert victim.stat().st_mode & 0o777 == 0o755


def test_a_bug_inside_the_removal_walk_is_reported_as_itself_and_leaks_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # remove_tree never raises; a bug deep in the walk is reported as what it
    # was, every directory the walk had open is closed once (not the top twice:
    # an EBADF would hide the bug, or close a descriptor another thread reuses).
    scope = tmp_path / "scope"
    (scope / "a" / "b").mkdir(parents=True)
    (scope / "a" / "b" / "file").write_text("x")

    def bug(*args: object) -> None:
        raise RuntimeError("a bug in the walk")

    monkeypatch.setattr(S, "_unlink", bug)
    before = sorted(os.listdir("/proc/self/fd"))
    left = remove_tree(str(scope))
    assert left == [f"{scope}: unexpected error: RuntimeError('a bug in the walk')"]
    assert sorted(os.listdir("/proc/self/fd")) == before
    monkeypatch.undo()
    assert remove_tree(str(scope)) == [] and not scope.exists()  # control: without the bug, all goes


def _a_dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_live_scope_listed_first_does_not_stop_the_sweep(tmp_path: Path) -> None:
    # The live scope is in the first root, the dead one in the second: the
    # sweep passes over the live one and goes on.
    ns = S.pid_namespace()
    first, second = tmp_path / "first", tmp_path / "second"
    live = first / f"authscope-{os.getpid()}-{S.process_start(os.getpid())}-{ns}-{'a' * 12}"
    dead = second / f"authscope-{_a_dead_pid()}-12345-{ns}-{'b' * 12}"
    for d in (live, dead):
        d.mkdir(parents=True)
    assert S.sweep([str(first), str(second)]) == [str(dead)]
    assert live.exists() and not dead.exists()


def test_the_sweep_ends_a_process_still_running_in_a_dead_scope(tmp_path: Path) -> None:
    # Its authscope is gone (a dead pid in the name), but a tool that made its
    # own session still runs in the scope, with the target's login at hand.
    ns = S.pid_namespace()
    dead = tmp_path / f"authscope-{_a_dead_pid()}-12345-{ns}-{'c' * 12}"
    dead.mkdir()
    tool = subprocess.Popen(["sleep", "60"], env=dict(os.environ, AUTHSCOPE_SCOPE=str(dead)), start_new_session=True)
    try:
        swept = S.sweep_report([str(tmp_path)])
        assert tool.wait(timeout=10) != 0  # ended by a signal
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.wait()
    assert swept.removed == [str(dead)] and swept.ended == {str(dead): 1}


def test_a_directory_rmdir_cannot_remove_is_named_with_its_own_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mount point in the scope (EBUSY; faked here: mounting needs root and a
    # mount namespace): it is named with its reason, and its parents' "not
    # empty" does not repeat the cause; the rest of the tree goes.
    scope = tmp_path / "scope"
    (scope / "a" / "mnt").mkdir(parents=True)
    (scope / "a" / "other").mkdir()
    real_rmdir = os.rmdir

    def busy(path: str, *, dir_fd: int | None = None) -> None:
        if path == "mnt":
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        real_rmdir(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "rmdir", busy)
    assert remove_tree(str(scope)) == [f"{scope / 'a' / 'mnt'}: {os.strerror(errno.EBUSY)}"]
    assert sorted(p.name for p in scope.rglob("*")) == ["a", "mnt"]


def test_a_scope_whose_listing_fails_is_reported_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # EIO while listing the scope's top: reported as what it is, never a traceback
    # and never an "unexpected error".
    scope = tmp_path / "scope"
    scope.mkdir()

    def eio(fd: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "scandir", eio)
    assert remove_tree(str(scope)) == [f"{scope}: {os.strerror(errno.EIO)}"]


def test_reset_removes_a_config_json_a_command_made_a_directory(tmp_path: Path) -> None:
    # `mkdir "$DOCKER_CONFIG/config.json"` (or a tool that did the like): the
    # next command of the target still starts from the scope's config.
    scope = Scope(str(tmp_path / "scope"), False, b'{"auths": {}}')
    scope.reset()
    os.unlink(scope.config_file)
    os.makedirs(os.path.join(scope.config_file, "inside"))
    Path(scope.config_file, "inside", "file").write_text("x")
    with pytest.raises(IsADirectoryError):
        os.unlink(scope.config_file)  # what reset has to get past
    scope.reset()
    assert Path(scope.config_file).read_bytes() == b'{"auths": {}}'


def test_process_alive_without_a_start_time_only_probes_never_signals() -> None:
    # No start time known (no /proc when the scope was named): signal 0 asks
    # whether the pid exists; it must not hang up the process it asks about.
    # The child takes SIGHUP's default action even when the tests run under nohup.
    hup_default = (
        "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_DFL); print('ready', flush=True); time.sleep(30)"
    )
    with subprocess.Popen([sys.executable, "-c", hup_default], stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            assert S.process_alive(child.pid, 0)
            with pytest.raises(subprocess.TimeoutExpired):
                child.wait(timeout=0.5)  # still running: not signalled
        finally:
            child.kill()
    assert not S.process_alive(_a_dead_pid(), 0)  # control: a pid that is gone


def test_an_entry_unlink_refuses_is_named_with_its_reason_and_the_rest_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An immutable file (chattr +i: EPERM; faked here, chattr needs root and a
    # filesystem that has it): named, never an "unexpected error"; the rest goes.
    scope = tmp_path / "scope"
    (scope / "sub").mkdir(parents=True)
    (scope / "sub" / "immutable").write_text("x")
    (scope / "sub" / "other").write_text("y")
    real_unlink = os.unlink

    def immutable(path: str, *, dir_fd: int | None = None) -> None:
        if path == "immutable":
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), path)
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", immutable)
    assert remove_tree(str(scope)) == [f"{scope / 'sub' / 'immutable'}: {os.strerror(errno.EPERM)}"]
    assert sorted(p.name for p in scope.rglob("*")) == ["immutable", "sub"]


def test_a_directory_gone_before_its_rmdir_is_not_reported(tmp_path: Path) -> None:
    # Removed meanwhile (by the command, or a second cleanup): nothing is left, nothing to say.
    (tmp_path / "full" / "inside").mkdir(parents=True)
    left: dict[str, str] = {}
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        S._rmdir(dir_fd, "gone", str(tmp_path / "gone"), left)
        assert left == {}
        S._rmdir(dir_fd, "full", str(tmp_path / "full"), left)  # control: a real failure is named
    finally:
        os.close(dir_fd)
    assert list(left) == [str(tmp_path / "full")]


def test_own_directories_go_on_past_an_entry_that_is_not_a_scope_or_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Entries listed in name order: one that is not a scope, then one removed
    # between the listing and its stat (another sweep took it), then a scope:
    # the scope after them is still found.
    ns = S.pid_namespace()
    (tmp_path / "a-notes").mkdir()
    gone = tmp_path / f"authscope-1-1-{ns}-{'d' * 12}"
    scope = tmp_path / f"authscope-2-1-{ns}-{'e' * 12}"
    gone.mkdir()
    scope.mkdir()
    real_scandir = os.scandir

    def listing_then_removal(path: str) -> Iterator[os.DirEntry[str]]:
        entries = sorted(real_scandir(path), key=lambda e: e.name)
        if gone.exists():
            gone.rmdir()
        return iter(entries)

    monkeypatch.setattr(os, "scandir", listing_then_removal)
    assert [p for p, _ in own_directories([str(tmp_path)], S.NAME.fullmatch)] == [str(scope)]


def test_a_scope_directory_that_cannot_be_made_is_named_once_with_the_reason(tmp_path: Path) -> None:
    # The message names the path once and the reason as the system gives it
    # ("Not a directory"), not Python's "[Errno 20] ...: '<path>'" repeating it.
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ScopeError) as info:
        make_scope_dir(str(a_file))
    assert info.value.reason == os.strerror(errno.ENOTDIR)
    assert str(info.value).count(str(a_file)) == 1


def test_default_roots_pass_over_a_runtime_dir_that_can_be_written_but_not_entered(reachable_dir: Path) -> None:
    # Write without search (x) permission: nothing can be made inside, so it is
    # no root (as nobody when root: mode 0772 of root's; otherwise the owner's 0600).
    # Control: the same directory with x added is taken, first.
    runtime = reachable_dir / "runtime"
    runtime.mkdir()
    if os.geteuid() == 0:
        os.chown(runtime, 0, 0)
        no_x, with_x = 0o772, 0o773
    else:
        no_x, with_x = 0o600, 0o700
    runtime.chmod(no_x)
    outcome, roots = as_unprivileged(lambda: S.default_roots({"XDG_RUNTIME_DIR": str(runtime)}))
    assert outcome == "returned" and str(runtime) not in roots
    runtime.chmod(with_x)
    assert as_unprivileged(lambda: S.default_roots({"XDG_RUNTIME_DIR": str(runtime)})[0]) == ("returned", str(runtime))


@pytest.mark.parametrize("planted", ["symlink", "file"])
def test_write_private_never_writes_through_or_into_what_is_already_at_its_path(tmp_path: Path, planted: str) -> None:
    # The scope's config.json (and a job scope's state) is created, never reused:
    # a link planted at the name, or a file left there, is refused untouched.
    victim, path = tmp_path / "victim", tmp_path / "config.json"
    victim.write_bytes(b"victim")
    if planted == "symlink":
        path.symlink_to(victim)
    else:
        path.write_bytes(b"left")
    with pytest.raises(FileExistsError):
        S.write_private(str(path), b'{"auths": {}}')
    assert victim.read_bytes() == b"victim" and (planted == "symlink" or path.read_bytes() == b"left")


def test_write_private_control_without_o_excl_and_o_nofollow_the_link_is_followed(tmp_path: Path) -> None:
    """Control: opening the same planted link with O_WRONLY | O_CREAT alone writes into the victim."""
    victim, path = tmp_path / "victim", tmp_path / "config.json"
    victim.write_bytes(b"victim")
    path.symlink_to(victim)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    assert victim.read_bytes() == b""


def test_the_chmod_fallback_gives_rwx_back_to_a_directory_its_owner_cannot_read(
    reachable_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fallback's O_PATH descriptor needs no permission on the directory: a
    # mode-000 directory of a user without root's override (nobody, when root)
    # still gets its rwx back, where a plain open of it fails with EACCES.
    real_chmod = os.chmod

    def no_nofollow(path: object, mode: int, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> None:
        if not follow_symlinks:
            raise NotImplementedError("chmod: follow_symlinks unavailable on this platform")
        real_chmod(path, mode, dir_fd=dir_fd)  # type: ignore[arg-type]

    def lock_and_unlock() -> tuple[int, str]:
        (reachable_dir / "locked").mkdir(mode=0o000)
        dir_fd = os.open(reachable_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:  # control: without O_PATH the directory cannot be opened
                os.close(os.open("locked", os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd))
                control = "opened"
            except PermissionError:
                control = "EACCES"
            monkeypatch.setattr(os, "chmod", no_nofollow)
            S._chmod_no_follow(dir_fd, "locked")
        finally:
            os.close(dir_fd)
        return (reachable_dir / "locked").stat().st_mode & 0o777, control

    assert as_unprivileged(lock_and_unlock) == ("returned", (0o700, "EACCES"))


def test_the_store_shims_hold_the_refusing_script(tmp_path: Path) -> None:
    # Each shim is the whole script (not an empty file, which a shell runs as a
    # successful no-op): `get` answers "credentials not found", anything else fails.
    S._lay_shims(str(tmp_path))
    for name in S.DEFAULT_STORES:
        shim = tmp_path / S.SHIMS / f"docker-credential-{name}"
        assert shim.read_text() == S._SHIM.format(name=name)
        got = subprocess.run([str(shim), "get"], input=b"", capture_output=True)
        assert got.stdout == b"credentials not found in native keychain\n" and b"refused" in got.stderr
        stored = subprocess.run([str(shim), "store"], input=b"", capture_output=True)
        assert stored.returncode != 0 and b"refused" in stored.stderr


def test_own_directories_lists_no_scope_directory_of_a_user_with_a_higher_uid(tmp_path: Path) -> None:
    # The sweep only ever removes this user's scopes: a scope-named directory of
    # nobody (uid 65534) is not listed when root sweeps (control: root's own is).
    mine, theirs = make_scope_dir(str(tmp_path)), make_scope_dir(str(tmp_path))
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
        listed = {path for path, _ in own_directories([str(tmp_path)], S.NAME.fullmatch)}
        assert listed == {mine}
    else:  # not root: no directory of another user can be made here; both are ours
        listed = {path for path, _ in own_directories([str(tmp_path)], S.NAME.fullmatch)}
        assert listed == {mine, theirs}

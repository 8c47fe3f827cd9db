"""Invariant 4 hardened (issue 12, items 1, 3, 4), in-process with real processes.

1. A scope the command made unremovable (locked directories, an immutable
   file, a tree deeper than Python's recursion limit) never makes removal
   raise, and never stops the base guard; what is left is named.
3. A signal during the cleanup lets removal and guard run to their end, then
   decides the exit code.
4. Nothing a command started outlives it: background, TERM-ignoring, setsid
   and double-forked children are ended, none left holding the password.

Each protection has a control: the same hostile action with the protection
monkeypatched off (or the former implementation put back), showing the damage.
Real-CLI versions (non-root, group kill, a terminal, fanout) are in
tests/reliability/test_cleanup_hostile.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from authscope import run
from authscope import scope as S
from authscope.base import Base
from authscope.errors import Interrupted

LOCAL = "gitlab.local:4567"


# -- helpers -------------------------------------------------------------------------


def old_remove_tree(path: str) -> None:
    """The implementation before issue 12 (the control's protection-off state)."""

    def make_writable_and_retry(func, failed, _exc):  # type: ignore[no-untyped-def]
        parent = os.path.dirname(failed)
        try:
            os.chmod(parent, 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
                shutil.rmtree(failed)
            else:
                func(failed)
        except FileNotFoundError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)


def deep_tree(top: Path, depth: int) -> Path:
    """``depth`` nested directories under ``top`` (made with relative paths: deeper than PATH_MAX)."""
    top.mkdir(parents=True, exist_ok=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w") as f:
            f.write("x")
    finally:
        os.close(fd)
    return top


@pytest.fixture
def immutable() -> Iterator[Callable[[Path], None]]:
    """``chattr +i`` a file; undone at teardown whatever happens."""
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("chattr +i needs root and chattr")
    made: list[Path] = []

    def make(path: Path) -> None:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"chattr +i not supported on {path.parent}: {done.stderr.strip()}")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)


def logins(config: Path) -> dict[str, Any]:
    return dict(json.loads(config.read_text()).get("auths", {}))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def holding(needle: str) -> list[int]:
    """Live processes whose environment holds ``needle``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle.encode() in f.read() and alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                pass
    return found


def kill_and_reap(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:  # re-parented to this process (a subreaper after run's first spawn)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


# -- 1. removal never raises and never skips the guard ------------------------------------


def test_tree_deeper_than_the_recursion_limit_is_removed(tmp_path: Path) -> None:
    scope = deep_tree(tmp_path / "scope", sys.getrecursionlimit() + 500)
    assert S.remove_tree(str(scope)) == []
    assert not scope.exists()


def test_control_shutil_rmtree_raises_on_the_same_deep_tree(tmp_path: Path) -> None:
    scope = deep_tree(tmp_path / "scope", sys.getrecursionlimit() + 500)
    with pytest.raises(RecursionError):
        old_remove_tree(str(scope))
    assert scope.exists()
    assert S.remove_tree(str(scope)) == []


def test_locked_directories_and_planted_links_deep_down(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("keep")
    scope = deep_tree(tmp_path / "scope", S.REMOVE_DEPTH * 3)
    deepest = scope.joinpath(*["d"] * (S.REMOVE_DEPTH * 2))
    (deepest / "escape").symlink_to(victim)  # deeper than REMOVE_DEPTH: moved up, never followed
    (deepest / "ro").mkdir()
    (deepest / "ro" / "f").write_text("x")
    (deepest / "ro").chmod(0o500)
    (scope / "locked").mkdir()
    (scope / "locked" / "g").write_text("x")
    (scope / "locked").chmod(0)
    scope.chmod(0)
    assert S.remove_tree(str(scope)) == []
    assert not scope.exists()
    assert (victim / "keep").read_text() == "keep"


def test_huge_tree_is_removed_in_bounded_time(tmp_path: Path) -> None:
    scope = tmp_path / "scope"
    for d in range(100):
        sub = scope / f"dir{d}"
        sub.mkdir(parents=True)
        for f in range(200):
            (sub / f"f{f}").touch()
    started = time.monotonic()
    assert S.remove_tree(str(scope)) == []
    print(f"20000 files in 100 directories removed in {time.monotonic() - started:.2f}s")
    assert not scope.exists() and time.monotonic() - started < 30


def test_immutable_file_is_named_and_the_rest_removed(tmp_path: Path, immutable: Callable[[Path], None]) -> None:
    scope = tmp_path / "scope"
    (scope / "x").mkdir(parents=True)
    (scope / "config.json").write_text("{}")
    (scope / "x" / "stuck").write_text("x")
    (scope / "x" / "other").write_text("x")
    immutable(scope / "x" / "stuck")
    left = S.remove_tree(str(scope))
    assert left == [f"{scope / 'x' / 'stuck'}: Operation not permitted"]
    assert sorted(p.name for p in scope.rglob("*")) == ["stuck", "x"]  # config.json went


def test_control_former_removal_raises_on_an_immutable_file(tmp_path: Path, immutable: Callable[[Path], None]) -> None:
    scope = tmp_path / "scope"
    scope.mkdir()
    (scope / "stuck").write_text("x")
    immutable(scope / "stuck")
    with pytest.raises(PermissionError):
        old_remove_tree(str(scope))


def _wipe_base_and_stick(base_dir: Path, scope: S.Scope, immutable: Callable[[Path], None]) -> None:
    """What a hostile tool does: wipe the base outside its scope, leave an immutable file in it."""
    (base_dir / "config.json").write_text("{}")
    stuck = Path(scope.path) / "stuck"
    stuck.write_text("x")
    immutable(stuck)


def test_guard_runs_when_the_scope_cannot_be_removed(
    logged_in: Path, env: dict[str, str], immutable: Callable[[Path], None]
) -> None:
    base = Base(str(logged_in.parent))
    warned: list[str] = []
    with S.open_scope(base, "harbor.example", {"auth": "eDp5"}, environ=env, warn=warned.append) as (scope, _):
        _wipe_base_and_stick(logged_in.parent, scope, immutable)
    assert warned == scope.left_behind == [f"{scope.path}/stuck: Operation not permitted"]
    assert scope.damage and {d.what for d in scope.damage} == {"removed"}
    assert LOCAL in logins(logged_in)  # the guard restored it


def test_control_former_removal_skips_the_guard(
    logged_in: Path, env: dict[str, str], immutable: Callable[[Path], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(S, "remove_tree", old_remove_tree)
    base = Base(str(logged_in.parent))
    with pytest.raises(PermissionError):  # noqa: SIM117
        with S.open_scope(base, "harbor.example", {"auth": "eDp5"}, environ=env) as (scope, _):
            _wipe_base_and_stick(logged_in.parent, scope, immutable)
    assert LOCAL not in logins(logged_in)  # the damage: no guard ran


@pytest.mark.parametrize(
    ("tail", "code"),
    [("", 1), ("; exit 5", 5), ('; echo "{}" > "$BASE/config.json"', 3)],
    ids=["command-ok-exit-1", "command-failed-keeps-its-code", "base-restored-exit-3"],
)
def test_exec_names_what_is_left_and_chooses_the_exit_code(
    tail: str,
    code: int,
    logged_in: Path,
    env: dict[str, str],
    main: Any,
    capsys: pytest.CaptureFixture[str],
    immutable: Callable[[Path], None],
) -> None:
    env["BASE"] = str(logged_in.parent)
    scopes = Path(env["AUTHSCOPE_SCOPE_DIR"])
    try:
        status = main(
            "exec", "--registry", "harbor.example", "-u", "ci", "--password-env", "TARGET_PASSWORD", "--",
            "sh", "-c", f'touch "$DOCKER_CONFIG/stuck" && chattr +i "$DOCKER_CONFIG/stuck"{tail}',
        )  # fmt: skip
        err = capsys.readouterr().err
        assert status == code, err
        (left,) = list(scopes.iterdir())
        assert f"warning: could not remove {left}/stuck: Operation not permitted" in err
        assert "Traceback" not in err and "internal error" not in err
        assert LOCAL in logins(logged_in)
    finally:
        for stuck in scopes.glob("*/stuck"):
            subprocess.run(["chattr", "-i", str(stuck)], check=False)


def test_sweep_goes_on_past_a_scope_it_cannot_remove(tmp_path: Path, immutable: Callable[[Path], None]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    scopes = [root / f"authscope-{dead.pid}-7-{S.pid_namespace()}-{c * 12}" for c in "abc"]
    for scope in scopes:
        (scope / "sub").mkdir(parents=True)
        (scope / "config.json").write_text("{}")
    immutable(scopes[1] / "config.json")
    swept = S.sweep_report([str(root)])
    assert sorted(swept.removed) == [str(scopes[0]), str(scopes[2])]
    assert swept.left == [f"{scopes[1]}/config.json: Operation not permitted"]
    assert [p.name for p in root.iterdir()] == [scopes[1].name]


# -- 3. a signal during the cleanup ------------------------------------------------------


def _signal_then(real: Callable[..., Any], sig: int = signal.SIGTERM) -> Callable[..., Any]:
    """``real``, after a signal lands on this process (the handler runs at once, here)."""

    def wrapper(*args: Any, **kw: Any) -> Any:
        os.kill(os.getpid(), sig)
        return real(*args, **kw)

    return wrapper


@pytest.mark.parametrize("during", ["removal", "guard"])
def test_signal_during_cleanup_lets_removal_and_guard_finish(
    during: str, logged_in: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if during == "removal":
        monkeypatch.setattr(S, "remove_tree", _signal_then(S.remove_tree))
    else:
        monkeypatch.setattr(Base, "check", _signal_then(Base.check))
    base = Base(str(logged_in.parent))
    with run.signals_handled(), pytest.raises(Interrupted) as raised:  # noqa: SIM117
        with S.open_scope(base, "harbor.example", {"auth": "eDp5"}, environ=env) as (scope, _):
            (logged_in.parent / "config.json").write_text("{}")  # a tool wiping the base
    assert raised.value.signum == signal.SIGTERM  # the signal still decides the outcome ...
    assert not os.path.exists(scope.path)  # ... after the scope was removed
    assert scope.damage and {d.what for d in scope.damage} == {"removed"}  # and the guard ran to its end
    assert LOCAL in logins(logged_in)


@pytest.mark.parametrize("during", ["removal", "guard"])
def test_control_without_the_shield_the_signal_breaks_the_cleanup(
    during: str, logged_in: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "uninterrupted", lambda work: work())
    if during == "removal":
        monkeypatch.setattr(S, "remove_tree", _signal_then(S.remove_tree))
    else:
        monkeypatch.setattr(Base, "check", _signal_then(Base.check))
    base = Base(str(logged_in.parent))
    with run.signals_handled(), pytest.raises(Interrupted):  # noqa: SIM117
        with S.open_scope(base, "harbor.example", {"auth": "eDp5"}, environ=env) as (scope, _):
            (logged_in.parent / "config.json").write_text("{}")
    assert LOCAL not in logins(logged_in)  # the guard never finished
    if during == "removal":
        assert os.path.exists(scope.path)  # nor the removal
        shutil.rmtree(scope.path)


def test_exec_signalled_during_cleanup_exits_128_plus_n(
    logged_in: Path, env: dict[str, str], main: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(S, "remove_tree", _signal_then(S.remove_tree, signal.SIGHUP))
    status = main("exec", "--registry", "harbor.example", "-u", "ci", "--password-env", "TARGET_PASSWORD", "--", "true")
    assert status == 128 + signal.SIGHUP
    assert "interrupted by signal 1; scopes removed" in capsys.readouterr().err
    assert not list(Path(env["AUTHSCOPE_SCOPE_DIR"]).iterdir())


def test_signal_just_before_the_cleanup_is_marked_still_runs_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler raises between two bytecodes; one landing before ``_cleaning`` is up
    must neither skip the cleanup nor run it twice."""

    class LandsOnce:
        def __init__(self) -> None:
            self.real, self.fired = threading.RLock(), False

        def __enter__(self) -> None:
            if not self.fired:
                self.fired = True
                raise Interrupted(signal.SIGTERM)  # as _on_signal would, right here
            self.real.acquire()

        def __exit__(self, *exc: object) -> None:
            self.real.release()

    monkeypatch.setattr(run, "_children_lock", LandsOnce())
    calls: list[int] = []
    with pytest.raises(Interrupted):
        run.uninterrupted(lambda: calls.append(1))
    assert calls == [1] and run._cleaning == 0


_LOCK_HOLDER = """
import os, signal, sys, threading
from authscope import run
if sys.argv[1] == "control":
    run._children_lock = threading.Lock()  # the former lock: not reentrant
with run.signals_handled(raise_when_idle=False):
    with run._children_lock:  # the main thread registers a child ...
        os.kill(os.getpid(), signal.SIGTERM)  # ... and the signal lands right then
        sum(range(1000))  # the handler runs at a bytecode boundary, here
print("handled", run.received_signal())
"""


@pytest.mark.parametrize("variant", ["fixed", "control"])
def test_signal_while_the_main_thread_holds_the_children_lock(variant: str) -> None:
    pythonpath = os.pathsep.join(p for p in (str(Path(run.__file__).parents[1]), os.environ.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-c", _LOCK_HOLDER, variant]
    if variant == "fixed":
        done = subprocess.run(
            argv, env=dict(os.environ, PYTHONPATH=pythonpath), capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0 and done.stdout == "handled 15\n", done.stderr
        return
    with pytest.raises(subprocess.TimeoutExpired):  # the damage: a deadlock, forever
        subprocess.run(argv, env=dict(os.environ, PYTHONPATH=pythonpath), capture_output=True, timeout=3)


# -- 4. nothing started in a scope outlives it ----------------------------------------------

# Every way a child can outlive its shell: in the background, ignoring SIGTERM,
# in a session of its own, double-forked (its parent gone before it), and a
# daemon that does all of it. Each prints its pid.
LEAVE_BEHIND = (
    "sleep 1000 & echo $!; "
    "(trap '' TERM; exec sleep 1000) & echo $!; "
    "setsid sleep 1000 & echo $!; "
    "( sleep 1000 & echo $! ) ; "
    "setsid sh -c '(trap \"\" TERM; exec sleep 1000) & echo $!' ; "
    "echo done"
)


@pytest.fixture
def probe(env: dict[str, str]) -> str:
    """A password no other test on this machine uses, to find who holds it."""
    env["TARGET_PASSWORD"] = f"cleanup-probe-{uuid.uuid4().hex}"
    return env["TARGET_PASSWORD"]


def _exec_leaving(main: Any, capfd: pytest.CaptureFixture[str]) -> tuple[int, list[int], float]:
    started = time.monotonic()
    status = main(
        "exec", "-q", "--registry", "harbor.example", "-u", "ci", "--password-env", "TARGET_PASSWORD", "--",
        "sh", "-c", LEAVE_BEHIND,
    )  # fmt: skip
    took = time.monotonic() - started
    out = capfd.readouterr().out.split()
    assert out[-1] == "done"
    return status, [int(pid) for pid in out[:-1]], took


def test_nothing_the_command_started_outlives_it(
    logged_in: Path, env: dict[str, str], main: Any, capfd: pytest.CaptureFixture[str], probe: str
) -> None:
    status, pids, took = _exec_leaving(main, capfd)
    try:
        assert status == 0 and len(pids) == 5
        assert [pid for pid in pids if alive(pid)] == []
        assert holding(probe) == [], "a process still holds the target's password"
        assert took < run.LEFTOVER_GRACE + 10
    finally:
        kill_and_reap(pids + holding(probe))


def test_control_without_ending_leftovers_they_hold_the_password(
    logged_in: Path,
    env: dict[str, str],
    main: Any,
    capfd: pytest.CaptureFixture[str],
    probe: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run, "end_leftovers", lambda *a: None)
    status, pids, _ = _exec_leaving(main, capfd)
    try:
        assert status == 0
        survivors = [pid for pid in pids if alive(pid)]
        assert survivors == pids  # the damage: all five still run ...
        assert set(pids) <= set(holding(probe))  # ... with the password in their environment
        environ = Path(f"/proc/{pids[2]}/environ").read_bytes().split(b"\0")
        docker_config = next(v for v in environ if v.startswith(b"DOCKER_CONFIG="))[14:].decode()
        assert not os.path.exists(docker_config)  # ... pointing at a removed scope
    finally:
        kill_and_reap(pids + holding(probe))


def test_leftovers_of_a_captured_command_are_ended_but_not_another_commands(tmp_path: Path, probe: str) -> None:
    """fanout's path (run_captured, from threads): a command's leftovers go, a
    concurrent command's tool and children stay."""
    env_a = dict(os.environ, AUTHSCOPE_SCOPE=str(tmp_path / "scope-a"), TARGET_PASSWORD=probe)
    env_b = dict(os.environ, AUTHSCOPE_SCOPE=str(tmp_path / "scope-b"), TARGET_PASSWORD=probe)
    lines: dict[str, list[bytes]] = {"a": [], "b": []}
    result: dict[str, Any] = {}

    def b() -> None:
        result["b"] = run.run_captured(
            ["sh", "-c", "sleep 1000 & echo $!; sleep 3"], env_b, run.Masker([]), lambda d, e: lines["b"].append(d)
        )

    other = threading.Thread(target=b)
    other.start()
    try:
        while not lines["b"]:
            time.sleep(0.01)
        code, timed_out = run.run_captured(
            ["sh", "-c", LEAVE_BEHIND], env_a, run.Masker([]), lambda d, e: lines["a"].append(d)
        )
        a_pids = [int(p) for p in b"".join(lines["a"]).split()[:-1]]
        b_child = int(b"".join(lines["b"]).split()[0])
        assert (code, timed_out) == (0, False)
        assert [pid for pid in a_pids if alive(pid)] == []
        assert alive(b_child), "another command's child was ended"
    finally:
        other.join(timeout=30)
    b_pids = [int(p) for p in b"".join(lines["b"]).split()]
    assert result["b"] == (0, False) and not any(alive(pid) for pid in b_pids)
    kill_and_reap(a_pids + b_pids + holding(probe))

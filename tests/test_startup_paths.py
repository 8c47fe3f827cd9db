"""exec's start-up (issue 16, "honest floors"): the modules taken off its path stay off.

Each was measured on `authscope exec ... -- true` (benchmarks/startup.py) and removed:
typing (the NamedTuple records: authscope.records builds them with collections.namedtuple),
tempfile with shutil, random, bz2 and lzma (the scope root: tmpfs first, tempfile only when
no tmpfs and no $TMPDIR), base64 with struct (binascii), ctypes' Python layer (the subreaper's
prctl goes through _ctypes), subprocess with locale, warnings and fcntl (commands start with
os.posix_spawn, as Popen(close_fds=True, restore_signals=True) started them), selectors with
math (the relay polls with select.poll), threading (locks from _thread; the stop flag makes
its Event when something first waits on it). The probe runs the real exec path in a clean interpreter; each
check has a control that shows the probe seeing the module when it is imported.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authscope import base, errors, records, run, scope
from authscope.errors import CommandNotFound

REPO = Path(__file__).resolve().parents[1]
PLUGIN = str(REPO / "plugin")
EXEC = ["exec", "--registry", "h.example", "-u", "u", "--password-env", "LOCAL_PASSWORD", "-q", "--", "true"]

# Taken off exec's path; any of them back costs every wrapped command its import again.
OFF = (
    "typing", "_typing", "tempfile", "shutil", "random", "bz2", "lzma", "_bz2", "_lzma", "base64", "struct",
    "ctypes", "ctypes._endian", "subprocess", "_posixsubprocess", "locale", "warnings", "fcntl", "selectors", "math", "threading", "hashlib", "argparse", "urllib.parse", "ipaddress",
)  # fmt: skip

PROBE = """
import sys
sys.path.insert(0, {plugin!r})
before = set(sys.modules)
{prelude}
from authscope.entry import main
code = main({argv!r})
import json
print(code, json.dumps(sorted(set(sys.modules) - before)))
"""


def probe(argv: list[str], env: dict[str, str], prelude: str = "") -> tuple[int, set[str]]:
    """(exit code, modules imported) of ``entry.main(argv)`` in a clean interpreter (-I -S)."""
    code = PROBE.format(plugin=PLUGIN, argv=argv, prelude=prelude)
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    status, _, names = proc.stdout.strip().splitlines()[-1].partition(" ")
    return int(status), set(json.loads(names))


@pytest.fixture
def base_with_logins(base: Path) -> Path:
    # A base with inline logins: secrets_of decodes each `auth` (base64 on the path).
    base.mkdir(mode=0o700, exist_ok=True)
    auths = {f"registry-{i}.example:5000": {"auth": "dXNlcjpwYXNzd29yZA=="} for i in range(3)}
    (base / "config.json").write_text(json.dumps({"auths": auths}))
    return base


def without_scope_dir(env: dict[str, str]) -> dict[str, str]:
    """``env`` where exec chooses its scope root itself, as in CI (tmpfs: /dev/shm here)."""
    out = {k: v for k, v in env.items() if k not in ("AUTHSCOPE_SCOPE_DIR", "XDG_RUNTIME_DIR", "TMPDIR")}
    assert os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK)
    return out


def test_exec_path_stays_off_what_was_taken_off(env: dict[str, str], base_with_logins: Path) -> None:
    for e in (env, without_scope_dir(env)):
        status, imported = probe(EXEC, e)
        assert status == 0
        assert not imported & set(OFF), sorted(imported & set(OFF))
        assert {"authscope.scope", "authscope.base", "authscope.records", "binascii"} <= imported  # it ran


@pytest.mark.parametrize("module", ["typing", "base64", "ctypes", "tempfile"])
def test_control_the_probe_sees_a_module_that_comes_back(
    env: dict[str, str], base_with_logins: Path, module: str
) -> None:
    # As if an import came back on the path (the prelude runs after the probe's `before`).
    status, imported = probe(EXEC, env, prelude=f"import {module}")
    assert status == 0 and module in imported


def test_control_without_a_tmpfs_or_tmpdir_the_root_comes_from_tempfile(
    env: dict[str, str], base_with_logins: Path, tmp_path: Path
) -> None:
    # tempfile is still what finds the root when nothing better is there: the lazy import is
    # taken (and the scope is made where tempfile says), not skipped.
    e = without_scope_dir(env)
    e["AUTHSCOPE_TEST_TMP"] = str(tmp_path)
    prelude = (
        "import os\n"
        "real = os.access\n"
        "os.access = lambda p, m, **kw: False if str(p) == '/dev/shm' else real(p, m, **kw)\n"
        "os.environ['TMPDIR'] = ''\n"
        "os.environ['TEMP'] = os.environ['AUTHSCOPE_TEST_TMP']\n"
    )
    status, imported = probe(
        ["exec", *EXEC[1:-2], "--", "sh", "-c", 'test "${DOCKER_CONFIG%/*}" = "$TEMP"'], e, prelude
    )
    assert status == 0 and "tempfile" in imported


def test_choose_root_is_default_roots_first(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    for environ in ({"XDG_RUNTIME_DIR": str(runtime)}, {}, {"XDG_RUNTIME_DIR": str(tmp_path / "none")}):
        assert scope.choose_root(None, environ) == scope.default_roots(environ)[0]
    assert scope.default_roots({"XDG_RUNTIME_DIR": "/dev/shm"}).count(os.path.realpath("/dev/shm")) == 1


# -- records: typing.NamedTuple's class syntax, built without typing ---------------------


RECORDS = [errors.Problem, base.Snapshot, base.Damage, base.Journal, scope.Swept]

BODY = """
class Entry(NamedTuple):
    \"\"\"One entry.\"\"\"

    name: str
    port: int = 5000
    tags: tuple = ()

    def where(self) -> str:
        return f"{self.name}:{self.port}"
"""


def built_with(named_tuple: object) -> type:
    ns: dict[str, object] = {"NamedTuple": named_tuple, "__name__": "tests.records_probe"}
    exec(BODY, ns)  # the same class body through each
    return ns["Entry"]  # type: ignore[return-value]


def test_record_is_what_typing_namedtuple_builds() -> None:
    mine, theirs = built_with(records.NamedTuple), built_with(typing.NamedTuple)
    for attr in (
        "_fields",
        "_field_defaults",
        "__doc__",
        "__module__",
        "__qualname__",
        "__match_args__",
    ):
        assert getattr(mine, attr) == getattr(theirs, attr), attr
    # typing wraps the (postponed) annotation strings in ForwardRef; the strings are the same.
    assert mine.__annotations__ == {k: v.__forward_arg__ for k, v in theirs.__annotations__.items()}
    assert issubclass(mine, tuple) and not hasattr(mine(name="h"), "__dict__")  # slots, as namedtuple's
    for cls in (mine, theirs):
        e = cls("h")
        assert (tuple(e), e.where(), repr(e)) == (("h", 5000, ()), "h:5000", "Entry(name='h', port=5000, tags=())")
        assert e._replace(port=1).port == 1 and e._asdict() == {"name": "h", "port": 5000, "tags": ()}
        with pytest.raises(TypeError):
            cls()  # name has no default


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.__name__)
def test_the_records_are_namedtuples_of_their_annotations(record: type) -> None:
    assert record._fields == tuple(record.__annotations__)  # type: ignore[attr-defined]
    assert record.__qualname__ == record.__name__ and issubclass(record, tuple)
    args = [f"v{i}" for i in range(len(record._fields) - len(record._field_defaults))]  # type: ignore[attr-defined]
    value = record(*args)
    assert pickle.loads(pickle.dumps(value)) == value  # found again by module and name


def test_record_keeps_its_methods_and_defaults() -> None:
    assert str(errors.Problem("f.yml", 3, "targets[0].name", "missing")) == "f.yml:3: targets[0].name: missing"
    assert base.Journal(1, {}).pruned_through == 0
    assert base.Damage(("auths", "h"), "removed", None, True).describe().startswith("auths entry 'h' was removed")


def test_record_refuses_a_field_without_default_after_one_with() -> None:
    with pytest.raises(TypeError):

        class Bad(records.NamedTuple):
            a: int = 0
            b: int


def test_control_typing_namedtuple_imports_typing() -> None:
    # What the records save: the class syntax from typing imports typing.
    code = "import sys; from typing import NamedTuple; print('typing' in sys.modules)"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    code = f"import sys; sys.path.insert(0, {PLUGIN!r}); import authscope.base, authscope.scope; print('typing' in sys.modules)"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the subreaper's prctl without ctypes' Python layer -----------------------------------


def test_prctl_through_ctypes_c_part_is_ctypes_prctl() -> None:
    import ctypes

    PR_GET_DUMPABLE = 3  # harmless to read, and its answer is known: ctypes' own call says it
    assert run._prctl(PR_GET_DUMPABLE, 0) == ctypes.CDLL(None, use_errno=True).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)


def test_the_subreaper_is_still_set() -> None:
    # PR_GET_CHILD_SUBREAPER (37) before and after, asked by ctypes itself in the process.
    code = (
        f"import sys, ctypes; sys.path.insert(0, {PLUGIN!r}); from authscope import run; "
        "get = lambda v: ctypes.CDLL(None).prctl(37, ctypes.byref(v), 0, 0, 0); "
        "before = ctypes.c_int(); get(before); "
        "assert run._become_subreaper(); "
        "after = ctypes.c_int(); get(after); "
        "print(before.value, after.value)"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "1"]  # control: 0 before the call


# -- benchmarks/startup.py --help -------------------------------------------------------------


def test_startup_benchmark_help_says_what_it_measures() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "startup.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "2.50x" in proc.stdout and "python -c pass" in proc.stdout.replace("`", "")
    bad = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "startup.py"), "many"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "invalid int value" in bad.stderr


# -- commands start without subprocess: what Popen(close_fds, restore_signals) did ---------


def relayed(argv: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    status = run.run_relayed(argv, env, run.Masker([]), stdout=out, stderr=err)
    return status, out.getvalue() + err.getvalue()


def popen_outcome(argv: list[str], env: dict[str, str]) -> str:
    """What subprocess.Popen does with ``argv`` and ``env``: the reference."""
    try:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        return "not found"
    except PermissionError:
        return "not executable"
    out, _ = proc.communicate()
    return out.decode().strip()


def spawn_outcome(argv: list[str], env: dict[str, str]) -> str:
    try:
        return relayed(argv, env)[1].decode().strip()
    except CommandNotFound as exc:
        return "not executable" if exc.command.endswith("(not executable)") else "not found"


def test_the_command_is_searched_on_its_own_path_as_popen_searches(tmp_path: Path) -> None:
    first, second, empty = tmp_path / "first", tmp_path / "second", tmp_path / "empty"
    for d in (first, second, empty):
        d.mkdir()
    (first / "tool").write_text("#!/bin/sh\necho first\n")  # not executable: passed over for the next
    (second / "tool").write_text("#!/bin/sh\necho second\n")
    (second / "tool").chmod(0o755)
    (first / "locked").write_text("#!/bin/sh\necho locked\n")
    (tmp_path / "file").write_text("")  # a PATH entry that is a file: ENOTDIR
    cases = [
        (["tool"], f"{tmp_path / 'file'}:{first}:{second}"),
        (["tool"], f"{empty}:{second}"),
        (["tool"], str(empty)),
        (["locked"], f"{first}:{second}"),  # only a non-executable one: PermissionError
        ([str(second / "tool")], str(empty)),  # a path: no search
        ([str(first / "tool")], str(empty)),
        (["sh", "-c", "echo $0"], f"{empty}:/bin:/usr/bin"),
    ]
    assert shutil.which("tool") is None  # control: authscope's own PATH has none of them
    for argv, path in cases:
        env = {"PATH": path}
        assert spawn_outcome(argv, env) == popen_outcome(argv, env), (argv, path)
    assert spawn_outcome(["tool"], {"PATH": f"{first}:{second}"}) == "second"


def test_a_descriptor_authscope_inherited_does_not_reach_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # A runner's open descriptor (inheritable, given to authscope) would let the tool write
    # into it; Popen's close_fds closed it, and so does the spawn.
    r, w = os.pipe()
    os.set_inheritable(w, True)
    probe = ["sh", "-c", f"[ -e /proc/$$/fd/{w} ] && echo leaked || echo closed"]
    try:
        assert relayed(probe, dict(os.environ))[1].strip() == b"closed"
        monkeypatch.setattr(run, "_inherited_fds", lambda: [])  # control: nothing closed
        assert relayed(probe, dict(os.environ))[1].strip() == b"leaked"
    finally:
        os.close(r)
        os.close(w)


def test_the_command_gets_sigpipe_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # Python ignores SIGPIPE; `tool | head` must end the tool, as after Popen's restore_signals.
    probe = ["sh", "-c", "grep SigIgn /proc/$$/status"]
    pipe_bit = 1 << (signal.SIGPIPE - 1)
    assert not int(relayed(probe, dict(os.environ))[1].split()[1], 16) & pipe_bit
    monkeypatch.setattr(run, "_RESTORED", ())  # control: the ignored SIGPIPE is inherited
    assert int(relayed(probe, dict(os.environ))[1].split()[1], 16) & pipe_bit


def test_exit_codes_signals_and_stdin_as_before() -> None:
    assert relayed(["sh", "-c", "exit 7"], dict(os.environ))[0] == 7
    assert relayed(["sh", "-c", "kill -TERM $$"], dict(os.environ))[0] == 128 + signal.SIGTERM
    lines: list[bytes] = []
    status, _ = run.run_captured(
        ["sh", "-c", "cat; echo done"], dict(os.environ), run.Masker([]), lambda b, e: lines.append(b)
    )
    assert status == 0 and b"".join(lines) == b"done\n"  # stdin is /dev/null: cat ends at once


def test_the_console_script_skips_the_teardown_and_keeps_output_and_code(
    env: dict[str, str], base_with_logins: Path
) -> None:
    # exit_now after exec: an atexit handler (the interpreter's teardown) never runs, while the
    # command's output (through a pipe, so buffered) and exit code are intact.
    code = (
        f"import atexit, sys; sys.path.insert(0, {PLUGIN!r}); atexit.register(print, 'teardown'); "
        "from authscope.entry import main; sys.argv = ['authscope', *sys.argv[1:]]; sys.exit(main())"
    )
    argv = [*EXEC[:-1], "sh", "-c", "echo out; exit 5"]
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (5, "out\n"), proc.stderr
    # Control: called with argv (not as the console script), main returns and teardown runs.
    code = code.replace("main()", "main(sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (5, "out\nteardown\n"), proc.stderr


# -- no pattern compiled at run time on exec's path -----------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(["\r", "\n", "\\", "r", "n", "a", " "]), max_size=24))
def test_line_splits_are_the_patterns_they_replace(text: str) -> None:
    assert run._lines(text) == re.split(r"\r\n|\r|\n", text)
    assert run._escaped_lines(text) == re.split(r"\\r\\n|\\n", text)


def test_pid_namespace_is_the_links_number() -> None:
    link = os.readlink("/proc/self/ns/pid")
    assert scope.pid_namespace() == int(re.sub(r"\D", "", link)) > 0


def test_the_stop_flag_is_an_event_made_when_first_waited_on() -> None:
    import threading
    import time

    flag = run._Flag()
    flag.set()  # set before any Event exists: the first wait sees it at once
    start = time.monotonic()
    assert flag.wait(5) and time.monotonic() - start < 1
    flag.clear()
    assert not flag.is_set() and not flag.wait(0.05)  # control: a cleared flag times out
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(flag.wait(30)))
    waiter.start()
    time.sleep(0.1)
    flag.set()  # from another thread (the signal handler runs in the main one)
    waiter.join(10)
    assert woke == [True]


def test_a_command_fails_even_when_authscope_was_started_with_sigchld_ignored(
    env: dict[str, str], base_with_logins: Path
) -> None:
    # A runner may start authscope with SIGCHLD ignored (inherited across exec): the
    # kernel then reaps each command itself and waitpid finds no status. authscope
    # puts SIGCHLD back to its default, so a failing command still fails exec.
    code = (
        "import signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
        f"sys.path.insert(0, {PLUGIN!r}); from authscope.entry import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = [*EXEC[:-1], "sh", "-c", "exit 5"]
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 5, proc.stderr
    # Control: without the reset, the same child's status is lost (read as 0).
    code = code.replace(
        "from authscope.entry", "import authscope.run as r; r.signal.getsignal = lambda s: None; from authscope.entry"
    )
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr

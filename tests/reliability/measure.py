"""The reliability measurements, shared by the tests and ``scripts/reliability.py``.

Each function sets up its own directories under ``workdir``, runs real
processes, and returns a record of counts; the tests assert on the counts
and the script prints them. Nothing here uses pytest.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "worker.py"
LOCAL = "gitlab.local:4567"
LOCAL_AUTH = "Y2k6bG9jYWwtdGVzdC1wYXNzd29yZC0wMDAx"  # ci:local-test-password-0001 (fake)
BASE_EXTRA = {"HttpHeaders": {"User-Agent": "authscope-reliability"}, "x-unknown": [1, 2]}


def worker_env(root: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A small environment: nothing of the caller's Docker/registry/CI settings leaks in."""
    home = root / "home"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    pythonpath = [str(REPO / "plugin"), str(REPO)]
    if os.environ.get("PYTHONPATH"):
        pythonpath.append(os.environ["PYTHONPATH"])
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(extra or {})
    return env


def make_base(directory: Path) -> Path:
    """A base holding the local login and keys no tool knows, written by authscope itself."""
    from authscope import base

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / "config.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"auths": {}, **BASE_EXTRA}, f, indent="\t")
    base.login(str(directory), LOCAL, {"auth": LOCAL_AUTH})
    return path


def _worker(mode: str, *args: object, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), mode, *(str(a) for a in args)],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _finish(proc: subprocess.Popen[Any], timeout: float) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err.decode("utf-8", "replace") if isinstance(err, bytes) else (err or "")


# -- 1. concurrency -------------------------------------------------------------------------


@dataclass
class Concurrency:
    mode: str  # cycle (functions), cli (the real CLI), naive (the control)
    procs: int
    cycles: int
    logins: int = 0
    logouts: int = 0
    execs: int = 0
    lost: set[str] = field(default_factory=set)  # committed, not logged out, missing at some check
    resurrected: set[str] = field(default_factory=set)  # logged out, present afterwards
    false_restores: int = 0
    reads: int = 0
    broken_reads: int = 0
    reads_without_local: int = 0
    reads_without_keys: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    live_expected: int = 0
    journal_bytes: int = 0
    scopes_left: int = 0
    final_parses: bool = True

    def line(self) -> str:
        what = {
            "cycle": "functions",
            "cli": "real CLI",
            "naive": "naive writer (control)",
            "nolock": "authscope without its lock (control)",
            "inplace": "authscope writing in place (control)",
        }[self.mode]
        return (
            f"{what}: {self.procs} procs x {self.cycles} cycles ({self.logins} logins, {self.execs} execs, "
            f"{self.logouts} logouts) in {self.seconds:.1f}s: lost {len(self.lost)} of {self.logins}, "
            f"broken reads {self.broken_reads} of {self.reads}, reads without the local login {self.reads_without_local}, "
            f"false restores {self.false_restores}, resurrected {len(self.resurrected)}, errors {len(self.errors)}"
            + ("" if self.final_parses else "; the final base does not parse")
        )


def concurrency(workdir: Path, procs: int = 16, cycles: int = 50, mode: str = "cycle") -> Concurrency:
    """``procs`` processes x ``cycles`` of login / exec (wipe) / logout on one base, and a reader."""
    workdir.mkdir(parents=True, exist_ok=True)
    base_dir, scopes = workdir / "base", workdir / "scopes"
    scopes.mkdir(mode=0o700)
    path = make_base(base_dir)
    env = worker_env(workdir)
    stop, reader_out = workdir / "stop-reader", workdir / "reader.json"
    result = Concurrency(mode, procs, cycles)
    started = time.monotonic()
    reader = _worker("reader", base_dir, stop, reader_out, LOCAL_AUTH, env=env)
    workers = [_worker(mode, base_dir, scopes, n, cycles, workdir / f"worker-{n}.json", env=env) for n in range(procs)]
    stderr = [_finish(w, 600) for w in workers]
    stop.touch()
    stderr.append(_finish(reader, 60))
    result.seconds = time.monotonic() - started
    result.errors += [e.strip().splitlines()[-1] for e in stderr if e.strip()]

    live: set[str] = set()
    logged_out: set[str] = set()
    for n in range(procs):
        out = workdir / f"worker-{n}.json"
        if not out.exists():
            result.errors.append(f"worker {n} wrote no summary")
            continue
        summary = json.loads(out.read_text())
        result.logins += len(summary["committed"])
        result.logouts += len(summary["logged_out"])
        result.execs += summary["execs"]
        result.lost.update(summary["lost"])
        result.resurrected.update(summary["resurrected"])
        result.false_restores += summary["false_restores"]
        result.errors += summary["errors"]
        live.update(set(summary["committed"]) - set(summary["logged_out"]))
        logged_out.update(summary["logged_out"])
    reader_summary = json.loads(reader_out.read_text())
    result.reads = reader_summary["reads"]
    result.broken_reads = reader_summary["broken"]
    result.reads_without_local = reader_summary["missing_local"]
    result.reads_without_keys = reader_summary["missing_keys"]

    try:
        final = json.loads(path.read_bytes())
    except ValueError as exc:
        result.errors.append(f"final base does not parse: {exc}")
        result.final_parses = False
        final = {}
    auths = final.get("auths", {})
    result.live_expected = len(live)
    result.lost.update(live - set(auths))
    if auths.get(LOCAL, {}).get("auth") != LOCAL_AUTH:
        result.lost.add(LOCAL)
    result.resurrected.update(logged_out & set(auths))
    journal = base_dir / "config.json.authscope"
    result.journal_bytes = journal.stat().st_size if journal.exists() else 0
    result.scopes_left = len(list(scopes.iterdir()))
    return result


# -- 2. crash -----------------------------------------------------------------------------


@dataclass
class Crash:
    kills: int
    writers: int
    kills_mid_login: int = 0  # the victim had started a login that had not returned
    in_flight_landed: int = 0  # ... and that login's entry made it into the base anyway
    committed: int = 0
    checks: int = 0
    unparsable: int = 0  # checks where config.json did not parse
    lost: set[str] = field(default_factory=set)  # committed before a kill, missing after it
    journal_unparsable: int = 0
    stray_temp_files: int = 0
    lock_left: bool = False
    login_after_seconds: float = 0.0
    login_after_ok: bool = False
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.kills} SIGKILLs of {self.writers} looping writers ({self.kills_mid_login} mid-login, "
            f"{self.in_flight_landed} of those landed) in {self.seconds:.1f}s: {self.committed} entries committed, "
            f"base unparsable {self.unparsable} of {self.checks} checks, lost {len(self.lost)}; "
            f"stray temp files {self.stray_temp_files}; stale lock file {'left' if self.lock_left else 'absent'}, "
            f"next login {'ok' if self.login_after_ok else 'FAILED'} in {self.login_after_seconds:.2f}s"
        )


def _committed(log: Path) -> tuple[set[int], int | None, bool]:
    """(entries whose login returned, the one started and not returned, ready)."""
    done: set[int] = set()
    started: int | None = None
    ready = False
    for line in log.read_text().splitlines():
        if line == "R":
            ready = True
        elif line.startswith("S "):
            started = int(line[2:])
        elif line.startswith("D "):
            done.add(int(line[2:]))
    in_flight = started if started is not None and started not in done else None
    return done, in_flight, ready


class _Zygote:
    """A process that has imported authscope and forks crash writers on request."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), "zygote"],
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def spawn(self, base_dir: Path, log: Path, prefix: str) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"spawn {base_dir} {log} {prefix}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the zygote died: {_finish(self.proc, 5)}")
        return int(answer)

    def close(self) -> None:
        _finish(self.proc, 10)


def kill_and_wait(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL ``pid`` and wait until the kernel has reaped it (its locks and files are released)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.001)
    raise RuntimeError(f"pid {pid} survived SIGKILL")


def crash(workdir: Path, kills: int = 200, writers: int = 4, seed: int | None = None) -> Crash:
    """SIGKILL processes looping ``base.login`` at random times; check the base after each kill.

    ``writers`` run at once, so many kills land while other logins hold or
    wait for the lock; each victim is replaced by a fresh process (with fresh
    entry names), so every kill hits a different process. Writers are forked
    from a "zygote" that has imported authscope already (see worker.py).
    """
    from authscope import base

    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    base_dir = workdir / "base"
    path = make_base(base_dir)
    env = worker_env(workdir)
    result = Crash(kills, writers)
    started = time.monotonic()
    generation = 0
    running: dict[str, int] = {}  # prefix -> pid
    logs: dict[str, Path] = {}
    zygote = _Zygote(env)

    def spawn() -> str:
        nonlocal generation
        prefix = f"g{generation:04d}"
        generation += 1
        logs[prefix] = workdir / f"{prefix}.log"
        running[prefix] = zygote.spawn(base_dir, logs[prefix], prefix)
        return prefix

    def wait_ready(prefix: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if logs[prefix].exists() and logs[prefix].read_bytes().startswith(b"R\n"):
                return
            time.sleep(0.001)
        raise RuntimeError("crash writer never got ready")

    def check() -> None:
        # Logs first, then the base: every entry logged as done is already in it.
        committed: set[str] = {LOCAL}
        for prefix, log in logs.items():
            if log.exists():
                done, _, _ = _committed(log)
                committed.update(f"{prefix}-{n}.example" for n in done)
        result.checks += 1
        try:
            auths = json.loads(path.read_bytes())["auths"]
        except (ValueError, KeyError, OSError) as exc:
            result.unparsable += 1
            result.errors.append(f"base unreadable after a kill: {exc}")
            return
        result.lost.update(name for name in committed if name not in auths)
        result.committed = len(committed) - 1
        journal = base_dir / "config.json.authscope"
        if journal.exists():
            try:
                json.loads(journal.read_bytes())
            except ValueError:
                result.journal_unparsable += 1

    try:
        for _ in range(writers):
            wait_ready(spawn())
        for _ in range(kills):
            victim = rng.choice(sorted(running))
            time.sleep(rng.uniform(0.0, 0.02))
            kill_and_wait(running.pop(victim))
            _, in_flight, _ = _committed(logs[victim])
            check()
            if in_flight is not None:
                result.kills_mid_login += 1
                try:
                    if f"{victim}-{in_flight}.example" in json.loads(path.read_bytes())["auths"]:
                        result.in_flight_landed += 1
                except ValueError:
                    pass
            wait_ready(spawn())
    finally:
        for pid in running.values():
            kill_and_wait(pid)
        zygote.close()
    check()
    result.lock_left = (base_dir / "config.json.lock").exists()
    result.stray_temp_files = sum(1 for p in base_dir.iterdir() if p.name.endswith(".tmp"))
    t0 = time.monotonic()
    try:
        base.login(str(base_dir), "after-the-kills.example", {"auth": LOCAL_AUTH})
        result.login_after_ok = "after-the-kills.example" in json.loads(path.read_bytes())["auths"]
    except Exception as exc:  # reported as a figure
        result.errors.append(f"login after the kills: {exc}")
    result.login_after_seconds = time.monotonic() - t0
    result.seconds = time.monotonic() - started
    return result


# -- 3. cancel ----------------------------------------------------------------------------

CANCEL_PHASES = ("source", "preflight", "copy", "verify", "report")
TARGET_PASSWORD = "cancel-test-password-0003"  # fake
TAIL_LINE = "x" * 8000
# A section lists every destination: 3 failed targets with these tags overflow
# a pipe (the output tail alone can't: reports cap it at 8 KB a target).
REPORT_TAGS = [f"{n:03d}-" + "x" * 120 for n in range(200)]


@dataclass
class Cancel:
    phase: str
    signal: int
    exit_code: int | None = None
    seconds_to_exit: float = 0.0
    scopes_during: int = 0  # scopes that existed when the signal was sent
    scopes_left: int = 0
    statuses: dict[str, str] = field(default_factory=dict)  # from the JSON report
    json_status: str = ""
    junit_interrupted: int = 0
    junit_cases: int = 0
    dotenv_written: bool = False
    base_unchanged: bool = False
    children_left: int = 0
    stdout: str = ""
    stderr: str = ""

    def line(self) -> str:
        name = signal.Signals(self.signal).name
        return (
            f"{name} during {self.phase}: exit {self.exit_code} after {self.seconds_to_exit:.2f}s, "
            f"scopes {self.scopes_during} -> {self.scopes_left}, report {self.json_status or 'MISSING'} "
            f"{sorted(self.statuses.items())}, base {'unchanged' if self.base_unchanged else 'CHANGED'}, "
            f"children left {self.children_left}"
        )


def _targets_file(
    path: Path, registry: str, command: list[str], count: int, jobs: int, tags: list[str] | None = None
) -> None:
    lines = [
        f"source: {registry}/app:1.0",
        "tool: custom",
        f"command: {json.dumps(command)}",
        f"jobs: {jobs}",
        "retries: 0",
        *([f"tags: {json.dumps(tags)}"] if tags else []),
        "targets:",
    ]
    for n in range(1, count + 1):
        lines += [
            f"  - name: t{n}",
            f"    registry: {registry}",
            f"    repository: release/t{n}",
            "    username: ci",
            "    password_env: TARGET_PASSWORD",
        ]
    path.write_text("\n".join(lines) + "\n")


def _pids_with(marker: str) -> list[int]:
    """Processes whose command line holds ``marker`` (the phase's custom command)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _started_pids(stdout: str) -> list[int]:
    """Pids the copy commands printed (``[tN] started tN PID``)."""
    import re

    return [int(pid) for pid in re.findall(r"\] started t\d+ (\d+)", stdout)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def cancel(workdir: Path, phase: str, sig: int, fork: bool = False) -> Cancel:
    """Start a real ``authscope fanout`` (3 targets, 2 at a time), hold it in ``phase``, send ``sig``.

    ``fork``: in the copy phase, run ``sh -c 'echo ...; sleep 60'`` (the shell forks ``sleep``)
    instead of ``exec sleep 60``, to measure how often a signal falls into dash's fork.
    """
    from tests.reliability.fakeregistry import FakeRegistry

    workdir.mkdir(parents=True, exist_ok=True)
    result = Cancel(phase, sig)
    scopes = workdir / "scopes"
    scopes.mkdir(mode=0o700)
    marker = f"authscope-cancel-{os.getpid()}-{phase}-{int(sig)}"
    if phase == "copy":
        # exec: no fork left in the shell, so a signal cannot fall between a
        # fork and an exec (where dash loses it, and authscope has to SIGKILL
        # after its 10 s grace; see docs/RELIABILITY.md).
        command = ["sh", "-c", "echo started {name} $$; " + ("sleep 60" if fork else "exec sleep 60")]
    elif phase == "report":
        command = ["sh", "-c", f"for i in $(seq 30); do echo {TAIL_LINE}; done; exit 1 # {marker}"]
    else:
        command = ["sh", "-c", f"echo copied {{destination}} # {marker}"]
    with FakeRegistry("ci", TARGET_PASSWORD) as registry:
        base_dir = workdir / "base"
        base_dir.mkdir(mode=0o700)
        env = worker_env(
            workdir,
            {"DOCKER_CONFIG": str(base_dir), "AUTHSCOPE_SCOPE_DIR": str(scopes), "TARGET_PASSWORD": TARGET_PASSWORD},
        )
        login = subprocess.run(
            [
                sys.executable,
                "-m",
                "authscope",
                "login",
                registry.host,
                "-u",
                "ci",
                "--password-env",
                "TARGET_PASSWORD",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if login.returncode != 0:
            raise RuntimeError(f"login failed: {login.stderr}")
        before = (base_dir / "config.json").read_bytes()
        targets = workdir / "authscope.yml"
        _targets_file(targets, registry.host, command, count=3, jobs=2, tags=REPORT_TAGS if phase == "report" else None)
        reports = {kind: workdir / f"report.{kind}" for kind in ("json", "xml", "env")}
        hold = {"source": "source", "preflight": "ping", "verify": "verify"}.get(phase)
        if hold:
            registry.hold(hold)
        proc = subprocess.Popen(
            [sys.executable, "-m", "authscope", "fanout", "-f", str(targets),
             "--json", str(reports["json"]), "--junit", str(reports["xml"]), "--dotenv", str(reports["env"])],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        out = b""
        try:
            if hold:
                if not registry.arrived(hold):
                    raise RuntimeError(f"fan-out never reached {phase}")
                time.sleep(0.2)  # let the second job arrive too
            elif phase == "copy":
                while out.count(b"] started t") < 2:
                    line = proc.stdout.readline()
                    if not line:
                        raise RuntimeError("fan-out ended before its copies started")
                    out += line
            elif phase == "report":
                # Read the live log until every target has finished, then stop
                # reading: the sections (30 long lines per failed target) fill
                # the pipe and hold authscope inside its reporting.
                while out.count(b"FAILED: ") < 3:
                    line = proc.stdout.readline()
                    if not line:
                        raise RuntimeError("fan-out ended before reporting")
                    out += line
                time.sleep(0.5)
                if proc.poll() is not None or reports["json"].exists():
                    raise RuntimeError("reporting was not held")
            result.scopes_during = len(list(scopes.iterdir()))
            sent = time.monotonic()
            proc.send_signal(sig)
            if hold:
                time.sleep(0.5)  # the signal lands while the request is held ...
                registry.release(hold)  # ... then the registry answers
            rest, err = proc.communicate(timeout=120)
            result.seconds_to_exit = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        result.exit_code = proc.returncode
        result.stdout = (out + rest).decode("utf-8", "replace")
        result.stderr = err.decode("utf-8", "replace")
        result.scopes_left = len(list(scopes.iterdir()))
        result.base_unchanged = (base_dir / "config.json").read_bytes() == before
        time.sleep(0.1)
        left = _pids_with(marker) + [pid for pid in _started_pids(result.stdout) if _alive(pid)]
        result.children_left = len(left)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if reports["json"].exists():
        doc = json.loads(reports["json"].read_text())
        result.json_status = doc["status"]
        result.statuses = {t["name"]: t["status"] for t in doc["targets"]}
    if reports["xml"].exists():
        import xml.etree.ElementTree as ET

        tree = ET.parse(reports["xml"])
        cases = tree.findall(".//testcase")
        result.junit_cases = len(cases)
        result.junit_interrupted = sum(1 for c in cases if c.find("failure[@type='interrupted']") is not None)
    result.dotenv_written = reports["env"].exists()
    return result


@dataclass
class Sweep:
    scopes_of_killed: int = 0
    scopes_of_live: int = 0
    sweep_exit: int | None = None
    swept: int = 0
    left_after_sweep: int = 0
    live_scopes_kept: bool = False
    live_exit: int | None = None
    left_at_end: int = 0
    sweep_stderr: str = ""

    def line(self) -> str:
        return (
            f"SIGKILL of a fan-out with {self.scopes_of_killed} open scopes, beside a live one with "
            f"{self.scopes_of_live}: sweep exit {self.sweep_exit}, removed {self.swept}, live scopes "
            f"{'kept' if self.live_scopes_kept else 'TOUCHED'}; after the live one's SIGTERM (exit "
            f"{self.live_exit}): {self.left_at_end} scopes left"
        )


def sweep_after_kill(workdir: Path) -> Sweep:
    """SIGKILL one ``authscope fanout`` mid-copy while another runs; ``authscope sweep`` then."""
    from tests.reliability.fakeregistry import FakeRegistry

    workdir.mkdir(parents=True, exist_ok=True)
    result = Sweep()
    scopes = workdir / "scopes"
    scopes.mkdir(mode=0o700)
    base_dir = workdir / "base"
    base_dir.mkdir(mode=0o700)
    with FakeRegistry("ci", TARGET_PASSWORD) as registry:
        env = worker_env(
            workdir,
            {"DOCKER_CONFIG": str(base_dir), "AUTHSCOPE_SCOPE_DIR": str(scopes), "TARGET_PASSWORD": TARGET_PASSWORD},
        )
        cli = [sys.executable, "-m", "authscope"]
        subprocess.run(
            [*cli, "login", registry.host, "-u", "ci", "--password-env", "TARGET_PASSWORD"],
            env=env, capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        targets = workdir / "authscope.yml"
        _targets_file(targets, registry.host, ["sh", "-c", "echo started {name} $$; exec sleep 60"], count=2, jobs=2)
        procs: list[subprocess.Popen[bytes]] = []
        outputs: list[bytes] = []
        try:
            for _ in range(2):
                before = set(scopes.iterdir())
                # --force: the second run must copy too, though the first already "landed" (FakeRegistry.fresh)
                proc = subprocess.Popen(
                    [*cli, "fanout", "-f", str(targets), "--force"], env=env,
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                procs.append(proc)
                assert proc.stdout is not None
                out = b""
                while out.count(b"] started t") < 2:
                    line = proc.stdout.readline()
                    if not line:
                        raise RuntimeError("fan-out ended before its copies started")
                    out += line
                outputs.append(out)
                mine = set(scopes.iterdir()) - before
                if not result.scopes_of_killed:
                    result.scopes_of_killed = len(mine)
                else:
                    result.scopes_of_live = len(mine)
                    live = mine
            killed = procs[0]
            killed.kill()
            killed.wait()
            for pid in _started_pids(outputs[0].decode()):  # its copies are in their own process groups
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sweep = subprocess.run([*cli, "sweep"], env=env, capture_output=True, text=True, timeout=60)
            result.sweep_exit = sweep.returncode
            result.sweep_stderr = sweep.stderr
            result.swept = sweep.stderr.count("removed stale scope")
            remaining = set(scopes.iterdir())
            result.left_after_sweep = len(remaining)
            result.live_scopes_kept = remaining == live and all((p / "config.json").exists() for p in live)
            procs[1].send_signal(signal.SIGTERM)
            procs[1].communicate(timeout=60)
            result.live_exit = procs[1].returncode
            result.left_at_end = len(list(scopes.iterdir()))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate()
            for out in outputs:
                for pid in _started_pids(out.decode()):
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
    return result


# -- 6. secrets ----------------------------------------------------------------------------

TOOLS_BIN = REPO / ".tools" / "bin"
E2E_TOOLS = ("crane", "skopeo", "regctl")


class ProcSampler:
    """A thread that reads every /proc/*/cmdline in a loop and keeps each distinct one."""

    def __init__(self, interval: float = 0.002) -> None:
        import threading

        self.interval = interval
        self.cmdlines: set[bytes] = set()
        self.passes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) == me:
                    continue
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                if data:
                    self.cmdlines.add(data)
            self.passes += 1
            self._stop.wait(self.interval)

    def programs(self) -> set[str]:
        return {os.path.basename(c.split(b"\0", 1)[0].decode("utf-8", "replace")) for c in self.cmdlines}

    def __enter__(self) -> ProcSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class ScopeSampler:
    """A thread that lists every scope under ``root`` in a loop, with the mode of each entry."""

    def __init__(self, root: Path, interval: float = 0.002) -> None:
        import threading

        self.root = root
        self.interval = interval
        self.scopes: set[str] = set()
        self.modes: dict[str, set[int]] = {}  # "dir" | "file:<name>" | "link:<name>" -> modes seen
        self.files_seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scope-sampler", daemon=True)

    def _note(self, kind: str, mode: int) -> None:
        self.modes.setdefault(kind, set()).add(mode & 0o7777)

    def _run(self) -> None:
        import stat as S

        while not self._stop.is_set():
            try:
                scopes = list(os.scandir(self.root))
            except OSError:
                scopes = []
            for scope in scopes:
                try:
                    self._note("scope dir", scope.stat(follow_symlinks=False).st_mode)
                    self.scopes.add(scope.name)
                    for dirpath, dirnames, filenames in os.walk(scope.path):
                        rel = os.path.relpath(dirpath, scope.path)
                        for name in dirnames:
                            st = os.lstat(os.path.join(dirpath, name))
                            kind = "link" if S.S_ISLNK(st.st_mode) else "dir"
                            self._note(f"{kind}:{os.path.join(rel, name)}", st.st_mode)
                        for name in filenames:
                            st = os.lstat(os.path.join(dirpath, name))
                            kind = "link" if S.S_ISLNK(st.st_mode) else "file"
                            self._note(f"{kind}:{os.path.join(rel, name)}", st.st_mode)
                            self.files_seen += 1
                except OSError:
                    continue  # the scope went away while we looked
            self._stop.wait(self.interval)

    def __enter__(self) -> ScopeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass
class Secrets:
    secrets: int = 0  # distinct secret strings searched for (raw and base64 auth forms)
    runs: int = 0
    outputs_bytes: int = 0
    leaks_in_output: list[str] = field(default_factory=list)
    leaks_in_reports: list[str] = field(default_factory=list)
    leaks_in_argv: list[str] = field(default_factory=list)
    cmdlines: int = 0
    sampler_passes: int = 0
    tools_seen: set[str] = field(default_factory=set)
    scopes_sampled: int = 0
    files_sampled: int = 0
    bad_modes: list[str] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)  # every scope entry sampled, e.g. "file:./config.json"
    statuses: dict[str, str] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)
    masked_lines: int = 0
    scopes_left: int = 0
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.runs} authscope runs (login x2, fanout of {len(self.statuses)} targets with "
            f"{'/'.join(sorted(self.tools_seen & set(E2E_TOOLS)))}, exec x2, logout), {self.secrets} secret forms: "
            f"in stdout/stderr {len(self.leaks_in_output)}, in JUnit/dotenv/JSON {len(self.leaks_in_reports)}, "
            f"in argv {len(self.leaks_in_argv)} of {self.cmdlines} distinct command lines "
            f"({self.sampler_passes} /proc passes; saw {', '.join(sorted(self.tools_seen & set(E2E_TOOLS)))}); "
            f"{self.scopes_sampled} scopes / {self.files_sampled} file sightings sampled, bad modes {len(self.bad_modes)}; "
            f"[MASKED] lines {self.masked_lines}"
        )


def _b64(user: str, password: str) -> str:
    import base64

    return base64.b64encode(f"{user}:{password}".encode()).decode()


def secrets(workdir: Path) -> Secrets:
    """A real fan-out (crane, skopeo, regctl) plus login/exec/logout against real registries,
    with /proc/*/cmdline and the scope directory sampled throughout."""
    import secrets as random_secrets

    from tests.support import CA, isolated_env, publish_image, start_registry

    result = Secrets()
    workdir.mkdir(parents=True, exist_ok=True)
    env = isolated_env(workdir / "env")
    env["PATH"] = f"{TOOLS_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["LANG"] = "C.UTF-8"
    env["PYTHONPATH"] = worker_env(workdir)["PYTHONPATH"]
    scopes = workdir / "scopes"
    scopes.mkdir(mode=0o700)
    env["AUTHSCOPE_SCOPE_DIR"] = str(scopes)
    base_dir = Path(env["DOCKER_CONFIG"])

    def password() -> str:
        return "test-secret-" + random_secrets.token_hex(10)

    ca = CA.create(workdir / "ca")
    registries = []
    try:
        local = start_registry(workdir / "reg", username="ci-user", password=password(), name="local")
        registries.append(local)
        r1 = start_registry(workdir / "reg", username="robot$release+ci", password=password(), name="remote-1")
        registries.append(r1)
        r2 = start_registry(workdir / "reg", username="harbor-2", password=password(), tls=ca, name="remote-2")
        registries.append(r2)
        source = publish_image(local, workdir / "source", env, repository="app", tag="1.0")
        wrong = password()
        forms = set()
        for user, pw in [(r.username, r.password) for r in registries] + [(r1.username, wrong)]:
            forms.update({pw, _b64(user, pw)})
        result.secrets = len(forms)
        password_file = workdir / "remote-2.password"
        password_file.write_text(r2.password + "\n")
        password_file.chmod(0o600)
        env.update(LOCAL_PASSWORD=local.password, R1_PASSWORD=r1.password, WRONG_PASSWORD=wrong)
        env.update(SRC=source.ref, R1=r1.host, SSL_CERT_FILE=str(ca.cert))
        targets = workdir / "authscope.yml"
        target_lines = [
            ("t-crane", r1, "crane", "release/crane", "password_env: R1_PASSWORD"),
            ("t-regctl", r1, "regctl", "release/regctl", "password_env: R1_PASSWORD"),
            ("t-skopeo-tls", r2, "skopeo", "release/skopeo", f"password_file: {password_file}"),
            ("t-crane-tls", r2, "crane", "release/crane", f"password_file: {password_file}"),
            ("t-wrong-password", r1, "crane", "release/wrong", "password_env: WRONG_PASSWORD"),
        ]
        lines = [f"source: {{image: {source.ref}, insecure: true}}", 'tags: ["1.0", latest]', "jobs: 3", "retries: 0",
                 "targets:"]  # fmt: skip
        for name, reg, tool, repo, secret_ref in target_lines:
            lines += [f"  - name: {name}", f"    registry: {reg.host}", f"    repository: {repo}",
                      f"    tool: {tool}", f"    username: {reg.username}", f"    {secret_ref}"]  # fmt: skip
            if reg.tls:
                lines.append(f"    ca_file: {ca.cert}")
        targets.write_text("\n".join(lines) + "\n")
        reports = {"json": workdir / "report.json", "junit": workdir / "report.xml", "dotenv": workdir / "report.env"}
        # Everything the scope knows, printed: its config, and the passwords it holds.
        show = 'cat "$DOCKER_CONFIG/config.json"; echo "password: $R1_PASSWORD"; env | grep -E "^(R1|LOCAL)_PASSWORD="'
        crane_in_scope = (
            f'{show}; printf %s "$R1_PASSWORD" | crane auth login "$R1" -u "robot\\$release+ci" --password-stdin'
            ' && crane copy "$SRC" "$R1/release/exec:1.0" && crane auth logout "$R1"; cat "$DOCKER_CONFIG/config.json"'
        )
        skopeo_in_scope = 'skopeo inspect --tls-verify=false "docker://$R1/release/crane:1.0" | head -c 300; echo'
        runs: list[tuple[str, list[str], str | None]] = [
            ("login --password-stdin", ["login", local.host, "-u", local.username, "--password-stdin"], local.password),
            ("login --verify", ["login", local.host, "-u", local.username, "--password-env", "LOCAL_PASSWORD", "--verify"], None),
            ("fanout", ["fanout", "-f", str(targets), "--json", str(reports["json"]), "--junit", str(reports["junit"]),
                        "--dotenv", str(reports["dotenv"])], None),
            ("exec crane", ["exec", "--registry", r1.host, "-u", r1.username, "--password-env", "R1_PASSWORD",
                            "--", "sh", "-c", crane_in_scope], None),
            ("exec skopeo", ["exec", "--registry", r1.host, "-u", r1.username, "--password-env", "R1_PASSWORD",
                             "--", "sh", "-c", skopeo_in_scope], None),
            ("logout", ["logout", local.host], None),
        ]  # fmt: skip
        outputs = []
        with ProcSampler() as procs, ScopeSampler(scopes) as sampler:
            for name, args, stdin in runs:
                proc = subprocess.run(
                    [sys.executable, "-m", "authscope", *args], env=env, input=stdin, capture_output=True,
                    text=True, timeout=300, stdin=None if stdin is not None else subprocess.DEVNULL,
                )  # fmt: skip
                result.runs += 1
                result.exit_codes[name] = proc.returncode
                outputs.append((name, proc.stdout + proc.stderr))
        for name, text in outputs:
            result.outputs_bytes += len(text)
            result.masked_lines += sum(1 for line in text.splitlines() if "[MASKED]" in line)
            result.leaks_in_output += [f"{name}: {s[:12]}..." for s in forms if s in text]
        for kind, path in reports.items():
            if not path.exists():
                result.errors.append(f"no {kind} report")
                continue
            data = path.read_text()
            result.leaks_in_reports += [f"{kind}: {s[:12]}..." for s in forms if s in data]
        if reports["json"].exists():
            result.statuses = {t["name"]: t["status"] for t in json.loads(reports["json"].read_text())["targets"]}
        result.cmdlines = len(procs.cmdlines)
        result.sampler_passes = procs.passes
        result.tools_seen = procs.programs()
        result.leaks_in_argv += [
            f"{c.replace(bytes(1), b' ')[:80]!r}" for c in procs.cmdlines for s in forms if s.encode() in c
        ]
        result.scopes_sampled = len(sampler.scopes)
        result.files_sampled = sampler.files_seen
        # Every file in a scope 0600, every directory 0700: authscope's own and whatever the tools made
        # (crane's temporary config.json<N>, for one); links (cli-plugins, contexts) carry no data.
        # The refusing credential-store shims in bin/ are scripts: 0700, private as well.
        for kind, modes in sorted(sampler.modes.items()):
            want = 0o600 if kind.startswith("file:") else 0o700 if kind.startswith(("dir:", "scope dir")) else None
            if kind.startswith("file:bin/docker-credential-"):
                want = 0o700
            if want is not None:
                result.bad_modes += [f"{kind} {oct(m)}" for m in modes if m != want]
            result.kinds.add(kind)
        result.scopes_left = len(list(scopes.iterdir()))
        cfg = json.loads((base_dir / "config.json").read_bytes())
        if local.host in cfg.get("auths", {}):
            result.errors.append("logout left the local login")
    finally:
        for registry in registries:
            registry.stop()
    return result

"""Worker processes for the reliability measurements (run as a script, never imported by pytest).

Each mode runs in its own real process, started by ``measure.py``:

``cycle``   login / exec (a command that wipes its config) / logout against one
            base, calling authscope's functions: ``base.login``, ``scope.open_scope``
            + ``run.run_captured`` (what ``authscope exec`` does), ``base.logout``.
            The command in the scope is a real ``sh`` process. Writes a JSON summary.
``cli``     the same cycle through the real CLI (``python -m authscope``).
``naive``   the control: the same logins and logouts as a naive tool does them,
            read-modify-write with no lock, written in place (not atomic).
``nolock``  controls with one protection of authscope's own code switched off:
``inplace`` the logins and logouts of ``cycle`` (no exec) through ``base.login``
            and ``base.logout``, with the lock a no-op, or with
            ``write_atomic`` rewriting the file in place.
``reader``  reads the base in a loop until a stop file appears; every read must
            parse and hold the local login and the unknown keys.
``crash``   logs in new entries in a loop, appending ``S n`` to a log before
            each ``base.login`` and ``D n`` after it returned; it is SIGKILLed
            at random times by the parent.

Only the standard library and authscope are imported, so start-up stays short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

LOCAL = "gitlab.local:4567"
TARGET = "harbor.remote-1"
# Commands that each destroy the scope's config in a different way.
WIPES = (
    'echo \'{"auths":{}}\' > "$DOCKER_CONFIG/config.json"',
    'rm -f "$DOCKER_CONFIG/config.json"',
    ': > "$DOCKER_CONFIG/config.json"',
)
ENTRY = {"auth": "Y2k6d29ya2VyLXRlc3QtcGFzc3dvcmQ="}  # ci:worker-test-password (fake)


def entry_name(worker: int, cycle: int) -> str:
    return f"w{worker:02d}-c{cycle:03d}.example"


def read_auths(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        return dict(json.loads(f.read()).get("auths", {}))


def write_summary(path: str, summary: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f)
    os.replace(tmp, path)


# -- cycles: functions, CLI, naive control ------------------------------------------------


class Cycles:
    def __init__(self, base_dir: str, worker: int) -> None:
        self.base_dir = base_dir
        self.path = os.path.join(base_dir, "config.json")
        self.worker = worker
        self.live: set[str] = set()  # committed (login returned) and not logged out
        self.committed: list[str] = []
        self.logged_out: list[str] = []
        self.lost: set[str] = set()
        self.resurrected: set[str] = set()
        self.false_restores = 0
        self.errors: list[str] = []
        self.execs = 0

    def check_live(self) -> None:
        """Every entry this worker committed and did not log out is in the base."""
        try:
            auths = read_auths(self.path)
        except (OSError, ValueError) as exc:
            self.errors.append(f"unreadable base: {exc}")
            return
        self.lost.update(name for name in self.live if name not in auths)

    def check_gone(self, name: str) -> None:
        try:
            if name in read_auths(self.path):
                self.resurrected.add(name)
        except (OSError, ValueError) as exc:
            self.errors.append(f"unreadable base: {exc}")

    def summary(self) -> dict[str, Any]:
        return {
            "committed": self.committed,
            "logged_out": self.logged_out,
            "lost": sorted(self.lost),
            "resurrected": sorted(self.resurrected),
            "false_restores": self.false_restores,
            "execs": self.execs,
            "errors": self.errors[:20],
        }


def switch_off(protection: str) -> None:
    """Switch one of authscope's protections off in this process (the controls)."""
    import contextlib

    from authscope import base, dockerconfig

    if protection == "nolock":
        base.Base._locked = lambda self: contextlib.nullcontext()  # type: ignore[assignment,method-assign]
    else:

        def in_place(path: str, data: bytes, mode: int = 0o600) -> None:
            with open(path, "wb") as f:  # truncate, then write
                f.write(data)

        dockerconfig.write_atomic = in_place  # type: ignore[assignment]


def run_cycles(args: list[str]) -> None:
    mode, base_dir, scope_dir, worker, cycles, out = args[0], args[1], args[2], int(args[3]), int(args[4]), args[5]
    c = Cycles(base_dir, worker)
    if mode in ("nolock", "inplace"):
        switch_off(mode)
    if mode in ("cycle", "nolock", "inplace"):
        from authscope import base, run, scope

        b = base.Base(base_dir)
        env = dict(os.environ)

        def login(name: str) -> None:
            base.login(base_dir, name, ENTRY)

        def logout(name: str) -> None:
            base.logout(base_dir, name)

        def exec_wipe(cycle: int) -> None:
            if mode != "cycle":
                return  # the controls measure the writer only
            with scope.open_scope(b, TARGET, ENTRY, root=scope_dir, environ=env) as (opened, secrets):
                code, _ = run.run_captured(
                    ["sh", "-c", WIPES[cycle % len(WIPES)]], opened.env(env), run.Masker(secrets), lambda d, e: None
                )
            if code != 0:
                c.errors.append(f"exec exited {code}")
            if opened.damage:
                c.false_restores += 1
                c.errors.append("; ".join(d.describe() for d in opened.damage))
            c.execs += 1

    elif mode == "cli":
        cli = [sys.executable, "-m", "authscope"]
        env = dict(
            os.environ, DOCKER_CONFIG=base_dir, AUTHSCOPE_SCOPE_DIR=scope_dir, WORKER_PASSWORD="worker-test-password"
        )

        def call(*argv: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
            return subprocess.run(
                [*cli, *argv], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
            )

        def login(name: str) -> None:
            r = call("login", name, "-u", "ci", "--password-env", "WORKER_PASSWORD")
            if r.returncode != 0:
                raise RuntimeError(f"login exited {r.returncode}: {r.stderr}")

        def logout(name: str) -> None:
            r = call("logout", name)
            if r.returncode != 0:
                raise RuntimeError(f"logout exited {r.returncode}: {r.stderr}")

        def exec_wipe(cycle: int) -> None:
            r = call(
                "exec", "-q", "--registry", TARGET, "-u", "ci", "--password-env", "WORKER_PASSWORD",
                "--", "sh", "-c", WIPES[cycle % len(WIPES)],
            )  # fmt: skip
            if r.returncode == 3 or "BASE INTEGRITY" in r.stderr:
                c.false_restores += 1
                c.errors.append(r.stderr.strip())
            elif r.returncode != 0:
                c.errors.append(f"exec exited {r.returncode}: {r.stderr.strip()}")
            c.execs += 1

    else:  # naive: what a tool without a lock or atomic write does
        path = c.path

        def naive_update(change: Any) -> None:
            for _ in range(200):  # a torn file is retried, so the tool only writes what it really read
                try:
                    with open(path) as f:
                        cfg = json.load(f)
                    break
                except (OSError, ValueError):
                    time.sleep(0.001)
            else:
                raise RuntimeError("never read a whole file")
            change(cfg)
            with open(path, "w") as f:  # truncate, then write: not atomic
                json.dump(cfg, f, indent="\t")

        def login(name: str) -> None:
            naive_update(lambda cfg: cfg.setdefault("auths", {}).__setitem__(name, dict(ENTRY)))

        def logout(name: str) -> None:
            naive_update(lambda cfg: cfg.get("auths", {}).pop(name, None))

        def exec_wipe(cycle: int) -> None:
            pass  # the control measures the writer only

    for cycle in range(cycles):
        name = entry_name(worker, cycle)
        try:
            login(name)
            c.committed.append(name)
            c.live.add(name)
            exec_wipe(cycle)
            c.check_live()
            if cycle % 2:
                logout(name)
                c.logged_out.append(name)
                c.live.discard(name)
                c.check_gone(name)
        except Exception as exc:  # counted, not fatal: the parent reports it
            c.errors.append(f"{type(exc).__name__}: {exc}")
    write_summary(out, c.summary())


# -- the reader ---------------------------------------------------------------------------


def run_reader(args: list[str]) -> None:
    base_dir, stop, out, expected_local = args[0], args[1], args[2], args[3]
    path = os.path.join(base_dir, "config.json")
    os.nice(10)  # read as often as the machine allows, but never slow the writers down
    reads = broken = missing_local = missing_keys = 0
    examples: list[str] = []
    while not os.path.exists(stop):
        reads += 1
        try:
            with open(path, "rb") as f:
                data = f.read()
            cfg = json.loads(data)
            if cfg.get("auths", {}).get(LOCAL, {}).get("auth") != expected_local:
                missing_local += 1
            if "HttpHeaders" not in cfg or "x-unknown" not in cfg:
                missing_keys += 1
        except (OSError, ValueError) as exc:
            broken += 1
            if len(examples) < 5:
                examples.append(f"{type(exc).__name__}: {exc}")
    write_summary(
        out,
        {
            "reads": reads,
            "broken": broken,
            "missing_local": missing_local,
            "missing_keys": missing_keys,
            "examples": examples,
        },
    )


# -- the crash writer ---------------------------------------------------------------------


def run_crash(args: list[str]) -> None:
    base_dir, log, prefix = args[0], args[1], args[2]
    import filelock  # noqa: F401 - imported by base.login; loaded before "ready"

    from authscope import base

    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, b"R\n")  # ready: imports done
    n = 0
    while True:
        os.write(fd, f"S {n}\n".encode())
        base.login(base_dir, f"{prefix}-{n}.example", ENTRY)
        os.write(fd, f"D {n}\n".encode())
        n += 1


def run_zygote() -> None:
    """Fork crash writers on request: ``spawn BASE LOG PREFIX`` on stdin, the pid on stdout.

    Forking from a process that has already imported authscope makes each
    writer start in milliseconds instead of a Python start-up, so hundreds of
    kills fit in a test run. Each writer is still its own process, killed with
    SIGKILL; SIGCHLD is ignored so the kernel reaps them at once.
    """
    import signal

    import filelock  # noqa: F401

    from authscope import base  # noqa: F401 - loaded once, inherited by every writer

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    for line in sys.stdin:
        _, base_dir, log, prefix = line.split()
        pid = os.fork()
        if pid == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                run_crash([base_dir, log, prefix])
            finally:
                os._exit(1)
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()


def main() -> None:
    mode = sys.argv[1]
    if mode in ("cycle", "cli", "naive", "nolock", "inplace"):
        run_cycles(sys.argv[1:])
    elif mode == "reader":
        run_reader(sys.argv[2:])
    elif mode == "crash":
        run_crash(sys.argv[2:])
    elif mode == "zygote":
        run_zygote()
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

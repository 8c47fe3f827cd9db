#!/usr/bin/env python3
"""Rerun the reliability and security measurements and print the figures (docs/RELIABILITY.md).

The measurements are the ones tests/reliability asserts on (tests/reliability/
measure.py and badinput.py); here they run with the counts given on the
command line (defaults: the published minimums) and print counts instead of
failing. Sections: concurrency, crash, cancel, badinput, hostile, secrets.

    python3 scripts/reliability.py                      # everything, at the minimums (~4 min on 2 cores)
    python3 scripts/reliability.py --only crash --kills 1000
    python3 scripts/reliability.py --only concurrency --procs 32 --cycles 100

Needs root for the hostile-filesystem section (mounts, chown) and the e2e
tools (docker-registry, skopeo, crane, regctl, htpasswd, openssl) for the
secrets section; see ./scripts/install-deps.sh.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugin"), str(REPO)]

from tests.reliability import measure  # noqa: E402

SECTIONS = ("concurrency", "crash", "cancel", "badinput", "hostile", "secrets")


def say(text: str = "") -> None:
    print(text, flush=True)


def machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({cpu or platform.machine()}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, {'root' if os.geteuid() == 0 else 'not root'}"
    )


# -- sections -----------------------------------------------------------------------------------


def concurrency(a: argparse.Namespace, work: Path) -> list[str]:
    lines = []
    for mode, procs, cycles in (
        ("cycle", a.procs, a.cycles),
        ("cli", a.cli_procs, a.cli_cycles),
        ("naive", a.procs, a.cycles),
    ):
        r = measure.concurrency(work / mode, procs, cycles, mode)
        lines.append(r.line())
        if mode != "naive" and r.errors:
            lines.append(f"  errors: {r.errors[:3]}")
        if mode == "cycle":
            lines.append(f"  journal after the run: {r.journal_bytes} bytes; scopes left {r.scopes_left}")
    return lines


def crash(a: argparse.Namespace, work: Path) -> list[str]:
    r = measure.crash(work, kills=a.kills, writers=a.writers, seed=a.seed)
    lines = [r.line()]
    if r.errors:
        lines.append(f"  errors: {r.errors[:3]}")
    return lines


def cancel(a: argparse.Namespace, work: Path) -> list[str]:
    lines = []
    for phase in measure.CANCEL_PHASES:
        for sig in (signal.SIGINT, signal.SIGTERM):
            r = measure.cancel(work / f"{phase}-{int(sig)}", phase, sig)
            lines.append(r.line())
    lines.append(measure.sweep_after_kill(work / "sweep").line())
    if a.fork_race:
        slow = []
        for n in range(a.fork_race):
            r = measure.cancel(work / f"fork-{n}", "copy", signal.SIGINT, fork=True)
            slow += [r.seconds_to_exit] if r.seconds_to_exit > 5 else []
            bad = r.exit_code != 130 or r.scopes_left or r.children_left
            if bad:
                lines.append(f"  fork race run {n}: {r.line()}")
        lines.append(
            f"SIGINT during a copy by `sh -c 'echo; sleep 60'` (the shell forks): {a.fork_race} runs, "
            f"{len(slow)} needed authscope's SIGKILL after its 10 s grace ({', '.join(f'{s:.1f}s' for s in slow) or '-'})"
        )
    return lines


def badinput(a: argparse.Namespace, work: Path) -> list[str]:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from tests.reliability import badinput as B

    work.mkdir(parents=True, exist_ok=True)
    lines = []
    options = dict(database=None, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))

    def tally(name: str, run: Callable[[], None], counts: Counter[str], kinds: Counter[str]) -> None:
        started = time.monotonic()
        run()
        seconds = time.monotonic() - started
        lines.append(
            f"{name}: {counts['examples']} generated in {seconds:.0f}s: refused properly {counts['ok']}, "
            f"tracebacks {counts['traceback']}, exit != 2 {counts['exit']}, message missing the problem "
            f"{counts['message']}, base changed {counts['base']}, files written {counts['written']}"
        )
        lines.append("  kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        for example in failures[name][:3]:
            lines.append(f"  e.g. {example}")

    failures: dict[str, list[str]] = collections.defaultdict(list)

    def count(name: str, problems: list[str], counts: Counter[str]) -> None:
        counts["examples"] += 1
        if not problems:
            counts["ok"] += 1
        for p in problems:
            key = ("traceback" if "traceback" in p else "exit" if "exit" in p.split("[")[0] else
                   "message" if "names none" in p else "base" if "base" in p or "config.json changed" in p else "written")  # fmt: skip
            counts[key] += 1
        if problems:
            failures[name].append(problems[0][:300])

    def generate(real: bool) -> None:
        n = a.cli_examples if real else a.examples
        name = "targets files" + (" (real CLI)" if real else "")
        counts: Counter[str] = collections.Counter()
        kinds: Counter[str] = collections.Counter()

        @settings(max_examples=n, **options)  # type: ignore[arg-type]
        @given(case=B.targets_cases())
        def targets(case: B.TargetsCase) -> None:
            kinds.update(case.kinds)
            count(name, B.run_targets_case(case, work, real_cli=real), counts)

        tally(name, targets, counts, kinds)

        cname = "base configs" + (" (real CLI)" if real else "")
        ccounts: Counter[str] = collections.Counter()
        ckinds: Counter[str] = collections.Counter()

        @settings(max_examples=n, **options)  # type: ignore[arg-type]
        @given(case=B.config_case(), command=st.sampled_from(B.COMMANDS))
        def configs(case: B.ConfigCase, command: str) -> None:
            ckinds.update([case.kind, f"cmd:{command}"])
            count(cname, B.run_config_case(case, command, work, real_cli=real), ccounts)

        tally(cname, configs, ccounts, ckinds)

    generate(real=False)
    generate(real=True)

    # Inputs that once found bugs (fixed; their tests guard them), kept out of
    # the generators so each is measured on its own.
    probes = {
        "huge integer in the base (login)": (B.ConfigCase(b'{"auths": {}, "x": 1' + b"0" * 5000 + b"}", (("config.json",),), ""), "login"),
        "non-base64 source auth (fanout)": (B.ConfigCase(b'{"auths": {"127.0.0.1:9": {"auth": "abc"}}}', (("auth",),), ""), "fanout"),
        "duplicated auths object (login)": (
            B.ConfigCase(b'{"auths": {"gitlab.local:4567": {"auth": "eDp5"}}, "auths": {}}', (("twice", "duplicate"),), ""), "login"),
    }  # fmt: skip
    for what, (case, command) in probes.items():
        problems = B.run_config_case(case, command, work)
        lines.append(f"former bug, {what}: " + ("refused properly" if not problems else problems[0].split(" [")[0]))
    return lines


def hostile(a: argparse.Namespace, work: Path) -> list[str]:
    """The hostile-filesystem scenarios are pass/fail: run them and list each outcome."""
    return _pytest(["tests/reliability/test_hostile_fs.py"])


def secrets(a: argparse.Namespace, work: Path) -> list[str]:
    search = f"{measure.TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    missing = [
        t
        for t in ("docker-registry", "crane", "regctl", "skopeo", "htpasswd", "openssl")
        if not shutil.which(t, path=search)
    ]
    if missing:
        return [f"skipped: missing {', '.join(missing)} (./scripts/install-deps.sh)"]
    r = measure.secrets(work)
    lines = [r.line()]
    lines.append(f"  fan-out: {r.statuses}; exit codes {r.exit_codes}")
    lines.append(f"  modes other than 0600 files / 0700 dirs: {sorted(set(r.bad_modes)) or 'none'}")
    if r.leaks_in_output or r.leaks_in_reports or r.leaks_in_argv:
        lines.append(f"  LEAKS: {r.leaks_in_output + r.leaks_in_reports + r.leaks_in_argv}")
    if r.errors:
        lines.append(f"  errors: {r.errors}")
    return lines


def _pytest(args: list[str]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = []
    for line in proc.stdout.splitlines():
        m = re.match(r"(PASSED|XFAIL|FAILED|SKIPPED|ERROR|XPASS) (\S+)(?: - (.*))?", line)
        if m:
            name = m.group(2).split("::", 1)[-1]
            lines.append(
                f"{m.group(1):7} {name}" + (f" ({m.group(3)[:110]})" if m.group(1) != "PASSED" and m.group(3) else "")
            )
    tail = proc.stdout.strip().splitlines()[-1:] or [proc.stderr.strip()[-200:]]
    return lines + tail


RUNNERS = {
    "concurrency": concurrency,
    "crash": crash,
    "cancel": cancel,
    "badinput": badinput,
    "hostile": hostile,
    "secrets": secrets,
}


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    p.add_argument("--procs", type=int, default=16, help="concurrency: processes (default 16)")
    p.add_argument("--cycles", type=int, default=50, help="concurrency: login/exec/logout cycles each (default 50)")
    p.add_argument("--cli-procs", type=int, default=16, help="concurrency through the real CLI: processes (default 16)")
    p.add_argument("--cli-cycles", type=int, default=5, help="concurrency through the real CLI: cycles (default 5)")
    p.add_argument("--kills", type=int, default=200, help="crash: SIGKILLs (default 200)")
    p.add_argument("--writers", type=int, default=4, help="crash: writers running at once (default 4)")
    p.add_argument("--seed", type=int, default=None, help="crash: random seed (default: random)")
    p.add_argument(
        "--fork-race",
        type=int,
        default=0,
        metavar="N",
        help="cancel: N extra SIGINT runs whose copy command forks (dash can lose the signal; default 0)",
    )
    p.add_argument("--examples", type=int, default=1000, help="bad input: examples per generator (default 1000)")
    p.add_argument("--cli-examples", type=int, default=12, help="bad input through the real CLI (default 12)")
    p.add_argument("--workdir", help="keep the working files here (default: a temporary directory, removed)")
    a = p.parse_args()

    say(f"authscope reliability figures, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    say(f"machine: {machine()}")
    root = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="authscope-reliability-"))
    started = time.monotonic()
    try:
        for section in a.only or SECTIONS:
            say()
            say(f"== {section}")
            t0 = time.monotonic()
            for line in RUNNERS[section](a, root / section):
                say(line)
            say(f"({section}: {time.monotonic() - t0:.0f}s)")
    finally:
        if not a.workdir:
            shutil.rmtree(root, ignore_errors=True)
    say()
    say(f"total {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

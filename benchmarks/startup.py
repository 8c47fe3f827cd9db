"""CLI overhead: `authscope exec ... -- true` against clean interpreter floors.

Floors, each named in the output:
  clean -I -S   the venv's python -I -S -c pass: no site at all (the least any Python costs)
  clean venv    a fresh venv's python -c pass: site runs, but no .pth of this machine's
                site-packages (a CI image's interpreter); the goal's floor
  this python   sys.executable -c pass, whose site-packages may run .pth files at start
authscope runs as a console script written as pip writes one (it imports re), from a
venv that sees the package through a .pth, as an editable install does, and this
interpreter's site-packages as a plain path (its .pth files are not run). Bytecode is
compiled on the first run (PYTHONPYCACHEPREFIX, as pip compiles at install; this
machine may set PYTHONDONTWRITEBYTECODE). Scopes are made where authscope would make
them here (tmpfs when there is one). Runs alternate; medians of wall and CPU time
(user + sys of the child, less sensitive to a loaded machine).

Goal (issue 16): at most 2.5x the clean venv floor. Run: python3 benchmarks/startup.py [N]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugin"))

from authscope.scope import choose_root  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from _harness import make_clean_venv  # noqa: E402

# What pip writes for `authscope = "authscope.entry:main"` (distlib's script template).
SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from authscope.entry import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""
EXEC = ["exec", "--registry", "harbor.example", "-u", "robot$bench+ci", "--password-env", "BENCH_PASSWORD", "-q", "--", "true"]  # fmt: skip


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall ms, CPU ms) of one run."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - start) * 1000
    err = proc.stderr.read() if proc.stderr else b""
    if status != 0:
        raise SystemExit(f"{argv} failed: {err.decode(errors='replace')}")
    return wall, (usage.ru_utime + usage.ru_stime) * 1000


def make_venv(work: Path) -> Path:
    venv = work / "venv"
    python = make_clean_venv(venv)  # the package as an editable install sees it; the dependencies as a plain path
    script = venv / "bin" / "authscope"
    script.write_text(SCRIPT.format(python=python))
    script.chmod(0o755)
    return venv


def parse_args(argv: list[str]) -> int:
    """The number of runs of each case, from ``[N]``; ``--help`` says what is measured."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="benchmarks/startup.py",
        description="Time `authscope exec --registry ... -q -- true`, run through a console script "
        "written as pip writes one from a fresh venv, against clean interpreter floors (the venv's "
        "`python -c pass`, and `python -I -S -c pass`); the cases alternate, and the medians of wall "
        "and CPU time are printed with the ratios. Goal (issue 16): authscope exec at most 2.50x "
        "the clean venv floor.",
    )
    parser.add_argument("runs", nargs="?", type=int, default=25, metavar="N", help="runs of each case (default 25)")
    runs: int = parser.parse_args(argv).runs
    if runs < 1:
        parser.error(f"N must be at least 1, not {runs}")
    return runs


def main(argv: list[str] | None = None) -> int:
    runs = parse_args(sys.argv[1:] if argv is None else argv)
    work = Path(tempfile.mkdtemp(prefix="authscope-bench-"))
    scopes = Path(tempfile.mkdtemp(prefix="authscope-bench-scopes-", dir=choose_root(None, {})))
    try:
        base = work / "base"
        base.mkdir(mode=0o700)
        # A realistic base: the local login plus a few others.
        auths = {f"registry-{i}.example:5000": {"auth": "dXNlcjpwYXNzd29yZA=="} for i in range(10)}
        (base / "config.json").write_text(json.dumps({"auths": auths}))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "AUTHSCOPE_SCOPE_DIR")}
        env.update(
            DOCKER_CONFIG=str(base),
            AUTHSCOPE_SCOPE_DIR=str(scopes),
            BENCH_PASSWORD="bench-password",
            PYTHONPYCACHEPREFIX=str(work / "pycache"),
        )
        clean_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        venv = make_venv(work)
        vpython = str(venv / "bin" / "python")
        installed = shutil.which("authscope")
        cases: dict[str, tuple[list[str], dict[str, str]]] = {
            "clean -I -S: python -I -S -c pass": ([vpython, "-I", "-S", "-c", "pass"], clean_env),
            "clean venv: python -c pass": ([vpython, "-c", "pass"], clean_env),
            "clean venv: authscope exec -- true": ([vpython, str(venv / "bin" / "authscope"), *EXEC], clean_env),
            "this python: python -c pass": ([sys.executable, "-c", "pass"], env),
        }
        if installed:
            # The console script pip installed here, run by this interpreter (no version manager's shim).
            cases["this python: installed authscope exec"] = ([sys.executable, installed, *EXEC], env)
        for argv, e in cases.values():  # warm the page cache, compile the bytecode
            timed(argv, e)
        wall: dict[str, list[float]] = {k: [] for k in cases}
        cpu: dict[str, list[float]] = {k: [] for k in cases}
        for i in range(runs):
            order = list(cases) if i % 2 == 0 else list(reversed(cases))
            for name in order:
                w, c = timed(*cases[name])
                wall[name].append(w)
                cpu[name].append(c)
        med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in cases}
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"machine: {os.cpu_count()} cpus, load average {load}; Python {sys.version.split()[0]}")
        print(f"clean interpreter: {vpython} (a venv of {sys.base_prefix}, made for this run)")
        print(f"this interpreter:  {sys.executable}; installed script: {installed}")
        print(f"scopes in {scopes.parent}; {runs} runs each, alternating, median\n")
        floor_w, floor_c = med["clean venv: python -c pass"]
        bare_w, bare_c = med["clean -I -S: python -I -S -c pass"]
        for name, (w, c) in med.items():
            print(f"{name:40} wall {w:7.1f} ms  cpu {c:7.1f} ms")
        ours_w, ours_c = med["clean venv: authscope exec -- true"]
        print(
            f"\nratio authscope exec / clean venv floor:  wall {ours_w / floor_w:.2f}x  cpu {ours_c / floor_c:.2f}x   (goal <= 2.50x)"
        )
        print(f"ratio authscope exec / clean -I -S floor: wall {ours_w / bare_w:.2f}x  cpu {ours_c / bare_c:.2f}x")
        if installed:
            w, c = med["this python: installed authscope exec"]
            fw, fc = med["this python: python -c pass"]
            print(f"ratio installed script / this python:     wall {w / fw:.2f}x  cpu {c / fc:.2f}x")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(scopes, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

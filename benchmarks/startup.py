"""CLI overhead: `authscope exec ... -- true` against `python -c pass`.

Prints the median wall time of each over N runs (default 25) and their ratio.
Goal (issue: foundation): at most 1.5x. Run: python3 benchmarks/startup.py [N]
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


def median_ms(argv: list[str], env: dict[str, str], runs: int) -> float:
    subprocess.run(argv, env=env, check=True, capture_output=True)  # warm the page cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 25
    work = Path(tempfile.mkdtemp(prefix="authscope-bench-"))
    try:
        base = work / "base"
        base.mkdir(mode=0o700)
        # A realistic base: the local login plus a few others.
        auths = {f"registry-{i}.example:5000": {"auth": "dXNlcjpwYXNzd29yZA=="} for i in range(10)}
        (base / "config.json").write_text(json.dumps({"auths": auths}))
        env = dict(os.environ, DOCKER_CONFIG=str(base), AUTHSCOPE_SCOPE_DIR=str(work), BENCH_PASSWORD="bench-password")
        # The console script pip installed, run by the same interpreter:
        # what a CI job runs, without a version manager's shim in front.
        script = shutil.which("authscope")
        if script is None:
            raise SystemExit("authscope is not installed: pip install -e .")
        python = sys.executable
        authscope = [
            python,
            script,
            "exec",
            "--registry",
            "harbor.example",
            "-u",
            "robot$bench+ci",
            "--password-env",
            "BENCH_PASSWORD",
            "-q",
            "--",
            "true",
        ]
        floor = median_ms([python, "-c", "pass"], env, runs)
        ours = median_ms(authscope, env, runs)
        print(f"machine: {os.cpu_count()} cpus, Python {sys.version.split()[0]}, {runs} runs each, median")
        print(f"python -c pass                     {floor:7.1f} ms")
        print(f"authscope exec ... -- true         {ours:7.1f} ms")
        print(f"ratio                              {ours / floor:7.2f}x   (goal <= 1.50x)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

"""Scope lifecycle: open and close a scope over a 50-entry base, against the floor.

One iteration of `authscope.scope.open_scope(Base(dir), ...)` as a fan-out
target uses it: snapshot the base (journal + config.json), layer the
target's login, make the scope directory (0700) and write its config.json
(0600), then on close remove it and run the base guard (read the base
again, compare). The floor is the least any scope could cost on the same
machine and the same file system: `tempfile.mkdtemp` + one file write +
`shutil.rmtree`. Iterations alternate between the two, and both make their
directories in the same root: the one authscope would choose here
($XDG_RUNTIME_DIR, else /dev/shm, else $TMPDIR), or --root.

  python3 benchmarks/scope_lifecycle.py                 # 2000 of each, median
  python3 benchmarks/scope_lifecycle.py --runs 5000
  python3 benchmarks/scope_lifecycle.py --quick         # smoke: 100 of each
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _harness as H

from authscope import dockerconfig as dc
from authscope.base import Base
from authscope.scope import choose_root, open_scope


def make_base(directory: Path, entries: int) -> bytes:
    """A base like a busy runner's: `entries` auths entries plus keys tools don't know."""
    directory.mkdir(mode=0o700)
    auths = {
        f"registry-{i}.example.com:5000": {"auth": base64.b64encode(f"user{i}:password-{i:04d}".encode()).decode()}
        for i in range(entries)
    }
    cfg = {"auths": auths, "HttpHeaders": {"User-Agent": "authscope-bench"}, "x-unknown": [1, 2, 3]}
    data = (json.dumps(cfg, indent="\t") + "\n").encode()
    path = directory / "config.json"
    path.write_bytes(data)
    path.chmod(0o600)
    return data


def fs_type(path: str) -> str:
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                inside = len(fields) > 2 and (path == fields[1] or path.startswith(fields[1].rstrip("/") + "/"))
                if inside and len(fields[1]) > len(best):
                    best, kind = fields[1], fields[2]
    except OSError:
        pass
    return kind


def main() -> int:
    p = H.base_parser(__doc__, lab_options=False)
    p.add_argument(
        "--runs", type=int, default=2000, help="iterations of each (default 2000; at least 1000 for the figure)"
    )
    p.add_argument("--entries", type=int, default=50, help="auths entries in the base (default 50)")
    p.add_argument("--root", default=None, help="where scopes and the floor's directories are made")
    p.add_argument("--quick", action="store_true", help="smoke run: 100 iterations")
    a = p.parse_args()
    if a.quick:
        a.runs = 100

    H.header("scope_lifecycle: open_scope + close over a base, vs mkdtemp + one write + rmtree")
    work = Path(tempfile.mkdtemp(prefix="authscope-bench-scope-"))
    roots: list[str] = []
    try:
        base_dir = work / "base"
        data = make_base(base_dir, a.entries)
        base = Base(str(base_dir))
        # A private directory inside the root authscope would choose here.
        chosen = choose_root(a.root, {k: v for k, v in os.environ.items() if k != "AUTHSCOPE_SCOPE_DIR"})
        root = tempfile.mkdtemp(prefix="authscope-bench-root-", dir=chosen)
        roots.append(root)
        entry = dc.auth_entry("robot$bench+ci", "target-bench-password")
        scope_config_size = 0

        def scope_once() -> None:
            nonlocal scope_config_size
            with open_scope(base, "harbor.example.com", entry, root=root, environ={}) as (scope, _secrets):
                scope_config_size = len(scope.config)
            if scope.damage:
                raise RuntimeError(f"the guard found damage: {scope.damage}")

        def floor_once() -> None:
            d = tempfile.mkdtemp(dir=root)
            with open(os.path.join(d, "config.json"), "wb") as f:
                f.write(data)
            shutil.rmtree(d)

        def timed(fn: Callable[[], None]) -> float:
            start = time.perf_counter_ns()
            fn()
            return (time.perf_counter_ns() - start) / 1000

        for _ in range(min(50, a.runs)):  # warm up: imports, page cache, allocator
            scope_once()
            floor_once()
        scope_us: list[float] = []
        floor_us: list[float] = []
        for i in range(a.runs):
            if i % 2:
                scope_us.append(timed(scope_once))
                floor_us.append(timed(floor_once))
            else:
                floor_us.append(timed(floor_once))
                scope_us.append(timed(scope_once))
        if os.listdir(root):
            raise RuntimeError(f"scopes left behind in {root}: {os.listdir(root)[:5]}")

        def q(values: list[float], pct: int) -> float:
            return statistics.quantiles(values, n=100)[pct - 1]

        print(
            f"base: {a.entries} auths entries + 2 other keys, {len(data):,} bytes; scope config.json {scope_config_size:,} bytes"
        )
        print(f"root: {chosen} ({fs_type(chosen)}); {a.runs} iterations of each, alternating, after 50 to warm up")
        print(f"work directory {work}, work directory {root} (both removed at exit)")
        rows = [
            [
                "open_scope + close",
                f"{statistics.median(scope_us):.0f}",
                f"{q(scope_us, 10):.0f}",
                f"{q(scope_us, 90):.0f}",
            ],
            [
                "floor: mkdtemp + write + rmtree",
                f"{statistics.median(floor_us):.0f}",
                f"{q(floor_us, 10):.0f}",
                f"{q(floor_us, 90):.0f}",
            ],
        ]
        print(H.table(["", "median us", "p10 us", "p90 us"], rows))
        ratio = statistics.median(scope_us) / statistics.median(floor_us)
        print(
            f"ratio (medians): {ratio:.1f}x the floor; +{statistics.median(scope_us) - statistics.median(floor_us):.0f} us per scope"
        )
        return 0
    finally:
        for r in roots:
            shutil.rmtree(r, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(H.run_main(main))

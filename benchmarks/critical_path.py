#!/usr/bin/env python3
"""A fan-out's critical path, revision against revision, in one lab.

Each git revision given (`.` is this checkout as it is, uncommitted changes
included) is checked out into a worktree of its own with a clean venv (as
the authscope image's interpreter: no .pth files of this machine run) and
compiled bytecode. The revisions then run the same traced fan-out
(`AUTHSCOPE_TRACE`, `authscope fanout --jobs N`) in the same lab, one after
the other, the order reversed at every repeat, each with a new image. For
each revision the medians, in seconds since authscope was launched, of:

  run start      interpreter start, imports, the targets file read
  source read    the source digest known
  last check     the last target's credential check done
  first tool     the first tool started (what the copies by hand start with)
  last tool end  the last copy done
  wall           the whole fan-out, reports and exit included

A change of 0.05 s in these shows in 6 repeats here; a change that small in
the wall time of one benchmark run (wan_fanout.py) does not: the copies
themselves vary more from one run to the next.
"""

from __future__ import annotations

import compileall
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import _harness as H

COLUMNS = ("run start", "source read", "last check", "first tool", "last tool end", "wall")


def points(events: Sequence[Mapping[str, object]]) -> tuple[float, ...]:
    """COLUMNS' values for one traced fan-out (`_harness.traced_fanout`'s events)."""

    def when(event: str, phase: str | None, pick: Callable[[list[float]], float] = min) -> float:
        found = [
            float(e["since_launch"])  # type: ignore[arg-type]
            for e in events
            if e.get("event") == event and (phase is None or e.get("phase") == phase)
        ]
        if not found:
            raise RuntimeError(f"the trace has no {event} {phase or ''} event")
        return pick(found)

    return (
        when("run", "start"),
        when("source", "end"),
        when("preflight", "end", max),
        when("tool", "start"),
        when("tool", "end", max),
        when("exit", None),
    )


def checkout(revision: str, work: Path, i: int) -> Path:
    """The plugin/ directory of ``revision`` (a worktree under ``work``; `.` is this checkout)."""
    if revision == ".":
        return H.REPO / "plugin"
    tree = work / f"rev-{i}"
    subprocess.run(
        ["git", "-C", str(H.REPO), "worktree", "add", "--quiet", "--detach", str(tree), revision],
        check=True,
    )
    return tree / "plugin"


def main() -> int:
    p = H.base_parser(__doc__)
    p.add_argument(
        "--revisions",
        help="comma-separated git revisions to compare; `.` is this checkout (default HEAD~1,.; with --quick, .)",
    )
    p.add_argument("--tool", default="crane", choices=sorted(H.SERIAL_LOOP), help="the targets' tool (default crane)")
    p.add_argument("--targets", type=int, default=8, help="N, targets and --jobs (default 8)")
    p.add_argument("--repeat", type=int, default=6, help="runs per revision, alternating the order (default 6)")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: N = 2, 2 MB in 2 layers, 10 ms, 1 run (`.` unless --revisions)"
    )
    a = p.parse_args()
    if a.quick:
        a.targets, a.image_mb, a.layers, a.delay_ms, a.repeat = 2, 2.0, 2, 10.0, 1
    given = a.revisions if a.revisions is not None else "." if a.quick else "HEAD~1,."
    revisions = [r.strip() for r in given.split(",") if r.strip()]
    if not revisions:
        p.error("--revisions: name at least one")
    H.require("docker-registry", "htpasswd", "skopeo", a.tool)
    H.header("critical_path: the same traced fan-out, revision against revision", [a.tool])
    print(H.compile_bytecode())
    work = Path(tempfile.mkdtemp(prefix="authscope-bench-revisions-"))
    trees: list[Path] = []
    try:
        pythons: dict[str, str] = {}
        for i, revision in enumerate(revisions):
            plugin = checkout(revision, work, i)
            if plugin.parent != H.REPO:
                trees.append(plugin.parent)
            compileall.compile_dir(str(plugin / "authscope"), quiet=1)
            pythons[revision] = str(H.make_clean_venv(work / f"venv-{i}", plugin))
            described = subprocess.run(
                ["git", "-C", str(plugin.parent), "log", "-1", "--format=%h %s"], capture_output=True, text=True
            ).stdout.strip()
            print(f"revision {revision}: {described or '(not a git checkout)'}; authscope under {pythons[revision]}")
        seen: dict[str, list[tuple[float, ...]]] = {r: [] for r in revisions}
        with H.open_lab(a, a.targets) as lab:
            for run in range(a.repeat):
                for revision in revisions if run % 2 == 0 else revisions[::-1]:
                    H.AUTHSCOPE[0] = pythons[revision]
                    _, events = H.traced_fanout(lab, lab.pick(a.targets, f"rev{run}"), a.tool)
                    seen[revision].append(points(events))
                    print(f"  run {run + 1}: {revision:<12} " + "  ".join(f"{x:.3f}" for x in seen[revision][-1]))
        transport = "TLS (HTTPS)" if a.tls else "plain HTTP"
        print(
            f"\nseconds since launch, tool {a.tool}, N = {a.targets}, {transport} lab "
            f"(image {a.image_mb} MB, {2 * a.delay_ms:g} ms RTT), medians of {a.repeat}"
        )
        rows = [[r, *(f"{H.median([row[j] for row in seen[r]]):.3f}" for j in range(len(COLUMNS)))] for r in revisions]
        print(H.table(["revision", *COLUMNS], rows))
    finally:
        for tree in trees:
            subprocess.run(["git", "-C", str(H.REPO), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(H.run_main(main))

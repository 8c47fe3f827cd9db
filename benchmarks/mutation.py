"""Mutation testing as a measurement: how many mutants of each core module the fast tests kill.

Runs cosmic-ray's mutation operators (``pip install -e '.[mutation]'``) over
dockerconfig.py, base.py, scope.py, run.py, report.py and targets.py. Each
mutant is applied to the module in this checkout, the module's fast unit tests
run (``pytest -x``; the same files the module's own tests live in, see
MODULES), and the module is restored. Prints, per module, the kill rate and
every surviving mutant (line, operator, the changed line).

A full run is long on a small machine (about 2,200 mutants), so it is bounded
and resumable: ``--max-mutants N`` takes an evenly spread, fixed sample of N
mutants per module, results are kept in ``--workdir`` (one cosmic-ray session
per module), and a second run only runs what is still pending. A mutation left
in place by a killed run is undone at the next start.

    python3 benchmarks/mutation.py --module dockerconfig --max-mutants 60
    python3 benchmarks/mutation.py --report           # figures so far, runs nothing
    python3 benchmarks/mutation.py                    # everything (hours)

Not a gate: nothing fails on a low figure. docs/RELIABILITY.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "plugin" / "authscope"
# Module -> the fast tests that exercise it (its mirror test file first: with
# -x a mutant dies at the first failing test).
MODULES: dict[str, list[str]] = {
    "dockerconfig": ["tests/test_dockerconfig.py", "tests/test_base.py"],
    "base": ["tests/test_base.py"],
    "scope": ["tests/test_scope.py"],
    "run": ["tests/test_run.py", "tests/test_scope.py"],
    "report": ["tests/test_report.py"],
    "targets": ["tests/test_targets.py", "tests/test_plan.py"],
}
IN_PROGRESS = "in-progress.json"


def _cosmic_ray() -> Any:
    try:
        from cosmic_ray.commands import init
    except ImportError:
        raise SystemExit("cosmic-ray is not installed: pip install -e '.[mutation]'") from None
    return init


def restore_interrupted(workdir: Path) -> None:
    """Put back a module a killed run left mutated (the backup is taken before each mutant)."""
    marker = workdir / IN_PROGRESS
    if not marker.exists():
        return
    record = json.loads(marker.read_text())
    shutil.copyfile(record["backup"], record["module"])
    print(f"restored {record['module']} (a previous run stopped during a mutant)", file=sys.stderr)
    marker.unlink()


def sample(items: list[Any], limit: int | None) -> list[Any]:
    """A fixed, evenly spread sample of ``limit`` work items (all of them without a limit)."""
    items = sorted(
        items, key=lambda w: (w.mutations[0].start_pos, w.mutations[0].operator_name, w.mutations[0].occurrence)
    )
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def session(workdir: Path, module: str) -> Any:
    """The module's cosmic-ray session (the work items), created on first use."""
    init = _cosmic_ray()
    from cosmic_ray.work_db import WorkDB

    path = workdir / f"{module}.sqlite"
    fresh = not path.exists()
    db = WorkDB(str(path), WorkDB.Mode.create)
    if fresh:
        init([PACKAGE / f"{module}.py"], db, {})
    return db


def test_command(module: str, tests: list[str] | None) -> str:
    files = tests or MODULES[module]
    return shlex.join([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *files])


def baseline(command: str) -> float:
    """Seconds the unmutated tests take; they must pass, or every mutant would look killed."""
    import subprocess

    started = time.monotonic()
    proc = subprocess.run(
        shlex.split(command), capture_output=True, text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    )
    if proc.returncode != 0:
        raise SystemExit(f"the tests fail without any mutant ({command}):\n{proc.stdout[-2000:]}")
    return time.monotonic() - started


def run_module(module: str, workdir: Path, limit: int | None, tests: list[str] | None) -> None:
    from cosmic_ray.mutating import mutate_and_test

    db = session(workdir, module)
    chosen = sample(list(db.work_items), limit)
    done = {job_id for job_id, _ in db.results}
    pending = [w for w in chosen if w.job_id not in done]
    if not pending:
        return
    command = test_command(module, tests)
    took = baseline(command)
    timeout = max(60.0, 4 * took)
    source = PACKAGE / f"{module}.py"
    backup = workdir / f"{module}.py.orig"
    print(
        f"{module}: {len(pending)} of {len(chosen)} mutants to run (tests {took:.0f}s unmutated; timeout {timeout:.0f}s)"
    )
    for n, item in enumerate(pending, 1):
        shutil.copyfile(source, backup)
        (workdir / IN_PROGRESS).write_text(json.dumps({"module": str(source), "backup": str(backup)}))
        for pyc in (PACKAGE / "__pycache__").glob(f"{module}.*.pyc"):
            pyc.unlink()  # never let a stale bytecode file stand in for the mutant
        started = time.monotonic()
        result = mutate_and_test(item.mutations, command, timeout)
        if source.read_bytes() != backup.read_bytes():  # cosmic-ray restores; make sure
            shutil.copyfile(backup, source)
        (workdir / IN_PROGRESS).unlink()
        db.set_result(item.job_id, result)
        m = item.mutations[0]
        outcome = result.test_outcome.value if result.test_outcome else result.worker_outcome.value
        print(
            f"  [{n}/{len(pending)}] line {m.start_pos[0]} {m.operator_name}: {outcome} ({time.monotonic() - started:.0f}s)",
            flush=True,
        )


def _changed_line(diff: str | None) -> str:
    for line in (diff or "").splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            return line[1:].strip()
    return ""


def report(workdir: Path, modules: list[str], limit: int | None) -> list[tuple[str, int, int, int]]:
    """Print the figures; (module, run, killed, survived) per module."""
    figures = []
    for module in modules:
        if not (workdir / f"{module}.sqlite").exists():
            print(f"{module}: not run yet")
            continue
        db = session(workdir, module)
        chosen = {w.job_id: w for w in sample(list(db.work_items), limit)}
        results = [(chosen[j], r) for j, r in db.results if j in chosen]
        killed = [(w, r) for w, r in results if r.test_outcome is not None and r.test_outcome.value == "killed"]
        survived = [(w, r) for w, r in results if r.test_outcome is not None and r.test_outcome.value == "survived"]
        other = len(results) - len(killed) - len(survived)
        rate = 100.0 * len(killed) / (len(killed) + len(survived)) if killed or survived else 0.0
        print(
            f"{module}: {len(results)} of {len(chosen)} sampled mutants run (of {db.num_work_items} in all): "
            f"killed {len(killed)}, survived {len(survived)}, incompetent/other {other}; kill rate {rate:.0f}%"
        )
        for w, r in sorted(survived, key=lambda wr: wr[0].mutations[0].start_pos):
            m = w.mutations[0]
            print(
                f"  survived: {module}.py:{m.start_pos[0]} {m.operator_name.removeprefix('core/')}: {_changed_line(r.diff)}"
            )
        figures.append((module, len(results), len(killed), len(survived)))
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--module", action="append", choices=sorted(MODULES), help="a module to mutate (repeatable; default all)"
    )
    p.add_argument("--max-mutants", type=int, metavar="N", help="an evenly spread sample of N mutants per module")
    p.add_argument(
        "--tests", nargs="+", metavar="PATH", help="the tests to run instead of the module's own (e.g. tests)"
    )
    p.add_argument(
        "--workdir", type=Path, default=REPO / ".mutation", help="where sessions are kept (default .mutation/)"
    )
    p.add_argument("--report", action="store_true", help="print the figures so far; run nothing")
    a = p.parse_args(argv)
    modules = a.module or list(MODULES)
    a.workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(REPO)
    # The tests import authscope from this checkout (subprocesses too), never an installed copy.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "plugin"), str(REPO), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    restore_interrupted(a.workdir)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM unwinds (and restores) like Ctrl-C
    if not a.report:
        try:
            for module in modules:
                run_module(module, a.workdir, a.max_mutants, a.tests)
        except KeyboardInterrupt:
            print("interrupted; the results so far are kept (run again to resume)", file=sys.stderr)
            restore_interrupted(a.workdir)
    report(a.workdir, modules, a.max_mutants)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

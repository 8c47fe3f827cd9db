"""Mutation testing as a measurement: how many mutants of each core module the fast tests kill.

Runs cosmic-ray's mutation operators (``pip install -e '.[mutation]'``) over
dockerconfig.py, base.py, scope.py, run.py, report.py and targets.py. Each
mutant is applied to the module in this checkout, the module's fast unit tests
run (``pytest -x``; the same files the module's own tests live in, see
MODULES), and the module is restored. Prints, per module, the kill rate and
every surviving mutant (line, operator, the changed line).

A full run is long on a small machine (about 4,300 mutants, most of a day on
2 cores), so it is bounded and resumable: ``--sample N`` takes a fixed sample
of N mutants per module (``--seed S``: a seeded random sample, the same for
the same seed; without a seed, N evenly spread over the file), results are
kept in ``--workdir`` (one cosmic-ray session per module), and a second run
only runs what is still pending. Mutants inside type annotations are
equivalent (see annotation_spans) and left out unless ``--with-annotations``. ``--rerun-survivors`` runs the sample's
survivors again (after tests were added). Each test has a time limit
(``--test-timeout``, pytest-timeout), the whole run four times the unmutated
run. A mutation left in place by a killed run is undone at the next start.

The module under test is changed in place: run it from a copy of the checkout
(or while nothing else imports this one).

    python3 benchmarks/mutation.py --module dockerconfig --sample 60 --seed 1
    python3 benchmarks/mutation.py --module dockerconfig --sample 60 --seed 1 --rerun-survivors
    python3 benchmarks/mutation.py --report --sample 60 --seed 1   # figures so far, runs nothing
    python3 benchmarks/mutation.py                    # everything (most of a day)

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
# -x a mutant dies at the first failing test; then the tests written for the
# mutants that survived it, tests/test_mutants_<module>.py).
MODULES: dict[str, list[str]] = {
    "dockerconfig": ["tests/test_dockerconfig.py", "tests/test_mutants_dockerconfig.py", "tests/test_base.py"],
    "base": ["tests/test_base.py", "tests/test_mutants_base.py", "tests/test_restore_reported.py"],
    "scope": ["tests/test_scope.py", "tests/test_mutants_scope.py"],
    # test_cleanup_hardening: the leftover and cleanup paths end to end (16 s at load 5)
    "run": ["tests/test_run.py", "tests/test_mutants_run.py", "tests/test_scope.py", "tests/test_cleanup_hardening.py"],
    "report": ["tests/test_report.py", "tests/test_mutants_report.py"],
    "targets": ["tests/test_targets.py", "tests/test_mutants_targets.py", "tests/test_plan.py"],
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


def sample(items: list[Any], limit: int | None, seed: int | None = None) -> list[Any]:
    """A fixed sample of ``limit`` work items (all of them without a limit).

    With a seed, a random sample drawn with that seed (the same seed, the same
    sample); without one, ``limit`` items evenly spread over the file. Either
    way sorted by position, so the order does not depend on the database.
    """
    import random

    items = sorted(
        items, key=lambda w: (w.mutations[0].start_pos, w.mutations[0].operator_name, w.mutations[0].occurrence)
    )
    if limit is None or limit >= len(items):
        return items
    if seed is not None:
        picked = set(random.Random(seed).sample(range(len(items)), limit))
        return [w for i, w in enumerate(items) if i in picked]
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


def candidates(db: Any, module: str, annotations: bool) -> list[Any]:
    """The module's work items to sample from: without ``annotations``, not those in a type annotation."""
    items = list(db.work_items)
    if annotations:
        return items
    spans = annotation_spans((PACKAGE / f"{module}.py").read_text())
    return [w for w in items if not in_annotation(w, spans)]


def test_command(module: str, tests: list[str] | None, test_timeout: float) -> str:
    files = [f for f in tests or MODULES[module] if (REPO / f).exists()]
    return shlex.join(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", f"--timeout={test_timeout:g}", *files]
    )


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


def run_module(
    module: str,
    workdir: Path,
    limit: int | None,
    seed: int | None,
    tests: list[str] | None,
    test_timeout: float,
    rerun_survivors: bool,
    annotations: bool,
) -> None:
    from cosmic_ray.mutating import mutate_and_test

    db = session(workdir, module)
    chosen = sample(candidates(db, module, annotations), limit, seed)
    results = dict(db.results)
    if rerun_survivors:
        pending = [w for w in chosen if w.job_id in results and _outcome(results[w.job_id]) == "survived"]
    else:
        pending = [w for w in chosen if w.job_id not in results]
    if not pending:
        return
    command = test_command(module, tests, test_timeout)
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
        outcome = _outcome(result)
        print(
            f"  [{n}/{len(pending)}] line {m.start_pos[0]} {m.operator_name}: {outcome} ({time.monotonic() - started:.0f}s)",
            flush=True,
        )


def _outcome(result: Any) -> str:
    """killed, survived, timeout (the whole run took too long) or incompetent (the mutant did not run)."""
    if result.test_outcome is None or result.test_outcome.value == "incompetent":
        return "incompetent"
    if result.test_outcome.value == "killed" and result.output == "timeout":
        return "timeout"
    return str(result.test_outcome.value)


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the type annotations are, as ((line, col), (end line, end col)).

    Every module here has ``from __future__ import annotations``: annotations
    are kept as strings and never evaluated (nothing calls get_type_hints, and
    dataclasses only look for ClassVar/InitVar by name), so a mutant inside one
    (``str | None`` -> ``str - None``) is equivalent: no test can kill it.
    """
    import ast

    if "from __future__ import annotations" not in source:
        return []
    spans = []
    for node in ast.walk(ast.parse(source)):
        found: list[ast.expr | None] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append(node.returns)
        elif isinstance(node, (ast.arg, ast.AnnAssign)):
            found.append(node.annotation)
        for ann in found:
            if ann is not None and ann.end_lineno is not None and ann.end_col_offset is not None:
                spans.append(((ann.lineno, ann.col_offset), (ann.end_lineno, ann.end_col_offset)))
    return spans


def in_annotation(item: Any, spans: list[tuple[tuple[int, int], tuple[int, int]]]) -> bool:
    m = item.mutations[0]
    return any(start <= tuple(m.start_pos) and tuple(m.end_pos) <= end for start, end in spans)


def _changed_line(diff: str | None) -> str:
    for line in (diff or "").splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            return line[1:].strip()
    return ""


def report(
    workdir: Path, modules: list[str], limit: int | None, seed: int | None = None, annotations: bool = False
) -> list[tuple[str, int, int, int, int]]:
    """Print the figures; (module, run, killed, survived, timeout) per module.

    The kill rate counts a timeout as killed (the tests noticed the mutant:
    they hung); incompetent mutants (that could not be applied or run) are left
    out of it and counted on their own.
    """
    figures = []
    for module in modules:
        if not (workdir / f"{module}.sqlite").exists():
            print(f"{module}: not run yet")
            continue
        db = session(workdir, module)
        pool = candidates(db, module, annotations)
        chosen = {w.job_id: w for w in sample(pool, limit, seed)}
        results = [(chosen[j], r) for j, r in db.results if j in chosen]
        count = {k: 0 for k in ("killed", "survived", "timeout", "incompetent")}
        for _, r in results:
            count[_outcome(r)] += 1
        spans = annotation_spans((PACKAGE / f"{module}.py").read_text())
        survived = [(w, r) for w, r in results if _outcome(r) == "survived"]
        annotations = [(w, r) for w, r in survived if in_annotation(w, spans)]
        judged = count["killed"] + count["survived"] + count["timeout"]
        rate = 100.0 * (count["killed"] + count["timeout"]) / judged if judged else 0.0
        real = judged - len(annotations)
        real_rate = 100.0 * (count["killed"] + count["timeout"]) / real if real else 0.0
        skipped = "" if annotations else f", {db.num_work_items - len(pool)} in annotations not run: equivalent"
        print(
            f"{module}: mutants {len(results)} run of {len(chosen)} sampled ({db.num_work_items} in all{skipped}); "
            f"killed {count['killed']}, survived {count['survived']}, timeout {count['timeout']}, "
            f"incompetent {count['incompetent']}; kill rate {rate:.1f}%; "
            f"without the {len(annotations)} equivalent annotation mutants {real_rate:.1f}%"
        )
        for w, r in sorted(survived, key=lambda wr: wr[0].mutations[0].start_pos):
            m = w.mutations[0]
            note = " [equivalent: type annotation]" if in_annotation(w, spans) else ""
            print(
                f"  survived: plugin/authscope/{module}.py:{m.start_pos[0]} "
                f"{m.operator_name.removeprefix('core/')}: {_changed_line(r.diff)}{note}"
            )
        figures.append((module, len(results), count["killed"], count["survived"], count["timeout"]))
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--module", action="append", choices=sorted(MODULES), help="a module to mutate (repeatable; default all)"
    )
    p.add_argument(
        "--sample", "--max-mutants", type=int, metavar="N", help="a fixed sample of N mutants per module (default all)"
    )
    p.add_argument(
        "--seed", type=int, metavar="S", help="draw the sample at random with this seed (default: evenly spread)"
    )
    p.add_argument(
        "--test-timeout", type=float, default=60.0, metavar="SECONDS", help="time limit per test (default 60)"
    )
    p.add_argument(
        "--rerun-survivors", action="store_true", help="run the sample's surviving mutants again (after new tests)"
    )
    p.add_argument(
        "--tests", nargs="+", metavar="PATH", help="the tests to run instead of the module's own (e.g. tests)"
    )
    p.add_argument(
        "--workdir", type=Path, default=REPO / ".mutation", help="where sessions are kept (default .mutation/)"
    )
    p.add_argument(
        "--with-annotations",
        action="store_true",
        help="sample mutants inside type annotations too (equivalent: never evaluated; skipped by default)",
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
                run_module(
                    module, a.workdir, a.sample, a.seed, a.tests, a.test_timeout, a.rerun_survivors, a.with_annotations
                )
        except KeyboardInterrupt:
            print("interrupted; the results so far are kept (run again to resume)", file=sys.stderr)
            restore_interrupted(a.workdir)
    report(a.workdir, modules, a.sample, a.seed, a.with_annotations)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

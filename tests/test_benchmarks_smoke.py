"""Smoke test of benchmarks/: every script runs with tiny parameters and prints its figures.

Not a timed test: nothing here compares a figure with a goal (the figures of
a --quick run on a busy test machine mean nothing). It checks that each
script still runs against the current CLI, prints its table, and leaves no
process or directory behind. The scripts that need real registries are
e2e: a missing tool skips them locally and fails them under CI=true.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
TOOLS_BIN = REPO / ".tools" / "bin"
REGISTRY_TOOLS = ("docker-registry", "htpasswd", "skopeo", "crane")


def _require(*tools: str) -> None:
    search = f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    missing = [t for t in tools if shutil.which(t, path=search) is None]
    if not missing:
        return
    message = f"benchmark tools not found: {', '.join(missing)} (./scripts/install-deps.sh)"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(message + "; CI=true, so the benchmark smoke test must run", pytrace=False)
    pytest.skip(message)


def _run(script: str, *args: str, timeout: float = 240) -> str:
    env = dict(os.environ, PATH=f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("AUTHSCOPE_SCOPE_DIR", None)
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{out[-4000:]}"
    # Every report starts with the machine and the exact command line.
    assert re.search(r"^machine: \d+ cpus", proc.stdout, re.M), out
    assert re.search(
        rf"^command: \S*python\S* \S*{re.escape(script)} {re.escape(' '.join(args))}$", proc.stdout, re.M
    ), out
    # Every directory a run made (it names them) is gone.
    made = re.findall(r"work directory (/\S+)", proc.stdout)
    assert made, out
    left = [d for d in made if os.path.exists(d)]
    assert not left, f"{script} left {left} behind"
    return proc.stdout


def _table_rows(out: str, first_header: str) -> list[list[str]]:
    """The rows of the (first) table whose header line starts with `first_header`."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip() or line.startswith("growth"):
            break
        rows.append(line.split())
    return rows


def test_scope_lifecycle_prints_median_and_floor() -> None:
    out = _run("scope_lifecycle.py", "--quick")
    assert re.search(r"^open_scope \+ close\s+\d+\s+\d+\s+\d+$", out, re.M), out
    assert re.search(r"^floor: mkdtemp \+ write \+ rmtree\s+\d+", out, re.M), out
    assert re.search(r"^ratio \(medians\): [\d.]+x the floor", out, re.M), out


def test_startup_prints_ratio() -> None:
    # Needs no installed script: the clean venv it makes has its own.
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "startup.py"), "3"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^ratio authscope exec / clean venv floor:\s+wall [\d.]+x\s+cpu [\d.]+x", proc.stdout, re.M), (
        proc.stdout
    )
    assert "clean interpreter: " in proc.stdout, proc.stdout


@pytest.mark.e2e
def test_wan_fanout_prints_a_table_per_tool() -> None:
    _require(*REGISTRY_TOOLS)
    out = _run("wan_fanout.py", "--quick")
    for tool in ("crane", "skopeo"):
        assert f"wall time in seconds, tool {tool}" in out, out
    rows = _table_rows(out, "N  serial loop")
    assert [r[0] for r in rows] == ["1", "2"], out
    assert all(r[3].endswith("x") and float(r[1]) > 0 and float(r[2]) > 0 for r in rows), out
    assert re.search(r"^growth \(least squares\): serial loop", out, re.M), out
    assert "CPU floor" in out, out
    assert re.search(r"^lab: .* over plain HTTP, ", out, re.M), out


@pytest.mark.e2e
def test_wan_fanout_yardsticks_trace_and_plot() -> None:
    """--limit (by hand in parallel), --regsync and --trace, cheaply: crane only, no serial loop."""
    _require(*REGISTRY_TOOLS, "regsync")
    plot = REPO / ".e2e-smoke-plot.png"
    try:
        out = _run(
            "wan_fanout.py", "--quick", "--tools", "crane", "--no-loop",
            "--limit", "--regsync", "--trace", "--plot", str(plot),
        )  # fmt: skip
        rows = _table_rows(out, "N  authscope  by hand")
        assert [r[0] for r in rows] == ["1", "2"], out
        for _n, ours, by_hand, to_limit, regsync, to_regsync in rows:
            assert float(ours) > 0 and float(by_hand) > 0 and float(regsync) > 0, out
            # The ratios are of the unrounded medians: within the table's rounding of the two.
            assert float(to_limit.rstrip("x")) == pytest.approx(float(ours) / float(by_hand), rel=0.03), out
            assert float(to_regsync.rstrip("x")) == pytest.approx(float(ours) / float(regsync), rel=0.03), out
        # The by-hand script: a background copy per target, each in its own DOCKER_CONFIG, then wait.
        assert "& pids+=($!)" in out and 'export DOCKER_CONFIG="$WORK/config-$3"' in out, out
        # regsync's passwords come from the environment, never the file or argv.
        assert "pass: '{{env \"TARGET_1_PASSWORD\"}}'" in out, out
        # The trace: one row per target, its check, tool and read-back timed, its requests counted.
        trace = out[out.index("trace of one fan-out") :]
        row = next(line.split() for line in trace.splitlines() if line.startswith("t1 "))
        assert all(re.fullmatch(r"\d+\.\d{3}", x) for x in row[1:8]), trace
        assert "HEAD /v2/bench/" in trace and "reused" in trace, trace
        written = re.search(r"^plot written to ", out, re.M) is not None
        assert written == plot.exists(), out
        assert written or "--plot: matplotlib is not installed" in out, out
    finally:
        plot.unlink(missing_ok=True)


@pytest.mark.e2e
def test_wan_fanout_over_tls_prints_its_table() -> None:
    _require(*REGISTRY_TOOLS, "openssl")
    out = _run("wan_fanout.py", "--quick", "--tls", "--tools", "crane")
    assert re.search(r"^lab: .* over TLS \(HTTPS\), ", out, re.M), out
    assert "wall time in seconds, tool crane, TLS (HTTPS) lab" in out, out
    rows = _table_rows(out, "N  serial loop")
    assert [r[0] for r in rows] == ["1", "2"], out
    assert all(r[3].endswith("x") and float(r[1]) > 0 and float(r[2]) > 0 for r in rows), out
    # What ran trusts the lab CA; nothing was told to skip verification or speak plain HTTP.
    assert 'ca_file: "LAB_WORK_DIR/ca/ca.crt"' in out, out
    assert "--insecure" not in out and "insecure: true" not in out and "tls-verify=false" not in out, out


@pytest.mark.e2e
def test_source_egress_counts_bytes_per_mode() -> None:
    _require(*REGISTRY_TOOLS)
    out = _run("source_egress.py", "--quick", "--tools", "crane")
    image = int(re.search(r"^image: ([\d,]+) bytes", out, re.M).group(1).replace(",", ""))  # type: ignore[union-attr]
    rows = {(r[0], r[1]): r for r in _table_rows(out, "tool  ")}
    normal = int(rows[("crane", "normal")][3].replace(",", ""))
    once = int(rows[("crane", "pull-once")][3].replace(",", ""))
    # Counting works: a copy per target reads the image per target (N = 2); pull-once reads it once.
    assert normal >= 2 * image > once >= image, out
    assert re.search(r"^goal: pull-once reads <= 1.1x", out, re.M), out


@pytest.mark.e2e
def test_fanout_memory_reports_authscope_own_peak() -> None:
    _require(*REGISTRY_TOOLS)
    out = _run("fanout_memory.py", "--quick")
    rows: dict[str, tuple[float, ...]] = {}
    for line in out.splitlines():
        m = re.match(
            r"^(--dry-run \(baseline\)|fanout --jobs 2 \((?:normal|pull-once)\))\s+([\d.]+)\s+([\d.]+)\s+(\d+)", line
        )
        if m:
            rows[m.group(1)] = (float(m.group(2)), float(m.group(3)), float(m.group(4)))
    assert set(rows) == {"--dry-run (baseline)", "fanout --jobs 2 (normal)", "fanout --jobs 2 (pull-once)"}, out
    # A real reading of a Python process: more than the interpreter's few MiB.
    assert all(peak > 5 for _, peak, _ in rows.values()), out


@pytest.mark.e2e
def test_critical_path_compares_revisions_and_removes_its_worktrees() -> None:
    """Two revisions (HEAD in a worktree of its own, and this checkout): a row each, every
    point in launch order, and no worktree left behind."""
    _require(*REGISTRY_TOOLS)

    def worktrees() -> list[str]:
        listed = subprocess.run(
            ["git", "-C", str(REPO), "worktree", "list", "--porcelain"], capture_output=True, text=True, check=True
        )
        return [line for line in listed.stdout.splitlines() if line.startswith("worktree ")]

    before = worktrees()
    out = _run("critical_path.py", "--quick", "--revisions", "HEAD,.")
    rows = _table_rows(out, "revision  run start")
    assert [r[0] for r in rows] == ["HEAD", "."], out
    for _name, *values in rows:
        start, source, checked, first_tool, last_end, wall = map(float, values)
        assert 0 < start <= source and start <= checked and max(source, checked) <= first_tool, out
        assert first_tool < last_end <= wall, out
    assert worktrees() == before, out

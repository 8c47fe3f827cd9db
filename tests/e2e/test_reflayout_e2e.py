"""A signed release without pull_once reads each referrer from the source once (issue 14, Performance).

The source of `Fleet` is signed, attested and given a signed oras SBOM
(tests/e2e/test_signed_release.py: Signed). Discovery finds the referrers
while the images copy; they are then fetched ONCE per run into private
local OCI layouts (fanout.ReferrerPrefetch, one per referrer tool), and each
target's referrer copies push from there with the target's own tool. The
source registry's access log is the record: each artifact's manifest is
read by a tool once, not once per target (control: with
AUTHSCOPE_REFERRER_PREFETCH=false, N times); every target still passes
`cosign verify`, `cosign verify-attestation` and `oras discover`. A prefetch
that fails falls back to copying from the source (still signed, or failed
naming the artifact), and the layouts are gone after the run, a SIGTERM
mid-run included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import RegistryFactory, require_tools
from tests.e2e.test_fanout import AUTHSCOPE, Fleet, tool_path
from tests.e2e.test_signed_release import Signed
from tests.support import CA

OFF = {"AUTHSCOPE_REFERRER_PREFETCH": "false"}


@pytest.fixture(name="signed")
def _signed(tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory, ca: CA) -> Signed:
    require_tools("skopeo", "openssl")
    tool_path("cosign"), tool_path("oras")
    return Signed(Fleet(tmp_path, e2e_env, registry_factory, ca), tmp_path)


def _artifacts(signed: Signed) -> list[str]:
    """The digests of the source's referrers, as the last fan-out's report lists them."""
    doc = signed.fleet.report()
    digests = {a["digest"] for t in doc["targets"] for a in t["referrers"]}
    assert len(digests) == 4, doc["targets"]
    return sorted(digests)


def _tool_reads(log: Path, start: int, digests: list[str]) -> dict[str, int]:
    """How often a tool (not authscope's own discovery) read each artifact's manifest at the source."""
    reads = dict.fromkeys(digests, 0)
    for line in log.read_text(errors="replace")[start:].splitlines():
        if '"GET /v2/app/manifests/sha256:' not in line or '" 200 ' not in line or "authscope/" in line:
            continue
        digest = line.split("/manifests/")[1].split()[0]
        if digest in reads:
            reads[digest] += 1
    return reads


def _layouts(signed: Signed) -> list[str]:
    return sorted(p.name for p in Path(signed.fleet.env["TMPDIR"]).glob("authscope-layout-*"))


@pytest.mark.parametrize("tool", ["crane", "skopeo", "regctl"])
def test_each_referrer_is_read_from_the_source_once_and_every_target_verifies(tool: str, signed: Signed) -> None:
    tool_path(tool)
    fleet = signed.fleet
    log = fleet.local.log_path
    start = log.stat().st_size
    result = fleet.fanout(signed.targets_file(tool))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in fleet.targets:
        signed.assert_signed(name)
        assert fleet.digest(name, "1.0") == fleet.source.digest
    assert f"fetched the source's 4 referrer(s) once, for {tool}" in result.stderr + result.stdout
    reads = _tool_reads(log, start, _artifacts(signed))
    assert list(reads.values()) == [1, 1, 1, 1], reads
    assert _layouts(signed) == []  # removed after the run


def test_control_without_the_prefetch_the_source_serves_each_referrer_per_target(signed: Signed) -> None:
    tool_path("crane")
    fleet = signed.fleet
    log = fleet.local.log_path
    start = log.stat().st_size
    result = fleet.fanout(signed.targets_file("crane"), env=dict(fleet.env, **OFF))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in fleet.targets:
        signed.assert_signed(name)
    assert "referrer(s) once" not in result.stderr + result.stdout
    reads = _tool_reads(log, start, _artifacts(signed))
    assert list(reads.values()) == [len(fleet.targets)] * 4, reads


def _wrapper(signed: Signed, tmp_path: Path, script: str) -> dict[str, str]:
    """The fleet's environment with a crane that runs ``script`` (sh) before the real one."""
    real = tool_path("crane")
    bin_dir = tmp_path / "wrapped-bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "crane"
    wrapper.write_text(f'#!/bin/sh\n{script}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    env = signed.fleet.env
    return dict(env, PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")


def test_a_failed_prefetch_falls_back_to_the_source_and_still_verifies(signed: Signed, tmp_path: Path) -> None:
    fleet = signed.fleet
    env = _wrapper(signed, tmp_path, 'case "$1" in pull) echo "no pull today" >&2; exit 1;; esac')
    log = fleet.local.log_path
    start = log.stat().st_size
    result = fleet.fanout(signed.targets_file("crane"), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert "fetching the referrers once for crane failed" in out
    assert "copying its referrers from the source" in out
    for name in fleet.targets:
        signed.assert_signed(name)
    # Every target copied them from the source: read once per target (and the failed pulls).
    reads = _tool_reads(log, start, _artifacts(signed))
    assert min(reads.values()) >= len(fleet.targets), reads
    assert _layouts(signed) == []


def test_a_failed_prefetch_never_hides_a_target_that_fails(signed: Signed, tmp_path: Path) -> None:
    """The prefetch fails and the source copy of the attestation 'succeeds' without
    copying it: every target fails, naming the attestation, as without the prefetch."""
    fleet = signed.fleet
    script = 'case "$1" in pull) exit 1;; esac\ncase "$*" in *.att*) echo "copied (not really)"; exit 0;; esac'
    env = _wrapper(signed, tmp_path, script)
    result = fleet.fanout(signed.targets_file("crane"), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    att_tag = f"sha256-{fleet.source.digest.partition(':')[2]}.att"
    for target in fleet.report()["targets"]:
        assert target["status"] == "failed"
        assert "did not reach" in target["error"] and f"cosign attestation {att_tag}" in target["error"]
    assert _layouts(signed) == []


def test_the_layouts_are_removed_after_a_sigterm_mid_prefetch(signed: Signed, tmp_path: Path) -> None:
    fleet = signed.fleet
    marker = tmp_path / "pulled"
    real = tool_path("crane")
    # The real pull writes its layout, then the tool hangs: the run is signalled then.
    script = f'case "$1" in pull) {real} "$@" || exit 1; touch {marker}; exec sleep 60;; esac'
    env = _wrapper(signed, tmp_path, script)
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [*AUTHSCOPE, "fanout", "-f", str(signed.targets_file("crane")), *fleet.report_args()],
            env=env,
            cwd=fleet.cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, out_path.read_text() + err_path.read_text()
            assert time.monotonic() < deadline, "the prefetch never pulled"
            time.sleep(0.05)
        # Control: the layouts are on disk, with what the pull wrote, while the run is on.
        (layouts,) = _layouts(signed)
        written = list((Path(env["TMPDIR"]) / layouts).rglob("index.json"))
        assert written, "no layout was written"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code != 0, out_path.read_text()
    assert _layouts(signed) == [], "a referrer layout outlived the signalled run"
    assert fleet.scopes_left() == []

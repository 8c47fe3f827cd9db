"""A target's referrer copies run at the same time, wave by wave (issue 14's performance item).

Each referrer step is a tool start, a login and a few round trips: run one
after another they cost a WAN fan-out more than the 1.2x of the image-only
fan-out that issue 14 allows (benchmarks/referrers_fanout.py). So the copies
of one wave (what refers to the image) run at once, and the next wave (a
signature of the SBOM) after it; all after the image's first copy and before
its further tags. Proved with real crane behind a wrapper that logs when
each invocation starts and ends, and held to the same end result: every
target verifies with cosign and lists the SBOM (Signed.assert_signed). Run
serially (the code before this change), the wave-1 check fails: no two
referrer copies overlap.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.e2e.test_fanout import tool_path
from tests.e2e.test_signed_release import Signed, signed  # noqa: F401  (the fixture)


def test_referrer_copies_of_a_wave_run_at_once_and_in_order(signed: Signed, tmp_path: Path) -> None:  # noqa: F811
    real = tool_path("crane")
    bin_dir = tmp_path / "timing-bin"
    bin_dir.mkdir()
    log = tmp_path / "crane-times.log"
    wrapper = bin_dir / "crane"
    # The pause makes an overlap visible on any machine; serial copies never overlap, however slow.
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo "start $(date +%s.%N) $*" >> {log}\n'
        'case "$*" in *sha256-*|*@sha256:*) sleep 0.5;; esac\n'
        f'{real} "$@"; rc=$?\n'
        f'echo "end $(date +%s.%N) $*" >> {log}\n'
        "exit $rc\n"
    )
    wrapper.chmod(0o755)
    fleet = signed.fleet
    env = dict(fleet.env, PATH=f"{bin_dir}{os.pathsep}{fleet.env['PATH']}")
    result = fleet.fanout(signed.targets_file("crane"), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in fleet.targets:
        signed.assert_signed(name)

    hexdigest = fleet.source.digest.partition(":")[2]
    sbom_sig = f"sha256-{signed.sbom.partition(':')[2]}.sig"
    wave1 = {f"sha256-{hexdigest}.sig", f"sha256-{hexdigest}.att", signed.sbom}
    for name, registry in fleet.targets.items():
        prefix = f"{registry.host}/{fleet.repos[name]}"
        times: dict[str, dict[str, float]] = {}
        for line in log.read_text().splitlines():
            what, at, *argv = line.split()
            dest = argv[-1]
            # The image is copied from the source; its referrers pushed from the
            # layouts they were fetched into once (fanout.ReferrerPrefetch).
            if dest.startswith(prefix) and argv[0] in ("copy", "push"):
                times.setdefault(dest[len(prefix) + 1 :], {})[what] = float(at)
            elif argv[0] == "tag" and argv[-2].startswith(prefix):
                times.setdefault(f"tag {argv[-1]}", {})[what] = float(at)
        assert set(times) == {"1.0", *wave1, sbom_sig, "tag latest"}, (name, sorted(times))
        first = [times[k] for k in sorted(wave1)]
        # Wave 1 at once: every copy started before any of them ended.
        assert max(t["start"] for t in first) < min(t["end"] for t in first), (name, times)
        # In order: the image first; the SBOM's signature after the SBOM is there; the further tag last.
        assert times["1.0"]["end"] <= min(t["start"] for t in first), (name, times)
        assert times[sbom_sig]["start"] >= max(t["end"] for t in first), (name, times)
        assert times["tag latest"]["start"] >= times[sbom_sig]["end"], (name, times)

"""Where the referrer copies go in a podman / buildah target's steps.

A podman or buildah target's steps are a pull into the scope's storage, then
one push per tag. The referrers (copied with skopeo, tools.referrer_tool)
must follow the image's first push, as they follow every other tool's first
copy: inserted after the pull instead, they ran before the image reached the
target, so a target that refused the image's push (an immutable tag, a quota)
was left holding its signatures and SBOM for an image it never got. Found by
tests/e2e/test_referrers_containers.py (the log's order of the steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from authscope import plan, release
from authscope.targets import load
from authscope.tools import Step
from tests.test_referrers import FILE, SBOM, SIG, write

DIGEST = "sha256:" + "0" * 64


def kinds(steps: Sequence[Step]) -> list[str]:
    return [s.what.split()[0] for s in steps]


@pytest.mark.parametrize("tool", ["podman", "buildah"])
def test_podman_and_buildah_copy_referrers_after_the_first_push(tmp_path: Path, tool: str) -> None:
    spec = load(str(write(tmp_path, FILE.format(top=f"tool: {tool}\ntags: ['1.0', latest]\n", two=""))), {})
    p = release.make_plan(spec, release.Options(), source_digest=DIGEST, artifacts=(SIG, SBOM))
    steps = p.targets[0].steps
    assert kinds(steps) == ["pull", "push", "referrer", "referrer", "push"], [s.what for s in steps]
    assert steps[1].argv[-1] == "docker://harbor.one/release/app:1.0"  # the image's first push, then its referrers
    assert steps[4].argv[-1] == "docker://harbor.one/release/app:latest"


@pytest.mark.parametrize("tool", ["podman", "buildah"])
def test_a_rerun_of_podman_or_buildah_copies_referrers_after_the_first_push(tmp_path: Path, tool: str) -> None:
    spec = load(str(write(tmp_path, FILE.format(top=f"tool: {tool}\ntags: ['1.0', '1', latest]\n", two=""))), {})
    p = release.make_plan(spec, release.Options(), source_digest=DIGEST, artifacts=(SIG, SBOM))
    tp = p.targets[0]
    # 1.0 is right already; 1 and latest are missing, and so is the SBOM.
    narrowed = plan.for_tags(p, tp, ["1", "latest"], referrers=(SBOM,))
    assert kinds(narrowed.steps) == ["pull", "push", "referrer", "push"], [s.what for s in narrowed.steps]
    assert narrowed.steps[1].argv[-1] == "docker://harbor.one/release/app:1"
    # Every tag right, a referrer missing: the referrer copy alone.
    only = plan.for_tags(p, tp, [], referrers=(SIG,))
    assert kinds(only.steps) == ["referrer"]


@pytest.mark.parametrize(("tool", "expected"), [("crane", ["copy", "referrer", "referrer", "tag"]), ("custom", ["command", "command", "referrer", "referrer"])])  # fmt: skip
def test_control_other_tools_keep_their_order(tmp_path: Path, tool: str, expected: list[str]) -> None:
    command = "command: [my-copy, '{source}', '{destination}']\n" if tool == "custom" else ""
    spec = load(str(write(tmp_path, FILE.format(top=f"tool: {tool}\n{command}tags: ['1.0', latest]\n", two=""))), {})
    p = release.make_plan(spec, release.Options(), source_digest=DIGEST, artifacts=(SIG, SBOM))
    assert kinds(p.targets[0].steps) == expected


@pytest.mark.parametrize("tool", ["podman", "buildah"])
def test_podman_and_buildah_first_copy_is_the_pull_and_the_first_push(tmp_path: Path, tool: str) -> None:
    """first_copy runs while discovery does; after_first_copy, once it is done,
    carries the referrers: for podman and buildah the split falls after the
    first push, so no referrer copy waits on the pull alone."""
    spec = load(str(write(tmp_path, FILE.format(top=f"tool: {tool}\ntags: ['1.0', latest]\n", two=""))), {})
    p = release.make_plan(spec, release.Options(), source_digest=DIGEST)
    tp = plan.with_referrers(p, p.targets[0], (SIG, SBOM))
    head = plan.first_copy(p, tp, list(tp.target.tags))
    assert kinds(head.steps) == ["pull", "push"]
    assert head.steps[1].argv[-1] == "docker://harbor.one/release/app:1.0"
    rest = plan.after_first_copy(p, tp, list(tp.target.tags), (SIG, SBOM))
    assert kinds(rest.steps) == ["referrer", "referrer", "push"]
    assert kinds(tp.steps) == ["pull", "push", "referrer", "referrer", "push"]

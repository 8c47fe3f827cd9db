"""The hint for a target whose tool is not installed.

A podman / buildah target copies its referrers with skopeo, a custom one
with crane (tools.referrer_tool): when that tool is missing, "choose another
tool" (what the hint said, with a dangling colon) is no fix, the target's own
tool is fine. The hint names the tool's role and the way to land the image
alone. The e2e counterpart runs real podman and buildah without skopeo:
tests/e2e/test_referrers_containers.py::test_without_skopeo_a_podman_or_buildah_target_says_what_it_copies.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from authscope import fanout as F
from authscope import release
from authscope.targets import load
from tests.test_referrers import FILE, SBOM, SIG, write

DIGEST = "sha256:" + "0" * 64


@pytest.mark.parametrize(
    ("tool", "extra", "copier"),
    [("podman", "", "skopeo"), ("buildah", "", "skopeo"), ("custom", "command: [my-copy, '{source}', '{destination}']\n", "crane")],
)  # fmt: skip
def test_a_missing_referrer_tool_is_named_with_its_role(tmp_path: Path, tool: str, extra: str, copier: str) -> None:
    spec = load(str(write(tmp_path, FILE.format(top=f"tool: {tool}\n{extra}", two=""))), {})
    tp = release.make_plan(spec, release.Options(), source_digest=DIGEST, artifacts=(SIG, SBOM)).targets[0]
    referrer = next(s for s in tp.steps if s.what.startswith("referrer"))
    hint = F._missing_tool_hint(tp.target, referrer, referrer.argv[0])
    assert referrer.argv[0] == copier
    assert hint == (
        f"install {copier} in the job's image: it copies the signatures, attestations and SBOMs of "
        f"tool: {tool} targets; or set referrers: false on target one to land the image alone"
    )
    # Control: the target's own tool missing is a choice of tool.
    image = tp.steps[0]
    own = F._missing_tool_hint(tp.target, image, image.argv[0])
    assert own == f"install {image.argv[0]} in the job's image, or choose another tool"


@pytest.mark.parametrize("tool", ["crane", "skopeo", "regctl"])
def test_a_target_that_copies_its_own_referrers_gets_the_plain_hint(tmp_path: Path, tool: str) -> None:
    spec = load(str(write(tmp_path, FILE.format(top=f"tool: {tool}\n", two=""))), {})
    tp = release.make_plan(spec, release.Options(), source_digest=DIGEST, artifacts=(SIG,)).targets[0]
    referrer = next(s for s in tp.steps if s.what.startswith("referrer"))
    hint = F._missing_tool_hint(tp.target, referrer, tool)
    assert hint == f"install {tool} in the job's image, or choose another tool"
    assert not hint.endswith(":")

"""A signed release's critical path at a target (issue 14, Performance), and
what may never be given up for it.

- The image's manifest is at the target before any referrer is pushed, for
  every tool (Harbor links a cosign signature to its subject only when the
  signature is pushed, looking the subject up then), and the further tags
  are made only after every referrer landed (``crane tag`` and the tag
  copies GET the image: a project that refuses unsigned images answers 412
  until the signature is there). Pinned in the plan and in the run.
- A wave of referrer copies runs at once; one that fails fails the target,
  named, after the others of the wave ended; a signal mid-wave ends every
  copy, closes the scope and runs the base guard.
- After the copies, the fallback index write, the read-back of every
  artifact and the image's own digest check go out at once
  (referrers.settle): their round trips overlap (counted here on a real
  registry behind a counting proxy), and what they check is unchanged.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from authscope import dockerconfig as dc
from authscope import fanout as F
from authscope import plan as P
from authscope import referrers, run, tools
from authscope import release as REL
from authscope.base import Base
from authscope.plan import TargetPlan
from authscope.scope import open_scope
from authscope.targets import load
from tests.test_fanout_unit import target
from tests.test_referrers import FILE, SBOM, SIG, write

DIGEST = "sha256:" + "0" * 64
ATT = referrers.Artifact("sha256:" + "3" * 64, DIGEST, "cosign attestation", "sha256-" + "0" * 64 + ".att")
ARTIFACTS = (SIG, ATT, SBOM)
TOOLS = ["crane", "skopeo", "regctl", "custom", "podman", "buildah"]


def _plan(tmp_path: Path, tool: str, pull_once: bool = False) -> P.Plan:
    top = f"tool: {tool}\ntags: ['1.0', latest, stable]\n"
    if tool == "custom":
        top += "command: [my-copy, '{source}', '{destination}']\n"
    spec = load(str(write(tmp_path, FILE.format(top=top, two=""))), {})
    options = REL.Options(pull_once=pull_once)
    return REL.make_plan(spec, options, source_digest=DIGEST, artifacts=ARTIFACTS)


def image_lands_first(tp: TargetPlan, steps: Sequence[tools.Step]) -> bool:
    """Whether every referrer step comes after the step that puts the image's
    manifest at the target's first destination, and every further tag after
    every referrer: the order Harbor needs."""
    first = tp.destinations[0]
    kinds = ["referrer" if s.what.startswith("referrer") else "image" for s in steps]
    pushes = [i for i, s in enumerate(steps) if kinds[i] == "image" and s.argv[-1].endswith(first)]
    refs = [i for i, k in enumerate(kinds) if k == "referrer"]
    tags = [i for i, s in enumerate(steps) if kinds[i] == "image" and not s.argv[-1].endswith(first)]
    if not pushes or not refs:
        return False
    if tp.target.tool == "custom":  # opaque: the referrers after all of the user's commands
        return min(refs) > max(i for i, k in enumerate(kinds) if k == "image")
    return min(refs) > pushes[0] and all(i > max(refs) for i in tags if i > pushes[0])


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_pushes_the_image_before_any_referrer(tmp_path: Path, tool: str) -> None:
    tp = _plan(tmp_path, tool).targets[0]
    assert [s.what.startswith("referrer") for s in tp.steps].count(True) == 3
    assert image_lands_first(tp, tp.steps), [s.what for s in tp.steps]
    if tool in ("podman", "buildah"):  # pull, push of the first tag, then the referrers (skopeo)
        assert [s.argv[0] for s in tp.steps[:2]] == [tool, tool] and tp.steps[1].argv[-1].endswith(":1.0")
        assert tp.steps[2].argv[0] == "skopeo"
    # Control: the same steps reordered (the referrers first, or right after
    # podman's pull as the plan had them) fail the check.
    refs = [s for s in tp.steps if s.what.startswith("referrer")]
    own = [s for s in tp.steps if not s.what.startswith("referrer")]
    assert not image_lands_first(tp, [*refs, *own])
    assert not image_lands_first(tp, [own[0], *refs, *own[1:]]) or tool not in ("podman", "buildah", "custom")
    assert not image_lands_first(tp, [*own[:1], *own[2:], *refs, own[1]]) or tool in ("custom",)


@pytest.mark.parametrize("tool", ["crane", "skopeo", "regctl"])
def test_pull_once_pushes_the_image_before_any_referrer(tmp_path: Path, tool: str) -> None:
    tp = _plan(tmp_path, tool, pull_once=True).targets[0]
    assert image_lands_first(tp, tp.steps), [s.what for s in tp.steps]


@pytest.mark.parametrize("tool", TOOLS)
def test_a_rerun_narrowed_to_some_tags_pushes_the_image_first(tmp_path: Path, tool: str) -> None:
    p = _plan(tmp_path, tool)
    tp = P.for_tags(p, p.targets[0], ["latest", "stable"], [SIG, SBOM])
    assert [s.what for s in tp.steps if s.what.startswith("referrer")] == [
        f"referrer {SIG.label}",
        f"referrer {SBOM.label}",
    ]
    assert image_lands_first(tp, tp.steps), [s.what for s in tp.steps]


def test_a_wave_is_the_referrers_of_one_generation_never_the_image_or_a_tag(tmp_path: Path) -> None:
    tp = _plan(tmp_path, "crane").targets[0]
    groups = F._batches(tp.steps)
    assert [[s.what.split()[0] for s in g] for g in groups] == [
        ["copy"],
        ["referrer"] * 3,
        ["tag"],
        ["tag"],
    ]


# -- the run: real processes in a real scope ----------------------------------------------


def _ctx(tmp_path: Path, tp: TargetPlan, retries: int = 0) -> F._Context:
    p = P.Plan(
        source=_plan(tmp_path, "crane").source,
        source_ref="x",
        targets=(tp,),
        pull=None,
        layout=None,
        jobs=1,
        retries=retries,
        timeout=60.0,
        path=str(tmp_path / "authscope.yml"),
    )
    return F._Context(
        plan=p,
        source_digest=DIGEST,
        credentials={},
        base=Base(str(tmp_path / "base")),
        environ={},
        scope_dir=None,
        fail_fast=False,
        log=F._Log(io.StringIO()),
        plain_http=(),
        failed=__import__("threading").Event(),
        secrets=(),
    )


def _step(what: str, log: Path, seconds: float, batch: int = 0, code: int = 0) -> tools.Step:
    script = f'echo "start {what} $(date +%s.%N)" >> {log}; sleep {seconds}; echo "end {what} $(date +%s.%N)" >> {log}; exit {code}'
    return tools.Step(what, ("sh", "-c", script), batch)


def _events(log: Path) -> list[tuple[str, str, float]]:
    out = []
    for line in log.read_text().splitlines():
        phase, what, at = line.split(" ")
        out.append((phase, what, float(at)))
    return out


def _run_copy(tmp_path: Path, steps: Sequence[tools.Step], landed: Any = lambda: None) -> int:
    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text('{"auths": {}}')
    tp = TargetPlan(target(), ("127.0.0.1:5001/release/app:1.0",), tuple(steps))
    ctx = _ctx(tmp_path, tp)
    with open_scope(ctx.base, "127.0.0.1:5001", dc.auth_entry("u", "p-123456"), environ=dict(os.environ)) as (scope, _):
        env = scope.env(dict(os.environ))
        return F._copy(
            tp, ctx, env, scope, run.Masker([]), lambda b, e: None, deque(maxlen=50), time.monotonic() + 60, landed
        )


def test_no_referrer_copy_starts_before_the_image_copy_ended(tmp_path: Path) -> None:
    log = tmp_path / "log"
    called: list[float] = []
    steps = [
        _step("image", log, 0.3),
        *(_step(f"ref{i}", log, 0.3, batch=1) for i in range(3)),
        _step("tag", log, 0.05),
    ]
    assert _run_copy(tmp_path, steps, lambda: called.append(time.time())) == 1
    ev = _events(log)
    image_end = next(at for phase, what, at in ev if (phase, what) == ("end", "image"))
    ref_starts = [at for phase, what, at in ev if phase == "start" and what.startswith("ref")]
    ref_ends = [at for phase, what, at in ev if phase == "end" and what.startswith("ref")]
    tag_start = next(at for phase, what, at in ev if (phase, what) == ("start", "tag"))
    assert len(ref_starts) == 3 and min(ref_starts) >= image_end
    assert max(ref_starts) < min(ref_ends)  # the wave ran at once
    assert tag_start >= max(ref_ends)  # the further tag after every referrer
    assert len(called) == 1 and image_end <= called[0] <= min(ref_starts)  # referrers.ahead: once the image is there


def test_control_the_same_steps_in_one_wave_overlap_the_image(tmp_path: Path) -> None:
    """Control: without the order (the image's step in the referrers' wave), a
    referrer copy starts while the image is still being copied."""
    log = tmp_path / "log"
    steps = [_step("image", log, 0.3, batch=1), *(_step(f"ref{i}", log, 0.1, batch=1) for i in range(2))]
    _run_copy(tmp_path, steps)
    ev = _events(log)
    image_end = next(at for phase, what, at in ev if (phase, what) == ("end", "image"))
    assert min(at for phase, what, at in ev if phase == "start" and what.startswith("ref")) < image_end


def test_a_failed_copy_in_a_wave_fails_the_target_named_after_the_others_ended(tmp_path: Path) -> None:
    log = tmp_path / "log"
    steps = [
        _step("image", log, 0),
        _step("ref-ok-1", log, 0.5, batch=1),
        _step("ref-bad", log, 0, batch=1, code=3),
        _step("ref-ok-2", log, 0.5, batch=1),
        _step("tag", log, 0),
    ]
    with pytest.raises(F._Failure) as caught:
        _run_copy(tmp_path, steps)
    returned = time.time()
    assert "ref-bad failed" in caught.value.error and "exited 3" in caught.value.error
    ev = _events(log)
    ends = {what: at for phase, what, at in ev if phase == "end"}
    assert {"ref-ok-1", "ref-ok-2", "ref-bad"} <= set(ends) and max(ends.values()) <= returned
    assert "tag" not in {what for _, what, _ in ev}  # nothing after a failed wave


SIGNAL_SCRIPT = r"""
import json, os, sys, time
from collections import deque
sys.path[:0] = [sys.argv[1]]
from tests import test_refperf as T
from authscope import fanout as F, run, tools
from pathlib import Path
tmp = Path(sys.argv[2])
log = tmp / "log"
rogue = (
    "cat > {base}/config.json <<EOF\n{{\"auths\": {{}}}}\nEOF\n"  # a tool that ignores DOCKER_CONFIG and wipes the base
    "echo $DOCKER_CONFIG > {tmp}/scope; trap '' TERM; echo start >> {log}; sleep 30"
).format(base=tmp / "base", tmp=tmp, log=log)
steps = [
    tools.Step("image", ("true",)),
    tools.Step("referrer a", ("sh", "-c", rogue), 1),
    tools.Step("referrer b", ("sh", "-c", f"echo start >> {log}; sleep 30"), 1),
]
base = tmp / "base"
with run.signals_handled():
    try:
        T._run_copy_with_base(tmp, steps)
    except F._Failure as failure:
        print(json.dumps({"status": failure.status, "error": failure.error}))
"""


def _run_copy_with_base(tmp_path: Path, steps: Sequence[tools.Step]) -> None:
    """For the signal test's child: a base with a login, then _copy in a scope;
    prints what the guard restored."""
    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text(json.dumps({"auths": {"gitlab.local:4567": dc.auth_entry("ci", "local-pw-1")}}))
    tp = TargetPlan(target(), ("127.0.0.1:5001/release/app:1.0",), tuple(steps))
    ctx = _ctx(tmp_path, tp)
    try:
        with open_scope(ctx.base, "127.0.0.1:5001", dc.auth_entry("u", "p-123456"), environ=dict(os.environ)) as (
            scope,
            _,
        ):
            env = scope.env(dict(os.environ))
            F._copy(tp, ctx, env, scope, run.Masker([]), lambda b, e: None, deque(maxlen=50), time.monotonic() + 60)
    finally:
        print(json.dumps({"restored": [d.describe() for d in scope.damage]}), flush=True)


def test_a_signal_mid_wave_ends_every_copy_closes_the_scope_and_runs_the_guard(tmp_path: Path) -> None:
    log = tmp_path / "log"
    child = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_SCRIPT, str(Path(__file__).resolve().parents[1]), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (log.exists() and log.read_text().count("start") == 2):
        time.sleep(0.05)
    assert log.read_text().count("start") == 2  # both copies of the wave are running
    child.send_signal(15)
    out, err = child.communicate(timeout=60)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {"status": "interrupted", "error": "referrer a: interrupted (exit 143)"} in lines or any(
        d.get("status") == "interrupted" for d in lines
    ), (out, err)
    restored = next(d["restored"] for d in lines if "restored" in d)
    assert restored and "gitlab.local:4567" in " ".join(restored)  # the guard ran and put the login back
    base = json.loads((tmp_path / "base" / "config.json").read_text())
    assert "gitlab.local:4567" in base["auths"]
    scope_dir = (tmp_path / "scope").read_text().strip()
    assert scope_dir and not os.path.exists(scope_dir)  # the scope is gone
    leftover = subprocess.run(["pgrep", "-f", f"echo start >> {log}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""  # no copy of the wave outlived it (the TERM-ignoring one neither)


# -- settle: the checks after the copies at once, on a real registry ----------------------------

from tests.test_referrers import artifact as make_artifact  # noqa: E402
from tests.test_referrers import fallback, put, put_copy, tag_of  # noqa: E402
from tests.test_referrers_roundtrips import (  # noqa: E402 - the real registry and its counting proxy
    Counting,
    Release,
    ca,
    proxy,
    registry_factory,
    release,
    source,
    target_session,
)

__all__ = ["ca", "proxy", "registry_factory", "release", "source"]  # fixtures, used by name


def _settle(s: Any, r: Release) -> tuple[Any, list[str], list[str]]:
    return referrers.settle(s, r.repo, r.found, lambda own: own.find_digest(r.repo, r.root))


def test_settle_writes_reads_back_and_checks_the_image_at_once(release: Release, proxy: Counting) -> None:
    repo, root = release.repo, release.root
    index = f"/v2/{repo}/manifests/{referrers.fallback_tag(root)}"
    proxy.delay = 0.5  # a slow WAN: the machine's own noise stays small beside it
    with target_session(proxy, release) as s:
        proxy.reset()
        referrers.ahead(s, repo, release.found)  # during the copies: off the critical path
        assert proxy.api_asks(repo) == 1
        proxy.reset()
        started = time.monotonic()
        checked, written, lost = _settle(s, release)
        took = time.monotonic() - started
    assert (checked, written, lost) == (root, [referrers.fallback_tag(root)], [])
    # Nothing given up: the index read, written, then HEADed; every artifact and the image HEADed.
    assert [proxy.count(m, index) for m in ("GET", "PUT", "HEAD")] == [1, 1, 1]
    for a in release.found:
        assert proxy.count("HEAD", f"/v2/{repo}/manifests/{a.tag or a.digest}") == 1, a.label
    assert proxy.count("HEAD", f"/v2/{repo}/manifests/{root}") == 1
    assert proxy.api_asks(repo) == 0  # ahead had asked
    assert proxy.most_at_once == referrers.READERS  # the index's read beside the image's and the artifacts' HEADs
    assert took < 3.8 * proxy.delay  # the index's three round trips, the rest alongside (about 3)

    # Control: the same checks one after another, as the target ran them before
    # (write_fallback, the image's digest, missing), cost the sum, even with the
    # index already written above: the API, the index, the image, the read-back.
    with target_session(proxy, release) as s:
        started = time.monotonic()
        referrers.write_fallback(s, repo, release.found)
        assert s.find_digest(repo, root) == root
        assert referrers.missing(s, repo, release.found) == []
        took = time.monotonic() - started
    assert took >= 3.8 * proxy.delay  # four round trips


def test_settle_still_names_what_is_missing_and_closes_its_readers(release: Release, proxy: Counting) -> None:
    repo, root = release.repo, release.root
    att = next(a for a in release.found if a.tag == tag_of(root, "att"))
    put_copy(
        release.src, release.dst, repo, att.digest, tag_of(root, "sig")
    )  # the signature's tag holds the attestation
    with target_session(proxy, release) as s:
        _, _, lost = _settle(s, release)
        assert referrers._known(s).readers == []
    assert lost == [f"cosign signature {tag_of(root, 'sig')} (the tag holds {att.digest})"]


def test_an_index_that_cannot_be_written_is_unindexed_after_the_others_finish(
    release: Release, proxy: Counting
) -> None:
    repo, root, dst = release.repo, release.root, release.dst
    blocker = put(dst, repo, "blocker", make_artifact(dst, repo, b"x", subject=None, artifact_type=None))
    put_copy(dst, dst, repo, blocker["digest"], referrers.fallback_tag(root))  # not an index holds the tag
    with target_session(proxy, release) as s:
        proxy.reset()
        with pytest.raises(referrers.Unindexed) as caught:
            _settle(s, release)
        assert proxy.in_flight == 0  # no read left running
    assert isinstance(caught.value.error, ValueError) and "is not an OCI image index" in str(caught.value.error)
    assert proxy.count("PUT", f"/v2/{repo}/manifests/{referrers.fallback_tag(root)}") == 0  # left as it was


def test_the_image_check_fails_the_target_as_before_when_the_index_is_fine(
    release: Release, proxy: Counting, tmp_path: Path
) -> None:
    """_land: the image's digest check runs inside settle; its failure is the
    target's, with _verify's words; an index failure goes first."""
    tp = TargetPlan(
        target(registry=proxy.host, repository=release.repo, insecure=True),
        (f"{proxy.host}/{release.repo}:1.0",),
        (),
        True,
        release.found,
    )
    ctx = _ctx(tmp_path, tp)
    put_copy(release.src, release.dst, release.repo, release.root, "1.0")
    ctx.source_digest = "sha256:" + "9" * 64  # the source has another image
    with target_session(proxy, release) as s, pytest.raises(F._Failure) as caught:
        F._land(tp, ctx, s, time.monotonic() + 30)
    assert f"has {release.root}, the source has {ctx.source_digest}" in caught.value.error
    ctx.source_digest = release.root  # control: the right image lands
    with target_session(proxy, release) as s:
        digests, copied = F._land(tp, ctx, s, time.monotonic() + 30)
    assert digests == {"1.0": release.root} and len(copied) == 3


def test_an_index_the_tools_wrote_whole_is_read_once_and_not_headed_again(release: Release, proxy: Counting) -> None:
    """crane writes the fallback index itself when it pushes a referrer: the GET
    after every copy finds nothing missing, and that GET is the read-back."""
    repo, root = release.repo, release.root
    index = f"/v2/{repo}/manifests/{referrers.fallback_tag(root)}"
    with target_session(proxy, release) as s:
        referrers.write_fallback(s, repo, release.found)  # as crane leaves it
    with target_session(proxy, release) as s:
        proxy.reset()
        _, written, lost = _settle(s, release)
    assert (written, lost) == ([], [])
    assert [proxy.count(m, index) for m in ("GET", "PUT", "HEAD")] == [1, 0, 0]
    # Control: an index that lacks the referrer is written, then HEADed, and a
    # listing that lost it is still caught.
    other = put(release.dst, repo, "vex", make_artifact(release.dst, repo, b"v", subject=None, artifact_type="x/y"))
    fallback(release.dst, repo, root, [other])
    with target_session(proxy, release) as s:
        proxy.reset()
        _, written, lost = _settle(s, release)
    assert (written, lost) == ([referrers.fallback_tag(root)], [])
    assert [proxy.count(m, index) for m in ("GET", "PUT", "HEAD")] == [1, 1, 1]

"""The referrers fetched once per run into local layouts (issue 14, Performance; fanout.ReferrerPrefetch).

Without pull_once, each target's referrer copies used to read every artifact
from the source (`crane copy src@digest dest`), once per target. Now they
are pulled once per run, per referrer tool, into private local layouts,
while the images copy, and each target pushes them from there. What must
hold, with a control each:

- the plan made with the layouts pushes every referrer from its own layout,
  by digest, to the same destinations, in the same waves (control: the plan
  without them copies from the source);
- the pulls run once per tool whatever the number of targets, after
  discovery, and a target waits for them only at its referrer copies;
- a prefetch that failed, was cut short, or fetched another list gives the
  target nothing: it copies from the source, as before (never a layout that
  was not fully written);
- the prefetch's tool gets no target's credential variables (control: the
  job's environment has them);
- the layouts' directory is removed after the run, an exception included;
- --dry-run says the referrers are fetched once, or that the prefetch is off.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from pathlib import Path

import pytest

from authscope import fanout as F
from authscope import plan as P
from authscope import referrers, tools
from authscope import release as REL
from authscope.base import Base
from authscope.errors import RegistryError
from authscope.targets import load
from tests.test_referrers import FILE, SBOM, SIG, write

DIGEST = "sha256:" + "0" * 64
SBOM_SIG = referrers.Artifact("sha256:" + "4" * 64, SBOM.digest, "cosign signature", "sha256-" + "2" * 64 + ".sig")
ARTIFACTS = (SIG, SBOM, SBOM_SIG)


def _plan(tmp_path: Path, tool: str) -> P.Plan:
    spec = load(str(write(tmp_path, FILE.format(top=f"tool: {tool}\ntags: ['1.0', latest]\n", two=""))), {})
    return REL.make_plan(spec, REL.Options(), source_digest=DIGEST, artifacts=ARTIFACTS)


# -- the plan: pushed from the layouts -------------------------------------------------


@pytest.mark.parametrize(("tool", "origin"), [("crane", ""), ("skopeo", "oci:"), ("regctl", "ocidir://")])
def test_the_referrers_are_pushed_from_their_layouts_to_the_same_places(tmp_path: Path, tool: str, origin: str) -> None:
    from dataclasses import replace

    plan = _plan(tmp_path, tool)
    tp = plan.targets[0]
    before = P.for_tags(plan, tp, tp.target.tags, ARTIFACTS)
    local = str(tmp_path / "layouts" / tool)
    after = P.for_tags(replace(plan, referrer_layout=local), tp, tp.target.tags, ARTIFACTS)
    refs_before = [s for s in before.steps if s.what.startswith("referrer")]
    refs_after = [s for s in after.steps if s.what.startswith("referrer")]
    # Control: without the layouts every referrer is read from the source.
    assert all(any(f"app@{a.digest}" in arg for arg in s.argv) for s, a in zip(refs_before, ARTIFACTS, strict=True))
    assert len(refs_after) == len(ARTIFACTS)
    for i, (was, now) in enumerate(zip(refs_before, refs_after, strict=True)):
        assert now.argv[-1] == was.argv[-1]  # the same destination: its tag, or by digest
        assert now.batch == was.batch  # the same wave
        assert f"{origin}{tools.referrer_layout(local, i)}" in " ".join(now.argv)
        assert not any("gitlab.local:4567" in arg for arg in now.argv)  # the source is not read
    # The image's own steps are untouched: the first copy from the source, the tag after the referrers.
    assert [s.what.split()[0] for s in after.steps] == [s.what.split()[0] for s in before.steps]
    assert after.steps[0] == before.steps[0]


def test_a_rerun_pushes_only_the_missing_referrer_from_its_own_layout(tmp_path: Path) -> None:
    from dataclasses import replace

    plan = _plan(tmp_path, "crane")
    tp = plan.targets[0]
    local = str(tmp_path / "crane")
    narrowed = P.for_tags(replace(plan, referrer_layout=local), tp, (), (SBOM_SIG,))
    assert [s.argv for s in narrowed.steps] == [
        ("crane", "push", tools.referrer_layout(local, 2), f"harbor.one/release/app:{SBOM_SIG.tag}")
    ]


# -- the prefetch: once per tool, waited for only where needed ---------------------------


class _Pulls:
    """A fake pull: records (tool, artifacts, layout), sleeps, fails for ``failing``."""

    def __init__(self, seconds: float = 0.0, failing: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, tuple[referrers.Artifact, ...], str]] = []
        self.seconds, self.failing = seconds, failing
        self.lock = threading.Lock()

    def __call__(self, tool: str, artifacts: tuple[referrers.Artifact, ...], layout: str) -> None:
        with self.lock:
            self.calls.append((tool, artifacts, layout))
        time.sleep(self.seconds)
        if tool in self.failing:
            raise RegistryError("gitlab.local:4567", f"pull referrer {artifacts[0].label}: {tool} exited 1")


def _prefetch(tmp_path: Path, pulls: _Pulls, discovery: F.Discovery, tools_: tuple[str, ...]) -> F.ReferrerPrefetch:
    return F.ReferrerPrefetch(discovery, str(tmp_path / "fetched"), tools_, pulls)


def test_the_pulls_run_once_per_tool_however_many_targets_start_them(tmp_path: Path) -> None:
    pulls = _Pulls(seconds=0.2)
    prefetch = _prefetch(tmp_path, pulls, F.Discovery.finished(ARTIFACTS), ("crane", "skopeo", "crane"))
    started = time.monotonic()
    workers = [threading.Thread(target=prefetch.start) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert time.monotonic() - started < 0.15  # start never waits for the pulls
    assert prefetch.layout("crane", ARTIFACTS) == str(tmp_path / "fetched" / "crane")
    assert prefetch.layout("skopeo", ARTIFACTS) == str(tmp_path / "fetched" / "skopeo")
    prefetch.close()
    assert sorted(tool for tool, _, _ in pulls.calls) == ["crane", "skopeo"]  # once each, not per target
    assert all(found == ARTIFACTS for _, found, _ in pulls.calls)
    # The two tools' pulls ran at once: both ended within one pull's time of the first start.
    assert time.monotonic() - started < 0.2 * 2


def test_the_prefetch_waits_for_discovery_and_never_pulls_before_it(tmp_path: Path) -> None:
    gate = threading.Event()

    def work() -> tuple[referrers.Artifact, ...]:
        gate.wait(5)
        return ARTIFACTS

    pulls = _Pulls()
    prefetch = _prefetch(tmp_path, pulls, F.Discovery.started("gitlab.local:4567", work), ("crane",))
    prefetch.start()
    time.sleep(0.2)
    assert pulls.calls == []  # discovery has not ended: nothing to fetch yet
    gate.set()
    assert prefetch.layout("crane", ARTIFACTS) is not None
    prefetch.close()
    assert len(pulls.calls) == 1


def test_a_failed_prefetch_gives_no_layout_and_says_why(tmp_path: Path) -> None:
    pulls = _Pulls(failing=("skopeo",))
    lines: list[str] = []
    prefetch = F.ReferrerPrefetch(
        F.Discovery.finished(ARTIFACTS),
        str(tmp_path / "fetched"),
        ("crane", "skopeo"),
        pulls,
        lines.append,
    )
    prefetch.start()
    assert prefetch.layout("skopeo", ARTIFACTS) is None  # its targets copy from the source
    assert prefetch.layout("crane", ARTIFACTS) is not None  # the other tool's pulls are unaffected
    prefetch.close()
    assert "exited 1" in prefetch.errors["skopeo"]
    assert any("fetching the referrers once for skopeo failed" in line for line in lines)


def test_no_layout_for_another_list_a_tool_not_fetched_or_a_prefetch_never_started(tmp_path: Path) -> None:
    prefetch = _prefetch(tmp_path, _Pulls(), F.Discovery.finished(ARTIFACTS), ("crane",))
    assert prefetch.layout("crane", ARTIFACTS) is None  # not started: no wait, no layout
    prefetch.start()
    assert prefetch.layout("crane", ARTIFACTS[:2]) is None  # the layouts are numbered for the whole list
    assert prefetch.layout("regctl", ARTIFACTS) is None
    assert prefetch.layout("crane", ARTIFACTS) is not None  # control
    prefetch.close()


def test_a_failed_discovery_pulls_nothing(tmp_path: Path) -> None:
    def work() -> tuple[referrers.Artifact, ...]:
        raise RegistryError("gitlab.local:4567", "HTTP 500")

    pulls = _Pulls()
    prefetch = _prefetch(tmp_path, pulls, F.Discovery.started("gitlab.local:4567", work), ("crane",))
    prefetch.start()
    assert prefetch.layout("crane", ARTIFACTS) is None
    prefetch.close()
    assert pulls.calls == [] and "HTTP 500" in prefetch.errors["crane"]


def test_a_target_falls_back_to_the_source_when_the_prefetch_failed(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "crane")
    tp = plan.targets[0]
    out = io.StringIO()
    ctx = F._Context(
        plan, DIGEST, {}, Base(str(tmp_path / "base")), {}, None, False, F._Log(out), (), threading.Event(), ()
    )
    failed = _prefetch(tmp_path, _Pulls(failing=("crane",)), F.Discovery.finished(ARTIFACTS), ("crane",))
    failed.start()
    assert F._prefetched(tp, ctx, failed) is plan  # from the source, as before
    assert "copying its referrers from the source (not fetched once" in out.getvalue()
    ok = _prefetch(tmp_path, _Pulls(), F.Discovery.finished(ARTIFACTS), ("crane",))
    ok.start()
    assert F._prefetched(tp, ctx, ok).referrer_layout == str(tmp_path / "fetched" / "crane")  # control
    failed.close(), ok.close()


# -- the prefetch's pull: no target's secret, its own scope --------------------------------


def _manifests(n: int) -> tuple[referrers.Artifact, ...]:
    """``n`` artifacts whose manifests are the bytes ``m0``, ``m1``, ...: what the fake crane writes."""
    import hashlib

    return tuple(
        referrers.Artifact("sha256:" + hashlib.sha256(f"m{i}".encode()).hexdigest(), DIGEST, SPDX_KIND, None)
        for i in range(n)
    )


SPDX_KIND = "application/spdx+json"
# A crane pull that writes artifact N's manifest ("mN") under its digest in the layout it was given ($4).
FAKE_PULL = (
    'n="${4##*referrer-}"; hex=$(printf "m$n" | sha256sum | cut -c1-64)\n'
    'mkdir -p "$4/blobs/sha256" && printf "m$n" > "$4/blobs/sha256/$hex"\n'
)


def test_the_prefetch_tool_gets_no_target_credential_variable(tmp_path: Path) -> None:
    spec = load(str(write(tmp_path, FILE.format(top="tool: crane\n", two=""))), {})
    artifacts = _manifests(3)
    plan = REL.make_plan(spec, REL.Options(), source_digest=DIGEST, artifacts=artifacts)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dump = tmp_path / "env.txt"
    fake = bin_dir / "crane"
    # A crane that writes the environment it got, then the manifest where it was asked.
    fake.write_text(f"#!/bin/sh\nenv >> {dump}\n{FAKE_PULL}")
    fake.chmod(0o755)
    base = tmp_path / "base"
    base.mkdir(mode=0o700)
    (base / "config.json").write_text('{"auths": {}}')
    environ = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "ONE": "one-secret-x", "TWO": "two-secret-y"}
    environ["HOME"] = str(tmp_path)
    layout = tmp_path / "fetched" / "crane"
    layout.parent.mkdir()
    F.prefetch_referrers(
        "crane",
        artifacts,
        str(layout),
        plan,
        Base(str(base)),
        environ,
        scope_dir=str(tmp_path / "scopes"),
        source_plain_http=False,
        targets=spec.targets,
        stream=io.StringIO(),
    )
    seen = dump.read_text()
    assert seen.count("PATH=") >= len(artifacts)  # one pull per artifact
    assert "one-secret-x" not in seen and "two-secret-y" not in seen
    assert "DOCKER_CONFIG=" in seen  # its own scope
    # Control: the job's environment, as a target's tool gets it, holds its own secret.
    assert "one-secret-x" in F.tool_environ(environ, spec.targets[0], spec.targets, {}).values()


def test_a_pull_that_fails_raises_naming_it(tmp_path: Path) -> None:
    spec = load(str(write(tmp_path, FILE.format(top="tool: crane\n", two=""))), {})
    plan = REL.make_plan(spec, REL.Options(), source_digest=DIGEST, artifacts=ARTIFACTS)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "crane"
    fake.write_text(f'#!/bin/sh\ncase "$*" in *{SBOM.digest}*) exit 3;; esac\nexit 0\n')
    fake.chmod(0o755)
    base = tmp_path / "base"
    base.mkdir(mode=0o700)
    (base / "config.json").write_text('{"auths": {}}')
    environ = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    with pytest.raises(RegistryError, match=re.escape(f"pull referrer {SBOM.label}: crane exited 3")):
        F.prefetch_referrers(
            "crane",
            ARTIFACTS,
            str(tmp_path / "crane"),
            plan,
            Base(str(base)),
            environ,
            scope_dir=str(tmp_path / "scopes"),
            source_plain_http=False,
            stream=io.StringIO(),
        )
    assert not list((tmp_path / "scopes").iterdir())  # its scope is gone


# -- the layouts' directory, and --dry-run -------------------------------------------------


def test_the_layouts_directory_is_removed_after_the_run_an_exception_included(tmp_path: Path) -> None:
    os.environ["TMPDIR"] = str(tmp_path)  # restored below
    import tempfile

    tempfile.tempdir = None
    try:
        with pytest.raises(RuntimeError), REL._layout_dir(True) as where:
            Path(where).mkdir()
            Path(where, "crane.referrer-0").mkdir()
            Path(where, "crane.referrer-0", "index.json").write_text("{}")
            assert list(tmp_path.glob("authscope-layout-*"))  # control: it is there during the run
            raise RuntimeError("a bug mid-run")
        assert not list(tmp_path.glob("authscope-layout-*"))
    finally:
        del os.environ["TMPDIR"]
        tempfile.tempdir = None


def test_dry_run_says_the_referrers_are_fetched_once_or_that_the_prefetch_is_off(tmp_path: Path) -> None:
    spec = load(str(write(tmp_path, FILE.format(top="tool: crane\n", two=""))), {})
    text = P.render(REL.make_plan(spec, REL.Options()), {})
    assert "referrers: fetched once from the source into private local OCI layouts (with crane" in text
    off = P.render(REL.make_plan(spec, REL.Options()), {"AUTHSCOPE_REFERRER_PREFETCH": "false"})
    assert "fetched once" not in off and "each target copies them from the source" in off
    # No referrers, or pull_once (which pulls them itself): no such line.
    none = P.render(REL.make_plan(spec, REL.Options(referrers=False)), {})
    assert "fetched once" not in none
    pulled = P.render(REL.make_plan(spec, REL.Options(pull_once=True)), {})
    assert "fetched once from the source into private" not in pulled


def test_a_pull_that_exits_0_without_the_manifest_is_a_failed_prefetch(tmp_path: Path) -> None:
    """A tool that says it pulled and wrote nothing, or other bytes: the targets
    copy from the source (control: the honest fake passes)."""
    spec = load(str(write(tmp_path, FILE.format(top="tool: crane\n", two=""))), {})
    artifacts = _manifests(2)
    plan = REL.make_plan(spec, REL.Options(), source_digest=DIGEST, artifacts=artifacts)
    base = tmp_path / "base"
    base.mkdir(mode=0o700)
    (base / "config.json").write_text('{"auths": {}}')
    lying = {
        "honest": FAKE_PULL,
        "nothing": "exit 0\n",
        "other bytes": FAKE_PULL.replace('> "$4/blobs', '> /dev/null; printf x > "$4/blobs'),
    }
    for name, script in lying.items():
        bin_dir = tmp_path / name.replace(" ", "-")
        bin_dir.mkdir()
        (bin_dir / "crane").write_text(f"#!/bin/sh\n{script}")
        (bin_dir / "crane").chmod(0o755)
        environ = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}

        def pull(where: Path, environ: dict[str, str] = environ) -> None:
            F.prefetch_referrers(
                "crane",
                artifacts,
                str(where),
                plan,
                Base(str(base)),
                environ,
                scope_dir=str(tmp_path / "scopes"),
                source_plain_http=False,
                stream=io.StringIO(),
            )

        where = tmp_path / f"layouts-{bin_dir.name}" / "crane"
        if name == "honest":
            pull(where)
        else:
            with pytest.raises(RegistryError, match="exited 0 but did not write its manifest"):
                pull(where)

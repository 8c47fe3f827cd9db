"""From a loaded targets file to what will run: pure, printable, secret-free."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import tools
from .errors import UsageError
from .referrers import Artifact
from .targets import PULL_ONCE_TOOLS, Fanout, Source, Target


@dataclass(frozen=True)
class TargetPlan:
    target: Target
    destinations: tuple[str, ...]
    steps: tuple[tools.Step, ...]
    referrers_on: bool = False  # referrers: true for this target (the file's, or --[no-]referrers)
    referrers: tuple[Artifact, ...] = ()  # what its steps copy, found at the source (referrers.py)


@dataclass(frozen=True)
class Plan:
    source: Source
    source_ref: str  # what the tools copy: by digest once resolved
    targets: tuple[TargetPlan, ...]
    pull: tools.Step | None  # pull_once: fetch the source into ``layout`` first
    layout: str | None
    jobs: int
    retries: int
    timeout: float
    path: str
    referrers_on: bool = False  # some target copies referrers: discover them at the source
    artifacts: tuple[Artifact, ...] | None = None  # what was discovered; None before the run starts
    pull_referrers: tuple[tools.Step, ...] = ()  # pull_once: each artifact into a layout of its own
    referrer_layout: str | None = None  # no pull_once: the referrers fetched once there (fanout.ReferrerPrefetch)


def make_plan(
    fanout: Fanout,
    *,
    only: Sequence[str] = (),
    jobs: int | None = None,
    retries: int | None = None,
    timeout: float | None = None,
    source_digest: str | None = None,
    pull_once: bool | None = None,
    layout: str = "{layout}",
    referrers: bool | None = None,
    artifacts: tuple[Artifact, ...] | None = None,
) -> Plan:
    """The plan for ``fanout``; ``only`` picks targets by name, in file order.

    With pull_once (from the file unless given), the source is fetched once
    into the local OCI layout ``layout`` and every target is pushed from it.
    ``referrers`` (--[no-]referrers) overrides every target's referrers:;
    ``artifacts``: what discovery found at the source, copied after each
    target's first copy (before its further tags: a registry that refuses
    unsigned images must see the signature before the tag is read back).
    """
    known = list(fanout.names or [t.name for t in fanout.targets])  # loaded with only=: names of all
    unknown = [name for name in only if name not in known]
    if unknown:
        raise UsageError(
            f"no target named {', '.join(map(repr, unknown))} in {fanout.path}; its targets are: {', '.join(known)}"
        )
    image = fanout.source.image
    source_ref = f"{image.registry}/{image.repository}@{source_digest}" if source_digest else image.pinned
    chosen = [t for t in fanout.targets if not only or t.name in only]
    pulled = fanout.pull_once if pull_once is None else pull_once
    if pulled and (fanout.tool not in PULL_ONCE_TOOLS or any(t.tool != fanout.tool for t in chosen)):
        raise UsageError("--pull-once needs every target to use one tool: crane, skopeo or regctl")
    plans = []
    for target in chosen:
        destinations = tuple(f"{target.registry}/{target.repository}:{tag}" for tag in target.tags)
        steps = tools.steps_for(fanout.source, target, source_ref, layout if pulled else None)
        on = target.referrers if referrers is None else referrers
        carried = tuple(artifacts or ()) if on else ()
        if carried:
            extra = tools.referrer_steps(fanout.source, target, carried, layout if pulled else None)
            first = _first(target, steps)
            steps = [*steps[:first], *extra, *steps[first:]]
        plans.append(TargetPlan(target, destinations, tuple(steps), on, carried))
    return Plan(
        fanout.source,
        source_ref,
        tuple(plans),
        tools.pull_step(fanout.tool, fanout.source, source_ref, layout) if pulled else None,
        layout if pulled else None,
        jobs or fanout.jobs,
        fanout.retries if retries is None else retries,
        timeout or fanout.timeout,
        fanout.path,
        any(tp.referrers_on for tp in plans),
        artifacts,
        tuple(tools.pull_referrer_steps(fanout.tool, fanout.source, artifacts, layout))
        if pulled and artifacts and any(tp.referrers for tp in plans)
        else (),
    )


def _first(target: Target, steps: Sequence[tools.Step]) -> int:
    """Where the referrer copies go among a target's steps: after its first
    copy (after every command of a custom target; podman's and buildah's
    first push), once the image is there: tools.landed_after."""
    return tools.landed_after(target, steps)


def with_referrers(plan: Plan, tp: TargetPlan, artifacts: Sequence[Artifact]) -> TargetPlan:
    """``tp`` carrying ``artifacts`` (what discovery found; nothing when its
    referrers are off), with the steps make_plan gives it when they are known
    before the run: a plan made while discovery still runs (the copies start
    as soon as the source digest is known) gets them per target this way."""
    from dataclasses import replace

    carried = tuple(artifacts) if tp.referrers_on else ()
    if carried == tp.referrers:
        return tp
    t = tp.target
    steps = tools.steps_for(plan.source, t, plan.source_ref, plan.layout)
    if carried:
        first = _first(t, steps)
        steps = [*steps[:first], *tools.referrer_steps(plan.source, t, carried, plan.layout), *steps[first:]]
    return replace(tp, steps=tuple(steps), referrers=carried)


def first_copy(plan: Plan, tp: TargetPlan, tags: Sequence[str]) -> TargetPlan:
    """The steps of ``for_tags(plan, tp, tags)`` that come before any
    referrer copy: the first copy (every command of a custom target). It
    needs nothing discovery finds, so it runs while discovery does."""
    from dataclasses import replace

    narrowed = for_tags(plan, tp, tags, ())
    return replace(narrowed, steps=narrowed.steps[: _first(narrowed.target, narrowed.steps)])


def after_first_copy(plan: Plan, tp: TargetPlan, tags: Sequence[str], referrers: Sequence[Artifact]) -> TargetPlan:
    """The rest of ``for_tags(plan, tp, tags, referrers)`` after ``first_copy``:
    the referrer copies, then the further tags (made from the first). ``tp``
    carries what discovery found (with_referrers)."""
    from dataclasses import replace

    head = for_tags(plan, tp, tags, ())
    narrowed = for_tags(plan, tp, tags, referrers)
    return replace(narrowed, steps=narrowed.steps[_first(head.target, head.steps) :])


def referrer_pulls(plan: Plan, artifacts: Sequence[Artifact]) -> tuple[tools.Step, ...]:
    """pull_once: the pulls of ``artifacts`` into layouts of their own (the
    plan's pull_referrers, for a plan made before discovery ended)."""
    if plan.layout is None or not artifacts or not any(tp.referrers_on for tp in plan.targets):
        return ()
    tool = plan.targets[0].target.tool  # pull_once: every target's (make_plan)
    return tuple(tools.pull_referrer_steps(tool, plan.source, tuple(artifacts), plan.layout))


def for_tags(
    plan: Plan, tp: TargetPlan, tags: Sequence[str], referrers: Sequence[Artifact] | None = None
) -> TargetPlan:
    """``tp`` narrowed to ``tags`` (a re-run: the tags that don't hold the source
    digest yet), with its tool's steps made for those destinations only: the
    first of them copied from the source (or the layout), the others made from
    it, so a tag that is already right is never pushed again. ``referrers``:
    the artifacts to copy along (those the target lacks; None: all of tp's),
    after the first copy as in make_plan."""
    from dataclasses import replace

    wanted = tp.referrers if referrers is None else tuple(a for a in tp.referrers if a in referrers)
    kept = tuple(tag for tag in tp.target.tags if tag in tags)
    if kept == tp.target.tags and wanted == tp.referrers and plan.referrer_layout is None:
        return tp
    target = replace(tp.target, tags=kept)
    steps = tools.steps_for(plan.source, target, plan.source_ref, plan.layout) if kept else []
    if wanted:
        # Made for all of tp's artifacts, then picked: with pull_once each has its
        # own layout, numbered in that order (tools.pull_referrer_steps).
        local = plan.layout if plan.layout is not None else plan.referrer_layout
        every = tools.referrer_steps(plan.source, target, tp.referrers, local)
        extra = [step for artifact, step in zip(tp.referrers, every, strict=True) if artifact in wanted]
        first = _first(target, steps)
        steps = [*steps[:first], *extra, *steps[first:]]
    return TargetPlan(
        target,
        tuple(f"{target.registry}/{target.repository}:{tag}" for tag in kept),
        tuple(steps),
        tp.referrers_on,
        wanted,
    )


def _secret_ref(name: str | None, kind: str, environ: Mapping[str, str]) -> str:
    if name is None:
        return ""
    if kind == "env":
        return f"${name} ({'set' if environ.get(name) else 'NOT SET'})"
    return f"{name} ({'exists' if _is_file(name) else 'MISSING'})"


def _is_file(path: str) -> bool:
    import os

    return os.path.isfile(path)


def _referrers_line(tp: TargetPlan, plan: Plan) -> str:
    if not tp.referrers_on:
        return "not copied (referrers: false): signatures, attestations and SBOMs stay behind"
    how = f"with {tools.referrer_tool(tp.target)}, by digest, each read back"
    if plan.artifacts is None:
        return (
            "copied along, " + how + ": the cosign tags (sha256-<hex>.sig, .att, .sbom, ...) and OCI referrers "
            "of the source digest and of each platform manifest, recursively; found when the run starts"
        )
    return f"{len(tp.referrers)} copied along, {how}: " + (", ".join(a.label for a in tp.referrers) or "none found")


PREFETCH_OFF = ("0", "false", "no", "off")


def prefetch_on(environ: Mapping[str, str]) -> bool:
    """Whether the referrers are fetched once into local layouts (not with
    pull_once, which pulls them itself): on unless
    AUTHSCOPE_REFERRER_PREFETCH is false (then each target copies them from
    the source, as before)."""
    return environ.get("AUTHSCOPE_REFERRER_PREFETCH", "").strip().lower() not in PREFETCH_OFF


def render(plan: Plan, environ: Mapping[str, str], force: bool = False) -> str:
    """The plan as text for --dry-run: references to secrets, never values.
    ``force``: --force (every target copied, up to date or not)."""
    src = plan.source
    lines: list[str] = [
        f"plan from {plan.path}: {len(plan.targets)} target(s), {plan.jobs} at a time, "
        f"{plan.retries} retr{'y' if plan.retries == 1 else 'ies'}, timeout {plan.timeout:g}s each",
        f"source: {src.image.with_tag(src.image.tag) if src.image.tag else src.image.pinned}"
        + (" (insecure)" if src.insecure else "")
        + (f" (CA {src.ca_file})" if src.ca_file else "")
        + ("; copied by digest, resolved when the run starts" if not src.image.digest else ""),
    ]
    if plan.pull is not None:
        lines.append(
            f"pull once into a local OCI layout, then push every target from it:\n  $ {tools.display(plan.pull.argv)}"
        )
    if plan.pull is None and plan.referrers_on:
        if prefetch_on(environ):
            used = sorted({tools.referrer_tool(tp.target) for tp in plan.targets if tp.referrers_on})
            lines.append(
                "referrers: fetched once from the source into private local OCI layouts (with "
                + ", ".join(used)
                + ", in a scope of their own, while the images copy; removed after the run), then pushed to each "
                "target from them (a target copies them from the source if that fetch fails)"
            )
        else:
            lines.append("referrers: each target copies them from the source (AUTHSCOPE_REFERRER_PREFETCH is off)")
    for tp in plan.targets:
        t = tp.target
        user = (
            f"username {t.username!r}" if t.username else f"username_env {_secret_ref(t.username_env, 'env', environ)}"
        )
        password = (
            f"password_env {_secret_ref(t.password_env, 'env', environ)}"
            if t.password_env
            else f"password_file {_secret_ref(t.password_file, 'file', environ)}"
        )
        tls = "insecure" if t.insecure else (f"CA {t.ca_file}" if t.ca_file else "TLS verified")
        lines.append(f"\n{t.name}  ({t.registry}, {tls}, tool {t.tool})")
        lines.append(f"  credentials: {user}, {password}")
        for dest in tp.destinations:
            lines.append(f"  -> {dest}")
        lines.append(f"  referrers: {_referrers_line(tp, plan)}")
        for step in tp.steps:
            lines.append(f"  $ {tools.display(step.argv)}")
        lines.append(
            f"  {'--force' if force else 'force: true'}: copied even when its tags already hold the source digest"
            if t.force or force
            else "  at run time, tags that already hold the source digest (read with HEAD) are not copied again"
        )
    lines.append("\ndry run: nothing was contacted, copied or written")
    return "\n".join(lines)

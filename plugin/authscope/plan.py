"""From a loaded targets file to what will run: pure, printable, secret-free."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import tools
from .errors import UsageError
from .targets import PULL_ONCE_TOOLS, Fanout, Source, Target


@dataclass(frozen=True)
class TargetPlan:
    target: Target
    destinations: tuple[str, ...]
    steps: tuple[tools.Step, ...]


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
) -> Plan:
    """The plan for ``fanout``; ``only`` picks targets by name, in file order.

    With pull_once (from the file unless given), the source is fetched once
    into the local OCI layout ``layout`` and every target is pushed from it.
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
        plans.append(TargetPlan(target, destinations, tuple(steps)))
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


def render(plan: Plan, environ: Mapping[str, str]) -> str:
    """The plan as text for --dry-run: references to secrets, never values."""
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
        for step in tp.steps:
            lines.append(f"  $ {tools.display(step.argv)}")
    lines.append("\ndry run: nothing was contacted, copied or written")
    return "\n".join(lines)

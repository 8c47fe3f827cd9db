"""A release fan-out as one call: ``run(spec, options, environ) -> Report``.

The flow, in order: read every chosen target's credentials (all missing ones
at once, exit 2); start every target's credential check, which overlaps with
reading the source; resolve the source's digest with the base's login; with
pull_once, fetch the source once into a local layout; build the final plan
(the source by digest); run every target (fanout.execute, where
``run_target`` is what happens to one target); and return the report, with
what the base guard restored outside the targets' scopes.

A source that cannot be read ends the run there: every target is reported
failed (or interrupted) with the source's problem in ``Report.error``.
Nothing here prints errors or chooses exit codes: that is cli's job.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from . import fanout, plan, trace
from . import report as R
from .base import Base
from .dockerconfig import base_dir
from .errors import RegistryError
from .run import received_signal
from .targets import Fanout


@dataclass(frozen=True)
class Options:
    """How to run a fan-out; ``None`` keeps what the targets file says."""

    only: tuple[str, ...] = ()  # target names, in file order; () for every target
    jobs: int | None = None
    retries: int | None = None
    timeout: float | None = None
    pull_once: bool | None = None
    fail_fast: bool = False
    force: bool = False  # copy targets that are already up to date too
    config_dir: str | None = None  # the base (default: $DOCKER_CONFIG, else ~/.docker)
    scope_dir: str | None = None
    withheld: tuple[str, ...] = ()  # variables no tool gets (the GitLab API token's)
    masked: tuple[str, ...] = ()  # more secrets to mask (the GitLab API token)
    referrers: bool | None = None  # --[no-]referrers: overrides every target's referrers:


def make_plan(spec: Fanout, options: Options, **resolved: Any) -> plan.Plan:
    """The plan for ``spec`` under ``options``; ``resolved``: the source digest and layout once known."""
    return plan.make_plan(
        spec,
        only=options.only,
        jobs=options.jobs,
        retries=options.retries,
        timeout=options.timeout,
        pull_once=options.pull_once,
        referrers=options.referrers,
        **resolved,
    )


def dry_run(
    spec: Fanout,
    options: Options,
    environ: Mapping[str, str],
    show: Callable[[str], None],
    warn: Callable[[str], None] | None = None,
) -> None:
    """Show the plan (references to secrets, never values), then check that
    every chosen target's secrets can be read (TargetsFileError: exit 2)."""
    show(plan.render(make_plan(spec, options), environ, force=options.force))
    fanout.resolve_credentials(spec, environ, options.only, warn=warn)


def run(
    spec: Fanout,
    options: Options,
    environ: Mapping[str, str],
    *,
    say: Callable[[str], None] = lambda _line: None,
    warn: Callable[[str], None] | None = None,
    stream: IO[str] | None = None,
) -> R.Report:
    """The whole fan-out of ``spec``; the report of every chosen target.

    ``say`` gets authscope's own progress lines; the targets' log (their
    tools' output, their verdicts) goes to ``stream`` (default: stdout, as it
    is when the run starts)."""
    stream = stream or sys.stdout
    trace.event("run", phase="start", targets=len(spec.targets))
    credentials = fanout.resolve_credentials(spec, environ, options.only, warn=warn)
    base = Base(base_dir(options.config_dir, environ))
    draft = make_plan(spec, options)
    started, clock = time.time(), time.monotonic()
    guard: list[str] = []  # what the base guard restored outside the targets' scopes
    image = spec.source.image
    source = image.with_tag(image.tag) if image.tag else image.pinned

    def report(results: tuple[R.Result, ...], digest: str | None, error: str = "") -> R.Report:
        return R.Report(
            source,
            digest,
            spec.tool,
            results,
            started,
            time.monotonic() - clock,
            received_signal(),
            error,
            tuple(guard),
        )

    with _layout_dir(draft.layout is not None) as layout, fanout.Preflights(draft, credentials, stream) as checks:
        try:
            # What refers to the source (signatures, attestations, SBOMs) is
            # found here, once, for every target (referrers.discover).
            digest, plain_http, artifacts = fanout.resolve_source_and_referrers(
                spec, base, environ, discover=draft.referrers_on
            )
            final = make_plan(spec, options, source_digest=digest, layout=layout, artifacts=artifacts)
            if final.pull is not None:
                fanout.pull_source(
                    final,
                    base,
                    environ,
                    scope_dir=options.scope_dir,
                    source_plain_http=plain_http,
                    extra_secrets=[*fanout.all_secrets(credentials), *options.masked],
                    targets=spec.targets,
                    withheld=options.withheld,
                    stream=stream,
                    restored=guard,
                )
        except RegistryError as exc:
            # Nothing was copied: every target fails with the source's problem,
            # or is interrupted when a signal is what stopped the pull.
            interrupted = received_signal() is not None
            status, error = (R.INTERRUPTED, f"interrupted: {exc}") if interrupted else (R.FAILED, str(exc))
            return report(fanout.none_copied(draft, status, error), None, error)
        say(f"fan-out of {source} ({digest}) to {len(final.targets)} target(s), {final.jobs} at a time")
        if final.referrers_on:
            say(
                f"{len(artifacts)} signature(s), attestation(s) and referrer(s) go along"
                + (": " + ", ".join(a.label for a in artifacts) if artifacts else "")
            )
        trace.event("execute", phase="start")
        results = fanout.execute(
            final,
            digest,
            credentials,
            base,
            environ,
            scope_dir=options.scope_dir,
            fail_fast=options.fail_fast,
            force=options.force,
            source_plain_http=plain_http,
            preflights=checks,
            targets=spec.targets,
            withheld=options.withheld,
            secrets=options.masked,
            stream=stream,
        )
    trace.event("run", phase="end")
    return report(results, digest)


@contextmanager
def _layout_dir(wanted: bool) -> Iterator[str]:
    """A private directory for pull_once's OCI layout ($TMPDIR: it can be large), removed after."""
    if not wanted:
        yield ""
        return
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="authscope-layout-")
    try:
        yield os.path.join(directory, "layout")
    finally:
        shutil.rmtree(directory, ignore_errors=True)

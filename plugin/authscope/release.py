"""A release fan-out as one call: ``run(spec, options, environ) -> Report``.

The flow, in order: read every chosen target's credentials (all missing ones
at once, exit 2); start every target's credential check, which overlaps with
reading the source; resolve the source's digest with the base's login, and
start finding its referrers in the background (fanout.Discovery: the copies
don't wait for it, only what needs the referrers does); build the final plan
(the source by digest); run every target (fanout.execute, where
``run_target`` is what happens to one target: with pull_once, the first target
that needs a copy fetches the source once into a local layout, the others wait
for it, and targets that are up to date never read it; without pull_once, the
first target that needs a copy starts fetching the referrers once into local
layouts, fanout.ReferrerPrefetch, which every target's referrer copies then
push from); and return the report,
with what the base guard restored outside the targets' scopes.

A source that cannot be read ends the run there: every target is reported
failed (or interrupted) with the source's problem in ``Report.error``. A
discovery that fails fails every target that carries referrers, and is
``Report.error`` too. A
pull_once pull that fails fails every target that needed it, and is
``Report.error`` too.
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

from . import fanout, plan, tools, trace
from . import report as R
from .base import Base
from .dockerconfig import base_dir
from .errors import AuthscopeError, RegistryError
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

    with (
        _layout_dir(draft.layout is not None) as layout,
        _layout_dir(draft.layout is None and draft.referrers_on and plan.prefetch_on(environ)) as fetched,
        fanout.Preflights(draft, credentials, stream, force=options.force) as checks,
    ):

        def found(artifacts: tuple[Any, ...]) -> None:
            say(
                f"{len(artifacts)} signature(s), attestation(s) and referrer(s) go along"
                + (": " + ", ".join(a.label for a in artifacts) if artifacts else "")
            )

        try:
            # What refers to the source (signatures, attestations, SBOMs) is
            # found once, for every target (referrers.discover), while the
            # copies run: they start as soon as the digest is known.
            digest, plain_http, discovery = fanout.start_source(
                spec, base, environ, discover=draft.referrers_on, found=found
            )
            final = make_plan(spec, options, source_digest=digest, layout=layout)
        except RegistryError as exc:
            # Nothing was copied: every target fails with the source's problem,
            # or is interrupted when a signal is what stopped reading it.
            interrupted = received_signal() is not None
            status, error = (R.INTERRUPTED, f"interrupted: {exc}") if interrupted else (R.FAILED, str(exc))
            return report(fanout.none_copied(draft, status, error), None, error)
        say(f"fan-out of {source} ({digest}) to {len(final.targets)} target(s), {final.jobs} at a time")
        pull = None
        if final.pull is not None:
            # Pulled only when the first target that needs a copy asks (a re-run of
            # an up-to-date release reads no blob from the source), once.
            pull = _PullOnce(
                image.registry,
                lambda: fanout.pull_source(
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
                    discovery=discovery,
                ),
            )
        prefetch = None
        if fetched:
            # The referrers are fetched once, for every target, into local layouts
            # (one per referrer tool), while the images copy: each target pushes
            # them from there, and the source is read once for them, not N times.
            secrets = [*fanout.all_secrets(credentials), *options.masked]
            prefetch = fanout.ReferrerPrefetch(
                discovery,
                fetched,
                sorted({tools.referrer_tool(tp.target) for tp in final.targets if tp.referrers_on}),
                lambda tool, artifacts, where: fanout.prefetch_referrers(
                    tool,
                    artifacts,
                    where,
                    final,
                    base,
                    environ,
                    scope_dir=options.scope_dir,
                    source_plain_http=plain_http,
                    extra_secrets=secrets,
                    targets=spec.targets,
                    withheld=options.withheld,
                    stream=stream,
                    restored=guard,
                ),
                say,
            )
        trace.event("execute", phase="start")
        try:
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
                pull=pull,
                discovery=discovery,
                prefetch=prefetch,
            )
        finally:
            if prefetch is not None:
                prefetch.close()  # its tools have ended before their layouts are removed
    trace.event("run", phase="end")
    if discovery.failed() and isinstance(discovery.error, RegistryError):
        # Every target that carries referrers failed with it (fanout._discovered): the source's problem.
        interrupted = received_signal() is not None
        error = str(discovery.error)
        return report(results, digest, f"interrupted: {error}" if interrupted else error)
    if pull is not None and isinstance(pull.error, RegistryError):
        # No target was copied: those that needed the pull failed with it, the others were up to date.
        interrupted = received_signal() is not None
        return report(results, digest, f"interrupted: {pull.error}" if interrupted else str(pull.error))
    return report(results, digest)


class _PullOnce:
    """pull_once, lazily: ``pull`` runs when the first target that needs a copy
    calls, under a lock: the others wait for it, and it never runs twice. A
    pull that failed raises its error to every caller (fanout fails each
    target that needed it with it)."""

    def __init__(self, registry: str, pull: Callable[[], None]) -> None:
        import threading

        self._registry = registry
        self._pull = pull
        self._lock = threading.Lock()
        self._done = False
        self.error: BaseException | None = None

    def __call__(self) -> None:
        with self._lock:
            if not self._done:
                self._done = True
                try:
                    self._pull()
                except RegistryError as exc:
                    self.error = exc
                except AuthscopeError as exc:  # its scope could not be opened: no copy can start from it
                    self.error = RegistryError(self._registry, f"could not pull the source: {exc}")
                except BaseException as exc:  # a bug, or a signal: no caller may go on without the layout
                    self.error = exc
                    raise
        if isinstance(self.error, RegistryError):
            raise RegistryError(self.error.registry, self.error.reason)  # one per target: they run in threads
        if self.error is not None:
            raise RuntimeError(f"the pull_once pull failed: {self.error!r}") from self.error


@contextmanager
def _layout_dir(wanted: bool) -> Iterator[str]:
    """A private directory for pull_once's OCI layout, or the referrers' (ReferrerPrefetch)
    ($TMPDIR: it can be large), removed after, whatever ends the run."""
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

"""``authscope check``: find a broken credential before release day, pushing nothing.

For every chosen target, in parallel: the variables its credentials come from
are set (and the ones its other fields name), the registry answers, it
accepts the credentials at /v2/ (fanout's own pre-check), and the account
may push to the repository:

- on a Bearer registry, a token is asked for ``repository:<repo>:push,pull``
  and its ``access`` claim says what was granted (read, not verified: the
  registry verifies it; authscope only reports). An opaque token is
  reported as such, with how to check by hand;
- on a Basic registry, a blob upload is started and cancelled at once
  (``POST /v2/<repo>/blobs/uploads/``, ``DELETE`` of its Location): 202 means
  push is allowed; 401, 403 or 405 mean it is not. An upload session holds no
  blob, manifest or tag, and it is deleted.

And the source: readable with the base's login (the base Docker config, as
the fan-out reads it) and its tag exists (HEAD on the manifest).

Nothing is copied, no blob or manifest is written, no tag created. A target
that fails is reported with what to fix; only a targets file that cannot be
used at all (a broken file, its own ``${VAR}``s) is a config error. Nothing
here prints errors or chooses exit codes: that is cli's job.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import IO

from . import fanout
from . import report as R
from . import targets as T
from .base import Base
from .errors import AuthscopeError, RegistryError, TargetsFileError, UsageError
from .registry import RegistryHTTPError, RegistryUnreachable, Session

SOURCE = "source"  # the source's row in the report
TIMEOUT = 60.0  # per target: a check is a few round trips, not a copy
_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Options:
    """What to check; ``None`` keeps what the targets file says."""

    only: tuple[str, ...] = ()  # target names; () for every target
    jobs: int | None = None
    config_dir: str | None = None  # the base (default: $DOCKER_CONFIG, else ~/.docker)


def run(path: str, environ: Mapping[str, str], options: Options, *, stream: IO[str] | None = None) -> R.Report:
    """Check the source and every chosen target of ``path``; a Result for each.

    A file that cannot be used at all raises TargetsFileError (exit 2); a
    target whose own variables are missing is that target's failure.
    """
    from .dockerconfig import base_dir

    spec = T.load(path, environ, names_only=True)  # the file itself, and every target's name
    unknown = [name for name in options.only if name not in spec.names]
    if unknown:
        raise UsageError(
            f"no target named {', '.join(map(repr, unknown))} in {path}; its targets are: {', '.join(spec.names)}"
        )
    chosen = [name for name in spec.names if not options.only or name in options.only]
    base = Base(base_dir(options.config_dir, environ))
    log = fanout._Log(stream or sys.stdout)
    started, clock = time.time(), time.monotonic()
    jobs = max(1, min(options.jobs or spec.jobs, len(chosen) + 1))
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="authscope-check") as pool:
        source = pool.submit(check_source, spec, base, environ)
        checks = [pool.submit(check_target, path, name, environ, spec.retries, log) for name in chosen]
        results = (source.result(), *(c.result() for c in checks))
    image = spec.source.image
    return R.Report(
        image.with_tag(image.tag) if image.tag else image.pinned,
        next(iter(results[0].digests.values()), None),
        spec.tool,
        results,
        started,
        time.monotonic() - clock,
    )


def _result(
    name: str,
    registry: str,
    repository: str,
    tags: Sequence[str],
    started: float,
    *,
    error: str = "",
    hint: str = "",
    digests: dict[str, str | None] | None = None,
) -> R.Result:
    """A check's Result: failed when it has an ``error``; an ok one's ``hint`` is a note."""
    return R.Result(
        name,
        registry,
        repository,
        "check",
        tuple(tags),
        R.FAILED if error else R.OK,
        digests=digests or {},
        attempts=1,
        duration=time.monotonic() - started,
        error=error,
        hint=hint,
    )


def _unset(exc: TargetsFileError) -> tuple[str, str]:
    """(what is wrong, how to fix it) from a target's variable problems."""
    error = "; ".join(f"{p.where}: {p.message}" for p in exc.problems)
    names = sorted({m.group(1) for p in exc.problems for m in _VARIABLE.finditer(p.message)})
    if not names:
        return error, f"fix the target in {exc.path}"
    return error, (
        f"set {', '.join('$' + n for n in names)} for this job: in GitLab, a CI/CD variable whose environment "
        "scope matches the job's environment and, if it is protected, a protected branch or tag"
    )


def check_target(path: str, name: str, environ: Mapping[str, str], retries: int, log: fanout._Log) -> R.Result:
    """One target: its variables, its registry, its credentials, its push right."""
    started = time.monotonic()
    try:
        spec = T.load(path, environ, [name])  # its registry, repository, CA file... may be ${VAR}s
        t = spec.targets[0]
    except TargetsFileError as exc:
        error, hint = _unset(exc)
        return _result(name, "", "", (), started, error=error, hint=hint)
    done: Callable[..., R.Result] = partial(_result, name, t.registry, t.repository, t.tags, started)
    try:
        creds = fanout.resolve_credentials(spec, environ, [name])[name]
    except TargetsFileError as exc:
        error, hint = _unset(exc)
        return done(error=error, hint=hint)
    try:
        with fanout._preflight(t, creds, TIMEOUT, retries, log) as session:
            note = _push_right(t, session)
    except fanout._Failure as failure:
        return done(error=failure.error, hint=failure.hint)
    except RegistryError as exc:
        return done(error=str(exc), hint=getattr(exc, "hint", "check the registry"))
    except AuthscopeError as exc:  # its CA file cannot be read
        return done(error=str(exc), hint=f"fix the target in {path}")
    return done(hint=note)


def _no_push(t: T.Target, how: str) -> fanout._Failure:
    return fanout._Failure(
        f"{t.username_ref} may not push to {t.registry}/{t.repository}: {how}",
        f"give that account push permission on {t.repository} (Harbor: the robot account's project permissions, "
        f"push artifact; GitLab: a deploy token with write_registry), or fix {t.username_ref} and {t.password_ref}",
    )


def _push_right(t: T.Target, session: Session) -> str:
    """ "" when the account may push to the repository; a note when that could
    not be established; raises _Failure when it may not."""
    repo = f"{t.registry}/{t.repository}"
    if session.challenge() == "bearer":
        try:
            granted = session.granted(t.repository)
        except RegistryHTTPError as exc:
            raise _no_push(t, f"its token service refused a token for push,pull (HTTP {exc.status})") from None
        if granted is None:
            return (
                f"push permission not established: the token of {t.registry} is opaque (not a JWT), so what it "
                f"grants cannot be read without pushing; check it by hand, e.g. copy any image to {repo}:authscope-check "
                "and delete that tag, or look at the account's permissions in the registry"
            )
        if "push" not in granted:
            raise _no_push(t, f"the token it is given for push,pull grants {','.join(granted) or 'nothing'}")
        return ""
    posted, cancelled = session.upload_probe(t.repository)
    if posted in (401, 403, 405):
        raise _no_push(t, f"starting a blob upload was answered HTTP {posted}")
    if posted == 404:
        raise fanout._Failure(
            f"{repo}: starting a blob upload was answered HTTP 404 (no such repository or project)",
            f"create the project of {t.repository} on {t.registry} (Harbor: projects are not created by a push), "
            "or fix repository:",
        )
    if posted != 202:
        raise fanout._Failure(
            f"{repo}: starting a blob upload was answered HTTP {posted}", "is this a container registry's API?"
        )
    if cancelled not in (200, 202, 204):
        return (
            f"may push; the test upload could not be cancelled (DELETE answered {cancelled or 'nothing'}): the "
            "registry drops an upload that is never finished (distribution: after a week); it holds no blob and no tag"
        )
    return ""


def check_source(spec: T.Fanout, base: Base, environ: Mapping[str, str]) -> R.Result:
    """The source: the base's login reads it, and its tag exists (HEAD)."""
    started = time.monotonic()
    src = spec.source
    image = src.image
    reference = image.digest or image.tag or "latest"
    ref = image.pinned if image.digest else image.with_tag(reference)
    done: Callable[..., R.Result] = partial(_result, SOURCE, image.registry, image.repository, (reference,), started)
    login = f"authscope login {image.registry} -u ... --password-env ... (the components: registry-login: true)"
    try:
        auth = fanout.source_credentials(base.snapshot().config, image.registry, environ, base.path)
        with Session(image.registry, auth, ca_file=src.ca_file, insecure=src.insecure, timeout=TIMEOUT) as session:
            digest = session.manifest_digest(image.repository, reference)
    except RegistryHTTPError as exc:
        if exc.status in (401, 403):
            who = "refused the base's login" if auth else f"needs a login, and the base {base.path} has none for it"
            return done(error=f"{image.registry} {who}: cannot read {ref} (HTTP {exc.status})", hint=login)
        if exc.status == 404:
            return done(
                error=f"the source {ref} does not exist (HTTP 404)",
                hint=f"push it before the release, or fix source: in {spec.path} (a scheduled pipeline has no "
                "$CI_COMMIT_TAG: give it a default there, ${CI_COMMIT_TAG:-latest})",
            )
        return done(error=f"cannot read the source {ref}: {exc.reason}", hint="check source:")
    except RegistryUnreachable as exc:
        return done(
            error=f"cannot reach the source registry {image.registry}: {exc.reason}",
            hint="check source: (host and port; insecure: or ca_file: for plain HTTP or a private CA) and the network",
        )
    except AuthscopeError as exc:  # a broken base, a helper that fails, a hostile answer
        return done(error=str(exc), hint=getattr(exc, "hint", "") or f"fix the base: {login}")
    return done(digests={reference: digest})


# -- how a check is shown ------------------------------------------------------------


def line(r: R.Result) -> str:
    """One line per target: ok, or the problem and its fix."""
    what = "source" if r.name == SOURCE else "target"
    if r.status == R.OK and r.name == SOURCE:
        return f"[{r.name}] ok: {r.registry}/{r.repository}:{r.tags[0]} is readable with the base's login ({r.digests[r.tags[0]]})"
    if r.status == R.OK and r.hint:
        return f"[{r.name}] ok, credentials accepted; {r.hint}"
    if r.status == R.OK:
        return f"[{r.name}] ok: credentials accepted, may push to {r.registry}/{r.repository}"
    return f"[{r.name}] FAILED ({what}): {r.error}; fix: {r.hint}"


def table(report: R.Report) -> str:
    """report.py's summary table, under a head that says what was checked."""
    rows = R.summary_table(report, referrers=False).split("\n", 1)[1]
    failed = len(report.results) - report.count(R.OK)
    head = (
        f"check of {report.source} and {len(report.results) - 1} target(s): "
        + ("all pass" if not failed else f"{failed} failed")
        + f" in {report.duration:.1f}s; nothing was pushed"
    )
    return f"{head}\n{rows}"


def junit(report: R.Report) -> bytes:
    """report.py's JUnit, one testcase per target and one for the source."""
    return R.junit(report).replace(b'name="authscope fanout ', b'name="authscope check ', 1)


def to_json(report: R.Report) -> str:
    """report.py's versioned JSON, marked as a check's."""
    import json

    doc = json.loads(R.to_json(report))
    doc = {"version": doc.pop("version"), "command": "check", **doc}
    return json.dumps(doc, indent=2) + "\n"

"""Execute a plan: every target in its own scope, N at a time, verified.

Per target: open a scope (base + the target's login, no helpers), check the
target's credentials at /v2/, run the tool's steps (retrying transient
failures with exponential backoff), read back every destination's digest and
compare it with the source's, close the scope (the base guard runs), and
return a Result. One target's failure never stops the others unless
--fail-fast; a signal stops launching, is forwarded to running tools, and
every target still gets a Result.
"""

from __future__ import annotations

import base64
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from . import dockerconfig as dc
from . import report as R
from . import run, tools, trace
from .base import Base
from .errors import AuthscopeError, ConfigError, Problem, RegistryError, SecretSourceError, TargetsFileError
from .plan import Plan, TargetPlan
from .registry import RealmRefused, RegistryAnswerError, RegistryHTTPError, RegistryUnreachable, Session
from .scope import Scope, open_scope
from .targets import Fanout, Target

BACKOFF = 1.0  # seconds before the first retry; doubles each time
CHECKS = 16  # credential checks run at once (Preflights), at least `jobs`


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def secrets(self) -> list[str]:
        """The password and its base64 ``auth`` form, for masking."""
        return [self.password, dc.encode_auth(self.username, self.password)]


def all_secrets(credentials: Mapping[str, Credentials]) -> list[str]:
    """Every target's secrets: a target's output must not show another
    target's either (a tool could find it some other way than its environment)."""
    return [secret for creds in credentials.values() for secret in creds.secrets()]


def tool_environ(
    environ: Mapping[str, str],
    own: Target | None,
    targets: Sequence[Target],
    credentials: Mapping[str, Credentials],
    withheld: Sequence[str] = (),
) -> dict[str, str]:
    """The job's environment as one target's tool gets it (``own`` None: the
    pull_once step, which is no target's).

    Left out: every other target's credential variables (its password_env and
    username_env), any variable holding another target's password or naming
    its password_file under another name, and ``withheld`` (the variable of
    --gitlab-token-env: an API token no copy needs). A tool that prints its
    environment, or is hostile, holds its own target's secrets and the
    source's (in its scope's config) and no one else's. CI_JOB_TOKEN stays:
    it is usually the source's login already (CI_REGISTRY_PASSWORD is the
    same token), it expires with the job, and custom commands use it.
    """
    others = [t for t in targets if own is None or t.name != own.name]
    mine = {own.password_env, own.username_env} if own is not None else set()
    names = {n for t in others for n in (t.password_env, t.username_env) if n} | set(withheld)
    names -= {n for n in mine if n}
    values = {c.password for name, c in credentials.items() if own is None or name != own.name}
    values |= {t.password_file for t in others if t.password_file}
    if own is not None:  # two targets may share a robot account, or its file
        values -= {v for v in (own.password_file, getattr(credentials.get(own.name), "password", None)) if v}
    return {key: value for key, value in environ.items() if key not in names and value not in values}


def resolve_credentials(
    fanout: Fanout,
    environ: Mapping[str, str],
    only: Sequence[str] = (),
    warn: Callable[[str], None] | None = None,
) -> dict[str, Credentials]:
    """Every chosen target's credentials, read now; every missing one reported at once.

    ``warn`` gets a warning for each password too short for GitLab to mask.
    The secrets read are remembered, so that everything authscope prints or
    writes is masked (run.mask_known).
    """
    from .credentials import PASSWORD_LIMIT, check_text, read_file, text, warn_if_short

    problems: list[Problem] = []
    out: dict[str, Credentials] = {}
    for t in fanout.targets:
        if only and t.name not in only:
            continue
        where = f"targets[{t.name}]"

        def problem(field: str, message: str, t: Target = t, where: str = where) -> None:
            problems.append(Problem(fanout.path, t.line, f"{where}.{field}", message))

        user = t.username
        if t.username_env:
            user = environ.get(t.username_env) or None
            if user is None:
                problem("username_env", f"${t.username_env} is not set or empty")
        password: str | None = None
        if t.password_env:
            password = environ.get(t.password_env) or None
            if password is None:
                problem(
                    "password_env",
                    f"${t.password_env} is not set or empty (in GitLab: is it protected, and is this a protected ref or tag?)",
                )
        elif t.password_file:
            try:
                data = read_file(t.password_file, t.password_file, PASSWORD_LIMIT)
                password = text(data, t.password_file).rstrip("\r\n") or None
                if password is None:
                    problem("password_file", f"{t.password_file} is empty")
            except SecretSourceError as exc:
                problem("password_file", str(exc))
        for value, variable, field in (
            (user, t.username_env, "username_env"),
            (password, t.password_env, "password_env"),
        ):
            try:
                if value and variable:
                    check_text(value, f"${variable}")
            except SecretSourceError as exc:
                # A variable's bytes that are not UTF-8: refused by name, never quoted.
                problem(field, str(exc))
                user = None
        if user and password:
            out[t.name] = Credentials(user, password)
            warn_if_short(password, f"{where}.{t.password_ref}", warn)
            run.remember(out[t.name].secrets())
    if problems:
        raise TargetsFileError(fanout.path, problems)
    return out


def source_credentials(
    cfg: dc.Config, registry: str, environ: Mapping[str, str], path: str = "config.json"
) -> tuple[str, str] | None:
    """The base's login for the source registry (inline or via its helper)."""
    key = dc.registry_key(registry)
    for name, entry in cfg.get("auths", {}).items():
        if dc.same_registry(name, key) and entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"], validate=True).decode("utf-8").partition(":")
            except (TypeError, ValueError):  # not a string, not base64, not UTF-8
                sep = ""
            if not sep:
                raise ConfigError(
                    path,
                    f'"auths" entry {name!r}: "auth" is not base64 of user:password; log in again with authscope login',
                )
            return user, password
    helper = dc.helper_for(cfg, key)
    if helper:
        return run.helper_get(helper, key, environ)
    return None


# -- diagnosing a tool's failure --------------------------------------------------------

_TRANSIENT = re.compile(
    r"connection refused|connection reset|broken pipe|i/o timeout|tls handshake timeout|timeout exceeded|"
    r"unexpected EOF|\b50[0234]\b|internal server error|bad gateway|service unavailable|gateway time-?out|"
    r"\b429\b|too ?many ?requests|temporarily unavailable",
    re.IGNORECASE,
)
_AUTH = re.compile(r"\b401\b|unauthorized|authentication required|incorrect username or password", re.IGNORECASE)
_DENIED = re.compile(r"\b403\b|denied|forbidden|insufficient_scope", re.IGNORECASE)
_TLS = re.compile(r"x509|certificate (signed by unknown|verify failed|is not valid)|unknown authority", re.IGNORECASE)
_HTTP = re.compile(
    r"server gave HTTP response to HTTPS client|first record does not look like a TLS handshake", re.IGNORECASE
)
_NOT_FOUND = re.compile(r"manifest[ _]unknown|name[ _]unknown|not found|\b404\b", re.IGNORECASE)


def diagnose(output: Sequence[str], target: Target, source_registry: str) -> tuple[bool, str]:
    """(transient, hint) from what a tool printed."""
    text = "\n".join(output[-40:])
    if _AUTH.search(text):
        who = source_registry if source_registry in text and target.registry not in text else target.registry
        if who == target.registry:
            return (
                False,
                f"{target.registry} rejected the credentials: check {target.username_ref} and {target.password_ref}",
            )
        return (
            False,
            f"the source registry {source_registry} rejected the base's login: run `authscope login {source_registry} ...` before the fan-out",
        )
    if _DENIED.search(text):
        return (
            False,
            f"{target.username_ref} may not push to {target.registry}/{target.repository}: give it push permission on that project (Harbor: the robot account's project permissions)",
        )
    if _TLS.search(text):
        return (
            False,
            f"the certificate of {target.registry} (or of the source) is not trusted: set ca_file: to its CA, or insecure: true",
        )
    if _HTTP.search(text):
        return False, "the registry speaks plain HTTP: set insecure: true on this target (or on the source)"
    if _TRANSIENT.search(text):
        return True, "a network or registry error that may pass; retried with backoff"
    if _NOT_FOUND.search(text):
        return False, "an image or repository was not found: check source: and this target's repository:"
    return False, "see the tool's output above"


# -- running one target ---------------------------------------------------------------


_LOG_LOCK = threading.Lock()  # one for every _Log: lines never interleave


class _Log:
    """Thread-safe line output for the CI log."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, text: str) -> None:
        text = run.mask_known(text)  # authscope's own lines too: errors may quote a registry's answer
        with _LOG_LOCK:
            self.stream.write(text + "\n")
            self.stream.flush()


@dataclass
class _Context:
    plan: Plan
    source_digest: str
    credentials: dict[str, Credentials]
    base: Base
    environ: Mapping[str, str]
    scope_dir: str | None
    fail_fast: bool
    log: _Log
    plain_http: tuple[str, ...]
    failed: threading.Event
    secrets: tuple[str, ...]
    preflights: Preflights | None = None
    targets: tuple[Target, ...] = ()  # every target of the file, for tool_environ
    withheld: tuple[str, ...] = ()  # variables no tool gets (tool_environ)


class _Failure(Exception):
    """Ends one target: what failed, how to fix it, after how many attempts."""

    def __init__(self, error: str, hint: str, status: str = R.FAILED, attempts: int = 0) -> None:
        super().__init__(error)
        self.error, self.hint, self.status, self.attempts = error, hint, status, attempts


def run_target(tp: TargetPlan, ctx: _Context) -> R.Result:
    t = tp.target
    started = time.monotonic()
    trace.acting(t.name)
    fields = dict(name=t.name, registry=t.registry, repository=t.repository, tool=t.tool, tags=t.tags)
    if run.stopping():
        return R.Result(**fields, status=R.INTERRUPTED, error="not started: the run was interrupted")  # type: ignore[arg-type]
    if ctx.fail_fast and ctx.failed.is_set():
        return R.Result(**fields, status=R.SKIPPED, error="not started: --fail-fast after an earlier failure")  # type: ignore[arg-type]
    creds = ctx.credentials[t.name]
    output: deque[str] = deque(maxlen=R.TAIL_LINES)
    attempts = 0
    digests: dict[str, str | None] = {}
    error = hint = ""
    status = R.OK
    restored: tuple[str, ...] = ()
    deadline = started + ctx.plan.timeout
    scope: Scope | None = None

    def line(data: bytes, is_stderr: bool) -> None:
        for text in data.decode("utf-8", "replace").splitlines():
            text = R.cap_line(text)  # a megabyte without a newline: one short log line
            output.append(text)
            ctx.log(f"[{t.name}] {text}")

    try:
        checked = (
            ctx.preflights.take(t.name)
            if ctx.preflights
            else _preflight(t, creds, ctx.plan.timeout, ctx.plan.retries, ctx.log)
        )
        with checked as session:
            plain_http = ctx.plain_http + ((t.registry,) if session.schemes == ["http"] else ())
            entry = dc.auth_entry(creds.username, creds.password)
            with open_scope(
                ctx.base,
                t.registry,
                entry,
                root=ctx.scope_dir,
                sources=[ctx.plan.source.image.registry],
                environ=ctx.environ,
            ) as (scope, secrets):
                env = scope.env(tool_environ(ctx.environ, t, ctx.targets, ctx.credentials, ctx.withheld))
                env.update(
                    tools.prepare(scope.path, ctx.plan.source, t, plain_http, pulled=ctx.plan.layout is not None)
                )
                run.remember(secrets)  # the base's, read from it or a helper
                masker = run.Masker([*secrets, *ctx.secrets])
                attempts = _copy(tp, ctx, env, scope, masker, line, output, deadline)
                digests = _verify(tp, ctx, session, deadline)
    except _Failure as failure:
        status, error, hint = failure.status, failure.error, failure.hint
        attempts = attempts or failure.attempts
    except AuthscopeError as exc:  # a scope or helper problem for this target only
        status, error, hint = R.FAILED, str(exc), "see the error; the other targets are unaffected"
    if scope is not None:
        # The guard ran when the scope closed, whatever ended the target (a
        # failed copy, a retry, a signal): what it restored is always reported.
        restored = tuple(d.describe() for d in scope.damage)
    if scope is not None and scope.left_behind:
        for left in scope.left_behind:
            ctx.log(f"authscope: [{t.name}] warning: could not remove {left}")
        if status == R.OK:  # it landed, but the target's login may still be on disk
            status, error = R.FAILED, f"landed, but its scope could not be removed fully: {scope.left_behind[0]}"
            hint = "free what is left (chattr -i, umount), then run `authscope sweep`"
    if status != R.OK:
        ctx.failed.set()
    result = R.Result(
        **fields,  # type: ignore[arg-type]
        status=status,
        digests=digests,
        attempts=attempts,
        duration=time.monotonic() - started,
        error=error,
        hint=hint,
        output=tuple(output) if status != R.OK else (),
        restored=restored,
    )
    verdict = f"landed {', '.join(tp.destinations)}" if status == R.OK else f"{status.upper()}: {error}"
    trace.event("target", phase="end", status=status)
    ctx.log(f"authscope: [{t.name}] {verdict} ({result.duration:.1f}s, {attempts} attempt(s))")
    return result


def _pause(seconds: float, cancel: threading.Event | None) -> bool:
    """Sleep; False when a signal, or ``cancel``, cut it short."""
    if cancel is None:
        return run.sleep_unless_stopped(seconds)
    end = time.monotonic() + seconds
    while not (run.stopping() or cancel.is_set()):
        left = end - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, 0.05))
    return False


T = TypeVar("T")


def _retrying(
    what: str,
    t: Target,
    deadline: float,
    retries: int,
    action: Callable[[int], T],
    log: _Log,
    cancel: threading.Event | None = None,
) -> T:
    """Run ``action(attempt)``; retry RegistryError that is transient."""
    for attempt in range(1, retries + 2):
        try:
            return action(attempt)
        except (RegistryUnreachable, RegistryHTTPError) as exc:
            transient = getattr(exc, "transient", False)
            if not transient or attempt > retries or time.monotonic() > deadline:
                raise
            delay = BACKOFF * 2 ** (attempt - 1)
            log(f"authscope: [{t.name}] {what}: {exc}; retrying in {delay:g}s (attempt {attempt + 1}/{retries + 1})")
            if not _pause(delay, cancel):
                raise _Failure(f"{what}: interrupted", "", R.INTERRUPTED) from None
    raise AssertionError("unreachable")


def _preflight(
    t: Target, creds: Credentials, timeout: float, retries: int, log: _Log, cancel: threading.Event | None = None
) -> Session:
    """Check the target's credentials at /v2/ before any tool runs; the
    session (its connection and token) is then reused to verify digests."""
    trace.acting(t.name)
    trace.event("preflight", phase="start")
    session = Session(
        t.registry,
        (creds.username, creds.password),
        ca_file=t.ca_file,
        insecure=t.insecure,
        timeout=min(30.0, timeout),
    )
    try:
        _check_credentials(t, session, timeout, retries, log, cancel)
    except BaseException:
        session.close()
        trace.event("preflight", phase="end", ok=False)
        raise
    trace.event("preflight", phase="end", ok=True)
    return session


class Preflights:
    """Every target's credential check, started before the source is read:
    they don't depend on it, so their round trips overlap with its."""

    def __init__(self, plan: Plan, credentials: Mapping[str, Credentials], stream: IO[str] = sys.stdout) -> None:
        log = _Log(stream)
        self.cancel = threading.Event()  # set when the run ends early: stop retrying
        # Checks are one small request each: up to CHECKS at once whatever `jobs`
        # (which bounds the copies), so no target's check queues behind another's.
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, min(len(plan.targets), max(plan.jobs, CHECKS))), thread_name_prefix="authscope-check"
        )
        self.futures: dict[str, Future[Session]] = {
            tp.target.name: self.pool.submit(
                _preflight, tp.target, credentials[tp.target.name], plan.timeout, plan.retries, log, self.cancel
            )
            for tp in plan.targets
        }
        self.taken: set[str] = set()

    def take(self, name: str) -> Session:
        """The checked session of one target (raises its _Failure)."""
        self.taken.add(name)
        trace.event("wait", phase="start", what="preflight")
        try:
            return self.futures[name].result()
        finally:
            trace.event("wait", phase="end", what="preflight")

    def __enter__(self) -> Preflights:
        return self

    def __exit__(self, *exc: object) -> None:
        # A source that failed ends the run: checks still queued don't start,
        # and running ones stop at their next retry instead of sleeping on.
        self.cancel.set()
        for future in self.futures.values():
            future.cancel()
        self.pool.shutdown(wait=True)
        for name, future in self.futures.items():
            if name not in self.taken and not future.cancelled() and future.exception() is None:
                future.result().close()


def _check_credentials(
    t: Target, session: Session, timeout: float, retries: int, log: _Log, cancel: threading.Event | None = None
) -> None:
    def ping(_attempt: int) -> int:
        # A token for the repository's pull and push (a Bearer registry): the digest
        # read-back (pull) then reuses it, no second challenge (registry._covers).
        status, _, _ = session.request("GET", "/v2/", scope=f"repository:{t.repository}:pull,push")
        return status

    deadline = time.monotonic() + timeout
    try:
        status = _retrying("checking credentials", t, deadline, retries, ping, log, cancel)
    except RegistryUnreachable as exc:
        raise _Failure(f"cannot reach {t.registry}: {exc.reason}", _reach_hint(t, exc.reason)) from None
    except RegistryHTTPError as exc:
        status = exc.status
    except (RealmRefused, RegistryAnswerError) as exc:  # a hostile or broken registry: say which
        raise _Failure(str(exc), exc.hint) from None
    except RegistryError as exc:
        raise _Failure(str(exc), "check the registry address") from None
    if status in (401, 403):
        raise _Failure(
            f"{t.registry} rejected the credentials (HTTP {status})", f"check {t.username_ref} and {t.password_ref}"
        )
    if status != 200:
        raise _Failure(
            f"{t.registry}/v2/ answered HTTP {status}", "is this a container registry (the distribution API at /v2/)?"
        )


def _reach_hint(t: Target, reason: str) -> str:
    if _TLS.search(reason):
        return f"the certificate of {t.registry} is not trusted: set ca_file: to its CA, or insecure: true"
    if "http" in reason.lower() and not t.insecure:
        return "if it speaks plain HTTP, set insecure: true on this target"
    return f"check registry: {t.registry} (host and port) and the network from this runner"


def _copy(
    tp: TargetPlan,
    ctx: _Context,
    env: dict[str, str],
    scope: Scope,
    masker: run.Masker,
    line: Callable[[bytes, bool], None],
    output: deque[str],
    deadline: float,
) -> int:
    """Run the steps; on a transient failure, run them all again after a backoff."""
    t = tp.target
    retries = ctx.plan.retries
    for attempt in range(1, retries + 2):
        if run.stopping():
            raise _Failure("interrupted before the copy finished", "", R.INTERRUPTED)
        ctx.log(
            f"authscope: [{t.name}] copying to {len(tp.destinations)} tag(s) with {t.tool} (attempt {attempt}/{retries + 1})"
        )
        failed: tuple[tools.Step, int, bool] | None = None
        for step in tp.steps:
            scope.reset()  # each command starts from the layered config
            argv = tools.fill_scope(step.argv, scope.path)
            ctx.log(f"authscope: [{t.name}] $ {tools.display(step.argv)}")
            trace.event("tool", phase="start", tool=argv[0], attempt=attempt)
            try:
                code, timed_out = run.run_captured(argv, env, masker, line, deadline)
            except AuthscopeError as exc:  # the tool is not installed
                raise _Failure(
                    str(exc), f"install {argv[0]} in the job's image, or choose another tool:", attempts=attempt
                ) from None
            finally:
                trace.event("tool", phase="end", tool=argv[0])
            if code != 0 or timed_out:
                failed = (step, code, timed_out)
                break
        if failed is None:
            return attempt
        step, code, timed_out = failed
        if run.stopping():
            raise _Failure(f"{step.what}: interrupted (exit {code})", "", R.INTERRUPTED, attempt)
        if timed_out:
            raise _Failure(
                f"{step.what}: timed out after {ctx.plan.timeout:g}s",
                "raise timeout: in the targets file or --timeout, or check the registry's speed",
                attempts=attempt,
            )
        transient, hint = diagnose(list(output), t, ctx.plan.source.image.registry)
        if not (transient and attempt <= retries and time.monotonic() < deadline):
            raise _Failure(
                f"{step.what} failed: {t.tool} exited {code}" + (f" after {attempt} attempts" if attempt > 1 else ""),
                hint,
                attempts=attempt,
            )
        delay = BACKOFF * 2 ** (attempt - 1)
        ctx.log(f"authscope: [{t.name}] {step.what} failed (exit {code}), looks transient; retrying in {delay:g}s")
        if not run.sleep_unless_stopped(delay):
            raise _Failure(f"{step.what}: interrupted", "", R.INTERRUPTED, attempt)
    raise AssertionError("unreachable")


def _verify(tp: TargetPlan, ctx: _Context, session: Session, deadline: float) -> dict[str, str | None]:
    """Every destination must now hold the source's digest (invariant 7)."""
    t = tp.target
    digests: dict[str, str | None] = {}
    trace.event("verify", phase="start")
    for tag in t.tags:

        def read(_attempt: int, tag: str = tag) -> str:
            return session.manifest_digest(t.repository, tag)

        try:
            digests[tag] = _retrying(f"verifying {tag}", t, deadline, ctx.plan.retries, read, ctx.log)
        except RegistryError as exc:
            raise _Failure(
                f"could not read back {t.registry}/{t.repository}:{tag}: {exc.reason}",
                exc.hint
                if isinstance(exc, (RealmRefused, RegistryAnswerError))
                else "the copy reported success but the tag can't be read: check pull permission",
            ) from None
        if digests[tag] != ctx.source_digest:
            raise _Failure(
                f"{t.registry}/{t.repository}:{tag} has {digests[tag]}, the source has {ctx.source_digest}",
                "the tool changed the image on the way (a single-platform copy or a format conversion); crane and regctl copy it unchanged",
            )
    trace.event("verify", phase="end")
    return digests


# -- the whole fan-out ----------------------------------------------------------------


def none_copied(plan: Plan, status: str, error: str) -> tuple[R.Result, ...]:
    """A Result per target when the run ended before any copy (the source failed)."""
    return tuple(
        R.Result(t.name, t.registry, t.repository, t.tool, t.tags, status, error=error, hint="no target was copied")
        for t in (tp.target for tp in plan.targets)
    )


def masked_report(report: R.Report, mask: Callable[[str], str]) -> R.Report:
    """``report`` with ``mask`` applied to every text a tool or a registry
    could have put a secret in: errors, hints, output tails, restore notes."""
    from dataclasses import replace

    results = tuple(
        replace(
            r,
            error=mask(r.error),
            hint=mask(r.hint),
            output=tuple(mask(line) for line in r.output),
            restored=tuple(mask(note) for note in r.restored),
        )
        for r in report.results
    )
    return replace(report, results=results, error=mask(report.error))


def resolve_source(fanout: Fanout, base: Base, environ: Mapping[str, str]) -> tuple[str, bool]:
    """(the source's manifest digest, read with the base's login; whether it speaks plain HTTP)."""
    src = fanout.source
    trace.event("source", phase="start")
    cfg = base.snapshot().config
    auth = source_credentials(cfg, src.image.registry, environ, base.path)
    try:
        with Session(src.image.registry, auth, ca_file=src.ca_file, insecure=src.insecure) as session:
            digest = session.manifest_digest(src.image.repository, src.image.digest or src.image.tag or "latest")
            trace.event("source", phase="end")
            return digest, session.schemes == ["http"]
    except RegistryError as exc:
        hint = ""
        if isinstance(exc, RegistryHTTPError) and exc.status in (401, 403):
            hint = f"; log the job in first: authscope login {src.image.registry} -u ... --password-env ..."
        raise RegistryError(
            src.image.registry,
            f"cannot read the source {src.image.with_tag(src.image.tag or 'latest')}: {exc.reason}{hint}",
        ) from None


def pull_source(
    plan: Plan,
    base: Base,
    environ: Mapping[str, str],
    *,
    scope_dir: str | None,
    source_plain_http: bool,
    extra_secrets: Sequence[str] = (),
    targets: Sequence[Target] = (),
    withheld: Sequence[str] = (),
    stream: IO[str] = sys.stdout,
    restored: list[str] | None = None,
) -> None:
    """pull_once: fetch the source into ``plan.layout`` once, in a scope of its
    own; its tool gets no target's credential variables (tool_environ).

    What the base guard restored when the pull's scope closed is appended to
    ``restored``, whether the pull succeeded or not.
    """
    assert plan.pull is not None and plan.layout is not None
    log = _Log(stream)
    src = plan.source
    output: deque[str] = deque(maxlen=R.TAIL_LINES)

    def line(data: bytes, is_stderr: bool) -> None:
        for text in data.decode("utf-8", "replace").splitlines():
            text = R.cap_line(text)
            output.append(text)
            log(f"[pull] {text}")

    deadline = time.monotonic() + plan.timeout
    plain = (src.image.registry,) if source_plain_http else ()
    opened: Scope | None = None
    try:
        with open_scope(
            base,
            None,
            {},
            root=scope_dir,
            sources=[src.image.registry],
            environ=environ,
            warn=lambda left: log(f"authscope: [pull] warning: could not remove {left}"),
        ) as (scope, secrets):
            opened = scope
            env = scope.env(tool_environ(environ, None, targets, {}, withheld))
            run.remember(secrets)
            env.update(tools.prepare_pull(scope.path, src, plan.pull.argv[0], plain))
            for attempt in range(1, plan.retries + 2):
                argv = tools.fill_scope(plan.pull.argv, scope.path)
                log(f"authscope: pulling the source once into {plan.layout} (attempt {attempt}/{plan.retries + 1})")
                log(f"authscope: $ {tools.display(plan.pull.argv)}")
                code, timed_out = run.run_captured(argv, env, run.Masker([*secrets, *extra_secrets]), line, deadline)
                if code == 0 and not timed_out:
                    return
                transient, hint = _source_diagnosis(list(output), src.image.registry)
                if timed_out or not transient or attempt > plan.retries or run.stopping():
                    break
                if not run.sleep_unless_stopped(BACKOFF * 2 ** (attempt - 1)):
                    break
    finally:
        if opened is not None and restored is not None:
            restored.extend(f"pull: {d.describe()}" for d in opened.damage)
    raise RegistryError(
        src.image.registry,
        f"could not pull {plan.source_ref}: {plan.pull.argv[0]} exited {code}{' (timed out)' if timed_out else ''}; {hint}",
    )


def _source_diagnosis(output: Sequence[str], registry: str) -> tuple[bool, str]:
    text = "\n".join(output[-40:])
    if _AUTH.search(text) or _DENIED.search(text):
        return False, f"the base's login for {registry} was refused: run `authscope login {registry} ...` first"
    if _TLS.search(text):
        return False, "the source's certificate is not trusted: set source: {image: ..., ca_file: ...}"
    return bool(_TRANSIENT.search(text)), "see the output above"


def _check_done(check: Future[Session]) -> bool:
    """Whether a target's credential check has ended (its target may take a slot)."""
    return check.done()


def execute(
    plan: Plan,
    source_digest: str,
    credentials: dict[str, Credentials],
    base: Base,
    environ: Mapping[str, str],
    *,
    scope_dir: str | None,
    fail_fast: bool,
    source_plain_http: bool = False,
    preflights: Preflights | None = None,
    targets: Sequence[Target] = (),
    withheld: Sequence[str] = (),
    secrets: Sequence[str] = (),
    stream: IO[str] = sys.stdout,
) -> tuple[R.Result, ...]:
    """Run every target of ``plan``; a Result for each, in plan order.

    ``targets``: every target of the file (default: the plan's), whose
    credential variables a tool gets only for its own target; ``withheld``:
    variables no tool gets; ``secrets``: more to mask (the GitLab token).
    """
    log = _Log(stream)
    plain = (plan.source.image.registry,) if source_plain_http else ()
    ctx = _Context(
        plan,
        source_digest,
        credentials,
        base,
        environ,
        scope_dir,
        fail_fast,
        log,
        plain,
        threading.Event(),
        (*all_secrets(credentials), *secrets),
        preflights,
        tuple(targets) or tuple(tp.target for tp in plan.targets),
        tuple(withheld),
    )
    results: dict[str, R.Result] = {}
    # A target starts (takes one of the `jobs` slots) once its credential check
    # is done, in the order the checks end: a slow check (a registry retried
    # with backoff) holds up its own target only, never another's copy. With
    # --fail-fast, in file order: a later target must not land before an
    # earlier one fails.
    checks: Mapping[str, Future[Session]] = preflights.futures if preflights is not None and not fail_fast else {}
    waiting = list(plan.targets)

    def ready(tp: TargetPlan) -> bool:
        check = checks.get(tp.target.name)
        return check is None or _check_done(check) or run.stopping()

    with ThreadPoolExecutor(
        max_workers=max(1, min(plan.jobs, len(plan.targets))), thread_name_prefix="authscope"
    ) as pool:
        futures: dict[Future[R.Result], TargetPlan] = {}
        pending: set[Future[R.Result]] = set()
        while pending or waiting:
            for tp in [tp for tp in waiting if ready(tp)]:
                waiting.remove(tp)
                future = pool.submit(run_target, tp, ctx)
                futures[future] = tp
                pending.add(future)
            # Short waits keep the main thread free to take signals.
            watched: set[Future[Any]] = set(pending)
            watched.update(checks[tp.target.name] for tp in waiting if tp.target.name in checks)
            finished, _ = wait(watched, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in [f for f in pending if f in finished]:
                pending.discard(future)
                tp = futures[future]
                try:
                    results[tp.target.name] = future.result()
                except Exception as exc:  # a bug: report it for this target, keep the others
                    t = tp.target
                    results[t.name] = R.Result(
                        t.name,
                        t.registry,
                        t.repository,
                        t.tool,
                        t.tags,
                        R.FAILED,
                        error=f"internal error: {exc!r}",
                        hint="a bug in authscope: please report it",
                    )
    return tuple(results[tp.target.name] for tp in plan.targets)

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
import functools
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from . import dockerconfig as dc
from . import report as R
from . import run, tools, trace
from .base import Base
from .errors import AuthscopeError, ConfigError, Problem, RegistryError, SecretSourceError, TargetsFileError
from .plan import Plan, TargetPlan, after_first_copy, first_copy, for_tags, referrer_pulls, with_referrers
from .referrers import Artifact
from .registry import (
    Answer,
    RealmRefused,
    RegistryAnswerError,
    RegistryHTTPError,
    RegistryUnreachable,
    Session,
    TokenRefused,
    challenges,
    retry_after,
)
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
# Harbor's answers, as crane, skopeo and regctl print them (tests/fixtures/harbor).
_POLICY = re.compile(
    r"PROJECTPOLICYVIOLATION|not signed by (?:cosign|notation)|cannot be pulled due to configured policy", re.IGNORECASE
)
_VULNERABLE = re.compile(r"vulnerab", re.IGNORECASE)
_IMMUTABLE = re.compile(r"tag (?P<tag>\S+) configured as immutable", re.IGNORECASE)
_QUOTA = re.compile(r"will exceed the configured upper limit|quota exceeded", re.IGNORECASE)
_NO_PUSH = re.compile(r"unauthorized to access repository: \S+, action: push", re.IGNORECASE)
_TOKEN_REFUSED = re.compile(
    r"unable to retrieve auth token|GET \S*token\S*: (?:UNAUTHORIZED|unauthorized)|token service refused", re.IGNORECASE
)
# A refusal of a write: the credentials were good enough to read.
_WRITE = re.compile(r"\b(?:PUT|POST|PATCH)\b|\bupload|writing manifest|put manifest|blob post|blob put", re.IGNORECASE)
_RATE_LIMITED = re.compile(r"\b429\b|too ?many ?requests", re.IGNORECASE)


def harbor_diagnosis(text: str, target: Target, source_registry: str) -> str | None:
    """The hint for one of Harbor's answers in a tool's output, or None.

    Each says what happened and what to do: a project policy (412
    PROJECTPOLICYVIOLATION), an immutable tag (412), an exceeded quota (403),
    no push permission (Harbor's 401 "action: push", a 401/403 on a write),
    the token service refusing the robot account (401). None of them passes
    by retrying.
    """
    where = f"{target.registry}/{target.repository}"
    policy = _POLICY.search(text)
    if policy:
        line = _line_of(text, policy.start())
        who = (
            f"the source registry {source_registry}"
            if source_registry in line and target.registry not in line
            else target.registry
        )
        if _VULNERABLE.search(line):
            what = (
                "the image has vulnerabilities at or over the project's severity limit: fix them and release again, "
                "or have the project's admin allowlist the CVEs"
            )
        else:
            what = (
                "the project requires a signature the image does not have: sign it (cosign sign) before the fan-out "
                "and keep referrers: true (the default), so the signature lands before the image is read back; "
                "or have the project's admin change its content-trust policy"
            )
        return f"{who} refused the pull by a project policy (Harbor, HTTP 412 PROJECTPOLICYVIOLATION): {what}"
    immutable = _IMMUTABLE.search(text)
    if immutable:
        tag = immutable["tag"].strip("'\"")
        return (
            f"the tag {tag} of {where} is immutable (Harbor tag immutability rule, HTTP 412): it holds another image "
            f"and may not be moved; take {tag} out of this target's tags:, or have the project's admin exempt it"
        )
    if _QUOTA.search(text):
        return (
            f"the project of {where} is over its storage quota (Harbor, HTTP 403): delete old artifacts and run "
            "garbage collection, or have the project's admin raise the quota; retrying will not help"
        )
    if _NO_PUSH.search(text):
        return (
            f'{target.username_ref} has no push permission on {where} (Harbor, HTTP 401 "action: push"): give the '
            "robot account push permission on that project (Harbor: Robot Accounts, the project's permissions)"
        )
    token = _TOKEN_REFUSED.search(text)
    if token:
        line = _line_of(text, token.start())
        if source_registry in line and target.registry not in line:
            return (
                f"the token service of the source registry {source_registry} refused the base's login: "
                f"run `authscope login {source_registry} ...` before the fan-out"
            )
        return (
            f"the token service of {target.registry} refused {target.username_ref} (HTTP 401): a robot account "
            f"whose secret is wrong or expired, or that is disabled; renew the secret and update {target.password_ref}"
        )
    return None


def _line_of(text: str, at: int) -> str:
    start = text.rfind("\n", 0, at) + 1
    end = text.find("\n", at)
    return text[start : end if end >= 0 else len(text)]


def diagnose(output: Sequence[str], target: Target, source_registry: str) -> tuple[bool, str]:
    """(transient, hint) from what a tool printed."""
    text = "\n".join(output[-40:])
    harbor = harbor_diagnosis(text, target, source_registry)
    if harbor:
        return False, harbor
    if _AUTH.search(text):
        who = source_registry if source_registry in text and target.registry not in text else target.registry
        if who == target.registry:
            refused = next((x for x in text.splitlines() if _AUTH.search(x) or _DENIED.search(x)), "")
            if _WRITE.search(refused):  # a push refused after the reads went through
                return (
                    False,
                    f"{target.registry} rejected the credentials for a push: {target.username_ref} may have no push "
                    f"permission on {target.registry}/{target.repository} (Harbor: the robot account's project "
                    f"permissions); if its secret changed, check {target.username_ref} and {target.password_ref}",
                )
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
    force: bool = False  # --force: copy targets that are up to date too
    pull: Callable[[], None] | None = None  # pull_once: the source's one pull, run by the first target to need it
    discovery: Discovery | None = None  # still finding the source's referrers: the plan's targets carry none yet
    prefetch: ReferrerPrefetch | None = None  # the referrers fetched once into local layouts (no pull_once)


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
        return R.Result(**fields, status=R.INTERRUPTED, error="not started: the run was interrupted", changed=False)  # type: ignore[arg-type]
    if ctx.fail_fast and ctx.failed.is_set():
        return R.Result(
            **fields,  # type: ignore[arg-type]
            status=R.SKIPPED,
            error="not started: --fail-fast after an earlier failure",
            changed=False,
        )
    creds = ctx.credentials[t.name]
    output: deque[str] = deque(maxlen=R.TAIL_LINES)
    attempts = 0
    digests: dict[str, str | None] = {}
    error = hint = ""
    status = R.OK
    restored: tuple[str, ...] = ()
    copied: tuple[dict[str, str], ...] = ()
    deadline = started + ctx.plan.timeout
    scope: Scope | None = None
    changed = False

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
            forced = ctx.force or t.force
            held = {} if forced else _held(tp, ctx, session)
            missing = tuple(tag for tag in t.tags if held.get(tag) != ctx.source_digest)
            # A target that holds the image under none of its tags gets every
            # referrer: no round trips to look for them there first.
            fresh = forced or len(missing) == len(t.tags)
            # Discovery may still run: a copy starts without it (its first copy
            # needs no referrer); "up to date" waits for it (it needs them all).
            discovery = ctx.discovery if tp.referrers_on else None
            later = discovery is not None
            if discovery is not None and (not missing or discovery.failed()):
                waited = time.monotonic()
                tp, later = _discovered(tp, ctx), False
                deadline += time.monotonic() - waited  # the wait is discovery's time, not the target's
            lacking = [] if later else list(tp.referrers) if fresh else _referrers_missing(tp, ctx, session)
            if not missing and not lacking:
                # Up to date: no scope, no tool; the HEAD of every tag just now is the
                # digest check, and every referrer was just read back there too.
                digests = _verify(tp, ctx, session, deadline, known=held)
                copied = tuple(a.as_json() for a in tp.referrers)
            else:
                prefetch = ctx.prefetch if tp.referrers_on else None
                if prefetch is not None:
                    prefetch.start()  # while this target's image copies: its referrers push from it after
                if ctx.pull is not None:
                    _pulled(ctx)
                    deadline = max(deadline, time.monotonic() + ctx.plan.timeout)  # the wait is the pull's time
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
                    changed = True
                    # Only the tags that don't hold the source digest yet, and the
                    # referrers the target lacks (a re-run after a lost signature).
                    ahead = _Ahead(session)
                    try:
                        if later or (prefetch is not None and lacking):
                            # The first copy now; the referrer copies (and the further
                            # tags, after them) once discovery has found them, pushed
                            # from the prefetch's layouts when it has them.
                            head = first_copy(ctx.plan, tp, missing)
                            if head.steps:  # none: every tag holds the image, referrers are missing
                                attempts = _copy(head, ctx, env, scope, masker, line, output, deadline)
                            waited = time.monotonic()
                            if later:
                                tp = _discovered(tp, ctx)
                                lacking = list(tp.referrers) if fresh else _referrers_missing(tp, ctx, session)
                            plan = _prefetched(tp, ctx, prefetch) if lacking else ctx.plan
                            deadline += time.monotonic() - waited
                            rest = after_first_copy(plan, tp, missing, lacking)
                            if rest.steps:
                                landed = functools.partial(ahead.start, tp)
                                copied_rest = _copy(rest, ctx, env, scope, masker, line, output, deadline, landed)
                                attempts = max(attempts, copied_rest)
                        else:
                            narrowed = for_tags(ctx.plan, tp, missing, lacking)
                            if narrowed.steps:
                                landed = functools.partial(ahead.start, tp)
                                attempts = _copy(narrowed, ctx, env, scope, masker, line, output, deadline, landed)
                        ahead.join()  # the session is this thread's again
                        digests, copied = _land(tp, ctx, session, deadline)
                    finally:
                        ahead.close()  # never left running, its connections closed, whatever ended the copy
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
        referrers=copied,
        referrers_off=not tp.referrers_on,
        changed=changed,
    )
    verdict = f"landed {', '.join(tp.destinations)}" if status == R.OK else f"{status.upper()}: {error}"
    trace.event("target", phase="end", status=status)
    if result.up_to_date:
        verdict = f"up to date: {', '.join(t.tags)} already hold {ctx.source_digest}; nothing copied"
    ctx.log(f"authscope: [{t.name}] {verdict} ({result.duration:.1f}s, {attempts} attempt(s))")
    return result


def _discovered(tp: TargetPlan, ctx: _Context) -> TargetPlan:
    """``tp`` carrying the source's referrers, waiting for discovery if it
    still runs; a discovery that failed (or a signal meanwhile) fails the
    target, naming why (fail closed: it never lands as if unsigned)."""
    assert ctx.discovery is not None
    try:
        found = ctx.discovery.artifacts()
    except RegistryError as exc:
        status = R.INTERRUPTED if run.stopping() else R.FAILED
        raise _Failure(
            f"its signatures, attestations and referrers could not be found at the source: {exc.reason}",
            "they were not copied, and the target is not done: fix the source (see the error above) and run again; "
            "referrers: false lands the image without them",
            status,
        ) from None
    return with_referrers(ctx.plan, tp, found)


def _prefetched(tp: TargetPlan, ctx: _Context, prefetch: ReferrerPrefetch | None) -> Plan:
    """The plan ``tp``'s referrer copies are made from: pushing from the
    prefetch's layouts of its tool once they are there, else (no prefetch,
    or it failed) copying from the source, as without it."""
    if prefetch is None or ctx.plan.layout is not None:
        return ctx.plan
    from dataclasses import replace

    tool = tools.referrer_tool(tp.target)
    layout = prefetch.layout(tool, tp.referrers)
    if layout is None:
        if tool in prefetch.errors:
            ctx.log(
                f"authscope: [{tp.target.name}] copying its referrers from the source (not fetched once: {prefetch.errors[tool]})"
            )
        return ctx.plan
    return replace(ctx.plan, referrer_layout=layout)


def _pulled(ctx: _Context) -> None:
    """pull_once: wait for the source's one pull (run by the first target that
    needs a copy); a pull that failed fails this target with its error."""
    assert ctx.pull is not None
    try:
        ctx.pull()
    except RegistryError as exc:
        status = R.INTERRUPTED if run.stopping() else R.FAILED
        raise _Failure(
            f"not copied: the source was not pulled once ({exc.reason})",
            "every target that needed a copy failed with the pull: see the [pull] lines above",
            status,
        ) from None


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
            asked = getattr(exc, "retry_after", None)
            if asked is not None:  # the registry said how long (429/503 Retry-After): honour it, within the timeout
                if time.monotonic() + asked > deadline:
                    raise
                delay = max(delay, asked)
            log(f"authscope: [{t.name}] {what}: {exc}; retrying in {delay:g}s (attempt {attempt + 1}/{retries + 1})")
            if not _pause(delay, cancel):
                raise _Failure(f"{what}: interrupted", "", R.INTERRUPTED) from None
    raise AssertionError("unreachable")


def _preflight(
    t: Target,
    creds: Credentials,
    timeout: float,
    retries: int,
    log: _Log,
    cancel: threading.Event | None = None,
    first: dict[str, Answer] | None = None,
) -> Session:
    """Check the target's credentials before any tool runs; the session (its
    connection and token) is then reused to verify digests.

    The check is `GET /v2/` with the credentials. With ``first`` (a dict to
    fill with the answer for the target's first tag), at a registry known to
    challenge (registry.challenges: its warm-up saw a 401 with a challenge),
    the check is the HEAD of that tag with the credentials, one round trip
    fewer on every target's way to its copy. An answer of 200 or 404 to it
    passes: a registry that challenges requests without credentials gave it
    to these credentials. A refused token, a rate limit beyond the retries or
    an unreachable registry fail as the `GET /v2/` check would. Any other
    answer (401, 403, a 5xx after the retries, a malformed one) is not a
    pass: the `GET /v2/` check runs, with its own retries and messages, and
    the tag is read again after it, as before.
    """
    trace.acting(t.name)
    trace.event("preflight", phase="start")
    session = Session(
        t.registry,
        (creds.username, creds.password),
        ca_file=t.ca_file,
        insecure=t.insecure,
        timeout=min(30.0, timeout),
    )
    tag = t.tags[0] if first is not None and t.tags and challenges(session.host) else None
    try:
        answer = _check_credentials(t, session, timeout, retries, log, cancel, tag) if tag is not None else None
        if answer is None:
            _check_credentials(t, session, timeout, retries, log, cancel)
        elif first is not None and tag is not None:
            first[tag] = answer
    except BaseException:
        session.close()
        trace.event("preflight", phase="end", ok=False)
        raise
    trace.event("preflight", phase="end", ok=True)
    return session


class Preflights:
    """Every target's credential check, started before the source is read:
    they don't depend on it, so their round trips overlap with its."""

    def __init__(
        self, plan: Plan, credentials: Mapping[str, Credentials], stream: IO[str] = sys.stdout, force: bool = False
    ) -> None:
        log = _Log(stream)
        self.cancel = threading.Event()  # set when the run ends early: stop retrying
        # What each target's tags hold, read with HEAD (_read_tags) right after its check,
        # while the source is still being read: they don't depend on its digest.
        self.held: dict[str, dict[str, str | None]] = {}
        checked = _preflight if force else self._check_and_read
        # Checks are one small request each: up to CHECKS at once whatever `jobs`
        # (which bounds the copies), so no target's check queues behind another's.
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, min(len(plan.targets), max(plan.jobs, CHECKS))), thread_name_prefix="authscope-check"
        )
        self.futures: dict[str, Future[Session]] = {
            tp.target.name: self.pool.submit(
                _preflight if tp.target.force else checked,
                tp.target,
                credentials[tp.target.name],
                plan.timeout,
                plan.retries,
                log,
                self.cancel,
            )
            for tp in plan.targets
        }
        self.taken: set[str] = set()

    def _check_and_read(
        self, t: Target, creds: Credentials, timeout: float, retries: int, log: _Log, cancel: threading.Event
    ) -> Session:
        first: dict[str, Answer] = {}  # the first tag's HEAD, when it was the check
        session = _preflight(t, creds, timeout, retries, log, cancel, first)
        try:
            known: dict[str, str | None] = {}
            for tag, answer in first.items():
                try:
                    known[tag] = session.held_digest(t.repository, tag, answer)
                except RegistryError as exc:
                    _unreadable(t, tag, exc, log)
                    self.held[t.name] = {}
                    return session
            self.held[t.name] = _read_tags(t, session, log, cancel, known)  # the check's token covers the HEADs
        except BaseException:
            session.close()
            raise
        return session

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
    t: Target,
    session: Session,
    timeout: float,
    retries: int,
    log: _Log,
    cancel: threading.Event | None = None,
    tag: str | None = None,
) -> Answer | None:
    """The credential check: `GET /v2/` with the credentials, a _Failure when they are
    refused. With ``tag``, the HEAD of that tag instead (see _preflight), with the same
    retries, token and messages: its answer when it is 200 or 404, else None (not a
    pass: the caller runs the `GET /v2/` check)."""
    # A token for the repository's pull and push (a Bearer registry): the digest
    # read-back (pull) then reuses it, no second challenge (registry._covers).
    scope = f"repository:{t.repository}:pull,push"
    where = f"{t.registry}/v2/" if tag is None else f"{t.registry}/{t.repository}:{tag}"

    def ping(_attempt: int) -> Answer:
        if tag is None:
            answer = session.request("GET", "/v2/", scope=scope)
        else:
            answer = session.head_manifest(t.repository, tag, scope)
        status, headers, _ = answer
        if status == 429 or status >= 500:  # retried by _retrying, after its Retry-After if it sent one
            raise RegistryHTTPError(t.registry, status, where, retry_after=retry_after(headers))
        return answer

    deadline = time.monotonic() + timeout
    answer: Answer | None = None
    try:
        answer = _retrying("checking credentials", t, deadline, retries, ping, log, cancel)
        status = answer[0]
    except RegistryUnreachable as exc:
        raise _Failure(f"cannot reach {t.registry}: {exc.reason}", _reach_hint(t, exc.reason)) from None
    except TokenRefused as exc:
        raise _Failure(
            f"the token service {exc.where} of {t.registry} refused {t.username_ref} (HTTP {exc.status})",
            "a robot account whose secret is wrong or expired, or that is disabled (Harbor): "
            f"renew the secret and update {t.password_ref}",
        ) from None
    except RegistryHTTPError as exc:
        if exc.status == 429:
            raise _Failure(str(exc), _rate_hint(exc.retry_after)) from None
        if tag is not None:
            return None
        status = exc.status
    except RealmRefused as exc:  # a hostile token realm: say which
        raise _Failure(str(exc), exc.hint) from None
    except RegistryAnswerError as exc:  # a hostile or broken registry: say which
        if tag is not None:
            return None
        raise _Failure(str(exc), exc.hint) from None
    except RegistryError as exc:
        raise _Failure(str(exc), "check the registry address") from None
    if tag is not None:
        return answer if status in (200, 404) else None
    if status in (401, 403):
        raise _Failure(
            f"{t.registry} rejected the credentials (HTTP {status})", f"check {t.username_ref} and {t.password_ref}"
        )
    if status != 200:
        raise _Failure(
            f"{t.registry}/v2/ answered HTTP {status}", "is this a container registry (the distribution API at /v2/)?"
        )
    return answer


def _rate_hint(asked: float | None) -> str:
    wait = f"it asked to wait {asked:g}s (Retry-After), " if asked is not None else ""
    return (
        f"the registry is rate-limiting this runner: {wait}more than this target's timeout and retries allow; "
        "raise timeout: or retries: in the targets file, or run the fan-out later"
    )


def _asked_wait(t: Target, ctx: _Context, deadline: float) -> float | None:
    """After a tool hit a rate limit: how long the registry asks to wait, from
    the Retry-After of a `GET /v2/` (the tools don't print it); None if it
    doesn't say."""
    creds = ctx.credentials.get(t.name)
    left = deadline - time.monotonic()
    if left <= 0:
        return None
    auth = (creds.username, creds.password) if creds else None
    try:
        with Session(t.registry, auth, ca_file=t.ca_file, insecure=t.insecure, timeout=min(10.0, left)) as session:
            status, headers, _ = session.request("GET", "/v2/")
    except RegistryHTTPError as exc:  # the token service is the one limiting
        return exc.retry_after
    except RegistryError:
        return None
    return retry_after(headers) if status in (429, 503) else None


def _reach_hint(t: Target, reason: str) -> str:
    if _TLS.search(reason):
        return f"the certificate of {t.registry} is not trusted: set ca_file: to its CA, or insecure: true"
    if "http" in reason.lower() and not t.insecure and "refused" not in reason.lower():  # not "https: [Errno 111]"
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
    landed: Callable[[], None] = lambda: None,
) -> int:
    """Run the steps; on a transient failure, run them all again after a backoff.

    The groups of _batches run one after another, each once the one before
    has ended well: the image's copy ends before any referrer copy starts
    (tools.landed_after). ``landed`` is called then, before the first wave."""
    t = tp.target
    retries = ctx.plan.retries
    for attempt in range(1, retries + 2):
        if run.stopping():
            raise _Failure("interrupted before the copy finished", "", R.INTERRUPTED)
        ctx.log(
            f"authscope: [{t.name}] copying to {len(tp.destinations)} tag(s) with {t.tool} (attempt {attempt}/{retries + 1})"
        )
        failed: tuple[tools.Step, int, bool] | None = None

        def one(step: tools.Step, attempt: int = attempt) -> tuple[int, bool]:
            trace.acting(t.name)  # a wave's threads work for this target too
            argv = tools.fill_scope(step.argv, scope.path)
            ctx.log(f"authscope: [{t.name}] $ {tools.display(step.argv)}")
            trace.event("tool", phase="start", tool=argv[0], attempt=attempt, what=step.what)
            try:
                return run.run_captured(argv, env, masker, line, deadline)
            except AuthscopeError as exc:  # the tool is not installed
                raise _Failure(str(exc), _missing_tool_hint(t, step, argv[0]), attempts=attempt) from None
            finally:
                trace.event("tool", phase="end", tool=argv[0], what=step.what)

        for group in _batches(tp.steps):
            if group[0].batch:
                landed()
            scope.reset()  # each command (each batch of referrer copies) starts from the layered config
            if len(group) == 1:
                outcomes = [one(group[0])]
            else:
                # One wave of referrer copies at once: authscope's own copy commands,
                # which read the scope's config and never write it.
                with ThreadPoolExecutor(min(len(group), REFERRER_JOBS), thread_name_prefix=f"{t.name}-ref") as pool:
                    outcomes = list(pool.map(one, group))
            failed = next(
                (
                    (step, code, timed_out)
                    for step, (code, timed_out) in zip(group, outcomes, strict=True)
                    if code != 0 or timed_out
                ),
                None,
            )
            if failed is not None:
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
        if _RATE_LIMITED.search("\n".join(list(output)[-40:])):
            asked = _asked_wait(t, ctx, deadline)
            if asked is not None and time.monotonic() + asked > deadline:
                raise _Failure(
                    f"{step.what} failed: {t.tool} exited {code}: {t.registry} is rate-limiting (HTTP 429)",
                    _rate_hint(asked),
                    attempts=attempt,
                )
            if asked is not None:
                ctx.log(f"authscope: [{t.name}] {t.registry} asked to wait {asked:g}s (Retry-After)")
                delay = max(delay, asked)
        ctx.log(f"authscope: [{t.name}] {step.what} failed (exit {code}), looks transient; retrying in {delay:g}s")
        if not run.sleep_unless_stopped(delay):
            raise _Failure(f"{step.what}: interrupted", "", R.INTERRUPTED, attempt)
    raise AssertionError("unreachable")


def _missing_tool_hint(target: Target, step: tools.Step, tool: str) -> str:
    """How to fix a target whose ``tool`` is not installed: a referrer copy
    with another tool than the target's own (skopeo for podman and buildah,
    crane for custom) says which, and how to land the image alone."""
    if step.batch and tool != target.tool:
        return (
            f"install {tool} in the job's image: it copies the signatures, attestations and SBOMs of "
            f"tool: {target.tool} targets; or set referrers: false on target {target.name} to land the image alone"
        )
    return f"install {tool} in the job's image, or choose another tool"


REFERRER_JOBS = 4  # a target's referrer copies running at once (tools.Step.batch)


def _batches(steps: Sequence[tools.Step]) -> list[list[tools.Step]]:
    """The steps in order, neighbours of one non-zero batch together."""
    out: list[list[tools.Step]] = []
    for step in steps:
        if step.batch and out and out[-1][-1].batch == step.batch:
            out[-1].append(step)
        else:
            out.append([step])
    return out


class _Ahead:
    """referrers.ahead on a thread of its own while a target's referrers are
    copied (the session is idle then: the tools run); joined before the
    session is used again, whatever ended the copy."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, tp: TargetPlan) -> None:
        """For ``tp``'s referrers, once its image is at the target (_copy's ``landed``)."""
        if self.thread is not None or not tp.referrers:
            return  # once per target (a retried copy calls it again)
        from .referrers import ahead

        name = tp.target.name

        def work() -> None:
            trace.acting(name)
            try:
                ahead(self.session, tp.target.repository, tp.referrers)
            except BaseException as exc:  # noqa: BLE001 - a bug: raised by join, in the target's thread
                self.error = exc

        self.thread = threading.Thread(target=work, name=f"{name}-ahead", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Join it and close the connections it opened; never raises."""
        thread, self.thread, self.error = self.thread, None, None
        if thread is None:
            return
        # After a signal, a registry that hangs does not hold the run up: the
        # thread (a daemon, HTTP only, no process) ends with it.
        thread.join(1.0 if run.stopping() else None)
        if thread.is_alive():
            return
        from .referrers import close_readers

        close_readers(self.session)

    def join(self) -> None:
        """Wait for it; raises what went wrong in it that is not a registry's answer (a bug)."""
        if self.thread is None:
            return
        self.thread.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _land(
    tp: TargetPlan, ctx: _Context, session: Session, deadline: float
) -> tuple[dict[str, str | None], tuple[dict[str, str], ...]]:
    """After the copy: every destination holds the source's digest (_verify)
    and every artifact is there, listed as a referrer of its subject, after
    merging the OCI referrers into their fallback tag index at a target
    without the referrers API: all at once (referrers.settle), so the
    checks cost the round trips of the longest one, not their sum.
    Returns (the digests, the artifacts as reported)."""
    if not tp.referrers:
        return _verify(tp, ctx, session, deadline), ()
    from .referrers import Unindexed, close_readers, settle

    t = tp.target

    def image(own: Session) -> dict[str, str | None]:
        trace.acting(t.name)
        return _verify(tp, ctx, own, deadline)

    try:
        digests, written, lost = settle(session, t.repository, tp.referrers, image)
    except Unindexed as exc:
        raise _unindexed(t, exc.error) from None
    except RegistryError as exc:
        raise _Failure(
            f"could not read back the referrers at {t.registry}: {exc.reason}", _registry_hint(t, exc)
        ) from None
    finally:
        close_readers(session)
    for tag in written:
        ctx.log(f"authscope: [{t.name}] merged the referrers into {t.registry}/{t.repository}:{tag}")
    if lost:
        raise _Failure(
            f"{len(lost)} of the source's {len(tp.referrers)} signatures, attestations and referrers did not reach "
            f"{t.registry}/{t.repository}: " + "; ".join(lost),
            f"{tools.referrer_tool(t)} reported success but did not copy them: check its version and the output "
            "above; a target that cannot hold them can set referrers: false (the image then lands unsigned)",
        )
    return digests, tuple(a.as_json() for a in tp.referrers)


def _unindexed(t: Target, error: Exception) -> _Failure:
    """The failure of a target whose fallback tag index could not be written."""
    if isinstance(error, RegistryError):
        return _Failure(
            f"cannot index the source's referrers at {t.registry}: {error.reason}", _registry_hint(t, error)
        )
    return _Failure(
        f"cannot index the source's referrers at {t.registry}: {error}",
        "that tag is the OCI referrers fallback of the image: remove what holds it, or set referrers: false",
    )


def _registry_hint(t: Target, exc: RegistryError) -> str:
    if isinstance(exc, RegistryHTTPError) and exc.status in (412, 429):
        return _readback_hint(exc)
    if isinstance(exc, (RealmRefused, RegistryAnswerError)):
        return exc.hint
    return "check push and pull permission on the repository"


def _verify(
    tp: TargetPlan, ctx: _Context, session: Session, deadline: float, known: Mapping[str, str | None] | None = None
) -> dict[str, str | None]:
    """Every destination must now hold the source's digest (invariant 7).

    ``known``: digests read with HEAD just now, when nothing was copied
    since (an up-to-date target): not read again."""
    t = tp.target
    digests: dict[str, str | None] = {}
    trace.event("verify", phase="start")
    for tag in t.tags:

        def read(_attempt: int, tag: str = tag) -> str | None:
            if known is not None and tag in known:
                return known[tag]
            return session.manifest_digest(t.repository, tag)

        try:
            digests[tag] = _retrying(f"verifying {tag}", t, deadline, ctx.plan.retries, read, ctx.log)
        except RegistryError as exc:
            raise _Failure(
                f"could not read back {t.registry}/{t.repository}:{tag}: {exc.reason}",
                exc.hint if isinstance(exc, (RealmRefused, RegistryAnswerError)) else _readback_hint(exc),
            ) from None
        if digests[tag] != ctx.source_digest:
            raise _Failure(
                f"{t.registry}/{t.repository}:{tag} has {digests[tag]}, the source has {ctx.source_digest}",
                "podman and buildah push layers compressed afresh from local storage and one platform only: use skopeo (the same containers/image) or crane, which copy it unchanged"
                if t.tool in ("podman", "buildah")
                else "the tool changed the image on the way (a single-platform copy or a format conversion); crane and regctl copy it unchanged",
            )
    trace.event("verify", phase="end")
    return digests


def _readback_hint(exc: RegistryError) -> str:
    status = exc.status if isinstance(exc, RegistryHTTPError) else 0
    if status == 412:
        return (
            "the copy landed but a project policy blocks reading it (Harbor: a required cosign/notation signature, "
            "or a vulnerability limit): sign the source with cosign and keep referrers: true (the default), so the "
            "signature lands before the read-back; or have the project's admin change the policy"
        )
    if status == 429:
        return _rate_hint(exc.retry_after if isinstance(exc, RegistryHTTPError) else None)
    return "the copy reported success but the tag can't be read: check pull permission"


def _held(tp: TargetPlan, ctx: _Context, session: Session) -> dict[str, str | None]:
    """What each destination tag holds now, read with HEAD only (invariant 8;
    a GET is a pull on Harbor): {tag: digest, or None when missing}.

    {} when a tag can't be read (not a 404: an error, no digest header, no
    pull permission): the target is then copied as before, whole.
    """
    t = tp.target
    early = ctx.preflights.held.get(t.name) if ctx.preflights is not None else None
    held = early if early is not None else _read_tags(t, session, ctx.log)
    if not held:
        return {}
    right = [tag for tag in t.tags if held[tag] == ctx.source_digest]
    if right and len(right) < len(t.tags):
        wrong = [tag for tag in t.tags if tag not in right]
        ctx.log(
            f"authscope: [{t.name}] {', '.join(right)} already hold{'s' if len(right) == 1 else ''} "
            f"{ctx.source_digest}; copying only {', '.join(wrong)}"
        )
    return held


def _read_tags(
    t: Target,
    session: Session,
    log: _Log,
    cancel: threading.Event | None = None,
    known: Mapping[str, str | None] | None = None,
) -> dict[str, str | None]:
    """HEAD of every tag of ``t`` ({tag: digest or None}) not in ``known`` (read
    already); {} when one can't be read, or the run stops."""
    held: dict[str, str | None] = dict(known or {})
    for tag in t.tags:
        if tag in held:
            continue
        if run.stopping() or (cancel is not None and cancel.is_set()):
            return {}
        try:
            held[tag] = session.head_digest(t.repository, tag)
        except RegistryError as exc:
            _unreadable(t, tag, exc, log)
            return {}
    return held


def _unreadable(t: Target, tag: str, exc: RegistryError, log: _Log) -> None:
    log(f"authscope: [{t.name}] could not tell whether {tag} is up to date ({exc.reason}); copying every tag")


def _referrers_missing(tp: TargetPlan, ctx: _Context, session: Session) -> list[Artifact]:
    """The source's referrers (signatures, attestations, OCI referrers) the
    target lacks: a target whose tags are right but lacks one is not up to
    date. All of them when they can't be read: then they are copied again."""
    if not tp.referrers:
        return []
    from .referrers import lacking

    t = tp.target
    try:
        return lacking(session, t.repository, tp.referrers)
    except RegistryError as exc:
        ctx.log(f"authscope: [{t.name}] could not read its referrers ({exc.reason}); copying them all")
        return list(tp.referrers)


# -- the whole fan-out ----------------------------------------------------------------


def none_copied(plan: Plan, status: str, error: str) -> tuple[R.Result, ...]:
    """A Result per target when the run ended before any copy (the source failed)."""
    return tuple(
        R.Result(
            t.name,
            t.registry,
            t.repository,
            t.tool,
            t.tags,
            status,
            error=error,
            hint="no target was copied",
            changed=False,
        )
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
    digest, plain_http, _ = resolve_source_and_referrers(fanout, base, environ, discover=False)
    return digest, plain_http


def _source_policy_hint(registry: str, reason: str) -> str:
    """A source that a project policy keeps from being pulled (Harbor's 412)."""
    said = re.search(r"'([^']*)'\s*$", reason)  # the registry's own message, quoted last
    if said is None:  # no body (a HEAD): either policy
        why = "the project requires a signature, or caps the vulnerabilities an image may have"
        what = (
            "sign the image (cosign sign) before the fan-out, or fix its vulnerabilities; "
            "the project's admin can tell which policy it is"
        )
    elif _VULNERABLE.search(said.group(1)):
        what = "fix them and release again, or have the project's admin allowlist the CVEs"
        why = "the image has vulnerabilities at or over the project's severity limit"
    else:
        what = "sign it (cosign sign) before the fan-out, or have the project's admin change its content-trust policy"
        why = "the project requires a signature the image does not have"
    return (
        f"the source registry {registry} refused the pull by a project policy "
        f"(Harbor, HTTP 412 PROJECTPOLICYVIOLATION): {why}; {what}"
    )


def resolve_source_and_referrers(
    fanout: Fanout, base: Base, environ: Mapping[str, str], *, discover: bool = True
) -> tuple[str, bool, tuple[Artifact, ...]]:
    """``resolve_source``, and with ``discover`` what refers to the source
    digest (referrers.discover), in the same session: found once, for every
    target. ``start_source`` without the copies starting meanwhile."""
    digest, plain_http, discovery = start_source(fanout, base, environ, discover=discover)
    return digest, plain_http, discovery.artifacts()


def start_source(
    fanout: Fanout,
    base: Base,
    environ: Mapping[str, str],
    *,
    discover: bool = True,
    found: Callable[[tuple[Artifact, ...]], None] | None = None,
) -> tuple[str, bool, Discovery]:
    """(the source's digest, whether it speaks plain HTTP, its Discovery)
    once the digest is known: with ``discover``, what refers to it is found
    in the background, in the same session, while the copies start
    (Discovery.artifacts waits for it; ``found`` is told what it found).
    RegistryError when the digest can't be read; discovery's own error
    comes from Discovery.artifacts."""
    from .referrers import discover as find

    src = fanout.source
    trace.event("source", phase="start")
    cfg = base.snapshot().config
    auth = source_credentials(cfg, src.image.registry, environ, base.path)
    reference = src.image.digest or src.image.tag or "latest"
    try:
        session = Session(src.image.registry, auth, ca_file=src.ca_file, insecure=src.insecure)
    except RegistryError as exc:
        raise _source_error(fanout, exc) from None
    try:
        if not discover:
            with session:
                digest = session.manifest_digest(src.image.repository, reference)
            trace.event("source", phase="end")
            return digest, session.schemes == ["http"], Discovery.finished(())
        # Discovery reads the manifest anyway: one GET resolves the digest too (a round trip fewer).
        digest, known = session.resolve(src.image.repository, reference)
        trace.event("source", phase="end")
    except BaseException as exc:
        session.close()
        if isinstance(exc, RegistryError):
            raise _source_error(fanout, exc) from None
        raise
    plain_http = session.schemes == ["http"]

    def work(session: Session = session) -> tuple[Artifact, ...]:
        trace.event("discovery", phase="start")
        try:
            with session:
                artifacts = find(session, src.image.repository, digest, known=known)
        except RegistryError as exc:
            trace.event("discovery", phase="end", ok=False)
            raise _source_error(fanout, exc) from None
        trace.event("discovery", phase="end", ok=True, artifacts=len(artifacts))
        if found is not None:
            try:
                found(artifacts)
            except Exception:  # noqa: BLE001 - a progress line (stderr gone) never fails the release
                pass
        return artifacts

    return digest, plain_http, Discovery.started(src.image.registry, work)


def _source_error(fanout: Fanout, exc: RegistryError) -> RegistryError:
    """``exc`` (reading the source, or finding its referrers) as the run reports it."""
    src = fanout.source
    hint = ""
    if isinstance(exc, RegistryHTTPError) and exc.status in (401, 403):
        hint = f"; log the job in first: authscope login {src.image.registry} -u ... --password-env ..."
    elif isinstance(exc, RegistryHTTPError) and exc.status == 412:
        hint = "; " + _source_policy_hint(src.image.registry, exc.reason)
    return RegistryError(
        src.image.registry,
        f"cannot read the source {src.image.with_tag(src.image.tag or 'latest')}: {exc.reason}{hint}",
    )


class Discovery:
    """What refers to the source digest (referrers.discover), found once for
    every target in a thread of its own while the copies run: the copies
    start as soon as the digest is known, and wait (``artifacts``) only
    where they need the referrers: before a target's referrer copies (after
    its first copy), and before a target is called up to date.

    A discovery that failed raises its RegistryError to every caller, so
    each target that carries referrers fails with it (fail closed), and the
    run's report says it (release.run)."""

    def __init__(self, registry: str) -> None:
        self._registry = registry
        self._done = threading.Event()
        self._found: tuple[Artifact, ...] = ()
        self.error: BaseException | None = None  # why it failed: a RegistryError, or a bug
        self._thread: threading.Thread | None = None

    @classmethod
    def finished(cls, found: tuple[Artifact, ...], registry: str = "") -> Discovery:
        """A discovery already done (nothing to find, or found before the run)."""
        done = cls(registry)
        done._found = found
        done._done.set()
        return done

    @classmethod
    def started(cls, registry: str, work: Callable[[], tuple[Artifact, ...]]) -> Discovery:
        """``work`` started in a daemon thread (a signal must never wait for
        the source's answers: the run ends, and the thread with the process)."""
        discovery = cls(registry)
        discovery._thread = threading.Thread(
            target=discovery._run, args=(work,), name="authscope-discovery", daemon=True
        )
        discovery._thread.start()
        return discovery

    def _run(self, work: Callable[[], tuple[Artifact, ...]]) -> None:
        try:
            self._found = work()
        except BaseException as exc:  # noqa: BLE001 - kept for every caller: a RegistryError, or a bug
            self.error = exc
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def failed(self) -> bool:
        """Whether it has ended, and failed (never waits)."""
        return self._done.is_set() and self.error is not None

    def artifacts(self) -> tuple[Artifact, ...]:
        """What it found, once it has (waiting in short steps: a signal is
        taken meanwhile, and ends the wait with a RegistryError saying so)."""
        if not self._done.is_set():
            trace.event("wait", phase="start", what="referrers")
            try:
                while not self._done.wait(0.05):
                    if run.stopping():
                        raise RegistryError(self._registry, "interrupted while its referrers were being found")
            finally:
                trace.event("wait", phase="end", what="referrers")
        if isinstance(self.error, RegistryError):
            raise RegistryError(self.error.registry, self.error.reason)  # one per caller: they run in threads
        if self.error is not None:
            raise RuntimeError(f"finding the source's referrers failed: {self.error!r}") from self.error
        return self._found


def _relay(output: deque[str], log: _Log, prefix: str) -> Callable[[bytes, bool], None]:
    """A tool's output, line by line: kept in ``output`` (capped) and logged after ``prefix``."""

    def line(data: bytes, is_stderr: bool) -> None:
        for text in data.decode("utf-8", "replace").splitlines():
            text = R.cap_line(text)
            output.append(text)
            log(f"{prefix} {text}")

    return line


@dataclass
class _SourceReader:
    """What a command that reads the source with the base's login (pull_once's
    pull, the referrer prefetch) runs in: a scope of its own, whose tool gets
    no target's credential variables (tool_environ)."""

    plan: Plan
    base: Base
    environ: Mapping[str, str]
    scope_dir: str | None
    source_plain_http: bool
    targets: Sequence[Target]
    withheld: Sequence[str]
    log: _Log
    restored: list[str] | None

    @contextmanager
    def scope(self, label: str, tool: str) -> Iterator[tuple[Scope, dict[str, str], list[str]]]:
        """(scope, the tool's environment, the base's secrets). What the base
        guard restored when the scope closed is appended to ``restored`` as
        ``label: ...``, whatever ended it."""
        src = self.plan.source
        plain = (src.image.registry,) if self.source_plain_http else ()
        opened: Scope | None = None
        try:
            with open_scope(
                self.base,
                None,
                {},
                root=self.scope_dir,
                sources=[src.image.registry],
                environ=self.environ,
                warn=lambda left: self.log(f"authscope: [{label}] warning: could not remove {left}"),
            ) as (scope, secrets):
                opened = scope
                env = scope.env(tool_environ(self.environ, None, self.targets, {}, self.withheld))
                run.remember(secrets)
                env.update(tools.prepare_pull(scope.path, src, tool, plain))
                yield scope, env, list(secrets)
        finally:
            if opened is not None and self.restored is not None:
                self.restored.extend(f"{label}: {d.describe()}" for d in opened.damage)


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
    discovery: Discovery | None = None,
) -> None:
    """pull_once: fetch the source into ``plan.layout`` once, in a scope of its
    own; its tool gets no target's credential variables (tool_environ).
    ``discovery``: still finding the referrers (the plan has no
    pull_referrers yet): they are pulled after the image, once it has found
    them (a discovery that failed pulls none: the targets fail with it).

    What the base guard restored when the pull's scope closed is appended to
    ``restored``, whether the pull succeeded or not.
    """
    assert plan.pull is not None and plan.layout is not None
    log = _Log(stream)
    src = plan.source
    output: deque[str] = deque(maxlen=R.TAIL_LINES)
    line = _relay(output, log, "[pull]")
    deadline = time.monotonic() + plan.timeout
    reader = _SourceReader(plan, base, environ, scope_dir, source_plain_http, targets, withheld, log, restored)
    with reader.scope("pull", plan.pull.argv[0]) as (scope, env, secrets):
        pending = [plan.pull, *plan.pull_referrers]  # the image, then each of its referrers
        later = discovery is not None and not plan.pull_referrers
        for attempt in range(1, plan.retries + 2):
            log(f"authscope: pulling the source once into {plan.layout} (attempt {attempt}/{plan.retries + 1})")
            while pending:
                argv = tools.fill_scope(pending[0].argv, scope.path)
                log(f"authscope: $ {tools.display(pending[0].argv)}")
                masker = run.Masker([*secrets, *extra_secrets])
                code, timed_out = run.run_captured(argv, env, masker, line, deadline)
                if code != 0 or timed_out:
                    break
                pending.pop(0)
                if not pending and later and discovery is not None:
                    later = False
                    try:
                        pending.extend(referrer_pulls(plan, discovery.artifacts()))
                    except RegistryError:
                        pass  # each target that carries referrers fails with discovery's error
            if not pending:
                return
            transient, hint = _source_diagnosis(list(output), src.image.registry)
            if timed_out or not transient or attempt > plan.retries or run.stopping():
                break
            if not run.sleep_unless_stopped(BACKOFF * 2 ** (attempt - 1)):
                break
    raise RegistryError(
        src.image.registry,
        f"could not pull {plan.source_ref}: {plan.pull.argv[0]} exited {code}{' (timed out)' if timed_out else ''}; {hint}",
    )


class ReferrerPrefetch:
    """Without pull_once: the source's referrers fetched ONCE per run into
    private local OCI layouts, one set per referrer tool the targets use
    (tools.referrer_tool: each tool reads its own layout format), while the
    image copies run; each target's referrer copies then push from them
    (plan.Plan.referrer_layout), so the source is read once for its
    referrers instead of once per target. The pulls run in a scope of their
    own with the base's source login; their tool gets no target's credential
    variables (tool_environ), as pull_source's.

    Started by the first target that needs a copy (``start``: an up-to-date
    re-run reads nothing), after discovery found what to fetch. A target
    waits for its tool's layouts (``layout``) once its image is copied: a
    prefetch that failed, was cut short, or fetched another list answers
    None, and that target copies from the source as before (its own error,
    if any, shows there). What a target holds is still read back there
    (_land), so a layout can never make a target pass that would fail.
    ``close`` stops and joins the pulls: the caller removes ``directory``
    after it."""

    def __init__(
        self,
        discovery: Discovery,
        directory: str,
        pull_tools: Sequence[str],
        pull: Callable[[str, tuple[Artifact, ...], str], None],
        log: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self._discovery = discovery
        self._directory = directory
        self._tools = tuple(dict.fromkeys(pull_tools))
        self._pull = pull  # (tool, artifacts, layout): raises when a pull failed
        self._log = log
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._done = {tool: threading.Event() for tool in self._tools}
        self._ready: dict[str, str] = {}  # tool -> the layout base its pulls wrote (tools.referrer_layout)
        self.errors: dict[str, str] = {}  # tool -> why its prefetch failed
        self.artifacts: tuple[Artifact, ...] | None = None
        self._started = False

    def start(self) -> None:
        """Once: wait for discovery in the background, then pull for every tool at once."""
        with self._lock:
            if self._started:
                return
            self._started = True
            thread = threading.Thread(target=self._work, name="authscope-prefetch", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        try:
            try:
                found = self._discovery.artifacts()
            except Exception as exc:  # noqa: BLE001 - each target fails with discovery's error itself
                for tool in self._tools:
                    self.errors[tool] = f"the referrers were not found: {exc}"
                return
            self.artifacts = found
            if not found:
                return
            threads = [
                threading.Thread(target=self._one, args=(tool, found), name=f"authscope-prefetch-{tool}", daemon=True)
                for tool in self._tools
            ]
            with self._lock:
                self._threads.extend(threads)
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            for event in self._done.values():
                event.set()

    def _one(self, tool: str, found: tuple[Artifact, ...]) -> None:
        import os

        layout = os.path.join(self._directory, tool)
        try:
            if run.stopping():
                raise RuntimeError("interrupted")
            os.makedirs(self._directory, 0o700, exist_ok=True)
            self._pull(tool, found, layout)
            self._ready[tool] = layout
            self._log(f"authscope: fetched the source's {len(found)} referrer(s) once, for {tool}, into a local layout")
        except Exception as exc:  # noqa: BLE001 - the targets copy from the source instead, as before
            self.errors[tool] = str(exc) or repr(exc)
            self._log(
                f"authscope: fetching the referrers once for {tool} failed ({self.errors[tool]}): "
                "its targets copy them from the source"
            )
        finally:
            self._done[tool].set()

    def layout(self, tool: str, artifacts: Sequence[Artifact]) -> str | None:
        """The layout base the target's referrer copies push from, once its
        pulls ended; None (copy from the source) when they failed, were cut
        short by a signal, or fetched other artifacts than ``artifacts``."""
        event = self._done.get(tool)
        if event is None or not self._started:
            return None
        if not event.is_set():
            trace.event("wait", phase="start", what="prefetch")
            try:
                while not event.wait(0.05):
                    if run.stopping():
                        return None
            finally:
                trace.event("wait", phase="end", what="prefetch")
        if self.artifacts is None or tuple(artifacts) != self.artifacts:
            return None
        return self._ready.get(tool)

    def close(self) -> None:
        """Wait for the pulls (a signal ends them: run forwards it); never raises."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            try:
                thread.join(None if not run.stopping() else 10.0)
            except Exception:  # noqa: BLE001,S110 - a cleanup path never raises
                pass


def prefetch_referrers(
    tool: str,
    artifacts: tuple[Artifact, ...],
    layout: str,
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
    """ReferrerPrefetch's pull for ``tool``: each artifact into a layout of its
    own under ``layout`` (tools.pull_referrer_steps), at once, in a scope of
    its own with the base's source login (as pull_source's). RegistryError
    when one failed (no retry: the targets then copy from the source, with
    their retries)."""
    log = _Log(stream)
    src = plan.source
    output: deque[str] = deque(maxlen=R.TAIL_LINES)
    line = _relay(output, log, f"[prefetch {tool}]")
    deadline = time.monotonic() + plan.timeout
    steps = tools.pull_referrer_steps(tool, src, artifacts, layout)
    reader = _SourceReader(plan, base, environ, scope_dir, source_plain_http, targets, withheld, log, restored)
    with reader.scope("prefetch", tool) as (scope, env, secrets):
        masker = run.Masker([*secrets, *extra_secrets])

        def one(step: tools.Step) -> tuple[int, bool]:
            log(f"authscope: [prefetch] $ {tools.display(step.argv)}")
            trace.event("prefetch", phase="start", tool=tool, what=step.what)
            try:
                return run.run_captured(tools.fill_scope(step.argv, scope.path), env, masker, line, deadline)
            finally:
                trace.event("prefetch", phase="end", tool=tool, what=step.what)

        with ThreadPoolExecutor(min(len(steps), REFERRER_JOBS), thread_name_prefix=f"prefetch-{tool}") as pool:
            outcomes = list(pool.map(one, steps))
    for step, (code, timed_out) in zip(steps, outcomes, strict=True):
        if code != 0 or timed_out:
            raise RegistryError(
                src.image.registry,
                f"{step.what}: {tool} exited {code}{' (timed out)' if timed_out else ''}",
            )
    for i, (step, artifact) in enumerate(zip(steps, artifacts, strict=True)):
        if not _holds(tools.referrer_layout(layout, i), artifact.digest):
            raise RegistryError(src.image.registry, f"{step.what}: {tool} exited 0 but did not write its manifest")


def _holds(layout: str, digest: str) -> bool:
    """Whether the OCI layout ``layout`` holds the manifest ``digest``, its
    bytes hashing to it (a tool that said it pulled and did not, or wrote
    something else, is a failed prefetch: the targets copy from the source)."""
    import hashlib
    import os

    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        return False
    try:
        fd = os.open(os.path.join(layout, "blobs", "sha256", hexdigest), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            data = f.read(4 * 1024 * 1024 + 1)
    except OSError:
        return False
    return len(data) <= 4 * 1024 * 1024 and hashlib.sha256(data).hexdigest() == hexdigest


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
    force: bool = False,
    source_plain_http: bool = False,
    preflights: Preflights | None = None,
    targets: Sequence[Target] = (),
    withheld: Sequence[str] = (),
    secrets: Sequence[str] = (),
    stream: IO[str] = sys.stdout,
    pull: Callable[[], None] | None = None,
    discovery: Discovery | None = None,
    prefetch: ReferrerPrefetch | None = None,
) -> tuple[R.Result, ...]:
    """Run every target of ``plan``; a Result for each, in plan order.

    ``targets``: every target of the file (default: the plan's), whose
    credential variables a tool gets only for its own target; ``withheld``:
    variables no tool gets; ``secrets``: more to mask (the GitLab token);
    ``force``: copy targets whose tags already hold ``source_digest`` too;
    ``pull``: pull_once's pull, called (it must run once) before a copy;
    ``discovery``: the source's referrers still being found (``plan`` made
    without them): each target gets them from it, waiting where it must.
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
        force,
        pull,
        discovery,
        prefetch,
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

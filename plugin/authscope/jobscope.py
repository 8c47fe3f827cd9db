"""Job scopes: one private Docker config for a whole CI job (issue 18).

``authscope job open`` (before_script) makes, under the scope root::

    authscope-job-<CI_JOB_ID>-<key>-<pid>-<start>-<ns>-<expires>/   0700, the job directory
        job.json   0600  what the guard needs at close: the base, its snapshot, the leaks
        docker/    0700  the job's DOCKER_CONFIG: a Scope (config.json 0600, no helpers)

and prints the shell lines (``export DOCKER_CONFIG=...``) that point the job's
shell at ``docker/``. The job's own logins go in there: ``$CI_REGISTRY`` and
``DOCKER_AUTH_CONFIG``. Whatever the job's script does to "the" config stays
in there; the runner's base is only read.

``<key>`` digests the job's whole identity (server, project, pipeline, job,
runner, concurrent id), so ``authscope job close`` (after_script, a separate
shell that has none of before_script's exports) finds its own directory and
two runners sharing a machine never pick each other's. ``<pid>-<start>-<ns>``
identify the job's shell, the process that evals the lines (``job open``
itself exits at once), and ``<expires>`` (epoch seconds) is when GitLab has
certainly stopped the job: CI_JOB_TIMEOUT plus the time after_script may
take. As in a target scope's name, ownership is recorded atomically with the
directory's creation.

A job directory is retired (by ``job close``; by ``sweep`` once it has
expired, or GRACE after a sweep first saw its shell gone) in one order that nothing interrupts: claim it by
renaming it onto a fresh target-scope directory of the retiring process (two
retirers cannot both win, and one killed half-way leaves a scope the next
sweep removes), read job.json, remove it, run the base guard against the
snapshot taken at open. ``docker/`` sits below the job directory so that a
script's ``rm -rf "$DOCKER_CONFIG"`` cannot take the snapshot with it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

from . import dockerconfig as dc
from . import scope as S
from .base import Base, Damage, Snapshot, flatten
from .errors import ConfigError, ScopeError, SecretSourceError, UsageError

PREFIX = "authscope-job-"
NAME = re.compile(r"authscope-job-(\d+)-([0-9a-f]{12})-(\d+)-(\d+)-(\d+)-(\d+)")
STATE = "job.json"
SCOPE = "docker"
# The variables that together name one job on one runner. CI_JOB_ID alone is
# unique per GitLab instance only; the rest keep two instances' (or two
# runners') jobs apart on a shared machine.
IDENTITY = ("CI_SERVER_URL", "CI_PROJECT_ID", "CI_PIPELINE_ID", "CI_JOB_ID", "CI_RUNNER_ID", "CI_CONCURRENT_ID")
DEFAULT_TIMEOUT = 24 * 3600  # without CI_JOB_TIMEOUT (GitLab < 15.7, other CI)
AFTER_SCRIPT_MARGIN = 15 * 60  # after_script may run 5 minutes after the timeout (RUNNER_AFTER_SCRIPT_TIMEOUT)
# How long a sweep leaves a job scope whose shell it saw gone: after_script
# (where `job close` runs) starts seconds after the script's shell ends.
GRACE = 10 * 60
OVER_SINCE = "over-since"
DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The daemon TLS files the docker CLI looks for in $DOCKER_CONFIG when DOCKER_CERT_PATH is unset.
DAEMON_TLS = ("ca.pem", "cert.pem", "key.pem")


class Job(NamedTuple):
    """One CI job's identity: its id and a digest of every id that names it."""

    id: str
    key: str

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.id}-{self.key}-"


class Owner(NamedTuple):
    """The job's shell, and when its job is over for certain."""

    pid: int
    start: int
    namespace: int
    expires: int


class Opened(NamedTuple):
    """A job scope ready for the job's shell."""

    job: Job
    directory: str  # the job directory
    scope: S.Scope  # its docker/ part: DOCKER_CONFIG
    base: str  # the base config.json it layers over
    exports: dict[str, str]  # what the job's shell must export
    logins: list[str]  # registries logged in to in the scope, with where from
    notes: list[str]  # things worth a line on stderr
    reused: bool  # the same shell had opened it already


class Closed(NamedTuple):
    """What retiring a job directory did."""

    job: str
    directory: str
    base: str  # the base config.json the guard checked ("" when it could not)
    damage: list[Damage]
    problems: list[str]  # what could not be done (each is also why the exit code is not 0)
    raced: bool = False  # another process retired it first: nothing was done here


# -- identity -------------------------------------------------------------------


def job_of(environ: Mapping[str, str]) -> Job:
    """The job this process runs in, from GitLab's predefined variables."""
    import hashlib

    job_id = environ.get("CI_JOB_ID", "")
    if not job_id:
        raise UsageError(
            "CI_JOB_ID is not set: `authscope job` runs in a GitLab CI job "
            "(outside one, run each command in `authscope exec`)"
        )
    if not job_id.isdigit() or len(job_id) > 20:
        raise UsageError(f"CI_JOB_ID must be a job number, not {job_id[:40]!r}")
    ids = "\0".join(environ.get(name, "") for name in IDENTITY)
    return Job(job_id, hashlib.sha256(ids.encode("utf-8", "surrogateescape")).hexdigest()[:12])


def _stat_fields(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read()
    except OSError:
        return []
    return line[line.rfind(b")") + 2 :].split()


def _program(pid: int) -> tuple[str, bytes] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.readlink(f"/proc/{pid}/exe"), f.read()
    except OSError:
        return None


def job_shell(start_from: int | None = None) -> int:
    """The pid of the shell that will eval ``job open``'s lines.

    That is our parent, unless the parent is a forked copy of its own parent:
    ``$(...)`` runs in a subshell, which some shells fork without exec'ing
    (same program, same argv), and which exits as soon as we do. Going up
    one shell too many only keeps a scope a little longer, until it expires.
    """
    pid = os.getppid() if start_from is None else start_from
    for _ in range(8):
        fields = _stat_fields(pid)
        parent = int(fields[1]) if len(fields) > 1 else 0
        here = _program(pid)
        if parent <= 1 or here is None or here != _program(parent):
            break
        pid = parent
    return pid


def owner_of(shell: int, environ: Mapping[str, str], now: float) -> Owner:
    timeout = environ.get("CI_JOB_TIMEOUT", "")
    seconds = int(timeout) if timeout.isdigit() and int(timeout) > 0 else DEFAULT_TIMEOUT
    return Owner(shell, S.process_start(shell), S.pid_namespace(), int(now) + seconds + AFTER_SCRIPT_MARGIN)


def dir_name(job: Job, owner: Owner) -> str:
    return f"{job.prefix}{owner.pid}-{owner.start}-{owner.namespace}-{owner.expires}"


def parse_name(name: str) -> tuple[str, Owner] | None:
    """(job id, owner) of a job directory's name; None for any other name."""
    match = NAME.fullmatch(name)
    if not match:
        return None
    pid, start, namespace, expires = (int(g) for g in match.groups()[2:])
    return match.group(1), Owner(pid, start, namespace, expires)


def is_over(owner: Owner, now: float) -> bool:
    """True once the job that owns a directory cannot be running any more."""
    if now > owner.expires:
        return True
    return owner.namespace == S.pid_namespace() and not S.process_alive(owner.pid, owner.start)


# -- the shell lines ------------------------------------------------------------


def shell_lines(exports: Mapping[str, str], comment: str = "") -> str:
    """POSIX sh lines that export ``exports``; every value is quoted."""
    head = f"# {comment.replace(chr(10), ' ')}\n" if comment else ""
    for name in exports:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"not a shell variable name: {name!r}")
    return head + "".join(f"export {name}={shlex.quote(value)}\n" for name, value in exports.items())


# Printed on stdout instead of the lines when `job open` fails: `eval ""`
# succeeds, so without it a failed open would let the job run on the shared
# config, the very thing the job scope is there to prevent.
FAILED_LINE = (
    "echo 'authscope: job open failed (see above); the job stops rather than run on the shared Docker config' >&2; "
    "exit {code}\n"
)


# -- open -----------------------------------------------------------------------


def auth_config(environ: Mapping[str, str]) -> tuple[dc.Config, list[str]]:
    """DOCKER_AUTH_CONFIG, parsed (JSON, or the path of a File variable
    holding it); ({}, []) when unset. Never echoes the value."""
    value = environ.get("DOCKER_AUTH_CONFIG", "")
    if not value.strip():
        return {}, []
    data = value.encode("utf-8", "surrogateescape")
    if not value.lstrip().startswith("{") and os.path.isfile(value):
        try:
            with open(value, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise SecretSourceError("DOCKER_AUTH_CONFIG", f"the file it names cannot be read: {exc.strerror}") from None
    try:
        cfg = dc.parse_config(data, "DOCKER_AUTH_CONFIG")
    except ConfigError as exc:
        raise SecretSourceError(
            "DOCKER_AUTH_CONFIG", f'{exc.reason}; it must hold a Docker config.json, e.g. {{"auths": {{...}}}}'
        ) from None
    notes = []
    helpers = sorted(cfg.get("credHelpers", {}))
    if helpers:
        notes.append(
            f"DOCKER_AUTH_CONFIG's credHelpers for {', '.join(helpers)} were left out: "
            "a job scope uses no credential helper (they store into and erase from shared stores)"
        )
    if cfg.get("credsStore"):
        notes.append("DOCKER_AUTH_CONFIG's credsStore was left out: a job scope uses no credential helper")
    return cfg, notes


def layer_job(
    base: dc.Config,
    inline: Mapping[str, Mapping[str, Any]],
    extra: dc.Config,
    registry: tuple[str, dict[str, str]] | None,
) -> tuple[dc.Config, list[str]]:
    """Pure: the job scope's config and the registries logged in to in it.

    The base without helpers (plus ``inline`` credentials read from them),
    then DOCKER_AUTH_CONFIG (``extra``: its auths and other top-level keys
    win over the base's), then the $CI_REGISTRY login.
    """
    cfg = dc.layer(base, None, {}, inline)
    logins = []
    for name, value in extra.items():
        if name not in ("auths", "credsStore", "credHelpers"):
            cfg[name] = json.loads(json.dumps(value))
    for name, entry in extra.get("auths", {}).items():
        try:
            key = dc.registry_key(name)
        except UsageError:
            raise SecretSourceError("DOCKER_AUTH_CONFIG", f'"auths" key {name[:80]!r} is not a registry host') from None
        cfg = dc.with_login(cfg, key, json.loads(json.dumps(entry)))
        logins.append(f"{key} (DOCKER_AUTH_CONFIG)")
    if registry is not None:
        cfg = dc.with_login(cfg, registry[0], registry[1])
        logins.append(f"{registry[0]} (CI_REGISTRY)")
    return cfg, logins


def _registry_login(environ: Mapping[str, str], wanted: bool, notes: list[str]) -> tuple[str, dict[str, str]] | None:
    from . import credentials

    if not wanted:
        return None
    host = environ.get("CI_REGISTRY", "")
    if not host:
        return None  # the project has no container registry
    if not environ.get("CI_REGISTRY_USER") or "CI_REGISTRY_PASSWORD" not in environ:
        notes.append("CI_REGISTRY is set but CI_REGISTRY_USER/CI_REGISTRY_PASSWORD are not: no login to it")
        return None
    user = credentials.username(None, "CI_REGISTRY_USER", environ)
    secret = credentials.password("CI_REGISTRY_PASSWORD", None, False, environ)
    return dc.registry_key(host), dc.auth_entry(user, secret)


def _exports(scope: S.Scope, base_dir: str, environ: Mapping[str, str]) -> dict[str, str]:
    # DOCKER_CONFIG, REGISTRY_AUTH_FILE, AUTHSCOPE_SCOPE, PATH with the scope's
    # refusing store shims first (the job's own PATH after them), + HOME, XDG_*.
    exports = scope.env({"PATH": environ.get("PATH") or os.defpath})
    if not environ.get("DOCKER_CERT_PATH") and any(os.path.isfile(os.path.join(base_dir, f)) for f in DAEMON_TLS):
        # The docker CLI reads its daemon's TLS client keys from $DOCKER_CONFIG
        # unless told otherwise; they are not registry credentials, and the
        # scope has none: keep docker talking to its (dind) daemon.
        exports["DOCKER_CERT_PATH"] = base_dir
    return exports


def _state(directory: str) -> dict[str, Any]:
    """job.json, refusing a link planted in its place."""
    fd = os.open(os.path.join(directory, STATE), os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        doc = json.loads(f.read())
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise ValueError("not a job.json this authscope wrote")
    return doc


def find(roots: Sequence[str], job: Job) -> list[str]:
    """This job's directories under ``roots`` (this user's, real directories)."""

    def of_this_job(name: str) -> tuple[str, Owner] | None:
        return parse_name(name) if name.startswith(job.prefix) else None

    return [path for path, _ in S.own_directories(roots, of_this_job)]


def _reopened(path: str, job: Job, environ: Mapping[str, str]) -> Opened:
    """The lines again, for the shell that opened ``path`` already."""
    try:
        doc = _state(path)
        base_dir = str(doc["base"])
    except (OSError, ValueError, KeyError) as exc:
        raise ScopeError(path, f"is this job's scope, but its {STATE} cannot be read ({exc})") from None
    scope = S.Scope(os.path.join(path, SCOPE), bool(doc.get("isolate_home")))
    return Opened(
        job, path, scope, os.path.join(base_dir, dc.CONFIG_NAME), _exports(scope, base_dir, environ), [], [], True
    )


def open_job(
    environ: Mapping[str, str],
    *,
    root: str | None = None,
    config_dir: str | None = None,
    registry_login: bool = True,
    isolate_home: bool = False,
    sources: Sequence[str] = (),
    shell: int | None = None,
    now: float | None = None,
) -> tuple[Opened, list[Closed]]:
    """Make this job's scope; (it, stale directories of the same job retired).

    The base is only read. Nothing secret is printed or put in argv.
    """
    job = job_of(environ)
    now = time.time() if now is None else now
    owner = owner_of(job_shell() if shell is None else shell, environ, now)
    root_dir = S.choose_root(root, environ)
    retired = []
    for path in find([root_dir], job):
        _, other = parse_name(os.path.basename(path)) or ("", owner)
        if other[:3] == owner[:3]:
            return _reopened(path, job, environ), []
        if not is_over(other, now):
            raise ScopeError(
                path,
                f"job {job.id}'s scope is already open in process {other.pid}; "
                f"one `authscope job open` per job, evaluated by the job's shell",
            )
        retired.append(retire(path))  # a killed run of the same job (gitlab-ci-local re-runs)

    base = Base(dc.base_dir(config_dir, environ))
    snap = base.snapshot()  # a base that does not parse: exit 2, nothing made
    notes: list[str] = []
    extra, extra_notes = auth_config(environ)
    notes += extra_notes
    login = _registry_login(environ, registry_login, notes)
    inline = S.inline_from_helpers(snap.config, sources, environ)
    cfg, logins = layer_job(snap.config, inline, extra, login)
    base_auths = json.dumps(snap.config.get("auths", {}))
    # Auth strings only the job holds: one that turns up in the base came from
    # a tool that ignored DOCKER_CONFIG, and the guard removes it.
    leaks = sorted({e["auth"] for e in cfg["auths"].values() if isinstance(e.get("auth"), str) and e["auth"]})
    leaks = [leak for leak in leaks if leak not in base_auths]

    path = os.path.join(root_dir, dir_name(job, owner))
    try:
        os.mkdir(path, 0o700)
    except OSError as exc:
        raise ScopeError(path, exc.strerror or str(exc)) from None
    try:
        os.chmod(path, 0o700)  # the umask may have taken bits we need
        state = {
            "version": 1,
            "job": job.id,
            "base": base.directory,
            "isolate_home": isolate_home,
            "opened": int(now),
            "generation": snap.generation,
            "mode": snap.mode,
            "config": snap.config,
            "leaks": leaks,
        }
        S.write_private(os.path.join(path, STATE), json.dumps(state).encode("utf-8"))
        scope = S.Scope(os.path.join(path, SCOPE), isolate_home, dc.serialize(cfg))
        os.mkdir(scope.path, 0o700)
        os.chmod(scope.path, 0o700)
        S._populate(scope, base.directory)
    except BaseException as exc:
        S.remove_tree(path)  # never raises; what is left is swept later
        if isinstance(exc, OSError):  # a full or read-only file system
            raise ScopeError(path, f"cannot be filled: {exc.strerror or exc}") from None
        raise
    return Opened(job, path, scope, base.path, _exports(scope, base.directory, environ), logins, notes, False), retired


# -- close, sweep ---------------------------------------------------------------


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP received in the block are delivered after it.

    The handlers are swapped for a recorder rather than the signals blocked:
    a blocked signal still reaches another thread of the process, and Python
    runs its handler in the main thread at once. Outside the main thread
    (where handlers cannot be set) nothing is deferred.
    """
    pending: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for sig in DEFERRED_SIGNALS:
            previous[sig] = signal.signal(sig, lambda signum, _frame: pending.append(signum))
    except ValueError:
        pass  # not the main thread
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for signum in pending:
            os.kill(os.getpid(), signum)  # now, to the handlers in place again


def _snapshot(doc: Mapping[str, Any]) -> tuple[Snapshot, list[str]]:
    config = doc["config"]
    if not isinstance(config, dict):
        raise ValueError("config is not an object")
    mode = doc.get("mode")
    leaks = [str(x) for x in doc.get("leaks", [])]
    return Snapshot(int(doc["generation"]), config, flatten(config), None if mode is None else int(mode)), leaks


def retire(path: str) -> Closed:
    """Claim, read, remove and guard one job directory. Never raises; runs to
    the end whatever signal arrives (signals are deferred until it is done)."""
    name = os.path.basename(path)
    parsed = parse_name(name)
    job = parsed[0] if parsed else "?"
    problems: list[str] = []
    damage: list[Damage] = []
    base_path = ""
    with signals_deferred():
        work = path
        try:
            claimed = S.make_scope_dir(os.path.dirname(path))
            try:
                os.rename(path, claimed)  # onto an empty directory: atomic
                work = claimed
            except FileNotFoundError:
                os.rmdir(claimed)  # someone else retired it first
                return Closed(job, path, "", [], [], raced=True)
            except OSError:
                os.rmdir(claimed)  # keep going on the directory where it is
        except Exception as exc:  # a cleanup path must not stop half-way
            problems.append(f"could not claim {path}: {exc}")
        doc: dict[str, Any] | None = None
        try:
            doc = _state(work)
        except Exception as exc:
            problems.append(f"{os.path.join(path, STATE)} could not be read ({exc}): the base was NOT checked")
        # remove_tree never raises: it names what it could not remove.
        problems.extend(f"could not remove {left}" for left in S.remove_tree(work))
        if doc is not None:
            try:
                snap, leaks = _snapshot(doc)
                base = Base(str(doc["base"]))
                base_path = base.path
                damage = base.check(snap, leaks)
            except Exception as exc:
                problems.append(f"the base guard could not run: {exc}")
    return Closed(job, path, base_path, damage, problems)


def close_job(environ: Mapping[str, str], roots: Sequence[str]) -> list[Closed]:
    """Retire this job's directories (normally one; none when already gone)."""
    return [retire(path) for path in find(roots, job_of(environ))]


def sweep(roots: Sequence[str], now: float | None = None) -> list[Closed]:
    """Retire the job directories of jobs that are over: past their expiry,
    or their shell (checked in this pid namespace only) seen gone by a sweep
    GRACE seconds ago or more. Live jobs' directories, other users' and other
    names are never touched."""
    now = time.time() if now is None else now
    out = []
    for path, parsed in S.own_directories(roots, parse_name):
        if not is_over(parsed[1], now):
            continue
        if now <= parsed[1].expires and not _gone_for_a_while(path, now):
            continue
        out.append(retire(path))
    return out


def _gone_for_a_while(path: str, now: float) -> bool:
    """True when an earlier sweep saw this job's shell gone GRACE seconds ago.

    A job's shell is gone between the end of its script and the start of its
    after_script too; a sweep of another job's after_script in that moment
    must leave the scope to the job's own `job close`, which reports in the
    job's own log. So the first sweep that sees the shell gone only notes when
    (``over-since``, its mtime), and a later one retires it.
    """
    marker = os.path.join(path, OVER_SINCE)
    try:
        return now - os.lstat(marker).st_mtime >= GRACE
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        os.utime(marker, (now, now), follow_symlinks=False)
    except OSError:
        pass  # retired meanwhile, or another sweep noted it first
    return False

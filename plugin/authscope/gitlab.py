"""GitLab release links and deployments for a fan-out (python-gitlab).

After a fan-out, ``--gitlab-release`` makes sure the release for
``$CI_COMMIT_TAG`` exists and carries one ``image`` link per landed target and
tag, pinned to the digest that landed; ``--gitlab-deployments`` records one
deployment per target in environment ``registry/<target>``.

python-gitlab (and requests under it) is imported only inside the functions
that talk to GitLab, so ``import authscope.gitlab`` costs nothing on the paths
that never publish.

Idempotency: links are matched by name ("<target>: <registry>/<repository>:<tag>").
A rerun updates a link whose URL changed in place and leaves an identical one
alone, so links are never duplicated. Links are never deleted: a target that
failed this run keeps the link of its last landing (it still points at the
digest that is there), and links authscope did not make are not touched.
Deployments are records of attempts, so every run adds new ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from . import __version__
from . import report as R
from .errors import GitLabError, UsageError

if TYPE_CHECKING:
    import gitlab
    from gitlab.v4.objects import Project, ProjectRelease

JOB, PRIVATE = "job", "private"
LINK_TYPE = "image"
TIMEOUT = 30.0  # seconds per request; a hung GitLab must not hang the release job
ENVIRONMENT_PREFIX = "registry/"
# A deployment per target: what happened to it in this run. GitLab's deployment
# statuses are running, success, failed and canceled; a target that never
# started (--fail-fast, a signal) was not deployed, so it is "canceled".
DEPLOYMENT_STATUS = {R.OK: "success", R.FAILED: "failed", R.SKIPPED: "canceled", R.INTERRUPTED: "canceled"}
_DOCKER_HUB = frozenset({"docker.io", "index.docker.io", "registry.hub.docker.com"})


class GitLabSettingsError(UsageError):
    """Raised when the CI variables a GitLab step needs are missing (nothing was sent).

    A UsageError, so it maps to exit code 2; ``variables`` names every missing one.
    """

    def __init__(self, variables: Sequence[str], problems: Sequence[str]) -> None:
        self.variables = tuple(variables)
        self.problems = tuple(problems)
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class GitLabSettings:
    """Where and as whom to publish; built from the CI variables by settings_from_env."""

    url: str  # the instance, e.g. https://gitlab.example.com (no /api/v4)
    project_id: str  # numeric ID or full path
    tag: str | None  # CI_COMMIT_TAG
    sha: str | None  # CI_COMMIT_SHA
    ref: str | None  # CI_COMMIT_TAG, else CI_COMMIT_REF_NAME
    token: str = field(repr=False)
    token_kind: str  # "job" (sent as JOB-TOKEN) | "private" (sent as PRIVATE-TOKEN)
    token_env: str = "CI_JOB_TOKEN"  # the variable the token came from, for messages
    ca_file: str | None = None  # CI_SERVER_TLS_CA_FILE: a private CA for the instance

    def __post_init__(self) -> None:
        if self.token_kind not in (JOB, PRIVATE):
            raise ValueError(f"token_kind must be {JOB!r} or {PRIVATE!r}, not {self.token_kind!r}")


def settings_from_env(
    environ: Mapping[str, str],
    token_env: str | None,
    *,
    release: bool = False,
    deployments: bool = False,
) -> GitLabSettings:
    """GitLab settings from a CI job's variables; every missing one reported at once.

    ``token_env`` names a variable holding a project or personal access token
    (sent as PRIVATE-TOKEN); without it, ``CI_JOB_TOKEN`` is used (JOB-TOKEN).
    Pass ``release=True`` / ``deployments=True`` for the steps that will run, so
    a missing ``CI_COMMIT_TAG`` or ``CI_COMMIT_SHA`` is reported before the
    fan-out starts. Raises GitLabSettingsError (a UsageError: exit 2).
    """
    missing: list[str] = []
    problems: list[str] = []

    def need(name: str, why: str) -> str:
        value = environ.get(name, "").strip()
        if not value:
            missing.append(name)
            problems.append(f"${name} is not set: {why}")
        return value

    url = environ.get("CI_SERVER_URL", "").strip()
    if not url and environ.get("CI_API_V4_URL", "").strip():
        url = re.sub(r"/api/v4/?$", "", environ["CI_API_V4_URL"].strip())
    if not url:
        missing.append("CI_SERVER_URL")
        problems.append(
            "$CI_SERVER_URL (or $CI_API_V4_URL) is not set: GitLab CI sets it in every job; outside CI, set it to the instance's URL"
        )
    elif not re.match(r"https?://[^/\s]+", url):
        missing.append("CI_SERVER_URL")
        problems.append(f"GitLab URL {url!r} is not an http(s):// URL (from $CI_SERVER_URL or $CI_API_V4_URL)")
    url = url.rstrip("/")
    project_id = need("CI_PROJECT_ID", "GitLab CI sets it in every job; outside CI, set it to the project's ID or path")
    if token_env:
        kind = PRIVATE
        token = environ.get(token_env, "").strip()
        if not token:
            missing.append(token_env)
            problems.append(
                f"--gitlab-token-env {token_env}: ${token_env} is not set or empty "
                f"(in GitLab: is it a protected variable, and is this a protected ref or tag?)"
            )
    else:
        kind, token_env = JOB, "CI_JOB_TOKEN"
        token = environ.get(token_env, "").strip()
        if not token:
            missing.append(token_env)
            problems.append(
                "$CI_JOB_TOKEN is not set: it exists only inside a running GitLab CI job; elsewhere, "
                "name a variable holding a project or personal access token (scope api) with --gitlab-token-env VAR"
            )
    if token and not (token.isascii() and token.isprintable()):
        # It goes into an HTTP header: a non-ASCII or control character would
        # end in a traceback quoting it (or split the header). Never quoted here.
        missing.append(token_env)
        problems.append(f"${token_env} holds characters no GitLab token has: it must be printable ASCII")
        token = ""
    tag = environ.get("CI_COMMIT_TAG", "").strip() or None
    sha = environ.get("CI_COMMIT_SHA", "").strip() or None
    ref = tag or environ.get("CI_COMMIT_REF_NAME", "").strip() or None
    if release and not tag:
        missing.append("CI_COMMIT_TAG")
        problems.append(_NO_TAG)
    if deployments and not sha:
        missing.append("CI_COMMIT_SHA")
        problems.append(
            "--gitlab-deployments needs $CI_COMMIT_SHA, the commit deployed (GitLab CI sets it in every job)"
        )
    if deployments and not ref:
        missing.append("CI_COMMIT_REF_NAME")
        problems.append(
            "--gitlab-deployments needs $CI_COMMIT_TAG or $CI_COMMIT_REF_NAME, the ref deployed (GitLab CI sets them)"
        )
    if problems:
        raise GitLabSettingsError(missing, problems)
    return GitLabSettings(
        url=url,
        project_id=project_id,
        tag=tag,
        sha=sha,
        ref=ref,
        token=token,
        token_kind=kind,
        token_env=token_env,
        ca_file=environ.get("CI_SERVER_TLS_CA_FILE") or None,
    )


_NO_TAG = (
    "--gitlab-release needs $CI_COMMIT_TAG: a release belongs to a tag, so the job must run in a "
    "pipeline for a tag of this project (rules: - if: $CI_COMMIT_TAG)"
)


# -- what to publish (pure) ------------------------------------------------------------


class PlannedLink(NamedTuple):
    """One release link: a landed target and tag, pinned to the digest found there."""

    target: str
    tag: str
    name: str
    url: str


def link_name(result: R.Result, tag: str) -> str:
    return f"{result.name}: {result.registry}/{result.repository}:{tag}"


def manifest_url(registry: str, repository: str, digest: str) -> str:
    # The distribution API's manifest URL, which pins the digest. Always https:
    # a link is for people and tools outside this job, not for an insecure hop.
    host = re.sub(r"^https?://", "", registry).split("/")[0]  # "https://index.docker.io/v1/" too
    host = "registry-1.docker.io" if host in _DOCKER_HUB else host
    return f"https://{host}/v2/{repository}/manifests/{digest}"


def plan_links(report: R.Report, taken: Set[str] = frozenset()) -> tuple[list[PlannedLink], list[str]]:
    """The links for every landed target and tag, and notes about tags without a digest.

    GitLab wants link URLs unique within a release, and two tags of one target
    usually land the same digest, so a URL already used (by an earlier planned
    link or by one in ``taken``) gets the tag as a fragment (``#latest``), then
    the target and tag. Same report, same URLs: reruns match.
    """
    planned: list[PlannedLink] = []
    notes: list[str] = []
    used = set(taken)
    for r in report.results:
        if r.status != R.OK:
            continue
        for tag in r.tags:
            digest = r.digests.get(tag) or report.source_digest
            if not digest:
                notes.append(f"no digest recorded for {r.registry}/{r.repository}:{tag}; no link made for it")
                continue
            base = manifest_url(r.registry, r.repository, digest)
            url = next(u for u in (base, f"{base}#{tag}", f"{base}#{r.name}:{tag}") if u not in used)
            used.add(url)
            planned.append(PlannedLink(r.name, tag, link_name(r, tag), url))
    return planned, notes


def environment_name(result: R.Result) -> str:
    return ENVIRONMENT_PREFIX + result.name


# -- talking to GitLab -----------------------------------------------------------------


def publish_release_links(settings: GitLabSettings, report: R.Report) -> list[str]:
    """Make sure the release for the tag exists and links every landed target and tag.

    Returns what it did, one line per release and link (created / updated /
    unchanged). Links are matched by name: updated in place, never duplicated,
    never deleted (a target that failed keeps its earlier link). With no target
    landed, GitLab is not contacted. Raises GitLabError.
    """
    tag = settings.tag
    if not tag:
        raise GitLabSettingsError(["CI_COMMIT_TAG"], [_NO_TAG])
    if not any(r.status == R.OK for r in report.results):
        return [f"release {tag}: no target landed, so there is nothing to link; the release was not touched"]
    lines: list[str] = []
    with _client(settings, lines) as (gl, call):
        project = gl.projects.get(settings.project_id, lazy=True)  # lazy: no GET /projects/:id
        release = _ensure_release(project, settings, tag, call, lines)
        # get_all: with 10 targets and 2 tags a release has more than one page (20) of links.
        existing = call(f"list the links of release {tag}", "read", release.links.list, get_all=True)
        by_name = {link.name: link for link in existing}
        names = {p.name for p in plan_links(report)[0]}
        # URLs held by links this run won't rewrite (failed targets, links made by hand) are taken.
        planned, notes = plan_links(report, {link.url for link in existing if link.name not in names})
        lines.extend(notes)
        for p in planned:
            current = by_name.get(p.name)
            if current is None:
                call(
                    f"create link {p.name!r} in release {tag}",
                    "write",
                    release.links.create,
                    {"name": p.name, "url": p.url, "link_type": LINK_TYPE},
                )
                lines.append(f"created link {p.name} -> {p.url}")
            elif current.url == p.url and getattr(current, "link_type", LINK_TYPE) == LINK_TYPE:
                lines.append(f"unchanged link {p.name} -> {p.url}")
            else:
                # link_type goes along every time: GitLab's update resets an
                # omitted link_type to "other".
                call(
                    f"update link {p.name!r} (id {current.id}) in release {tag}",
                    "write",
                    release.links.update,
                    current.id,
                    {"name": p.name, "url": p.url, "link_type": LINK_TYPE},
                )
                lines.append(f"updated link {p.name}: {current.url} -> {p.url}")
        for r in report.results:
            if r.status != R.OK:
                kept = [n for n in (link_name(r, t) for t in r.tags) if n in by_name]
                state = f"its {len(kept)} earlier link(s) left as they are" if kept else "no link"
                lines.append(f"{r.name} did not land ({r.status}): {state}")
    return lines


def publish_deployments(settings: GitLabSettings, report: R.Report) -> list[str]:
    """One deployment per target, in environment ``registry/<target>``.

    Status success for a landed target, failed for a failed one, canceled for
    one that never started (skipped, interrupted); sha, ref and tag from the
    pipeline. Returns one line per deployment. Raises GitLabError.
    """
    missing = [
        (name, why)
        for name, value, why in (
            ("CI_COMMIT_SHA", settings.sha, "--gitlab-deployments needs $CI_COMMIT_SHA, the commit deployed"),
            ("CI_COMMIT_REF_NAME", settings.ref, "--gitlab-deployments needs $CI_COMMIT_TAG or $CI_COMMIT_REF_NAME"),
        )
        if not value
    ]
    if missing:
        raise GitLabSettingsError([m[0] for m in missing], [m[1] for m in missing])
    sha, ref = str(settings.sha), str(settings.ref)
    is_tag = settings.tag is not None and settings.tag == ref
    if not report.results:
        return ["no targets: no deployments recorded"]
    lines: list[str] = []
    with _client(settings, lines) as (gl, call):
        project = gl.projects.get(settings.project_id, lazy=True)
        for r in report.results:
            environment = environment_name(r)
            status = DEPLOYMENT_STATUS.get(r.status, "failed")
            data: dict[str, Any] = {"environment": environment, "sha": sha, "ref": ref, "tag": is_tag, "status": status}
            deployment = call(f"create deployment to {environment}", "deployment", project.deployments.create, data)
            lines.append(f"deployment {deployment.get_id()} to {environment}: {status} ({ref} at {sha[:12]})")
    return lines


def _ensure_release(
    project: Project, settings: GitLabSettings, tag: str, call: _Call, lines: list[str]
) -> ProjectRelease:
    try:
        release = call(f"get release {tag}", "read", project.releases.get, tag, missing_ok=True)
    except _Missing:
        try:
            release = call(
                f"create release {tag}",
                "write",
                project.releases.create,
                {"tag_name": tag, "name": tag},
                conflict_ok=True,
            )
        except _Conflict:  # another job made it between our GET and POST
            release = call(f"get release {tag}", "read", project.releases.get, tag)
            lines.append(f"release {tag}: exists (made by another job just now){_web(release)}")
        else:
            lines.append(f"release {tag}: created{_web(release)}")
    else:
        lines.append(f"release {tag}: exists{_web(release)}")
    return release


def _web(release: Any) -> str:
    links = getattr(release, "_links", None)
    return f" ({links['self']})" if isinstance(links, dict) and links.get("self") else ""


class _Missing(Exception):
    pass


class _Conflict(Exception):
    pass


if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol, TypeVar

    T = TypeVar("T")

    class _Call(Protocol):
        def __call__(
            self,
            operation: str,
            kind: str,
            action: Callable[..., T],
            *args: Any,
            missing_ok: bool = False,
            conflict_ok: bool = False,
            **kwargs: Any,
        ) -> T: ...


@contextmanager
def _client(settings: GitLabSettings, lines: list[str]) -> Iterator[tuple[gitlab.Gitlab, _Call]]:
    """A python-gitlab client (session closed on exit) and ``call``, which runs
    one request and turns python-gitlab's and requests' errors into GitLabError."""
    import gitlab
    import requests

    def call(
        operation: str,
        kind: str,
        action: Callable[..., T],
        *args: Any,
        missing_ok: bool = False,
        conflict_ok: bool = False,
        **kwargs: Any,
    ) -> T:
        try:
            return action(*args, **kwargs)
        except gitlab.exceptions.GitlabError as exc:
            status = exc.response_code
            if missing_ok and status == 404:
                raise _Missing() from None
            if conflict_ok and status == 409:
                raise _Conflict() from None
            detail = _detail(exc.error_message, settings.token)
            raise GitLabError(operation, status, detail, explain(status, settings, kind, detail)) from None
        except requests.RequestException as exc:
            reason = _detail(str(exc), settings.token)
            hint = f"check $CI_SERVER_URL ({settings.url}) and the network from this runner" + (
                "; for a private CA, GitLab CI sets $CI_SERVER_TLS_CA_FILE"
                if "SSL" in reason or "certificate" in reason
                else ""
            )
            raise GitLabError(operation, None, reason, hint) from None

    gl = gitlab.Gitlab(
        settings.url,
        private_token=settings.token if settings.token_kind == PRIVATE else None,
        job_token=settings.token if settings.token_kind == JOB else None,
        ssl_verify=settings.ca_file or True,
        timeout=TIMEOUT,
        user_agent=f"authscope/{__version__}",
    )
    try:
        with gl:  # closes the requests session: no socket outlives the step
            yield gl, call
    except GitLabError as exc:
        exc.done = tuple(lines)
        raise


def _detail(message: Any, secret: str = "") -> str:
    """GitLab's error message on one line: a string, a list of full messages
    ("Name has already been taken") or, from older versions, {field: [errors]}.
    ``secret`` (the token) is masked before the message is shortened, so no
    cut can leave a piece of it."""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    if isinstance(message, dict):
        text = "; ".join(
            f"{key} {', '.join(map(str, value)) if isinstance(value, list) else value}"
            for key, value in message.items()
        )
    elif isinstance(message, list):
        text = "; ".join(map(str, message))
    else:
        text = str(message)
    text = " ".join(_mask(text, secret).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _mask(text: str, secret: str) -> str:
    """``text`` without ``secret`` in any form (raw, URL-encoded, JSON-escaped, base64)."""
    from .run import Masker

    return Masker([secret]).text(text) if secret else text


def explain(status: int | None, settings: GitLabSettings, kind: str, detail: str = "") -> str:
    """What a status means for this step, in GitLab's terms, and how to fix it.

    ``kind`` is "read" or "write" (release and links) or "deployment".
    """
    job = settings.token_kind == JOB
    who = "the job's token" if job else f"the access token in ${settings.token_env}"
    if status == 401:
        if job:
            return (
                "GitLab refused CI_JOB_TOKEN as invalid or expired: a job token is valid only while its job "
                "runs, so it can't be saved and used later or by another job"
            )
        return (
            f"GitLab refused the access token in ${settings.token_env} as invalid, expired or revoked: "
            "create a new project or personal access token (scope api) and update the variable"
        )
    if status == 403:
        if kind == "deployment":
            role = (
                "the user who started the pipeline needs at least the Developer role in the project"
                if job
                else "the token needs the api scope, and its user (or its role, for a project or group access token) at least Developer"
            )
            return (
                f"{who} may not create deployments: {role}; if environment registry/<target> is protected, "
                "that user must be allowed to deploy to it (Settings > CI/CD > Protected environments)"
            )
        if job:
            return (
                f"{who} may not {'read' if kind == 'read' else 'create or change'} releases of project "
                f"{settings.project_id}: a job token acts as the user who started the pipeline, who needs at least "
                "the Developer role; if the job runs in another project, this project must allow that project's "
                "job tokens (Settings > CI/CD > Job token permissions)"
            )
        return (
            f"{who} may not create or change releases of project {settings.project_id}: a project or personal "
            "access token needs the api scope (read_api can't write), and its user or role at least Developer"
        )
    if status == 404:
        hint = (
            f"GitLab can't see project {settings.project_id}"
            + (f" or release {settings.tag}" if kind != "deployment" and settings.tag else "")
            + ": check $CI_PROJECT_ID; a private project looks missing to a token without access to it"
        )
        if job:
            hint += ", and a job token from another project sees it only if this project's job token allowlist includes that project"
        if kind != "deployment":
            hint += "; the job must run in a pipeline for a tag of this project ($CI_COMMIT_TAG set)"
        return hint
    if status == 422 and "ref" in detail.lower():
        return (
            f"tag {settings.tag} does not exist in project {settings.project_id}: the release step must run in a "
            "pipeline for a tag of this project ($CI_COMMIT_TAG); authscope never creates tags"
        )
    if status == 400 and "taken" in detail.lower():
        return (
            "a link with that name or URL already exists in the release: another job may be publishing the "
            "same release right now; rerun the step (links are matched by name and updated in place)"
        )
    if status == 400 and kind == "deployment" and "ref" in detail.lower():
        return f"GitLab doesn't know ref {settings.ref} in project {settings.project_id}: was it deleted?"
    if status is not None and status >= 500:
        return "GitLab had an internal error or is unavailable: rerun the step (release links are idempotent)"
    return "GitLab refused the request; see its message"

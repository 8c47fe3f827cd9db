"""GitLab release links and deployments: the real python-gitlab client against
tests/gitlab_fake.py (GitLab's endpoints, status codes and error bodies)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence

import pytest

from authscope import report as R
from authscope.errors import AuthscopeError, UsageError
from authscope.gitlab import (
    GitLabError,
    GitLabSettings,
    GitLabSettingsError,
    manifest_url,
    plan_links,
    publish_deployments,
    publish_release_links,
    settings_from_env,
)
from tests.gitlab_fake import JOB_TOKEN, PRIVATE_TOKEN, FakeGitLab

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
SHA = "0123456789abcdef0123456789abcdef01234567"
TARGETS = (
    ("harbor-remote-1", "harbor.remote-1"),
    ("harbor-remote-2", "harbor.remote-2:8443"),
    ("staging", "127.0.0.1:5002"),
)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # requests honours *_proxy variables: the fake lives on 127.0.0.1.
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeGitLab]:
    with FakeGitLab() as server:
        yield server


def ci_env(fake: FakeGitLab, **extra: str) -> dict[str, str]:
    env = {
        "CI_SERVER_URL": fake.url,
        "CI_PROJECT_ID": str(fake.project_id),
        "CI_COMMIT_TAG": "1.0",
        "CI_COMMIT_REF_NAME": "1.0",
        "CI_COMMIT_SHA": SHA,
        "CI_JOB_TOKEN": JOB_TOKEN,
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def settings(fake: FakeGitLab, token_env: str | None = None, **extra: str) -> GitLabSettings:
    return settings_from_env(ci_env(fake, **extra), token_env, release=True, deployments=True)


def result(
    name: str, registry: str, status: str = R.OK, digest: str | None = D1, tags: Sequence[str] = ("1.0", "latest")
) -> R.Result:
    digests: dict[str, str | None] = {t: digest for t in tags} if status == R.OK else {}
    return R.Result(
        name,
        registry,
        "release/app",
        "crane",
        tuple(tags),
        status,
        digests=digests,
        error="" if status == R.OK else "boom",
    )


def make_report(
    statuses: dict[str, str] | None = None, digest: str = D1, targets: Sequence[tuple[str, str]] = TARGETS
) -> R.Report:
    statuses = statuses or {}
    results = tuple(result(name, reg, statuses.get(name, R.OK), digest) for name, reg in targets)
    return R.Report("gitlab.local:4567/group/app:1.0", digest, "crane", results, 0.0, 1.0)


def link_names(fake: FakeGitLab, tag: str = "1.0") -> list[str]:
    return sorted(link["name"] for link in fake.links(tag))


def assert_no_token_leaks(fake: FakeGitLab, *texts: str) -> None:
    for request in fake.requests:
        for token in (JOB_TOKEN, PRIVATE_TOKEN):
            assert token not in request.path, f"token in URL: {request.method} {request.path}"
    for text in texts:
        assert JOB_TOKEN not in text and PRIVATE_TOKEN not in text


# -- import cost ---------------------------------------------------------------------------


def test_import_does_not_load_python_gitlab_or_requests() -> None:
    probe = (
        "import sys\n"
        "import authscope.gitlab\n"
        "print(sorted(m for m in ('gitlab', 'requests', 'urllib3') if m in sys.modules))\n"
        "import gitlab\n"  # the control: python-gitlab does pull requests in
        "print(sorted(m for m in ('gitlab', 'requests', 'urllib3') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=dict(os.environ)
    ).stdout.splitlines()
    assert out == ["[]", "['gitlab', 'requests', 'urllib3']"]


# -- settings --------------------------------------------------------------------------------


def test_settings_job_token_by_default(fake: FakeGitLab) -> None:
    s = settings(fake)
    assert (s.url, s.project_id, s.tag, s.sha, s.ref) == (fake.url, "42", "1.0", SHA, "1.0")
    assert (s.token, s.token_kind, s.token_env) == (JOB_TOKEN, "job", "CI_JOB_TOKEN")
    assert JOB_TOKEN not in repr(s)


def test_settings_private_token_from_named_variable_and_api_v4_url() -> None:
    env = {
        "CI_API_V4_URL": "https://gitlab.example.com/gitlab/api/v4",
        "CI_PROJECT_ID": "group/app",
        "CI_COMMIT_REF_NAME": "main",
        "CI_COMMIT_SHA": SHA,
        "CI_JOB_TOKEN": JOB_TOKEN,
        "RELEASE_TOKEN": PRIVATE_TOKEN + "\n",  # a file variable's trailing newline
    }
    s = settings_from_env(env, "RELEASE_TOKEN", deployments=True)
    assert s.url == "https://gitlab.example.com/gitlab"
    assert (s.token, s.token_kind, s.token_env) == (PRIVATE_TOKEN, "private", "RELEASE_TOKEN")
    assert (s.tag, s.ref) == (None, "main")


def test_settings_report_every_missing_variable_at_once() -> None:
    with pytest.raises(GitLabSettingsError) as info:
        settings_from_env({"CI_COMMIT_REF_NAME": "main"}, None, release=True, deployments=True)
    err = info.value
    assert isinstance(err, UsageError)  # exit 2: nothing ran
    assert set(err.variables) == {"CI_SERVER_URL", "CI_PROJECT_ID", "CI_JOB_TOKEN", "CI_COMMIT_TAG", "CI_COMMIT_SHA"}
    assert "--gitlab-token-env" in str(err) and "pipeline for a tag" in str(err)


def test_settings_named_token_variable_missing() -> None:
    with pytest.raises(GitLabSettingsError, match=r"--gitlab-token-env RELEASE_TOKEN: \$RELEASE_TOKEN is not set"):
        settings_from_env({"CI_SERVER_URL": "https://g.example", "CI_PROJECT_ID": "1"}, "RELEASE_TOKEN")


def test_release_without_tag_is_refused_before_any_request(fake: FakeGitLab) -> None:
    with pytest.raises(GitLabSettingsError, match="CI_COMMIT_TAG"):
        settings_from_env(ci_env(fake, CI_COMMIT_TAG=""), None, release=True)
    s = settings_from_env(ci_env(fake, CI_COMMIT_TAG=""), None)  # deployments only: fine on a branch
    with pytest.raises(GitLabSettingsError, match="a release belongs to a tag"):
        publish_release_links(s, make_report())
    assert fake.requests == []


# -- release links ---------------------------------------------------------------------------


def test_first_run_creates_the_release_and_one_image_link_per_target_and_tag(fake: FakeGitLab) -> None:
    lines = publish_release_links(settings(fake), make_report())

    release = fake.releases["1.0"]
    assert release["name"] == "1.0"
    links = {link["name"]: link for link in fake.links("1.0")}
    assert sorted(links) == [
        "harbor-remote-1: harbor.remote-1/release/app:1.0",
        "harbor-remote-1: harbor.remote-1/release/app:latest",
        "harbor-remote-2: harbor.remote-2:8443/release/app:1.0",
        "harbor-remote-2: harbor.remote-2:8443/release/app:latest",
        "staging: 127.0.0.1:5002/release/app:1.0",
        "staging: 127.0.0.1:5002/release/app:latest",
    ]
    assert {link["link_type"] for link in links.values()} == {"image"}
    # The digest is pinned; the second tag of the same digest needs a distinct
    # URL (GitLab: link URLs are unique within a release).
    assert links["harbor-remote-1: harbor.remote-1/release/app:1.0"]["url"] == (
        f"https://harbor.remote-1/v2/release/app/manifests/{D1}"
    )
    assert links["harbor-remote-1: harbor.remote-1/release/app:latest"]["url"] == (
        f"https://harbor.remote-1/v2/release/app/manifests/{D1}#latest"
    )
    assert links["staging: 127.0.0.1:5002/release/app:1.0"]["url"].startswith("https://127.0.0.1:5002/v2/")
    assert lines[0] == f"release 1.0: created ({fake.web_url}/-/releases/1.0)"
    assert sum(line.startswith("created link ") for line in lines) == 6

    # Job token in its header; lazy project: no GET /projects/42 first.
    assert all(r.headers.get("job-token") == JOB_TOKEN and "private-token" not in r.headers for r in fake.requests)
    assert not [r for r in fake.requests if r.route == "/api/v4/projects/42"]
    assert [(r.method, r.route) for r in fake.requests[:2]] == [
        ("GET", "/api/v4/projects/42/releases/1.0"),
        ("POST", "/api/v4/projects/42/releases"),
    ]
    assert fake.calls("POST", "/releases")[0].body == {"tag_name": "1.0", "name": "1.0"}
    assert_no_token_leaks(fake, *lines)


def test_rerun_changes_nothing_and_a_new_digest_updates_links_in_place(fake: FakeGitLab) -> None:
    s = settings(fake)
    publish_release_links(s, make_report())
    ids = {link["name"]: link["id"] for link in fake.links("1.0")}
    writes = len([r for r in fake.requests if r.method != "GET"])

    again = publish_release_links(s, make_report())
    assert again[0].startswith("release 1.0: exists")
    assert sum(line.startswith("unchanged link ") for line in again) == 6
    assert len([r for r in fake.requests if r.method != "GET"]) == writes  # no write at all
    assert {link["name"]: link["id"] for link in fake.links("1.0")} == ids

    rebuilt = publish_release_links(s, make_report(digest=D2))
    assert sum(line.startswith("updated link ") for line in rebuilt) == 6
    links = fake.links("1.0")
    assert {link["name"]: link["id"] for link in links} == ids  # same links, no duplicates
    assert all(D2 in link["url"] and link["link_type"] == "image" for link in links)
    # link_type is always sent: GitLab resets an omitted one to "other".
    assert all(r.body["link_type"] == "image" for r in fake.calls("PUT", "/assets/links/"))


def test_partial_failure_links_landed_targets_and_keeps_earlier_links(fake: FakeGitLab) -> None:
    s = settings(fake)
    publish_release_links(s, make_report())  # an earlier run where everything landed
    before = {link["name"]: dict(link) for link in fake.links("1.0")}

    lines = publish_release_links(s, make_report({"harbor-remote-2": R.FAILED}, digest=D2))

    after = {link["name"]: link for link in fake.links("1.0")}
    assert sorted(after) == sorted(before)  # nothing deleted, nothing duplicated
    for name, link in after.items():
        if name.startswith("harbor-remote-2:"):
            assert link == before[name]  # the failed target's links: as they were (digest D1)
        else:
            assert D2 in link["url"]
    assert "harbor-remote-2 did not land (failed): its 2 earlier link(s) left as they are" in lines


def test_failed_targets_get_no_link_on_a_first_run(fake: FakeGitLab) -> None:
    lines = publish_release_links(settings(fake), make_report({"staging": R.FAILED, "harbor-remote-2": R.SKIPPED}))
    assert link_names(fake) == [
        "harbor-remote-1: harbor.remote-1/release/app:1.0",
        "harbor-remote-1: harbor.remote-1/release/app:latest",
    ]
    assert "staging did not land (failed): no link" in lines


def test_nothing_landed_leaves_gitlab_alone(fake: FakeGitLab) -> None:
    report = make_report({name: R.FAILED for name, _ in TARGETS})
    lines = publish_release_links(settings(fake), report)
    assert fake.requests == [] and "nothing to link" in lines[0]


def test_existing_release_and_hand_made_links_are_kept(fake: FakeGitLab) -> None:
    fake.add_release("1.0", name="Spring release", links=(("Changelog", "https://example.com/changes", "other"),))
    lines = publish_release_links(settings(fake), make_report())
    assert fake.releases["1.0"]["name"] == "Spring release"
    assert not fake.calls("POST", "/releases") or all("assets" in r.route for r in fake.calls("POST", "/releases"))
    assert "Changelog" in link_names(fake) and len(fake.links("1.0")) == 7
    assert lines[0].startswith("release 1.0: exists")


def test_more_links_than_one_page(fake: FakeGitLab) -> None:
    """GitLab pages link lists (20 a page): a rerun that read only page 1 would
    duplicate every link beyond it."""
    targets = tuple((f"t{i:02d}", f"registry-{i:02d}.example") for i in range(12))
    s = settings(fake)
    publish_release_links(s, make_report(targets=targets))
    publish_release_links(s, make_report(targets=targets))
    names = [link["name"] for link in fake.links("1.0")]
    assert len(names) == 24 == len(set(names))
    assert len(fake.calls("GET", "/assets/links")) == 1 + 2  # an empty page, then two pages

    # The control: one page is what a client that doesn't follow pages gets.
    import gitlab

    with gitlab.Gitlab(fake.url, job_token=JOB_TOKEN) as gl:
        page = gl.projects.get(42, lazy=True).releases.get("1.0").links.list(get_all=False)
    assert len(page) == 20


def test_tag_with_a_slash_is_one_path_segment(fake: FakeGitLab) -> None:
    fake.tags.add("release/1.0")
    publish_release_links(settings(fake, CI_COMMIT_TAG="release/1.0"), make_report())
    assert len(fake.links("release/1.0")) == 6
    assert any(r.path.startswith("/api/v4/projects/42/releases/release%2F1.0") for r in fake.requests)


def test_private_token_is_sent_as_private_token() -> None:
    with FakeGitLab(token=PRIVATE_TOKEN, token_kind="private") as fake:
        s = settings(fake, "RELEASE_TOKEN", RELEASE_TOKEN=PRIVATE_TOKEN)
        publish_release_links(s, make_report())
        assert len(fake.links("1.0")) == 6
        assert all(
            r.headers.get("private-token") == PRIVATE_TOKEN and "job-token" not in r.headers for r in fake.requests
        )
        assert_no_token_leaks(fake)


def test_project_path_as_id(fake: FakeGitLab) -> None:
    publish_release_links(settings(fake, CI_PROJECT_ID="group/app"), make_report())
    assert len(fake.links("1.0")) == 6
    assert fake.requests[0].path == "/api/v4/projects/group%2Fapp/releases/1.0"


def test_docker_hub_links_use_the_registry_api_host() -> None:
    for registry in ("docker.io", "index.docker.io", "https://index.docker.io/v1/"):
        assert manifest_url(registry, "acme/app", D1) == f"https://registry-1.docker.io/v2/acme/app/manifests/{D1}"


def test_plan_links_is_deterministic_and_avoids_taken_urls() -> None:
    report = make_report()
    first, _ = plan_links(report)
    assert plan_links(report)[0] == first
    taken = {f"https://harbor.remote-1/v2/release/app/manifests/{D1}"}
    moved, _ = plan_links(report, taken)
    assert moved[0].url == f"https://harbor.remote-1/v2/release/app/manifests/{D1}#1.0"
    assert len({p.url for p in moved} | taken) == 7


# -- deployments -----------------------------------------------------------------------------


def test_deployments_one_per_target_with_its_status(fake: FakeGitLab) -> None:
    report = make_report({"harbor-remote-2": R.FAILED, "staging": R.SKIPPED})
    lines = publish_deployments(settings(fake), report)
    got = {d["environment"]["name"]: d for d in fake.deployments}
    assert {name: d["status"] for name, d in got.items()} == {
        "registry/harbor-remote-1": "success",
        "registry/harbor-remote-2": "failed",
        "registry/staging": "canceled",  # never started: not deployed
    }
    assert all((d["sha"], d["ref"], d["tag"]) == (SHA, "1.0", True) for d in got.values())
    assert len(lines) == 3 and lines[1].startswith("deployment ") and "registry/harbor-remote-2: failed" in lines[1]
    assert not [r for r in fake.requests if r.method == "GET"]  # lazy project: POSTs only
    assert_no_token_leaks(fake, *lines)


def test_deployments_for_a_branch(fake: FakeGitLab) -> None:
    s = settings_from_env(ci_env(fake, CI_COMMIT_TAG="", CI_COMMIT_REF_NAME="main"), None, deployments=True)
    publish_deployments(s, make_report())
    assert {(d["ref"], d["tag"]) for d in fake.deployments} == {("main", False)}


# -- errors: GitLab's answers, explained in GitLab's terms ---------------------------------------


def test_401_job_token_explains_its_lifetime(fake: FakeGitLab) -> None:
    s = settings(fake, CI_JOB_TOKEN="glcbt-expired-token")
    with pytest.raises(GitLabError) as info:
        publish_release_links(s, make_report())
    err = info.value
    assert isinstance(err, AuthscopeError)
    assert (err.status, err.operation) == (401, "get release 1.0")
    assert err.detail == "401 Unauthorized"
    assert "only while its job runs" in str(err) and "CI_JOB_TOKEN" in str(err)
    assert "glcbt-expired-token" not in str(err)


def test_401_private_token_names_the_variable() -> None:
    with FakeGitLab(token=PRIVATE_TOKEN, token_kind="private") as fake:
        s = settings(fake, "RELEASE_TOKEN", RELEASE_TOKEN="glpat-revoked")
        with pytest.raises(GitLabError, match=r"\$RELEASE_TOKEN as invalid, expired or revoked.*scope api"):
            publish_deployments(s, make_report())


def test_403_job_token_explains_developer_role_and_allowlist(fake: FakeGitLab) -> None:
    fake.forbid = {"create_release"}
    with pytest.raises(GitLabError) as info:
        publish_release_links(settings(fake), make_report())
    err = info.value
    assert (err.status, err.operation, err.detail) == (403, "create release 1.0", "403 Forbidden")
    assert "Developer" in str(err) and "Job token permissions" in str(err)
    assert fake.releases == {}


def test_403_private_token_explains_api_scope() -> None:
    with FakeGitLab(token=PRIVATE_TOKEN, token_kind="private", forbid={"*"}) as fake:
        s = settings(fake, "RELEASE_TOKEN", RELEASE_TOKEN=PRIVATE_TOKEN)
        with pytest.raises(GitLabError, match="needs the api scope"):
            publish_release_links(s, make_report())


def test_403_on_a_link_keeps_what_was_done(fake: FakeGitLab) -> None:
    fake.forbid = {"create_link"}
    with pytest.raises(GitLabError) as info:
        publish_release_links(settings(fake), make_report())
    assert info.value.operation.startswith("create link 'harbor-remote-1: harbor.remote-1/release/app:1.0'")
    assert info.value.done[0].startswith("release 1.0: created")


def test_403_deployment_mentions_protected_environments(fake: FakeGitLab) -> None:
    fake.forbid = {"create_deployment"}
    with pytest.raises(GitLabError, match="Protected environments") as info:
        publish_deployments(settings(fake), make_report())
    assert info.value.operation == "create deployment to registry/harbor-remote-1"


def test_404_unknown_project(fake: FakeGitLab) -> None:
    with pytest.raises(GitLabError) as info:
        publish_release_links(settings(fake, CI_PROJECT_ID="999"), make_report())
    err = info.value
    assert (err.status, err.operation, err.detail) == (404, "create release 1.0", "404 Project Not Found")
    assert "$CI_PROJECT_ID" in str(err) and "pipeline for a tag of this project" in str(err)


def test_422_tag_not_in_project(fake: FakeGitLab) -> None:
    with pytest.raises(GitLabError) as info:
        publish_release_links(settings(fake, CI_COMMIT_TAG="9.9"), make_report())
    err = info.value
    assert (err.status, err.detail) == (422, "Ref is not specified")
    assert "Tag 9.9 does not exist in project 42" in str(err) and "never creates tags" in str(err)
    assert fake.releases == {} and fake.tags == {"1.0"}


@pytest.mark.parametrize(
    ("style", "detail"), [("modern", "Name has already been taken"), ("legacy", "name has already been taken")]
)
def test_400_duplicate_name_from_a_concurrent_job(fake: FakeGitLab, style: str, detail: str) -> None:
    """Another job adds the same link between our list and our create."""
    fake.error_style = style

    def race(operation: str, server: FakeGitLab) -> None:
        if operation == "create_link" and not server.links("1.0"):
            server.releases["1.0"]["links"].append(
                server._new_link(
                    "1.0", "harbor-remote-1: harbor.remote-1/release/app:1.0", "https://x.example/a", "image"
                )
            )

    fake.before = race
    with pytest.raises(GitLabError) as info:
        publish_release_links(settings(fake), make_report())
    assert (info.value.status, info.value.detail) == (400, detail)
    assert "another job" in str(info.value) and "rerun" in str(info.value)
    fake.before = None
    publish_release_links(settings(fake), make_report())  # the rerun mends it
    assert len(fake.links("1.0")) == 6


def test_concurrent_release_creation_is_not_an_error(fake: FakeGitLab) -> None:
    def race(operation: str, server: FakeGitLab) -> None:
        if operation == "create_release" and "1.0" not in server.releases:
            server.add_release("1.0", name="made by the other job")

    fake.before = race
    lines = publish_release_links(settings(fake), make_report())
    assert lines[0].startswith("release 1.0: exists (made by another job just now)")
    assert len(fake.links("1.0")) == 6


def test_deployment_for_unknown_ref(fake: FakeGitLab) -> None:
    s = settings_from_env(ci_env(fake, CI_COMMIT_TAG="", CI_COMMIT_REF_NAME="gone"), None, deployments=True)
    with pytest.raises(GitLabError) as info:
        publish_deployments(s, make_report())
    assert (info.value.status, info.value.detail) == (400, "ref The branch or tag does not exist")
    assert "doesn't know ref gone" in str(info.value)


def test_gitlab_unreachable(fake: FakeGitLab) -> None:
    s = settings(fake)
    fake.stop()
    with pytest.raises(GitLabError) as info:
        publish_deployments(s, make_report())
    assert info.value.status is None and "no answer" in str(info.value) and "CI_SERVER_URL" in str(info.value)

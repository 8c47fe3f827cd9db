"""`authscope fanout --gitlab-release --gitlab-deployments` end to end: real
registries, the real CLI, and the fake GitLab driven by python-gitlab."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import RegistryFactory, fake_password, require_tools
from tests.gitlab_fake import JOB_TOKEN, FakeGitLab
from tests.support import SourceImage

AUTHSCOPE = [sys.executable, "-m", "authscope"]


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab(tags={"1.0"}) as server:
        yield server


@pytest.fixture
def release(
    tmp_path: Path,
    e2e_env: dict[str, str],
    registry_factory: RegistryFactory,
    source_image: SourceImage,
    gitlab: FakeGitLab,
) -> dict[str, object]:
    """Two targets (one with a wrong password), the base logged in to the source."""
    require_tools("crane")
    good = registry_factory("good")
    bad = registry_factory("bad")
    env = dict(e2e_env)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(name, None)
    env["PATH"] = f"{Path(__file__).resolve().parents[2] / '.tools' / 'bin'}:{env['PATH']}"
    env.update(
        SOURCE_PASSWORD=source_image.registry.password,
        GOOD_PASSWORD=good.password,
        BAD_PASSWORD=fake_password(),  # not bad's: this target fails with 401
        CI_SERVER_URL=gitlab.url,
        CI_PROJECT_ID=str(gitlab.project_id),
        CI_COMMIT_TAG="1.0",
        CI_COMMIT_REF_NAME="1.0",
        CI_COMMIT_SHA="0123456789abcdef0123456789abcdef01234567",
        CI_JOB_TOKEN=JOB_TOKEN,
    )
    login = AUTHSCOPE + [
        "login",
        source_image.registry.host,
        "-u",
        source_image.registry.username,
        "--password-env",
        "SOURCE_PASSWORD",
    ]
    subprocess.run(login, env=env, check=True, capture_output=True)
    targets = tmp_path / "authscope.yml"
    targets.write_text(
        f"""
source: {{image: {source_image.ref}, insecure: true}}
tags: ["1.0", latest]
targets:
  - {{name: good, registry: {good.host}, repository: release/app, username: {good.username}, password_env: GOOD_PASSWORD, insecure: true}}
  - {{name: bad, registry: {bad.host}, repository: release/app, username: {bad.username}, password_env: BAD_PASSWORD, insecure: true}}
"""
    )
    return {"env": env, "file": targets, "good": good, "source": source_image, "tmp": tmp_path}


def fanout(release: dict[str, object], *extra: str) -> subprocess.CompletedProcess[str]:
    args = AUTHSCOPE + ["fanout", "-f", str(release["file"]), "--json", str(release["tmp"] / "report.json"), *extra]  # type: ignore[operator]
    return subprocess.run(args, env=release["env"], capture_output=True, text=True, timeout=240)  # type: ignore[arg-type]


def test_release_links_and_deployments_after_a_partial_fanout(release: dict[str, object], gitlab: FakeGitLab) -> None:
    result = fanout(release, "--gitlab-release", "--gitlab-deployments")
    assert result.returncode == 1, result.stderr  # one target failed; GitLab steps succeeded
    good = release["good"]
    digest = release["source"].digest  # type: ignore[attr-defined]
    links = {link["name"]: link for link in gitlab.links("1.0")}
    assert set(links) == {f"good: {good.host}/release/app:1.0", f"good: {good.host}/release/app:latest"}  # type: ignore[attr-defined]
    assert all(link["link_type"] == "image" and digest in link["url"] for link in links.values())
    statuses = {d["environment"]["name"]: d["status"] for d in gitlab.deployments}
    assert statuses == {"registry/good": "success", "registry/bad": "failed"}
    assert JOB_TOKEN not in result.stdout + result.stderr
    # A rerun updates in place: still two links.
    again = fanout(release, "--gitlab-release")
    assert again.returncode == 1
    assert len(gitlab.links("1.0")) == 2


def test_gitlab_failure_exits_4_and_never_hides_the_fanout(release: dict[str, object], gitlab: FakeGitLab) -> None:
    gitlab.forbid = {"create_release"}
    release["file"].write_text(release["file"].read_text().split("  - {name: bad")[0])  # type: ignore[attr-defined]
    result = fanout(release, "--gitlab-release")
    assert result.returncode == 4, result.stderr
    assert "403" in result.stderr and "Developer" in result.stderr
    report = json.loads((release["tmp"] / "report.json").read_text())  # type: ignore[operator]
    assert report["status"] == "success" and report["counts"]["ok"] == 1
    assert "good" in result.stdout and "OK" in result.stdout  # the summary table still says what landed


def test_missing_ci_variable_is_reported_before_anything_runs(release: dict[str, object], gitlab: FakeGitLab) -> None:
    env = dict(release["env"])  # type: ignore[call-overload]
    del env["CI_PROJECT_ID"]
    args = AUTHSCOPE + ["fanout", "-f", str(release["file"]), "--gitlab-release"]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "CI_PROJECT_ID" in result.stderr
    assert not gitlab.calls()
    assert release["good"].manifest_digest("release/app", "1.0") is None  # type: ignore[attr-defined]

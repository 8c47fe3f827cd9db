"""Harbor-like Bearer-token registries end to end (issue 19).

The targets are `tests/support/tokenauth.py` registries: the real
distribution registry with `auth: token`, behind a front that serves an
RS256 token service granting, per account and repository prefix, the actions
asked for that the account may do. A robot `robot$release+ci` may push and
pull `release/`, `release-puller` may only pull, `robot$release+expired` is
refused by the token service. One target is plain HTTP (realm on
http://localhost:PORT), one TLS (realm on https://localhost:PORT).

Every run checks the base Docker config byte for byte, that no scope is left,
that no test secret is printed, and reads digests back past the front with a
token of its own. Harbor's answers the real registry cannot give (a project
policy, an immutable tag, a quota, Harbor's own "action: push" refusal, a
rate limit) come from the front, with the bodies kept in
tests/fixtures/harbor; each must end in its own error in the log, the JUnit
report and the JSON report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import RegistryFactory, TokenRegistryFactory
from tests.e2e.fanout_helpers import AUTHSCOPE, SYSTEM_CA_BUNDLES, TOOLS_BIN, b64, tool_paths
from tests.support import build_oci_layout, publish_image, skopeo_push, write_authfile
from tests.support.tokenauth import ADMIN, EXPIRED, PULLER, ROBOT, TokenRegistry, harbor_fault, immutable_tag

TOOLS = ("crane", "skopeo", "regctl")


class Job:
    """A release job: a local (htpasswd) source, two Harbor-like targets, a logged-in base."""

    def __init__(
        self,
        tmp_path: Path,
        e2e_env: Mapping[str, str],
        registry_factory: RegistryFactory,
        token_registry_factory: TokenRegistryFactory,
    ) -> None:
        tool_paths("skopeo", "crane", "regctl")
        self.tmp = tmp_path
        self.e2e_env = e2e_env
        self.local = registry_factory("local")
        self.source = publish_image(self.local, tmp_path / "source", e2e_env)
        self.harbor = token_registry_factory("harbor")
        self.harbor_tls = token_registry_factory("harbor-tls", tls=True)
        self.conf = tmp_path / "conf"
        self.conf.mkdir()
        assert self.harbor_tls.ca_file is not None
        shutil.copyfile(self.harbor_tls.ca_file, self.conf / "ca.crt")
        self.scopes = tmp_path / "scopes"
        self.scopes.mkdir(mode=0o700)
        self.reports = tmp_path / "reports"
        self.reports.mkdir()
        env = dict(e2e_env)
        env["PATH"] = f"{TOOLS_BIN}{os.pathsep}{env['PATH']}"
        env["LANG"] = "C.UTF-8"
        env["AUTHSCOPE_SCOPE_DIR"] = str(self.scopes)
        env["LOCAL_PASSWORD"] = self.local.password
        bundle = tmp_path / "ca-bundle.pem"
        roots = [Path(p).read_bytes() for p in SYSTEM_CA_BUNDLES if Path(p).is_file()][:1]
        bundle.write_bytes(b"".join(roots) + b"\n" + self.harbor_tls.ca_file.read_bytes())
        env["SSL_CERT_FILE"] = str(bundle)
        self.env = env
        self.secrets = [self.local.password, b64(self.local.username, self.local.password)]
        for registry in (self.harbor, self.harbor_tls):
            for account in registry.accounts.values():
                self.secrets += [account.password, b64(account.name, account.password)]
        result = self.authscope("login", self.local.host, "-u", self.local.username, "--password-env", "LOCAL_PASSWORD")
        assert result.returncode == 0, result.stderr
        self.config = Path(env["DOCKER_CONFIG"]) / "config.json"
        self.base_before = self.config.read_bytes()

    # -- running -------------------------------------------------------------------------

    def authscope(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*AUTHSCOPE, *args],
            env=dict(self.env if env is None else env),
            cwd=self.tmp,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        for text in (result.stdout, result.stderr):
            for secret in self.secrets:
                assert secret not in text, "a test secret was printed"
        return result

    def targets_file(
        self,
        tool: str,
        *,
        account: str = ROBOT,
        targets: Sequence[TokenRegistry] | None = None,
        tags: Sequence[str] = ("1.0", "latest"),
        source: str | None = None,
        **top: Any,
    ) -> Path:
        doc: dict[str, Any] = {
            "source": {"image": source or self.source.ref, "insecure": True},
            "tags": list(tags),
            "tool": tool,
            "retries": 1,
            **top,
            "targets": [],
        }
        for registry in self.harbor, self.harbor_tls:
            if targets is not None and registry not in targets:
                continue
            entry: dict[str, Any] = {"name": registry.name, "registry": registry.host, "repository": "release/app"}
            entry.update({"ca_file": "ca.crt"} if registry.tls else {"insecure": True})
            entry.update(username=account, password_env=f"{registry.name.upper().replace('-', '_')}_PASSWORD")
            self.env[entry["password_env"]] = registry.accounts[account].password
            doc["targets"].append(entry)
        path = self.conf / f"{tool}-{len(list(self.conf.iterdir()))}.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def fanout(self, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.authscope("fanout", "-f", str(path), "--junit", str(self.junit), "--json", str(self.json), *args)
        for report in (self.junit, self.json):
            if report.exists():
                for secret in self.secrets:
                    assert secret not in report.read_text(), "a test secret was written"
        assert list(self.scopes.iterdir()) == [], "a scope outlived the fan-out"
        assert self.config.read_bytes() == self.base_before, "the base changed"
        return result

    @property
    def junit(self) -> Path:
        return self.reports / "junit.xml"

    @property
    def json(self) -> Path:
        return self.reports / "fanout.json"

    def results(self) -> dict[str, dict[str, Any]]:
        return {t["name"]: t for t in json.loads(self.json.read_text())["targets"]}

    def junit_text(self, name: str) -> str:
        root = ET.fromstring(self.junit.read_bytes())
        case = next(c for c in root.iter("testcase") if c.get("name") == name)
        return ET.tostring(case, encoding="unicode")


@pytest.fixture
def job(
    tmp_path: Path,
    e2e_env: dict[str, str],
    registry_factory: RegistryFactory,
    token_registry_factory: TokenRegistryFactory,
) -> Job:
    return Job(tmp_path, e2e_env, registry_factory, token_registry_factory)


def pushes_asked(registry: TokenRegistry, account: str) -> list[tuple[tuple[str, ...], tuple[Any, ...]]]:
    """(scopes asked, access granted) of every token request of ``account`` that asked for push."""
    return [
        (r.scopes, r.granted) for r in registry.token_requests if r.account == account and "push" in " ".join(r.scopes)
    ]


# -- the fan-out through Bearer tokens --------------------------------------------------------------


@pytest.mark.parametrize("tool", TOOLS)
def test_fanout_through_token_registries(job: Job, tool: str) -> None:
    result = job.fanout(job.targets_file(tool))
    assert result.returncode == 0, result.stdout + result.stderr
    for registry in job.harbor, job.harbor_tls:
        for tag in ("1.0", "latest"):
            assert registry.manifest_digest("release/app", tag) == job.source.digest
        # The tool asked the token service for push on the target repository, and got it.
        asked = pushes_asked(registry, ROBOT)
        assert asked, registry.token_requests
        assert any(("release/app", ("pull", "push")) in granted for _, granted in asked)
        assert job.results()[registry.name]["status"] == "ok"
    # The read-back asked the tags with HEAD (Harbor counts a GET as a pull).
    heads = {s.path for s in job.harbor.seen if s.method == "HEAD" and s.status == 200}
    assert {"/v2/release/app/manifests/1.0", "/v2/release/app/manifests/latest"} <= heads


@pytest.mark.parametrize("tool", TOOLS)
def test_pull_only_account_is_told_it_cannot_push(job: Job, tool: str) -> None:
    result = job.fanout(job.targets_file(tool, account=PULLER, targets=[job.harbor]))
    assert result.returncode == 1, result.stdout + result.stderr
    assert job.harbor.manifest_digest("release/app", "1.0") is None
    # The token service was asked for push and granted only pull: the real registry refused the write.
    asked = pushes_asked(job.harbor, PULLER)
    assert asked and all(actions == ("pull",) for _, granted in asked for _, actions in granted)
    hint = job.results()[job.harbor.name]["hint"]
    assert "no push permission" in hint or "may have no push permission" in hint, hint
    assert "release/app" in hint
    assert hint in result.stdout
    assert "push permission" in job.junit_text(job.harbor.name)


def test_expired_robot_stops_at_the_credential_check(job: Job) -> None:
    result = job.fanout(job.targets_file("crane", account=EXPIRED))
    assert result.returncode == 1, result.stdout + result.stderr
    for registry in job.harbor, job.harbor_tls:
        r = job.results()[registry.name]
        assert "token service" in r["error"] and "refused" in r["error"], r
        variable = f"{registry.name.upper().replace('-', '_')}_PASSWORD"
        assert f"password_env {variable}" in r["hint"] and "expired" in r["hint"], r
        # No tool ran: the only token request is the check's (push and pull of the
        # target's repository: the token the read-back would have reused).
        assert [t.scopes for t in registry.token_requests if t.account == EXPIRED] == [
            ("repository:release/app:pull,push",)
        ]
        assert [t.status for t in registry.token_requests if t.account == EXPIRED] == [401]
        assert "expired" in job.junit_text(registry.name)


def test_pull_once_through_token_registries(job: Job) -> None:
    result = job.fanout(job.targets_file("crane", pull_once=True))
    assert result.returncode == 0, result.stdout + result.stderr
    for registry in job.harbor, job.harbor_tls:
        assert registry.manifest_digest("release/app", "latest") == job.source.digest


# -- login --verify, exec, the docker CLI ---------------------------------------------------------------


def test_login_verify_against_the_token_service(job: Job) -> None:
    for registry in job.harbor, job.harbor_tls:
        ca = ["--ca-file", str(registry.ca_file)] if registry.tls else []
        env = dict(job.env, HARBOR_PASSWORD=registry.accounts[EXPIRED].password)
        refused = job.authscope(
            "login", registry.host, "-u", EXPIRED, "--password-env", "HARBOR_PASSWORD", "--verify", *ca, env=env
        )
        assert refused.returncode != 0 and refused.returncode != 70
        assert "token service" in refused.stderr and "expired" in refused.stderr, refused.stderr
        assert job.config.read_bytes() == job.base_before
        env["HARBOR_PASSWORD"] = registry.accounts[ROBOT].password
        ok = job.authscope(
            "login", registry.host, "-u", ROBOT, "--password-env", "HARBOR_PASSWORD", "--verify", *ca, env=env
        )
        assert ok.returncode == 0, ok.stderr
        entry = json.loads(job.config.read_text())["auths"][registry.host]
        assert entry == {"auth": b64(*registry.credentials(ROBOT))}
        job.base_before = job.config.read_bytes()
        assert any(t.account == ROBOT and t.status == 200 for t in registry.token_requests)


def test_exec_docker_login_and_crane_in_a_scope(job: Job) -> None:
    tool_paths("docker")
    registry = job.harbor
    dst = registry.ref("release/app", "1.0")
    script = (
        'echo "$HARBOR_PASSWORD" | docker login "$HARBOR" -u "$HARBOR_USER" --password-stdin && '
        f'crane copy --insecure {job.source.ref} {dst} && docker logout "$HARBOR" && '
        'echo \'{"auths":{}}\' > "$DOCKER_CONFIG/config.json"'
    )
    env = dict(job.env, HARBOR=registry.host, HARBOR_USER=ROBOT, HARBOR_PASSWORD=registry.accounts[ROBOT].password)
    result = job.authscope(
        "exec",
        "--registry",
        registry.host,
        "-u",
        ROBOT,
        "--password-env",
        "HARBOR_PASSWORD",
        "--",
        "sh",
        "-c",
        script,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "Login Succeeded" in result.stdout + result.stderr
    assert registry.manifest_digest("release/app", "1.0") == job.source.digest
    assert job.config.read_bytes() == job.base_before
    assert list(job.scopes.iterdir()) == []
    assert pushes_asked(registry, ROBOT)


# -- Harbor's answers ------------------------------------------------------------------------------------

# (fixture, method, path, words of the hint): the front answers the target's
# first matching request itself.
TARGET_ANSWERS = {
    "push_unauthorized": ("PUT", r"/release/app/manifests/", "no push permission on"),
    "push_denied": ("PUT", r"/release/app/manifests/", "push permission"),
    "quota_exceeded": ("PUT", r"/release/app/manifests/", "over its storage quota"),
}


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("answer", sorted(TARGET_ANSWERS))
def test_harbor_answer_on_push(job: Job, tool: str, answer: str) -> None:
    method, path, words = TARGET_ANSWERS[answer]
    job.harbor.add_fault(harbor_fault(answer, method, path))
    result = job.fanout(job.targets_file(tool, targets=[job.harbor]))
    assert result.returncode == 1, result.stdout + result.stderr
    r = job.results()[job.harbor.name]
    assert words in r["hint"], r
    assert r["attempts"] == 1, "a Harbor refusal is not retried"
    assert f"fix: {r['hint']}" in result.stdout
    assert words in job.junit_text(job.harbor.name)


@pytest.mark.parametrize("tool", TOOLS)
def test_immutable_latest_pushed_twice(job: Job, tool: str) -> None:
    job.harbor.add_fault(harbor_fault("immutable_tag", "PUT", r"/manifests/", when=immutable_tag("latest")))
    first = job.fanout(job.targets_file(tool, targets=[job.harbor]))
    assert first.returncode == 0, first.stdout + first.stderr
    second_image = publish_image(job.local, job.tmp / "source-2", job.e2e_env, tag="2.0", seed=1)
    assert second_image.digest != job.source.digest
    second = job.fanout(job.targets_file(tool, targets=[job.harbor], tags=("2.0", "latest"), source=second_image.ref))
    assert second.returncode == 1, second.stdout + second.stderr
    r = job.results()[job.harbor.name]
    assert "the tag latest of" in r["hint"] and "immutable" in r["hint"], r
    assert job.harbor.manifest_digest("release/app", "latest") == job.source.digest  # not moved
    assert job.harbor.manifest_digest("release/app", "2.0") == second_image.digest
    assert "immutable" in job.junit_text(job.harbor.name)


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize(
    ("answer", "words"), [("policy_unsigned", "sign it"), ("policy_vulnerable", "vulnerabilities")]
)
def test_project_policy_on_the_source(
    job: Job, token_registry_factory: TokenRegistryFactory, tool: str, answer: str, words: str
) -> None:
    """The source is a Harbor project whose policy refuses the pull (GET of the manifest)."""
    source = token_registry_factory("harbor-src")
    layout = job.tmp / "src-layout"
    build_oci_layout(layout, tag="1.0")
    authfile = write_authfile(job.tmp / "src-auth.json", {source.host: source.credentials(ADMIN)})
    skopeo_push(layout, "1.0", source.ref("release/src", "1.0"), authfile, job.e2e_env, None)
    env = dict(job.env, SRC_PASSWORD=source.accounts[ADMIN].password)
    login = job.authscope("login", source.host, "-u", ADMIN, "--password-env", "SRC_PASSWORD", env=env)
    assert login.returncode == 0, login.stderr
    job.secrets += [source.accounts[ADMIN].password, b64(*source.credentials(ADMIN))]
    job.base_before = job.config.read_bytes()
    source.add_fault(harbor_fault(answer, "GET", r"/release/src/manifests/"))
    result = job.fanout(job.targets_file(tool, targets=[job.harbor], source=source.ref("release/src", "1.0")))
    assert result.returncode == 1, result.stdout + result.stderr
    # authscope's own read of the source (its digest, its referrers) meets the
    # policy first: the run stops there, before any tool, and says why.
    error = json.loads(job.json.read_text())["error"]
    assert f"the source registry {source.host} refused the pull by a project policy" in error, error
    assert words in error and "PROJECTPOLICYVIOLATION" in error
    assert "PROJECTPOLICYVIOLATION" in result.stdout + result.stderr
    assert "PROJECTPOLICYVIOLATION" in job.junit_text(job.harbor.name)


def test_rate_limit_retry_after_is_honoured(job: Job) -> None:
    """The credential check's first token request is answered 429 Retry-After: 2:
    the next request comes 2s later, not after the 1s backoff."""
    job.harbor.add_fault(harbor_fault("rate_limited", "GET", r"^/service/token", times=1))
    result = job.fanout(job.targets_file("crane", targets=[job.harbor]))
    assert result.returncode == 0, result.stdout + result.stderr
    limited = next(i for i, s in enumerate(job.harbor.seen) if s.fault == "rate_limited")
    gap = job.harbor.seen[limited + 1].at - job.harbor.seen[limited].at
    assert gap >= 1.9, gap
    assert "retrying in 2s" in result.stdout
    assert job.harbor.manifest_digest("release/app", "latest") == job.source.digest


def test_rate_limit_past_the_timeout_fails_at_once(job: Job) -> None:
    job.harbor.add_fault(harbor_fault("rate_limited", "*", r"^/v2/", headers={"Retry-After": "3600"}))
    result = job.fanout(job.targets_file("crane", targets=[job.harbor], timeout=60))
    assert result.returncode == 1, result.stdout + result.stderr
    r = job.results()[job.harbor.name]
    assert "429" in r["error"] and "rate-limiting" in r["hint"] and "3600s" in r["hint"], r
    assert r["duration"] < 30

"""Signed releases through Harbor-like Bearer-token registries (issues 14 and 19).

Every registry here is a tests/support/tokenauth.py registry: the real
distribution registry with `auth: token` behind a token service. The SOURCE
is one too: a build job logs in with `cosign login` and `oras login` (the
password on stdin, into a DOCKER_CONFIG of its own, HOME and XDG isolated),
signs the image with `cosign sign --key`, attests it with `cosign attest
--type spdxjson`, attaches an SBOM with `oras attach` and signs the SBOM
(tests/support/signing.py). The release job's base holds a pull-only login
to the source (`release-puller`); the fan-out goes with crane, skopeo and
regctl to two token targets (plain HTTP, and TLS with a CA file) as the
push robot `robot$release+ci`. At every target a consumer with the pull
account only verifies with `cosign verify`, `cosign verify-attestation` and
`oras discover`.

What the token service saw is the proof that authscope's own reads went
through the token flow: its discovery of the source's referrers and its
read-back at the targets come with its User-Agent, after a token it asked
for with its account's Basic credentials. The control: a pull-only account
at the target fails it with a hint naming the missing push permission, and
nothing of the signature lands. And a Harbor that refuses only the
signature's push fails the target naming the signature, before the further
tag moves.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import TokenRegistryFactory
from tests.e2e.fanout_helpers import AUTHSCOPE, SYSTEM_CA_BUNDLES, TOOLS_BIN, b64, tool_paths
from tests.support import build_oci_layout, isolated_env, skopeo_push, write_authfile
from tests.support.signing import SPDX, Cosign
from tests.support.tokenauth import PULLER, ROBOT, TokenRegistry, harbor_fault

TOOLS = ("crane", "skopeo", "regctl")
REPO = "release/app"
AUTHSCOPE_AGENT = "authscope/"


def oras_host(registry: TokenRegistry) -> str:
    """The registry as oras reaches it: under its realm's host name, localhost.

    oras 1.3.6 (oras-go 2.7.0) refuses a Bearer realm whose host is or
    resolves to a loopback address, unless the registry was reached at that
    same host name; the token registries' realms are on localhost."""
    return "localhost:" + registry.host.rpartition(":")[2]


class TokenSigned:
    """A signed source on a token registry, two token targets, a release job whose base can pull the source."""

    def __init__(self, tmp_path: Path, e2e_env: Mapping[str, str], factory: TokenRegistryFactory) -> None:
        paths = tool_paths("skopeo", "crane", "regctl", "cosign", "oras")
        self.tmp = tmp_path
        self.source = factory("harbor-src")
        self.plain = factory("harbor")
        self.tls = factory("harbor-tls", tls=True)
        self.targets = (self.plain, self.tls)
        assert self.tls.ca_file is not None
        bundle = tmp_path / "ca-bundle.pem"
        roots = [Path(p).read_bytes() for p in SYSTEM_CA_BUNDLES if Path(p).is_file()][:1]
        bundle.write_bytes(b"".join(roots) + b"\n" + self.tls.ca_file.read_bytes())
        self.secrets = [
            s
            for r in (self.source, *self.targets)
            for a in r.accounts.values()
            for s in (a.password, b64(a.name, a.password))
        ]

        # The build: push the image, then log in with cosign and oras, sign, attest, attach, sign the SBOM.
        layout = tmp_path / "layout"
        build_oci_layout(layout, tag="1.0", seed=23)
        publish = write_authfile(tmp_path / "publish-auth.json", {self.source.host: self.source.credentials(ROBOT)})
        self.digest = skopeo_push(layout, "1.0", self.source.ref(REPO, "1.0"), publish, e2e_env)
        build_env = isolated_env(tmp_path / "build-job")
        build_env["PATH"] = f"{TOOLS_BIN}{os.pathsep}{build_env['PATH']}"
        self.signer = Cosign(tmp_path / "signing", build_env, paths["cosign"], paths["oras"])
        build_config = Path(build_env["DOCKER_CONFIG"]) / "config.json"
        password = self.source.accounts[ROBOT].password
        for login in (
            [paths["cosign"], "login", self.source.host, "-u", ROBOT, "--password-stdin"],
            [paths["oras"], "login", "--plain-http", "--registry-config", str(build_config)]
            + ["-u", ROBOT, "--password-stdin", oras_host(self.source)],
        ):
            done = self.signer.run(login, stdin=password)
            self.assert_no_secrets(done.stdout, done.stderr)
        auths = json.loads(build_config.read_text())["auths"]
        assert auths[self.source.host]["auth"] == auths[oras_host(self.source)]["auth"] == b64(ROBOT, password)
        self.source.token_requests.clear()
        subject = f"{self.source.host}/{REPO}@{self.digest}"
        flags = ["--plain-http", "--registry-config", str(build_config)]
        self.sbom = self.signer.sign_release(subject, flags, f"{oras_host(self.source)}/{REPO}@{self.digest}")
        # The signing went through the token service as the robot, with push on the repository.
        assert any(t.account == ROBOT and (REPO, ("pull", "push")) in t.granted for t in self.source.token_requests), (
            self.source.token_requests
        )
        hexdigest = self.digest.partition(":")[2]
        self.tags = {f"sha256-{hexdigest}.sig", f"sha256-{hexdigest}.att", f"sha256-{hexdigest}"}
        for tag in self.tags:
            assert self.source.manifest_digest(REPO, tag) is not None, tag

        # The release job: its base holds a pull-only login to the source, made by authscope login.
        self.scopes = tmp_path / "scopes"
        self.scopes.mkdir(mode=0o700)
        env = dict(e2e_env)
        env["PATH"] = f"{TOOLS_BIN}{os.pathsep}{env['PATH']}"
        env["LANG"] = "C.UTF-8"
        env["AUTHSCOPE_SCOPE_DIR"] = str(self.scopes)
        env["SSL_CERT_FILE"] = str(bundle)
        env["SRC_PASSWORD"] = self.source.accounts[PULLER].password
        self.env = env
        logged_in = self.authscope("login", self.source.host, "-u", PULLER, "--password-env", "SRC_PASSWORD")
        assert logged_in.returncode == 0, logged_in.stderr
        self.config = Path(env["DOCKER_CONFIG"]) / "config.json"
        self.base_before = self.config.read_bytes()
        self.report = tmp_path / "fanout.json"

        # The consumer: its own environment, a pull-only login at each target.
        self.verify_env = isolated_env(tmp_path / "consumer")
        self.verify_env["PATH"] = env["PATH"]
        self.verify_env["SSL_CERT_FILE"] = str(bundle)
        self.verify_config = write_authfile(
            Path(self.verify_env["DOCKER_CONFIG"]) / "config.json",
            {host: r.credentials(PULLER) for r in self.targets for host in (r.host, oras_host(r))},
        )

    def assert_no_secrets(self, *texts: str) -> None:
        for text in texts:
            for secret in self.secrets:
                assert secret not in text, "a test secret was printed"

    def authscope(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*AUTHSCOPE, *args],
            env=self.env,
            cwd=self.tmp,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        self.assert_no_secrets(result.stdout, result.stderr)
        return result

    def fanout(
        self, tool: str, account: str = ROBOT, targets: tuple[TokenRegistry, ...] | None = None
    ) -> subprocess.CompletedProcess[str]:
        doc: dict[str, Any] = {
            "source": {"image": self.source.ref(REPO, "1.0"), "insecure": True},
            "tags": ["1.0", "latest"],
            "tool": tool,
            "retries": 1,
            "targets": [],
        }
        for registry in targets or self.targets:
            variable = f"{registry.name.upper().replace('-', '_')}_PASSWORD"
            entry: dict[str, Any] = {"name": registry.name, "registry": registry.host, "repository": REPO}
            entry.update({"ca_file": str(registry.ca_file)} if registry.tls else {"insecure": True})
            entry.update(username=account, password_env=variable)
            self.env[variable] = registry.accounts[account].password
            doc["targets"].append(entry)
        path = self.tmp / f"{tool}-{account.replace('$', '_')}.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        result = self.authscope("fanout", "-f", str(path), "--json", str(self.report))
        self.assert_no_secrets(self.report.read_text())
        assert list(self.scopes.iterdir()) == [], "a scope outlived the fan-out"
        assert self.config.read_bytes() == self.base_before, "the base changed"
        return result

    def results(self) -> dict[str, dict[str, Any]]:
        return {t["name"]: t for t in json.loads(self.report.read_text())["targets"]}

    def oras_flags(self, registry: TokenRegistry) -> list[str]:
        # oras speaks plain HTTP to localhost unless told not to.
        tls = ["--plain-http=false", "--ca-file", str(registry.ca_file)] if registry.tls else ["--plain-http"]
        return [*tls, "--registry-config", str(self.verify_config)]

    def assert_signed(self, registry: TokenRegistry) -> None:
        self.signer.assert_signed(
            f"{registry.host}/{REPO}",
            self.digest,
            self.sbom,
            self.verify_env,
            self.oras_flags(registry),
            oras_repository=f"{oras_host(registry)}/{REPO}",
        )


@pytest.fixture
def token_signed(tmp_path: Path, e2e_env: dict[str, str], token_registry_factory: TokenRegistryFactory) -> TokenSigned:
    return TokenSigned(tmp_path, e2e_env, token_registry_factory)


def authscope_reads(registry: TokenRegistry) -> list[tuple[str, str, int]]:
    """(method, path, status) of what authscope itself asked the registry (its User-Agent)."""
    return [(s.method, s.path, s.status) for s in registry.seen if s.agent.startswith(AUTHSCOPE_AGENT)]


def authscope_tokens(registry: TokenRegistry) -> list[tuple[str | None, tuple[str, ...], int]]:
    return [(t.account, t.scopes, t.status) for t in registry.token_requests if t.agent.startswith(AUTHSCOPE_AGENT)]


@pytest.mark.parametrize("tool", TOOLS)
def test_signed_release_through_token_registries_lands_signed(token_signed: TokenSigned, tool: str) -> None:
    t = token_signed
    for registry in (t.source, *t.targets):
        registry.token_requests.clear()
        registry.seen.clear()
    result = t.fanout(tool)
    assert result.returncode == 0, result.stdout + result.stderr

    # authscope's discovery at the source: with a token for the pull account, never anonymous.
    tokens = authscope_tokens(t.source)
    assert tokens and all(account == PULLER and status == 200 for account, _, status in tokens), tokens
    assert any(f"repository:{REPO}:pull" in scopes for _, scopes, _ in tokens), tokens
    reads = authscope_reads(t.source)
    found = {path.rpartition("/")[2] for _, path, status in reads if status == 200 and "/manifests/" in path}
    assert t.tags <= found, reads  # the cosign tags and the fallback index, read with the token
    for registry in t.targets:
        # The read-back at each target: a token for the robot, then every artifact read back with it.
        tokens = authscope_tokens(registry)
        assert any(account == ROBOT and status == 200 for account, _, status in tokens), tokens
        assert {account for account, _, _ in tokens} == {ROBOT}, tokens
        landed = {path.rpartition("/")[2] for _, path, status in authscope_reads(registry) if status == 200}
        assert t.tags | {t.sbom, "1.0", "latest"} <= landed, authscope_reads(registry)
        for tag in ("1.0", "latest"):
            assert registry.manifest_digest(REPO, tag) == t.digest
        r = t.results()[registry.name]
        kinds = sorted(a.get("kind") or a.get("artifactType") for a in r["referrers"])
        assert kinds == [SPDX, "cosign attestation", "cosign signature", "cosign signature"], r["referrers"]

        # The consumer verifies with its pull account only, through the token service.
        registry.token_requests.clear()
        t.assert_signed(registry)
        asked = [(x.account, x.granted) for x in registry.token_requests]
        assert asked and all(account == PULLER for account, _ in asked), asked
        assert any((REPO, ("pull",)) in granted for _, granted in asked), asked


@pytest.mark.parametrize("tool", TOOLS)
def test_control_pull_only_target_account_fails_and_nothing_of_the_signature_lands(
    token_signed: TokenSigned, tool: str
) -> None:
    t = token_signed
    result = t.fanout(tool, account=PULLER, targets=(t.plain,))
    assert result.returncode == 1, result.stdout + result.stderr
    r = t.results()[t.plain.name]
    assert r["status"] == "failed", r
    assert "push permission" in r["hint"] and REPO in r["hint"], r
    assert r["hint"] in result.stdout
    # The token service was asked for push and gave pull only: the registry refused the write.
    pushes = [x.granted for x in t.plain.token_requests if x.account == PULLER and "push" in " ".join(x.scopes)]
    assert pushes and all(actions == ("pull",) for granted in pushes for _, actions in granted), pushes
    for ref in (*t.tags, t.sbom, "1.0", "latest"):
        assert t.plain.manifest_digest(REPO, ref) is None, ref
    rejected = t.signer.verify(f"{t.plain.host}/{REPO}@{t.digest}", t.verify_env)
    assert rejected.returncode != 0, rejected.stdout + rejected.stderr


@pytest.mark.parametrize("tool", TOOLS)
def test_a_refused_signature_push_fails_the_target_naming_it(token_signed: TokenSigned, tool: str) -> None:
    """The front refuses the PUT of the cosign signature's tag (Harbor's DENIED,
    as a tag-scoped policy would): the target fails naming the signature and
    the push permission, its further tag never moves to the unsigned image,
    and cosign rejects what landed."""
    t = token_signed
    hexdigest = t.digest.partition(":")[2]
    refusal = t.plain.add_fault(harbor_fault("push_denied", "PUT", rf"/manifests/sha256-{hexdigest}\.sig$"))
    result = t.fanout(tool, targets=(t.plain,))
    assert result.returncode == 1, result.stdout + result.stderr
    assert refusal.hits == 1, "a Harbor refusal is not retried"
    r = t.results()[t.plain.name]
    assert r["status"] == "failed", r
    assert f"referrer cosign signature sha256-{hexdigest}.sig failed" in r["error"], r
    assert "push permission" in r["hint"], r
    assert t.plain.manifest_digest(REPO, "1.0") == t.digest  # the image went first
    assert t.plain.manifest_digest(REPO, f"sha256-{hexdigest}.sig") is None
    assert t.plain.manifest_digest(REPO, "latest") is None  # the further tag waits for the referrers
    rejected = t.signer.verify(f"{t.plain.host}/{REPO}:1.0", t.verify_env)
    assert rejected.returncode != 0 and "no signatures found" in rejected.stderr.lower(), rejected.stderr

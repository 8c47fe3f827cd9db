"""Signed releases land signed (issue 14): real cosign, real oras, real crane / skopeo / regctl.

The source image of `Fleet` (tests/e2e/test_fanout.py: a local plain-HTTP
registry, targets `one` (HTTP), `two` (TLS, its CA from `ca_file:`) and
`three` (HTTP, a robot username)) is signed with `cosign sign --key`,
attested with `cosign attest --type spdxjson`, given an SBOM with `oras
attach` (an OCI 1.1 referrer: the distribution registry 2.8 has no referrers
API, so oras writes the fallback tag `sha256-<hex>`), and the SBOM is signed
too (recursion). After the fan-out, every target must pass `cosign verify`,
`cosign verify-attestation` and `oras discover`, read independently with the
verifier's own auth file. The control: the same fan-out with `referrers:
false` lands an image that `cosign verify` rejects.

The cosign key's password travels only in COSIGN_PASSWORD, never in argv.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import RegistryFactory, require_tools
from tests.e2e.test_fanout import TOOLS_BIN, Fleet, tool_path
from tests.support import CA, isolated_env
from tests.support.signing import SPDX, Cosign

TOOLS = ["crane", "skopeo", "regctl"]


class Signed:
    """A Fleet whose source is signed, attested and has an oras SBOM that is signed too (tests/support/signing.py)."""

    def __init__(self, fleet: Fleet, tmp_path: Path) -> None:
        self.fleet = fleet
        # Signing runs as the build job would: with the base's login to the source.
        env = dict(fleet.env, PATH=f"{TOOLS_BIN}{os.pathsep}{fleet.env['PATH']}")
        self.signer = Cosign(tmp_path, env, tool_path("cosign"), tool_path("oras"))
        self.cosign, self.oras, self.env = self.signer.cosign, self.signer.oras, self.signer.env
        self.key, self.pub = self.signer.key, self.signer.pub
        source = fleet.source
        self.subject = f"{fleet.local.host}/{source.repository}@{source.digest}"
        self.sbom = self.signer.sign_release(self.subject, ["--plain-http", "--registry-config", self.base_config])

        # The verifier's own environment and auth file: every target's login.
        self.verify_env = isolated_env(tmp_path / "verify-env")
        self.verify_env["PATH"] = self.env["PATH"]
        self.verify_env["SSL_CERT_FILE"] = str(fleet.ca.cert)  # target two's CA
        auths = {
            r.host: {"auth": base64.b64encode(f"{r.username}:{r.password}".encode()).decode()}
            for r in (fleet.local, *fleet.targets.values())
        }
        self.verify_config = tmp_path / "verify-env" / "docker-config.json"
        self.verify_config.write_text(json.dumps({"auths": auths}))
        Path(self.verify_env["DOCKER_CONFIG"], "config.json").write_text(json.dumps({"auths": auths}))

    @property
    def base_config(self) -> str:
        return str(self.fleet.base)

    def at(self, name: str, ref: str = "1.0") -> str:
        registry = self.fleet.targets[name]
        repo = self.fleet.repos[name]
        return f"{registry.host}/{repo}{'@' if ref.startswith('sha256:') else ':'}{ref}"

    def cosign_verify(
        self, name: str, ref: str = "1.0", *, attestation: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return self.signer.verify(self.at(name, ref), self.verify_env, attestation=attestation)

    def oras_flags(self, name: str) -> list[str]:
        tls = ["--ca-file", str(self.fleet.ca.cert)] if name == "two" else ["--plain-http"]
        return [*tls, "--registry-config", str(self.verify_config)]

    def oras_discover(self, name: str) -> dict[str, Any]:
        return self.signer.discover(self.at(name, self.fleet.source.digest), self.verify_env, self.oras_flags(name))

    def assert_signed(self, name: str) -> None:
        repository = f"{self.fleet.targets[name].host}/{self.fleet.repos[name]}"
        self.signer.assert_signed(
            repository, self.fleet.source.digest, self.sbom, self.verify_env, self.oras_flags(name)
        )

    def targets_file(self, tool: str, **changes: Any) -> Path:
        path = self.fleet.targets_file(tool)
        if changes:
            doc = yaml.safe_load(path.read_text())
            doc.update(changes)
            path = path.with_name(f"{tool}-changed.yml")
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path


@pytest.fixture
def signed(tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory, ca: CA) -> Signed:
    require_tools("skopeo", "openssl")
    tool_path("cosign"), tool_path("oras")
    return Signed(Fleet(tmp_path, e2e_env, registry_factory, ca), tmp_path)


@pytest.mark.parametrize("tool", TOOLS)
def test_signed_release_lands_signed_at_every_target(tool: str, signed: Signed) -> None:
    tool_path(tool)
    fleet = signed.fleet
    result = fleet.fanout(signed.targets_file(tool))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in fleet.targets:
        signed.assert_signed(name)
        for tag in ("1.0", "latest"):
            assert fleet.digest(name, tag) == fleet.source.digest  # digests unchanged
    # Reports: what was copied, per target.
    doc = fleet.report()
    for target in doc["targets"]:
        kinds = sorted(a.get("kind") or a.get("artifactType") for a in target["referrers"])
        assert kinds == [SPDX, "cosign attestation", "cosign signature", "cosign signature"], target["referrers"]
        assert not target["referrers_off"]
    table = result.stdout[result.stdout.index("target  tags") :]
    assert [line.split()[3] for line in table.splitlines()[2:5]] == ["4", "4", "4"]
    for case in fleet.junit_cases().values():
        assert "referrers: 4 copied and read back" in (case.findtext("system-out") or "")
    assert fleet.base.read_bytes() == fleet.base_before


@pytest.mark.parametrize("tool", ["crane", "skopeo"])
def test_control_referrers_false_lands_an_image_cosign_rejects(tool: str, signed: Signed) -> None:
    tool_path(tool)
    fleet = signed.fleet
    result = fleet.fanout(signed.targets_file(tool, referrers=False))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in fleet.targets:
        assert fleet.digest(name, "1.0") == fleet.source.digest  # the image landed
        rejected = signed.cosign_verify(name)
        assert rejected.returncode != 0 and "no signatures found" in rejected.stderr.lower(), rejected.stderr
    doc = fleet.report()
    assert all(t["referrers_off"] and t["referrers"] == [] for t in doc["targets"])
    assert "referrers: off" in result.stdout
    # And --referrers on the command line overrides the file: signed again.
    again = fleet.fanout(signed.targets_file(tool, referrers=False), "--referrers")
    assert again.returncode == 0, again.stdout + again.stderr
    signed.assert_signed("two")


@pytest.mark.parametrize("tool", ["crane", "regctl", "skopeo"])
def test_pull_once_carries_the_referrers_and_reads_the_source_once(tool: str, signed: Signed) -> None:
    tool_path(tool)
    fleet = signed.fleet
    log = fleet.local.log_path
    start = log.stat().st_size
    result = fleet.fanout(signed.targets_file(tool, pull_once=True))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in fleet.targets:
        signed.assert_signed(name)
    # Each blob of the source (the image's and every artifact's) was read once, not once per target.
    reads: dict[str, int] = {}
    for line in log.read_text(errors="replace")[start:].splitlines():
        if '"GET /v2/app/blobs/sha256:' in line and '" 200 ' in line:
            blob = line.split("/blobs/")[1].split()[0]
            reads[blob] = reads.get(blob, 0) + 1
    assert reads and max(reads.values()) == 1, reads


def test_fail_closed_when_a_tool_drops_an_attestation(signed: Signed, tmp_path: Path) -> None:
    """A crane that says it copied the attestation and did not: every target
    fails (exit 1), naming it; the control shows the damage it caught."""
    real = tool_path("crane")
    bin_dir = tmp_path / "hostile-bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "crane"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *.att*) echo "copied (not really)"; exit 0;; esac\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    fleet = signed.fleet
    env = dict(fleet.env, PATH=f"{bin_dir}{os.pathsep}{fleet.env['PATH']}")
    result = fleet.fanout(signed.targets_file("crane"), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    att_tag = f"sha256-{fleet.source.digest.partition(':')[2]}.att"
    for target in fleet.report()["targets"]:
        assert target["status"] == "failed"
        assert "did not reach" in target["error"] and f"cosign attestation {att_tag}" in target["error"]
        assert "cosign signature" not in target["error"]  # only what is missing is named
    # Control: what the check caught is real: the signature verifies, the attestation does not.
    for name in fleet.targets:
        assert signed.cosign_verify(name).returncode == 0
        assert signed.cosign_verify(name, attestation=True).returncode != 0


def test_custom_tool_targets_get_the_referrers_through_crane(signed: Signed) -> None:
    tool_path("crane"), tool_path("regctl")
    fleet = signed.fleet
    # The custom command copies the image with regctl; the referrers go with crane, in the same scope.
    path = fleet.custom_file(
        "custom-signed",
        {name: ["regctl", "image", "copy", "{source}", "{destination}"] for name in ("one", "three")},
    )
    env = dict(fleet.env, REGCTL_CONFIG=str(fleet.tmp / "regctl.json"))
    hosts = {
        fleet.local.host: {"tls": "disabled"},
        fleet.one.host: {"tls": "disabled"},
        fleet.three.host: {"tls": "disabled"},
    }
    (fleet.tmp / "regctl.json").write_text(json.dumps({"hosts": hosts}))
    result = fleet.fanout(path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "$ crane push" in result.stdout  # from the layouts the referrers were fetched into once
    for name in ("one", "three"):
        signed.assert_signed(name)

"""Signed releases with `tool: podman` and `tool: buildah` land signed (issue 14).

podman and buildah push the image from each target's own storage in its
scope (tests/e2e/test_podman_buildah.py); its referrers (the cosign
signature, the attestation, an oras SBOM and the SBOM's signature) go with
skopeo in the same scope (`tools.referrer_tool`), by digest, so that no
artifact is compressed afresh. The source is what a team that builds with
podman or buildah has: a one-platform image pushed with buildah
(`publish_with_buildah`), whose layers containers/image compressed, so the
push from storage lands the very digest the signatures name (docs/tools.md).

Signed with real cosign (`generate-key-pair`, `sign --key
--tlog-upload=false`, `attest --type spdxjson`) and real `oras attach`
(tests/support/signing.py). After the fan-out (two targets at once, plain
HTTP and TLS with a CA file), every target passes `cosign verify --key`,
`cosign verify-attestation --key --type spdxjson` and `oras discover`, read
with the verifier's own logins in its own environment; the base Docker
config and the runner's containers auth file keep every byte. The control:
the same fan-out with `referrers: false` lands the image, and `cosign
verify` rejects it. And the order: the referrers follow the image's first
push (they used to follow the pull, so a target that refused the image's
push was left holding its signature and SBOM).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import RegistryFactory
from tests.e2e.fanout_helpers import Release, Target, tool_paths
from tests.e2e.test_podman_buildah import TOOLS, fanout, new_release, publish_with_buildah, runner_auth, targets_file
from tests.support import isolated_env
from tests.support.signing import SPDX, Cosign


class SignedBuild:
    """A Release whose buildah-built source is signed, attested and has a signed oras SBOM."""

    def __init__(self, tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory, tool: str) -> None:
        self.tool = tool
        self.release: Release = new_release(tmp_path, e2e_env, registry_factory, tool, "buildah", "skopeo")
        release = self.release
        self.ref, self.digest = publish_with_buildah(release, tmp_path)
        paths = tool_paths("cosign", "oras")
        # Signing runs as the build job would: with the base's login to the source.
        self.signer = Cosign(tmp_path / "signing", release.env, paths["cosign"], paths["oras"])
        subject = f"{release.local.host}/built/app@{self.digest}"
        self.sbom = self.signer.sign_release(subject, ["--plain-http", "--registry-config", str(release.config)])

        # The verifier: its own environment, its own logins (every registry's), the TLS target's CA.
        self.verify_env = isolated_env(tmp_path / "cosign-verify-env")
        self.verify_env["PATH"] = release.env["PATH"]
        self.verify_env["SSL_CERT_FILE"] = release.env["SSL_CERT_FILE"]
        self.verify_config = Path(self.verify_env["DOCKER_CONFIG"]) / "config.json"
        self.verify_config.write_bytes(release.verify_auth.read_bytes())

    def repository(self, target: Target) -> str:
        return f"{target.host}/release/app"

    def oras_flags(self, target: Target) -> list[str]:
        ca = target.registry.ca_file
        return [*(["--ca-file", str(ca)] if ca else ["--plain-http"]), "--registry-config", str(self.verify_config)]

    def assert_signed(self, target: Target) -> None:
        self.signer.assert_signed(
            self.repository(target), self.digest, self.sbom, self.verify_env, self.oras_flags(target)
        )

    def targets_file(self, **changes: object) -> Path:
        path = targets_file(self.release, self.tool, self.ref)
        if changes:
            doc = yaml.safe_load(path.read_text())
            doc.update(changes)
            path = path.with_name(f"{self.tool}-changed.yml")
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path


@pytest.fixture(params=TOOLS)
def signed_build(
    request: pytest.FixtureRequest, tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> SignedBuild:
    return SignedBuild(tmp_path, e2e_env, registry_factory, request.param)


def test_signed_release_with_podman_or_buildah_lands_signed_at_every_target(signed_build: SignedBuild) -> None:
    release, tool = signed_build.release, signed_build.tool
    runner = runner_auth(release)
    base_before, runner_before = release.config.read_bytes(), runner.read_bytes()
    report = release.tmp_path / "fanout.json"
    result = fanout(release, signed_build.targets_file(), "--json", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "success, 2/2 targets landed" in result.stdout
    # The image from storage with the tool itself; the referrers by digest with skopeo, in the same scope.
    assert f"$ {tool} " in result.stdout and "push" in result.stdout
    hexdigest = signed_build.digest.partition(":")[2]
    lines = result.stdout.splitlines()
    for target in release.targets:
        for what in (f"sha256-{hexdigest}.sig", f"sha256-{hexdigest}.att", f"@{signed_build.sbom}"):
            copies = [line for line in lines if "$ skopeo copy" in line and what in line]
            assert any(target.host in line for line in copies), (target.host, what, result.stdout)
        # In order: the image's first push, then its referrers, then the further tag.
        mine = [line for line in lines if f"docker://{target.host}/release/app" in line and " $ " in line]
        order = [("skopeo" if "$ skopeo" in line else line.rpartition(":")[2]) for line in mine]
        assert order == ["1.0", "skopeo", "skopeo", "skopeo", "skopeo", "latest"], mine
        for tag in ("1.0", "latest"):
            assert target.registry.manifest_digest("release/app", tag) == signed_build.digest, (target.host, tag)
        signed_build.assert_signed(target)
    doc = json.loads(report.read_text())
    for entry in doc["targets"]:
        kinds = sorted(a.get("kind") or a.get("artifactType") for a in entry["referrers"])
        assert kinds == [SPDX, "cosign attestation", "cosign signature", "cosign signature"], entry["referrers"]
    assert release.config.read_bytes() == base_before
    assert runner.read_bytes() == runner_before


def test_control_referrers_false_with_podman_or_buildah_lands_an_image_cosign_rejects(
    signed_build: SignedBuild,
) -> None:
    release = signed_build.release
    base_before = release.config.read_bytes()
    result = fanout(release, signed_build.targets_file(referrers=False))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "referrers: off" in result.stdout
    for target in release.targets:
        assert target.registry.manifest_digest("release/app", "1.0") == signed_build.digest  # the image landed
        repository = signed_build.repository(target)
        rejected = signed_build.signer.verify(f"{repository}:1.0", signed_build.verify_env)
        assert rejected.returncode != 0 and "no signatures found" in rejected.stderr.lower(), rejected.stderr
        ref = f"{repository}@{signed_build.digest}"
        listed = signed_build.signer.discover(ref, signed_build.verify_env, signed_build.oras_flags(target))
        assert not (listed.get("referrers") or listed.get("manifests")), listed
    assert release.config.read_bytes() == base_before


def test_a_refused_image_push_leaves_nothing_of_the_signature_at_the_target(
    signed_build: SignedBuild, tmp_path: Path
) -> None:
    """The target refuses the image's push (here a podman / buildah whose push
    fails, as at an immutable tag or a full quota): the target fails, and
    neither the signatures nor the SBOM land there, since they go only after
    the image's first push. (Copied right after the pull, as before, they all
    landed at a target that never got the image.)"""
    release, tool = signed_build.release, signed_build.tool
    bin_dir = tmp_path / "refusing-bin"
    bin_dir.mkdir()
    wrapper = bin_dir / tool
    real = tool_paths(tool)[tool]
    wrapper.write_text(
        '#!/bin/sh\ncase " $* " in *" push "*) echo "Error: requested access to the resource is denied" >&2; exit 125;; esac\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    result = fanout(release, signed_build.targets_file(), PATH=f"{bin_dir}:{release.env['PATH']}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0/2 targets landed" in result.stdout
    hexdigest = signed_build.digest.partition(":")[2]
    for target in release.targets:
        for ref in ("1.0", "latest", f"sha256-{hexdigest}.sig", f"sha256-{hexdigest}.att", f"sha256-{hexdigest}"):
            assert target.registry.manifest_digest("release/app", ref) is None, (target.host, ref)
        assert target.registry.manifest_digest("release/app", signed_build.sbom) is None, target.host
    # No referrer copy to a target was even tried (the run's one fetch of the
    # referrers from the source into local layouts, "[prefetch]", writes no target).
    tried = [line for line in result.stdout.splitlines() if "$ skopeo copy" in line and "[prefetch]" not in line]
    assert tried == []


def test_without_skopeo_a_podman_or_buildah_target_says_what_it_copies(
    signed_build: SignedBuild, tmp_path: Path
) -> None:
    """The job's image has podman (or buildah) but no skopeo: the image lands,
    the referrer copies cannot run, and each target fails with a hint that
    says skopeo copies the signatures of podman/buildah targets and how to
    land the image alone (it used to say "choose another tool:")."""
    release, tool = signed_build.release, signed_build.tool
    bin_dir = tmp_path / "no-skopeo-bin"
    bin_dir.mkdir()
    for directory in release.env["PATH"].split(os.pathsep):
        if os.path.isdir(directory):
            for name in os.listdir(directory):
                if name != "skopeo" and not (bin_dir / name).exists():
                    (bin_dir / name).symlink_to(os.path.join(directory, name))
    report = tmp_path / "fanout.json"
    result = fanout(release, signed_build.targets_file(), "--json", str(report), PATH=str(bin_dir))
    assert result.returncode == 1, result.stdout + result.stderr
    for entry in json.loads(report.read_text())["targets"]:
        assert entry["status"] == "failed" and "command not found: skopeo" in entry["error"], entry
        assert entry["hint"] == (
            f"install skopeo in the job's image: it copies the signatures, attestations and SBOMs of "
            f"tool: {tool} targets; or set referrers: false on target {entry['name']} to land the image alone"
        ), entry
    for target in release.targets:
        assert target.registry.manifest_digest("release/app", "1.0") == signed_build.digest  # the image went first
        assert target.registry.manifest_digest("release/app", "latest") is None  # its further tag waits

"""Real cosign and oras for the signed-release end-to-end tests (issue 14).

`Cosign` holds a key pair made with `cosign generate-key-pair` and signs a
release as a build job does: `cosign sign --key`, `cosign attest --type
spdxjson`, an SBOM attached with `oras attach` (an OCI 1.1 referrer: the
distribution registry 2.8 has no referrers API, so oras writes the fallback
tag `sha256-<hex>`), and the SBOM signed too (recursion). It verifies a
target as a consumer does: `cosign verify --key`, `cosign verify-attestation
--key --type spdxjson` and `oras discover`, in the verifier's own
environment and with the verifier's own logins.

The key's password travels only in COSIGN_PASSWORD, never in argv; every
run asserts it was not printed. No transparency log: `--tlog-upload=false`
to sign, `--insecure-ignore-tlog=true` to verify.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SPDX = "application/spdx+json"
SIGN_FLAGS = ("--tlog-upload=false", "--allow-http-registry", "--allow-insecure-registry")
VERIFY_FLAGS = ("--insecure-ignore-tlog=true", "--allow-http-registry")

SBOM = {
    "spdxVersion": "SPDX-2.3",
    "SPDXID": "SPDXRef-DOCUMENT",
    "name": "app",
    "dataLicense": "CC0-1.0",
    "documentNamespace": "https://example.invalid/app",
    "creationInfo": {"created": "2024-01-01T00:00:00Z", "creators": ["Tool: authscope-e2e"]},
    "packages": [],
}


class Cosign:
    """A cosign key pair under ``workdir/keys``, and the environment that signs with it.

    ``env`` is the signer's (a build job's: its DOCKER_CONFIG holds the login
    to the source); ``cosign`` and ``oras`` are the tools' paths.
    """

    def __init__(self, workdir: Path, env: Mapping[str, str], cosign: str, oras: str) -> None:
        self.cosign, self.oras = cosign, oras
        self.workdir = workdir
        keys = workdir / "keys"
        keys.mkdir(parents=True)
        self.env = dict(env)
        self.env["COSIGN_PASSWORD"] = "test-" + os.urandom(6).hex()
        self.run([cosign, "generate-key-pair"], cwd=keys)
        self.key, self.pub = keys / "cosign.key", keys / "cosign.pub"
        self.sbom_file = workdir / "sbom.spdx.json"
        self.sbom_file.write_text(json.dumps(SBOM))

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a tool; asserts the key's password was not printed (and, with ``check``, exit 0)."""
        result = subprocess.run(
            list(argv),
            env=dict(self.env if env is None else env),
            cwd=cwd,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert self.env["COSIGN_PASSWORD"] not in result.stdout + result.stderr
        if check:
            assert result.returncode == 0, f"{list(argv[:3])}: {result.stdout}{result.stderr}"
        return result

    def sign_release(self, subject: str, oras_flags: Sequence[str], oras_subject: str = "") -> str:
        """Sign and attest ``subject`` (HOST/REPO@DIGEST), attach the SBOM, sign the SBOM: its digest.

        ``oras_flags``: how oras reaches the registry (``--plain-http``,
        ``--ca-file``, ``--registry-config``); ``oras_subject``: the subject
        as oras names it, if not as cosign does."""
        cosign = self.cosign
        self.run([cosign, "sign", "--yes", "--key", str(self.key), *SIGN_FLAGS, subject])
        predicate = ["--type", "spdxjson", "--predicate", str(self.sbom_file)]
        self.run([cosign, "attest", "--yes", "--key", str(self.key), *predicate, *SIGN_FLAGS, subject])
        out = self.run(
            [
                self.oras,
                "attach",
                *oras_flags,
                "--artifact-type",
                SPDX,
                "--format",
                "json",
                oras_subject or subject,
                f"{self.sbom_file.name}:{SPDX}",
            ],
            cwd=self.sbom_file.parent,
        ).stdout
        sbom = str(json.loads(out)["digest"])
        repository = subject.partition("@")[0]
        self.run([cosign, "sign", "--yes", "--key", str(self.key), *SIGN_FLAGS, f"{repository}@{sbom}"])
        return sbom

    # -- verifying ----------------------------------------------------------------------

    def verify(
        self, ref: str, env: Mapping[str, str], *, attestation: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """`cosign verify` (or `verify-attestation --type spdxjson`) of ``ref`` with the public key; not checked."""
        what = ["verify-attestation", "--type", "spdxjson"] if attestation else ["verify"]
        return self.run([self.cosign, *what, "--key", str(self.pub), *VERIFY_FLAGS, ref], env=env, check=False)

    def discover(self, ref: str, env: Mapping[str, str], oras_flags: Sequence[str]) -> dict[str, Any]:
        """`oras discover --format json` of ``ref`` (HOST/REPO@DIGEST); asserts exit 0."""
        argv = [self.oras, "discover", *oras_flags, "--format", "json", ref]
        return dict(json.loads(self.run(argv, env=env).stdout))

    def assert_signed(
        self,
        repository: str,
        digest: str,
        sbom: str,
        env: Mapping[str, str],
        oras_flags: Sequence[str],
        tag: str = "1.0",
        oras_repository: str = "",
    ) -> None:
        """At ``repository`` (HOST/REPO; ``oras_repository`` as oras names
        it, if not so): ``tag`` verifies and its attestation too, oras lists
        the SBOM as a referrer of ``digest``, and the SBOM's signature verifies."""
        verified = self.verify(f"{repository}:{tag}", env)
        assert verified.returncode == 0, (repository, verified.stderr)
        attested = self.verify(f"{repository}:{tag}", env, attestation=True)
        assert attested.returncode == 0, (repository, attested.stderr)
        discovered = self.discover(f"{oras_repository or repository}@{digest}", env, oras_flags)
        listed = discovered.get("referrers") or discovered.get("manifests") or []
        assert sbom in [r["digest"] for r in listed], (repository, discovered)
        sbom_signed = self.verify(f"{repository}@{sbom}", env)  # the signature of the SBOM came along too
        assert sbom_signed.returncode == 0, (repository, sbom_signed.stderr)

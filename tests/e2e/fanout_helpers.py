"""A release fan-out against real registries, for the per-tool e2e tests.

`Release` sets up what a GitLab release job has: a "local" registry holding
the source image, target registries (one of them over TLS by default), and a
base Docker config holding the local login, made with `authscope login`.
Tests then run each target's login / copy / logout either inside a scope
(`Release.exec`) or, for the control, directly on the base (`Release.sh`).

Secrets never reach argv: every password travels in an environment variable
(`TARGET_PASSWORD`, `LOCAL_PASSWORD`) and scripts pipe it into the tool's
`--password-stdin`. Every `Release.authscope` call asserts that no test secret,
raw or as the base64 `user:password` of an `auths` entry, appears in what
authscope printed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.conftest import RegistryFactory, require_tools
from tests.support import Registry, SkopeoError, SourceImage, isolated_env, publish_image, skopeo_digest, write_authfile

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
FIXTURE_BIN = REPO_ROOT / "tests" / "fixtures" / "bin"
AUTHSCOPE = [sys.executable, "-m", "authscope"]

# What the report shows a logout leaving behind, done the bluntest way.
WIPE = 'echo \'{"auths":{}}\' > "$DOCKER_CONFIG/config.json"'
# Top-level keys a base may carry that not every tool knows: the docker CLI's
# own HttpHeaders, and a key no tool knows.
UNKNOWN_KEYS: dict[str, Any] = {"HttpHeaders": {"X-Release": "authscope-e2e"}, "x-custom": {"keep": [1, 2]}}
# How crane, skopeo, regctl and docker report a 401.
UNAUTHORIZED = re.compile(r"unauthorized|authentication required|invalid username/password", re.IGNORECASE)
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


def tool_paths(*names: str) -> dict[str, str]:
    """Absolute paths of `names`, looked up with the repo's .tools/bin first.

    A missing tool skips the test locally and fails it under CI=true
    (`require_tools`), so CI cannot go green by skipping.
    """
    search = f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    found = {name: shutil.which(name, path=search) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        require_tools(*missing)  # not on PATH either: skips, or fails under CI=true
    return {name: path or name for name, path in found.items()}


def b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def q(value: str | Path) -> str:
    """Shell-quote a non-secret value (a path, a host) for a script."""
    return shlex.quote(str(value))


@dataclass(frozen=True)
class Target:
    registry: Registry
    repository: str = "release/app"

    @property
    def host(self) -> str:
        return self.registry.host

    @property
    def dst(self) -> str:
        return f"{self.registry.host}/{self.repository}:1.0"


class Release:
    """One release job: a local registry with the source image, targets, a base."""

    def __init__(
        self,
        tmp_path: Path,
        e2e_env: Mapping[str, str],
        registry_factory: RegistryFactory,
        *,
        targets: Sequence[bool] = (False, True),
        local_user: str = "ci-user",
        target_user: str = "ci-user",
        base_in_home: bool = False,
        base_extra: Mapping[str, Any] | None = None,
        login: bool = True,
        extra_path: Iterable[Path] = (),
    ) -> None:
        """`targets`: one bool per target registry, True for TLS.

        `base_in_home`: the base is ~/.docker and DOCKER_CONFIG is unset in the
        job's environment. `base_extra`: top-level keys written into the base
        before `authscope login` (default: `UNKNOWN_KEYS`). `login=False`
        leaves the base to the test.
        """
        tool_paths("skopeo")  # publishes the source image and verifies digests
        self.tmp_path = tmp_path
        self.local = registry_factory("local", username=local_user)
        self.source: SourceImage = publish_image(self.local, tmp_path / "source", e2e_env)
        self.targets = [
            Target(registry_factory(f"remote-{i}", tls=tls, username=target_user))
            for i, tls in enumerate(targets, start=1)
        ]
        env = dict(e2e_env)
        env["PATH"] = os.pathsep.join([*(str(p) for p in extra_path), str(TOOLS_BIN), env["PATH"]])
        env["LANG"] = "C.UTF-8"
        scopes = tmp_path / "scopes"
        scopes.mkdir(mode=0o700)
        env["AUTHSCOPE_SCOPE_DIR"] = str(scopes)
        env["SRC"] = self.source.ref
        env["LOCAL"] = self.local.host
        env["LOCAL_USER"] = self.local.username
        env["LOCAL_PASSWORD"] = self.local.password
        if any(t.registry.tls for t in self.targets):
            env["SSL_CERT_FILE"] = str(self._ca_bundle())
        if base_in_home:
            self.base = Path(env["HOME"]) / ".docker"
            del env["DOCKER_CONFIG"]
        else:
            self.base = Path(env["DOCKER_CONFIG"])
        self.env = env
        self.config = self.base / "config.json"

        # Verification reads with its own auth file, in its own environment,
        # so it can neither use nor disturb the base.
        self.verify_env = isolated_env(tmp_path / "verify-env")
        every = [self.local, *(t.registry for t in self.targets)]
        self.verify_auth = write_authfile(tmp_path / "verify" / "auth.json", {r.host: r.credentials for r in every})
        self.secrets = sorted({s for r in every for s in (r.password, b64(r.username, r.password))})

        if login:
            self.base.mkdir(mode=0o700, exist_ok=True)
            extra = dict(UNKNOWN_KEYS if base_extra is None else base_extra)
            self.config.write_text(json.dumps({"auths": {}, **extra}, indent="\t") + "\n")
            self.config.chmod(0o600)
            result = self.authscope(
                "login", self.local.host, "-u", self.local.username, "--password-env", "LOCAL_PASSWORD"
            )
            assert result.returncode == 0, result.stderr
            assert self.auths()[self.local.host] == {"auth": b64(self.local.username, self.local.password)}

    def _ca_bundle(self) -> Path:
        """The system roots plus the test CA: Go reads SSL_CERT_FILE instead of the system file."""
        ca = next(t.registry.ca_file for t in self.targets if t.registry.ca_file is not None)
        parts = [Path(p).read_bytes() for p in SYSTEM_CA_BUNDLES if Path(p).is_file()][:1]
        bundle = self.tmp_path / "ca-bundle.pem"
        bundle.write_bytes(b"".join(parts) + b"\n" + Path(ca).read_bytes())
        return bundle

    # -- reading the base ----------------------------------------------------------

    def read(self) -> dict[str, Any]:
        return json.loads(self.config.read_text()) if self.config.exists() else {}

    def auths(self) -> dict[str, Any]:
        return dict(self.read().get("auths", {}))

    # -- running ---------------------------------------------------------------------

    def assert_no_secrets(self, *outputs: str) -> None:
        for output in outputs:
            for secret in self.secrets:
                assert secret not in output, "a test secret was printed"

    def authscope(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The real CLI in its own process; asserts it printed no secret."""
        result = subprocess.run(
            [*AUTHSCOPE, *args],
            env=dict(self.env if env is None else env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        self.assert_no_secrets(result.stdout, result.stderr)
        return result

    def target_env(self, target: Target, **extra: str) -> dict[str, str]:
        env = dict(self.env)
        env.update(
            TARGET=target.host,
            TARGET_USER=target.registry.username,
            TARGET_PASSWORD=target.registry.password,
            DST=target.dst,
        )
        env.update(extra)
        return env

    def exec(
        self, target: Target, script: str, *options: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`authscope exec --registry TARGET -u USER --password-env TARGET_PASSWORD [options] -- sh -c script`."""
        result = self.authscope(
            "exec",
            "--registry",
            target.host,
            "-u",
            target.registry.username,
            "--password-env",
            "TARGET_PASSWORD",
            *options,
            "--",
            "sh",
            "-c",
            script,
            env=self.target_env(target) if env is None else env,
        )
        assert not self.scopes_left(), "a scope outlived its command"
        return result

    def sh(
        self, script: str, target: Target | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The control: `sh -c script` with the job's environment, DOCKER_CONFIG = base."""
        if env is None:
            env = self.target_env(target) if target is not None else self.env
        return subprocess.run(
            ["sh", "-c", script],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def scopes_left(self) -> list[Path]:
        return list(Path(self.env["AUTHSCOPE_SCOPE_DIR"]).iterdir())

    # -- verifying -----------------------------------------------------------------

    def digest(self, target: Target, ref: str | None = None) -> str | None:
        """The manifest digest at `ref` (default: the target's DST) read with skopeo, or None."""
        try:
            return skopeo_digest(
                ref or target.dst, self.verify_auth, self.verify_env, cert_dir=target.registry.cert_dir
            )
        except SkopeoError as exc:
            if "manifest unknown" in exc.stderr or "not found" in exc.stderr:
                return None
            raise

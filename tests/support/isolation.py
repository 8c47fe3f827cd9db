"""Isolated environments for registry clients, and skopeo wrappers.

Registry clients look for credentials far beyond the file they are given.
skopeo 1.9 (containers/image 5.23), for a registry that `--authfile F` has no
entry for, goes on to `$XDG_CONFIG_HOME/containers/auth.json`, then
`$DOCKER_CONFIG/config.json` (`~/.docker/config.json` only when DOCKER_CONFIG
is unset), then `~/.dockercfg` (checked on this machine; see
test_support_smoke). Without `--authfile` it starts at `$REGISTRY_AUTH_FILE`
or `$XDG_RUNTIME_DIR/containers/auth.json`. A test run with the developer's
or the CI runner's environment can therefore pass on ambient credentials, or
write into them. `isolated_env` points every one of those locations into a
test directory.

The skopeo wrappers take credentials only from an auth file: `--creds` would
put the password in argv, where any process on the host can read it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

# Variables that would make a client read or write credentials or trust
# settings outside the isolated root, or hand real CI secrets to a test.
LEAKY_VARIABLES = frozenset(
    {
        "REGISTRY_AUTH_FILE",  # containers/image auth file override
        "DOCKER_AUTH_CONFIG",  # GitLab runner: inline docker config JSON
        "DOCKER_CERT_PATH",
        "DOCKER_TLS_VERIFY",
        "DOCKER_HOST",
        "CONTAINERS_CONF",
        "CONTAINERS_REGISTRIES_CONF",
        "CONTAINERS_STORAGE_CONF",
        "CI_JOB_TOKEN",
        "CI_REGISTRY_PASSWORD",
        "CI_REGISTRY_USER",
        "CI_DEPLOY_PASSWORD",
        "CI_DEPLOY_USER",
        "CI_DEPENDENCY_PROXY_PASSWORD",
        "CI_DEPENDENCY_PROXY_USER",
    }
)
# Prefixes dropped wholesale: distribution maps REGISTRY_* onto its config,
# and AUTHSCOPE_* (e.g. AUTHSCOPE_SCOPE_DIR) must come from the test itself.
LEAKY_PREFIXES = ("REGISTRY_", "AUTHSCOPE_")

# An accept-anything signature policy. skopeo refuses to run without one, and
# minimal CI images often lack /etc/containers/policy.json.
_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


def isolated_env(root: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment whose home, XDG, temp and Docker config dirs all live in `root`.

    Starts from `base` (default: `os.environ`) minus `LEAKY_VARIABLES` and
    `LEAKY_PREFIXES`; PATH and everything else is kept. Layout under `root`:
    `home/` (HOME), `home/.config` (XDG_CONFIG_HOME, with a permissive
    `containers/policy.json`), `home/.local/share`, `home/.cache`, `run/`
    (XDG_RUNTIME_DIR, 0700), `tmp/` (TMPDIR) and `docker/` (DOCKER_CONFIG,
    deliberately not `home/.docker`, so a tool that ignores DOCKER_CONFIG
    leaves visible evidence in `home/.docker`). No config.json is created.
    """
    source = os.environ if base is None else base
    env = {
        key: value for key, value in source.items() if key not in LEAKY_VARIABLES and not key.startswith(LEAKY_PREFIXES)
    }
    root = root.resolve()
    home = root / "home"
    dirs = {
        "HOME": home,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_RUNTIME_DIR": root / "run",
        "TMPDIR": root / "tmp",
        "DOCKER_CONFIG": root / "docker",
    }
    for key, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        # XDG_RUNTIME_DIR must be 0700 per the XDG spec (podman checks); the
        # others are private too, as they may receive credentials.
        path.chmod(0o700)
        env[key] = str(path)
    policy = home / ".config" / "containers" / "policy.json"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(json.dumps(_POLICY))
    return env


def write_authfile(path: Path, credentials: Mapping[str, tuple[str, str]]) -> Path:
    """Write a Docker-format auth file (0600) for `{host: (username, password)}`."""
    auths = {
        host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
        for host, (user, password) in credentials.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"auths": auths}, f, indent=2)
    path.chmod(0o600)
    return path


class SkopeoError(RuntimeError):
    """Raised when skopeo exits non-zero; carries argv (secret-free) and stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"skopeo exited {returncode}: {' '.join(argv)}\n{stderr.strip()}")


def _docker_ref(ref: str) -> str:
    return ref if ref.startswith("docker://") else f"docker://{ref}"


def _tls_args(prefix: str, cert_dir: Path | None, tls_verify: bool | None) -> list[str]:
    # skopeo's default is to verify. With a cert dir we verify against the CA
    # in it (a `ca.crt`; containers/image reads *.crt as CAs and *.cert/*.key
    # as client pairs). Without one we assume a plain-HTTP test registry:
    # --tls-verify=false makes skopeo try HTTPS, then fall back to HTTP.
    verify = cert_dir is not None if tls_verify is None else tls_verify
    args = [f"--{prefix}tls-verify={'true' if verify else 'false'}"]
    if cert_dir is not None:
        args += [f"--{prefix}cert-dir", str(cert_dir)]
    return args


def run_skopeo(
    args: list[str], env: Mapping[str, str], *, timeout: float = 300.0
) -> subprocess.CompletedProcess[bytes]:
    """Run `skopeo ARGS` with `env`; raise SkopeoError on failure."""
    argv = ["skopeo", *args]
    proc = subprocess.run(
        argv, env=dict(env), stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=timeout
    )
    if proc.returncode != 0:
        raise SkopeoError(argv, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def skopeo_push(
    layout: Path,
    tag: str,
    dest_ref: str,
    authfile: Path,
    env: Mapping[str, str],
    ca_dir: Path | None = None,
    *,
    tls_verify: bool | None = None,
    timeout: float = 300.0,
) -> str:
    """Copy `oci:LAYOUT:TAG` to `docker://DEST_REF`; return the pushed manifest digest.

    `dest_ref` is `HOST/REPO:TAG` (a `docker://` prefix is accepted). TLS is
    verified against `ca_dir/ca.crt` when `ca_dir` is given, else not at all
    (plain-HTTP registry) unless `tls_verify` says otherwise.
    `--preserve-digests` makes skopeo fail rather than silently convert the
    manifest, so the returned digest is the layout's.
    """
    fd, name = tempfile.mkstemp(prefix="skopeo-digest-", dir=env.get("TMPDIR"))
    os.close(fd)
    digestfile = Path(name)
    args = [
        "copy",
        "--preserve-digests",
        "--digestfile",
        str(digestfile),
        "--dest-authfile",
        str(authfile),
        *_tls_args("dest-", ca_dir, tls_verify),
        f"oci:{layout}:{tag}",
        _docker_ref(dest_ref),
    ]
    try:
        run_skopeo(args, env, timeout=timeout)
        return digestfile.read_text().strip()
    finally:
        digestfile.unlink(missing_ok=True)


def skopeo_raw_manifest(
    ref: str,
    authfile: Path,
    env: Mapping[str, str],
    *,
    cert_dir: Path | None = None,
    tls_verify: bool | None = None,
    timeout: float = 120.0,
) -> bytes:
    """The manifest bytes exactly as the registry serves them (`skopeo inspect --raw`)."""
    args = ["inspect", "--raw", "--authfile", str(authfile), *_tls_args("", cert_dir, tls_verify), _docker_ref(ref)]
    return run_skopeo(args, env, timeout=timeout).stdout


def skopeo_digest(
    ref: str,
    authfile: Path,
    env: Mapping[str, str],
    *,
    cert_dir: Path | None = None,
    tls_verify: bool | None = None,
    timeout: float = 120.0,
) -> str:
    """`sha256:...` of the raw manifest at `ref`, computed here from the bytes served."""
    raw = skopeo_raw_manifest(ref, authfile, env, cert_dir=cert_dir, tls_verify=tls_verify, timeout=timeout)
    return f"sha256:{hashlib.sha256(raw).hexdigest()}"

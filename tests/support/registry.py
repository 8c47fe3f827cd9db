"""Real container registries for end-to-end tests.

`start_registry` runs the CNCF distribution registry (`docker-registry` on
Debian, `registry` upstream) on 127.0.0.1 with an ephemeral port, htpasswd
basic auth and, optionally, TLS from a throwaway `CA`. Nothing here needs a
docker daemon or network access.

Secrets never reach a process's argv: the htpasswd entry is made with the
password on stdin, and HTTP requests build their Authorization header in
process.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

# Upstream images call the binary `registry`; Debian renamed it. An explicit
# override wins so a CI image can point at any build.
REGISTRY_BIN_ENV = "AUTHSCOPE_TEST_REGISTRY_BIN"
_REGISTRY_BIN_NAMES = ("docker-registry", "registry")

# distribution logs `listening on 127.0.0.1:PORT` (plain) or
# `listening on 127.0.0.1:PORT, tls` once its listener is bound; with
# `http.addr: 127.0.0.1:0` that line is the only place the port shows up.
_LISTENING_RE = re.compile(r"listening on (?P<host>[^\s\",]+):(?P<port>\d+)")

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)


class RegistryStartError(RuntimeError):
    """Raised when a registry does not come up; the message carries its log tail."""


class ToolError(RuntimeError):
    """Raised when a helper tool (openssl, htpasswd) fails; carries its stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{argv[0]} exited {returncode}: {' '.join(argv)}\n{stderr.strip()}")


def find_registry_binary() -> str | None:
    """Path of the distribution registry binary, or None when not installed."""
    override = os.environ.get(REGISTRY_BIN_ENV)
    if override:
        return override
    for name in _REGISTRY_BIN_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run_tool(argv: list[str], *, input_text: str | None = None, cwd: Path | None = None) -> None:
    proc = subprocess.run(
        argv,
        input=input_text,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        raise ToolError(argv, proc.returncode, proc.stderr)


# --------------------------------------------------------------------------- TLS

# Minimal, self-contained openssl configs: passing `-config` keeps the host's
# /etc/ssl/openssl.cnf (whose default extensions vary between distros) out of
# the certificates. SKI/AKI and a critical basicConstraints keep strict
# verifiers (Python 3.13's VERIFY_X509_STRICT, Go's crypto/x509) happy.
_CA_CNF = """\
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca

[dn]
CN = authscope test CA (fake, throwaway)

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_CSR_CNF = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = localhost
"""

# Go ignores the CN entirely, so the SANs are what skopeo checks.
_SERVER_EXT = """\
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""

_EC_KEY_ARGS = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class CA:
    """A self-signed certificate authority made with openssl, for tests only."""

    cert: Path
    key: Path
    cert_dir: Path
    """A directory holding only `ca.crt`, for skopeo's `--cert-dir`/`--dest-cert-dir`.

    It must not contain the CA key: containers/image treats every `*.key` in a
    cert dir as a client key and fails when no matching `*.cert` is present.
    """

    @classmethod
    def create(cls, workdir: Path) -> CA:
        """Generate a CA (EC P-256, 10 years) under `workdir`."""
        workdir.mkdir(parents=True, exist_ok=True)
        cnf = workdir / "ca.cnf"
        cnf.write_text(_CA_CNF)
        cert, key = workdir / "ca.crt", workdir / "ca.key"
        _run_tool(
            [
                "openssl",
                "req",
                "-x509",
                "-config",
                str(cnf),
                *_EC_KEY_ARGS,
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "3650",
                "-sha256",
            ]
        )
        key.chmod(0o600)
        cert_dir = workdir / "cert-dir"
        cert_dir.mkdir(exist_ok=True)
        shutil.copyfile(cert, cert_dir / "ca.crt")
        return cls(cert=cert, key=key, cert_dir=cert_dir)

    def issue(self, workdir: Path, name: str = "server") -> tuple[Path, Path]:
        """Issue a server certificate for 127.0.0.1, ::1 and localhost.

        Returns `(cert, key)` written as `workdir/NAME.crt` and `workdir/NAME.key`.
        """
        workdir.mkdir(parents=True, exist_ok=True)
        csr_cnf, ext = workdir / f"{name}.csr.cnf", workdir / f"{name}.ext"
        csr_cnf.write_text(_CSR_CNF)
        ext.write_text(_SERVER_EXT)
        cert, key, csr = workdir / f"{name}.crt", workdir / f"{name}.key", workdir / f"{name}.csr"
        _run_tool(
            ["openssl", "req", "-new", "-config", str(csr_cnf), *_EC_KEY_ARGS, "-keyout", str(key), "-out", str(csr)]
        )
        key.chmod(0o600)
        # A random serial instead of -CAcreateserial: that writes ca.srl next
        # to the CA cert and races when tests issue certificates in parallel.
        _run_tool(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(self.cert),
                "-CAkey",
                str(self.key),
                "-set_serial",
                f"0x{secrets.token_hex(16)}",
                "-days",
                "825",
                "-sha256",
                "-extfile",
                str(ext),
                "-extensions",
                "v3_server",
                "-out",
                str(cert),
            ]
        )
        return cert, key


# ---------------------------------------------------------------------- registry


class Response(NamedTuple):
    status: int
    headers: Mapping[str, str]  # keys lower-cased
    body: bytes


@dataclass(eq=False)  # identity equality/hash: instances live in the `_live` set
class Registry:
    """A running registry. Use `stop()` (or `with`) to end it."""

    name: str
    host: str  # "127.0.0.1:PORT"
    username: str
    password: str = field(repr=False)
    tls: bool
    ca_file: Path | None
    cert_dir: Path | None  # holds only ca.crt; for skopeo --cert-dir
    log_path: Path
    config_path: Path
    root: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def credentials(self) -> tuple[str, str]:
        return self.username, self.password

    def ref(self, repository: str, tag: str) -> str:
        """A `HOST/REPO:TAG` reference (no transport prefix)."""
        return f"{self.host}/{repository}:{tag}"

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.tls else None

    def request(
        self,
        method: str,
        path: str,
        *,
        auth: tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Response:
        """One HTTP request to the registry, trusting only its own CA for TLS."""
        all_headers = dict(headers or {})
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            all_headers["Authorization"] = f"Basic {token}"
        conn: http.client.HTTPConnection
        if self.tls:
            conn = http.client.HTTPSConnection(self.host, timeout=timeout, context=self.ssl_context())
        else:
            conn = http.client.HTTPConnection(self.host, timeout=timeout)
        try:
            conn.request(method, path, headers=all_headers)
            resp = conn.getresponse()
            body = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
        finally:
            conn.close()

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """`Docker-Content-Digest` of a manifest, or None when it does not exist."""
        resp = self.request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            auth=self.credentials,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise RuntimeError(f"HEAD manifest {repository}:{reference} on {self.host}: HTTP {resp.status}")
        return resp.headers["docker-content-digest"]

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """Terminate the registry, kill it after `grace` seconds, and reap it. Idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        _live.discard(self)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Safety net: registries a test forgot to stop (or that were running when the
# session was interrupted) must not outlive the interpreter.
_live: set[Registry] = set()


@atexit.register
def _stop_leftovers() -> None:
    for registry in list(_live):
        registry.stop(grace=1.0)


def _registry_env() -> dict[str, str]:
    # distribution maps every REGISTRY_* variable onto its config
    # (REGISTRY_HTTP_ADDR -> http.addr). An inherited REGISTRY_AUTH_FILE, which
    # podman/skopeo and authscope scopes set, makes it die with
    # "cannot unmarshal !!str into configuration.Parameters".
    return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}


def _write_htpasswd(path: Path, username: str, password: str) -> None:
    if shutil.which("htpasswd") is None:
        raise RegistryStartError("htpasswd not found (Debian: apt-get install apache2-utils)")
    # -B: distribution only accepts bcrypt entries. -i: password on stdin, so
    # it never shows up in /proc/*/cmdline.
    _run_tool(["htpasswd", "-B", "-i", "-c", str(path), username], input_text=password)
    path.chmod(0o600)


def _registry_config(root: Path, htpasswd: Path, tls: tuple[Path, Path] | None) -> dict[str, object]:
    http_cfg: dict[str, object] = {
        "addr": "127.0.0.1:0",
        # A fixed secret silences the "No HTTP secret provided" warning; it
        # only signs upload state, and each registry is alone.
        "secret": secrets.token_hex(16),
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    if tls is not None:
        http_cfg["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    return {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "data")},
            "delete": {"enabled": True},
        },
        "http": http_cfg,
        "auth": {"htpasswd": {"realm": "authscope-test", "path": str(htpasswd)}},
    }


def _wait_for_port(process: subprocess.Popen[bytes], log_path: Path, deadline: float) -> int:
    while time.monotonic() < deadline:
        match = _LISTENING_RE.search(log_path.read_text(errors="replace"))
        if match:
            return int(match.group("port"))
        if process.poll() is not None:
            raise RegistryStartError(f"exited with status {process.returncode} before listening")
        time.sleep(0.05)
    raise RegistryStartError("no 'listening on' line in its log")


def _wait_for_auth_challenge(registry: Registry, deadline: float) -> None:
    last = "no answer"
    while time.monotonic() < deadline:
        if not registry.running():
            raise RegistryStartError(f"exited with status {registry.process.returncode}")
        try:
            resp = registry.request("GET", "/v2/", timeout=2.0)
        except (OSError, http.client.HTTPException) as exc:
            last = repr(exc)
        else:
            if resp.status == 401:
                return
            last = f"HTTP {resp.status}"
        time.sleep(0.05)
    raise RegistryStartError(f"GET /v2/ never answered 401 (last: {last})")


def start_registry(
    workdir: Path,
    *,
    username: str,
    password: str,
    tls: CA | None = None,
    name: str = "registry",
    timeout: float = 20.0,
) -> Registry:
    """Start a distribution registry with htpasswd auth on 127.0.0.1:<ephemeral>.

    Everything (config, htpasswd, storage, log, TLS material) lives under
    `workdir/NAME`. Returns once `GET /v2/` answers 401. With `tls`, the
    registry serves a certificate issued by that CA for 127.0.0.1/localhost.
    """
    binary = find_registry_binary()
    if binary is None:
        raise RegistryStartError(
            f"registry binary not found (Debian: apt-get install docker-registry; or set {REGISTRY_BIN_ENV})"
        )
    root = workdir / name
    root.mkdir(parents=True, exist_ok=False)

    htpasswd = root / "htpasswd"
    _write_htpasswd(htpasswd, username, password)
    cert_key = tls.issue(root / "tls", "server") if tls is not None else None

    # JSON is YAML: go-yaml reads it, and json.dumps quotes any path safely.
    config_path = root / "config.yml"
    config_path.write_text(json.dumps(_registry_config(root, htpasswd, cert_key), indent=2) + "\n")

    log_path = root / "registry.log"
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the Registry, closed in stop()
    try:
        process = subprocess.Popen(
            [binary, "serve", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=_registry_env(),
        )
    except BaseException:
        log.close()
        raise

    registry = Registry(
        name=name,
        host="127.0.0.1:0",
        username=username,
        password=password,
        tls=tls is not None,
        ca_file=tls.cert if tls is not None else None,
        cert_dir=tls.cert_dir if tls is not None else None,
        log_path=log_path,
        config_path=config_path,
        root=root,
        process=process,
        _log=log,
    )
    _live.add(registry)
    deadline = time.monotonic() + timeout
    try:
        port = _wait_for_port(process, log_path, deadline)
        registry.host = f"127.0.0.1:{port}"
        _wait_for_auth_challenge(registry, deadline)
    except BaseException as exc:
        registry.stop(grace=1.0)
        if isinstance(exc, RegistryStartError):
            raise RegistryStartError(
                f"registry {name!r} ({binary}) failed to start: {exc}\n--- {log_path} (tail) ---\n{registry.log_tail()}"
            ) from None
        raise
    return registry

"""A Harbor-like token-auth registry for end-to-end tests.

`start_token_registry` runs three parts, as Harbor does:

- the real registry: Debian's docker-registry (CNCF distribution) with
  `auth: token`, plain HTTP on 127.0.0.1:<ephemeral>, trusting the token
  signer's certificate through `rootcertbundle`;
- a token service (`/service/token`, Harbor's path) that checks Basic
  credentials against its `Account`s and signs JWTs (RS256, the signing
  certificate in the `x5c` header). Its `access` claim grants, per
  repository, the intersection of the actions asked for and the actions the
  account's grants allow, as Harbor's core and GitLab's token endpoint do:
  an account without a right gets a token without it, not a refusal. A
  wrong password, an unknown or a disabled account: 401;
- a front (Harbor's nginx) on 127.0.0.1:<ephemeral>, over TLS or not, that
  serves the token service and proxies everything else to the registry. It
  can answer some requests itself with Harbor's error bodies (`Fault`,
  `harbor_answer`), which the real registry cannot produce: a project
  policy violation, an immutable tag, an exceeded quota, a rate limit.

The realm is `http(s)://localhost:PORT/service/token`: crane 0.22 refuses a
realm whose host is a private or loopback IP literal (its SSRF guard), and
the registry itself is reached as 127.0.0.1:PORT.

Every token request (account, scopes asked, access granted, status, the
client's User-Agent) and every request the front saw is recorded, for tests
to assert on.

Secrets never reach a process's argv: the signing key is a file, openssl
reads what it signs on stdin; passwords only live in this process.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import re
import secrets
import shutil
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .registry import (
    CA,
    MANIFEST_ACCEPT,
    RegistryStartError,
    Response,
    _registry_env,
    _run_tool,
    _wait_for_port,
    find_registry_binary,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "harbor"
TOKEN_PATH = "/service/token"
SERVICE = "harbor-registry"
ISSUER = "harbor-token-issuer"
TOKEN_TTL = 300

ROBOT = "robot$release+ci"
PULLER = "release-puller"
EXPIRED = "robot$release+expired"
ADMIN = "ci-admin"


@dataclass(frozen=True)
class Account:
    """One login of the token service: grants are (repository prefix, actions)."""

    name: str
    password: str = field(repr=False)
    grants: tuple[tuple[str, frozenset[str]], ...] = ()
    disabled: bool = False

    def allowed(self, repository: str) -> frozenset[str]:
        actions: set[str] = set()
        for prefix, granted in self.grants:
            if repository.startswith(prefix):
                actions |= granted
        return frozenset(actions)


def default_accounts() -> dict[str, Account]:
    """A Harbor project `release`: a robot with push+pull, a pull-only user,
    a robot whose secret expired, and an admin for the source and checks."""
    pw = lambda: "test-" + secrets.token_hex(8)  # noqa: E731 - obviously fake test values
    rw = frozenset({"pull", "push"})
    return {
        a.name: a
        for a in (
            Account(ROBOT, pw(), (("release/", rw),)),
            Account(PULLER, pw(), (("release/", frozenset({"pull"})),)),
            Account(EXPIRED, pw(), (("release/", rw),), disabled=True),
            Account(ADMIN, pw(), (("", frozenset({"pull", "push", "delete", "*"})),)),
        )
    }


@dataclass(frozen=True)
class TokenRequest:
    """What the token service saw: who asked (None: anonymous), for what, what it gave."""

    account: str | None
    scopes: tuple[str, ...]
    granted: tuple[tuple[str, tuple[str, ...]], ...]  # (repository, actions)
    status: int
    service: str
    agent: str = ""  # the client's User-Agent


@dataclass(frozen=True)
class Seen:
    """One request the front passed on or answered itself."""

    method: str
    path: str
    status: int
    fault: str = ""  # the Fault's name when the front answered itself
    at: float = 0.0
    agent: str = ""  # the client's User-Agent


@dataclass
class Fault:
    """An answer the front gives itself instead of the registry's.

    ``method`` ("*": any) and ``path`` (a regex searched in the path) choose
    the requests; ``when(front, method, path, body)`` narrows them further;
    ``times`` (None: forever) counts how often it still answers.
    """

    name: str
    method: str
    path: str
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    times: int | None = None
    when: Callable[[TokenRegistry, str, str, bytes], bool] | None = None
    hits: int = 0

    def matches(self, front: TokenRegistry, method: str, path: str, body: bytes) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method != "*" and self.method != method:
            return False
        if not re.search(self.path, path):
            return False
        return self.when is None or self.when(front, method, path, body)


def harbor_answer(name: str) -> dict[str, Any]:
    """A recorded Harbor answer from tests/fixtures/harbor/NAME.json:
    {"status": ..., "headers": {...}, "body": {"errors": [...]}, ...}."""
    return dict(json.loads((FIXTURES / f"{name}.json").read_text()))


def harbor_fault(
    name: str,
    method: str,
    path: str,
    *,
    times: int | None = None,
    when: Callable[[TokenRegistry, str, str, bytes], bool] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Fault:
    """A `Fault` answering with the fixture NAME's status, headers and body."""
    answer = harbor_answer(name)
    all_headers = {"Content-Type": "application/json; charset=utf-8", **answer.get("headers", {}), **(headers or {})}
    return Fault(
        name,
        method,
        path,
        int(answer["status"]),
        json.dumps(answer["body"]).encode(),
        all_headers,
        times,
        when,
    )


# ------------------------------------------------------------------------ signer

_SIGNER_CNF = """\
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3

[dn]
CN = authscope test token signer (fake, throwaway)

[v3]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyCertSign
subjectKeyIdentifier = hash
"""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Signer:
    """An RSA key and its self-signed certificate: the token service signs
    with the key, the registry trusts the certificate (rootcertbundle)."""

    key: Path
    cert: Path
    der_b64: str  # the certificate, DER, standard base64: the x5c entry

    @classmethod
    def create(cls, workdir: Path) -> Signer:
        workdir.mkdir(parents=True, exist_ok=True)
        cnf, key, cert = workdir / "signer.cnf", workdir / "signer.key", workdir / "signer.crt"
        cnf.write_text(_SIGNER_CNF)
        _run_tool(
            [
                "openssl",
                "req",
                "-x509",
                "-config",
                str(cnf),
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "2",
                "-sha256",
            ]
        )
        key.chmod(0o600)
        der = subprocess.run(
            ["openssl", "x509", "-in", str(cert), "-outform", "DER"], capture_output=True, check=True, timeout=30
        ).stdout
        return cls(key, cert, base64.b64encode(der).decode())

    def sign(self, claims: Mapping[str, Any]) -> str:
        """A compact JWS (RS256) of ``claims`` with the certificate in x5c."""
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.der_b64]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        # RS256 is RSASSA-PKCS1-v1_5 over SHA-256: what `openssl dgst -sign` makes with an RSA key.
        proc = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
            timeout=30,
        )
        return f"{signing_input}.{_b64url(proc.stdout)}"


# ------------------------------------------------------------------------ front

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


def parse_scopes(values: Iterable[str]) -> list[tuple[str, str, frozenset[str]]]:
    """`repository:NAME:a,b` scopes (several per value, space-separated) as (type, name, actions)."""
    out = []
    for value in values:
        for scope in value.split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            out.append((kind, name, frozenset(a for a in actions.split(",") if a)))
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FrontServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # the front's own record (TokenRegistry.seen) is what tests read

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(
        self, status: int, headers: Mapping[str, str] | list[tuple[str, str]], body: bytes, head: bool = False
    ) -> None:
        self.send_response(status)
        sent_length = False
        for key, value in headers.items() if isinstance(headers, Mapping) else headers:
            if key.lower() in _HOP:
                continue
            if key.lower() == "content-length":
                if not head:
                    continue
                sent_length = True
            self.send_header(key, value)
        if not head or not sent_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _handle(self) -> None:
        front = self.server.front
        method = self.command
        body = self._body()
        path = urllib.parse.urlsplit(self.path).path
        fault = front.fault_for(method, self.path, body)
        agent = self.headers.get("User-Agent", "")
        if fault is not None:
            front.record(Seen(method, path, fault.status, fault.name, time.monotonic(), agent))
            self._answer(fault.status, fault.headers, fault.body, head=method == "HEAD")
            return
        if path == TOKEN_PATH:
            status, headers, answer = front.token(self.path, self.headers.get("Authorization", ""), agent)
            front.record(Seen(method, path, status, at=time.monotonic(), agent=agent))
            self._answer(status, headers, answer)
            return
        status, headers, answer = front.forward(method, self.path, self.headers.items(), body)
        front.record(Seen(method, path, status, at=time.monotonic(), agent=agent))
        self._answer(status, headers, answer, head=method == "HEAD")

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):  # a client that gave up (a retrying tool)
            self.close_connection = True

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle


class _FrontServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    front: TokenRegistry


# ------------------------------------------------------------------- the whole


@dataclass(eq=False)
class TokenRegistry:
    """A running token-auth registry. `stop()` (or `with`) ends it.

    `host` is the front's 127.0.0.1:PORT (what clients use); `realm` the
    token service's URL on `localhost`. `accounts` by name.
    """

    name: str
    host: str
    realm: str
    accounts: dict[str, Account]
    signer: Signer
    tls: bool
    ca_file: Path | None
    cert_dir: Path | None
    root: Path
    log_path: Path
    backend: str = ""  # the real registry's 127.0.0.1:PORT
    faults: list[Fault] = field(default_factory=list)
    token_requests: list[TokenRequest] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _server: _FrontServer | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- what clients use ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def ref(self, repository: str, tag: str) -> str:
        return f"{self.host}/{repository}:{tag}"

    def credentials(self, account: str = ROBOT) -> tuple[str, str]:
        a = self.accounts[account]
        return a.name, a.password

    def passwords(self) -> list[str]:
        return [a.password for a in self.accounts.values()]

    # -- faults and records --------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def fault_for(self, method: str, path: str, body: bytes) -> Fault | None:
        with self._lock:
            faults = list(self.faults)
        for fault in faults:
            if fault.matches(self, method, path, body):
                with self._lock:
                    fault.hits += 1
                return fault
        return None

    def record(self, item: TokenRequest | Seen) -> None:
        with self._lock:
            (self.token_requests if isinstance(item, TokenRequest) else self.seen).append(item)  # type: ignore[arg-type]

    def scopes_asked(self, account: str | None = ROBOT) -> list[str]:
        with self._lock:
            return [s for r in self.token_requests if r.account == account for s in r.scopes]

    # -- the token service -------------------------------------------------------------------

    def mint(self, account: str, access: Iterable[tuple[str, Iterable[str]]]) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": account,
            "aud": SERVICE,
            "exp": now + TOKEN_TTL,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(12),
            "access": [{"type": "repository", "name": name, "actions": sorted(actions)} for name, actions in access],
        }
        return self.signer.sign(claims)

    def token(self, target: str, authorization: str, agent: str = "") -> tuple[int, dict[str, str], bytes]:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
        scopes = tuple(query.get("scope", []))
        service = (query.get("service") or [""])[0]
        account: Account | None = None
        name: str | None = None
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(encoded).decode().partition(":")
            except ValueError:
                name, password = "", ""
            found = self.accounts.get(name)
            if found is None or found.disabled or not secrets.compare_digest(found.password, password):
                self.record(TokenRequest(name, scopes, (), 401, service, agent))
                body = harbor_answer("token_unauthorized")["body"]
                return 401, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(body).encode()
            account = found
        granted = []
        for kind, repository, asked in parse_scopes(scopes):
            if kind == "repository" and account is not None:
                actions = tuple(sorted(asked & account.allowed(repository)))
                if actions:
                    granted.append((repository, actions))
        self.record(TokenRequest(name, scopes, tuple(granted), 200, service, agent))
        token = self.mint(name or "", granted)
        answer = {
            "token": token,
            "access_token": token,
            "expires_in": TOKEN_TTL,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()

    # -- the proxy ------------------------------------------------------------------------------

    def forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        # A list, not a dict: clients send Accept several times, and the
        # registry answers by all of them.
        out = [(k, v) for k, v in headers if k.lower() not in _HOP and k.lower() not in ("content-length", "host")]
        conn = http.client.HTTPConnection(self.backend, timeout=60)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", self.host)
            for key, value in out:
                conn.putheader(key, value)
            if body or method in ("PUT", "POST", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.putheader("X-Forwarded-Proto", "https" if self.tls else "http")
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()

    def backend_request(
        self, method: str, path: str, *, access: Iterable[tuple[str, Iterable[str]]] = (), accept: str = ""
    ) -> Response:
        """A request straight to the real registry (no faults) with a minted token."""
        headers = {"Authorization": "Bearer " + self.mint(ADMIN, access)}
        if accept:
            headers["Accept"] = accept
        conn = http.client.HTTPConnection(self.backend, timeout=30)
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The registry's Docker-Content-Digest of a manifest, read past the front; None if absent."""
        resp = self.backend_request(
            "HEAD", f"/v2/{repository}/manifests/{reference}", access=[(repository, ["pull"])], accept=MANIFEST_ACCEPT
        )
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise RuntimeError(f"HEAD {repository}:{reference} on {self.backend}: HTTP {resp.status}")
        return resp.headers["docker-content-digest"]

    def catalog(self) -> list[str]:
        headers = {"Authorization": "Bearer " + self._catalog_token()}
        conn = http.client.HTTPConnection(self.backend, timeout=30)
        try:
            conn.request("GET", "/v2/_catalog", headers=headers)
            resp = conn.getresponse()
            return list(json.loads(resp.read())["repositories"])
        finally:
            conn.close()

    def _catalog_token(self) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": ADMIN,
            "aud": SERVICE,
            "exp": now + TOKEN_TTL,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(12),
            "access": [{"type": "registry", "name": "catalog", "actions": ["*"]}],
        }
        return self.signer.sign(claims)

    # -- lifetime ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the front and the registry. Idempotent; never raises."""
        if self._server is not None:
            try:
                self._server.shutdown()
                self._server.server_close()
            except OSError:
                pass
            self._server = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> TokenRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def immutable_tag(pattern: str) -> Callable[[TokenRegistry, str, str, bytes], bool]:
    """A `Fault.when` for Harbor's tag immutability: a PUT of a manifest to an
    existing tag matching ``pattern`` that holds another digest."""

    def when(front: TokenRegistry, method: str, path: str, body: bytes) -> bool:
        match = re.fullmatch(r"/v2/(?P<repo>.+)/manifests/(?P<tag>[^/?]+)", urllib.parse.urlsplit(path).path)
        if method != "PUT" or match is None or not re.fullmatch(pattern, match["tag"]):
            return False
        held = front.manifest_digest(match["repo"], match["tag"])
        return held is not None and held != "sha256:" + hashlib.sha256(body).hexdigest()

    return when


def _registry_config(root: Path, realm: str, signer: Signer) -> dict[str, object]:
    return {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
        "http": {
            "addr": "127.0.0.1:0",
            "secret": secrets.token_hex(16),
            "relativeurls": True,  # Location headers that work through the front
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
        "auth": {
            "token": {"realm": realm, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": str(signer.cert)},
        },
    }


def start_token_registry(
    workdir: Path,
    *,
    tls: CA | None = None,
    name: str = "harbor",
    accounts: Mapping[str, Account] | None = None,
    signer: Signer | None = None,
    timeout: float = 20.0,
) -> TokenRegistry:
    """Start the registry, its token service and the front under `workdir/NAME`.

    Returns once the front answers `GET /v2/` with the registry's Bearer challenge.
    """
    binary = find_registry_binary()
    if binary is None:
        raise RegistryStartError("registry binary not found (Debian: apt-get install docker-registry)")
    if shutil.which("openssl") is None:
        raise RegistryStartError("openssl not found")
    root = workdir / name
    root.mkdir(parents=True, exist_ok=False)
    signer = signer or Signer.create(root / "signer")

    server = _FrontServer(("127.0.0.1", 0), _Handler, bind_and_activate=True)
    port = server.server_address[1]
    ca_file = cert_dir = None
    if tls is not None:
        cert, key = tls.issue(root / "tls", "front")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        ca_file, cert_dir = tls.cert, tls.cert_dir
    realm = f"{'https' if tls else 'http'}://localhost:{port}{TOKEN_PATH}"

    config_path = root / "config.yml"
    config_path.write_text(json.dumps(_registry_config(root, realm, signer), indent=2) + "\n")
    log_path = root / "registry.log"
    registry = TokenRegistry(
        name=name,
        host=f"127.0.0.1:{port}",
        realm=realm,
        accounts=dict(accounts or default_accounts()),
        signer=signer,
        tls=tls is not None,
        ca_file=ca_file,
        cert_dir=cert_dir,
        root=root,
        log_path=log_path,
    )
    server.front = registry
    registry._server = server
    registry._log = open(log_path, "wb")  # noqa: SIM115 - owned by the TokenRegistry, closed in stop()
    try:
        registry.process = subprocess.Popen(
            [binary, "serve", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=registry._log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=_registry_env(),
        )
        deadline = time.monotonic() + timeout
        registry.backend = f"127.0.0.1:{_wait_for_port(registry.process, log_path, deadline)}"
        threading.Thread(target=server.serve_forever, name=f"front-{name}", daemon=True).start()
        _wait_for_challenge(registry, deadline)
    except BaseException as exc:
        registry.stop()
        if isinstance(exc, RegistryStartError):
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
            raise RegistryStartError(
                f"token registry {name!r} failed to start: {exc}\n--- {log_path} ---\n{tail}"
            ) from None
        raise
    return registry


def _wait_for_challenge(registry: TokenRegistry, deadline: float) -> None:
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            if registry.tls:
                assert registry.ca_file is not None
                ctx = ssl.create_default_context(cafile=str(registry.ca_file))
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(registry.host, timeout=2, context=ctx)
            else:
                conn = http.client.HTTPConnection(registry.host, timeout=2)
            try:
                conn.request("GET", "/v2/")
                resp = conn.getresponse()
                resp.read()
                challenge = resp.getheader("WWW-Authenticate") or ""
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as exc:
            last = repr(exc)
        else:
            if resp.status == 401 and challenge.startswith("Bearer") and registry.realm in challenge:
                return
            last = f"HTTP {resp.status} {challenge!r}"
        time.sleep(0.05)
    raise RegistryStartError(f"GET /v2/ never answered the Bearer challenge (last: {last})")

"""A small registry client: check credentials (``login --verify``) and read
manifest digests (fan-out verification), over the distribution API.

Follows the spec's challenges: ``Basic`` is answered directly; ``Bearer
realm=...,service=...`` fetches a token from the realm with Basic auth and
retries with it. Only the standard library is used, so nothing heavy is
imported unless these paths run.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import ssl
import threading
import urllib.parse
from typing import Dict, List, Optional, Tuple

from . import __version__
from .dockerconfig import api_host, encode_auth, is_loopback
from .errors import RegistryError, SecretSourceError

TIMEOUT = 30.0
USER_AGENT = f"authscope/{__version__}"
_PARAM = re.compile(r'(\w+)="([^"]*)"')
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    )
)


class RegistryHTTPError(RegistryError):
    """Raised when a registry answers with an unexpected status; keeps it."""

    def __init__(self, registry: str, status: int, where: str, detail: str = "") -> None:
        self.status = status
        self.where = where
        super().__init__(registry, f"HTTP {status} from {where}" + (f": {detail}" if detail else ""))

    @property
    def transient(self) -> bool:
        return self.status == 429 or self.status >= 500


class RegistryUnreachable(RegistryError):
    """Raised when no scheme reached the registry (connection, TLS, DNS)."""

    transient = True


def parse_challenge(header: str) -> Tuple[str, Dict[str, str]]:
    """('bearer', {'realm': ..., 'service': ...}) from a WWW-Authenticate value."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))


def _header(headers: Dict[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return ""


# What a process learns about a registry holds for every session with it: which
# scheme answers, and which challenge it sends. A fan-out's targets, verifier
# and source reader then skip the probing round trips (each costs a full RTT
# on a WAN link).
_SCHEME: Dict[str, str] = {}
_CHALLENGE: Dict[str, Tuple[str, Dict[str, str]]] = {}
_CONTEXTS: Dict[Tuple[Optional[str], bool], ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def _context(ca_file: Optional[str], insecure: bool) -> ssl.SSLContext:
    """One SSL context per trust setting: loading the CA store is not free."""
    with _CONTEXTS_LOCK:
        ctx = _CONTEXTS.get((ca_file, insecure))
        if ctx is None:
            if insecure:
                # Nothing is verified, so no CA store is loaded (~30 ms of CPU
                # on the path to the first request).
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            elif ca_file:
                # Read safely (a FIFO or /dev/zero here would hang or fill
                # memory inside OpenSSL); PEM text, else DER bytes.
                from .credentials import CA_LIMIT, read_file

                data = read_file(ca_file, f"CA file {ca_file}", CA_LIMIT)
                try:
                    try:
                        ctx = ssl.create_default_context(cadata=data.decode("ascii"))
                    except UnicodeDecodeError:
                        ctx = ssl.create_default_context(cadata=data)
                except ssl.SSLError as exc:
                    raise SecretSourceError(
                        f"CA file {ca_file}", f"holds no certificate OpenSSL can read ({exc.reason})"
                    ) from None
            else:
                ctx = ssl.create_default_context()
            _CONTEXTS[(ca_file, insecure)] = ctx
        return ctx


Answer = Tuple[int, Dict[str, str], bytes]


class Session:
    """One registry, one identity: follows challenges, caches the token, and
    keeps its connections open (http.client, keep-alive)."""

    def __init__(
        self,
        registry: str,
        auth: Optional[Tuple[str, str]] = None,
        *,
        ca_file: Optional[str] = None,
        insecure: bool = False,
        timeout: float = TIMEOUT,
    ) -> None:
        self.registry = registry
        self.host = api_host(registry)  # Docker Hub's API is not at docker.io
        self.timeout = timeout
        self.auth = auth
        self.ctx = _context(ca_file, insecure)
        # HTTPS first; plain HTTP only for --insecure or a loopback registry,
        # as the docker CLI does for registries it treats as insecure.
        self.schemes: List[str] = ["https", "http"] if insecure or is_loopback(self.host) else ["https"]
        if _SCHEME.get(self.host) in self.schemes:
            self.schemes = [_SCHEME[self.host]]
        self.authorization: Optional[str] = None
        self.token_scope: Optional[str] = None
        self._connections: Dict[Tuple[str, str], http.client.HTTPConnection] = {}

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit, modules may be half gone
            pass

    def _basic(self) -> Optional[str]:
        if self.auth is None:
            return None
        user, password = self.auth
        return "Basic " + encode_auth(user, password)

    def _send(self, method: str, url: str, headers: Dict[str, str]) -> Answer:
        parts = urllib.parse.urlsplit(url)
        key = (parts.scheme, parts.netloc)
        headers = {"User-Agent": USER_AGENT, **headers}
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in (1, 2):
            conn = self._connections.get(key)
            if conn is None:
                if parts.scheme == "https":
                    conn = http.client.HTTPSConnection(parts.netloc, timeout=self.timeout, context=self.ctx)
                else:
                    conn = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
                self._connections[key] = conn
            try:
                conn.request(method, target, headers=headers)
                response = conn.getresponse()
                body = response.read()
                if response.will_close:
                    conn.close()
                    del self._connections[key]
                return response.status, dict(response.getheaders()), body
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server closed meanwhile: once more, fresh.
                conn.close()
                self._connections.pop(key, None)
                if attempt == 2:
                    raise
            except BaseException:
                conn.close()
                self._connections.pop(key, None)
                raise
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, headers: Optional[Dict[str, str]] = None, scope: str = "") -> Answer:
        """``method`` on ``path``, answering an auth challenge once."""
        if self.schemes == ["https", "http"]:
            return self._request_either(method, path, dict(headers or {}), scope)
        scheme = self.schemes[0]
        try:
            result = self._request(method, f"{scheme}://{self.host}{path}", dict(headers or {}), scope)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, TLS, timeout
            raise RegistryUnreachable(self.registry, f"cannot reach {path} ({scheme}: {exc})") from None
        _SCHEME[self.host] = scheme
        return result

    def _request_either(self, method: str, path: str, headers: Dict[str, str], scope: str) -> Answer:
        """HTTPS, falling back to plain HTTP, with the fallback's round trips
        overlapped: while HTTPS is tried, a `_PlainProbe` connects over plain
        HTTP and asks `GET /v2/` with no credentials. If HTTPS answers, the
        probe is dropped and nothing else is sent in clear; if it fails, the
        probe's connection and its challenge are already there, so the real
        request goes out with its credentials at once. On a WAN that is two
        round trips fewer than trying one scheme after the other."""
        probe = _PlainProbe(self.host, self.timeout)
        try:
            result = self._request(method, f"https://{self.host}{path}", dict(headers), scope)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, TLS, timeout
            https_error = f"https: {exc}"
        else:
            probe.drop()
            self.schemes = ["https"]  # stick to what worked
            _SCHEME[self.host] = "https"
            return result
        conn, error = probe.wait()
        if conn is None:
            raise RegistryUnreachable(self.registry, f"cannot reach {path} ({https_error}; http: {error})")
        self._connections[("http", self.host)] = conn
        if probe.challenge is not None and self.host not in _CHALLENGE:
            _CHALLENGE[self.host] = probe.challenge
        self.schemes = ["http"]
        _SCHEME[self.host] = "http"
        try:
            return self._request(method, f"http://{self.host}{path}", headers, scope)
        except (OSError, http.client.HTTPException) as exc:
            raise RegistryUnreachable(self.registry, f"cannot reach {path} ({https_error}; http: {exc})") from None

    def _request(self, method: str, url: str, headers: Dict[str, str], scope: str) -> Answer:
        known = _CHALLENGE.get(self.host)
        if self.authorization is None and known is not None and self.auth is not None:
            # Answer the challenge this registry is known to send before it is sent.
            self._authorize(*known, scope)
        elif (
            known is not None and known[0] == "bearer" and scope and scope != self.token_scope and self.auth is not None
        ):
            self._authorize(*known, scope)  # a token for another scope
        if self.authorization:
            headers["Authorization"] = self.authorization
        status, answer, body = self._send(method, url, headers)
        if status != 401:
            return status, answer, body
        challenge, params = parse_challenge(_header(answer, "WWW-Authenticate"))
        if challenge not in ("basic", "bearer") or (challenge == "basic" and self.auth is None):
            return status, answer, body
        if challenge == "bearer" and not params.get("realm"):
            return status, answer, body
        _CHALLENGE[self.host] = (challenge, params)
        self._authorize(challenge, params, scope)
        headers["Authorization"] = self.authorization or ""
        return self._send(method, url, headers)

    def _authorize(self, challenge: str, params: Dict[str, str], scope: str) -> None:
        if challenge == "basic":
            self.authorization = self._basic()
        else:
            self.authorization = "Bearer " + self._token(params, scope)
            self.token_scope = scope

    def _token(self, params: Dict[str, str], scope: str) -> str:
        query = {"service": params["service"]} if params.get("service") else {}
        if scope or params.get("scope"):
            query["scope"] = scope or params["scope"]
        url = params["realm"] + ("?" + urllib.parse.urlencode(query) if query else "")
        basic = self._basic()
        status, _, body = self._send("GET", url, {"Authorization": basic} if basic else {})
        if status != 200:
            raise RegistryHTTPError(self.registry, status, params["realm"], "the token service refused")
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
        except ValueError:
            token = None
        if not token:
            raise RegistryError(self.registry, f"the token service {params['realm']} gave no token")
        return str(token)

    def manifest_digest(self, repository: str, reference: str) -> str:
        """The digest of ``repository:reference`` (a tag or a digest)."""
        path = f"/v2/{repository}/manifests/{reference}"
        scope = f"repository:{repository}:pull"
        accept = {"Accept": MANIFEST_TYPES}
        status, headers, _ = self.request("HEAD", path, accept, scope)
        digest = _header(headers, "Docker-Content-Digest")
        if status == 200 and digest:
            return digest
        if status == 200 or status == 405:  # no digest header / no HEAD: hash the body
            status, headers, body = self.request("GET", path, accept, scope)
            if status == 200:
                return "sha256:" + hashlib.sha256(body).hexdigest()
        raise RegistryHTTPError(self.registry, status, f"{self.registry}/{repository}:{reference}", _explain(status))


class _PlainProbe:
    """`GET /v2/` over plain HTTP, with no credentials, in a thread of its own.

    Only ever a bare `/v2/` with no Authorization: if the registry turns out
    to speak HTTPS, the clear-text side saw nothing but that. Its connection
    is kept for the plain-HTTP requests that follow when HTTPS fails.
    """

    def __init__(self, host: str, timeout: float) -> None:
        self.host = host
        self.timeout = timeout
        self.conn: Optional[http.client.HTTPConnection] = None
        self.challenge: Optional[Tuple[str, Dict[str, str]]] = None
        self.error = ""
        self._dropped = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"authscope-probe-{host}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.host, timeout=self.timeout)
        try:
            conn.request("GET", "/v2/", headers={"User-Agent": USER_AGENT})
            response = conn.getresponse()
            response.read()
            if response.status == 401:
                challenge, params = parse_challenge(response.getheader("WWW-Authenticate") or "")
                if challenge == "basic" or (challenge == "bearer" and params.get("realm")):
                    self.challenge = (challenge, params)
            if response.will_close:
                conn.close()  # http.client reconnects on the next request
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self.error = str(exc) or type(exc).__name__
            return
        with self._lock:
            if self._dropped:
                conn.close()
            else:
                self.conn = conn

    def drop(self) -> None:
        """HTTPS answered: close the probe's connection, now or when it is done."""
        with self._lock:
            self._dropped = True
            if self.conn is not None:
                self.conn.close()
                self.conn = None

    def wait(self) -> Tuple[Optional[http.client.HTTPConnection], str]:
        """(the open plain-HTTP connection, or None and why not)."""
        self._thread.join(self.timeout + 1)
        with self._lock:
            if self.conn is None:
                self._dropped = True  # a probe that answers after all is closed, not kept
                self.error = self.error or "timed out"
            return self.conn, self.error


def _explain(status: int) -> str:
    return {
        401: "the credentials were rejected",
        403: "the credentials have no pull permission on this repository",
        404: "no such manifest",
    }.get(status, "")


def verify(
    registry: str, username: str, password: str, *, ca_file: Optional[str] = None, insecure: bool = False
) -> None:
    """Raise RegistryError unless ``registry`` accepts the credentials at /v2/."""
    try:
        with Session(registry, (username, password), ca_file=ca_file, insecure=insecure) as session:
            status, _, _ = session.request("GET", "/v2/")
    except RegistryHTTPError as exc:  # the token service refused
        status = exc.status
    if status == 200:
        return
    if status in (401, 403):
        raise RegistryError(
            registry,
            f"the registry rejected the credentials of user {username!r} (HTTP {status}); "
            "check the username and the password variable or file",
        )
    raise RegistryHTTPError(registry, status, f"{registry}/v2/")

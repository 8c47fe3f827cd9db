"""A small registry client: check credentials (``login --verify``) and read
manifest digests (fan-out verification), over the distribution API.

Follows the spec's challenges: ``Basic`` is answered directly; ``Bearer
realm=...,service=...`` fetches a token from the realm with Basic auth and
retries with it. Only the standard library is used, so nothing heavy is
imported unless these paths run.

A registry is not trusted to be well-behaved (issue 12, items 6 and 8): the
credentials go to a token realm only over a scheme no weaker than the
registry's own (`check_realm`); every answer is bounded in bytes and in time
(`_Answer`); and whatever a registry sends that is not usable HTTP or not the
API's answer ends in a `RegistryAnswerError` that quotes nothing secret.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Any

from . import __version__, preconnect, trace
from .dockerconfig import api_host, encode_auth, is_loopback
from .errors import RegistryError, SecretSourceError

TIMEOUT = 30.0
USER_AGENT = f"authscope/{__version__}"
_PARAM = re.compile(r'(\w+)="([^"]*)"')
# What one answer may take, status line and headers included: the
# distribution registry's own manifest limit (4 MiB) and room for headers. A
# registry that streams forever stops here, or at the session's timeout,
# which bounds the whole answer and not just each read.
MAX_ANSWER = (4 << 20) + (256 << 10)
MAX_PROBE_ANSWER = 64 << 10  # a bare /v2/ answer is a few bytes
_VISIBLE = re.compile(r"[\x21-\x7e]+")  # what a token or a realm may hold: no space, no control, ASCII
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")  # the OCI spec's digest grammar
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

    def __init__(
        self, registry: str, status: int, where: str, detail: str = "", retry_after: float | None = None
    ) -> None:
        self.status = status
        self.where = where
        self.retry_after = retry_after  # seconds the registry asked to wait (Retry-After), if it did
        super().__init__(registry, f"HTTP {status} from {where}" + (f": {detail}" if detail else ""))

    @property
    def transient(self) -> bool:
        return self.status == 429 or self.status >= 500


class TokenRefused(RegistryHTTPError):
    """Raised when the token service of a Bearer registry refuses the
    credentials (Harbor: a robot account's secret that is wrong or expired,
    or a disabled account)."""


def retry_after(headers: dict[str, str], now: float | None = None) -> float | None:
    """The seconds a ``Retry-After`` header asks to wait (delta-seconds or an
    HTTP-date), or None when there is none or it can't be read."""
    value = _header(headers, "Retry-After").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


_HARBOR_CODES = {
    "PROJECTPOLICYVIOLATION": "a project policy of the registry refused it (Harbor: a cosign/notation signature is "
    "required, or the image has vulnerabilities over the project's limit)",
    "PRECONDITION": "the registry refused a precondition (Harbor: an immutable tag)",
}


def explain_status(status: int, body: bytes = b"") -> str:
    """What an answer to authscope's own request means, from its status and,
    when the registry sent one, its `{"errors": [{"code", "message"}]}` body
    (Harbor's, distribution's). Quotes the registry's message, cut short."""
    said = ""
    code = ""
    try:
        errors = json.loads(body).get("errors") if body else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code = str(errors[0].get("code", ""))
            said = str(errors[0].get("message", ""))
    except (ValueError, AttributeError, RecursionError):
        pass
    meaning = _HARBOR_CODES.get(code) or {
        401: "the credentials were rejected",
        403: "the credentials have no pull permission on this repository",
        404: "no such manifest",
        412: "a project policy refused the pull (Harbor: a required signature, a vulnerability limit) "
        "or another precondition failed",
        429: "the registry is rate-limiting these requests",
    }.get(status, "")
    if said:
        return f"{meaning}: {_shown(said)}" if meaning else _shown(said)
    return meaning


class RegistryUnreachable(RegistryError):
    """Raised when no scheme reached the registry (connection, TLS, DNS)."""

    transient = True


class RealmRefused(RegistryError):
    """Raised when a Bearer challenge names a token realm the credentials must
    not go to: plain HTTP from a registry reached over HTTPS, a scheme other
    than http/https, no host. Nothing was sent to it."""

    hint = (
        "the registry (or a proxy in front of it) advertises a token service authscope will not send "
        "credentials to: its Bearer realm must be an https URL (http only for a registry reached over plain HTTP)"
    )

    def __init__(self, registry: str, realm: str, why: str) -> None:
        self.realm = realm
        super().__init__(
            registry, f"refused the token realm {realm} of its Bearer challenge: {why}; nothing was sent to it"
        )


class RegistryAnswerError(RegistryError):
    """Raised when a registry or its token service answers with something that
    is not usable HTTP, or not the API's answer: a garbage status line, too
    many or too long headers, an answer over MAX_ANSWER, a challenge that
    can't be answered, a token that is not one. Never quotes a secret."""

    hint = (
        "the registry (or a proxy in front of it) sent an answer authscope cannot use: "
        "check that registry: names the container registry itself (the distribution API at /v2/)"
    )


class CertificateUntrusted(RegistryAnswerError):
    """Raised when the TLS handshake with a registry (or its token service)
    fails verification: an unknown CA, a self-signed or expired certificate,
    another host's name. Nothing was sent, and plain HTTP is never tried
    after it (a loopback registry too): the certificate is the problem, not
    the scheme."""

    hint = (
        "trust the CA that issued the registry's certificate: ca_file: (a PEM file) on this target, or in "
        "source: {image: ..., ca_file: ...}, in the targets file; for authscope login --verify, --ca-file PATH"
    )

    def __init__(self, registry: str, where: str, exc: ssl.SSLCertVerificationError) -> None:
        why = exc.verify_message or exc.reason or "verification failed"  # e.g. "Hostname mismatch, ..."
        super().__init__(
            registry,
            f"the TLS certificate of {where} is not trusted ({why}); the credentials were not sent, "
            "and it is not tried over plain HTTP instead",
        )


def check_realm(registry: str, realm: str, over: str, shown: str = "") -> None:
    """Raise RealmRefused unless the credentials may go to ``realm``, the token
    service of a registry reached over ``over`` ("https" or "http").

    The rule is about the scheme, not the host: Docker Hub's and GitLab's
    token services live on another host than their registries. What it stops
    is a registry reached over HTTPS (loopback ones too) sending the Basic
    credentials to a clear-text or non-HTTP realm. ``shown``: the realm as
    the message quotes it (default: `_shown`).
    """
    why = ""
    parts: urllib.parse.SplitResult | None = None
    if not _VISIBLE.fullmatch(realm):
        why = "it holds spaces, control characters or non-ASCII"  # urlsplit would drop some silently
    else:
        try:
            parts = urllib.parse.urlsplit(realm)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        except ValueError:
            why = "it is not a URL"
    if parts is not None and not why:
        if parts.scheme not in ("https", "http"):
            why = f"its scheme is {parts.scheme + ':' if parts.scheme else 'missing'}, not https:"
        elif not parts.hostname:
            why = "it names no host"
        elif "@" in parts.netloc:
            why = "it holds user info"
        elif parts.scheme == "http" and over != "http":
            why = "it is plain http while the registry was reached over https, so the credentials would travel in clear"
    if why:
        raise RealmRefused(registry, shown or _shown(realm), why)


def _shown(text: str, limit: int = 200) -> str:
    """A value a server sent, fit for a message: quoted, escaped, cut short."""
    return ascii(text[:limit]) + ("..." if len(text) > limit else "")


class _TooLarge(Exception):
    """An answer went over its byte limit (raised from inside http.client)."""


class _Unsendable(Exception):
    """http.client refused to send a header or URL (CR/LF, non-Latin-1): its
    ValueError quotes the header, which may be a credential."""


class _Bounded(io.RawIOBase):
    """The socket an answer is read from, with a byte limit and a deadline.

    http.client bounds a header line (64 KiB) and the number of headers
    (100) but not the body, the chunked trailer, nor the time: each read has
    the socket's timeout, so a registry trickling a byte at a time is never
    cut off. Here every read counts against ``limit`` and shortens the
    socket's timeout to what is left of ``seconds``.
    """

    def __init__(self, sock: socket.socket, seconds: float, limit: int) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)  # holds a reference: the socket stays open while read
        self._timeout = sock.gettimeout()
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds
        self._left = limit
        self._limit = limit
        self._shortened = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._left <= 0:
            raise _TooLarge(self._limit)
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the answer did not end within {self._seconds:g}s")
        if self._timeout is None or left < self._timeout:
            self._sock.settimeout(left)
            self._shortened = True
        view = memoryview(buffer)
        try:
            n = self._raw.readinto(view[: self._left] if len(view) > self._left else view) or 0
        except TimeoutError:
            if self._shortened:  # the deadline's timeout, not one read's
                raise TimeoutError(f"the answer did not end within {self._seconds:g}s") from None
            raise
        self._left -= n
        return n

    def close(self) -> None:
        if not self.closed:
            if self._shortened:
                try:
                    self._sock.settimeout(self._timeout)  # the next request on a kept-alive connection
                except OSError:
                    pass
            self._raw.close()
        super().close()


class _Answer(http.client.HTTPResponse):
    """An HTTPResponse read through `_Bounded`: at most ``limit`` bytes, within
    the socket's timeout for the whole answer."""

    limit = MAX_ANSWER

    def __init__(self, sock: socket.socket, debuglevel: int = 0, method: str | None = None, url: Any = None) -> None:
        super().__init__(sock, debuglevel, method, url)
        self.fp.close()  # the plain reader http.client made; nothing was read from it
        self.fp = io.BufferedReader(_Bounded(sock, sock.gettimeout() or TIMEOUT, self.limit))

    def begin(self) -> None:
        super().begin()
        if self.length is not None and self.length > self.limit:  # refused before a byte of it is read
            raise _TooLarge(self.limit)

    def read_all(self) -> bytes:
        """The body. With a Content-Length (at most ``limit``: see `begin`), in
        one read; chunked or until EOF, in pieces, since ``read()`` would
        allocate what a hostile chunk size announces before `_Bounded` can
        say no."""
        if self.length is not None:
            return self.read()
        parts: list[bytes] = []
        while True:
            part = self.read(1 << 20)
            if not part:
                return b"".join(parts)
            parts.append(part)


class _ProbeAnswer(_Answer):
    limit = MAX_PROBE_ANSWER


def _connection(
    scheme: str, netloc: str, timeout: float, ctx: ssl.SSLContext | None, answer: type[_Answer] = _Answer
) -> http.client.HTTPConnection:
    conn = (
        http.client.HTTPSConnection(netloc, timeout=timeout, context=ctx)
        if scheme == "https"
        else http.client.HTTPConnection(netloc, timeout=timeout)
    )
    conn.response_class = answer
    return conn


def _attach(conn: http.client.HTTPConnection, ctx: ssl.SSLContext | None) -> None:
    """Give ``conn`` the connection preconnect opened to its host and port, if any
    (TLS over it for HTTPS, as HTTPSConnection.connect would); else it connects itself."""
    sock = preconnect.take(conn.host, conn.port, conn.timeout or TIMEOUT)
    if sock is None:
        return
    try:
        sock.settimeout(conn.timeout)
        conn.sock = ctx.wrap_socket(sock, server_hostname=conn.host) if ctx is not None else sock
    except BaseException:
        sock.close()
        raise


def _malformed(exc: BaseException, where: str) -> str:
    """What was wrong with the exchange with ``where``, when ``exc`` says the
    answer (or the request) could not be HTTP; "" for a network error or a
    timeout. Quotes nothing the server sent: a status line may echo the
    request's Authorization header."""
    if isinstance(exc, _TooLarge):
        return f"{where} sent an answer of more than {exc.args[0] // 1024} KiB, the limit for one answer"
    if isinstance(exc, http.client.LineTooLong):  # "got more than 65536 bytes when reading header line"
        return f"{where} sent a line that is too long ({exc})"
    if type(exc) is http.client.HTTPException:  # "got more than 100 headers"
        return f"{where} sent a malformed answer ({exc})"
    if isinstance(exc, http.client.BadStatusLine) and not isinstance(exc, http.client.RemoteDisconnected):
        return f"{where} answered with a status line that is not HTTP"
    if isinstance(exc, http.client.UnknownProtocol):
        return f"{where} answered in an HTTP version that is not HTTP/1.x"
    if isinstance(exc, _Unsendable):
        return f"the request to {where} holds characters HTTP does not allow in a header or the URL; it was not sent"
    return ""


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """('bearer', {'realm': ..., 'service': ...}) from a WWW-Authenticate value."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))


def _header(headers: dict[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return ""


# What a process learns about a registry holds for every session with it: which
# scheme answers, and which challenge it sends. A fan-out's targets, verifier
# and source reader then skip the probing round trips (each costs a full RTT
# on a WAN link).
_SCHEME: dict[str, str] = {}
_CHALLENGE: dict[str, tuple[str, dict[str, str]]] = {}
_CONTEXTS: dict[tuple[str | None, bool], ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def _context(ca_file: str | None, insecure: bool) -> ssl.SSLContext:
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


Answer = tuple[int, dict[str, str], bytes]

# -- warming up: learn a registry's scheme and challenge while authscope starts ----------
#
# A fan-out knows every registry it will talk to as soon as the targets file is
# read, long before its first request (the rest of authscope is imported
# meanwhile). `warm_up` sends each, in a thread of its own, what every session
# starts with anyway: a bare `GET /v2/` with no credentials (HTTPS; plain HTTP
# only where a session would fall back to it: insecure or loopback, overlapped
# as `_request_either` does). What it learns (the scheme, the challenge) goes to
# _SCHEME / _CHALLENGE, and its open connection to the first session of that
# registry with the same trust settings: that session's first request then
# goes out at once, authorised, on a connection whose TCP and TLS handshakes are
# done. Nothing secret is sent; a registry that does not answer is left to the
# sessions, which report it as before.
_WARMING: dict[str, threading.Thread] = {}
_IDLE: dict[tuple[str, str, str | None, bool], list[http.client.HTTPConnection]] = {}
_IDLE_LOCK = threading.Lock()


def warm_up(registry: str, *, ca_file: str | None = None, insecure: bool = False, timeout: float = TIMEOUT) -> None:
    """Start a warm-up of ``registry`` (see above) unless one ran or is running."""
    host = api_host(registry)
    with _IDLE_LOCK:
        if host in _WARMING or host in _SCHEME:
            preconnect.discard(host)  # known already: no warm-up takes them
            return
        try:
            ctx = _context(ca_file, insecure)
        except (OSError, SecretSourceError, ValueError):  # the session reports it, with its context
            preconnect.discard(host)
            return
        either = insecure or is_loopback(host)
        thread = threading.Thread(
            target=_warm,
            args=(host, ctx, (ca_file, insecure), either, timeout),
            name=f"authscope-warm-{host}",
            daemon=True,
        )
        _WARMING[host] = thread
    thread.start()


def _warm(host: str, ctx: ssl.SSLContext, trust: tuple[str | None, bool], either: bool, timeout: float) -> None:
    try:
        _warm_on(host, ctx, trust, either, timeout)
    finally:
        preconnect.discard(host)  # a connection it did not take is never taken later


def _warm_on(host: str, ctx: ssl.SSLContext, trust: tuple[str | None, bool], either: bool, timeout: float) -> None:
    probe = _PlainProbe(host, timeout, preconnected=True) if either else None
    conn = _connection("https", host, timeout, ctx, _ProbeAnswer)
    began = time.monotonic()
    try:
        _attach(conn, ctx)
        conn.request("GET", "/v2/", headers={"User-Agent": USER_AGENT})
        response = conn.getresponse()
        assert isinstance(response, _Answer)
        response.read_all()
        trace.event(
            "warm", host=host, scheme="https", status=response.status, ms=round((time.monotonic() - began) * 1000, 2)
        )
        challenge = parse_challenge(response.getheader("WWW-Authenticate") or "") if response.status == 401 else None
        will_close = response.will_close
    except Exception:  # noqa: BLE001 - HTTPS did not answer usably: plain HTTP, if allowed, else nothing learnt
        conn.close()
        if probe is None:
            return
        plain, _ = probe.wait()
        trace.event(
            "warm", host=host, scheme="http", ok=plain is not None, ms=round((time.monotonic() - began) * 1000, 2)
        )
        if plain is None:
            return
        _learnt(host, "http", probe.challenge, plain, trust, False)
        return
    if probe is not None:
        probe.drop()
    usable = challenge if challenge and (challenge[0] == "basic" or challenge[1].get("realm")) else None
    _learnt(host, "https", usable, conn, trust, will_close)


def _learnt(
    host: str,
    scheme: str,
    challenge: tuple[str, dict[str, str]] | None,
    conn: http.client.HTTPConnection,
    trust: tuple[str | None, bool],
    will_close: bool,
) -> None:
    with _IDLE_LOCK:
        _SCHEME.setdefault(host, scheme)
        if challenge is not None:
            _CHALLENGE.setdefault(host, challenge)
        if will_close or _SCHEME[host] != scheme:
            conn.close()
            return
        conn.response_class = _Answer  # from now on, API answers: the probe's 64 KiB limit no longer applies
        _IDLE.setdefault((scheme, host, *trust), []).append(conn)


def challenges(host: str) -> bool:
    """Whether ``host`` is known to answer by an auth challenge (a warm-up's `GET /v2/`
    with no credentials, or a session's request, saw one): a registry that wants them."""
    return host in _CHALLENGE


WARM_WAIT = 5.0  # at most this long a session waits for a warm-up; then it goes on by itself


def _await_warm_up(host: str, timeout: float) -> None:
    """Wait (at most ``timeout``, and WARM_WAIT) for a warm-up of ``host`` still running: a
    registry that does not answer costs a session its own timeout, not that plus the warm-up's."""
    thread = _WARMING.get(host)
    if thread is not None and thread.is_alive() and thread is not threading.current_thread():
        thread.join(min(timeout, WARM_WAIT))


def _take_idle(scheme: str, host: str, trust: tuple[str | None, bool]) -> http.client.HTTPConnection | None:
    with _IDLE_LOCK:
        idle = _IDLE.get((scheme, host, *trust))
        return idle.pop() if idle else None


def close_idle() -> None:
    """Close every warmed-up connection no session took, and every preconnected
    one no warm-up took. Never raises."""
    preconnect.close_all()
    with _IDLE_LOCK:
        conns = [c for idle in _IDLE.values() for c in idle]
        _IDLE.clear()
    for conn in conns:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - cleanup
            pass


class Session:
    """One registry, one identity: follows challenges, caches the token, and
    keeps its connections open (http.client, keep-alive)."""

    def __init__(
        self,
        registry: str,
        auth: tuple[str, str] | None = None,
        *,
        ca_file: str | None = None,
        insecure: bool = False,
        timeout: float = TIMEOUT,
    ) -> None:
        self.registry = registry
        self.host = api_host(registry)  # Docker Hub's API is not at docker.io
        self.timeout = timeout
        self.auth = auth
        self.ctx = _context(ca_file, insecure)
        self._trust = (ca_file, insecure)
        _await_warm_up(self.host, timeout)
        # HTTPS first; plain HTTP only for --insecure or a loopback registry,
        # as the docker CLI does for registries it treats as insecure.
        self.schemes: list[str] = ["https", "http"] if insecure or is_loopback(self.host) else ["https"]
        if _SCHEME.get(self.host) in self.schemes:
            self.schemes = [_SCHEME[self.host]]
        self.authorization: str | None = None
        self.token_scope: str | None = None
        self._connections: dict[tuple[str, str], http.client.HTTPConnection] = {}

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

    def _basic(self) -> str | None:
        if self.auth is None:
            return None
        user, password = self.auth
        return "Basic " + encode_auth(user, password)

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None = None) -> Answer:
        parts = urllib.parse.urlsplit(url)
        key = (parts.scheme, parts.netloc)
        headers = {"User-Agent": USER_AGENT, **headers}
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in (1, 2):
            conn = self._connections.get(key)
            if conn is None:
                conn = (
                    _take_idle(parts.scheme, parts.netloc, self._trust)
                    if attempt == 1 and parts.netloc == self.host
                    else None
                ) or _connection(parts.scheme, parts.netloc, self.timeout, self.ctx)
                conn.timeout = self.timeout
                if conn.sock is not None:
                    conn.sock.settimeout(self.timeout)
                self._connections[key] = conn
            fresh, began = conn.sock is None, time.monotonic()
            try:
                try:
                    conn.request(method, target, body=body, headers=headers)
                except ssl.SSLCertVerificationError as exc:  # a ValueError too, but the handshake's
                    raise CertificateUntrusted(self.registry, f"{parts.scheme}://{parts.netloc}", exc) from None
                except ValueError:  # never shown: http.client's message quotes the header
                    raise _Unsendable() from None
                response = conn.getresponse()
                assert isinstance(response, _Answer)
                body = response.read_all()
                if response.will_close:
                    conn.close()
                    del self._connections[key]
                if trace.PATH is not None:  # the path only: a token realm's query is no business of a trace
                    trace.event(
                        "http", method=method, host=parts.netloc, path=parts.path, status=response.status,
                        ms=round((time.monotonic() - began) * 1000, 2), new=fresh,
                    )  # fmt: skip
                return response.status, dict(response.getheaders()), body
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server closed meanwhile: once more, fresh.
                conn.close()
                self._connections.pop(key, None)
                if attempt == 2:
                    raise
            except BaseException as exc:
                conn.close()
                self._connections.pop(key, None)
                if trace.PATH is not None:
                    trace.event("http", method=method, host=parts.netloc, path=parts.path, status=None,
                                error=type(exc).__name__, ms=round((time.monotonic() - began) * 1000, 2), new=fresh)  # fmt: skip
                bad = _malformed(exc, f"{parts.scheme}://{parts.netloc}{parts.path}")
                if bad:
                    raise RegistryAnswerError(self.registry, bad) from None
                raise
        raise AssertionError("unreachable")

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, scope: str = "", body: bytes | None = None
    ) -> Answer:
        """``method`` on ``path`` (with ``body``), answering an auth challenge once."""
        if self.schemes == ["https", "http"]:
            return self._request_either(method, path, dict(headers or {}), scope, body)
        scheme = self.schemes[0]
        try:
            result = self._request(method, f"{scheme}://{self.host}{path}", dict(headers or {}), scope, body)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, TLS, timeout
            raise RegistryUnreachable(self.registry, f"cannot reach {path} ({scheme}: {exc})") from None
        _SCHEME[self.host] = scheme
        return result

    def _request_either(
        self, method: str, path: str, headers: dict[str, str], scope: str, body: bytes | None = None
    ) -> Answer:
        """HTTPS, falling back to plain HTTP, with the fallback's round trips
        overlapped: while HTTPS is tried, a `_PlainProbe` connects over plain
        HTTP and asks `GET /v2/` with no credentials. If HTTPS answers, the
        probe is dropped and nothing else is sent in clear; if it fails, the
        probe's connection and its challenge are already there, so the real
        request goes out with its credentials at once. On a WAN that is two
        round trips fewer than trying one scheme after the other."""
        probe = _PlainProbe(self.host, self.timeout)
        try:
            result = self._request(method, f"https://{self.host}{path}", dict(headers), scope, body)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, TLS, timeout
            https_error = f"https: {exc}"
        except BaseException:  # HTTPS answered, but not usably: no fallback to clear text
            probe.drop()
            raise
        else:
            probe.drop()
            self.schemes = ["https"]  # stick to what worked
            _SCHEME[self.host] = "https"
            return result
        conn, error = probe.wait()
        if conn is None:
            raise RegistryUnreachable(self.registry, f"cannot reach {path} ({https_error}; http: {error})")
        self._connections[("http", self.host)] = conn
        self.schemes = ["http"]
        _SCHEME[self.host] = "http"  # before the challenge: a session that sees it sees where it was learnt
        if probe.challenge is not None and self.host not in _CHALLENGE:
            _CHALLENGE[self.host] = probe.challenge
        try:
            return self._request(method, f"http://{self.host}{path}", headers, scope, body)
        except (OSError, http.client.HTTPException) as exc:
            raise RegistryUnreachable(self.registry, f"cannot reach {path} ({https_error}; http: {exc})") from None

    def _request(self, method: str, url: str, headers: dict[str, str], scope: str, body: bytes | None = None) -> Answer:
        over = url.partition(":")[0]  # the scheme the registry is reached over, for check_realm
        known = _CHALLENGE.get(self.host)
        if known is not None and over == "https" and _SCHEME.get(self.host) == "http":
            # Learnt by another session over plain HTTP while this one still
            # tries HTTPS (a source and a target on one host, in parallel): an
            # http realm is fine for that scheme, not for this one, so this
            # attempt gets its own challenge rather than answer that one.
            known = None
        if self.authorization is None and known is not None and self.auth is not None:
            # Answer the challenge this registry is known to send before it is sent.
            self._authorize(*known, scope, over)
        elif (
            known is not None
            and known[0] == "bearer"
            and scope
            and not _covers(self.token_scope, scope)
            and self.auth is not None
        ):
            self._authorize(*known, scope, over)  # a token for another scope
        if self.authorization:
            headers["Authorization"] = self.authorization
        status, answer, content = self._send(method, url, headers, body)
        if status != 401:
            return status, answer, content
        value = _header(answer, "WWW-Authenticate")
        challenge, params = parse_challenge(value)
        usable = challenge == "basic" or (challenge == "bearer" and bool(params.get("realm")))
        if not usable and self.auth is not None and "Authorization" not in headers:
            # Not a refusal of credentials never sent: a challenge that can't be answered.
            raise RegistryAnswerError(
                self.registry,
                f"{url.partition('?')[0]} answered HTTP 401 "
                + (
                    f"with a WWW-Authenticate challenge authscope cannot answer: {self._shown(value)} "
                    '(it answers Basic, and Bearer with realm="...")'
                    if value.strip()
                    else "with no WWW-Authenticate challenge"
                ),
            )
        if not usable or (challenge == "basic" and self.auth is None):
            return status, answer, content
        if challenge == "basic" and headers.get("Authorization") == self._basic():
            return status, answer, content  # the credentials went with it (the challenge was known): refused
        _CHALLENGE[self.host] = (challenge, params)
        self._authorize(challenge, params, scope, over)
        headers["Authorization"] = self.authorization or ""
        return self._send(method, url, headers, body)

    def _authorize(self, challenge: str, params: dict[str, str], scope: str, over: str) -> None:
        if challenge == "basic":
            self.authorization = self._basic()
        else:
            self.authorization = "Bearer " + self._token(params, scope, over)
            self.token_scope = scope

    def _shown(self, text: str) -> str:
        """`_shown`, with this session's secrets masked first: a hostile
        registry that has seen them could echo them back."""
        for secret in self._secrets():
            text = text.replace(secret, "[MASKED]")
        return _shown(text)

    def _secrets(self) -> list[str]:
        found = [self.auth[1]] if self.auth and self.auth[1] else []
        basic = self._basic()
        if basic:
            found.append(basic.partition(" ")[2])
        if self.authorization:
            found.append(self.authorization.partition(" ")[2])
        return [s for s in found if s]

    def _token(self, params: dict[str, str], scope: str, over: str) -> str:
        realm = params["realm"]
        shown = self._shown(realm)
        check_realm(self.registry, realm, over, shown)  # before anything is sent: the credentials go with it
        query = {"service": params["service"]} if params.get("service") else {}
        if scope or params.get("scope"):
            query["scope"] = scope or params["scope"]
        url = realm + (("&" if "?" in realm else "?") + urllib.parse.urlencode(query) if query else "")
        basic = self._basic()
        try:
            status, _headers, body = self._send("GET", url, {"Authorization": basic} if basic else {})
        except (OSError, http.client.HTTPException) as exc:  # the registry answered; its token service did not
            raise RegistryUnreachable(self.registry, f"cannot reach its token service {shown} ({exc})") from None
        if status == 401:
            raise TokenRefused(self.registry, status, shown, "the token service refused the credentials")
        if status != 200:
            raise RegistryHTTPError(
                self.registry, status, shown, "the token service refused", retry_after(dict(_headers))
            )
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep
            raise RegistryAnswerError(
                self.registry, f"the token service {shown} answered with something that is not JSON"
            ) from None
        if not isinstance(answer, dict):
            raise RegistryAnswerError(
                self.registry, f"the token service {shown} answered with a JSON {type(answer).__name__}, not an object"
            )
        token = answer.get("token") or answer.get("access_token")
        if not token:
            raise RegistryAnswerError(self.registry, f"the token service {shown} gave no token")
        if not isinstance(token, str):
            raise RegistryAnswerError(
                self.registry,
                f"the token service {shown} gave a token that is a JSON {type(token).__name__}, not a string",
            )
        if not _VISIBLE.fullmatch(token):  # never shown: it is a credential
            raise RegistryAnswerError(
                self.registry,
                f"the token service {shown} gave a token that cannot go in an HTTP header "
                "(it holds spaces, control characters such as CR/LF, or non-ASCII)",
            )
        return token

    def manifest_digest(self, repository: str, reference: str) -> str:
        """The digest of ``repository:reference`` (a tag or a digest)."""
        path = f"/v2/{repository}/manifests/{reference}"
        scope = f"repository:{repository}:pull"
        accept = {"Accept": MANIFEST_TYPES}
        status, headers, _ = self.request("HEAD", path, accept, scope)
        digest = _header(headers, "Docker-Content-Digest")
        if status == 200 and digest:
            if not _DIGEST.fullmatch(digest):  # it goes into reports, logs and the tools' argv
                raise RegistryAnswerError(
                    self.registry,
                    f"{self.registry}/{repository}:{reference} has a Docker-Content-Digest that is not a digest: "
                    f"{self._shown(digest)}",
                )
            return digest
        body = b""
        if status == 200 or status == 405:  # no digest header / no HEAD: hash the body
            status, headers, body = self.request("GET", path, accept, scope)
            if status == 200:
                return "sha256:" + hashlib.sha256(body).hexdigest()
        raise self._refused(status, f"{self.registry}/{repository}:{reference}", body, headers)

    def resolve(self, repository: str, reference: str) -> tuple[str, tuple[str, bytes] | None]:
        """``manifest_digest`` with one GET instead of a HEAD and then a GET:
        (the digest, and (media type, body) when the body hashes to it, else
        None). For a caller that reads the manifest anyway (referrers.discover)."""
        got = self._get_manifest(repository, reference)
        assert got is not None  # only a missing_ok read answers None
        headers, body, hashed = got
        digest = _header(headers, "Docker-Content-Digest") or hashed
        if not _DIGEST.fullmatch(digest):  # it goes into reports, logs and the tools' argv
            raise RegistryAnswerError(
                self.registry,
                f"{self.registry}/{repository}:{reference} has a Docker-Content-Digest that is not a digest: "
                f"{self._shown(digest)}",
            )
        media_type = _header(headers, "Content-Type").partition(";")[0].strip()
        return digest, ((media_type, body) if hashed == digest else None)

    def _get_manifest(
        self, repository: str, reference: str, missing_ok: bool = False
    ) -> tuple[dict[str, str], bytes, str] | None:
        """GET a manifest: (headers, body, the body's digest); None for a 404
        when ``missing_ok``. One asked for by digest must hash to it: a
        registry that answers with other bytes is refused."""
        path = f"/v2/{repository}/manifests/{reference}"
        status, headers, body = self.request("GET", path, {"Accept": MANIFEST_TYPES}, f"repository:{repository}:pull")
        if status == 404 and missing_ok:
            return None
        if status != 200:
            raise self._refused(status, f"{self.registry}/{repository}:{reference}", body, headers)
        hashed = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and hashed != reference:
            raise RegistryAnswerError(
                self.registry, f"{self.registry}/{repository}@{reference} answered with a manifest of digest {hashed}"
            )
        return headers, body, hashed

    def _refused(self, status: int, where: str, body: bytes, headers: dict[str, str]) -> RegistryHTTPError:
        """The error for an answer that is not the one asked for: the registry's
        own message quoted (masked), and the Retry-After it asked for."""
        return RegistryHTTPError(
            self.registry, status, where, self._shown_explained(status, body), retry_after(headers)
        )

    def _shown_explained(self, status: int, body: bytes) -> str:
        text = explain_status(status, body)
        for secret in self._secrets():
            text = text.replace(secret, "[MASKED]")
        return text

    # -- what referrers need (referrers.py): manifests, tags, the referrers API --------

    def find_digest(self, repository: str, reference: str) -> str | None:
        """`manifest_digest`, or None when there is no such manifest (404)."""
        try:
            return self.manifest_digest(repository, reference)
        except RegistryHTTPError as exc:
            if exc.status == 404:
                return None
            raise

    def manifest(self, repository: str, reference: str) -> tuple[str, str, bytes] | None:
        """(media type, digest, body) of ``repository:reference``, None for a 404.

        A manifest asked for by digest must hash to it: a registry that
        answers with other bytes is refused."""
        got = self._get_manifest(repository, reference, missing_ok=True)
        if got is None:
            return None
        headers, body, digest = got
        media_type = _header(headers, "Content-Type").partition(";")[0].strip()
        return media_type, digest, body

    def tags(self, repository: str, pages: int = 100) -> list[str] | None:
        """Every tag of ``repository`` (following the Link header's pages);
        None when the registry will not list them (401, 403, 404, 405)."""
        path: str | None = f"/v2/{repository}/tags/list"
        found: list[str] = []
        for _ in range(pages):
            if path is None:
                return found
            status, headers, body = self.request(
                "GET", path, {"Accept": "application/json"}, f"repository:{repository}:pull"
            )
            if status in (401, 403, 404, 405):
                return None
            if status != 200:
                raise RegistryHTTPError(self.registry, status, f"{self.registry}/{repository} (tags)")
            answer = _json_object(self.registry, body, f"the tag list of {repository}")
            tags = answer.get("tags") or []
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise RegistryAnswerError(self.registry, f"the tag list of {repository} is not a list of strings")
            found.extend(tags)
            path = _next_page(_header(headers, "Link"))
        raise RegistryAnswerError(self.registry, f"the tag list of {repository} has more than {pages} pages")

    def referrers(self, repository: str, digest: str) -> list[dict[str, Any]] | None:
        """The OCI 1.1 referrers API's descriptors for ``digest``; None when
        the registry has no referrers API (it answers 404, 400, 405 or 501)."""
        path = f"/v2/{repository}/referrers/{digest}"
        accept = {"Accept": "application/vnd.oci.image.index.v1+json"}
        status, headers, body = self.request("GET", path, accept, f"repository:{repository}:pull")
        if status in (400, 404, 405, 501):
            return None
        if status != 200:
            raise RegistryHTTPError(self.registry, status, f"{self.registry}/{repository} (referrers of {digest})")
        if "json" not in _header(headers, "Content-Type"):
            return None  # a registry without the API that answers its own page
        return descriptors(self.registry, body, f"the referrers of {repository}@{digest}")

    def put_manifest(self, repository: str, reference: str, media_type: str, body: bytes) -> str:
        """PUT a manifest; its digest (which the registry must agree on)."""
        path = f"/v2/{repository}/manifests/{reference}"
        headers = {"Content-Type": media_type}
        status, answer, refusal = self.request("PUT", path, headers, f"repository:{repository}:pull,push", body)
        if status not in (200, 201):
            raise self._refused(status, f"PUT {self.registry}/{repository}:{reference}", refusal, answer)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        said = _header(answer, "Docker-Content-Digest")
        if said and said != digest:
            raise RegistryAnswerError(
                self.registry, f"{self.registry}/{repository}:{reference} stored {self._shown(said)}, not {digest}"
            )
        return digest

    def challenge(self) -> str:
        """The auth scheme this registry challenged with ("basic", "bearer"),
        "" when it has not challenged (yet, or at all: an open registry)."""
        known = _CHALLENGE.get(self.host)
        return known[0] if known else ""

    def granted(self, repository: str, actions: str = "push,pull") -> tuple[str, ...] | None:
        """What a Bearer registry's token service grants on ``repository`` when
        asked for ``actions``: the ``access`` claim of the JWT it returns, read
        without verifying its signature (authscope only reports it; the
        registry checks it). None when the token is opaque (not a JWT with an
        ``access`` claim). Nothing is sent to the registry itself; the token
        this session already holds is read when it was asked for as much (the
        credential check's pull,push): one trip to the token service, not two."""
        known = _CHALLENGE.get(self.host)
        if known is None or known[0] != "bearer":
            raise RegistryAnswerError(self.registry, "it sent no Bearer challenge: there is no token to read")
        scope = f"repository:{repository}:{actions}"
        held = self.authorization or ""
        if held.startswith("Bearer ") and _covers(self.token_scope, scope):
            return token_actions(held.partition(" ")[2], repository)
        token = self._token(known[1], scope, self.schemes[0])
        return token_actions(token, repository)

    def upload_probe(self, repository: str) -> tuple[int, int | None]:
        """Start a blob upload to ``repository`` and cancel it at once: (the
        POST's status, the DELETE's, None when none was sent). 202 means the
        account may push; no blob, manifest or tag is written, and the upload
        session the registry opened is deleted."""
        scope = f"repository:{repository}:push,pull"
        status, headers, _ = self.request("POST", f"/v2/{repository}/blobs/uploads/", {}, scope)
        if status != 202:
            return status, None
        parts = urllib.parse.urlsplit(_header(headers, "Location"))
        if (parts.netloc and parts.netloc != self.host) or not parts.path.startswith("/v2/"):
            return status, None  # an upload elsewhere: never sent our credentials
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        cancelled, _, _ = self.request("DELETE", target, {}, scope)
        return status, cancelled

    def head_digest(self, repository: str, reference: str) -> str | None:
        """The digest ``repository:reference`` holds, read with HEAD only; None
        when it does not exist (404). Never a GET, even when the registry sends
        no Docker-Content-Digest (RegistryAnswerError then): Harbor counts a
        manifest GET as a pull and uses it for retention (issue 15)."""
        return self.held_digest(repository, reference, self.head_manifest(repository, reference))

    def head_manifest(self, repository: str, reference: str, scope: str = "") -> Answer:
        """The answer to HEAD of ``repository:reference`` (with the pull token, or ``scope``'s)."""
        path = f"/v2/{repository}/manifests/{reference}"
        return self.request("HEAD", path, {"Accept": MANIFEST_TYPES}, scope or f"repository:{repository}:pull")

    def held_digest(self, repository: str, reference: str, answer: Answer) -> str | None:
        """What head_digest makes of ``answer``, a HEAD of ``repository:reference``."""
        status, headers, _ = answer
        if status == 404:
            return None
        digest = _header(headers, "Docker-Content-Digest")
        if status != 200:  # a HEAD has no body: the status says it, and Retry-After
            raise self._refused(status, f"{self.registry}/{repository}:{reference}", b"", headers)
        if not _DIGEST.fullmatch(digest):
            raise RegistryAnswerError(
                self.registry,
                f"{self.registry}/{repository}:{reference} answered HEAD without a usable Docker-Content-Digest: "
                f"{self._shown(digest) if digest else '(none)'}",
            )
        return digest

    def sibling(self) -> Session:
        """Another session to this registry with this one's identity, scheme and
        token, but connections of its own: for requests made at the same time
        on other threads (a Session is not thread-safe: one connection per
        host, one token). The caller closes it."""
        twin = Session(self.registry, self.auth, insecure=True, timeout=self.timeout)  # no CA store loaded twice
        twin.ctx = self.ctx
        twin.schemes = list(self.schemes)
        twin.authorization, twin.token_scope = self.authorization, self.token_scope
        return twin

    def warm(self) -> None:
        """Open the connection the next request will use (TCP, and TLS), sending
        nothing; a failure is left for that request to meet and report."""
        scheme = self.schemes[0]
        if len(self.schemes) != 1 or (scheme, self.host) in self._connections:
            return  # the scheme is not settled yet, or there is a connection already
        conn = _connection(scheme, self.host, self.timeout, self.ctx)
        try:
            conn.connect()
        except (OSError, ValueError):
            conn.close()
            return
        self._connections[(scheme, self.host)] = conn


def _covers(held: str | None, wanted: str) -> bool:
    """True when a token asked for scope ``held`` was asked for every action of ``wanted``:
    ``repository:app:pull,push`` covers ``repository:app:pull``, so a target's credential
    check (pull,push) and its digest read-back (pull) share one token, with no second
    challenge and no second trip to the token service. A token granted fewer actions than
    asked for is refused with a 401, which is answered as before (a fresh token)."""
    if held is None:
        return False
    if held == wanted:
        return True
    h_kind, _, h_rest = held.rpartition(":")
    w_kind, _, w_rest = wanted.rpartition(":")
    return bool(h_kind) and h_kind == w_kind and set(w_rest.split(",")) <= set(h_rest.split(","))


def _json_object(registry: str, body: bytes, what: str) -> dict[str, Any]:
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        raise RegistryAnswerError(registry, f"{what} is not JSON") from None
    if not isinstance(answer, dict):
        raise RegistryAnswerError(registry, f"{what} is a JSON {type(answer).__name__}, not an object")
    return answer


def descriptors(registry: str, body: bytes, what: str) -> list[dict[str, Any]]:
    """The ``manifests`` of an image index, each checked to be a descriptor."""
    manifests = _json_object(registry, body, what).get("manifests") or []
    if not isinstance(manifests, list):
        raise RegistryAnswerError(registry, f"{what}: manifests is not a list")
    for item in manifests:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("digest"), str)
            and _DIGEST.fullmatch(item["digest"])
            and isinstance(item.get("mediaType"), str)
        ):
            raise RegistryAnswerError(registry, f"{what} holds an entry that is not a descriptor")
    return manifests


def _next_page(link: str) -> str | None:
    """The path of a Link header's rel="next" page (the registry's own path only)."""
    match = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', link)
    if not match:
        return None
    parts = urllib.parse.urlsplit(match.group(1))
    if parts.scheme or parts.netloc or not parts.path.startswith("/v2/"):
        return None  # another host: not followed
    return parts.path + (f"?{parts.query}" if parts.query else "")


def token_actions(token: str, repository: str) -> tuple[str, ...] | None:
    """The actions a registry token's ``access`` claim grants on ``repository``
    (docker/distribution's token spec), unverified; None for an opaque token."""
    import base64

    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, RecursionError):  # not base64url, not UTF-8, not JSON
        return None
    access = claims.get("access") if isinstance(claims, dict) else None
    if not isinstance(access, list):
        return None
    found: list[str] = []
    for entry in access:
        if isinstance(entry, dict) and entry.get("type") == "repository" and entry.get("name") == repository:
            found += [a for a in entry.get("actions") or [] if isinstance(a, str)]
    return tuple(dict.fromkeys(found))


class _PlainProbe:
    """`GET /v2/` over plain HTTP, with no credentials, in a thread of its own.

    Only ever a bare `/v2/` with no Authorization: if the registry turns out
    to speak HTTPS, the clear-text side saw nothing but that. Its connection
    is kept for the plain-HTTP requests that follow when HTTPS fails.
    """

    def __init__(self, host: str, timeout: float, preconnected: bool = False) -> None:
        self.host = host
        self.timeout = timeout
        self.preconnected = preconnected  # the warm-up's: on preconnect's connection, if there is one
        self.conn: http.client.HTTPConnection | None = None
        self.challenge: tuple[str, dict[str, str]] | None = None
        self.error = ""
        self._dropped = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"authscope-probe-{host}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = _connection("http", self.host, self.timeout, None, _ProbeAnswer)
        try:
            if self.preconnected:
                _attach(conn, None)
            conn.request("GET", "/v2/", headers={"User-Agent": USER_AGENT})
            response = conn.getresponse()
            assert isinstance(response, _Answer)
            response.read_all()
            if response.status == 401:
                challenge, params = parse_challenge(response.getheader("WWW-Authenticate") or "")
                if challenge == "basic" or (challenge == "bearer" and params.get("realm")):
                    self.challenge = (challenge, params)
            if response.will_close:
                conn.close()  # http.client reconnects on the next request
        except (OSError, http.client.HTTPException, _TooLarge) as exc:
            conn.close()
            self.error = _malformed(exc, f"http://{self.host}/v2/") or str(exc) or type(exc).__name__
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

    def wait(self) -> tuple[http.client.HTTPConnection | None, str]:
        """(the open plain-HTTP connection, or None and why not)."""
        self._thread.join(self.timeout + 1)
        with self._lock:
            if self.conn is None:
                self._dropped = True  # a probe that answers after all is closed, not kept
                self.error = self.error or "timed out"
            return self.conn, self.error


def verify(registry: str, username: str, password: str, *, ca_file: str | None = None, insecure: bool = False) -> None:
    """Raise RegistryError unless ``registry`` accepts the credentials at /v2/."""
    at = ""
    try:
        with Session(registry, (username, password), ca_file=ca_file, insecure=insecure) as session:
            status, _, _ = session.request("GET", "/v2/")
    except CertificateUntrusted as exc:  # login's own option, not a targets file's
        raise RegistryError(registry, f"{exc.reason}: pass --ca-file PATH, the CA that issued it") from None
    except TokenRefused as exc:
        status, at = exc.status, f" at its token service {exc.where}"
    except RegistryHTTPError as exc:  # the token service refused
        status = exc.status
    if status == 200:
        return
    if status in (401, 403):
        raise RegistryError(
            registry,
            f"the registry rejected the credentials of user {username!r}{at} (HTTP {status}); "
            + ("a robot account whose secret is wrong or expired, or that is disabled (Harbor): " if at else "")
            + "check the username and the password variable or file",
        )
    raise RegistryHTTPError(registry, status, f"{registry}/v2/")

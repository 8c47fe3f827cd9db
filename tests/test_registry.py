"""The registry client's scheme fallback, against real local servers.

A registry that may speak plain HTTP (``insecure: true``, or a loopback
address) is tried over HTTPS first; while that runs, a probe connects over
plain HTTP and asks ``GET /v2/`` with no credentials, so a fallback costs no
extra round trips. What must hold:

- over a plain-HTTP registry, the request goes out with its credentials on
  the probe's connection, answered at once (no second 401 round trip);
- over a registry that speaks HTTPS, nothing but that bare ``GET /v2/`` ever
  reaches the clear-text side: no credentials, no repository name;
- when neither scheme answers, the error names both.

The servers are real sockets on 127.0.0.1; the HTTPS one serves a
certificate from tests/support's openssl CA.
"""

from __future__ import annotations

import base64
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import NamedTuple

import pytest

from authscope import registry
from authscope.registry import RegistryUnreachable, Session

USER, PASSWORD = "ci-user", "registry-test-password"
DIGEST = "sha256:" + "ab" * 32
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


class Seen(NamedTuple):
    scheme: str  # "https" or "http"
    connection: int  # the server's count of the connection it came on
    method: str
    path: str
    authorization: str | None


class Handler(BaseHTTPRequestHandler):
    """A registry's /v2/ and one manifest, behind a Basic challenge.

    Serves TLS or clear text on the same port, by the first byte the client
    sends (0x16 opens a TLS handshake), when the server has a TLS context.
    """

    protocol_version = "HTTP/1.1"  # keep-alive, as registries do
    server: DualServer

    def setup(self) -> None:
        self.scheme = "http"
        ctx = self.server.tls
        if ctx is not None and self.request.recv(1, socket.MSG_PEEK) == b"\x16":
            self.request = ctx.wrap_socket(self.request, server_side=True)
            self.scheme = "https"
        with self.server.lock:
            self.server.connections += 1
            self.number = self.server.connections
        super().setup()

    def finish(self) -> None:
        super().finish()
        if self.scheme == "https":  # the server closes the raw socket, not its TLS wrapper
            self.request.close()

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, body: bool) -> None:
        auth = self.headers.get("Authorization")
        with self.server.lock:
            self.server.seen.append(Seen(self.scheme, self.number, self.command, self.path, auth))
        if auth != BASIC:
            code, headers = 401, {"WWW-Authenticate": 'Basic realm="test"'}
        elif self.path == "/v2/":
            code, headers = 200, {}
        elif self.path == "/v2/app/manifests/1.0":
            code, headers = 200, {"Docker-Content-Digest": DIGEST}
        else:
            code, headers = 404, {}
        payload = b"{}"
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)


class DualServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.connections = 0
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def clear(self) -> list[Seen]:
        return [s for s in self.seen if s.scheme == "http"]


@pytest.fixture(autouse=True)
def _forget_registries() -> Iterator[None]:
    """What the client learnt about a host (scheme, challenge) is per process: start clean."""
    registry._SCHEME.clear()
    registry._CHALLENGE.clear()
    yield
    registry._SCHEME.clear()
    registry._CHALLENGE.clear()


def serve(tls: ssl.SSLContext | None) -> Iterator[DualServer]:
    server = DualServer(tls)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def plain() -> Iterator[DualServer]:
    yield from serve(None)


@pytest.fixture(scope="module")
def ca_and_context(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    from tests.support.registry import CA

    work = tmp_path_factory.mktemp("tls")
    ca = CA.create(work / "ca")
    cert, key = ca.issue(work / "server")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ca.cert, ctx


@pytest.fixture
def dual(ca_and_context: tuple[Path, ssl.SSLContext]) -> Iterator[DualServer]:
    yield from serve(ca_and_context[1])


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def leaks(seen: list[Seen]) -> list[Seen]:
    """Clear-text requests that carry more than the probe's bare `GET /v2/`."""
    return [s for s in seen if s.scheme == "http" and (s.authorization or s.path != "/v2/" or s.method != "GET")]


# -- a plain-HTTP registry ---------------------------------------------------------


def test_plain_registry_answers_on_the_probes_connection_without_a_second_challenge(plain: DualServer) -> None:
    with Session(plain.host, (USER, PASSWORD), insecure=True) as session:
        assert session.manifest_digest("app", "1.0") == DIGEST
        assert session.schemes == ["http"]
    # The probe's bare /v2/ learnt the challenge; the manifest request went
    # out with its credentials on that same connection and was answered.
    assert [(s.method, s.path, s.authorization) for s in plain.seen] == [
        ("GET", "/v2/", None),
        ("HEAD", "/v2/app/manifests/1.0", BASIC),
    ]
    assert plain.seen[0].connection == plain.seen[1].connection
    assert registry._SCHEME[plain.host] == "http"


def test_a_later_session_goes_straight_to_plain_http(plain: DualServer) -> None:
    with Session(plain.host, (USER, PASSWORD), insecure=True) as first:
        first.request("GET", "/v2/")
    before = len(plain.seen)
    with Session(plain.host, (USER, PASSWORD), insecure=True) as second:
        assert second.schemes == ["http"]
        assert second.manifest_digest("app", "1.0") == DIGEST
    assert [(s.method, s.authorization) for s in plain.seen[before:]] == [("HEAD", BASIC)]


def test_without_credentials_the_challenge_is_returned(plain: DualServer) -> None:
    with Session(plain.host, None, insecure=True) as session:
        status, headers, _ = session.request("GET", "/v2/")
    assert status == 401 and "Basic" in headers["WWW-Authenticate"]
    assert all(s.authorization is None for s in plain.seen)


# -- a registry that speaks HTTPS ----------------------------------------------------


def test_https_registry_sees_nothing_but_a_bare_probe_in_clear(
    dual: DualServer, ca_and_context: tuple[Path, ssl.SSLContext]
) -> None:
    ca_file = str(ca_and_context[0])
    with Session(dual.host, (USER, PASSWORD), ca_file=ca_file) as session:  # loopback: HTTP allowed
        assert session.schemes == ["https", "http"]
        assert session.manifest_digest("app", "1.0") == DIGEST
        assert session.schemes == ["https"]
        assert session.request("GET", "/v2/")[0] == 200
    # The probe ran; give its request time to arrive, then check what it carried.
    assert wait_for(lambda: bool(dual.clear())), "the plain-HTTP probe never arrived"
    assert leaks(dual.seen) == []
    assert [s.path for s in dual.seen if s.authorization] == ["/v2/app/manifests/1.0", "/v2/"]
    assert all(s.scheme == "https" for s in dual.seen if s.authorization)
    assert registry._SCHEME[dual.host] == "https"


def test_control_the_leak_check_catches_credentials_sent_in_clear(dual: DualServer) -> None:
    """Without HTTPS first (the scheme forced to plain HTTP), credentials do go
    out in clear, and `leaks` sees them: the check above can fail."""
    with Session(dual.host, (USER, PASSWORD)) as session:
        session.schemes = ["http"]
        assert session.manifest_digest("app", "1.0") == DIGEST  # the test server speaks clear text too
    assert [(s.path, s.authorization) for s in leaks(dual.seen)] == [
        ("/v2/app/manifests/1.0", None),
        ("/v2/app/manifests/1.0", BASIC),
    ]


# -- nothing answers -------------------------------------------------------------------


def test_unreachable_names_both_schemes() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    session = Session(f"127.0.0.1:{port}", (USER, PASSWORD), insecure=True, timeout=5)
    with session, pytest.raises(RegistryUnreachable) as info:
        session.request("GET", "/v2/")
    assert "https:" in info.value.reason and "http:" in info.value.reason
    assert f"127.0.0.1:{port}" not in registry._SCHEME


def test_https_only_registry_does_not_probe_clear_text(
    dual: DualServer, ca_and_context: tuple[Path, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry that is neither insecure nor loopback gets HTTPS only: no probe at all."""
    monkeypatch.setattr(registry, "is_loopback", lambda host: False)
    with Session(dual.host, (USER, PASSWORD), ca_file=str(ca_and_context[0])) as session:
        assert session.schemes == ["https"]
        assert session.manifest_digest("app", "1.0") == DIGEST
    time.sleep(0.2)  # a probe, had one started, would have arrived by now
    assert dual.clear() == []

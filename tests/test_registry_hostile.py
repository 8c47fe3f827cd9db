"""A hostile registry, against the real client over real sockets (issue 12, items 6-8).

What must hold, each guarded by a test named after it:

- item 6, token realms: the Basic credentials go to a Bearer realm only over
  https when the registry was reached over https (loopback included), over
  http only when the registry itself was reached over plain http, and never
  to another scheme, a relative realm or one with no host. A refused realm
  is an error naming the registry and the realm (exit 1), with nothing sent
  to it; in a fan-out it is that target's failure, with a hint.
- item 7, loopback: only ``localhost`` and the 127.0.0.0/8 and ``::1``
  literals are loopback, so only they get the plain-HTTP fallback.
- item 8, bad answers: a token answer that is not a JSON object, a token that
  is not a string or can't go in a header, a garbage status line, too many or
  too long headers, a body that never ends, an unanswerable challenge: exit 1
  with a message naming what was wrong, never exit 70, never a secret; in a
  fan-out, a per-target failure.

The hostile servers are raw sockets on 127.0.0.1 (`Hostile`): they write
whatever bytes a test wants, which http.server would not. One port speaks
TLS (a certificate from tests/support's CA) and clear text, told apart by the
first byte, like tests/test_registry.py's `DualServer`.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from authscope import dockerconfig, registry
from authscope.registry import RealmRefused, RegistryAnswerError, RegistryUnreachable, Session
from tests.helpers import LOCAL_PASSWORD, TARGET_PASSWORD, read_json, run_authscope
from tests.reliability.fakeregistry import FakeRegistry
from tests.test_registry import DualServer, serve

USER = "ci-user"
BASIC = "Basic " + base64.b64encode(f"{USER}:{TARGET_PASSWORD}".encode()).decode()
GOOD_TOKEN = "hostile-test-token-0003"  # what the token services here hand out


class Request(NamedTuple):
    scheme: str  # "https" or "http"
    method: str
    path: str
    headers: dict[str, str]  # names in lower case

    @property
    def authorization(self) -> str:
        return self.headers.get("authorization", "")


Answer = bytes | Iterable[bytes]  # bytes: one answer, kept alive; an iterable: streamed, then closed


def answer(req: Request, status: int = 200, headers: Iterable[tuple[str, str]] = (), body: bytes = b"{}") -> bytes:
    head = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in headers), f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(head).encode("latin-1") + (b"" if req.method == "HEAD" else body)


class _RawHandler(socketserver.BaseRequestHandler):
    server: Hostile

    def handle(self) -> None:
        sock: socket.socket = self.request
        scheme = "http"
        try:
            if sock.recv(1, socket.MSG_PEEK) == b"\x16":  # a TLS ClientHello
                if self.server.tls is None:
                    return  # no TLS here: the client's HTTPS attempt fails, as against a plain registry
                sock = self.server.tls.wrap_socket(sock, server_side=True)
                scheme = "https"
            rfile = sock.makefile("rb")
            while True:
                line = rfile.readline(65537)
                if not line.strip():
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (h := rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                req = Request(scheme, method, path, headers)
                with self.server.lock:
                    self.server.seen.append(req)
                reply = self.server.respond(req)
                if isinstance(reply, bytes):
                    sock.sendall(reply)
                    continue
                for chunk in reply:
                    sock.sendall(chunk)
                return
        except (OSError, ValueError):  # the client gave up, as it should
            return
        finally:
            if sock is not self.request:
                sock.close()


class Hostile(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A registry (and token service) on 127.0.0.1 that answers with ``respond``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.lock = threading.Lock()
        self.seen: list[Request] = []
        self.respond: Callable[[Request], Answer] = lambda req: answer(req, 404)
        super().__init__(("127.0.0.1", 0), _RawHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def to(self, path: str) -> list[Request]:
        return [r for r in self.seen if r.path.startswith(path)]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    """(the CA's certificate, a server context with a certificate for 127.0.0.1, ::1 and localhost)."""
    from tests.support.registry import CA

    work = tmp_path_factory.mktemp("tls")
    ca = CA.create(work / "ca")
    cert, key = ca.issue(work / "server")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ca.cert, ctx


@pytest.fixture
def hostile(tls: tuple[Path, ssl.SSLContext]) -> Iterator[Callable[..., Hostile]]:
    """``hostile(tls=True)``: a started Hostile server, stopped after the test."""
    started: list[Hostile] = []
    context = tls[1]

    def make(tls: bool = True) -> Hostile:
        server = Hostile(context if tls else None)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def ca(tls: tuple[Path, ssl.SSLContext]) -> str:
    return str(tls[0])


@pytest.fixture(autouse=True)
def _forget_registries() -> Iterator[None]:
    """What the client learnt about a host (scheme, challenge) is per process: start clean."""
    registry._SCHEME.clear()
    registry._CHALLENGE.clear()
    yield
    registry._SCHEME.clear()
    registry._CHALLENGE.clear()


def bearer(
    server: Hostile, realm: str, token: Callable[[Request], Answer] = lambda req: b""
) -> Callable[[Request], Answer]:
    """A registry whose /v2/ asks for a Bearer token from ``realm`` and whose
    /token answers with ``token(req)`` (default: GOOD_TOKEN for the right Basic)."""

    def respond(req: Request) -> Answer:
        if req.path.startswith("/token"):
            got = token(req)
            if got:
                return got
            if req.authorization != BASIC:
                return answer(req, 401)
            return answer(req, 200, body=json.dumps({"token": GOOD_TOKEN}).encode())
        if req.authorization == f"Bearer {GOOD_TOKEN}":
            return answer(req, 200)
        return answer(req, 401, [("WWW-Authenticate", f'Bearer realm="{realm}",service="hostile"')])

    return respond


def login_verify(main: Any, host: str, *extra: str) -> int:
    code: int = main("login", host, "-u", USER, "--password-env", "TARGET_PASSWORD", "--verify", *extra)
    return code


def assert_no_secret(text: str, *more: str) -> None:
    for secret in (TARGET_PASSWORD, BASIC.split()[1], LOCAL_PASSWORD, GOOD_TOKEN, *more):
        assert secret not in text, f"a secret in the output: {text}"


def assert_not_internal(text: str) -> None:
    assert "internal error" not in text and "Traceback" not in text, text


# == item 6: token realms ===================================================================


def test_an_http_realm_of_an_https_registry_is_refused_before_anything_is_sent(
    hostile: Callable[..., Hostile], ca: str, main: Any, capsys: pytest.CaptureFixture[str], base: Path
) -> None:
    """Guards check_realm's downgrade rule: a registry reached over https
    (here a loopback one) that points its Bearer realm at plain http gets
    exit 1, naming the registry and the realm, and the realm sees nothing."""
    server = hostile()
    realm = f"http://{server.host}/token"
    server.respond = bearer(server, realm)
    assert login_verify(main, server.host, "--ca-file", ca) == 1
    err = capsys.readouterr().err
    assert f"{server.host}: refused the token realm '{realm}'" in err
    assert "plain http while the registry was reached over https" in err
    assert server.to("/token") == [], "the realm was sent a request"
    assert_no_secret(err)
    assert not (base / "config.json").exists()


def test_control_without_the_realm_check_the_credentials_go_in_clear(
    hostile: Callable[..., Hostile], ca: str, main: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same hostile registry with check_realm switched off: the Basic
    header reaches the clear-text realm, and the login even succeeds."""
    monkeypatch.setattr(registry, "check_realm", lambda *args: None)
    server = hostile()
    server.respond = bearer(server, f"http://{server.host}/token")
    assert login_verify(main, server.host, "--ca-file", ca) == 0
    assert [(r.scheme, r.authorization) for r in server.to("/token")] == [("http", BASIC)]


BAD_REALMS = {
    "ftp": "ftp://{host}/token",
    "gopher": "gopher://{host}/token",
    "file": "file:///etc/passwd",
    "relative": "/token",
    "scheme-relative": "//{host}/token",
    "no host": "https:///token",
    "user info": "https://someone@{host}/token",
    "port out of range": "https://127.0.0.1:99999/token",
    "a space": "https://{host}/to ken",
    "a tab": "https://{host}/\tx",
    "non-ASCII": "https://{host}/t\u00f6ken",
}


@pytest.mark.parametrize("realm", BAD_REALMS.values(), ids=BAD_REALMS.keys())
def test_a_realm_that_is_not_an_http_url_is_refused(
    realm: str, hostile: Callable[..., Hostile], ca: str, main: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Guards check_realm's scheme and URL checks: no scheme but http/https,
    a host, no user info, nothing urlsplit would quietly drop."""
    server = hostile()
    realm = realm.format(host=server.host)
    server.respond = bearer(server, realm)
    assert login_verify(main, server.host, "--ca-file", ca) == 1
    err = capsys.readouterr().err
    assert f"{server.host}: refused the token realm " in err and "nothing was sent to it" in err
    assert ascii(realm)[:60] in err, "the message names the realm"
    assert server.to("/token") == [] and server.to("/etc") == []
    assert_no_secret(err)
    assert_not_internal(err)


def test_control_an_ftp_realm_unchecked_gets_the_basic_header(
    hostile: Callable[..., Hostile], ca: str, main: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without check_realm an ftp: realm is spoken to in HTTP, in clear: the damage is real."""
    monkeypatch.setattr(registry, "check_realm", lambda *args: None)
    server = hostile()
    server.respond = bearer(server, f"ftp://{server.host}/token")
    login_verify(main, server.host, "--ca-file", ca)
    assert [(r.scheme, r.authorization) for r in server.to("/token")] == [("http", BASIC)]


def test_an_https_realm_on_another_host_gets_the_credentials(
    hostile: Callable[..., Hostile], ca: str, main: Any, base: Path
) -> None:
    """The rule is about the scheme, not the host (Docker Hub's and GitLab's
    token services live elsewhere): registry 127.0.0.1, realm localhost."""
    server = hostile()
    server.respond = bearer(server, f"https://localhost:{server.port}/token")
    assert login_verify(main, server.host, "--ca-file", ca) == 0
    assert [(r.scheme, r.authorization) for r in server.to("/token")] == [("https", BASIC)]
    assert server.host in read_json(base / "config.json")["auths"]


def test_an_http_realm_of_a_plain_http_registry_is_allowed(
    hostile: Callable[..., Hostile], main: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A registry reached over plain HTTP (loopback, so the fallback applies)
    may have an http realm: nothing is downgraded."""
    server = hostile(tls=False)
    server.respond = bearer(server, f"http://{server.host}/token")
    assert login_verify(main, server.host) == 0, capsys.readouterr().err
    assert [(r.scheme, r.authorization) for r in server.to("/token")] == [("http", BASIC)]


def test_an_https_realm_of_a_plain_http_registry_is_allowed(
    hostile: Callable[..., Hostile], ca: str, main: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plain-HTTP registry, https token service: an upgrade, fine."""
    registry_server, token_server = hostile(tls=False), hostile()
    registry_server.respond = bearer(registry_server, f"https://{token_server.host}/token")
    token_server.respond = bearer(token_server, "unused")
    assert login_verify(main, registry_server.host, "--ca-file", ca) == 0, capsys.readouterr().err
    assert [(r.scheme, r.authorization) for r in token_server.to("/token")] == [("https", BASIC)]


def test_a_realm_learnt_earlier_is_checked_again_for_the_scheme_of_this_request(
    hostile: Callable[..., Hostile], ca: str
) -> None:
    """A challenge learnt over plain HTTP (insecure) is not reused for a
    session that reaches the same registry over https."""
    server = hostile()
    registry._CHALLENGE[server.host] = ("bearer", {"realm": f"http://{server.host}/token", "service": "x"})
    with Session(server.host, (USER, TARGET_PASSWORD), ca_file=ca) as session:
        session.schemes = ["https"]
        with pytest.raises(RealmRefused):
            session.request("GET", "/v2/")
    assert server.seen == [], "the preemptive token request went out"


def test_a_realm_with_a_query_keeps_it(hostile: Callable[..., Hostile], ca: str) -> None:
    """service= and scope= are added with & to a realm that has a query already."""
    server = hostile()
    server.respond = bearer(server, f"https://{server.host}/token?tenant=a")
    with Session(server.host, (USER, TARGET_PASSWORD), ca_file=ca) as session:
        assert session.request("GET", "/v2/")[0] == 200
    assert [r.path for r in server.to("/token")] == ["/token?tenant=a&service=hostile"]


def fanout_file(tmp_path: Path, source: str, target_registry: str, ca_file: str = "", timeout: int = 60) -> Path:
    """One target, tool: custom (the copy is `sh -c echo`), no retries."""
    lines = [
        f"source: {source}/app:1.0",
        "tool: custom",
        'command: ["sh", "-c", "echo copied {destination}"]',
        "retries: 0",
        f"timeout: {timeout}",
        "targets:",
        "  - name: hostile",
        f"    registry: {target_registry}",
        "    repository: release/app",
        f"    username: {USER}",
        "    password_env: TARGET_PASSWORD",
    ]
    if ca_file:
        lines.append(f"    ca_file: {ca_file}")
    path = tmp_path / "authscope.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def source(main: Any) -> Iterator[FakeRegistry]:
    """A well-behaved source registry (Basic auth), with the base logged in to it."""
    with FakeRegistry("ci", LOCAL_PASSWORD) as fake:
        assert main("login", fake.host, "-u", "ci", "--password-env", "LOCAL_PASSWORD") == 0
        yield fake


def run_fanout(env: dict[str, str], tmp_path: Path, targets: Path) -> tuple[int, Any, str]:
    """The real CLI in its own process (the fan-out's log stream is bound at import)."""
    report = tmp_path / "report.json"
    result = run_authscope(["fanout", "-f", str(targets), "--json", str(report)], env)
    return result.returncode, read_json(report), result.stdout + result.stderr


def test_fanout_preflight_refuses_the_realm_as_a_target_failure(
    hostile: Callable[..., Hostile],
    ca: str,
    source: FakeRegistry,
    main: Any,
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    """Guards check_realm on the fan-out's credential check (and the hint
    fanout._check_credentials gives RealmRefused): the target fails, with
    the realm named and a hint, the realm sees nothing, nothing is copied."""
    server = hostile()
    realm = f"http://{server.host}/token"
    server.respond = bearer(server, realm)
    code, report, out = run_fanout(env, tmp_path, fanout_file(tmp_path, source.host, server.host, ca))
    assert code == 1, out
    (target,) = report["targets"]
    assert target["status"] == "failed" and target["attempts"] == 0
    assert f"refused the token realm '{realm}'" in target["error"]
    assert target["hint"] == RealmRefused.hint
    assert "Bearer realm must be an https URL" in out
    assert f"copied {server.host}" not in out
    assert server.to("/token") == []
    assert_no_secret(out + json.dumps(report))
    assert_not_internal(out + json.dumps(report))


def test_source_resolution_refuses_the_realm(
    hostile: Callable[..., Hostile], ca: str, main: Any, tmp_path: Path, env: dict[str, str]
) -> None:
    """Guards check_realm on fanout.resolve_source: the base's login for the
    source is not sent to an http realm; the run fails with exit 1."""
    server = hostile()
    server.respond = bearer(server, f"http://{server.host}/token")
    assert main("login", server.host, "-u", USER, "--password-env", "TARGET_PASSWORD") == 0
    targets = fanout_file(tmp_path, server.host, server.host).read_text()
    targets = targets.replace(
        f"source: {server.host}/app:1.0", f"source: {{image: {server.host}/app:1.0, ca_file: {ca}}}"
    )
    (tmp_path / "authscope.yml").write_text(targets)
    code, report, out = run_fanout(env, tmp_path, tmp_path / "authscope.yml")
    assert code == 1
    assert "cannot read the source" in report["error"] and "refused the token realm" in report["error"]
    assert server.to("/token") == []
    assert_no_secret(out)


# == item 7: what is loopback ================================================================

LOOPBACK = ["localhost", "LocalHost:5000", "127.0.0.1", "127.0.0.1:5000", "127.9.8.7:1", "[::1]:5000", "[::1]", "::1"]
NOT_LOOPBACK = [
    "127.attacker.example",
    "127.attacker.example:5000",
    "127.0.0.1.nip.io",
    "127.0.0.1.nip.io:5000",
    "localhost.evil.com",
    "localhost.evil.com:5000",
    "localhost.",
    "128.0.0.1",
    "[::2]:5000",
    "[::1]evil:5000",
    "127.1",  # inet_aton would take it; not a literal address
    "0x7f.0.0.1",
    "gitlab.local:4567",
    "",
]


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_literals(host: str) -> None:
    assert dockerconfig.is_loopback(host)


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_names_that_only_look_loopback_are_not(host: str) -> None:
    """Guards is_loopback's literal-only rule: the old prefix test said
    yes to every name starting with 127."""
    assert not dockerconfig.is_loopback(host)


@pytest.mark.parametrize("host", ["127.attacker.example:5000", "127.0.0.1.nip.io:5000", "localhost.evil.com:5000"])
def test_no_plain_http_fallback_and_no_crane_insecure_for_a_lookalike(host: str) -> None:
    """The two callers: the registry client tries only HTTPS, and an
    insecure source on such a name still needs crane's --insecure flag
    (crane itself only speaks plain HTTP to real loopback addresses)."""
    from authscope import tools
    from authscope.targets import ImageRef, Source
    from tests.test_fanout_unit import target

    assert Session(host, (USER, TARGET_PASSWORD)).schemes == ["https"]
    source = Source(ImageRef(host, "app", "1.0", None), insecure=True, ca_file=None)
    steps = tools.steps_for(source, target(), f"{host}/app:1.0")
    assert "--insecure" in steps[0].argv


def test_a_lookalike_name_gets_no_credentials_in_clear(plain: DualServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards is_loopback through the client: ``127.attacker.example``,
    resolving to a plain-HTTP registry (getaddrinfo stands in for the
    attacker's DNS), is tried over HTTPS only; nothing reaches it in clear."""
    port = plain.server_address[1]
    real = socket.getaddrinfo

    def attacker_dns(host: Any, *args: Any, **kw: Any) -> Any:
        return real("127.0.0.1" if host == "127.attacker.example" else host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", attacker_dns)
    with (
        Session(f"127.attacker.example:{port}", (USER, TARGET_PASSWORD), timeout=5) as session,
        pytest.raises(RegistryUnreachable),
    ):
        session.request("GET", "/v2/")
    time.sleep(0.2)  # a probe, had one started, would have arrived by now
    assert plain.clear() == []


def test_control_with_the_old_prefix_test_the_lookalike_gets_the_password_in_clear(
    plain: DualServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same name with the old ``startswith("127.")`` check: the plain
    HTTP fallback runs and the Basic header goes out in clear."""
    port = plain.server_address[1]
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, *a, **k: real("127.0.0.1" if host == "127.attacker.example" else host, *a, **k),
    )
    monkeypatch.setattr(registry, "is_loopback", lambda host: host.startswith("127."))
    with Session(f"127.attacker.example:{port}", ("ci-user", "registry-test-password"), timeout=5) as session:
        session.request("GET", "/v2/")
    assert any(s.authorization for s in plain.clear())


@pytest.fixture
def plain() -> Iterator[DualServer]:
    yield from serve(None)


def test_is_loopback_does_not_import_ipaddress_for_names() -> None:
    """Start-up: a plan's crane steps ask is_loopback; a host name spares the
    import (-S: some site-packages import ipaddress on their own)."""
    import subprocess
    import sys

    code = (
        "import sys; from authscope.dockerconfig import is_loopback; "
        "is_loopback('gitlab.local:4567'); is_loopback('localhost'); print('ipaddress' in sys.modules)"
    )
    import os
    from pathlib import Path

    # -S skips site, and with it the .pth of an editable install: name the package's root.
    plugin = str(Path(__file__).resolve().parents[1] / "plugin")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [plugin, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# == item 8: bad answers =========================================================================


def token_json(value: Any) -> Callable[[Request], Answer]:
    body = value if isinstance(value, bytes) else json.dumps(value).encode()
    return lambda req: answer(req, 200, [("Content-Type", "application/json")], body)


BAD_TOKEN_ANSWERS = {
    "a list": (token_json([GOOD_TOKEN]), "answered with a JSON list, not an object"),
    "a string": (token_json(GOOD_TOKEN), "answered with a JSON str, not an object"),
    "a number": (token_json(42), "answered with a JSON int, not an object"),
    "null": (token_json(None), "answered with a JSON NoneType, not an object"),
    "not JSON": (token_json(b"<html>sign in</html>"), "answered with something that is not JSON"),
    "not UTF-8": (token_json(b'{"token": "\xff\xfe"}'), "answered with something that is not JSON"),
    "nested too deep": (token_json(b"[" * 100_000), "answered with something that is not JSON"),
    "no token": (token_json({"expires_in": 300}), "gave no token"),
    "a number token": (token_json({"token": 42}), "a token that is a JSON int, not a string"),
    "an object token": (token_json({"token": {"a": 1}}), "a token that is a JSON dict, not a string"),
    "a CR/LF token": (token_json({"token": "abc\r\nX-Injected: 1"}), "cannot go in an HTTP header"),
    "a LF token": (token_json({"access_token": "abc\nX-Injected: 1"}), "cannot go in an HTTP header"),
    "a non-Latin-1 token": (token_json({"token": "tok\u2603en"}), "cannot go in an HTTP header"),
    "a NUL token": (token_json({"token": "tok\u0000X-Injected"}), "cannot go in an HTTP header"),
}


@pytest.mark.parametrize("hostile_answer", BAD_TOKEN_ANSWERS.values(), ids=BAD_TOKEN_ANSWERS.keys())
def test_a_bad_token_answer_is_a_clear_error(
    hostile_answer: tuple[Callable[[Request], Answer], str],
    hostile: Callable[..., Hostile],
    ca: str,
    main: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Guards Session._token's checks of the answer (a JSON object, a string
    token, header-safe): before them these ended in an AttributeError, a
    RecursionError or http.client's ValueError, exit 70 with a traceback
    that showed the token."""
    respond, expected = hostile_answer
    server = hostile()
    server.respond = bearer(server, f"https://{server.host}/token", respond)
    assert login_verify(main, server.host, "--ca-file", ca) == 1
    err = capsys.readouterr().err
    assert f"{server.host}: the token service 'https://{server.host}/token' " in err
    assert expected in err, err
    assert_no_secret(err, "X-Injected", "tok\u2603en")
    assert_not_internal(err)
    # Nothing but the token request was sent with credentials; no injected header reached the registry.
    assert all("x-injected" not in r.headers for r in server.seen)
    assert [r.path for r in server.seen if r.authorization] == ["/token?service=hostile"]


def test_a_header_http_client_refuses_is_an_error_that_does_not_quote_it(
    hostile: Callable[..., Hostile],
    ca: str,
    main: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Guards the second layer (_Unsendable in Session._send): with the token
    check switched off, http.client's ValueError, which quotes the header,
    becomes exit 1 with a message that does not."""
    monkeypatch.setattr(registry, "_VISIBLE", registry.re.compile(r"(?s).+"))
    server = hostile()
    server.respond = bearer(
        server, f"https://{server.host}/token", token_json({"token": "leaky-0005\r\nX-Injected: 1"})
    )
    assert login_verify(main, server.host, "--ca-file", ca) == 1
    err = capsys.readouterr().err
    assert f"the request to https://{server.host}/v2/ holds characters HTTP does not allow" in err, err
    assert_no_secret(err, "leaky-0005", "X-Injected")
    assert_not_internal(err)
    assert all("x-injected" not in r.headers for r in server.seen)


def test_control_http_client_rejects_a_crlf_header_with_a_valueerror_that_shows_it() -> None:
    """What the token check spares: http.client refuses the header with a
    ValueError whose message holds the token (exit 70 and a leak before)."""
    conn = http.client.HTTPConnection("127.0.0.1", 9)
    conn.putrequest("GET", "/v2/", skip_host=True)
    with pytest.raises(ValueError) as info:
        conn.putheader("Authorization", "Bearer secret-token-0004\r\nX-Injected: 1")
    assert "secret-token-0004" in str(info.value)


def head_of(status_line: bytes, *headers: bytes) -> bytes:
    return status_line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"Content-Length: 2\r\n\r\n{}"


def forever_chunked(req: Request) -> Iterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
    while True:
        yield chunk


def forever_length(req: Request) -> Iterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n"
    while True:
        yield b"b" * 0x10000


def forever_trailer(req: Request) -> Iterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"
    while True:
        yield b"X-Trailer: " + b"t" * 1000 + b"\r\n"


BAD_REGISTRY_ANSWERS: dict[str, tuple[Callable[[Request], Answer], str]] = {
    "150 headers": (
        lambda req: head_of(b"HTTP/1.1 200 OK", *(b"X-H%d: v" % i for i in range(150))),
        "sent a malformed answer (got more than 100 headers)",
    ),
    "a 70 KiB header line": (
        lambda req: head_of(b"HTTP/1.1 200 OK", b"X-Long: " + b"x" * 70_000),
        "sent a line that is too long (got more than 65536 bytes when reading header line)",
    ),
    "a 70 KiB status line": (lambda req: head_of(b"HTTP/1.1 200 " + b"x" * 70_000), "sent a line that is too long"),
    "a garbage status line": (lambda req: head_of(b"SSH-2.0-OpenSSH_9.6"), "a status line that is not HTTP"),
    "a status line echoing the Authorization": (
        lambda req: head_of(b"HTTP/1.1 2xx " + req.authorization.encode()),
        "a status line that is not HTTP",
    ),
    "HTTP/2.0": (lambda req: head_of(b"HTTP/2.0 200 OK"), "an HTTP version that is not HTTP/1.x"),
    "a body that never ends (chunked)": (forever_chunked, "sent an answer of more than 4352 KiB"),
    "a body that never ends (Content-Length)": (forever_length, "sent an answer of more than 4352 KiB"),
    "a chunked trailer that never ends": (forever_trailer, "sent an answer of more than 4352 KiB"),
}


def basic_registry(bad: Callable[[Request], Answer]) -> Callable[[Request], Answer]:
    """Basic challenge, then ``bad`` for the request that carries the
    credentials, over either scheme (a fallback to clear text shows in ``seen``)."""

    def respond(req: Request) -> Answer:
        if req.authorization:
            return bad(req)
        return answer(req, 401, [("WWW-Authenticate", 'Basic realm="hostile"')])

    return respond


@pytest.mark.parametrize("hostile_answer", BAD_REGISTRY_ANSWERS.values(), ids=BAD_REGISTRY_ANSWERS.keys())
def test_a_malformed_answer_is_a_clear_error(
    hostile_answer: tuple[Callable[[Request], Answer], str],
    hostile: Callable[..., Hostile],
    ca: str,
    main: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Guards _Bounded (the byte cap) and _malformed: http.client's
    LineTooLong, "more than 100 headers", BadStatusLine, UnknownProtocol
    and a body with no end are one error naming what was wrong, quoting
    nothing the server sent; over HTTPS they don't fall back to clear text."""
    bad, expected = hostile_answer
    server = hostile()
    server.respond = basic_registry(bad)
    started = time.monotonic()
    assert login_verify(main, server.host, "--ca-file", ca) == 1
    err = capsys.readouterr().err
    assert f"{server.host}: https://{server.host}/v2/ " in err and expected in err, err
    assert time.monotonic() - started < 20
    assert_no_secret(err)
    assert_not_internal(err)
    assert not [r for r in server.seen if r.scheme == "http" and r.authorization], "fell back to clear text"


def test_control_the_endless_body_is_really_endless(hostile: Callable[..., Hostile]) -> None:
    """A plain http.client read of the same server goes on past the cap:
    what stops authscope is the cap, not the server."""
    server = hostile(tls=False)
    server.respond = forever_chunked
    conn = http.client.HTTPConnection(server.host, timeout=10)
    conn.request("GET", "/v2/")
    response = conn.getresponse()
    assert len(response.read(3 * registry.MAX_ANSWER)) == 3 * registry.MAX_ANSWER
    conn.close()


def test_a_plain_side_that_streams_forever_does_not_keep_the_probe_reading(
    hostile: Callable[..., Hostile], ca: str
) -> None:
    """Guards the probe's bound (_ProbeAnswer): the HTTPS side answers, the
    clear-text side streams forever; the probe's thread stops at 64 KiB
    instead of reading (and holding memory) until the server gives up."""
    server = hostile()
    server.respond = lambda req: forever_chunked(req) if req.scheme == "http" else answer(req, 200)
    with Session(server.host, None, ca_file=ca, timeout=10) as session:
        assert session.request("GET", "/v2/")[0] == 200
    name = f"authscope-probe-{server.host}"
    deadline = time.monotonic() + 5
    while any(t.name == name for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == name for t in threading.enumerate()), "the probe is still reading"
    assert [r.scheme for r in server.seen if r.scheme == "http"] == ["http"]  # the probe did run


def trickle(req: Request) -> Iterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    for _ in range(1000):
        time.sleep(0.1)
        yield b"a"


def slow_headers(req: Request) -> Iterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\n"
    for i in range(100):
        time.sleep(0.1)
        yield b"X-Slow-%d: v\r\n" % i


@pytest.mark.parametrize("slow", [trickle, slow_headers], ids=["body", "headers"])
def test_an_answer_that_trickles_hits_the_timeout_for_the_whole_answer(
    slow: Callable[[Request], Answer], hostile: Callable[..., Hostile], ca: str
) -> None:
    """Guards _Bounded's deadline: each read comes within the socket's
    timeout, so only a bound on the whole answer stops it (~100 s otherwise)."""
    server = hostile()
    server.respond = basic_registry(slow)
    started = time.monotonic()
    with Session(server.host, (USER, TARGET_PASSWORD), ca_file=ca, timeout=1.0) as session:
        session.schemes = ["https"]
        with pytest.raises(RegistryUnreachable) as info:
            session.request("GET", "/v2/")
    assert time.monotonic() - started < 5
    assert "the answer did not end within 1s" in info.value.reason


def test_a_kept_alive_connection_gets_its_timeout_back(hostile: Callable[..., Hostile], ca: str) -> None:
    """_Bounded shortens the socket's timeout while it reads; the next
    request on the same connection has the whole timeout again."""
    server = hostile()
    server.respond = lambda req: answer(req, 200)
    with Session(server.host, None, ca_file=ca, timeout=7.0) as session:
        session.schemes = ["https"]
        session.request("GET", "/v2/")
        (conn,) = session._connections.values()
        assert conn.sock is not None and conn.sock.gettimeout() == 7.0
        session.request("GET", "/v2/")
    assert len({r.headers.get("host") for r in server.seen}) == 1


BAD_CHALLENGES = {
    "Bearer without a realm": ('Bearer service="x"', "cannot answer: 'Bearer service=\"x\"'"),
    "an unquoted realm": ("Bearer realm=https://x/token", "cannot answer"),
    "Negotiate": ("Negotiate abc", "cannot answer: 'Negotiate abc'"),
    "control bytes": ("\x01\x7f\xff garbage", "cannot answer: '\\x01\\x7f\\xff garbage'"),
    "empty": ("", "with no WWW-Authenticate challenge"),
}


@pytest.mark.parametrize("challenge", BAD_CHALLENGES.values(), ids=BAD_CHALLENGES.keys())
def test_an_unanswerable_challenge_is_not_called_a_rejection(
    challenge: tuple[str, str], hostile: Callable[..., Hostile], ca: str, main: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Guards Session._request's check of the 401: the credentials were never
    sent, so "rejected the credentials" would send the user to the wrong fix."""
    value, expected = challenge
    server = hostile()
    server.respond = lambda req: answer(req, 401, [("WWW-Authenticate", value)] if value else [])
    assert login_verify(main, server.host, "--ca-file", ca) == 1
    err = capsys.readouterr().err
    assert f"https://{server.host}/v2/ answered HTTP 401" in err and expected in err, err
    assert "rejected the credentials" not in err
    assert_no_secret(err)


def test_a_challenge_that_echoes_the_credentials_is_masked(hostile: Callable[..., Hostile], ca: str) -> None:
    """A registry that got the Basic header and sends it back in a challenge
    (then a realm) does not get it printed: Session._shown masks first."""
    server = hostile()

    def respond(req: Request) -> Answer:
        if req.authorization == BASIC:  # the Basic round worked; now it wants a token from a realm made of it
            return answer(req, 401, [("WWW-Authenticate", f'Bearer realm="http://x/{BASIC.split()[1]}"')])
        return answer(req, 401, [("WWW-Authenticate", 'Basic realm="x"')])

    server.respond = respond
    with Session(server.host, (USER, TARGET_PASSWORD), ca_file=ca) as session:
        session.schemes = ["https"]
        assert session.request("GET", "/v2/")[0] == 401
        with pytest.raises(RealmRefused) as info:
            session.request("GET", "/v2/app/manifests/1.0")
    assert "[MASKED]" in str(info.value)
    assert_no_secret(str(info.value))


def test_a_digest_that_is_not_one_is_refused(hostile: Callable[..., Hostile], ca: str) -> None:
    """Guards manifest_digest's check: the digest goes into logs, reports and
    the tools' argv (``source@digest``)."""
    server = hostile()
    server.respond = lambda req: answer(req, 200, [("Docker-Content-Digest", "sha256:abc --insecure \x1b[2J")])
    with Session(server.host, None, ca_file=ca) as session:
        session.schemes = ["https"]
        with pytest.raises(RegistryAnswerError) as info:
            session.manifest_digest("app", "1.0")
    assert "has a Docker-Content-Digest that is not a digest: 'sha256:abc --insecure \\x1b[2J'" in info.value.reason


def test_an_unreachable_token_service_is_named_and_does_not_fall_back(hostile: Callable[..., Hostile], ca: str) -> None:
    """The registry answered over HTTPS; only its token service is down: the
    error says so, and the registry is not retried in clear text."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    server = hostile()
    server.respond = bearer(server, f"https://127.0.0.1:{dead}/token")
    session = Session(server.host, (USER, TARGET_PASSWORD), ca_file=ca, timeout=5)
    with session, pytest.raises(RegistryUnreachable) as info:
        session.request("GET", "/v2/")
    assert f"cannot reach its token service 'https://127.0.0.1:{dead}/token'" in info.value.reason
    assert not [r for r in server.seen if r.scheme == "http" and r.path != "/v2/"]


# -- bad answers in a fan-out: a target's failure, not an internal error ---------------------------


def test_fanout_preflight_bad_token_answer_is_a_target_failure(
    hostile: Callable[..., Hostile],
    ca: str,
    source: FakeRegistry,
    main: Any,
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    """Guards the token-answer checks and fanout._check_credentials' hint: a
    JSON list from the token service fails the target (it was an "internal
    error: AttributeError" result before)."""
    server = hostile()
    server.respond = bearer(server, f"https://{server.host}/token", token_json([GOOD_TOKEN]))
    code, report, out = run_fanout(env, tmp_path, fanout_file(tmp_path, source.host, server.host, ca))
    assert code == 1, out
    (target,) = report["targets"]
    assert target["status"] == "failed"
    assert "answered with a JSON list, not an object" in target["error"]
    assert target["hint"] == RegistryAnswerError.hint
    assert_not_internal(out + json.dumps(report))
    assert_no_secret(out + json.dumps(report))


def test_fanout_preflight_answer_that_trickles_is_a_target_failure_within_the_timeout(
    hostile: Callable[..., Hostile],
    ca: str,
    source: FakeRegistry,
    main: Any,
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    """The preflight's session has the plan's timeout (here 2 s) for the whole answer."""
    server = hostile()
    server.respond = basic_registry(trickle)
    started = time.monotonic()
    code, report, out = run_fanout(env, tmp_path, fanout_file(tmp_path, source.host, server.host, ca, timeout=2))
    assert code == 1 and time.monotonic() - started < 15, out
    (target,) = report["targets"]
    assert target["status"] == "failed" and "the answer did not end within 2s" in target["error"]
    assert_not_internal(out)


@pytest.mark.parametrize(
    "bad",
    [
        BAD_REGISTRY_ANSWERS["150 headers"][0],
        lambda req: answer(req, 200, [("Docker-Content-Digest", "not a digest")]),
        forever_chunked,
    ],
    ids=["150 headers", "not a digest", "endless body"],
)
def test_fanout_verify_bad_answer_is_a_target_failure(
    bad: Callable[[Request], Answer],
    hostile: Callable[..., Hostile],
    ca: str,
    source: FakeRegistry,
    main: Any,
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    """Guards the read-back: after the copy, a destination that answers
    garbage fails its target with RegistryAnswerError's hint."""
    server = hostile()

    def respond(req: Request) -> Answer:
        if req.authorization != BASIC:
            return answer(req, 401, [("WWW-Authenticate", 'Basic realm="hostile"')])
        if req.path == "/v2/":
            return answer(req, 200)
        if req.method == "GET" and bad is forever_chunked:
            return bad(req)
        if req.method == "HEAD" and bad is forever_chunked:
            return answer(req, 200)  # no digest header: the client GETs and hashes the body
        return bad(req)

    server.respond = respond
    code, report, out = run_fanout(env, tmp_path, fanout_file(tmp_path, source.host, server.host, ca))
    assert code == 1, out
    (target,) = report["targets"]
    assert target["status"] == "failed", target
    assert f"copied {server.host}/release/app:1.0" in out, "the copy ran: this is the read-back failing"
    assert target["error"].startswith(f"could not read back {server.host}/release/app:1.0: ")
    assert target["hint"] == RegistryAnswerError.hint
    assert_not_internal(out + json.dumps(report))
    assert_no_secret(out + json.dumps(report))


def test_fanout_source_with_a_bad_digest_fails_the_run(
    hostile: Callable[..., Hostile], ca: str, main: Any, tmp_path: Path, env: dict[str, str]
) -> None:
    """A source digest that is not a digest never reaches a tool's argv: exit 1, nothing copied."""
    server = hostile()
    server.respond = lambda req: answer(req, 200, [("Docker-Content-Digest", "sha256:x; rm -rf /")])
    targets = fanout_file(tmp_path, server.host, server.host, ca).read_text()
    targets = targets.replace(
        f"source: {server.host}/app:1.0", f"source: {{image: {server.host}/app:1.0, ca_file: {ca}}}"
    )
    (tmp_path / "authscope.yml").write_text(targets)
    code, report, out = run_fanout(env, tmp_path, tmp_path / "authscope.yml")
    assert code == 1 and "not a digest" in report["error"] and f"copied {server.host}" not in out
    assert "rm -rf" not in " ".join(r.path for r in server.seen)

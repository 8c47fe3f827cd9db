"""preconnect (issue 16): a fan-out's TCP connections open while registry.py is still being
imported, and the warm-up sends its first request on them: no second connection.

Controls: without preconnect the warm-up opens its own connection; a preconnected socket
to another address is never used; an address nobody listens on costs nothing.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authscope import preconnect, registry
from tests.test_perf_paths import PLUGIN
from tests.test_perf_paths import counting as counting  # noqa: PLC0414 - the fixture, re-exported


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    preconnect.close_all()
    registry.close_idle()


@pytest.mark.parametrize(
    "netloc",
    ["127.0.0.1:5000", "harbor.example", "harbor.example:443", "[::1]:5000", "[::1]", "registry-1.docker.io", "a:1"],
)
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_address_is_what_http_client_connects_to(netloc: str, scheme: str) -> None:
    conn = (http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection)(netloc)
    assert preconnect.address(netloc, scheme) == (conn.host, conn.port)


@given(st.from_regex(r"[a-z0-9.\-]{1,20}(:[0-9]{1,5})?", fullmatch=True))
def test_address_never_differs_from_http_client(netloc: str) -> None:
    """Where the two read a host:port, they read the same; preconnect reads no more."""
    mine = preconnect.address(netloc, "https")
    try:
        conn = http.client.HTTPSConnection(netloc)
    except http.client.InvalidURL:  # a port out of range or not a number
        assert mine is None
        return
    assert mine is None or mine == (conn.host, conn.port)


def test_the_connection_opens_before_registry_is_imported(counting: tuple[str, dict[str, int]]) -> None:
    """In a fresh interpreter: preconnect alone opens the connection (the server has it)
    while neither registry.py nor http.client is imported; then the warm-up sends its
    `GET /v2/` on those connections (HTTPS tried, plain HTTP answered): the server sees
    no other."""
    host, counts = counting
    code = f"""
import sys, time
sys.path.insert(0, {PLUGIN!r})
from authscope import preconnect
preconnect.start({host!r}, ("https", "http"))  # a loopback registry: both, as the warm-up tries both
time.sleep(0.5)
print("imported", "authscope.registry" in sys.modules, "http.client" in sys.modules, flush=True)
input()  # the test looks at the server's count now
from authscope import registry
registry.warm_up({host!r}, insecure=True)
registry._await_warm_up({host!r}, 30)
print("learnt", registry._SCHEME.get({host!r}), {host!r} in registry._CHALLENGE, flush=True)
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/"
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline().split() == ["imported", "False", "False"]
        deadline = time.monotonic() + 10
        while counts.get("connections", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # the server counts a connection when its thread takes it up
        assert counts.get("connections") == 2, counts  # opened by preconnect alone
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split() == ["learnt", "http", "True"]
    finally:
        proc.communicate(timeout=30)
    assert counts["connections"] == 2, counts  # the warm-up's HTTPS try and its GET /v2/ went on them
    assert counts["401"] == 1, counts


def warm(host: str) -> None:
    registry._SCHEME.pop(host, None)
    registry.warm_up(host, insecure=True)
    registry._await_warm_up(host, 30)


def test_the_warm_up_takes_the_preconnected_socket(counting: tuple[str, dict[str, int]]) -> None:
    host, counts = counting
    preconnect.start(host, ("https", "http"))
    where = preconnect.address(host, "http")
    assert where is not None
    deadline = time.monotonic() + 10
    while (
        len(preconnect._OPEN.get(where, [])) < 2 or counts.get("connections", 0) < 2
    ) and time.monotonic() < deadline:
        time.sleep(0.01)  # the server counts a connection when its thread takes it up
    assert counts["connections"] == 2, counts  # both opened, before any warm-up
    warm(host)
    registry._WARMING.pop(host, None)
    assert counts["connections"] == 2 and registry._SCHEME[host] == "http", counts  # no other
    assert preconnect._OPEN.get(where, []) == [], "both taken"


def test_control_without_preconnect_the_warm_up_connects_itself(counting: tuple[str, dict[str, int]]) -> None:
    host, counts = counting
    listener = socket.create_server(("127.0.0.1", 0))  # another address: its socket is not for this host
    try:
        other = f"127.0.0.1:{listener.getsockname()[1]}"
        preconnect.start(other, ("http",))
        warm(host)
        registry._WARMING.pop(host, None)
        assert counts["connections"] == 2 and registry._SCHEME[host] == "http", counts  # its own two
        assert len(preconnect._OPEN[preconnect.address(other, "http") or ("", 0)]) == 1  # left, not taken
    finally:
        listener.close()


def test_an_address_nobody_listens_on_is_left_to_the_warm_up() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    host = f"127.0.0.1:{port}"
    preconnect.start(host, ("https", "http"))
    began = time.monotonic()
    assert preconnect.take("127.0.0.1", port, 5.0) is None  # refused at once: nothing waits out the 5 s
    assert time.monotonic() - began < 2.0


def test_take_waits_for_a_connect_in_flight_and_not_for_an_unknown_address() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    gate = threading.Event()
    real = socket.create_connection

    def slow(*args: object, **kw: object) -> socket.socket:
        gate.wait(5)
        return real(*args, **kw)  # type: ignore[arg-type]

    try:
        port = listener.getsockname()[1]
        began = time.monotonic()
        assert preconnect.take("127.0.0.1", port + 1 if port < 65535 else port - 1, 5.0) is None
        assert time.monotonic() - began < 0.5  # nothing started for it: no wait
        socket.create_connection = slow  # type: ignore[assignment]
        preconnect.start(f"127.0.0.1:{port}", ("http",))
        threading.Timer(0.3, gate.set).start()
        sock = preconnect.take("127.0.0.1", port, 5.0)
        assert sock is not None and time.monotonic() - began >= 0.3
        sock.close()
    finally:
        socket.create_connection = real  # type: ignore[assignment]
        gate.set()
        listener.close()


def _opened(where: tuple[str, int], n: int) -> None:
    deadline = time.monotonic() + 10
    while len(preconnect._OPEN.get(where, [])) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(preconnect._OPEN.get(where, [])) == n


def test_after_the_warm_up_no_preconnected_connection_is_left(counting: tuple[str, dict[str, int]]) -> None:
    """Three opened, two taken (the warm-up's HTTPS try and its probe): the third is closed
    when the warm-up ends, never left for a later request."""
    host, _ = counting
    where = preconnect.address(host, "http")
    assert where is not None
    preconnect.start(host, ("https", "http", "http"))
    _opened(where, 3)
    warm(host)
    registry._WARMING.pop(host, None)
    assert preconnect._OPEN.get(where, []) == []


def test_a_skipped_warm_up_closes_its_preconnected_connections(counting: tuple[str, dict[str, int]]) -> None:
    host, _ = counting  # the fixture marks the host's scheme known: its warm-up is skipped
    where = preconnect.address(host, "http")
    assert where is not None
    preconnect.start(host, ("https", "http"))
    _opened(where, 2)
    registry.warm_up(host, insecure=True)
    assert preconnect._OPEN.get(where, []) == []


def test_a_session_never_takes_a_preconnected_connection(counting: tuple[str, dict[str, int]]) -> None:
    """Only the warm-up takes one: a session's own plain-HTTP probe (a loopback registry,
    scheme unknown) connects itself, as a connection opened long before may be dead, or,
    in a long-lived process, lead to whatever listens on that port now. Control: the
    warm-up's probe does take it (test_the_warm_up_takes_the_preconnected_socket)."""
    host, counts = counting
    registry._SCHEME.pop(host, None)
    where = preconnect.address(host, "http")
    assert where is not None
    preconnect.start(host, ("http",))
    _opened(where, 1)
    with registry.Session(host, ("u", "p"), insecure=True) as session:
        session.request("GET", "/v2/")
    assert len(preconnect._OPEN.get(where, [])) == 1, "left as it was"
    registry._WARMING.pop(host, None)

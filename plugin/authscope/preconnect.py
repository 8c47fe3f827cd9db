"""TCP connections to a fan-out's registries, opened while authscope still imports.

A fan-out knows every registry it will talk to once the targets file is read;
importing what talks to them (registry.py: http.client with its email parser,
ssl) takes tens of milliseconds more. `start` opens the TCP connections the
warm-up (registry.warm_up) will send its first request on, each in a thread of
its own, so the handshake's round trip overlaps with those imports. Nothing is
sent: TLS, if any, starts when the warm-up takes the socket (registry._attach).

Only `socket`, `threading` and `time` here: this module is imported before the rest.
Only the warm-up that follows takes them; then `discard` closes what it did not
take (registry._warm), and `close_all` whatever is left (registry.close_idle).
"""

from __future__ import annotations

import socket
import threading
import time

_OPEN: dict[tuple[str, int], list[socket.socket]] = {}
_PENDING: dict[tuple[str, int], list[threading.Thread]] = {}
_DISCARDED: set[tuple[str, int]] = set()  # discarded while still connecting: close what connects
_LOCK = threading.Lock()
_PORTS = {"https": 443, "http": 80}


def address(netloc: str, scheme: str) -> tuple[str, int] | None:
    """(host, port) of ``netloc`` as http.client reads it (brackets off an IPv6
    literal, the scheme's port when none is given); None when it can't be read."""
    host, port = netloc, ""
    if netloc.startswith("["):
        host, bracket, rest = netloc[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    elif netloc.count(":") == 1:
        host, _, port = netloc.partition(":")
    if not host:
        return None
    if not port:
        return host, _PORTS[scheme]
    return (host, int(port)) if port.isdigit() and 0 < int(port) < 65536 else None


def start(netloc: str, schemes: tuple[str, ...], timeout: float = 30.0) -> None:
    """Open a connection to ``netloc`` for each of ``schemes`` ("https", "http"),
    in the background (``timeout``: registry.TIMEOUT, what the warm-up would wait)."""
    for scheme in schemes:
        where = address(netloc, scheme)
        if where is None:
            continue
        thread = threading.Thread(target=_open, args=(where, timeout), name=f"authscope-connect-{netloc}", daemon=True)
        with _LOCK:
            _PENDING.setdefault(where, []).append(thread)
        thread.start()


def _open(where: tuple[str, int], timeout: float) -> None:
    try:
        sock = socket.create_connection(where, timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as http.client's connect
    except OSError:  # left for the warm-up's own connection to meet and report
        sock = None
    with _LOCK:
        pending = _PENDING.get(where, [])
        if threading.current_thread() in pending:
            pending.remove(threading.current_thread())
        if sock is not None and where in _DISCARDED:
            dropped, sock = sock, None
        else:
            dropped = None
        if not pending:
            _DISCARDED.discard(where)
        if sock is not None:
            _OPEN.setdefault(where, []).append(sock)
    if dropped is not None:
        dropped.close()


def take(host: str, port: int, wait: float) -> socket.socket | None:
    """A connection `start` opened to (host, port), waiting at most ``wait`` for one
    still connecting; None when there is none (the caller connects itself)."""
    where = (host, port)
    with _LOCK:
        pending = list(_PENDING.get(where, []))
        ready = _OPEN.get(where)
        if ready:
            return ready.pop()
    deadline = time.monotonic() + wait  # one wait in all, however many are connecting
    for thread in pending:
        thread.join(max(0.0, deadline - time.monotonic()))
        with _LOCK:
            ready = _OPEN.get(where)
            if ready:
                return ready.pop()
    return None


def discard(netloc: str) -> None:
    """Close the connections to ``netloc`` (either scheme's) no one took, now and as
    the ones still connecting finish: only the warm-up that follows `start` takes
    one, never a later request (a connection kept that long may be closed by the
    server, or, in a long-lived process, lead to another server on the same port).
    Never raises."""
    wheres = {w for w in (address(netloc, "https"), address(netloc, "http")) if w is not None}
    with _LOCK:
        socks = [s for w in wheres for s in _OPEN.pop(w, [])]
        for w in wheres:
            if _PENDING.get(w):
                _DISCARDED.add(w)
    for sock in socks:
        try:
            sock.close()
        except OSError:
            pass


def close_all() -> None:
    """Close every connection no one took. Never raises."""
    with _LOCK:
        socks = [s for opened in _OPEN.values() for s in opened]
        _OPEN.clear()
    for sock in socks:
        try:
            sock.close()
        except OSError:
            pass

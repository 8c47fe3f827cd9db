"""A latency-injecting TCP proxy: an emulated WAN link in front of a loopback service.

Every byte that crosses the proxy, in either direction, is delivered
`delay` seconds after it arrived (a delay line: chunks keep their order and
their spacing, so throughput is not divided by the latency, as on a real long
link). A new connection first waits one round trip (2 x delay) before the
proxy connects upstream and starts relaying, like a TCP handshake over the
link. So with delay=25 ms: connect 50 ms, each request/response exchange
50 ms more.

Bounded: at most `window` bytes per direction per connection are in flight
(read but not yet delivered); a full window stops reading, and TCP back
pressure does the rest. That is the link's bandwidth-delay product: a single
connection moves at most window / delay bytes per second (4 MiB / 25 ms =
~160 MiB/s by default), many connections share the machine's CPU.

Self-stopping: `stop()` ends it; it also stops by itself after `lifetime`
seconds, and its thread is a daemon, so it never outlives the process.
Loopback only: it refuses to listen on, or relay to, anything else.

Counts bytes per direction (`upstream_to_client` is what the upstream sent:
for a registry, its egress) and connections, for the source-egress benchmark.

    python3 benchmarks/wanproxy.py --upstream 127.0.0.1:5000 --delay-ms 25   # standalone
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

CHUNK = 256 * 1024
DEFAULT_WINDOW = 4 * 1024 * 1024
DEFAULT_LIFETIME = 3600.0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class Counters:
    client_to_upstream: int = 0  # requests, uploads
    upstream_to_client: int = 0  # responses, downloads: the upstream's egress
    connections: int = 0

    def snapshot(self) -> Counters:
        return Counters(self.client_to_upstream, self.upstream_to_client, self.connections)


class _Link:
    """One direction of one connection: a bounded delay line."""

    def __init__(self, delay: float, window: int) -> None:
        self.delay = delay
        self.window = window
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.in_flight = 0
        self.room = asyncio.Event()
        self.room.set()
        self.dead = False

    def kill(self) -> None:
        self.dead = True
        self.room.set()

    async def receive(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self.dead:
                while self.in_flight >= self.window and not self.dead:
                    self.room.clear()
                    await self.room.wait()
                data = await reader.read(CHUNK)
                self.in_flight += len(data)
                self.queue.put_nowait((loop.time() + self.delay, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            self.queue.put_nowait((loop.time() + self.delay, b""))

    async def deliver(
        self, writer: asyncio.StreamWriter, counters: Counters, upstream_to_client: bool, abort: Callable[[], None]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self.dead:
                due, data = await self.queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                self.in_flight -= len(data)
                self.room.set()
                if upstream_to_client:
                    counters.upstream_to_client += len(data)
                else:
                    counters.client_to_upstream += len(data)
        except (ConnectionError, OSError):
            abort()  # the peer is gone: end the other direction too


class LoopThread:
    """One event loop on a daemon thread; several proxies can share it (no GIL contest between them).

    It stops by itself after `lifetime` seconds.
    """

    def __init__(self, lifetime: float = DEFAULT_LIFETIME) -> None:
        self.lifetime = lifetime
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="wanproxy", daemon=True)

    def start(self) -> LoopThread:
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    def call(self, coro: Awaitable[T], timeout: float = 10.0) -> T:
        """Run `coro` on the loop; its result."""
        if not self.alive():
            raise RuntimeError("the wanproxy loop has stopped")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        timer = self.loop.call_later(self.lifetime, self._expire)
        try:
            self.loop.run_forever()
        finally:
            timer.cancel()
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    def _expire(self) -> None:
        print(f"wanproxy: lifetime of {self.lifetime:g}s reached, stopping", file=sys.stderr)
        self.loop.stop()


class WanProxy:
    """A delay-line proxy from 127.0.0.1:<port> to `upstream`.

    Runs on `loop` when given (shared with other proxies), else on a loop
    thread of its own, which stops by itself after `lifetime` seconds.
    """

    def __init__(
        self,
        upstream: str,
        *,
        delay: float = 0.025,
        window: int = DEFAULT_WINDOW,
        lifetime: float = DEFAULT_LIFETIME,
        listen: str = "127.0.0.1:0",
        loop: LoopThread | None = None,
    ) -> None:
        self.upstream_host, self.upstream_port = _split(upstream)
        listen_host, listen_port = _split(listen)
        for what, host in (("upstream", self.upstream_host), ("listen address", listen_host)):
            if not _loopback(host):
                raise ValueError(f"{what} {host} is not a loopback address: this proxy only emulates a WAN locally")
        self.delay = delay
        self.window = window
        self.counters = Counters()
        self._listen = (listen_host, listen_port)
        self._own_loop = loop is None
        self._loop = loop or LoopThread(lifetime)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self._server is not None and self._loop.alive()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> WanProxy:
        if self._own_loop:
            self._loop.start()
        try:
            self._loop.call(self._open())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the listener and every connection; idempotent."""
        if self._server is not None and self._loop.alive():
            try:
                self._loop.call(self._close())
            except (RuntimeError, TimeoutError):
                pass
        self._server = None
        if self._own_loop:
            self._loop.stop()

    def __enter__(self) -> WanProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset_counters(self) -> Counters:
        """The counters so far, and start again from zero (call between runs)."""
        before = self.counters.snapshot()
        self.counters.client_to_upstream = self.counters.upstream_to_client = self.counters.connections = 0
        return before

    async def _open(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._listen[0], self._listen[1], limit=CHUNK)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    # -- one connection ------------------------------------------------------------

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream_w: asyncio.StreamWriter | None = None
        try:
            self.counters.connections += 1
            _nodelay(client_w)
            await asyncio.sleep(2 * self.delay)  # the handshake's round trip
            upstream_r, upstream_w = await asyncio.open_connection(self.upstream_host, self.upstream_port, limit=CHUNK)
            _nodelay(upstream_w)
            up, down = _Link(self.delay, self.window), _Link(self.delay, self.window)
            writers = (client_w, upstream_w)

            def abort() -> None:
                for link in (up, down):
                    link.kill()
                    link.queue.put_nowait((0.0, b""))
                for w in writers:
                    w.close()

            await asyncio.gather(
                up.receive(client_r),
                up.deliver(upstream_w, self.counters, False, abort),
                down.receive(upstream_r),
                down.deliver(client_w, self.counters, True, abort),
            )
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (client_w, upstream_w):
                if w is not None:
                    w.close()
            self._tasks.discard(task)


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT on loopback, e.g. 127.0.0.1:5000")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT on loopback (default: an ephemeral port)")
    parser.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay (default 25: 50 ms RTT)")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="bytes in flight per direction")
    parser.add_argument("--lifetime", type=float, default=600.0, help="stop by itself after this many seconds")
    a = parser.parse_args(argv)
    try:
        proxy = WanProxy(a.upstream, delay=a.delay_ms / 1000, window=a.window, lifetime=a.lifetime, listen=a.listen)
    except ValueError as exc:
        parser.error(str(exc))
    proxy.start()
    print(f"listening on {proxy.host} -> {a.upstream}, {a.delay_ms:g} ms each way", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: proxy.stop())
    try:
        while proxy.alive():
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
        c = proxy.counters
        print(
            f"connections {c.connections}, upstream->client {c.upstream_to_client} B, client->upstream {c.client_to_upstream} B"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

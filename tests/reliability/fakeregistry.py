"""A fake registry that can hold a request until the test releases it.

It answers just what a fan-out's own HTTP calls need: ``GET /v2/`` (the
credentials check) and ``HEAD``/``GET`` of a manifest (resolving the source,
verifying destinations), with Basic auth. The copies themselves are made by
``tool: custom`` commands, so no blobs are served.

``hold(phase)`` makes the next requests of that phase wait: ``"source"`` (the
source's manifest), ``"ping"`` (a target's ``/v2/``), ``"verify"`` (a
destination's manifest). ``arrived(phase)`` tells when one is waiting, and
``release(phase)`` lets them go.

``other_image_at`` (a set of repositories) makes the read-back of those
destinations answer another image's manifest and digest, as a registry does
when the copy landed something else (a single-platform copy, a conversion).

Destinations start empty (``fresh``, the default): the first manifest request
for a destination tag answers 404 without waiting on any phase, as a new
repository does to authscope's up-to-date check (issue 15); after that it is
answered as if the copy had landed, since the copies are commands the fake
cannot see. With ``fresh`` False every destination already holds the image.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}'
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
OTHER_MANIFEST = MANIFEST.replace(b'"layers":[]', b'"layers":[],"annotations":{"converted":"yes"}')
OTHER_DIGEST = "sha256:" + hashlib.sha256(OTHER_MANIFEST).hexdigest()
PHASES = ("source", "ping", "verify")
_MANIFEST_PATH = re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<ref>[^/]+)$")


class FakeRegistry:
    def __init__(self, username: str, password: str, source_repository: str = "app") -> None:
        self.username = username
        self.password = password
        self.source_repository = source_repository
        self.other_image_at: set[str] = set()
        self.fresh = True
        self._looked_up: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self._held = {phase: False for phase in PHASES}
        self._arrived = {phase: threading.Event() for phase in PHASES}
        self._release = {phase: threading.Event() for phase in PHASES}
        self._closed = threading.Event()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _authorized(self) -> bool:
                expected = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
                return self.headers.get("Authorization", "") == f"Basic {expected}"

            def _serve(self) -> None:
                registry.requests.append((self.command, self.path))
                if not self._authorized():
                    self._send(401, b"{}", {"WWW-Authenticate": 'Basic realm="fake"'})
                    return
                if self.path == "/v2/":
                    registry._wait("ping")
                    self._send(200, b"{}", {"Content-Type": "application/json"})
                    return
                match = _MANIFEST_PATH.match(self.path)
                if match is None:
                    self._send(404, b"{}")
                    return
                destination = match.group("repo") != registry.source_repository
                if destination and registry.fresh and self.path not in registry._looked_up:
                    registry._looked_up.add(self.path)
                    # A first HEAD of a target's tag: at a registry whose challenge authscope
                    # knows (its warm-up), that is the credential check, as GET /v2/ is above.
                    registry._wait("ping")
                    self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
                    return
                registry._wait("verify" if destination else "source")
                other = match.group("repo") in registry.other_image_at
                self._send(
                    200,
                    OTHER_MANIFEST if other else MANIFEST,
                    {
                        "Content-Type": "application/vnd.oci.image.manifest.v1+json",
                        "Docker-Content-Digest": OTHER_DIGEST if other else DIGEST,
                    },
                )

            do_GET = _serve  # noqa: N815 - http.server's naming
            do_HEAD = _serve  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _wait(self, phase: str) -> None:
        if self._held[phase]:
            self._arrived[phase].set()
            self._release[phase].wait(timeout=120)

    def hold(self, phase: str) -> None:
        self._held[phase] = True

    def arrived(self, phase: str, timeout: float = 30.0) -> bool:
        return self._arrived[phase].wait(timeout)

    def release(self, phase: str) -> None:
        self._held[phase] = False
        self._release[phase].set()

    def close(self) -> None:
        for phase in PHASES:
            self.release(phase)
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FakeRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

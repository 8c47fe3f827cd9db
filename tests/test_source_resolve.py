"""Session.resolve: the source's digest and manifest from one GET (issue 15, the re-run's time).

A fake registry (http.server, no auth) answers each manifest with the body
and the Docker-Content-Digest the test gives it. The body is handed to
referrers.discover only when it hashes to the digest the run copies: a
registry whose header names another manifest (hostile, or schema 1) gets a
GET by digest, verified, as before. Control: discovery fed the tag's body
anyway follows platforms that the copied digest does not have.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from authscope import referrers, registry
from authscope.registry import RegistryAnswerError, RegistryHTTPError, Session

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


PLAIN = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "layers": []}).encode()
PLATFORM = "sha256:" + "1" * 64
LISTING = json.dumps(
    {"schemaVersion": 2, "mediaType": INDEX, "manifests": [{"mediaType": MANIFEST, "digest": PLATFORM, "size": 2}]}
).encode()


class Fake(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answers: dict[str, tuple[int, bytes, dict[str, str]]] = {}
    asked: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.answer(with_body=True)

    def do_HEAD(self) -> None:
        self.answer(with_body=False)

    def answer(self, with_body: bool) -> None:
        self.asked.append(self.path)
        status, body, headers = self.answers.get(self.path, (404, b'{"errors":[]}', {}))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)


@pytest.fixture
def fake() -> Iterator[Session]:
    Fake.answers, Fake.asked = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    registry._SCHEME[host] = "http"
    try:
        with Session(host, insecure=True) as session:
            yield session
    finally:
        server.shutdown()
        server.server_close()
        registry._SCHEME.pop(host, None)


def serve(path: str, body: bytes, media_type: str = MANIFEST, digest: str | None = None, status: int = 200) -> None:
    headers = {"Content-Type": media_type}
    if digest != "":
        headers["Docker-Content-Digest"] = digest or digest_of(body)
    Fake.answers[path] = (status, body, headers)


def test_one_get_gives_the_digest_and_the_body(fake: Session) -> None:
    serve("/v2/app/manifests/1.0", LISTING, INDEX)
    assert fake.resolve("app", "1.0") == (digest_of(LISTING), (INDEX, LISTING))
    assert Fake.asked == ["/v2/app/manifests/1.0"]


def test_without_a_digest_header_the_body_is_hashed(fake: Session) -> None:
    serve("/v2/app/manifests/1.0", PLAIN, digest="")
    assert fake.resolve("app", "1.0") == (digest_of(PLAIN), (MANIFEST, PLAIN))


def test_a_header_naming_another_manifest_keeps_the_header_and_not_the_body(fake: Session) -> None:
    serve("/v2/app/manifests/1.0", LISTING, INDEX, digest=digest_of(PLAIN))  # the header: another manifest
    serve(f"/v2/app/manifests/{digest_of(PLAIN)}", PLAIN)
    digest, known = fake.resolve("app", "1.0")
    assert (digest, known) == (digest_of(PLAIN), None)
    Fake.asked.clear()
    assert referrers.discover(fake, "app", digest, known=known) == ()
    assert f"/v2/app/manifests/{digest_of(PLAIN)}" in Fake.asked  # read by digest, verified
    assert not [p for p in Fake.asked if PLATFORM.partition(":")[2] in p]  # the tag's platforms are not the digest's


def test_control_discovery_fed_the_tags_body_follows_platforms_the_digest_lacks(fake: Session) -> None:
    serve("/v2/app/manifests/1.0", LISTING, INDEX, digest=digest_of(PLAIN))
    referrers.discover(fake, "app", digest_of(PLAIN), known=(INDEX, LISTING))
    assert [p for p in Fake.asked if PLATFORM.partition(":")[2] in p]  # the damage resolve's hash check keeps out


@pytest.mark.parametrize(
    ("reference", "body", "digest", "expected"),
    [
        ("1.0", PLAIN, "not a digest", "has a Docker-Content-Digest that is not a digest"),
        (digest_of(LISTING), PLAIN, None, "answered with a manifest of digest"),
    ],
)
def test_refused_answers(fake: Session, reference: str, body: bytes, digest: str | None, expected: str) -> None:
    serve(f"/v2/app/manifests/{reference}", body, digest=digest)
    with pytest.raises(RegistryAnswerError, match=expected):
        fake.resolve("app", reference)


def test_a_missing_manifest_is_an_http_error(fake: Session) -> None:
    with pytest.raises(RegistryHTTPError) as caught:
        fake.resolve("app", "1.0")
    assert caught.value.status == 404

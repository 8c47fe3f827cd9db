"""The round trips authscope makes of its own at a target after the referrer
copies (issue 14, Performance): referrers.write_fallback and missing (and
lacking, before the copy of a re-run), against a real registry
(tests/support) seen through a counting proxy.

What is counted is what a WAN makes slow: the referrers API asked once per
target session, the fallback index read (GET) once and then only HEADed
and compared, the read-back's HEADs sent at the same time on connections
opened while write_fallback worked. What is not given up: every artifact
is still HEADed at the target after the copy, and every OCI referrer must
be listed for its subject, by an index the target holds now.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from authscope import referrers
from authscope.registry import Session
from tests.e2e import conftest as e2e
from tests.e2e.conftest import RegistryFactory
from tests.support import Registry, SourceImage
from tests.test_referrers import (
    MANIFEST,
    SPDX,
    artifact,
    fallback,
    put,
    put_copy,
    sign,
    source,
    tag_of,
)

registry_factory = e2e.registry_factory
ca = e2e.ca
__all__ = ["source"]  # a fixture, used by name

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass
class Seen:
    method: str
    path: str
    status: int


@dataclass
class Counting:
    """A reverse proxy in front of ``upstream`` that records every request,
    how many were in flight at once, and how many connections were opened;
    each request is held ``delay`` seconds (a WAN's round trip)."""

    upstream: Registry
    delay: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    in_flight: int = 0
    most_at_once: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Counting:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with proxy.lock:
                    proxy.connections += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    proxy.in_flight += 1
                    proxy.most_at_once = max(proxy.most_at_once, proxy.in_flight)
                conn = http.client.HTTPConnection(proxy.upstream.host, timeout=30)
                try:
                    time.sleep(proxy.delay)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    content = answer.read()
                finally:
                    conn.close()
                    with proxy.lock:  # before the client has its answer: counted when it goes on
                        proxy.in_flight -= 1
                        proxy.seen.append(Seen(self.command, self.path.partition("?")[0], answer.status))
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in HOP:
                        self.send_header(name, value)
                if self.command == "HEAD":
                    self.send_header("Content-Length", answer.getheader("Content-Length") or "0")
                else:
                    self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()
            self.most_at_once = 0

    def count(self, method: str, path: str) -> int:
        return sum(1 for s in self.seen if s.method == method and s.path == path)

    def api_asks(self, repo: str) -> int:
        return sum(1 for s in self.seen if s.path.startswith(f"/v2/{repo}/referrers/"))


@dataclass
class Release:
    """A signed source (a signature, an attestation, an oras-style referrer in
    the fallback index), everything copied to ``dst`` by digest with crane as a
    target's tool does, but the fallback index not written there yet."""

    src: Registry
    dst: Registry
    repo: str
    root: str
    found: tuple[referrers.Artifact, ...]
    sbom: str


@pytest.fixture
def release(source: SourceImage, registry_factory: RegistryFactory) -> Release:
    reg, repo, root = source.registry, source.repository, source.digest
    subject = {"mediaType": MANIFEST, "digest": root, "size": 1}
    sbom = put(reg, repo, "sbom", artifact(reg, repo, b"spdx", subject=subject, artifact_type=SPDX))
    fallback(reg, repo, root, [sbom])
    sign(reg, repo, root)
    put(reg, repo, tag_of(root, "att"), artifact(reg, repo, b"att", subject=None, artifact_type=None))
    with Session(reg.host, reg.credentials, insecure=True) as s:
        found = referrers.discover(s, repo, root)
    assert len(found) == 3
    dst = registry_factory("dst")
    put_copy(reg, dst, repo, root, root)
    for a in found:
        if a.tag is not None:
            put_copy(reg, dst, repo, a.digest, a.tag)
    # The referrer pushed as skopeo copies it: by digest, the same bytes, and no
    # fallback index written (crane writes one itself).
    assert put(dst, repo, sbom["digest"], artifact(dst, repo, b"spdx", subject=subject, artifact_type=SPDX)) == sbom
    return Release(reg, dst, repo, root, found, sbom["digest"])


@pytest.fixture
def proxy(release: Release) -> Iterator[Counting]:
    counting = Counting(release.dst).start()
    try:
        yield counting
    finally:
        counting.stop()


def target_session(proxy: Counting, release: Release) -> Session:
    s = Session(proxy.host, release.dst.credentials, insecure=True)
    assert s.find_digest(release.repo, release.root) == release.root  # settles the scheme and the login
    return s


def test_the_api_is_asked_once_and_the_fallback_index_read_once(release: Release, proxy: Counting) -> None:
    repo, fallback_tag = release.repo, referrers.fallback_tag(release.root)
    index = f"/v2/{repo}/manifests/{fallback_tag}"
    with target_session(proxy, release) as s:
        proxy.reset()
        assert referrers.write_fallback(s, repo, release.found) == [fallback_tag]
        assert referrers.missing(s, repo, release.found) == []
    assert proxy.api_asks(repo) == 1  # write_fallback asked; the read-back knew
    assert proxy.count("GET", index) == 1  # write_fallback read it ...
    assert proxy.count("PUT", index) == 1
    assert proxy.count("HEAD", index) == 1  # ... the read-back compared the digest the target holds
    for a in release.found:  # and every artifact is still read back at the target
        assert proxy.count("HEAD", f"/v2/{repo}/manifests/{a.tag or a.digest}") == 1, a.label
    assert not [s for s in proxy.seen if s.status == 401]  # the readers came with the session's login

    # Control: the same steps, each learning nothing from the one before (as
    # before this change), ask the API twice and read the index twice.
    proxy.reset()
    with target_session(proxy, release) as s, pytest.MonkeyPatch.context() as mp:
        mp.setattr(referrers, "_known", lambda session: referrers._Known())
        referrers.write_fallback(s, repo, release.found)
        assert referrers.missing(s, repo, release.found) == []
    assert proxy.api_asks(repo) == 2
    assert proxy.count("GET", index) == 2


def test_a_rerun_asks_the_api_once_for_lacking_write_fallback_and_missing(release: Release, proxy: Counting) -> None:
    repo = release.repo
    with target_session(proxy, release) as s:
        proxy.reset()
        assert [a.digest for a in referrers.lacking(s, repo, release.found)] == [release.sbom]  # not indexed yet
        referrers.write_fallback(s, repo, release.found)
        assert referrers.missing(s, repo, release.found) == []
    assert proxy.api_asks(repo) == 1
    # Control: a session of its own for each step asks each time.
    proxy.reset()
    for step in (referrers.lacking, referrers.write_fallback, referrers.missing):
        with target_session(proxy, release) as s:
            step(s, repo, release.found)
    assert proxy.api_asks(repo) == 3


def test_the_read_back_still_sees_what_changed_after_write_fallback(release: Release, proxy: Counting) -> None:
    """What write_fallback wrote is not trusted: the index the target holds
    now is compared with it, and every artifact is HEADed again."""
    repo, root, src, dst = release.repo, release.root, release.src, release.dst
    with target_session(proxy, release) as s:
        referrers.write_fallback(s, repo, release.found)
        assert referrers.missing(s, repo, release.found) == []  # control: as written, nothing is missing
    with target_session(proxy, release) as s:
        referrers.write_fallback(s, repo, release.found)
        # Someone replaces the index with one that lists another referrer only,
        # and points the signature's tag at the attestation.
        other = put(dst, repo, "vex", artifact(dst, repo, b"vex", subject=None, artifact_type="application/vex+json"))
        fallback(dst, repo, root, [other])
        att = next(a for a in release.found if a.tag == tag_of(root, "att"))
        put_copy(src, dst, repo, att.digest, tag_of(root, "sig"))
        lost = referrers.missing(s, repo, release.found)
    assert lost == [
        f"cosign signature {tag_of(root, 'sig')} (the tag holds {att.digest})",
        f"{SPDX} {release.sbom} (not listed as a referrer of {root})",
    ]


def test_the_read_back_reads_at_once_on_connections_opened_meanwhile(release: Release, proxy: Counting) -> None:
    repo = release.repo
    proxy.delay = 0.3
    with target_session(proxy, release) as s:
        referrers.write_fallback(s, repo, release.found)
        proxy.reset()
        opened = proxy.connections
        started = time.monotonic()
        assert referrers.missing(s, repo, release.found) == []
        took = time.monotonic() - started
    reads = len(proxy.seen)
    assert reads == 4  # three artifacts' HEADs, the index's HEAD
    assert proxy.most_at_once == reads
    assert proxy.connections == opened  # write_fallback had opened them
    assert took < 3 * proxy.delay  # about one round trip, not four

    # Control: one reader at a time (as before), and no connections opened ahead.
    with target_session(proxy, release) as s, pytest.MonkeyPatch.context() as mp:
        mp.setattr(referrers, "READERS", 1)
        referrers.write_fallback(s, repo, release.found)
        proxy.reset()
        started = time.monotonic()
        assert referrers.missing(s, repo, release.found) == []
        took = time.monotonic() - started
    assert proxy.most_at_once == 1
    assert took >= 4 * proxy.delay
    with target_session(proxy, release) as s, pytest.MonkeyPatch.context() as mp:
        mp.setattr(Session, "warm", lambda self: None)
        referrers.write_fallback(s, repo, release.found)
        opened = proxy.connections
        referrers.missing(s, repo, release.found)
    assert proxy.connections == opened + 3  # the readers connected only when the read-back began


def test_readers_are_closed_after_the_read_back(release: Release, proxy: Counting) -> None:
    with target_session(proxy, release) as s:
        referrers.write_fallback(s, release.repo, release.found)
        known = referrers._known(s)
        for thread in known.warming:
            thread.join()
        readers = list(known.readers)
        assert len(readers) == 3 and all(r is not s and r._connections for r in readers)  # opened by warm
        referrers.missing(s, release.repo, release.found)
        assert referrers._known(s).readers == []
    assert all(not r._connections for r in readers)


def test_an_error_of_one_read_is_raised_after_the_others_finish(release: Release, proxy: Counting) -> None:
    """A failed read (here: a registry that refuses one HEAD) fails the read-back
    as before, and no read is left running on a reader when it returns."""
    from authscope.registry import RegistryHTTPError

    repo = release.repo
    sig = next(a for a in release.found if a.tag and a.tag.endswith(".sig"))
    real = Session.find_digest

    def refusing(self: Session, repository: str, reference: str) -> str | None:
        if reference == sig.tag:
            raise RegistryHTTPError(self.registry, 500, f"{self.registry}/{repository}:{reference}", "refused")
        return real(self, repository, reference)

    with target_session(proxy, release) as s, pytest.MonkeyPatch.context() as mp:
        referrers.write_fallback(s, repo, release.found)
        mp.setattr(Session, "find_digest", refusing)
        proxy.reset()
        with pytest.raises(RegistryHTTPError, match="refused"):
            referrers.missing(s, repo, release.found)
        assert proxy.in_flight == 0 and len(proxy.seen) == 3  # the other reads had finished
    # Control: without the refusal the same read-back passes.
    with target_session(proxy, release) as s:
        referrers.write_fallback(s, repo, release.found)
        assert referrers.missing(s, repo, release.found) == []

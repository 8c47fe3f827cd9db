"""Issue 16, part 2: the copies start as soon as the source digest is known.

What refers to the source (signatures, attestations, OCI referrers) is found
by fanout.Discovery in the background; a target waits for it only before its
referrer copies (after its first copy) and before it is called up to date.

Real parts: the source and the target are docker-registry processes
(tests/support), the copies real crane; the source is signed as cosign and
oras write it (tests/test_referrers' pusher: a signature tag, an attestation
tag, an SBOM in the fallback index). In front of the source, a proxy holds
its tag list (the first request of discovery) ``SLOW`` seconds, or answers it
with a 500; the order of events comes from authscope's own trace
(AUTHSCOPE_TRACE, trace.py).

Controls: with discovery forced synchronous (waited for before anything is
copied, as before) the tool starts after discovery ends; with the wait taken
out, a failed discovery lands a target "ok" without its signatures, and an
up-to-date verdict is given while a signature is missing at the target.
"""

from __future__ import annotations

import http.client
import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authscope import fanout as F
from authscope import plan as P
from authscope import release, tools, trace
from authscope import report as R
from authscope import targets as T
from authscope.errors import RegistryError
from authscope.referrers import Artifact
from authscope.registry import Session
from tests.e2e import conftest as e2e
from tests.e2e.conftest import RegistryFactory, require_tools
from tests.e2e.fanout_helpers import tool_paths
from tests.support import Registry, SourceImage, isolated_env, publish_image
from tests.test_referrers import MANIFEST, SPDX, artifact, fallback, put, put_copy, sign, tag_of

registry_factory = e2e.registry_factory
ca = e2e.ca

SLOW = 1.5  # seconds the source's tag list is held: longer than the first copy takes here
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class SourceProxy:
    """A reverse proxy in front of ``upstream``: requests whose path contains
    ``hold`` wait ``delay`` seconds first, and are answered 500 when ``fail``."""

    def __init__(self, upstream: Registry) -> None:
        self.upstream = upstream
        self.hold = "/tags/list"
        self.delay = 0.0
        self.fail = False
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                held = proxy.hold in self.path
                if held:
                    time.sleep(proxy.delay)
                if held and proxy.fail:
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection(proxy.upstream.host, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    content = answer.read()
                finally:
                    conn.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in HOP:
                        self.send_header(name, value)
                length = answer.getheader("Content-Length") or "0" if self.command == "HEAD" else str(len(content))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = forward

        class Quiet(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # an upstream already stopped at teardown

        self.server = Quiet(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Lab:
    """A signed source behind a SourceProxy, one target registry, a targets file, a base logged in."""

    def __init__(self, tmp_path: Path, registry_factory: RegistryFactory) -> None:
        require_tools("skopeo")
        tool_paths("crane")
        self.tmp = tmp_path
        src = registry_factory("src")
        image: SourceImage = publish_image(src, tmp_path / "src", isolated_env(tmp_path / "env"))
        repo, root = image.repository, image.digest
        subject = {"mediaType": MANIFEST, "digest": root, "size": 1}
        sbom = put(src, repo, "sbom", artifact(src, repo, b"spdx", subject=subject, artifact_type=SPDX))
        fallback(src, repo, root, [sbom])
        self.signature = sign(src, repo, root)
        put(src, repo, tag_of(root, "att"), artifact(src, repo, b"att", subject=None, artifact_type=None))
        self.src, self.repo, self.digest = src, repo, root
        self.dst = registry_factory("dst")
        self.proxy = SourceProxy(src)
        base = tmp_path / "base"
        base.mkdir(mode=0o700)
        auth = {self.proxy.host: {"auth": _b64(f"{src.username}:{src.password}")}}
        (base / "config.json").write_text(json.dumps({"auths": auth}))
        self.env = {
            **isolated_env(tmp_path / "run-env"),
            "DOCKER_CONFIG": str(base),
            "TARGET_PASSWORD": self.dst.password,
        }
        self.file = tmp_path / "authscope.yml"
        self.file.write_text(
            f"source: {{image: '{self.proxy.host}/{repo}:{image.tag}', insecure: true}}\n"
            'tags: ["1.0", "latest"]\n'
            "tool: crane\n"
            "retries: 0\n"
            "targets:\n"
            f"  - name: one\n    registry: '{self.dst.host}'\n    repository: {repo}\n"
            f"    username: {self.dst.username}\n    password_env: TARGET_PASSWORD\n    insecure: true\n"
        )
        self.trace = tmp_path / "trace.jsonl"

    def run(self, monkeypatch: pytest.MonkeyPatch) -> tuple[R.Report, list[dict[str, Any]]]:
        """One fan-out in process (release.run, the real crane), traced: (its report, its trace)."""
        self.trace.unlink(missing_ok=True)
        monkeypatch.setattr(trace, "PATH", str(self.trace))
        spec = T.load(str(self.file), self.env)
        report = release.run(spec, release.Options(), self.env, stream=io.StringIO())
        monkeypatch.setattr(trace, "PATH", None)
        events = [json.loads(line) for line in self.trace.read_text().splitlines()]
        return report, events

    def at_target(self, reference: str) -> str | None:
        with Session(self.dst.host, self.dst.credentials, insecure=True) as s:
            return s.find_digest(self.repo, reference)


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def _first(events: list[dict[str, Any]], kind: str, phase: str, **match: Any) -> float:
    for e in events:
        if e["event"] == kind and e.get("phase") == phase and all(e.get(k) == v for k, v in match.items()):
            return float(e["t"])
    raise AssertionError(f"no {kind} {phase} {match} in the trace: {events}")


@pytest.fixture
def lab(tmp_path: Path, registry_factory: RegistryFactory) -> Iterator[Lab]:
    the_lab = Lab(tmp_path, registry_factory)
    try:
        yield the_lab
    finally:
        the_lab.proxy.stop()


def _synchronous(monkeypatch: pytest.MonkeyPatch) -> None:
    """Discovery waited for before anything is copied: what the run did before this change."""
    real = F.start_source

    def waiting(*args: Any, **kw: Any) -> Any:
        digest, plain_http, discovery = real(*args, **kw)
        discovery.artifacts()
        return digest, plain_http, discovery

    monkeypatch.setattr(F, "start_source", waiting)


def _landed_signed(lab: Lab, report: R.Report) -> None:
    (result,) = report.results
    assert result.status == R.OK, (result.error, result.hint, result.output)
    assert len(result.referrers) == 3, result.referrers
    assert lab.at_target(tag_of(lab.digest, "sig")) == lab.signature
    assert lab.at_target("1.0") == lab.at_target("latest") == lab.digest


# -- the order ------------------------------------------------------------------------------


def test_the_tool_starts_before_discovery_ends(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    lab.proxy.delay = SLOW
    report, events = lab.run(monkeypatch)
    _landed_signed(lab, report)
    digest_known = _first(events, "source", "end")
    tool_start = _first(events, "tool", "start", target="one")
    found = _first(events, "discovery", "end")
    assert tool_start < found, (tool_start, found)
    assert found - digest_known >= SLOW * 0.9  # the tag list really was held
    # The referrer copies wait for discovery; the further tag (latest) comes after them.
    tool_starts = [float(e["t"]) for e in events if e["event"] == "tool" and e.get("phase") == "start"]
    assert sum(1 for t in tool_starts if t < found) == 1 and len(tool_starts) >= 3  # then 3 referrers, latest
    assert report.error == ""


def test_control_discovery_forced_synchronous_holds_the_tool(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    _synchronous(monkeypatch)
    lab.proxy.delay = SLOW
    report, events = lab.run(monkeypatch)
    _landed_signed(lab, report)
    assert _first(events, "tool", "start", target="one") > _first(events, "discovery", "end")


# -- fail closed ----------------------------------------------------------------------------


def test_a_discovery_that_fails_after_the_first_copy_fails_the_target(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab.proxy.delay, lab.proxy.fail = SLOW, True
    report, events = lab.run(monkeypatch)
    (result,) = report.results
    assert result.status == R.FAILED, result
    assert "signatures, attestations and referrers could not be found at the source" in result.error
    assert "(tags)" in result.error and "500" in result.error
    assert result.referrers == ()
    assert "cannot read the source" in report.error  # the run fails: exit 1 (cli)
    assert _first(events, "tool", "start", target="one") < _first(events, "discovery", "end", ok=False)
    assert lab.at_target(tag_of(lab.digest, "sig")) is None  # never made to look signed
    assert lab.at_target("latest") is None  # nor its further tags


def test_a_discovery_that_failed_before_a_target_starts_copies_nothing(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = F.start_source

    def ended(*args: Any, **kw: Any) -> Any:  # the target starts once discovery has failed
        digest, plain_http, discovery = real(*args, **kw)
        with pytest.raises(RegistryError):
            discovery.artifacts()
        return digest, plain_http, discovery

    monkeypatch.setattr(F, "start_source", ended)
    lab.proxy.fail = True
    report, events = lab.run(monkeypatch)
    (result,) = report.results
    assert result.status == R.FAILED and "could not be found at the source" in result.error, result
    assert not [e for e in events if e["event"] == "tool"]
    assert lab.at_target("1.0") is None
    assert "cannot read the source" in report.error


def test_control_without_the_wait_a_failed_discovery_lands_unsigned_as_ok(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(F, "_discovered", lambda tp, ctx: tp)  # no wait, no error: no referrers
    lab.proxy.delay, lab.proxy.fail = SLOW, True
    report, _ = lab.run(monkeypatch)
    (result,) = report.results
    assert result.status == R.OK and result.referrers == ()  # the damage: "ok", unsigned
    assert lab.at_target(tag_of(lab.digest, "sig")) is None


# -- up to date -----------------------------------------------------------------------------


def _tags_without_referrers(lab: Lab) -> None:
    """The target holds the image under every tag, and none of its referrers (a lost signature)."""
    for tag in ("1.0", "latest"):
        put_copy(lab.src, lab.dst, lab.repo, lab.digest, tag)
    assert lab.at_target("latest") == lab.digest
    assert lab.at_target(tag_of(lab.digest, "sig")) is None


def test_an_up_to_date_rerun_waits_for_the_referrers(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = lab.run(monkeypatch)
    _landed_signed(lab, first)
    lab.proxy.delay = SLOW
    report, events = lab.run(monkeypatch)
    (result,) = report.results
    assert result.status == R.OK and not result.changed and len(result.referrers) == 3, result
    assert _first(events, "target", "end", target="one") > _first(events, "discovery", "end")


def test_a_rerun_that_lost_the_signatures_copies_them_once_discovery_ends(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tags_without_referrers(lab)
    lab.proxy.delay = SLOW
    report, events = lab.run(monkeypatch)
    (result,) = report.results
    assert result.status == R.OK and result.changed and len(result.referrers) == 3, result
    assert lab.at_target(tag_of(lab.digest, "sig")) == lab.signature
    assert _first(events, "tool", "start") > _first(events, "discovery", "end")  # only referrers to copy


def test_control_without_the_wait_a_lost_signature_is_called_up_to_date(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tags_without_referrers(lab)
    monkeypatch.setattr(F, "_discovered", lambda tp, ctx: tp)  # up to date without the referrers
    lab.proxy.delay = SLOW
    report, _ = lab.run(monkeypatch)
    (result,) = report.results
    assert result.status == R.OK and not result.changed  # the damage: "up to date", signature missing
    assert lab.at_target(tag_of(lab.digest, "sig")) is None


# -- the plan's halves ----------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["crane", "skopeo", "regctl", "custom"])
@pytest.mark.parametrize("pull_once", [False, True])
@pytest.mark.parametrize("tags", [("1.0", "latest", "stable"), ("latest",), ("1.0", "stable")])
def test_first_copy_then_the_rest_are_the_steps_for_tags_gives(
    tmp_path: Path, tool: str, pull_once: bool, tags: tuple[str, ...]
) -> None:
    if pull_once and tool == "custom":
        return  # no pull_once for custom commands (make_plan refuses it)
    path = tmp_path / "authscope.yml"
    command = 'command: ["sh", "-c", "true {source} {destination}"]\n' if tool == "custom" else ""
    path.write_text(
        "source: reg.example:5000/app:1.0\n"
        'tags: ["1.0", "latest", "stable"]\n'
        f"tool: {tool}\n{command}"
        "targets:\n  - {name: one, registry: 'harbor.example', repository: release/app, username: u, password_env: P}\n"
    )
    spec = T.load(str(path), {"P": "x"})
    digest = "sha256:" + "a" * 64
    found = (
        Artifact("sha256:" + "b" * 64, digest, "cosign signature", tag_of(digest, "sig")),
        Artifact("sha256:" + "c" * 64, digest, SPDX, None, '{"digest": "sha256:' + "c" * 64 + '"}'),
    )
    known = P.make_plan(spec, source_digest=digest, artifacts=found, pull_once=pull_once)
    later = P.make_plan(spec, source_digest=digest, pull_once=pull_once)
    (tp,) = later.targets
    assert tp.referrers == () and tp.referrers_on
    carried = P.with_referrers(later, tp, found)
    assert carried == known.targets[0]  # what make_plan gives when discovery was waited for
    assert P.referrer_pulls(later, found) == known.pull_referrers
    for lacking in (found, found[1:], ()):
        whole = P.for_tags(known, known.targets[0], tags, lacking)
        head = P.first_copy(later, tp, tags)
        rest = P.after_first_copy(later, carried, tags, lacking)
        assert head.steps + rest.steps == whole.steps
        assert rest.destinations == whole.destinations and rest.referrers == whole.referrers
        assert len(head.steps) == (len(tools.steps_for(spec.source, whole.target, known.source_ref, known.layout))
                                   if tool == "custom" else 1)  # fmt: skip

"""Harbor's answers, each mapped to its own error (issue 19).

The tool lines are what crane 0.22, skopeo 1.9 and regctl 0.11 printed
against tests/support/tokenauth.py's front answering with the bodies in
tests/fixtures/harbor (the e2e tests run the real thing). Every mapping has
its control: with `fanout.harbor_diagnosis` turned off, the same output gets
only the generic hint, which says nothing of what Harbor meant.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from authscope import fanout as F
from authscope import registry as REG
from authscope.targets import Target
from tests.test_fanout_unit import target as fanout_target

FIXTURES = Path(__file__).parent / "fixtures" / "harbor"
SOURCE = "127.0.0.1:5000"
HOST = "127.0.0.1:5001"


def target() -> Target:
    """tests/test_fanout_unit.py's target, on this file's registry with two tags."""
    return fanout_target(registry=HOST, tags=("1.0", "latest"))


def fixture(name: str) -> dict:  # type: ignore[type-arg]
    return dict(json.loads((FIXTURES / f"{name}.json").read_text()))


M = fixture("quota_exceeded")["body"]["errors"][0]["message"]
# (case, tool): the line the tool printed, and words only the mapping gives.
LINES: dict[tuple[str, str], str] = {
    (
        "policy_unsigned",
        "crane",
    ): f'Error: fetching "{SOURCE}/release/src:1.0": GET http://{SOURCE}/v2/release/src/manifests/1.0: '
    "PROJECTPOLICYVIOLATION: The image is not signed by cosign.",
    (
        "policy_unsigned",
        "skopeo",
    ): f'time="x" level=fatal msg="initializing source docker://{SOURCE}/release/src:1.0: reading manifest 1.0 '
    f'in {SOURCE}/release/src: unknown: The image is not signed by cosign."',
    (
        "policy_unsigned",
        "regctl",
    ): f"copy failed, error getting source: failed to get manifest {SOURCE}/release/src:1.0: request failed: "
    'unexpected http status code: Precondition Failed [http 412]: {"errors": [{"code": "PROJECTPOLICYVIOLATION", '
    '"message": "The image is not signed by cosign."}]}',
    (
        "policy_vulnerable",
        "skopeo",
    ): f'time="x" level=fatal msg="initializing source docker://{SOURCE}/release/src:1.0: reading manifest 1.0 '
    f"in {SOURCE}/release/src: unknown: " + fixture("policy_vulnerable")["body"]["errors"][0]["message"] + '"',
    (
        "immutable_tag",
        "crane",
    ): f"Error: PUT http://{HOST}/v2/release/app/manifests/latest: PRECONDITION: the tag latest configured as "
    "immutable, cannot be updated",
    (
        "immutable_tag",
        "skopeo",
    ): f'time="x" level=fatal msg="writing manifest: uploading manifest latest to {HOST}/release/app: unknown: '
    'the tag latest configured as immutable, cannot be updated"',
    (
        "immutable_tag",
        "regctl",
    ): f"failed to put manifest {HOST}/release/app:latest: request failed: unexpected http status code: "
    'Precondition Failed [http 412]: {"errors": [{"code": "PRECONDITION", "message": "the tag latest configured as immutable, '
    'cannot be updated"}]}',
    ("quota_exceeded", "crane"): f"Error: PUT http://{HOST}/v2/release/app/manifests/1.0: DENIED: {M}",
    (
        "quota_exceeded",
        "skopeo",
    ): f'time="x" level=fatal msg="writing manifest: uploading manifest 1.0 to {HOST}/release/app: denied: {M}"',
    (
        "quota_exceeded",
        "regctl",
    ): f"failed to put manifest {HOST}/release/app:1.0: request failed: unauthorized [http 403]: "
    f'{{"errors": [{{"code": "DENIED", "message": "{M}"}}]}}',
    (
        "push_unauthorized",
        "crane",
    ): f"Error: PUT http://{HOST}/v2/release/app/manifests/1.0: UNAUTHORIZED: unauthorized to access "
    "repository: release/app, action: push: unauthorized to access repository: release/app, action: push",
    (
        "push_unauthorized",
        "skopeo",
    ): f'time="x" level=fatal msg="writing manifest: uploading manifest 1.0 to {HOST}/release/app: '
    "unauthorized: unauthorized to access repository: release/app, action: push: unauthorized to access repository: "
    'release/app, action: push"',
    (
        "token_unauthorized",
        "crane",
    ): "Error: GET http://localhost:5001/service/token?scope=repository%3Arelease%2Fapp%3Apush%2Cpull"
    "&service=harbor-registry: UNAUTHORIZED: authentication required",
    (
        "token_unauthorized",
        "skopeo",
    ): 'time="x" level=fatal msg="trying to reuse blob sha256:a8d1 at destination: unable to retrieve '
    'auth token: invalid username/password: unauthorized"',
}
WORDS = {
    "policy_unsigned": ["the source registry 127.0.0.1:5000 refused the pull by a project policy", "sign it"],
    "policy_vulnerable": ["project policy", "vulnerabilities", "allowlist"],
    "immutable_tag": ["the tag latest of 127.0.0.1:5001/release/app is immutable", "take latest out"],
    "quota_exceeded": ["over its storage quota", "garbage collection"],
    "push_unauthorized": ["username 'robot$release+ci' has no push permission on 127.0.0.1:5001/release/app"],
    "token_unauthorized": ["token service of 127.0.0.1:5001 refused", "expired", "password_env HARBOR_1_PASSWORD"],
}


@pytest.mark.parametrize(("case", "tool"), sorted(LINES))
def test_harbor_answer_has_its_own_hint(case: str, tool: str) -> None:
    transient, hint = F.diagnose(["copying ...", LINES[(case, tool)]], target(), SOURCE)
    assert transient is False
    for words in WORDS[case]:
        assert words in hint, hint


@pytest.mark.parametrize(("case", "tool"), sorted(LINES))
def test_control_without_the_mapping_the_hint_is_generic(case: str, tool: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(F, "harbor_diagnosis", lambda *a: None)
    _, hint = F.diagnose(["copying ...", LINES[(case, tool)]], target(), SOURCE)
    assert WORDS[case][0] not in hint, hint  # the first words are the mapping's own


@pytest.mark.parametrize(
    "line",
    [
        # the real registry refusing a pull-only token's write (crane, skopeo, regctl)
        f"Error: POST http://{HOST}/v2/release/app/blobs/uploads/: UNAUTHORIZED: authentication required; "
        "[map[Action:pull Class: Name:release/app Type:repository] map[Action:push Class: Name:release/app Type:repository]]",
        f'time="x" level=fatal msg="writing blob: initiating layer upload to /v2/release/app/blobs/uploads/ in {HOST}: '
        'errors:\\ndenied: requested access to the resource is denied\\nunauthorized: authentication required\\n"',
        f"failed to put manifest {HOST}/release/app:1.0: unauthorized",
    ],
)
def test_a_refused_write_points_at_push_permission(line: str) -> None:
    _, hint = F.diagnose([line], target(), SOURCE)
    assert "may have no push permission on 127.0.0.1:5001/release/app" in hint
    assert "127.0.0.1:5001 rejected the credentials" in hint and "password_env HARBOR_1_PASSWORD" in hint


def test_control_a_refused_read_is_about_the_credentials() -> None:
    line = f"Error: GET http://{HOST}/v2/release/app/manifests/1.0: UNAUTHORIZED: authentication required"
    _, hint = F.diagnose([line], target(), SOURCE)
    assert "push permission" not in hint and "rejected the credentials" in hint


# -- authscope's own requests (registry.py) ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("policy_unsigned", "project policy of the registry refused it"),
        ("policy_vulnerable", "vulnerabilities over the project's limit"),
        ("immutable_tag", "an immutable tag"),
        ("rate_limited", "rate-limiting"),
    ],
)
def test_explain_status_reads_harbors_body(name: str, words: str) -> None:
    answer = fixture(name)
    body = json.dumps(answer["body"]).encode()
    text = REG.explain_status(answer["status"], body)
    assert words in text
    assert answer["body"]["errors"][0]["message"][:40] in text


def test_explain_status_without_a_body_still_says_what_412_means() -> None:
    assert "project policy" in REG.explain_status(412)  # a HEAD has no body
    assert REG.explain_status(418) == ""  # control: nothing made up


def test_retry_after_seconds_and_dates() -> None:
    assert REG.retry_after({"Retry-After": "7"}) == 7.0
    assert REG.retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert REG.retry_after({"Retry-After": "soon"}) is None
    assert REG.retry_after({}) is None


def _exc(after: float | None) -> REG.RegistryHTTPError:
    return REG.RegistryHTTPError(HOST, 429, f"{HOST}/v2/", retry_after=after)


def _run_retrying(monkeypatch: pytest.MonkeyPatch, after: float | None, budget: float = 60.0) -> list[float]:
    import time

    pauses: list[float] = []
    monkeypatch.setattr(F, "_pause", lambda seconds, cancel: pauses.append(seconds) or True)
    calls = iter([_exc(after), None])

    def action(_attempt: int) -> str:
        exc = next(calls)
        if exc is not None:
            raise exc
        return "ok"

    log = F._Log(io.StringIO())
    assert F._retrying("checking", target(), time.monotonic() + budget, 2, action, log) == "ok"
    return pauses


def test_retry_after_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run_retrying(monkeypatch, 4.5) == [4.5]


def test_control_without_retry_after_the_backoff_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run_retrying(monkeypatch, None) == [F.BACKOFF]


def test_retry_after_past_the_deadline_is_not_waited(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(REG.RegistryHTTPError):
        _run_retrying(monkeypatch, 3600.0, budget=30.0)


@pytest.fixture
def limited() -> Iterator[str]:
    """A registry that answers every request 429 with Retry-After: 3."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(429)
            self.send_header("Retry-After", "3")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_tools_rate_limit_asks_the_registry_how_long(limited: str) -> None:
    """The tools don't print Retry-After: authscope asks /v2/ itself."""
    import dataclasses
    import time

    t = dataclasses.replace(target(), registry=limited, insecure=True)
    ctx = F._Context.__new__(F._Context)
    ctx.credentials = {t.name: F.Credentials("robot$release+ci", "x-test-password")}
    assert F._asked_wait(t, ctx, time.monotonic() + 30) == 3.0

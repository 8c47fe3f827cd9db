"""The credential check that is the HEAD of the first tag (issue 16): at a registry whose
warm-up saw it challenge, a fan-out target's check and its up-to-date read are one
request, not `GET /v2/` and then the HEAD. Only a 200 or a 404 passes it; anything
else, and the `GET /v2/` check runs as before, with its retries and its messages.

Each test has its control: the same check with the challenge unknown (no warm-up),
or the answers that must not pass it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from authscope import fanout, registry
from authscope.targets import Target
from tests.reliability.fakeregistry import DIGEST, FakeRegistry
from tests.test_perf_paths import Counting
from tests.test_perf_paths import counting as counting  # noqa: PLC0414 - the fixture, re-exported

USER = "ci"
PASSWORD = "target-secret-for-tests-0001"
HEAD_1 = ("HEAD", "/v2/release/app/manifests/1.0")
HEAD_2 = ("HEAD", "/v2/release/app/manifests/latest")
PING = ("GET", "/v2/")


def forget(host: str) -> None:
    """What this process learnt of ``host`` (an earlier test may have had its port)."""
    registry._CHALLENGE.pop(host, None)
    registry._SCHEME.pop(host, None)
    registry._WARMING.pop(host, None)
    for key in [k for k in registry._IDLE if k[1] == host]:
        registry._IDLE.pop(key, None)


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    with FakeRegistry(USER, PASSWORD) as server:
        forget(server.host)
        try:
            yield server
        finally:
            registry.close_idle()
            forget(server.host)


def target(host: str, tags: tuple[str, ...] = ("1.0", "latest"), repository: str = "release/app") -> Target:
    return Target(
        name="t1", registry=host, repository=repository, tags=tags, tool="crane", username=USER,
        username_env=None, password_env="P", password_file=None, insecure=True, ca_file=None, command=None, line=1,
    )  # fmt: skip


def warm(host: str) -> None:
    registry.warm_up(host, insecure=True)
    registry._await_warm_up(host, 30)


def check(t: Target, password: str = PASSWORD) -> tuple[dict[str, str | None], str]:
    """A fan-out's check of ``t`` and its read of the tags (Preflights): (what each tag
    holds, the log)."""
    log = io.StringIO()
    checks = fanout.Preflights.__new__(fanout.Preflights)
    checks.held = {}
    session = checks._check_and_read(
        t, fanout.Credentials(USER, password), 30.0, 0, fanout._Log(log), fanout.threading.Event()
    )
    session.close()
    return checks.held[t.name], log.getvalue()


def test_after_a_warm_up_the_check_is_the_first_tags_head(fake: FakeRegistry) -> None:
    warm(fake.host)
    fake.requests.clear()  # the warm-up's anonymous GET /v2/
    held, _ = check(target(fake.host))
    assert fake.requests == [HEAD_1, HEAD_2], fake.requests  # no GET /v2/: the HEAD was the check
    assert held == {"1.0": None, "latest": None}  # fresh: a tag's first lookup 404s


def test_control_without_a_warm_up_the_check_is_get_v2(fake: FakeRegistry) -> None:
    held, _ = check(target(fake.host))
    assert fake.requests[:2] == [PING, PING], fake.requests  # anonymous, then with the credentials
    assert fake.requests[2:] == [HEAD_1, HEAD_2], fake.requests
    assert held == {"1.0": None, "latest": None}


def test_wrong_credentials_fail_with_the_check_message(fake: FakeRegistry) -> None:
    """The HEAD answers 401: not a pass; the `GET /v2/` check says what it always said."""
    warm(fake.host)
    fake.requests.clear()
    with pytest.raises(fanout._Failure) as caught:
        check(target(fake.host), "a-wrong-password-0002")
    assert str(caught.value) == f"{fake.host} rejected the credentials (HTTP 401)"
    assert caught.value.hint == "check username 'ci' and password_env P", caught.value.hint
    assert fake.requests == [HEAD_1, PING], fake.requests  # each sent once, with the credentials


@pytest.mark.parametrize("status", [401, 403, 500, 400])
def test_an_answer_other_than_200_or_404_is_not_a_pass(
    fake: FakeRegistry, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    """The HEAD's answer is overridden; the check falls back to GET /v2/ (which passes: the
    credentials are right) and the tag is read again after it. Control: the same HEAD with
    200 passes without the GET."""
    warm(fake.host)
    head = registry.Session.head_manifest
    answers = [status]

    def first_answer_is(self: registry.Session, repository: str, reference: str, scope: str = "") -> registry.Answer:
        got = head(self, repository, reference, scope)
        return (answers.pop(), {}, b"") if answers else got

    monkeypatch.setattr(registry.Session, "head_manifest", first_answer_is)
    fake.requests.clear()
    held, log = check(target(fake.host, tags=("latest",)))
    assert fake.requests == [("HEAD", "/v2/release/app/manifests/latest"), PING, HEAD_2], fake.requests
    assert held == {"latest": DIGEST}, log


def test_a_rate_limited_head_is_retried_as_the_check_is(fake: FakeRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """429 to the HEAD: retried (the check's retries, its Retry-After), then the 200/404 passes.
    Control: with no retry left, the run stops at the check, as a rate-limited GET /v2/ does."""
    warm(fake.host)
    head = registry.Session.head_manifest
    answers = [429]

    def limited_once(self: registry.Session, repository: str, reference: str, scope: str = "") -> registry.Answer:
        got = head(self, repository, reference, scope)
        return (answers.pop(), {"Retry-After": "0"}, b"") if answers else got

    monkeypatch.setattr(registry.Session, "head_manifest", limited_once)
    monkeypatch.setattr(fanout, "BACKOFF", 0.01)
    log = io.StringIO()
    checks = fanout.Preflights.__new__(fanout.Preflights)
    checks.held = {}
    t = target(fake.host, tags=("latest",))
    creds = fanout.Credentials(USER, PASSWORD)
    fake.requests.clear()
    checks._check_and_read(t, creds, 30.0, 1, fanout._Log(log), fanout.threading.Event()).close()
    assert fake.requests == [HEAD_2, HEAD_2], fake.requests  # the retry; no GET /v2/
    assert "retrying" in log.getvalue() and checks.held["t1"] == {"latest": DIGEST}
    answers.append(429)
    with pytest.raises(fanout._Failure) as caught:
        checks._check_and_read(t, creds, 30.0, 0, fanout._Log(log), fanout.threading.Event())
    assert "HTTP 429" in str(caught.value) and "rate-limiting" in caught.value.hint


def test_a_malformed_head_falls_back_to_the_check(fake: FakeRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry error on the HEAD (here a 200 without a digest) is not a pass either: the
    `GET /v2/` check runs, then the read of the tag reports it cannot tell, as before."""
    warm(fake.host)

    def no_digest(self: registry.Session, repository: str, reference: str, scope: str = "") -> registry.Answer:
        self.request("HEAD", f"/v2/{repository}/manifests/{reference}", scope=scope or "x")
        raise registry.RegistryAnswerError(self.registry, "no Docker-Content-Digest")

    monkeypatch.setattr(registry.Session, "head_manifest", no_digest)
    fake.requests.clear()
    held, log = check(target(fake.host, tags=("latest",)))
    assert PING in fake.requests, fake.requests
    assert held == {} and "could not tell whether latest is up to date" in log, log


def test_a_200_without_a_usable_digest_passes_but_copies_every_tag(
    fake: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm(fake.host)

    def bare_200(self: registry.Session, repository: str, reference: str, scope: str = "") -> registry.Answer:
        return (200, {"Docker-Content-Digest": "not-a-digest"}, b"")

    monkeypatch.setattr(registry.Session, "head_manifest", bare_200)
    fake.requests.clear()
    held, log = check(target(fake.host))
    assert fake.requests == [], fake.requests  # the credentials' answer was that 200
    assert held == {} and "could not tell whether 1.0 is up to date" in log, log


def test_a_forced_target_keeps_the_get_v2_check(fake: FakeRegistry) -> None:
    """--force reads no tag (fanout._preflight without ``first``): GET /v2/ is its check."""
    warm(fake.host)
    fake.requests.clear()
    fanout._preflight(
        target(fake.host), fanout.Credentials(USER, PASSWORD), 30.0, 0, fanout._Log(io.StringIO())
    ).close()
    assert fake.requests == [PING], fake.requests


def test_bearer_the_check_is_a_token_and_the_head(counting: tuple[str, dict[str, int]]) -> None:
    """A token registry: after the warm-up, the check asks the token (pull,push) and sends
    the HEAD with it: no GET /v2/, no challenge, no new connection; the read-back reuses it."""
    host, counts = counting
    registry._SCHEME.pop(host, None)
    try:
        warm(host)
        before = dict(counts)
        t = target(host, tags=("1.0",), repository="app")
        log = io.StringIO()
        checks = fanout.Preflights.__new__(fanout.Preflights)
        checks.held = {}
        creds = fanout.Credentials(Counting.user, Counting.password)
        with checks._check_and_read(t, creds, 30.0, 0, fanout._Log(log), fanout.threading.Event()) as session:
            assert checks.held["t1"] == {"1.0": Counting.digest}
            assert session.manifest_digest("app", "1.0") == Counting.digest  # the read-back
        cost = {k: counts.get(k, 0) - before.get(k, 0) for k in ("connections", "401", "tokens")}
        assert cost == {"connections": 0, "401": 0, "tokens": 1}, cost
    finally:
        registry.close_idle()
        registry._WARMING.pop(host, None)

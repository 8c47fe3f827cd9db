"""Issue 15, the re-run's time: what stands between the start and the verdict of an up-to-date target.

Real registries (the fleet of tests/e2e/test_fanout.py), authscope's own
fan-out in process (release.run) so that its requests can be timed:

- each target's tags are read with HEAD right after its credential check, on
  the check's session, while the source is still being read (they don't need
  its digest): a slow source no longer delays them. Control: with the read
  taken out of the check (Preflights reading nothing), the HEADs come after
  the source.
- with referrers on (discovery), the source's manifest is resolved with the
  one GET discovery needs anyway: no HEAD of the tag and no second GET by
  digest at the source (its access log). Control: resolving as before
  (HEAD, then discovery's GET) shows both.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authscope import fanout, registry, release
from authscope import targets as T
from tests.e2e.conftest import RegistryFactory
from tests.e2e.fanout_helpers import tool_paths
from tests.e2e.test_fanout import TAGS, Fleet
from tests.e2e.test_rerun import Requests
from tests.support import CA

SLOW = 0.4  # seconds added before each of the source's requests


@pytest.fixture
def fleet(tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory, ca: CA) -> Fleet:
    tool_paths("crane")
    fleet = Fleet(tmp_path, e2e_env, registry_factory, ca)
    result = fleet.fanout(fleet.targets_file("crane"))  # the release lands
    assert result.returncode == 0, result.stdout + result.stderr
    return fleet


Event = tuple[float, float, str, str, str]  # (start, end, host, method, path) of one request


class Timeline:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.slow: set[str] = set()  # hosts whose every request waits SLOW first


@pytest.fixture
def timeline(monkeypatch: pytest.MonkeyPatch) -> Iterator[Timeline]:
    """Every request authscope sends, timed."""
    line = Timeline()
    events, slow_hosts = line.events, line.slow
    lock = threading.Lock()
    send = registry.Session._send

    def timed(self: registry.Session, method: str, url: str, headers: dict[str, str], body: Any = None) -> Any:
        if self.host in slow_hosts:
            time.sleep(SLOW)
        start = time.monotonic()
        try:
            return send(self, method, url, headers, body)
        finally:
            with lock:
                events.append((start, time.monotonic(), self.host, method, url.split(self.host, 1)[-1]))

    monkeypatch.setattr(registry.Session, "_send", timed)
    yield line


def _rerun(fleet: Fleet, **options: Any) -> Any:
    spec = T.load(str(fleet.targets_file("crane")), fleet.env)
    report = release.run(spec, release.Options(**options), fleet.env, stream=io.StringIO())
    assert [(r.status, r.changed) for r in report.results] == [("ok", False)] * 3, report
    for r in report.results:
        assert r.digests == {tag: fleet.source.digest for tag in TAGS}
    return report


def _heads_and_source(fleet: Fleet, events: list[Event]) -> tuple[list[Event], float]:
    heads = [e for e in events if e[3] == "HEAD" and e[2] != fleet.local.host and "/manifests/" in e[4]]
    assert len(heads) == 3 * len(TAGS), heads  # one round trip per tag, at every target
    source_done = max(e[1] for e in events if e[2] == fleet.local.host)
    return heads, source_done


def test_tags_are_read_while_the_source_is_still_read(fleet: Fleet, timeline: Timeline) -> None:
    timeline.slow.add(fleet.local.host)
    _rerun(fleet)
    heads, source_done = _heads_and_source(fleet, timeline.events)
    assert all(end < source_done for _, end, *_ in heads), (heads, source_done)


def test_control_tags_read_after_the_source_wait_for_it(
    fleet: Fleet, timeline: Timeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the read in the check, the HEADs are sent once the source's digest is known
    # (its manifest read; discovery goes on meanwhile, in the background).
    monkeypatch.setattr(fanout.Preflights, "_check_and_read", lambda self, *a: fanout._preflight(*a))
    timeline.slow.add(fleet.local.host)
    _rerun(fleet)
    heads, _ = _heads_and_source(fleet, timeline.events)
    digest_known = min(e[1] for e in timeline.events if e[2] == fleet.local.host and "/manifests/" in e[4])
    assert all(start > digest_known for start, *_ in heads), (heads, digest_known)


def _source_manifest_requests(fleet: Fleet, asked: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [r for r in asked if "/manifests/" in r[1]]


def test_source_resolved_with_the_get_discovery_needs(fleet: Fleet) -> None:
    requests = Requests({"local": fleet.local})
    _rerun(fleet)
    assert _source_manifest_requests(fleet, requests.since("local")) == [("GET", "/v2/app/manifests/1.0")]


def test_control_resolving_with_head_first_costs_two_more_requests(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    def head_first(self: registry.Session, repository: str, reference: str) -> tuple[str, None]:
        return self.manifest_digest(repository, reference), None  # as before: HEAD, then discovery's GET

    monkeypatch.setattr(registry.Session, "resolve", head_first)
    requests = Requests({"local": fleet.local})
    _rerun(fleet)
    asked = _source_manifest_requests(fleet, requests.since("local"))
    assert asked == [("HEAD", "/v2/app/manifests/1.0"), ("GET", f"/v2/app/manifests/{fleet.source.digest}")]


# -- the check is the first tag's HEAD once the warm-up has seen the challenge -------------


def _target_requests(fleet: Fleet, events: list[Event]) -> dict[str, list[tuple[str, str]]]:
    hosts = {r.host: name for name, r in fleet.targets.items()}
    asked: dict[str, list[tuple[str, str]]] = {name: [] for name in fleet.targets}
    for _, _, host, method, path in sorted(events):
        if host in hosts:
            asked[hosts[host]].append((method, path.partition("?")[0]))
    return asked


def _forget_targets(fleet: Fleet) -> None:
    for r in fleet.targets.values():
        registry._CHALLENGE.pop(r.host, None)
        registry._SCHEME.pop(r.host, None)
        registry._WARMING.pop(r.host, None)


def test_after_the_warm_up_each_targets_check_is_its_first_tags_head(fleet: Fleet, timeline: Timeline) -> None:
    """Real registries (htpasswd, one over TLS), warmed up as `authscope fanout` does: no
    target gets a `GET /v2/` with credentials; its first request is the HEAD of its first
    tag. Re-run of a landed release: every target up to date, one HEAD per tag."""
    _forget_targets(fleet)
    try:
        for name, r in fleet.targets.items():  # the trust settings of targets_file's targets
            tls = name == "two"
            registry.warm_up(r.host, ca_file=str(fleet.conf / "certs" / "ca.crt") if tls else None, insecure=not tls)
        for r in fleet.targets.values():
            registry._await_warm_up(r.host, 30)
        _rerun(fleet)
    finally:
        _forget_targets(fleet)
        registry.close_idle()
    for name, asked in _target_requests(fleet, timeline.events).items():
        repo = fleet.repos[name]
        assert asked == [("HEAD", f"/v2/{repo}/manifests/{tag}") for tag in TAGS], (name, asked)


def test_control_without_a_warm_up_each_check_is_get_v2(fleet: Fleet, timeline: Timeline) -> None:
    _forget_targets(fleet)
    try:
        _rerun(fleet)
    finally:
        _forget_targets(fleet)
    for name, asked in _target_requests(fleet, timeline.events).items():
        assert asked[0] == ("GET", "/v2/"), (name, asked)  # the challenge, learnt by the check itself
        assert ("HEAD", f"/v2/{fleet.repos[name]}/manifests/{TAGS[0]}") in asked, (name, asked)

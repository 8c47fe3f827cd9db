"""Invariant 7 at unit level: a destination that holds another digest fails its target.

A fake registry (tests/reliability/fakeregistry.py) serves the source and the
destinations; the copies are ``tool: custom`` commands that do nothing, so
what the read-back finds is what the registry says. One destination answers
another image's digest; the control runs the same fan-out with the digest
comparison switched off and shows the report calling that image "landed".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authscope import fanout as F
from tests.helpers import TARGET_PASSWORD
from tests.reliability.fakeregistry import DIGEST, OTHER_DIGEST, FakeRegistry


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    with FakeRegistry("ci", TARGET_PASSWORD) as r:
        r.other_image_at = {"release/converted"}
        yield r


def _fanout(registry: FakeRegistry, main: Any, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    assert main("login", registry.host, "-u", "ci", "--password-env", "TARGET_PASSWORD") == 0
    targets = tmp_path / "authscope.yml"
    targets.write_text(
        f"source: {registry.host}/app:1.0\n"
        "tool: custom\n"
        'command: ["sh", "-c", "echo copied {destination}"]\n'
        "retries: 0\n"
        "targets:\n"
        + "".join(
            f"  - name: {name}\n    registry: {registry.host}\n    repository: release/{name}\n"
            "    username: ci\n    password_env: TARGET_PASSWORD\n"
            for name in ("same", "converted")
        )
    )
    report = tmp_path / "report.json"
    code = main("fanout", "-f", str(targets), "--json", str(report))
    return code, {t["name"]: t for t in json.loads(report.read_text())["targets"]}


def test_destination_with_another_digest_fails_its_target(
    registry: FakeRegistry, main: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, targets = _fanout(registry, main, tmp_path)
    assert code == 1, capsys.readouterr()
    assert targets["same"]["status"] == "ok"
    assert targets["converted"]["status"] == "failed"
    assert OTHER_DIGEST in targets["converted"]["error"] and DIGEST in targets["converted"]["error"]
    # The read-back really asked the registry, for each destination.
    assert ("HEAD", "/v2/release/converted/manifests/1.0") in registry.requests or (
        "GET",
        "/v2/release/converted/manifests/1.0",
    ) in registry.requests


def test_control_without_the_digest_check_another_image_is_reported_landed(
    registry: FakeRegistry, main: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_back_and_accept_any(
        tp: F.TargetPlan, ctx: Any, session: Any, deadline: float, known: Any = None
    ) -> dict[str, Any]:
        return {tag: session.manifest_digest(tp.target.repository, tag) for tag in tp.target.tags}

    monkeypatch.setattr(F, "_verify", read_back_and_accept_any)
    code, targets = _fanout(registry, main, tmp_path)
    assert code == 0
    assert targets["converted"]["status"] == "ok"
    assert OTHER_DIGEST in json.dumps(targets["converted"])  # "landed", with another image's digest

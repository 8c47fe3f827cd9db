"""Issue 15, part 1 at unit level: a re-run pushes nothing.

A fake registry (tests/reliability/fakeregistry.py) serves the source and the
destinations and records every request; the copies are ``tool: custom``
commands that append the destination they were given to a file, so what was
"copied" is exactly what those commands were asked. With ``fresh`` False
every destination already holds the source's image: the target is up to
date. Controls: the first run (fresh destinations), ``--force`` and
``force: true`` copy; ``Session.manifest_digest`` would GET where
``head_digest`` never does.
"""

from __future__ import annotations

import json
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from authscope import fanout as F
from authscope import plan as P
from authscope import targets as T
from authscope.errors import TargetsFileError
from authscope.registry import RegistryAnswerError, RegistryHTTPError, Session
from tests.helpers import TARGET_PASSWORD
from tests.reliability.fakeregistry import DIGEST, FakeRegistry

TAGS = ("1.0", "latest")
NAMES = ("one", "two")


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    with FakeRegistry("ci", TARGET_PASSWORD) as r:
        yield r


def _file(tmp_path: Path, registry: FakeRegistry, forced: tuple[str, ...] = ()) -> Path:
    copied = tmp_path / "copied.txt"
    path = tmp_path / "authscope.yml"
    path.write_text(
        f"source: {registry.host}/app:1.0\n"
        f"tags: {json.dumps(list(TAGS))}\n"
        "tool: custom\n"
        f'command: ["sh", "-c", "echo {{destination}} >> {copied}"]\n'
        "retries: 0\n"
        "targets:\n"
        + "".join(
            f"  - name: {name}\n    registry: {registry.host}\n    repository: release/{name}\n"
            "    username: ci\n    password_env: TARGET_PASSWORD\n" + ("    force: true\n" if name in forced else "")
            for name in NAMES
        )
    )
    return path


class Run:
    def __init__(self, tmp_path: Path, code: int, out: str) -> None:
        self.code, self.out = code, out
        self.json = json.loads((tmp_path / "report.json").read_text())
        self.targets = {t["name"]: t for t in self.json["targets"]}
        self.dotenv = dict(
            line.split("=", 1) for line in (tmp_path / "report.env").read_text().splitlines() if "=" in line
        )
        self.junit = ET.parse(tmp_path / "report.xml").getroot()
        copied = tmp_path / "copied.txt"
        self.copied = copied.read_text().split() if copied.exists() else []
        copied.unlink(missing_ok=True)


def _fanout(main: Any, tmp_path: Path, path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    reports = ["--json", str(tmp_path / "report.json"), "--dotenv", str(tmp_path / "report.env")]
    code = main("fanout", "-f", str(path), *reports, "--junit", str(tmp_path / "report.xml"), *args)
    return Run(tmp_path, code, capsys.readouterr().out)


@pytest.fixture
def scopes_opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real = F.open_scope

    def recording(base: Any, registry: str | None, *args: Any, **kw: Any) -> Any:
        opened.append(str(registry))
        return real(base, registry, *args, **kw)

    monkeypatch.setattr(F, "open_scope", recording)
    return opened


def _login(main: Any, registry: FakeRegistry) -> None:
    assert main("login", registry.host, "-u", "ci", "--password-env", "TARGET_PASSWORD") == 0


def test_rerun_of_up_to_date_targets_copies_nothing_and_says_so(
    registry: FakeRegistry, main: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], scopes_opened: list[str]
) -> None:
    _login(main, registry)
    registry.fresh = False  # every destination already holds the source's image
    run = _fanout(main, tmp_path, _file(tmp_path, registry), capsys)
    assert run.code == 0, run.out
    assert run.copied == [] and scopes_opened == []  # no tool started, no scope opened
    for name in NAMES:
        target = run.targets[name]
        assert (target["status"], target["changed"], target["attempts"]) == ("ok", False, 0)
        assert target["digests"] == {tag: DIGEST for tag in TAGS}
        assert f"[{name}] up to date: 1.0, latest already hold {DIGEST}; nothing copied" in run.out
    table = run.out[run.out.index("fan-out of") :]
    assert table.count("UP TO DATE") == 2 and "(2 up to date, nothing copied)" in table
    assert run.dotenv["AUTHSCOPE_TARGETS_UNCHANGED"] == "one,two"
    assert run.dotenv["AUTHSCOPE_TARGETS_OK"] == "one,two" and run.dotenv["AUTHSCOPE_STATUS"] == "success"
    cases = run.junit.findall(".//testcase")
    assert len(cases) == 2 and run.junit.get("failures") == "0"
    for case in cases:
        assert case.find("failure") is None and case.find("skipped") is None
        assert "up to date" in (case.findtext("system-out") or "")
    # Destinations were read with HEAD only: no manifest GET (a pull on Harbor), nothing else.
    at_targets = [(m, p) for m, p in registry.requests if p.startswith("/v2/release/")]
    assert {m for m, _ in at_targets} == {"HEAD"}
    assert sorted(p for _, p in at_targets) == sorted(f"/v2/release/{n}/manifests/{t}" for n in NAMES for t in TAGS)


def test_control_first_run_copies_every_target(
    registry: FakeRegistry, main: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], scopes_opened: list[str]
) -> None:
    _login(main, registry)
    run = _fanout(main, tmp_path, _file(tmp_path, registry), capsys)  # fresh: nothing there yet
    assert run.code == 0, run.out
    assert sorted(run.copied) == sorted(f"{registry.host}/release/{n}:{t}" for n in NAMES for t in TAGS)
    assert sorted(scopes_opened) == [registry.host] * 2
    assert all(t["changed"] is True for t in run.targets.values())
    assert "UP TO DATE" not in run.out and run.dotenv["AUTHSCOPE_TARGETS_UNCHANGED"] == ""


def test_force_copies_up_to_date_targets(
    registry: FakeRegistry, main: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _login(main, registry)
    registry.fresh = False
    run = _fanout(main, tmp_path, _file(tmp_path, registry), capsys, "--force")
    assert run.code == 0, run.out
    assert len(run.copied) == 4 and all(t["changed"] is True for t in run.targets.values())
    # --force reads nothing before copying: the only reads are the digest check's, one per tag.
    assert len([p for _, p in registry.requests if p.startswith("/v2/release/")]) == 4


def test_force_from_the_environment_copies(
    registry: FakeRegistry, main: Any, env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _login(main, registry)
    registry.fresh = False
    env["AUTHSCOPE_FORCE"] = "true"
    run = _fanout(main, tmp_path, _file(tmp_path, registry), capsys)
    assert len(run.copied) == 4


def test_force_true_on_one_target_copies_that_target_only(
    registry: FakeRegistry, main: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _login(main, registry)
    registry.fresh = False
    run = _fanout(main, tmp_path, _file(tmp_path, registry, forced=("two",)), capsys)
    assert run.code == 0, run.out
    assert sorted(run.copied) == [f"{registry.host}/release/two:{t}" for t in TAGS]
    assert (run.targets["one"]["changed"], run.targets["two"]["changed"]) == (False, True)
    assert run.dotenv["AUTHSCOPE_TARGETS_UNCHANGED"] == "one"


def test_partial_target_gets_only_its_missing_tag(
    registry: FakeRegistry, main: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _login(main, registry)
    # Every destination is fresh but one:1.0, which already holds the image.
    registry._looked_up.add("/v2/release/one/manifests/1.0")
    run = _fanout(main, tmp_path, _file(tmp_path, registry), capsys)
    assert run.code == 0, run.out
    assert f"{registry.host}/release/one:1.0" not in run.copied
    assert f"{registry.host}/release/one:latest" in run.copied
    assert f"[one] 1.0 already holds {DIGEST}; copying only latest" in run.out
    assert run.targets["one"]["changed"] is True and run.targets["one"]["digests"] == {t: DIGEST for t in TAGS}


def test_an_error_on_head_copies_as_before(
    registry: FakeRegistry,
    main: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _login(main, registry)
    registry.fresh = False

    def broken(self: Session, repository: str, reference: str, scope: str = "") -> Any:
        raise RegistryHTTPError(self.registry, 500, f"{self.registry}/{repository}:{reference}")

    # Every manifest HEAD: the one that doubles as the credential check (which
    # then falls back to GET /v2/) and the up-to-date reads after it.
    monkeypatch.setattr(Session, "head_manifest", broken)
    run = _fanout(main, tmp_path, _file(tmp_path, registry), capsys)
    assert run.code == 0, run.out
    assert len(run.copied) == 4  # copied whole, as without the check
    assert "could not tell whether 1.0 is up to date (HTTP 500" in run.out


# -- HEAD only ----------------------------------------------------------------------------


class _NoDigestHeader(BaseHTTPRequestHandler):
    """A registry that answers a manifest HEAD 200 without Docker-Content-Digest."""

    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _serve(self) -> None:
        if "/manifests/" in self.path:  # not the plain-HTTP probe's GET /v2/
            self.seen.append(self.command)
        body = b'{"schemaVersion":2}'
        self.send_response(200 if "/manifests/" in self.path else 404)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = _serve  # noqa: N815
    do_HEAD = _serve  # noqa: N815


@pytest.fixture
def no_digest_registry() -> Iterator[str]:
    _NoDigestHeader.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoDigestHeader)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_head_digest_never_gets_even_without_a_digest_header(no_digest_registry: str) -> None:
    with Session(no_digest_registry, insecure=True) as session, pytest.raises(RegistryAnswerError):
        session.head_digest("release/app", "1.0")
    assert _NoDigestHeader.seen == ["HEAD"]


def test_control_manifest_digest_falls_back_to_a_get(no_digest_registry: str) -> None:
    with Session(no_digest_registry, insecure=True) as session:
        session.manifest_digest("release/app", "1.0")
    assert _NoDigestHeader.seen == ["HEAD", "GET"]  # a pull on Harbor: why the check uses head_digest


def test_head_digest_of_a_missing_tag_is_none(registry: FakeRegistry) -> None:
    with Session(registry.host, ("ci", TARGET_PASSWORD)) as session:
        assert session.head_digest("release/new", "1.0") is None  # fresh: 404
        assert session.head_digest("release/new", "1.0") == DIGEST
    assert {m for m, p in registry.requests if "/manifests/" in p} == {"HEAD"}


# -- only what is missing, per tool ---------------------------------------------------------


def _plan(tmp_path: Path, tool: str, pull_once: bool = False) -> P.Plan:
    path = tmp_path / f"{tool}.yml"
    command = '\ncommand: ["sh", "-c", "echo {source} {destination}"]' if tool == "custom" else ""
    path.write_text(
        "source: src.example:5000/app@sha256:" + "a" * 64 + "\n"
        'tags: ["1.0", "1", "latest"]\n'
        f"tool: {tool}{command}\npull_once: {'true' if pull_once else 'false'}\n"
        "targets:\n  - name: h\n    registry: harbor.example\n    repository: release/app\n"
        "    username: ci\n    password_env: X\n"
    )
    return P.make_plan(T.load(str(path), {}), source_digest="sha256:" + "a" * 64, layout="/tmp/layout")


def _written(step: Any) -> str:
    """The tag a step writes: every tool's destination is its last argument
    (crane tag: the new tag itself; custom: the last word of its script)."""
    last = str(step.argv[-1]).split()[-1].removeprefix("docker://")
    return last.rsplit(":", 1)[-1] if "/" in last else last


@pytest.mark.parametrize(("tool", "pull_once"), [("crane", False), ("skopeo", False), ("regctl", False), ("custom", False), ("crane", True), ("skopeo", True), ("regctl", True)])  # fmt: skip
def test_steps_for_missing_tags_never_write_a_tag_that_is_right(tmp_path: Path, tool: str, pull_once: bool) -> None:
    plan = _plan(tmp_path, tool, pull_once)
    tp = plan.targets[0]
    narrowed = P.for_tags(plan, tp, ["latest", "1"])
    assert narrowed.target.tags == ("1", "latest")  # file order
    assert narrowed.destinations == ("harbor.example/release/app:1", "harbor.example/release/app:latest")
    written = [_written(step) for step in narrowed.steps]
    assert "1.0" not in written and {"1", "latest"} <= set(written), [s.argv for s in narrowed.steps]
    assert "1.0" in [_written(step) for step in tp.steps]  # the control: the whole plan writes 1.0
    assert P.for_tags(plan, tp, list(tp.target.tags)) is tp


# -- the targets file and the plan text -------------------------------------------------------


def _target_file(tmp_path: Path, force: str) -> Path:
    path = tmp_path / "authscope.yml"
    path.write_text(
        "source: src.example/app:1.0\ntargets:\n  - name: h\n    registry: harbor.example\n"
        f"    repository: release/app\n    username: ci\n    password_env: X\n    force: {force}\n"
    )
    return path


def test_force_true_in_the_targets_file(tmp_path: Path) -> None:
    assert T.load(str(_target_file(tmp_path, "true")), {}).targets[0].force is True
    assert T.load(str(_target_file(tmp_path, "false")), {}).targets[0].force is False


def test_force_that_is_not_a_boolean_names_file_and_line(tmp_path: Path) -> None:
    path = _target_file(tmp_path, '"yes"')
    with pytest.raises(TargetsFileError) as caught:
        T.load(str(path), {})
    assert f"{path}:8" in str(caught.value) and "targets[0].force" in str(caught.value)
    assert "must be true or false" in str(caught.value)


def test_dry_run_says_targets_are_checked_at_run_time(
    tmp_path: Path, main: Any, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    env["X"] = "not-a-real-password-0003"
    path = _target_file(tmp_path, "false")
    assert main("fanout", "-f", str(path), "--dry-run") == 0
    assert "tags that already hold the source digest (read with HEAD) are not copied again" in capsys.readouterr().out
    assert main("fanout", "-f", str(path), "--dry-run", "--force") == 0
    assert "--force: copied even when its tags already hold the source digest" in capsys.readouterr().out

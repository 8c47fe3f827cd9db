"""`authscope check` end to end: the installed `authscope` console script, a
targets file, real registries (htpasswd, TLS), as a new user would run it.

docker-registry's htpasswd auth gives every authenticated user every right,
so a pull-only account is emulated by `ReadOnlyProxy`: an auth front of its
own in front of a real registry, where `reader` (with its own password) may
read everything and is refused (403 DENIED, as Harbor and distribution's
token auth answer) every write. The Bearer flow (a token that grants pull
only) is in tests/test_check.py against a toy token service.

"Nothing pushed" is checked on the registries themselves: their catalog and
tag lists, and their storage's upload directories, before and after; the
control shows that a real fan-out to the same file does change them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import RegistryFactory, fake_password
from tests.support import Registry, SourceImage

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
ROBOT = "robot$release+ci"


class ReadOnlyProxy:
    """A real registry behind an auth front: ``user`` may pull, never push."""

    def __init__(self, upstream: Registry, user: str, password: str) -> None:
        self.upstream = upstream
        self.user, self.password = user, password
        self.refused: list[str] = []  # the writes it refused
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                expected = base64.b64encode(f"{proxy.user}:{proxy.password}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {expected}":
                    return self._reply(401, {"WWW-Authenticate": 'Basic realm="read-only"'}, b"{}")
                if self.command in ("POST", "PUT", "PATCH", "DELETE"):
                    proxy.refused.append(f"{self.command} {self.path}")
                    denied = {"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]}
                    return self._reply(403, {"Content-Type": "application/json"}, json.dumps(denied).encode())
                forward = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")}
                answer = proxy.upstream.request(
                    self.command, self.path, auth=proxy.upstream.credentials, headers=forward
                )
                keep = {k: v for k, v in answer.headers.items() if k not in ("content-length", "connection")}
                keep.pop("transfer-encoding", None)
                return self._reply(answer.status, keep, answer.body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def state(registry: Registry) -> dict[str, Any]:
    """What a push would change: the catalog, every repository's tags, and any
    upload left in the registry's storage."""
    catalog = json.loads(registry.request("GET", "/v2/_catalog", auth=registry.credentials).body)
    tags = {}
    for repo in [*catalog["repositories"], "release/app", "mirror/app"]:
        answer = registry.request("GET", f"/v2/{repo}/tags/list", auth=registry.credentials)
        tags[repo] = json.loads(answer.body).get("tags") if answer.status == 200 else answer.status
    # An open upload has its `startedat` (and `data`); a cancelled one has
    # neither. distribution 2.8 still leaves a cancelled upload's empty hash
    # state (`hashstates/sha256/0`, no data) behind: its own bug, for any
    # client's cancel, not counted here.
    uploads = sorted(
        str(p.relative_to(registry.root))
        for p in (registry.root / "data").rglob("_uploads/*/*")
        if p.name in ("startedat", "data")
    )
    return {"catalog": catalog["repositories"], "tags": tags, "uploads": uploads}


class Job:
    """A release job's checkout and environment: a targets file, a logged-in base."""

    def __init__(self, tmp_path: Path, env: dict[str, str], source: SourceImage) -> None:
        authscope = shutil.which("authscope")
        assert authscope is not None, "the authscope console script is not installed (pip install -e .)"
        self.authscope = authscope
        self.dir = tmp_path / "job"
        self.dir.mkdir()
        self.env = dict(env)
        self.env["PATH"] = f"{TOOLS_BIN}{os.pathsep}{env['PATH']}"
        self.env["PYTHONPATH"] = str(REPO_ROOT / "plugin")  # this checkout's code, through the console script
        self.env["LOCAL_PASSWORD"] = source.registry.password
        self.source = source
        self.secrets: list[str] = [source.registry.password]
        login = self.run(
            "login", source.registry.host, "-u", source.registry.username, "--password-env", "LOCAL_PASSWORD"
        )
        assert login.returncode == 0, login.stderr

    def write(self, text: str) -> Path:
        path = self.dir / "authscope.yml"
        path.write_text(text)
        return path

    def run(self, *args: str, **more: str) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **more}
        result = subprocess.run(
            [self.authscope, *args],
            cwd=self.dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        for secret in self.secrets:
            assert secret not in result.stdout + result.stderr, "a test secret was printed"
        return result


@pytest.fixture
def fleet(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory, source_image: SourceImage
) -> Iterator[dict[str, Any]]:
    """The source, a plain-HTTP target (robot account), a TLS target, and a
    read-only proxy in front of a third registry; the job that checks them."""
    one = registry_factory("one", username=ROBOT)
    two = registry_factory("two", tls=True, username="ci-two")
    three = registry_factory("three", username="ci-three")
    reader_password = fake_password()
    proxy = ReadOnlyProxy(three, "reader", reader_password)
    job = Job(tmp_path, e2e_env, source_image)
    job.secrets += [one.password, two.password, three.password, reader_password]
    assert two.ca_file is not None
    shutil.copyfile(two.ca_file, job.dir / "two-ca.crt")
    job.env.update(ONE_PASSWORD=one.password, TWO_USER=two.username, TWO_PASSWORD=two.password)
    job.env.update(READER_PASSWORD=reader_password, THREE_PASSWORD=three.password, LOCAL=source_image.registry.host)
    yield {"one": one, "two": two, "three": three, "proxy": proxy, "job": job}
    proxy.stop()


def targets(f: dict[str, Any], source_tag: str = "1.0", extra: str = "") -> str:
    return f"""\
source: {{image: "${{LOCAL}}/app:{source_tag}", insecure: true}}
tags: ["1.0", latest]
targets:
  - name: harbor-one
    registry: {f["one"].host}
    repository: release/app
    username: {ROBOT}
    password_env: ONE_PASSWORD
    insecure: true
  - name: harbor-two
    registry: {f["two"].host}
    repository: release/app
    username_env: TWO_USER
    password_env: TWO_PASSWORD
    ca_file: two-ca.crt
{extra}"""


READER = """\
  - name: mirror-ro
    registry: {host}
    repository: mirror/app
    username: reader
    password_env: READER_PASSWORD
    insecure: true
"""


def lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The per-target lines of `authscope check`, by target name."""
    found = {}
    for text in result.stdout.splitlines():
        if text.startswith("authscope: [") and ("] ok" in text or "] FAILED" in text):
            found[text.split("[", 1)[1].split("]", 1)[0]] = text
    return found


def test_check_passes_over_plain_http_and_tls_and_pushes_nothing(fleet: dict[str, Any]) -> None:
    job: Job = fleet["job"]
    path = job.write(targets(fleet))
    before = {name: state(fleet[name]) for name in ("one", "two")}
    result = job.run("check", "-f", str(path), "--json", "check.json", "--junit", "check.xml")
    assert result.returncode == 0, result.stdout + result.stderr
    seen = lines(result)
    assert set(seen) == {"source", "harbor-one", "harbor-two"}
    assert "may push to" in seen["harbor-one"] and "may push to" in seen["harbor-two"]
    assert job.source.digest in seen["source"]
    assert "all pass" in result.stdout and "nothing was pushed" in result.stdout
    assert {name: state(fleet[name]) for name in ("one", "two")} == before  # no tag, no repository, no upload left
    doc = json.loads((job.dir / "check.json").read_text())
    assert doc["command"] == "check" and doc["status"] == "success"
    assert [t["name"] for t in doc["targets"]] == ["source", "harbor-one", "harbor-two"]

    # Control: a real fan-out to the same file changes what `state` reads, so
    # the equality above can fail.
    copied = job.run("fanout", "-f", str(path))
    assert copied.returncode == 0, copied.stdout + copied.stderr
    after = state(fleet["one"])
    assert after != before["one"] and sorted(after["tags"]["release/app"]) == ["1.0", "latest"]


def test_control_an_upload_that_is_not_cancelled_shows_in_state(fleet: dict[str, Any]) -> None:
    """The check cancels its test upload; one left open is visible to `state`."""
    one: Registry = fleet["one"]
    before = state(one)
    answer = one.request("POST", "/v2/release/app/blobs/uploads/", auth=one.credentials)
    assert answer.status == 202
    assert state(one)["uploads"] != before["uploads"]


def test_wrong_password_names_the_target_and_the_variable(fleet: dict[str, Any]) -> None:
    job: Job = fleet["job"]
    path = job.write(targets(fleet))
    result = job.run("check", "-f", str(path), TWO_PASSWORD="test-wrong-password")
    assert result.returncode == 1
    seen = lines(result)
    assert "ok" in seen["harbor-one"] and "ok" in seen["source"]
    assert "[harbor-two] FAILED" in seen["harbor-two"]
    assert f"{fleet['two'].host} rejected the credentials (HTTP 401)" in seen["harbor-two"]
    assert "username_env TWO_USER and password_env TWO_PASSWORD" in seen["harbor-two"]


def test_missing_variable_is_named_and_the_others_still_checked(fleet: dict[str, Any]) -> None:
    job: Job = fleet["job"]
    path = job.write(targets(fleet))
    env = {k: v for k, v in job.env.items() if k != "ONE_PASSWORD"}
    job.env, saved = env, job.env
    try:
        result = job.run("check", "-f", str(path))
    finally:
        job.env = saved
    assert result.returncode == 1
    seen = lines(result)
    assert "$ONE_PASSWORD is not set" in seen["harbor-one"] and "fix: set $ONE_PASSWORD" in seen["harbor-one"]
    assert "may push to" in seen["harbor-two"]


def test_unreachable_registry_is_named(fleet: dict[str, Any]) -> None:
    job: Job = fleet["job"]
    gone = fleet["one"].host
    fleet["one"].stop()
    path = job.write(targets(fleet))
    result = job.run("check", "-f", str(path))
    assert result.returncode == 1
    assert f"[harbor-one] FAILED (target): cannot reach {gone}" in lines(result)["harbor-one"]
    assert f"check registry: {gone}" in lines(result)["harbor-one"]


def test_tls_registry_without_its_ca_is_named(fleet: dict[str, Any]) -> None:
    job: Job = fleet["job"]
    path = job.write(targets(fleet).replace("    ca_file: two-ca.crt\n", ""))
    result = job.run("check", "-f", str(path))
    assert result.returncode == 1
    line = lines(result)["harbor-two"]
    # Not tried over plain HTTP after the certificate failure, loopback or not
    # (tests/e2e/test_check_token.py has the detail).
    assert f"[harbor-two] FAILED (target): {fleet['two'].host}" in line


def test_pull_only_account_is_reported_unable_to_push(fleet: dict[str, Any]) -> None:
    job: Job = fleet["job"]
    proxy: ReadOnlyProxy = fleet["proxy"]
    three: Registry = fleet["three"]
    path = job.write(targets(fleet, extra=READER.format(host=proxy.host)))
    before = state(three)
    result = job.run("check", "-f", str(path), "--target", "mirror-ro", "--junit", "check.xml")
    assert result.returncode == 1
    line = lines(result)["mirror-ro"]
    assert f"username 'reader' may not push to {proxy.host}/mirror/app" in line
    assert "answered HTTP 403" in line and "push permission" in line
    assert proxy.refused == ["POST /v2/mirror/app/blobs/uploads/"]
    assert state(three) == before
    junit = (job.dir / "check.xml").read_text()
    assert 'name="mirror-ro"' in junit and "may not push" in junit

    # Controls: the reader's login is good (a credential check alone passes it),
    # and the same registry's own account, which may push, passes the check.
    verified = job.run(
        "login",
        proxy.host,
        "-u",
        "reader",
        "--password-env",
        "READER_PASSWORD",
        "--verify",
        "--config-dir",
        str(job.dir / "other"),
    )
    assert verified.returncode == 0, verified.stderr
    writer = READER.format(host=three.host).replace("reader", "ci-three").replace("READER_PASSWORD", "THREE_PASSWORD")
    passed = job.run("check", "-f", str(job.write(targets(fleet, extra=writer))), "--target", "mirror-ro")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "may push to" in lines(passed)["mirror-ro"]


def test_missing_source_tag_is_reported(fleet: dict[str, Any]) -> None:
    job: Job = fleet["job"]
    path = job.write(targets(fleet, source_tag="2.0"))
    result = job.run("check", "-f", str(path))
    assert result.returncode == 1
    line = lines(result)["source"]
    assert f"the source {job.source.registry.host}/app:2.0 does not exist (HTTP 404)" in line
    assert "may push to" in lines(result)["harbor-one"]  # the targets are still checked


def test_source_needs_the_bases_login(fleet: dict[str, Any]) -> None:
    job: Job = fleet["job"]
    path = job.write(targets(fleet))
    empty = job.dir / "empty-base"
    empty.mkdir()
    result = job.run("check", "-f", str(path), "--config-dir", str(empty))
    assert result.returncode == 1
    line = lines(result)["source"]
    assert "has none for it" in line and f"authscope login {job.source.registry.host}" in line


def test_broken_targets_file_is_a_config_error(fleet: dict[str, Any]) -> None:
    job: Job = fleet["job"]
    path = job.write(targets(fleet).replace("${LOCAL}", "${NOT_SET_ANYWHERE}"))
    result = job.run("check", "-f", str(path))
    assert result.returncode == 2
    assert "NOT_SET_ANYWHERE" in result.stderr


def test_check_is_quick_with_many_targets_in_parallel(fleet: dict[str, Any]) -> None:
    """--jobs: eight targets at a time against one registry, each its own connection."""
    job: Job = fleet["job"]
    one: Registry = fleet["one"]
    extra = "".join(
        f"  - name: more-{i}\n    registry: {one.host}\n    repository: release/app-{i}\n"
        f"    username: {ROBOT}\n    password_env: ONE_PASSWORD\n    insecure: true\n"
        for i in range(8)
    )
    before = state(one)
    result = job.run("check", "-f", str(job.write(targets(fleet, extra=extra))), "--jobs", "8")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(lines(result)) == 11
    assert state(one) == before

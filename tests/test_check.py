"""`authscope check` (plugin/authscope/check.py) against in-process registries.

The Bearer cases use a toy registry and token service (below): the token
service grants what the test says (pull only, push and pull, or an opaque
token) and the registry accepts only the tokens it issued. The real
registries, Basic auth through a read-only proxy, TLS and the "nothing
pushed" proof are in tests/e2e/test_check_e2e.py.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from authscope import check, cli, fanout, registry
from authscope import report as R
from authscope.registry import Session, token_actions

USER, PASSWORD = "robot$release+ci", "check-test-password"
REPO = "release/app"


def jwt(claims: dict[str, Any]) -> str:
    """A token shaped like a registry's JWT; its signature is not one (nothing here verifies it)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'ES256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def access(*actions: str, name: str = REPO) -> dict[str, Any]:
    return {"iss": "toy", "access": [{"type": "repository", "name": name, "actions": list(actions)}]}


# -- reading a token's grant ------------------------------------------------------------


def test_token_actions_reads_the_access_claim_for_that_repository() -> None:
    assert token_actions(jwt(access("pull")), REPO) == ("pull",)
    assert token_actions(jwt(access("push", "pull")), REPO) == ("push", "pull")
    assert token_actions(jwt(access("push", "pull", name="other/app")), REPO) == ()
    assert token_actions(jwt({"access": []}), REPO) == ()


@pytest.mark.parametrize("token", ["opaque-token-123", "a.b", "a.!!!.c", jwt({"sub": "x"}), "a.bnVsbA.c"])
def test_token_actions_is_none_for_an_opaque_token(token: str) -> None:
    assert token_actions(token, REPO) is None


# -- a toy registry ------------------------------------------------------------------


class Toy(BaseHTTPRequestHandler):
    """/v2/ behind Basic or Bearer; a token service that grants ``grant``;
    blob uploads answered ``upload`` (202 with a Location, or an error)."""

    mode = "bearer"
    grant: tuple[str, ...] | None = ("push", "pull")  # None: an opaque token
    upload = 202
    location = ""  # default: this registry's own upload URL
    seen: list[tuple[str, str]]

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _basic_ok(self) -> bool:
        return self.headers.get("Authorization") == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def _token(self) -> str:
        return "opaque-token-123" if self.grant is None else jwt(access(*self.grant))

    def _authorized(self) -> bool:
        if self.mode == "basic":
            return self._basic_ok()
        return self.headers.get("Authorization") in ("Bearer " + self._token(), "Bearer " + jwt(access()))

    def _host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def _handle(self) -> None:
        self.seen.append((self.command, self.path))
        if self.path.startswith("/token"):
            if not self._basic_ok():
                return self._send(401)
            token = self._token() if "scope=" in self.path else jwt(access())
            return self._send(200, json.dumps({"token": token}).encode())
        if not self._authorized():
            challenge = (
                'Basic realm="toy"'
                if self.mode == "basic"
                else f'Bearer realm="http://{self._host()}/token",service="toy"'
            )
            return self._send(401, headers={"WWW-Authenticate": challenge})
        if self.path == "/v2/":
            return self._send(200)
        if self.command == "POST" and self.path == f"/v2/{REPO}/blobs/uploads/":
            if self.upload != 202:
                return self._send(self.upload)
            where = self.location or f"http://{self._host()}/v2/{REPO}/blobs/uploads/u-1?_state=s"
            return self._send(202, b"", {"Location": where})
        if self.command == "DELETE" and self.path.startswith(f"/v2/{REPO}/blobs/uploads/u-1"):
            return self._send(204, b"")
        return self._send(404)

    do_GET = do_HEAD = do_POST = do_DELETE = _handle  # noqa: N815 - http.server's naming


@pytest.fixture(autouse=True)
def fresh_sessions() -> Iterator[None]:
    """What the process learnt of a registry (scheme, challenge) is keyed by
    host:port, and a later test's toy may get a port an earlier one had."""
    registry._SCHEME.clear()
    registry._CHALLENGE.clear()
    yield
    registry._SCHEME.clear()
    registry._CHALLENGE.clear()


@pytest.fixture
def toy() -> Iterator[Any]:
    """`toy(**attributes) -> (host, requests seen)`: a toy registry for one test."""
    servers: list[ThreadingHTTPServer] = []

    def start(**attributes: Any) -> tuple[str, list[tuple[str, str]]]:
        seen: list[tuple[str, str]] = []
        handler = type("Handler", (Toy,), {**attributes, "seen": seen})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}", seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def targets_file(tmp_path: Path, source: str, *targets: dict[str, Any]) -> Path:
    lines = [f'source: {{image: "{source}/app:1.0", insecure: true}}', "targets:"]
    for t in targets:
        lines.append(f"  - name: {t['name']}")
        lines += [f"    {k}: {json.dumps(v)}" for k, v in t.items() if k != "name"]
    path = tmp_path / "authscope.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def target(name: str, registry: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "registry": registry, "repository": REPO, "username": USER, **more}


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "docker").mkdir()
    return {"DOCKER_CONFIG": str(tmp_path / "docker"), "TOY_PASSWORD": PASSWORD, "HOME": str(tmp_path)}


def run_check(path: Path, environ: dict[str, str], *only: str) -> dict[str, R.Result]:
    report = check.run(str(path), environ, check.Options(only=only))
    return {r.name: r for r in report.results}


# -- Bearer: what the token grants ------------------------------------------------------------


def test_bearer_pull_only_account_is_reported_unable_to_push(toy: Any, tmp_path: Path, environ: dict[str, str]) -> None:
    host, seen = toy(grant=("pull",))
    path = targets_file(tmp_path, host, target("reader", host, password_env="TOY_PASSWORD", insecure=True))
    result = run_check(path, environ)["reader"]
    assert result.status == R.FAILED
    assert f"username {USER!r} may not push to {host}/{REPO}" in result.error
    assert "grants pull" in result.error and "push permission" in result.hint
    # One token for the repository, asked for push and pull: the credential
    # check's, whose grant the push-right step reads (no second request).
    asked = [path for method, path in seen if path.startswith("/token") and "release%2Fapp" in path]
    assert asked == ["/token?service=toy&scope=repository%3Arelease%2Fapp%3Apull%2Cpush"]
    assert not [r for r in seen if r[0] in ("POST", "PUT", "PATCH", "DELETE")], "nothing may be sent to push"


def test_control_the_pull_only_account_passes_the_credential_check(toy: Any, environ: dict[str, str]) -> None:
    """Without the push-right step, the same account would pass: its credentials are good."""
    host, _ = toy(grant=("pull",))
    t = next(iter(_load(host, environ).targets))
    log = fanout._Log(io.StringIO())
    with fanout._preflight(t, fanout.Credentials(USER, PASSWORD), 10, 0, log) as session:
        assert session.challenge() == "bearer"
        assert session.granted(REPO) == ("pull",)


def _load(host: str, environ: dict[str, str]) -> Any:
    from authscope import targets

    path = Path(environ["HOME"]) / "authscope.yml"
    targets_file(Path(environ["HOME"]), host, target("reader", host, password_env="TOY_PASSWORD", insecure=True))
    return targets.load(str(path), environ)


def test_bearer_push_account_passes(toy: Any, tmp_path: Path, environ: dict[str, str]) -> None:
    host, _ = toy(grant=("pull", "push"))
    path = targets_file(tmp_path, host, target("writer", host, password_env="TOY_PASSWORD", insecure=True))
    result = run_check(path, environ)["writer"]
    assert (result.status, result.error, result.hint) == (R.OK, "", "")
    assert check.line(result) == f"[writer] ok: credentials accepted, may push to {host}/{REPO}"


def test_bearer_opaque_token_says_push_could_not_be_established(
    toy: Any, tmp_path: Path, environ: dict[str, str]
) -> None:
    host, _ = toy(grant=None)
    path = targets_file(tmp_path, host, target("opaque", host, password_env="TOY_PASSWORD", insecure=True))
    result = run_check(path, environ)["opaque"]
    assert result.status == R.OK
    assert "push permission not established" in result.hint and "opaque" in result.hint
    assert f"{host}/{REPO}:authscope-check" in result.hint  # how to check by hand
    assert "note: push permission not established" in R.result_text(result, failure=False)  # JUnit's system-out


def test_bearer_wrong_password_names_the_target_and_the_variable(
    toy: Any, tmp_path: Path, environ: dict[str, str]
) -> None:
    host, _ = toy()
    environ["TOY_PASSWORD"] = "wrong-password-1"
    path = targets_file(tmp_path, host, target("harbor-1", host, password_env="TOY_PASSWORD", insecure=True))
    result = run_check(path, environ)["harbor-1"]
    # The token service's 401 (registry.TokenRefused), naming the account.
    assert result.status == R.FAILED and "refused username 'robot$release+ci'" in result.error
    assert "password_env TOY_PASSWORD" in result.hint


# -- Basic: a blob upload started and cancelled -------------------------------------------


def test_basic_upload_is_started_and_cancelled(toy: Any, tmp_path: Path, environ: dict[str, str]) -> None:
    host, seen = toy(mode="basic")
    path = targets_file(tmp_path, host, target("basic", host, password_env="TOY_PASSWORD", insecure=True))
    assert run_check(path, environ)["basic"].status == R.OK
    writes = [r for r in seen if r[0] in ("POST", "PUT", "PATCH", "DELETE")]
    assert writes == [("POST", f"/v2/{REPO}/blobs/uploads/"), ("DELETE", f"/v2/{REPO}/blobs/uploads/u-1?_state=s")]


@pytest.mark.parametrize("status", [401, 403, 405])
def test_basic_refused_upload_means_no_push(status: int, toy: Any, tmp_path: Path, environ: dict[str, str]) -> None:
    host, _ = toy(mode="basic", upload=status)
    path = targets_file(tmp_path, host, target("ro", host, password_env="TOY_PASSWORD", insecure=True))
    result = run_check(path, environ)["ro"]
    assert result.status == R.FAILED
    assert f"may not push to {host}/{REPO}: starting a blob upload was answered HTTP {status}" in result.error


def test_basic_upload_elsewhere_is_not_followed(toy: Any, tmp_path: Path, environ: dict[str, str]) -> None:
    """A Location on another host gets no DELETE: the credentials go to the registry only."""
    other, other_seen = toy(mode="basic")
    host, seen = toy(mode="basic", location=f"http://{other}/v2/{REPO}/blobs/uploads/u-1")
    with Session(host, (USER, PASSWORD), insecure=True) as session:
        session.request("GET", "/v2/")
        assert session.upload_probe(REPO) == (202, None)
    assert other_seen == [] and [r[0] for r in seen].count("DELETE") == 0
    # Control: with its own Location, the DELETE is sent.
    with Session(other, (USER, PASSWORD), insecure=True) as session:
        session.request("GET", "/v2/")
        assert session.upload_probe(REPO) == (202, 204)


# -- variables, the file, the source ------------------------------------------------------


def test_a_missing_variable_is_that_targets_failure_and_named(
    toy: Any, tmp_path: Path, environ: dict[str, str]
) -> None:
    host, _ = toy()
    path = targets_file(
        tmp_path,
        host,
        target("good", host, password_env="TOY_PASSWORD", insecure=True),
        target("unset", host, password_env="HARBOR_2_PASSWORD", insecure=True),
        target("scoped", "${HARBOR_3_HOST}", password_env="TOY_PASSWORD"),
    )
    results = run_check(path, environ)
    assert results["good"].status == R.OK
    assert "$HARBOR_2_PASSWORD is not set" in results["unset"].error and "$HARBOR_2_PASSWORD" in results["unset"].hint
    assert "HARBOR_3_HOST" in results["scoped"].error and "$HARBOR_3_HOST" in results["scoped"].hint


def test_a_broken_file_is_a_config_error(toy: Any, tmp_path: Path, environ: dict[str, str], capsys: Any) -> None:
    host, _ = toy()
    path = targets_file(tmp_path, "${NO_SUCH_SOURCE}", target("t", host, password_env="TOY_PASSWORD"))
    assert cli.main(["check", "-f", str(path)], environ) == cli.EXIT_USAGE
    assert "NO_SUCH_SOURCE" in capsys.readouterr().err
    assert cli.main(["check", "-f", str(tmp_path / "none.yml")], environ) == cli.EXIT_USAGE
    good = targets_file(tmp_path, host, target("t", host, password_env="TOY_PASSWORD"))
    assert cli.main(["check", "-f", str(good), "--target", "nope"], environ) == cli.EXIT_USAGE
    assert "no target named 'nope'" in capsys.readouterr().err


def test_cli_prints_a_line_per_target_the_table_and_exits_1_on_a_failure(
    toy: Any, tmp_path: Path, environ: dict[str, str], capsys: Any
) -> None:
    host, _ = toy(grant=("pull",))
    path = targets_file(
        tmp_path,
        host,
        target("reader", host, password_env="TOY_PASSWORD", insecure=True),
        target("unset", host, password_env="UNSET_PASSWORD", insecure=True),
    )
    code = cli.main(
        ["check", "-f", str(path), "--json", str(tmp_path / "c.json"), "--junit", str(tmp_path / "c.xml")], environ
    )
    out = capsys.readouterr().out
    assert code == cli.EXIT_FAILED
    assert "[reader] FAILED (target):" in out and "[unset] FAILED (target): " in out
    assert "check of " in out and "nothing was pushed" in out
    assert PASSWORD not in out
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["command"] == "check" and [t["name"] for t in doc["targets"]] == ["source", "reader", "unset"]
    import xml.etree.ElementTree as ET

    cases = {c.get("name"): c for c in ET.parse(tmp_path / "c.xml").getroot().iter("testcase")}
    assert set(cases) == {"source", "reader", "unset"}
    assert cases["reader"].find("failure") is not None


def test_only_the_chosen_targets_are_checked(toy: Any, tmp_path: Path, environ: dict[str, str]) -> None:
    host, _ = toy()
    path = targets_file(
        tmp_path,
        host,
        target("one", host, password_env="TOY_PASSWORD", insecure=True),
        target("two", "${UNSET_HOST}", password_env="UNSET"),
    )
    assert set(run_check(path, environ, "one")) == {"source", "one"}


def test_table_says_check_and_keeps_report_rows() -> None:
    rows = (
        R.Result("source", "r", "app", "check", ("1.0",), R.OK, digests={"1.0": "sha256:" + "a" * 64}),
        R.Result("t", "r", "app", "check", ("1.0",), R.FAILED, error="x"),
    )
    text = check.table(R.Report("r/app:1.0", "sha256:" + "a" * 64, "crane", rows, 0.0, 0.1))
    head, *table = text.splitlines()
    assert head.startswith("check of r/app:1.0 and 1 target(s): 1 failed")
    assert table[0].split() == ["target", "tags", "digest", "time", "tries", "status"]
    assert table[3].split()[-1] == "FAILED"


def test_a_challenge_learnt_over_http_does_not_fail_another_sessions_https_attempt(toy: Any) -> None:
    """The source and a target on one plain-HTTP host, checked in parallel: one
    session learns the Bearer challenge (an http realm) while the other still
    tries HTTPS first. Its pre-emptive answer must not end in RealmRefused."""
    host, _ = toy(grant=("push", "pull"))
    session = Session(host, (USER, PASSWORD), insecure=True)  # made before the other session learnt anything
    registry._SCHEME[host] = "http"  # what the other session learnt, in the order it stores it
    registry._CHALLENGE[host] = ("bearer", {"realm": f"http://{host}/token", "service": "toy"})
    assert session.schemes == ["https", "http"]
    with session:
        assert session.request("GET", "/v2/")[0] == 200
        assert session.granted(REPO) == ("push", "pull")

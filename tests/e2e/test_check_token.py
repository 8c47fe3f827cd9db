"""`authscope check` against Harbor-like token registries, end to end.

The installed `authscope` console script (this checkout's code through
PYTHONPATH) checks a targets file whose targets are tests/support/tokenauth.py
registries, one over plain HTTP and one over TLS: the real distribution
registry with `auth: token` behind a token service that signs RS256 JWTs
granting, per account and repository prefix, the actions asked for that the
account may do. `robot$release+ci` may push and pull `release/`,
`release-puller` may only pull it, `robot$release+expired` is refused by the
token service (401).

What the token service was asked and granted (`token_requests`) and every
request the front saw (`seen`) are the registries' own records: a check asks
for `repository:<repo>:pull,push` and nothing else, and sends no PUT, POST or
PATCH; the control is a real `authscope fanout` of the same file, which does.

Also here: a TLS registry whose certificate is not trusted is reported as
such, naming `ca_file:` (it used to read as "characters HTTP does not
allow"), and the credentials never go over plain HTTP after a certificate
failure; the control monkeypatches the protection off and shows them go.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import RegistryFactory, TokenRegistryFactory
from tests.e2e.fanout_helpers import SYSTEM_CA_BUNDLES, TOOLS_BIN, b64
from tests.support import CA, SourceImage
from tests.support.tokenauth import EXPIRED, PULLER, ROBOT, TokenRegistry

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECK_SCOPE = "repository:{}:pull,push"
WRITES = ("PUT", "POST", "PATCH")


class Job:
    """A scheduled check job: a targets file, a base logged in to the source."""

    def __init__(self, tmp_path: Path, e2e_env: Mapping[str, str], source: SourceImage) -> None:
        authscope = shutil.which("authscope")
        assert authscope is not None, "the authscope console script is not installed (pip install -e .)"
        self.authscope = authscope
        self.dir = tmp_path / "job"
        self.dir.mkdir()
        self.source = source
        env = dict(e2e_env)
        env["PATH"] = f"{TOOLS_BIN}{os.pathsep}{env['PATH']}"
        env["PYTHONPATH"] = str(REPO_ROOT / "plugin")  # this checkout's code, through the console script
        env["LANG"] = "C.UTF-8"
        env["LOCAL_PASSWORD"] = source.registry.password
        self.env = env
        self.secrets = [source.registry.password, b64(source.registry.username, source.registry.password)]
        login = self.run(
            "login", source.registry.host, "-u", source.registry.username, "--password-env", "LOCAL_PASSWORD"
        )
        assert login.returncode == 0, login.stderr

    def trust(self, registry: TokenRegistry) -> None:
        """Its accounts' passwords are secrets; its CA is the job's ca.crt."""
        for account in registry.accounts.values():
            self.secrets += [account.password, b64(account.name, account.password)]
        if registry.ca_file is not None:
            shutil.copyfile(registry.ca_file, self.dir / "ca.crt")

    def run(self, *args: str, **more: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.authscope, *args],
            cwd=self.dir,
            env={**self.env, **more},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        for secret in self.secrets:
            assert secret not in result.stdout + result.stderr, "a test secret was printed"
        for report in ("check.json", "check.xml", "fanout.json"):
            if (self.dir / report).exists():
                text = (self.dir / report).read_text()
                assert all(secret not in text for secret in self.secrets), f"a test secret was written to {report}"
        return result

    def check(self, path: Path, *args: str, **more: str) -> subprocess.CompletedProcess[str]:
        return self.run("check", "-f", str(path), "--json", "check.json", "--junit", "check.xml", *args, **more)

    def report(self) -> dict[str, dict[str, Any]]:
        doc = json.loads((self.dir / "check.json").read_text())
        assert doc["command"] == "check"
        return {t["name"]: t for t in doc["targets"]}


def entry(
    job: Job, name: str, registry: TokenRegistry, account: str, repository: str = "release/app"
) -> dict[str, Any]:
    """One target of the targets file; its password in ${NAME}_PASSWORD."""
    variable = name.upper().replace("-", "_") + "_PASSWORD"
    job.env[variable] = registry.accounts[account].password
    t: dict[str, Any] = {"name": name, "registry": registry.host, "repository": repository, "username": account}
    t["password_env"] = variable
    t.update({"ca_file": "ca.crt"} if registry.tls else {"insecure": True})
    return t


def targets_file(job: Job, targets: Sequence[dict[str, Any]], tool: str = "crane") -> Path:
    doc = {
        "source": {"image": job.source.ref, "insecure": True},
        "tags": ["1.0", "latest"],
        "tool": tool,
        "retries": 0,
        "targets": list(targets),
    }
    path = job.dir / "authscope.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The per-target lines of `authscope check`, by target name."""
    found = {}
    for text in result.stdout.splitlines():
        if text.startswith("authscope: [") and ("] ok" in text or "] FAILED" in text):
            found[text.split("[", 1)[1].split("]", 1)[0]] = text
    return found


def writes(registry: TokenRegistry) -> list[str]:
    return [f"{s.method} {s.path}" for s in registry.seen if s.method in WRITES]


def asked(registry: TokenRegistry, account: str) -> list[tuple[tuple[str, ...], Any, int]]:
    return [(r.scopes, r.granted, r.status) for r in registry.token_requests if r.account == account]


@pytest.fixture
def harbors(
    tmp_path: Path, e2e_env: dict[str, str], source_image: SourceImage, token_registry_factory: TokenRegistryFactory
) -> tuple[Job, TokenRegistry, TokenRegistry]:
    """The job, and two Harbor-like registries: plain HTTP and TLS."""
    job = Job(tmp_path, e2e_env, source_image)
    plain = token_registry_factory("harbor")
    tls = token_registry_factory("harbor-tls", tls=True)
    job.trust(plain)
    job.trust(tls)
    return job, plain, tls


# -- the Bearer flow -------------------------------------------------------------------------------------


def test_robot_passes_push_established_from_the_granted_token(
    harbors: tuple[Job, TokenRegistry, TokenRegistry],
) -> None:
    job, plain, tls = harbors
    path = targets_file(job, [entry(job, "plain", plain, ROBOT), entry(job, "tls", tls, ROBOT)])
    result = job.check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = lines(result)
    assert set(seen) == {"source", "plain", "tls"}
    assert f"may push to {plain.host}/release/app" in seen["plain"]
    assert f"may push to {tls.host}/release/app" in seen["tls"]
    assert "all pass" in result.stdout and "nothing was pushed" in result.stdout
    assert {t["status"] for t in job.report().values()} == {"ok"}
    assert 'failures="0"' in (job.dir / "check.xml").read_text()
    for registry in plain, tls:
        # One token request, for exactly the scope check asks, and it granted push.
        assert asked(registry, ROBOT) == [
            ((CHECK_SCOPE.format("release/app"),), (("release/app", ("pull", "push")),), 200)
        ]
        assert {r.account for r in registry.token_requests} == {ROBOT}
        assert writes(registry) == []  # a Bearer registry gets no test upload either
        assert registry.catalog() == []


def test_nothing_is_pushed_and_the_control_fanout_does_push(harbors: tuple[Job, TokenRegistry, TokenRegistry]) -> None:
    """The `seen` and catalog assertions above can fail: a real fan-out of the same file pushes."""
    job, plain, tls = harbors
    path = targets_file(job, [entry(job, "plain", plain, ROBOT), entry(job, "tls", tls, ROBOT)])
    assert job.check(path).returncode == 0
    assert writes(plain) == writes(tls) == []
    assert plain.catalog() == tls.catalog() == []

    # crane (the fan-out's tool) reads the TLS registry's CA from SSL_CERT_FILE.
    bundle = job.dir.parent / "ca-bundle.pem"
    roots = [Path(p).read_bytes() for p in SYSTEM_CA_BUNDLES if Path(p).is_file()][:1]
    assert tls.ca_file is not None
    bundle.write_bytes(b"".join(roots) + b"\n" + tls.ca_file.read_bytes())
    copied = job.run("fanout", "-f", str(path), "--json", "fanout.json", SSL_CERT_FILE=str(bundle))
    assert copied.returncode == 0, copied.stdout + copied.stderr
    for registry in plain, tls:
        assert any(w.startswith("PUT /v2/release/app/manifests/") for w in writes(registry)), registry.seen
        assert registry.manifest_digest("release/app", "1.0") == job.source.digest


def test_pull_only_account_is_reported_unable_to_push(harbors: tuple[Job, TokenRegistry, TokenRegistry]) -> None:
    job, plain, tls = harbors
    path = targets_file(job, [entry(job, "plain", plain, PULLER), entry(job, "tls", tls, PULLER)])
    result = job.check(path)
    assert result.returncode == 1, result.stdout + result.stderr
    seen = lines(result)
    for name, registry in ("plain", plain), ("tls", tls):
        line = seen[name]
        assert f"[{name}] FAILED (target): username {PULLER!r} may not push to {registry.host}/release/app" in line
        assert "grants pull" in line and "push permission" in line, line
        assert job.report()[name]["status"] == "failed"
        # Asked for push and pull; the token service granted pull only.
        assert asked(registry, PULLER) == [((CHECK_SCOPE.format("release/app"),), (("release/app", ("pull",)),), 200)]
        assert writes(registry) == []
    assert "ok" in seen["source"]
    assert "may not push" in (job.dir / "check.xml").read_text()

    # Control: the same account's credentials are good; a credential check
    # alone (`login --verify`, fanout's pre-check) passes it.
    for registry in plain, tls:
        tls_args = ["--ca-file", str(job.dir / "ca.crt")] if registry.tls else ["--insecure"]
        verified = job.run(
            "login", registry.host, "-u", PULLER, "--password-env", "PULLER_PASSWORD", "--verify",
            "--config-dir", str(job.dir / "other"), *tls_args,
            PULLER_PASSWORD=registry.accounts[PULLER].password,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stderr


def test_expired_robot_names_the_variable_to_fix(harbors: tuple[Job, TokenRegistry, TokenRegistry]) -> None:
    job, plain, tls = harbors
    path = targets_file(
        job, [entry(job, "plain", plain, EXPIRED), entry(job, "tls", tls, EXPIRED), entry(job, "good", plain, ROBOT)]
    )
    result = job.check(path)
    assert result.returncode == 1, result.stdout + result.stderr
    seen = lines(result)
    for name, registry in ("plain", plain), ("tls", tls):
        line = seen[name]
        assert f"the token service {registry.realm!r} of {registry.host} refused username {EXPIRED!r}" in line, line
        assert "expired" in line and f"update password_env {name.upper()}_PASSWORD" in line, line
        assert asked(registry, EXPIRED) == [((CHECK_SCOPE.format("release/app"),), (), 401)]
    assert "may push to" in seen["good"]  # control: the live robot on the same registry passes
    report = job.report()
    assert report["plain"]["status"] == report["tls"]["status"] == "failed" and report["good"]["status"] == "ok"


def test_repository_outside_the_robots_project_cannot_be_pushed(
    harbors: tuple[Job, TokenRegistry, TokenRegistry],
) -> None:
    job, plain, tls = harbors
    path = targets_file(
        job,
        [
            entry(job, "plain-other", plain, ROBOT, "other/app"),
            entry(job, "tls-other", tls, ROBOT, "other/app"),
            entry(job, "tls-release", tls, ROBOT),
        ],
    )
    result = job.check(path)
    assert result.returncode == 1, result.stdout + result.stderr
    seen = lines(result)
    for name, registry in ("plain-other", plain), ("tls-other", tls):
        assert f"username {ROBOT!r} may not push to {registry.host}/other/app" in seen[name], seen[name]
        assert "grants nothing" in seen[name]
    assert "may push to" in seen["tls-release"]  # control: its own project's repository
    assert sorted(s for r in tls.token_requests for s in r.scopes) == [
        CHECK_SCOPE.format("other/app"),
        CHECK_SCOPE.format("release/app"),
    ]
    assert writes(plain) == writes(tls) == []


def test_only_the_chosen_target_is_asked_for(harbors: tuple[Job, TokenRegistry, TokenRegistry]) -> None:
    job, plain, tls = harbors
    path = targets_file(job, [entry(job, "plain", plain, ROBOT), entry(job, "tls", tls, PULLER)])
    before = list(tls.seen)  # its start-up's own GET /v2/
    result = job.check(path, "--target", "plain")
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(lines(result)) == {"source", "plain"}
    assert tls.token_requests == [] and tls.seen == before
    assert job.check(path).returncode == 1  # control: the pull-only target fails when it is checked


# -- an untrusted certificate (registry._send) ---------------------------------------------------------


def test_tls_token_registry_without_its_ca_names_the_certificate_and_ca_file(
    harbors: tuple[Job, TokenRegistry, TokenRegistry],
) -> None:
    job, plain, tls = harbors
    untrusted = entry(job, "tls", tls, ROBOT)
    del untrusted["ca_file"]
    before = list(tls.seen)  # its start-up's own GET /v2/
    result = job.check(targets_file(job, [untrusted]))
    assert result.returncode == 1, result.stdout + result.stderr
    line = lines(result)["tls"]
    assert f"the TLS certificate of https://{tls.host} is not trusted" in line, line
    assert "fix: trust the CA" in line and "ca_file:" in line
    assert "characters HTTP does not allow" not in line
    assert tls.seen == before and tls.token_requests == []  # no request got through, none with the robot's secret
    assert "ca_file:" in job.report()["tls"]["hint"]

    # Control: the same target with its CA passes.
    passed = job.check(targets_file(job, [entry(job, "tls", tls, ROBOT)]))
    assert passed.returncode == 0, passed.stdout + passed.stderr


def test_tls_basic_registry_without_its_ca_names_the_certificate(
    tmp_path: Path, e2e_env: dict[str, str], source_image: SourceImage, registry_factory: RegistryFactory
) -> None:
    job = Job(tmp_path, e2e_env, source_image)
    registry = registry_factory("tls-basic", tls=True)
    job.secrets += [registry.password, b64(registry.username, registry.password)]
    assert registry.ca_file is not None
    shutil.copyfile(registry.ca_file, job.dir / "ca.crt")
    job.env["BASIC_PASSWORD"] = registry.password
    target = {"name": "basic", "registry": registry.host, "repository": "release/app", "username": registry.username}
    target["password_env"] = "BASIC_PASSWORD"
    result = job.check(targets_file(job, [target]))
    assert result.returncode == 1, result.stdout + result.stderr
    line = lines(result)["basic"]
    assert "is not trusted (unable to get local issuer certificate)" in line and "ca_file:" in line, line

    # login --verify names its own option.
    login = ["login", registry.host, "-u", registry.username, "--password-env", "BASIC_PASSWORD", "--verify"]
    refused = job.run(*login, "--config-dir", str(job.dir / "other"))
    assert refused.returncode == 1
    assert "is not trusted" in refused.stderr and "--ca-file PATH" in refused.stderr, refused.stderr

    # Controls: with its CA, both pass.
    assert job.check(targets_file(job, [{**target, "ca_file": "ca.crt"}])).returncode == 0
    verified = job.run(*login, "--ca-file", str(job.dir / "ca.crt"), "--config-dir", str(job.dir / "other"))
    assert verified.returncode == 0, verified.stderr


class _EitherScheme(http.server.ThreadingHTTPServer):
    """One loopback port that speaks TLS to a client that starts a handshake
    and plain HTTP to one that doesn't (a TLS record starts with 0x16), and
    records every request: (scheme, method, path, Authorization sent?)."""

    daemon_threads = True

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.requests: list[tuple[str, str, str, bool]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                scheme = "https" if isinstance(self.connection, ssl.SSLSocket) else "http"
                sent = self.headers.get("Authorization") is not None
                server.requests.append((scheme, self.command, self.path, sent))
                status = 200 if sent else 401
                self.send_response(status)
                if not sent:
                    self.send_header("WWW-Authenticate", 'Basic realm="either"')
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        super().__init__(("127.0.0.1", 0), Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        sock.settimeout(5)
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except OSError:
            first = b""
        if first == b"\x16":
            sock = self.ctx.wrap_socket(sock, server_side=True)  # a failed handshake ends this connection
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client's refused handshake


@pytest.fixture
def either_scheme(tmp_path: Path, ca: CA) -> Iterator[_EitherScheme]:
    cert, key = ca.issue(tmp_path / "either", "either")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = _EitherScheme(ctx)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _verify(host: str, password: str) -> str:
    from authscope.errors import RegistryError
    from authscope.registry import _CHALLENGE, _SCHEME, verify

    _SCHEME.pop(host, None), _CHALLENGE.pop(host, None)
    try:
        verify(host, "ci", password)
    except RegistryError as exc:
        return str(exc)
    return "ok"


def test_a_certificate_failure_never_falls_back_to_plain_http(either_scheme: _EitherScheme, monkeypatch: Any) -> None:
    """A loopback registry is tried over HTTPS and then plain HTTP (as the
    docker CLI does); a certificate the client does not trust must end it
    there, the credentials unsent, not send them in clear."""
    from authscope import registry

    host = f"127.0.0.1:{either_scheme.server_address[1]}"
    password = "test-" + base64.b16encode(os.urandom(6)).decode()
    message = _verify(host, password)
    assert "is not trusted" in message and "--ca-file" in message, message
    assert password not in message
    sent_in_clear = [r for r in either_scheme.requests if r[0] == "http" and r[3]]
    assert sent_in_clear == [], either_scheme.requests

    # Control: with the certificate failure taken for a network error (the
    # SSLError raised as it is), the loopback fallback sends the credentials
    # over plain HTTP and "passes".
    monkeypatch.setattr(registry, "CertificateUntrusted", lambda _registry, _where, exc: exc)
    assert _verify(host, password) == "ok"
    assert [r for r in either_scheme.requests if r[0] == "http" and r[3]] == [("http", "GET", "/v2/", True)]

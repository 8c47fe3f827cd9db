"""The fan-out's pure parts: diagnosing a tool's failure, reading credentials."""

from __future__ import annotations

import base64
import os
import textwrap
from pathlib import Path

import pytest

from authscope import fanout as F
from authscope.errors import TargetsFileError
from authscope.targets import Fanout, Target, load
from tests.privilege import as_unprivileged

SOURCE = "127.0.0.1:5000"


def target(**kw: object) -> Target:
    fields: dict = dict(
        name="harbor-1",
        registry="127.0.0.1:5001",
        repository="release/app",
        tags=("1.0",),
        tool="crane",
        username="robot$release+ci",
        username_env=None,
        password_env="HARBOR_1_PASSWORD",
        password_file=None,
        insecure=False,
        ca_file=None,
        command=None,
        line=7,
    )
    fields.update(kw)
    return Target(**fields)


# -- diagnose ---------------------------------------------------------------------------------

UNAUTHORIZED = {
    "crane": "Error: POST https://127.0.0.1:5001/v2/release/app/blobs/uploads/: UNAUTHORIZED: authentication required; "
    "[map[Action:push Class: Name:release/app Type:repository]]",
    "skopeo": 'time="2026-01-01T00:00:00Z" level=fatal msg="initializing destination docker://127.0.0.1:5001/release/app:1.0: '
    'reading manifest 1.0 in 127.0.0.1:5001/release/app: unauthorized: authentication required"',
    "regctl": "failed to send blob post, ref 127.0.0.1:5001/release/app:1.0: unauthorized",
    "docker": 'Error response from daemon: Get "https://127.0.0.1:5001/v2/": unauthorized: incorrect username or password',
    "bare": "HTTP 401",
}


@pytest.mark.parametrize("tool", sorted(UNAUTHORIZED))
def test_401_names_the_password_variable(tool: str) -> None:
    transient, hint = F.diagnose(["copying ...", UNAUTHORIZED[tool]], target(), SOURCE)
    assert transient is False
    assert "127.0.0.1:5001 rejected the credentials" in hint
    assert "password_env HARBOR_1_PASSWORD" in hint
    assert "username 'robot$release+ci'" in hint


def test_401_names_the_password_file_and_username_variable() -> None:
    t = target(password_env=None, password_file="/run/secrets/harbor", username=None, username_env="HARBOR_USER")
    _, hint = F.diagnose([UNAUTHORIZED["crane"]], t, SOURCE)
    assert "password_file /run/secrets/harbor" in hint and "username_env HARBOR_USER" in hint


def test_401_from_the_source_points_at_the_base_login() -> None:
    output = ["Error: GET http://127.0.0.1:5000/v2/app/manifests/sha256:abc: UNAUTHORIZED: authentication required"]
    transient, hint = F.diagnose(output, target(), SOURCE)
    assert not transient
    assert "source registry 127.0.0.1:5000 rejected the base's login" in hint
    assert "authscope login 127.0.0.1:5000" in hint


@pytest.mark.parametrize(
    "line",
    [
        'Get "https://127.0.0.1:5001/v2/": tls: failed to verify certificate: x509: certificate signed by unknown authority',
        'pinging container registry 127.0.0.1:5001: Get "https://127.0.0.1:5001/v2/": x509: certificate is not valid for any names',
        "certificate verify failed: unable to get local issuer certificate",
    ],
)
def test_x509_hints_at_ca_file(line: str) -> None:
    transient, hint = F.diagnose([line], target(), SOURCE)
    assert transient is False
    assert "ca_file:" in hint and "insecure: true" in hint


@pytest.mark.parametrize(
    "line",
    [
        "GET https://127.0.0.1:5001/v2/release/app/manifests/1.0: unexpected status code 503 Service Unavailable",
        "received unexpected HTTP status: 503 Service Unavailable",
        "service unavailable",
        "read tcp 127.0.0.1:40000->127.0.0.1:5001: read: connection reset by peer",
        "dial tcp 127.0.0.1:5001: connect: connection refused",
        "net/http: TLS handshake timeout",
        "unexpected EOF",
        "502 Bad Gateway",
        "504 Gateway Timeout",
        "toomanyrequests: 429 Too Many Requests",
        "500 Internal Server Error",
        "write: broken pipe",
        "dial tcp: lookup harbor: i/o timeout",
    ],
)
def test_transient_failures(line: str) -> None:
    transient, hint = F.diagnose(["copying", line], target(), SOURCE)
    assert transient is True
    assert "retried" in hint


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("DENIED: requested access to the resource is denied", "push permission"),
        ("HTTP 403 Forbidden", "push permission"),
        ("http: server gave HTTP response to HTTPS client", "insecure: true"),
        ("MANIFEST_UNKNOWN: manifest unknown", "not found"),
        pytest.param(
            "NAME_UNKNOWN: repository name not known to registry",
            "not found",
        ),
        ("something nobody expected", "output above"),
    ],
)
def test_permanent_failures(line: str, words: str) -> None:
    transient, hint = F.diagnose([line], target(), SOURCE)
    assert transient is False
    assert words in hint


def test_auth_wins_over_transient_words() -> None:
    """A 401 is never retried, even when the same output mentions a 5xx."""
    transient, _ = F.diagnose(["attempt 1: 503 Service Unavailable", UNAUTHORIZED["crane"]], target(), SOURCE)
    assert transient is False


def test_only_the_recent_output_counts() -> None:
    old = [UNAUTHORIZED["crane"]] + ["progress"] * 60
    transient, _ = F.diagnose(old + ["503 Service Unavailable"], target(), SOURCE)
    assert transient is True


def test_digests_and_ports_are_not_status_codes() -> None:
    lines = [
        "Copying blob sha256:503a0e9d7c5e4b1f and sha256:42950050450300 done",
        "pushing 127.0.0.1:5030/release/app:1.0 and 127.0.0.1:5004/x",
        "exit status 1",
    ]
    transient, hint = F.diagnose(lines, target(registry="127.0.0.1:5030"), SOURCE)
    assert transient is False and "output above" in hint


# -- resolve_credentials ------------------------------------------------------------------------


@pytest.fixture
def spec(tmp_path: Path) -> Fanout:
    (tmp_path / "pw-ok").write_text("test-file-secret-1\n")
    (tmp_path / "pw-crlf").write_bytes(b"  test-file-secret-2 with spaces  \r\n")
    (tmp_path / "pw-empty").write_text("\n")
    (tmp_path / "pw-latin1").write_bytes(b"caf\xe9")
    (tmp_path / "pw-dir").mkdir()
    path = tmp_path / "authscope.yml"
    path.write_text(
        textwrap.dedent(
            """\
            source: h.example/app:1.0
            targets:
              - {name: env-ok, registry: a.example, repository: app, username: robot$x+y, password_env: PW_OK}
              - {name: env-missing, registry: a.example, repository: app, username: u, password_env: PW_MISSING}
              - {name: env-empty, registry: a.example, repository: app, username: u, password_env: PW_EMPTY}
              - {name: user-missing, registry: a.example, repository: app, username_env: USER_MISSING, password_env: PW_OK}
              - {name: user-env, registry: a.example, repository: app, username_env: USER_OK, password_env: PW_OK}
              - {name: file-ok, registry: a.example, repository: app, username: u, password_file: pw-ok}
              - {name: file-crlf, registry: a.example, repository: app, username: u, password_file: pw-crlf}
              - {name: file-missing, registry: a.example, repository: app, username: u, password_file: pw-nope}
              - {name: file-empty, registry: a.example, repository: app, username: u, password_file: pw-empty}
              - {name: file-latin1, registry: a.example, repository: app, username: u, password_file: pw-latin1}
              - {name: file-dir, registry: a.example, repository: app, username: u, password_file: pw-dir}
            """
        )
    )
    return load(str(path), {})


ENVIRON = {"PW_OK": "test-env-secret-0", "PW_EMPTY": "", "USER_OK": "robot$from-env"}
GOOD = ["env-ok", "user-env", "file-ok", "file-crlf"]


def test_credentials_read_from_env_and_files(spec: Fanout) -> None:
    creds = F.resolve_credentials(spec, ENVIRON, only=GOOD)
    assert creds == {
        "env-ok": F.Credentials("robot$x+y", "test-env-secret-0"),
        "user-env": F.Credentials("robot$from-env", "test-env-secret-0"),
        "file-ok": F.Credentials("u", "test-file-secret-1"),
        # Only the line ending is stripped: spaces may be part of a password.
        "file-crlf": F.Credentials("u", "  test-file-secret-2 with spaces  "),
    }


def test_every_missing_credential_reported_at_once(spec: Fanout, tmp_path: Path) -> None:
    with pytest.raises(TargetsFileError) as info:
        F.resolve_credentials(spec, ENVIRON)
    found: dict[str, str] = {p.where: p.message for p in info.value.problems}
    assert set(found) == {
        "targets[env-missing].password_env",
        "targets[env-empty].password_env",
        "targets[user-missing].username_env",
        "targets[file-missing].password_file",
        "targets[file-empty].password_file",
        "targets[file-latin1].password_file",
        "targets[file-dir].password_file",
    }
    assert found["targets[env-missing].password_env"].startswith("$PW_MISSING is not set or empty")
    assert "protected" in found["targets[env-missing].password_env"]  # the usual GitLab cause
    assert found["targets[env-empty].password_env"].startswith("$PW_EMPTY is not set or empty")
    assert found["targets[user-missing].username_env"] == "$USER_MISSING is not set or empty"
    assert found["targets[file-missing].password_file"] == f"{tmp_path / 'pw-nope'}: no such file"
    assert found["targets[file-empty].password_file"] == f"{tmp_path / 'pw-empty'} is empty"
    assert "pw-dir" in found["targets[file-dir].password_file"]
    # Each names the target's line in the file.
    lines = {p.where.split("]")[0][8:]: p.line for p in info.value.problems}
    assert lines["env-missing"] == 4 and lines["file-dir"] == 13
    message = str(info.value)
    assert "7 problems; nothing ran" in message
    for value in ENVIRON.values():
        if value:
            assert value not in message


def test_only_chosen_targets_need_credentials(spec: Fanout) -> None:
    assert list(F.resolve_credentials(spec, ENVIRON, only=["env-ok"])) == ["env-ok"]
    with pytest.raises(TargetsFileError) as info:
        F.resolve_credentials(spec, ENVIRON, only=["env-ok", "file-missing"])
    assert [p.where for p in info.value.problems] == ["targets[file-missing].password_file"]


def test_secret_values_never_in_problems(spec: Fanout, tmp_path: Path) -> None:
    (tmp_path / "pw-latin1").write_bytes(b"test-\xff-latin1-secret")
    with pytest.raises(TargetsFileError) as info:
        F.resolve_credentials(spec, ENVIRON, only=["file-latin1"])
    assert "latin1-secret" not in str(info.value)


def test_unreadable_password_file(reachable_dir: Path) -> None:
    """Run as nobody when the tests run as root (CI): root would read the file anyway."""
    for name, mode in (("pw-unreadable", 0), ("pw-readable", 0o644)):
        (reachable_dir / name).write_text("test-file-secret-9\n")
        (reachable_dir / name).chmod(mode)
    path = reachable_dir / "authscope.yml"
    path.write_text(
        "source: h.example/app:1.0\ntargets:\n"
        "  - {name: locked, registry: a.example, repository: app, username: u, password_file: pw-unreadable}\n"
        "  - {name: open, registry: a.example, repository: app, username: u, password_file: pw-readable}\n"
    )
    spec = load(str(path), {})
    kind, message = as_unprivileged(lambda: F.resolve_credentials(spec, ENVIRON, only=["locked"]))
    assert kind == "raised" and message.startswith("TargetsFileError")
    assert f"{reachable_dir / 'pw-unreadable'}: permission denied" in message
    assert "test-file-secret-9" not in message
    # Control: the same user reads the readable file beside it, so the
    # denial is the file's mode, not an unreachable directory.
    assert as_unprivileged(lambda: F.resolve_credentials(spec, ENVIRON, only=["open"])) == (
        "returned",
        {"open": F.Credentials("u", "test-file-secret-9")},
    )
    if os.geteuid() == 0:  # and why the test drops root: root reads it
        assert F.resolve_credentials(spec, ENVIRON, only=["locked"])["locked"].password == "test-file-secret-9"


# -- source_credentials --------------------------------------------------------------------------


def b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("key", ["127.0.0.1:5000", "http://127.0.0.1:5000", "https://127.0.0.1:5000/v1/"])
def test_source_credentials_from_any_spelling(key: str) -> None:
    cfg = {"auths": {key: {"auth": b64("ci", "test-pw:with:colons")}, "other.example": {"auth": b64("x", "y")}}}
    assert F.source_credentials(cfg, "127.0.0.1:5000", {}) == ("ci", "test-pw:with:colons")


def test_source_credentials_none_when_not_logged_in() -> None:
    assert F.source_credentials({"auths": {"other.example": {"auth": b64("x", "y")}}}, "127.0.0.1:5000", {}) is None
    assert F.source_credentials({}, "127.0.0.1:5000", {}) is None


# -- which host the fan-out's own client talks to -------------------------------------------------


class RecordingSession:
    """Stands in for registry.Session: records the host, answers with a digest."""

    hosts: list = []

    def __init__(self, registry: str, auth: object = None, **kw: object) -> None:
        RecordingSession.hosts.append(registry)
        self.schemes = ["https"]

    def manifest_digest(self, repository: str, reference: str) -> str:
        return "sha256:" + "0" * 64


def test_docker_hub_source_is_read_from_the_registry_api_host() -> None:
    from authscope.registry import Session

    # resolve_source hands the source's registry to Session, which talks to
    # the host the registry API really answers on.
    for name in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert Session(name).host == "registry-1.docker.io"
    assert Session("harbor.example:8443").host == "harbor.example:8443"

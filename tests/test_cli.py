"""The command line: errors, exit codes, secrets sources, --verify, start-up imports."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from authscope import dockerconfig as dc
from authscope.cli import main as cli_main
from tests.helpers import AUTHSCOPE, LOCAL_PASSWORD, read_json, run_authscope


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--help"], ["exec", "--help"], ["login", "--help"], ["sweep", "--help"]):
        with pytest.raises(SystemExit) as info:
            cli_main(args)
        assert info.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes" in out and "--password-env" in out and "example" in out


def test_password_on_command_line_refused(main: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main("login", "h.example", "-u", "u", "-p", "hunter22")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "never taken on the command line" in err
    assert "hunter22" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["login", "h.example", "-u", "u"], "exactly one of --password-env"),
        (["login", "h.example", "--password-env", "LOCAL_PASSWORD"], "a username is needed"),
        (
            ["login", "h.example", "-u", "u", "--password-env", "UNSET_VAR"],
            "--password-env UNSET_VAR: the variable is not set",
        ),
        (
            ["login", "h.example", "--username-env", "UNSET_USER", "--password-env", "LOCAL_PASSWORD"],
            "--username-env UNSET_USER",
        ),
        (
            ["login", "h.example", "-u", "u", "--password-file", "/nonexistent/pw"],
            "--password-file /nonexistent/pw: no such file",
        ),
        (["login", "bad host", "-u", "u", "--password-env", "LOCAL_PASSWORD"], "not a registry host"),
        (["exec", "--registry", "h.example", "-u", "u", "--password-env", "LOCAL_PASSWORD"], "exec needs a command"),
    ],
)
def test_usage_errors_exit_2_with_one_actionable_line(
    main: Any, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(*args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_password_file_trailing_newline_stripped(main: Any, base: Path, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(LOCAL_PASSWORD + "\n")
    assert main("login", "h.example", "-u", "u", "--password-file", str(pw)) == 0
    assert read_json(base / "config.json")["auths"]["h.example"] == dc.auth_entry("u", LOCAL_PASSWORD)


def test_username_env_and_robot_literal(main: Any, base: Path, env: dict[str, str]) -> None:
    env["ROBOT"] = "robot$release+ci"
    assert main("login", "h.example", "--username-env", "ROBOT", "--password-env", "LOCAL_PASSWORD") == 0
    assert main("login", "g.example", "-u", "robot$release+ci", "--password-env", "LOCAL_PASSWORD") == 0
    auths = read_json(base / "config.json")["auths"]
    assert auths["h.example"] == auths["g.example"] == dc.auth_entry("robot$release+ci", LOCAL_PASSWORD)


def test_unexpected_error_keeps_traceback_and_distinct_code(
    main: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from authscope import base

    def boom(*a: object, **k: object) -> bool:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(base, "login", boom)
    assert main("login", "h.example", "-u", "u", "--password-env", "LOCAL_PASSWORD") == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "simulated bug" in err and "bug in authscope" in err


def test_exec_path_imports_nothing_heavy(env: dict[str, str], base: Path) -> None:
    """Start-up budget: the exec path must not import yaml, filelock, gitlab or requests."""
    probe = (
        "import sys\n"
        "from authscope.cli import main\n"
        "code = main(['exec', '--registry', 'h.example', '-u', 'u', '--password-env', 'LOCAL_PASSWORD', '-q', '--', 'true'])\n"
        "heavy = sorted(m for m in ('yaml', 'filelock', 'gitlab', 'requests', 'urllib.request', 'ssl') if m in sys.modules)\n"
        "print(code, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0 []"


def test_python_dash_m_works(env: dict[str, str]) -> None:
    result = run_authscope(["--version"], env)
    assert result.returncode == 0 and result.stdout.startswith("authscope ")


# -- --verify against a registry that speaks the /v2/ challenges -------------------


class FakeRegistry(BaseHTTPRequestHandler):
    """/v2/ with a Basic or a Bearer challenge, and a token endpoint."""

    mode = "basic"
    user, password = "robot$p+ci", "verify-test-password"

    def log_message(self, *args: object) -> None:
        pass

    def _basic_ok(self) -> bool:
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return self.headers.get("Authorization") == f"Basic {expected}"

    def _send(self, code: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        host = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"  # type: ignore[index]
        if self.path.startswith("/token"):
            assert "service=fake" in self.path
            if self._basic_ok():
                self._send(200, json.dumps({"token": "tok-abc"}).encode())
            else:
                self._send(401)
        elif self.path == "/v2/":
            if self.mode == "basic":
                if self._basic_ok():
                    self._send(200)
                else:
                    self._send(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
            elif self.headers.get("Authorization") == "Bearer tok-abc":
                self._send(200)
            else:
                self._send(401, headers={"WWW-Authenticate": f'Bearer realm="{host}/token",service="fake"'})
        else:
            self._send(404)


@pytest.fixture(params=["basic", "bearer"])
def fake_registry(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    handler = type("Handler", (FakeRegistry,), {"mode": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", request.param
    server.shutdown()
    server.server_close()


def test_verify_accepts_good_credentials(fake_registry: tuple[str, str], env: dict[str, str], base: Path) -> None:
    host, _ = fake_registry
    env["PW"] = FakeRegistry.password
    result = run_authscope(["login", host, "-u", FakeRegistry.user, "--password-env", "PW", "--verify"], env)
    assert result.returncode == 0, result.stderr
    assert host in read_json(base / "config.json")["auths"]


def test_verify_rejects_bad_credentials_and_writes_nothing(
    fake_registry: tuple[str, str], env: dict[str, str], base: Path
) -> None:
    host, _ = fake_registry
    env["PW"] = "wrong-password-123"
    result = run_authscope(["login", host, "-u", FakeRegistry.user, "--password-env", "PW", "--verify"], env)
    assert result.returncode == 1
    assert "rejected the credentials" in result.stderr and "robot$p+ci" in result.stderr
    assert "wrong-password-123" not in result.stderr
    assert not (base / "config.json").exists()


def test_verify_unreachable_registry(env: dict[str, str], base: Path) -> None:
    result = run_authscope(["login", "127.0.0.1:1", "-u", "u", "--password-env", "LOCAL_PASSWORD", "--verify"], env)
    assert result.returncode == 1 and "cannot reach" in result.stderr
    assert not (base / "config.json").exists()


def test_authscope_process_never_has_secret_in_argv(env: dict[str, str], base: Path) -> None:
    """Sample /proc/*/cmdline while a scope's command runs."""
    proc = subprocess.Popen(
        AUTHSCOPE
        + [
            "exec",
            "--registry",
            "h.example",
            "-u",
            "u",
            "--password-env",
            "LOCAL_PASSWORD",
            "--",
            "sh",
            "-c",
            "echo up; sleep 1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    seen = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                seen.append((p / "cmdline").read_bytes())
            except OSError:
                pass
    proc.communicate(timeout=30)
    assert any(b"h.example" in c for c in seen)  # the sample did see our processes
    assert not any(LOCAL_PASSWORD.encode() in c for c in seen)
    assert not any(dc.encode_auth("u", LOCAL_PASSWORD).encode() in c for c in seen)

"""Performance paths (issue 16): what exec's start-up imports, the hand-read exec command line,
and a target's credential check and digest read-back sharing one connection and one token."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authscope import cli, entry, fanout, registry, run
from authscope.targets import Target

PLUGIN = str(Path(__file__).resolve().parents[1] / "plugin")
EXEC = ["exec", "--registry", "h.example", "-u", "u", "--password-env", "LOCAL_PASSWORD", "-q", "--", "true"]

# Modules the exec path may import (beyond what a bare `python -I -S` has): what it needs
# to read config.json (json, and re under it), run and relay the command (os.posix_spawn,
# select, signal), base64 the login (binascii), become a subreaper (_ctypes).
# Its NamedTuple records come from authscope.records, not typing. A new one costs every
# wrapped command its import: measure it (benchmarks/startup.py) before adding it here;
# tests/test_startup_paths.py names those that were taken off and must stay off.
ALLOWED = {
    "authscope", "authscope.entry", "authscope.errors", "authscope.run", "authscope.credentials",
    "authscope.dockerconfig", "authscope.base", "authscope.scope", "authscope.records",
    "json", "json.decoder", "json.scanner", "json.encoder", "_json",
    "re", "re._compiler", "re._parser", "re._constants", "re._casefix", "_sre", "sre_compile", "sre_parse",
    "sre_constants", "enum", "functools", "collections", "collections.abc", "_collections", "operator",
    "_operator", "keyword", "reprlib", "itertools", "types", "copyreg", "_functools", "heapq", "_heapq",
    "select", "signal", "_signal", "errno", "time", "contextlib", "_warnings",
    "binascii", "stat", "_stat", "_ctypes", "__future__",
    "os", "os.path", "posixpath", "genericpath", "_collections_abc",  # what site would have imported
}  # fmt: skip
HEAVY = ("argparse", "gettext", "shutil", "tempfile", "urllib.parse", "ipaddress", "dataclasses", "yaml", "filelock", "gitlab", "requests", "ssl", "http.client", "hashlib", "random", "inspect", "pathlib")  # fmt: skip

PROBE = """
import sys
sys.path.insert(0, {plugin!r})
before = set(sys.modules)
from authscope.{module} import main
code = main({argv!r})
print(code, sorted(set(sys.modules) - before))
"""


def probe(module: str, argv: list[str], env: dict[str, str]) -> tuple[int, set[str]]:
    """Run ``authscope.<module>.main(argv)`` in a clean interpreter (-I -S: no site, no .pth
    importing things first); (exit code, the modules it imported)."""
    code = PROBE.format(plugin=PLUGIN, module=module, argv=argv)
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    status, _, names = out.splitlines()[-1].partition(" ")
    return int(status), set(json.loads(names.replace("'", '"')))


def test_exec_path_imports_only_what_it_needs(env: dict[str, str], base: Path) -> None:
    status, imported = probe("entry", EXEC, env)
    assert status == 0
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert imported <= ALLOWED, f"new on exec's path (measure, then allow): {sorted(imported - ALLOWED)}"


def test_control_the_full_parser_path_imports_argparse(env: dict[str, str], base: Path) -> None:
    # The same command through cli.main: the probe sees what the fast path saves.
    status, imported = probe("cli", EXEC, env)
    assert status == 0
    assert {"argparse", "gettext", "shutil"} <= imported


def test_importing_the_entry_point_imports_nothing_else(env: dict[str, str]) -> None:
    """An `import json` at the top of entry.py (or of authscope/__init__) fails this."""
    code = f"import sys; sys.path.insert(0, {PLUGIN!r}); import os; b = set(sys.modules); import authscope.entry; print(sorted(set(sys.modules) - b))"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == ["__future__", "authscope", "authscope.entry"]


def test_version_without_argparse(env: dict[str, str]) -> None:
    status, imported = probe("entry", ["--version"], env)
    assert status == 0 and "argparse" not in imported


def test_entry_exit_codes_are_clis() -> None:
    assert (entry.EXIT_OK, entry.EXIT_FAILED, entry.EXIT_RESTORED) == (cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_RESTORED)


# -- the hand-read exec command line is argparse's, or is left to argparse ----------

_ATTRS = (
    "registry", "username", "username_env", "password_env", "password_file", "config_dir", "scope_dir",
    "source_registry", "isolate_home", "quiet", "argv",
)  # fmt: skip
_WORDS = [
    "--registry", "-u", "--username", "--username-env", "--password-env", "--password-file", "--config-dir",
    "--scope-dir", "--source-registry", "--isolate-home", "-q", "--quiet", "--", "-p", "-h", "--reg", "-uX",
    "--registry=r.example", "--quiet=1", "h.example", "VAR", "-", "", "true", "-x", "--x", "--help",
]  # fmt: skip


def argparse_view(args: list[str]) -> dict[str, Any] | None:
    parser = cli.build_parser("exec")
    try:
        ns = parser.parse_args(["exec", *args])
    except SystemExit:
        return None
    return {a: getattr(ns, a) for a in _ATTRS}


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=9))
def test_hand_read_exec_line_is_what_argparse_reads(args: list[str]) -> None:
    ours = entry.parse_exec(args)
    if ours is None:
        return  # left to argparse: its messages, its exit codes
    sys.stderr, saved = io.StringIO(), sys.stderr
    try:
        theirs = argparse_view(args)
    finally:
        sys.stderr = saved
    assert theirs is not None, f"the fast path accepted what argparse refuses: {args}"
    assert {a: getattr(ours, a) for a in _ATTRS} == theirs


def test_hand_read_exec_line_takes_the_usual_forms() -> None:
    # The fast path must actually be taken for what CI scripts write (else it saves nothing).
    for args in (
        EXEC[1:],
        ["--registry=h.example", "--username-env", "U", "--password-file", "/p", "--", "crane", "copy", "a", "b"],
        [
            "--registry",
            "h",
            "-u",
            "robot$x+y",
            "--password-env",
            "P",
            "--source-registry",
            "s1",
            "--source-registry",
            "s2",
            "--isolate-home",
            "sh",
            "-c",
            "x",
        ],
    ):
        parsed = entry.parse_exec(args)
        assert parsed is not None
        assert {a: getattr(parsed, a) for a in _ATTRS} == argparse_view(args)
    for args in (
        ["--help"],
        ["--reg", "h", "--", "true"],
        ["--registry", "h", "-u", "a", "--username-env", "B", "true"],
    ):
        assert entry.parse_exec(args) is None


@given(st.text())
def test_quote_is_urllib_quote(value: str) -> None:
    for safe in ("/", ""):
        try:
            expected = urllib.parse.quote(value, safe=safe, errors="surrogateescape")
        except UnicodeEncodeError:
            with pytest.raises(UnicodeEncodeError):
                run._quote(value, safe)
            continue
        assert run._quote(value, safe) == expected
    try:
        plus = urllib.parse.quote_plus(value, errors="surrogateescape")
    except UnicodeEncodeError:
        return
    assert run._quote_plus(value) == plus


# -- one connection, one token: a target's check and its digest read-back --------------


class Counting(BaseHTTPRequestHandler):
    """A Bearer-auth registry over HTTP/1.1 keep-alive that counts connections, 401s and tokens."""

    protocol_version = "HTTP/1.1"
    counts: dict[str, int] = {}
    lock = threading.Lock()
    keep_alive = True
    user, password = "robot$perf+ci", "perf-test-password"
    digest = "sha256:" + "ab" * 32

    def log_message(self, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.count("connections")

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def send(self, code: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if not self.keep_alive:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def challenge(self) -> None:
        self.count("401")
        host = self.headers["Host"]
        self.send(401, headers={"WWW-Authenticate": f'Bearer realm="http://{host}/token",service="perf"'})

    def do_GET(self) -> None:
        if self.path.startswith("/token"):
            self.count("tokens")
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            scope = query.get("scope", [""])[0]
            self.send(200, json.dumps({"token": "t." + urllib.parse.quote(scope, safe="")}).encode())
            return
        self.answer()

    def do_HEAD(self) -> None:
        self.answer()

    def answer(self) -> None:
        token = self.headers.get("Authorization", "").removeprefix("Bearer t.")
        granted = urllib.parse.unquote(token)
        if self.path == "/v2/" and granted:
            self.send(200)
        elif self.path.startswith("/v2/app/manifests/") and granted.startswith("repository:app:") and "pull" in granted:
            self.send(200, headers={"Docker-Content-Digest": self.digest})
        else:
            self.challenge()


@pytest.fixture
def counting() -> Iterator[tuple[str, dict[str, int]]]:
    Counting.counts = {}
    Counting.keep_alive = True
    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host = f"127.0.0.1:{server.server_address[1]}"
    # What an earlier test in this process learnt of a registry that had this port
    # (its challenge, say a token service's realm elsewhere) is not this one's.
    registry._CHALLENGE.pop(host, None)
    registry._WARMING.pop(host, None)
    for key in [k for k in registry._IDLE if k[1] == host]:
        registry._IDLE.pop(key, None)
    registry._SCHEME[host] = "http"  # as after the source was resolved: no HTTPS attempt to count
    try:
        yield host, Counting.counts
    finally:
        server.shutdown()
        server.server_close()
        registry._SCHEME.pop(host, None)
        registry._CHALLENGE.pop(host, None)


def target(host: str) -> Target:
    return Target(
        name="t1", registry=host, repository="app", tags=("1.0",), tool="crane", username=Counting.user,
        username_env=None, password_env="P", password_file=None, insecure=True, ca_file=None, command=None, line=1,
    )  # fmt: skip


def check_then_read_back(host: str, counts: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """fanout's credential check of a target, then its digest read-back on the same session:
    (counts after the check, counts after the read-back)."""
    creds = fanout.Credentials(Counting.user, Counting.password)
    session = fanout._preflight(target(host), creds, 30.0, 0, fanout._Log(io.StringIO()))
    with session:
        checked = dict(counts)
        assert session.manifest_digest("app", "1.0") == Counting.digest
    return checked, dict(counts)


def test_check_and_read_back_share_one_connection_and_one_token(counting: tuple[str, dict[str, int]]) -> None:
    host, counts = counting
    checked, done = check_then_read_back(host, counts)
    assert checked == {"connections": 1, "401": 1, "tokens": 1}  # the check: one challenge, one token
    assert done == checked  # the read-back: the same connection, token and challenge; one round trip


def test_control_a_token_per_scope_means_a_second_trip(
    counting: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without scope covering (the former exact match), the read-back fetches another token.
    monkeypatch.setattr(registry, "_covers", lambda held, wanted: held == wanted)
    host, counts = counting
    checked, done = check_then_read_back(host, counts)
    assert done["tokens"] == checked["tokens"] + 1


def test_control_without_keep_alive_the_read_back_connects_again(counting: tuple[str, dict[str, int]]) -> None:
    # The counter sees a second connection when there is one.
    Counting.keep_alive = False
    host, counts = counting
    checked, done = check_then_read_back(host, counts)
    assert done["connections"] > checked["connections"]


def test_covers() -> None:
    assert registry._covers("repository:app:pull,push", "repository:app:pull")
    assert registry._covers("repository:app:pull", "repository:app:pull")
    assert not registry._covers("repository:app:pull", "repository:app:pull,push")
    assert not registry._covers("repository:other:pull,push", "repository:app:pull")
    assert not registry._covers("", "repository:app:pull")
    assert not registry._covers(None, "repository:app:pull")
    assert not registry._covers("repository:app/x:pull,push", "repository:app:pull")

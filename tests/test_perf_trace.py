"""Where a fan-out's time goes (issue 16): AUTHSCOPE_TRACE, the registries' warm-up while
authscope starts, and a target that never waits on another target's credential check."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authscope import fanout, registry, release, targets, trace
from tests import test_perf_paths
from tests.helpers import LOCAL_PASSWORD, TARGET_PASSWORD, run_authscope
from tests.reliability.fakeregistry import FakeRegistry
from tests.test_perf_paths import Counting, target

counting = test_perf_paths.counting  # the fixture: a Bearer registry counting connections, 401s, tokens

USER = "ci"


@pytest.fixture
def source(main: Any) -> Iterator[FakeRegistry]:
    """A source registry (Basic auth) the base is logged in to."""
    with FakeRegistry(USER, LOCAL_PASSWORD) as fake:
        assert main("login", fake.host, "-u", USER, "--password-env", "LOCAL_PASSWORD") == 0
        yield fake


def spec_file(tmp_path: Path, source: str, hosts: list[str], marker: Path, jobs: int = 1) -> Path:
    """Targets on ``hosts`` (t1, t2, ...); the copy (tool: custom) touches marker/NAME."""
    lines = [
        f"source: {{image: {source}/app:1.0, insecure: true}}",
        "tool: custom",
        f'command: ["touch", "{marker}/{{name}}"]',
        "retries: 0",
        "timeout: 60",
        f"jobs: {jobs}",
        "targets:",
    ]
    for i, host in enumerate(hosts, start=1):
        lines += [
            f"  - name: t{i}",
            f"    registry: {host}",
            "    repository: release/app",
            f"    username: {USER}",
            "    password_env: TARGET_PASSWORD",
            "    insecure: true",
        ]
    path = tmp_path / "authscope.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def fan_out(path: Path, env: dict[str, str]) -> Any:
    spec = targets.load(str(path), env)
    return release.run(spec, release.Options(), env, stream=io.StringIO())


# -- the trace -------------------------------------------------------------------------


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_trace_records_each_step_and_request_and_no_secret(
    tmp_path: Path, env: dict[str, str], source: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "trace.jsonl"
    monkeypatch.setattr(trace, "PATH", str(log))
    (tmp_path / "marks").mkdir()
    with FakeRegistry(USER, TARGET_PASSWORD) as dest:
        report = fan_out(spec_file(tmp_path, source.host, [dest.host], tmp_path / "marks"), env)
    assert [r.status for r in report.results] == ["ok"]
    got = events(log)
    steps = [(e["event"], e.get("phase")) for e in got if e["event"] != "http"]
    for step in ("preflight", "source", "tool", "verify"):
        assert (step, "start") in steps and (step, "end") in steps, steps
    assert ("target", "end") in steps
    # In order, on one clock (seconds since the process started).
    t = {(e["event"], e.get("phase")): e["t"] for e in got}
    assert t[("preflight", "end")] <= t[("tool", "start")] <= t[("tool", "end")] <= t[("verify", "start")]
    assert t[("source", "end")] <= t[("tool", "start")]
    http = [e for e in got if e["event"] == "http"]
    assert {"method", "host", "path", "status", "ms", "new", "t", "wall"} <= set(http[0]), http[0]
    mine = [e for e in http if e.get("target") == "t1"]
    assert {(e["method"], e["path"], e["status"]) for e in mine} >= {
        ("GET", "/v2/", 200),
        ("HEAD", "/v2/release/app/manifests/1.0", 200),
    }, mine
    assert any(not e["new"] for e in mine), "the read-back reused the check's connection"
    # The credentials did go out (authorised 200s above), and none of them is in the trace.
    text = log.read_text()
    for secret in (TARGET_PASSWORD, LOCAL_PASSWORD, USER + ":"):
        assert secret not in text
    for password in (TARGET_PASSWORD, LOCAL_PASSWORD):
        assert base64.b64encode(f"{USER}:{password}".encode()).decode() not in text


def test_trace_is_off_by_default(
    tmp_path: Path, env: dict[str, str], source: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trace, "PATH", None)
    written: list[object] = []
    monkeypatch.setattr(trace, "_write", lambda *a: written.append(a))
    (tmp_path / "marks").mkdir()
    with FakeRegistry(USER, TARGET_PASSWORD) as dest:
        report = fan_out(spec_file(tmp_path, source.host, [dest.host], tmp_path / "marks"), env)
    assert [r.status for r in report.results] == ["ok"]
    assert written == []
    # Control: the same calls write when a path is set.
    monkeypatch.setattr(trace, "PATH", str(tmp_path / "t.jsonl"))
    trace.event("run", phase="start")
    assert written


def test_the_cli_reads_authscope_trace_from_the_environment(
    tmp_path: Path, env: dict[str, str], source: FakeRegistry
) -> None:
    (tmp_path / "marks").mkdir()
    log = tmp_path / "trace.jsonl"
    with FakeRegistry(USER, TARGET_PASSWORD) as dest:
        path = spec_file(tmp_path, source.host, [dest.host], tmp_path / "marks")
        result = run_authscope(["fanout", "-f", str(path)], {**env, "AUTHSCOPE_TRACE": str(log)})
        assert result.returncode == 0, result.stdout + result.stderr
        # Control: without the variable, no trace.
        quiet = tmp_path / "none.jsonl"
        assert run_authscope(["fanout", "-f", str(path)], env).returncode == 0
    got = events(log)
    assert {e["event"] for e in got} >= {"run", "warm", "source", "preflight", "tool", "verify", "target", "http"}
    assert all(0 <= e["t"] < 60 for e in got)
    assert not quiet.exists()
    assert TARGET_PASSWORD not in log.read_text() and LOCAL_PASSWORD not in log.read_text()


# -- the warm-up: the check's first request goes out at once, on a ready connection --------


def checked_after(host: str, counts: dict[str, int], warm: bool) -> dict[str, int]:
    """What the credential check of a target on ``host`` cost, counted from when it started."""
    registry._SCHEME.pop(host, None)  # a registry nothing is known about yet, as at start-up
    if warm:
        registry.warm_up(host, insecure=True)
        registry._await_warm_up(host, 30)
    before = dict(counts)
    creds = fanout.Credentials(Counting.user, Counting.password)
    fanout._preflight(target(host), creds, 30.0, 0, fanout._Log(io.StringIO())).close()
    return {k: counts.get(k, 0) - before.get(k, 0) for k in ("connections", "401", "tokens")}


def test_after_a_warm_up_the_check_needs_no_new_connection_and_no_challenge(
    counting: tuple[str, dict[str, int]],
) -> None:
    host, counts = counting
    try:
        cost = checked_after(host, counts, warm=True)
    finally:
        registry._WARMING.pop(host, None)
        registry.close_idle()
    # The warm-up's connection and challenge: the check goes straight to the token and /v2/.
    assert cost == {"connections": 0, "401": 0, "tokens": 1}, cost


def test_control_without_a_warm_up_the_check_connects_and_is_challenged(
    counting: tuple[str, dict[str, int]],
) -> None:
    host, counts = counting
    cost = checked_after(host, counts, warm=False)
    assert cost["connections"] >= 1 and cost["401"] == 1, cost


def test_warm_up_sends_no_credentials(counting: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    host, counts = counting
    seen: list[str] = []
    original = Counting.answer

    def answer(self: Counting) -> None:
        seen.append(self.headers.get("Authorization", ""))
        original(self)

    monkeypatch.setattr(Counting, "answer", answer)
    registry._SCHEME.pop(host, None)
    try:
        registry.warm_up(host, insecure=True)
        registry._await_warm_up(host, 30)
    finally:
        registry._WARMING.pop(host, None)
        registry.close_idle()
    assert seen == [""], seen  # one bare GET /v2/
    assert registry._SCHEME[host] == "http" and registry._CHALLENGE[host][0] == "bearer"


# -- no target waits on another target's credential check ----------------------------------


def copy_while_t1_check_is_held(tmp_path: Path, env: dict[str, str], source: FakeRegistry) -> tuple[bool, list[str]]:
    """Two targets, jobs: 1; t1's registry holds its /v2/ check. (Did t2's copy run
    while t1's check was still held?, the statuses.)"""
    marks = tmp_path / "marks"
    marks.mkdir()
    with FakeRegistry(USER, TARGET_PASSWORD) as slow, FakeRegistry(USER, TARGET_PASSWORD) as fast:
        slow.hold("ping")
        path = spec_file(tmp_path, source.host, [slow.host, fast.host], marks, jobs=1)
        out: list[Any] = []
        runner = threading.Thread(target=lambda: out.append(fan_out(path, env)), daemon=True)
        runner.start()
        assert slow.arrived("ping")
        deadline = time.monotonic() + 5
        while not (marks / "t2").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        t2_copied_meanwhile = (marks / "t2").exists() and not (marks / "t1").exists()
        slow.release("ping")
        runner.join(60)
    return t2_copied_meanwhile, [r.status for r in out[0].results]


def test_a_slow_check_does_not_hold_up_another_targets_copy(
    tmp_path: Path, env: dict[str, str], source: FakeRegistry
) -> None:
    copied, statuses = copy_while_t1_check_is_held(tmp_path, env, source)
    assert copied, "t2's copy waited for t1's credential check"
    assert statuses == ["ok", "ok"]


def test_control_targets_started_in_file_order_wait_behind_a_slow_check(
    tmp_path: Path, env: dict[str, str], source: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "_check_done", lambda check: True)  # every target starts in file order
    copied, statuses = copy_while_t1_check_is_held(tmp_path, env, source)
    assert not copied
    assert statuses == ["ok", "ok"]


# -- the end of a fan-out: no interpreter teardown after the reports ------------------------

SITECUSTOMIZE = """
import atexit, os
atexit.register(lambda: open(os.environ["TEARDOWN_MARK"], "w").close())
"""


def console_fanout(tmp_path: Path, env: dict[str, str], path: Path, argv0: list[str]) -> tuple[int, str, Any, bool]:
    """(exit code, output, the JSON report, whether the interpreter's teardown ran)."""
    import subprocess
    import sys

    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    mark = tmp_path / "teardown-ran"
    mark.unlink(missing_ok=True)
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    run_env = {**env, "TEARDOWN_MARK": str(mark), "PYTHONPATH": f"{site}:{env.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, *argv0, "fanout", "-f", str(path), "--json", str(report)],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr, json.loads(report.read_text()), mark.exists()


@pytest.mark.parametrize("password", [TARGET_PASSWORD, "a-wrong-password-0003"])
def test_console_fanout_skips_teardown_and_says_everything(
    tmp_path: Path, env: dict[str, str], source: FakeRegistry, password: str
) -> None:
    (tmp_path / "marks").mkdir()
    with FakeRegistry(USER, password) as dest:
        path = spec_file(tmp_path, source.host, [dest.host], tmp_path / "marks")
        fast = console_fanout(tmp_path, env, path, ["-m", "authscope"])
        # Control: the same fan-out through entry.main(argv), as an embedding caller runs it.
        call = ["-c", "import sys; from authscope.entry import main; sys.exit(main(sys.argv[1:]))"]
        slow = console_fanout(tmp_path, env, path, call)
    code, out, report, teardown = fast
    assert not teardown and slow[3], "the console script ended before the interpreter's teardown; main(argv) did not"
    assert code == slow[0] == (0 if password == TARGET_PASSWORD else 1)
    # Everything was said and written all the same: the summary table is the output's last line.
    assert out.rstrip().splitlines()[-1] == slow[1].rstrip().splitlines()[-1], (out, slow[1])
    assert [r["status"] for r in report["targets"]] == [r["status"] for r in slow[2]["targets"]]
    assert report["status"] == slow[2]["status"] == ("success" if code == 0 else "failed")


def test_a_warm_up_that_hangs_holds_a_session_up_for_warm_wait_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from authscope.registry import Session

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (the kernel does), never answers
    host = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        registry.warm_up(host, insecure=True, timeout=10)

        def waited() -> float:
            began = time.monotonic()
            Session(host, insecure=True, timeout=10).close()
            return time.monotonic() - began

        monkeypatch.setattr(registry, "WARM_WAIT", 0.3)
        short = waited()
        monkeypatch.setattr(registry, "WARM_WAIT", 2.0)  # control: the wait is WARM_WAIT's
        longer = waited()
    finally:
        listener.close()
        registry._WARMING.pop(host, None)
    assert short < 1.5 and longer >= 1.9, (short, longer)


@pytest.mark.parametrize("warm", [True, False])
def test_refused_basic_credentials_are_asked_once(warm: bool) -> None:
    """With the Basic challenge known (warm-up), the credentials go with the first request; a
    401 to them is the answer, not re-sent: the registry sees as many requests as without a
    warm-up (control: anonymous, then with the credentials)."""
    from authscope.registry import Session

    with FakeRegistry(USER, TARGET_PASSWORD) as fake:
        try:
            if warm:
                registry.warm_up(fake.host, insecure=True)
                registry._await_warm_up(fake.host, 30)
            with Session(fake.host, (USER, "a-wrong-password-0003"), insecure=True) as session:
                assert session.request("GET", "/v2/")[0] == 401
        finally:
            registry._WARMING.pop(fake.host, None)
            registry._SCHEME.pop(fake.host, None)
            registry._CHALLENGE.pop(fake.host, None)
            registry.close_idle()
        assert fake.requests == [("GET", "/v2/"), ("GET", "/v2/")], fake.requests

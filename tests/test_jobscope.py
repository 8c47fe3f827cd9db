"""Job scopes (authscope job open / close, sweep): a whole CI job's own Docker config.

The jobs here are real shells (bash, dash) evaluating `authscope job open`'s
lines, with a runner's base in ~/.docker (HOME is the test's), GitLab's
predefined variables in the environment and the real CLI in its own process.
Each protection has its control: the same action with the protection off.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from authscope import base as B
from authscope import dockerconfig as dc
from authscope import jobscope as J
from authscope import scope as S
from tests.helpers import AUTHSCOPE, LOCAL_PASSWORD, TARGET_PASSWORD, read_json, run_authscope, write_config

REGISTRY = "gitlab.example.com:5050"
JOB_TOKEN = "job-token-test-0003"  # CI_REGISTRY_PASSWORD
RUNNER_AUTH = dc.encode_auth("runner", LOCAL_PASSWORD)
BASE_CONFIG = {
    "auths": {"runner-cache.example.com": {"auth": RUNNER_AUTH}},
    "credsStore": "recording",
    "HttpHeaders": {"User-Agent": "authscope-tests"},
    "x-unknown": [1, 2],
}
SHELLS = [sh for sh in ("bash", "dash") if shutil.which(sh)]


def ci_variables(job_id: str = "4711", **more: str) -> dict[str, str]:
    variables = {
        "CI_SERVER_URL": "https://gitlab.example.com",
        "CI_PROJECT_ID": "17",
        "CI_PIPELINE_ID": "900",
        "CI_JOB_ID": job_id,
        "CI_RUNNER_ID": "3",
        "CI_CONCURRENT_ID": "0",
        "CI_JOB_TIMEOUT": "3600",
        "CI_REGISTRY": REGISTRY,
        "CI_REGISTRY_USER": "gitlab-ci-token",
        "CI_REGISTRY_PASSWORD": JOB_TOKEN,
    }
    variables.update(more)
    return variables


@pytest.fixture
def job_env(env: dict[str, str]) -> dict[str, str]:
    """A shell runner's job: the base is ~/.docker (no DOCKER_CONFIG), CI variables set."""
    job = {k: v for k, v in env.items() if k != "DOCKER_CONFIG"}
    job.update(ci_variables())
    return job


@pytest.fixture
def runner_base(job_env: dict[str, str]) -> Path:
    """The runner's ~/.docker/config.json: a login, a credsStore, keys tools don't know."""
    return write_config(Path(job_env["HOME"]) / ".docker", BASE_CONFIG)


def run_job(script: str, env: dict[str, str], shell: str = "bash") -> subprocess.CompletedProcess[str]:
    """`script` as a GitLab job's shell runs it (errexit on)."""
    return subprocess.run(
        [shell, "-c", f"set -e\n{script}"], env=env, capture_output=True, text=True, timeout=120, check=False
    )


OPEN = 'eval "$(authscope job open)"\n'
SHOW = 'python3 -c "import json,os; print(json.dumps({k: os.environ.get(k) for k in %s}))"\n'


def shown(stdout: str) -> dict[str, Any]:
    last: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return last


def job_dirs(env: dict[str, str]) -> list[Path]:
    return sorted(Path(env["AUTHSCOPE_SCOPE_DIR"]).glob("authscope-job-*"))


@pytest.fixture(autouse=True)
def _authscope_on_path(env: dict[str, str], tmp_path: Path) -> None:
    """`authscope` for the shells: this checkout's, whatever is installed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "authscope"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m authscope "$@"\n')
    wrapper.chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(J.__file__).parents[1]), env.get("PYTHONPATH")) if p)


# -- open: what the job's scope holds ------------------------------------------------


def test_open_layers_the_jobs_logins_over_the_base_which_is_only_read(
    job_env: dict[str, str], runner_base: Path
) -> None:
    before = runner_base.read_bytes()
    listing = sorted(p.name for p in runner_base.parent.iterdir())
    auth_config = {"auths": {"https://harbor.example.com": {"auth": dc.encode_auth("robot", TARGET_PASSWORD)}}}
    env = dict(job_env, DOCKER_AUTH_CONFIG=json.dumps(auth_config))
    probe = 'stat -c "%a" "$DOCKER_CONFIG" "$DOCKER_CONFIG/config.json" "$(dirname "$DOCKER_CONFIG")"\n'
    probe += SHOW % "['DOCKER_CONFIG', 'REGISTRY_AUTH_FILE', 'AUTHSCOPE_SCOPE', 'HOME']"
    result = run_job(OPEN + probe + 'cp "$DOCKER_CONFIG/config.json" "$HOME/seen.json"', env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:3] == ["700", "600", "700"]
    seen = shown(result.stdout)
    (job_dir,) = job_dirs(env)
    assert seen["DOCKER_CONFIG"] == str(job_dir / "docker")
    assert seen["REGISTRY_AUTH_FILE"] == str(job_dir / "docker" / "config.json")
    assert seen["HOME"] == env["HOME"]  # not moved without --isolate-home
    cfg = read_json(Path(env["HOME"]) / "seen.json")
    assert cfg["auths"] == {
        "runner-cache.example.com": {"auth": RUNNER_AUTH},
        "harbor.example.com": auth_config["auths"]["https://harbor.example.com"],
        REGISTRY: {"auth": dc.encode_auth("gitlab-ci-token", JOB_TOKEN)},
        dc.SENTINEL: {},  # keeps docker from choosing a default credential store
    }
    assert "credsStore" not in cfg and "credHelpers" not in cfg  # invariant 2
    assert cfg["x-unknown"] == [1, 2] and cfg["HttpHeaders"] == BASE_CONFIG["HttpHeaders"]
    # The runner's base: not a byte written, not a lock or journal beside it.
    assert runner_base.read_bytes() == before
    assert sorted(p.name for p in runner_base.parent.iterdir()) == listing
    everything = result.stdout + result.stderr
    for secret in (JOB_TOKEN, TARGET_PASSWORD, dc.encode_auth("gitlab-ci-token", JOB_TOKEN)):
        assert secret not in everything
    assert f"{REGISTRY} (CI_REGISTRY)" in result.stderr and "harbor.example.com (DOCKER_AUTH_CONFIG)" in result.stderr


def test_no_registry_login_and_a_file_variable_auth_config(
    job_env: dict[str, str], runner_base: Path, tmp_path: Path
) -> None:
    variable = tmp_path / "DOCKER_AUTH_CONFIG"  # a GitLab File variable: the value is its path
    variable.write_text(json.dumps({"auths": {"registry.example.org": {"auth": "eDp5"}}, "credHelpers": {"a.io": "x"}}))
    env = dict(job_env, DOCKER_AUTH_CONFIG=str(variable))
    result = run_authscope(["job", "open", "--no-registry-login"], env)
    assert result.returncode == 0, result.stderr
    (job_dir,) = job_dirs(env)
    auths = read_json(job_dir / "docker" / "config.json")["auths"]
    assert sorted(auths) == sorted([dc.SENTINEL, "registry.example.org", "runner-cache.example.com"])
    assert "credHelpers for a.io were left out" in result.stderr


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('{"auths": {"registry.example.org": {"auth": "c2VjcmV0LXZhbHVl"}', "is not valid JSON"),
        ('{"auths": ["c2VjcmV0LXZhbHVl"]}', '"auths" must be an object'),
        ("c2VjcmV0LXZhbHVl", "is not valid JSON"),
    ],
    ids=["truncated", "wrong-shape", "not-json"],
)
def test_invalid_auth_config_is_exit_2_naming_the_variable_and_stops_the_job(
    job_env: dict[str, str], runner_base: Path, value: str, reason: str
) -> None:
    env = dict(job_env, DOCKER_AUTH_CONFIG=value)
    result = run_authscope(["job", "open"], env)
    assert result.returncode == 2
    assert "DOCKER_AUTH_CONFIG" in result.stderr and reason in result.stderr
    assert "c2VjcmV0LXZhbHVl" not in result.stdout + result.stderr  # never echoed
    assert job_dirs(env) == []
    # The job's `eval` runs the `exit 2` printed instead of the lines: the job
    # stops rather than run on the shared config ...
    job = run_job(OPEN + "echo reached", env)
    assert (job.returncode, job.stdout) == (2, "")
    # ... control: without that line, the eval of a failed open's (empty) output carries on.
    control = run_job('eval "$(authscope job open | grep -v "exit [0-9]")"\necho reached', env)
    assert control.stdout == "reached\n"


def test_a_base_that_does_not_parse_is_refused_and_left_as_it_is(job_env: dict[str, str]) -> None:
    path = Path(job_env["HOME"]) / ".docker" / "config.json"
    path.parent.mkdir()
    path.write_bytes(b'{"auths": {')
    result = run_authscope(["job", "open"], job_env)
    assert result.returncode == 2 and str(path) in result.stderr
    assert path.read_bytes() == b'{"auths": {'
    assert job_dirs(job_env) == []


def test_open_outside_a_ci_job_is_a_usage_error(env: dict[str, str]) -> None:
    result = run_authscope(["job", "open"], env)
    assert result.returncode == 2
    assert "CI_JOB_ID is not set" in result.stderr
    assert result.stdout.startswith("echo ") and result.stdout.rstrip().endswith("exit 2")
    bad = run_authscope(["job", "open"], dict(env, CI_JOB_ID="../../etc"))
    assert bad.returncode == 2 and "CI_JOB_ID must be a job number" in bad.stderr


# -- the shell lines ---------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_shell_lines_survive_spaces_quotes_and_dollars_in_paths(
    job_env: dict[str, str], runner_base: Path, tmp_path: Path, shell: str
) -> None:
    root = tmp_path / 'scope root with spaces, it\'s "quoted" $HOME `x` ;'
    root.mkdir(mode=0o700)
    env = dict(job_env, AUTHSCOPE_SCOPE_DIR=str(root))
    result = run_job(OPEN + SHOW % "['DOCKER_CONFIG', 'REGISTRY_AUTH_FILE']", env, shell)
    assert result.returncode == 0, result.stderr
    (job_dir,) = job_dirs(env)
    assert shown(result.stdout) == {
        "DOCKER_CONFIG": str(job_dir / "docker"),
        "REGISTRY_AUTH_FILE": str(job_dir / "docker" / "config.json"),
    }


def test_control_unquoted_lines_break_on_such_a_path(tmp_path: Path) -> None:
    path = str(tmp_path / "it's a dir")
    quoted = J.shell_lines({"DOCKER_CONFIG": path})
    unquoted = f"export DOCKER_CONFIG={path}\n"
    show = 'printf %s "$DOCKER_CONFIG"'
    assert subprocess.run(["sh", "-c", quoted + show], capture_output=True, text=True).stdout == path
    assert subprocess.run(["sh", "-c", unquoted + show], capture_output=True, text=True).stdout != path


def test_shell_lines_refuse_a_name_that_is_not_a_variable() -> None:
    with pytest.raises(ValueError, match="not a shell variable name"):
        J.shell_lines({"X; rm -rf /": "v"})


def test_isolate_home_points_home_and_xdg_into_the_scope(job_env: dict[str, str], runner_base: Path) -> None:
    before = runner_base.read_bytes()
    wipe = "echo '{}' > ~/.docker/config.json\n"  # a tool that ignores DOCKER_CONFIG
    script = 'eval "$(authscope job open --isolate-home)"\n' + wipe
    script += SHOW % "['HOME', 'XDG_CONFIG_HOME', 'XDG_RUNTIME_DIR', 'DOCKER_CONFIG']"
    result = run_job(script, job_env)
    assert result.returncode == 0, result.stderr
    seen = shown(result.stdout)
    scope = Path(seen["DOCKER_CONFIG"])
    assert Path(seen["HOME"]) == scope / "home" and Path(seen["XDG_RUNTIME_DIR"]) == scope / "run"
    assert (scope / "config.json").read_text() == "{}\n"  # the wipe hit the job's own config
    assert runner_base.read_bytes() == before
    # Control: without --isolate-home, the same line writes the runner's base.
    control = run_job(OPEN + wipe, dict(job_env, CI_JOB_ID="4712"))
    assert control.returncode == 0
    assert runner_base.read_text() == "{}\n"


def test_daemon_tls_keys_stay_reachable(job_env: dict[str, str], runner_base: Path) -> None:
    """docker's daemon TLS keys default to $DOCKER_CONFIG: the lines point DOCKER_CERT_PATH at the base's."""
    (runner_base.parent / "ca.pem").write_text("not a real CA\n")
    result = run_job(OPEN + SHOW % "['DOCKER_CERT_PATH']", job_env)
    assert shown(result.stdout) == {"DOCKER_CERT_PATH": str(runner_base.parent)}
    given = run_job(OPEN + SHOW % "['DOCKER_CERT_PATH']", dict(job_env, DOCKER_CERT_PATH="/certs/client"))
    assert shown(given.stdout) == {"DOCKER_CERT_PATH": "/certs/client"}


# -- who owns a job scope -------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("form", ["$(authscope job open)", "$(authscope job open; true)"])
def test_the_owner_is_the_jobs_shell_not_a_subshell(
    job_env: dict[str, str], runner_base: Path, shell: str, form: str
) -> None:
    result = run_job(f'eval "{form}"\necho "$$"', job_env, shell)
    assert result.returncode == 0, result.stderr
    (job_dir,) = job_dirs(job_env)
    parsed = J.parse_name(job_dir.name)
    assert parsed is not None and parsed[1].pid == int(result.stdout.split()[-1])
    # Control: in `$(...; true)` the parent of the command is a subshell that
    # exits with it; taking the parent as the owner would let a sweep remove
    # a live job's scope.
    parent = run_job('echo "$(python3 -c "import os; print(os.getppid())"; true) $$"', job_env, shell).stdout.split()
    if form.endswith("; true)"):
        assert parent[0] != parent[1]


def test_open_twice_in_one_shell_gives_the_same_scope_another_shell_is_refused(
    job_env: dict[str, str], runner_base: Path
) -> None:
    script = OPEN + 'first="$DOCKER_CONFIG"\n' + OPEN + 'test "$first" = "$DOCKER_CONFIG"\n'
    result = run_job(script, job_env)
    assert result.returncode == 0, result.stderr
    assert len(job_dirs(job_env)) == 1
    # A live job's scope, seen from another process (its owner: this test).
    proc = subprocess.run([*AUTHSCOPE, "job", "open"], env=dict(job_env, CI_JOB_ID="5000"), capture_output=True)
    assert proc.returncode == 0
    again = run_authscope(["job", "open"], dict(job_env, CI_JOB_ID="5000"))
    assert again.returncode == 0 and "open already in this shell" in again.stderr  # same owner: this test
    other = run_job(OPEN, dict(job_env, CI_JOB_ID="5000"))
    assert other.returncode == 2 and "already open in process" in other.stderr


def test_a_stale_scope_of_the_same_job_is_retired_on_open(job_env: dict[str, str], runner_base: Path) -> None:
    run_job(OPEN, job_env)  # its shell is gone now: a killed run of this job
    (stale,) = job_dirs(job_env)
    result = run_job(OPEN, job_env)
    assert result.returncode == 0, result.stderr
    assert "removed a stale scope of this job" in result.stderr
    assert not stale.exists() and len(job_dirs(job_env)) == 1


# -- close -----------------------------------------------------------------------------


def test_close_in_a_new_shell_finds_removes_and_guards(job_env: dict[str, str], runner_base: Path) -> None:
    before = runner_base.read_bytes()
    script = OPEN + "echo '{}' > \"$DOCKER_CONFIG/config.json\"\n"
    assert run_job(script, job_env).returncode == 0
    assert len(job_dirs(job_env)) == 1
    closed = run_job("authscope job close", job_env)  # after_script: none of the exports
    assert closed.returncode == 0, closed.stderr
    assert "base" in closed.stderr and "intact" in closed.stderr
    assert job_dirs(job_env) == []
    assert runner_base.read_bytes() == before
    nothing = run_job("authscope job close", job_env)
    assert nothing.returncode == 0 and "no job scope to close" in nothing.stderr


def test_close_restores_a_base_a_tool_wrote_outside_the_scope(job_env: dict[str, str], runner_base: Path) -> None:
    wipe = "echo '{}' > ~/.docker/config.json\n"
    assert run_job(OPEN + wipe, job_env).returncode == 0
    assert runner_base.read_text() == "{}\n"  # the damage, while the job ran
    closed = run_job("authscope job close", job_env)
    assert closed.returncode == 3, closed.stderr
    assert "BASE INTEGRITY" in closed.stderr and "runner-cache.example.com" in closed.stderr
    assert LOCAL_PASSWORD not in closed.stderr and RUNNER_AUTH not in closed.stderr
    restored = read_json(runner_base)
    assert restored["auths"] == BASE_CONFIG["auths"] and restored["credsStore"] == "recording"


def test_control_close_without_the_guard_leaves_the_base_wiped(
    job_env: dict[str, str], runner_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_job(OPEN + "echo '{}' > ~/.docker/config.json\n", job_env).returncode == 0
    monkeypatch.setattr(B.Base, "check", lambda self, snap, leaks=(): [])
    (closed,) = J.close_job(job_env, [job_env["AUTHSCOPE_SCOPE_DIR"]])
    assert closed.damage == [] and closed.problems == []
    assert runner_base.read_text() == "{}\n"


def test_close_removes_the_jobs_login_that_leaked_into_the_base(job_env: dict[str, str], runner_base: Path) -> None:
    leak = 'cp "$DOCKER_CONFIG/config.json" ~/.docker/config.json\n'  # e.g. a tool that "saves" the config
    assert run_job(OPEN + leak, job_env).returncode == 0
    assert REGISTRY in read_json(runner_base)["auths"]
    closed = run_job("authscope job close", job_env)
    assert closed.returncode == 3 and "removed" in closed.stderr
    assert REGISTRY not in read_json(runner_base)["auths"]


def test_two_runners_same_job_id_never_close_each_others_scope(job_env: dict[str, str], runner_base: Path) -> None:
    """Job ids are per GitLab instance; two runners (or instances) on one machine can share one."""
    other_runner = dict(job_env, CI_RUNNER_ID="8", CI_CONCURRENT_ID="1")
    other_instance = dict(job_env, CI_SERVER_URL="https://gitlab.other.example")
    for env in (job_env, other_runner, other_instance):
        assert run_authscope(["job", "open"], env).returncode == 0
    assert len(job_dirs(job_env)) == 3
    assert run_job("authscope job close", other_runner).returncode == 0
    left = job_dirs(job_env)
    assert len(left) == 2
    assert J.find([job_env["AUTHSCOPE_SCOPE_DIR"]], J.job_of(job_env)) != []
    assert J.find([job_env["AUTHSCOPE_SCOPE_DIR"]], J.job_of(other_instance)) != []
    # Control: keyed by CI_JOB_ID alone, the other runner's close would take all three.
    assert all(p.name.startswith(f"authscope-job-{job_env['CI_JOB_ID']}-") for p in left)


def test_close_with_a_damaged_state_still_removes_and_says_the_base_was_not_checked(
    job_env: dict[str, str], runner_base: Path
) -> None:
    assert run_authscope(["job", "open"], job_env).returncode == 0
    (job_dir,) = job_dirs(job_env)
    (job_dir / "job.json").write_text("{")
    (job_dir / "docker" / "sub").mkdir()
    (job_dir / "docker" / "sub").chmod(0)  # and a hostile permission inside
    closed = run_authscope(["job", "close"], job_env)
    assert closed.returncode == 1
    assert "the base was NOT checked" in closed.stderr
    assert job_dirs(job_env) == [] and list(Path(job_env["AUTHSCOPE_SCOPE_DIR"]).iterdir()) == []


def test_retire_defers_signals_until_the_guard_has_run(
    job_env: dict[str, str], runner_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM during close (GitLab's after_script timeout) lands after the guard, not in the middle."""
    assert run_job(OPEN + "echo '{}' > ~/.docker/config.json\n", job_env).returncode == 0
    (job_dir,) = job_dirs(job_env)
    events: list[str] = []
    remove = S.remove_tree

    def remove_then_signal(path: str) -> list[str]:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-close
        left = remove(path)
        events.append("removed")
        return left

    check = B.Base.check

    def checked(self: B.Base, snap: B.Snapshot, leaks: Any = ()) -> list[B.Damage]:
        events.append("guarded")
        return check(self, snap, leaks)

    monkeypatch.setattr(S, "remove_tree", remove_then_signal)
    monkeypatch.setattr(B.Base, "check", checked)
    # Another thread of the process could take a blocked signal: have one.
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    previous = signal.signal(signal.SIGTERM, lambda *_: events.append("signal"))
    try:
        closed = J.retire(str(job_dir))
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
        other.join()
    assert events == ["removed", "guarded", "signal"]
    assert closed.damage and read_json(runner_base)["auths"] == BASE_CONFIG["auths"]
    # Control: without the deferral the signal lands between the removal and
    # the guard (where the CLI's handler would unwind past the guard).
    assert run_job(OPEN + "echo '{}' > ~/.docker/config.json\n", job_env).returncode == 0
    (job_dir,) = job_dirs(job_env)
    events.clear()
    monkeypatch.setattr(J, "signals_deferred", contextlib.nullcontext)
    previous = signal.signal(signal.SIGTERM, lambda *_: events.append("signal"))
    try:
        J.retire(str(job_dir))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert events == ["signal", "removed", "guarded"]


# -- sweep ------------------------------------------------------------------------------


def _dead_shell() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _age_marker(job_dir: str | Path) -> None:
    """As if the sweep that noted the job's shell gone ran GRACE seconds ago."""
    marker = Path(job_dir) / J.OVER_SINCE
    past = marker.stat().st_mtime - J.GRACE
    os.utime(marker, (past, past))


def test_sweep_retires_dead_and_expired_job_scopes_only(job_env: dict[str, str], runner_base: Path) -> None:
    root = job_env["AUTHSCOPE_SCOPE_DIR"]
    now = time.time()
    dead, _ = J.open_job(dict(job_env, CI_JOB_ID="1"), root=root, shell=_dead_shell())
    live, _ = J.open_job(dict(job_env, CI_JOB_ID="2"), root=root, shell=os.getpid())
    expired, _ = J.open_job(
        dict(job_env, CI_JOB_ID="3", CI_JOB_TIMEOUT="60"), root=root, shell=os.getpid(), now=now - 3600
    )
    others, _ = J.open_job(dict(job_env, CI_JOB_ID="4"), root=root, shell=_dead_shell())
    os.chown(others.directory, 4242, 4242)  # another user's: never touched
    first = run_authscope(["sweep"], job_env)
    assert first.returncode == 0, first.stderr
    assert not Path(expired.directory).exists()  # past CI_JOB_TIMEOUT + margin, its shell alive or not
    assert Path(dead.directory).exists() and (Path(dead.directory) / J.OVER_SINCE).exists()  # only noted
    _age_marker(dead.directory)
    second = run_authscope(["sweep"], job_env)
    assert second.returncode == 0, second.stderr
    assert not Path(dead.directory).exists()
    assert Path(live.directory).exists() and Path(others.directory).exists()
    assert not (Path(live.directory) / J.OVER_SINCE).exists()
    assert (first.stderr + second.stderr).count("removed the scope of a job that is over") == 2


def test_sweep_runs_the_guard_of_a_killed_job(job_env: dict[str, str], runner_base: Path) -> None:
    """A job killed before after_script: a later sweep restores what its tools broke."""
    assert run_job(OPEN + "echo '{}' > ~/.docker/config.json\n", job_env).returncode == 0
    assert run_authscope(["sweep"], job_env).returncode == 0
    (job_dir,) = job_dirs(job_env)
    _age_marker(job_dir)
    swept = run_authscope(["sweep"], job_env)
    assert swept.returncode == 3, swept.stderr
    assert "BASE INTEGRITY" in swept.stderr
    assert read_json(runner_base)["auths"] == BASE_CONFIG["auths"]
    assert job_dirs(job_env) == []


def test_another_jobs_sweep_between_script_and_after_script_leaves_the_close_to_the_job(
    job_env: dict[str, str], runner_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's shell is gone before its after_script starts: a concurrent job's
    sweep then must not take the scope, or the job's own log would not say
    what its close found."""
    assert run_job(OPEN + "echo '{}' > ~/.docker/config.json\n", job_env).returncode == 0
    assert run_authscope(["sweep"], dict(job_env, CI_JOB_ID="9999")).returncode == 0  # another job's after_script
    closed = run_job("authscope job close", job_env)
    assert closed.returncode == 3 and "BASE INTEGRITY" in closed.stderr
    # Control: without the grace, the other job's sweep takes it and the job's close finds nothing.
    assert run_job(OPEN + "echo '{}' > ~/.docker/config.json\n", job_env).returncode == 0
    monkeypatch.setattr(J, "GRACE", 0)
    assert len(J.sweep([job_env["AUTHSCOPE_SCOPE_DIR"]])) == 0  # the first sighting only notes it ...
    assert len(J.sweep([job_env["AUTHSCOPE_SCOPE_DIR"]])) == 1  # ... the next one takes it at once
    nothing = run_job("authscope job close", job_env)
    assert nothing.returncode == 0 and "no job scope to close" in nothing.stderr


def test_target_scope_sweep_leaves_a_live_job_scope_alone(job_env: dict[str, str], runner_base: Path) -> None:
    """`job open` exits at once; a sweep by owner pid would remove every job scope."""
    subprocess.run([*AUTHSCOPE, "job", "open"], env=job_env, capture_output=True, check=True)
    (job_dir,) = job_dirs(job_env)
    assert S.sweep([job_env["AUTHSCOPE_SCOPE_DIR"]]) == []
    assert J.sweep([job_env["AUTHSCOPE_SCOPE_DIR"]]) == []  # its shell (this test) is alive
    assert job_dir.exists()
    # Control: the same directory named after the (gone) `job open` process,
    # as a target scope is, is swept away while its job still runs.
    pid = _dead_shell()
    as_target = Path(job_env["AUTHSCOPE_SCOPE_DIR"]) / f"authscope-{pid}-1-{S.pid_namespace()}-{'a' * 12}"
    shutil.copytree(job_dir, as_target)
    assert S.sweep([job_env["AUTHSCOPE_SCOPE_DIR"]]) == [str(as_target)]


# -- exec inside a job scope -----------------------------------------------------------------


EXEC = "authscope exec -q --registry harbor.example.com -u robot --password-env TARGET_PASSWORD -- "


def test_exec_in_a_job_scope_layers_over_it_and_guards_it(job_env: dict[str, str], runner_base: Path) -> None:
    script = 'eval "$(authscope job open --isolate-home)"\njob_config="$DOCKER_CONFIG/config.json"\n'
    script += (
        EXEC
        + 'sh -c \'cp "$DOCKER_CONFIG/config.json" "$HOME/../../inner.json"; echo {} > "$DOCKER_CONFIG/config.json"\'\n'
    )
    script += 'cp "$job_config" "$HOME/../../after-wipe.json"\n'
    # A tool that ignores DOCKER_CONFIG, inside exec: it writes ~/.docker, the job's scope.
    script += EXEC + "sh -c 'echo {} > ~/.docker/config.json' || echo \"exec exited $?\"\n"
    script += 'cp "$job_config" "$HOME/../../after-rogue.json"\n'
    result = run_job(script, job_env)
    assert result.returncode == 0, result.stderr
    (job_dir,) = job_dirs(job_env)
    job_auths = {"runner-cache.example.com", REGISTRY, dc.SENTINEL}
    assert set(read_json(job_dir / "inner.json")["auths"]) == job_auths | {"harbor.example.com"}
    assert set(read_json(job_dir / "after-wipe.json")["auths"]) == job_auths  # the wipe stayed in exec's scope
    assert "exec exited 3" in result.stdout and "BASE INTEGRITY" in result.stderr
    assert set(read_json(job_dir / "after-rogue.json")["auths"]) == job_auths  # exec's guard restored it
    assert runner_base.read_bytes() == (json.dumps(BASE_CONFIG, indent="\t") + "\n").encode()
    # Control: the same rogue write without exec takes the job's own logins.
    control = run_job(
        'eval "$(authscope job open --isolate-home)"\necho {} > ~/.docker/config.json\n'
        'cat "$DOCKER_CONFIG/config.json"',
        dict(job_env, CI_JOB_ID="4800"),
    )
    assert control.stdout.strip() == "{}"


# -- the scope component's lines, with the real authscope -------------------------------------


@pytest.mark.parametrize(
    ("inputs", "logged_in", "home_moved"),
    [({}, True, False), ({"registry-login": False, "isolate-home": True}, False, True)],
    ids=["defaults", "no-login-isolate-home"],
)
def test_scope_component_opens_in_before_script_and_closes_in_after_script(
    job_env: dict[str, str], runner_base: Path, inputs: dict[str, Any], logged_in: bool, home_moved: bool
) -> None:
    from tests.test_templates import as_text, render_component

    job = render_component("scope", install="true", **inputs)[".authscope-scope"]
    # The job's variables: (the inputs) reach its shells, as GitLab sets them.
    job_env = dict(job_env, **{key: as_text(value) for key, value in (job.get("variables") or {}).items()})
    before = runner_base.read_bytes()
    probe = SHOW % "['DOCKER_CONFIG', 'HOME']"
    script = "\n".join([*job["before_script"], "echo '{}' > \"$DOCKER_CONFIG/config.json\"", probe])
    opened = run_job(f"set -o pipefail\n{script}", job_env)
    assert opened.returncode == 0, opened.stderr
    (job_dir,) = job_dirs(job_env)
    seen = shown(opened.stdout)
    assert seen["DOCKER_CONFIG"] == str(job_dir / "docker")
    assert (seen["HOME"] != job_env["HOME"]) is home_moved
    assert (f"{REGISTRY} (CI_REGISTRY)" in opened.stderr) is logged_in
    closed = run_job("\n".join(job["after_script"]), job_env)  # a new shell, as GitLab's after_script
    assert closed.returncode == 0, closed.stderr
    assert "closed" in closed.stderr and job_dirs(job_env) == []
    assert runner_base.read_bytes() == before


def test_docs_pipelines_validate(tmp_path: Path) -> None:
    """Each ```yaml block of docs/job-scope.md that starts `# .gitlab-ci.yml` is a valid pipeline."""
    import re

    from tests.test_templates import REPO_ROOT, require_check_jsonschema

    tool = require_check_jsonschema()
    text = (REPO_ROOT / "docs" / "job-scope.md").read_text()
    blocks = [m.group(1) for m in re.finditer(r"^```yaml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]
    files = []
    for i, block in enumerate(b for b in blocks if b.startswith("# .gitlab-ci.yml")):
        (tmp_path / f"block-{i}.yml").write_text(block)
        files.append(str(tmp_path / f"block-{i}.yml"))
    assert len(files) == 4, "the shell-runner, !reference, mounted-config and docker-in-docker examples"
    proc = subprocess.run(
        [tool, "--builtin-schema", "vendor.gitlab-ci", "--data-transform", "gitlab-ci", *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in re.findall(r"/authscope/([a-z-]+)@", text):
        assert (REPO_ROOT / "templates" / f"{name}.yml").exists(), name

"""Scopes through the real CLI: containment, helpers, signals, sweep (invariants 1, 2, 4, 5)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from authscope import dockerconfig as dc
from authscope import scope as S
from authscope.errors import ScopeError
from tests.helpers import AUTHSCOPE, LOCAL_PASSWORD, TARGET_PASSWORD, read_json, run_authscope, write_config

FIXTURE_BIN = Path(__file__).parent / "fixtures" / "bin"
EXEC = ["exec", "--registry", "harbor.remote-1", "-u", "robot$release+ci", "--password-env", "TARGET_PASSWORD", "--"]

# Things a command can do to its own config, each of which must stay in the scope.
WIPES = {
    "empty-auths": 'echo \'{"auths": {}}\' > "$DOCKER_CONFIG/config.json"',
    "delete": 'rm -f "$DOCKER_CONFIG/config.json"',
    "garbage": 'printf "\\0garbage" > "$DOCKER_CONFIG/config.json"',
    "rm-dir": 'rm -rf "$DOCKER_CONFIG"',
    "registry-auth-file": 'echo "{}" > "$REGISTRY_AUTH_FILE"',
}


@pytest.mark.parametrize("wipe", sorted(WIPES))
def test_command_wiping_its_config_leaves_base_byte_identical(logged_in: Path, env: dict[str, str], wipe: str) -> None:
    before = logged_in.read_bytes()
    result = run_authscope(EXEC + ["sh", "-c", WIPES[wipe]], env)
    assert result.returncode == 0, result.stderr
    assert logged_in.read_bytes() == before
    assert not list(Path(env["AUTHSCOPE_SCOPE_DIR"]).iterdir())


@pytest.mark.parametrize("wipe", ["empty-auths", "delete"])
def test_control_same_command_on_the_base_loses_the_login(logged_in: Path, env: dict[str, str], wipe: str) -> None:
    subprocess.run(["sh", "-c", WIPES[wipe]], env=env, check=True)
    assert "gitlab.local:4567" not in (logged_in.read_text() if logged_in.exists() else "")


def test_scope_holds_base_plus_target_with_private_modes(logged_in: Path, env: dict[str, str]) -> None:
    probe = (
        'stat -c "%a" "$DOCKER_CONFIG" "$DOCKER_CONFIG/config.json"; '
        'test "$REGISTRY_AUTH_FILE" = "$DOCKER_CONFIG/config.json" && echo same-file; '
        "python3 -c \"import json,os; c=json.load(open(os.environ['DOCKER_CONFIG']+'/config.json')); "
        "print(sorted(c['auths'])); print(sorted(c))\""
    )
    result = run_authscope(EXEC + ["sh", "-c", probe], env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["700", "600", "same-file"]
    assert lines[3] == f"['{dc.SENTINEL}', 'gitlab.local:4567', 'harbor.remote-1']"
    assert lines[4] == "['HttpHeaders', 'auths', 'x-unknown']"


def test_exit_code_is_the_commands(logged_in: Path, env: dict[str, str]) -> None:
    assert run_authscope(EXEC + ["sh", "-c", "exit 42"], env).returncode == 42


def test_missing_command_is_reported(logged_in: Path, env: dict[str, str]) -> None:
    result = run_authscope(EXEC + ["no-such-tool-xyz"], env)
    assert result.returncode == 127
    assert "command not found: no-such-tool-xyz" in result.stderr
    assert not list(Path(env["AUTHSCOPE_SCOPE_DIR"]).iterdir())


def test_output_masked_including_base_secrets(logged_in: Path, env: dict[str, str]) -> None:
    script = 'echo "t=$TARGET_PASSWORD"; cat "$DOCKER_CONFIG/config.json"; echo "l=$LOCAL_PASSWORD" >&2'
    result = run_authscope(EXEC + ["sh", "-c", script], env)
    assert result.returncode == 0
    everything = result.stdout + result.stderr
    for secret in (
        TARGET_PASSWORD,
        LOCAL_PASSWORD,
        dc.encode_auth("robot$release+ci", TARGET_PASSWORD),
        dc.encode_auth("ci", LOCAL_PASSWORD),
    ):
        assert secret not in everything
    assert "t=[MASKED]" in result.stdout and "l=[MASKED]" in result.stderr


def test_tool_ignoring_docker_config_is_caught_and_restored(logged_in: Path, env: dict[str, str]) -> None:
    """A tool that writes ~/.docker/config.json while DOCKER_CONFIG is the base's HOME copy."""
    # Here the base *is* ~/.docker: a tool resolving HOME writes it directly.
    env = dict(env)
    home_docker = Path(env["HOME"]) / ".docker"
    home_docker.mkdir()
    (home_docker / "config.json").write_bytes(logged_in.read_bytes())
    del env["DOCKER_CONFIG"]
    rogue = 'echo \'{"auths": {}}\' > "$HOME/.docker/config.json"'
    before = (home_docker / "config.json").read_bytes()
    result = run_authscope(EXEC + ["sh", "-c", rogue], env)
    assert result.returncode == 3
    assert "BASE INTEGRITY" in result.stderr and "gitlab.local:4567" in result.stderr
    assert LOCAL_PASSWORD not in result.stderr
    assert read_json(home_docker / "config.json") == json.loads(before)
    # --isolate-home contains the same tool.
    result = run_authscope(EXEC[:1] + ["--isolate-home"] + EXEC[1:] + ["sh", "-c", rogue], env)
    assert result.returncode == 0, result.stderr
    assert (home_docker / "config.json").read_bytes() != b'{"auths": {}}\n'


def test_tool_leaking_target_login_into_base_is_cleaned(logged_in: Path, env: dict[str, str]) -> None:
    leak = f'cp "$DOCKER_CONFIG/config.json" {logged_in}'
    result = run_authscope(EXEC + ["sh", "-c", leak], env)
    assert result.returncode == 3
    assert "harbor.remote-1" in result.stderr and "removed" in result.stderr
    assert "harbor.remote-1" not in read_json(logged_in)["auths"]


# -- credential helpers (invariant 2) -----------------------------------------------

FAKE_DOCKER_LOGOUT = """
import json, os, subprocess, sys
host = sys.argv[1]
path = os.path.join(os.environ["DOCKER_CONFIG"], "config.json")
cfg = json.load(open(path))
store = cfg.get("credHelpers", {}).get(host) or cfg.get("credsStore")
if store:  # what the docker CLI does: erase through the helper
    subprocess.run(["docker-credential-" + store, "erase"], input=host.encode(), check=True)
cfg.get("auths", {}).pop(host, None)
json.dump(cfg, open(path, "w"))
"""


@pytest.fixture
def helper_env(env: dict[str, str], base: Path, tmp_path: Path) -> dict[str, str]:
    env = dict(env)
    env["PATH"] = f"{FIXTURE_BIN}{os.pathsep}{env['PATH']}"
    env["RECORDING_HELPER_STORE"] = str(tmp_path / "helper-store.json")
    env["RECORDING_HELPER_LOG"] = str(tmp_path / "helper.log")
    Path(env["RECORDING_HELPER_STORE"]).write_text(
        json.dumps({"gitlab.local:4567": {"Username": "ci", "Secret": LOCAL_PASSWORD}})
    )
    write_config(base, {"auths": {"gitlab.local:4567": {}}, "credsStore": "recording"})
    return env


def test_logout_in_scope_never_reaches_shared_helper(helper_env: dict[str, str], base: Path) -> None:
    args = ["exec", "--source-registry", "gitlab.local:4567"] + EXEC[1:]
    script = f"{sys.executable} -c '{FAKE_DOCKER_LOGOUT}' gitlab.local:4567 && cat \"$DOCKER_CONFIG/config.json\""
    result = run_authscope(args + ["sh", "-c", script], helper_env)
    assert result.returncode == 0, result.stderr
    log = Path(helper_env["RECORDING_HELPER_LOG"]).read_text().split("\n")
    assert [line for line in log if line] == ["get gitlab.local:4567"]  # read once, never erased
    assert "gitlab.local:4567" in json.loads(Path(helper_env["RECORDING_HELPER_STORE"]).read_text())
    assert LOCAL_PASSWORD not in result.stdout


def test_source_credential_from_helper_is_inlined(helper_env: dict[str, str]) -> None:
    args = ["exec", "--source-registry", "gitlab.local:4567"] + EXEC[1:]
    script = "python3 -c \"import json,os,base64; c=json.load(open(os.environ['REGISTRY_AUTH_FILE'])); print('credsStore' in c, base64.b64decode(c['auths']['gitlab.local:4567']['auth']).decode().split(':')[0])\""
    result = run_authscope(args + ["sh", "-c", script], helper_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False ci"


def test_control_logout_with_helper_in_config_erases_shared_credential(helper_env: dict[str, str], base: Path) -> None:
    env = dict(helper_env, DOCKER_CONFIG=str(base))
    subprocess.run([sys.executable, "-c", FAKE_DOCKER_LOGOUT, "gitlab.local:4567"], env=env, check=True)
    assert "erase gitlab.local:4567" in Path(env["RECORDING_HELPER_LOG"]).read_text()
    assert "gitlab.local:4567" not in json.loads(Path(env["RECORDING_HELPER_STORE"]).read_text())


def test_helper_failure_is_a_clear_error(helper_env: dict[str, str]) -> None:
    Path(helper_env["RECORDING_HELPER_STORE"]).write_text("{}")
    args = ["exec", "--source-registry", "gitlab.local:4567"] + EXEC[1:]
    result = run_authscope(args + ["true"], helper_env)
    assert result.returncode == 2
    assert "docker-credential-recording could not get gitlab.local:4567" in result.stderr
    assert not list(Path(helper_env["AUTHSCOPE_SCOPE_DIR"]).iterdir())


# -- where scopes live ----------------------------------------------------------------


def test_scope_root_preference(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    assert S.choose_root(None, {"XDG_RUNTIME_DIR": str(runtime)}) == str(runtime)
    assert S.choose_root(None, {}) in (os.path.realpath("/dev/shm"), os.path.realpath(os.environ.get("TMPDIR", "/tmp")))
    explicit = tmp_path / "explicit"
    assert S.choose_root(str(explicit), {"XDG_RUNTIME_DIR": str(runtime)}) == str(explicit)
    assert S.choose_root(None, {"AUTHSCOPE_SCOPE_DIR": str(explicit)}) == str(explicit)


def test_world_writable_root_without_sticky_bit_refused(tmp_path: Path) -> None:
    root = tmp_path / "open"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(ScopeError, match="sticky"):
        S.choose_root(str(root), {})
    root.chmod(0o1777)
    assert S.choose_root(str(root), {}) == str(root)


# -- signals (invariant 4) ------------------------------------------------------------


def _start_held(env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        AUTHSCOPE + EXEC + ["sh", "-c", "trap 'echo got-term; exit 9' TERM; echo ready; while :; do sleep 0.05; done"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_signal_forwarded_scope_removed(logged_in: Path, env: dict[str, str], sig: int, code: int) -> None:
    before = logged_in.read_bytes()
    proc = _start_held(env)
    assert len(list(Path(env["AUTHSCOPE_SCOPE_DIR"]).iterdir())) == 1
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    if sig == signal.SIGTERM:
        assert "got-term" in out  # the child got the signal and could clean up
    assert not list(Path(env["AUTHSCOPE_SCOPE_DIR"]).iterdir())
    assert logged_in.read_bytes() == before


def test_control_sigkill_leaves_scope_and_sweep_removes_it(logged_in: Path, env: dict[str, str]) -> None:
    proc = _start_held(env)
    proc.kill()
    proc.wait()
    left = list(Path(env["AUTHSCOPE_SCOPE_DIR"]).iterdir())
    assert len(left) == 1  # the damage: nothing can clean up after SIGKILL ...
    # (the orphaned shell loop is in its own process group: stop it)
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if left[0].name.encode() in (p / "environ").read_bytes():
                    os.kill(int(p.name), signal.SIGKILL)
            except OSError:
                pass
    proc.communicate(timeout=30)
    result = run_authscope(["sweep"], env)  # ... but the next sweep does
    assert result.returncode == 0
    assert str(left[0]) in result.stderr
    assert not left[0].exists()


# -- sweep (invariant 4) --------------------------------------------------------------


def test_sweep_touches_only_dead_scopes_of_this_user(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    ns = S.pid_namespace()
    dead_pid = _dead_pid()
    live = root / f"authscope-{os.getpid()}-{S.process_start(os.getpid())}-{ns}-{'a' * 12}"
    dead = root / f"authscope-{dead_pid}-12345-{ns}-{'b' * 12}"
    reused = root / f"authscope-{os.getpid()}-1-{ns}-{'c' * 12}"  # our pid, another start time
    other_ns = root / f"authscope-{dead_pid}-12345-{ns + 1}-{'d' * 12}"
    not_scope = root / "authscope-notes"
    lookalike_file = root / f"authscope-{dead_pid}-1-{ns}-{'e' * 12}"
    for d in (live, dead, reused, other_ns, not_scope):
        d.mkdir()
        (d / "config.json").write_text("{}")
    lookalike_file.write_text("a file, not a scope")
    link = root / f"authscope-{dead_pid}-2-{ns}-{'f' * 12}"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    link.symlink_to(victim)
    removed = S.sweep([str(root)])
    assert sorted(removed) == sorted([str(dead), str(reused)])
    for kept in (live, other_ns, not_scope, lookalike_file, link, victim / "keep"):
        assert kept.exists() or kept.is_symlink()


def test_sweep_removes_scope_with_hostile_permissions(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    scope = root / f"authscope-{_dead_pid()}-7-{S.pid_namespace()}-{'a' * 12}"
    (scope / "sub").mkdir(parents=True)
    (scope / "sub" / "f").write_text("x")
    (scope / "sub").chmod(0)
    assert S.sweep([str(root)]) == [str(scope)]
    assert not scope.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_scope_dir_name_identifies_its_owner(tmp_path: Path) -> None:
    path = S.make_scope_dir(str(tmp_path))
    match = S.NAME.fullmatch(os.path.basename(path))
    assert match is not None
    pid, start, ns = (int(g) for g in match.groups())
    assert (pid, start, ns) == (os.getpid(), S.process_start(os.getpid()), S.pid_namespace())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_scope_links_cli_plugins_but_no_helpers(env: dict[str, str], base: Path, main: Any) -> None:
    write_config(base, {"auths": {}, "credHelpers": {"harbor.remote-1": "ecr-login"}, "credsStore": "pass"})
    (base / "cli-plugins").mkdir()
    (base / "buildx").mkdir()
    probe = 'ls -A "$DOCKER_CONFIG"; python3 -c "import json,os; print(sorted(json.load(open(os.environ[\'REGISTRY_AUTH_FILE\']))))"'
    result = run_authscope(EXEC + ["sh", "-c", probe], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["bin", "cli-plugins", "config.json", "['auths']"]


def test_robot_username_survives_literally(logged_in: Path, env: dict[str, str]) -> None:
    probe = "python3 -c \"import json,os,base64; c=json.load(open(os.environ['REGISTRY_AUTH_FILE'])); print(base64.b64decode(c['auths']['harbor.remote-1']['auth']).decode().split(':')[0])\""
    result = run_authscope(EXEC + ["sh", "-c", probe], env)
    assert result.stdout.strip() == "robot$release+ci"


def test_reset_lays_the_config_afresh_whatever_the_command_did(
    logged_in: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """A target's next command starts from the layered config, not from the last one's wipe."""
    from authscope.base import Base

    outside = tmp_path / "outside.json"
    outside.write_text("keep")
    with S.open_scope(Base(str(logged_in.parent)), "harbor.x", dc.auth_entry("u", "pw-12345"), environ=env) as (
        scope,
        _,
    ):
        fresh = Path(scope.config_file).read_bytes()
        Path(scope.config_file).write_text('{"auths": {}}')
        scope.reset()
        assert Path(scope.config_file).read_bytes() == fresh
        Path(scope.config_file).unlink()
        Path(scope.config_file).symlink_to(outside)  # a command planted a link
        scope.reset()
        assert not Path(scope.config_file).is_symlink() and outside.read_text() == "keep"
        import shutil

        shutil.rmtree(scope.path)
        scope.reset()
        assert Path(scope.config_file).read_bytes() == fresh
        assert stat.S_IMODE(os.stat(scope.path).st_mode) == 0o700
    assert not Path(scope.path).exists()

"""Shared credential helpers, and tools that ignore DOCKER_CONFIG (invariants 1 and 2).

Helpers: a base whose logins live behind `credsStore` (the recording helper
in tests/fixtures/bin logs every call). docker's login stores through the
helper and its logout erases through it; a scope has no helper, so neither
can reach it.

Rogues: the base is ~/.docker and DOCKER_CONFIG is unset in the job, and the
command run for a target rewrites ~/.docker/config.json anyway (a real crane
or docker with DOCKER_CONFIG unset, standing in for any tool that resolves
~/.docker itself, and a plain shell rewrite). The guard restores the base and
authscope exits 3; `--isolate-home` contains the same command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import RegistryFactory
from tests.e2e.fanout_helpers import FIXTURE_BIN, UNAUTHORIZED, Release, q, tool_paths

# -- credential helpers (invariant 2) ------------------------------------------------


def helper_release(tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory) -> Release:
    """A base `{"auths": {LOCAL: {}}, "credsStore": "recording"}`; the helper's
    store holds LOCAL's login and, as another job on the runner would have
    left it, a login for the first target."""
    release = Release(tmp_path, e2e_env, registry_factory, login=False, extra_path=[FIXTURE_BIN])
    store, log = tmp_path / "helper-store.json", tmp_path / "helper.log"
    release.env.update(RECORDING_HELPER_STORE=str(store), RECORDING_HELPER_LOG=str(log))
    first = release.targets[0].registry
    store.write_text(
        json.dumps(
            {
                release.local.host: {"Username": release.local.username, "Secret": release.local.password},
                first.host: {"Username": first.username, "Secret": first.password},
            }
        )
    )
    release.base.mkdir(mode=0o700, exist_ok=True)
    release.config.write_text(json.dumps({"auths": {release.local.host: {}}, "credsStore": "recording"}, indent="\t"))
    release.config.chmod(0o600)
    return release


def helper_calls(release: Release) -> list[str]:
    log = Path(release.env["RECORDING_HELPER_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def docker_target() -> str:
    paths = tool_paths("docker", "crane", "skopeo")
    return (
        f'printf %s "$TARGET_PASSWORD" | {q(paths["docker"])} login -u "$TARGET_USER" --password-stdin "$TARGET"'
        f' && {q(paths["crane"])} copy "$SRC" "$DST" && {q(paths["docker"])} logout "$TARGET"'
    )


def test_docker_login_logout_in_scope_never_reach_the_helper(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """With --source-registry LOCAL, authscope asks the helper once per scope
    (`get`) and inlines the source login; docker's login and logout inside
    never call `store` or `erase`, crane reads the inlined login."""
    script = docker_target()
    release = helper_release(tmp_path, e2e_env, registry_factory)
    before = release.config.read_bytes()
    store_before = Path(release.env["RECORDING_HELPER_STORE"]).read_bytes()
    for target in release.targets:
        result = release.exec(target, script, "--source-registry", release.local.host)
        assert result.returncode == 0, result.stderr
        assert "Login Succeeded" in result.stdout
    assert helper_calls(release) == [f"get {release.local.host}"] * len(release.targets)
    assert Path(release.env["RECORDING_HELPER_STORE"]).read_bytes() == store_before
    assert release.config.read_bytes() == before
    for target in release.targets:
        assert release.digest(target) == release.source.digest


def test_control_docker_on_a_helper_base_stores_and_erases_in_the_shared_helper(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """The same commands with DOCKER_CONFIG = base: docker's login calls
    `store`, its logout calls `erase` for the host and its http:// and
    https:// spellings, and the other job's login for the target is gone
    from the shared store. (No authscope runs here, so there is no authscope
    output to check for secrets.)"""
    script = docker_target()
    release = helper_release(tmp_path, e2e_env, registry_factory)
    first = release.targets[0]
    result = release.sh(script, first)
    assert result.returncode == 0, result.stderr
    assert release.digest(first) == release.source.digest
    calls = helper_calls(release)
    assert f"store {first.host}" in calls
    assert {f"erase {first.host}", f"erase http://{first.host}", f"erase https://{first.host}"} <= set(calls)
    assert f"get {release.local.host}" in calls  # crane read the source through the helper
    store = json.loads(Path(release.env["RECORDING_HELPER_STORE"]).read_text())
    assert first.host not in store  # the damage: another job's login erased


# -- tools that ignore DOCKER_CONFIG (invariant 1) ------------------------------------

ROGUES = {
    # A real client resolving ~/.docker itself: logs the source registry out there.
    "crane-0.16.1-home": 'env -u DOCKER_CONFIG {crane_0_16_1} auth logout "$LOCAL"',
    "docker-home": 'env -u DOCKER_CONFIG {docker} logout "$LOCAL"',
    # The reported wipe, written straight to ~/.docker.
    "shell-home": 'echo \'{{"auths":{{}}}}\' > "$HOME/.docker/config.json"',
}


def rogue(name: str) -> str:
    paths = tool_paths("crane-0.16.1", "docker", "crane", "skopeo")
    return ROGUES[name].format(crane_0_16_1=q(paths["crane-0.16.1"]), docker=q(paths["docker"]))


def crane_copy() -> str:
    return f'{q(tool_paths("crane")["crane"])} copy "$SRC" "$DST"'


def crane_login() -> str:
    """The control's own target login (a scope already holds one)."""
    crane = q(tool_paths("crane")["crane"])
    return f'printf %s "$TARGET_PASSWORD" | {crane} auth login "$TARGET" -u "$TARGET_USER" --password-stdin'


@pytest.mark.parametrize("name", sorted(ROGUES))
def test_rogue_writing_home_config_is_caught_restored_and_exits_3(
    name: str, tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """The guard restores every base entry the rogue removed or changed, says
    so, and exits 3; the next target's copy then reads the source fine."""
    script = rogue(name)
    release = Release(tmp_path, e2e_env, registry_factory, base_in_home=True)
    assert "DOCKER_CONFIG" not in release.env
    assert release.config == Path(release.env["HOME"]) / ".docker" / "config.json"
    first, second = release.targets
    before = release.read()

    result = release.exec(first, f"{crane_copy()} && {script}")
    assert result.returncode == 3, result.stderr
    assert "BASE INTEGRITY" in result.stderr
    assert f"auths entry '{release.local.host}' was removed by a tool outside its scope; restored" in result.stderr
    assert release.read() == before
    assert oct(release.config.stat().st_mode & 0o777) == "0o600"
    assert release.digest(first) == release.source.digest

    result = release.exec(second, crane_copy())
    assert result.returncode == 0, result.stderr
    assert release.digest(second) == release.source.digest


@pytest.mark.parametrize("name", sorted(ROGUES))
def test_rogue_is_contained_with_isolate_home(
    name: str, tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """With --isolate-home the rogue's ~/.docker is the scope itself: exit 0,
    the base keeps every byte."""
    script = rogue(name)
    release = Release(tmp_path, e2e_env, registry_factory, base_in_home=True, targets=[False])
    [target] = release.targets
    before = release.config.read_bytes()
    result = release.exec(target, f"{crane_copy()} && {script}", "--isolate-home")
    assert result.returncode == 0, result.stderr
    assert "BASE INTEGRITY" not in result.stderr
    assert release.config.read_bytes() == before
    assert release.digest(target) == release.source.digest


@pytest.mark.parametrize("name", sorted(ROGUES))
def test_control_rogue_on_the_job_env_loses_the_local_login(
    name: str, tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """Without authscope, the rogue removes the local login from ~/.docker and
    the next target's copy cannot read the source."""
    script = rogue(name)
    release = Release(tmp_path, e2e_env, registry_factory, base_in_home=True)
    first, second = release.targets
    result = release.sh(f"{crane_login()} && {crane_copy()} && {script}", first)
    assert result.returncode == 0, result.stderr
    assert release.digest(first) == release.source.digest
    assert release.local.host not in release.auths()  # the damage
    result = release.sh(f"{crane_login()} && {crane_copy()}", second)
    assert result.returncode != 0
    assert UNAUTHORIZED.search(result.stderr)
    assert release.digest(second) is None


def test_restored_base_stays_private_when_the_rogue_recreated_it_world_readable(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """A rogue that deletes ~/.docker/config.json and writes a new one under
    umask 022 leaves a 0644 file. The guard restores the local login with the
    mode the base had when the scope opened (0600), never the rogue's."""
    release = Release(tmp_path, e2e_env, registry_factory, base_in_home=True, targets=[False])
    [target] = release.targets
    assert oct(release.config.stat().st_mode & 0o777) == "0o600"
    rogue = 'rm "$HOME/.docker/config.json" && umask 022 && echo \'{"auths":{}}\' > "$HOME/.docker/config.json"'
    result = release.exec(target, rogue)
    assert result.returncode == 3, result.stderr
    assert release.local.host in release.auths()  # restored ...
    assert oct(release.config.stat().st_mode & 0o777) == "0o600"  # ... privately

"""The reported fan-out (google/go-containerregistry#1898) with crane 0.16.1 and the latest crane.

The job logs in to its local registry on the base with `authscope login`,
then per target runs `crane auth login`, `crane copy` and `crane auth logout`
inside `authscope exec`. One target is plain HTTP, one TLS (crane trusts the
test CA through SSL_CERT_FILE, a bundle of the system roots plus the CA).
Each scenario has a control that runs the same loop on the base, without
authscope, and shows the damage.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import RegistryFactory
from tests.e2e.fanout_helpers import AUTHSCOPE, UNAUTHORIZED, UNKNOWN_KEYS, WIPE, Release, b64, q, tool_paths

CRANES = ["crane-0.16.1", "crane"]


def crane_target(crane: str) -> str:
    """One target of the fan-out: login (password from stdin), copy, logout."""
    c = q(crane)
    return (
        f'printf %s "$TARGET_PASSWORD" | {c} auth login "$TARGET" -u "$TARGET_USER" --password-stdin'
        f' && {c} copy "$SRC" "$DST" && {c} auth logout "$TARGET"'
    )


@pytest.mark.parametrize("wipe", [False, True], ids=["logout", "logout-then-wipe"])
@pytest.mark.parametrize("crane", CRANES)
def test_fanout_in_scopes_keeps_base_byte_identical(
    crane: str, wipe: bool, tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """Every target gets the source's digest; the base is untouched, even when a
    target's command ends by emptying the whole config file."""
    path = tool_paths(crane, "skopeo")[crane]
    release = Release(tmp_path, e2e_env, registry_factory)
    before = release.config.read_bytes()
    script = crane_target(path) + (f" && {WIPE}" if wipe else "")

    for target in release.targets:
        result = release.exec(target, script)
        assert result.returncode == 0, result.stderr
        # crane wrote the scope's config, never the base.
        scopes = release.env["AUTHSCOPE_SCOPE_DIR"]
        assert f"logged in via {scopes}/authscope-" in result.stderr
        assert f"logged out via {scopes}/authscope-" in result.stderr
        assert f"via {release.config}" not in result.stderr
        assert release.config.read_bytes() == before

    for target in release.targets:
        assert release.digest(target) == release.source.digest
    assert release.targets[1].registry.tls


def test_control_crane_0_16_1_fanout_on_base_loses_the_local_login_to_a_wipe(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """The report's loop on the base: after the first target's logout wipes
    `auths`, the second target's copy cannot read the source any more.

    crane 0.16.1 does not wipe by itself on this machine (see
    test_crane_0_16_1_logout_empties_auths_only_of_a_file_it_did_not_find), so
    the reported wipe is simulated right after its logout.
    """
    crane = tool_paths("crane-0.16.1", "skopeo")["crane-0.16.1"]
    release = Release(tmp_path, e2e_env, registry_factory)
    first, second = release.targets

    result = release.sh(f"{crane_target(crane)} && {WIPE}", first)
    assert result.returncode == 0, result.stderr
    assert release.digest(first) == release.source.digest
    assert release.auths() == {}  # the local login is gone ...

    result = release.sh(crane_target(crane), second)
    assert result.returncode != 0  # ... so every later target fails
    assert UNAUTHORIZED.search(result.stderr) and release.local.host in result.stderr
    assert release.digest(second) is None


@pytest.mark.parametrize("crane", CRANES)
def test_control_crane_on_base_keeps_other_logins_but_drops_unknown_keys(
    crane: str, tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """Without a wipe, crane's own login/logout on the base keep the local
    login, but rewrite the file through docker/cli's ConfigFile: a top-level
    key it doesn't know ("x-custom") is gone after the first target;
    "HttpHeaders", which ConfigFile knows, stays."""
    path = tool_paths(crane, "skopeo")[crane]
    release = Release(tmp_path, e2e_env, registry_factory)
    for target in release.targets:
        result = release.sh(crane_target(path), target)
        assert result.returncode == 0, result.stderr
        assert release.digest(target) == release.source.digest
    after = release.read()
    assert set(after["auths"]) == {release.local.host}
    assert after["HttpHeaders"] == UNKNOWN_KEYS["HttpHeaders"]
    assert "x-custom" not in after  # the damage


def test_crane_0_16_1_logout_empties_auths_only_of_a_file_it_did_not_find(
    tmp_path: Path, e2e_env: dict[str, str]
) -> None:
    """What crane 0.16.1 itself does here (no registry involved: logout is local).

    Findings on this machine:
    - On a config holding the local and the target login, `crane auth logout
      TARGET` removes exactly the target's entry: it does NOT empty `auths`.
    - When the config it resolves does not exist — DOCKER_CONFIG points at a
      directory without config.json, or HOME differs from the login's — it
      writes exactly the report's `{"auths": {}}` there (docker/cli's
      config.Load returns an empty config for a missing file, and Save writes
      it), and exits 0. The file that holds the login is not touched. A job
      whose steps disagree about DOCKER_CONFIG/HOME therefore sees the
      reported dump without crane having erased anything.
    """
    crane = tool_paths("crane-0.16.1")["crane-0.16.1"]
    env = dict(e2e_env, LOCAL_PASSWORD="test-local-crane-doc", TARGET_PASSWORD="test-target-crane-doc")
    secrets = ["test-local-crane-doc", "test-target-crane-doc", b64("ci-user", "test-local-crane-doc")]
    base = Path(env["DOCKER_CONFIG"])
    login = subprocess.run(
        [*AUTHSCOPE, "login", "gitlab.local:4567", "-u", "ci-user", "--password-env", "LOCAL_PASSWORD"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert login.returncode == 0, login.stderr
    assert not any(s in login.stdout + login.stderr for s in secrets)
    subprocess.run(
        [crane, "auth", "login", "harbor.remote-1", "-u", "robot$r+ci", "--password-stdin"],
        env=env,
        input="test-target-crane-doc",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert set(json.loads((base / "config.json").read_text())["auths"]) == {"gitlab.local:4567", "harbor.remote-1"}

    subprocess.run([crane, "auth", "logout", "harbor.remote-1"], env=env, capture_output=True, timeout=60, check=True)
    assert set(json.loads((base / "config.json").read_text())["auths"]) == {"gitlab.local:4567"}
    logged_in = (base / "config.json").read_bytes()

    elsewhere = tmp_path / "no-config-here"
    elsewhere.mkdir()
    other_home = tmp_path / "other-home"
    other_home.mkdir()
    no_dc = {k: v for k, v in env.items() if k != "DOCKER_CONFIG"}
    for variant, written in (
        (dict(env, DOCKER_CONFIG=str(elsewhere)), elsewhere / "config.json"),
        (dict(no_dc, HOME=str(other_home)), other_home / ".docker" / "config.json"),
    ):
        result = subprocess.run(
            [crane, "auth", "logout", "harbor.remote-1"],
            env=variant,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert written.read_bytes() == b'{\n\t"auths": {}\n}'
        assert (base / "config.json").read_bytes() == logged_in


def test_robot_account_end_to_end_through_crane(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """A Harbor robot `robot$project+ci` (a literal `$` in htpasswd) on the
    local registry and on the target: `authscope login`/`exec -u` take it from
    argv as is, crane takes it from "$TARGET_USER"; nothing is escaped.

    The first copy uses only the entry authscope wrote into the scope; the
    second one the entry `crane auth login` wrote there."""
    crane = q(tool_paths("crane", "skopeo")["crane"])
    robot = "robot$project+ci"
    release = Release(tmp_path, e2e_env, registry_factory, targets=[False], local_user=robot, target_user=robot)
    [target] = release.targets
    assert release.auths()[release.local.host] == {"auth": b64(robot, release.local.password)}
    before = release.config.read_bytes()
    script = (
        f'{crane} copy "$SRC" "$DST"'
        f' && printf %s "$TARGET_PASSWORD" | {crane} auth login "$TARGET" -u "$TARGET_USER" --password-stdin'
        f' && {crane} copy "$SRC" "$TARGET/release/app:1.0-b" && {crane} auth logout "$TARGET"'
    )
    result = release.exec(target, script)
    assert result.returncode == 0, result.stderr
    assert release.digest(target) == release.source.digest
    assert release.digest(target, f"{target.host}/release/app:1.0-b") == release.source.digest
    assert release.config.read_bytes() == before


def test_control_robot_name_in_a_double_quoted_script_loses_its_dollar(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """What escaping gets wrong: the robot name pasted into a double-quoted
    script (as CI YAML often does) is expanded by the shell to `robot+ci`,
    crane stores that without checking, and the copy is refused."""
    crane = q(tool_paths("crane", "skopeo")["crane"])
    robot = "robot$project+ci"
    release = Release(tmp_path, e2e_env, registry_factory, targets=[False], target_user=robot)
    [target] = release.targets
    script = (
        f'printf %s "$TARGET_PASSWORD" | {crane} auth login "$TARGET" -u "{robot}" --password-stdin'
        f' && {crane} copy "$SRC" "$DST"'
    )
    result = release.sh(script, target)
    assert result.returncode != 0
    assert UNAUTHORIZED.search(result.stderr)
    assert release.auths()[target.host] == {"auth": b64("robot+ci", target.registry.password)}
    assert release.digest(target) is None

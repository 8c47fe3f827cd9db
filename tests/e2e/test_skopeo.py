"""The fan-out with skopeo 1.9 (login, copy, logout), and skopeo's rewrite of the config.

skopeo (containers/image 5.23) writes logins to `$REGISTRY_AUTH_FILE`, else
`$DOCKER_CONFIG/config.json` when DOCKER_CONFIG is set (containers/common's
GetDefaultAuthFile; the tests here show each variable alone), else
`$XDG_RUNTIME_DIR/containers/auth.json`. A scope sets both variables to its
own config.json; the tests run skopeo relying on each of them in turn. Plain-HTTP registries need `--tls-verify=false`, the
TLS one `--cert-dir` with the test CA.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import RegistryFactory
from tests.e2e.fanout_helpers import UNAUTHORIZED, Release, Target, b64, q, tool_paths

# Which variable skopeo is left with inside the scope; the other one is unset.
RELYING_ON = {"DOCKER_CONFIG": "REGISTRY_AUTH_FILE", "REGISTRY_AUTH_FILE": "DOCKER_CONFIG"}


def skopeo_target(target: Target, relying_on: str | None, logout: str = "logout") -> str:
    """login (password from stdin), copy, logout for one target.

    `relying_on`: run skopeo with only that variable set (None: as given).
    `logout`: "logout" for `skopeo logout TARGET`, "logout --all" for the
    blunt cleanup that empties every login.
    """
    skopeo = q(tool_paths("skopeo")["skopeo"])
    if relying_on is not None:
        skopeo = f"env -u {RELYING_ON[relying_on]} {skopeo}"
    cert_dir = target.registry.cert_dir
    login_tls = f"--cert-dir {q(cert_dir)}" if cert_dir else "--tls-verify=false"
    dest_tls = f"--dest-cert-dir {q(cert_dir)}" if cert_dir else "--dest-tls-verify=false"
    logout_what = "--all" if logout == "logout --all" else '"$TARGET"'
    return (
        f'printf %s "$TARGET_PASSWORD" | {skopeo} login {login_tls} -u "$TARGET_USER" --password-stdin "$TARGET"'
        f' && {skopeo} copy --src-tls-verify=false {dest_tls} "docker://$SRC" "docker://$DST"'
        f" && {skopeo} logout {logout_what}"
    )


# Evidence of which file skopeo rewrote: the top-level keys of the scope's
# config.json after the target's commands (the scope starts with the base's).
IN_SCOPE = (
    "python3 -c \"import json,os; print(sorted(json.load(open(os.environ['AUTHSCOPE_SCOPE'] + '/config.json'))))\""
)


@pytest.mark.parametrize("logout", ["logout", "logout --all"])
@pytest.mark.parametrize("relying_on", sorted(RELYING_ON))
def test_skopeo_fanout_in_scopes_keeps_base_byte_identical(
    relying_on: str, logout: str, tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """skopeo login/copy/logout per target in a scope, relying on DOCKER_CONFIG
    or on REGISTRY_AUTH_FILE: both lead skopeo to the scope's config.json, the
    base's unknown keys stay, and even `skopeo logout --all` empties only the
    scope."""
    tool_paths("skopeo")
    release = Release(tmp_path, e2e_env, registry_factory)
    before = release.config.read_bytes()
    for target in release.targets:
        result = release.exec(target, f"{skopeo_target(target, relying_on, logout)} && {IN_SCOPE}")
        assert result.returncode == 0, result.stderr
        assert "Login Succeeded!" in result.stdout
        assert result.stdout.splitlines()[-1] == "['auths']"  # HttpHeaders, x-custom dropped, in the scope
        assert release.config.read_bytes() == before
    for target in release.targets:
        assert release.digest(target) == release.source.digest


def test_control_skopeo_logout_all_on_base_loses_the_local_login(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """The report's symptom from a real tool: a fan-out that cleans up with
    `skopeo logout --all` leaves `{"auths": {}}` in the base, and the next
    target cannot read the source."""
    tool_paths("skopeo")
    release = Release(tmp_path, e2e_env, registry_factory)
    first, second = release.targets
    result = release.sh(skopeo_target(first, "DOCKER_CONFIG", "logout --all"), first)
    assert result.returncode == 0, result.stderr
    assert release.digest(first) == release.source.digest
    assert release.read() == {"auths": {}}  # the local login and every other key are gone

    result = release.sh(skopeo_target(second, "DOCKER_CONFIG"), second)
    assert result.returncode != 0
    assert UNAUTHORIZED.search(result.stderr)
    assert release.digest(second) is None


def _rich_base(release: Release) -> dict[str, Any]:
    """The base with keys and an entry field skopeo does not know."""
    cfg = release.read()
    cfg["auths"][release.local.host]["x-note"] = "entry field"
    cfg["credHelpers"] = {"helper.example": "none-such"}
    release.config.write_text(json.dumps(cfg, indent="\t") + "\n")
    return cfg


@pytest.mark.parametrize("relying_on", sorted(RELYING_ON))
def test_control_skopeo_on_base_drops_keys_it_does_not_know(
    relying_on: str, tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """What skopeo 1.9.3 really drops here, when the file it writes is the base
    (DOCKER_CONFIG = base, or REGISTRY_AUTH_FILE = base/config.json):

    - every top-level key but "auths" and "credHelpers" ("HttpHeaders",
      "x-custom" go);
    - every field of an auths entry but "auth" ("x-note" goes);
    - and it does so on a *failing* `skopeo logout` of a registry it is not
      logged in to (exit 1, "not logged into"): the file is replaced (new
      inode, mode 0600) all the same.
    The local login itself survives a per-registry login/logout.
    """
    tool_paths("skopeo")
    release = Release(tmp_path, e2e_env, registry_factory, targets=[False])
    [target] = release.targets
    env = release.target_env(target, REGISTRY_AUTH_FILE=str(release.config))
    cfg = _rich_base(release)
    release.config.chmod(0o640)
    inode = release.config.stat().st_ino

    result = release.sh(f'env -u {RELYING_ON[relying_on]} skopeo logout "$TARGET"', env=env)
    assert result.returncode == 1 and "not logged into" in result.stderr
    after = release.read()
    assert release.config.stat().st_ino != inode
    assert oct(release.config.stat().st_mode & 0o777) == "0o600"
    assert sorted(after) == ["auths", "credHelpers"]
    assert after["auths"] == {release.local.host: {"auth": cfg["auths"][release.local.host]["auth"]}}

    _rich_base(release)
    result = release.sh(skopeo_target(target, relying_on), env=env)
    assert result.returncode == 0, result.stderr
    assert release.digest(target) == release.source.digest
    after = release.read()
    assert sorted(after) == ["auths", "credHelpers"]
    assert after["auths"] == {release.local.host: {"auth": cfg["auths"][release.local.host]["auth"]}}


@pytest.mark.parametrize("relying_on", sorted(RELYING_ON))
def test_base_keys_skopeo_does_not_know_survive_a_scope(
    relying_on: str, tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """The same login/copy/logout and failing logout in a scope: the base keeps
    "HttpHeaders", "x-custom", "credHelpers" and the entry's "x-note", byte for byte."""
    tool_paths("skopeo")
    release = Release(tmp_path, e2e_env, registry_factory, targets=[False])
    [target] = release.targets
    cfg = _rich_base(release)
    before = release.config.read_bytes()
    script = f'{skopeo_target(target, relying_on)}; skopeo logout "$TARGET"; echo "second logout: $?"'
    result = release.exec(target, script)
    assert result.returncode == 0, result.stderr
    assert "second logout: 1" in result.stdout
    assert release.config.read_bytes() == before
    assert release.read() == cfg
    assert release.digest(target) == release.source.digest


def test_robot_account_end_to_end_through_skopeo(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """`robot$project+ci` as local and target user: skopeo reads the local
    robot's login from the scope, logs in with "$TARGET_USER", copies, logs out."""
    tool_paths("skopeo")
    robot = "robot$project+ci"
    release = Release(tmp_path, e2e_env, registry_factory, targets=[True], local_user=robot, target_user=robot)
    [target] = release.targets
    before = release.config.read_bytes()
    result = release.exec(target, skopeo_target(target, None))
    assert result.returncode == 0, result.stderr
    assert release.digest(target) == release.source.digest
    assert release.config.read_bytes() == before


def test_control_robot_name_in_a_double_quoted_script_is_refused_by_skopeo(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """The same name pasted into a double-quoted script turns into `robot+ci`;
    skopeo login checks it against the registry and fails."""
    tool_paths("skopeo")
    robot = "robot$project+ci"
    release = Release(tmp_path, e2e_env, registry_factory, targets=[False], target_user=robot)
    [target] = release.targets
    result = release.sh(
        f'printf %s "$TARGET_PASSWORD" | skopeo login --tls-verify=false -u "{robot}" --password-stdin "$TARGET"',
        target,
    )
    assert result.returncode != 0
    assert UNAUTHORIZED.search(result.stderr)
    assert target.host not in release.auths()
    assert b64("robot+ci", target.registry.password) not in release.config.read_text()


def test_source_login_only_in_skopeos_own_auth_file_does_not_reach_a_scope(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """With neither DOCKER_CONFIG nor REGISTRY_AUTH_FILE set, `skopeo login`
    (like podman's) writes `$XDG_RUNTIME_DIR/containers/auth.json`, no Docker
    config at all. A base is a Docker config directory only (DESIGN.md), and
    a scope sets REGISTRY_AUTH_FILE, after which skopeo does not read its
    default file: the source login is not there in the scope. Logging in to
    the source with `authscope login` puts it in the base, and the scope has it."""
    release = Release(tmp_path, e2e_env, registry_factory, targets=[False], base_in_home=True, login=False)
    [target] = release.targets
    inspect = 'skopeo inspect --tls-verify=false --raw "docker://$SRC"'
    result = release.sh(
        'printf %s "$LOCAL_PASSWORD" | skopeo login --tls-verify=false -u "$LOCAL_USER" --password-stdin "$LOCAL"'
    )
    assert result.returncode == 0, result.stderr
    assert Path(release.env["XDG_RUNTIME_DIR"], "containers", "auth.json").is_file()
    assert not release.base.exists()
    assert release.sh(inspect).returncode == 0  # skopeo on its own finds it

    result = release.exec(target, inspect)
    assert result.returncode != 0
    assert UNAUTHORIZED.search(result.stderr)

    result = release.authscope(
        "login", release.local.host, "-u", release.local.username, "--password-env", "LOCAL_PASSWORD"
    )
    assert result.returncode == 0, result.stderr
    result = release.exec(target, inspect)
    assert result.returncode == 0, result.stderr

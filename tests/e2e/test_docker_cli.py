"""The fan-out with the docker CLI's own login and logout (no daemon needed).

`docker login --password-stdin` and `docker logout` only touch the config
(`$DOCKER_CONFIG/config.json`); the copy between them is crane's, which reads
the same file. The TLS target's CA reaches both through SSL_CERT_FILE.
"""

from __future__ import annotations

import json
from pathlib import Path

from authscope import dockerconfig as dc
from tests.e2e.conftest import RegistryFactory
from tests.e2e.fanout_helpers import UNKNOWN_KEYS, Release, q, tool_paths


def docker_target(docker: str, crane: str) -> str:
    return (
        f'printf %s "$TARGET_PASSWORD" | {q(docker)} login -u "$TARGET_USER" --password-stdin "$TARGET"'
        f' && {q(crane)} copy "$SRC" "$DST" && {q(docker)} logout "$TARGET"'
    )


# The scope's config after the target's commands: keys and logins left.
SCOPE_STATE = (
    "python3 -c \"import json,os; c=json.load(open(os.environ['AUTHSCOPE_SCOPE'] + '/config.json'));"
    " print(sorted(c), sorted(c['auths']))\""
)


def _note_in_local_entry(release: Release) -> bytes:
    """Give the base's local entry a field docker does not know; the new bytes."""
    cfg = release.read()
    cfg["auths"][release.local.host]["x-note"] = "entry field"
    release.config.write_text(json.dumps(cfg, indent="\t") + "\n")
    return release.config.read_bytes()


def test_docker_login_logout_in_scopes_keeps_base_byte_identical(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """docker rewrites the scope's config (its logout drops the target and the
    unknown "x-custom" there), every target gets the digest, the base keeps
    every byte."""
    paths = tool_paths("docker", "crane", "skopeo")
    release = Release(tmp_path, e2e_env, registry_factory)
    before = _note_in_local_entry(release)
    for target in release.targets:
        result = release.exec(target, f"{docker_target(paths['docker'], paths['crane'])} && {SCOPE_STATE}")
        assert result.returncode == 0, result.stderr
        assert "Login Succeeded" in result.stdout
        assert f"Removing login credentials for {target.host}" in result.stdout
        # The scope's sentinel stays: docker must never see a config with no auth (it would pick a store).
        assert result.stdout.splitlines()[-1] == f"['HttpHeaders', 'auths'] {sorted([release.local.host, dc.SENTINEL])}"
        assert release.config.read_bytes() == before
    for target in release.targets:
        assert release.digest(target) == release.source.digest


def test_control_docker_login_on_base_drops_keys_it_does_not_know(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """The same loop on the base. docker keeps the local login and the keys its
    ConfigFile knows ("HttpHeaders"), but its login/logout rewrite the file without
    the unknown top-level key ("x-custom") and the unknown entry field
    ("x-note"). A `docker logout` of a registry it is not logged in to leaves
    the file alone (checked: same bytes)."""
    paths = tool_paths("docker", "crane", "skopeo")
    release = Release(tmp_path, e2e_env, registry_factory)
    before = _note_in_local_entry(release)
    result = release.sh(f'{q(paths["docker"])} logout "$TARGET"', release.targets[0])
    assert result.returncode == 0, result.stderr
    assert release.config.read_bytes() == before

    for target in release.targets:
        result = release.sh(docker_target(paths["docker"], paths["crane"]), target)
        assert result.returncode == 0, result.stderr
        assert release.digest(target) == release.source.digest
    after = release.read()
    assert after["HttpHeaders"] == UNKNOWN_KEYS["HttpHeaders"]
    assert set(after["auths"]) == {release.local.host}
    assert "x-custom" not in after  # the damage
    assert "x-note" not in after["auths"][release.local.host]

"""The fan-out with regctl 0.11: where it reads logins, and where it writes its own.

regctl reads registry logins from `$DOCKER_CONFIG/config.json` (so from a
scope), but `regctl registry login` and `regctl registry set` write regctl's
own `~/.regctl/config.json` — the password in plain text, as "pass" — and
never the Docker config. A scope contains that only with `--isolate-home`
(HOME inside the scope). Plain-HTTP registries need `regctl registry set
--tls disabled HOST`; the TLS one is trusted through SSL_CERT_FILE.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import RegistryFactory
from tests.e2e.fanout_helpers import Release, Target, q, tool_paths


def regctl_target(regctl: str, target: Target, login: bool = True, src: str = '"$SRC"') -> str:
    r = q(regctl)
    steps = [f'{r} registry set --skip-check --tls disabled "$LOCAL"']
    if not target.registry.tls:
        steps.append(f'{r} registry set --skip-check --tls disabled "$TARGET"')
    if login:
        steps.append(f'printf %s "$TARGET_PASSWORD" | {r} registry login "$TARGET" -u "$TARGET_USER" --pass-stdin')
    steps.append(f'{r} image copy {src} "$DST"')
    if login:
        steps.append(f'{r} registry logout "$TARGET"')
    return " && ".join(steps)


@pytest.mark.parametrize("login", [True, False], ids=["regctl-login-logout", "scope-login-only"])
def test_regctl_fanout_in_scopes_with_isolated_home(
    login: bool, tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """With --isolate-home, regctl's own config lives and dies in the scope:
    the job's HOME never gets a ~/.regctl, the base keeps every byte. The
    source login comes from the scope's Docker config (regctl is never told
    about the local registry's credentials), and without `regctl registry
    login` the target's login does too."""
    regctl = tool_paths("regctl", "skopeo")["regctl"]
    release = Release(tmp_path, e2e_env, registry_factory)
    home = Path(release.env["HOME"])
    before = release.config.read_bytes()
    home_before = sorted(p.name for p in home.iterdir())
    for target in release.targets:
        result = release.exec(target, regctl_target(regctl, target, login), "--isolate-home")
        assert result.returncode == 0, result.stderr
        assert release.config.read_bytes() == before
    assert not (home / ".regctl").exists()
    assert sorted(p.name for p in home.iterdir()) == home_before
    for target in release.targets:
        assert release.digest(target) == release.source.digest


def _regctl_config(home: Path) -> dict[str, dict[str, str]]:
    return dict(json.loads((home / ".regctl" / "config.json").read_text())["hosts"])


def test_control_regctl_leaves_a_plain_text_password_in_home(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """Without authscope, and in a scope without --isolate-home, the same
    regctl steps write ~/.regctl/config.json. When the copy fails, the logout
    never runs, and the target's password stays there in plain text after the
    job; the Docker base is not involved, so the base guard sees nothing.
    A run that reaches `regctl registry logout` removes "user" and "pass" but leaves the
    file with its TLS settings."""
    regctl = tool_paths("regctl", "skopeo")["regctl"]
    release = Release(tmp_path, e2e_env, registry_factory, targets=[False])
    [target] = release.targets
    home = Path(release.env["HOME"])
    before = release.config.read_bytes()
    failing = regctl_target(regctl, target, src='"$LOCAL/app:no-such-tag"')

    result = release.sh(failing, target)  # no authscope at all
    assert result.returncode != 0
    hosts = _regctl_config(home)
    assert hosts[target.host]["pass"] == target.registry.password  # the damage
    assert hosts[release.local.host]["tls"] == "disabled"
    assert release.config.read_bytes() == before

    # A run that gets to its logout removes "pass" again, but not the file.
    result = release.sh(regctl_target(regctl, target), target)
    assert result.returncode == 0, result.stderr
    assert release.digest(target) == release.source.digest
    hosts = _regctl_config(home)
    assert "pass" not in hosts[target.host] and "user" not in hosts[target.host]
    assert hosts[target.host]["tls"] == "disabled"

    (home / ".regctl" / "config.json").unlink()
    result = release.exec(target, failing)  # a scope, but HOME is the job's
    assert result.returncode != 0
    assert _regctl_config(home)[target.host]["pass"] == target.registry.password
    assert release.config.read_bytes() == before

    (home / ".regctl" / "config.json").unlink()
    result = release.exec(target, failing, "--isolate-home")
    assert result.returncode != 0
    assert not (home / ".regctl" / "config.json").exists()

"""No default credential store from a scope (issue 12, item 5), with the real docker CLI.

The docker CLI picks a credential store on its own whenever a config holds
no auth at all (docker/cli DetectDefaultStore: docker-credential-pass when
`pass` is on PATH, else docker-credential-secretservice), and then stores
and erases logins there. A recording helper stands on PATH under those
names and logs every call. Inside `authscope exec` it is never called:
after a `docker logout` of the scope's only entry the scope's config still
holds one (the sentinel), so docker logs in inline; after a wipe of the whole
file docker finds the scope's refusing shim first, and the login fails
loudly instead of storing into the shared helper. The controls run the same
commands with a plain DOCKER_CONFIG and show the helper's `store`/`erase`.

docker login and logout need no daemon: they talk to the registry only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from authscope import dockerconfig as dc
from tests.e2e.conftest import RegistryFactory
from tests.e2e.fanout_helpers import FIXTURE_BIN, TOOLS_BIN, b64, q, tool_paths
from tests.support import Registry

RECORDER = FIXTURE_BIN / "docker-credential-recording"
STORES = ("secretservice", "pass")  # what DetectDefaultStore picks on Linux

# The scope's config after the login, as {"keys": [...], "auths": {host: [fields]}} (no values: they are masked).
SHOW = (
    "python3 -c \"import json,os; c=json.load(open(os.environ['DOCKER_CONFIG'] + '/config.json'));"
    " print(json.dumps({{'keys': sorted(c), 'auths': {{k: sorted(v) for k, v in c['auths'].items()}}}}))\""
)
LOGOUT_FIRST = (
    '{docker} logout "$TARGET"; '
    'printf %s "$TARGET_PASSWORD" | {docker} login -u "$TARGET_USER" --password-stdin "$TARGET"; '
    'echo "login exit $?"; ' + SHOW + '; {docker} logout "$TARGET"; echo "logout exit $?"'
)
WIPE_FIRST = (
    "echo '{{}}' > \"$DOCKER_CONFIG/config.json\"; "
    'printf %s "$TARGET_PASSWORD" | {docker} login -u "$TARGET_USER" --password-stdin "$TARGET"; '
    'echo "login exit $?"; '
    '{docker} logout "$TARGET"; echo "logout exit $?"'
)


@dataclass
class Job:
    registry: Registry
    env: dict[str, str]
    base: Path
    log: Path
    docker: str

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def job(tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory) -> Job:
    docker = tool_paths("docker")["docker"]
    registry = registry_factory("remote")
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    for store in STORES:
        (helpers / f"docker-credential-{store}").symlink_to(RECORDER)
    env = dict(e2e_env)
    env["PATH"] = os.pathsep.join([str(helpers), str(TOOLS_BIN), env["PATH"]])
    env["LANG"] = "C.UTF-8"
    env["RECORDING_HELPER_STORE"] = str(tmp_path / "helper-store.json")
    env["RECORDING_HELPER_LOG"] = str(tmp_path / "helper.log")
    env["TARGET"] = registry.host
    env["TARGET_USER"] = registry.username
    env["TARGET_PASSWORD"] = registry.password
    scopes = tmp_path / "scopes"
    scopes.mkdir(mode=0o700)
    env["AUTHSCOPE_SCOPE_DIR"] = str(scopes)
    base = Path(env["DOCKER_CONFIG"])
    base.mkdir(mode=0o700, exist_ok=True)
    # The job's base holds no login of its own: the scope's only entry is the target's.
    (base / "config.json").write_text('{"auths": {}}\n')
    return Job(registry, env, base, tmp_path / "helper.log", docker)


def in_scope(job: Job, script: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "authscope", "exec", "--registry", job.registry.host, "-u", job.registry.username]
    argv += ["--password-env", "TARGET_PASSWORD", "--", "sh", "-c", script.format(docker=q(job.docker))]
    return run(argv, job.env)


def plain(job: Job, script: str, config: Path) -> subprocess.CompletedProcess[str]:
    """The control: the same commands with a plain DOCKER_CONFIG holding the target's login."""
    config.mkdir(mode=0o700)
    entry = {"auth": b64(job.registry.username, job.registry.password)}
    (config / "config.json").write_text(json.dumps({"auths": {job.registry.host: entry}}))
    return run(["sh", "-c", script.format(docker=q(job.docker))], dict(job.env, DOCKER_CONFIG=str(config)))


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180, check=False
    )
    for secret in (env["TARGET_PASSWORD"], b64(env["TARGET_USER"], env["TARGET_PASSWORD"])):
        assert secret not in result.stdout + result.stderr, "a test secret was printed"
    return result


def test_logout_of_the_only_entry_then_login_never_reaches_the_default_store(job: Job) -> None:
    before = (job.base / "config.json").read_bytes()
    result = in_scope(job, LOGOUT_FIRST)
    assert result.returncode == 0, result.stderr
    assert job.calls() == [], "the shared credential helper was called from a scope"
    lines = result.stdout.splitlines()
    assert "Login Succeeded" in result.stdout and "login exit 0" in lines and "logout exit 0" in lines
    # docker logged in inline, beside the sentinel that kept it from choosing a store.
    config = json.loads(next(line for line in lines if line.startswith("{")))
    assert config == {"keys": ["auths"], "auths": {dc.SENTINEL: [], job.registry.host: ["auth"]}}
    assert (job.base / "config.json").read_bytes() == before
    assert not list(Path(job.env["AUTHSCOPE_SCOPE_DIR"]).iterdir())


def test_wipe_then_login_finds_the_refusing_shim_not_the_store(job: Job) -> None:
    """A tool wipes the whole file: docker detects a default store, and finds
    the scope's shim, which refuses and says why; the helper is never run."""
    before = (job.base / "config.json").read_bytes()
    result = in_scope(job, WIPE_FIRST)
    assert result.returncode == 0, result.stderr
    assert job.calls() == [], "the shared credential helper was called from a scope"
    assert "login exit 0" not in result.stdout  # refused, loudly
    assert "docker-credential-secretservice refused" in result.stdout + result.stderr
    assert (job.base / "config.json").read_bytes() == before


@pytest.mark.parametrize("script", [LOGOUT_FIRST, WIPE_FIRST], ids=["logout-first", "wipe-first"])
def test_control_plain_docker_config_stores_and_erases_through_the_default_store(
    job: Job, script: str, tmp_path: Path
) -> None:
    result = plain(job, script, tmp_path / "plain-config")
    assert result.returncode == 0, result.stderr
    assert "login exit 0" in result.stdout.splitlines()
    calls = job.calls()
    assert f"store {job.registry.host}" in calls, (calls, result.stdout, result.stderr)
    assert f"erase {job.registry.host}" in calls

"""podman 4.3 and buildah 1.28 as real clients: login, push, logout in scopes, and fan-outs.

Both use containers/image and containers/common (the library skopeo uses too):
`login` and `logout` write `$REGISTRY_AUTH_FILE`, else
`$DOCKER_CONFIG/config.json`, else `$XDG_RUNTIME_DIR/containers/auth.json`
(the runner's file, which every job of that user shares). A scope sets both
variables to its own config.json. Besides the job's base Docker config, each
test gives the runner such a shared `$XDG_RUNTIME_DIR/containers/auth.json`
holding the local login, and checks it byte for byte too.

Each run keeps its images in its own storage (`--root`/`--runroot` in the
scope, vfs), never the machine's /var/lib/containers. `podman run` is refused
on this machine (crun cannot set RLIMIT_NPROC); pull and push need no runtime.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from authscope.dockerconfig import SENTINEL
from tests.e2e.conftest import RegistryFactory
from tests.e2e.fanout_helpers import AUTHSCOPE, UNAUTHORIZED, Release, Target, b64, q, tool_paths
from tests.support import build_oci_layout

TOOLS = ("podman", "buildah")
# What the scope variables leave to the tool: run it with only this one set.
RELYING_ON = {"DOCKER_CONFIG": "REGISTRY_AUTH_FILE", "REGISTRY_AUTH_FILE": "DOCKER_CONFIG"}


def storage(where: str = '"$AUTHSCOPE_SCOPE"') -> str:
    """Shell: the run's own image storage under ``where`` (a storage.conf, as the
    adapter writes one: podman refuses a --runroot longer than 50 characters)."""
    conf = f"{where}/storage.conf"
    fmt = '[storage]\\ndriver = \\"vfs\\"\\ngraphroot = \\"%s/storage\\"\\nrunroot = \\"%s/storage-run\\"\\n'
    return f'mkdir -p {where} && printf "{fmt}" {where} {where} > {conf} && export CONTAINERS_STORAGE_CONF={conf}'


def state(tool: str, where: str = '"$AUTHSCOPE_SCOPE"') -> str:
    """podman's own state (events, locks) under ``where`` too, never /run/libpod."""
    return f"--tmpdir={where}/podman-tmp --events-backend=none" if tool == "podman" else ""


def tls(target: Target) -> str:
    cert_dir = target.registry.cert_dir
    return f"--cert-dir={q(cert_dir)}" if cert_dir else "--tls-verify=false"


def client_target(
    tool: str, target: Target, relying_on: str | None, logout: str, where: str = '"$AUTHSCOPE_SCOPE"'
) -> str:
    """login (password on stdin), pull the source, push it, log out, for one target.

    `relying_on`: run the tool with only that variable set (None: as given).
    `logout`: "logout" (this target) or "logout --all" (every login).
    """
    exe = q(tool_paths(tool)[tool])
    if relying_on is not None:
        exe = f"env -u {RELYING_ON[relying_on]} {exe}"
    store = f"{exe} {state(tool, where)}"
    what = "--all" if logout == "logout --all" else '"$TARGET"'
    return (
        f"{storage(where)}"
        f' && printf %s "$TARGET_PASSWORD" | {exe} login {tls(target)} -u "$TARGET_USER" --password-stdin "$TARGET"'
        f' && {store} pull --tls-verify=false "docker://$SRC"'
        f' && {store} push {tls(target)} "$SRC" "docker://$DST"'
        f" && {exe} logout {what}"
    )


# The logins left in the scope's config after the commands: evidence of which file the tool wrote.
IN_SCOPE = "python3 -c \"import json,os; print(sorted(json.load(open(os.environ['AUTHSCOPE_SCOPE'] + '/config.json'))['auths']))\""


def runner_auth(release: Release) -> Path:
    """The runner's shared containers auth file, holding the local login (and a key of its own)."""
    path = Path(release.env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    path.parent.mkdir(mode=0o700)
    doc = {"auths": {release.local.host: {"auth": b64(release.local.username, release.local.password)}}}
    path.write_text(json.dumps({**doc, "x-runner": "keep"}, indent="\t") + "\n")
    path.chmod(0o600)
    return path


def new_release(tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory, *tools: str) -> Release:
    tool_paths(*tools)
    return Release(tmp_path, e2e_env, registry_factory)


# -- login / push / logout inside scopes --------------------------------------------------------


@pytest.mark.parametrize("relying_on", sorted(RELYING_ON))
@pytest.mark.parametrize("tool", TOOLS)
def test_login_push_logout_in_scopes_keep_base_and_runner_auth_file_byte_identical(
    tool: str, relying_on: str, tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """`podman`/`buildah` login, pull, push, logout per target in a scope (the
    second target with `logout --all`), relying on REGISTRY_AUTH_FILE or on
    DOCKER_CONFIG alone: the logins land in and leave the scope's config.json,
    the base and the runner's `$XDG_RUNTIME_DIR/containers/auth.json` keep
    every byte, and every target gets the image."""
    release = new_release(tmp_path, e2e_env, registry_factory, tool)
    runner = runner_auth(release)
    base_before, runner_before = release.config.read_bytes(), runner.read_bytes()
    for target, logout in zip(release.targets, ("logout", "logout --all"), strict=True):
        result = release.exec(target, f"{client_target(tool, target, relying_on, logout)} && {IN_SCOPE}")
        assert result.returncode == 0, result.stderr
        assert "Login Succeeded!" in result.stdout
        left = result.stdout.splitlines()[-1]
        # The scope's config held the local login and the target's: logout took only what it was told.
        assert left == ("[]" if logout == "logout --all" else repr(sorted([release.local.host, SENTINEL])))
        assert release.config.read_bytes() == base_before
        assert runner.read_bytes() == runner_before
    for target in release.targets:
        assert release.digest(target) is not None, target.dst


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("shared", ["base", "runner"])
def test_control_logout_all_on_a_shared_auth_file_loses_the_local_login(
    shared: str, tool: str, tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """Without authscope, the same per-target commands share one auth file:
    the base (a job that points REGISTRY_AUTH_FILE at its Docker config) or
    the runner's `$XDG_RUNTIME_DIR/containers/auth.json` (neither variable
    set). The first target's `logout --all` empties it, and the next target
    can no longer pull the source."""
    release = new_release(tmp_path, e2e_env, registry_factory, tool)
    runner = runner_auth(release)
    first, second = release.targets
    work = tmp_path / "control-storage"

    def env(target: Target) -> dict[str, str]:
        e = release.target_env(target)
        if shared == "base":
            e["REGISTRY_AUTH_FILE"] = str(release.config)
        else:
            del e["DOCKER_CONFIG"]
        return e

    result = release.sh(client_target(tool, first, None, "logout --all", q(work / "1")), env=env(first))
    assert result.returncode == 0, result.stderr
    assert release.digest(first) is not None
    wiped = release.config if shared == "base" else runner
    assert json.loads(wiped.read_text())["auths"] == {}  # the local login is gone

    result = release.sh(client_target(tool, second, None, "logout", q(work / "2")), env=env(second))
    assert result.returncode != 0
    assert UNAUTHORIZED.search(result.stderr), result.stderr
    assert release.digest(second) is None


# -- what a command can still reach from a scope ------------------------------------------------


@pytest.mark.parametrize("tool", TOOLS)
def test_stripped_env_reaches_the_runner_auth_file_unless_isolate_home(
    tool: str, tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """A command that unsets both REGISTRY_AUTH_FILE and DOCKER_CONFIG before
    `logout --all` goes to `$XDG_RUNTIME_DIR/containers/auth.json`. That file
    is not the Docker base, so the guard does not see it: the scope alone
    lets the runner's file be emptied (exit 0). With `--isolate-home`,
    XDG_RUNTIME_DIR is the scope's own, and the runner's file keeps every byte."""
    release = new_release(tmp_path, e2e_env, registry_factory, tool)
    runner = runner_auth(release)
    target = release.targets[0]
    before = runner.read_bytes()
    script = f"env -u REGISTRY_AUTH_FILE -u DOCKER_CONFIG {q(tool_paths(tool)[tool])} logout --all"

    result = release.exec(target, script, "--isolate-home")
    assert result.returncode == 0, result.stderr
    assert runner.read_bytes() == before

    result = release.exec(target, script)
    assert result.returncode == 0, result.stderr
    assert json.loads(runner.read_text())["auths"] == {}  # the damage the scope cannot see


def test_authfile_pointing_at_the_base_is_caught_restored_and_exits_3(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """`podman logout --all --authfile BASE/config.json` in a scope writes the
    base itself: the guard restores the local login and every key podman
    dropped, says BASE INTEGRITY, and exits 3."""
    release = new_release(tmp_path, e2e_env, registry_factory, "podman")
    target = release.targets[0]
    before = release.read()
    podman = q(tool_paths("podman")["podman"])
    result = release.exec(target, f"{podman} logout --all --authfile {q(release.config)}")
    assert result.returncode == 3, result.stderr
    assert "BASE INTEGRITY" in result.stderr
    assert release.read() == before


# -- fan-outs with tool: podman and tool: buildah ----------------------------------------------


def publish_with_buildah(release: Release, tmp_path: Path) -> tuple[str, str]:
    """A source whose layers containers/image compressed, as a team that builds
    with podman or buildah has: pushed with buildah to the local registry.
    (ref, digest); the digest read back from the registry."""
    layout = tmp_path / "built-layout"
    build_oci_layout(layout, tag="1.0", seed=17)  # other layers than the skopeo source's: no blob is reused
    ref = f"{release.local.host}/built/app:1.0"
    env = dict(release.verify_env, REGISTRY_AUTH_FILE=str(release.verify_auth))
    buildah = q(tool_paths("buildah")["buildah"])
    # buildah pushes only images of its storage: the one pulled, by its id.
    script = f'{storage(q(tmp_path / "publish"))} && id=$({buildah} pull -q oci:{q(layout)}:1.0) && {buildah} push -q --tls-verify=false "$id" docker://{ref}'
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    digest = release.local.manifest_digest("built/app", "1.0")
    assert digest is not None
    return ref, digest


def targets_file(release: Release, tool: str, source: str) -> Path:
    doc = {
        "source": {"image": source, "insecure": True},
        "tags": ["1.0", "latest"],
        "tool": tool,
        "jobs": 2,
        "targets": [],
    }
    for i, target in enumerate(release.targets, start=1):
        entry: dict[str, object] = {"name": f"remote-{i}", "registry": target.host, "repository": "release/app"}
        if target.registry.ca_file:
            entry["ca_file"] = str(target.registry.ca_file)
        else:
            entry["insecure"] = True
        entry.update(username=target.registry.username, password_env=f"REMOTE_{i}_PASSWORD")
        doc["targets"].append(entry)
    path = release.tmp_path / f"{tool}.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def fanout(release: Release, path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(release.env, **extra)
    for i, target in enumerate(release.targets, start=1):
        env[f"REMOTE_{i}_PASSWORD"] = target.registry.password
    result = release.authscope("fanout", "-f", str(path), *args, env=env)
    assert not release.scopes_left(), "a scope (or its image storage) outlived the fan-out"
    return result


@pytest.mark.parametrize("tool", TOOLS)
def test_fanout_with_podman_or_buildah_lands_the_source_digest(
    tool: str, tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """`tool: podman` / `tool: buildah`, two targets at once (plain HTTP, and
    TLS with a CA file), two tags: each target's pull goes into its own
    storage in its scope, its pushes land the source's digest under every
    tag, and the base and the runner's auth file keep every byte."""
    release = new_release(tmp_path, e2e_env, registry_factory, tool, "buildah")
    ref, digest = publish_with_buildah(release, tmp_path)
    runner = runner_auth(release)
    base_before, runner_before = release.config.read_bytes(), runner.read_bytes()

    # The job's own storage, which the copies must not use.
    job_storage = tmp_path / "job-storage"
    job_conf = tmp_path / "job-storage.conf"
    job_conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{job_storage}"\nrunroot = "{job_storage}-run"\n')

    result = fanout(release, targets_file(release, tool, ref), CONTAINERS_STORAGE_CONF=str(job_conf))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "success, 2/2 targets landed" in result.stdout
    assert f"$ {tool} " in result.stdout
    assert f"pull --tls-verify=false docker://{release.local.host}/built/app@{digest}" in result.stdout  # by digest
    assert "push --tls-verify=true '--cert-dir={scope}/certs/target'" in result.stdout
    assert not job_storage.exists()  # each target pulled into its scope's storage
    for target in release.targets:
        for tag in ("1.0", "latest"):
            assert target.registry.manifest_digest("release/app", tag) == digest, (target.host, tag)
    assert release.config.read_bytes() == base_before
    assert runner.read_bytes() == runner_before


def test_fanout_with_podman_fails_a_source_whose_layers_it_compresses_anew(
    tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory
) -> None:
    """The limit of a pull and push through local storage: the skopeo-published
    source's layers were compressed by another gzip (Python's zlib here, as
    docker or crane would), podman compresses them anew, the manifest
    changes, and the digest check fails each target with a hint that says why."""
    release = new_release(tmp_path, e2e_env, registry_factory, "podman")
    result = fanout(release, targets_file(release, "podman", release.source.ref))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"the source has {release.source.digest}" in result.stdout
    assert "compressed afresh from local storage" in result.stdout
    for target in release.targets:
        landed = target.registry.manifest_digest("release/app", "1.0")
        assert landed is not None and landed != release.source.digest


@pytest.mark.parametrize("tool", TOOLS)
def test_pull_once_with_podman_or_buildah_is_a_config_error(tool: str, tmp_path: Path, e2e_env: dict[str, str]) -> None:
    """pull_once needs a tool that can push from one local OCI layout; podman and
    buildah pull into each target's storage instead: refused when the file is
    loaded (exit 2, nothing contacted), never an internal error."""
    path = tmp_path / "authscope.yml"
    doc = {
        "source": "127.0.0.1:9/app:1.0",
        "tool": tool,
        "pull_once": True,
        "targets": [
            {"name": "one", "registry": "127.0.0.1:9", "repository": "a", "username": "u", "password_env": "P"}
        ],
    }
    path.write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [*AUTHSCOPE, "fanout", "-f", str(path), "--dry-run"],
        env=dict(e2e_env, P="x"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"pull_once needs every target to use one tool, crane, skopeo or regctl (targets[0] 'one' uses {tool})" in (
        result.stderr
    )

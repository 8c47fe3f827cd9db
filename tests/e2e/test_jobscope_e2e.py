"""Job scopes end to end: concurrent GitLab jobs on one shell runner, real tools.

gitlab-ci-local runs the five jobs of tests/e2e/gitlab_ci_local/jobscope.gitlab-ci.yml
at the same time (`--concurrency 5`; the jobs meet at barriers, so none can
pass one before all have reached it). Each uses the real docker CLI and crane
directly: logins, `docker logout`, `crane auth logout`, wipes of "the"
config, then copies from the source after the others wiped. The runner's
base is ~/.docker/config.json in the test's HOME (no DOCKER_CONFIG), holding
an entry of its own and keys tools don't know. The control pipeline is the
same jobs without the scope component.

Registries are real (tests/support): the source on "local" as $CI_REGISTRY,
one target. Secrets are CI/CD variables in .gitlab-ci-local-variables.yml,
never on a command line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from authscope.dockerconfig import SENTINEL
from tests.e2e import test_gitlab_ci_local as gcl
from tests.e2e.conftest import RegistryFactory
from tests.e2e.fanout_helpers import b64, tool_paths
from tests.e2e.test_gitlab_ci_local import OVERRIDDEN, Project, Run, gitlab_ci_local, variable
from tests.support import Registry, SourceImage

# The gitlab-ci-local fixtures: a throwaway project, and a wheel of this checkout.
project = gcl.project
wheel = gcl.wheel

JOBS = ("copier-docker", "copier-crane", "logout-docker", "wipe-crane", "wipe-home")
RUNNER_CONFIG = {
    "auths": {"runner-cache.example.com": {"auth": b64("runner", "runner-test-0004")}},
    "HttpHeaders": {"User-Agent": "authscope-e2e-runner"},
    "x-runner": {"keep": [1, 2]},
}


def runner_base(proj: Project) -> Path:
    """The shell runner's ~/.docker/config.json (HOME is the test's); DOCKER_CONFIG unset."""
    proj.env.pop("DOCKER_CONFIG", None)
    base = Path(proj.env["HOME"]) / ".docker" / "config.json"
    base.parent.mkdir(mode=0o700, exist_ok=True)
    base.write_text(json.dumps(RUNNER_CONFIG, indent="\t") + "\n")
    base.chmod(0o600)
    return base


def install(proj: Project, wheel_path: Path) -> None:
    """authscope on the runner, once (five concurrent installs into one prefix would race)."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--upgrade"]
    proc = subprocess.run(
        [*pip, "--target", proj.env["AUTHSCOPE_TEST_PREFIX"], str(wheel_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def run_concurrently(proj: Project) -> Run:
    argv = [gitlab_ci_local(), "--force-shell-executor", "--shell-executor-no-image", "--no-color"]
    argv += ["--concurrency", str(len(JOBS)), "--ignore-predefined-vars", OVERRIDDEN]
    proc = subprocess.run(
        argv, cwd=proj.path, env=proj.env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=270
    )
    run = Run(proc.returncode, proc.stdout, proc.stderr)
    proj.runs.append(run)
    return run


def pipeline_variables(source: SourceImage, remote: Registry, barrier: Path) -> dict[str, Any]:
    local = source.registry
    barrier.mkdir()
    return {
        "CI_REGISTRY": variable(local.host),
        "CI_REGISTRY_USER": variable(local.username),
        "CI_REGISTRY_PASSWORD": variable(local.password),
        "REMOTE": variable(remote.host),
        "REMOTE_USER": variable(remote.username),
        "REMOTE_PASSWORD": variable(remote.password),
        "BARRIER": variable(str(barrier)),
        "JOBS": variable(str(len(JOBS))),
    }


def auths_shown(run: Run, job: str) -> set[str]:
    """The registries in the job's Docker config at the end of its script (its `auths=` line)."""
    found = re.findall(rf"^{re.escape(job)}\s+>\s+auths=(.*)$", run.output, re.MULTILINE)
    assert found, f"{job} printed no auths= line:\n{run.output}"
    # The scope's sentinel entry (no login; it keeps docker off default stores) aside.
    return {name for name in found[-1].strip().split(",") if name and name != SENTINEL}


def secrets(*registries: Registry) -> list[str]:
    return [r.password for r in registries] + [b64(r.username, r.password) for r in registries]


def test_concurrent_jobs_in_job_scopes_never_touch_each_other_or_the_runner(
    project: Any, wheel: Path, source_image: SourceImage, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    tool_paths("docker", "crane")
    remote = registry_factory("remote", username="robot")
    proj = project("jobscope.gitlab-ci.yml", pipeline_variables(source_image, remote, tmp_path / "barrier"))
    base = runner_base(proj)
    before, listing = base.read_bytes(), sorted(p.name for p in base.parent.iterdir())
    install(proj, wheel)

    run = run_concurrently(proj)
    assert run.returncode == 0, run.output
    for job in JOBS:
        assert run.summary(job) == "PASS", run.output

    # Every copy lands: the copiers' logins survived four other jobs' logouts and wipes.
    for job in ("copier-docker", "copier-crane"):
        assert remote.manifest_digest(f"{job}/app", "1.0") == source_image.digest
        assert auths_shown(run, job) == {"runner-cache.example.com", source_image.registry.host, remote.host}
    # Each job saw only what it did itself.
    assert auths_shown(run, "logout-docker") == {"runner-cache.example.com"}
    assert auths_shown(run, "wipe-crane") == set()
    assert auths_shown(run, "wipe-home") == set()
    # The runner's base: every byte, and nothing written beside it (no lock, no journal).
    assert base.read_bytes() == before
    assert sorted(p.name for p in base.parent.iterdir()) == listing
    assert list(proj.scopes.iterdir()) == []  # every job's after_script closed its scope
    assert len(re.findall(r"authscope: job \d+: closed .*; base .* intact", run.output)) == len(JOBS)
    assert "BASE INTEGRITY" not in run.output
    for secret in secrets(source_image.registry, remote):
        assert secret not in run.output


def test_control_without_the_component_one_jobs_wipe_breaks_another_jobs_copy(
    project: Any, wheel: Path, source_image: SourceImage, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    tool_paths("docker", "crane")
    remote = registry_factory("remote", username="robot")
    proj = project("jobscope-control.gitlab-ci.yml", pipeline_variables(source_image, remote, tmp_path / "barrier"))
    base = runner_base(proj)
    before = base.read_bytes()

    run = run_concurrently(proj)
    assert run.returncode == 1, run.output
    for job in ("copier-docker", "copier-crane"):
        assert run.summary(job) == "FAIL", run.output
        assert remote.manifest_digest(f"{job}/app", "1.0") is None
    assert re.search(r"copier-(docker|crane)\s+>.*(UNAUTHORIZED|unauthorized|authentication required)", run.output)
    assert base.read_bytes() != before  # the runner's own file: wiped by a job


# -- exec and fanout inside a job scope ------------------------------------------------------

TARGETS = """\
source: {image: "${CI_REGISTRY}/app:1.0", insecure: true}
tags: ["1.0"]
tool: custom
targets:
  - name: remote
    registry: ${REMOTE}
    repository: fanned/app
    username: robot
    password_env: REMOTE_PASSWORD
    insecure: true
    # a tool that ignores DOCKER_CONFIG and writes ~/.docker/config.json after its copy
    command: ["sh", "-c", "crane copy --insecure {source} {destination} && echo '{}' > ~/.docker/config.json"]
"""


def test_fanout_in_a_job_scope_reads_the_source_with_the_jobs_login_and_guards_the_job_scope(
    source_image: SourceImage, registry_factory: RegistryFactory, e2e_env: dict[str, str], tmp_path: Path
) -> None:
    """The two levels compose: fanout's target scopes layer over the job scope
    (the source's login is only there, not in the runner's base), and fanout's
    guard protects the job scope's config like any base."""
    paths = tool_paths("crane")
    remote = registry_factory("remote", username="robot")
    local = source_image.registry
    env = {k: v for k, v in e2e_env.items() if k != "DOCKER_CONFIG"}
    env.update(
        PATH=f"{Path(paths['crane']).parent}{os.pathsep}{env['PATH']}",
        AUTHSCOPE_SCOPE_DIR=str(tmp_path / "scopes"),
        CI_JOB_ID="81",
        CI_PROJECT_ID="5",
        CI_PIPELINE_ID="60",
        CI_REGISTRY=local.host,
        CI_REGISTRY_USER=local.username,
        CI_REGISTRY_PASSWORD=local.password,
        REMOTE=remote.host,
        REMOTE_PASSWORD=remote.password,
    )
    (tmp_path / "scopes").mkdir(mode=0o700)
    (tmp_path / "authscope.yml").write_text(TARGETS)
    base = Path(env["HOME"]) / ".docker" / "config.json"
    base.parent.mkdir(mode=0o700)
    base.write_text(json.dumps(RUNNER_CONFIG, indent="\t") + "\n")
    before = base.read_bytes()
    authscope = f"{sys.executable} -m authscope"
    show = 'python3 -c \'import json,os; print(sorted(json.load(open(os.environ["DOCKER_CONFIG"] + "/config.json")).get("auths", {})))\''
    script = (
        f'set -e\neval "$({authscope} job open --isolate-home)"\n'
        f"{authscope} fanout -f authscope.yml || echo fanout exited $?\n{show}\n"
        "sh -c \"echo '{}' > ~/.docker/config.json\"\n"  # the control: the same tool, not in a scope
        f"{show}\n{authscope} job close\n"
    )
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert remote.manifest_digest("fanned/app", "1.0") == source_image.digest
    lines = proc.stdout.splitlines()
    assert "fanout exited 3" in lines and "BASE INTEGRITY" in proc.stdout + proc.stderr
    job_auths = str(sorted(["runner-cache.example.com", local.host, SENTINEL]))
    assert lines[-2:] == [job_auths, "[]"]  # restored by fanout's guard; then, the control's damage
    assert base.read_bytes() == before
    assert list((tmp_path / "scopes").iterdir()) == []
    for secret in secrets(local, remote):
        assert secret not in proc.stdout + proc.stderr

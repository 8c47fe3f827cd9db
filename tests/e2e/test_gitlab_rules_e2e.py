"""GitLab's rules end to end, against real registries (issue 20; issue 12 item 10).

- The distributed fan-out with every target variable scoped to the target's
  environment: the generator has none of them, each child job only its own
  (password_file and ca_file as GitLab file variables: paths; one target over
  TLS with its CA from a scoped variable). Run job by job as GitLab gives each
  its variables, and under gitlab-ci-local with environment-scoped values.
- A component input holding `"; touch FILE; :"` runs nothing (gitlab-ci-local).
- One deployment per target and run, counted on the fake GitLab.
- A credential never reaches a custom command's argv, the `$ ...` log line or
  --dry-run; a tool's megabyte line is one capped line in the log and reports.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import test_gitlab_ci_local as gitlab_ci_local
from tests.e2e.conftest import RegistryFactory, require_tools
from tests.e2e.test_gitlab_ci_local import Release, assert_clean, git
from tests.gitlab_fake import JOB_TOKEN, FakeGitLab
from tests.support import SourceImage

# The gitlab-ci-local tests' fixtures: a throwaway project, its registries, a wheel of this checkout.
project = gitlab_ci_local.project
release = gitlab_ci_local.release
wheel = gitlab_ci_local.wheel

REPO_ROOT = Path(__file__).resolve().parents[2]
AUTHSCOPE = [sys.executable, "-m", "authscope"]
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"

SCOPED_FILE = """\
source: {image: "${LOCAL}/app:1.0", insecure: true}
tags: ["1.0", latest]
targets:
  - name: remote-1
    registry: ${REMOTE_1}
    repository: release/app
    username_env: REMOTE_1_USER
    password_file: ${REMOTE_1_PASSWORD}   # a file variable: its path
    insecure: true
  - name: remote-2
    registry: ${REMOTE_2}
    repository: release/app
    username_env: REMOTE_2_USER
    password_file: ${REMOTE_2_PASSWORD}
    ca_file: ${REMOTE_2_CA}               # this TLS registry's CA, a file variable too
"""


def base_env(e2e_env: Mapping[str, str], source: SourceImage) -> dict[str, str]:
    """What every job has: PATH with the tools, the local registry, the base logged in."""
    require_tools("crane")
    env = dict(e2e_env)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(name, None)
    env["PATH"] = f"{TOOLS_BIN}{os.pathsep}{env['PATH']}"
    env["LOCAL"] = source.registry.host
    login = [*AUTHSCOPE, "login", source.registry.host, "-u", source.registry.username, "--password-env", "P"]
    subprocess.run(login, env={**env, "P": source.registry.password}, check=True, capture_output=True, timeout=60)
    return env


def write_file_variable(tmp: Path, name: str, content: str) -> str:
    path = tmp / "file-variables" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(content)
    return str(path)


def authscope(
    argv: list[str], env: Mapping[str, str], patch: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`authscope ARGV` in a fresh interpreter; ``patch``: Python run first, to
    switch a protection off for a control."""
    code = f"import sys\n{patch}\nfrom authscope.cli import main\nraise SystemExit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=240
    )


def run_job(job: Mapping[str, Any], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """A generated child job's script line, run as its job would."""
    (line,) = job["script"]
    argv = shlex.split(line)
    assert argv[0] == "authscope"
    return subprocess.run(
        [*AUTHSCOPE, *argv[1:]], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=240, check=False
    )


# -- 1. environment-scoped variables, job by job -----------------------------------------


def test_generated_child_jobs_each_with_only_their_own_scoped_variables(
    tmp_path: Path, e2e_env: dict[str, str], source_image: SourceImage, registry_factory: RegistryFactory
) -> None:
    r1 = registry_factory("remote-1", username="robot$r1+ci")
    r2 = registry_factory("remote-2", tls=True, username="harbor-robot")
    assert r2.ca_file is not None
    common = base_env(e2e_env, source_image)
    (tmp_path / "authscope.yml").write_text(SCOPED_FILE)
    scoped = {
        "registry/remote-1": {
            "REMOTE_1": r1.host,
            "REMOTE_1_USER": r1.username,
            "REMOTE_1_PASSWORD": write_file_variable(tmp_path, "REMOTE_1_PASSWORD", r1.password + "\n"),
        },
        "registry/remote-2": {
            "REMOTE_2": r2.host,
            "REMOTE_2_USER": r2.username,
            "REMOTE_2_PASSWORD": write_file_variable(tmp_path, "REMOTE_2_PASSWORD", r2.password + "\n"),
            "REMOTE_2_CA": write_file_variable(tmp_path, "REMOTE_2_CA", Path(r2.ca_file).read_text()),
        },
    }
    generator = subprocess.run(
        [*AUTHSCOPE, "pipeline", "-f", "authscope.yml"],
        env=common,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert generator.returncode == 0, generator.stderr
    child = yaml.safe_load(generator.stdout)
    jobs = {k: v for k, v in child.items() if k != "stages"}
    assert set(jobs) == {"authscope:remote-1", "authscope:remote-2"}
    secrets = [r1.password, r2.password, source_image.registry.password]
    for job in jobs.values():
        env = {**common, **scoped[job["environment"]["name"]]}
        done = run_job(job, env, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        for secret in secrets:
            assert secret not in done.stdout + done.stderr
    for registry in (r1, r2):
        for tag in ("1.0", "latest"):
            assert registry.manifest_digest("release/app", tag) == source_image.digest
    for name in ("remote-1", "remote-2"):
        assert json.loads((tmp_path / f"authscope-{name}.json").read_text())["status"] == "success"


# -- 7. one deployment per target and run ---------------------------------------------


def gitlab_env(env: Mapping[str, str], fake: FakeGitLab) -> dict[str, str]:
    return {
        **env,
        "CI_SERVER_URL": fake.url,
        "CI_PROJECT_ID": str(fake.project_id),
        "CI_COMMIT_TAG": "1.0",
        "CI_COMMIT_REF_NAME": "1.0",
        "CI_COMMIT_SHA": "0123456789abcdef0123456789abcdef01234567",
        "CI_JOB_TOKEN": JOB_TOKEN,
    }


def deployments_per_target(child: Mapping[str, Any], env: Mapping[str, str], cwd: Path) -> dict[str, int]:
    """Run every job of ``child`` against a fresh fake GitLab; count each
    target's deployments: the API's, and the one GitLab itself records for a
    job whose environment: has action start."""
    counts: dict[str, int] = {}
    with FakeGitLab(tags={"1.0"}) as fake:
        for name, job in child.items():
            if name == "stages":
                continue
            environment = job.get("environment")
            if environment and environment.get("action", "start") == "start":
                counts[environment["name"]] = counts.get(environment["name"], 0) + 1
            done = run_job(job, gitlab_env(env, fake), cwd)
            assert done.returncode == 0, done.stdout + done.stderr
        for deployment in fake.deployments:
            name = deployment["environment"]["name"]
            counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.fixture
def two_targets(
    tmp_path: Path, e2e_env: dict[str, str], source_image: SourceImage, registry_factory: RegistryFactory
) -> dict[str, Any]:
    r1, r2 = registry_factory("one"), registry_factory("two")
    env = base_env(e2e_env, source_image)
    env.update(ONE_PASSWORD=r1.password, TWO_PASSWORD=r2.password)
    (tmp_path / "authscope.yml").write_text(
        f"""\
source: {{image: "${{LOCAL}}/app:1.0", insecure: true}}
targets:
  - {{name: one, registry: {r1.host}, repository: app, username: {r1.username}, password_env: ONE_PASSWORD, insecure: true}}
  - {{name: two, registry: {r2.host}, repository: app, username: {r2.username}, password_env: TWO_PASSWORD, insecure: true}}
"""
    )
    return {"env": env, "cwd": tmp_path}


def generate(setup: Mapping[str, Any], *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [*AUTHSCOPE, "pipeline", "-f", "authscope.yml", *args],
        env=setup["env"],
        cwd=setup["cwd"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    child: dict[str, Any] = yaml.safe_load(proc.stdout)
    return child


@pytest.mark.parametrize("args", [[], ["--slices", "1"]], ids=["per-target", "one-slice"])
def test_one_deployment_per_target_and_run(two_targets: dict[str, Any], args: list[str]) -> None:
    child = generate(two_targets, "--gitlab-deployments", *args)
    counts = deployments_per_target(child, two_targets["env"], two_targets["cwd"])
    assert counts == {"registry/one": 1, "registry/two": 1}


def test_control_gitlab_deployments_in_a_job_with_an_environment_counts_twice(two_targets: dict[str, Any]) -> None:
    """Control: a per-target job given --gitlab-deployments (as generated before)
    records a second deployment next to the one GitLab records for its environment."""
    child = generate(two_targets, "--gitlab-deployments")
    for name, job in child.items():
        if name != "stages":
            job["script"] = [job["script"][0] + " --gitlab-deployments"]
    counts = deployments_per_target(child, two_targets["env"], two_targets["cwd"])
    assert counts == {"registry/one": 2, "registry/two": 2}


# -- issue 12 item 10: a credential never in argv, the log or --dry-run ----------------------

ARGV_PRINTER = "import json, sys; open(sys.argv[1], 'a').write(json.dumps(sys.argv) + chr(10))"


@pytest.fixture
def custom_target(
    tmp_path: Path, e2e_env: dict[str, str], source_image: SourceImage, registry_factory: RegistryFactory
) -> dict[str, Any]:
    target = registry_factory("custom")
    env = base_env(e2e_env, source_image)
    env["TARGET_PASSWORD"] = target.password
    argv_file = tmp_path / "argv.jsonl"
    path = tmp_path / "authscope.yml"
    path.write_text(
        f"""\
source: {{image: "${{LOCAL}}/app:1.0", insecure: true}}
tool: custom
targets:
  - name: custom
    registry: {target.host}
    repository: app
    username: {target.username}
    password_env: TARGET_PASSWORD
    insecure: true
    command: [{sys.executable}, -c, "{ARGV_PRINTER}", {argv_file}, "{{destination}}", "${{TARGET_PASSWORD}}"]
"""
    )
    return {"env": env, "file": str(path), "argv": argv_file, "secret": target.password}


def test_a_credential_in_command_never_starts_a_process(custom_target: dict[str, Any]) -> None:
    for extra in ([], ["--dry-run"]):
        done = authscope(["fanout", "-f", custom_target["file"], *extra], custom_target["env"])
        assert done.returncode == 2, done.stdout + done.stderr
        assert "${TARGET_PASSWORD} is a credential (targets[0].password_env)" in done.stderr
        assert custom_target["secret"] not in done.stdout + done.stderr
    assert not custom_target["argv"].exists()


NO_REFUSAL = "import authscope.targets as t\nt._credential_variables = lambda raw: ({}, ())"


def test_control_expanded_the_credential_is_in_argv_the_log_and_dry_run(custom_target: dict[str, Any]) -> None:
    secret = custom_target["secret"]
    dry = authscope(["fanout", "-f", custom_target["file"], "--dry-run"], custom_target["env"], NO_REFUSAL)
    assert dry.returncode == 0 and secret in dry.stdout  # --dry-run
    done = authscope(["fanout", "-f", custom_target["file"], "--retries", "0"], custom_target["env"], NO_REFUSAL)
    logged = [line for line in done.stdout.splitlines() if "authscope: [custom] $ " in line]
    # The `$ ...` line: the secret was expanded into it; only the second layer,
    # masking every known secret in what authscope prints, hides it there.
    assert logged and "[MASKED]" in logged[0], done.stdout
    argv = json.loads(custom_target["argv"].read_text().splitlines()[0])
    assert secret in argv  # the started process's argv: nothing masks that


# -- 3. a tool's megabyte line: one capped line in the log and the reports ---------------------

# What GitLab can take: output lines of about 1 KB, a tail of a few KB.
LINE_BOUND = 1024
TAIL_BOUND = 8 * 1024
SHOUTER = "import sys; sys.stdout.write('x' * 3000000 + chr(0xfffe)); sys.stdout.flush(); sys.exit(1)"


@pytest.fixture
def shouting_target(
    tmp_path: Path, e2e_env: dict[str, str], source_image: SourceImage, registry_factory: RegistryFactory
) -> dict[str, Any]:
    target = registry_factory("shout")
    env = base_env(e2e_env, source_image)
    env["TARGET_PASSWORD"] = target.password
    path = tmp_path / "authscope.yml"
    path.write_text(
        f"""\
source: {{image: "${{LOCAL}}/app:1.0", insecure: true}}
tool: custom
retries: 0
targets:
  - name: shout
    registry: {target.host}
    repository: app
    username: {target.username}
    password_env: TARGET_PASSWORD
    insecure: true
    command: [{sys.executable}, -c, "{SHOUTER}"]
"""
    )
    reports = ["--junit", str(tmp_path / "j.xml"), "--json", str(tmp_path / "r.json")]
    return {"env": env, "argv": ["fanout", "-f", str(path), *reports], "tmp": tmp_path}


def test_a_megabyte_line_is_capped_in_the_log_junit_and_json(shouting_target: dict[str, Any]) -> None:
    from lxml import etree

    done = authscope(shouting_target["argv"], shouting_target["env"])
    assert done.returncode == 1, done.stderr
    relayed = [line for line in done.stdout.splitlines() if line.startswith("[shout] ")]
    assert relayed and max(len(line.encode()) for line in relayed) <= LINE_BOUND + 16
    junit = (shouting_target["tmp"] / "j.xml").read_bytes()
    assert len(junit) < 64 * 1024
    failure = etree.fromstring(junit).find("testsuite/testcase/failure")  # libxml2, as GitLab
    assert failure is not None and "xxxx" in failure.text
    report = json.loads((shouting_target["tmp"] / "r.json").read_text())
    assert max(len(line.encode()) for line in report["targets"][0]["output"]) <= LINE_BOUND
    assert len((shouting_target["tmp"] / "r.json").read_bytes()) < 64 * 1024


UNCAPPED = (
    "import authscope.report as R\n"
    "R.cap_line = lambda text, limit=0: text\n"
    "R.bounded = lambda lines: tuple(lines)\n"
    "R._xml_safe = lambda text: text"
)


def test_control_uncapped_the_log_and_reports_carry_the_megabytes(shouting_target: dict[str, Any]) -> None:
    from lxml import etree

    done = authscope(shouting_target["argv"], shouting_target["env"], UNCAPPED)
    assert done.returncode == 1, done.stderr
    assert max(len(line) for line in done.stdout.splitlines()) > 60 * 1024  # the relay's pieces, whole
    junit = (shouting_target["tmp"] / "j.xml").read_bytes()
    assert len(junit) > 1024 * 1024
    with pytest.raises(etree.XMLSyntaxError):  # and U+FFFE: GitLab would drop the report
        etree.fromstring(junit)


# -- under gitlab-ci-local ----------------------------------------------------------------


def scoped(environment: str, value: str, kind: str = "variable") -> dict[str, Any]:
    """A CI/CD variable whose value only jobs in ``environment`` get."""
    return {"type": kind, "values": {environment: value}}


def test_gitlab_ci_local_distributed_fanout_with_every_target_variable_scoped(project: Any, release: Release) -> None:
    """The README's many-targets setup: each target's registry, user, password
    and CA are scoped to registry/<target> (password and CA as file variables);
    the generator job sees none of them, each child job its own."""
    assert release.remote_2.ca_file is not None
    variables = release.variables()
    variables.update(
        REMOTE_1=scoped("registry/remote-1", release.remote_1.host),
        REMOTE_1_PASSWORD=scoped("registry/remote-1", release.remote_1.password),
        REMOTE_2=scoped("registry/remote-2", release.remote_2.host),
        REMOTE_2_USER=scoped("registry/remote-2", release.remote_2.username),
        REMOTE_2_PASSWORD=scoped("registry/remote-2", release.remote_2.password, "file"),
        REMOTE_2_CA=scoped("registry/remote-2", Path(release.remote_2.ca_file).read_text(), "file"),
    )
    proj = project("fanout-pipeline.gitlab-ci.yml", variables)
    run = proj.run()
    assert run.returncode == 0, run.output
    for job in ("authscope-fanout-generate", "authscope:remote-1", "authscope:remote-2"):
        assert run.summary(job) == "PASS", run.output
    for target in release.targets:
        for tag in ("1.0", "latest"):
            assert release.digest(target, "release/app", tag) == release.source.digest
    assert_clean(proj, release)


HOSTILE_PIPELINE = """\
stages: [deploy]
include:
  - component: $CI_SERVER_FQDN/$CI_PROJECT_PATH/fanout-pipeline@$CI_COMMIT_SHA
    inputs:
      targets-file: authscope.yml
      child-stage: {stage}
      install: python3 -m pip install --no-deps --no-index --upgrade --target "$AUTHSCOPE_TEST_PREFIX" "$AUTHSCOPE_TEST_WHEEL"
"""


def hostile_project(make: Any, rel: Release, pwned: Path, vulnerable: bool) -> Any:
    proj = make("fanout-pipeline.gitlab-ci.yml", rel.variables())
    stage = json.dumps(f'"; touch {pwned}; :"')  # a YAML (JSON) string
    (proj.path / ".gitlab-ci.yml").write_text(HOSTILE_PIPELINE.format(stage=stage))
    if vulnerable:  # control: the generator's script line as it was
        template = proj.path / "templates" / "fanout-pipeline.yml"
        text = template.read_text()
        line = "- authscope pipeline > authscope-child-pipeline.yml"
        assert line in text
        # The old shape: the input interpolated into a shell line that builds the options.
        old = (
            '- set -- --stage "$[[ inputs.child-stage ]]"\n    - authscope pipeline "$@" > authscope-child-pipeline.yml'
        )
        template.write_text(text.replace(line, old))
    git(proj.path, "add", "-A")
    git(proj.path, "commit", "-q", "-m", "hostile input")
    return proj


def test_gitlab_ci_local_hostile_child_stage_runs_nothing(project: Any, release: Release, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    proj = hostile_project(project, release, pwned, vulnerable=False)
    run = proj.run("authscope-fanout-generate")
    assert run.summary("authscope-fanout-generate") == "PASS", run.output
    assert not pwned.exists()
    child = yaml.safe_load((proj.path / "authscope-child-pipeline.yml").read_text())
    assert child["stages"] == [f'"; touch {pwned}; :"']  # passed on as one word


def test_gitlab_ci_local_control_interpolated_child_stage_runs_the_command(
    project: Any, release: Release, tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"
    proj = hostile_project(project, release, pwned, vulnerable=True)
    run = proj.run("authscope-fanout-generate")
    assert pwned.exists(), run.output

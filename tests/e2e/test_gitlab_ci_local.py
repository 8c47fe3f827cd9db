"""The GitLab CI/CD components, run by gitlab-ci-local against real registries.

Each test lays out a throwaway git repository: this checkout's templates/, a
consumer pipeline from tests/e2e/gitlab_ci_local/ as .gitlab-ci.yml, the
targets file, and an `origin` of https://gitlab.example.com/group/authscope.git.
gitlab-ci-local takes CI_SERVER_FQDN and CI_PROJECT_PATH from that remote, so
`component: $CI_SERVER_FQDN/$CI_PROJECT_PATH/fanout@$CI_COMMIT_SHA` is a
component of the project itself and resolves to templates/fanout.yml.

The jobs run on the shell executor (`--force-shell-executor`: the components
set `image:`, which `--shell-executor-no-image` alone would hand to docker).
The install input installs a wheel built from this checkout into a per-test
directory that is first on PYTHONPATH and PATH, so the jobs run this code.

Registries, users and passwords are project CI/CD variables, written to
.gitlab-ci-local-variables.yml in the repository (never on gitlab-ci-local's
command line, where `ps` shows them): CI_REGISTRY* point at the "local"
registry holding the source image, a Harbor robot's password is a plain
variable, another target's password and CA are file variables.

What gitlab-ci-local 4.73.0 does differently from GitLab, as seen here:
- `strategy: depend` is ignored: a trigger job passes, and gitlab-ci-local
  exits 0, whatever its child pipeline did (see
  test_distributed_fanout_child_job_fails_on_wrong_password);
- `trigger: include: artifact:` looks for the artifact under the job's raw
  name, but stores artifacts under a mangled one (`:` becomes `Og`), so a
  generator job whose name has a `:` hands over an empty child pipeline: the
  component names its generator `<job-name>-generate`;
- `reports: junit` is ignored (dotenv reports work);
- a value in .gitlab-ci-local-variables.yml that starts with `/` or `~` is
  read as the path of a file variable: paths are given in the long form.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import RegistryFactory, require_tools
from tests.support import Registry, SourceImage

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "gitlab_ci_local"
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
GITLAB_CI_LOCAL_VERSION = "4.73.0"  # the last release that runs on Node 20
ORIGIN = "https://gitlab.example.com/group/authscope.git"
ROBOT = "robot$release+ci"
# What the project's own component self-test job needs of this checkout.
PROJECT_FILES = (".gitlab-ci.yml", "scripts", "tests/__init__.py", "tests/support", "tests/e2e/__init__.py")
PROJECT_FILES += ("tests/e2e/gitlab_ci_local",)
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")
INSTALL = (
    'python3 -m pip install --no-deps --no-index --upgrade --target "$AUTHSCOPE_TEST_PREFIX" "$AUTHSCOPE_TEST_WHEEL"'
)
# Predefined variables the tests set on purpose (gitlab-ci-local warns otherwise).
OVERRIDDEN = "CI_REGISTRY,CI_REGISTRY_USER,CI_REGISTRY_PASSWORD,CI_COMMIT_TAG"


def gitlab_ci_local() -> str:
    """The gitlab-ci-local binary; skips locally (fails under CI=true) when absent."""
    require_tools("gitlab-ci-local", "git", "rsync")
    path = shutil.which("gitlab-ci-local")
    assert path is not None
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert version.stdout.strip().splitlines()[-1:] == [GITLAB_CI_LOCAL_VERSION], (
        f"gitlab-ci-local {GITLAB_CI_LOCAL_VERSION} expected (scripts/install-ci-tools.sh), found {version.stdout!r}"
    )
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout, built from a copy so the work tree stays clean."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    shutil.copytree(
        REPO_ROOT / "plugin", src / "plugin", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    )
    out = work / "dist"
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", "-w", str(out)]
    built = subprocess.run([*pip, str(src)], capture_output=True, text=True, timeout=240, check=False)
    if built.returncode != 0:  # no index reachable: build with what is installed
        built = subprocess.run(
            [*pip, "--no-build-isolation", str(src)], capture_output=True, text=True, timeout=240, check=False
        )
    assert built.returncode == 0, built.stderr
    (found,) = out.glob("authscope-*.whl")
    return found


def variable(value: str) -> dict[str, Any]:
    """A plain CI/CD variable (the long form: gitlab-ci-local reads a short value
    that starts with / as the path of a file variable)."""
    return {"type": "variable", "values": {"*": value}}


def file_variable(content: str) -> dict[str, Any]:
    """A CI/CD variable of type File: the job sees the path of a file holding `content`."""
    return {"type": "file", "values": {"*": content}}


@dataclass
class Release:
    """The registries of one test: the source on "local", two Harbor-like targets."""

    source: SourceImage
    remote_1: Registry  # plain HTTP, a robot account
    remote_2: Registry  # TLS with the session CA

    @property
    def local(self) -> Registry:
        return self.source.registry

    @property
    def targets(self) -> list[Registry]:
        return [self.remote_1, self.remote_2]

    def variables(self) -> dict[str, Any]:
        """Project CI/CD variables for the consumer pipelines."""
        assert self.remote_2.ca_file is not None
        return {
            "CI_COMMIT_TAG": variable("1.0"),
            "CI_REGISTRY": variable(self.local.host),
            "CI_REGISTRY_USER": variable(self.local.username),
            "CI_REGISTRY_PASSWORD": variable(self.local.password),
            "LOCAL": variable(self.local.host),
            "REMOTE_1": variable(self.remote_1.host),
            "REMOTE_1_PASSWORD": variable(self.remote_1.password),
            "REMOTE_2": variable(self.remote_2.host),
            "REMOTE_2_USER": variable(self.remote_2.username),
            "REMOTE_2_PASSWORD": file_variable(self.remote_2.password),
            "REMOTE_2_CA": file_variable(Path(self.remote_2.ca_file).read_text()),
        }

    def secrets(self) -> list[str]:
        every = [self.local, *self.targets]
        raw = [r.password for r in every]
        return raw + [base64.b64encode(f"{r.username}:{r.password}".encode()).decode() for r in every]

    def digest(self, registry: Registry, repository: str, tag: str) -> str | None:
        return registry.manifest_digest(repository, tag)


@pytest.fixture
def release(source_image: SourceImage, registry_factory: RegistryFactory) -> Release:
    return Release(
        source_image,
        registry_factory("remote-1", username=ROBOT),
        registry_factory("remote-2", tls=True, username="harbor-robot"),
    )


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return f"{self.stdout}\n{self.stderr}"

    def summary(self, job: str) -> str | None:
        """PASS, FAIL or WARN from the summary gitlab-ci-local prints last (a
        child pipeline's job may carry a `[trigger job] -> ` prefix there)."""
        line = rf"^\s*(PASS|FAIL|WARN)\s+(?:\[[^\]\n]+\] -> )?{re.escape(job)}\s*$"
        found = re.findall(line, self.output, re.MULTILINE)
        return found[-1] if found else None


@dataclass
class Project:
    """A throwaway GitLab project for gitlab-ci-local."""

    path: Path
    env: dict[str, str]
    scopes: Path
    base: Path
    variables: dict[str, Any]  # project CI/CD variables, in .gitlab-ci-local-variables.yml
    runs: list[Run] = field(default_factory=list)

    def write_variables(self) -> None:
        path = self.path / ".gitlab-ci-local-variables.yml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(self.variables, f, sort_keys=False)

    def run(self, *args: str) -> Run:
        argv = [
            gitlab_ci_local(),
            "--force-shell-executor",
            "--shell-executor-no-image",
            "--no-color",
            "--concurrency",
            "1",  # one job at a time: two cores, one install prefix
            "--ignore-predefined-vars",
            OVERRIDDEN,
            *args,
        ]
        proc = subprocess.run(
            argv,
            cwd=self.path,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=270,
            check=False,
        )
        result = Run(proc.returncode, proc.stdout, proc.stderr)
        self.runs.append(result)
        return result


def git(path: Path, *args: str) -> None:
    subprocess.run(
        ["git", *args],
        cwd=path,
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def project(tmp_path: Path, e2e_env: dict[str, str], wheel: Path) -> Iterator[Any]:
    """`project(pipeline, variables) -> Project`: a committed repository with
    templates/, authscope.yml and `pipeline` as .gitlab-ci.yml."""
    gitlab_ci_local()
    crane = shutil.which("crane", path=f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if crane is None:
        require_tools("crane")
    require_tools("skopeo")
    prefix = tmp_path / "prefix"  # where the jobs' install line puts authscope
    scopes = tmp_path / "scopes"
    scopes.mkdir(mode=0o700)
    env = dict(e2e_env)
    env.update(
        PATH=os.pathsep.join([str(prefix / "bin"), str(TOOLS_BIN), e2e_env["PATH"]]),
        PYTHONPATH=str(prefix),
        AUTHSCOPE_SCOPE_DIR=str(scopes),
        AUTHSCOPE_TEST_PREFIX=str(prefix),
        AUTHSCOPE_TEST_WHEEL=str(wheel),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_ROOT_USER_ACTION="ignore",
        LANG="C.UTF-8",
    )
    env.pop("CI", None)  # gitlab-ci-local sets the job's CI; keep the runner's out of it
    made: list[Project] = []

    def make(pipeline: str | None, variables: Mapping[str, Any]) -> Project:
        """`pipeline`: a consumer from tests/e2e/gitlab_ci_local/, or None for
        this project itself (.gitlab-ci.yml and what its self-test runs)."""
        path = tmp_path / "project"
        path.mkdir()
        shutil.copytree(REPO_ROOT / "templates", path / "templates")
        if pipeline is None:
            for part in PROJECT_FILES:
                copy = shutil.copytree if (REPO_ROOT / part).is_dir() else shutil.copy2
                (path / part).parent.mkdir(parents=True, exist_ok=True)
                copy(REPO_ROOT / part, path / part, **({"ignore": IGNORED} if copy is shutil.copytree else {}))
        else:
            shutil.copy2(FIXTURES / "authscope.yml", path / "authscope.yml")
            shutil.copy2(FIXTURES / pipeline, path / ".gitlab-ci.yml")
        (path / ".gitignore").write_text(
            ".gitlab-ci-local-variables.yml\n.gitlab-ci-local/\nauthscope*\n!authscope.yml\n"
        )
        made.append(Project(path, env, scopes, Path(env["DOCKER_CONFIG"]), dict(variables)))
        made[-1].write_variables()
        git(path, "init", "-q", "-b", "main")
        git(path, "config", "user.name", "authscope-tests")  # gitlab-ci-local reads GITLAB_USER_* from these
        git(path, "config", "user.email", "tests@authscope.invalid")
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "release 1.0")
        git(path, "remote", "add", "origin", ORIGIN)
        # What a clone has: origin/HEAD, which gitlab-ci-local reads for the default branch.
        git(path, "update-ref", "refs/remotes/origin/main", "HEAD")
        git(path, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main")
        return made[-1]

    yield make


def assert_clean(project: Project, release: Release) -> None:
    """No secret printed, no scope left, the base holds only the local login."""
    for run in project.runs:
        for secret in release.secrets():
            assert secret not in run.output, "a registry secret was printed"
    assert list(project.scopes.iterdir()) == []
    auths = json.loads((project.base / "config.json").read_text())["auths"]
    assert set(auths) == {release.local.host}


def test_fanout_component_copies_to_every_target(project: Any, release: Release) -> None:
    """The fanout component, included with inputs (pull-once, args), copies
    every tag to both targets, verified; its dotenv report reaches a later
    job; a job extending the scope component runs crane inside `authscope exec`."""
    proj = project("fanout.gitlab-ci.yml", release.variables())
    run = proj.run()
    assert run.returncode == 0, run.output
    for job in ("authscope-fanout", "custom-copy", "check-reports"):
        assert run.summary(job) == "PASS", run.output

    for target in release.targets:
        for tag in ("1.0", "latest"):
            assert release.digest(target, "release/app", tag) == release.source.digest
    assert release.digest(release.remote_1, "custom/app", "1.0") == release.source.digest

    report = json.loads((proj.path / "authscope.json").read_text())
    assert report["status"] == "success"
    assert report["digest"] == release.source.digest
    cases = ET.parse(proj.path / "authscope-junit.xml").getroot().iter("testcase")
    assert sorted(c.get("name") or "" for c in cases) == ["remote-1", "remote-2"]
    assert f"digest={release.source.digest}" in run.output  # check-reports read the dotenv
    assert "pulling the source once" in run.output  # pull-once: true
    assert "(attempt 1/2)" in run.output  # args: --retries 1
    assert_clean(proj, release)


def test_default_rules_run_the_fanout_for_tags_only(project: Any) -> None:
    """The component's default rules: the job is in a tag pipeline, not in a branch's."""
    for variables, when in (({}, "never"), ({"CI_COMMIT_TAG": variable("1.0")}, "on_success")):
        proj = project("fanout.gitlab-ci.yml", variables)
        listed = proj.run("--list-json")
        assert listed.returncode == 0, listed.output
        jobs = {job["name"]: job["when"] for job in json.loads(listed.stdout)}
        assert jobs["authscope-fanout"] == when
        shutil.rmtree(proj.path)


def test_wrong_password_fails_the_fanout_job(project: Any, release: Release) -> None:
    """One target's password is wrong: the job fails, the other target still
    gets the image, and the reports say which target failed."""
    variables = release.variables()
    variables["REMOTE_1_PASSWORD"] = variable("wrong-" + release.remote_1.password)
    proj = project("fanout.gitlab-ci.yml", variables)
    run = proj.run("authscope-fanout")
    assert run.returncode == 1, run.output
    assert run.summary("authscope-fanout") == "FAIL", run.output

    assert release.digest(release.remote_1, "release/app", "1.0") is None
    assert release.digest(release.remote_2, "release/app", "1.0") == release.source.digest
    report = json.loads((proj.path / "authscope.json").read_text())
    assert report["status"] == "partial"
    env_report = (proj.path / "authscope.env").read_text()
    assert "AUTHSCOPE_TARGETS_FAILED=remote-1\n" in env_report
    assert_clean(proj, release)


# The jobs of the child pipeline `authscope pipeline` writes for authscope.yml.
CHILD_JOBS = ("authscope:remote-1", "authscope:remote-2")


def test_distributed_fanout_runs_the_generated_child_pipeline(project: Any, release: Release) -> None:
    """The fanout-pipeline component: `authscope pipeline` writes the child
    pipeline, the trigger job runs it, one job per target. gitlab-ci-local
    runs `trigger: include: artifact:` itself (an experimental feature), so
    the generated YAML is not run by hand. remote-1's password is scoped to its
    environment, registry/remote-1, so only that child job can see it."""
    variables = release.variables()
    variables["REMOTE_1_PASSWORD"] = {"type": "variable", "values": {"registry/remote-1": release.remote_1.password}}
    proj = project("fanout-pipeline.gitlab-ci.yml", variables)
    run = proj.run()
    assert run.returncode == 0, run.output
    for job in ("authscope-fanout-generate", "authscope-fanout", *CHILD_JOBS):
        assert run.summary(job) == "PASS", run.output

    child = yaml.safe_load((proj.path / "authscope-child-pipeline.yml").read_text())
    assert set(child) == {"stages", "authscope:remote-1", "authscope:remote-2"}
    for target in release.targets:
        for tag in ("1.0", "latest"):
            assert release.digest(target, "release/app", tag) == release.source.digest
    for name in ("remote-1", "remote-2"):
        assert json.loads((proj.path / f"authscope-{name}.json").read_text())["status"] == "success"
    assert_clean(proj, release)


def test_distributed_fanout_child_job_fails_on_wrong_password(project: Any, release: Release) -> None:
    """A wrong password fails that target's child job, and only that one.

    gitlab-ci-local 4.73 ignores `strategy: depend`: the trigger job passes and
    gitlab-ci-local exits 0 whatever the child pipeline did (in GitLab the
    trigger job, and the pipeline, fail). So this reads the child jobs' results.
    """
    variables = release.variables()
    variables["REMOTE_2_PASSWORD"] = file_variable("wrong-" + release.remote_2.password)
    proj = project("fanout-pipeline.gitlab-ci.yml", variables)
    run = proj.run()
    assert run.summary(CHILD_JOBS[0]) == "PASS", run.output
    assert run.summary(CHILD_JOBS[1]) == "FAIL", run.output
    # GitLab would fail the trigger job here; if this starts failing,
    # gitlab-ci-local honours strategy: depend now: assert FAIL and exit 1.
    assert (run.summary("authscope-fanout"), run.returncode) == ("PASS", 0), run.output
    assert release.digest(release.remote_1, "release/app", "1.0") == release.source.digest
    assert release.digest(release.remote_2, "release/app", "1.0") is None
    assert json.loads((proj.path / "authscope-remote-2.json").read_text())["status"] == "failed"
    assert_clean(proj, release)


def test_project_pipeline_component_selftest(project: Any) -> None:
    """The project's own .gitlab-ci.yml: its component-selftest job (the fanout
    component of this commit, `$CI_SERVER_FQDN/$CI_PROJECT_PATH/fanout@$CI_COMMIT_SHA`)
    starts registries inside the job, fans out to them, and the next job reads
    its dotenv report. Only the install step differs from GitLab: the wheel
    instead of ./scripts/install-deps.sh, which would install into this machine."""
    # A variable's $references are expanded (GitLab's "Expand variable
    # reference"), so the ones it names are variables too.
    proj = project(None, {"AUTHSCOPE_SELFTEST_INSTALL": variable(INSTALL)})
    for name in ("AUTHSCOPE_TEST_PREFIX", "AUTHSCOPE_TEST_WHEEL"):
        proj.variables[name] = variable(proj.env[name])
    proj.write_variables()
    run = proj.run("component-selftest", "component-selftest-reports")
    assert run.returncode == 0, run.output
    assert run.summary("component-selftest") == "PASS", run.output
    assert run.summary("component-selftest-reports") == "PASS", run.output
    assert "success, 2/2 targets landed" in run.output
    assert "status=success" in run.output
    assert list(proj.scopes.iterdir()) == []
    assert re.search(r"CI_REGISTRY_PASSWORD=|selftest-[0-9a-f]{24}", run.output) is None, "a password was printed"
    # The registries stop once the job's shell is gone (registries.py polls for that).
    roots = list(Path(proj.env["TMPDIR"]).glob("authscope-selftest-*/registries-*/*/"))
    assert any((root / "config.yml").exists() for root in roots)
    deadline = time.monotonic() + 15
    while any(_serving(root) for root in roots) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [root for root in roots if _serving(root)], "the self-test's registries outlived the job"


def _serving(root: Path) -> bool:
    """Whether a registry under `root` is still running (its job is over)."""
    config = root / "config.yml"
    if not config.exists():
        return False
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(config).encode() in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False

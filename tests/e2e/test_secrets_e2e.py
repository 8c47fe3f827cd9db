"""Secrets end to end (issue 12 items 9, 11, 12): real registries, the real
CLI, crane, and the fake GitLab driven by python-gitlab.

- item 11: each target's tool gets its own target's credential variables,
  never another target's (nor an alias of one, nor the --gitlab-token-env
  token); shown with a `tool: custom` command that dumps its environment,
  and a control with that filtering switched off;
- item 9: the GitLab token a tool prints is masked in the log and in every
  report file, and so is the token GitLab echoes in an error;
- item 12: a command that makes its scope's config.json a directory between
  two tags does not break the next tag; one that makes the base's a
  directory ends in a clear BASE INTEGRITY report, never a traceback.

Every secret is an obviously fake test value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from authscope import cli, fanout
from tests.e2e.conftest import RegistryFactory, require_tools
from tests.gitlab_fake import JOB_TOKEN, PRIVATE_TOKEN, FakeGitLab
from tests.support import Registry, SourceImage

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
AUTHSCOPE = [sys.executable, "-m", "authscope"]
SHA = "0123456789abcdef0123456789abcdef01234567"


class Job:
    """A release job: the source in a local registry, three targets, a logged-in base."""

    def __init__(self, tmp: Path, env: Mapping[str, str], factory: RegistryFactory, source: SourceImage) -> None:
        require_tools("crane")
        self.tmp = tmp
        self.source = source
        self.one, self.two, self.three = factory("one"), factory("two", username="ci-two"), factory("three")
        e = {k: v for k, v in env.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        e["PATH"] = f"{TOOLS_BIN}{os.pathsep}{e['PATH']}"
        e["LANG"] = "C.UTF-8"
        scopes = tmp / "scopes"
        scopes.mkdir(mode=0o700)
        e["AUTHSCOPE_SCOPE_DIR"] = str(scopes)
        if "PYTHONPATH" in os.environ:
            e["PYTHONPATH"] = os.environ["PYTHONPATH"]
        secrets_dir = tmp / "secrets"
        secrets_dir.mkdir()
        three_file = secrets_dir / "three.pw"
        three_file.write_text(self.three.password + "\n")
        e.update(
            SOURCE_PASSWORD=source.registry.password,
            ONE_PASSWORD=self.one.password,
            TWO_USER=self.two.username,
            TWO_PASSWORD=self.two.password,
            ALIAS_OF_TWO=self.two.password,  # the same secret under another name
            THREE_PASSWORD_FILE=str(three_file),  # a GitLab file variable: a path
        )
        self.env = e
        self.base = Path(e["DOCKER_CONFIG"]) / "config.json"
        self.reports = tmp / "reports"
        self.reports.mkdir()
        login = ["login", source.registry.host, "-u", source.registry.username, "--password-env", "SOURCE_PASSWORD"]
        result = self.run(*login)
        assert result.returncode == 0, result.stderr

    @property
    def registries(self) -> dict[str, Registry]:
        return {"one": self.one, "two": self.two, "three": self.three}

    def targets_file(self, commands: Mapping[str, Sequence[str]], tags: Sequence[str] = ("1.0",)) -> Path:
        """tool: custom; ``commands`` maps a target's name to its command."""
        entries: dict[str, dict[str, Any]] = {
            "one": {"username": self.one.username, "password_env": "ONE_PASSWORD"},
            "two": {"username_env": "TWO_USER", "password_env": "TWO_PASSWORD"},
            "three": {"username": self.three.username, "password_file": "${THREE_PASSWORD_FILE}"},
        }
        doc: dict[str, Any] = {
            "source": {"image": self.source.ref, "insecure": True},
            "tags": list(tags),
            "tool": "custom",
            "retries": 0,
            "targets": [
                {
                    "name": name,
                    "registry": self.registries[name].host,
                    "repository": "release/app",
                    "insecure": True,
                    **entries[name],
                    "command": list(command),
                }
                for name, command in commands.items()
            ],
        }
        path = self.tmp / "authscope.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def run(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*AUTHSCOPE, *args],
            env=dict(self.env if env is None else env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def report_args(self) -> list[str]:
        return ["--json", str(self.reports / "r.json"), "--junit", str(self.reports / "r.xml")]

    def reports_text(self) -> str:
        return "".join(p.read_text() for p in sorted(self.reports.iterdir()))


@pytest.fixture
def job(tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory, source_image: SourceImage) -> Job:
    return Job(tmp_path, e2e_env, registry_factory, source_image)


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab(token=PRIVATE_TOKEN, token_kind="private") as server:
        yield server


def ci_variables(gitlab: FakeGitLab) -> dict[str, str]:
    return {
        "CI_SERVER_URL": gitlab.url,
        "CI_PROJECT_ID": str(gitlab.project_id),
        "CI_COMMIT_TAG": "1.0",
        "CI_COMMIT_REF_NAME": "1.0",
        "CI_COMMIT_SHA": SHA,
    }


# -- item 11: a tool gets only its own target's credentials ---------------------------------------


def _dumping_targets(job: Job) -> Path:
    dumps = job.tmp / "dumps"
    dumps.mkdir()
    command = [
        "sh",
        "-c",
        'env > "$0" && exec crane copy "$1" "$2"',
        f"{dumps}/{{name}}.env",
        "{source}",
        "{destination}",
    ]
    return job.targets_file({name: command for name in ("one", "two", "three")})


def _names(job: Job, target: str) -> list[str]:
    text = (job.tmp / "dumps" / f"{target}.env").read_text()
    return [line.split("=", 1)[0] for line in text.splitlines() if "=" in line]


CREDENTIAL_VARIABLES = {
    "one": {"ONE_PASSWORD"},
    "two": {"TWO_USER", "TWO_PASSWORD", "ALIAS_OF_TWO"},
    "three": {"THREE_PASSWORD_FILE"},
}


def _fanout_in_process(job: Job, gitlab: FakeGitLab, path: Path) -> int:
    env = dict(job.env, MY_GITLAB_PAT=PRIVATE_TOKEN, CI_JOB_TOKEN=JOB_TOKEN, **ci_variables(gitlab))
    args = ["fanout", "-f", str(path), "--gitlab-deployments", "--gitlab-token-env", "MY_GITLAB_PAT"]
    return cli.main(args, environ=env)


def test_each_tool_gets_only_its_own_targets_credentials(job: Job, gitlab: FakeGitLab, capfd: Any) -> None:
    assert _fanout_in_process(job, gitlab, _dumping_targets(job)) == 0, capfd.readouterr()
    for target, own in CREDENTIAL_VARIABLES.items():
        names = set(_names(job, target))
        others = set().union(*(v for k, v in CREDENTIAL_VARIABLES.items() if k != target))
        assert own <= names, target  # its own: the tool may use them
        assert not (others & names), (target, others & names)
        assert "MY_GITLAB_PAT" not in names  # the API token no copy needs
        assert "CI_JOB_TOKEN" in names  # kept, by decision: see fanout.tool_environ
        assert {"DOCKER_CONFIG", "PATH", "HOME"} <= names
    assert len(gitlab.deployments) == 3  # the token itself still worked for authscope
    out, err = capfd.readouterr()
    assert PRIVATE_TOKEN not in out + err


def test_control_without_the_filter_every_tool_sees_every_target(
    job: Job, gitlab: FakeGitLab, capfd: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "tool_environ", lambda environ, *args, **kw: dict(environ))
    assert _fanout_in_process(job, gitlab, _dumping_targets(job)) == 0, capfd.readouterr()
    every = set().union(*CREDENTIAL_VARIABLES.values()) | {"MY_GITLAB_PAT"}
    for target in CREDENTIAL_VARIABLES:
        assert every <= set(_names(job, target)), target


# -- item 9: the GitLab token in tool output, report files and GitLab's own errors -------------------


def _printing_token(job: Job) -> Path:
    return job.targets_file({"one": ["sh", "-c", 'echo "token=$CI_JOB_TOKEN"; exit 1']})


def test_gitlab_token_printed_by_a_tool_is_masked_in_the_log_and_reports(job: Job) -> None:
    with FakeGitLab() as gitlab:  # CI_JOB_TOKEN, as JOB-TOKEN
        gitlab.forbid = {"create_deployment"}
        gitlab.echo_token = True  # and the 403 quotes the token
        env = dict(job.env, CI_JOB_TOKEN=JOB_TOKEN, **ci_variables(gitlab))
        result = job.run("fanout", "-f", str(_printing_token(job)), *job.report_args(), "--gitlab-deployments", env=env)
        assert gitlab.calls("POST", "deployments"), "GitLab was asked"
    assert result.returncode == 1, result.stderr  # the target failed; so did GitLab's step
    assert "token=[MASKED]" in result.stdout
    assert "403" in result.stderr and "[MASK" in result.stderr
    reports = job.reports_text()
    assert "token=[MASKED]" in reports
    assert JOB_TOKEN not in result.stdout + result.stderr + reports


def test_control_an_unknown_token_is_printed_as_it_is(job: Job) -> None:
    # Without --gitlab-*, authscope has not read the token: nothing says it is one.
    env = dict(job.env, CI_JOB_TOKEN=JOB_TOKEN)
    result = job.run("fanout", "-f", str(_printing_token(job)), *job.report_args(), env=env)
    assert result.returncode == 1
    assert f"token={JOB_TOKEN}" in result.stdout and f"token={JOB_TOKEN}" in job.reports_text()


# -- item 12: config.json made a directory between two tags -------------------------------------------

MAKE_DIRECTORY = (
    'test -f "$DOCKER_CONFIG/config.json" && echo "tag $1: config.json is a file" && crane copy "$2" "$3" && '
    'if [ "$1" = 1.0 ]; then rm "$CONFIG" && mkdir -p "$CONFIG/x" && echo "tag $1: made $CONFIG a directory"; fi'
)


def test_scope_config_made_a_directory_does_not_break_the_next_tag(job: Job) -> None:
    command = [
        "sh",
        "-c",
        MAKE_DIRECTORY.replace("$CONFIG", "$DOCKER_CONFIG/config.json"),
        "sh",
        "{tag}",
        "{source}",
        "{destination}",
    ]
    result = job.run("fanout", "-f", str(job.targets_file({"one": command}, tags=("1.0", "latest"))))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tag 1.0: made" in result.stdout  # control: the first command did make it a directory
    assert "tag latest: config.json is a file" in result.stdout
    for tag in ("1.0", "latest"):
        assert job.one.manifest_digest("release/app", tag) == job.source.digest


def test_base_config_made_a_directory_is_a_clear_report(job: Job) -> None:
    command = [
        "sh",
        "-c",
        MAKE_DIRECTORY.replace("$CONFIG", "$BASE_CONFIG"),
        "sh",
        "{tag}",
        "{source}",
        "{destination}",
    ]
    env = dict(job.env, BASE_CONFIG=str(job.base))
    result = job.run("fanout", "-f", str(job.targets_file({"one": command})), *job.report_args(), env=env)
    output = result.stdout + result.stderr
    assert "tag 1.0: made" in result.stdout  # control: the base really became a directory
    assert result.returncode == 3, output
    assert "BASE INTEGRITY" in result.stderr and "could NOT be restored" in output
    assert "Traceback" not in output and "internal error" not in output
    report = json.loads((job.reports / "r.json").read_text())
    assert report["targets"][0]["restored"]

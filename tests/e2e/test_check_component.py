"""The check component (templates/check.yml), run by gitlab-ci-local.

As tests/e2e/test_gitlab_ci_local.py runs the other components (its
fixtures are used here): a throwaway repository holding this checkout's
templates/, tests/e2e/gitlab_ci_local/check.gitlab-ci.yml as its
.gitlab-ci.yml and the release's authscope.yml, with the registries and
passwords as project CI/CD variables; the jobs run on the shell executor
with a wheel of this checkout.

A scheduled pipeline is one whose CI_PIPELINE_SOURCE is "schedule"
(`--variable`); gitlab-ci-local's own default is "push". The targets are
the release's: nothing may be pushed to them by a check.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from tests.e2e import test_gitlab_ci_local as ci
from tests.e2e.test_gitlab_ci_local import Release, assert_clean, variable

project, release, wheel = ci.project, ci.release, ci.wheel  # its fixtures, used here by name

JOB = "authscope-check"
SCHEDULE = ("--variable", "CI_PIPELINE_SOURCE=schedule")


def listed(stdout: str) -> dict[str, str]:
    """`--list-json`: each job's `when` (the JSON follows any WARN line gitlab-ci-local prints first)."""
    return {job["name"]: job["when"] for job in json.loads(stdout[stdout.index("\n[") :])}


def nothing_pushed(release: Release) -> None:
    for target in release.targets:
        for tag in ("1.0", "latest"):
            assert release.digest(target, "release/app", tag) is None


def test_scheduled_check_passes_and_pushes_nothing(project: Any, release: Release) -> None:
    proj = project("check.gitlab-ci.yml", release.variables())
    run = proj.run(*SCHEDULE)
    assert run.returncode == 0, run.output
    assert run.summary(JOB) == "PASS", run.output
    assert "authscope check" in run.output and "all pass" in run.output

    report = json.loads((proj.path / "authscope-check.json").read_text())
    assert report["command"] == "check" and report["status"] == "success"
    assert {t["name"]: t["status"] for t in report["targets"]} == {"source": "ok", "remote-1": "ok", "remote-2": "ok"}
    cases = ET.parse(proj.path / "authscope-check-junit.xml").getroot().iter("testcase")
    assert sorted(c.get("name") or "" for c in cases) == ["remote-1", "remote-2", "source"]
    nothing_pushed(release)
    assert_clean(proj, release)


def test_scheduled_check_fails_on_a_broken_credential(project: Any, release: Release) -> None:
    variables = release.variables()
    variables["REMOTE_1_PASSWORD"] = variable("wrong-" + release.remote_1.password)
    proj = project("check.gitlab-ci.yml", variables)
    run = proj.run(*SCHEDULE)
    assert run.returncode == 1, run.output
    assert run.summary(JOB) == "FAIL", run.output
    assert "[remote-1] FAILED (target)" in run.output and "password_env REMOTE_1_PASSWORD" in run.output

    report = json.loads((proj.path / "authscope-check.json").read_text())
    statuses = {t["name"]: t["status"] for t in report["targets"]}
    assert statuses == {"source": "ok", "remote-1": "failed", "remote-2": "ok"}
    nothing_pushed(release)
    assert_clean(proj, release)


def test_a_push_pipeline_does_not_run_the_check(project: Any, release: Release) -> None:
    """The default rules: scheduled pipelines only. Control: the same project
    in a scheduled pipeline lists the job to run."""
    proj = project("check.gitlab-ci.yml", release.variables())
    pushed = proj.run("--list-json")
    assert pushed.returncode == 0, pushed.output
    assert listed("\n" + pushed.stdout)[JOB] == "never"
    run = proj.run()
    assert run.summary(JOB) is None, run.output
    assert not (proj.path / "authscope-check.json").exists()

    scheduled = proj.run("--list-json", *SCHEDULE)
    assert scheduled.returncode == 0, scheduled.output
    assert listed("\n" + scheduled.stdout)[JOB] == "on_success"

"""Targets-file behaviour that tests/test_targets.py left unpinned (found by mutation
testing, benchmarks/mutation.py; docs/RELIABILITY.md "Mutation testing")."""

from __future__ import annotations

from pathlib import Path

from authscope.targets import ImageRef, parse_image
from tests.test_targets import MINIMAL, load_ok, problems


def test_documented_defaults_four_jobs_two_retries_thirty_minutes(tmp_path: Path) -> None:
    # docs/targets-file.md: "4 targets at a time, 2 retries and 1800 s per target".
    f = load_ok(tmp_path, MINIMAL)
    assert (f.jobs, f.retries, f.timeout) == (4, 2, 1800.0)


def test_docker_hub_organisation_sorting_before_localhost_is_not_a_registry() -> None:
    # Only a first component with '.' or ':', or exactly "localhost", is a registry host.
    assert parse_image("acme/app:1") == ImageRef("docker.io", "acme/app", "1", None)
    assert parse_image("localhosts/app") == ImageRef("docker.io", "localhosts/app", None, None)
    assert parse_image("localhost/app") == ImageRef("localhost", "app", None, None)


def test_target_names_up_to_245_characters_fit_gitlab_job_and_environment_names(tmp_path: Path) -> None:
    # `authscope pipeline` names jobs "authscope:<name>" and environments "registry/<name>";
    # GitLab refuses names over 255 characters, so 245 is the longest target name.
    name = "n" * 245
    f = load_ok(tmp_path, MINIMAL.replace("name: harbor-1", f"name: {name}"))
    assert [t.name for t in f.targets] == [name]
    assert len(f"authscope:{name}") == 255
    found = problems(tmp_path, MINIMAL.replace("name: harbor-1", f"name: {name}n"))
    assert [p.where for p in found] == ["targets[0].name"]
    assert found[0].message.startswith("is 246 characters long; the limit is 245")

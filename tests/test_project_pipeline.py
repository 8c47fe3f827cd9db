"""The project's .gitlab-ci.yml runs every test, each in a job that can pass it.

Under CI=true a skip fails (tests/conftest.py), so a job that runs a test it
has no tools for is red, and a test no job selects never runs. Each job's
pytest line is collected for real (``pytest --collect-only`` with the job's
own arguments): every collected test must be in some job, and the slim unit
jobs (no registries, clients, docker CLI or privileges) must hold no e2e or
reliability test. The controls feed the same checks a pipeline with one of
those mistakes.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / ".gitlab-ci.yml"
PYTHONS = ["3.10", "3.11", "3.12", "3.13", "3.14"]
# What a job must do before it can run the suites that need registries,
# clients, the docker CLI and root.
SETUP = "./scripts/install-deps.sh"


def load() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(PIPELINE.read_text())
    return doc


def resolved(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """A job with its `extends` merged in (one level of keys, as GitLab merges scripts)."""
    job = dict(doc[name])
    parents = job.pop("extends", [])
    for parent in [parents] if isinstance(parents, str) else parents:
        job = {**resolved(doc, parent), **job}
    return job


def pytest_args(job: dict[str, Any]) -> list[tuple[str, ...]]:
    """The arguments of each `python -m pytest` line of a job's script."""
    found = []
    for line in job.get("script", []):
        words = shlex.split(line)
        if words[:3] == ["python", "-m", "pytest"]:
            found.append(tuple(w for w in words[3:] if not w.startswith("--junitxml")))
    return found


# Collects several argument lists in one interpreter: after the first, the
# test modules are imported already and a collection takes a fraction of a second.
COLLECT = """
import json, sys
import pytest

class Ids:
    def pytest_collection_finish(self, session):
        self.ids = [item.nodeid for item in session.items]

out = {}
for args in json.loads(sys.argv[1]):
    ids = Ids()
    code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *args], plugins=[ids])
    out[json.dumps(args)] = [int(code), getattr(ids, "ids", [])]
print("\\n" + json.dumps(out))
"""
_collected: dict[tuple[str, ...], frozenset[str]] = {}


def collect(*arg_lists: tuple[str, ...]) -> None:
    """Collect, for real, what `pytest ARGS` selects for each argument list not collected yet."""
    todo = sorted({args for args in arg_lists if args not in _collected})
    if not todo:
        return
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    proc = subprocess.run(
        [sys.executable, "-c", COLLECT, json.dumps(todo)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for key, (code, ids) in json.loads(proc.stdout.splitlines()[-1]).items():
        assert code in (0, 5), f"pytest {key}: exit {code}"  # 5: nothing selected
        _collected[tuple(json.loads(key))] = frozenset(ids)


def collected(args: tuple[str, ...]) -> frozenset[str]:
    collect(args)
    return _collected[args]


def jobs_running_pytest(doc: dict[str, Any]) -> dict[str, list[tuple[str, ...]]]:
    jobs = {}
    for name in doc:
        if name.startswith(".") or not isinstance(doc[name], dict) or "script" not in resolved(doc, name):
            continue
        args = pytest_args(resolved(doc, name))
        if args:
            jobs[name] = args
    return jobs


def problems(doc: dict[str, Any]) -> list[str]:
    """Everything wrong with how ``doc`` runs the suite (empty: nothing)."""
    found: list[str] = []
    jobs = jobs_running_pytest(doc)
    collect(("tests",), ("tests", "-m", "e2e"), *(args for lines in jobs.values() for args in lines))
    run_by: dict[str, list[str]] = {}
    for name, lines in jobs.items():
        for args in lines:
            for test in collected(args):
                run_by.setdefault(test, []).append(name)
    everything = collected(("tests",))
    missing = sorted(everything - set(run_by))
    if missing:
        dirs = sorted({t.split("::")[0].rsplit("/", 1)[0] for t in missing})
        found.append(f"{len(missing)} tests run in no job (in {', '.join(dirs)}), e.g. {missing[0]}")
    in_suites = {t for t in everything if t.startswith(("tests/e2e/", "tests/reliability/"))}
    needs_setup = collected(("tests", "-m", "e2e")) | in_suites
    for name, lines in jobs.items():
        job = resolved(doc, name)
        prepared = any(SETUP in line for line in job.get("before_script", []) + job.get("script", []))
        slim = str(job.get("image", "")).endswith("-slim")
        tests = set().union(*(collected(args) for args in lines))
        if (slim or not prepared) and tests & needs_setup:
            found.append(
                f"job {name} ({job.get('image')}) runs {len(tests & needs_setup)} tests that need "
                f"registries, clients and root, e.g. {sorted(tests & needs_setup)[0]}"
            )
    return found


def test_every_test_runs_in_a_job_that_can_pass_it() -> None:
    assert problems(load()) == []


def test_every_test_directory_is_run_by_some_job() -> None:
    jobs = jobs_running_pytest(load())
    ran = set().union(*(collected(args) for lines in jobs.values() for args in lines))
    for directory in ("tests/", "tests/e2e/", "tests/reliability/"):
        in_dir = {t for t in ran if t.startswith(directory) and "/" not in t[len(directory) :].split("::")[0]}
        assert in_dir, f"no job runs a test of {directory}"


def test_unit_jobs_run_every_python_on_slim_images() -> None:
    unit = load()["unit"]
    assert unit["parallel"]["matrix"] == [{"PYTHON": PYTHONS}]
    assert unit["image"] == "python:${PYTHON}-slim"


# -- controls: the same checks catch each mistake -------------------------------------


def test_control_a_unit_job_that_runs_reliability_is_caught() -> None:
    doc = copy.deepcopy(load())
    doc["unit"]["script"] = [
        line.replace(" --ignore=tests/reliability", "") if "pytest" in line else line for line in doc["unit"]["script"]
    ]
    found = problems(doc)
    assert any(p.startswith("job unit (python:${PYTHON}-slim) runs") and "tests/reliability/" in p for p in found), (
        found
    )


def test_control_a_unit_job_without_the_marker_is_caught() -> None:
    doc = copy.deepcopy(load())
    doc["unit"]["script"] = [line.replace(' -m "not e2e"', "") for line in doc["unit"]["script"]]
    found = problems(doc)
    assert any(p.startswith("job unit") and "tests/test_benchmarks_" in p for p in found), found


@pytest.mark.parametrize("dropped", ["reliability", "e2e"])
def test_control_a_suite_no_job_runs_is_caught(dropped: str) -> None:
    doc = copy.deepcopy(load())
    del doc[dropped]
    found = problems(doc)
    assert any("run in no job" in p and f"tests/{dropped}" in p for p in found), found


def test_control_a_job_without_the_setup_is_caught() -> None:
    doc = copy.deepcopy(load())
    doc["reliability"] = {k: v for k, v in resolved(doc, "reliability").items() if k != "before_script"}
    found = problems(doc)
    assert any(p.startswith("job reliability") for p in found), found


# -- the image and the package, published (#17 item 4) ------------------------------------

RELEASE_TAG_RULE = [{"if": "$CI_COMMIT_TAG =~ /^\\d+\\.\\d+\\.\\d+$/"}]


def test_image_job_builds_with_buildah_and_pushes_sha_and_version() -> None:
    job = resolved(load(), "container-image")
    script = "\n".join(job["script"])
    assert "services" not in job and "docker" not in job["image"]  # no privileged Docker daemon
    assert "./scripts/build-image" in script and '"docker://$CI_REGISTRY_IMAGE:$CI_COMMIT_SHA"' in script
    assert '"docker://$CI_REGISTRY_IMAGE:$CI_COMMIT_TAG"' in script
    assert job["rules"] == [*RELEASE_TAG_RULE, {"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]
    assert "--password-stdin" in script and '$CI_REGISTRY_PASSWORD" |' in script  # never in argv


def test_package_published_on_release_tags_only_with_the_job_token_and_trusted_publishing() -> None:
    doc = load()
    gitlab, pypi = resolved(doc, "publish-gitlab-pypi"), resolved(doc, "publish-pypi")
    for job in (gitlab, pypi):
        assert job["rules"] == RELEASE_TAG_RULE
        assert "build" in job["needs"]
    assert 'TWINE_PASSWORD="$CI_JOB_TOKEN"' in "\n".join(gitlab["script"])
    assert "$CI_API_V4_URL/projects/$CI_PROJECT_ID/packages/pypi" in "\n".join(gitlab["script"])
    assert pypi["id_tokens"] == {"PYPI_ID_TOKEN": {"aud": "pypi"}}
    assert "mint-token" in "\n".join(pypi["script"])
    assert "container-image" in resolved(doc, "release")["needs"]

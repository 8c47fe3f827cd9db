"""The GitLab CI/CD components (templates/), the project's .gitlab-ci.yml and the
child pipelines `authscope pipeline` writes, checked offline.

Every pipeline document is validated against GitLab's CI schema with
`check-jsonschema --builtin-schema vendor.gitlab-ci` (one run for all of them).
A component is a two-document file, a `spec: inputs:` header and the jobs, which
check-jsonschema cannot read as one: the header is validated alone, and the jobs
after `render` has substituted `$[[ inputs.x ]]` the way GitLab does — an
interpolation that is a whole value keeps the input's type, one inside a string
becomes text (true/false for a boolean). The shell the components generate is
run with a stub `authscope` to see which flags each input produces.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

import authscope
from authscope import pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = REPO_ROOT / "templates"
COMPONENTS = sorted(p.stem for p in TEMPLATES.glob("*.yml"))
PROJECT_PIPELINE = REPO_ROOT / ".gitlab-ci.yml"
CONSUMER_PIPELINES = sorted((REPO_ROOT / "tests" / "e2e" / "gitlab_ci_local").glob("*.gitlab-ci.yml"))
TARGETS_FIXTURE = REPO_ROOT / "tests" / "e2e" / "gitlab_ci_local" / "authscope.yml"
# The README and the reference pages it links (docs/components.md holds most examples).
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

INTERPOLATION = re.compile(r"\$\[\[\s*inputs\.([A-Za-z0-9_-]*)\s*(\|[^\]]*)?\]\]")
KEBAB = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
INPUT_TYPES: dict[str, Any] = {"string": str, "number": (int, float), "boolean": bool, "array": list}
# Keywords that configure the whole pipeline: a component must not set them.
GLOBAL_KEYWORDS = {"default", "include", "stages", "variables", "workflow", "image", "services", "cache"}
GLOBAL_KEYWORDS |= {"before_script", "after_script", "pages"}


# -- the renderer ---------------------------------------------------------------------


class InputError(ValueError):
    """A component was given inputs GitLab would refuse."""


def load_component(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, jobs) of templates/NAME.yml."""
    docs = list(yaml.safe_load_all((TEMPLATES / f"{name}.yml").read_text()))
    assert len(docs) == 2, f"{name}.yml: a spec header, ---, then the jobs"
    header, body = docs
    assert isinstance(header, dict) and isinstance(body, dict)
    return header, body


def input_values(spec: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """Every input's value: given, else its default; checked as GitLab checks them."""
    unknown = set(given) - set(spec)
    if unknown:
        raise InputError(f"unknown input(s): {', '.join(sorted(unknown))}")
    values = {}
    for name, decl in spec.items():
        decl = decl or {}
        if name in given:
            value = given[name]
        elif "default" in decl:
            value = decl["default"]
        else:
            raise InputError(f"input {name}: required value has not been provided")
        kind = decl.get("type", "string")
        expected = INPUT_TYPES[kind]
        if not isinstance(value, expected) or (kind == "number" and isinstance(value, bool)):
            raise InputError(f"input {name}: provided value is not a {kind}")
        if "options" in decl and value not in decl["options"]:
            raise InputError(f"input {name}: {value!r} is not one of the options")
        if "regex" in decl and not re.search(decl["regex"], str(value)):
            raise InputError(f"input {name}: {value!r} does not match {decl['regex']}")
        values[name] = value
    return values


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def render(body: Any, spec: Mapping[str, Any], given: Mapping[str, Any]) -> Any:
    """`body` with every `$[[ inputs.x ]]` (in keys too) replaced."""
    values = input_values(spec, given)

    def one(match: re.Match[str]) -> Any:
        name, functions = match.group(1), match.group(2)
        if functions:
            raise InputError(f"input {name}: interpolation functions are not rendered here")
        if name not in values:
            raise InputError(f"unknown interpolation key: {name}")
        return values[name]

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {walk(k): walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, str):
            whole = INTERPOLATION.fullmatch(node.strip())
            if whole and node.strip() == node:
                return one(whole)
            return INTERPOLATION.sub(lambda m: as_text(one(m)), node)
        return node

    return walk(body)


def render_component(name: str, **given: Any) -> dict[str, Any]:
    header, body = load_component(name)
    rendered: dict[str, Any] = render(body, header["spec"].get("inputs") or {}, given)
    return rendered


def used_inputs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            found |= used_inputs(k) | used_inputs(v)
    elif isinstance(node, list):
        for item in node:
            found |= used_inputs(item)
    elif isinstance(node, str):
        found |= {m.group(1) for m in INTERPOLATION.finditer(node)}
    return found


def test_render_keeps_the_type_of_a_whole_value_and_writes_text_inside_a_string() -> None:
    spec = {"n": {"type": "number"}, "b": {"type": "boolean"}, "a": {"type": "array"}, "s": {"default": "x"}}
    body = {
        "$[[ inputs.s ]]-job": {
            "parallel": "$[[ inputs.n ]]",
            "rules": "$[[inputs.a]]",
            "script": ["echo $[[ inputs.b ]] $[[ inputs.n ]]"],
        }
    }
    out = render(body, spec, {"n": 2, "b": False, "a": [{"when": "manual"}]})
    assert out == {"x-job": {"parallel": 2, "rules": [{"when": "manual"}], "script": ["echo false 2"]}}


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"b": "true"}, "not a boolean"),
        ({"b": True, "nope": 1}, "unknown input"),
        ({}, "required value"),
    ],
)
def test_render_refuses_what_gitlab_refuses(given: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        render({"j": {"script": ["$[[ inputs.b ]]"]}}, {"b": {"type": "boolean"}}, given)


# -- schema validation, one check-jsonschema run for every document ---------------------

# Inputs each component is rendered with: its defaults, and every other input changed.
RENDER_CASES: dict[str, dict[str, dict[str, Any]]] = {
    "fanout": {
        "defaults": {},
        "changed": {
            "job-name": "release:harbor",
            "stage": "release",
            "targets-file": "release/authscope.yml",
            "image": "registry.example.com/tools/authscope:0.1.0",
            "install": "true",
            "jobs": 8,
            "fail-fast": True,
            "registry-login": False,
            "pull-once": True,
            "gitlab-release": True,
            "gitlab-deployments": True,
            "args": "--retries 4 --timeout 900",
            "rules": [{"if": "$CI_COMMIT_TAG =~ /^v?\\d+\\.\\d+\\.\\d+$/"}, {"when": "manual", "allow_failure": True}],
            "resource-group": "authscope-release",
        },
    },
    "fanout-pipeline": {
        "defaults": {},
        "changed": {
            "job-name": "distribute",
            "stage": "release",
            "targets-file": "release/authscope.yml",
            "image": "python:3.13-slim",
            "install": 'pip install "authscope==$AUTHSCOPE_VERSION"',
            "child-stage": "copy",
            "slices": 3,
            "jobs": 2,
            "fail-fast": True,
            "registry-login": False,
            "rules": [{"when": "manual"}],
            "resource-group": "authscope-release",
        },
    },
    "check": {
        "defaults": {},
        "changed": {
            "job-name": "nightly:credentials",
            "stage": "verify",
            "targets-file": "release/authscope.yml",
            "image": "python:3.13-slim",
            "install": "true",
            "jobs": 8,
            "targets": "harbor-1,harbor-2",
            "registry-login": False,
            "rules": [{"if": '$CI_PIPELINE_SOURCE == "schedule"'}, {"when": "manual", "allow_failure": True}],
        },
    },
    "scope": {
        "defaults": {},
        "changed": {
            "job-name": ".release-scope",
            "image": "python:3.10-slim",
            "install": "true",
            "registry-login": False,
            "isolate-home": True,
        },
    },
}
CHILD_CASES: dict[str, list[str]] = {
    "per-target": [],
    "slices": ["--slices", "2", "--jobs", "3", "--fail-fast", "--no-registry-login", "--stage", "copy"],
    "custom-install": [
        "--image",
        "python:3.10-slim",
        "--install",
        'apt-get update -qq && apt-get install -y -qq skopeo && pip install "$CI_PROJECT_DIR/dist/"*.whl',
    ],
}
SCHEMA_CASES = (
    [f"header:{name}" for name in COMPONENTS]
    + [f"render:{name}:{case}" for name, cases in RENDER_CASES.items() for case in cases]
    + ["project:.gitlab-ci.yml", "render:fanout:project-selftest"]
    + [f"consumer:{p.name}" for p in CONSUMER_PIPELINES]
    + [f"child:{case}" for case in CHILD_CASES]
)


def require_check_jsonschema() -> str:
    found = shutil.which("check-jsonschema")
    if found is None:
        message = "check-jsonschema not found (scripts/install-ci-tools.sh, or pip install check-jsonschema)"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{message}; CI=true, so the pipelines must be validated", pytrace=False)
        pytest.skip(message)
    return found


def child_environ(tmp: Path) -> dict[str, str]:
    """The variables tests/e2e/gitlab_ci_local/authscope.yml needs to be planned."""
    (tmp / "ca.crt").write_text("not read when planning\n")
    (tmp / "password").write_text("not read when planning\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REMOTE_", "LOCAL"))}
    env.update(
        LOCAL="gitlab.example.com:5050",
        REMOTE_1="harbor-1.example.com",
        REMOTE_2="harbor-2.example.com:8443",
        REMOTE_2_PASSWORD=str(tmp / "password"),
        REMOTE_2_CA=str(tmp / "ca.crt"),
    )
    return env


def generate_child(args: list[str], tmp: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "authscope", "pipeline", "-f", str(TARGETS_FIXTURE), *args],
        env=child_environ(tmp),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def project_pipeline() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(PROJECT_PIPELINE.read_text())
    return doc


def selftest_include() -> dict[str, Any]:
    (include,) = [i for i in project_pipeline()["include"] if "component" in i]
    assert isinstance(include, dict)
    return include


def schema_document(case: str, tmp: Path) -> Any:
    kind, _, rest = case.partition(":")
    if kind == "header":
        return load_component(rest)[0]
    if kind == "render":
        name, _, variant = rest.partition(":")
        if variant == "project-selftest":
            return render_component(name, **selftest_include()["inputs"])
        return render_component(name, **RENDER_CASES[name][variant])
    if kind == "project":
        return project_pipeline()
    if kind == "consumer":
        return yaml.safe_load((REPO_ROOT / "tests" / "e2e" / "gitlab_ci_local" / rest).read_text())
    if kind == "child":
        return yaml.safe_load(generate_child(CHILD_CASES[rest], tmp))
    raise AssertionError(case)


@pytest.fixture(scope="module")
def schema_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Case -> the schema's complaints, from one check-jsonschema run over every document."""
    tool = require_check_jsonschema()
    tmp = tmp_path_factory.mktemp("schema")
    files: dict[str, str] = {}
    for i, case in enumerate(SCHEMA_CASES):
        path = tmp / f"{i:02d}-{re.sub(r'[^A-Za-z0-9.-]+', '_', case)}.json"
        path.write_text(json.dumps(schema_document(case, tmp), indent=1))
        files[str(path)] = case
    proc = subprocess.run(
        [tool, "--builtin-schema", "vendor.gitlab-ci", "--output-format", "json", *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result = json.loads(proc.stdout)
    errors: dict[str, list[str]] = {case: [] for case in SCHEMA_CASES}
    for error in result.get("errors", []) + result.get("parse_errors", []):
        where = error.get("best_deep_match") or error
        errors[files[error["filename"]]].append(f"{where.get('path', '')}: {where.get('message', error)}")
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return errors


@pytest.mark.parametrize("case", SCHEMA_CASES)
def test_document_validates_against_gitlab_ci_schema(case: str, schema_errors: dict[str, list[str]]) -> None:
    assert schema_errors[case] == []


# -- the components' inputs -------------------------------------------------------------


@pytest.mark.parametrize("name", COMPONENTS)
def test_inputs_are_kebab_case_typed_and_described(name: str) -> None:
    spec = load_component(name)[0]["spec"]
    assert set(spec) <= {"inputs", "description"}
    assert spec["inputs"], "a component without inputs"
    for input_name, decl in spec["inputs"].items():
        assert KEBAB.fullmatch(input_name), f"{input_name}: inputs are kebab-case"
        assert decl.get("type") in INPUT_TYPES, f"{input_name}: give a type"
        assert len(decl.get("description", "")) >= 20, f"{input_name}: describe it"
        if "default" in decl:
            input_values({input_name: decl}, {})  # the default has the declared type


@pytest.mark.parametrize("name", COMPONENTS)
def test_every_input_is_declared_and_used(name: str) -> None:
    header, body = load_component(name)
    declared = set(header["spec"]["inputs"])
    used = used_inputs(body)
    assert used - declared == set(), "used but not declared"
    assert declared - used == set(), "declared but never used"
    assert used_inputs(header) == set(), "the header cannot interpolate inputs"


@pytest.mark.parametrize("name", COMPONENTS)
def test_component_sets_no_global_keywords_and_names_its_jobs_from_inputs(name: str) -> None:
    _, body = load_component(name)
    for key in body:
        assert key not in GLOBAL_KEYWORDS, f"{key}: a component must not configure the whole pipeline"
        assert "$[[ inputs.job-name ]]" in key, f"{key}: job names come from the job-name input"


@pytest.mark.parametrize("name", COMPONENTS)
def test_default_image_is_this_release_and_installs_nothing(name: str) -> None:
    inputs = load_component(name)[0]["spec"]["inputs"]
    assert inputs["image"]["default"] == f"{pipeline.IMAGE_REPOSITORY}:{authscope.__version__}"
    assert inputs["image"]["default"] == pipeline.DEFAULT_IMAGE  # authscope pipeline's child jobs: the same
    assert inputs["install"]["default"] == pipeline.DEFAULT_INSTALL == ""


def test_scope_job_name_must_be_hidden() -> None:
    assert list(render_component("scope")) == [".authscope-scope"]
    with pytest.raises(InputError, match="does not match"):
        render_component("scope", **{"job-name": "authscope-scope"})


# -- what the jobs run ------------------------------------------------------------------


def run_job_shell(
    job: Mapping[str, Any], tmp: Path, keys: tuple[str, ...] = ("before_script", "script")
) -> list[list[str]]:
    """Run the job's script lines in bash (set -eo pipefail, as GitLab does), with
    the job's variables and a stub `authscope` that records its arguments; return
    the stub's calls."""
    stub_dir = tmp / "stub"
    stub_dir.mkdir(exist_ok=True)
    stub = stub_dir / "authscope"
    # The stub records its argv and, for the commands that read AUTHSCOPE_*
    # variables, the options authscope's own parser resolves from both.
    stub.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "argv = sys.argv[1:]\n"
        "with open(os.environ['STUB_CALLS'], 'a') as f:\n"
        "    f.write(json.dumps(argv) + '\\n')\n"
        "from authscope import cli\n"
        "if argv and argv[0] in cli.ENV_COMMANDS:\n"
        "    parser = cli.build_parser(argv[0])\n"
        "    try:\n"
        "        args = parser.parse_args(argv)\n"
        "        cli.options_from_env(parser, args, os.environ)\n"
        "    except (SystemExit, cli.UsageError):\n"
        "        sys.exit(0)  # hostile words in argv: the argv above is what counts\n"
        "    options = {k: v for k, v in vars(args).items() if k != 'run'}\n"
        "    with open(os.environ['STUB_CALLS'] + '.options', 'a') as f:\n"
        "        f.write(json.dumps(options) + '\\n')\n"
    )
    stub.chmod(0o755)
    calls = stub_dir / "calls.jsonl"
    calls.write_text("")
    (stub_dir / "calls.jsonl.options").write_text("")
    env = {
        "PATH": f"{stub_dir}{os.pathsep}{os.environ['PATH']}",
        "STUB_CALLS": str(calls),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "plugin"),
        "CI_REGISTRY": "gitlab.example.com:5050",
        "CI_REGISTRY_USER": "gitlab-ci-token",
    }
    for key, value in (job.get("variables") or {}).items():
        env[key] = as_text(value["value"] if isinstance(value, dict) else value)  # as GitLab: true, not True
    script = "set -eo pipefail\n" + "\n".join(line for key in keys for line in job.get(key, [])) + "\n"
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(line) for line in calls.read_text().splitlines()]


def resolved_options(tmp: Path) -> list[dict[str, Any]]:
    """The options each `authscope fanout|pipeline` call of the last run_job_shell resolved."""
    return [json.loads(line) for line in (tmp / "stub" / "calls.jsonl.options").read_text().splitlines()]


LOGIN = ["login", "gitlab.example.com:5050", "-u", "gitlab-ci-token", "--password-env", "CI_REGISTRY_PASSWORD"]
REPORTS = ["--junit", "authscope-junit.xml", "--dotenv", "authscope.env", "--json", "authscope.json"]


FANOUT_DEFAULTS = {
    "file": "authscope.yml",
    "junit": "authscope-junit.xml",
    "dotenv": "authscope.env",
    "json": "authscope.json",
    "jobs": None,
    "fail_fast": False,
    "pull_once": False,
    "gitlab_release": False,
    "gitlab_deployments": False,
    "retries": None,
    "timeout": None,
}


@pytest.mark.parametrize(
    ("given", "login", "argv", "options"),
    [
        ({}, True, [], {}),
        (
            {
                "jobs": 8,
                "fail-fast": True,
                "registry-login": False,
                "pull-once": True,
                "gitlab-release": True,
                "gitlab-deployments": True,
                "args": "--retries 4  --timeout 900",
            },
            False,
            ["--retries", "4", "--timeout", "900"],
            {
                "jobs": 8,
                "fail_fast": True,
                "pull_once": True,
                "gitlab_release": True,
                "gitlab_deployments": True,
                "retries": 4,
                "timeout": 900.0,
            },
        ),
        (
            {"targets-file": "release files/authscope.yml", "jobs": 1},
            True,
            [],
            {"file": "release files/authscope.yml", "jobs": 1},
        ),
    ],
    ids=["defaults", "all-flags", "path-with-space"],
)
def test_fanout_job_runs_authscope_fanout_with_the_inputs(
    given: dict[str, Any], login: bool, argv: list[str], options: dict[str, Any], tmp_path: Path
) -> None:
    """The script is one `authscope fanout` line; the inputs reach authscope as
    AUTHSCOPE_* job variables, resolved by its own parser."""
    job = render_component("fanout", install="true", **given)["authscope-fanout"]
    calls = run_job_shell(job, tmp_path)
    assert calls == [["--version"], *([LOGIN] if login else []), ["fanout", *argv]]
    (resolved,) = resolved_options(tmp_path)
    expected = {**FANOUT_DEFAULTS, **options}
    assert {key: resolved[key] for key in expected} == expected
    assert run_job_shell(job, tmp_path, ("after_script",)) == [["sweep"]]


@pytest.mark.parametrize(
    ("given", "login", "options"),
    [
        ({}, True, {}),
        (
            {"jobs": 8, "targets": "harbor-1,harbor-2", "registry-login": False, "targets-file": "a b/authscope.yml"},
            False,
            {"jobs": 8, "target": ["harbor-1", "harbor-2"], "file": "a b/authscope.yml"},
        ),
    ],
    ids=["defaults", "all-inputs"],
)
def test_check_job_runs_authscope_check_with_the_inputs(
    given: dict[str, Any], login: bool, options: dict[str, Any], tmp_path: Path
) -> None:
    job = render_component("check", install="true", **given)["authscope-check"]
    calls = run_job_shell(job, tmp_path)
    assert calls == [["--version"], *([LOGIN] if login else []), ["check"]]
    (resolved,) = resolved_options(tmp_path)
    expected = {
        "file": "authscope.yml",
        "jobs": None,
        "target": [],
        "junit": "authscope-check-junit.xml",
        "json": "authscope-check.json",
        **options,
    }
    assert {key: resolved[key] for key in expected} == expected
    assert job["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "schedule"'}]  # scheduled pipelines by default
    assert job["artifacts"]["when"] == "always"
    assert job["artifacts"]["reports"] == {"junit": "authscope-check-junit.xml"}


def test_fanout_job_publishes_its_reports_always() -> None:
    job = render_component("fanout")["authscope-fanout"]
    artifacts = job["artifacts"]
    assert artifacts["when"] == "always"
    assert artifacts["reports"] == {"junit": "authscope-junit.xml", "dotenv": "authscope.env"}
    assert "authscope.json" in artifacts["paths"]
    assert job["after_script"] == ["authscope sweep"]
    assert job["rules"] == [{"if": "$CI_COMMIT_TAG"}]  # releases: tags only, unless told otherwise
    assert job["resource_group"] == ""  # GitLab ignores an empty one


@pytest.mark.parametrize(
    ("given", "options"),
    [
        ({}, {}),
        (
            {"slices": 3, "jobs": 2, "fail-fast": True, "registry-login": False, "child-stage": "copy"},
            {"slices": 3, "jobs": 2, "fail_fast": True, "registry_login": False, "stage": "copy"},
        ),
    ],
    ids=["defaults", "all-flags"],
)
def test_generator_job_passes_the_inputs_to_authscope_pipeline(
    given: dict[str, Any], options: dict[str, Any], tmp_path: Path
) -> None:
    install = 'pip install "$CI_PROJECT_DIR/dist/authscope.whl"'
    rendered = render_component("fanout-pipeline", install=install, **given)
    job = rendered["authscope-fanout-generate"]
    job["before_script"] = ["true"]  # the install line itself runs in the child jobs
    calls = run_job_shell(job, tmp_path)
    assert calls == [["pipeline"]]
    (resolved,) = resolved_options(tmp_path)
    expected = {
        "file": "authscope.yml",
        "image": pipeline.DEFAULT_IMAGE,
        "install": install,  # as written: the child jobs' shells expand it
        "stage": "fanout",
        "slices": None,
        "jobs": None,
        "fail_fast": False,
        "registry_login": True,
        **options,
    }
    assert {key: resolved[key] for key in expected} == expected
    assert (tmp_path / "authscope-child-pipeline.yml").exists()


def test_trigger_job_runs_the_generated_pipeline_and_depends_on_it() -> None:
    jobs = render_component("fanout-pipeline")
    generator, trigger = jobs["authscope-fanout-generate"], jobs["authscope-fanout"]
    artifact = "authscope-child-pipeline.yml"
    assert generator["artifacts"]["paths"] == [artifact]
    assert any(artifact in line and line.startswith("authscope pipeline ") for line in generator["script"])
    assert trigger["trigger"] == {
        "include": [{"artifact": artifact, "job": "authscope-fanout-generate"}],
        "strategy": "depend",
    }
    assert trigger["needs"] == [{"job": "authscope-fanout-generate", "artifacts": True}]
    assert generator["stage"] == trigger["stage"] and generator["rules"] == trigger["rules"]


def test_generated_child_pipeline_has_a_job_per_target(tmp_path: Path) -> None:
    child = yaml.safe_load(generate_child([], tmp_path))
    assert child["stages"] == ["fanout"]
    for name in ("remote-1", "remote-2"):
        job = child[f"authscope:{name}"]
        assert job["environment"]["name"] == f"registry/{name}"
        assert job["after_script"] == ["authscope sweep"]
        assert f"--target {name}" in job["script"][0]


@pytest.mark.parametrize("name", COMPONENTS)
def test_component_shell_lines_parse(name: str, tmp_path: Path) -> None:
    for job in render_component(name).values():
        for key in ("before_script", "script", "after_script"):
            script = "\n".join(job.get(key, []))
            proc = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True, timeout=30, check=False)
            assert proc.returncode == 0, f"{key}: {proc.stderr}"


# -- the project's own pipeline ---------------------------------------------------------


def test_project_pipeline_self_tests_this_commits_component() -> None:
    include = selftest_include()
    assert include["component"] == "$CI_SERVER_FQDN/$CI_PROJECT_PATH/fanout@$CI_COMMIT_SHA"
    job = render_component("fanout", **include["inputs"])[include["inputs"]["job-name"]]
    assert (REPO_ROOT / include["inputs"]["targets-file"]).is_file()
    assert job["before_script"][0] == ". tests/e2e/gitlab_ci_local/selftest-setup.sh"


def test_project_pipeline_covers_lint_tests_packages_and_release() -> None:
    doc = project_pipeline()
    # Which job runs which tests, on which Python: tests/test_project_pipeline.py.
    assert any("ruff check" in line for line in doc["lint"]["script"])
    assert any(line.strip() == "mypy" for line in doc["lint"]["script"])
    assert any("pytest" in line for job in ("unit", "e2e", "reliability") for line in doc[job]["script"])
    assert any("python -m build" in line for line in doc["build"]["script"])
    release = doc["release"]
    assert release["release"]["tag_name"] == "$CI_COMMIT_TAG"
    assert release["rules"] == [{"if": "$CI_COMMIT_TAG =~ /^\\d+\\.\\d+\\.\\d+$/"}]
    for job in release["needs"]:
        assert job in doc or job == selftest_include()["inputs"]["job-name"]


# -- the README and docs/ ----------------------------------------------------------


def doc_pipelines() -> Iterator[tuple[str, int, str]]:
    """(doc, line, block) of each ```yaml block of the docs whose first line is `# .gitlab-ci.yml`."""
    for doc in DOCS:
        text = doc.read_text()
        for match in re.finditer(r"^```yaml\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            block = match.group(1)
            if block.startswith("# .gitlab-ci.yml"):
                yield doc.stem, text[: match.start()].count("\n") + 1, block


def test_docs_pipelines_validate(tmp_path: Path) -> None:
    tool = require_check_jsonschema()
    blocks = list(doc_pipelines())
    assert any(doc == "README" for doc, _, _ in blocks), "the README shows no pipeline"
    files = []
    for doc, line, block in blocks:
        path = tmp_path / f"{doc}-line-{line}.yml"
        path.write_text(block)
        files.append(str(path))
    proc = subprocess.run(
        [tool, "--builtin-schema", "vendor.gitlab-ci", "--data-transform", "gitlab-ci", *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docs_include_forms_name_real_components() -> None:
    text = "\n".join(doc.read_text() for doc in DOCS)
    for name in re.findall(r"/authscope/([a-z-]+)@", text):
        assert name in COMPONENTS, f"docs include a component that does not exist: {name}"
    for name in re.findall(r"templates/([a-z-]+)\.yml", text):
        assert name in COMPONENTS, f"docs include a template that does not exist: {name}"

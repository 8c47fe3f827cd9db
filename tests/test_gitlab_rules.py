"""The distributed fan-out and the reports under GitLab's real rules (issue 20),
and no secret expanded into a field (issue 12, item 10).

- Environment-scoped variables: the generator job (`authscope pipeline`) has
  none of the targets' variables, each child job only its own target's; the
  generated jobs are run here in-process, each with the environment GitLab
  would give it.
- JUnit that libxml2 (lxml, GitLab's parser) accepts; lines and tails capped;
  nothing twice.
- dotenv strictly smaller than 5 KB.
- Job, environment, stage and variable names GitLab accepts.
- Component inputs never reach a shell as code.
- One deployment per target and run.
- A credential variable is never `${...}`-expanded into a field.
"""

from __future__ import annotations

import json
import shlex
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from authscope import gitlab, targets
from authscope import report as R
from authscope.cli import main
from authscope.errors import TargetsFileError
from tests.test_templates import (
    load_component,
    render,
    render_component,
    require_check_jsonschema,
    resolved_options,
    run_job_shell,
)

PASSWORD_A = "test-file-pw-a-5d1c0e9b"  # obviously fake test secrets
PASSWORD_B = "test-env-pw-b-7a2e4f10"
PASSWORD_C = "test-file-pw-c-39bb61d4"
USER_B = "robot$b+ci"
COMMON = {
    "CI_REGISTRY_IMAGE": "gitlab.example.com:5050/group/app",
    "CI_COMMIT_TAG": "1.0",
}

# A README-style many-targets file: each target's variables are scoped to its
# environment, password_file/ca_file are GitLab file variables (paths).
MANY = """\
source: ${CI_REGISTRY_IMAGE}/app:${CI_COMMIT_TAG}
tags: ["${CI_COMMIT_TAG}", latest]
tool: crane
targets:
  - name: harbor-a
    registry: ${HARBOR_A}
    repository: release/app
    username: robot$release+ci
    password_file: ${HARBOR_A_PASSWORD}
    ca_file: ${HARBOR_A_CA}
  - name: harbor-b
    registry: ${HARBOR_B}
    repository: release/app
    username_env: HARBOR_B_USER
    password_env: HARBOR_B_PASSWORD
  - name: harbor-c
    registry: harbor-c.example:8443
    repository: release/app
    username: ci
    password_file: ${HARBOR_C_PASSWORD}
"""


def file_variable(tmp: Path, name: str, content: str) -> str:
    """A GitLab file variable: the job sees the path of a file holding ``content``."""
    path = tmp / "variables" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(content)
    return str(path)


@pytest.fixture
def many(tmp_path: Path) -> dict[str, Any]:
    """The targets file and, per environment, the variables GitLab scopes to it."""
    path = tmp_path / "authscope.yml"
    path.write_text(MANY)
    scoped = {
        "registry/harbor-a": {
            "HARBOR_A": "harbor-a.example",
            "HARBOR_A_PASSWORD": file_variable(tmp_path, "HARBOR_A_PASSWORD", PASSWORD_A + "\n"),
            "HARBOR_A_CA": file_variable(tmp_path, "HARBOR_A_CA", "-----BEGIN CERTIFICATE-----\n"),
        },
        "registry/harbor-b": {
            "HARBOR_B": "harbor-b.example",
            "HARBOR_B_USER": USER_B,
            "HARBOR_B_PASSWORD": PASSWORD_B,
        },
        "registry/harbor-c": {
            "HARBOR_C_PASSWORD": file_variable(tmp_path, "HARBOR_C_PASSWORD", PASSWORD_C + "\n"),
        },
    }
    return {"path": str(path), "scoped": scoped}


def generate(path: str, environ: Mapping[str, str], capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code = main(["pipeline", "-f", path, *args], environ=dict(environ))
    out = capsys.readouterr()
    assert code == 0, out.err
    child: dict[str, Any] = yaml.safe_load(out.out)
    return child


def job_argv(job: Mapping[str, Any]) -> list[str]:
    """The `authscope ...` arguments of a generated job's one script line."""
    (line,) = job["script"]
    words = shlex.split(line)
    assert words[0] == "authscope"
    return words[1:]


# -- 1. environment-scoped variables ------------------------------------------------


def test_generator_needs_no_target_variable(many: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """The generator job has the pipeline's variables, none scoped to a target's
    environment: `authscope pipeline` plans every target from its name alone."""
    child = generate(many["path"], COMMON, capsys)
    assert set(child) == {"stages", "authscope:harbor-a", "authscope:harbor-b", "authscope:harbor-c"}
    for name in ("harbor-a", "harbor-b", "harbor-c"):
        assert child[f"authscope:{name}"]["environment"] == {"name": f"registry/{name}", "action": "start"}


def test_control_a_full_load_needs_every_targets_variables(many: dict[str, Any]) -> None:
    """Control: expanding every target (what `pipeline` did) needs the variables
    the generator job does not have, each reported with its line."""
    with pytest.raises(TargetsFileError) as caught:
        targets.load(many["path"], COMMON)
    text = str(caught.value)
    for name in ("HARBOR_A", "HARBOR_A_PASSWORD", "HARBOR_A_CA", "HARBOR_B", "HARBOR_C_PASSWORD"):
        assert f"${{{name}}} is not set" in text
    assert f"{many['path']}:6: targets[0].registry:" in text


def test_each_generated_child_job_runs_with_only_its_own_variables(
    many: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every generated job, run as GitLab runs it: the pipeline's variables plus
    those scoped to the job's environment, nothing of the other targets'."""
    child = generate(many["path"], COMMON, capsys)
    for job_name, job in child.items():
        if job_name == "stages":
            continue
        environ = {**COMMON, **many["scoped"][job["environment"]["name"]]}
        argv = job_argv(job)
        assert main([*argv, "--dry-run"], environ=environ) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        target = job["environment"]["name"].split("/", 1)[1]
        assert "1 target(s)" in out and f"\n{target}  (" in out
        for secret in (PASSWORD_A, PASSWORD_B, PASSWORD_C):
            assert secret not in out


def test_control_a_child_job_without_target_fails_on_the_others_variables(
    many: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Control: the same job environment, but every target selected: the other
    targets' variables are missing (exit 2)."""
    environ = {**COMMON, **many["scoped"]["registry/harbor-c"]}
    assert main(["fanout", "-f", many["path"], "--dry-run"], environ=environ) == 2
    err = capsys.readouterr().err
    assert "${HARBOR_A} is not set" in err and "${HARBOR_B} is not set" in err
    assert "HARBOR_C_PASSWORD" not in err


def test_selected_targets_report_every_error_at_once_unselected_only_static_ones(tmp_path: Path) -> None:
    path = tmp_path / "authscope.yml"
    path.write_text(
        textwrap.dedent(
            """\
            source: gitlab.example.com:5050/group/app:1.0
            targets:
              - name: a
                registry: ${A_HOST}
                repository: release/app
                username: ci
                password_env: A_PASSWORD
                ca_file: missing.crt
              - name: b
                registry: b.example
                repository: Bad/Repo
                username: ci
                password_file: ${B_PASSWORD_FILE}
              - name: c
                registry: ${C_HOST}
                repository: release/app
                username: ci
                passwrd_env: C_PASSWORD
            """
        )
    )
    with pytest.raises(TargetsFileError) as caught:
        targets.load(str(path), {}, ["a", "b"])
    problems = {(p.line, p.where): p.message for p in caught.value.problems}
    assert "${A_HOST} is not set" in problems[(4, "targets[0].registry")]
    assert "missing.crt: no such file" in problems[(8, "targets[0].ca_file")]
    assert "not a repository path" in problems[(11, "targets[1].repository")]
    assert "${B_PASSWORD_FILE} is not set" in problems[(13, "targets[1].password_file")]
    # c is not selected: its ${C_HOST} is not expanded, but a typo is a typo.
    assert "did you mean 'password_env'" in problems[(18, "targets[2].passwrd_env")]
    assert not any("C_HOST" in m for m in problems.values())
    assert all(p.file == str(path) for p in caught.value.problems)


def test_unknown_target_message_lists_every_target(many: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fanout", "-f", many["path"], "--target", "harbor-z", "--dry-run"], environ=dict(COMMON)) == 2
    err = capsys.readouterr().err
    assert "no target named 'harbor-z'" in err and "its targets are: harbor-a, harbor-b, harbor-c" in err


# -- 3. JUnit GitLab's parser accepts ----------------------------------------------------


def lxml_parse(data: bytes) -> Any:
    """Parse as GitLab does: libxml2 with its default options (lxml's default parser)."""
    from lxml import etree

    return etree.fromstring(data)


def failed(name: str = "harbor-1", **fields: Any) -> R.Result:
    base: dict[str, Any] = dict(
        name=name,
        registry="harbor-1.example",
        repository="release/app",
        tool="crane",
        tags=("1.0",),
        status=R.FAILED,
        error="copy harbor-1.example/release/app:1.0 failed: crane exited 1",
        hint="see the tool's output above",
    )
    base.update(fields)
    return R.Result(**base)


def a_report(*results: R.Result, source: str = "gitlab.example.com:5050/group/app:1.0") -> R.Report:
    return R.Report(source, "sha256:" + "ab" * 32, "crane", tuple(results), 1_800_000_000.0, 2.5)


FORBIDDEN = ["\ufffe", "\uffff", "\ud800", "\udfff", "\x00", "\x1b", "\x0b"]


def test_control_libxml2_rejects_each_forbidden_character() -> None:
    """Control: each of these characters, written raw, makes libxml2 refuse the document."""
    from lxml import etree

    for ch in FORBIDDEN:
        raw = f"<a>x{ch}y</a>".encode("utf-8", "surrogatepass")
        with pytest.raises(etree.XMLSyntaxError):
            etree.fromstring(raw)


@pytest.mark.parametrize("ch", FORBIDDEN, ids=[f"U+{ord(c):04X}" for c in FORBIDDEN])
def test_junit_parses_whatever_character_the_output_holds(ch: str) -> None:
    result = failed(error=f"registry said {ch}", output=(f"line with {ch} in it", "next"))
    root = lxml_parse(R.junit(a_report(result)))
    failure = root.find("testsuite/testcase/failure")
    assert failure is not None
    assert "line with ? in it" in failure.text and failure.get("message") == "registry said ?"


def test_xml_safe_keeps_every_character_xml_allows() -> None:
    allowed = "\t\n\r ~\x7f\x85\ud7ff\ue000\ufffd\U00010000\U0010ffff é ✓"
    assert R._xml_safe(allowed) == allowed


def test_xml_safe_is_xml_char_over_every_code_point() -> None:
    """Every code point against XML 1.0's Char production, spelt as the spec has it."""

    def xml_char(c: int) -> bool:
        return c in (0x9, 0xA, 0xD) or 0x20 <= c <= 0xD7FF or 0xE000 <= c <= 0xFFFD or 0x10000 <= c <= 0x10FFFF

    every = "".join(map(chr, range(0x110000)))
    assert R._xml_safe(every) == "".join(ch if xml_char(ord(ch)) else "?" for ch in every)


MEGABYTES = "x" * (3 * 1024 * 1024)
# What GitLab can take: output lines of about 1 KB, a tail of a few KB.
LINE_BOUND = 1024
TAIL_BOUND = 8 * 1024


def test_junit_and_json_cap_each_line_and_the_tail() -> None:
    """A tool that printed megabytes without a newline (and then 29 more long lines)."""
    output = (MEGABYTES, *[f"{i} " + "y" * 5000 for i in range(29)])
    result = failed(output=output)
    junit = R.junit(a_report(result))
    root = lxml_parse(junit)
    text = root.find("testsuite/testcase/failure").text
    lines = text.split("\n")
    assert max(len(line.encode()) for line in lines) <= LINE_BOUND
    assert len(junit) < TAIL_BOUND + 4 * LINE_BOUND + 4096
    doc = json.loads(R.to_json(a_report(result)))
    kept = doc["targets"][0]["output"]
    assert kept and max(len(line.encode()) for line in kept) <= LINE_BOUND
    assert sum(len(line.encode()) + 1 for line in kept) <= TAIL_BOUND
    assert kept[-1].startswith("28 ")  # the tail keeps the last lines
    assert "bytes in all]" in kept[-1]
    section = R.result_text(result)
    assert max(len(line.encode()) for line in section.splitlines()) <= LINE_BOUND + 8


def test_control_without_caps_the_report_holds_the_megabytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(R, "bounded", lambda lines: tuple(lines))
    junit = R.junit(a_report(failed(output=(MEGABYTES,))))
    assert len(junit) > 3 * 1024 * 1024


def test_junit_puts_the_output_once() -> None:
    result = failed(output=("Error: UNAUTHORIZED: authentication required",), hint="check password_env X")
    junit = R.junit(a_report(result))
    root = lxml_parse(junit)
    case = root.find("testsuite/testcase")
    assert junit.count(b"UNAUTHORIZED: authentication required") == 1
    assert junit.count(b"check password_env X") == 1
    assert "UNAUTHORIZED" in case.find("failure").text  # what GitLab shows for a failed case
    out = case.findtext("system-out")
    assert "harbor-1.example/release/app:1.0" in out and "UNAUTHORIZED" not in out
    # A landed target keeps its whole story in <system-out>.
    ok = R.Result("ok-1", "r.example", "app", "crane", ("1.0",), R.OK, digests={"1.0": "sha256:" + "cd" * 32})
    assert "sha256:" + "cd" * 32 in (lxml_parse(R.junit(a_report(ok))).findtext("testsuite/testcase/system-out"))


# -- 4. dotenv strictly smaller than 5 KB -----------------------------------------------------


def dotenv_of_size(size: int) -> str:
    """R.dotenv of a report whose dotenv, untruncated, is exactly ``size`` bytes."""
    ok = R.Result("a", "r.example", "app", "crane", ("1.0",), R.OK)
    base = len(R.dotenv(a_report(ok, source="s")).encode())
    source = "s" * (size - base + 1)
    return R.dotenv(a_report(ok, source=source))


def test_dotenv_of_5119_bytes_is_kept_whole() -> None:
    text = dotenv_of_size(5119)
    assert len(text.encode()) == 5119 and "(truncated)" not in text


@pytest.mark.parametrize("size", [5120, 5121, 9000])
def test_dotenv_of_5120_bytes_or_more_is_cut_below_the_limit(size: int) -> None:
    text = dotenv_of_size(size)
    assert len(text.encode()) < 5120  # GitLab: size < 5.kilobytes
    assert "AUTHSCOPE_SOURCE=" in text and "(truncated)" in text
    assert text.count("\n") == dotenv_of_size(200).count("\n")  # every variable is still there


# -- 5. names GitLab accepts ------------------------------------------------------------------


def named(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "authscope.yml"
    path.write_text(
        "source: g.example:5050/app:1.0\n"
        "targets:\n"
        f"  - {{name: {name}, registry: r.example, repository: app, username: u, password_env: P}}\n"
    )
    return path


def test_longest_target_name_makes_names_gitlab_accepts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "n" * targets.NAME_MAX
    child = generate(str(named(tmp_path, name)), {}, capsys)
    (job_name,) = [k for k in child if k != "stages"]
    assert len(job_name) <= 255 and len(child[job_name]["environment"]["name"]) <= 255
    # --gitlab-deployments records in the same environment as the job's
    assert (
        gitlab.environment_name(R.Result(name, "r", "app", "crane", ("1",), R.OK))
        == (child[job_name]["environment"]["name"])
    )


def test_a_longer_target_name_is_a_config_error_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = named(tmp_path, "n" * (targets.NAME_MAX + 1))
    for argv in (["pipeline", "-f", str(path)], ["fanout", "-f", str(path), "--dry-run"]):
        assert main(argv, environ={"P": "test-password-0123"}) == 2
        err = capsys.readouterr().err
        assert f"{path}:3: targets[0].name: is {targets.NAME_MAX + 1} characters long" in err
        assert "255" in err


@pytest.mark.parametrize(
    "args",
    [
        ["--stage", ""],
        ["--stage", "  "],
        ["--stage", "a\nb"],
        ["--image", ""],
        ["--install", ""],
        ["--gitlab-token-env", ""],
        ["--gitlab-token-env", "MY TOKEN"],
        ["--gitlab-token-env", "X;touch"],
        ["--gitlab-token-env", "1TOKEN"],
    ],
)
def test_pipeline_refuses_names_gitlab_or_the_shell_would_not_take(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = named(tmp_path, "a")
    with pytest.raises(SystemExit) as caught:
        main(["pipeline", "-f", str(path), *args], environ={})
    assert caught.value.code == 2
    assert f"argument {args[0]}" in capsys.readouterr().err


def test_fanout_refuses_a_token_variable_that_is_not_a_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["fanout", "-f", str(named(tmp_path, "a")), "--gitlab-token-env", "A-B", "--dry-run"], environ={})
    assert caught.value.code == 2


def test_control_valid_names_are_taken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--stage", "copy", "--gitlab-token-env", "RELEASE_TOKEN", "--gitlab-release"]
    child = generate(str(named(tmp_path, "a")), {}, capsys, *args)
    assert child["stages"] == ["copy"]
    assert "--gitlab-token-env RELEASE_TOKEN" in child["authscope:a"]["script"][0]


# -- 6. component inputs never reach a shell as code -------------------------------------------

HOSTILE = '"; touch {pwned}; :"'


def string_inputs(name: str) -> list[str]:
    spec = load_component(name)[0]["spec"]["inputs"]
    # install is shell code by contract; job-name and stage are YAML keys/values only.
    return [k for k, v in spec.items() if v.get("type", "string") == "string" and k != "install"]


@pytest.mark.parametrize(
    ("component", "job"),
    [("fanout", "authscope-fanout"), ("fanout-pipeline", "authscope-fanout-generate"), ("scope", ".authscope-scope")],
)
def test_no_string_input_runs_as_code(component: str, job: str, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    for input_name in string_inputs(component):
        if component == "scope" and input_name == "job-name":
            continue  # must start with a dot: a YAML key only
        given = {input_name: HOSTILE.format(pwned=pwned), "install": "true"}
        rendered = render_component(component, **given)
        key = job if input_name != "job-name" else HOSTILE.format(pwned=pwned) + job.removeprefix("authscope-fanout")
        work = tmp_path / input_name
        work.mkdir()
        run_job_shell(rendered[key], work)
        assert not pwned.exists(), f"{component}: input {input_name} ran as shell code"


def old_generator(pwned: Path) -> dict[str, Any]:
    """Control: the generator's script line as it was, with child-stage interpolated."""
    header, body = load_component("fanout-pipeline")
    job = body["$[[ inputs.job-name ]]-generate"]
    job["script"] = ['authscope pipeline --stage "$[[ inputs.child-stage ]]" > authscope-child-pipeline.yml']
    rendered: dict[str, Any] = render(body, header["spec"]["inputs"], {"child-stage": HOSTILE.format(pwned=pwned)})
    return rendered


def test_child_stage_reaches_authscope_as_one_word(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    stage = HOSTILE.format(pwned=pwned)
    job = render_component("fanout-pipeline", install="true", **{"child-stage": stage})["authscope-fanout-generate"]
    calls = run_job_shell(job, tmp_path)
    assert not pwned.exists()
    assert calls[-1] == ["pipeline"]  # the stage reaches authscope as $AUTHSCOPE_STAGE, whole
    assert resolved_options(tmp_path)[-1]["stage"] == stage


def test_control_the_interpolated_child_stage_runs_the_command(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    job = old_generator(pwned)["authscope-fanout-generate"]
    job["before_script"] = ["true"]
    run_job_shell(job, tmp_path)
    assert pwned.exists()


def test_args_are_split_at_blanks_and_never_globbed(tmp_path: Path) -> None:
    (tmp_path / "harbor-1").write_text("")  # a glob would match this
    job = render_component("fanout", install="true", args='--target harbor-*  --retries\t4 "a b"')["authscope-fanout"]
    calls = run_job_shell(job, tmp_path)
    assert calls[-1][-6:] == ["--target", "harbor-*", "--retries", "4", '"a', 'b"']


def test_control_an_unquoted_variable_is_globbed_without_set_f(tmp_path: Path) -> None:
    (tmp_path / "harbor-1").write_text("")
    job = render_component("fanout", install="true", args="--target harbor-*")["authscope-fanout"]
    job["script"] = [line.replace("set -f; ", "") for line in job["script"]]
    assert run_job_shell(job, tmp_path)[-1][-2:] == ["--target", "harbor-1"]


def test_templates_with_hostile_inputs_validate(tmp_path: Path) -> None:
    import subprocess

    tool = require_check_jsonschema()
    hostile = HOSTILE.format(pwned=tmp_path / "pwned")
    files = []
    for component in ("fanout", "fanout-pipeline", "scope"):
        given = {k: hostile for k in string_inputs(component) if k not in ("job-name",)}
        path = tmp_path / f"{component}.json"
        path.write_text(json.dumps(render_component(component, **given)))
        files.append(str(path))
    proc = subprocess.run(
        [tool, "--builtin-schema", "vendor.gitlab-ci", *files], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- 7. one deployment per target and run --------------------------------------------------


def test_per_target_jobs_leave_the_deployment_to_their_environment(
    many: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    child = generate(many["path"], COMMON, capsys, "--gitlab-deployments", "--gitlab-release")
    for name in ("harbor-a", "harbor-b", "harbor-c"):
        job = child[f"authscope:{name}"]
        assert job["environment"]["action"] == "start"  # GitLab records this deployment
        assert "--gitlab-deployments" not in job_argv(job)
        assert "--gitlab-release" in job_argv(job)
    sliced = generate(many["path"], COMMON, capsys, "--gitlab-deployments", "--slices", "2")
    for job_name in ("authscope:slice-1", "authscope:slice-2"):
        job = sliced[job_name]
        if len([a for a in job_argv(job) if a == "--target"]) > 1:
            assert "environment" not in job and "--gitlab-deployments" in job_argv(job)
        else:  # a slice of one target has its environment: GitLab records it
            assert job["environment"]["action"] == "start" and "--gitlab-deployments" not in job_argv(job)


# -- issue 12 item 10: no credential expanded into a field ---------------------------------

CUSTOM = """\
source: g.example:5050/app:1.0
tool: custom
targets:
  - name: one
    registry: r1.example
    repository: app
    username: ci
    password_env: ONE_PASSWORD
    command: [sh, -c, 'echo "$0" "$1"', "{destination}", "${FIELD}"]
  - name: two
    registry: r2.example
    repository: app
    username_env: TWO_USER
    password_file: ${TWO_PASSWORD_FILE}
    command: [sh, -c, 'echo "$0"', "{destination}"]
"""
ONE_PASSWORD = "test-one-secret-8c1d2e3f"


def custom_file(tmp_path: Path, field: str) -> str:
    path = tmp_path / "authscope.yml"
    path.write_text(CUSTOM.replace("${FIELD}", field))
    return str(path)


def custom_env(tmp_path: Path) -> dict[str, str]:
    return {
        "ONE_PASSWORD": ONE_PASSWORD,
        "TWO_USER": "robot$two",
        "TWO_PASSWORD_FILE": file_variable(tmp_path, "TWO", "test-two-secret-0a9b8c7d\n"),
        "NOT_SECRET": "just-a-word",
        "CI_JOB_TOKEN": "glcbt-test-token-1f2e3d4c",
    }


@pytest.mark.parametrize("variable", ["ONE_PASSWORD", "TWO_USER", "TWO_PASSWORD_FILE", "CI_JOB_TOKEN"])
def test_a_credential_variable_in_command_is_refused(
    variable: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = custom_file(tmp_path, "${" + variable + "}")
    environ = custom_env(tmp_path)
    assert main(["fanout", "-f", path, "--dry-run"], environ=environ) == 2
    captured = capsys.readouterr()
    assert f"{path}:9: targets[0].command[4]: ${{{variable}}} is a credential" in captured.err
    assert environ[variable] not in captured.out + captured.err
    # Also when only the other target runs: every target's credential names count.
    assert main(["fanout", "-f", path, "--dry-run", "--target", "one"], environ=environ) == 2


def test_control_without_the_refusal_dry_run_shows_the_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(targets, "_credential_variables", lambda raw: ({}, ()))
    path = custom_file(tmp_path, "${ONE_PASSWORD}")
    assert main(["fanout", "-f", path, "--dry-run"], environ=custom_env(tmp_path)) == 0
    assert ONE_PASSWORD in capsys.readouterr().out


def test_an_ordinary_variable_in_command_is_expanded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = custom_file(tmp_path, "${NOT_SECRET}")
    assert main(["fanout", "-f", path, "--dry-run"], environ=custom_env(tmp_path)) == 0
    assert "just-a-word" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("registry", "${ONE_PASSWORD}.example"),
        ("repository", "app/${ONE_PASSWORD:-x}"),
        ("tags", "['${ONE_PASSWORD}']"),
        ("ca_file", "${TWO_PASSWORD_FILE}"),
        ("password_file", "${ONE_PASSWORD}"),  # a password where a path goes: --dry-run prints paths
    ],
)
def test_a_credential_variable_in_any_other_field_is_refused(key: str, value: str, tmp_path: Path) -> None:
    text = CUSTOM.replace("${FIELD}", "x")
    line = f"    {key}: {value}\n"
    index = 0
    if key == "password_file":  # target two's, while target one's password_env is ONE_PASSWORD
        text = text.replace("    password_file: ${TWO_PASSWORD_FILE}\n", line)
        index = 1
    else:
        text = text.replace("    repository: app\n", "    repository: app\n" + line, 1)
        if key in ("registry", "repository"):
            text = text.replace(f"    {key}: {'r1.example' if key == 'registry' else 'app'}\n", "", 1)
    path = tmp_path / "authscope.yml"
    path.write_text(text)
    with pytest.raises(TargetsFileError) as caught:
        targets.load(str(path), custom_env(tmp_path))
    messages = [str(p) for p in caught.value.problems]
    assert any(f"targets[{index}].{key}" in m and "is a credential" in m for m in messages), messages


def test_a_password_file_may_use_its_own_variable(tmp_path: Path) -> None:
    spec = targets.load(custom_file(tmp_path, "x"), custom_env(tmp_path))
    assert spec.targets[1].password_file == custom_env(tmp_path)["TWO_PASSWORD_FILE"]


def test_a_credential_variable_in_the_file_level_source_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "authscope.yml"
    path.write_text(CUSTOM.replace("${FIELD}", "x").replace("g.example:5050/app", "g.example:5050/${CI_JOB_TOKEN}"))
    with pytest.raises(TargetsFileError, match=r":1: source: \$\{CI_JOB_TOKEN\} is a credential"):
        targets.load(str(path), custom_env(tmp_path))

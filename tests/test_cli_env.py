"""Options from AUTHSCOPE_* variables (cli.options_from_env): how the components pass their inputs."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from authscope import cli


def resolve(argv: list[str], environ: dict[str, str]) -> argparse.Namespace:
    parser = cli.build_parser(argv[0])
    args = parser.parse_args(argv)
    cli.options_from_env(parser, args, environ)
    return args


def test_every_kind_of_option_comes_from_its_variable() -> None:
    args = resolve(
        ["fanout"],
        {
            "AUTHSCOPE_FILE": "release/authscope.yml",
            "AUTHSCOPE_JOBS": "8",
            "AUTHSCOPE_FAIL_FAST": "true",
            "AUTHSCOPE_PULL_ONCE": "1",
            "AUTHSCOPE_TIMEOUT": "900",
            "AUTHSCOPE_RETRIES": "0",
            "AUTHSCOPE_TARGET": "harbor-eu, harbor-us",
            "AUTHSCOPE_JUNIT": "junit.xml",
        },
    )
    assert args.file == "release/authscope.yml" and args.jobs == 8 and args.timeout == 900.0
    assert args.fail_fast is True and args.pull_once is True and args.retries == 0
    assert args.target == ["harbor-eu", "harbor-us"] and args.junit == "junit.xml"


def test_control_without_variables_the_defaults_stay() -> None:
    args = resolve(["fanout"], {})
    assert args.file == "authscope.yml" and args.jobs is None and args.fail_fast is False and args.target == []


def test_the_command_line_wins() -> None:
    args = resolve(
        ["fanout", "-f", "cli.yml", "--jobs", "2", "--target", "one"],
        {"AUTHSCOPE_FILE": "env.yml", "AUTHSCOPE_JOBS": "8", "AUTHSCOPE_TARGET": "two,three"},
    )
    assert args.file == "cli.yml" and args.jobs == 2 and args.target == ["one"]


@pytest.mark.parametrize(
    ("environ", "field", "value"),
    [
        ({"AUTHSCOPE_JOBS": ""}, "jobs", None),  # empty: unset
        ({"AUTHSCOPE_JOBS": "0"}, "jobs", None),  # the components' "keep the file's jobs:"
        ({"AUTHSCOPE_FAIL_FAST": "false"}, "fail_fast", False),
        ({"AUTHSCOPE_FAIL_FAST": "NO"}, "fail_fast", False),
    ],
)
def test_unset_empty_zero_and_false(environ: dict[str, str], field: str, value: Any) -> None:
    assert getattr(resolve(["fanout"], environ), field) == value


def test_a_switch_that_defaults_on_is_turned_off_by_false() -> None:
    assert resolve(["pipeline"], {"AUTHSCOPE_REGISTRY_LOGIN": "false"}).registry_login is False
    assert resolve(["pipeline"], {"AUTHSCOPE_REGISTRY_LOGIN": "true"}).registry_login is True
    assert resolve(["pipeline"], {}).registry_login is True
    assert resolve(["pipeline", "--no-registry-login"], {}).registry_login is False


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("AUTHSCOPE_JOBS", "many", "'many' is not a number"),
        ("AUTHSCOPE_JOBS", "-3", "must be at least 1"),
        ("AUTHSCOPE_FAIL_FAST", "perhaps", "give true or false"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_the_variable(
    name: str, value: str, says: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["fanout", "--dry-run", "-f", str(tmp_path / "none.yml")], environ={name: value}) == 2
    err = capsys.readouterr().err
    assert f"${name} is {value!r}" in err and says in err


def test_job_open_takes_the_scope_components_variables() -> None:
    args = resolve(["job", "open"], {"AUTHSCOPE_REGISTRY_LOGIN": "false", "AUTHSCOPE_ISOLATE_HOME": "true"})
    assert args.registry_login is False and args.isolate_home is True
    args = resolve(["job", "open"], {})
    assert args.registry_login is True and args.isolate_home is False


def test_other_commands_read_no_variables() -> None:
    """exec, login, job ...: their options are never taken from the environment
    (AUTHSCOPE_SCOPE_DIR aside, which scope.choose_root reads itself)."""
    parser = cli.build_parser("exec")
    args = parser.parse_args(["exec", "--registry", "r.example", "-u", "u", "--password-env", "P", "--", "true"])
    cli.options_from_env(parser, args, {"AUTHSCOPE_ISOLATE_HOME": "true", "AUTHSCOPE_QUIET": "true"})
    assert args.isolate_home is False and args.quiet is False


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["job", "open"], {"AUTHSCOPE_ISOLATE_HOME": "perhaps"}),  # a bad variable
        (["job", "open", "--isolat-home"], {}),  # a mistyped option: argparse's own error
    ],
    ids=["bad-variable", "mistyped-option"],
)
def test_a_job_open_that_fails_before_it_starts_still_stops_the_jobs_eval(
    argv: list[str], environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`eval "$(authscope job open)"` of an empty output succeeds, and the job would run on
    the runner's shared config: every failure prints the `exit N` line eval runs."""
    from authscope.jobscope import FAILED_LINE

    try:
        code = cli.main(argv, environ=environ)
    except SystemExit as exc:  # argparse's exit, as the console script would exit
        code = int(exc.code or 0)
    assert code == 2
    assert capsys.readouterr().out == FAILED_LINE.format(code=2)

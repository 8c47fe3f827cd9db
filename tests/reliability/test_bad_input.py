"""4. Bad input: hypothesis-generated broken targets files and base configs.

Each input is broken by construction (tests/reliability/badinput.py says
how) and must be refused: exit 2, a message naming the problem, no
traceback, nothing written, the base byte-for-byte as it was, no scope, no
command run. The 1000-example runs call ``cli.main`` in-process; a small
sample goes through the real CLI (``python -m authscope``).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability import badinput as B
from tests.reliability.conftest import CLI_EXAMPLES, EXAMPLES

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.slow
@settings(max_examples=EXAMPLES, **SETTINGS)  # type: ignore[arg-type]
@given(case=B.targets_cases())
def test_broken_targets_files_are_refused(case: B.TargetsCase) -> None:
    assert B.run_targets_case(case) == []


@pytest.mark.slow
@settings(max_examples=EXAMPLES, **SETTINGS)  # type: ignore[arg-type]
@given(case=B.config_case(), command=st.sampled_from(B.COMMANDS))
def test_broken_base_configs_are_refused(case: B.ConfigCase, command: str) -> None:
    assert B.run_config_case(case, command) == []


@settings(max_examples=CLI_EXAMPLES, **SETTINGS)  # type: ignore[arg-type]
@given(case=B.targets_cases())
def test_broken_targets_files_through_the_real_cli(case: B.TargetsCase) -> None:
    assert B.run_targets_case(case, real_cli=True) == []


@settings(max_examples=CLI_EXAMPLES, **SETTINGS)  # type: ignore[arg-type]
@given(case=B.config_case(), command=st.sampled_from(B.COMMANDS))
def test_broken_base_configs_through_the_real_cli(case: B.ConfigCase, command: str) -> None:
    assert B.run_config_case(case, command, real_cli=True) == []


# -- bugs found by the generators (kept out of the strategies above so those stay green) -------------


@pytest.mark.parametrize("command", B.COMMANDS)
def test_base_with_a_huge_integer_is_refused(command: str) -> None:
    data = ('{"auths": {}, "x-unknown": 1' + "0" * 5000 + "}").encode()
    assert B.run_config_case(B.ConfigCase(data, (("config.json",),), "huge integer"), command) == []


@pytest.mark.parametrize("auth", ["abc", "w4", 5, True, ["eDp5"]], ids=repr)
def test_base_with_a_broken_source_auth_is_refused(auth: object) -> None:
    data = json.dumps({"auths": {B.UNREACHABLE: {"auth": auth}}}).encode()
    assert B.run_config_case(B.ConfigCase(data, (("auth",),), "broken auth"), "fanout") == []


@pytest.mark.parametrize("key", ["auths", "HttpHeaders"])
def test_base_with_a_duplicated_key_is_refused(key: str) -> None:
    first = {"gitlab.local:4567": {"auth": "Y2k6bG9jYWw="}} if key == "auths" else {"X-First": "1"}
    second = {"other.example": {"auth": "eDp5"}} if key == "auths" else {"X-Second": "2"}
    head = "" if key == "auths" else '"auths": {}, '
    data = f'{{{head}"{key}": {json.dumps(first)}, "{key}": {json.dumps(second)}}}'.encode()
    assert B.run_config_case(B.ConfigCase(data, (("twice", "duplicate"),), "duplicated key"), "login") == []

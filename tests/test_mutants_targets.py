"""Targets-file behaviour that tests/test_targets.py left unpinned (found by mutation
testing, benchmarks/mutation.py; docs/RELIABILITY.md "Mutation testing")."""

from __future__ import annotations

from pathlib import Path

import pytest

from authscope import targets
from authscope.errors import TargetsFileError
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


SOURCE = "source: gitlab.local:4567/group/app:1.0\n"


def test_alias_cycle_in_a_list_names_the_alias_and_its_line(tmp_path: Path) -> None:
    found = problems(tmp_path, SOURCE + "x: &a\n  - 1\n  - *a\n" + MINIMAL.split("\n", 1)[1])
    assert [(p.line, p.where, p.message) for p in found] == [
        (4, "x[1]", "the alias *a stands for a node that contains it: an endless cycle")
    ]


def test_alias_cycle_in_a_mapping_names_the_alias_and_its_line(tmp_path: Path) -> None:
    found = problems(tmp_path, SOURCE + "x: &m\n  b: 1\n  c: *m\n" + MINIMAL.split("\n", 1)[1])
    assert [(p.line, p.where, p.message) for p in found] == [
        (4, "x.c", "the alias *m stands for a node that contains it: an endless cycle")
    ]


def test_nesting_too_deep_is_reported_at_the_line_it_happens(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL + "\n\nx: " + "[" * 70 + "]" * 70 + "\n")
    (p,) = found
    assert p.message == "is nested too deeply (more than 64 levels)"
    assert p.line == len(MINIMAL.splitlines()) + 3


def test_a_value_yaml_cannot_construct_is_reported_at_its_line(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL + "jobs: !!int abc\n")
    (p,) = found
    assert p.where == "jobs" and p.line == len(MINIMAL.splitlines()) + 1
    assert p.message.startswith("cannot read this value: invalid literal for int()")


def test_a_byte_that_is_not_utf8_is_reported_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "authscope.yml"
    raw = MINIMAL.encode() + b"# caf\xe9\n"
    path.write_bytes(raw)
    with pytest.raises(TargetsFileError) as info:
        targets.load(str(path), {})
    (p,) = info.value.problems
    assert p.line == len(MINIMAL.splitlines()) + 1
    at = raw.index(b"\xe9")
    assert p.message == f"is not UTF-8 (byte {at})"


def test_invalid_yaml_is_reported_at_its_line(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL + "jobs: [1\n")
    (p,) = found
    assert p.line == len(MINIMAL.splitlines()) + 2 and p.message.startswith("is not valid YAML")


def test_a_control_character_is_invalid_yaml(tmp_path: Path) -> None:
    # pyyaml's reader error carries no line (only a position): the problem is at line 1.
    found = problems(tmp_path, MINIMAL + "# bell \x07\n")
    (p,) = found
    assert p.line == 1 and p.message.startswith("is not valid YAML")
    assert "#x0007" in p.message


def test_a_required_key_left_empty_is_reported_at_that_key(tmp_path: Path) -> None:
    text = MINIMAL.replace("registry: harbor.remote-1", "registry:")
    found = problems(tmp_path, text)
    (p,) = found
    assert (p.where, p.message) == ("targets[0].registry", "registry: is required")
    assert p.line == text.splitlines().index("    registry:") + 1


def test_a_blank_value_is_empty_and_an_expansion_to_nothing_says_so(tmp_path: Path) -> None:
    blank = problems(tmp_path, MINIMAL.replace("repository: release/app", 'repository: "  "'))
    assert [(p.where, p.message) for p in blank] == [("targets[0].repository", "is empty")]
    expanded = problems(tmp_path, MINIMAL.replace("repository: release/app", "repository: ${EMPTY}"), {"EMPTY": ""})
    assert [(p.where, p.message) for p in expanded] == [
        ("targets[0].repository", "is empty after expanding '${EMPTY}'")
    ]


def test_a_password_file_path_variable_is_expanded_there_and_refused_elsewhere(tmp_path: Path) -> None:
    text = MINIMAL.replace("password_env: HARBOR_1_PASSWORD", "password_file: ${PW_DIR}/pw")
    f = load_ok(tmp_path, text, {"PW_DIR": "/run/secrets"})
    assert f.targets[0].password_file == "/run/secrets/pw"
    found = problems(tmp_path, text.replace("repository: release/app", "repository: ${PW_DIR}"), {"PW_DIR": "/run"})
    assert [p.where for p in found] == ["targets[0].repository"]
    assert found[0].message.startswith("${PW_DIR} is a credential (in targets[0].password_file)")


PULL_ONCE = MINIMAL + "pull_once: true\n"


def test_pull_once_with_one_tool_everywhere_is_accepted(tmp_path: Path) -> None:
    assert load_ok(tmp_path, PULL_ONCE).pull_once is True
    assert load_ok(tmp_path, PULL_ONCE + "tool: skopeo\n").targets[0].tool == "skopeo"


def test_pull_once_refuses_a_target_with_another_tool(tmp_path: Path) -> None:
    text = PULL_ONCE.replace("password_env: HARBOR_1_PASSWORD", "password_env: HARBOR_1_PASSWORD\n    tool: skopeo")
    found = problems(tmp_path, text)
    assert [p.where for p in found] == ["pull_once"]
    assert "pull_once needs every target to use one tool" in found[0].message and "uses skopeo" in found[0].message


def test_a_merge_key_of_a_scalar_is_reported_at_its_line(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        source: h.example/app:1
        targets:
          - name: b
            <<: 5
            registry: r.example
            repository: app
            username: ci
            password_env: PW
        """,
    )
    merge = [p for p in found if p.message.startswith("<< (a merge key) takes a mapping")]
    assert [p.line for p in merge] == [4], found  # 1-based, the line of `<<`


def test_merge_keys_expanding_past_the_bound_are_refused_at_the_merged_values_line(tmp_path: Path) -> None:
    # Every `<<: *d` reaches d's value nodes again with no alias on the path
    # (the merge resolves it): past MAX_ALIAS_NODES the refusal names the
    # line of the value merged in (1-based), the one a user can write out.
    head = "source: h.example/app:1\ntargets:\n  - &d\n    name: t0\n    registry: r.example\n"
    head += "    repository: app\n    username: ci\n    password_env: PW\n"
    lines = {"name": 4, "registry": 5, "repository": 6, "username": 7, "password_env": 8}

    def merging(count: int) -> str:
        return head + "".join(f"  - <<: *d\n    name: t{i}\n" for i in range(1, count))

    found = problems(tmp_path, merging(targets.MAX_ALIAS_NODES // 4 + 100), {"PW": "x"})
    assert len(found) == 1 and "aliases expand this file to more than" in found[0].message, found
    key = found[0].where.rsplit(".", 1)[-1]
    assert found[0].line == lines[key], found[0]
    # control: the same file within the bound loads
    assert len(load_ok(tmp_path, merging(50), {"PW": "x"}).targets) == 50

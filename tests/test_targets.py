"""Loading authscope.yml: every problem at once, each with file:line and key."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from authscope import targets
from authscope.errors import Problem, TargetsFileError
from authscope.targets import ImageRef, load, parse_image

TARGET = """\
  - name: {name}
    registry: {registry}
    repository: release/app
    username: ci
    password_env: PW
"""


def write(tmp_path: Path, text: str, name: str = "authscope.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_ok(tmp_path: Path, text: str, environ: Mapping[str, str] | None = None) -> targets.Fanout:
    return load(str(write(tmp_path, text)), environ or {})


def problems(tmp_path: Path, text: str, environ: Mapping[str, str] | None = None) -> list[Problem]:
    path = write(tmp_path, text)
    with pytest.raises(TargetsFileError) as info:
        load(str(path), environ or {})
    assert info.value.path == str(path)
    for p in info.value.problems:
        assert p.file == str(path)
        # Every problem is printed as file:line: [key:] message.
        assert str(p).startswith(f"{path}:{p.line}: ")
        assert str(p) in str(info.value)
    return info.value.problems


def one(found: list[Problem], where: str, text: str) -> Problem:
    """The problem at ``where`` whose message holds ``text`` (exactly one)."""
    matches = [p for p in found if p.where == where and text in p.message]
    assert len(matches) == 1, f"expected one problem at {where!r} containing {text!r}, got {found}"
    return matches[0]


MINIMAL = """\
source: gitlab.local:4567/group/app:1.0
targets:
  - name: harbor-1
    registry: harbor.remote-1
    repository: release/app
    username: ci
    password_env: HARBOR_1_PASSWORD
"""


# -- the happy path ---------------------------------------------------------------------


def test_minimal_file_defaults(tmp_path: Path) -> None:
    f = load_ok(tmp_path, MINIMAL)
    assert f.path == str(tmp_path / "authscope.yml")
    assert f.source == targets.Source(ImageRef("gitlab.local:4567", "group/app", "1.0", None), False, None)
    assert (f.jobs, f.retries, f.timeout, f.pull_once) == (
        targets.DEFAULT_JOBS,
        targets.DEFAULT_RETRIES,
        targets.DEFAULT_TIMEOUT,
        False,
    )
    (t,) = f.targets
    assert (t.name, t.registry, t.repository, t.tool) == ("harbor-1", "harbor.remote-1", "release/app", "crane")
    assert t.tags == ("1.0",)  # no tags: -> the source's tag
    assert (t.username, t.username_env, t.password_env, t.password_file) == ("ci", None, "HARBOR_1_PASSWORD", None)
    assert (t.insecure, t.ca_file, t.command) == (False, None, None)
    assert t.line == 3


def test_design_example_loads(tmp_path: Path) -> None:
    """The example of DESIGN.md's "Targets file", verbatim but for the CA file."""
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "harbor-remote-2.crt").write_text("not parsed at load time\n")
    f = load_ok(
        tmp_path,
        """\
        source: ${CI_REGISTRY_IMAGE}/app:${CI_COMMIT_TAG}   # or a mapping: {image, insecure, ca_file}
        tags: ["${CI_COMMIT_TAG}", latest]
        tool: crane                 # crane | skopeo | regctl | custom
        jobs: 4
        targets:
          - name: harbor-remote-1
            registry: harbor.remote-1
            repository: release/app
            username: robot$release+ci            # literal
            password_env: HARBOR_REMOTE_1_PASSWORD
          - name: harbor-remote-2
            registry: harbor.remote-2:8443
            repository: release/app
            username_env: HARBOR_REMOTE_2_USER
            password_file: ${HARBOR_REMOTE_2_PASSWORD_FILE}
            ca_file: certs/harbor-remote-2.crt    # trust this CA for this registry
          - name: staging
            registry: 127.0.0.1:5002
            repository: app
            insecure: true                        # plain HTTP or unverified TLS
            username: ci
            password_env: STAGING_PASSWORD
        """,
        {
            "CI_REGISTRY_IMAGE": "gitlab.local:4567/group",
            "CI_COMMIT_TAG": "v1.2.3",
            "HARBOR_REMOTE_2_PASSWORD_FILE": "/run/secrets/harbor2",
        },
    )
    assert f.source.image == ImageRef("gitlab.local:4567", "group/app", "v1.2.3", None)
    one_, two, staging = f.targets
    assert one_.tags == two.tags == staging.tags == ("v1.2.3", "latest")
    assert one_.username == "robot$release+ci"
    assert two.username_env == "HARBOR_REMOTE_2_USER" and two.username is None
    assert two.password_file == "/run/secrets/harbor2"
    assert two.ca_file == str(tmp_path / "certs" / "harbor-remote-2.crt")
    assert staging.insecure and not one_.insecure
    assert [t.line for t in f.targets] == [6, 11, 17]


# -- expansion ----------------------------------------------------------------------------


def test_expansion_default_and_escape(tmp_path: Path) -> None:
    f = load_ok(
        tmp_path,
        """\
        source: ${HOST}/${GROUP:-grp}/app:${TAG:-1.0}
        tags: ["${TAG:-fallback}", "${EMPTY_DEFAULT:-}x", "${SET_BUT_EMPTY:-unused}y"]
        tool: custom
        command: ["sh", "-c", "echo $${HOME} ${WORD} $$ {destination}"]
        targets:
          - name: t
            registry: ${REG:-reg.example}
            repository: app
            username: ci
            password_env: PW
        """,
        {"HOST": "h.example:5000", "WORD": "hello", "SET_BUT_EMPTY": ""},
    )
    assert f.source.image == ImageRef("h.example:5000", "grp/app", "1.0", None)
    # A set variable wins over its default, even when it is empty (${VAR:-} here
    # means "unset", not "unset or empty"; either reading is defensible, this
    # pins the one implemented).
    assert f.targets[0].tags == ("fallback", "x", "y")
    assert f.targets[0].registry == "reg.example"
    # $${ writes a literal ${; a lone $ is left alone.
    assert f.targets[0].command == ("sh", "-c", "echo ${HOME} hello $$ {destination}")


def test_escape_does_not_expand_what_follows(tmp_path: Path) -> None:
    f = load_ok(
        tmp_path,
        textwrap.dedent(
            """\
            source: h.example/app:1.0
            tool: custom
            command: ["echo", "$${PW}", "$${PW:-x}", "$$PW"]
            targets:
            """
        )
        + TARGET.format(name="t", registry="r.example"),
        {"PW": "test-must-not-appear"},
    )
    assert f.targets[0].command[1:] == ("${PW}", "${PW:-x}", "$$PW")


def test_missing_variables_named_with_their_lines_all_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        source: ${CI_REGISTRY_IMAGE}/app:${CI_COMMIT_TAG}
        tags: [latest, "${EXTRA_TAG}"]
        targets:
          - name: one
            registry: ${HARBOR_HOST}
            repository: release/app
            username: ci
            password_env: PW
          - name: two
            registry: r.example
            repository: release/app
            username: ci
            password_file: ${PASSWORD_FILE}
        """,
        {"CI_COMMIT_TAG": "1.0"},
    )
    lines = {p.message.split(" ")[0]: p.line for p in found}
    assert lines == {
        "${CI_REGISTRY_IMAGE}": 1,
        "${EXTRA_TAG}": 2,
        "${HARBOR_HOST}": 5,
        "${PASSWORD_FILE}": 13,
    }
    for p in found:
        assert "is not set" in p.message and ":-default}" in p.message
    one(found, "source", "${CI_REGISTRY_IMAGE}")
    one(found, "targets[0].registry", "${HARBOR_HOST}")
    one(found, "targets[1].password_file", "${PASSWORD_FILE}")
    # Sorted by line, as the CLI prints them.
    assert [p.line for p in found] == sorted(p.line for p in found)


def test_two_missing_variables_in_one_value_are_both_named(tmp_path: Path) -> None:
    found = problems(tmp_path, "source: ${A_HOST}/app:${A_TAG}\ntargets:\n" + TARGET.format(name="t", registry="r.x"))
    unset = [p for p in found if "is not set" in p.message]
    assert sorted(p.message.split(" ")[0] for p in unset) == ["${A_HOST}", "${A_TAG}"]
    assert {p.line for p in unset} == {1}


def test_missing_tag_variable_is_reported_at_the_tag(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "source: h.example/app:1\ntargets:\n" + TARGET.format(name="t", registry="r.x") + '    tags: ["${NO_TAG}"]\n',
    )
    (p,) = found
    assert p.line == 8 and "${NO_TAG}" in p.message
    assert p.where.startswith("targets[0].tags[0]")


def test_missing_tag_variable_key_is_clean(tmp_path: Path) -> None:
    found = problems(
        tmp_path, 'source: h.example/app:1\ntags: ["${NO_TAG}"]\ntargets:\n' + TARGET.format(name="t", registry="r.x")
    )
    assert [p.where for p in found] == ["tags[0]"]


def test_expansion_to_empty_is_an_error(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "source: h.example/app:1\ntargets:\n" + TARGET.format(name="t", registry="${EMPTY_REG}"),
        {"EMPTY_REG": ""},
    )
    one(found, "targets[0].registry", "is empty after expanding '${EMPTY_REG}'")


def test_expanded_values_are_validated(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "source: h.example/app:1\ntags: ['${BAD_TAG}']\ntargets:\n" + TARGET.format(name="t", registry="r.x"),
        {"BAD_TAG": "-starts-with-dash"},
    )
    one(found, "tags[0]", "'-starts-with-dash' is not a valid tag")


# -- usernames are literal ----------------------------------------------------------------


@pytest.mark.parametrize("username", ["robot$x+y", "robot$release+ci", "${NOT_A_VAR}", "a$${b}", "robot$$x"])
def test_usernames_are_literal(tmp_path: Path, username: str) -> None:
    f = load_ok(
        tmp_path,
        f"""\
        source: h.example/app:1
        targets:
          - name: t
            registry: r.example
            repository: app
            username: '{username}'
            password_env: PW
        """,
        {"NOT_A_VAR": "expanded!", "x": "X", "b": "B"},
    )
    assert f.targets[0].username == username


def test_unquoted_robot_username(tmp_path: Path) -> None:
    f = load_ok(tmp_path, MINIMAL.replace("username: ci", "username: robot$release+ci"))
    assert f.targets[0].username == "robot$release+ci"
    assert f.targets[0].username_ref == "username 'robot$release+ci'"


def test_env_names_are_names_not_values(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        source: h.example/app:1
        targets:
          - name: t
            registry: r.example
            repository: app
            username_env: ${CI_USER}
            password_env: $HARBOR_PASSWORD
        """,
        {"CI_USER": "x"},
    )
    one(found, "targets[0].username_env", "is not a variable name")
    p = one(found, "targets[0].password_env", "'$HARBOR_PASSWORD' is not a variable name")
    assert p.line == 7 and "HARBOR_PASSWORD" in p.message


def test_exactly_one_username_and_one_password_source(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        source: h.example/app:1
        targets:
          - name: both
            registry: r.example
            repository: app
            username: ci
            username_env: CI_USER
            password_env: PW
            password_file: /run/pw
          - name: neither
            registry: r.example
            repository: app
        """,
    )
    one(found, "targets[0]", "exactly one of username:")
    one(found, "targets[0]", "exactly one of password_env:")
    one(found, "targets[1]", "exactly one of username:")
    one(found, "targets[1]", "exactly one of password_env:")
    assert {p.line for p in found if p.where == "targets[1]"} == {10}


# -- unknown keys, types ----------------------------------------------------------------


def test_unknown_keys_with_did_you_mean(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        sourse: h.example/app:1
        source: {image: h.example/app:1, insecur: true}
        jobz: 3
        targets:
          - name: t
            registy: r.example
            registry: r.example
            repository: app
            username: ci
            pasword_env: PW
            password_env: PW
            frobnicate: 1
        """,
    )
    assert one(found, "sourse", "did you mean 'source'?").line == 1
    assert one(found, "source.insecur", "did you mean 'insecure'?").line == 2
    assert one(found, "jobz", "did you mean 'jobs'?").line == 3
    assert one(found, "targets[0].registy", "did you mean 'registry'?").line == 6
    assert one(found, "targets[0].pasword_env", "did you mean 'password_env'?").line == 10
    p = one(found, "targets[0].frobnicate", "unknown key")
    assert p.line == 12 and "known keys:" in p.message and "password_file" in p.message


def test_every_problem_at_once(tmp_path: Path) -> None:
    """One load reports problems of every kind, from every part of the file."""
    (tmp_path / "certs").mkdir()
    found = problems(
        tmp_path,
        """\
        version: 2
        source: ${SRC}
        tags: [latest]
        tool: cranee
        jobs: 0
        retries: many
        timeout: -1
        pull_once: maybe
        targets:
          - name: bad name!
            registry: r.example
            repository: Release/App
            username: ci
            password_env: PW
          - name: second
            registry: "bad host"
            repository: app
            username: ci
            password_env: PW
            insecure: "yes please"
            ca_file: certs/missing.crt
            tool: kaniko
        """,
    )
    expected = {
        ("version", 1, "version 2 is not supported"),
        ("source", 2, "${SRC} is not set"),
        ("tool", 4, "did you mean 'crane'?"),
        ("jobs", 5, "must be between 1 and 256, not 0"),
        ("retries", 6, "must be a whole number"),
        ("timeout", 7, "must be between 1 and 86400"),
        ("pull_once", 8, "must be true or false"),
        ("targets[0].name", 10, "may only hold letters"),
        ("targets[0].repository", 12, "is not a repository path"),
        ("targets[1].registry", 16, "not a registry host"),
        ("targets[1].insecure", 20, "must be true or false"),
        ("targets[1].ca_file", 21, "certs/missing.crt: no such file (looked in"),
        ("targets[1].tool", 22, "'kaniko' is not one of crane, skopeo, regctl, podman, buildah, custom"),
    }
    for where, line, text in expected:
        assert one(found, where, text).line == line
    assert len(found) == len(expected), found


def test_cli_lists_every_problem_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from authscope.cli import main

    path = write(
        tmp_path,
        """\
        source: ${NOPE_SRC}
        targets:
          - name: t
            registy: r.example
            repository: app
            username: ci
            password_env: PW
        """,
    )
    assert main(["fanout", "-f", str(path)], environ={}) == 2
    err = capsys.readouterr().err
    assert "problems; nothing ran" in err
    assert f"{path}:1: source: ${{NOPE_SRC}} is not set" in err
    assert f"{path}:3: targets[0]: registry: is required" in err
    assert f"{path}:4: targets[0].registy: unknown key; did you mean 'registry'?" in err


def test_required_fields(tmp_path: Path) -> None:
    found = problems(tmp_path, "tags: [a]\ntargets:\n  - {}\n  - name: x\n")
    one(found, "", "source: is required")
    for field in ("name", "registry", "repository"):
        one(found, "targets[0]", f"{field}: is required")
    assert one(found, "targets[1]", "registry: is required").line == 4


@pytest.mark.parametrize(
    ("targets_yaml", "where"),
    [("targets: []", "targets"), ("targets:", "targets"), ("targets: {a: 1}", "targets"), ("jobs: 1", "")],
)
def test_targets_must_be_a_non_empty_list(tmp_path: Path, targets_yaml: str, where: str) -> None:
    found = problems(tmp_path, f"source: h.example/app:1\n{targets_yaml}\n")
    one(found, where, "targets: must be a non-empty list")


def test_a_target_must_be_a_mapping(tmp_path: Path) -> None:
    found = problems(tmp_path, "source: h.example/app:1\ntargets:\n  - just-a-name\n")
    assert one(found, "targets[0]", "must be a mapping").line == 3


# -- source: string or mapping ------------------------------------------------------------


def test_source_as_string(tmp_path: Path) -> None:
    f = load_ok(tmp_path, MINIMAL)
    assert not f.source.insecure and f.source.ca_file is None


def test_source_as_mapping(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "local.crt").write_text("x")
    f = load_ok(
        tmp_path,
        MINIMAL.replace(
            "source: gitlab.local:4567/group/app:1.0",
            "source:\n  image: ${LOCAL}/app:${TAG}\n  insecure: true\n  ca_file: ca/local.crt",
        ),
        {"LOCAL": "127.0.0.1:5000", "TAG": "2.0"},
    )
    assert f.source == targets.Source(
        ImageRef("127.0.0.1:5000", "app", "2.0", None), True, str(tmp_path / "ca" / "local.crt")
    )
    assert f.targets[0].tags == ("2.0",)


def test_source_mapping_problems(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        MINIMAL.replace(
            "source: gitlab.local:4567/group/app:1.0",
            "source:\n  insecure: 1\n  ca_file: /nonexistent/ca.crt\n  cert: x",
        ),
    )
    one(found, "source", "image: is required")
    one(found, "source.insecure", "must be true or false, not")
    one(found, "source.ca_file", "/nonexistent/ca.crt: no such file")
    one(found, "source.cert", "unknown key")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("h.example/App:1", "is not an image reference"),
        ("h.example/app:bad!tag", "has an invalid tag"),
        ("h.example/app@sha256:abc", "has an invalid digest"),
        ("[1, 2]", "must be a string, not a list"),
    ],
)
def test_bad_source(tmp_path: Path, source: str, message: str) -> None:
    found = problems(tmp_path, MINIMAL.replace("gitlab.local:4567/group/app:1.0", source))
    assert one(found, "source", message).line == 1


def test_source_without_tag_needs_tags(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL.replace("app:1.0", "app"))
    one(found, "source", "has no tag; give tags:")
    digest = "sha256:" + "a" * 64
    f = load_ok(tmp_path, MINIMAL.replace("app:1.0", f"app@{digest}").replace("targets:", "tags: [v1]\ntargets:"))
    assert f.source.image.digest == digest and f.source.image.tag is None
    assert f.targets[0].tags == ("v1",)


# -- per-target settings --------------------------------------------------------------------


def test_per_target_insecure_ca_file_tags_and_tool(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "r2.crt").write_text("CA")
    abs_ca = tmp_path / "abs.crt"
    abs_ca.write_text("CA")
    f = load_ok(
        tmp_path,
        f"""\
        source: h.example/app:1.0
        tags: [1.0.0, latest]
        tool: skopeo
        targets:
          - name: plain
            registry: 127.0.0.1:5000
            repository: app
            insecure: true
            username: ci
            password_env: PW
          - name: tls
            registry: r2.example:8443
            repository: app
            ca_file: certs/r2.crt
            tags: [only-this]
            tool: regctl
            username: ci
            password_env: PW
          - name: absolute
            registry: r3.example
            repository: app
            ca_file: {abs_ca}
            tags: single
            username: ci
            password_env: PW
        """,
    )
    plain, tls, absolute = f.targets
    assert plain.insecure and plain.ca_file is None and plain.tags == ("1.0.0", "latest") and plain.tool == "skopeo"
    assert not tls.insecure and tls.ca_file == str(tmp_path / "certs" / "r2.crt")
    assert tls.tags == ("only-this",) and tls.tool == "regctl"
    assert absolute.ca_file == str(abs_ca) and absolute.tags == ("single",)


def test_ca_file_is_relative_to_the_file_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "conf"
    (conf / "certs").mkdir(parents=True)
    (conf / "certs" / "ca.crt").write_text("CA")
    other = tmp_path / "elsewhere"
    (other / "certs").mkdir(parents=True)
    monkeypatch.chdir(other)  # a ca.crt here must not be what is found
    path = conf / "authscope.yml"
    path.write_text(MINIMAL.replace("password_env: HARBOR_1_PASSWORD", "password_env: P\n    ca_file: certs/ca.crt"))
    f = load(str(path), {})
    assert f.targets[0].ca_file == str(conf / "certs" / "ca.crt")
    (conf / "certs" / "ca.crt").unlink()
    (other / "certs" / "ca.crt").write_text("CA")
    with pytest.raises(TargetsFileError) as info:
        load(str(path), {})
    assert f"(looked in {conf})" in str(info.value)


def test_password_file_relative_to_the_file(tmp_path: Path) -> None:
    f = load_ok(tmp_path, MINIMAL.replace("password_env: HARBOR_1_PASSWORD", "password_file: secrets/pw"))
    # Not required to exist at load time (resolve_credentials reads it).
    assert f.targets[0].password_file == str(tmp_path / "secrets" / "pw")
    assert f.targets[0].password_ref == f"password_file {tmp_path / 'secrets' / 'pw'}"


def test_tags_deduplicated_and_validated(tmp_path: Path) -> None:
    f = load_ok(tmp_path, MINIMAL.replace("targets:", "tags: [a, b, a]\ntargets:"))
    assert f.targets[0].tags == ("a", "b")
    for bad, message in (
        ("tags: []", "non-empty list"),
        ("tags: {a: 1}", "non-empty list"),
        ("tags: ['.x']", "not a valid tag"),
    ):
        found = problems(tmp_path, MINIMAL.replace("targets:", f"{bad}\ntargets:"))
        assert any(message in p.message and p.line == 2 for p in found), found


def test_numeric_looking_tags_are_kept_as_written(tmp_path: Path) -> None:
    f = load_ok(tmp_path, MINIMAL.replace("targets:", "tags: [1.10, 010, 2.0, 1e3]\ntargets:"))
    assert f.targets[0].tags == ("1.10", "010", "2.0", "1e3")
    # Control: what YAML itself makes of them, which a plain str() would publish.
    assert [str(v) for v in yaml.safe_load("[1.10, 010, 2.0, 1e3]")] != ["1.10", "010", "2.0", "1e3"]


def test_tool_custom_command_placeholders(tmp_path: Path) -> None:
    f = load_ok(
        tmp_path,
        """\
        source: h.example/app:1
        tool: custom
        command: ["copy-tool", "{source}", "{destination}", "{registry}", "{repository}", "{tag}", "{name}"]
        targets:
          - name: file-command
            registry: r.example
            repository: app
            username: ci
            password_env: PW
          - name: own-command
            registry: r.example
            repository: app
            username: ci
            password_env: PW
            command: [other, "{destination}"]
          - name: not-custom
            tool: crane
            registry: r.example
            repository: app
            username: ci
            password_env: PW
        """,
    )
    a, b, c = f.targets
    assert a.tool == b.tool == "custom" and c.tool == "crane"
    assert a.command == ("copy-tool", "{source}", "{destination}", "{registry}", "{repository}", "{tag}", "{name}")
    assert b.command == ("other", "{destination}")


def test_tool_custom_command_problems(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        source: h.example/app:1
        targets:
          - name: no-command
            tool: custom
            registry: r.example
            repository: app
            username: ci
            password_env: PW
          - name: bad-placeholder
            tool: custom
            command: [cp, "{src}", "{destination}"]
            registry: r.example
            repository: app
            username: ci
            password_env: PW
          - name: not-a-list
            tool: custom
            command: "cp {source} {destination}"
            registry: r.example
            repository: app
            username: ci
            password_env: PW
        """,
    )
    assert one(found, "targets[0]", "tool: custom needs command:").line == 3
    p = one(found, "targets[1].command[1]", "unknown placeholder {src}")
    assert p.line == 11 and "{destination}" in p.message
    assert one(found, "targets[2].command", "must be a list of strings").line == 18


def test_every_missing_variable_in_a_command_is_reported(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        'source: h.example/app:1\ntool: custom\ncommand: ["${CMD_A}", "${CMD_B}", "{nope}"]\ntargets:\n'
        + TARGET.format(name="t", registry="r.x"),
    )
    assert any("${CMD_B}" in p.message for p in found)
    assert any("{nope}" in p.message for p in found)
    assert not any("needs command:" in p.message for p in found)


# -- duplicates, anchors, merge keys ------------------------------------------------------------


def test_duplicate_yaml_keys(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        source: h.example/app:1
        source: h.example/app:2
        targets:
          - name: t
            registry: r.example
            registry: r2.example
            repository: app
            username: ci
            password_env: PW
        """,
    )
    assert one(found, "source", "'source' appears twice (line 1 and line 2)").line == 2
    assert one(found, "targets[0].registry", "'registry' appears twice (line 5 and line 6)").line == 6


def test_duplicate_target_names(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "source: h.example/app:1\ntargets:\n"
        + TARGET.format(name="same", registry="a.example")
        + TARGET.format(name="other", registry="b.example")
        + TARGET.format(name="same", registry="c.example"),
    )
    (p,) = found
    assert p.where == "targets[2].name" and p.line == 13
    assert "'same' is already the name of targets[0]" in p.message


def test_anchors_and_aliases(tmp_path: Path) -> None:
    f = load_ok(
        tmp_path,
        """\
        source: h.example/app:1
        tags: &release-tags [v1, latest]
        targets:
          - name: a
            registry: &harbor harbor.example
            repository: &repo release/app
            username: &robot robot$release+ci
            password_env: PW_A
          - name: b
            registry: *harbor
            repository: *repo
            username: *robot
            password_env: PW_B
            tags: *release-tags
        """,
    )
    a, b = f.targets
    assert (b.registry, b.repository, b.username, b.tags) == (
        "harbor.example",
        "release/app",
        "robot$release+ci",
        ("v1", "latest"),
    )
    assert a.tags == b.tags


def test_merge_key_without_overrides(tmp_path: Path) -> None:
    f = load_ok(
        tmp_path,
        """\
        source:
          image: h.example/app:1
          insecure: true
        targets:
          - name: a
            registry: r.example
            repository: app
            username: ci
            password_env: PW
          - <<: [{registry: r2.example, repository: app}]
            name: b
            username: ci
            password_env: PW
        """,
    )
    assert (f.targets[1].registry, f.targets[1].repository) == ("r2.example", "app")


def test_merge_key_with_overrides(tmp_path: Path) -> None:
    f = load_ok(
        tmp_path,
        """\
        source: h.example/app:1
        targets:
          - &harbor
            name: harbor-1
            registry: harbor-1.example
            repository: release/app
            username: robot$release+ci
            password_env: HARBOR_PASSWORD
          - <<: *harbor
            name: harbor-2
            registry: harbor-2.example
        """,
    )
    assert [(t.name, t.registry, t.username) for t in f.targets] == [
        ("harbor-1", "harbor-1.example", "robot$release+ci"),
        ("harbor-2", "harbor-2.example", "robot$release+ci"),
    ]


def test_merge_key_does_not_hide_real_duplicates(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        source: h.example/app:1
        targets:
          - &harbor
            name: harbor-1
            registry: harbor-1.example
            repository: release/app
            username: ci
            password_env: PW
          - <<: *harbor
            name: harbor-2
            name: harbor-3
        """,
    )
    assert one(found, "targets[1].name", "'name' appears twice").line == 11


# -- reading the file ---------------------------------------------------------------------------


def load_bytes(tmp_path: Path, data: bytes, environ: dict[str, str] | None = None) -> targets.Fanout:
    path = tmp_path / "authscope.yml"
    path.write_bytes(data)
    return load(str(path), environ or {})


def load_error(tmp_path: Path, data: bytes) -> Problem:
    with pytest.raises(TargetsFileError) as info:
        load_bytes(tmp_path, data)
    (p,) = info.value.problems
    return p


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    p = load_error(tmp_path, b"source: h.example/app:1\ntargets:\n  - name: [a\n  - name: b\n")
    assert "is not valid YAML" in p.message and p.line in (3, 4)
    p = load_error(tmp_path, b"source: x\n\tbad: 1\n")
    assert p.line == 2 and "is not valid YAML" in p.message


@pytest.mark.parametrize("data", [b"", b"\n\n", b"# only a comment\n", b"---\n"])
def test_empty_file(tmp_path: Path, data: bytes) -> None:
    p = load_error(tmp_path, data)
    assert "source: and targets:" in p.message


@pytest.mark.parametrize(("data", "kind"), [(b"- a\n", "a list"), (b"just text\n", "'just text'"), (b"42\n", "42")])
def test_not_a_mapping(tmp_path: Path, data: bytes, kind: str) -> None:
    p = load_error(tmp_path, data)
    assert "must be a mapping with source: and targets:, not " in p.message and kind in p.message


def test_not_utf8(tmp_path: Path) -> None:
    p = load_error(tmp_path, b"source: h.example/app:1\n# caf\xe9 latin-1\ntargets: []\n")
    assert p.line == 2 and "is not UTF-8" in p.message


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    f = load_bytes(tmp_path, b"\xef\xbb\xbf" + MINIMAL.encode())
    assert f.source.image.registry == "gitlab.local:4567"
    assert f.targets[0].line == 3


def test_missing_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(TargetsFileError) as info:
        load(str(tmp_path / "nope.yml"), {})
    assert "no such file (give one with -f PATH)" in str(info.value)
    with pytest.raises(TargetsFileError) as info:
        load(str(tmp_path), {})  # a directory
    assert "cannot be read" in str(info.value)


def test_non_string_keys(tmp_path: Path) -> None:
    found = problems(tmp_path, "1: x\n[a, b]: y\n" + MINIMAL)
    # 1 may be refused as a non-string key or as an unknown key: either way, line 1.
    assert [p.line for p in found] == [1, 2], found


def test_deep_nesting_is_refused_not_crashed(tmp_path: Path) -> None:
    data = b"source: " + b"[" * 5000 + b"]" * 5000 + b"\n"
    with pytest.raises(TargetsFileError):
        load_bytes(tmp_path, data)


def test_loading_never_reads_secrets(tmp_path: Path) -> None:
    """password_env names a variable; its value is not read (nor kept) at load time."""
    f = load_ok(tmp_path, MINIMAL, {"HARBOR_1_PASSWORD": "test-secret-value"})
    assert "test-secret-value" not in repr(f)


# -- parse_image -------------------------------------------------------------------------------

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("gitlab.local:4567/group/app:1.0", ImageRef("gitlab.local:4567", "group/app", "1.0", None)),
        ("gitlab.local:4567/group/sub/app", ImageRef("gitlab.local:4567", "group/sub/app", None, None)),
        ("127.0.0.1:5000/app:latest", ImageRef("127.0.0.1:5000", "app", "latest", None)),
        ("localhost/app:1", ImageRef("localhost", "app", "1", None)),
        ("localhost:5000/app", ImageRef("localhost:5000", "app", None, None)),
        (
            "registry.example.com/a-b/c_d.e__f:v1.2.3-rc.1",
            ImageRef("registry.example.com", "a-b/c_d.e__f", "v1.2.3-rc.1", None),
        ),
        (f"h.example/app@{DIGEST}", ImageRef("h.example", "app", None, DIGEST)),
        (f"h.example:443/app:1.0@{DIGEST}", ImageRef("h.example:443", "app", "1.0", DIGEST)),
        ("alpine", ImageRef("docker.io", "library/alpine", None, None)),
        ("alpine:3.19", ImageRef("docker.io", "library/alpine", "3.19", None)),
        ("myorg/app:1", ImageRef("docker.io", "myorg/app", "1", None)),
        ("docker.io/myorg/app:1", ImageRef("docker.io", "myorg/app", "1", None)),
    ],
)
def test_parse_image(ref: str, expected: ImageRef) -> None:
    assert parse_image(ref) == expected


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "h.example/",
        "h.example/App",
        "h.example/app:",
        "h.example/app:-tag",
        "h.example/app:" + "t" * 129,
        "h.example/app@sha256:short",
        "h.example/app@md5:" + "0" * 32,
        "h.example//app",
        "h.example/app/",
        "h.example/a..b",
    ],
)
def test_parse_image_rejects(ref: str) -> None:
    with pytest.raises(ValueError):
        parse_image(ref)


def test_image_ref_helpers() -> None:
    r = parse_image(f"h.example/app:1.0@{DIGEST}")
    assert r.with_tag("2.0") == "h.example/app:2.0"
    assert r.pinned == f"h.example/app@{DIGEST}"
    assert parse_image("h.example/app:1.0").pinned == "h.example/app:1.0"

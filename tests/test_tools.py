"""Tool adapters: argv per tool (pure, secret-free, by digest) and the files prepare() writes."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from authscope import tools
from authscope.targets import ImageRef, Source, Target

DIGEST = "sha256:" + "cd" * 32
SOURCE_REF = f"gitlab.local:4567/group/app@{DIGEST}"
DESTS = ("harbor.example/release/app:1.0", "harbor.example/release/app:latest", "harbor.example/release/app:stable")
PASSWORD = "test-5e6f7a8b9c0d1e2f"
# Flags through which tools take credentials: none may ever be used.
CREDENTIAL_FLAGS = (
    "--password",
    "--pass",
    "-p",
    "--creds",
    "--src-creds",
    "--dest-creds",
    "--user",
    "-u",
    "--username",
    "--registry-token",
    "--src-registry-token",
    "--dest-registry-token",
)


def source(insecure: bool = False, ca_file: str | None = None) -> Source:
    return Source(ImageRef("gitlab.local:4567", "group/app", "1.0", None), insecure, ca_file)


def target(
    tool: str = "crane",
    *,
    tags: tuple[str, ...] = ("1.0", "latest", "stable"),
    insecure: bool = False,
    ca_file: str | None = None,
    command: tuple[str, ...] | None = None,
    registry: str = "harbor.example",
) -> Target:
    return Target(
        name="harbor-1",
        registry=registry,
        repository="release/app",
        tags=tags,
        tool=tool,
        username="robot$release+ci",
        username_env=None,
        password_env="HARBOR_PASSWORD",
        password_file=None,
        insecure=insecure,
        ca_file=ca_file,
        command=command,
        line=3,
    )


def assert_secret_free(argvs: Sequence[Sequence[str]]) -> None:
    for argv in argvs:
        for arg in argv:
            assert PASSWORD not in arg
            flag = arg.split("=", 1)[0]
            assert flag not in CREDENTIAL_FLAGS, argv
            assert "HARBOR_PASSWORD" not in arg  # not even the variable's name


# -- crane --------------------------------------------------------------------------------


def test_crane_copies_by_digest_then_tags() -> None:
    steps = tools.crane_steps(SOURCE_REF, DESTS, insecure=False)
    assert [s.argv for s in steps] == [
        ("crane", "copy", SOURCE_REF, DESTS[0]),
        ("crane", "tag", DESTS[0], "latest"),
        ("crane", "tag", DESTS[0], "stable"),
    ]
    assert [s.what for s in steps] == [f"copy {DESTS[0]}", f"tag {DESTS[1]}", f"tag {DESTS[2]}"]
    assert_secret_free([s.argv for s in steps])


def test_crane_insecure_on_every_step() -> None:
    steps = tools.crane_steps(SOURCE_REF, DESTS[:2], insecure=True)
    assert [s.argv for s in steps] == [
        ("crane", "copy", "--insecure", SOURCE_REF, DESTS[0]),
        ("crane", "tag", "--insecure", DESTS[0], "latest"),
    ]


@pytest.mark.parametrize(("src_insecure", "dst_insecure"), [(True, False), (False, True), (True, True)])
def test_crane_insecure_from_either_end(src_insecure: bool, dst_insecure: bool) -> None:
    steps = tools.steps_for(source(insecure=src_insecure), target(insecure=dst_insecure), SOURCE_REF)
    assert all("--insecure" in s.argv for s in steps)


def test_crane_port_in_registry_is_not_a_tag() -> None:
    dests = ("127.0.0.1:5002/app:1.0", "127.0.0.1:5002/app:v2")
    steps = tools.crane_steps(SOURCE_REF, dests, insecure=True)
    assert steps[1].argv[-1] == "v2"


# -- skopeo -------------------------------------------------------------------------------


def test_skopeo_copy_all_preserving_digests() -> None:
    steps = tools.steps_for(source(), target("skopeo"), SOURCE_REF)
    first = steps[0].argv
    assert first[:5] == ("skopeo", "copy", "--all", "--preserve-digests", "--retry-times=0")
    assert "--src-tls-verify=true" in first and "--dest-tls-verify=true" in first
    assert first[-2:] == (f"docker://{SOURCE_REF}", f"docker://{DESTS[0]}")
    for step, dest in zip(steps[1:], DESTS[1:], strict=False):
        assert step.argv[-2:] == (f"docker://{DESTS[0]}", f"docker://{dest}")
        assert "--all" in step.argv and "--preserve-digests" in step.argv
    assert not any("cert-dir" in a for s in steps for a in s.argv)
    assert not any(a.startswith("--authfile") or a.startswith("--src-authfile") for s in steps for a in s.argv)
    assert_secret_free([s.argv for s in steps])


def test_skopeo_tls_settings_per_end(tmp_path: Path) -> None:
    ca = str(tmp_path / "ca.crt")
    steps = tools.steps_for(source(insecure=True), target("skopeo", ca_file=ca), SOURCE_REF)
    first = steps[0].argv
    assert "--src-tls-verify=false" in first
    assert "--dest-tls-verify=true" in first
    assert "--dest-cert-dir={scope}/certs/target" in first
    assert not any(a.startswith("--src-cert-dir") for a in first)
    # Further tags read the destination: its TLS settings on both ends.
    tag = steps[1].argv
    assert "--src-tls-verify=true" in tag and "--src-cert-dir={scope}/certs/target" in tag
    assert "--dest-tls-verify=true" in tag and "--dest-cert-dir={scope}/certs/target" in tag
    # The placeholder, not the CA's own path: the tool reads a copy in the scope.
    assert not any(ca in a for s in steps for a in s.argv)


def test_skopeo_source_ca_and_insecure_target(tmp_path: Path) -> None:
    steps = tools.steps_for(source(ca_file=str(tmp_path / "src.crt")), target("skopeo", insecure=True), SOURCE_REF)
    first = steps[0].argv
    assert "--src-tls-verify=true" in first and "--src-cert-dir={scope}/certs/source" in first
    assert "--dest-tls-verify=false" in first
    assert "--src-tls-verify=false" in steps[1].argv  # tagging reads the insecure target


# -- regctl -------------------------------------------------------------------------------


def test_regctl_copies_by_digest_then_tags() -> None:
    steps = tools.steps_for(source(insecure=True), target("regctl", insecure=True), SOURCE_REF)
    assert [s.argv for s in steps] == [
        ("regctl", "image", "copy", "--digest-tags=false", SOURCE_REF, DESTS[0]),
        ("regctl", "image", "copy", DESTS[0], DESTS[1]),
        ("regctl", "image", "copy", DESTS[0], DESTS[2]),
    ]
    assert_secret_free([s.argv for s in steps])


# -- custom -------------------------------------------------------------------------------


def test_custom_fills_placeholders_once_per_destination() -> None:
    command = ("my-copy", "--from={source}", "{destination}", "{registry}", "{repository}", "{tag}", "{name}", "{{x}}")
    steps = tools.steps_for(source(), target("custom", tags=("1.0", "latest"), command=command), SOURCE_REF)
    assert [s.argv for s in steps] == [
        ("my-copy", f"--from={SOURCE_REF}", DESTS[0], "harbor.example", "release/app", "1.0", "harbor-1", "{{x}}"),
        ("my-copy", f"--from={SOURCE_REF}", DESTS[1], "harbor.example", "release/app", "latest", "harbor-1", "{{x}}"),
    ]
    assert [s.what for s in steps] == [f"command {DESTS[0]}", f"command {DESTS[1]}"]


def test_custom_values_are_not_refilled() -> None:
    """A filled-in value that looks like a placeholder is not expanded again."""
    command = ("echo", "{name}", "{source}")
    t = Target(**{**target("custom", command=command).__dict__, "name": "n"})
    steps = tools.custom_steps(command, "{destination}", ("h.example/app:1",), t)
    # One pass: the source's value "{destination}" is data, not a placeholder.
    assert steps[0].argv == ("echo", "n", "{destination}")
    # Control: the placeholder itself, given where a placeholder belongs, is filled.
    assert tools.custom_steps(("echo", "{destination}"), "{x}", ("h.example/app:1",), t)[0].argv == (
        "echo",
        "h.example/app:1",
    )


# -- every tool: no secrets, ever ------------------------------------------------------


@pytest.mark.parametrize("tool", ["crane", "skopeo", "regctl", "custom"])
@pytest.mark.parametrize(("insecure", "with_ca"), [(False, False), (True, False), (False, True)])
def test_no_tool_argv_holds_a_secret(tool: str, insecure: bool, with_ca: bool, tmp_path: Path) -> None:
    ca = str(tmp_path / "ca.crt") if with_ca else None
    command = ("sh", "-c", 'copy "$1" "$2"', "--", "{source}", "{destination}") if tool == "custom" else None
    t = target(tool, insecure=insecure, ca_file=ca, command=command)
    steps = tools.steps_for(source(insecure=insecure, ca_file=ca), t, SOURCE_REF)
    assert len(steps) == 3
    argvs: list[Sequence[str]] = [s.argv for s in steps]
    assert_secret_free(argvs)
    assert_secret_free([tools.fill_scope(a, str(tmp_path / "scope")) for a in argvs])
    # Copy by digest: the first step reads the source pinned, never by tag.
    assert any(DIGEST in a for a in argvs[0])
    assert not any(a.endswith("group/app:1.0") for argv in argvs for a in argv)


@pytest.mark.parametrize("tool", ["crane", "skopeo", "regctl"])
def test_pull_once_argv_holds_no_secret(tool: str, tmp_path: Path) -> None:
    layout = str(tmp_path / "layout")
    pull = tools.pull_step(tool, source(insecure=True), SOURCE_REF, layout)
    push = tools.steps_for(source(), target(tool), SOURCE_REF, layout)
    assert_secret_free([pull.argv, *(s.argv for s in push)])
    assert any(DIGEST in a for a in pull.argv)
    assert len(push) == 3 and any(layout in a for a in push[0].argv)


def test_fill_scope_and_display(tmp_path: Path) -> None:
    argv = ("skopeo", "copy", "--dest-cert-dir={scope}/certs/target", "docker://a b")
    assert tools.fill_scope(argv, "/s") == ["skopeo", "copy", "--dest-cert-dir=/s/certs/target", "docker://a b"]
    assert tools.display(argv) == "skopeo copy '--dest-cert-dir={scope}/certs/target' 'docker://a b'"
    assert tools.display(argv, "/s") == "skopeo copy --dest-cert-dir=/s/certs/target 'docker://a b'"
    assert tools.display(("robot$x+y",)) == "'robot$x+y'"


# -- prepare(): files in the scope ----------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def scope(tmp_path: Path) -> Path:
    path = tmp_path / "scope"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def cas(tmp_path: Path) -> tuple[str, str]:
    src, dst = tmp_path / "src-ca.crt", tmp_path / "dst-ca.crt"
    src.write_text("-----BEGIN CERTIFICATE-----\nSOURCE\n-----END CERTIFICATE-----\n")
    dst.write_text("-----BEGIN CERTIFICATE-----\nTARGET\n-----END CERTIFICATE-----\n")
    return str(src), str(dst)


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_prepare_writes_nothing_without_tls_settings(scope: Path) -> None:
    for tool in ("crane", "custom"):
        assert tools.prepare(str(scope), source(), target(tool, command=("x",))) == {}
    # skopeo: only its in-memory blob info cache (tests/test_skopeo_speed.py)
    assert tools.prepare(str(scope), source(), target("skopeo")) == tools.skopeo_env(os.geteuid())
    assert files(scope) == []


def test_prepare_skopeo_cert_dirs(scope: Path, cas: tuple[str, str]) -> None:
    src_ca, dst_ca = cas
    env = tools.prepare(str(scope), source(ca_file=src_ca), target("skopeo", ca_file=dst_ca))
    assert env == tools.skopeo_env(os.geteuid())  # skopeo gets them through --*-cert-dir
    assert files(scope) == ["certs", "certs/source", "certs/source/ca.crt", "certs/target", "certs/target/ca.crt"]
    assert (scope / "certs/source/ca.crt").read_bytes() == Path(src_ca).read_bytes()
    assert (scope / "certs/target/ca.crt").read_bytes() == Path(dst_ca).read_bytes()
    assert mode(scope / "certs/source/ca.crt") == mode(scope / "certs/target/ca.crt") == 0o600
    # Only ca.crt: skopeo takes any *.key in a cert dir for a client key.
    assert not list(scope.rglob("*.key"))
    # And the argv points there.
    step = tools.steps_for(source(ca_file=src_ca), target("skopeo", ca_file=dst_ca), SOURCE_REF)[0]
    filled = tools.fill_scope(step.argv, str(scope))
    assert f"--src-cert-dir={scope}/certs/source" in filled and f"--dest-cert-dir={scope}/certs/target" in filled


@pytest.mark.parametrize("tool", ["crane", "custom"])
def test_prepare_ssl_cert_file_bundle(tool: str, scope: Path, cas: tuple[str, str]) -> None:
    src_ca, dst_ca = cas
    env = tools.prepare(str(scope), source(ca_file=src_ca), target(tool, ca_file=dst_ca, command=("x",)))
    bundle = scope / "ca-bundle.crt"
    assert env == {"SSL_CERT_FILE": str(bundle)}
    assert mode(bundle) == 0o600
    data = bundle.read_bytes()
    # The CAs are added to the system roots (Go replaces, not extends, with SSL_CERT_FILE).
    assert Path(src_ca).read_bytes().strip() in data and Path(dst_ca).read_bytes().strip() in data
    system = next((p for p in tools.SYSTEM_CA_BUNDLES if os.path.isfile(p)), None)
    if system:
        assert data.startswith(Path(system).read_bytes())


def test_prepare_bundle_with_only_the_target_ca(scope: Path, cas: tuple[str, str]) -> None:
    env = tools.prepare(str(scope), source(), target("crane", ca_file=cas[1]))
    data = Path(env["SSL_CERT_FILE"]).read_bytes()
    assert b"TARGET" in data and b"SOURCE" not in data


def test_prepare_regctl_config(scope: Path, cas: tuple[str, str]) -> None:
    src_ca, dst_ca = cas
    env = tools.prepare(
        str(scope), source(insecure=True), target("regctl", ca_file=dst_ca), plain_http=("gitlab.local:4567",)
    )
    config = scope / "regctl.json"
    assert env["REGCTL_CONFIG"] == str(config)
    assert env["SSL_CERT_FILE"] == str(scope / "ca-bundle.crt")
    assert mode(config) == 0o600 and mode(scope / "ca-bundle.crt") == 0o600
    doc = json.loads(config.read_text())
    assert doc == {
        "hosts": {
            "gitlab.local:4567": {"tls": "disabled"},
            "harbor.example": {"regcert": Path(dst_ca).read_text()},
        }
    }
    text = config.read_text()
    for word in ("user", "pass", "token", PASSWORD):
        assert word not in text  # credentials come from DOCKER_CONFIG only


@pytest.mark.parametrize(
    ("src_insecure", "dst_insecure", "plain_http", "expected"),
    [
        (True, True, (), {"gitlab.local:4567": {"tls": "insecure"}, "harbor.example": {"tls": "insecure"}}),
        (False, False, ("harbor.example",), {"harbor.example": {"tls": "disabled"}}),
        (True, False, ("gitlab.local:4567",), {"gitlab.local:4567": {"tls": "disabled"}}),
        (False, False, (), {}),
    ],
)
def test_regctl_config_per_host(
    src_insecure: bool, dst_insecure: bool, plain_http: tuple[str, ...], expected: dict, scope: Path
) -> None:
    env = tools.prepare(str(scope), source(insecure=src_insecure), target("regctl", insecure=dst_insecure), plain_http)
    assert json.loads(Path(env["REGCTL_CONFIG"]).read_text()) == {"hosts": expected}


def test_prepare_regctl_without_tls_settings_still_isolates_config(scope: Path) -> None:
    env = tools.prepare(str(scope), source(), target("regctl"))
    # regctl must not read (or write) ~/.regctl/config.json of the job.
    assert env == {"REGCTL_CONFIG": str(scope / "regctl.json")}
    assert json.loads((scope / "regctl.json").read_text()) == {"hosts": {}}


def test_prepare_refuses_to_follow_a_planted_link(scope: Path, cas: tuple[str, str], tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, scope / "ca-bundle.crt")
    with pytest.raises(OSError):
        tools.prepare(str(scope), source(), target("crane", ca_file=cas[1]))
    assert victim.read_text() == "keep"

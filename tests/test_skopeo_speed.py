"""skopeo's environment in a scope: a blob info cache of its own, in memory (issue #16).

containers/image keeps its blob info cache in one BoltDB file per user
(root: /var/lib/containers/cache/blob-info-cache-v1.boltdb) and opens, flocks
and fdatasyncs it ~20 times per copy; N concurrent targets queue on that lock
(bbolt retries every 50 ms). tools.skopeo_env makes each skopeo fall back to a
cache in memory. These tests: what the env is, that only skopeo gets it, that TLS flags stay
as they were and that no builder ever passes a flag that rewrites what is
copied; tests/e2e/test_skopeo_speed_e2e.py shows it on the real skopeo.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from authscope import tools
from authscope.referrers import Artifact
from authscope.targets import ImageRef, Source, Target

DIGEST = "sha256:" + "ab" * 32
SOURCE_REF = f"gitlab.local:4567/group/app@{DIGEST}"


def source(insecure: bool = False, ca_file: str | None = None) -> Source:
    return Source(ImageRef("gitlab.local:4567", "group/app", "1.0", None), insecure, ca_file)


def target(
    tool: str = "skopeo", *, insecure: bool = False, ca_file: str | None = None, registry: str = "harbor.example"
) -> Target:
    return Target(
        name="harbor-1",
        registry=registry,
        repository="release/app",
        tags=("1.0", "latest"),
        tool=tool,
        username="robot$release+ci",
        username_env=None,
        password_env="HARBOR_PASSWORD",
        password_file=None,
        insecure=insecure,
        ca_file=ca_file,
        command=None,
        line=3,
    )


# -- the argv: never a flag that changes what lands -----------------------------------


def digest_changing(argv: Sequence[str]) -> list[str]:
    """The args of argv that are (or set) a flag of SKOPEO_DIGEST_CHANGING."""
    return [a for a in argv if a.split("=", 1)[0] in tools.SKOPEO_DIGEST_CHANGING]


def every_skopeo_argv(ca_file: str) -> Iterator[tuple[str, ...]]:
    """Every skopeo argv the builders make: copy and tags, pull_once's pull and
    push, referrers from the registry and from layouts, plain and with a CA."""
    artifacts = [
        Artifact("sha256:" + "01" * 32, DIGEST, "cosign signature", tag="sha256-" + "ab" * 32 + ".sig"),
        Artifact("sha256:" + "02" * 32, DIGEST, "application/spdx+json"),
    ]
    for insecure, ca in ((False, None), (True, None), (False, ca_file)):
        src, tgt = source(insecure, ca), target(insecure=insecure, ca_file=ca)
        yield from (s.argv for s in tools.steps_for(src, tgt, SOURCE_REF))
        yield from (s.argv for s in tools.steps_for(src, tgt, SOURCE_REF, layout="/tmp/layout"))
        yield tools.pull_step("skopeo", src, SOURCE_REF, "/tmp/layout").argv
        yield from (s.argv for s in tools.referrer_steps(src, tgt, artifacts))
        yield from (s.argv for s in tools.referrer_steps(src, tgt, artifacts, layout="/tmp/layout"))
        yield from (s.argv for s in tools.pull_referrer_steps("skopeo", src, artifacts, "/tmp/layout"))
        for tool in ("podman", "buildah"):  # their referrers go through skopeo
            yield from (s.argv for s in tools.referrer_steps(src, target(tool, insecure=insecure), artifacts))


def test_no_skopeo_step_uses_a_digest_changing_flag() -> None:
    argvs = [a for a in every_skopeo_argv("/etc/ca.crt") if a[0] == "skopeo"]
    assert len(argvs) > 20
    for argv in argvs:
        assert digest_changing(argv) == [], argv
        # Every platform of an index, byte for byte; and no retries behind authscope's back.
        assert argv[:5] == ("skopeo", "copy", "--all", "--preserve-digests", "--retry-times=0"), argv


def test_control_the_digest_check_sees_a_digest_changing_flag() -> None:
    """The check above can fail: each listed flag, alone or as --flag=value, is caught."""
    base = tools.skopeo_steps(SOURCE_REF, ["h/r:1"], source(), target())[0].argv
    for flag in tools.SKOPEO_DIGEST_CHANGING:
        assert digest_changing((*base, flag)) == [flag]
        assert digest_changing((*base, f"{flag}=x")) == [f"{flag}=x"]
    # The flags skopeo 1.9's `copy --help` lists that rewrite layers or manifests are all in the list.
    for flag in ("--dest-compress", "--dest-decompress", "--dest-compress-format", "--format", "--remove-signatures"):
        assert flag in tools.SKOPEO_DIGEST_CHANGING


def test_tls_verification_is_what_it_was() -> None:
    """The speed-up adds no TLS flag: verification stays on unless the file says insecure."""
    secure = tools.steps_for(source(), target(), SOURCE_REF)[0].argv
    assert "--src-tls-verify=true" in secure and "--dest-tls-verify=true" in secure
    assert not [a for a in secure if a.endswith("tls-verify=false")]
    insecure = tools.steps_for(source(insecure=True), target(), SOURCE_REF)[0].argv
    assert "--src-tls-verify=false" in insecure and "--dest-tls-verify=true" in insecure


# -- the environment ------------------------------------------------------------------


def test_skopeo_env_as_root_names_another_user_and_a_file_for_data_home() -> None:
    assert tools.skopeo_env(0) == {"XDG_DATA_HOME": os.devnull, "_CONTAINERS_ROOTLESS_UID": "65534"}


def test_skopeo_env_as_a_user_only_moves_data_home() -> None:
    """Not root: containers/image already takes the per-user path; no uid is claimed."""
    assert tools.skopeo_env(1000) == {"XDG_DATA_HOME": os.devnull}


def test_prepare_gives_skopeo_and_only_skopeo_the_env(tmp_path: Path) -> None:
    scope = tmp_path / "scope"
    scope.mkdir(mode=0o700)
    env = tools.prepare(str(scope), source(), target("skopeo"))
    assert env == tools.skopeo_env(os.geteuid())
    assert tools.prepare_pull(str(scope), source(), "skopeo") == tools.skopeo_env(os.geteuid())
    # podman and buildah must not get it: _CONTAINERS_ROOTLESS_UID would make
    # containers-storage behave as rootless; crane and regctl don't read it.
    for tool in ("crane", "regctl", "podman", "buildah"):
        other = tmp_path / tool
        other.mkdir(mode=0o700)
        assert not {"XDG_DATA_HOME", "_CONTAINERS_ROOTLESS_UID"} & set(
            tools.prepare(str(other), source(), target(tool))
        )
    assert os.listdir(scope) == []  # nothing written for skopeo


def test_the_env_reaches_skopeo_in_a_fanout_scope(tmp_path: Path) -> None:
    """fanout.py adds what prepare returns to the tool's env after the scope's:
    nothing of the scope (DOCKER_CONFIG, REGISTRY_AUTH_FILE, HOME) is overridden."""
    env = tools.skopeo_env(0)
    assert not {"DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR", "PATH"} & set(env)

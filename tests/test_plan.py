"""Targets -> plan (pure), and the --dry-run rendering: references, never secrets."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import pytest

from authscope import plan as P
from authscope.errors import UsageError
from authscope.targets import Fanout, load

DIGEST = "sha256:" + "ab" * 32
SECRETS = {
    "HARBOR_1_PASSWORD": "test-4f1c2b9e0d7a6c35",
    "HARBOR_2_USER": "robot$from-env+ci",
    "STAGING_PASSWORD": "test-9a8b7c6d5e4f3a2b",
}
FILE_SECRET = "test-file-0b1c2d3e4f5a6b7c"


@pytest.fixture
def fanout(tmp_path: Path) -> Fanout:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "r2.crt").write_text("CA\n")
    (tmp_path / "pw2").write_text(FILE_SECRET + "\n")
    path = tmp_path / "authscope.yml"
    path.write_text(
        textwrap.dedent(
            """\
            source: {image: "gitlab.local:4567/group/app:1.0", insecure: true}
            tags: ["1.0", latest]
            tool: crane
            jobs: 3
            retries: 1
            timeout: 600
            targets:
              - name: harbor-1
                registry: harbor-1.example
                repository: release/app
                username: robot$release+ci
                password_env: HARBOR_1_PASSWORD
              - name: harbor-2
                registry: harbor-2.example:8443
                repository: release/app
                username_env: HARBOR_2_USER
                password_file: pw2
                ca_file: certs/r2.crt
                tool: skopeo
              - name: staging
                registry: 127.0.0.1:5002
                repository: app
                insecure: true
                username: ci
                password_env: STAGING_PASSWORD
                tags: [staging]
                tool: regctl
              - name: custom
                registry: 127.0.0.1:5003
                repository: app
                username: ci
                password_env: MISSING_PASSWORD
                tool: custom
                command: [my-copy, "{source}", "{destination}"]
            """
        )
    )
    return load(str(path), {})


def test_plan_covers_every_target_in_file_order(fanout: Fanout) -> None:
    plan = P.make_plan(fanout)
    assert [tp.target.name for tp in plan.targets] == ["harbor-1", "harbor-2", "staging", "custom"]
    assert (plan.jobs, plan.retries, plan.timeout, plan.path) == (3, 1, 600.0, fanout.path)
    assert plan.targets[0].destinations == ("harbor-1.example/release/app:1.0", "harbor-1.example/release/app:latest")
    assert plan.targets[2].destinations == ("127.0.0.1:5002/app:staging",)
    # Not yet resolved: by tag; the run re-plans with the digest.
    assert plan.source_ref == "gitlab.local:4567/group/app:1.0"
    for tp in plan.targets:
        assert len(tp.steps) == len(tp.destinations)


def test_plan_with_digest_copies_by_digest(fanout: Fanout) -> None:
    plan = P.make_plan(fanout, source_digest=DIGEST)
    assert plan.source_ref == f"gitlab.local:4567/group/app@{DIGEST}"
    for tp in plan.targets:
        first = tp.steps[0].argv
        assert any(DIGEST in arg for arg in first), first
        assert not any(arg.endswith("app:1.0") and "gitlab.local" in arg for arg in first)


def test_selection_by_name_keeps_file_order(fanout: Fanout) -> None:
    plan = P.make_plan(fanout, only=["staging", "harbor-1"])
    assert [tp.target.name for tp in plan.targets] == ["harbor-1", "staging"]


def test_unknown_target_names_are_all_reported(fanout: Fanout) -> None:
    with pytest.raises(UsageError) as info:
        P.make_plan(fanout, only=["harbor-1", "harbor-9", "nope"])
    message = str(info.value)
    assert "'harbor-9'" in message and "'nope'" in message
    assert "its targets are: harbor-1, harbor-2, staging, custom" in message
    assert fanout.path in message


def test_overrides(fanout: Fanout) -> None:
    plan = P.make_plan(fanout, jobs=7, retries=0, timeout=2.5)
    assert (plan.jobs, plan.retries, plan.timeout) == (7, 0, 2.5)  # retries 0 is not "unset"


def test_cli_unknown_target_exits_2(fanout: Fanout, capsys: pytest.CaptureFixture[str]) -> None:
    from authscope.cli import main

    assert main(["fanout", "-f", fanout.path, "--target", "harbor-9", "--dry-run"], environ=dict(SECRETS)) == 2
    err = capsys.readouterr().err
    assert "no target named 'harbor-9'" in err
    assert capsys.readouterr().out == ""


# -- render (--dry-run) -------------------------------------------------------------------


def all_secret_forms() -> dict[str, str]:
    forms = dict(SECRETS)
    forms["file"] = FILE_SECRET
    forms["b64-1"] = base64.b64encode(f"robot$release+ci:{SECRETS['HARBOR_1_PASSWORD']}".encode()).decode()
    forms["b64-2"] = base64.b64encode(f"{SECRETS['HARBOR_2_USER']}:{FILE_SECRET}".encode()).decode()
    return forms


def test_render_names_references_never_values(fanout: Fanout, tmp_path: Path) -> None:
    environ = dict(SECRETS)
    text = P.render(P.make_plan(fanout), environ)
    for name, value in all_secret_forms().items():
        assert value not in text, f"{name} leaked into the dry run"
    assert "password_env $HARBOR_1_PASSWORD (set)" in text
    assert "username_env $HARBOR_2_USER (set)" in text
    assert f"password_file {tmp_path / 'pw2'} (exists)" in text
    assert "password_env $MISSING_PASSWORD (NOT SET)" in text
    assert "username 'robot$release+ci'" in text  # literal usernames are not secrets


def test_render_says_what_is_missing(fanout: Fanout, tmp_path: Path) -> None:
    (tmp_path / "pw2").unlink()
    text = P.render(P.make_plan(fanout), {"HARBOR_1_PASSWORD": ""})
    assert "password_env $HARBOR_1_PASSWORD (NOT SET)" in text  # empty counts as not set
    assert "username_env $HARBOR_2_USER (NOT SET)" in text
    assert f"password_file {tmp_path / 'pw2'} (MISSING)" in text


def test_render_shows_plan_shape(fanout: Fanout, tmp_path: Path) -> None:
    text = P.render(P.make_plan(fanout, only=["harbor-2", "custom"]), {})
    assert text.startswith(f"plan from {fanout.path}: 2 target(s), 3 at a time, 1 retry, timeout 600s each")
    assert "source: gitlab.local:4567/group/app:1.0 (insecure); copied by digest" in text
    assert f"harbor-2  (harbor-2.example:8443, CA {tmp_path / 'certs' / 'r2.crt'}, tool skopeo)" in text
    assert "  -> harbor-2.example:8443/release/app:1.0" in text
    assert "  -> harbor-2.example:8443/release/app:latest" in text
    assert "  $ skopeo copy --all --preserve-digests" in text
    assert "  $ my-copy gitlab.local:4567/group/app:1.0 127.0.0.1:5003/app:1.0" in text
    assert "harbor-1" not in text and "staging" not in text
    assert text.rstrip().endswith("dry run: nothing was contacted, copied or written")


def test_cli_dry_run_prints_plan_and_exits_0_only_when_secrets_are_there(
    fanout: Fanout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from authscope.cli import main

    # No scope dir, no base: a dry run must not need (or make) either.
    environ = dict(SECRETS, HOME=str(tmp_path / "home"), DOCKER_CONFIG=str(tmp_path / "base"))
    assert (
        main(
            ["fanout", "-f", fanout.path, "--dry-run", "--target", "harbor-1", "--target", "harbor-2"], environ=environ
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert "2 target(s)" in out and "(set)" in out
    for value in all_secret_forms().values():
        assert value not in out + err
    assert not (tmp_path / "base").exists() and not (tmp_path / "home").exists()

    # A missing secret: the plan is still printed (so you can see which), exit 2.
    assert main(["fanout", "-f", fanout.path, "--dry-run"], environ=environ) == 2
    out, err = capsys.readouterr()
    assert "password_env $MISSING_PASSWORD (NOT SET)" in out
    assert "$MISSING_PASSWORD is not set or empty" in err
    for value in all_secret_forms().values():
        assert value not in out + err


def test_docker_hub_target_destination(tmp_path: Path) -> None:
    path = tmp_path / "authscope.yml"
    path.write_text(
        "source: h.example/app:1\ntargets:\n"
        "  - {name: hub, registry: docker.io, repository: myorg/app, username: u, password_env: P}\n"
    )
    plan = P.make_plan(load(str(path), {}))
    (dest,) = plan.targets[0].destinations
    assert "://" not in dest and "//" not in dest, dest

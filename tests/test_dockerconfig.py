from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authscope import dockerconfig as dc
from authscope.errors import BaseWriteError, ConfigError, UsageError


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("harbor.remote-1", "harbor.remote-1"),
        ("https://harbor.remote-1", "harbor.remote-1"),
        ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
        ("harbor.remote-2:8443/release/app", "harbor.remote-2:8443"),
        ("docker.io", dc.DOCKER_HUB_KEY),
        ("index.docker.io", dc.DOCKER_HUB_KEY),
        ("registry-1.docker.io", dc.DOCKER_HUB_KEY),
        ("https://index.docker.io/v1/", dc.DOCKER_HUB_KEY),
    ],
)
def test_registry_key_normalised_like_the_docker_cli(name: str, key: str) -> None:
    assert dc.registry_key(name) == key


@pytest.mark.parametrize("bad", ["", "   ", "https://", "user@host", "a b"])
def test_registry_key_rejects_non_hosts(bad: str) -> None:
    with pytest.raises(UsageError):
        dc.registry_key(bad)


def test_same_registry_matches_every_spelling() -> None:
    for spelling in ("harbor.x", "https://harbor.x", "http://harbor.x/v1/", "HARBOR.X"):
        assert dc.same_registry(spelling, "harbor.x")
    assert not dc.same_registry("harbor.x:8443", "harbor.x")
    assert dc.same_registry("docker.io", "https://index.docker.io/v1/")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{", "not valid JSON"),
        (b'{"auths": []}', '"auths" must be an object'),
        (b'{"auths": {"h": "x"}}', "must be an object"),
        (b"[1]", "JSON object"),
        (b'\xef\xbb\xbf{"auths": {}}', "byte-order mark"),
        (b'{"auths": {"h\xff": {}}}', "not UTF-8"),
        (b'{"credHelpers": {"h": 1}}', "credHelpers"),
        (b'{"credsStore": 5}', "credsStore"),
    ],
)
def test_parse_names_file_and_problem(data: bytes, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        dc.parse_config(data, "/x/config.json")
    assert "/x/config.json" in str(info.value)
    assert reason in str(info.value)


def test_parse_reports_json_position() -> None:
    with pytest.raises(ConfigError, match="line 3 column"):
        dc.parse_config(b'{\n "auths": {\n  ,}\n}', "c.json")


def test_empty_file_is_an_empty_config() -> None:
    assert dc.parse_config(b"  \n", "c.json") == {}


def test_layer_drops_helpers_and_overrides_target_spellings() -> None:
    base = {
        "auths": {"src:5000": {"auth": "c3JjOnM="}, "https://harbor.x": {"auth": "old"}},
        "credsStore": "desktop",
        "credHelpers": {"harbor.x": "ecr-login", "other": "gcloud"},
        "HttpHeaders": {"X": "1"},
    }
    layered = dc.layer(base, "harbor.x", {"auth": "new"})
    assert layered == {
        "auths": {"src:5000": {"auth": "c3JjOnM="}, dc.SENTINEL: {}, "harbor.x": {"auth": "new"}},
        "HttpHeaders": {"X": "1"},
    }
    assert base["auths"]["https://harbor.x"] == {"auth": "old"}  # the base is not aliased


def test_auth_entry_keeps_robot_names_literal() -> None:
    entry = dc.auth_entry("robot$project+ci", "pw")
    assert base64.b64decode(entry["auth"]) == b"robot$project+ci:pw"


registry_names = st.from_regex(r"[a-z][a-z0-9.-]{0,20}(:[0-9]{2,5})?", fullmatch=True)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20))
auth_values = st.dictionaries(
    st.sampled_from(["auth", "identitytoken", "email", "x-extra"]), st.text(max_size=30), max_size=3
)
configs = st.fixed_dictionaries(
    {"auths": st.dictionaries(registry_names, auth_values, max_size=6)},
    optional={
        "credsStore": st.text(min_size=1, max_size=10),
        "credHelpers": st.dictionaries(registry_names, st.text(min_size=1, max_size=10), max_size=4),
        "HttpHeaders": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2),
        "x-unknown": st.recursive(json_scalars, lambda c: st.lists(c, max_size=3), max_leaves=5),
    },
)


@settings(max_examples=300, deadline=None)
@given(
    base=configs,
    target=registry_names,
    user=st.text(min_size=1, max_size=20).filter(lambda u: ":" not in u),
    password=st.text(min_size=1, max_size=20),
)
def test_layer_property(base: dict, target: str, user: str, password: str) -> None:
    """For any base: every base auth is there (but the target's), plus the target; never a helper."""
    entry = dc.auth_entry(user, password)
    layered = dc.layer(base, target, entry)
    assert "credsStore" not in layered
    assert "credHelpers" not in layered
    key = dc.registry_key(target)
    assert layered["auths"][key] == entry
    for registry, value in base["auths"].items():
        if not dc.same_registry(registry, target):
            assert layered["auths"][registry] == value
    for k, v in base.items():
        if k not in ("auths", "credsStore", "credHelpers"):
            assert layered[k] == v
    # What the scope writes parses back to the same thing.
    assert dc.parse_config(dc.serialize(layered), "scope") == layered


def test_write_atomic_keeps_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{}")
    path.chmod(0o640)
    dc.write_atomic(str(path), b'{"auths": {}}\n', dc.file_mode(str(path)))
    assert path.read_bytes() == b'{"auths": {}}\n'
    assert path.stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["config.json"]


def test_write_atomic_failure_leaves_old_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"auths": {"keep": {}}}')
    (tmp_path / "sub").mkdir()
    # Replacing a directory fails after the temp file is written: the old
    # content and no temp file remain.
    with pytest.raises(BaseWriteError):
        dc.write_atomic(str(tmp_path / "sub"), b"{}")
    assert json.loads(path.read_text()) == {"auths": {"keep": {}}}
    assert sorted(os.listdir(tmp_path)) == ["config.json", "sub"]


def test_config_path_follows_symlink_like_docker(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "docker-config.json"
    real.parent.mkdir()
    real.write_text("{}")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").symlink_to(real)
    assert dc.config_path(str(tmp_path / "d")) == str(real)


def test_config_path_refuses_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "config.json").symlink_to(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="does not exist"):
        dc.config_path(str(tmp_path))


def test_secrets_of_yields_auth_and_password() -> None:
    found = set(dc.secrets_of([dc.auth_entry("u", "s3cret-pw"), {"identitytoken": "tok-123"}]))
    assert {"s3cret-pw", dc.encode_auth("u", "s3cret-pw"), "tok-123"} <= found

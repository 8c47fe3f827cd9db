from __future__ import annotations

import base64
import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
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


@pytest.mark.parametrize(
    ("name", "ref", "api"),
    [
        ("docker.io", "docker.io", "registry-1.docker.io"),
        ("https://index.docker.io/v1/", "docker.io", "registry-1.docker.io"),
        ("harbor.x:8443", "harbor.x:8443", "harbor.x:8443"),
        ("https://harbor.x/v2/", "harbor.x", "harbor.x"),
    ],
)
def test_ref_and_api_hosts(name: str, ref: str, api: str) -> None:
    assert (dc.ref_host(name), dc.api_host(name)) == (ref, api)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3:443", True),
        ("localhost", True),
        ("localhost:5000", True),
        ("[::1]", True),
        ("harbor.x", False),
        ("harbor.x:5000", False),
        ("10.0.0.1:5000", False),
        ("localhost.example:5000", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert dc.is_loopback(host) is loopback


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


def test_parse_refuses_json_nested_too_deeply() -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        dc.parse_config(b"[" * 100_000 + b"]" * 100_000, "c.json")


def test_helper_for_prefers_the_registry_helper_then_the_store() -> None:
    cfg = {"credHelpers": {"https://harbor.x": "ecr-login"}, "credsStore": "desktop"}
    assert dc.helper_for(cfg, "harbor.x") == "ecr-login"
    assert dc.helper_for(cfg, "other.x") == "desktop"
    assert dc.helper_for({"credHelpers": {"harbor.x": "ecr-login"}}, "other.x") is None


def test_has_inline_auth_in_any_spelling() -> None:
    cfg = {"auths": {"https://harbor.x": {"auth": "eDp5"}, "token.x": {"identitytoken": "t"}, "empty.x": {}}}
    assert dc.has_inline_auth(cfg, "harbor.x") and dc.has_inline_auth(cfg, "token.x")
    assert not dc.has_inline_auth(cfg, "empty.x") and not dc.has_inline_auth(cfg, "other.x")


def test_entry_from_helper_token_or_password() -> None:
    assert dc.entry_from_helper("<token>", "tok") == {"identitytoken": "tok"}
    assert dc.entry_from_helper("ci", "pw") == dc.auth_entry("ci", "pw")


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
    inode = path.stat().st_ino
    with open(path, "rb") as opened_before:  # a reader that opened the file before the write
        dc.write_atomic(str(path), b'{"auths": {}}\n', dc.file_mode(str(path)))
        assert opened_before.read() == b"{}"  # still reads the old file, whole
    assert path.read_bytes() == b'{"auths": {}}\n'
    assert path.stat().st_ino != inode  # a new file took the name: replaced, not rewritten
    assert path.stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["config.json"]


def test_control_in_place_write_changes_what_an_open_reader_sees(tmp_path: Path) -> None:
    """Control: the same check catches a writer that rewrites the file in place."""
    path = tmp_path / "config.json"
    path.write_text("{}")
    inode = path.stat().st_ino
    with open(path, "rb") as opened_before:
        path.write_bytes(b'{"auths": {}}\n')
        assert opened_before.read() != b"{}"
    assert path.stat().st_ino == inode


# A reader in its own process reads the file as fast as it can until told to
# stop; it counts the reads that are not whole JSON (empty, torn or mixed).
READER = """
import json, os, sys
path, stop = sys.argv[1], sys.argv[2]
reads = broken = 0
with open(path, "rb") as f:
    json.loads(f.read())
print("ready", flush=True)
while not os.path.exists(stop):
    try:
        with open(path, "rb") as f:
            json.loads(f.read())
    except ValueError:
        broken += 1
    reads += 1
print(reads, broken)
"""


def _hammered(tmp_path: Path, write: Callable[[str, bytes], None], rounds: int = 40) -> tuple[int, int]:
    """(reads, broken reads) of a concurrent reader while ``write`` rewrites a large config
    at least ``rounds`` times and for at least a second."""
    path = tmp_path / "config.json"
    configs = [
        dc.serialize({"auths": {f"r{i}-{n}.example": {"auth": "eDp5" * 20} for i in range(3000)}}) for n in range(2)
    ]
    path.write_bytes(configs[0])
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "ready\n"
        n, end = 0, time.monotonic() + 1.0
        while n < rounds or time.monotonic() < end:
            write(str(path), configs[n % 2])
            n += 1
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=60)
    reads, broken = map(int, out.split())
    return reads, broken


def test_concurrent_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    reads, broken = _hammered(tmp_path, dc.write_atomic)
    assert reads > 10, "the reader hardly read: the check means nothing"
    assert broken == 0


def test_control_concurrent_reader_catches_an_in_place_writer(tmp_path: Path) -> None:
    def in_place(path: str, data: bytes) -> None:
        with open(path, "wb") as f:  # truncate, then write: what write_atomic must not do
            f.write(data)

    reads, broken = _hammered(tmp_path, in_place)
    assert broken > 0


@pytest.mark.parametrize("stage", ["write", "fsync", "replace"])
def test_write_atomic_failure_leaves_old_file(stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails at any stage leaves the old file whole and no temp file."""
    path = tmp_path / "config.json"
    path.write_text('{"auths": {"keep": {}}}')
    new = dc.serialize({"auths": {f"r{i}.example": {} for i in range(2000)}})
    real_write = os.write

    def short_then_full(fd: int, data: bytes) -> int:
        if len(data) < len(new):  # the second call: the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, bytes(data[:100]))  # a short write first

    def fail(*args: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    if stage == "write":
        monkeypatch.setattr(os, "write", short_then_full)
    else:
        monkeypatch.setattr(os, stage, fail)
    with pytest.raises(BaseWriteError) as info:
        dc.write_atomic(str(path), new)
    monkeypatch.undo()
    assert str(path) in str(info.value)
    assert json.loads(path.read_text()) == {"auths": {"keep": {}}}
    assert os.listdir(tmp_path) == ["config.json"]


def test_control_in_place_write_that_fails_loses_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: the same full disk during an in-place rewrite leaves neither the old nor the new file."""
    path = tmp_path / "config.json"
    path.write_text('{"auths": {"keep": {}}}')
    real_write = os.write
    calls: list[int] = []

    def short_then_full(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, bytes(data[:10]))

    monkeypatch.setattr(os, "write", short_then_full)
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        with pytest.raises(OSError):
            view = memoryview(b'{"auths": {"new": {}}}')
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    monkeypatch.undo()
    with pytest.raises(ValueError):
        json.loads(path.read_text())


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

"""The real skopeo with tools.skopeo_env (issue #16): its blob info cache in
memory, not the machine's shared BoltDB file, and the same bits landing.

Each test reads skopeo's own --debug account of which cache it opened; the
controls run it without the env (or with half of it) and see the shared file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from authscope import tools
from tests.e2e.conftest import RegistryFactory, require_tools
from tests.support import Registry, isolated_env, publish_image, write_authfile
from tests.support.oci import build_oci_layout

MEMORY_ONLY = "using a memory-only cache"
SHARED_CACHE = "blob info cache at "  # "Using blob info cache at" (BoltDB); "Using SQLite ..." in c/image 5.29+


def _skopeo_copy(
    registry: Registry, env: dict[str, str], src: str, dest: str, *, debug: bool = False
) -> subprocess.CompletedProcess[str]:
    argv = [
        *tools.SKOPEO_COPY,
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"docker://{src}",
        f"docker://{dest}",
    ]
    if debug:
        argv.insert(1, "--debug")
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def lab(tmp_path: Path, registry_factory: RegistryFactory) -> tuple[Registry, dict[str, str], str, str]:
    require_tools("skopeo")
    registry = registry_factory("registry")
    env = isolated_env(tmp_path / "env")
    auth = write_authfile(tmp_path / "auth.json", {registry.host: (registry.username, registry.password)})
    env["REGISTRY_AUTH_FILE"] = str(auth)
    image = publish_image(registry, tmp_path / "image", env, repository="app", tag="1.0", layer_count=2, seed=16)
    return registry, env, f"{registry.host}/app:1.0", image.digest


def test_real_skopeo_keeps_its_blob_info_cache_in_memory_and_lands_the_same_digest(
    lab: tuple[Registry, dict[str, str], str, str],
) -> None:
    registry, env, src, digest = lab
    done = _skopeo_copy(
        registry, {**env, **tools.skopeo_env(os.geteuid())}, src, f"{registry.host}/copy:1.0", debug=True
    )
    assert done.returncode == 0, done.stderr
    assert MEMORY_ONLY in done.stderr
    assert SHARED_CACHE not in done.stderr
    assert registry.manifest_digest("copy", "1.0") == digest


def test_control_without_the_env_real_skopeo_uses_the_shared_cache_file(
    lab: tuple[Registry, dict[str, str], str, str],
) -> None:
    registry, env, src, digest = lab
    done = _skopeo_copy(registry, env, src, f"{registry.host}/plain:1.0", debug=True)
    assert done.returncode == 0, done.stderr
    assert SHARED_CACHE in done.stderr and MEMORY_ONLY not in done.stderr
    assert registry.manifest_digest("plain", "1.0") == digest


def test_control_data_home_alone_moves_the_cache_only_for_a_user(
    lab: tuple[Registry, dict[str, str], str, str],
) -> None:
    """Why skopeo_env claims another uid as root: XDG_DATA_HOME alone is ignored
    there (root's cache is always /var/lib/containers/cache); for a user it is enough."""
    registry, env, src, _ = lab
    done = _skopeo_copy(registry, {**env, "XDG_DATA_HOME": os.devnull}, src, f"{registry.host}/alone:1.0", debug=True)
    assert done.returncode == 0, done.stderr
    if os.geteuid() == 0:
        assert f"{SHARED_CACHE}/var/lib/containers/cache/" in done.stderr
    else:
        assert MEMORY_ONLY in done.stderr


def _index_layout(layout: Path) -> str:
    """An OCI layout whose tag `multi` is an index of two platforms; its digest."""
    blobs = layout / "blobs" / "sha256"
    entries = []
    for seed, arch in ((1, "amd64"), (2, "arm64")):
        digest = build_oci_layout(layout, layer_count=1, seed=seed, tag=arch)
        body = (blobs / digest.split(":", 1)[1]).read_bytes()
        media_type = json.loads(body)["mediaType"]
        entries.append(
            {
                "mediaType": media_type,
                "digest": digest,
                "size": len(body),
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
    ).encode()
    digest = "sha256:" + hashlib.sha256(index).hexdigest()
    (blobs / digest.split(":", 1)[1]).write_bytes(index)
    top = json.loads((layout / "index.json").read_text())
    top["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": len(index),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }
    )
    (layout / "index.json").write_text(json.dumps(top))
    return digest


def test_real_skopeo_with_the_env_copies_a_whole_index_byte_for_byte(
    tmp_path: Path, registry_factory: RegistryFactory
) -> None:
    """--all --preserve-digests with the in-memory cache: an index of two
    platforms lands with the source's index digest and both platform manifests."""
    require_tools("skopeo")
    registry = registry_factory("registry")
    env = isolated_env(tmp_path / "env")
    env["REGISTRY_AUTH_FILE"] = str(
        write_authfile(tmp_path / "auth.json", {registry.host: (registry.username, registry.password)})
    )
    env.update(tools.skopeo_env(os.geteuid()))
    layout = tmp_path / "layout"
    index_digest = _index_layout(layout)
    argv = [*tools.SKOPEO_COPY, "--dest-tls-verify=false", f"oci:{layout}:multi", f"docker://{registry.host}/app:multi"]
    pushed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert pushed.returncode == 0, pushed.stderr
    assert registry.manifest_digest("app", "multi") == index_digest
    done = _skopeo_copy(registry, env, f"{registry.host}/app:multi", f"{registry.host}/copy:multi")
    assert done.returncode == 0, done.stderr
    assert registry.manifest_digest("copy", "multi") == index_digest
    for entry in json.loads((layout / "blobs" / "sha256" / index_digest.split(":", 1)[1]).read_bytes())["manifests"]:
        assert registry.manifest_digest("copy", entry["digest"]) == entry["digest"]

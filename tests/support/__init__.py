"""Test support: real registries, OCI images and isolated client environments.

Used by tests/e2e and by the demo and benchmark scripts; nothing here imports
authscope, so it can also drive other tools for comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .isolation import (
    SkopeoError,
    isolated_env,
    skopeo_digest,
    skopeo_push,
    skopeo_raw_manifest,
    write_authfile,
)
from .oci import build_oci_layout
from .registry import CA, Registry, RegistryStartError, find_registry_binary, start_registry

__all__ = [
    "CA",
    "Registry",
    "RegistryStartError",
    "SkopeoError",
    "SourceImage",
    "build_oci_layout",
    "find_registry_binary",
    "isolated_env",
    "publish_image",
    "skopeo_digest",
    "skopeo_push",
    "skopeo_raw_manifest",
    "start_registry",
    "write_authfile",
]


@dataclass(frozen=True)
class SourceImage:
    """An image pushed to a test registry, as a fan-out source."""

    registry: Registry
    repository: str
    tag: str
    ref: str  # HOST/REPO:TAG, no transport prefix
    digest: str  # manifest digest, identical in the layout and the registry
    layout: Path  # the OCI layout it was pushed from
    authfile: Path  # Docker-format auth file with only this registry's login


def publish_image(
    registry: Registry,
    workdir: Path,
    env: Mapping[str, str],
    *,
    repository: str = "app",
    tag: str = "1.0",
    **layout_options: Any,
) -> SourceImage:
    """Build an OCI layout under `workdir` (see `build_oci_layout`) and push it with skopeo.

    Raises RuntimeError if the registry ends up with a different digest than
    the layout's: every later digest check relies on the two being equal.
    """
    layout = workdir / "layout"
    digest = build_oci_layout(layout, tag=tag, **layout_options)
    authfile = write_authfile(workdir / "source-auth.json", {registry.host: registry.credentials})
    ref = registry.ref(repository, tag)
    pushed = skopeo_push(layout, tag, ref, authfile, env, registry.cert_dir)
    if pushed != digest:
        raise RuntimeError(f"pushed {ref} as {pushed}, but the layout's manifest is {digest}")
    return SourceImage(registry, repository, tag, ref, digest, layout, authfile)

"""Deterministic OCI image layouts, built without a container engine.

`build_oci_layout` writes a linux/amd64 image (gzip tar layers, config,
OCI manifest) into an OCI image layout that `skopeo copy oci:PATH:TAG ...`
can push. Same arguments, same bytes, same digest: tar headers are fixed
(mtime 0, uid/gid 0, no user names) and gzip headers carry no name or time.
(Compressed bytes also depend on the zlib build, so digests are stable per
machine image, not necessarily across distributions.)

Layers are streamed to disk, so multi-hundred-megabyte images for
benchmarks do not need that much memory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

_EPOCH = "1970-01-01T00:00:00Z"
_CHUNK = 64 * 1024


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through."""

    def __init__(self, sink: IO[bytes] | Any) -> None:
        self.sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        self.sink.flush()

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256.hexdigest()}"


class _SeededReader(io.RawIOBase):
    """`size` pseudo-random (incompressible) bytes, identical for the same `key`.

    Bytes are drawn in fixed-size chunks so the stream does not depend on how
    the consumer sizes its reads.
    """

    def __init__(self, key: str, size: int) -> None:
        super().__init__()
        self._rng = random.Random(key)  # str seeds hash with SHA-512: stable across versions
        self._remaining = size
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._remaining + len(self._buffer)
        while len(self._buffer) < n and self._remaining > 0:
            take = min(_CHUNK, self._remaining)
            self._buffer += self._rng.randbytes(take)
            self._remaining -= take
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


def _canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _tarinfo(name: str, size: int = 0, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_blob_bytes(blobs: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    target = blobs / digest
    if not target.exists():
        tmp = blobs / f".tmp-{digest}"
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _write_layer(
    blobs: Path, index: int, payload: bytes | _SeededReader, payload_size: int, label: str, compresslevel: int
) -> tuple[dict[str, Any], str]:
    """Write one gzip tar layer; returns (descriptor, diff_id)."""
    tmp = blobs / f".tmp-layer-{index}-{os.getpid()}"
    base = f"authscope/layer-{index}"
    readme = f"authscope test layer {index} ({label})\n".encode()
    with open(tmp, "wb") as raw:
        compressed = _HashingWriter(raw)
        # filename="" and mtime=0: nothing host- or time-specific in the header.
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=compresslevel) as gz:  # type: ignore[arg-type]
            uncompressed = _HashingWriter(gz)
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.USTAR_FORMAT) as tar:  # type: ignore[call-overload]
                tar.addfile(_tarinfo("authscope", directory=True))
                tar.addfile(_tarinfo(base, directory=True))
                tar.addfile(_tarinfo(f"{base}/README", len(readme)), io.BytesIO(readme))
                size_text = f"{payload_size}\n".encode()
                tar.addfile(_tarinfo(f"{base}/size", len(size_text)), io.BytesIO(size_text))
                stream = io.BytesIO(payload) if isinstance(payload, bytes) else payload
                tar.addfile(_tarinfo(f"{base}/data.bin", payload_size), stream)
    target = blobs / compressed.digest.split(":", 1)[1]
    os.replace(tmp, target)
    return (
        {"mediaType": OCI_LAYER_GZIP, "digest": compressed.digest, "size": compressed.size},
        uncompressed.digest,
    )


def _update_index(path: Path, descriptor: dict[str, Any], tag: str) -> None:
    index_path = path / "index.json"
    manifests: list[dict[str, Any]] = []
    if index_path.exists():
        # Adding a second tag/image to an existing layout; a re-used tag moves.
        existing = json.loads(index_path.read_text())
        manifests = [m for m in existing.get("manifests", []) if m.get("annotations", {}).get(REF_NAME) != tag]
    manifests.append(descriptor)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    index_path.write_bytes(_canonical_json(index))


def build_oci_layout(
    path: Path,
    *,
    layers: Sequence[bytes] | None = None,
    layer_count: int = 2,
    layer_size: int = 1024,
    total_size: int | None = None,
    seed: int = 0,
    tag: str = "latest",
    compresslevel: int = 6,
) -> str:
    """Write a linux/amd64 image into the OCI layout at `path`; return its manifest digest.

    Each layer is a gzip tar holding a README, a size file and `data.bin`.
    `layers` gives the `data.bin` payloads explicitly; otherwise `layer_count`
    payloads of `layer_size` seeded random (incompressible) bytes are made, or,
    with `total_size`, that many bytes split across `layer_count` layers (the
    pushed image is then about `total_size` plus ~1 KiB per layer).
    Different `seed`s give different images. The layout may already hold other
    tags; `tag` is added (or moved) in its index.json.
    """
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_bytes(_canonical_json({"imageLayoutVersion": "1.0.0"}))

    payloads: list[tuple[bytes | _SeededReader, int, str]]
    if layers is not None:
        if not layers:
            raise ValueError("layers must not be empty")
        payloads = [(data, len(data), f"explicit payload, seed {seed}") for data in layers]
    else:
        if layer_count < 1:
            raise ValueError("layer_count must be >= 1")
        sizes = [layer_size] * layer_count
        if total_size is not None:
            sizes = [total_size // layer_count] * layer_count
            sizes[-1] += total_size - sum(sizes)
        payloads = [
            (_SeededReader(f"authscope-layer:{seed}:{i}", size), size, f"seed {seed}") for i, size in enumerate(sizes)
        ]

    descriptors: list[dict[str, Any]] = []
    diff_ids: list[str] = []
    for i, (payload, size, label) in enumerate(payloads):
        descriptor, diff_id = _write_layer(blobs, i, payload, size, label, compresslevel)
        descriptors.append(descriptor)
        diff_ids.append(diff_id)

    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": _EPOCH,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {"org.opencontainers.image.title": "authscope test image", "authscope.test.seed": str(seed)},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": _EPOCH, "created_by": f"authscope test layer {i}"} for i in range(len(diff_ids))],
    }
    config_desc = {"mediaType": OCI_CONFIG, **_write_blob_bytes(blobs, _canonical_json(config))}

    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc,
        "layers": descriptors,
    }
    manifest_desc = _write_blob_bytes(blobs, _canonical_json(manifest))

    _update_index(
        path,
        {
            "mediaType": OCI_MANIFEST,
            **manifest_desc,
            "annotations": {REF_NAME: tag},
            "platform": {"architecture": "amd64", "os": "linux"},
        },
        tag,
    )
    return str(manifest_desc["digest"])

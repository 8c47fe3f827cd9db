"""Tool adapters: the argv that copies the source to one target, per tool.

The builders are pure: they take references and flags and return argv, never
a secret. Credentials are always read by the tool from the scope's config
(``DOCKER_CONFIG`` / ``REGISTRY_AUTH_FILE``). TLS settings that a tool can
only take from files (a CA for skopeo's cert dirs, crane's and regctl's trust
store, regctl's host config) are written into the scope by ``prepare`` and
referenced through the ``{scope}`` placeholder, filled in when a step runs.

The source is always copied by digest (``repo@sha256:...``), so every target
gets the same bits even if the source tag moves during the fan-out; the first
destination tag is copied with the whole index (every platform), and each
further tag is then made from that destination. podman and buildah, which
copy through local storage, pull the source into the scope's own storage and
push it to each tag (containers_steps).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from .dockerconfig import is_loopback
from .referrers import Artifact
from .targets import PLACEHOLDER, Source, Target

SCOPE = "{scope}"
SYSTEM_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # RHEL, Fedora
    "/etc/ssl/cert.pem",  # Alpine, macOS
)
SYSTEM_BUNDLE_LIMIT = 16 * 1024 * 1024  # the system's own store: larger than any one CA file


@dataclass(frozen=True)
class Step:
    """One command of a target's copy; ``what`` names it in logs and reports.

    ``batch``: 0 runs it alone; neighbours with the same non-zero batch run
    at the same time (a wave of referrer copies, see referrer_steps)."""

    what: str
    argv: tuple[str, ...]
    batch: int = 0


def _tls(insecure: bool) -> str:
    return "false" if insecure else "true"


def _crane_flags(insecure: bool) -> tuple[str, ...]:
    return ("--insecure",) if insecure else ()


def crane_steps(source_ref: str, destinations: Sequence[str], insecure: bool) -> list[Step]:
    """``crane copy`` by digest, then ``crane tag`` for further tags.

    crane's --insecure covers both ends; CAs come from SSL_CERT_FILE (see prepare).
    """
    first = destinations[0]
    copy = Step(f"copy {first}", ("crane", "copy", *_crane_flags(insecure), source_ref, first))
    return [copy, *_crane_tags(destinations, insecure)]


def _crane_tags(destinations: Sequence[str], insecure: bool) -> list[Step]:
    first = destinations[0]
    return [
        Step(f"tag {dest}", ("crane", "tag", *_crane_flags(insecure), first, _tag_of(dest)))
        for dest in destinations[1:]
    ]


def _skopeo_tls(end: str, insecure: bool, ca_file: str | None, cert_dir: str) -> list[str]:
    flags = [f"--{end}-tls-verify={_tls(insecure)}"]
    if ca_file:
        flags.append(f"--{end}-cert-dir={SCOPE}/certs/{cert_dir}")
    return flags


SKOPEO_COPY = ("skopeo", "copy", "--all", "--preserve-digests", "--retry-times=0")
# Flags that make skopeo write other bits than the source's: never in a step
# (tests/test_skopeo_speed.py checks every builder against this list).
SKOPEO_DIGEST_CHANGING = (
    "--dest-compress",
    "--dest-compress-format",
    "--dest-compress-level",
    "--dest-decompress",
    "--dest-oci-accept-uncompressed-layers",
    "--format",
    "-f",
    "--remove-signatures",
    "--encrypt-layer",
    "--encryption-key",
    "--decryption-key",
    "--multi-arch",
)


def skopeo_env(euid: int) -> dict[str, str]:
    """The environment that keeps each skopeo's blob info cache in its own memory.

    containers/image keeps that cache in one file per user (BoltDB up to
    5.28, i.e. skopeo 1.9 to 1.13; SQLite from 5.29, with the same fallback
    below): root's /var/lib/containers/cache/blob-info-cache-v1.boltdb,
    $XDG_DATA_HOME/containers/cache/ for others. It opens, flocks
    and fdatasyncs it about 20 times per copy (pkg/blobinfocache/boltdb: one
    open per lookup or record). bbolt retries a busy flock only every 50 ms,
    so N targets copying at once queue on that one file, and so does every
    other skopeo on the machine. When the cache's directory cannot be made
    (XDG_DATA_HOME names a file), containers/image falls back to a cache in
    memory (blobinfocache.DefaultCache): nothing shared, nothing written.

    Nothing that lands changes: the cache only suggests where a blob might
    already be; skopeo still asks the target (HEAD) before it uploads, and
    copies the same bytes (--preserve-digests). What is lost is what earlier
    copies on this machine learnt (a cross-repository mount of a blob that
    is already elsewhere on the target registry).

    Root always gets the system path unless _CONTAINERS_ROOTLESS_UID (set by
    podman for its rootless children) names another user. Besides the cache,
    containers/image then only reads simple-signing signatures from
    ~/.local/share/containers/sigstore instead of /var/lib/containers/sigstore
    when registries.d configures no lookaside (local files, not the target
    registry's), and containers-storage (never used by skopeo_steps) would
    look for its rootless configuration.
    """
    env = {"XDG_DATA_HOME": os.devnull}
    if euid == 0:
        env["_CONTAINERS_ROOTLESS_UID"] = str(NOBODY_UID)
    return env


NOBODY_UID = 65534  # any uid but 0 takes containers/image's per-user paths; none of it is used as a uid


def skopeo_steps(source_ref: str, destinations: Sequence[str], source: Source, target: Target) -> list[Step]:
    """``skopeo copy --all --preserve-digests``; credentials via REGISTRY_AUTH_FILE."""
    first = destinations[0]
    tls = _skopeo_tls("src", source.insecure, source.ca_file, "source") + _skopeo_tls(
        "dest", target.insecure, target.ca_file, "target"
    )
    copy = Step(f"copy {first}", (*SKOPEO_COPY, *tls, f"docker://{source_ref}", f"docker://{first}"))
    return [copy, *_skopeo_tags(destinations, target)]


def _skopeo_tags(destinations: Sequence[str], target: Target) -> list[Step]:
    first = destinations[0]
    tls = _skopeo_tls("src", target.insecure, target.ca_file, "target") + _skopeo_tls(
        "dest", target.insecure, target.ca_file, "target"
    )
    return [
        Step(f"tag {dest}", (*SKOPEO_COPY, *tls, f"docker://{first}", f"docker://{dest}")) for dest in destinations[1:]
    ]


def regctl_steps(source_ref: str, destinations: Sequence[str]) -> list[Step]:
    """``regctl image copy``; TLS per host from the scope's REGCTL_CONFIG."""
    first = destinations[0]
    copy = Step(f"copy {first}", ("regctl", "image", "copy", "--digest-tags=false", source_ref, first))
    return [copy, *_regctl_tags(destinations)]


def _regctl_tags(destinations: Sequence[str]) -> list[Step]:
    first = destinations[0]
    return [Step(f"tag {dest}", ("regctl", "image", "copy", first, dest)) for dest in destinations[1:]]


# podman's own state (events log, locks) would go to /run/libpod, shared.
PODMAN_STATE = (f"--tmpdir={SCOPE}/podman-tmp", "--events-backend=none")


def _containers_tls(insecure: bool, ca_file: str | None, cert_dir: str) -> list[str]:
    flags = [f"--tls-verify={_tls(insecure)}"]
    if ca_file:
        flags.append(f"--cert-dir={SCOPE}/certs/{cert_dir}")
    return flags


def containers_steps(
    tool: str, source_ref: str, destinations: Sequence[str], source: Source, target: Target
) -> list[Step]:
    """``podman``/``buildah`` ``pull`` of the source by digest into the scope's
    storage (CONTAINERS_STORAGE_CONF, see prepare), then a ``push`` of it to
    every destination; credentials via REGISTRY_AUTH_FILE.

    The push writes layers compressed afresh from local storage: the target
    gets the source's digest only when the source's layers were compressed the
    same way (pushed by containers/image, single platform); else the digest
    check fails the target (docs/tools.md).
    """
    base = (tool, *(PODMAN_STATE if tool == "podman" else ()))
    pull_tls = _containers_tls(source.insecure, source.ca_file, "source")
    pull = Step(f"pull {source_ref}", (*base, "pull", *pull_tls, f"docker://{source_ref}"))
    push_tls = _containers_tls(target.insecure, target.ca_file, "target")
    pushes = [Step(f"push {dest}", (*base, "push", *push_tls, source_ref, f"docker://{dest}")) for dest in destinations]
    return [pull, *pushes]


def custom_steps(command: Sequence[str], source_ref: str, destinations: Sequence[str], target: Target) -> list[Step]:
    """The user's command once per destination, placeholders filled in."""
    steps = []
    for dest in destinations:
        values = {
            "source": source_ref,
            "destination": dest,
            "registry": target.registry,
            "repository": target.repository,
            "tag": _tag_of(dest),
            "name": target.name,
        }
        steps.append(Step(f"command {dest}", tuple(_fill(arg, values) for arg in command)))
    return steps


def _fill(arg: str, values: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), arg)


def _tag_of(ref: str) -> str:
    return ref.rsplit(":", 1)[1]


def steps_for(source: Source, target: Target, source_ref: str, layout: str | None = None) -> list[Step]:
    """The target's steps; with ``layout``, pushed from that local OCI layout."""
    destinations = [f"{target.registry}/{target.repository}:{tag}" for tag in target.tags]
    if layout is not None:
        return push_steps(target, layout, destinations)
    if target.tool == "crane":
        # crane's --insecure covers both ends: don't let an insecure source
        # switch off verification of a TLS target when crane doesn't need it
        # (it speaks plain HTTP to loopback registries on its own).
        source_needs_flag = source.insecure and not is_loopback(source.image.registry)
        return crane_steps(source_ref, destinations, target.insecure or source_needs_flag)
    if target.tool == "skopeo":
        return skopeo_steps(source_ref, destinations, source, target)
    if target.tool == "regctl":
        return regctl_steps(source_ref, destinations)
    if target.tool in ("podman", "buildah"):
        return containers_steps(target.tool, source_ref, destinations, source, target)
    assert target.command is not None  # checked when the file was loaded
    return custom_steps(target.command, source_ref, destinations, target)


LAYOUT_TAG = "source"


def pull_step(tool: str, source: Source, source_ref: str, layout: str) -> Step:
    """Fetch the source once into a local OCI layout (pull_once)."""
    what = f"pull {source_ref}"
    if tool == "crane":
        return Step(what, ("crane", "pull", *_crane_flags(source.insecure), "--format=oci", source_ref, layout))
    if tool == "skopeo":
        tls = _skopeo_tls("src", source.insecure, source.ca_file, "source")
        return Step(what, (*SKOPEO_COPY, *tls, f"docker://{source_ref}", f"oci:{layout}:{LAYOUT_TAG}"))
    if tool == "regctl":
        return Step(what, ("regctl", "image", "copy", source_ref, f"ocidir://{layout}:{LAYOUT_TAG}"))
    raise ValueError(f"pull_once does not support tool {tool!r}")


def push_steps(target: Target, layout: str, destinations: Sequence[str]) -> list[Step]:
    """Push the layout that pull_step wrote, then make the further tags."""
    first = destinations[0]
    what = f"push {first}"
    if target.tool == "crane":
        push = Step(what, ("crane", "push", *_crane_flags(target.insecure), layout, first))
        return [push, *_crane_tags(destinations, target.insecure)]
    if target.tool == "skopeo":
        tls = _skopeo_tls("dest", target.insecure, target.ca_file, "target")
        push = Step(what, (*SKOPEO_COPY, *tls, f"oci:{layout}:{LAYOUT_TAG}", f"docker://{first}"))
        return [push, *_skopeo_tags(destinations, target)]
    if target.tool == "regctl":
        push = Step(what, ("regctl", "image", "copy", f"ocidir://{layout}:{LAYOUT_TAG}", first))
        return [push, *_regctl_tags(destinations)]
    raise ValueError(f"pull_once does not support tool {target.tool!r}")


# -- signatures, attestations, SBOMs, OCI referrers (referrers.py) -----------------------


def referrer_tool(target: Target) -> str:
    """The tool that copies a target's referrers: its own; for ``tool: custom``,
    crane (a custom command copies one image and knows nothing of its
    referrers); for podman and buildah, skopeo (the same containers/image
    credentials and cert dirs, but it copies by digest without unpacking into
    a store and compressing again, which would change every artifact's digest)."""
    if target.tool == "custom":
        return "crane"
    return "skopeo" if target.tool in ("podman", "buildah") else target.tool


def landed_after(target: Target, steps: Sequence[Step]) -> int:
    """How many of the target's own ``steps`` (steps_for, push_steps) run
    before its image's manifest is at the target: its referrers go right
    after them, never before. Harbor links a signature to its subject only
    when the signature is pushed, looking the subject up then, so a
    signature pushed before the image lands unlinked (and a project that
    refuses unsigned images refuses the image). podman and buildah pull
    first, then push: the image is there after the first push; a custom
    command is opaque: after all of them."""
    if target.tool == "custom":
        return len(steps)
    return min(2 if target.tool in ("podman", "buildah") else 1, len(steps))


def referrer_layout(layout: str, index: int) -> str:
    """Where pull_once keeps the ``index``-th referrer: a layout of its own beside the image's."""
    return f"{layout}.referrer-{index}"


def referrer_steps(
    source: Source, target: Target, artifacts: Sequence[Artifact], layout: str | None = None
) -> list[Step]:
    """Copy each artifact to the target by digest, with the target's tool: a
    cosign tag as that tag, an OCI referrer to its digest. With ``layout``,
    pushed from what pull_referrer_steps wrote.

    Each step's batch is its wave: 1 for what refers to the image (or a
    platform manifest), 2 for what refers to those (a signature of an SBOM),
    and so on; the copies of one wave run at the same time, each wave after
    the one its subjects are in (``artifacts`` come subjects first)."""
    tool = referrer_tool(target)
    steps = []
    waves: dict[str, int] = {}
    for i, artifact in enumerate(artifacts):
        wave = waves.get(artifact.subject, 0) + 1
        waves.setdefault(artifact.digest, wave)
        src = f"{source.image.registry}/{source.image.repository}@{artifact.digest}"
        dest = f"{target.registry}/{target.repository}" + (
            f":{artifact.tag}" if artifact.tag else f"@{artifact.digest}"
        )
        what = f"referrer {artifact.label}"
        local = referrer_layout(layout, i) if layout is not None else None
        if tool == "crane":
            source_needs_flag = source.insecure and not is_loopback(source.image.registry) and local is None
            flags = _crane_flags(target.insecure or source_needs_flag)
            argv = ("crane", "push", *flags, local, dest) if local else ("crane", "copy", *flags, src, dest)
        elif tool == "skopeo":
            tls = [] if local else _skopeo_tls("src", source.insecure, source.ca_file, "source")
            tls += _skopeo_tls("dest", target.insecure, target.ca_file, "target")
            origin = f"oci:{local}:{LAYOUT_TAG}" if local else f"docker://{src}"
            argv = (*SKOPEO_COPY, *tls, origin, f"docker://{dest}")
        else:
            origin = f"ocidir://{local}:{LAYOUT_TAG}" if local else src
            argv = ("regctl", "image", "copy", "--digest-tags=false", origin, dest)
        steps.append(Step(what, argv, wave))
    return steps


def pull_referrer_steps(tool: str, source: Source, artifacts: Sequence[Artifact], layout: str) -> list[Step]:
    """pull_once: fetch each artifact into a layout of its own (referrer_layout)."""
    image = source.image
    return [
        Step(
            f"pull referrer {a.label}",
            pull_step(tool, source, f"{image.registry}/{image.repository}@{a.digest}", referrer_layout(layout, i)).argv,
        )
        for i, a in enumerate(artifacts)
    ]


def fill_scope(argv: Sequence[str], scope: str) -> list[str]:
    return [arg.replace(SCOPE, scope) for arg in argv]


# -- files a tool needs in the scope ------------------------------------------------


def _read(path: str, limit: int = 0) -> bytes:
    """A CA file, read safely (a regular file, capped): see credentials.read_file."""
    from .credentials import CA_LIMIT, read_file

    return read_file(path, f"CA file {path}", limit or CA_LIMIT)


def _write(path: str, data: bytes) -> None:
    # makedirs applies mode only to the last directory: make each one 0700.
    missing = []
    directory = os.path.dirname(path)
    while not os.path.isdir(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    for directory in reversed(missing):
        os.mkdir(directory, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


Host = tuple[str, bool, str | None, str]  # host, insecure, CA file, its skopeo cert dir


def prepare(
    scope: str, source: Source, target: Target, plain_http: Sequence[str] = (), pulled: bool = False
) -> dict[str, str]:
    """Write the TLS files the target's tool reads into ``scope``; the env to add.

    ``plain_http``: hosts found to speak HTTP, not HTTPS (regctl must be told).
    ``pulled``: the source is a local layout (pull_once), not a registry.
    """
    hosts: list[Host] = [] if pulled else [(source.image.registry, source.insecure, source.ca_file, "source")]
    hosts.append((target.registry, target.insecure, target.ca_file, "target"))
    return _prepare(scope, target.tool, hosts, plain_http)


def prepare_pull(scope: str, source: Source, tool: str, plain_http: Sequence[str] = ()) -> dict[str, str]:
    """Like ``prepare``, for the pull_once step: only the source."""
    return _prepare(scope, tool, [(source.image.registry, source.insecure, source.ca_file, "source")], plain_http)


def _prepare(scope: str, tool: str, hosts: Sequence[Host], plain_http: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    cas = [ca for _, _, ca, _ in hosts if ca]
    if tool in ("skopeo", "podman", "buildah"):  # containers/image: a cert dir per host
        for _, _, ca, cert_dir in hosts:
            if ca:
                _write(os.path.join(scope, "certs", cert_dir, "ca.crt"), _read(ca))
    elif cas:
        # Go programs trust SSL_CERT_FILE instead of the system store: give
        # them the system store plus the CAs of this scope's registries.
        system = next((p for p in SYSTEM_CA_BUNDLES if os.path.isfile(p)), None)
        bundle = (_read(system, SYSTEM_BUNDLE_LIMIT) if system else b"") + b"\n".join(_read(ca) for ca in cas) + b"\n"
        env["SSL_CERT_FILE"] = os.path.join(scope, "ca-bundle.crt")
        _write(env["SSL_CERT_FILE"], bundle)
    if tool == "skopeo":
        env.update(skopeo_env(os.geteuid()))
    if tool in ("podman", "buildah"):
        env["CONTAINERS_STORAGE_CONF"] = os.path.join(scope, "storage.conf")
        _write(env["CONTAINERS_STORAGE_CONF"], containers_storage_conf(scope).encode())
    if tool == "regctl":
        env["REGCTL_CONFIG"] = os.path.join(scope, "regctl.json")
        _write(env["REGCTL_CONFIG"], json.dumps(regctl_config(hosts, plain_http)).encode())
    return env


def containers_storage_conf(scope: str) -> str:
    """The image storage of one target's podman or buildah run, all in its scope.

    Each target's own, so concurrent targets never contend for one store's
    locks, and nothing of it outlives the scope. In a file, not --root and
    --runroot: podman 4 refuses a --runroot longer than 50 characters. vfs
    works unprivileged and nested; ignore_chown_errors keeps every file owned
    by the job's user, so a rootless run's storage is removed with the scope.
    """
    root, run = json.dumps(os.path.join(scope, "storage")), json.dumps(os.path.join(scope, "storage-run"))
    return (
        f'[storage]\ndriver = "vfs"\ngraphroot = {root}\nrunroot = {run}\n'
        '[storage.options.vfs]\nignore_chown_errors = "true"\n'
    )


def regctl_config(hosts: Sequence[Host], plain_http: Sequence[str] = ()) -> dict[str, object]:
    """regctl's host settings: plain HTTP / unverified TLS and CAs, per host.

    Credentials stay out of it: regctl reads them from DOCKER_CONFIG.
    """
    out: dict[str, dict[str, object]] = {}
    for host, insecure, ca, _ in hosts:
        entry = out.setdefault(host, {})
        if host in plain_http:
            entry["tls"] = "disabled"
        elif insecure:
            entry["tls"] = "insecure"
        if ca:
            entry["regcert"] = _read(ca).decode("ascii", "replace")
    return {"hosts": {h: e for h, e in out.items() if e}}


def display(argv: Sequence[str], scope: str | None = None) -> str:
    """argv for a log line (it never holds a secret)."""
    import shlex

    return " ".join(shlex.quote(a) for a in (fill_scope(argv, scope) if scope else argv))

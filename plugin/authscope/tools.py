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
further tag is then made from that destination.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .targets import PLACEHOLDER, Source, Target

SCOPE = "{scope}"
SYSTEM_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # RHEL, Fedora
    "/etc/ssl/cert.pem",  # Alpine, macOS
)


@dataclass(frozen=True)
class Step:
    """One command of a target's copy; ``what`` names it in logs and reports."""

    what: str
    argv: Tuple[str, ...]


def _tls(insecure: bool) -> str:
    return "false" if insecure else "true"


def crane_steps(source_ref: str, destinations: Sequence[str], insecure: bool) -> List[Step]:
    """``crane copy`` by digest, then ``crane tag`` for further tags.

    crane's --insecure covers both ends; CAs come from SSL_CERT_FILE (see prepare).
    """
    flags = ("--insecure",) if insecure else ()
    first = destinations[0]
    steps = [Step(f"copy {first}", ("crane", "copy", *flags, source_ref, first))]
    for dest in destinations[1:]:
        steps.append(Step(f"tag {dest}", ("crane", "tag", *flags, first, _tag_of(dest))))
    return steps


def skopeo_steps(source_ref: str, destinations: Sequence[str], source: Source, target: Target) -> List[Step]:
    """``skopeo copy --all --preserve-digests``; credentials via REGISTRY_AUTH_FILE."""
    src_tls = [f"--src-tls-verify={_tls(source.insecure)}"]
    if source.ca_file:
        src_tls.append(f"--src-cert-dir={SCOPE}/certs/source")
    dest_tls = [f"--dest-tls-verify={_tls(target.insecure)}"]
    if target.ca_file:
        dest_tls.append(f"--dest-cert-dir={SCOPE}/certs/target")
    first = destinations[0]
    copy = ("skopeo", "copy", "--all", "--preserve-digests", "--retry-times=0")
    steps = [Step(f"copy {first}", (*copy, *src_tls, *dest_tls, f"docker://{source_ref}", f"docker://{first}"))]
    same_tls = [f.replace("--dest-", "--src-", 1) for f in dest_tls]
    for dest in destinations[1:]:
        steps.append(Step(f"tag {dest}", (*copy, *same_tls, *dest_tls, f"docker://{first}", f"docker://{dest}")))
    return steps


def regctl_steps(source_ref: str, destinations: Sequence[str]) -> List[Step]:
    """``regctl image copy``; TLS per host from the scope's REGCTL_CONFIG."""
    first = destinations[0]
    steps = [Step(f"copy {first}", ("regctl", "image", "copy", "--digest-tags=false", source_ref, first))]
    for dest in destinations[1:]:
        steps.append(Step(f"tag {dest}", ("regctl", "image", "copy", first, dest)))
    return steps


def custom_steps(command: Sequence[str], source_ref: str, destinations: Sequence[str], target: Target) -> List[Step]:
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


def _fill(arg: str, values: Dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), arg)


def _tag_of(ref: str) -> str:
    return ref.rsplit(":", 1)[1]


def steps_for(source: Source, target: Target, source_ref: str) -> List[Step]:
    destinations = [f"{target.registry}/{target.repository}:{tag}" for tag in target.tags]
    if target.tool == "crane":
        return crane_steps(source_ref, destinations, source.insecure or target.insecure)
    if target.tool == "skopeo":
        return skopeo_steps(source_ref, destinations, source, target)
    if target.tool == "regctl":
        return regctl_steps(source_ref, destinations)
    assert target.command is not None  # checked when the file was loaded
    return custom_steps(target.command, source_ref, destinations, target)


def fill_scope(argv: Sequence[str], scope: str) -> List[str]:
    return [arg.replace(SCOPE, scope) for arg in argv]


# -- files a tool needs in the scope ------------------------------------------------


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def prepare(scope: str, source: Source, target: Target, plain_http: Sequence[str] = ()) -> Dict[str, str]:
    """Write the TLS files the tool reads into ``scope``; the env to add.

    ``plain_http``: hosts found to speak HTTP, not HTTPS (regctl must be told).
    """
    env: Dict[str, str] = {}
    cas = [ca for ca in (source.ca_file, target.ca_file) if ca]
    if target.tool == "skopeo":
        if source.ca_file:
            _write(os.path.join(scope, "certs", "source", "ca.crt"), _read(source.ca_file))
        if target.ca_file:
            _write(os.path.join(scope, "certs", "target", "ca.crt"), _read(target.ca_file))
    if cas and target.tool in ("crane", "custom", "regctl"):
        # Go programs trust SSL_CERT_FILE instead of the system store: give
        # them the system store plus this target's (and the source's) CA.
        system = next((p for p in SYSTEM_CA_BUNDLES if os.path.isfile(p)), None)
        bundle = (_read(system) if system else b"") + b"\n".join(_read(ca) for ca in cas) + b"\n"
        path = os.path.join(scope, "ca-bundle.crt")
        _write(path, bundle)
        env["SSL_CERT_FILE"] = path
    if target.tool == "regctl":
        env["REGCTL_CONFIG"] = os.path.join(scope, "regctl.json")
        _write(env["REGCTL_CONFIG"], json.dumps(regctl_config(source, target, plain_http)).encode())
    return env


def regctl_config(source: Source, target: Target, plain_http: Sequence[str] = ()) -> Dict[str, object]:
    """regctl's host settings: plain HTTP / unverified TLS and CAs, per host.

    Credentials stay out of it: regctl reads them from DOCKER_CONFIG.
    """
    hosts: Dict[str, Dict[str, object]] = {}
    for host, insecure, ca in (
        (source.image.registry, source.insecure, source.ca_file),
        (target.registry, target.insecure, target.ca_file),
    ):
        entry = hosts.setdefault(host, {})
        if host in plain_http:
            entry["tls"] = "disabled"
        elif insecure:
            entry["tls"] = "insecure"
        if ca:
            entry["regcert"] = _read(ca).decode("ascii", "replace")
    return {"hosts": {h: e for h, e in hosts.items() if e}}


def display(argv: Sequence[str], scope: Optional[str] = None) -> str:
    """argv for a log line (it never holds a secret)."""
    import shlex

    return " ".join(shlex.quote(a) for a in (fill_scope(argv, scope) if scope else argv))

"""What proves the image travels with it: signatures, attestations, SBOMs, OCI referrers.

Found once, at the source, when the run starts (``discover``), with the
base's login: the cosign tags of the source digest (``sha256-<hex>.sig``,
``.att``, ``.sbom`` and whatever else hangs off ``sha256-<hex>.``), its OCI
1.1 referrers (the referrers API where the registry has it, else the
fallback tag ``sha256-<hex>``), for the digest itself and every platform
manifest of an index, and recursively (a signature of an SBOM). The plan
carries what was found; each target's own tool copies every artifact by
digest inside the target's scope (tools.referrer_steps), so digests are
unchanged. At a target without the referrers API, ``write_fallback``
merges the referrers into its fallback tag index, never dropping another
artifact's entry; ``missing`` then reads every artifact back.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # registry imports hashlib and http.client: not on the CLI's start-up path
    from .registry import Session

COSIGN_KINDS = {"sig": "cosign signature", "att": "cosign attestation", "sbom": "cosign sbom"}
INDEX = "application/vnd.oci.image.index.v1+json"
INDEX_TYPES = (INDEX, "application/vnd.docker.distribution.manifest.list.v2+json")
MAX_ARTIFACTS = 256  # more than any release carries; a registry that lists more is refused


@dataclass(frozen=True)
class Artifact:
    """One thing that refers to the source (or to another artifact)."""

    digest: str
    subject: str  # the digest it refers to
    kind: str  # an OCI referrer's artifactType (else its mediaType), or "cosign signature", ...
    tag: str | None = None  # cosign's tag schema: copied as this tag; None: an OCI referrer, by digest
    entry: str = ""  # an OCI referrer's descriptor (JSON), for the fallback tag index

    @property
    def label(self) -> str:
        return f"{self.kind} {self.tag or self.digest}"

    def as_json(self) -> dict[str, str]:
        out = {"digest": self.digest, "subject": self.subject}
        if self.tag is not None:
            out["kind"] = self.kind
            out["tag"] = self.tag
        else:
            out["artifactType"] = self.kind
        return out


def fallback_tag(digest: str) -> str:
    """The OCI 1.1 fallback tag of ``digest``: ``<alg>-<hex>``, at most 128 characters."""
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm}-{encoded}"[:128]


def _cosign_kind(tag: str) -> str:
    suffix = tag.rpartition(".")[2]
    return COSIGN_KINDS.get(suffix, f"cosign .{suffix}")


def cosign_tags(subject: str, tags: Sequence[str] | None) -> list[str]:
    """The tags of cosign's schema that hang off ``subject``; without a tag
    list, the ones cosign writes (``.sig``, ``.att``, ``.sbom``)."""
    prefix = fallback_tag(subject) + "."
    if tags is None:
        return [prefix + suffix for suffix in COSIGN_KINDS]
    return sorted(t for t in tags if t.startswith(prefix) and len(t) > len(prefix))


def _platforms(session: Session, repository: str, digest: str, known: tuple[str, bytes] | None = None) -> list[str]:
    from .registry import descriptors

    found = session.manifest(repository, digest) if known is None else (known[0], digest, known[1])
    if found is None or found[0] not in INDEX_TYPES:
        if found is not None and not found[0]:  # no Content-Type: look inside
            try:
                doc = json.loads(found[2])
            except ValueError:
                return []
            if isinstance(doc, dict) and doc.get("mediaType") in INDEX_TYPES:
                return [d["digest"] for d in descriptors(session.registry, found[2], f"{repository}@{digest}")]
        return []
    return [d["digest"] for d in descriptors(session.registry, found[2], f"{repository}@{digest}")]


def _fallback_entries(session: Session, repository: str, subject: str) -> list[dict[str, Any]]:
    from .registry import descriptors

    found = session.manifest(repository, fallback_tag(subject))
    if found is None:
        return []
    return descriptors(session.registry, found[2], f"{repository}:{fallback_tag(subject)}")


def discover(
    session: Session,
    repository: str,
    digest: str,
    limit: int = MAX_ARTIFACTS,
    known: tuple[str, bytes] | None = None,
) -> tuple[Artifact, ...]:
    """Everything that refers to ``repository@digest`` and its platform
    manifests, recursively, in the order found (subjects before what refers to them).
    ``known``: (media type, body) of ``digest``, already read and hashed (Session.resolve)."""
    from .registry import RegistryAnswerError

    subjects = [digest, *_platforms(session, repository, digest, known)]
    tags = session.tags(repository)  # one round trip instead of four HEADs per subject
    api: bool | None = None  # does the source have the referrers API? Known after the first ask
    found: dict[tuple[str, str | None], Artifact] = {}
    queue = deque(subjects)
    seen = set(subjects)
    while queue:
        subject = queue.popleft()
        new: list[Artifact] = []
        for tag in cosign_tags(subject, tags):
            at = session.find_digest(repository, tag)
            if at is not None:
                new.append(Artifact(at, subject, _cosign_kind(tag), tag))
        listed: list[dict[str, Any]] | None = None
        if api is not False:
            listed = session.referrers(repository, subject)
            api = listed is not None
        if listed is None:
            wanted = tags is None or fallback_tag(subject) in tags
            listed = _fallback_entries(session, repository, subject) if wanted else []
        for entry in listed:
            kind = entry.get("artifactType") or entry["mediaType"]
            new.append(Artifact(entry["digest"], subject, str(kind), None, json.dumps(entry, sort_keys=True)))
        for artifact in new:
            key = (artifact.digest, artifact.tag)
            if key in found or artifact.digest in subjects:
                continue
            found[key] = artifact
            if len(found) > limit:
                raise RegistryAnswerError(
                    session.registry,
                    f"more than {limit} signatures, attestations and referrers refer to {repository}@{digest}",
                )
            if artifact.digest not in seen:
                seen.add(artifact.digest)
                queue.append(artifact.digest)
    return tuple(found.values())


# -- at a target ---------------------------------------------------------------------


def merge_index(existing: bytes | None, entries: Iterable[str]) -> bytes | None:
    """The fallback tag index with ``entries`` (descriptors, JSON) added to
    ``existing`` (None: no index yet); None when nothing is missing.

    Every entry already there is kept as it is, whoever wrote it. Raises
    ValueError when ``existing`` is not an image index (something else holds
    the tag: it is never overwritten)."""
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": INDEX, "manifests": []}
    if existing is not None:
        try:
            doc = json.loads(existing)
        except ValueError:
            raise ValueError("is not JSON") from None
        if (
            not isinstance(doc, dict)
            or doc.get("mediaType", INDEX) != INDEX
            or not isinstance(doc.get("manifests", []), list)
        ):
            raise ValueError("is not an OCI image index")
        doc.setdefault("manifests", [])
    present = {m.get("digest") for m in doc["manifests"] if isinstance(m, dict)}
    added = False
    for entry in entries:
        descriptor = json.loads(entry)
        if descriptor["digest"] not in present:
            doc["manifests"].append(descriptor)
            present.add(descriptor["digest"])
            added = True
    if not added:
        return None
    return json.dumps(doc, separators=(",", ":")).encode()


def _by_subject(artifacts: Iterable[Artifact]) -> dict[str, list[Artifact]]:
    out: dict[str, list[Artifact]] = {}
    for artifact in artifacts:
        if artifact.tag is None:
            out.setdefault(artifact.subject, []).append(artifact)
    return out


def write_fallback(session: Session, repository: str, artifacts: Sequence[Artifact]) -> list[str]:
    """At a target without the referrers API, merge each subject's OCI
    referrers into its fallback tag index; what was written (for the log).

    Raises ValueError naming the tag when something that is not an index holds it."""
    groups = _by_subject(artifacts)
    if not groups or session.referrers(repository, next(iter(groups))) is not None:
        return []  # nothing to index, or the registry indexes them itself
    written = []
    for subject, items in groups.items():
        tag = fallback_tag(subject)
        current = session.manifest(repository, tag)
        try:
            merged = merge_index(current[2] if current else None, (a.entry for a in items))
        except ValueError as exc:
            raise ValueError(f"{repository}:{tag} {exc}; it was left as it is") from None
        if merged is not None:
            session.put_manifest(repository, tag, INDEX, merged)
            written.append(tag)
    return written


def lacking(session: Session, repository: str, artifacts: Sequence[Artifact]) -> list[Artifact]:
    """The artifacts a target lacks, in their order: not there as at the source
    (HEAD, digests compared), or an OCI referrer its subject does not list (a
    re-run copies these, and only these, again)."""
    out = [a for a in artifacts if session.find_digest(repository, a.tag or a.digest) != a.digest]
    for subject, items in _by_subject(artifacts).items():
        if all(a in out for a in items):
            continue
        listed = session.referrers(repository, subject)
        if listed is None:
            listed = _fallback_entries(session, repository, subject)
        there = {d["digest"] for d in listed}
        out.extend(a for a in items if a.digest not in there and a not in out)
    return [a for a in artifacts if a in out]


def missing(session: Session, repository: str, artifacts: Sequence[Artifact]) -> list[str]:
    """Each artifact that is not at the target as at the source (HEAD, digests
    compared), and each OCI referrer that the target does not list for its subject."""
    out = []
    for artifact in artifacts:
        at = session.find_digest(repository, artifact.tag or artifact.digest)
        if at != artifact.digest:
            out.append(f"{artifact.label} ({'not there' if at is None else f'the tag holds {at}'})")
    for subject, items in _by_subject(artifacts).items():
        listed = session.referrers(repository, subject)
        if listed is None:
            listed = _fallback_entries(session, repository, subject)
        there = {d["digest"] for d in listed}
        out.extend(f"{a.label} (not listed as a referrer of {subject})" for a in items if a.digest not in there)
    return out

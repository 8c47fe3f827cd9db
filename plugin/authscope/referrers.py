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

Round trips at a target are what a signed release costs on a WAN, so what
one Session (one target, one run) learns is kept for its later steps
(``_Known``): whether the registry has the referrers API (asked once), and
the fallback index write_fallback read or wrote (the read-back HEADs the tag
and compares digests instead of GETting it again). The reads of a
read-back go out at once, on sibling sessions (a Session is not
thread-safe), whose connections write_fallback opens while it works.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # registry imports hashlib and http.client: not on the CLI's start-up path
    from .registry import Session

COSIGN_KINDS = {"sig": "cosign signature", "att": "cosign attestation", "sbom": "cosign sbom"}
INDEX = "application/vnd.oci.image.index.v1+json"
INDEX_TYPES = (INDEX, "application/vnd.docker.distribution.manifest.list.v2+json")
MAX_ARTIFACTS = 256  # more than any release carries; a registry that lists more is refused
READERS = 4  # connections (sessions) a target's read-back uses at once
_T = TypeVar("_T")


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


@dataclass
class _Known:
    """What one session (one target, one run) learnt, for its later steps."""

    api: dict[str, bool] = field(default_factory=dict)  # repository: has the referrers API
    # (repository, fallback tag): (digest, body) of the index write_fallback read or wrote there
    index: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    readers: list[Session] = field(default_factory=list)  # siblings for concurrent reads
    warming: list[threading.Thread] = field(default_factory=list)


_KNOWN: weakref.WeakKeyDictionary[Session, _Known] = weakref.WeakKeyDictionary()
_KNOWN_LOCK = threading.Lock()


def _known(session: Session) -> _Known:
    with _KNOWN_LOCK:
        known = _KNOWN.get(session)
        if known is None:
            known = _KNOWN[session] = _Known()
        return known


def _has_api(session: Session, repository: str, subject: str) -> bool:
    """Whether the target has the referrers API: known, or asked once (about ``subject``)."""
    known = _known(session)
    if repository not in known.api:
        known.api[repository] = session.referrers(repository, subject) is not None
    return known.api[repository]


def _readers(session: Session, count: int) -> list[Session]:
    """``count`` sibling sessions of ``session``, kept for its later reads; idle."""
    known = _known(session)
    for thread in known.warming:
        thread.join()
    known.warming.clear()
    while len(known.readers) < count:
        known.readers.append(session.sibling())
    return known.readers[: max(count, 0)]


def _warm(session: Session, count: int) -> None:
    """Open the connections of ``count`` readers in the background (joined before they are used)."""
    known = _known(session)
    for reader in _readers(session, count):
        thread = threading.Thread(target=reader.warm, name="authscope-warm", daemon=True)
        thread.start()
        known.warming.append(thread)


def close_readers(session: Session) -> None:
    """Close the sibling sessions ``session`` read with; never raises."""
    known = _known(session)
    for thread in known.warming:
        thread.join()
    known.warming.clear()
    for reader in known.readers:
        try:
            reader.close()
        except Exception:  # noqa: BLE001 - a close must not end the run
            pass
    known.readers.clear()


def _wave(session: Session, jobs: Sequence[Callable[[Session], _T]]) -> list[_T]:
    """Run ``jobs`` at the same time, on ``session`` and up to READERS - 1 of
    its readers, each session on one thread; their results in order. The first
    job (in order) that raised raises, after every job has finished."""
    width = min(len(jobs), READERS)
    if width < 2:
        return [job(session) for job in jobs]
    from concurrent.futures import ThreadPoolExecutor

    pending = deque(enumerate(jobs))
    results: dict[int, _T] = {}
    errors: dict[int, Exception] = {}

    def drain(own: Session) -> None:
        while True:
            try:
                i, job = pending.popleft()
            except IndexError:
                return
            try:
                results[i] = job(own)
            except Exception as exc:  # raised below, the first in job order
                errors[i] = exc

    readers = _readers(session, width - 1)
    with ThreadPoolExecutor(width - 1, thread_name_prefix="authscope-read") as pool:
        futures = [pool.submit(drain, reader) for reader in readers]
        try:
            drain(session)
        finally:
            pending.clear()  # interrupted here: the others stop after their current request
            for future in futures:
                future.result()
    if errors:
        raise errors[min(errors)]
    return [results[i] for i in range(len(jobs))]


def _by_subject(artifacts: Iterable[Artifact]) -> dict[str, list[Artifact]]:
    out: dict[str, list[Artifact]] = {}
    for artifact in artifacts:
        if artifact.tag is None:
            out.setdefault(artifact.subject, []).append(artifact)
    return out


def write_fallback(session: Session, repository: str, artifacts: Sequence[Artifact]) -> list[str]:
    """At a target without the referrers API, merge each subject's OCI
    referrers into its fallback tag index; what was written (for the log).

    Whether the registry has the API is asked once per session; the index
    read or written is kept for ``missing``. Meanwhile, the connections of
    the read-back that follows are opened.

    Raises ValueError naming the tag when something that is not an index holds it."""
    groups = _by_subject(artifacts)
    _warm(session, min(READERS, len(artifacts) + len(groups)) - 1)  # the read-back's, see missing
    if not groups or _has_api(session, repository, next(iter(groups))):
        return []  # nothing to index, or the registry indexes them itself
    known = _known(session)
    return [tag for subject, items in groups.items() if (tag := _index_one(session, known, repository, subject, items))]


def _index_one(session: Session, known: _Known, repository: str, subject: str, items: Sequence[Artifact]) -> str | None:
    """Merge ``items`` into the fallback tag index of ``subject``; the tag when
    it was written. What was read or written is kept in ``known`` (the target's
    session's, whichever session this runs on)."""
    tag = fallback_tag(subject)
    current = session.manifest(repository, tag)
    try:
        merged = merge_index(current[2] if current else None, (a.entry for a in items))
    except ValueError as exc:
        raise ValueError(f"{repository}:{tag} {exc}; it was left as it is") from None
    if merged is not None:
        known.index[(repository, tag)] = (session.put_manifest(repository, tag, INDEX, merged), merged)
        return tag
    if current is not None:
        known.index[(repository, tag)] = (current[1], current[2])
    return None


def _listed(session: Session, known: _Known, repository: str, subject: str) -> set[str]:
    """The digests the target lists as referrers of ``subject``: the referrers
    API's answer (unless ``known`` says there is none; asking tells), else its
    fallback index. That index, when write_fallback read or wrote it, is
    HEADed and compared with what it read or wrote (equal digests: the same
    bytes) rather than read again."""
    from .registry import descriptors

    api = known.api.get(repository)
    listed = session.referrers(repository, subject) if api is not False else None
    if api is None:
        known.api[repository] = listed is not None
    if listed is None:
        tag = fallback_tag(subject)
        held = known.index.get((repository, tag))
        at = session.find_digest(repository, tag) if held is not None else ""
        if held is not None and at == held[0]:
            listed = descriptors(session.registry, held[1], f"{repository}:{tag}")
        elif held is not None and at is None:
            listed = []  # the tag is gone
        else:
            listed = _fallback_entries(session, repository, subject)
    return {d["digest"] for d in listed}


def _read_back(
    session: Session, repository: str, artifacts: Sequence[Artifact]
) -> tuple[list[str | None], dict[str, set[str]]]:
    """At once: what each artifact's tag (or digest) holds at the target, and
    what the target lists as referrers of each subject of an OCI referrer."""
    known = _known(session)  # the target's session's, whichever session a job runs on
    groups = list(_by_subject(artifacts))

    def head(reference: str) -> Callable[[Session], Any]:
        return lambda s: s.find_digest(repository, reference)

    def listing(subject: str) -> Callable[[Session], Any]:
        return lambda s: _listed(s, known, repository, subject)

    jobs = [head(a.tag or a.digest) for a in artifacts] + [listing(subject) for subject in groups]
    answers = _wave(session, jobs)
    return answers[: len(artifacts)], dict(zip(groups, answers[len(artifacts) :], strict=True))


def lacking(session: Session, repository: str, artifacts: Sequence[Artifact]) -> list[Artifact]:
    """The artifacts a target lacks, in their order: not there as at the source
    (HEAD, digests compared), or an OCI referrer its subject does not list (a
    re-run copies these, and only these, again)."""
    held, listed = _read_back(session, repository, artifacts)
    out = [
        a
        for a, at in zip(artifacts, held, strict=True)
        if at != a.digest or (a.tag is None and a.digest not in listed[a.subject])
    ]
    if not out:
        close_readers(session)  # up to date: nothing is copied, nothing read back
    return out


def missing(session: Session, repository: str, artifacts: Sequence[Artifact]) -> list[str]:
    """Each artifact that is not at the target as at the source (HEAD, digests
    compared), and each OCI referrer that the target does not list for its subject."""
    try:
        held, listed = _read_back(session, repository, artifacts)
    finally:
        close_readers(session)  # the last read of a target
    return _lost(artifacts, held, listed)


def _lost(artifacts: Sequence[Artifact], held: Sequence[str | None], listed: dict[str, set[str]]) -> list[str]:
    out = [
        f"{a.label} ({'not there' if at is None else f'the tag holds {at}'})"
        for a, at in zip(artifacts, held, strict=True)
        if at != a.digest
    ]
    for subject, items in _by_subject(artifacts).items():
        out.extend(
            f"{a.label} (not listed as a referrer of {subject})" for a in items if a.digest not in listed[subject]
        )
    return out


# -- after a target's copy, on its critical path --------------------------------------


class Unindexed(Exception):
    """settle: the fallback index could not be written (``error``: write_fallback's
    ValueError or RegistryError), as opposed to a read-back that failed."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _width(artifacts: Sequence[Artifact]) -> int:
    """Sessions settle uses at once: one per job (the image's check, each
    artifact's HEAD, each subject's index), at most READERS."""
    return min(READERS, len(artifacts) + len(_by_subject(artifacts)) + 1)


def ahead(session: Session, repository: str, artifacts: Sequence[Artifact]) -> None:
    """While the target's referrers are being copied: ask whether it has the
    referrers API, and open the connections settle reads on, so neither is on
    the critical path after the copies. Only once its image is there: before,
    a registry with the API answers 404 for a repository it does not hold yet.
    A question that fails is asked again by settle."""
    from .errors import RegistryError

    groups = _by_subject(artifacts)
    _warm(session, _width(artifacts) - 1)
    if groups:
        try:
            _has_api(session, repository, next(iter(groups)))
        except RegistryError:
            pass


def settle(
    session: Session, repository: str, artifacts: Sequence[Artifact], also: Callable[[Session], _T]
) -> tuple[_T, list[str], list[str]]:
    """write_fallback, missing and ``also`` (the image's own digest check) at
    once, each on a session of its own: each subject's index is written and
    then read back (the HEAD that tells it is still what was written) while
    every artifact is HEADed. Returns (what ``also`` returned, the tags written,
    what is missing, as ``missing`` words it).

    An index that cannot be written raises Unindexed; else the first error in
    the order index, ``also``, read-back, after every job has finished."""
    from .errors import RegistryError

    known = _known(session)
    groups = _by_subject(artifacts)
    _warm(session, _width(artifacts) - 1)  # done already when ahead ran: then nothing to open

    def chain(subject: str, items: Sequence[Artifact]) -> Callable[[Session], Any]:
        def job(s: Session) -> tuple[str | None, set[str]]:
            from .registry import descriptors

            tag = read = None
            try:
                if repository not in known.api:  # ahead did not learn it
                    known.api[repository] = s.referrers(repository, subject) is not None
                if not known.api[repository]:
                    tag = _index_one(s, known, repository, subject, items)
                    read = None if tag else known.index.get((repository, fallback_tag(subject)))
            except (ValueError, RegistryError) as exc:
                raise Unindexed(exc) from None
            if read is not None:  # read just now, after every copy, and it lacked nothing: that is the read-back
                where = f"{repository}:{fallback_tag(subject)}"
                return None, {d["digest"] for d in descriptors(s.registry, read[1], where)}
            return tag, _listed(s, known, repository, subject)  # what was written is HEADed: still there?

        return job

    def head(reference: str) -> Callable[[Session], Any]:
        return lambda s: s.find_digest(repository, reference)

    jobs = [chain(subject, items) for subject, items in groups.items()]
    jobs += [also, *(head(a.tag or a.digest) for a in artifacts)]
    try:
        answers = _wave(session, jobs)
    finally:
        close_readers(session)  # the last read of a target
    chains, checked, held = answers[: len(groups)], answers[len(groups)], answers[len(groups) + 1 :]
    listed = {subject: got for subject, (_, got) in zip(groups, chains, strict=True)}
    return checked, [tag for tag, _ in chains if tag], _lost(artifacts, held, listed)

"""The base config: safe writes (invariant 3) and the base guard (invariant 1).

Writes take ``config.json.lock`` (filelock) across read-modify-write and
replace the file atomically. Each write also bumps a generation counter in a
small journal beside the config (``config.json.authscope``) and records, per
entry, the generation and a fingerprint of what authscope wrote. A scope notes
the generation when it opens; when it closes, an entry that differs from the
snapshot is legitimate only if the journal shows another authscope wrote
exactly the current value after the scope opened. Anything else was done by a
tool outside its scope and is restored.

Ordering that makes lock-free reads safe: writers replace the config first
and the journal second, both under the lock; a scope reads the journal first
and the config second. So every write the snapshot's generation covers is in
the snapshot's config. At close, any suspected damage is re-checked under
the lock before anything is restored.

The journal is bounded whatever the history: the record of an entry present
in the config is always kept (one per entry, written by a tool included: the
journal grows with the config, not with its past), and of entries no longer
there only ``KEEP_ABSENT``, logouts going first, oldest first (see
``prune``). ``pruned_through`` is the newest generation dropped, the
journal's horizon: a scope that opened at that generation or later needs
only records newer than it, which are all kept.
A scope older than the horizon may find an entry of its snapshot gone with
no record: another authscope's logout whose record was dropped, or a tool
outside its scope. It cannot tell which, and does not restore it: bringing
back a credential someone logged out (it may be revoked, or meant to leave
the disk) is worse than a login lost loudly, which the guard reports
(exit 3, "run `authscope login` again"). Only an entry gone is ambiguous: a
changed or added one has its record kept, being present.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

from . import dockerconfig as dc
from .errors import BaseWriteError, ConfigError, LockTimeout
from .records import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing stays off the exec path
    from typing import Any

JOURNAL_SUFFIX = ".authscope"
LOCK_SUFFIX = ".lock"
LOCK_TIMEOUT = 60.0
# Records of entries no longer in the config kept in the journal (~100 bytes
# each). A scope is older than the horizon only if this many other entries
# were logged out of its base while it was open.
KEEP_ABSENT = 256

# (section, key): section is "auths" or "credHelpers" for one registry's
# entry, "" for any other top-level key, compared whole.
EntryPath = tuple[str, str]


class Snapshot(NamedTuple):
    """What a scope saw of the base when it opened."""

    generation: int
    config: dc.Config
    values: dict[EntryPath, str]
    mode: int | None = None  # the file's permission bits; None when there was no file
    raw: bytes | None = None  # the file's bytes then: the guard's byte-for-byte fast compare


class Damage(NamedTuple):
    """One base entry a tool outside its scope changed, removed or leaked into."""

    path: EntryPath
    what: str  # "removed", "changed", "leaked", "lost", "gone", "mode"
    restore: str | None  # canonical JSON to put back; None: remove the entry
    restorable: bool
    failed: str = ""  # why the restore could not be written (a full disk)

    def describe(self) -> str:
        if self.failed:
            section, key = self.path
            name = f"{section} entry {key!r}" if section else f"top-level key {key!r}"
            return (
                f"{name} was {self.what} by a tool outside its scope and could NOT be restored "
                f"({self.failed}): free the space, then run `authscope login` again"
            )
        if self.what == "mode":
            return f"the file's permissions were widened to {self.path[1]} by a tool outside its scope; restored to {self.restore}"
        section, key = self.path
        name = f"{section} entry {key!r}" if section else f"top-level key {key!r}"
        if self.what == "leaked" and self.path == ("auths", dc.SENTINEL):
            return f"{name}, which only a scope's config holds, was written by a tool outside its scope; removed"
        return {
            "removed": f"{name} was removed by a tool outside its scope; restored",
            "changed": f"{name} was changed by a tool outside its scope; restored",
            "leaked": f"{name} was written with this scope's target credentials by a tool outside its scope; removed",
            "lost": f"{name} was changed by another authscope and then damaged; "
            f"it cannot be restored from here: run `authscope login` again",
            "gone": f"{name} is gone, logged out by another authscope or removed by a tool outside its scope: "
            f"this scope opened before the journal's horizon and cannot tell which, so it did not restore it; "
            f"if it was not a logout, run `authscope login` again",
        }[self.what]


# One encoder for every entry: json.dumps with arguments builds a new one per call,
# and a snapshot of a base of n entries makes n of them (scope_lifecycle).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def canonical(value: Any) -> str:
    return _CANONICAL.encode(value)


def fingerprint(value: str | None) -> str | None:
    import hashlib  # only needed once something differs: keep it off the exec path

    return None if value is None else hashlib.sha256(value.encode("utf-8")).hexdigest()


def flatten(cfg: dc.Config) -> dict[EntryPath, str]:
    """Every guarded entry of a config, as canonical JSON."""
    out: dict[EntryPath, str] = {}
    for key, value in cfg.items():
        if key in ("auths", "credHelpers") and isinstance(value, dict):
            for registry, entry in value.items():
                out[(key, registry)] = canonical(entry)
        else:
            out[("", key)] = canonical(value)
    return out


def apply(cfg: dc.Config, path: EntryPath, value: str | None) -> dc.Config:
    """A copy of ``cfg`` with one entry set (``value`` canonical JSON) or removed."""
    new = dict(cfg)
    section, key = path
    if not section:
        if value is None:
            new.pop(key, None)
        else:
            new[key] = json.loads(value)
        return new
    inner = dict(new.get(section) or {})
    if value is None:
        inner.pop(key, None)
    else:
        inner[key] = json.loads(value)
    new[section] = inner
    return new


class Journal(NamedTuple):
    generation: int
    entries: dict[EntryPath, tuple[int, str | None]]  # path -> (generation, fingerprint)
    pruned_through: int = 0  # the newest generation whose records may have been dropped


def parse_journal(data: bytes) -> Journal:
    try:
        doc = json.loads(data)
        entries = {(e["section"], e["key"]): (int(e["generation"]), e["sha256"]) for e in doc["entries"]}
        return Journal(int(doc["generation"]), entries, int(doc.get("pruned_through", 0)))
    except (ValueError, KeyError, TypeError):
        # A damaged journal only costs precision: every difference is then
        # treated as damage, which errs on the side of keeping the base.
        return Journal(0, {})


def prune(entries: dict[EntryPath, tuple[int, str | None]], present: Collection[EntryPath], pruned_through: int) -> int:
    """Drop all but ``KEEP_ABSENT`` records of entries not ``present`` (in
    place); the new horizon: the newest generation dropped.

    Logouts go first, oldest first. The record of an entry authscope last
    wrote with a value and that is gone anyway is what lets an old scope
    restore it (a tool removed it): those go only when nothing else is left.
    """
    absent = sorted((record[1] is not None, record[0], path) for path, record in entries.items() if path not in present)
    for _, generation, path in absent[: max(0, len(absent) - KEEP_ABSENT)]:
        del entries[path]
        pruned_through = max(pruned_through, generation)
    return pruned_through


def find_damage(
    snap: Snapshot,
    current: dict[EntryPath, str],
    journal: Journal,
    leaks: Collection[str] = (),
) -> list[Damage]:
    """Pure: what differs from the snapshot that no authscope write explains.

    ``leaks`` are ``auth`` strings only this scope's target holds; an entry
    (under auths or any other key) carrying one that the snapshot did not have
    and no authscope wrote came from a tool that ignored DOCKER_CONFIG.
    """
    damage = []
    for path, value in snap.values.items():
        now = current.get(path)
        if now == value:
            continue
        record = journal.entries.get(path)
        if record is not None and record[0] > snap.generation and record[1] != fingerprint(value):
            if record[1] == fingerprint(now):
                continue  # another authscope login/logout: not ours to undo
            # The last legitimate value is one this scope never saw.
            damage.append(Damage(path, "lost", None, False))
        elif now is None and record is None and snap.generation < journal.pruned_through:
            # Perhaps a logout whose record was pruned: never resurrect it
            # (see the module docstring).
            damage.append(Damage(path, "gone", None, False))
        else:
            damage.append(Damage(path, "removed" if now is None else "changed", value, True))
    for path, now in current.items():
        # Any key, not only auths: a tool that writes the target's auth into
        # HttpHeaders ("Authorization: Basic ...") sends it to every registry.
        if snap.values.get(path) == now:
            continue
        record = journal.entries.get(path)
        if record is not None and record[0] > snap.generation and record[1] == fingerprint(now):
            continue
        # A scope's config copied into the base brings the scope's marker along.
        if path == ("auths", dc.SENTINEL) or any(leak in now for leak in leaks):
            damage.append(Damage(path, "leaked", snap.values.get(path), True))
    return damage


class Base:
    """The base Docker config directory of this job."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = dc.config_path(directory)
        self.journal_path = self.path + JOURNAL_SUFFIX
        self.lock_path = self.path + LOCK_SUFFIX

    # -- reading (lock-free; see the module docstring for why that is safe) --

    def read_journal(self) -> Journal:
        try:
            with open(self.journal_path, "rb") as f:
                return parse_journal(f.read())
        except FileNotFoundError:
            return Journal(0, {})

    def snapshot(self) -> Snapshot:
        journal = self.read_journal()  # first: see the module docstring
        raw, cfg = dc.read_config(self.path)
        try:
            mode: int | None = os.stat(self.path).st_mode & 0o7777
        except FileNotFoundError:
            mode = None
        return Snapshot(journal.generation, cfg, flatten(cfg), mode, raw)

    # -- writing ---------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        from filelock import FileLock, Timeout  # only writers pay for the import

        lock = FileLock(self.lock_path, timeout=LOCK_TIMEOUT, mode=0o600)
        try:
            lock.acquire()
        except Timeout:
            raise LockTimeout(self.lock_path, LOCK_TIMEOUT) from None
        except OSError as exc:
            raise BaseWriteError(self.lock_path, exc.strerror or str(exc)) from None
        try:
            yield
        finally:
            lock.release()

    def _ensure_directory(self) -> None:
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            try:
                os.makedirs(directory, mode=0o700)
            except OSError as exc:
                raise BaseWriteError(directory, exc.strerror or str(exc)) from None

    def _commit(self, old: dc.Config, new: dc.Config, journal: Journal, mode: int | None = None) -> None:
        """Write ``new`` and then the journal; the caller holds the lock."""
        dc.write_atomic(self.path, dc.serialize(new), dc.file_mode(self.path) if mode is None else mode)
        before, after = flatten(old), flatten(new)
        generation = journal.generation + 1
        entries = dict(journal.entries)
        for path in set(before) | set(after):
            if before.get(path) != after.get(path):
                entries[path] = (generation, fingerprint(after.get(path)))
            elif path not in entries:
                # An entry a tool wrote (docker login on the base): generation
                # 0 says no authscope wrote it after any scope opened, and the
                # record lets an old scope restore it if it goes (see prune).
                entries[path] = (0, fingerprint(after[path]))
        pruned_through = prune(entries, after, journal.pruned_through)
        doc = {
            "version": 1,
            "generation": generation,
            "pruned_through": pruned_through,
            "entries": [
                {"section": s, "key": k, "generation": g, "sha256": h} for (s, k), (g, h) in sorted(entries.items())
            ],
        }
        # No `indent`: with it json uses its pure-Python encoder, ten times
        # slower on every base write once the journal holds its ~300 records.
        dc.write_atomic(self.journal_path, json.dumps(doc).encode() + b"\n", 0o600)

    def update(self, change: Callable[[dc.Config], dc.Config]) -> bool:
        """Read-modify-write under the lock; False when nothing changed.

        A config that does not parse raises ConfigError before anything is
        written, so the file stays byte-for-byte as it was.
        """
        self._ensure_directory()
        with self._locked():
            dc.remove_stale_temps(self.path)
            dc.remove_stale_temps(self.journal_path)
            _, cfg = dc.read_config(self.path)
            new = change(cfg)
            if new == cfg:
                return False
            self._commit(cfg, new, self.read_journal())
            return True

    # -- the guard -------------------------------------------------------------

    def _unchanged(self, raw: bytes) -> bool:
        try:
            return dc.read_bytes(self.path) == raw
        except ConfigError:  # made a directory, a FIFO: the full check says what is lost
            return False

    def _current(self) -> tuple[bytes | None, dc.Config, bool]:
        """(raw, config, parsed): a config a tool corrupted reads as empty."""
        try:
            raw, cfg = dc.read_config(self.path)
            return raw, cfg, True
        except ConfigError:
            try:
                return dc.read_bytes(self.path), {}, False
            except ConfigError:  # made a directory or a FIFO: nothing to keep, all is lost
                return None, {}, False

    def check(self, snap: Snapshot, leaks: Collection[str] = ()) -> list[Damage]:
        """Compare the base with ``snap``; restore what a stray tool broke.

        Lock-free when nothing changed (the common case); otherwise the
        decision is made again under the lock, with fresh reads, before any
        write.
        """
        if snap.raw is not None and self._unchanged(snap.raw) and not self._widened(snap):
            return []  # byte for byte what the scope saw: its entries cannot differ
        _, cfg, _ = self._current()
        if not find_damage(snap, flatten(cfg), self.read_journal(), leaks) and not self._widened(snap):
            return []
        self._ensure_directory()
        with self._locked():
            raw, cfg, parsed = self._current()
            journal = self.read_journal()
            damage = find_damage(snap, flatten(cfg), journal, leaks)
            fixes = [d for d in damage if d.restorable]
            # A restored secret must not land in a file a tool made readable
            # to others: the base keeps the mode it had when the scope opened.
            mode = snap.mode if snap.mode is not None else 0o600
            widened = self._widened(snap)
            if fixes:
                if not parsed and raw is not None:
                    # Keep what the tool left, for forensics; nothing is lost.
                    stamp = time.strftime("%Y%m%dT%H%M%S")
                    try:
                        dc.write_atomic(f"{self.path}.corrupt-{stamp}-{os.getpid()}", raw, 0o600)
                    except BaseWriteError:
                        pass  # no room for the copy: restoring the logins matters more
                new = cfg
                for d in fixes:
                    new = apply(new, d.path, d.restore)
                try:
                    self._commit(cfg, new, journal, mode)
                except BaseWriteError as exc:
                    # Say what was lost, entry by entry, rather than only that a write failed.
                    return [d._replace(failed=exc.reason) if d.restorable else d for d in damage]
            elif widened:
                os.chmod(self.path, mode)
            if widened:
                damage.append(Damage(("", f"{widened:04o}"), "mode", f"{mode:04o}", True))
            return damage

    def _widened(self, snap: Snapshot) -> int:
        """The file's mode now, when it grants bits the snapshot's did not (else 0)."""
        if snap.mode is None:
            return 0
        try:
            now = os.stat(self.path).st_mode & 0o7777
        except FileNotFoundError:
            return 0
        return now if now & ~snap.mode else 0


def login(directory: str, registry: str, entry: dict[str, Any]) -> bool:
    """Store ``entry`` for ``registry`` in the base; True when the file changed."""
    key = dc.registry_key(registry)
    return Base(directory).update(lambda cfg: dc.with_login(cfg, key, entry))


def logout(directory: str, registry: str) -> bool:
    """Remove every spelling of ``registry`` from the base; True when one was there."""
    dc.registry_key(registry)  # validate before taking the lock
    return Base(directory).update(lambda cfg: dc.without_login(cfg, registry))

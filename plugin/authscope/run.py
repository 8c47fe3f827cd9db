"""The only module that starts processes: relay with masking, signals, helpers.

Children get secrets through their environment or files, never argv. What they
print is relayed line by line (CI logs stay live) with every known secret
replaced by ``[MASKED]``.
"""

from __future__ import annotations

import _thread  # threading (~1 ms of exec's start-up) only where a thread or a wait needs it
import binascii
import errno
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from .errors import CommandNotFound, HelperError, Interrupted

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing stays off the exec path
    import subprocess
    import threading
    from typing import IO, TypeVar

    T = TypeVar("T")

MASK = b"[MASKED]"
# Shorter secrets would mask ordinary text; GitLab's own masking needs 8.
MIN_SECRET = 4
# Derived pieces (base64 of a secret at an offset) shorter than this could
# match ordinary text by chance.
MIN_PIECE = 8
# A line longer than this without a newline is relayed in pieces.
MAX_LINE = 64 * 1024
# After a forwarded signal, how long a child may take before SIGKILL.
KILL_GRACE = 10.0
# After the child exits, how long to drain output a grandchild still holds.
DRAIN_GRACE = 1.0

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# -- masking --------------------------------------------------------------------


class Masker:
    """Replace known secrets, in every form they take, in byte strings.

    Each secret is masked as it is, line by line when it spans lines (a GCR
    ``_json_key`` password is a JSON document, and tools print line by
    line), URL-encoded (``quote`` with and without ``/`` kept, and
    ``quote_plus``), JSON-escaped (Python's and Go's escaping, without the
    quotes), and as base64 at each of the three alignments it can take
    inside a longer base64 string (the ``auth`` form ``user:password``, an
    ``Authorization: Basic`` header). Where secrets overlap, the union of
    their spans is masked, so no prefix or suffix of either stays visible.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        found: set[bytes] = set()
        for secret in secrets:
            if len(secret) >= MIN_SECRET:
                found.update(form for form in forms(secret) if len(form) >= MIN_SECRET)
        # Longest first: a cheap early exit, and a stable order for tests.
        self.secrets: tuple[bytes, ...] = tuple(sorted(found, key=lambda f: (-len(f), f)))
        self.longest = len(self.secrets[0]) if self.secrets else 0

    def spans(self, data: bytes) -> list[tuple[int, int]]:
        """Where secrets are in ``data``: merged (start, end) spans, in order."""
        found: list[tuple[int, int]] = []
        for secret in self.secrets:
            at = data.find(secret)
            while at >= 0:
                found.append((at, at + len(secret)))
                at = data.find(secret, at + 1)  # overlapping occurrences too
        if not found:
            return []
        found.sort()
        merged = [found[0]]
        for start, end in found[1:]:
            if start < merged[-1][1]:  # overlapping (adjacent secrets stay two masks)
                if end > merged[-1][1]:
                    merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        return merged

    def __call__(self, data: bytes) -> bytes:
        return _apply(data, self.spans(data))

    def text(self, text: str) -> str:
        if not self.secrets:
            return text
        return self(_bytes(text)).decode("utf-8", "surrogateescape")


def _apply(data: bytes, spans: Sequence[tuple[int, int]]) -> bytes:
    if not spans:
        return data
    out, last = [], 0
    for start, end in spans:
        out += [data[last:start], MASK]
        last = end
    out.append(data[last:])
    return b"".join(out)


def forms(secret: str) -> set[bytes]:
    """Every form of ``secret`` worth masking (see Masker); short pieces included."""
    import json

    whole = {secret}
    # Each line of a multi-line secret, and the pieces between the "\n"
    # escapes of a line holding JSON (a _json_key's private_key, decoded).
    for line in _lines(secret):
        whole.add(line.strip())
        whole.update(piece.strip() for piece in _escaped_lines(line))
    whole.discard("")
    texts: set[str] = set()
    for value in whole:
        texts.update(
            (
                value,
                _quote(value, "/"),
                _quote(value, ""),
                _quote_plus(value),
            )
        )
        escaped = json.dumps(value, ensure_ascii=False)[1:-1]
        texts.add(json.dumps(value)[1:-1])
        texts.add(escaped)
        # Go's encoding/json escapes <, > and & for HTML.
        texts.add(escaped.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    out = {_bytes(t) for t in texts}
    raw = _bytes(secret)
    for offset in range(3):
        core = _base64_core(raw, offset)
        if len(core) >= MIN_PIECE:
            out.add(core)
            out.add(core.replace(b"+", b"-").replace(b"/", b"_"))  # URL-safe base64
    return out


def _lines(text: str) -> list[str]:
    """``re.split(r"\r\n|\r|\n", text)``, without compiling a pattern on exec's path."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _escaped_lines(text: str) -> list[str]:
    """``re.split(r"\\r\\n|\\n", text)``: split at the escapes ``\\r\\n`` and ``\\n``."""
    return text.replace("\\r\\n", "\\n").split("\\n")


# urllib.parse.quote's always-safe characters (RFC 3986 unreserved).
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def _quote(value: str, safe: str) -> str:
    """``urllib.parse.quote(value, safe, errors="surrogateescape")``, without importing
    urllib.parse and ipaddress on exec's path (tests/test_perf_paths.py compares the two)."""
    keep = _UNRESERVED | frozenset(safe.encode("ascii"))
    return "".join(chr(b) if b in keep else f"%{b:02X}" for b in value.encode("utf-8", "surrogateescape"))


def _quote_plus(value: str) -> str:
    """``urllib.parse.quote_plus(value, errors="surrogateescape")``: spaces become "+"."""
    return _quote(value, " ").replace(" ", "+") if " " in value else _quote(value, "")


def _bytes(text: str) -> bytes:
    """``text`` as the bytes it came from: a variable's non-UTF-8 bytes are
    surrogate-escaped (PEP 383); other lone surrogates pass as they are."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _base64_core(raw: bytes, offset: int) -> bytes:
    """The base64 characters that depend only on ``raw`` when it starts
    ``offset`` bytes into a longer base64-encoded string."""
    encoded = binascii.b2a_base64(bytes(offset) + raw + bytes(3), newline=False)
    first = -(-offset * 8 // 6)  # the first character whose 6 bits all come from raw
    last = (offset + len(raw)) * 8 // 6  # one past the last such character
    return encoded[first:last]


# Every secret this process has read, for masking what authscope itself
# prints and writes (messages, reports), not only what tools print.
_known: set[str] = set()
_known_lock = _thread.allocate_lock()  # threading.Lock
_known_masker: Masker | None = None


def remember(secrets: Iterable[str]) -> None:
    """Note secrets that ``mask_known`` must mask from now on."""
    global _known_masker
    new = {s for s in secrets if s} - _known
    if new:
        with _known_lock:
            _known.update(new)
            _known_masker = None


def known_masker() -> Masker:
    """A Masker of every secret ``remember`` was given."""
    global _known_masker
    with _known_lock:
        if _known_masker is None:
            _known_masker = Masker(_known)
        return _known_masker


def mask_known(text: str) -> str:
    return known_masker().text(text) if _known else text


class LineRelay:
    """Cut a byte stream into lines and mask each whole line.

    Masking whole lines means a secret split across two reads is still seen
    whole. A line that grows past MAX_LINE is emitted in pieces, holding back
    (unmasked) the last ``longest - 1`` bytes, the most a partial form of a
    secret can occupy, and any masked span that reaches into them, since a
    secret overlapping it may still complete with the next read.
    """

    def __init__(self, masker: Masker) -> None:
        self.masker = masker
        self.pending = b""

    def feed(self, data: bytes) -> bytes:
        self.pending += data
        cut = max(self.pending.rfind(b"\n"), self.pending.rfind(b"\r")) + 1
        if cut:
            out, self.pending = self.pending[:cut], self.pending[cut:]
            return self.masker(out)
        if len(self.pending) > MAX_LINE:
            spans = self.masker.spans(self.pending)
            split = max(len(self.pending) - max(self.masker.longest - 1, 0), 0)
            for start, end in spans:
                if start < split < end:
                    # Hold the span back whole, unless it is all there is
                    # (a run of one repeated secret): then emit it masked.
                    split = start if start > 0 else end
            done = [(start, end) for start, end in spans if end <= split]
            out, self.pending = _apply(self.pending[:split], done), self.pending[split:]
            return out
        return b""

    def flush(self) -> bytes:
        out, self.pending = self.masker(self.pending), b""
        return out


# -- signals --------------------------------------------------------------------
#
# One set of handlers for the whole process. Every running child is registered
# with whether it leads its own process group; a signal is forwarded to all of
# them. With no child running, ``exec`` wants to unwind at once (raise
# ``Interrupted``), while ``fanout``'s main thread polls ``stopping()``.
# A cleanup (scope removal, the base guard, ending what a command left) runs
# inside ``uninterrupted()``: a signal then only records itself, and takes
# effect once the cleanup is done.

_children: dict[Child, bool] = {}
# Reentrant: the handler takes it in the main thread, which may hold it
# already (registering a child) when the signal lands; a Lock would deadlock.
_children_lock = _thread.RLock()  # threading.RLock, the C one
_received: list[int] = []


class _Flag:
    """threading.Event for the one flag a signal sets. exec only sets and reads it; the
    Event (and threading) is made when something first waits on it (fanout's pauses)."""

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None
        self._lock = _thread.allocate_lock()

    def set(self) -> None:
        self._set = True
        event = self._event
        if event is not None:
            event.set()

    def clear(self) -> None:
        self._set = False
        event = self._event
        if event is not None:
            event.clear()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        if self._event is None:
            import threading

            with self._lock:
                if self._event is None:
                    event = threading.Event()
                    self._event = event
                    if self._set:  # set before the Event existed
                        event.set()
        return self._event.wait(timeout)


_stop = _Flag()
_raise_when_idle = True
_starting = 0  # children being started: a signal now is forwarded once they exist
_cleaning = 0  # cleanups under way (uninterrupted()): a signal only records itself
_deferred: list[int] = []  # a signal that would have unwound exec during a cleanup


def _on_signal(signum: int, frame: object) -> None:
    _received.append(signum)
    _stop.set()
    with _children_lock:
        children = list(_children.items())
    for child, group in children:
        _forward(child, group, signum)
    if _raise_when_idle and not children and not _starting and len(_received) == 1:
        if _cleaning:
            # Raising now would stop a scope's removal or the base guard
            # half-way: uninterrupted() raises it once the cleanup is done.
            _deferred.append(signum)
            return
        # No child running: unwind through the cleanup handlers. A second
        # signal only records itself, so it cannot break a cleanup under way.
        raise Interrupted(signum)


def uninterrupted(work: Callable[[], T]) -> T:
    """Run the cleanup ``work`` once, to its end, whatever signal comes meanwhile.

    While it runs, SIGINT/SIGTERM/SIGHUP are still forwarded to children but
    never raise; one that would have unwound ``exec`` raises ``Interrupted``
    after ``work`` is done (so the exit code is still 128 + N). One that lands
    in the instant before the cleanup is marked as under way is caught here,
    and raised after ``work`` too.
    """
    global _cleaning
    caught: Interrupted | None = None
    started = False
    result: T | None = None
    while True:
        try:
            with _children_lock:
                _cleaning += 1
            try:
                if not started:
                    started = True
                    result = work()
            finally:
                with _children_lock:
                    _cleaning -= 1
            break
        except Interrupted as exc:  # it came before _cleaning was up, or after it fell
            caught = caught or exc
            if started:
                break
    if caught is not None:
        raise caught
    if _deferred and not _cleaning and _in_main_thread():
        signum = _deferred[0]
        del _deferred[:]
        raise Interrupted(signum)
    return result  # type: ignore[return-value]


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _forward(child: Child, group: bool, signum: int) -> None:
    if child.returncode is not None:
        return
    try:
        if group:
            os.killpg(child.pid, signum)
            return
        os.kill(child.pid, signum)
    except (ProcessLookupError, PermissionError):
        return
    if _TREE:
        # The child is in our process group (see "processes a command
        # leaves behind"): reach the rest of its tree, e.g. a `sh -c` pipeline.
        for pid in _descendants(child.pid):
            _kill(pid, None, signum)


@contextmanager
def signals_handled(raise_when_idle: bool = True) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM/SIGHUP are forwarded to running
    children, and raise ``Interrupted`` when none runs (``raise_when_idle``);
    the previous handlers come back afterwards."""
    global _raise_when_idle
    del _received[:]
    del _deferred[:]
    _stop.clear()
    _raise_when_idle = raise_when_idle
    try:
        previous = {sig: signal.signal(sig, _on_signal) for sig in FORWARDED_SIGNALS}
    except ValueError:  # not the main thread: leave signals to whoever owns it
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def received_signal() -> int | None:
    return _received[0] if _received else None


def stopping() -> bool:
    """True once a signal asked the whole run to stop."""
    return _stop.is_set()


def sleep_unless_stopped(seconds: float) -> bool:
    """Sleep; False when a signal cut it short."""
    return not _stop.wait(seconds)


# -- processes a command leaves behind -------------------------------------------
#
# Threat: a command run in a scope leaves processes behind it -- `sleep 1000 &`,
# a child that ignores SIGTERM, one that made its own session (setsid), a
# double-forked daemon -- each holding the target's password in its
# environment and DOCKER_CONFIG pointing at a scope about to be removed. And a
# runner that cancels a job kills authscope's process group (kill -KILL
# -PGID): a tool in a session of its own is not in that group, and survives.
#
# Choice, on Linux: tools stay in authscope's process group, so a group kill
# takes them along; authscope makes itself a child subreaper
# (PR_SET_CHILD_SUBREAPER), so a process orphaned below it (its parent
# exited: a daemon's double fork, `sleep &` in a shell that is done) is
# re-parented to authscope instead of to init and stays in reach of a walk of
# /proc/<pid>/task/*/children. When a command ends, every process below
# authscope whose environment names the command's scope (AUTHSCOPE_SCOPE,
# DOCKER_CONFIG, REGISTRY_AUTH_FILE all hold its path), and everything below
# such a process, gets SIGTERM, then SIGKILL after LEFTOVER_GRACE; other
# commands' tools (fanout) and their trees are never touched. A forwarded
# signal goes to the command and to each process of its tree, which reaches
# a whole `sh -c` pipeline without a process group of its own.
# Not chosen: PR_SET_PDEATHSIG (it only reaches direct children, and fires
# when the *thread* that forked them ends: fanout forks from pool threads);
# sessions of their own (what a group kill misses).
# Consequences: a tool's `kill 0` now reaches authscope and the job's shell, as
# it would without authscope. A tool that made its own session escapes a
# group kill (nothing but cgroups could stop that); once authscope is gone,
# `authscope sweep` (after_script) ends it: its AUTHSCOPE_SCOPE names a dead scope.
# Known limit: a process that leaves the command's tree and also erases the
# scope's path from its environment (re-exec with `env -i`) is not found.
# Elsewhere (no /proc), the former way: each tool leads its own process
# group (without a terminal), and signals and the final TERM/KILL go to it.

LEFTOVER_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for what a command left
PR_SET_CHILD_SUBREAPER = 36
_TREE = sys.platform.startswith("linux") and os.path.isdir("/proc/self/task")
_subreaper: bool | None = None  # None: not tried yet
_have_children_files: bool | None = None


def _become_subreaper() -> bool:
    global _subreaper
    if _subreaper is None:
        _subreaper = False
        try:
            _subreaper = _prctl(PR_SET_CHILD_SUBREAPER, 1) == 0
        except (ImportError, OSError, AttributeError, TypeError):
            pass  # orphans then go to init: found by a scan of all of /proc
    return _subreaper


def _prctl(option: int, arg: int) -> int:
    """libc's ``prctl(option, arg, 0, 0, 0)``. Through ctypes' C part alone (~1 ms to
    import) where it offers the calls; ctypes itself, whose Python layer costs ~3 ms
    more on every exec's start-up, only where it does not. Here, not at import:
    only a command that starts a child pays."""
    args = (option, arg, 0, 0, 0)
    try:
        import _ctypes

        libc = _ctypes.dlopen(None, os.RTLD_NOW)  # type: ignore[arg-type]  # None: the program itself, as CDLL(None)
        return int(_ctypes.call_function(_ctypes.dlsym(libc, "prctl"), args))
    except (ImportError, AttributeError, OSError, TypeError):  # an interpreter without them
        import ctypes

        return int(ctypes.CDLL(None, use_errno=True).prctl(*args))


def _proc_stat(pid: int) -> tuple[bytes, int, int] | None:
    """(state, ppid, start time) of ``pid``; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return fields[0], int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _ppid_map() -> dict[int, list[int]]:
    """Every process's children, from a scan of all of /proc."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _proc_stat(int(entry))
            if info is not None:
                kids.setdefault(info[1], []).append(int(entry))
    return kids


def _child_pids(pid: int) -> list[int]:
    global _have_children_files
    if _have_children_files is None:
        _have_children_files = os.path.exists(f"/proc/self/task/{os.getpid()}/children")
    if not _have_children_files:  # a kernel without CONFIG_PROC_CHILDREN: scan every process
        return _ppid_map().get(pid, [])
    try:
        tasks = os.listdir(f"/proc/{pid}/task")  # children belong to the thread that forked them
    except OSError:
        return []
    # The kernel lists children by position: one exiting meanwhile (another
    # target's tool, in fanout) can make a read skip one. Two reads, united.
    out: set[int] = set()
    for _ in range(2 if pid == os.getpid() else 1):
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    out.update(int(child) for child in f.read().split())
            except (OSError, ValueError):
                pass
    return sorted(out)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents first."""
    out: list[int] = []
    seen = {pid}
    queue = _child_pids(pid)
    while queue:
        child = queue.pop(0)
        if child not in seen:
            seen.add(child)
            out.append(child)
            queue.extend(_child_pids(child))
    return out


def _environ_has(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read()
    except OSError:
        return False


def _kill(pid: int, start: int | None, signum: int) -> None:
    """Signal ``pid``, unless it is gone or (``start`` given) its pid was reused."""
    if start is not None:
        info = _proc_stat(pid)
        if info is None or info[2] != start:
            return
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _leftovers(marker: bytes, root: int, scan: bool = False) -> dict[int, int]:
    """Live processes the command ``root`` left: pid -> start time.
    ``scan``: follow parents from a scan of all of /proc, not the children files.

    Under ``_children_lock``, as _spawn's fork and registration are: a command
    started meanwhile in the same scope (a target's referrer copies run at
    once) is either not forked yet or already one of ``others``, never taken
    for a leftover."""
    with _children_lock:
        return _leftovers_locked(marker, root, scan)


def _leftovers_locked(marker: bytes, root: int, scan: bool) -> dict[int, int]:
    others = {child.pid for child in _children if child.pid != root}
    children = _child_pids
    if scan:
        kids = _ppid_map()
        children = lambda pid: kids.get(pid, [])  # noqa: E731
    roots = [os.getpid()]
    if not _subreaper:  # orphans went to init: look at every process
        roots = [1] if os.path.isdir("/proc/1") else roots
    found: dict[int, int] = {}
    stack = [(pid, pid == root) for root_pid in roots for pid in children(root_pid)]
    seen: set[int] = set()
    while stack:
        pid, inherited = stack.pop()
        if pid in seen or pid in others:  # another command's tool: its tree is its own
            continue
        seen.add(pid)
        info = _proc_stat(pid)
        if info is None or info[0] == b"Z":
            continue
        mine = inherited or (bool(marker) and _environ_has(pid, marker))
        if mine and pid != root:
            found[pid] = info[2]
        stack.extend((child, mine) for child in children(pid))
    return found


def _reap(ended: dict[int, int]) -> None:
    """Collect the ones that were re-parented to us, so no zombie is left."""
    me = os.getpid()
    for pid, start in list(ended.items()):
        info = _proc_stat(pid)
        if info is None:
            del ended[pid]
        elif info[1] == me and info[2] == start:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def _end_tree(marker: bytes, root: int) -> int:
    found = _leftovers(marker, root)
    if not found:
        return 0
    count = _end_found(marker, root, found)
    # It left something: make sure with a scan of all of /proc, which no
    # concurrent exit can make skip a process (it costs ~10 ms, only here).
    again = _leftovers(marker, root, scan=True)
    return count + (_end_found(marker, root, again) if again else 0)


def _end_found(marker: bytes, root: int, found: dict[int, int]) -> int:
    ended = dict(found)
    count = len(found)
    for pid, start in found.items():
        _kill(pid, start, signal.SIGTERM)
    deadline = time.monotonic() + LEFTOVER_GRACE
    pause = 0.005
    while found and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
        _reap(ended)
        found = _leftovers(marker, root)
        for pid, start in found.items():
            if pid not in ended:  # forked meanwhile: it gets its SIGTERM too
                ended[pid] = start
                count += 1
                _kill(pid, start, signal.SIGTERM)
    for _ in range(100):  # those that ignored SIGTERM; stopped first, so none forks meanwhile
        if not found:
            break
        for pid, start in found.items():
            _kill(pid, start, signal.SIGSTOP)
        found.update(_leftovers(marker, root))
        count += len(set(found) - set(ended))
        ended.update(found)
        for pid, start in found.items():
            _kill(pid, start, signal.SIGKILL)
        time.sleep(0.01)
        _reap(ended)
        found = _leftovers(marker, root)
    _reap(ended)
    return count


def _end_group(pgid: int) -> None:
    """The former way (no /proc): the command's process group, TERM then KILL."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, 0 if signum == signal.SIGTERM else signum)
        except (ProcessLookupError, PermissionError):
            return
        if signum == signal.SIGTERM:
            os.killpg(pgid, signum)
            deadline = time.monotonic() + LEFTOVER_GRACE
            while time.monotonic() < deadline:
                time.sleep(0.02)
                try:
                    os.killpg(pgid, 0)
                except (ProcessLookupError, PermissionError):
                    return


def end_leftovers(child: Child, own_group: bool, marker: bytes) -> None:
    """End every process ``child`` (a command, now done) left behind; never raises."""
    try:
        if _TREE:
            _end_tree(marker, child.pid)
        elif own_group:
            _end_group(child.pid)
    except OSError:
        pass


def end_processes_in(scopes: Sequence[str]) -> dict[str, int]:
    """For ``sweep``: end every process of this user whose environment says it
    runs in one of ``scopes`` (AUTHSCOPE_SCOPE=path), TERM then KILL; how many
    per scope. Reaches what a group kill missed (a tool that made its own
    session) once its authscope is gone. A scan of all of /proc: not for exec."""
    if not os.path.isdir("/proc/self"):
        return {}
    wanted = {b"\0AUTHSCOPE_SCOPE=" + os.fsencode(path) + b"\0": path for path in scopes}
    found: dict[int, tuple[int, str]] = {}
    me, uid = os.getpid(), os.geteuid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = b"\0" + f.read()
        except OSError:
            continue
        info = _proc_stat(int(entry))
        for marker, path in wanted.items():
            if info is not None and info[0] != b"Z" and marker in environ:
                found[int(entry)] = (info[2], path)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid, (start, _) in found.items():
            _kill(pid, start, signum)
        deadline = time.monotonic() + (LEFTOVER_GRACE if signum == signal.SIGTERM else 1.0)
        while time.monotonic() < deadline and any(_alive(pid, start) for pid, (start, _) in found.items()):
            time.sleep(0.02)
    counts: dict[str, int] = {}
    for _, path in found.values():
        counts[path] = counts.get(path, 0) + 1
    return counts


def _alive(pid: int, start: int) -> bool:
    info = _proc_stat(pid)
    return info is not None and info[2] == start and info[0] != b"Z"


# -- running --------------------------------------------------------------------


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


Sink = Callable[[bytes], None]


DEVNULL = -3  # stdin from /dev/null (subprocess.DEVNULL's value)


class Child:
    """A started command: what subprocess.Popen gave _run, _pump and the signal handler
    (pid, returncode, stdout, stderr, poll, wait), for a child started by ``_start``,
    which does what Popen(close_fds=True, restore_signals=True) did without importing
    subprocess (with locale, warnings, fcntl: ~4 ms of every exec's start-up)."""

    def __init__(self, pid: int, stdout: IO[bytes], stderr: IO[bytes], popen: subprocess.Popen[bytes] | None = None):
        self.pid = pid
        self.stdout: IO[bytes] | None = stdout
        self.stderr: IO[bytes] | None = stderr
        self.returncode: int | None = None
        self._popen = popen  # started by Popen (a cwd of its own): it waits

    def _status(self, flags: int) -> int | None:
        if self.returncode is not None:
            return self.returncode
        if self._popen is not None:
            self.returncode = self._popen.poll() if flags else self._popen.wait()
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # SIGCHLD ignored, or reaped by someone else: dead, status unknown (as Popen)
            self.returncode = 0
            return 0
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)  # -N for a signal, as Popen
        return self.returncode

    def poll(self) -> int | None:
        return self._status(os.WNOHANG)

    def wait(self) -> int:
        while True:
            code = self._status(0)
            if code is not None:
                return code


# Signals Python ignores that a command must get with their default action (SIGPIPE:
# `tool | head` ends the tool), as Popen's restore_signals=True does.
_RESTORED = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name))


def _inherited_fds() -> list[int]:
    """This process's inheritable descriptors above stderr (what authscope itself was
    given): closed in a child, as Popen's close_fds=True closes them."""
    try:
        names = os.listdir("/proc/self/fd" if _TREE else "/dev/fd")
    except OSError:
        return []
    out = []
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    out.append(fd)
            except OSError:  # the descriptor listdir itself had open, now closed
                pass
    return out


def _start(argv: Sequence[str], env: Mapping[str, str], own_group: bool, cwd: str | None, stdin: int | None) -> Child:
    """``argv`` started with its output on two pipes, searched for on ``env``'s PATH
    (not authscope's), as Popen does it: FileNotFoundError when no candidate exists,
    else the first other error (PermissionError for one that is not executable)."""
    if cwd is not None:  # posix_spawn has no chdir before 3.13's: the former way
        import subprocess

        proc = subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=own_group,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        return Child(proc.pid, proc.stdout, proc.stderr, proc)
    program = os.fsencode(argv[0])
    if os.path.dirname(program):
        candidates = [program]
    else:
        search = env.get("PATH")  # os.get_exec_path(env) for a str mapping, without its import of warnings
        dirs = (os.defpath if search is None else search).split(os.pathsep)
        candidates = [os.path.join(os.fsencode(d), program) for d in dirs]
    args = list(argv)
    child_env = dict(env)  # posix_spawn encodes it (and argv) as Popen did: os.fsencode
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = []
        if stdin == DEVNULL:
            actions.append((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
        actions += [(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds()]
        first: OSError | None = None
        last: OSError = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
        pid = None
        for path in candidates:
            try:
                os.stat(path)  # spares a spawn per PATH entry that lacks it
                pid = os.posix_spawn(path, args, child_env, file_actions=actions, setsigdef=_RESTORED, setsid=own_group)
                break
            except OSError as exc:
                last = exc
                if first is None and exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    first = exc
        if pid is None:
            raise first or last
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return Child(pid, open(out_r, "rb", buffering=0), open(err_r, "rb", buffering=0))


def _spawn(argv: Sequence[str], env: Mapping[str, str], own_group: bool, cwd: str | None, stdin: int | None) -> Child:
    global _starting
    if _TREE:
        _become_subreaper()
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        # Started with SIGCHLD ignored (inherited across exec): the kernel would reap
        # every command at once and its exit status be lost, a failed copy read as 0.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    with _children_lock:
        _starting += 1
    try:
        with _children_lock:  # fork and registration at once, as _leftovers sees them
            try:
                proc = _start(argv, env, own_group, cwd, stdin)
            except FileNotFoundError:
                raise CommandNotFound(argv[0]) from None
            except PermissionError:
                raise CommandNotFound(f"{argv[0]} (not executable)") from None
            _children[proc] = own_group
    finally:
        with _children_lock:
            _starting -= 1
    if _received:  # a signal came while the child was being started
        _forward(proc, own_group, _received[0])
    return proc


def _run(
    argv: Sequence[str],
    env: Mapping[str, str],
    masker: Masker,
    sinks: tuple[Sink, Sink],
    own_group: bool,
    cwd: str | None,
    deadline: float | None,
    stdin: int | None,
) -> tuple[int, bool]:
    """(exit status, timed out)."""
    proc = _spawn(argv, env, own_group, cwd, stdin)
    assert proc.stdout is not None and proc.stderr is not None  # both are PIPE
    marker = env.get("AUTHSCOPE_SCOPE", "").encode("utf-8", "surrogateescape")

    def leftovers() -> None:
        uninterrupted(lambda: end_leftovers(proc, own_group, marker))

    try:
        streams = {proc.stdout: (LineRelay(masker), sinks[0]), proc.stderr: (LineRelay(masker), sinks[1])}
        timed_out = _pump(proc, own_group, streams, deadline, leftovers)
        returncode = proc.wait()
    finally:
        if proc.returncode is None:  # unwinding on an error of our own
            _forward(proc, own_group, signal.SIGKILL)
            proc.wait()
        leftovers()  # again: the pipes may close before the child is seen to exit
        with _children_lock:
            _children.pop(proc, None)
    return _exit_status(returncode), timed_out


def run_relayed(
    argv: Sequence[str],
    env: Mapping[str, str],
    masker: Masker,
    stdout: IO[bytes] | None = None,
    stderr: IO[bytes] | None = None,
    cwd: str | None = None,
) -> int:
    """Run ``argv``, relay its output masked line by line; its exit status.

    SIGINT/SIGTERM/SIGHUP received meanwhile are forwarded to the child (to
    its process group when it has one); once it has exited, ``Interrupted``
    is raised so the caller's cleanup runs and the exit code says 128 + N.
    """
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    # With a terminal, the child stays in our process group: it may prompt,
    # and the terminal's own Ctrl-C reaches it. Without one (CI), on Linux it
    # stays there too (a runner's group kill must reach it; forwarded signals
    # walk its tree); elsewhere it gets its own group, so a forwarded signal
    # reaches a whole `sh -c` pipeline.
    own_group = not _TREE and not (sys.stdin is not None and sys.stdin.isatty())
    status, _ = _run(argv, env, masker, (_writer(out), _writer(err)), own_group, cwd, None, None)
    if _received:
        raise Interrupted(_received[0])
    return status


def run_captured(
    argv: Sequence[str],
    env: Mapping[str, str],
    masker: Masker,
    line: Callable[[bytes, bool], None],
    deadline: float | None = None,
    cwd: str | None = None,
) -> tuple[int, bool]:
    """Run ``argv`` with no stdin (in its own process group where there is
    no /proc to follow its tree); each masked output line goes to
    ``line(data, is_stderr)``. Kills it at ``deadline`` (time.monotonic()).
    Returns (exit status, timed out). Safe from threads.
    """
    sinks = (lambda b: line(b, False), lambda b: line(b, True))
    return _run(argv, env, masker, sinks, not _TREE, cwd, deadline, DEVNULL)


def _writer(stream: IO[bytes]) -> Sink:
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return write


def _pump(
    proc: Child,
    group: bool,
    streams: dict[IO[bytes], tuple[LineRelay, Sink]],
    deadline: float | None,
    on_exit: Callable[[], None] = lambda: None,
) -> bool:
    """Relay until both pipes close; True when ``deadline`` killed the child.
    ``on_exit`` runs once the child has exited (ending what it left holding the pipes)."""
    # select.poll, not selectors (with math: ~1 ms of exec's start-up). Any event is read:
    # a hang-up without data reads b"" (EOF), as selectors reported it readable.
    poller = select.poll()
    by_fd = {pipe.fileno(): pipe for pipe in streams}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    drain_until: float | None = None
    signalled_at: float | None = None
    timed_out = False
    try:
        open_fds = set(by_fd)
        while open_fds:
            for fd, _ in poller.poll(200):
                relay, sink = streams[by_fd[fd]]
                data = os.read(fd, 65536)
                if data:
                    chunk = relay.feed(data)
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                    chunk = relay.flush()
                if chunk:
                    sink(chunk)
            now = time.monotonic()
            alive = proc.poll() is None
            if alive and deadline is not None and now > deadline and not timed_out:
                timed_out = True
                _forward(proc, group, signal.SIGTERM)
                signalled_at = now
            if _received and signalled_at is None:
                signalled_at = now
            if alive and signalled_at is not None and now - signalled_at > KILL_GRACE:
                _forward(proc, group, signal.SIGKILL)
            if drain_until is None and not alive:
                on_exit()
                drain_until = time.monotonic() + DRAIN_GRACE
            if drain_until is not None and now > drain_until:
                break  # a grandchild holds the pipe open; don't wait for it
    finally:
        for pipe, (relay, sink) in streams.items():
            rest = relay.flush()
            if rest:
                sink(rest)
            pipe.close()
    return timed_out


def helper_get(helper: str, server: str, env: Mapping[str, str]) -> tuple[str, str]:
    """(username, secret) from ``docker-credential-<helper> get``.

    The server name goes on stdin, as the docker-credential-helpers protocol
    says; the answer is JSON on stdout and is never logged.
    """
    import json
    import subprocess

    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run(
            [program, "get"],
            input=server.encode("utf-8"),
            capture_output=True,
            env=dict(env),
            timeout=60,
        )
    except FileNotFoundError:
        raise HelperError(helper, server, f"{program} is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise HelperError(helper, server, "no answer within 60s") from None
    if proc.returncode != 0:
        # Helpers answer "credentials not found in native keychain" on stdout.
        reason = (proc.stdout or proc.stderr).decode("utf-8", "replace").strip()[:200]
        raise HelperError(helper, server, reason or f"exit code {proc.returncode}")
    try:
        answer = json.loads(proc.stdout)
        return str(answer["Username"]), str(answer["Secret"])
    except (ValueError, KeyError, TypeError):
        raise HelperError(helper, server, "answered something that is not the helper protocol's JSON") from None

"""The only module that starts processes: relay with masking, signals, helpers.

Children get secrets through their environment or files, never argv. What they
print is relayed line by line (CI logs stay live) with every known secret
replaced by ``[MASKED]``.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import IO, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from .errors import CommandNotFound, HelperError, Interrupted

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
        found: Set[bytes] = set()
        for secret in secrets:
            if len(secret) >= MIN_SECRET:
                found.update(form for form in forms(secret) if len(form) >= MIN_SECRET)
        # Longest first: a cheap early exit, and a stable order for tests.
        self.secrets: Tuple[bytes, ...] = tuple(sorted(found, key=lambda f: (-len(f), f)))
        self.longest = len(self.secrets[0]) if self.secrets else 0

    def spans(self, data: bytes) -> List[Tuple[int, int]]:
        """Where secrets are in ``data``: merged (start, end) spans, in order."""
        found: List[Tuple[int, int]] = []
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


def _apply(data: bytes, spans: Sequence[Tuple[int, int]]) -> bytes:
    if not spans:
        return data
    out, last = [], 0
    for start, end in spans:
        out += [data[last:start], MASK]
        last = end
    out.append(data[last:])
    return b"".join(out)


def forms(secret: str) -> Set[bytes]:
    """Every form of ``secret`` worth masking (see Masker); short pieces included."""
    import json
    from urllib.parse import quote, quote_plus

    whole = {secret}
    # Each line of a multi-line secret, and the pieces between the "\n"
    # escapes of a line holding JSON (a _json_key's private_key, decoded).
    for line in re.split(r"\r\n|\r|\n", secret):
        whole.add(line.strip())
        whole.update(piece.strip() for piece in re.split(r"\\r\\n|\\n", line))
    whole.discard("")
    texts: Set[str] = set()
    for value in whole:
        texts.update(
            (
                value,
                quote(value, errors="surrogateescape"),
                quote(value, safe="", errors="surrogateescape"),
                quote_plus(value, errors="surrogateescape"),
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
    import base64

    encoded = base64.b64encode(bytes(offset) + raw + bytes(3))
    first = -(-offset * 8 // 6)  # the first character whose 6 bits all come from raw
    last = (offset + len(raw)) * 8 // 6  # one past the last such character
    return encoded[first:last]


# Every secret this process has read, for masking what authscope itself
# prints and writes (messages, reports), not only what tools print.
_known: Set[str] = set()
_known_lock = threading.Lock()
_known_masker: Optional[Masker] = None


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

_children: Dict[subprocess.Popen, bool] = {}  # type: ignore[type-arg]
_children_lock = threading.Lock()
_received: List[int] = []
_stop = threading.Event()
_raise_when_idle = True
_starting = 0  # children being started: a signal now is forwarded once they exist


def _on_signal(signum: int, frame: object) -> None:
    _received.append(signum)
    _stop.set()
    with _children_lock:
        children = list(_children.items())
    for child, group in children:
        _forward(child, group, signum)
    if _raise_when_idle and not children and not _starting and len(_received) == 1:
        # No child running: unwind through the cleanup handlers. A second
        # signal only records itself, so it cannot break a cleanup under way.
        raise Interrupted(signum)


def _forward(child: subprocess.Popen, group: bool, signum: int) -> None:  # type: ignore[type-arg]
    if child.returncode is not None:
        return
    try:
        if group:
            os.killpg(child.pid, signum)
        else:
            os.kill(child.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def signals_handled(raise_when_idle: bool = True) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM/SIGHUP are forwarded to running
    children, and raise ``Interrupted`` when none runs (``raise_when_idle``);
    the previous handlers come back afterwards."""
    global _raise_when_idle
    del _received[:]
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


def received_signal() -> Optional[int]:
    return _received[0] if _received else None


def stopping() -> bool:
    """True once a signal asked the whole run to stop."""
    return _stop.is_set()


def sleep_unless_stopped(seconds: float) -> bool:
    """Sleep; False when a signal cut it short."""
    return not _stop.wait(seconds)


# -- running --------------------------------------------------------------------


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


Sink = Callable[[bytes], None]


def _spawn(
    argv: Sequence[str], env: Mapping[str, str], own_group: bool, cwd: Optional[str], stdin: Optional[int]
) -> subprocess.Popen:  # type: ignore[type-arg]
    global _starting
    with _children_lock:
        _starting += 1
    try:
        try:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=own_group,
            )
        except FileNotFoundError:
            raise CommandNotFound(argv[0]) from None
        except PermissionError:
            raise CommandNotFound(f"{argv[0]} (not executable)") from None
        with _children_lock:
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
    sinks: Tuple[Sink, Sink],
    own_group: bool,
    cwd: Optional[str],
    deadline: Optional[float],
    stdin: Optional[int],
) -> Tuple[int, bool]:
    """(exit status, timed out)."""
    proc = _spawn(argv, env, own_group, cwd, stdin)
    assert proc.stdout is not None and proc.stderr is not None  # both are PIPE
    try:
        streams = {proc.stdout: (LineRelay(masker), sinks[0]), proc.stderr: (LineRelay(masker), sinks[1])}
        timed_out = _pump(proc, own_group, streams, deadline)
        returncode = proc.wait()
    finally:
        if proc.returncode is None:  # unwinding on an error of our own
            _forward(proc, own_group, signal.SIGKILL)
            proc.wait()
        with _children_lock:
            _children.pop(proc, None)
    return _exit_status(returncode), timed_out


def run_relayed(
    argv: Sequence[str],
    env: Mapping[str, str],
    masker: Masker,
    stdout: Optional[IO[bytes]] = None,
    stderr: Optional[IO[bytes]] = None,
    cwd: Optional[str] = None,
) -> int:
    """Run ``argv``, relay its output masked line by line; its exit status.

    SIGINT/SIGTERM/SIGHUP received meanwhile are forwarded to the child (to
    its process group when it has one); once it has exited, ``Interrupted``
    is raised so the caller's cleanup runs and the exit code says 128 + N.
    """
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    # With a terminal, the child stays in our process group: it may prompt,
    # and the terminal's own Ctrl-C reaches it. Without one (CI), it gets its
    # own group so a forwarded signal reaches a whole `sh -c` pipeline.
    own_group = not (sys.stdin is not None and sys.stdin.isatty())
    status, _ = _run(argv, env, masker, (_writer(out), _writer(err)), own_group, cwd, None, None)
    if _received:
        raise Interrupted(_received[0])
    return status


def run_captured(
    argv: Sequence[str],
    env: Mapping[str, str],
    masker: Masker,
    line: Callable[[bytes, bool], None],
    deadline: Optional[float] = None,
    cwd: Optional[str] = None,
) -> Tuple[int, bool]:
    """Run ``argv`` in its own process group, with no stdin; each masked
    output line goes to ``line(data, is_stderr)``. Kills it at ``deadline``
    (time.monotonic()). Returns (exit status, timed out). Safe from threads.
    """
    sinks = (lambda b: line(b, False), lambda b: line(b, True))
    return _run(argv, env, masker, sinks, True, cwd, deadline, subprocess.DEVNULL)


def _writer(stream: IO[bytes]) -> Sink:
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return write


def _pump(
    proc: subprocess.Popen[bytes],
    group: bool,
    streams: Dict[IO[bytes], Tuple[LineRelay, Sink]],
    deadline: Optional[float],
) -> bool:
    """Relay until both pipes close; True when ``deadline`` killed the child."""
    selector = selectors.DefaultSelector()
    for pipe in streams:
        selector.register(pipe, selectors.EVENT_READ)
    drain_until: Optional[float] = None
    signalled_at: Optional[float] = None
    timed_out = False
    try:
        while selector.get_map():
            for key, _ in selector.select(timeout=0.2):
                relay, sink = streams[key.fileobj]  # type: ignore[index]
                data = os.read(key.fd, 65536)
                if data:
                    chunk = relay.feed(data)
                else:
                    selector.unregister(key.fileobj)
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
                drain_until = now + DRAIN_GRACE
            if drain_until is not None and now > drain_until:
                break  # a grandchild holds the pipe open; don't wait for it
    finally:
        for pipe, (relay, sink) in streams.items():
            rest = relay.flush()
            if rest:
                sink(rest)
            pipe.close()
        selector.close()
    return timed_out


def helper_get(helper: str, server: str, env: Mapping[str, str]) -> Tuple[str, str]:
    """(username, secret) from ``docker-credential-<helper> get``.

    The server name goes on stdin, as the docker-credential-helpers protocol
    says; the answer is JSON on stdout and is never logged.
    """
    import json

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

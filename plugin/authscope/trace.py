"""AUTHSCOPE_TRACE=PATH: where a fan-out's time goes, as JSON lines appended to PATH.

Off by default, and then every `event` call is one `if`. When the variable
names a file, each event is one JSON object on a line of its own:

  t        seconds since the process started (from /proc; since this
           module's import where /proc is absent)
  wall     the time (time.time()), to line traces of several processes up
  event    run, source, preflight, wait, scope, tool, verify, target, http
  phase    start / end for the events that have both
  target   the target it belongs to (the thread's, see `acting`), if any

and for `http`: method, host, path (never the query: a token realm's query
names a scope, and nothing here may ever hold a credential), status, ms, and
new (a new connection, TCP and TLS handshakes included) or reused. No
header, body, username or password is ever written.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

PATH = os.environ.get("AUTHSCOPE_TRACE") or None
_LOCK = threading.Lock()
_LOCAL = threading.local()
_START: float | None = None  # time.time() of the process's start


def _process_start() -> float:
    """time.time() when this process started (clock-tick precision), else now."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def acting(name: str | None) -> None:
    """The target this thread now works for (None: none); `event` names it."""
    _LOCAL.target = name


def event(kind: str, **fields: Any) -> None:
    """Append one event to the trace, when there is one. Never raises."""
    if PATH is None:
        return
    _write(kind, fields)


def _write(kind: str, fields: dict[str, Any]) -> None:
    import json

    global _START
    now = time.time()
    try:
        with _LOCK:
            if _START is None:
                _START = min(_process_start(), now)
            record: dict[str, Any] = {"t": round(now - _START, 6), "wall": now, "event": kind}
            who = getattr(_LOCAL, "target", None)
            if who is not None and "target" not in fields:
                record["target"] = who
            record.update(fields)
            line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
            fd = os.open(str(PATH), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
    except (OSError, TypeError, ValueError):  # a trace never costs the run
        pass

"""Run part of a test as an unprivileged user, so root-run CI tests non-root paths too.

CI runs as root, and root reads any file: a test of "permission denied" would
never see one. ``as_unprivileged(fn)`` runs ``fn`` as nobody (uid/gid 65534,
no supplementary groups: what ``setpriv --reuid=65534 --regid=65534
--clear-groups`` does) when the tests run as root, and directly otherwise, so
the same assertions run both ways.

It forks and drops privileges in the child instead of exec'ing
``setpriv ... python``: the interpreter may live where nobody cannot reach it
(/root/.pyenv on the development machine), and the child already holds every
module it needs. ``fn``'s result (or the exception it raised, as text) comes
back through a pipe.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

NOBODY = 65534


def as_unprivileged(fn: Callable[[], Any]) -> tuple[str, Any]:
    """("returned", value) or ("raised", "Type: message") of ``fn()`` run as nobody (when root)."""
    if os.geteuid() != 0:
        return _call(fn)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, call, report, never return into pytest
        try:
            os.close(read)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            data = pickle.dumps(_call(fn))
        except BaseException as exc:  # noqa: BLE001 - anything must reach the parent
            data = pickle.dumps(("crashed", f"{type(exc).__name__}: {exc}"))
        view = memoryview(data)
        while view:
            view = view[os.write(write, view) :]
        os._exit(0)
    os.close(write)
    chunks = []
    with os.fdopen(read, "rb") as f:
        while chunk := f.read(65536):
            chunks.append(chunk)
    os.waitpid(pid, 0)
    outcome: tuple[str, Any] = pickle.loads(b"".join(chunks))
    assert outcome[0] != "crashed", outcome[1]
    return outcome


def _call(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "returned", fn()
    except Exception as exc:
        return "raised", f"{type(exc).__name__}: {exc}"


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory nobody can reach and write (tmp_path's parents are 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="authscope-unprivileged-"))
    path.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

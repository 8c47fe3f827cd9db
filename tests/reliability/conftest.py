"""Fixtures for the reliability and security suite (see docs/RELIABILITY.md).

The counts default to the published minimums; ``scripts/reliability.py``
reruns the same measurements with other counts and prints the figures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# The minimums the suite enforces (docs/RELIABILITY.md publishes the figures).
PROCS, CYCLES = 16, 50
CLI_PROCS, CLI_CYCLES = 16, 5
KILLS = 200
EXAMPLES = 1000
CLI_EXAMPLES = 12


def need_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


class Mounts:
    """Mounts made by a test; every one is unmounted at teardown, innermost first."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def tmpfs(self, path: Path, size: str = "64k") -> Path:
        need_root("mounts a small tmpfs")
        path.mkdir(parents=True, exist_ok=True)
        self._mount(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], path)
        return path

    def read_only_bind(self, path: Path) -> Path:
        """Bind ``path`` onto itself, then remount it read-only."""
        need_root("bind-mounts a directory read-only")
        self._mount(["mount", "--bind", str(path), str(path)], path)
        proc = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(path)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {proc.stderr.strip()}")
        return path

    def _mount(self, argv: list[str], path: Path) -> None:
        if shutil.which("mount") is None:
            pytest.skip("no mount(8) here")
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount here ({' '.join(argv[:3])}): {proc.stderr.strip()}")
        self.points.append(path)

    def unmount_all(self) -> None:
        while self.points:
            path = self.points.pop()
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    m = Mounts()
    try:
        yield m
    finally:
        m.unmount_all()

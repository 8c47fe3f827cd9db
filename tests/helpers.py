"""Helpers shared by the tests (fixtures are in conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

AUTHSCOPE = [sys.executable, "-m", "authscope"]
# Obviously fake test secrets: nothing here looks like a real credential.
LOCAL_PASSWORD = "local-test-password-0001"
TARGET_PASSWORD = "target-test-password-0002"


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_config(directory: Path, cfg: Mapping[str, Any], mode: int = 0o600) -> Path:
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(cfg, indent="\t") + "\n")
    path.chmod(mode)
    return path


def run_authscope(
    args: list[str], env: Mapping[str, str], input: str | None = None, timeout: float = 60, **kw: Any
) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    """The real CLI, in its own process."""
    return subprocess.run(
        AUTHSCOPE + args, env=dict(env), input=input, capture_output=True, text=True, timeout=timeout, **kw
    )

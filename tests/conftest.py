"""Shared fixtures: an isolated HOME/DOCKER_CONFIG per test, and ways to run authscope."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from authscope import cli
from tests.helpers import LOCAL_PASSWORD, TARGET_PASSWORD, write_config


@pytest.fixture
def env(tmp_path: Path) -> Dict[str, str]:
    """An environment whose HOME, XDG_* and DOCKER_CONFIG all live in tmp_path."""
    home = tmp_path / "home"
    scopes = tmp_path / "scopes"
    for d in (home, scopes, tmp_path / "xdg-runtime", tmp_path / "xdg-config"):
        d.mkdir(mode=0o700)
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(tmp_path / "xdg-runtime"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "DOCKER_CONFIG": str(tmp_path / "base"),
        "AUTHSCOPE_SCOPE_DIR": str(scopes),
        "LOCAL_PASSWORD": LOCAL_PASSWORD,
        "TARGET_PASSWORD": TARGET_PASSWORD,
        "LANG": "C.UTF-8",
    }
    if "PYTHONPATH" in os.environ:
        environ["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return environ


@pytest.fixture
def base(env: Dict[str, str]) -> Path:
    return Path(env["DOCKER_CONFIG"])


@pytest.fixture
def scopes(env: Dict[str, str]) -> Path:
    return Path(env["AUTHSCOPE_SCOPE_DIR"])


@pytest.fixture
def main(env: Dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cli.main`` in-process with the isolated environment."""

    def call(*args: str, stdin: Optional[str] = None) -> int:
        if stdin is not None:
            import io

            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return cli.main(list(args), environ=env)

    return call


@pytest.fixture
def logged_in(base: Path, env: Dict[str, str], main: Any) -> Path:
    """A base holding the local registry's login (and a key tools don't know)."""
    write_config(base, {"auths": {}, "HttpHeaders": {"User-Agent": "authscope-tests"}, "x-unknown": [1, 2]})
    assert main("login", "gitlab.local:4567", "-u", "ci", "--password-env", "LOCAL_PASSWORD") == 0
    return base / "config.json"

#!/usr/bin/env python3
"""Start the registries of the component self-test and keep them up.

    python3 tests/e2e/gitlab_ci_local/registries.py DIR

Starts a "local" registry holding app:1.0 (the job's $CI_REGISTRY) and the two
targets tests/e2e/gitlab_ci_local/authscope.yml names (remote-1: plain HTTP, a
Harbor robot account; remote-2: TLS, password and CA in files, as GitLab file
variables would give them), all on 127.0.0.1 with random passwords. Then
writes DIR/env, shell `export` lines for those variables, and waits until it
is signalled (or its job ends), stopping the registries on the way out.

Sourced by selftest-setup.sh, which the component self-test in .gitlab-ci.yml
uses as its `install` input. Passwords go to files (0600) only, never to
argv or the log.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO_ROOT))

from tests.support import CA, isolated_env, publish_image, start_registry  # noqa: E402

ROBOT = "robot$release+ci"


def private_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def password() -> str:
    return "selftest-" + secrets.token_hex(12)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    parent = os.getppid()
    out = Path(argv[0]).resolve()
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(tempfile.mkdtemp(prefix="registries-", dir=out))
    ca = CA.create(work / "ca")
    local = start_registry(work, username="gitlab-ci-token", password=password(), name="local")
    remote_1 = start_registry(work, username=ROBOT, password=password(), name="remote-1")
    remote_2 = start_registry(work, username="harbor-robot", password=password(), tls=ca, name="remote-2")
    publish_image(local, work / "image", isolated_env(work / "env"), repository="app", tag="1.0")
    assert remote_2.ca_file is not None

    variables = {
        "CI_REGISTRY": local.host,
        "CI_REGISTRY_USER": local.username,
        "CI_REGISTRY_PASSWORD": local.password,
        "LOCAL": local.host,
        "REMOTE_1": remote_1.host,
        "REMOTE_1_PASSWORD": remote_1.password,
        "REMOTE_2": remote_2.host,
        "REMOTE_2_USER": remote_2.username,
        "REMOTE_2_PASSWORD": str(private_file(out / "remote-2-password", remote_2.password)),
        "REMOTE_2_CA": str(remote_2.ca_file),
    }
    text = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in variables.items())
    private_file(out / "env.tmp", text)
    os.replace(out / "env.tmp", out / "env")  # the waiting shell sees all of it or nothing
    print(f"registries: local {local.host}, remote-1 {remote_1.host}, remote-2 {remote_2.host} (TLS)", flush=True)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    try:
        while os.getppid() == parent:  # orphaned: the job's shell is gone
            time.sleep(0.5)
    finally:
        for registry in (local, remote_1, remote_2):
            registry.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""run behaviour that tests/test_run.py left unpinned (found by mutation testing,
benchmarks/mutation.py; docs/RELIABILITY.md "Mutation testing")."""

from __future__ import annotations

import base64

import pytest

from authscope import run


@pytest.mark.parametrize("prefix", [b"", b"c", b"ci", b"ci:"])
def test_base64_of_a_secret_inside_a_longer_string_is_masked_to_its_last_character(prefix: bytes) -> None:
    secret = "s3cret-passw0rd-of-some-length"
    encoded = base64.b64encode(prefix + secret.encode())
    masked = run.Masker([secret])(b"Authorization: Basic " + encoded)
    assert run.MASK in masked
    # What stays: the base64 of the prefix (and at most 1 character it shares with
    # the secret), then at most the 3 last characters the padding shares.
    first, *rest = masked.replace(b"Authorization: Basic ", b"").split(run.MASK)
    assert encoded.startswith(first) and len(first) <= len(prefix) * 4 // 3 + 1, first
    assert rest and all(len(piece) <= 3 for piece in rest), rest


@pytest.mark.parametrize("offset", [-1, 1])
def test_a_pid_reused_by_another_process_is_not_signalled(offset: int) -> None:
    # _kill is given the start time it saw; a process with that pid but another
    # start time (earlier or later) is someone else, and is left alone.
    import signal
    import subprocess
    import time

    child = subprocess.Popen(["sleep", "30"])
    try:
        info = run._proc_stat(child.pid)
        assert info is not None
        run._kill(child.pid, info[2] + offset, signal.SIGTERM)
        time.sleep(0.3)  # a signal, had one been sent, has arrived by now
        assert child.poll() is None and run._proc_stat(child.pid) is not None
        run._kill(child.pid, info[2], signal.SIGTERM)  # control: the right start time
        assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()


def test_a_credential_helper_that_is_not_installed_is_a_clear_error(tmp_path: object) -> None:
    from authscope.errors import HelperError

    with pytest.raises(HelperError) as info:
        run.helper_get("authscope-none", "gitlab.local:4567", {"PATH": str(tmp_path)})
    assert info.value.reason == "docker-credential-authscope-none is not on PATH"
    assert str(info.value).startswith(
        "credential helper docker-credential-authscope-none could not get gitlab.local:4567"
    )

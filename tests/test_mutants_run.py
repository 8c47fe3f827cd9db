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

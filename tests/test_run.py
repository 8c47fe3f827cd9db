"""Masking and relaying (invariant 5), with real child processes."""

from __future__ import annotations

import base64
import io
import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authscope import run
from authscope.run import LineRelay, Masker

SECRET = "hunter2-but-longer"
AUTH = base64.b64encode(f"robot$p+ci:{SECRET}".encode()).decode()


def relay_in_chunks(data: bytes, masker: Masker, sizes: list[int]) -> bytes:
    relay, out, i = LineRelay(masker), [], 0
    for size in sizes:
        out.append(relay.feed(data[i : i + size]))
        i += size
    out.append(relay.feed(data[i:]))
    out.append(relay.flush())
    return b"".join(out)


def test_masks_raw_and_base64_forms() -> None:
    m = Masker([SECRET, AUTH])
    line = f"login {SECRET} auth={AUTH}\n".encode()
    assert m(line) == b"login [MASKED] auth=[MASKED]\n"


def test_control_no_masker_shows_the_secret() -> None:
    assert SECRET.encode() in relay_in_chunks(f"pw={SECRET}\n".encode(), Masker([]), [3, 5])


def test_secret_split_across_every_boundary() -> None:
    data = f"before {SECRET} after\nnext {AUTH}\n".encode()
    m = Masker([SECRET, AUTH])
    for cut in range(1, len(data)):
        out = relay_in_chunks(data, m, [cut])
        assert SECRET.encode() not in out and AUTH.encode() not in out
        assert out == b"before [MASKED] after\nnext [MASKED]\n"


def test_byte_by_byte() -> None:
    data = f"{SECRET}{SECRET}\n".encode()
    assert relay_in_chunks(data, Masker([SECRET]), [1] * len(data)) == b"[MASKED][MASKED]\n"


def test_overlong_line_is_relayed_in_pieces_without_leaking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "MAX_LINE", 64)
    data = (b"x" * 100 + SECRET.encode()) * 5
    relay = LineRelay(Masker([SECRET]))
    pieces = [relay.feed(data[i : i + 7]) for i in range(0, len(data), 7)]
    assert any(pieces)  # output flowed before any newline came
    pieces.append(relay.flush())
    out = b"".join(pieces)
    assert SECRET.encode() not in out
    assert out == (b"x" * 100 + b"[MASKED]") * 5


def test_short_secrets_are_not_masked() -> None:
    # Masking "ab" would garble every log line; GitLab requires 8 characters.
    assert Masker(["ab"])(b"about abc") == b"about abc"


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.binary(max_size=50),
    suffix=st.binary(max_size=50),
    secret=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=4, max_size=30),
    sizes=st.lists(st.integers(min_value=1, max_value=20), max_size=20),
)
def test_mask_property(prefix: bytes, suffix: bytes, secret: str, sizes: list[int]) -> None:
    data = prefix + secret.encode() + suffix + b"\n"
    out = relay_in_chunks(data, Masker([secret]), sizes)
    assert secret.encode() not in out


def test_relays_real_child_masked_and_keeps_exit_code() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    script = (
        "import os, sys, time\n"
        "s = os.environ['S']\n"
        "sys.stdout.write('out ' + s[:5]); sys.stdout.flush(); time.sleep(0.05)\n"
        "sys.stdout.write(s[5:] + ' end\\n'); sys.stdout.flush()\n"
        "sys.stderr.write('err ' + s + '\\n')\n"
        "sys.exit(7)\n"
    )
    status = run.run_relayed([sys.executable, "-c", script], dict(os.environ, S=SECRET), Masker([SECRET]), out, err)
    assert status == 7
    assert out.getvalue() == b"out [MASKED] end\n"
    assert err.getvalue() == b"err [MASKED]\n"


def test_child_killed_by_signal_maps_to_128_plus_n() -> None:
    status = run.run_relayed(["sh", "-c", "kill -9 $$"], dict(os.environ), Masker([]), io.BytesIO(), io.BytesIO())
    assert status == 137


def test_background_grandchild_holding_the_pipe_does_not_hang() -> None:
    out = io.BytesIO()
    status = run.run_relayed(["sh", "-c", "(sleep 5 &) ; echo done"], dict(os.environ), Masker([]), out, io.BytesIO())
    assert status == 0 and out.getvalue() == b"done\n"

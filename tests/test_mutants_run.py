"""run behaviour that tests/test_run.py left unpinned (found by mutation testing,
benchmarks/mutation.py; docs/RELIABILITY.md "Mutation testing")."""

from __future__ import annotations

import base64
import os
import subprocess
import time
from typing import IO

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


def test_a_line_longer_than_64_kib_without_a_newline_is_relayed_in_pieces() -> None:
    # Literal sizes, not run.MAX_LINE: the bound itself is what is pinned (a tool
    # printing a progress bar without newlines stays live, and memory bounded).
    relay = run.LineRelay(run.Masker(["s3cret-passw0rd"]))
    assert relay.feed(b"x" * (64 * 1024)) == b""  # up to 64 KiB a line is held whole
    out = relay.feed(b"x" * 1024 + b"s3cret-passw0rd")
    assert out and set(out) == {ord("x")} and len(out) > 64 * 1024, len(out)
    rest = relay.flush()  # what was held back (the secret's possible start) is still masked
    assert rest.endswith(run.MASK) and set(rest.removesuffix(run.MASK)) <= {ord("x")}, rest


def test_two_overlapping_secrets_are_masked_as_one_span() -> None:
    # The second secret starts inside the first and ends after it: one mask over
    # the union, nothing of either left visible; at the start and after another span.
    masker = run.Masker(["abcdefgh", "efghijkl"])
    assert masker(b"<abcdefghijkl>") == b"<" + run.MASK + b">"
    assert masker(b"abcdefgh abcdefghijkl.") == run.MASK + b" " + run.MASK + b"."
    assert masker(b"efghijkl abcdefgh abcdefghijkl") == run.MASK + b" " + run.MASK + b" " + run.MASK


def test_a_secret_is_masked_in_its_url_encoded_form() -> None:
    # A password in a URL (https://user:p%40ss%2Fword@host) is percent-encoded:
    # reserved characters encoded, unreserved ones (letters, digits, -._~) not.
    secret = "p@ss/w0rd-x~"
    masked = run.Masker([secret])(b"https://ci:p%40ss%2Fw0rd-x~@registry.example/v2/")
    assert masked == b"https://ci:" + run.MASK + b"@registry.example/v2/"
    assert run.Masker([secret])(b"path p%40ss/w0rd-x~ kept") == b"path " + run.MASK + b" kept"  # "/" kept as is


def test_text_holding_a_lone_surrogate_is_masked_not_a_crash() -> None:
    # A registry's JSON answer may hold "\ud800", which has no UTF-8 form and no
    # surrogate escape (only U+DC80..U+DCFF have one); mask_known's text gets the
    # bytes "surrogatepass" gives it, the secret in it masked, never a traceback.
    import json

    message = json.loads('"denied: pass\\ud800word s3cret-passw0rd"')
    masked = run.Masker(["s3cret-passw0rd"]).text(message)
    assert masked.encode("utf-8", "surrogateescape") == b"denied: pass\xed\xa0\x80word [MASKED]"


def test_a_long_line_is_relayed_up_to_where_a_secret_could_still_start() -> None:
    # Past 64 KiB without a newline, everything is relayed but the last
    # longest - 1 bytes (a secret's form that long or longer would be seen
    # whole there): as live as masking allows, not a byte held back more.
    masker = run.Masker(["s3cret-passw0rd"])
    relay = run.LineRelay(masker)
    line = b"x" * (64 * 1024 + 1)
    out = relay.feed(line)
    assert len(out) == len(line) - (masker.longest - 1), (len(out), masker.longest)
    assert out + relay.flush() == line


def test_a_secret_inside_the_held_back_tail_does_not_release_a_longer_one_around_it() -> None:
    # The tail of a long line holds a whole short secret, which is the middle of
    # a longer one still being printed: nothing of the longer one may be relayed
    # before it completes (control: the same bytes at once are one mask).
    inner, outer = "inner-s3cret", "prefix-inner-s3cret-suffix"
    masker = run.Masker([inner, outer])
    relay = run.LineRelay(masker)
    out = relay.feed(b"x" * (64 * 1024 + 1) + b"prefix-inner-s3cret")
    out += relay.feed(b"-suffix done\n")
    assert out == b"x" * (64 * 1024 + 1) + run.MASK + b" done\n", out[-60:]
    assert masker(b"prefix-inner-s3cret-suffix done\n") == run.MASK + b" done\n"


def test_a_secret_cut_by_a_piece_boundary_is_held_back_whole_for_one_overlapping_it() -> None:
    # The longest form (a password of "@"s, URL-encoded: "%40" twelve times) ends
    # the piece and crosses the cut; a second secret starts inside it and ends in
    # the next read. Holding the first back whole masks both as one; emitting it
    # masked at once would leave the second one's end visible.
    first, second = "@" * 12, "%40%40-second-s3cret"
    masker = run.Masker([first, second])
    assert masker.longest == 36
    relay = run.LineRelay(masker)
    out = relay.feed(b"x" * (64 * 1024 + 1) + b"%40" * 12)
    assert out == b"x" * (64 * 1024 + 1)  # the span is held back, not emitted yet
    out += relay.feed(b"-second-s3cret.\n")
    assert out == b"x" * (64 * 1024 + 1) + run.MASK + b".\n", out[-60:]


def test_received_signal_is_the_first_signal_of_the_block() -> None:
    import signal
    import time

    with run.signals_handled(raise_when_idle=False):
        assert run.received_signal() is None
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 5
        while not run.stopping() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert run.received_signal() == signal.SIGHUP
    with run.signals_handled(raise_when_idle=False):  # a new block starts with none
        assert run.received_signal() is None


def _stat(pid: int) -> list[bytes]:
    """The fields of /proc/<pid>/stat after the command name, read here, not through run._proc_stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rfind(b")") + 2 :].split()


def _zombie(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(["true"], env=env)
    deadline = time.monotonic() + 10
    while _stat(child.pid)[0] != b"Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _stat(child.pid)[0] == b"Z"
    return child


def test_leftovers_are_the_live_processes_of_the_command_and_of_its_scope() -> None:
    # What a command leaves: everything below it (its pid is `root`) and every
    # process whose environment names its scope; not a process of ours without
    # the scope (another target's tool), not a zombie (already dead), not root.
    # As when a command runs: authscope a subreaper, root its child.
    assert run._become_subreaper()
    scope = "/tmp/authscope-1-2-3-leftovers-test"
    marked_env = dict(os.environ, AUTHSCOPE_SCOPE=scope)
    procs: list[subprocess.Popen[bytes]] = []
    below_root = 0
    try:
        # root leaves a live child and a zombie one (exec'd into sleep, it never waits;
        # the child ends after the exec, so the shell cannot reap it first)
        script = "sleep 30 & echo $!; sleep 0.3 & echo $!; exec sleep 30"
        root = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE)
        procs.append(root)
        assert root.stdout is not None
        below_root, dead_below_root = int(root.stdout.readline()), int(root.stdout.readline())
        deadline = time.monotonic() + 10
        while _stat(dead_below_root)[0] != b"Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        marked = subprocess.Popen(["sleep", "30"], env=marked_env)
        unmarked = subprocess.Popen(["sleep", "30"])
        zombie = _zombie(marked_env)
        procs += [marked, unmarked, zombie]
        found = run._leftovers(scope.encode(), root.pid)
        assert below_root in found and marked.pid in found, found
        assert unmarked.pid not in found and root.pid not in found, found
        assert zombie.pid not in found and dead_below_root not in found, found
        assert found[marked.pid] == int(_stat(marked.pid)[19])  # its start time, for _kill's reuse check
    finally:
        if below_root:
            os.kill(below_root, 9)  # it holds root's stdout open
        for proc in procs:
            proc.kill()
            proc.communicate()


def test_reap_collects_an_ended_leftover_and_then_forgets_it() -> None:
    zombie = _zombie()
    info = run._proc_stat(zombie.pid)
    assert info is not None and info[0] == b"Z"
    ended = {zombie.pid: info[2]}
    run._reap(ended)
    assert not os.path.exists(f"/proc/{zombie.pid}")  # reaped: no zombie left
    run._reap(ended)
    assert ended == {}  # gone: nothing left to wait for
    zombie.wait()


class _SkipFirst:
    """A children file whose read leaves its first pid out (what a sibling's exit can cause)."""

    def __init__(self, f: IO[bytes], skipped: list[int]) -> None:
        self.f, self.skipped = f, skipped

    def __enter__(self) -> _SkipFirst:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()

    def read(self) -> bytes:
        pids = self.f.read().split()
        if pids:
            self.skipped.append(int(pids[0]))
        return b" ".join(pids[1:])


def test_children_of_our_own_process_are_read_twice_for_a_child_the_kernel_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # /proc/<pid>/task/<tid>/children lists by position: a sibling exiting
    # meanwhile makes a read skip one. Injected here: the first read of our own
    # children files that lists any leaves one out; the union of two reads has it.
    import builtins

    me = os.getpid()
    kids = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    real_open = builtins.open
    skipped: list[int] = []

    def opening(path: str, mode: str = "r") -> object:
        f = real_open(path, mode)
        if not skipped and path.startswith(f"/proc/{me}/task/") and path.endswith("/children"):
            return _SkipFirst(f, skipped)
        return f

    try:
        monkeypatch.setattr(run, "open", opening, raising=False)
        children = run._child_pids(me)
        assert skipped, "no children file listed a child"
        assert {kid.pid for kid in kids} <= set(children) and skipped[0] in children, (children, skipped)
    finally:
        for kid in kids:
            kid.kill()
            kid.wait()


def test_end_tree_ends_what_a_command_left_and_counts_it() -> None:
    # `sleep 30 &` in a shell that is done: orphaned to us (the subreaper), found
    # by its scope, ended with SIGTERM, reaped, counted once; then nothing is left.
    assert run._become_subreaper()
    scope = "/tmp/authscope-1-2-3-end-tree-test"
    root = subprocess.Popen(
        ["sh", "-c", "sleep 30 >/dev/null & echo $!"],
        stdout=subprocess.PIPE,
        env=dict(os.environ, AUTHSCOPE_SCOPE=scope),
    )
    out, _ = root.communicate()
    left = int(out)
    try:
        assert _stat(left)[1] == str(os.getpid()).encode()  # control: it is alive, and ours now
        started = time.monotonic()
        assert run._end_tree(scope.encode(), root.pid) == 1
        assert time.monotonic() - started < run.LEFTOVER_GRACE  # SIGTERM was enough: no wait for SIGKILL
        assert not os.path.exists(f"/proc/{left}")  # ended and reaped
        assert run._end_tree(scope.encode(), root.pid) == 0
    finally:
        if os.path.exists(f"/proc/{left}"):
            os.kill(left, 9)


def test_end_tree_kills_a_leftover_that_ignores_sigterm() -> None:
    # An ignored SIGTERM survives exec: the leftover outlives the grace, is
    # stopped, then SIGKILLed, reaped and counted once.
    assert run._become_subreaper()
    scope = "/tmp/authscope-1-2-3-end-tree-kill-test"
    root = subprocess.Popen(
        ["sh", "-c", "(trap '' TERM; exec sleep 30) >/dev/null & echo $!"],
        stdout=subprocess.PIPE,
        env=dict(os.environ, AUTHSCOPE_SCOPE=scope),
    )
    out, _ = root.communicate()
    left = int(out)
    try:
        time.sleep(0.2)  # the subshell has exec'd sleep
        started = time.monotonic()
        assert run._end_tree(scope.encode(), root.pid) == 1
        assert time.monotonic() - started >= run.LEFTOVER_GRACE  # control: SIGTERM alone did not end it
        assert not os.path.exists(f"/proc/{left}")
    finally:
        if os.path.exists(f"/proc/{left}"):
            os.kill(left, 9)


def _ignoring_term(**popen: object) -> subprocess.Popen[bytes]:
    """A child that ignores SIGTERM (and not SIGHUP), once it says it is ready."""
    child = subprocess.Popen(["sh", "-c", "trap '' TERM; echo ready; exec sleep 30"], stdout=subprocess.PIPE, **popen)  # type: ignore[call-overload]
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    return child


def test_without_proc_a_group_ignoring_sigterm_is_probed_not_hung_up_then_sigkilled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Where there is no /proc (the module decides it once, in _TREE), a command
    # leads its own group and what it left gets TERM, then, while the grace
    # runs, only probes (signal 0) until SIGKILL. A probe that is a real signal
    # (SIGHUP) would end a process that ignores TERM before the grace is over.
    import signal

    monkeypatch.setattr(run, "_TREE", False)
    monkeypatch.setattr(run, "LEFTOVER_GRACE", 0.3)
    child = _ignoring_term(start_new_session=True)
    try:
        started = time.monotonic()
        run.end_leftovers(child, True, b"/tmp/authscope-1-2-3-no-proc-test")
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert time.monotonic() - started >= 0.3  # it had the whole grace
    finally:
        child.kill()
        child.communicate()
    control = _ignoring_term()  # control: a SIGHUP alone ends such a process
    try:
        control.send_signal(signal.SIGHUP)
        assert control.wait(timeout=10) == -signal.SIGHUP
    finally:
        control.kill()
        control.communicate()


def test_sweep_gives_a_process_in_a_dead_scope_its_sigterm_grace(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sweep's end_processes_in sends SIGTERM and waits (up to LEFTOVER_GRACE)
    # for the process to exit before SIGKILL: a tool that cleans up on SIGTERM
    # (here 0.2 s, then exit 0) gets to finish.
    import signal
    import sys

    scope = f"{tmp_path}/authscope-1-2-3-sweep-grace-test"
    done = f"{tmp_path}/cleaned-up"
    script = (
        "import signal, sys, time\n"
        "def term(*_):\n"
        "    time.sleep(0.2)\n"
        f"    open({done!r}, 'w').close()\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, env=dict(os.environ, AUTHSCOPE_SCOPE=scope)
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        assert run.end_processes_in([scope]) == {scope: 1}
        assert child.wait(timeout=10) == 0 and os.path.exists(done)  # its clean-up ran to the end
    finally:
        child.kill()
        child.communicate()
    assert run.end_processes_in([scope]) == {}  # nothing is left in that scope
    # control: without the grace the same tool is SIGKILLed in its clean-up
    os.unlink(done)
    monkeypatch.setattr(run, "LEFTOVER_GRACE", 0.0)
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, env=dict(os.environ, AUTHSCOPE_SCOPE=scope)
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        assert run.end_processes_in([scope]) == {scope: 1}
        assert child.wait(timeout=10) == -signal.SIGKILL and not os.path.exists(done)
    finally:
        child.kill()
        child.communicate()


def test_a_captured_command_is_ended_at_its_deadline_and_reported_timed_out() -> None:
    lines: list[bytes] = []
    started = time.monotonic()
    status, timed_out = run.run_captured(
        ["sleep", "20"], dict(os.environ), run.Masker([]), lambda b, _: lines.append(b), time.monotonic() + 0.3
    )
    assert timed_out and status != 0
    assert time.monotonic() - started < 10  # ended at the deadline, not when it was done
    # control: the same command within its deadline is not timed out
    assert run.run_captured(
        ["sleep", "0.1"], dict(os.environ), run.Masker([]), lambda b, _: None, time.monotonic() + 20
    ) == (0, False)


def test_a_captured_command_ignoring_sigterm_is_sigkilled_kill_grace_after_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import signal

    monkeypatch.setattr(run, "KILL_GRACE", 0.3)
    # SIGTERM ignored from birth (an ignored signal survives fork and exec), so
    # no start-up race with the 0.2 s deadline however loaded the machine is.
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        started = time.monotonic()
        status, timed_out = run.run_captured(
            ["sleep", "20"], dict(os.environ), run.Masker([]), lambda b, _: None, time.monotonic() + 0.2
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert timed_out and status == 128 + signal.SIGKILL, status
    assert 0.5 <= time.monotonic() - started < 10  # the deadline, then the whole grace, then SIGKILL

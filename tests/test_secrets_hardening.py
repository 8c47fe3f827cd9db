"""Secrets hardening (issue 12 items 9, 11, 12; issue 20 item 2), in process
and with the real CLI: every form a secret takes is masked, secret and CA
files are read safely, and bytes that are not UTF-8 are a clear error.

Every secret here is an obviously fake test value.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authscope import cli, credentials, dockerconfig, fanout, gitlab, registry, run, targets, tools
from authscope import report as R
from authscope.base import Base
from authscope.errors import ConfigError, SecretSourceError, TargetsFileError
from authscope.run import MASK, LineRelay, Masker
from authscope.scope import open_scope
from tests.gitlab_fake import JOB_TOKEN, FakeGitLab
from tests.helpers import AUTHSCOPE, LOCAL_PASSWORD, write_config

SECRET = 'test-secret-p@ss/w:rd&<x> "q" 0009'
# What GCR's _json_key password looks like: a whole JSON document (fake).
JSON_KEY = json.dumps(
    {
        "type": "service_account",
        "project_id": "authscope-test-project",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": "-----BEGIN PRIVATE KEY-----\nTESTKEYLINEONEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
        "TESTKEYLINETWOBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB\n-----END PRIVATE KEY-----\n",
        "client_email": "fake-pusher@authscope-test-project.iam.gserviceaccount.com",
    },
    indent=2,
)


def relay(data: bytes, masker: Masker, size: int) -> bytes:
    r = LineRelay(masker)
    out = [r.feed(data[i : i + size]) for i in range(0, len(data), size)]
    out.append(r.flush())
    return b"".join(out)


@pytest.fixture
def _clean_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh set of remembered secrets for the test."""
    monkeypatch.setattr(run, "_known", set())
    monkeypatch.setattr(run, "_known_masker", None)


# -- item 9: every form of a secret -------------------------------------------------------------


def test_overlapping_secrets_mask_the_union() -> None:
    a, b = "abcdefgh", "efghijkl"
    assert Masker([a, b])(b"<< abcdefghijkl >>") == b"<< [MASKED] >>"
    assert Masker([a, b])(b"<< efghijklabcdefgh >>") == b"<< [MASKED][MASKED] >>"  # adjacent: two


def test_control_sequential_replace_leaves_a_suffix() -> None:
    # What masking did before: replace each secret in turn, longest first.
    data = b"<< abcdefghijkl >>"
    for secret in (b"abcdefgh", b"efghijkl"):
        data = data.replace(secret, MASK)
    assert data == b"<< [MASKED]ijkl >>"  # the last four characters of the second secret


@settings(max_examples=200, deadline=None)
@given(
    a=st.text(alphabet="abcdefghijklmnop", min_size=8, max_size=20),
    b=st.text(alphabet="abcdefghijklmnop", min_size=8, max_size=20),
    overlap=st.integers(min_value=1, max_value=7),
    size=st.integers(min_value=1, max_value=9),
)
def test_overlap_property(a: str, b: str, overlap: int, size: int) -> None:
    b = a[-overlap:] + b  # b starts with the end of a
    text = f"<< {a}{b[overlap:]} >>\n".encode()
    assert relay(text, Masker([a, b]), size) == b"<< [MASKED] >>\n"


def test_every_line_of_a_multi_line_secret_is_masked() -> None:
    masker = Masker([JSON_KEY])
    printed = (JSON_KEY + "\n").encode()  # `cat key.json`: line by line
    out = relay(printed, masker, 5).decode()
    assert [line.strip() for line in out.splitlines()] == ["{", *["[MASKED]"] * 5, "}"]
    # The private key as a tool would print it once decoded: each PEM line.
    pem = json.loads(JSON_KEY)["private_key"]
    lines = relay(pem.encode(), masker, 3).decode().splitlines()
    assert lines[1:3] == ["[MASKED]"] * 2 and not any("TESTKEY" in line for line in lines)


def test_control_a_multi_line_secret_is_never_whole_in_one_line() -> None:
    assert all(JSON_KEY not in line for line in JSON_KEY.splitlines())
    assert Masker([JSON_KEY]).secrets  # forms exist; the test above shows they are the lines


def _forms_of(secret: str) -> dict[str, str]:
    escaped = json.dumps(secret, ensure_ascii=False)[1:-1]
    return {
        "url": quote(secret),
        "url-all": quote(secret, safe=""),
        "url-plus": quote_plus(secret),
        "json": json.dumps(secret)[1:-1],
        "json-utf8": escaped,
        "json-go": escaped.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"),
        "basic": base64.b64encode(f"robot$x+ci:{secret}".encode()).decode(),
        "basic-1": base64.b64encode(f"ab:{secret}".encode()).decode(),
        "basic-2": base64.b64encode(f"abc:{secret}".encode()).decode(),
        "base64": base64.b64encode(secret.encode()).decode(),
    }


FORMS = sorted(_forms_of(SECRET + "é"))


@pytest.mark.parametrize("form", FORMS)
def test_encoded_forms_are_masked(form: str) -> None:
    secret = SECRET + "é"
    text = _forms_of(secret)[form]
    assert secret not in text  # control: masking the raw secret alone would miss it
    out = Masker([secret]).text(f"got {text} here")
    assert MASK.decode() in out
    core = text[4:-4]  # whatever the alignment, the middle of the form is gone
    assert core not in out


@pytest.mark.parametrize("form", FORMS)
def test_control_raw_only_masking_shows_every_form(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "forms", lambda secret: {secret.encode()})  # what masking did before
    secret = SECRET + "é"
    text = _forms_of(secret)[form]
    assert Masker([secret]).text(f"got {text} here") == f"got {text} here"


def test_relay_holds_back_the_longest_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "MAX_LINE", 16)
    form = quote(SECRET, safe="").encode()  # longer than the secret itself
    assert len(form) > len(SECRET)
    data = b"x" * 100 + form + b" end"
    for size in (1, 7, 13, 64):
        out = relay(data, Masker([SECRET]), size)
        assert out == b"x" * 100 + b"[MASKED] end"


def test_control_holding_back_only_the_raw_length_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "MAX_LINE", 16)
    form = quote(SECRET, safe="").encode()
    masker = Masker([SECRET])
    masker.longest = len(SECRET)  # the hold-back of a raw-secret-only masker
    assert form in relay(b"x" * 100 + form + b" end", masker, 7)


def test_relay_never_cuts_between_overlapping_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "MAX_LINE", 64)
    a, b = "abcdefgh", "efghijklmnopqrst"
    data = b"x" * 100 + b"abcdefghijklmnopqrst end"
    for size in range(1, 30):
        out = relay(data, Masker([a, b]), size)
        assert out == b"x" * 100 + b"[MASKED] end", size


def test_a_secret_that_is_not_utf8_is_masked_as_its_bytes() -> None:
    raw = b"test-\xff\xfe-secret-0010"
    value = raw.decode("utf-8", "surrogateescape")  # as os.environ holds it
    assert Masker([value])(b"see " + raw + b"\n") == b"see [MASKED]\n"


# -- short secrets --------------------------------------------------------------------------------


def test_short_password_warns_once_naming_the_variable(env: dict[str, str], main: Any, capsys: Any) -> None:
    env["SHORT_PW"] = "abc12"
    assert main("login", "registry.example", "-u", "ci", "--password-env", "SHORT_PW") == 0
    err = capsys.readouterr().err
    assert err.count("shorter than 8 characters") == 1
    assert "--password-env SHORT_PW" in err and "abc12" not in err


def test_control_long_password_gives_no_warning(env: dict[str, str], main: Any, capsys: Any) -> None:
    assert main("login", "registry.example", "-u", "ci", "--password-env", "LOCAL_PASSWORD") == 0
    assert "shorter than" not in capsys.readouterr().err


def test_short_target_passwords_warn_naming_each_target(tmp_path: Path) -> None:
    path = tmp_path / "authscope.yml"
    (tmp_path / "pw").write_text("tiny\n")
    path.write_text(
        'source: local.example/app:1.0\ntags: ["1.0"]\ntargets:\n'
        "  - {name: a, registry: a.example, repository: app, username: u, password_env: A_PW}\n"
        "  - {name: b, registry: b.example, repository: app, username: u, password_file: pw}\n"
        "  - {name: c, registry: c.example, repository: app, username: u, password_env: C_PW}\n"
    )
    spec = targets.load(str(path), {})
    warnings: list[str] = []
    fanout.resolve_credentials(spec, {"A_PW": "a-b-c", "C_PW": "long-enough-test-pw"}, warn=warnings.append)
    assert len(warnings) == 2
    assert "targets[a].password_env A_PW" in warnings[0] and "a-b-c" not in warnings[0]
    assert f"targets[b].password_file {tmp_path / 'pw'}" in warnings[1] and "can't mask it either" not in warnings[1]


# -- what authscope itself prints and writes --------------------------------------------------------


def test_messages_and_reports_are_masked_with_every_secret_read(_clean_known: None, capsys: Any) -> None:
    run.remember([SECRET])
    cli.say(f"error: the registry said {quote(SECRET, safe='')}")
    assert capsys.readouterr().err == "authscope: error: the registry said [MASKED]\n"
    result = R.Result(
        "t", "r.example", "app", "crane", ("1.0",), R.FAILED, error=f"said {SECRET}", output=(json.dumps(SECRET),)
    )
    report = R.Report("src", None, "crane", (result,), 0.0, 1.0)
    masked = fanout.masked_report(report, run.mask_known)
    for text in (R.to_json(masked), R.junit(masked).decode(), R.result_text(masked.results[0])):
        assert SECRET not in text and json.dumps(SECRET)[1:-1] not in text
    # Control: the same report, unmasked, carries it.
    assert json.dumps(SECRET)[1:-1] in R.to_json(report)


def test_gitlab_token_echoed_in_an_error_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with FakeGitLab(forbid={"create_release"}, echo_token=True) as fake:
        environ = {
            "CI_SERVER_URL": fake.url,
            "CI_PROJECT_ID": str(fake.project_id),
            "CI_COMMIT_TAG": "1.0",
            "CI_JOB_TOKEN": JOB_TOKEN,
        }
        settings_ = gitlab.settings_from_env(environ, None, release=True)
        result = R.Result("t", "r.example", "app", "crane", ("1.0",), R.OK, digests={"1.0": "sha256:" + "1" * 64})
        report = R.Report("src", "sha256:" + "1" * 64, "crane", (result,), 0.0, 1.0)
        with pytest.raises(gitlab.GitLabError) as info:
            gitlab.publish_release_links(settings_, report)
        message = str(info.value)
        assert "[MASK" in message
        assert not any(JOB_TOKEN[i : i + 6] in message for i in range(len(JOB_TOKEN) - 5))  # no piece of it
        # Control: the fake really echoes the token in its answer.
        request = urllib.request.Request(
            f"{fake.url}/api/v4/projects/{fake.project_id}/releases",
            data=b'{"tag_name": "1.0"}',
            headers={"JOB-TOKEN": JOB_TOKEN, "Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        assert JOB_TOKEN in answer.value.read().decode()


def test_gitlab_token_that_cant_go_in_a_header_is_refused_by_name() -> None:
    environ = {"CI_SERVER_URL": "https://gitlab.example", "CI_PROJECT_ID": "1", "CI_COMMIT_TAG": "1.0"}
    for token in ("glpat-\udcff-fake-token", "glpat-fake\r\nX-Evil: 1"):
        with pytest.raises(gitlab.GitLabSettingsError) as info:
            gitlab.settings_from_env({**environ, "MY_TOKEN": token}, "MY_TOKEN", release=True)
        assert "$MY_TOKEN" in str(info.value) and "fake" not in str(info.value)


# -- item 9 with the real CLI: a _json_key password, from a variable and from a file --------------


def _dump_script(tmp_path: Path) -> Path:
    script = tmp_path / "dump.py"
    script.write_text(
        "import json, os, sys, urllib.parse\n"
        "pw = os.environ.get('KEY') or open(sys.argv[1]).read()\n"
        "print(pw)\n"  # line by line
        "print(json.dumps({'password': pw}))\n"
        "print(urllib.parse.quote(pw, safe=''))\n"
        "print(open(os.path.join(os.environ['DOCKER_CONFIG'], 'config.json')).read())\n"
    )
    return script


@pytest.mark.parametrize("source", ["env", "file"])
def test_json_key_password_is_accepted_and_masked(source: str, env: dict[str, str], tmp_path: Path) -> None:
    key_file = tmp_path / "key.json"
    key_file.write_text(JSON_KEY + "\n")
    env = dict(env, KEY=JSON_KEY) if source == "env" else env
    how = ["--password-env", "KEY"] if source == "env" else ["--password-file", str(key_file)]
    args = ["exec", "--registry", "gcr.io", "-u", "_json_key", *how, "--", sys.executable]
    result = subprocess.run(
        [*AUTHSCOPE, *args, str(_dump_script(tmp_path)), str(key_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[MASKED]" in out
    for line in JSON_KEY.splitlines():
        if len(line.strip()) >= run.MIN_SECRET:
            assert line.strip() not in out
    for piece in ("TESTKEYLINEONE", "authscope-test-project", "0123456789abcdef"):
        assert piece not in out + result.stderr


# -- item 12: bytes that are not UTF-8 ----------------------------------------------------------------

BAD = b"test-\xff-not-utf8-0011"


def _cli(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    if "input" not in kw:
        kw["stdin"] = subprocess.DEVNULL
    return subprocess.run([*AUTHSCOPE, *args], env=env, capture_output=True, timeout=60, **kw)


def _clean(result: subprocess.CompletedProcess[bytes]) -> None:
    output = result.stdout + result.stderr
    assert b"Traceback" not in output and b"internal error" not in output
    for piece in (b"not-utf8-0011", b"\\xff", b"\\udcff", b"\xff"):
        assert piece not in output


@pytest.mark.parametrize(
    "args",
    [
        ["login", "registry.example", "-u", "ci", "--password-env", "BAD_PW"],
        ["login", "registry.example", "--username-env", "BAD_PW", "--password-env", "LOCAL_PASSWORD"],
        ["exec", "--registry", "registry.example", "-u", "ci", "--password-env", "BAD_PW", "--", "true"],
    ],
)
def test_non_utf8_variable_is_exit_2_naming_it(args: list[str], env: dict[str, str]) -> None:
    environb = {k.encode(): v.encode() for k, v in env.items()}
    environb[b"BAD_PW"] = BAD
    result = _cli(args, environb)  # type: ignore[arg-type]
    assert result.returncode == 2, result.stderr
    assert b"BAD_PW" in result.stderr and b"not UTF-8" in result.stderr
    _clean(result)


def test_control_encoding_such_a_value_raises_quoting_it() -> None:
    value = BAD.decode("utf-8", "surrogateescape")
    with pytest.raises(UnicodeEncodeError) as info:
        f"ci:{value}".encode()
    assert "\\udcff" in str(info.value)  # a traceback would show part of the password


def test_non_utf8_on_stdin_is_exit_2(env: dict[str, str]) -> None:
    result = _cli(["login", "registry.example", "-u", "ci", "--password-stdin"], env, input=BAD + b"\n")
    assert result.returncode == 2 and b"--password-stdin" in result.stderr and b"not UTF-8" in result.stderr
    _clean(result)


def test_non_utf8_target_variables_are_problems_naming_them(tmp_path: Path) -> None:
    path = tmp_path / "authscope.yml"
    path.write_text(
        'source: local.example/app:1.0\ntags: ["1.0"]\ntargets:\n'
        "  - {name: a, registry: a.example, repository: app, username: u, password_env: A_PW}\n"
        "  - {name: b, registry: b.example, repository: app, username_env: B_USER, password_env: B_PW}\n"
    )
    spec = targets.load(str(path), {})
    bad = BAD.decode("utf-8", "surrogateescape")
    with pytest.raises(TargetsFileError) as info:
        fanout.resolve_credentials(spec, {"A_PW": bad, "B_USER": bad, "B_PW": "test-fine-password"})
    found = {p.where: p.message for p in info.value.problems}
    assert set(found) == {"targets[a].password_env", "targets[b].username_env"}
    assert "$A_PW" in found["targets[a].password_env"] and "$B_USER" in found["targets[b].username_env"]
    assert "not-utf8" not in str(info.value) and "\udcff" not in str(info.value)


def test_encode_auth_never_raises_a_unicode_error() -> None:
    with pytest.raises(SecretSourceError) as info:
        dockerconfig.encode_auth("ci", BAD.decode("utf-8", "surrogateescape"))
    assert "not-utf8" not in str(info.value)


# -- item 12: config.json replaced by a directory between two commands --------------------------------


@pytest.fixture
def base(env: dict[str, str]) -> Base:
    directory = Path(env["DOCKER_CONFIG"])
    write_config(directory, {"auths": {"gitlab.local:4567": dockerconfig.auth_entry("ci", LOCAL_PASSWORD)}})
    return Base(str(directory))


def test_scope_config_made_a_directory_is_laid_afresh(base: Base, env: dict[str, str]) -> None:
    entry = dockerconfig.auth_entry("robot", "test-target-password-0012")
    with open_scope(base, "harbor.example", entry, environ=env) as (scope, _):
        config = Path(scope.config_file)
        config.unlink()
        (config / "nested").mkdir(parents=True)  # what the first tag's command left
        (config / "nested" / "file").write_text("x")
        # Control: what reset did before meets a directory it can't unlink.
        with pytest.raises(IsADirectoryError):
            os.unlink(config)
        scope.reset()
        assert config.is_file() and config.read_bytes() == scope.config
    assert not scope.damage


def test_base_config_made_a_directory_is_reported_not_a_traceback(base: Base, env: dict[str, str]) -> None:
    entry = dockerconfig.auth_entry("robot", "test-target-password-0012")
    with open_scope(base, "harbor.example", entry, environ=env) as (scope, _):
        os.unlink(base.path)
        os.mkdir(base.path)  # a tool outside its scope
        # Control: the guard's fallback read of a config that doesn't parse.
        with pytest.raises(IsADirectoryError), open(base.path, "rb"):
            pass
    assert scope.damage and all(d.failed for d in scope.damage if d.restorable)
    assert any("could NOT be restored" in d.describe() for d in scope.damage)


def test_base_config_made_a_fifo_is_restored_without_waiting(base: Base, env: dict[str, str]) -> None:
    before = json.loads(Path(base.path).read_text())
    entry = dockerconfig.auth_entry("robot", "test-target-password-0012")
    started = time.monotonic()
    with open_scope(base, "harbor.example", entry, environ=env) as (scope, _):
        os.unlink(base.path)
        os.mkfifo(base.path)  # a tool outside its scope; a plain open() would wait for a writer
    assert time.monotonic() - started < 10
    assert scope.damage and all(d.restorable and not d.failed for d in scope.damage)
    assert json.loads(Path(base.path).read_text())["auths"] == before["auths"]


def test_config_that_is_a_fifo_is_a_config_error_at_once(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    os.mkfifo(path)
    with pytest.raises(ConfigError) as info:
        dockerconfig.read_config(str(path))
    assert "not a regular file" in str(info.value)


# -- issue 20 item 2: secret and CA files are read safely ------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pw.fifo"
    os.mkfifo(path)
    yield path


def test_fifo_is_refused_at_once(fifo: Path) -> None:
    started = time.monotonic()
    with pytest.raises(SecretSourceError) as info:
        credentials.read_file(str(fifo), "--password-file x", credentials.PASSWORD_LIMIT)
    assert "FIFO" in str(info.value) and time.monotonic() - started < 1


def test_control_opening_a_fifo_waits_for_a_writer(fifo: Path) -> None:
    done = threading.Event()
    thread = threading.Thread(target=lambda: (open(fifo, "rb").close(), done.set()), daemon=True)
    thread.start()
    assert not done.wait(0.5)  # still blocked in open()
    with open(fifo, "wb"):  # let it go
        pass
    assert done.wait(5)


def test_devices_and_directories_are_refused(tmp_path: Path) -> None:
    for path, why in (
        ("/dev/zero", "character device"),
        ("/dev/null", "character device"),
        (str(tmp_path), "directory"),
    ):
        with pytest.raises(SecretSourceError) as info:
            credentials.read_file(path, path, credentials.PASSWORD_LIMIT)
        assert why in str(info.value)
    # Control: /dev/zero gives as much as is asked for; a plain f.read() never ends.
    with open("/dev/zero", "rb") as f:
        assert len(f.read(1 << 20)) == 1 << 20


def test_link_to_proc_environ_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "pw"
    link.symlink_to("/proc/self/environ")
    with pytest.raises(SecretSourceError) as info:
        credentials.read_file(str(link), str(link), credentials.PASSWORD_LIMIT)
    assert "kernel file" in str(info.value)
    # Control: read plainly, the link hands over the reader's whole environment.
    shown = subprocess.run(["cat", str(link)], env={"OTHER": "test-other-secret-0013"}, capture_output=True)
    assert b"test-other-secret-0013" in shown.stdout


def test_special_file_that_stats_empty_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not through /proc's name: a kernel file met some other way (a bind mount).
    monkeypatch.setattr(credentials, "_KERNEL_TREES", ())
    with pytest.raises(SecretSourceError) as info:
        credentials.read_file("/proc/self/status", "x", credentials.PASSWORD_LIMIT)
    assert "special file" in str(info.value)


def test_size_cap(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"x" * credentials.PASSWORD_LIMIT)
    assert len(credentials.read_file(str(path), "x", credentials.PASSWORD_LIMIT)) == credentials.PASSWORD_LIMIT
    path.write_bytes(b"x" * (credentials.PASSWORD_LIMIT + 1))
    with pytest.raises(SecretSourceError) as info:
        credentials.read_file(str(path), "x", credentials.PASSWORD_LIMIT)
    assert "larger than 64 KiB" in str(info.value)


def test_standard_input_as_a_file_points_to_password_stdin() -> None:
    with pytest.raises(SecretSourceError) as info:
        credentials.read_file("/dev/stdin", "--password-file /dev/stdin", credentials.PASSWORD_LIMIT)
    assert "use --password-stdin" in str(info.value)


def test_regular_file_through_a_symlink_is_read(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"test-linked-pw-0014\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert credentials.read_file(str(tmp_path / "link"), "x", 100) == b"test-linked-pw-0014\n"


def test_password_file_fifo_cli_exits_2_at_once(fifo: Path, env: dict[str, str]) -> None:
    started = time.monotonic()
    result = _cli(["login", "registry.example", "-u", "ci", "--password-file", str(fifo)], env)
    assert result.returncode == 2 and b"FIFO" in result.stderr and str(fifo).encode() in result.stderr
    assert time.monotonic() - started < 20


def _targets(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "authscope.yml"
    path.write_text(
        'source: local.example/app:1.0\ntags: ["1.0"]\ntargets:\n'
        f"  - {{name: a, registry: a.example, repository: app, username: u, {extra}}}\n"
    )
    return path


def test_fanout_password_file_fifo_is_a_config_error(fifo: Path, tmp_path: Path, env: dict[str, str]) -> None:
    path = _targets(tmp_path, f"password_file: {fifo}")
    result = _cli(["fanout", "-f", str(path), "--dry-run"], env)
    assert result.returncode == 2, result.stderr
    assert b"targets[a].password_file" in result.stderr and b"FIFO" in result.stderr


def test_ca_file_fifo_or_device_is_refused_when_loading(fifo: Path, tmp_path: Path, env: dict[str, str]) -> None:
    for ca in (fifo, "/dev/zero"):
        path = _targets(tmp_path, f"password_env: LOCAL_PASSWORD, ca_file: {ca}")
        result = _cli(["fanout", "-f", str(path), "--dry-run"], env)
        assert result.returncode == 2, result.stderr
        assert b"ca_file" in result.stderr
        assert b"named pipe (FIFO)" in result.stderr or b"is a character device" in result.stderr


def test_ca_file_swapped_for_a_fifo_after_loading_is_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    spec = targets.load(str(_targets(tmp_path, f"password_env: X, ca_file: {ca}")), {})
    ca.unlink()
    os.mkfifo(ca)
    scope = tmp_path / "scope"
    scope.mkdir()
    for tool in ("crane", "skopeo", "regctl"):
        target = dataclasses.replace(spec.targets[0], tool=tool)
        with pytest.raises(SecretSourceError) as info:
            tools.prepare(str(scope), spec.source, target)
        assert "FIFO" in str(info.value)
    with pytest.raises(SecretSourceError):
        registry.Session("a.example", ca_file=str(ca))


def test_login_verify_ca_file_fifo_exits_2(fifo: Path, env: dict[str, str]) -> None:
    args = ["login", "127.0.0.1:1", "-u", "ci", "--password-env", "LOCAL_PASSWORD", "--verify", "--ca-file", str(fifo)]
    result = _cli(args, env)
    assert result.returncode == 2 and b"FIFO" in result.stderr


def test_password_stdin_is_capped(env: dict[str, str]) -> None:
    result = _cli(
        ["login", "registry.example", "-u", "ci", "--password-stdin"],
        env,
        input=b"y" * (credentials.PASSWORD_LIMIT + 10),
    )
    assert result.returncode == 2 and b"64 KiB" in result.stderr


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_waiting_on_password_stdin_is_interruptible(signum: int, code: int, env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [*AUTHSCOPE, "login", "registry.example", "-u", "ci", "--password-stdin"],
        env=env,
        stdin=subprocess.PIPE,  # open, and never written: a wait forever
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)
        assert proc.poll() is None  # control: it is waiting for the password
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert b"Traceback" not in err

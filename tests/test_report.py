"""Reports: summary table, GitLab sections, JUnit XML, dotenv, versioned JSON; exit codes."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from authscope import report as R

DIGEST = "sha256:" + "0f" * 32
OTHER = "sha256:" + "e1" * 32


def result(name: str, status: str = R.OK, **kw: Any) -> R.Result:
    fields: dict = dict(
        name=name,
        registry=f"{name}.example:5000",
        repository="release/app",
        tool="crane",
        tags=("1.0", "latest"),
        status=status,
    )
    if status == R.OK:
        fields.update(digests={"1.0": DIGEST, "latest": DIGEST}, attempts=1, duration=1.25)
    fields.update(kw)
    return R.Result(**fields)


def report(results: list[R.Result], **kw: Any) -> R.Report:
    fields: dict = dict(
        source="gitlab.local:4567/group/app:1.0",
        source_digest=DIGEST,
        tool="crane",
        results=tuple(results),
        started=1_800_000_000.0,
        duration=12.5,
    )
    fields.update(kw)
    return R.Report(**fields)


MIXED = [
    result("harbor-1"),
    result(
        "harbor-2",
        R.FAILED,
        attempts=1,
        duration=0.5,
        error="harbor-2.example:5000 rejected the credentials (HTTP 401)",
        hint="check username 'ci' and password_env HARBOR_2_PASSWORD",
        output=("Error: GET https://harbor-2.example:5000/v2/: UNAUTHORIZED", "bell\x07 and escape\x1b[31m"),
    ),
    result("staging", R.SKIPPED, error="not started: --fail-fast after an earlier failure"),
    result("slow", R.INTERRUPTED, attempts=1, error="copy harbor: interrupted (exit 143)"),
]


# -- status and counts --------------------------------------------------------------------


def test_status() -> None:
    assert report([result("a"), result("b")]).status == "success"
    assert report(MIXED).status == "partial"
    assert report([result("a", R.FAILED)]).status == "failed"
    assert report([result("a")], signal=15).status == "interrupted"
    r = report(MIXED)
    assert (r.count(R.OK), r.count(R.FAILED), r.count(R.SKIPPED), r.count(R.INTERRUPTED)) == (1, 1, 1, 1)
    assert not r.restored
    assert report([result("a", restored=("auths entry 'x' was removed ...; restored",))]).restored


# -- text ---------------------------------------------------------------------------------


def test_summary_table() -> None:
    text = R.summary_table(report(MIXED))
    lines = text.splitlines()
    assert lines[0] == (
        "fan-out of gitlab.local:4567/group/app:1.0 (sha256:0f0f0f0f0f0f): partial, 1/4 targets landed in 12.5s"
    )
    assert lines[1].split() == ["target", "tags", "digest", "refs", "time", "tries", "status"]
    assert set(lines[2].replace(" ", "")) == {"-"}
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert list(rows) == ["harbor-1", "harbor-2", "staging", "slow"]
    assert rows["harbor-1"] == ["harbor-1", "1.0,latest", DIGEST[:19], "0", "1.2s", "1", "OK"]
    assert rows["harbor-2"][2:] == ["-", "0", "0.5s", "1", "FAILED"]
    assert rows["staging"][-1] == "SKIPPED" and rows["slow"][-1] == "INTERRUPTED"
    # Columns line up: every row's status starts where the header's does.
    col = lines[1].index("status")
    assert all(line[col:].split()[0] in ("OK", "FAILED", "SKIPPED", "INTERRUPTED") for line in lines[3:])
    assert all(line == line.rstrip() for line in lines)


def test_summary_without_source_digest() -> None:
    text = R.summary_table(report([result("a", R.FAILED, error="x")], source_digest=None, error="x"))
    assert text.startswith("fan-out of gitlab.local:4567/group/app:1.0 (-): failed, 0/1 targets landed")


def test_gitlab_section_markers() -> None:
    text = R.section("authscope_harbor-1", "harbor-1: OK", "body line\n\n", collapsed=True, now=1_700_000_000)
    assert text == (
        "\x1b[0Ksection_start:1700000000:authscope_harbor-1[collapsed=true]\r\x1b[0Kharbor-1: OK\n"
        "body line\n"
        "\x1b[0Ksection_end:1700000000:authscope_harbor-1\r\x1b[0K"
    )
    open_ = R.section("authscope_x", "x: FAILED", "why", collapsed=False, now=5)
    assert "section_start:5:authscope_x\r" in open_ and "collapsed" not in open_


def test_section_names_are_safe_for_gitlab() -> None:
    text = R.section("authscope_a b/c:d$e", "h", "b", collapsed=False, now=1)
    start = re.search(r"section_start:1:([^\r\[]*)", text)
    end = re.search(r"section_end:1:([^\r]*)", text)
    assert start and end and start.group(1) == end.group(1)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", start.group(1))


def test_plain_headers_outside_gitlab(capsys: pytest.CaptureFixture[str]) -> None:
    """GITLAB_CI unset (a terminal, another CI): no section markers, which are noise there."""
    from authscope.cli import _publish

    text = R.section("authscope_x", "x: OK", "body\n", collapsed=True, now=5, gitlab=False)
    assert text == "== x: OK\nbody"
    _publish(report(MIXED), None, None, None, gitlab=False)
    out = capsys.readouterr().out
    assert "section_start:" not in out and "section_end:" not in out and "\x1b[0K" not in out
    assert "== harbor-1: OK" in out
    # Control: under GitLab CI the same report has its markers.
    _publish(report(MIXED), None, None, None, gitlab=True)
    assert capsys.readouterr().out.count("section_start:") == 4


def test_section_without_time_uses_now() -> None:
    import time

    before = int(time.time())
    text = R.section("n", "h", "b", collapsed=False)
    stamp = int(re.search(r"section_start:(\d+):", text).group(1))  # type: ignore[union-attr]
    assert before <= stamp <= int(time.time())


def test_result_text() -> None:
    text = R.result_text(MIXED[1])
    assert "registry harbor-2.example:5000, repository release/app, tool crane, 1 attempt(s), 0.5s" in text
    assert "harbor-2.example:5000/release/app:1.0  (not verified)" in text
    assert "failed: harbor-2.example:5000 rejected the credentials (HTTP 401)" in text
    assert "fix: check username 'ci' and password_env HARBOR_2_PASSWORD" in text
    assert "last 2 line(s) of output:\n  | Error: GET" in text
    ok = R.result_text(MIXED[0])
    assert f"harbor-1.example:5000/release/app:latest  {DIGEST}" in ok
    assert "failed:" not in ok and "output" not in ok


# -- JUnit ----------------------------------------------------------------------------------


def test_junit_well_formed_one_testcase_per_target() -> None:
    data = R.junit(report(MIXED))
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    root = ET.fromstring(data)
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("4", "2", "1")
    (suite,) = root.findall("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "2" and suite.get("skipped") == "1"
    assert suite.get("timestamp") == "2027-01-15T08:00:00"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["harbor-1", "harbor-2", "staging", "slow"]
    assert cases[0].get("classname") == "authscope.harbor-1.example:5000"
    assert float(cases[0].get("time") or 0) == pytest.approx(1.25)
    assert cases[0].find("failure") is None and cases[0].find("skipped") is None
    assert DIGEST in (cases[0].findtext("system-out") or "")

    failure = cases[1].find("failure")
    assert failure is not None and failure.get("type") == "failed"
    assert failure.get("message") == "harbor-2.example:5000 rejected the credentials (HTTP 401)"
    text = failure.text or ""
    assert "How to fix: check username 'ci' and password_env HARBOR_2_PASSWORD" in text
    assert "Last lines of output:\nError: GET https://harbor-2.example:5000/v2/: UNAUTHORIZED" in text

    skipped = cases[2].find("skipped")
    assert skipped is not None and "--fail-fast" in (skipped.get("message") or "")
    assert cases[2].find("failure") is None

    interrupted = cases[3].find("failure")
    assert interrupted is not None and interrupted.get("type") == "interrupted"
    assert "interrupted" in (interrupted.get("message") or "")


def test_junit_survives_control_characters_and_markup() -> None:
    nasty = result(
        "x",
        R.FAILED,
        error='bad <tag> & "quote" \x00\x1b',
        hint="]]> <![CDATA[",
        output=("\x0c\x08form feed", "ünïcödé ✓"),
    )
    root = ET.fromstring(R.junit(report([nasty])))
    failure = root.find("testsuite/testcase/failure")
    assert failure is not None
    assert failure.get("message") == 'bad <tag> & "quote" ??'
    assert "ünïcödé ✓" in (failure.text or "") and "]]> <![CDATA[" in (failure.text or "")


def test_junit_empty_and_all_ok() -> None:
    root = ET.fromstring(R.junit(report([result("a"), result("b")])))
    assert root.get("failures") == "0" and root.get("skipped") == "0"
    assert not root.findall(".//failure") and not root.findall(".//skipped")


# -- dotenv -----------------------------------------------------------------------------------

DOTENV_LINE = re.compile(r"[A-Za-z0-9_]+=[^\n\r]*")


def parse_dotenv(text: str) -> dict:
    assert text.endswith("\n")
    out = {}
    for line in text.splitlines():
        assert DOTENV_LINE.fullmatch(line), line
        key, _, value = line.partition("=")
        assert key not in out
        out[key] = value
    return out


def test_dotenv_values() -> None:
    env = parse_dotenv(R.dotenv(report(MIXED)))
    assert env == {
        "AUTHSCOPE_STATUS": "partial",
        "AUTHSCOPE_SOURCE": "gitlab.local:4567/group/app:1.0",
        "AUTHSCOPE_DIGEST": DIGEST,
        "AUTHSCOPE_TARGETS_TOTAL": "4",
        "AUTHSCOPE_TARGETS_OK": "harbor-1",
        "AUTHSCOPE_TARGETS_FAILED": "harbor-2,slow",
        "AUTHSCOPE_TARGETS_SKIPPED": "staging",
        "AUTHSCOPE_TARGETS_UNCHANGED": "",
        "AUTHSCOPE_DESTINATIONS": "harbor-1.example:5000/release/app:1.0 harbor-1.example:5000/release/app:latest",
        "AUTHSCOPE_BASE_RESTORED": "false",
    }


def test_dotenv_no_newlines_in_values() -> None:
    r = report([result("a")], source="gitlab.local:4567/app:1.0\nINJECTED=1\rX")
    env = parse_dotenv(R.dotenv(r))
    assert "INJECTED" not in env
    assert "\n" not in env["AUTHSCOPE_SOURCE"] and "\r" not in env["AUTHSCOPE_SOURCE"]


@pytest.mark.parametrize("count", [1, 50, 300, 1000])
def test_dotenv_within_gitlab_limit_with_many_long_names(count: int) -> None:
    results = [result(f"target-{i:04d}-" + "x" * 100, status=(R.OK, R.FAILED, R.SKIPPED)[i % 3]) for i in range(count)]
    text = R.dotenv(report(results))
    assert len(text.encode()) <= R.DOTENV_LIMIT == 5 * 1024
    env = parse_dotenv(text)
    # Every variable survives truncation; the short ones intact.
    assert list(env) == [
        "AUTHSCOPE_STATUS",
        "AUTHSCOPE_SOURCE",
        "AUTHSCOPE_DIGEST",
        "AUTHSCOPE_TARGETS_TOTAL",
        "AUTHSCOPE_TARGETS_OK",
        "AUTHSCOPE_TARGETS_FAILED",
        "AUTHSCOPE_TARGETS_SKIPPED",
        "AUTHSCOPE_TARGETS_UNCHANGED",
        "AUTHSCOPE_DESTINATIONS",
        "AUTHSCOPE_BASE_RESTORED",
    ]
    assert env["AUTHSCOPE_DIGEST"] == DIGEST
    assert env["AUTHSCOPE_TARGETS_TOTAL"] == str(count)
    assert env["AUTHSCOPE_STATUS"] in ("partial", "success")
    if count >= 50:
        assert any(v.endswith("...(truncated)") for v in env.values())


# -- JSON -------------------------------------------------------------------------------------


def test_json_version_1() -> None:
    doc = json.loads(R.to_json(report(MIXED, signal=None)))
    assert doc["version"] == 1 == R.JSON_VERSION
    assert doc["status"] == "partial"
    assert doc["source"] == "gitlab.local:4567/group/app:1.0" and doc["digest"] == DIGEST
    assert doc["tool"] == "crane"
    assert doc["started"] == "2027-01-15T08:00:00Z"
    assert doc["duration"] == 12.5 and doc["signal"] is None and doc["error"] is None
    assert doc["counts"] == {"ok": 1, "failed": 1, "skipped": 1, "interrupted": 1}
    first, second = doc["targets"][:2]
    assert first["name"] == "harbor-1" and first["status"] == "ok" and first["attempts"] == 1
    assert first["digests"] == {"1.0": DIGEST, "latest": DIGEST}
    assert first["tags"] == ["1.0", "latest"]
    assert first["destinations"] == [
        "harbor-1.example:5000/release/app:1.0",
        "harbor-1.example:5000/release/app:latest",
    ]
    assert second["error"].endswith("(HTTP 401)") and second["hint"].startswith("check username")
    assert second["output"][0].startswith("Error: GET")
    assert [t["status"] for t in doc["targets"]] == ["ok", "failed", "skipped", "interrupted"]


def test_json_interrupted_and_source_error() -> None:
    doc = json.loads(R.to_json(report(MIXED, signal=2)))
    assert doc["status"] == "interrupted" and doc["signal"] == 2
    doc = json.loads(R.to_json(report([result("a", R.FAILED)], source_digest=None, error="cannot read the source")))
    assert doc["digest"] is None and doc["error"] == "cannot read the source" and doc["status"] == "failed"


def test_tail() -> None:
    assert R.tail([str(i) for i in range(100)], 3) == ("97", "98", "99")
    assert len(R.tail([str(i) for i in range(100)])) == R.TAIL_LINES


# -- exit codes (cli._fanout_exit) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("results", "kw", "code"),
    [
        ([result("a"), result("b")], {}, 0),
        ([result("a"), result("b", R.FAILED)], {}, 1),
        ([result("a", R.SKIPPED)], {}, 1),
        ([result("a", restored=("restored",))], {}, 3),
        ([result("a", R.FAILED, restored=("restored",))], {}, 3),
        ([result("a", R.INTERRUPTED)], {"signal": 2}, 130),
        ([result("a", R.INTERRUPTED)], {"signal": 15}, 143),
    ],
)
def test_fanout_exit_codes(results: list[R.Result], kw: dict, code: int, capsys: pytest.CaptureFixture[str]) -> None:
    from authscope.cli import _fanout_exit

    assert _fanout_exit(report(results, **kw)) == code
    err = capsys.readouterr().err
    if code == 3:
        assert "BASE INTEGRITY" in err
    if code in (130, 143):
        assert "interrupted by signal" in err


def test_publish_writes_every_report(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import stat

    from authscope.cli import _publish

    paths = [tmp_path / "junit.xml", tmp_path / "sub" / "fanout.env", tmp_path / "fanout.json"]
    paths[1].parent.mkdir()
    _publish(report(MIXED), *(str(p) for p in paths), gitlab=True)
    ET.fromstring(paths[0].read_bytes())
    parse_dotenv(paths[1].read_text())
    assert json.loads(paths[2].read_text())["version"] == 1
    for p in paths:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644
    out = capsys.readouterr().out
    # One section per target, OK ones collapsed; then the table.
    assert out.count("section_start:") == 4 == out.count("section_end:")
    assert "authscope_harbor-1[collapsed=true]" in out
    assert "authscope_harbor-2\r" in out
    assert out.rstrip().splitlines()[-1].split()[0] == "slow"

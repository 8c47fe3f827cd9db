"""Report behaviour that tests/test_report.py left unpinned (found by mutation testing,
benchmarks/mutation.py; docs/RELIABILITY.md "Mutation testing")."""

from __future__ import annotations

import json

from authscope import report as R
from tests.test_report import DIGEST, report, result


def _fresh(text: str) -> str:
    """``text`` as a new string object, not the interned literal (as a status read back from JSON)."""
    return bytes(text, "ascii").decode("ascii")


def test_result_without_a_duration_shows_zero_seconds() -> None:
    r = R.Result(name="a", registry="r.example", repository="app", tool="crane", tags=("1",), status=R.SKIPPED)
    assert r.duration == 0.0 and r.attempts == 0
    lines = R.summary_table(report([r])).splitlines()
    head, row = lines[1].split(), lines[3].split()
    assert row[head.index("time")] == "0.0s" and row[head.index("tries")] == "0"
    assert json.loads(R.to_json(report([r])))["targets"][0]["duration"] == 0


def test_statuses_are_compared_by_value_not_identity() -> None:
    ok = _fresh(R.OK)
    assert ok == R.OK and ok is not R.OK  # the precondition: equal, yet another object
    rep = report([result("a", status=ok), result("b", status=_fresh(R.FAILED))])
    assert rep.count(R.OK) == 1 and rep.count(R.FAILED) == 1
    assert rep.status == "partial"


def test_result_text_names_restored_entries_once() -> None:
    note = "auths entry 'gitlab.local:4567' was removed by a tool outside its scope; restored"
    r = result("a", restored=(note,))
    assert f"base guard: {note}" in R.result_text(r).splitlines()
    # JUnit's <system-out> (failure=False) leaves it to the <failure> text: said once, not twice.
    assert "base guard" not in R.result_text(r, failure=False)


def test_a_line_short_in_characters_but_long_in_bytes_is_cut() -> None:
    line = "\u20ac" * 1000  # 1000 characters, 3000 bytes of UTF-8: under the limit only if counted in characters
    cut = R.cap_line(line)
    # As much as fits: at most the bytes of one character split at the cut are lost.
    assert R.LINE_LIMIT - 3 <= len(cut.encode()) <= R.LINE_LIMIT
    assert cut.startswith("\u20ac" * 300)
    assert cut.endswith(" [... cut: 3000 bytes in all]")
    assert R.cap_line("\u20ac" * 341) == "\u20ac" * 341  # 1023 bytes: kept whole


def test_bounded_keeps_the_last_thirty_lines() -> None:
    lines = [f"line {i}" for i in range(100)]
    assert R.TAIL_LINES == 30
    assert R.bounded(lines) == tuple(f"line {i}" for i in range(70, 100))
    assert R.bounded(lines[:5]) == tuple(lines[:5])


def test_bounded_counts_each_line_and_its_newline_against_the_limit() -> None:
    # 9 lines of 910 bytes are 8190 bytes, 8199 with their newlines: over TAIL_LIMIT (8192), so 8 are kept.
    lines = [f"{i:02d}" + "x" * 908 for i in range(20)]
    assert R.bounded(lines) == tuple(lines[-8:])
    # 8 lines of 1023 bytes and their newlines are exactly 8192 bytes: all 8 fit, a 9th does not.
    lines = [f"{i:02d}" + "y" * 1021 for i in range(20)]
    assert R.bounded(lines) == tuple(lines[-8:])
    assert sum(len(line) + 1 for line in R.bounded(lines)) == R.TAIL_LIMIT == 8 * 1024
    # 9 lines of 911 bytes (odd) are 8208 bytes with their newlines: 8 kept. Counted
    # as 910 each (`len ^ 1`, one byte short for an odd length, not one more), 9 would fit.
    lines = [f"{i:02d}" + "z" * 909 for i in range(20)]
    assert R.bounded(lines) == tuple(lines[-8:])


def test_dotenv_truncates_only_what_it_must() -> None:
    # One value far over GitLab's 5 KB: it is shortened to just under the limit, not emptied.
    rep = report([result("a")], source="gitlab.local:4567/group/" + "a" * 9000 + ":1.0")
    text = R.dotenv(rep)
    size = len(text.encode())
    # In one step: the value loses what is over the limit and 20 bytes more, for the
    # 14-byte marker; the file ends 7 bytes under GitLab's limit.
    assert size == R.DOTENV_LIMIT - 7
    source = next(line for line in text.splitlines() if line.startswith("AUTHSCOPE_SOURCE="))
    assert source.startswith("AUTHSCOPE_SOURCE=gitlab.local:4567/group/aaaa") and source.endswith("...(truncated)")
    assert f"AUTHSCOPE_DIGEST={DIGEST}" in text.splitlines()


def test_dotenv_with_many_targets_keeps_as_much_as_fits() -> None:
    results = [result(f"target-{i:04d}-" + "x" * 100) for i in range(300)]
    size = len(R.dotenv(report(results)).encode())
    assert R.DOTENV_LIMIT - 256 <= size < R.DOTENV_LIMIT


def test_json_report_is_two_space_indented_and_ends_with_a_newline() -> None:
    text = R.to_json(report([result("a")]))
    assert text.startswith('{\n  "version": 1,\n  "status": "success",\n')
    assert text.endswith("}\n") and not text.endswith("\n\n")


def test_junit_failure_message_is_cut_to_four_kilobytes() -> None:
    import xml.etree.ElementTree as ET

    rep = report([result("a", R.FAILED, error="E" * 10_000)])
    failure = ET.fromstring(R.junit(rep)).find("testsuite/testcase/failure")
    assert failure is not None
    message = failure.get("message", "")
    assert 4 * R.LINE_LIMIT - 3 <= len(message.encode()) <= 4 * R.LINE_LIMIT
    assert message.startswith("EEEE") and message.endswith(" [... cut: 10000 bytes in all]")


def test_junit_marks_a_skipped_target_by_its_status_value() -> None:
    import xml.etree.ElementTree as ET

    rep = report([result("a", status=_fresh(R.SKIPPED), error="not started: --fail-fast")])
    case = ET.fromstring(R.junit(rep)).find("testsuite/testcase")
    assert case is not None
    skipped = case.find("skipped")
    assert skipped is not None and skipped.get("message") == "not started: --fail-fast"


def test_junit_failure_message_without_an_error_names_the_restore_or_the_status() -> None:
    import xml.etree.ElementTree as ET

    note = "auths entry 'gitlab.local:4567' was removed by a tool outside its scope; restored"
    rep = report([result("landed", restored=(note,)), result("quiet", R.FAILED)])
    landed, quiet = ET.fromstring(R.junit(rep)).iter("failure")
    assert landed.get("message") == f"BASE INTEGRITY: {note}" and landed.get("type") == "base-integrity"
    assert quiet.get("message") == "failed" and quiet.get("type") == "failed"


def test_a_target_skipped_by_fail_fast_is_shown_skipped_not_up_to_date() -> None:
    # fanout gives a target --fail-fast never started changed=False, as it gives
    # an up-to-date one; only an ok target with nothing copied is UP TO DATE.
    skipped = result(
        "staging", status=R.SKIPPED, error="not started: --fail-fast after an earlier failure", changed=False
    )
    assert not skipped.up_to_date and skipped.verdict == "SKIPPED"
    assert R.summary_table(report([skipped])).splitlines()[3].split()[-1] == "SKIPPED"
    # control: the same flag on an ok target
    assert result("harbor", changed=False).verdict == "UP TO DATE"


def test_the_table_without_referrers_leaves_out_exactly_the_refs_column() -> None:
    # `authscope check` copies nothing: its table has no refs column, and every
    # other column keeps its header and its cell.
    r = result("harbor-1")
    lines = R.summary_table(report([r]), referrers=False).splitlines()
    assert lines[1].split() == ["target", "tags", "digest", "time", "tries", "status"]
    assert lines[3].split() == ["harbor-1", "1.0,latest", DIGEST[:19], "1.2s", "1", "OK"]
    # control: with referrers the refs column is there, between digest and time
    assert R.summary_table(report([r])).splitlines()[3].split()[3] == "0"


def test_referrers_text_says_whether_referrers_were_copied() -> None:
    sig = {"digest": DIGEST, "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json"}
    assert R.referrers_text(result("a", referrers=(sig, sig))) == (
        "referrers: 2 copied and read back (signatures, attestations, SBOMs, OCI referrers)"
    )
    assert R.referrers_text(result("a", referrers_off=True)) == (
        "referrers: off (referrers: false): no signature, attestation or SBOM was copied"
    )


def test_junit_failure_of_a_target_with_two_restores_names_each_once_the_first_as_message() -> None:
    import xml.etree.ElementTree as ET

    first = "auths entry 'gitlab.local:4567' was removed by a tool outside its scope; restored"
    second = "auths entry 'harbor.example' was written with this scope's target credentials by a tool outside its scope; removed"
    (failure,) = ET.fromstring(R.junit(report([result("landed", restored=(first, second))]))).iter("failure")
    assert failure.get("message") == f"BASE INTEGRITY: {first}"
    assert failure.text is not None
    assert failure.text.splitlines() == [f"BASE INTEGRITY: {first}", f"BASE INTEGRITY: {second}"]
    # control: with an error the error is the message and both restores follow it
    (failure,) = ET.fromstring(R.junit(report([result("x", R.FAILED, error="boom", restored=(first, second))]))).iter(
        "failure"
    )
    assert failure.get("message") == "boom" and failure.text is not None
    assert failure.text.splitlines() == ["boom", f"BASE INTEGRITY: {first}", f"BASE INTEGRITY: {second}"]

"""Fan-out results, and how they are shown: text, GitLab sections, JUnit XML,
dotenv and versioned JSON. Records are frozen; renderers are pure."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

JSON_VERSION = 1
OK, FAILED, SKIPPED, INTERRUPTED = "ok", "failed", "skipped", "interrupted"
DOTENV_LIMIT = 5 * 1024  # GitLab's limit for a dotenv report: the file must be smaller (size < limit)
TAIL_LINES = 30
# A tool that prints megabytes without a newline must not make megabyte log
# lines, JSON or JUnit (GitLab drops a JUnit report it can't parse): each
# output line is cut to LINE_LIMIT bytes of UTF-8, a tail to TAIL_LIMIT.
LINE_LIMIT = 1024
TAIL_LIMIT = 8 * 1024


@dataclass(frozen=True)
class Result:
    """What happened to one target."""

    name: str
    registry: str
    repository: str
    tool: str
    tags: tuple[str, ...]
    status: str  # ok | failed | skipped | interrupted
    digests: dict[str, str | None] = field(default_factory=dict)  # tag -> digest found there
    attempts: int = 0
    duration: float = 0.0
    error: str = ""  # what failed
    hint: str = ""  # how to fix it
    output: tuple[str, ...] = ()  # the last lines the tool printed (masked)
    restored: tuple[str, ...] = ()  # base entries the guard restored while it ran
    referrers: tuple[dict[str, str], ...] = ()  # signatures, attestations, referrers copied and read back
    referrers_off: bool = False  # referrers: false: none were looked for or copied
    # False when no copy step ran on the target: an ok target with changed
    # False was up to date, nothing was copied (issue 15). True (the default)
    # whenever something may have been pushed.
    changed: bool = True

    @property
    def up_to_date(self) -> bool:
        return self.status == OK and not self.changed

    @property
    def verdict(self) -> str:
        """The status as the table and the sections show it: UP TO DATE for an
        ok target that needed no copy."""
        return "UP TO DATE" if self.up_to_date else self.status.upper()

    @property
    def destinations(self) -> list[str]:
        return [f"{self.registry}/{self.repository}:{tag}" for tag in self.tags]


@dataclass(frozen=True)
class Report:
    """The whole fan-out."""

    source: str
    source_digest: str | None
    tool: str
    results: tuple[Result, ...]
    started: float
    duration: float
    signal: int | None = None  # set when interrupted
    error: str = ""  # a problem before any target ran (e.g. the source)
    guard: tuple[str, ...] = ()  # what the base guard restored outside any target (the pull_once scope)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def status(self) -> str:
        """success | partial | failed | interrupted (pipx's result shape)."""
        if self.signal is not None:
            return "interrupted"
        ok = self.count(OK)
        if ok == len(self.results) and not self.error:
            return "success"
        return "partial" if ok else "failed"

    @property
    def restored(self) -> bool:
        return bool(self.guard) or any(r.restored for r in self.results)

    def unchanged(self) -> int:
        """Targets that were up to date: ok, nothing copied."""
        return sum(1 for r in self.results if r.up_to_date)

    def restored_notes(self) -> list[str]:
        """Every base entry the guard restored during the run, each naming where."""
        return [*self.guard, *(f"{r.name}: {note}" for r in self.results for note in r.restored)]


# -- text -----------------------------------------------------------------------------


def _short(digest: str | None) -> str:
    return digest[:19] if digest else "-"


def summary_table(report: Report, referrers: bool = True) -> str:
    """The table a person reads at the end of the log; ``referrers=False``
    leaves out the refs column (`authscope check` copies nothing)."""
    rows: list[tuple[str, ...]] = [("target", "tags", "digest", "refs", "time", "tries", "status")]
    for r in report.results:
        digest = next((d for d in r.digests.values() if d), None)
        status = r.verdict + (" (BASE RESTORED)" if r.restored else "")
        refs = "off" if r.referrers_off else str(len(r.referrers))
        rows.append((r.name, ",".join(r.tags), _short(digest), refs, f"{r.duration:.1f}s", str(r.attempts), status))
    if not referrers:
        rows = [row[:3] + row[4:] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = (
        f"fan-out of {report.source} ({_short(report.source_digest)}): {report.status}, "
        f"{report.count(OK)}/{len(report.results)} targets landed in {report.duration:.1f}s"
        + (f" ({unchanged} up to date, nothing copied)" if (unchanged := report.unchanged()) else "")
    )
    guard = [f"BASE INTEGRITY: {note}" for note in report.restored_notes()]
    return "\n".join([head, *lines, *guard])


def section(name: str, header: str, body: str, collapsed: bool, now: float | None = None, gitlab: bool = True) -> str:
    """A GitLab collapsible log section; with ``gitlab`` False (a terminal, another
    CI), a plain header instead of the markers, which elsewhere are only noise."""
    if not gitlab:
        return f"== {header}\n{body.rstrip()}"
    stamp = int(now if now is not None else time.time())
    key = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    flag = "[collapsed=true]" if collapsed else ""
    return (
        f"\x1b[0Ksection_start:{stamp}:{key}{flag}\r\x1b[0K{header}\n"
        f"{body.rstrip()}\n"
        f"\x1b[0Ksection_end:{stamp}:{key}\r\x1b[0K"
    )


def result_text(r: Result, failure: bool = True) -> str:
    """What happened to ``r``; without ``failure``, not its error, hint and output
    (JUnit puts those in <failure>, and nothing twice)."""
    lines = [
        f"registry {r.registry}, repository {r.repository}, tool {r.tool}, {r.attempts} attempt(s), {r.duration:.1f}s"
    ]
    for tag in r.tags:
        lines.append(f"  {r.registry}/{r.repository}:{tag}  {r.digests.get(tag) or '(not verified)'}")
    lines.append(referrers_text(r))
    lines.extend(f"  {a.get('kind') or a.get('artifactType')} {a.get('tag') or a['digest']}" for a in r.referrers)
    if r.up_to_date:
        lines.append("up to date: every tag already held the source digest; nothing was copied")
    if r.error and failure:
        lines.append(f"failed: {r.error}")
    if r.hint and r.status == OK:  # a check that passed with a caveat (authscope check)
        lines.append(f"note: {r.hint}")
    elif r.hint and failure:
        lines.append(f"fix: {r.hint}")
    if failure:
        lines.extend(f"base guard: {note}" for note in r.restored)
    output = bounded(r.output)
    if output and r.status != OK and failure:
        lines.append(f"last {len(output)} line(s) of output:")
        lines.extend(f"  | {line}" for line in output)
    return "\n".join(lines)


def referrers_text(r: Result) -> str:
    if r.referrers_off:
        return "referrers: off (referrers: false): no signature, attestation or SBOM was copied"
    return f"referrers: {len(r.referrers)} copied and read back (signatures, attestations, SBOMs, OCI referrers)"


def cap_line(text: str, limit: int = LINE_LIMIT) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, saying how long it was."""
    if len(text) * 4 <= limit:  # short enough whatever its characters
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    note = f" [... cut: {len(data)} bytes in all]"
    return data[: limit - len(note)].decode("utf-8", "ignore") + note


def bounded(lines: Sequence[str]) -> tuple[str, ...]:
    """The last of ``lines``, each capped, together within TAIL_LIMIT bytes."""
    out: list[str] = []
    size = 0
    for line in reversed(lines[-TAIL_LINES:]):
        line = cap_line(line)
        size += len(line.encode("utf-8", "surrogatepass")) + 1
        if size > TAIL_LIMIT and out:
            break
        out.append(line)
    return tuple(reversed(out))


# -- JUnit ----------------------------------------------------------------------------


def junit(report: Report) -> bytes:
    """One testcase per target; failures say what failed and how to fix it."""
    import xml.etree.ElementTree as ET

    failures = sum(1 for r in report.results if r.status in (FAILED, INTERRUPTED) or r.restored)
    skipped = report.count(SKIPPED)
    suites = ET.Element(
        "testsuites",
        name="authscope",
        tests=str(len(report.results)),
        failures=str(failures),
        skipped=str(skipped),
        time=f"{report.duration:.3f}",
    )
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"authscope fanout {report.source}",
        tests=str(len(report.results)),
        failures=str(failures),
        skipped=str(skipped),
        time=f"{report.duration:.3f}",
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(report.started)),
    )
    for r in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=_xml_safe(f"authscope.{r.registry}"),
            name=_xml_safe(r.name),
            time=f"{r.duration:.3f}",
        )
        failed = r.status in (FAILED, INTERRUPTED) or bool(r.restored)
        if failed:
            # GitLab shows a failed case's <failure> text (and reads <system-out>
            # only for attachments): the error, hint and output go there, once.
            # A restore fails the testcase even when the copy landed: a tool
            # wrote the base outside its scope, and GitLab's test report must say so.
            integrity = [f"BASE INTEGRITY: {note}" for note in r.restored]
            message = cap_line(r.error or (integrity[0] if integrity else r.status), 4 * LINE_LIMIT)
            text = "\n".join([message, *integrity[0 if r.error else 1 :]])
            text += f"\n\nHow to fix: {r.hint}" if r.hint else ""
            output = bounded(r.output)
            if output:
                text += "\n\nLast lines of output:\n" + "\n".join(output)
            kind = "base-integrity" if r.restored else r.status
            ET.SubElement(case, "failure", message=_xml_safe(message), type=kind).text = _xml_safe(text)
        elif r.status == SKIPPED:
            ET.SubElement(case, "skipped", message=_xml_safe(r.error or "not started"))
        ET.SubElement(case, "system-out").text = _xml_safe(result_text(r, failure=not failed))
    body: bytes = ET.tostring(suites, encoding="utf-8")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body + b"\n"


# Every character XML 1.0 forbids (the complement of its Char production): C0
# controls but tab, newline and CR; lone surrogates; U+FFFE and U+FFFF. One of
# them in a tool's output makes GitLab's parser (libxml2) drop the whole report.
# Spelt as what is forbidden: the negated class of what is allowed (astral
# range included) costs ~7 ms to compile, at every start of authscope.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_safe(text: str) -> str:
    return _NOT_XML.sub("?", text)


# -- dotenv ---------------------------------------------------------------------------


def dotenv(report: Report) -> str:
    """Variables for later jobs (``artifacts: reports: dotenv``), within GitLab's
    limits: names [A-Za-z0-9_], one line per value, 5 KB in all."""
    names = {
        status: [r.name for r in report.results if r.status == status] for status in (OK, FAILED, SKIPPED, INTERRUPTED)
    }
    values = [
        ("AUTHSCOPE_STATUS", report.status),
        ("AUTHSCOPE_SOURCE", report.source),
        ("AUTHSCOPE_DIGEST", report.source_digest or ""),
        ("AUTHSCOPE_TARGETS_TOTAL", str(len(report.results))),
        ("AUTHSCOPE_TARGETS_OK", ",".join(names[OK])),
        ("AUTHSCOPE_TARGETS_FAILED", ",".join(names[FAILED] + names[INTERRUPTED])),
        ("AUTHSCOPE_TARGETS_SKIPPED", ",".join(names[SKIPPED])),
        ("AUTHSCOPE_TARGETS_UNCHANGED", ",".join(r.name for r in report.results if r.up_to_date)),
        ("AUTHSCOPE_DESTINATIONS", " ".join(d for r in report.results if r.status == OK for d in r.destinations)),
        ("AUTHSCOPE_BASE_RESTORED", "true" if report.restored else "false"),
    ]
    lines = [f"{key}={_one_line(value)}" for key, value in values]
    text = "\n".join(lines) + "\n"
    while len(text.encode()) >= DOTENV_LIMIT:  # GitLab: size < limit
        # Shorten the longest value rather than lose a variable.
        longest = max(range(len(lines)), key=lambda i: len(lines[i]))
        key, _, value = lines[longest].partition("=")
        keep = max(0, len(value) - (len(text.encode()) - DOTENV_LIMIT + 1) - 20)
        lines[longest] = f"{key}={value[:keep]}...(truncated)"
        text = "\n".join(lines) + "\n"
    return text


def _one_line(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


# -- JSON -----------------------------------------------------------------------------


def to_json(report: Report) -> str:
    doc: dict[str, Any] = {
        "version": JSON_VERSION,
        "status": report.status,
        "source": report.source,
        "digest": report.source_digest,
        "tool": report.tool,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(report.started)),
        "duration": round(report.duration, 3),
        "signal": report.signal,
        "error": report.error or None,
        "counts": {s: report.count(s) for s in (OK, FAILED, SKIPPED, INTERRUPTED)},
        # Every entry the base guard restored, each prefixed with the target
        # (or "pull") in whose scope it happened; [] when the base stayed intact.
        "restored": report.restored_notes(),
        "targets": [],
    }
    for r in report.results:
        item = asdict(r)
        item["tags"] = list(r.tags)
        item["output"] = list(bounded(r.output))
        item["restored"] = list(r.restored)
        item["referrers"] = [dict(a) for a in r.referrers]
        item["destinations"] = r.destinations
        item["duration"] = round(r.duration, 3)
        doc["targets"].append(item)
    return json.dumps(doc, indent=2) + "\n"


def tail(lines: Sequence[str], n: int = TAIL_LINES) -> tuple[str, ...]:
    return tuple(lines[-n:])

"""Bad input: hypothesis strategies for broken targets files and base configs, and the checks.

Every generated input is broken by construction, and comes with what the
error message must mention (the key path, or the kind of problem). ``run_*``
feed one input to authscope (``cli.main`` in-process, or the real CLI) and
return the list of violations: empty means authscope refused it properly —
exit 2, a message naming the problem, no traceback, nothing written, the
base byte-for-byte as it was, no scope left, no command run.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

Pairs = list[tuple[str, Any]]
Expect = tuple[tuple[str, ...], ...]  # every group must match one of its alternatives

UNREACHABLE = "127.0.0.1:9"  # nothing listens on the discard port: a run that got this far fails fast
PASSWORD = "badinput-test-password-0004"  # fake


# -- rendering: a YAML writer that can write duplicate keys -----------------------------------


class Raw(str):
    """Written into the YAML as is (e.g. an integer too long for json.dumps)."""


def scalar(value: Any) -> str:
    """JSON is YAML flow style: every value written as JSON, which YAML reads back as is."""
    return str(value) if isinstance(value, Raw) else json.dumps(value, ensure_ascii=False)


class Targets(list):  # type: ignore[type-arg]
    """The targets: list, each item a list of (key, value) pairs or any raw value."""


def render(doc: Pairs) -> str:
    lines: list[str] = []
    for key, value in doc:
        if isinstance(value, Targets):
            lines.append(f"{key}:")
            for item in value:
                if isinstance(item, list) and item and all(isinstance(p, tuple) for p in item):
                    for n, (k, v) in enumerate(item):
                        lines.append(("  - " if n == 0 else "    ") + f"{k}: {scalar(v)}")
                else:
                    lines.append(f"  - {scalar(item)}")
        else:
            lines.append(f"{key}: {scalar(value)}")
    return "\n".join(lines) + "\n"


def valid_target(n: int) -> Pairs:
    return [
        ("name", f"t{n}"),
        ("registry", UNREACHABLE),
        ("repository", f"release/app{n}"),
        ("username", "robot$release+ci"),
        ("password_env", "TARGET_PASSWORD"),
    ]


def valid_doc(targets: int) -> Pairs:
    return [
        ("source", f"{UNREACHABLE}/app:1.0"),
        ("tool", "custom"),
        ("command", ["sh", "-c", "touch ran-{name}"]),
        ("targets", Targets(valid_target(n) for n in range(1, targets + 1))),
    ]


# -- targets files: mutations --------------------------------------------------------------------

# Values that are wrong for each key, whatever else the file says.
BAD_TOP: dict[str, list[Any]] = {
    "jobs": ["many", [], {}, True, 1.5, 0, -3, 257, 10**50, Raw("1" + "0" * 5000)],
    "retries": [-1, 21, "x", [1], 2.5, {}],
    "timeout": [0, 0.0001, 86401, "soon", [], {}, False, 10**400],
    "tool": ["cranee", "", [], {}, True, "docker"],
    "tags": [{}, [], [{}], ["-bad"], ["a b"], ["x" * 200], [None], [[]], True],
    "command": [[], "true", [[]], [{}], [True], [None], ["{bogus}"]],
    "source": [[], True, "not an image!", "host.example/UPPER:1.0", "host.example/app:-bad", "x" * 5000,
               {"image": f"{UNREACHABLE}/app:1.0", "insecur": True}, {"image": []}, {}],
    "pull_once": ["yes", 1, [], {}],
    "version": [2, "x", [], 0],
    "targets": ["x", {}, [], 5, None, True],
}  # fmt: skip
BAD_TARGET: dict[str, list[Any]] = {
    "name": [[], {}, True, "bad name!", "", "-x", "x" * 5000],
    "registry": ["has space", "user@host", [], "", "http://", {}, "x" * 5000],
    "repository": ["UPPER", "a//b", [], "-x", "", True, "x" * 5000],
    "username": [[], {}, True],
    "password_env": ["not a var", "1ABC", [], "$X", {}],
    "insecure": ["yes", 1, [], "true"],
    "ca_file": ["/nonexistent/ca.crt", [], "no-such-ca.pem"],
    "tags": [{}, [], [{}], ["-bad"], ["a b"], ["x" * 200], [None]],
    "tool": ["cranee", [], 7, ""],
    "command": [[], [[]], [None], ["{nope}"]],
    "password_file": [[], {}],
}
TYPOS = {"tags": "tagz", "registry": "regsitry", "password_env": "passwrd_env", "tool": "tol", "jobs": "job"}
MISSING = {
    "name": "name: is required",
    "registry": "registry: is required",
    "repository": "repository: is required",
    "username": "give exactly one of username",
    "password_env": "give exactly one of password_env",
}
REQUIRED = tuple(MISSING)


@dataclass
class TargetsCase:
    """One broken targets file: its bytes, and what the message must mention."""

    data: bytes
    expect: Expect
    what: list[str] = field(default_factory=list)
    kinds: tuple[str, ...] = ()  # for the figures: which mutations made it

    def __repr__(self) -> str:
        return f"TargetsCase({'; '.join(self.what)}: {self.data[:300]!r})"


def _set(pairs: Pairs, key: str, value: Any) -> Pairs:
    out = [(k, value if k == key else v) for k, v in pairs]
    if key not in {k for k, _ in out}:
        out.append((key, value))
    return out


def _slot_key(slot: tuple[str, Any]) -> str:
    """Slots that would interfere share a key, so at most one of them is drawn."""
    key = slot[1]
    if isinstance(key, tuple):
        index, name = key
        group = {"password_file": "password_env"}.get(name, name)
        return f"{index}.{group}"
    return str(key)


@st.composite
def structural_case(draw: st.DrawFn) -> TargetsCase:
    """1-3 independent broken keys (distinct slots); every one must be reported."""
    count = draw(st.integers(1, 3))
    doc = valid_doc(count)
    targets = doc[-1][1]
    slots = [("top", k) for k in BAD_TOP] + [("top-dup", k) for k in ("tool", "source", "targets", "command")]
    slots += [("top-unknown", k) for k in TYPOS]
    slots += [("target", (i, k)) for i in range(count) for k in BAD_TARGET]
    slots += [("target-dup", (i, k)) for i in range(count) for k in ("name", "registry", "username")]
    slots += [("target-missing", (i, k)) for i in range(count) for k in REQUIRED]
    slots += [("missing-var", k) for k in ("source",)]
    chosen = draw(st.lists(st.sampled_from(slots), min_size=1, max_size=3, unique_by=_slot_key))
    if any(kind == "top" and key == "targets" for kind, key in chosen):
        chosen = [s for s in chosen if not s[0].startswith("target")]  # no targets left to break
    expect: list[tuple[str, ...]] = []
    what: list[str] = []
    for kind, key in chosen:
        if kind == "top":
            value = draw(st.sampled_from(BAD_TOP[key]))
            doc = _set(doc, key, value)
            expect.append((key,))
            what.append(f"{key}: {scalar(value)[:40]}")
        elif kind == "top-dup":
            current = dict(doc)[key]
            doc = doc + [(key, current)]
            expect.append(("appears twice",))
            what.append(f"duplicate {key}")
        elif kind == "top-unknown":
            doc = doc + [(TYPOS[key], dict(doc).get(key, 1))]
            expect.append(("unknown key",))
            what.append(f"typo {TYPOS[key]}")
        elif kind == "missing-var":
            doc = _set(doc, "source", "${AUTHSCOPE_TEST_UNSET_VARIABLE}/app:1.0")
            expect.append(("AUTHSCOPE_TEST_UNSET_VARIABLE",))
            what.append("unset variable")
        else:
            index, field_name = key
            target = targets[index]
            path = f"targets[{index}]"
            if kind == "target":
                value = draw(st.sampled_from(BAD_TARGET[field_name]))
                targets[index] = _set(target, field_name, value)
                expect.append((f"{path}.{field_name}",))
                what.append(f"{path}.{field_name}: {scalar(value)[:40]}")
            elif kind == "target-dup":
                targets[index] = target + [(field_name, dict(target)[field_name])]
                expect.append(("appears twice",))
                what.append(f"duplicate {path}.{field_name}")
            else:
                targets[index] = [(k, v) for k, v in target if k != field_name]
                expect.append((f"{path}: {MISSING[field_name]}",))
                what.append(f"missing {path}.{field_name}")
    text = render(doc)
    if draw(st.booleans()):
        # A BOM is fine in a targets file; the other problems must still be named.
        data = b"\xef\xbb\xbf" + text.encode()
        what.append("BOM")
    else:
        data = text.encode()
    kinds = tuple(kind for kind, _ in chosen) + (("bom",) if what[-1] == "BOM" else ())
    return TargetsCase(data, tuple(expect), what, kinds)


# Fragments that break YAML wherever a line starts.
BROKEN_YAML = (
    "[unclosed",
    "{unclosed: 1",
    "\tkey: tab-indented",
    "@reserved",
    "`backtick",
    "key: value: other",
    '"unterminated',
    "- item\nkey: value",
    "&anchor *alias",
    "*undefined_alias",
    "!!python/object:os.system x",
    "%YAML 1.1",
    "? [complex, key]\n: value\n? [complex, key]",
)


@st.composite
def textual_case(draw: st.DrawFn) -> TargetsCase:
    """Files that are not YAML, not UTF-8, empty, nested too deeply or not a mapping."""
    text = render(valid_doc(draw(st.integers(1, 2))))
    kind = draw(st.sampled_from(["yaml", "yaml", "utf8", "utf8", "utf16", "empty", "not-mapping", "deep"]))
    if kind == "yaml":
        lines = text.splitlines(keepends=True)
        at = draw(st.integers(0, len(lines)))
        fragment = draw(st.sampled_from(BROKEN_YAML))
        data = "".join(lines[:at] + [fragment + "\n"] + lines[at:]).encode()
        expect: Expect = (("is not valid YAML", "cannot read this value", "appears twice", "keys must be strings",
                           "unknown key", "must be"),)  # fmt: skip
        what = f"yaml: {fragment!r} at line {at + 1}"
    elif kind == "utf8":
        raw = text.encode()
        at = draw(st.integers(0, len(raw)))
        bad = draw(
            st.sampled_from(
                [b"\xff", b"\xfe\xfe", b"\xc3\x28", b"\xe9", b"\xa0\xa1", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]
            )
        )
        data = raw[:at] + bad + raw[at:]
        expect = (("is not UTF-8",),)
        what = f"bytes {bad!r} at {at}"
    elif kind == "utf16":
        data = text.encode(draw(st.sampled_from(["utf-16", "utf-16-be", "utf-32"])))
        expect = (("is not UTF-8", "is not valid YAML"),)
        what = "utf-16/32"
    elif kind == "empty":
        data = draw(st.sampled_from([b"", b"\n\n", b"   \n", b"# only a comment\n", b"---\n", b"...\n"]))
        expect = (("is empty", "source", "is not valid YAML"),)
        what = f"empty {data!r}"
    elif kind == "not-mapping":
        data = draw(st.sampled_from([b"- a\n- b\n", b"just a string\n", b"42\n", b"[1, 2]\n", b"null\n", b"true\n"]))
        expect = (("must be a mapping", "is empty"),)
        what = f"not a mapping {data!r}"
    else:
        # PyYAML's scanner is quadratic in flow nesting (1500 levels take ~2 s to refuse):
        # depths around where composing gives up are enough.
        depth = draw(st.sampled_from([20, 100, 300, 330, 340, 360, 500]))
        data = ("source: " + "[" * depth + "]" * depth + "\ntargets: []\n").encode()
        expect = (("nested too deeply", "source"),)
        what = f"nested {depth}"
    return TargetsCase(data, expect, [what], (kind,))


def targets_cases() -> st.SearchStrategy[TargetsCase]:
    return st.one_of(structural_case(), textual_case())


# -- base configs -----------------------------------------------------------------------------------

REGISTRY = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6})?(:[0-9]{2,5})?", fullmatch=True)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def valid_config(draw: st.DrawFn) -> dict[str, Any]:
    auths = {
        registry: {"auth": base64.b64encode(draw(st.text(min_size=1, max_size=30)).encode()).decode()}
        for registry in draw(st.lists(REGISTRY, min_size=0, max_size=4, unique=True))
    }
    cfg: dict[str, Any] = {"auths": auths}
    for key, value in draw(
        st.dictionaries(st.sampled_from(["HttpHeaders", "x-unknown", "psFormat", "proxies"]), JSON_VALUES, max_size=2)
    ).items():
        cfg[key] = value
    return cfg


@dataclass
class ConfigCase:
    data: bytes
    expect: Expect
    what: str
    kind: str = ""

    def __repr__(self) -> str:
        return f"ConfigCase({self.what}: {self.data[:300]!r})"


NOT_OBJECT = [[], "x", 5, True, 1.5]


@st.composite
def config_case(draw: st.DrawFn) -> ConfigCase:
    cfg = draw(valid_config())
    text = json.dumps(cfg, indent=draw(st.sampled_from([None, 1, "\t"])))
    kind = draw(
        st.sampled_from(["truncated", "syntax", "top-type", "auths-type", "entry-type", "helpers-type", "store-type",
                         "bom", "utf8", "utf16", "deep"])
    )  # fmt: skip
    json_error = ("is not valid JSON",)
    if kind == "truncated":
        end = text.rindex("}")
        cut = draw(st.integers(1, end))  # up to, not including, the last brace: never whole
        data, expect, what = text[:cut].encode(), (json_error,), f"truncated at {cut}"
    elif kind == "syntax":
        broken = draw(
            st.sampled_from(["trailing-comma", "single-quotes", "comment", "unquoted", "extra-brace", "equals"])
        )
        if broken == "trailing-comma":
            at = text.rindex("}")
            text = text[:at] + "," + text[at:]
        elif broken == "single-quotes":
            text = text.replace('"auths"', "'auths'", 1)
        elif broken == "comment":
            text = "// a comment\n" + text
        elif broken == "unquoted":
            text = text.replace('"auths"', "auths", 1)
        elif broken == "extra-brace":
            text = text + "}"
        else:
            text = text.replace('"auths":', '"auths"=', 1)
        data, expect, what = text.encode(), (json_error,), broken
    elif kind == "top-type":
        value = draw(st.sampled_from(NOT_OBJECT + [None]))
        data, expect, what = json.dumps(value).encode(), (("must hold a JSON object",),), f"top {value!r}"
    elif kind == "auths-type":
        cfg["auths"] = draw(st.sampled_from(NOT_OBJECT + [None]))
        data, expect, what = json.dumps(cfg).encode(), (('"auths"',),), f"auths {cfg['auths']!r}"
    elif kind == "entry-type":
        cfg["auths"][draw(REGISTRY)] = draw(st.sampled_from(NOT_OBJECT + [None]))
        data, expect, what = json.dumps(cfg).encode(), (('"auths" entry',),), "entry not an object"
    elif kind == "helpers-type":
        cfg["credHelpers"] = draw(st.sampled_from([[], "pass", 5, {"r.example": 5}, {"r.example": None}, {"r": ["x"]}]))
        data, expect, what = json.dumps(cfg).encode(), (('"credHelpers"',),), f"credHelpers {cfg['credHelpers']!r}"
    elif kind == "store-type":
        cfg["credsStore"] = draw(st.sampled_from([[], 5, {}, True, None]))
        data, expect, what = json.dumps(cfg).encode(), (('"credsStore"',),), f"credsStore {cfg['credsStore']!r}"
    elif kind == "bom":
        data, expect, what = b"\xef\xbb\xbf" + text.encode(), (("byte-order mark",),), "BOM"
    elif kind == "utf8":
        raw = text.encode()
        at = draw(st.integers(0, len(raw)))
        data, expect, what = raw[:at] + b"\xff\xc3" + raw[at:], (("is not UTF-8",),), f"bad bytes at {at}"
    elif kind == "utf16":
        data, expect, what = text.encode("utf-16"), (("is not UTF-8",),), "UTF-16"
    else:
        depth = draw(st.integers(2000, 200_000))
        data = ('{"auths": {}, "x": ' + "[" * depth + "]" * depth + "}").encode()
        expect, what = (("nested too deeply",),), f"nested {depth}"
    return ConfigCase(data, expect, what, kind)


COMMANDS = ("login", "logout", "exec", "fanout")


# -- running one input ---------------------------------------------------------------------------


def listing(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes)."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = Path(root) / name
            out[str(path.relative_to(directory))] = path.read_bytes()
    return out


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def call_inprocess(argv: Sequence[str], environ: Mapping[str, str]) -> Outcome:
    from authscope import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv), environ=dict(environ))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return Outcome(code, out.getvalue(), err.getvalue())


def call_cli(argv: Sequence[str], environ: Mapping[str, str]) -> Outcome:
    proc = subprocess.run(
        [sys.executable, "-m", "authscope", *argv],
        env=dict(environ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


class Sandbox:
    """A fresh directory per input: base, scopes, reports; removed afterwards."""

    def __init__(self, parent: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="badinput-", dir=parent))
        self.base = self.root / "base"
        self.scopes = self.root / "scopes"
        self.work = self.root / "work"
        for d in (self.base, self.scopes, self.work):
            d.mkdir(mode=0o700)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "LANG": "C.UTF-8",
            "DOCKER_CONFIG": str(self.base),
            "AUTHSCOPE_SCOPE_DIR": str(self.scopes),
            "TARGET_PASSWORD": PASSWORD,
        }
        plugin = str(Path(__file__).resolve().parents[2] / "plugin")
        self.env["PYTHONPATH"] = os.pathsep.join([plugin, *filter(None, [os.environ.get("PYTHONPATH")])])

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _message_problems(outcome: Outcome, expect: Expect) -> list[str]:
    problems = []
    if outcome.code != 2:
        problems.append(f"exit {outcome.code}, expected 2")
    text = outcome.out + outcome.err
    if "Traceback" in text or "internal error" in text:
        problems.append("a traceback")
    for group in expect:
        if not any(alt in outcome.err for alt in group):
            problems.append(f"the message names none of {group}")
    if "authscope: error:" not in outcome.err and "error:" not in outcome.err:
        problems.append("no error line")
    return problems


BASE_FOR_TARGETS = {"auths": {"gitlab.local:4567": {"auth": "Y2k6bG9jYWw="}}, "x-unknown": [1, 2]}


def run_targets_case(case: TargetsCase, parent: Path | None = None, real_cli: bool = False) -> list[str]:
    """``authscope fanout -f FILE --json/--junit/--dotenv`` on one broken file."""
    with Sandbox(parent) as box:
        (box.base / "config.json").write_text(json.dumps(BASE_FOR_TARGETS, indent="\t") + "\n")
        targets = box.work / "authscope.yml"
        targets.write_bytes(case.data)
        before_base, before_work = listing(box.base), listing(box.work)
        argv = ["fanout", "-f", str(targets), "--json", str(box.work / "r.json"), "--junit",
                str(box.work / "r.xml"), "--dotenv", str(box.work / "r.env")]  # fmt: skip
        old = os.getcwd()
        os.chdir(box.work)  # a custom command that did run would leave ran-* here
        try:
            outcome = (call_cli if real_cli else call_inprocess)(argv, box.env)
        finally:
            os.chdir(old)
        problems = _message_problems(outcome, case.expect)
        if listing(box.base) != before_base:
            problems.append("the base directory changed")
        if listing(box.work) != before_work:
            problems.append(f"files were written: {sorted(set(listing(box.work)) - set(before_work))}")
        if list(box.scopes.iterdir()):
            problems.append("a scope was left")
        return [f"{p} [{outcome.err.strip()[-300:]}]" for p in problems]


def run_config_case(case: ConfigCase, command: str, parent: Path | None = None, real_cli: bool = False) -> list[str]:
    """One authscope command on a base whose config.json is ``case.data``."""
    with Sandbox(parent) as box:
        config = box.base / "config.json"
        config.write_bytes(case.data)
        marker = box.work / "command-ran"
        if command == "login":
            argv = ["login", "new.example", "-u", "ci", "--password-env", "TARGET_PASSWORD"]
        elif command == "logout":
            argv = ["logout", "gitlab.local:4567"]
        elif command == "exec":
            argv = ["exec", "--registry", "t.example", "-u", "ci", "--password-env", "TARGET_PASSWORD",
                    "--", "touch", str(marker)]  # fmt: skip
        else:
            targets = box.work / "authscope.yml"
            targets.write_text(render(valid_doc(1)))
            argv = ["fanout", "-f", str(targets), "--json", str(box.work / "r.json")]
        before_work = listing(box.work)
        old = os.getcwd()
        os.chdir(box.work)
        try:
            outcome = (call_cli if real_cli else call_inprocess)(argv, box.env)
        finally:
            os.chdir(old)
        problems = _message_problems(outcome, case.expect + ((str(config),),))
        if config.read_bytes() != case.data:
            problems.append("config.json changed")
        # The lock file is made before the file is read (the lock protects the read-modify-write).
        extra = set(listing(box.base)) - {"config.json", "config.json.lock"}
        if extra:
            problems.append(f"files were written in the base: {sorted(extra)}")
        if listing(box.work) != before_work:
            problems.append(f"files were written: {sorted(set(listing(box.work)) - set(before_work))}")
        if list(box.scopes.iterdir()):
            problems.append("a scope was left")
        return [f"{command}: {p} [{outcome.err.strip()[-300:]}]" for p in problems]

"""Load and validate ``authscope.yml``: every error at once, each with its line.

The file is composed with pyyaml's safe loader into nodes (which keep line
numbers), turned into plain values while recording where each one came from,
then checked against the schema. ``${VAR}`` and ``${VAR:-default}`` are
expanded from the environment in every string except usernames, which are
literal (a Harbor robot ``robot$release+ci`` stays as written; ``$${`` writes a
literal ``${``). Secrets appear only by reference: ``password_env``,
``password_file``, ``username_env``.

Targets are expanded lazily: the file's own fields (``source``, ``tags``,
``command``, ...) and every target's ``name`` are expanded and checked in every
job, but the rest of a target only when it is selected (``load(..., only=)``;
none with ``names_only``, for ``authscope pipeline``). So a job needs the
variables of the targets it runs and no others: a GitLab job whose
``environment:`` scopes one target's variables to it can run that target, and
the generator of a child pipeline needs no target's variables at all. Checks
that need no variable (keys, required fields, the tool) still run for every
target.

A variable that a target names for its credentials (``password_env``,
``username_env``, a ``${VAR}`` in ``password_file``), and the secrets every
GitLab job has (``CI_JOB_TOKEN``, ...), may not be ``${...}``-expanded in any
other field: fields end up in the argv of the tools, in the ``$ ...`` lines of
the log and in ``--dry-run``, so a secret expanded there would be shown.
Tools get a target's login from its scope's Docker config instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import Problem, SecretSourceError, TargetsFileError

TOOLS = ("crane", "skopeo", "regctl", "podman", "buildah", "custom")
PULL_ONCE_TOOLS = ("crane", "skopeo", "regctl")  # podman and buildah pull into each target's own storage
DEFAULT_JOBS = 4
DEFAULT_RETRIES = 2
DEFAULT_TIMEOUT = 1800.0
PLACEHOLDERS = ("source", "destination", "registry", "repository", "tag", "name")
# {name}, but not a shell's ${name} (written $${name} in the file).
PLACEHOLDER = re.compile(r"(?<!\$)\{(\w+)\}")

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# GitLab refuses a job or an environment whose name is over 255 characters;
# `authscope pipeline` names a target's job JOB_PREFIX + name and its
# environment ENVIRONMENT_PREFIX + name (as --gitlab-deployments does).
GITLAB_NAME_MAX = 255
JOB_PREFIX = "authscope:"
ENVIRONMENT_PREFIX = "registry/"
NAME_MAX = GITLAB_NAME_MAX - max(len(JOB_PREFIX), len(ENVIRONMENT_PREFIX))
# Secrets every GitLab job has: never expanded into a field either.
CI_SECRETS = (
    "CI_JOB_TOKEN",
    "CI_REGISTRY_PASSWORD",
    "CI_DEPLOY_PASSWORD",
    "CI_DEPENDENCY_PROXY_PASSWORD",
    "CI_JOB_JWT",
    "CI_JOB_JWT_V1",
    "CI_JOB_JWT_V2",
    "DOCKER_AUTH_CONFIG",
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")

Path = tuple[Any, ...]  # keys and indexes from the document root


@dataclass(frozen=True)
class ImageRef:
    registry: str  # host[:port]
    repository: str
    tag: str | None
    digest: str | None

    def with_tag(self, tag: str) -> str:
        return f"{self.registry}/{self.repository}:{tag}"

    @property
    def pinned(self) -> str:
        """By digest when known, else by tag."""
        if self.digest:
            return f"{self.registry}/{self.repository}@{self.digest}"
        return f"{self.registry}/{self.repository}:{self.tag}"


def parse_image(ref: str) -> ImageRef:
    """host[:port]/repo[:tag][@digest]; Docker Hub short names included."""
    rest, _, digest = ref.partition("@")
    name, tag = rest, None
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        name, tag = rest[:colon], rest[colon + 1 :]
    first, _, remainder = name.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, remainder
    else:
        registry, repository = "docker.io", name if "/" in name else f"library/{name}"
    if not repository or not _REPOSITORY.fullmatch(repository):
        raise ValueError(f"{ref!r} is not an image reference (host[:port]/repository[:tag])")
    if tag is not None and not _TAG.fullmatch(tag):
        raise ValueError(f"{ref!r} has an invalid tag {tag!r}")
    if digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise ValueError(f"{ref!r} has an invalid digest")
    return ImageRef(registry, repository, tag, digest or None)


@dataclass(frozen=True)
class Source:
    image: ImageRef
    insecure: bool
    ca_file: str | None


@dataclass(frozen=True)
class Target:
    name: str
    registry: str
    repository: str
    tags: tuple[str, ...]
    tool: str
    username: str | None  # literal
    username_env: str | None
    password_env: str | None
    password_file: str | None
    insecure: bool
    ca_file: str | None
    command: tuple[str, ...] | None
    line: int
    referrers: bool = True  # signatures, attestations, SBOMs, OCI referrers go along (referrers.py)
    force: bool = False  # copied even when every tag already holds the source digest

    @property
    def password_ref(self) -> str:
        return f"password_env {self.password_env}" if self.password_env else f"password_file {self.password_file}"

    @property
    def username_ref(self) -> str:
        return f"username_env {self.username_env}" if self.username_env else f"username {self.username!r}"


@dataclass(frozen=True)
class Fanout:
    path: str
    source: Source
    targets: tuple[Target, ...]
    jobs: int
    retries: int
    timeout: float
    pull_once: bool
    tool: str  # the file's default tool; with pull_once, every target's
    names: tuple[str, ...] = ()  # every target's name, in file order (``targets`` are the selected ones)
    referrers: bool = True  # the file's referrers: (each target has its own)


# -- YAML nodes to values, remembering lines -------------------------------------

# An alias repeats its anchor's node wherever it is used, so a file of a few
# hundred bytes can stand for billions of values ("billion laughs": nine
# aliases of nine aliases of ...), and an alias inside its own anchor
# (`targets: &a [*a]`) for an endless one. Conversion counts the nodes it
# reaches again (through an alias or a merge key) and stops past
# MAX_ALIAS_NODES; a real file, `<<: *defaults` on every target included,
# stays far below. A cycle is found by node identity on the current path.
# pyyaml's own flatten_mapping is not used: it copies merged pairs without
# bound (a merge-key bomb) and changes nodes that aliases share.
MAX_ALIAS_NODES = 10_000
MAX_DEPTH = 64
_MERGE = "tag:yaml.org,2002:merge"

Alias = tuple[str, int]  # (anchor, line) of an alias as written
Pair = tuple[Any, Any, Any]  # (mapping node the pair is written in, key node, value node)


class _Refused(Exception):
    """Conversion stopped: an alias cycle, or aliases that expand past the bound."""

    def __init__(self, line: int, where: Path, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.where = where
        self.message = message


class _Doc:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lines: dict[Path, int] = {}
        self.problems: list[Problem] = []
        # (id of the parent node, index or id of the key node) -> the alias written there
        self.aliases: dict[tuple[int, int], Alias] = {}
        self.seen: set[int] = set()  # ids of nodes converted at least once
        self.repeated = 0  # nodes converted again, through aliases and merge keys
        self.open: set[int] = set()  # ids of the collections on the current path
        self.via: list[tuple[Path, Alias]] = []  # the aliases on the current path
        self.flat: dict[int, dict[Any, Pair]] = {}  # a merged mapping's pairs, once computed
        self.merging: set[int] = set()

    def problem(self, where: Path, message: str, line: int | None = None) -> None:
        if line is None:
            line = self.line(where)
        self.problems.append(Problem(self.path, line, _where(where), message))

    def line(self, where: Path) -> int:
        while where not in self.lines and where:
            where = where[:-1]
        return self.lines.get(where, 1)

    def alias(self, parent: Any, index: Any) -> Alias | None:
        return self.aliases.get((id(parent), index if isinstance(index, int) else id(index)))

    def again(self, path: Path, node: Any) -> None:
        """Count a node reached again; refuse past the bound."""
        self.repeated += 1
        if self.repeated <= MAX_ALIAS_NODES:
            return
        # The outermost alias on the path is the one a user can act on.
        where, (anchor, line) = self.via[0] if self.via else (path, ("", node.start_mark.line + 1))
        through = f" (through *{anchor} and the aliases inside it)" if anchor else ""
        raise _Refused(
            line,
            where,
            f"aliases expand this file to more than {MAX_ALIAS_NODES} values{through}, "
            'which no targets file needs (a "billion laughs" file?); write the values out',
        )


def _loader(doc: _Doc) -> Any:
    """pyyaml's safe loader, noting where each alias is written (the node it
    yields is its anchor's, whose line is the anchor's)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if parent is not None and index is not None and self.check_event(yaml.AliasEvent):
                event = self.peek_event()  # type: ignore[no-untyped-call]
                key = index if isinstance(index, int) else id(index)
                doc.aliases[(id(parent), key)] = (str(event.anchor), event.start_mark.line + 1)
            return super().compose_node(parent, index)

    return Loader


def _where(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _key_id(key_node: Any) -> Any:
    import yaml

    return (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else id(key_node)


def _merged(node: Any, path: Path, doc: _Doc) -> tuple[dict[Any, Pair], list[Pair]]:
    """A mapping's pairs, merge keys (``<<: *anchor``) resolved without
    changing the node: (merged pairs by key, the mapping's own pairs).

    As in pyyaml, the mapping's own keys override merged ones, of the
    mappings in one ``<<: [*a, *b]`` the first listed wins, and a later
    ``<<`` overrides an earlier one.
    """
    import yaml

    if id(node) in doc.merging:
        raise _Refused(node.start_mark.line + 1, path, "merges (<<) a mapping that merges it back: an endless cycle")
    doc.merging.add(id(node))
    try:
        merged: dict[Any, Pair] = {}
        own: list[Pair] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE:
                own.append((node, key_node, value_node))
                continue
            if isinstance(value_node, yaml.MappingNode):
                sources = [value_node]
            elif isinstance(value_node, yaml.SequenceNode) and all(
                isinstance(item, yaml.MappingNode) for item in value_node.value
            ):
                sources = list(value_node.value)
            else:
                doc.problem(
                    path,
                    f"<< (a merge key) takes a mapping or a list of mappings, not {value_node.id}",
                    key_node.start_mark.line + 1,
                )
                continue
            layer: dict[Any, Pair] = {}
            for source in reversed(sources):
                layer.update(_flat(source, path, doc))
            merged.update(layer)
        return merged, own
    finally:
        doc.merging.discard(id(node))


def _flat(node: Any, path: Path, doc: _Doc) -> dict[Any, Pair]:
    """What a mapping gives to a merge key: its pairs by key, merges resolved."""
    if id(node) not in doc.flat:
        merged, own = _merged(node, path, doc)
        doc.flat[id(node)] = {**merged, **{_key_id(k): (owner, k, v) for owner, k, v in own}}
    return doc.flat[id(node)]


def _value(node: Any, path: Path, doc: _Doc, via: Alias | None = None) -> Any:
    import yaml

    doc.lines[path] = node.start_mark.line + 1
    if via is not None:
        doc.via.append((path, via))
    try:
        if id(node) in doc.seen:
            doc.again(path, node)
        doc.seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            return _scalar(node, path, doc)
        line = via[1] if via else node.start_mark.line + 1
        if id(node) in doc.open:
            what = (
                f"the alias *{via[0]} stands for a node that contains it"
                if via
                else ("this mapping contains itself through aliases or merge keys")
            )
            raise _Refused(line, path, f"{what}: an endless cycle")
        if len(path) >= MAX_DEPTH:
            where, (_, line) = doc.via[0] if doc.via else (path, ("", line))
            raise _Refused(line, where, f"is nested too deeply (more than {MAX_DEPTH} levels)")
        doc.open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return _mapping(node, path, doc)
            return [_value(item, path + (i,), doc, doc.alias(node, i)) for i, item in enumerate(node.value)]
        finally:
            doc.open.discard(id(node))
    finally:
        if via is not None:
            doc.via.pop()


def _mapping(node: Any, path: Path, doc: _Doc) -> dict[Any, Any]:
    import yaml

    merged, own = _merged(node, path, doc)
    out: dict[Any, Any] = {}
    own_keys = set()
    for index, (owner, key_node, value_node) in enumerate([*merged.values(), *own]):
        key = _scalar(key_node, path, doc) if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str) or isinstance(key, Number):
            doc.problem(path, f"keys must be strings, not {_kind(key)}", key_node.start_mark.line + 1)
            continue
        if index >= len(merged) and key in own_keys:
            doc.problem(
                path + (key,),
                f"{key!r} appears twice (line {doc.lines[path + (key,)]} and line {key_node.start_mark.line + 1})",
                key_node.start_mark.line + 1,
            )
            continue
        if index >= len(merged):
            own_keys.add(key)
        doc.lines[path + (key,)] = key_node.start_mark.line + 1
        out[key] = _value(value_node, path + (key,), doc, doc.alias(owner, key_node))
        doc.lines[path + (key,)] = key_node.start_mark.line + 1
    return out


class Number(str):
    """A YAML number, kept as written: a tag ``1.10`` must not become ``1.1``.

    Where a number is expected, ``.number`` has its value.
    """

    number: Any


def _unwrap(value: Any) -> Any:
    return value.number if isinstance(value, Number) else value


def _scalar(node: Any, path: Path, doc: _Doc) -> Any:
    from yaml.constructor import ConstructorError, SafeConstructor

    try:
        value = SafeConstructor().construct_object(node)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            written = Number(node.value)
            written.number = value
            return written
        return value
    except (ConstructorError, ValueError) as exc:
        doc.problem(path, f"cannot read this value: {exc}", node.start_mark.line + 1)
        return None


def _read_yaml(path: str) -> tuple[Any, _Doc]:
    import yaml

    doc = _Doc(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise TargetsFileError(path, [Problem(path, 0, "", "no such file (give one with -f PATH)")]) from None
    except OSError as exc:
        raise TargetsFileError(path, [Problem(path, 0, "", f"cannot be read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TargetsFileError(path, [Problem(path, line, "", f"is not UTF-8 (byte {exc.start})")]) from None
    try:
        node = yaml.compose(text, Loader=_loader(doc))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TargetsFileError(path, [Problem(path, line, "", f"is not valid YAML: {reason}")]) from None
    except RecursionError:
        raise TargetsFileError(path, [Problem(path, 1, "", "is nested too deeply")]) from None
    if node is None:
        raise TargetsFileError(path, [Problem(path, 1, "", "is empty; it needs source: and targets:")])
    try:
        return _value(node, (), doc), doc
    except _Refused as exc:
        raise TargetsFileError(path, [Problem(path, exc.line, _where(exc.where), exc.message)]) from None


# -- checking -----------------------------------------------------------------------

TOP_KEYS = (
    "version",
    "source",
    "tags",
    "tool",
    "jobs",
    "retries",
    "timeout",
    "pull_once",
    "command",
    "referrers",
    "targets",
)
SOURCE_KEYS = ("image", "insecure", "ca_file")
TARGET_KEYS = (
    "name",
    "registry",
    "repository",
    "tags",
    "tool",
    "username",
    "username_env",
    "password_env",
    "password_file",
    "insecure",
    "ca_file",
    "command",
    "referrers",
    "force",
)


class _Checker:
    def __init__(
        self,
        doc: _Doc,
        environ: Mapping[str, str],
        secrets: Mapping[str, str] | None = None,
        password_file_vars: tuple[str, ...] = (),
    ) -> None:
        self.doc = doc
        self.environ = environ
        self.base_dir = os.path.dirname(os.path.abspath(doc.path))
        # variable -> what names it as a credential: never expanded into a field
        self.secrets: Mapping[str, str] = secrets or {}
        self.password_file_vars = password_file_vars  # ... except these, in password_file

    def keys(self, mapping: dict[str, Any], allowed: tuple[str, ...], where: Path) -> None:
        for key in mapping:
            if key not in allowed:
                close = _close_matches(key, allowed)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(allowed)}"
                self.doc.problem(where + (key,), f"unknown key{hint}")

    def expand(self, value: str, where: Path, allow: tuple[str, ...] = ()) -> str | None:
        """``value`` with ``${VAR}`` expanded; ``allow``: credential variables this field may use."""
        missing: list[str] = []
        refused: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            if name in self.secrets and name not in allow:
                refused.append(name)
                return ""
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        out = _VAR.sub(substitute, value)
        for name in refused:
            self.doc.problem(
                where,
                f"${{{name}}} is a credential ({self.secrets[name]}): it is never expanded here, where argv, "
                "the log and --dry-run would show it (tools read the target's login from its scope)",
            )
        for name in missing:
            self.doc.problem(where, f"${{{name}}} is not set (in GitLab CI: a CI/CD variable, or ${{{name}:-default}})")
        return None if missing or refused else out

    def string(
        self,
        mapping: dict[str, Any],
        key: str,
        where: Path,
        *,
        required: bool = False,
        expand: bool = True,
        allow: tuple[str, ...] = (),
    ) -> str | None:
        if key not in mapping or mapping[key] is None:
            if required:
                self.doc.problem(where + (key,) if key in mapping else where, f"{key}: is required")
            return None
        return self.text(mapping[key], where + (key,), expand, allow)

    def text(self, value: Any, where: Path, expand: bool = True, allow: tuple[str, ...] = ()) -> str | None:
        """A string value, expanded; None (with a problem noted) when unusable."""
        if not isinstance(value, str):  # numbers arrive as Number, a str
            self.doc.problem(where, f"must be a string, not {_kind(value)}")
            return None
        text = str(value)
        if expand:
            expanded = self.expand(text, where, allow)
            if expanded is None:
                return None
            text = expanded
        if not text.strip():
            self.doc.problem(where, "is empty" + (f" after expanding {value!r}" if text != value else ""))
            return None
        if len(text) > 4096:
            self.doc.problem(where, f"is {len(text)} characters long; the limit is 4096")
            return None
        return text

    def boolean(self, mapping: dict[str, Any], key: str, where: Path, default: bool = False) -> bool:
        value = mapping.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.doc.problem(where + (key,), f"must be true or false, not {_kind(value)}")
            return default
        return value

    def number(
        self, mapping: dict[str, Any], key: str, where: Path, default: float, lo: float, hi: float, integer: bool
    ) -> float:
        value = _unwrap(mapping.get(key, default))
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            self.doc.problem(
                where + (key,), f"must be {'a whole number' if integer else 'a number'}, not {_kind(value)}"
            )
            return default
        if not lo <= value <= hi:
            self.doc.problem(where + (key,), f"must be between {lo:g} and {hi:g}, not {value!r}")
            return default
        return value

    def env_name(self, mapping: dict[str, Any], key: str, where: Path) -> str | None:
        name = self.string(mapping, key, where, expand=False)
        if name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            self.doc.problem(
                where + (key,), f"{name!r} is not a variable name: write the name itself, e.g. HARBOR_PASSWORD"
            )
            return None
        return name

    def path(self, mapping: dict[str, Any], key: str, where: Path) -> str | None:
        value = self.string(mapping, key, where)
        if value is None:
            return None
        full = value if os.path.isabs(value) else os.path.join(self.base_dir, value)
        from .credentials import CA_LIMIT, read_file

        try:
            # A FIFO, a device or a /proc file is refused here, never waited on or read whole.
            read_file(full, value, CA_LIMIT)
        except SecretSourceError as exc:
            looked = (
                f" (looked in {self.base_dir})" if not os.path.isabs(value) and exc.reason == "no such file" else ""
            )
            self.doc.problem(where + (key,), f"{value}: {exc.reason}{looked}")
            return None
        return full

    def tags(self, mapping: dict[str, Any], where: Path) -> tuple[str, ...] | None:
        if "tags" not in mapping or mapping["tags"] is None:
            return None
        value = mapping["tags"]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.doc.problem(where + ("tags",), f"must be a non-empty list of tags, not {_kind(value)}")
            return None
        tags: list[str] = []
        for i, item in enumerate(value):
            tag = self.text(item, where + ("tags", i))
            if tag is None:
                continue
            if not _TAG.fullmatch(tag):
                self.doc.problem(
                    where + ("tags", i),
                    f"{tag!r} is not a valid tag ([A-Za-z0-9_.-], at most 128, not starting with . or -)",
                )
            elif tag not in tags:
                tags.append(tag)
        return tuple(tags) if len(tags) else None

    def command(self, mapping: dict[str, Any], where: Path) -> tuple[str, ...] | None:
        if mapping.get("command") is None:
            return None
        value = mapping["command"]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self.doc.problem(
                where + ("command",), 'must be a list of strings, e.g. ["crane", "copy", "{source}", "{destination}"]'
            )
            return None
        out: list[str] = []
        for i, item in enumerate(value):
            text = self.expand(str(item), where + ("command", i))
            if text is None:
                continue  # noted; look at the other items too
            for field in PLACEHOLDER.findall(text):
                if field not in PLACEHOLDERS:
                    self.doc.problem(
                        where + ("command", i),
                        f"unknown placeholder {{{field}}}; known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}",
                    )
            out.append(text)
        return tuple(out) if len(out) == len(value) else None


def _kind(value: Any) -> str:
    if isinstance(value, Number):
        return str(value)
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value), f"{value!r}")


def check(
    data: Any, doc: _Doc, environ: Mapping[str, str], only: Sequence[str] = (), names_only: bool = False
) -> Fanout | None:
    """Pure apart from checking that CA files exist; problems go to ``doc``.

    Targets named in ``only`` (every target when empty, none with
    ``names_only``) are expanded and checked in full; the others only as far
    as no variable is needed, and leave only their name in ``Fanout.names``.
    """
    if not isinstance(data, dict):
        doc.problem((), f"the file must be a mapping with source: and targets:, not {_kind(data)}")
        return None
    c = _Checker(doc, environ, *_credential_variables(data.get("targets")))
    c.keys(data, TOP_KEYS, ())
    version = _unwrap(data.get("version", 1))
    if version != 1:
        doc.problem(("version",), f"version {version!r} is not supported; this authscope reads version 1")

    source = _source(c, data)
    default_tags = c.tags(data, ())
    if default_tags is None and "tags" not in data and source is not None:
        if source.image.tag:
            default_tags = (source.image.tag,)
        else:
            doc.problem(("source",), "has no tag; give tags: for the destinations")
    tool = data.get("tool", "crane")
    if tool not in TOOLS:
        close = _close_matches(str(tool), TOOLS)
        doc.problem(
            ("tool",),
            f"{tool!r} is not a tool authscope drives ({', '.join(TOOLS)})"
            + (f"; did you mean {close[0]!r}?" if close else ""),
        )
        tool = "crane"
    command = c.command(data, ())
    jobs = int(c.number(data, "jobs", (), DEFAULT_JOBS, 1, 256, True))
    retries = int(c.number(data, "retries", (), DEFAULT_RETRIES, 0, 20, True))
    timeout = float(c.number(data, "timeout", (), DEFAULT_TIMEOUT, 1, 86400, False))
    pull_once = c.boolean(data, "pull_once", ())
    referrers = c.boolean(data, "referrers", (), True)

    raw_targets = data.get("targets")
    if not isinstance(raw_targets, list) or not raw_targets:
        doc.problem(("targets",) if "targets" in data else (), "targets: must be a non-empty list of destinations")
        raw_targets = []
    targets: list[Target] = []
    names: dict[str, int] = {}
    for i, raw in enumerate(raw_targets):
        name = _target_name(c, raw, ("targets", i))
        selected = not names_only and (not only or name in only)
        target = _target(c, raw, ("targets", i), name, default_tags, str(tool), command, data, selected, referrers)
        if name is None or (selected and target is None):
            continue
        if name in names:
            doc.problem(("targets", i, "name"), f"{name!r} is already the name of targets[{names[name]}]")
            continue
        names[name] = i
        if target is not None:
            targets.append(target)
    if pull_once:
        # The tools are never expanded: checked for every target, selected or not.
        for i, raw in enumerate(raw_targets):
            used = raw.get("tool", tool) if isinstance(raw, dict) else tool
            if used != tool or tool not in PULL_ONCE_TOOLS:
                doc.problem(
                    ("pull_once",),
                    f"pull_once needs every target to use one tool, crane, skopeo or regctl (targets[{i}] {raw.get('name')!r} uses {used})",
                )
                break
    if doc.problems or source is None:
        return None
    return Fanout(
        doc.path, source, tuple(targets), jobs, retries, timeout, pull_once, str(tool), tuple(names), referrers
    )


def _credential_variables(raw_targets: Any) -> tuple[dict[str, str], tuple[str, ...]]:
    """({variable: what names it as a credential}, the variables of password_file paths).

    From every target, selected or not (the names are literal, nothing is
    expanded), so no field of a selected target can show another's secret.
    """
    secrets = {name: "a GitLab job secret" for name in CI_SECRETS}
    in_paths: dict[str, str] = {}
    for i, raw in enumerate(raw_targets if isinstance(raw_targets, list) else []):
        if not isinstance(raw, dict):
            continue
        for key in ("password_env", "username_env"):
            value = raw.get(key)
            if isinstance(value, str) and VARIABLE_NAME.fullmatch(value):
                secrets.setdefault(value, f"targets[{i}].{key}")
        value = raw.get("password_file")
        if isinstance(value, str):
            for match in _VAR.finditer(value):
                if match.group(1):
                    in_paths.setdefault(match.group(1), f"in targets[{i}].password_file")
    # A password_file path may use its own variables, and no other secret.
    paths = tuple(name for name in in_paths if name not in secrets)
    for name in paths:
        secrets[name] = in_paths[name]
    return secrets, paths


def _target_name(c: _Checker, raw: Any, where: Path) -> str | None:
    """A target's name, expanded in every job (selection and job names need it)."""
    if not isinstance(raw, dict):
        return None  # reported by _target
    name = c.string(raw, "name", where, required=True)
    if name is None:
        return None
    if not _NAME.fullmatch(name):
        c.doc.problem(where + ("name",), f"{name!r} may only hold letters, digits, '.', '_' and '-'")
        return None
    if len(name) > NAME_MAX:
        c.doc.problem(
            where + ("name",),
            f"is {len(name)} characters long; the limit is {NAME_MAX}, so that its GitLab job "
            f"({JOB_PREFIX}<name>) and environment ({ENVIRONMENT_PREFIX}<name>) stay within {GITLAB_NAME_MAX}",
        )
        return None
    return name


def _source(c: _Checker, data: dict[str, Any]) -> Source | None:
    raw = data.get("source")
    where: Path = ("source",)
    if raw is None:
        c.doc.problem(
            where if "source" in data else (),
            "source: is required (the image to fan out, e.g. ${CI_REGISTRY_IMAGE}/app:${CI_COMMIT_TAG})",
        )
        return None
    if isinstance(raw, dict):
        c.keys(raw, SOURCE_KEYS, where)
        image = c.string(raw, "image", where, required=True)
        insecure = c.boolean(raw, "insecure", where)
        ca_file = c.path(raw, "ca_file", where)
        where = where + ("image",)
    else:
        image = c.string(data, "source", ())
        insecure, ca_file = False, None
    if image is None:
        return None
    try:
        ref = parse_image(image)
    except ValueError as exc:
        c.doc.problem(where, str(exc))
        return None
    return Source(ref, insecure, ca_file)


def _target(
    c: _Checker,
    raw: Any,
    where: Path,
    name: str | None,
    default_tags: tuple[str, ...] | None,
    default_tool: str,
    default_command: tuple[str, ...] | None,
    top: dict[str, Any],
    selected: bool = True,
    default_referrers: bool = True,
) -> Target | None:
    """One target, checked; a file-level key that was given but is broken
    has already been reported, so its absence is not reported again here.

    Unless ``selected``, nothing is expanded: only what needs no variable is
    checked (keys, required fields, the tool), and None is returned."""
    from .dockerconfig import ref_host
    from .errors import UsageError

    doc = c.doc
    if not isinstance(raw, dict):
        doc.problem(where, f"each target must be a mapping with name:, registry:, repository:, not {_kind(raw)}")
        return None
    before = len(doc.problems)
    c.keys(raw, TARGET_KEYS, where)
    registry = c.string(raw, "registry", where, required=True, expand=selected)
    if registry is not None and selected:
        try:
            registry = ref_host(registry)
        except UsageError as exc:
            doc.problem(where + ("registry",), str(exc))
    repository = c.string(raw, "repository", where, required=True, expand=selected)
    if repository is not None and selected and not _REPOSITORY.fullmatch(repository):
        doc.problem(where + ("repository",), f"{repository!r} is not a repository path (lowercase, e.g. release/app)")
    tags = (c.tags(raw, where) if selected else None) or default_tags
    if tags is None and raw.get("tags") is None and top.get("tags") is None:
        doc.problem(where, "no tags: set tags: on the file or on this target")
    tool = raw.get("tool", default_tool)
    if tool not in TOOLS:
        doc.problem(where + ("tool",), f"{tool!r} is not one of {', '.join(TOOLS)}")
    command = (c.command(raw, where) if selected else None) or default_command
    if tool == "custom" and command is None and raw.get("command") is None and top.get("command") is None:
        doc.problem(where, "tool: custom needs command: (on the target or the file)")
    username = c.string(raw, "username", where, expand=False)  # literal: robot$x+y
    username_env = c.env_name(raw, "username_env", where)
    if (raw.get("username") is None) == (raw.get("username_env") is None):
        doc.problem(where, "give exactly one of username: (literal) or username_env: (a variable's name)")
    password_env = c.env_name(raw, "password_env", where)
    password_file = c.string(raw, "password_file", where, expand=selected, allow=c.password_file_vars)
    if (raw.get("password_env") is None) == (raw.get("password_file") is None):
        doc.problem(
            where,
            "give exactly one of password_env: (a variable's name) or password_file: (a path, e.g. a GitLab file variable)",
        )
    if password_file is not None and not os.path.isabs(password_file):
        password_file = os.path.join(c.base_dir, password_file)
    insecure = c.boolean(raw, "insecure", where)
    ca_file = c.path(raw, "ca_file", where) if selected else None
    referrers = c.boolean(raw, "referrers", where, default_referrers)
    force = c.boolean(raw, "force", where)
    if not selected or len(doc.problems) > before or not (name and registry and repository and tags):
        return None  # reported here, or (a broken file-level key, the name) above
    return Target(
        name,
        registry,
        repository,
        tags,
        str(tool),
        username,
        username_env,
        password_env,
        password_file,
        insecure,
        ca_file,
        command,
        doc.line(where),
        referrers,
        force,
    )


def load(path: str, environ: Mapping[str, str], only: Sequence[str] = (), *, names_only: bool = False) -> Fanout:
    """Read, expand and check ``path``; TargetsFileError lists every problem.

    ``only``: the targets that will run (every one when empty); the others are
    not expanded, so their variables need not be set. ``names_only``: no
    target is expanded (``authscope pipeline`` needs their names only).
    """
    data, doc = _read_yaml(path)
    fanout = check(data, doc, environ, only, names_only)
    if fanout is None:
        raise TargetsFileError(
            path, sorted(doc.problems, key=lambda p: p.line) or [Problem(path, 1, "", "is not usable")]
        )
    return fanout


def _close_matches(word: str, possibilities: Sequence[str]) -> list[str]:
    """difflib's closest match, imported only for a file with a mistake in it."""
    import difflib

    return difflib.get_close_matches(word, possibilities, n=1)

"""Docker config files: locate, parse, layer, serialise, write atomically.

Everything here but ``read_config`` and ``write_atomic`` is pure, so tests can
call it with plain dicts.
"""

from __future__ import annotations

import binascii  # base64 without the base64 module (and struct) on exec's path
import functools
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping

from .errors import BaseWriteError, ConfigError, SecretSourceError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing stays off the exec path
    from typing import Any

CONFIG_NAME = "config.json"
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})

Config = dict[str, "Any"]

# The docker CLI picks a credential store on its own (docker-credential-
# secretservice, or -pass when `pass` is on PATH) for a config that holds no
# auth at all: no credsStore, no credHelpers, no auths entry (docker/cli
# configfile.ContainsAuth, credentials.DetectDefaultStore). A scope would
# reach that after a `docker logout` of its only entry, and docker's next
# login would store through the shared helper. This entry, for a host that
# cannot exist (RFC 2606 .invalid), keeps every scope's config holding one.
SENTINEL = "authscope-scope.invalid"


# -- locating ---------------------------------------------------------------


def base_dir(config_dir: str | None, environ: Mapping[str, str]) -> str:
    """The base Docker config directory: --config-dir, $DOCKER_CONFIG, ~/.docker."""
    if config_dir:
        return os.path.abspath(config_dir)
    if environ.get("DOCKER_CONFIG"):
        return os.path.abspath(environ["DOCKER_CONFIG"])
    home = environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".docker")


def config_path(directory: str) -> str:
    """The config.json to read and write for ``directory``.

    Symlink policy (documented in docs/design.md): a config.json that is a symlink
    is followed, as the docker CLI does, so a dotfiles-managed or mounted
    config keeps working; writes replace the link's final target atomically
    next to it and the link stays a link. A dangling link is refused rather
    than creating a file somewhere the user did not mean.
    """
    path = os.path.join(directory, CONFIG_NAME)
    if os.path.islink(path):
        real = os.path.realpath(path)
        if not os.path.exists(real):
            raise ConfigError(path, f"is a symlink to {real}, which does not exist")
        return real
    return path


# -- registry keys ------------------------------------------------------------


def _strip_scheme(name: str) -> str:
    for prefix in ("http://", "https://"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def hostname(name: str) -> str:
    """host[:port] of a registry name or URL, like docker's ConvertToHostname."""
    return _strip_scheme(name.strip()).split("/", 1)[0]


def registry_key(name: str) -> str:
    """The key a registry's credentials live under in ``auths``.

    Docker Hub in any spelling is ``https://index.docker.io/v1/``; anything
    else is host[:port], without scheme or path, as the docker CLI stores it.
    """
    host = hostname(name)
    if not host or any(c.isspace() for c in host) or "@" in host:
        raise UsageError(f"not a registry host: {name!r} (expected host[:port])")
    if host.lower() in _HUB_HOSTS:
        return DOCKER_HUB_KEY
    return host


def ref_host(name: str) -> str:
    """host[:port] as image references spell it: Docker Hub is ``docker.io``."""
    key = registry_key(name)
    return "docker.io" if key == DOCKER_HUB_KEY else key


def api_host(name: str) -> str:
    """Where a registry's /v2/ API answers: Docker Hub's is registry-1.docker.io."""
    key = registry_key(name)
    return "registry-1.docker.io" if key == DOCKER_HUB_KEY else key


def is_loopback(host: str) -> bool:
    """True when ``host`` (host[:port]) names this machine: ``localhost``, an
    IP literal in 127.0.0.0/8, or ``::1`` (``[::1]:5000`` with a port).

    Only literals count: ``127.attacker.example``, ``127.0.0.1.nip.io`` and
    ``localhost.evil.com`` resolve wherever their owner wants, and a loopback
    registry gets plain HTTP (the registry client's fallback, crane's).
    """
    name = host.strip()
    if name.startswith("["):  # [::1] or [::1]:5000
        name, bracket, rest = name[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return False
    elif name.count(":") == 1:  # host:port; more colons: a bare IPv6 literal
        name = name.partition(":")[0]
    if name.lower() == "localhost":
        return True
    if not name or not (name[0].isdigit() or ":" in name):
        return False  # not an IP literal: spare the import
    import ipaddress  # ~2 ms, and only for names that may be literals

    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    # Not IPv6's is_loopback: from Python 3.13 it also takes ::ffff:127.x.
    return address.is_loopback if address.version == 4 else address.compressed == "::1"


def same_registry(key: str, registry: str) -> bool:
    """True when the auths key ``key`` names the same registry as ``registry``.

    Covers ``https://host``, ``http://host/v1/`` and the Docker Hub spellings,
    so a logout removes every variant a tool may have written.
    """
    a = _normal_key(key)
    return a is not None and a == _normal_key(registry)


@functools.lru_cache(maxsize=4096)
def _normal_key(name: str) -> str | None:
    """``registry_key(name).lower()``, None when it is no registry name; cached: a scope
    over a base of n entries compares every key with the target's (scope_lifecycle)."""
    try:
        return registry_key(name).lower()
    except UsageError:
        return None


# -- parsing ------------------------------------------------------------------


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_config(data: bytes, path: str) -> Config:
    """Parse and shape-check a Docker config; raise ConfigError naming ``path``."""
    if data.startswith(b"\xef\xbb\xbf"):
        raise ConfigError(path, "starts with a UTF-8 byte-order mark, which docker cannot read either")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"is not UTF-8 (byte {exc.start})") from None
    if not text.strip():
        return {}
    try:
        cfg = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise ConfigError(path, f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except _DuplicateKey as exc:
        # Go's decoder merges duplicated objects and tools disagree on which
        # one wins; a write would keep only one. Refuse rather than lose one.
        raise ConfigError(path, f"has the key {exc.key!r} twice in one object; merge them by hand") from None
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise ConfigError(path, f"is not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(path, "is not valid JSON: nested too deeply") from None
    if not isinstance(cfg, dict):
        raise ConfigError(path, f"must hold a JSON object, not {type(cfg).__name__}")
    auths = cfg.get("auths", {})
    if not isinstance(auths, dict):
        raise ConfigError(path, '"auths" must be an object')
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise ConfigError(path, f'"auths" entry {key!r} must be an object')
    helpers = cfg.get("credHelpers", {})
    if not isinstance(helpers, dict) or not all(isinstance(v, str) for v in helpers.values()):
        raise ConfigError(path, '"credHelpers" must map registries to helper names')
    if not isinstance(cfg.get("credsStore", ""), str):
        raise ConfigError(path, '"credsStore" must be a string')
    return cfg


def read_bytes(path: str) -> bytes | None:
    """The bytes of the config file ``path``, None when it doesn't exist.

    Anything but a regular file is a ConfigError, found without waiting: a
    tool may put a FIFO where config.json was, and a plain open() would then
    block the guard, and the job's cleanup, until a writer came.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise ConfigError(path, "cannot be read (permission denied)") from None
    except OSError as exc:  # ENXIO: a socket; ELOOP: a link loop
        raise ConfigError(path, f"cannot be opened ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(path, "is a directory")
        if not stat.S_ISREG(mode):
            raise ConfigError(path, "is not a regular file (a FIFO, a device or a socket)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read()


def read_config(path: str) -> tuple[bytes | None, Config]:
    """(raw bytes or None when missing, parsed config)."""
    data = read_bytes(path)
    if data is None:
        return None, {}
    return data, parse_config(data, path)


def serialize(cfg: Config) -> bytes:
    """Bytes as the docker CLI writes them: tab-indented JSON and a newline."""
    return (json.dumps(cfg, indent="\t") + "\n").encode("utf-8")


# -- entries and layering -----------------------------------------------------


def auth_entry(username: str, password: str) -> dict[str, str]:
    """The ``auths`` value docker, crane, skopeo and regctl all read."""
    return {"auth": encode_auth(username, password)}


def encode_auth(username: str, password: str) -> str:
    """base64 of ``username:password``, as every registry client sends it."""
    try:
        raw = f"{username}:{password}".encode()
    except UnicodeEncodeError:
        # Sources check this with the variable's or file's name (credentials.
        # check_text); this is the last line: no traceback quoting the value.
        raise SecretSourceError("a username or password", "holds bytes that are not UTF-8 text") from None
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def with_login(cfg: Config, key: str, entry: Mapping[str, Any]) -> Config:
    """A copy of ``cfg`` whose only change is ``auths[key] = entry``.

    Other spellings of the same registry are removed so tools don't pick a
    stale one.
    """
    new = dict(cfg)
    auths = {k: v for k, v in cfg.get("auths", {}).items() if not same_registry(k, key)}
    auths[key] = dict(entry)
    new["auths"] = auths
    return new


def without_login(cfg: Config, registry: str) -> Config:
    """A copy of ``cfg`` without any ``auths`` entry for ``registry``."""
    new = dict(cfg)
    if "auths" in cfg:
        new["auths"] = {k: v for k, v in cfg["auths"].items() if not same_registry(k, registry)}
    return new


def layer(
    base: Config,
    key: str | None,
    entry: Mapping[str, Any],
    inline: Mapping[str, Mapping[str, Any]] = {},  # noqa: B006 - read-only default
) -> Config:
    """The config of a scope: ``base`` plus the target's login, and no helpers.

    ``credsStore`` and ``credHelpers`` are dropped entirely (invariant 2), so
    nothing run in the scope can store into or erase from a shared helper.
    ``inline`` holds base credentials read once from a helper because the run
    needs them (the source registry); they are written in as plain entries.
    The ``SENTINEL`` entry keeps docker from choosing a default store.
    """
    cfg = {k: v for k, v in base.items() if k not in ("credsStore", "credHelpers")}
    cfg = json.loads(json.dumps(cfg))  # deep copy: the scope must never alias the base
    for registry, value in inline.items():
        cfg = with_login(cfg, registry, value)
    cfg.setdefault("auths", {})[SENTINEL] = {}
    return with_login(cfg, key, entry) if key else cfg


def helper_for(cfg: Config, key: str) -> str | None:
    """The credential helper the docker CLI would use for ``key``, if any."""
    helpers = cfg.get("credHelpers", {})
    for registry, helper in helpers.items():
        if same_registry(registry, key):
            return str(helper)
    return str(cfg.get("credsStore") or "") or None


def has_inline_auth(cfg: Config, key: str) -> bool:
    for registry, entry in cfg.get("auths", {}).items():
        if same_registry(registry, key) and (entry.get("auth") or entry.get("identitytoken") or entry.get("username")):
            return True
    return False


def entry_from_helper(username: str, secret: str) -> dict[str, str]:
    """An ``auths`` entry from a helper's answer; ``<token>`` means an identity token."""
    if username == "<token>":
        return {"identitytoken": secret}
    return auth_entry(username, secret)


def secrets_of(entries: Iterable[Mapping[str, Any]]) -> Iterable[str]:
    """Every secret string an entry carries, for masking."""
    for entry in entries:
        for field in ("auth", "password", "identitytoken", "registrytoken"):
            value = entry.get(field)
            if isinstance(value, str) and value:
                yield value
        auth = entry.get("auth")
        if isinstance(auth, str):
            try:
                # surrogateescape: a password that is not UTF-8 is masked as its bytes.
                # a2b_base64 of a str is base64.b64decode's: non-ASCII is a ValueError.
                _, _, password = binascii.a2b_base64(auth).decode("utf-8", "surrogateescape").partition(":")
            except ValueError:
                continue
            if password:
                yield password


# -- writing ------------------------------------------------------------------


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: temp file beside it, fsync, os.replace.

    A reader sees the old file or the new one, never a mix; a crash at any
    point leaves the old file (and at worst a stray temp file) behind.
    """
    directory = os.path.dirname(path) or "."
    name = os.path.basename(path)
    # O_EXCL|O_NOFOLLOW: never write through a link planted at the temp name.
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise BaseWriteError(path, exc.strerror or str(exc)) from None
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise BaseWriteError(path, exc.strerror or str(exc)) from None
        raise
    fsync_dir(directory)


def remove_stale_temps(path: str) -> None:
    """Remove temp files write_atomic left beside ``path`` in processes that
    were killed mid-write (their pid is gone). Call with the lock held."""
    if not os.path.isdir("/proc/self"):
        return  # no way to tell a live writer from a dead one here
    directory, name = os.path.split(path)
    stale = re.compile(re.escape(f".{name}.") + r"(\d+)\.[0-9a-f]{12}\.tmp")
    try:
        entries = os.listdir(directory or ".")
    except OSError:
        return
    for entry in entries:
        match = stale.fullmatch(entry)
        if not match or int(match.group(1)) == os.getpid() or os.path.exists(f"/proc/{match.group(1)}"):
            continue
        try:
            os.unlink(os.path.join(directory, entry))
        except OSError:
            pass


def file_mode(path: str, default: int = 0o600) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return default

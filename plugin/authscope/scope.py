"""Scopes: a temporary DOCKER_CONFIG per target, and the sweep of dead ones.

A scope is a directory (0700) named ``authscope-<pid>-<start>-<ns>-<random>``
holding ``config.json`` (0600): the base layered with one target's login, with
no credential helpers. Its owner's pid, the process start time and pid
namespace are in the name itself, so ownership is recorded atomically with the
directory's creation, and ``sweep`` can tell a dead owner from a reused pid.

Besides config.json, a scope links two directories of the base, because the
docker CLI looks for them next to its config and neither holds registry
credentials: ``cli-plugins`` (buildx, compose) and ``contexts`` (endpoints of
``docker --context``). Nothing else of the base is carried over: ``buildx``
state and ``trust`` keys start empty in a scope.

No credential store is reachable from a scope (invariant 2). Its config has
no credsStore or credHelpers and always one auths entry (dockerconfig's
SENTINEL), so the docker CLI never picks a default store for it. Because a
tool may still wipe the file, the scope's ``bin`` directory, first on its
commands' PATH, holds refusing shims under the default stores' names
(``docker-credential-secretservice``, ``-pass``, ...): docker's detection
finds them and never the real, shared store. They read nothing from stdin.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from . import dockerconfig as dc
from .base import Base, Damage, Snapshot
from .errors import ScopeError
from .records import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing stays off the exec path
    from typing import Any, TypeVar

    _Parsed = TypeVar("_Parsed")

PREFIX = "authscope-"


class _Pattern:
    """A pattern compiled when first used: exec never matches a scope's name (sweep does),
    and compiling it costs every exec's start-up ~0.3 ms."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._compiled: re.Pattern[str] | None = None

    def fullmatch(self, text: str) -> re.Match[str] | None:
        if self._compiled is None:
            self._compiled = re.compile(self.pattern)
        return self._compiled.fullmatch(text)


NAME = _Pattern(r"authscope-(\d+)-(\d+)-(\d+)-[0-9a-f]{12}")
LINKED = ("cli-plugins", "contexts")
# The stores docker/cli's DetectDefaultStore may choose, on any platform.
DEFAULT_STORES = ("secretservice", "pass", "osxkeychain", "wincred", "desktop")
SHIMS = "bin"
# `get` answers "not found", which docker takes for anonymous access (a pull
# of a public image still works after a wipe); anything else fails loudly.
_SHIM = """#!/bin/sh
# authscope: refuses the credential store {name} inside a scope (scope.py).
# It reads nothing from stdin, where docker sends the secret.
msg='authscope: docker-credential-{name} refused: nothing in an authscope scope may store into, get from or erase from a credential store, which other jobs share; a login made in the scope stays in its config.json'
echo "$msg" >&2
if [ "$1" = get ]; then
    echo 'credentials not found in native keychain'
else
    echo "$msg"
fi
exit 1
"""


# -- identity of a process --------------------------------------------------


def process_start(pid: int) -> int:
    """Start time of ``pid`` in clock ticks since boot (0 where /proc is absent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return 0
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat_line[stat_line.rfind(b")") + 2 :].split()
    return int(fields[19])


def pid_namespace() -> int:
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return 0
    return int("".join(c for c in link if c.isdecimal()) or 0)  # re.sub(r"\D", "", link): no pattern to compile


def process_alive(pid: int, start: int) -> bool:
    if start and os.path.isdir("/proc/self"):
        return process_start(pid) == start  # 0 when gone; another value when reused
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- where scopes live --------------------------------------------------------


def default_roots(environ: Mapping[str, str]) -> list[str]:
    """Candidate roots, most preferred first: tmpfs before disk."""
    out: list[str] = []
    for real in _usable_roots(environ):
        if real not in out:
            out.append(real)
    return out


def _usable_roots(environ: Mapping[str, str]) -> Iterator[str]:
    """default_roots' candidates that exist and are writable, resolved, in order (repeats
    included). tempfile (with shutil and random, ~6 ms) is imported only when the tmpfs
    roots are not usable and $TMPDIR is not set: exec's start-up usually needs none of it."""
    for root in (environ.get("XDG_RUNTIME_DIR", ""), "/dev/shm", environ.get("TMPDIR", "") or None):
        if root is None:
            import tempfile

            root = tempfile.gettempdir()
        if root and os.path.isdir(root) and os.access(root, os.W_OK | os.X_OK):
            yield os.path.realpath(root)


def check_root(root: str) -> str:
    """``root`` resolved, refused when another user could tamper with scopes."""
    real = os.path.realpath(root)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        try:
            os.makedirs(real, mode=0o700)
        except OSError as exc:
            raise ScopeError(real, f"cannot create it: {exc.strerror}") from None
        st = os.stat(real)
    except OSError as exc:
        raise ScopeError(real, exc.strerror or str(exc)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ScopeError(real, "is not a directory")
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        # Without the sticky bit, any user could rename our scope away and
        # put a directory of theirs in its place.
        raise ScopeError(real, "is world-writable without the sticky bit; choose another --scope-dir")
    if st.st_uid not in (os.geteuid(), 0):
        # Its owner could rename our scope away and put a directory of theirs
        # in its place, whatever the mode says.
        raise ScopeError(real, f"belongs to another user (uid {st.st_uid}); choose another --scope-dir")
    return real


def choose_root(explicit: str | None, environ: Mapping[str, str]) -> str:
    chosen = explicit or environ.get("AUTHSCOPE_SCOPE_DIR")
    if chosen:
        return check_root(chosen)
    first = next(_usable_roots(environ), None)  # default_roots(environ)[0], without trying the rest
    if first is None:
        raise ScopeError("(none)", "no writable $XDG_RUNTIME_DIR, /dev/shm or $TMPDIR; set --scope-dir")
    return check_root(first)


# -- making and removing ------------------------------------------------------


def make_scope_dir(root: str) -> str:
    pid = os.getpid()
    for _ in range(8):
        name = f"{PREFIX}{pid}-{process_start(pid)}-{pid_namespace()}-{os.urandom(6).hex()}"
        path = os.path.join(root, name)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ScopeError(path, exc.strerror or str(exc)) from None
        os.chmod(path, 0o700)  # the umask may have taken bits we need
        return path
    raise ScopeError(root, "could not create a unique scope directory")


def write_private(path: str, data: bytes) -> None:
    """Create ``path`` (0600), refusing to follow or reuse anything already there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


# At most this many directories are open at once while a scope is removed;
# a directory found deeper is moved up to the scope's top and removed from
# there, so a tree of any depth costs neither recursion (shutil.rmtree recurses
# once per level: a command's 1000-deep tree made it raise RecursionError) nor
# more than this many file descriptors.
REMOVE_DEPTH = 32
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def remove_tree(path: str) -> list[str]:
    """Remove a scope whatever its command did to it; what is left, as one
    "path: reason" line per entry that could not be removed (empty: all gone).

    Never raises: a cleanup that stops half-way would skip the base guard.
    Directories are opened relative to their parent with O_NOFOLLOW, so a
    link planted inside the scope is unlinked, never followed. A directory
    the command locked (``chmod 000``, a read-only subdirectory) is given
    back its owner's rwx, which its owner may always do; nothing above the
    scope is ever chmodded (the scope root may be /dev/shm, which a
    non-root user may not chmod). What cannot be removed even so (an
    immutable file, a mount point) is reported and the rest still removed.
    """
    left: dict[str, str] = {}
    parent, name = os.path.split(path)
    try:
        parent_fd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return [f"{path}: {_reason(exc)}"]
    try:
        _remove_entry(parent_fd, name, path, left)
    except Exception as exc:  # a bug here must still not cost the job its guard
        left.setdefault(path, f"unexpected error: {exc!r}")
    finally:
        os.close(parent_fd)
    return [f"{p}: {reason}" for p, reason in left.items()]


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _remove_entry(dir_fd: int, name: str, path: str, left: dict[str, str]) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError as exc:
        left[path] = _reason(exc)
        return
    if not stat.S_ISDIR(st.st_mode):
        _unlink(dir_fd, name, path, left)
        return
    top = _open_dir(dir_fd, name, path, left)
    if top is None:
        return
    try:
        while _clear(top, path, left):
            pass  # entries were moved up from too deep: another pass removes them
    finally:
        os.close(top)
    _rmdir(dir_fd, name, path, left)


def _open_dir(dir_fd: int, name: str, path: str, left: dict[str, str]) -> int | None:
    """``name`` opened (no link followed), its owner's rwx given back; None when it can't be."""
    try:
        fd = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except PermissionError:
        # `chmod 000 "$DOCKER_CONFIG"`: it is ours, so we may open it up again.
        try:
            _chmod_no_follow(dir_fd, name)
            fd = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
        except OSError as exc:
            left[path] = _reason(exc)
            return None
    except OSError as exc:  # ELOOP/ENOTDIR: replaced by a link or a file meanwhile
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            _unlink(dir_fd, name, path, left)
        else:
            left[path] = _reason(exc)
        return None
    try:
        mode = os.fstat(fd).st_mode
        if mode & 0o700 != 0o700:  # a read-only directory: its entries could not be unlinked
            os.fchmod(fd, 0o700)
    except OSError:
        pass  # not ours (root's scope, another uid's file): what fails is reported below
    return fd


def _chmod_no_follow(dir_fd: int, name: str) -> None:
    try:
        os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=False)
    except NotImplementedError:  # no fchmodat(AT_SYMLINK_NOFOLLOW): go through an O_PATH descriptor
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{fd}", 0o700)
        finally:
            os.close(fd)


def _unlink(dir_fd: int, name: str, path: str, left: dict[str, str]) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:  # EPERM: immutable (chattr +i); EROFS: on a read-only mount
        left[path] = _reason(exc)


def _rmdir(dir_fd: int, name: str, path: str, left: dict[str, str]) -> None:
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        prefix = path + os.sep
        if not any(p.startswith(prefix) for p in left):  # else "not empty" only repeats the cause
            left[path] = _reason(exc)


def _clear(top: int, top_path: str, left: dict[str, str]) -> bool:
    """Remove everything inside the open directory ``top``, iteratively; True
    when directories deeper than REMOVE_DEPTH were moved up into ``top``."""
    moved = False
    stack: list[tuple[int, str, Any]] = []  # (fd, path, its scandir iterator)
    try:
        stack.append((top, top_path, os.scandir(top)))
        while stack:
            fd, path, entries = stack[-1]
            try:
                entry = next(entries, None)
            except OSError as exc:
                left[path] = _reason(exc)
                entry = None
            if entry is None:
                stack.pop()
                entries.close()
                if stack:
                    os.close(fd)
                    _rmdir(stack[-1][0], os.path.basename(path), path, left)
                continue
            name = entry.name
            child = os.path.join(path, name)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if not is_dir:
                _unlink(fd, name, child, left)
            elif len(stack) >= REMOVE_DEPTH:
                try:
                    os.rename(name, f".deep-{os.urandom(6).hex()}", src_dir_fd=fd, dst_dir_fd=top)
                    moved = True
                except OSError as exc:
                    left[child] = _reason(exc)
            else:
                sub = _open_dir(fd, name, child, left)
                if sub is not None:
                    try:
                        stack.append((sub, child, os.scandir(sub)))
                    except OSError as exc:
                        os.close(sub)
                        left[child] = _reason(exc)
    except OSError as exc:
        left[top_path] = _reason(exc)
    finally:
        for fd, _, entries in stack:
            entries.close()
            if fd != top:
                os.close(fd)
    return moved


def _lay_shims(path: str) -> None:
    """(Re)create the refusing store shims in the scope at ``path``."""
    directory = os.path.join(path, SHIMS)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise ScopeError(directory, "was replaced by something that is not this scope's directory")
    for name in DEFAULT_STORES:
        shim = os.path.join(directory, f"docker-credential-{name}")
        try:
            os.unlink(shim)  # never write through what a command left there
        except FileNotFoundError:
            pass
        fd = os.open(shim, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
        try:
            os.fchmod(fd, 0o700)  # executable from the start, whatever the umask
            view = memoryview(_SHIM.format(name=name).encode())
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


class Scope:
    """An open scope: where its config is and the environment a child gets."""

    def __init__(self, path: str, isolate_home: bool, config: bytes = b"") -> None:
        self.path = path
        self.config_file = os.path.join(path, dc.CONFIG_NAME)
        self.isolate_home = isolate_home
        self.config = config  # what config.json holds when the scope opens
        self.damage: list[Damage] = []
        self.left_behind: list[str] = []  # what could not be removed ("path: reason")

    def reset(self) -> None:
        """Lay config.json afresh, for the next command of the same target:
        what a previous command did to it (a logout, a wipe) is undone."""
        try:
            os.mkdir(self.path, 0o700)  # `rm -rf "$DOCKER_CONFIG"` happens
        except FileExistsError:
            pass
        st = os.lstat(self.path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ScopeError(self.path, "was replaced by something that is not this scope's directory")
        try:
            os.unlink(self.config_file)  # never write through what a command left there
        except FileNotFoundError:
            pass
        except OSError as exc:  # a command made config.json a directory (EISDIR; EPERM on macOS)
            if not stat.S_ISDIR(os.lstat(self.config_file).st_mode):
                raise ScopeError(self.path, f"cannot remove config.json: {exc.strerror or exc}") from None
            try:
                remove_tree(self.config_file)
            except OSError as exc:
                raise ScopeError(
                    self.path, f"config.json was made a directory that can't be removed: {exc.strerror or exc}"
                ) from None
        try:
            write_private(self.config_file, self.config)
            _lay_shims(self.path)
        except OSError as exc:
            raise ScopeError(self.path, f"cannot lay config.json afresh: {exc.strerror or exc}") from None

    def env(self, environ: Mapping[str, str]) -> dict[str, str]:
        env = dict(environ)
        env["DOCKER_CONFIG"] = self.path
        env["REGISTRY_AUTH_FILE"] = self.config_file  # skopeo, podman, buildah
        env["AUTHSCOPE_SCOPE"] = self.path
        # First on PATH: the shims docker's default-store detection finds.
        env["PATH"] = os.pathsep.join([os.path.join(self.path, SHIMS), environ.get("PATH") or os.defpath])
        if self.isolate_home:
            home = os.path.join(self.path, "home")
            env["HOME"] = home
            env["XDG_CONFIG_HOME"] = os.path.join(home, ".config")
            env["XDG_RUNTIME_DIR"] = os.path.join(self.path, "run")
        return env


def _populate(scope: Scope, base_dir: str) -> None:
    write_private(scope.config_file, scope.config)
    _lay_shims(scope.path)
    for name in LINKED:
        source = os.path.join(base_dir, name)
        if os.path.isdir(source):
            os.symlink(source, os.path.join(scope.path, name))
    if scope.isolate_home:
        # Tools that ignore DOCKER_CONFIG and write ~/.docker/config.json
        # write the scope's own config instead.
        home = os.path.join(scope.path, "home")
        os.mkdir(home, 0o700)
        os.mkdir(os.path.join(home, ".config"), 0o700)
        os.mkdir(os.path.join(scope.path, "run"), 0o700)
        os.symlink("..", os.path.join(home, ".docker"))


def inline_from_helpers(
    cfg: dc.Config, registries: Sequence[str], environ: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """Base credentials the run needs that live in a helper, read once with ``get``."""
    from .run import helper_get

    inline = {}
    for registry in registries:
        key = dc.registry_key(registry)
        helper = dc.helper_for(cfg, key)
        if helper and not dc.has_inline_auth(cfg, key):
            username, secret = helper_get(helper, key, environ)
            inline[key] = dc.entry_from_helper(username, secret)
    return inline


@contextmanager
def open_scope(
    base: Base,
    registry: str | None,
    entry: dict[str, str],
    *,
    root: str | None = None,
    sources: Sequence[str] = (),
    isolate_home: bool = False,
    environ: Mapping[str, str] = os.environ,
    warn: Callable[[str], None] | None = None,
) -> Iterator[tuple[Scope, list[str]]]:
    """Open a scope for one target; on exit remove it and guard the base.

    Yields the scope and the secrets it holds (for masking). After the block,
    ``scope.damage`` lists what the guard found and restored in the base, and
    ``scope.left_behind`` what of the scope could not be removed (each line
    also goes to ``warn``, even when the block ends in an exception).
    With ``registry`` None the scope holds only the base (minus helpers).
    """
    snap = base.snapshot()
    inline = inline_from_helpers(snap.config, sources, environ)
    cfg = dc.layer(snap.config, dc.registry_key(registry) if registry else None, entry, inline)
    # Every credential the scope holds, the base's included, is masked.
    secrets = list(dc.secrets_of(cfg["auths"].values()))
    path = make_scope_dir(choose_root(root, environ))
    scope = Scope(path, isolate_home, dc.serialize(cfg))
    try:
        try:
            _populate(scope, base.directory)
        except OSError as exc:  # a full or read-only file system
            raise ScopeError(path, f"cannot be filled: {exc.strerror or exc}") from None
        yield scope, secrets
    finally:
        from .run import uninterrupted

        # An entry that appears in the base with this target's auth leaked
        # out of the scope; the base's own secrets are not leaks.
        leaks = [entry["auth"]] if "auth" in entry else []
        # No signal stops the removal or the guard half-way; one that comes
        # meanwhile takes effect once both are done.
        uninterrupted(lambda: _close(scope, base, snap, leaks, warn))


def _close(scope: Scope, base: Base, snap: Snapshot, leaks: Sequence[str], warn: Callable[[str], None] | None) -> None:
    """Remove the scope, then guard the base: the guard runs whatever the removal met."""
    scope.left_behind = remove_tree(scope.path)
    if warn:
        for line in scope.left_behind:
            warn(line)
    scope.damage = base.check(snap, leaks)


# -- sweep --------------------------------------------------------------------


class Swept(NamedTuple):
    removed: list[str]  # scopes removed
    left: list[str]  # "path: reason" of what could not be removed
    ended: dict[str, int]  # scope -> processes still running in it that were ended


def own_directories(roots: Sequence[str], parse: Callable[[str], _Parsed | None]) -> Iterator[tuple[str, _Parsed]]:
    """(path, what ``parse`` made of its name) for every entry under ``roots``
    that ``parse`` accepts and that is a real directory (not a link) owned by
    this user. A root that cannot be read, or an entry gone meanwhile, is passed over."""
    uid = os.geteuid()
    for root in roots:
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        for entry in entries:
            parsed = parse(entry.name)
            if parsed is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
                yield entry.path, parsed


def sweep(roots: Sequence[str]) -> list[str]:
    """Remove scopes whose owner is gone; the paths removed (see sweep_report)."""
    return sweep_report(roots).removed


def sweep_report(roots: Sequence[str]) -> Swept:
    """Remove scopes whose owner is gone: the paths removed, and what could not be.

    Only directories named like a scope, owned by this user, made in this
    pid namespace and whose owner process no longer runs are touched, so a
    sweep is safe while other jobs' scopes are live. A scope that cannot be
    removed fully is reported and the sweep goes on with the next one.
    """
    removed: list[str] = []
    left: list[str] = []
    dead: list[str] = []
    namespace = pid_namespace()
    for path, match in own_directories(roots, NAME.fullmatch):
        pid, start, ns = (int(g) for g in match.groups())
        if ns != namespace or process_alive(pid, start):
            continue
        dead.append(path)
    ended: dict[str, int] = {}
    if dead:
        from .run import end_processes_in

        # Its owner is gone, but a tool that left the owner's process group
        # (setsid) may still run in it, with the target's login at hand.
        ended = end_processes_in(dead)
    for path in dead:
        problems = remove_tree(path)
        if problems:
            left.extend(problems)
        elif not os.path.lexists(path):
            removed.append(path)
    return Swept(removed, left, ended)

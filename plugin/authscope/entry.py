"""The console script's entry point: ``exec`` and ``--version`` without argparse.

``authscope exec ... -- CMD`` runs once per command a CI script wraps, so its
start-up is paid over and over. This module reads a plain ``exec`` command
line (every option spelled in full, each at most once) by hand and runs the
command with only what that needs imported: no argparse (with gettext,
locale, shutil), no yaml, no requests, nothing of ``fanout``. Anything else
-- another command, ``--help``, an abbreviated or unknown option, a mistake
-- goes to ``cli.main`` untouched, so every message and exit code stays
argparse's and cli's. ``cli.main`` runs the same ``exec_command``; errors
are mapped to exit codes by ``cli.exit_code``, imported only when one occurs.
tests/test_perf_paths.py checks which modules this path imports.
"""

from __future__ import annotations

import os
import sys

from . import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing stays off the exec path
    from collections.abc import Mapping, Sequence
    from typing import Any, TextIO

    from .base import Damage

# The values of cli.EXIT_OK, EXIT_FAILED, EXIT_RESTORED (cli imports these).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_RESTORED = 3

# exec's options: how argparse in cli._define_exec names them (dest), by spelling.
_VALUED = {
    "--registry": "registry",
    "-u": "username",
    "--username": "username",
    "--username-env": "username_env",
    "--password-env": "password_env",
    "--password-file": "password_file",
    "--config-dir": "config_dir",
    "--scope-dir": "scope_dir",
    "--source-registry": "source_registry",
}
_SWITCHES = {"--isolate-home": "isolate_home", "-q": "quiet", "--quiet": "quiet"}
_EXCLUSIVE = (("username", "username_env"), ("password_env", "password_file"))


class ExecArgs:
    """What cli._define_exec's parser gives for an exec command line (the same attribute names)."""

    command = "exec"

    def __init__(self) -> None:
        self.registry: str | None = None
        self.username: str | None = None
        self.username_env: str | None = None
        self.password_env: str | None = None
        self.password_file: str | None = None
        self.password: str | None = None
        self.config_dir: str | None = None
        self.scope_dir: str | None = None
        self.source_registry: list[str] = []
        self.isolate_home = False
        self.quiet = False
        self.argv: list[str] = []


def parse_exec(args: Sequence[str]) -> ExecArgs | None:
    """``exec``'s arguments (after the word exec) read by hand; None for anything argparse
    should see: an option not spelled in full, one given twice, a value that looks like an
    option, two of a mutually exclusive pair, no --registry, -h/--help, -p."""
    out = ExecArgs()
    seen: set[str] = set()
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--" or not word.startswith("-") or word == "-":
            out.argv = list(args[i:])  # argparse.REMAINDER: "--" included, exec_command drops it
            break
        name, eq, value = word.partition("=")
        if name in _SWITCHES and not eq:
            dest = _SWITCHES[name]
            if dest in seen:
                return None
            seen.add(dest)
            setattr(out, dest, True)
            i += 1
            continue
        if name not in _VALUED:
            return None
        dest = _VALUED[name]
        if not eq:
            if i + 1 >= len(args):
                return None
            value = args[i + 1]
            if value.startswith("-"):
                return None
            i += 2
        else:
            if name == "-u":  # -u=x: argparse reads "=x"; let it
                return None
            i += 1
        if dest == "source_registry":
            out.source_registry.append(value)
            continue
        if dest in seen:
            return None
        seen.add(dest)
        setattr(out, dest, value)
    if out.registry is None or any(a in seen and b in seen for a, b in _EXCLUSIVE):
        return None
    return out


def say(message: str, stream: TextIO | None = None) -> None:
    from .run import mask_known

    # Every secret read so far is masked, in every form: an error may quote
    # a registry's or GitLab's answer, and that may echo a credential.
    print(f"authscope: {mask_known(message)}", file=stream or sys.stderr, flush=True)


def warn_left_behind(line: str) -> None:
    say(f"warning: could not remove {line}")


def report_damage(path: str, damage: Sequence[Damage]) -> int:
    say(f"BASE INTEGRITY: a command wrote {path} outside its scope:")
    for d in damage:
        say(f"  - {d.describe()}")
    say("run such tools with --isolate-home, or report the tool: it ignores DOCKER_CONFIG")
    return EXIT_RESTORED


def exec_command(a: Any, environ: Mapping[str, str]) -> int:
    """``authscope exec``: run a.argv in a fresh scope; its exit code (see cli._define_exec)."""
    from . import credentials, dockerconfig, run, scope
    from .base import Base
    from .errors import AuthscopeError, Interrupted, UsageError

    argv: list[str] = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
    if not argv:
        raise UsageError(
            "exec needs a command after --, e.g. `authscope exec --registry HOST ... -- crane copy SRC DST`"
        )
    user = credentials.username(a.username, a.username_env, environ)
    secret = credentials.password(a.password_env, a.password_file, False, environ, warn=say)
    run.remember([secret, dockerconfig.encode_auth(user, secret)])
    key = dockerconfig.registry_key(a.registry)
    base = Base(dockerconfig.base_dir(a.config_dir, environ))
    opened: scope.Scope | None = None
    try:
        with scope.open_scope(
            base,
            key,
            dockerconfig.auth_entry(user, secret),
            root=a.scope_dir,
            sources=a.source_registry,
            isolate_home=a.isolate_home,
            environ=environ,
            warn=warn_left_behind,
        ) as (opened, secrets):
            if not a.quiet:
                say(f"scope for {key} at {opened.path} (base {base.path})")
            run.remember(secrets)
            status = run.run_relayed(argv, opened.env(environ), run.Masker(secrets))
    except (Interrupted, AuthscopeError) as exc:
        # The guard ran as the scope closed; a restore is reported and exits 3
        # whatever else ended the command (a signal, a tool that vanished).
        if opened is None or not opened.damage:
            raise
        say(f"interrupted by signal {exc.signum}" if isinstance(exc, Interrupted) else f"error: {exc}")
        return report_damage(base.path, opened.damage)
    if opened.damage:
        return report_damage(base.path, opened.damage)
    if opened.left_behind and status == EXIT_OK:
        # The command succeeded, but a part of its scope (with the target's
        # login in it, maybe) is still on disk: that is not a success.
        say(
            f"the scope {opened.path} could not be removed fully (see above); what is left may hold the target's login: free it (chattr -i, umount), then run `authscope sweep`"
        )
        return EXIT_FAILED
    if not a.quiet:
        say(f"scope removed; base {base.path} intact; {argv[0]} exited {status}")
    return status


def exit_now(code: int) -> None:
    """End the process with ``code`` once stdout and stderr are flushed, skipping the
    interpreter's teardown (tens of milliseconds of module clean-up after a fan-out,
    on the job's critical path; a few after each exec, a third of what exec's own
    work costs). Only for a finished `fanout` or `exec` run as the console script:
    every scope is removed, the base guarded, every report written and closed,
    every thread it waits for done by then (exec starts none)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: nothing more can be said there
            pass
    os._exit(code)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The console script: ``authscope COMMAND ...``; returns the exit code (as cli.main)."""
    console = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:
        print(f"authscope {__version__}", flush=True)  # what argparse's version action prints
        return EXIT_OK
    parsed = parse_exec(argv[1:]) if argv[:1] == ["exec"] else None
    if parsed is None:
        from .cli import main as full

        code = full(argv, environ)
        if console and argv[:1] == ["fanout"]:
            exit_now(code)
        return code
    if console:
        # A run this short and this small makes no garbage worth a collector: its passes over
        # the objects the imports just made cost start-up time, and exit_now frees it all.
        import gc

        gc.disable()
    from . import run
    from .errors import Interrupted

    try:
        with run.signals_handled(raise_when_idle=True):
            code = exec_command(parsed, os.environ if environ is None else environ)
    except (Interrupted, Exception) as exc:
        from .cli import exit_code

        code = exit_code(exc)
    if console:
        exit_now(code)
    return code

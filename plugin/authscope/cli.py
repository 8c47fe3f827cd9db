"""Command line: parse, call one function per command, map errors to exit codes.

This is the only module that prints errors and chooses exit codes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    NoReturn,
)

from . import __version__, entry
from .errors import (
    AuthscopeError,
    BaseWriteError,
    CommandNotFound,
    ConfigError,
    GitLabError,
    HelperError,
    Interrupted,
    LockTimeout,
    RegistryError,
    ScopeError,
    SecretSourceError,
    TargetsFileError,
    UsageError,
)

if TYPE_CHECKING:
    from . import report as R

# Exit codes (DESIGN.md): 0 done, 1 failed, 2 usage/config error (nothing ran),
# 3 base integrity restored, 128+N signal N (130 for SIGINT).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RESTORED = 3
EXIT_GITLAB = 4
EXIT_INTERNAL = 70  # an unexpected error: a bug, reported with its traceback
EXIT_CODES = (
    (UsageError, EXIT_USAGE),
    (TargetsFileError, EXIT_USAGE),
    (SecretSourceError, EXIT_USAGE),
    (ConfigError, EXIT_USAGE),
    (ScopeError, EXIT_USAGE),
    (HelperError, EXIT_USAGE),
    (CommandNotFound, 127),
    (RegistryError, EXIT_FAILED),
    (BaseWriteError, EXIT_FAILED),
    (LockTimeout, EXIT_FAILED),
    (GitLabError, EXIT_GITLAB),
)

EPILOG = """\
exit codes:
  0    done            1  failed (a target, a registry, a write, a scope that could not be removed)
  2    usage or config error: nothing ran
  3    the base had to be restored: a tool wrote outside its scope
  4    fanout: every target is accounted for, but a GitLab release/deployment step failed
  130  interrupted (128 + signal number for other signals)

Secrets are never taken on the command line: use --password-env VAR,
--password-file PATH (a GitLab file variable) or --password-stdin.
"""


# say: one line on stderr, every known secret masked (in entry.py, the exec fast path's module).
say = entry.say


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        say(f"error: {message} (see --help)")
        raise SystemExit(EXIT_USAGE)


def _no_password_flag(value: str) -> str:
    raise argparse.ArgumentTypeError(
        "passwords are never taken on the command line, where `ps` and CI logs show them: "
        "use --password-env VAR, --password-file PATH or --password-stdin"
    )


def _add_base(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config-dir",
        metavar="DIR",
        help="the base Docker config directory (default: $DOCKER_CONFIG, else ~/.docker)",
    )


def _add_scope_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scope-dir",
        metavar="DIR",
        help="where to make scopes (default: $AUTHSCOPE_SCOPE_DIR, $XDG_RUNTIME_DIR, /dev/shm, $TMPDIR)",
    )


def _add_user(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group()
    who.add_argument("-u", "--username", metavar="USER", help="username, taken literally (robot$x+y needs no escaping)")
    who.add_argument("--username-env", metavar="VAR", help="read the username from environment variable VAR")


def _add_password(p: argparse.ArgumentParser, stdin: bool) -> None:
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("--password-env", metavar="VAR", help="read the password from environment variable VAR")
    pw.add_argument(
        "--password-file", metavar="PATH", help="read the password from a file (e.g. a GitLab file variable)"
    )
    if stdin:
        pw.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("-p", "--password", type=_no_password_flag, help=argparse.SUPPRESS)


def _define_login(p: argparse.ArgumentParser) -> None:
    _describe(
        p,
        description=(
            "Store credentials for REGISTRY in the base config.json without contacting the "
            "registry (like `crane auth login`), unless --verify. The file is updated under "
            "config.json.lock and replaced atomically; its other keys and mode are kept."
        ),
        epilog='example:\n  authscope login "$CI_REGISTRY" -u "$CI_REGISTRY_USER" --password-env CI_REGISTRY_PASSWORD',
    )
    p.add_argument("registry", metavar="REGISTRY", help="host[:port], or a URL; Docker Hub in any spelling")
    _add_user(p)
    _add_password(p, stdin=True)
    p.add_argument(
        "--verify", action="store_true", help="check the credentials against REGISTRY/v2/ before storing them"
    )
    p.add_argument("--ca-file", metavar="PATH", help="with --verify: trust this CA for the registry")
    p.add_argument("--insecure", action="store_true", help="with --verify: allow plain HTTP and unverified TLS")
    _add_base(p)
    p.set_defaults(run=_cmd_login)


def _define_logout(p: argparse.ArgumentParser) -> None:
    _describe(
        p,
        description="Remove REGISTRY's entry (and its http:// / https:// spellings) from the base; nothing else.",
        epilog='example:\n  authscope logout "$CI_REGISTRY"',
    )
    p.add_argument("registry", metavar="REGISTRY")
    _add_base(p)
    p.set_defaults(run=_cmd_logout)


def _define_exec(p: argparse.ArgumentParser) -> None:
    _describe(
        p,
        description=(
            "Run CMD with DOCKER_CONFIG and REGISTRY_AUTH_FILE pointing at a fresh scope: "
            "the base config plus a login for --registry, without credential helpers. "
            "Whatever CMD does to that config (logout, wipe, delete) is thrown away with "
            "the scope. When the scope closes, base entries a tool changed outside its "
            "scope are restored and authscope exits 3. CMD's output is relayed with every "
            "known secret replaced by [MASKED]. The exit code is CMD's; 3 when the base was "
            "restored; 1 when CMD succeeded but its scope could not be removed fully (what is "
            "left is named); 128+N when a signal N came, even during the cleanup."
        ),
        epilog=(
            "example (one fan-out target):\n"
            "  authscope exec --registry harbor.example.com -u 'robot$release+ci' \\\n"
            "      --password-env HARBOR_PASSWORD -- \\\n"
            "      sh -c 'crane copy \"$SRC\" harbor.example.com/release/app:1.0 && crane auth logout harbor.example.com'"
        ),
    )
    p.add_argument(
        "--registry", required=True, metavar="HOST", help="the target registry to log in to inside the scope"
    )
    _add_user(p)
    _add_password(p, stdin=False)
    _add_base(p)
    _add_scope_dir(p)
    p.add_argument(
        "--source-registry",
        metavar="HOST",
        action="append",
        default=[],
        help="a base registry CMD reads from whose login lives in a credential helper: "
        "read it once with the helper's `get` and write it into the scope (repeatable)",
    )
    p.add_argument(
        "--isolate-home",
        action="store_true",
        help="also point HOME and XDG_CONFIG_HOME/XDG_RUNTIME_DIR into the scope, for tools that ignore DOCKER_CONFIG",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing of authscope's own unless something is wrong"
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(run=_cmd_exec)


def _define_sweep(p: argparse.ArgumentParser) -> None:
    _describe(
        p,
        description=(
            "Remove scope directories whose owning process is gone. Scopes of live "
            "processes, other users' and anything not named like a scope are never touched, "
            "so this is safe while other jobs on the runner are mid-flight. Processes of "
            "this user still running in a dead scope (a tool that left its job's process "
            "group) are ended first. Job scopes (authscope job open) of jobs that are over "
            "are retired with their base guard. A scope that cannot be removed fully is "
            "named, the sweep goes on, and exits 1."
        ),
        epilog="example (.gitlab-ci.yml):\n  after_script:\n    - authscope sweep",
    )
    p.add_argument(
        "--scope-dir",
        metavar="DIR",
        action="append",
        help="look here (repeatable; default: every place scopes are made)",
    )
    p.set_defaults(run=_cmd_sweep)


def _define_job(p: argparse.ArgumentParser) -> None:
    _describe(
        p,
        description=(
            "Per-job auth isolation on a shared runner: `job open` (before_script) gives the "
            "job's whole script its own Docker config, layered over the runner's base; "
            "`job close` (after_script) removes it and checks the base. See docs/job-scope.md."
        ),
        epilog=(
            "example (.gitlab-ci.yml):\n"
            "  before_script:\n"
            '    - eval "$(authscope job open)"\n'
            "  after_script:\n"
            "    - authscope job close"
        ),
    )
    sub = p.add_subparsers(dest="job_command", metavar="open|close", parser_class=_Parser)
    sub.required = True
    opener = sub.add_parser("open", help="make this job's scope and print the shell lines that point the job at it")
    _describe(
        opener,
        description=(
            "Make a private Docker config for this CI job (a scope: the base config.json "
            "without credsStore/credHelpers) and print POSIX shell lines that point the job's "
            "shell at it: DOCKER_CONFIG, REGISTRY_AUTH_FILE (skopeo, podman, buildah), "
            "AUTHSCOPE_SCOPE, and DOCKER_CERT_PATH when the base holds the docker daemon's TLS "
            "keys. Evaluate them with eval. The job's own logins go into the scope, never into "
            "the base: $CI_REGISTRY as $CI_REGISTRY_USER (password from $CI_REGISTRY_PASSWORD, "
            "never argv) and every entry of DOCKER_AUTH_CONFIG (JSON, or a File variable). "
            "Whatever the job then does to its Docker config (login, logout, a wipe) stays in "
            "its scope; the runner's base is only read.\n\n"
            "The scope lives in $AUTHSCOPE_SCOPE_DIR, $XDG_RUNTIME_DIR, /dev/shm or $TMPDIR as "
            "authscope-job-<CI_JOB_ID>-<digest of the job's ids>-<shell>-<expiry>/ and is found "
            "again by `authscope job close`, from the same CI variables. When open fails, it "
            "prints `exit N` for eval instead of the lines, so the job stops rather than run on "
            "the shared config."
        ),
        epilog=(
            "example:\n"
            '  eval "$(authscope job open)"\n'
            '  eval "$(authscope job open --isolate-home)"   # tools that write ~/.docker/config.json'
        ),
    )
    _add_base(opener)
    _add_scope_dir(opener)
    opener.add_argument(
        "--registry-login",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log in to $CI_REGISTRY in the scope, or not (default: yes, when CI_REGISTRY_USER/PASSWORD are set)",
    )
    opener.add_argument(
        "--isolate-home",
        action="store_true",
        help="also export HOME, XDG_CONFIG_HOME and XDG_RUNTIME_DIR into the scope, for tools that ignore "
        "DOCKER_CONFIG (~/.docker/config.json, podman's auth.json); git, ssh and caches then see an empty home",
    )
    opener.add_argument(
        "--source-registry",
        metavar="HOST",
        action="append",
        default=[],
        help="a base registry whose login lives in a credential helper: read it once with the helper's "
        "`get` and write it into the scope (repeatable)",
    )
    opener.set_defaults(run=_cmd_job)
    closer = sub.add_parser("close", help="remove this job's scope and run the base guard (after_script)")
    _describe(
        closer,
        description=(
            "Find this job's scope from CI_JOB_ID, CI_PROJECT_ID, CI_PIPELINE_ID, CI_SERVER_URL, "
            "CI_RUNNER_ID and CI_CONCURRENT_ID (after_script runs in a new shell: before_script's "
            "exports are gone), remove it, and check the base against what it held when the job "
            "opened its scope: entries a tool changed or removed outside the scope are restored "
            "and authscope exits 3. Nothing to close (never opened, already closed or swept) is "
            "not an error. A job killed before after_script leaves a scope that `authscope sweep` "
            "retires the same way, guard included: once its CI_JOB_TIMEOUT (+15 min) has passed, or "
            "10 minutes after a sweep first saw the job's shell gone."
        ),
        epilog="example (.gitlab-ci.yml):\n  after_script:\n    - authscope job close\n    - authscope sweep",
    )
    closer.add_argument(
        "--scope-dir",
        metavar="DIR",
        help="where `job open` made it (default: $AUTHSCOPE_SCOPE_DIR, else every place scopes are made)",
    )
    closer.set_defaults(run=_cmd_job)


def _define_fanout(p: argparse.ArgumentParser) -> None:
    _describe(
        p,
        description=(
            "Copy the source image to every target of a targets file, N at a time, each in "
            "its own scope. Every target's credentials are checked at /v2/ first; a target whose "
            "tags already hold the source digest (read with HEAD) is UP TO DATE and not copied; transient "
            "failures are retried with backoff; every destination tag is read back and must "
            "hold the source's digest. Reports: a live log, a GitLab collapsible section per "
            "target, a summary table, and optionally JUnit, dotenv and JSON files."
        ),
        epilog=(
            "examples:\n"
            "  authscope fanout --dry-run                       # print the plan, run nothing\n"
            "  authscope fanout -f release.yml --jobs 8 --junit junit.xml --dotenv fanout.env\n"
            "  authscope fanout --target harbor-remote-1        # one target (child pipelines)\n"
            "\nOnly the targets that run are expanded: --target X needs X's ${VAR}s (and the file's\n"
            "own), not the other targets'. A variable a target names as a credential (password_env,\n"
            "username_env, a ${VAR} in password_file) or CI_JOB_TOKEN-like job secrets may not be\n"
            "${...}-expanded in any other field, command: included: argv, the `$ ...` log lines and\n"
            "--dry-run show fields (exit 2). Tools read the target's login from its scope's config.\n"
            "\nexit codes: 0 all landed, 1 some target failed, 2 config error (nothing ran),\n"
            "3 the base guard restored entries, 130 interrupted (reports are still written)"
        ),
    )
    p.add_argument(
        "-f", "--file", default="authscope.yml", metavar="PATH", help="the targets file (default: authscope.yml)"
    )
    p.add_argument(
        "--jobs", type=_positive_int, metavar="N", help="targets at a time (default: jobs: in the file, else 4)"
    )
    p.add_argument("--fail-fast", action="store_true", help="start no new target after one fails")
    p.add_argument("--dry-run", action="store_true", help="print the plan (argv without secrets) and run nothing")
    p.add_argument(
        "--force",
        action="store_true",
        help="copy every target even when its tags already hold the source digest (default: such a target is "
        "reported UP TO DATE and nothing is copied; force: true does it for one target)",
    )
    p.add_argument("--target", action="append", default=[], metavar="NAME", help="only this target (repeatable)")
    p.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="per-target time limit (default: timeout: in the file, else 1800)",
    )
    p.add_argument(
        "--retries",
        type=_non_negative_int,
        metavar="N",
        help="retries of a transient failure (default: retries: in the file, else 2)",
    )
    p.add_argument(
        "--pull-once",
        action="store_true",
        help="fetch the source once into a local OCI layout ($TMPDIR), then push every target from it "
        "(one source read instead of one per target; digests unchanged)",
    )
    p.add_argument(
        "--referrers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="copy (or not) what refers to the source digest along with it: cosign signatures, attestations "
        "and SBOMs (sha256-<hex>.sig/.att/.sbom), OCI 1.1 referrers, recursively; each is read back "
        "(default: referrers: in the file, else on)",
    )
    p.add_argument("--junit", metavar="PATH", help="write a JUnit XML report (artifacts: reports: junit)")
    p.add_argument("--dotenv", metavar="PATH", help="write a dotenv report (artifacts: reports: dotenv)")
    p.add_argument("--json", metavar="PATH", help="write a versioned JSON report")
    p.add_argument(
        "--gitlab-release",
        action="store_true",
        help="after the fan-out, give the release of $CI_COMMIT_TAG one image link per landed target and tag, "
        "pinned to the digest (created or updated in place; never duplicated)",
    )
    p.add_argument(
        "--gitlab-deployments",
        action="store_true",
        help="after the fan-out, record one deployment per target in environment registry/<target>",
    )
    p.add_argument(
        "--gitlab-token-env",
        type=_variable_name,
        metavar="VAR",
        help="a variable holding a project/personal access token (api scope) to use instead of CI_JOB_TOKEN",
    )
    _add_base(p)
    _add_scope_dir(p)
    p.set_defaults(run=_cmd_fanout)


def _define_check(p: argparse.ArgumentParser) -> None:
    _describe(
        p,
        description=(
            "Check, before release day and without pushing anything, that every target of a "
            "targets file can be released to: its credential variables are set, its registry "
            "answers, it accepts the credentials, and the account may push to the repository "
            "(a Bearer token asked for push,pull and what it grants; on Basic-auth registries, a "
            "blob upload started and cancelled). And the source: readable with the base's login, "
            "its tag exists. Targets are checked in parallel; no blob, manifest or tag is written."
        ),
        epilog=(
            "examples:\n"
            "  authscope check                                  # every target of authscope.yml\n"
            "  authscope check --target harbor-remote-1 --junit check.xml\n"
            "\nexit codes: 0 all pass, 1 some target (or the source) failed, 2 config error"
        ),
    )
    p.add_argument(
        "-f", "--file", default="authscope.yml", metavar="PATH", help="the targets file (default: authscope.yml)"
    )
    p.add_argument("--target", action="append", default=[], metavar="NAME", help="only this target (repeatable)")
    p.add_argument(
        "--jobs", type=_positive_int, metavar="N", help="targets checked at a time (default: jobs: in the file, else 4)"
    )
    p.add_argument("--junit", metavar="PATH", help="write a JUnit XML report: a testcase per target and the source")
    p.add_argument("--json", metavar="PATH", help="write a versioned JSON report")
    _add_base(p)
    p.set_defaults(run=_cmd_check)


def _define_pipeline(p: argparse.ArgumentParser) -> None:
    _describe(
        p,
        description=(
            "Print a child pipeline (YAML) for a fan-out that outgrows one job: one job per "
            "target, each with environment registry/<target> so environment-scoped CI/CD "
            "variables (the target's password) reach it, or --slices N jobs. Run it from a "
            "parent job with `trigger: include: artifact:` and `strategy: depend`.\n\n"
            "Which variables each job needs: this generator only those of the file's own fields "
            "(source, tags, command...) and of the targets' names; each child job those and its "
            "own target's (registry, password_file, ca_file...), never another target's. So a "
            "target's variables can all be scoped to its environment registry/<target>."
        ),
        epilog=(
            "example (.gitlab-ci.yml):\n"
            "  generate:\n"
            "    script: authscope pipeline -f authscope.yml > child.yml\n"
            "    artifacts: {paths: [child.yml]}\n"
            "  fanout:\n"
            "    trigger:\n"
            "      include: [{artifact: child.yml, job: generate}]\n"
            "      strategy: depend"
        ),
    )
    p.add_argument(
        "-f", "--file", default="authscope.yml", metavar="PATH", help="the targets file (default: authscope.yml)"
    )
    p.add_argument(
        "--slices",
        type=_positive_int,
        metavar="N",
        help="N jobs, each with a slice of the targets (default: one job per target)",
    )
    p.add_argument(
        "--image",
        type=_not_empty,
        default=None,
        metavar="IMAGE",
        help="the jobs' image (default: the authscope image, every tool)",
    )
    p.add_argument(
        "--install",
        type=_not_empty,
        default=None,
        metavar="CMD",
        help="a shell line that installs authscope and the copy tool in a job (default: none, the image has them)",
    )
    p.add_argument(
        "--stage", type=_not_empty, default="fanout", metavar="NAME", help="the jobs' stage (default: fanout)"
    )
    p.add_argument("--jobs", type=_positive_int, metavar="N", help="--jobs for each generated job")
    p.add_argument("--fail-fast", action="store_true", help="--fail-fast for each generated job")
    p.add_argument("--pull-once", action="store_true", help="--pull-once for each generated job")
    p.add_argument("--gitlab-release", action="store_true", help="--gitlab-release for each generated job")
    p.add_argument(
        "--gitlab-deployments",
        action="store_true",
        help="one deployment per target and run: a per-target job's environment: is one (GitLab records it), "
        "so only jobs without an environment (slices) get --gitlab-deployments",
    )
    p.add_argument(
        "--gitlab-token-env", type=_variable_name, metavar="VAR", help="--gitlab-token-env VAR for each generated job"
    )
    p.add_argument(
        "--registry-login",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log in to $CI_REGISTRY in each child job's before_script (default: yes)",
    )
    p.set_defaults(run=_cmd_pipeline)


def _number(kind: Callable[[str], float], low: float, text: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low:g}")
    return value


def _not_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise argparse.ArgumentTypeError(f"{text!r} holds a control character (a newline?)")
    return text


def _variable_name(text: str) -> str:
    from .targets import VARIABLE_NAME

    if not VARIABLE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
    return text


def _positive_int(text: str) -> int:
    return int(_number(int, 1, text))


def _non_negative_int(text: str) -> int:
    return int(_number(int, 0, text))


def _positive_float(text: str) -> float:
    return _number(float, 0.001, text)


def _describe(p: argparse.ArgumentParser, description: str, epilog: str) -> None:
    p.description, p.epilog = description, epilog
    p.formatter_class = argparse.RawDescriptionHelpFormatter


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "login": ("store a registry login in the base config (locked, atomic)", _define_login),
    "logout": ("remove one registry's login from the base config", _define_logout),
    "exec": ("run a command in a fresh scope holding one extra login", _define_exec),
    "fanout": ("copy an image to every target of authscope.yml, in parallel, verified", _define_fanout),
    "check": ("check every target's credentials and push permission, and the source; pushes nothing", _define_check),
    "pipeline": ("print a child pipeline: one job per target (or per slice)", _define_pipeline),
    "sweep": ("remove scopes left by killed processes (for after_script)", _define_sweep),
    "job": ("give a whole CI job its own Docker config: job open / job close", _define_job),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that command's (faster start-up)."""
    parser = _Parser(
        prog="authscope",
        description=(
            "Ephemeral registry auth scopes for CI fan-out releases: every target's "
            "login, copy and logout run in a throw-away DOCKER_CONFIG layered over the "
            "base, so nothing they do can lose the base's (local registry's) login."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"authscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (summary, define) in COMMANDS.items():
        # Each sub-parser costs (argparse looks up translations for every
        # one): with ``only``, the others are never parsed, so never built.
        if only in (None, name):
            define(sub.add_parser(name, help=summary))
    return parser


# -- commands: unpack argparse values into plain calls --------------------------


def _base_dir(config_dir: str | None, environ: Mapping[str, str]) -> str:
    from .dockerconfig import base_dir

    return base_dir(config_dir, environ)


def _cmd_login(a: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from . import base, credentials, dockerconfig

    user = credentials.username(a.username, a.username_env, environ)
    secret = credentials.password(a.password_env, a.password_file, a.password_stdin, environ, warn=say)
    _remember([secret, dockerconfig.encode_auth(user, secret)])
    key = dockerconfig.registry_key(a.registry)
    if a.verify:
        from .registry import verify

        verify(key, user, secret, ca_file=a.ca_file, insecure=a.insecure)
    directory = _base_dir(a.config_dir, environ)
    changed = base.login(directory, key, dockerconfig.auth_entry(user, secret))
    say(
        f"{'stored' if changed else 'already stored:'} login for {key} as {user} in {os.path.join(directory, 'config.json')}"
    )
    return EXIT_OK


def _cmd_logout(a: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from . import base

    directory = _base_dir(a.config_dir, environ)
    if base.logout(directory, a.registry):
        say(f"removed the login for {a.registry} from {os.path.join(directory, 'config.json')}")
    else:
        say(f"no login for {a.registry} in {os.path.join(directory, 'config.json')}; nothing to do")
    return EXIT_OK


def _cmd_exec(a: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return entry.exec_command(a, environ)  # shared with the console script's fast path


_warn_left_behind = entry.warn_left_behind
_report_damage = entry.report_damage


def _remember(secrets: Sequence[str]) -> None:
    from .run import remember

    remember(secrets)


def _cmd_fanout(a: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from . import targets

    spec = targets.load(a.file, environ, a.target)  # other targets' ${VAR}s need not be set
    settings = _gitlab_settings(a, environ)  # every missing CI variable now, before anything runs
    if not a.dry_run and _credentials_present(spec, environ, a.target):
        _warm_up(spec, a.target)  # their first round trips overlap with the imports below
    from . import release

    options = release.Options(
        only=tuple(a.target),
        jobs=a.jobs,
        retries=a.retries,
        timeout=a.timeout,
        pull_once=a.pull_once or None,
        referrers=a.referrers,
        fail_fast=a.fail_fast,
        force=a.force,
        config_dir=a.config_dir,
        scope_dir=a.scope_dir,
        # No tool gets the API token of --gitlab-token-env (fanout.tool_environ);
        # the GitLab token is masked in everything relayed and written.
        withheld=(a.gitlab_token_env,) if a.gitlab_token_env else (),
        masked=(settings.token,) if settings else (),
    )
    if a.dry_run:
        release.dry_run(spec, options, environ, show=lambda text: print(text, flush=True), warn=say)
        return EXIT_OK
    report = release.run(spec, options, environ, say=say, warn=say)
    _publish(report, a.junit, a.dotenv, a.json, gitlab=environ.get("GITLAB_CI") == "true")
    if report.error:  # the source could not be read: nothing was copied
        say(f"error: {report.error}")
        return _fanout_exit(report) if report.signal is not None or report.restored else EXIT_FAILED
    code = _fanout_exit(report)
    # After the reports: a GitLab failure never hides what landed where.
    published = settings is None or report.signal is not None or _publish_to_gitlab(settings, report, a)
    return code or (EXIT_OK if published else EXIT_GITLAB)


def _credentials_present(spec: Any, environ: Mapping[str, str], only: Sequence[str]) -> bool:
    """Whether every chosen target's credentials read as fanout.resolve_credentials reads
    them (nothing remembered, nothing warned; a password_file only when it is a regular file,
    which can be read twice): a run that stops at exit 2 for one contacts no registry."""
    import stat

    from .credentials import PASSWORD_LIMIT, check_text, read_file, text
    from .errors import SecretSourceError

    try:
        for t in spec.targets:
            if only and t.name not in only:
                continue
            user = environ.get(t.username_env) if t.username_env else t.username
            if not user or (t.username_env and not check_text(user, t.username_env)):
                return False
            if t.password_env:
                password = environ.get(t.password_env)
                if not password or not check_text(password, t.password_env):
                    return False
            elif t.password_file:
                if not stat.S_ISREG(os.stat(t.password_file).st_mode):
                    return False
                if not text(read_file(t.password_file, t.password_file, PASSWORD_LIMIT), t.password_file).rstrip(
                    "\r\n"
                ):
                    return False
            else:
                return False
    except (OSError, SecretSourceError):
        return False
    return True


def _warm_up(spec: Any, only: Sequence[str]) -> None:
    """registry.warm_up for the source and every chosen target (no credential is sent),
    their TCP connections opened first (preconnect), while registry.py is imported."""
    from . import preconnect
    from .dockerconfig import api_host, is_loopback

    src = spec.source
    chosen = [(src.image.registry, src.ca_file, src.insecure)]
    chosen += [(t.registry, t.ca_file, t.insecure) for t in spec.targets if not only or t.name in only]
    hosts: set[str] = set()
    for name, _, insecure in chosen:
        host = api_host(name)
        if host not in hosts:  # the warm-up's: HTTPS, and plain HTTP where a session may fall back to it
            hosts.add(host)
            preconnect.start(host, ("https", "http") if insecure or is_loopback(host) else ("https",))
    from .registry import warm_up

    for name, ca_file, insecure in chosen:
        warm_up(name, ca_file=ca_file, insecure=insecure)


def _gitlab_settings(a: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    """GitLab's settings when --gitlab-release or --gitlab-deployments is given, else None."""
    if not (a.gitlab_release or a.gitlab_deployments):
        return None
    from . import gitlab

    settings = gitlab.settings_from_env(
        environ, a.gitlab_token_env, release=a.gitlab_release, deployments=a.gitlab_deployments
    )
    _remember([settings.token])
    return settings


def _publish_to_gitlab(settings: Any, report: R.Report, a: argparse.Namespace) -> bool:
    """Release links and deployments; False when a GitLab step failed."""
    from . import gitlab

    steps = [(a.gitlab_release, gitlab.publish_release_links), (a.gitlab_deployments, gitlab.publish_deployments)]
    ok = True
    for wanted, step in steps:
        if not wanted:
            continue
        try:
            lines = step(settings, report)
        except GitLabError as exc:
            lines, ok = list(exc.done), False
            for line in lines:
                say(f"gitlab: {line}")
            say(f"error: {exc}")
            continue
        for line in lines:
            say(f"gitlab: {line}")
    return ok


def _publish(report: R.Report, junit: str | None, dotenv: str | None, json_path: str | None, *, gitlab: bool) -> None:
    """Sections per target (GitLab's collapsible ones with ``gitlab``), the
    summary table, and the report files."""
    from . import report as R
    from .dockerconfig import write_atomic
    from .fanout import masked_report
    from .run import mask_known

    report = masked_report(report, mask_known)  # the sections, the table and every file
    for r in report.results:
        header = f"{r.name}: {r.verdict}" + (f" - {r.error}" if r.error else "")
        text = R.result_text(r)
        print(R.section(f"authscope_{r.name}", header, text, collapsed=r.status == R.OK, gitlab=gitlab), flush=True)
    print(R.summary_table(report), flush=True)
    for path, render in (
        (junit, R.junit),
        (dotenv, lambda rep: R.dotenv(rep).encode()),
        (json_path, lambda rep: R.to_json(rep).encode()),
    ):
        if path:
            write_atomic(os.path.abspath(path), render(report), 0o644)
            say(f"wrote {path}")


def _fanout_exit(report: R.Report) -> int:
    from . import report as R
    from .run import received_signal

    late = received_signal()
    if report.signal is None and late is not None:  # came while the reports were written
        say(f"interrupted by signal {late} while writing the reports; every target had finished")
    elif report.signal is not None:
        say(
            f"interrupted by signal {report.signal}: {report.count(R.INTERRUPTED)} target(s) interrupted; scopes removed"
        )
    # A restore outranks everything else, a signal included: whatever ended
    # the run, the job must not pass for one whose base stayed intact.
    if report.restored:
        notes = report.restored_notes()
        unrestored = any("could NOT be restored" in note for note in notes)
        outcome = "some entries could NOT be restored: log in again" if unrestored else "the entries were restored"
        say(f"BASE INTEGRITY: a tool wrote the base config outside its scope; {outcome}:")
        for note in notes:
            say(f"  - {note}")
        return EXIT_RESTORED
    signal = report.signal if report.signal is not None else late
    if signal is not None:
        return 128 + signal
    failed = len(report.results) - report.count(R.OK)
    if failed:
        say(f"{failed} of {len(report.results)} target(s) did not land")
        return EXIT_FAILED
    return EXIT_OK


def _cmd_check(a: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from . import check
    from . import report as R
    from .dockerconfig import write_atomic
    from .fanout import masked_report
    from .run import mask_known

    options = check.Options(only=tuple(a.target), jobs=a.jobs, config_dir=a.config_dir)
    report = masked_report(check.run(a.file, environ, options), mask_known)
    for r in report.results:
        say(check.line(r), sys.stdout)
    print(check.table(report), flush=True)
    for path, render in ((a.junit, check.junit), (a.json, lambda rep: check.to_json(rep).encode())):
        if path:
            write_atomic(os.path.abspath(path), render(report), 0o644)
            say(f"wrote {path}")
    failed = len(report.results) - report.count(R.OK)
    if failed:
        say(f"{failed} of {len(report.results)} check(s) failed: see above")
        return EXIT_FAILED
    return EXIT_OK


def _cmd_pipeline(a: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from . import pipeline, targets

    # Target names only: the generator job has none of the variables scoped
    # to the targets' environments (passwords, CA files, even registries);
    # each child job expands its own target's. The file's own ${VAR}s are
    # expanded, so a generator job fails here, with the line, not every child.
    spec = targets.load(a.file, environ, names_only=True)
    settings = pipeline.JobSettings(
        targets_file=a.file,
        image=a.image or pipeline.DEFAULT_IMAGE,
        install=a.install if a.install is not None else pipeline.DEFAULT_INSTALL,
        stage=a.stage,
        registry_login=a.registry_login,
        jobs=a.jobs or 0,
        fail_fast=a.fail_fast,
        pull_once=a.pull_once,
        gitlab_release=a.gitlab_release,
        gitlab_deployments=a.gitlab_deployments,
        gitlab_token_env=a.gitlab_token_env or "",
    )
    print(pipeline.render(pipeline.child_pipeline(spec, settings, a.slices or 0)), end="", flush=True)
    return EXIT_OK


def _cmd_sweep(a: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from . import scope

    roots = a.scope_dir or (
        [environ["AUTHSCOPE_SCOPE_DIR"]] if environ.get("AUTHSCOPE_SCOPE_DIR") else scope.default_roots(environ)
    )
    swept = scope.sweep_report(roots)
    for path in swept.removed:
        ended = swept.ended.get(path)
        say(f"removed stale scope {path}" + (f" (ended {ended} process(es) still pointing at it)" if ended else ""))
    for line in swept.left:
        _warn_left_behind(line)
    code = _sweep_jobs(roots)  # job scopes (authscope job open): their base guard runs too
    say(f"sweep: {len(swept.removed)} stale scope(s) removed from {', '.join(roots) or '(no scope directories)'}")
    if swept.left:
        say(f"sweep: {len(swept.left)} entr{'y' if len(swept.left) == 1 else 'ies'} could not be removed (see above)")
        return max(code, EXIT_FAILED)
    return code


def _cmd_job(a: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return _job_close(a, environ) if a.job_command == "close" else _job_open(a, environ)


def _job_close(a: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from . import jobscope

    roots = (
        [a.scope_dir]
        if a.scope_dir
        else [environ["AUTHSCOPE_SCOPE_DIR"]]
        if environ.get("AUTHSCOPE_SCOPE_DIR")
        else _scope_roots(environ)
    )
    with jobscope.signals_deferred():  # a signal now lands after the guard and its report
        closed = jobscope.close_job(environ, roots)
        if not [c for c in closed if not c.raced]:
            job = jobscope.job_of(environ)
            say(f"job {job.id}: no job scope to close (never opened, already closed or swept)")
            return EXIT_OK
        return max(_report_closed(c, "closed") for c in closed)


def _job_open(a: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Open the job's scope and print the lines for eval (main prints `exit N` when anything fails)."""
    from . import jobscope

    opened, retired = jobscope.open_job(
        environ,
        root=a.scope_dir,
        config_dir=a.config_dir,
        registry_login=a.registry_login,
        isolate_home=a.isolate_home,
        sources=a.source_registry,
    )
    for c in retired:
        _report_closed(c, "removed a stale scope of this job (its shell is gone):")
    for note in opened.notes:
        say(note)
    if opened.reused:
        say(f"job {opened.job.id}: its scope is open already in this shell: {opened.scope.path}")
    else:
        logins = f"; logged in there: {', '.join(opened.logins)}" if opened.logins else ""
        say(f"job {opened.job.id}: scope {opened.scope.path} over base {opened.base} (only read){logins}")
    print(jobscope.shell_lines(opened.exports, f"authscope job scope of job {opened.job.id}"), end="", flush=True)
    return EXIT_OK


def _fail_eval(exc: BaseException) -> None:
    """`job open` failed: `eval ""` would succeed and the job would run on the
    shared config, so print the line that makes the job's eval fail instead."""
    from .jobscope import FAILED_LINE

    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
    elif isinstance(exc, Interrupted):
        code = 128 + exc.signum
    elif isinstance(exc, AuthscopeError):
        code = next((c for kind, c in EXIT_CODES if isinstance(exc, kind)), EXIT_FAILED)
    else:
        code = EXIT_INTERNAL
    print(FAILED_LINE.format(code=code), end="", flush=True)


def _scope_roots(environ: Mapping[str, str]) -> list[str]:
    from . import scope

    return scope.default_roots(environ)


def _report_closed(c: Any, what: str) -> int:
    """One retired job directory: what happened to it and to the base; its exit code."""
    if c.raced:
        return EXIT_OK
    for problem in c.problems:
        say(f"job {c.job}: {problem}")
    if c.damage:
        say(f"job {c.job}: {what} {c.directory}")
        return _report_damage(c.base, c.damage)
    if c.problems:
        return EXIT_FAILED
    say(f"job {c.job}: {what} {c.directory}; base {c.base} intact")
    return EXIT_OK


def _sweep_jobs(roots: Sequence[str]) -> int:
    from . import jobscope

    with jobscope.signals_deferred():  # a signal now lands after the guards and their reports
        codes = [_report_closed(c, "removed the scope of a job that is over:") for c in jobscope.sweep(roots)]
    return max([EXIT_OK, *codes])


# -- options from the environment ----------------------------------------------
#
# Every option of these commands (job: open and close) can also come from a variable AUTHSCOPE_<DEST>
# (--fail-fast: AUTHSCOPE_FAIL_FAST, --jobs: AUTHSCOPE_JOBS, --target:
# AUTHSCOPE_TARGET, names separated by commas), so that a CI/CD component's
# script is one plain `authscope fanout` line and its inputs are job variables.
# An option given on the command line wins; an empty variable is unset; a
# switch takes true/false (1/0, yes/no); AUTHSCOPE_JOBS=0 (and SLICES=0) keep
# the default, as the components' inputs do.
ENV_PREFIX = "AUTHSCOPE_"
ENV_COMMANDS = ("fanout", "pipeline", "job", "check")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
# Options that take a value or are switches (not --help, not --version).
_ENV_ACTIONS = (
    argparse._StoreAction,
    argparse._AppendAction,
    argparse._StoreTrueAction,
    argparse.BooleanOptionalAction,
)


def env_variable(action: argparse.Action) -> str:
    return ENV_PREFIX + action.dest.upper()


def options_from_env(parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Fill ``args``' options that the command line left at their default from AUTHSCOPE_* variables."""
    if args.command not in ENV_COMMANDS:
        return
    sub = _subparser(parser, args.command)
    if args.command == "job":  # job open|close: the options are the sub-command's
        sub = _subparser(sub, args.job_command)
    for action in sub._actions:
        if not isinstance(action, _ENV_ACTIONS) or action.help == argparse.SUPPRESS:
            continue
        name = env_variable(action)
        raw = environ.get(name, "").strip()
        if raw and getattr(args, action.dest) == action.default:
            setattr(args, action.dest, _env_value(action, name, raw))


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    found: argparse.ArgumentParser = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ).choices[name]
    return found


def _env_value(action: argparse.Action, name: str, raw: str) -> Any:
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):  # a switch
        if raw.lower() not in _TRUE + _FALSE:
            raise UsageError(f"${name} is {raw!r}: give true or false")
        return raw.lower() in _TRUE
    if action.type is _positive_int and raw == "0":
        return action.default
    words = [w.strip() for w in raw.split(",") if w.strip()] if isinstance(action, argparse._AppendAction) else [raw]
    values = []
    for word in words:
        try:
            values.append(action.type(word) if callable(action.type) else word)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise UsageError(f"${name} is {raw!r}: {exc}") from None
    return values if isinstance(action, argparse._AppendAction) else values[0]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point: ``authscope COMMAND ...``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    opening_job = argv[:2] == ["job", "open"]  # its output is eval'd: a failure must say `exit N`
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if opening_job and exc.code:
            _fail_eval(exc)
        raise
    command: Callable[[argparse.Namespace, Mapping[str, str]], int] = args.run
    environ = os.environ if environ is None else environ
    from . import run

    try:
        try:
            options_from_env(parser, args, environ)
            with run.signals_handled(raise_when_idle=args.command != "fanout"):
                return command(args, environ)
        except BaseException as exc:
            if opening_job:
                _fail_eval(exc)
            raise
    except (Interrupted, Exception) as exc:
        return exit_code(exc)


def exit_code(exc: BaseException) -> int:
    """Say what ended a command (an Interrupted or an Exception) and return its exit code."""
    if isinstance(exc, Interrupted):
        say(f"interrupted by signal {exc.signum}; scopes removed")
        return 128 + exc.signum
    if isinstance(exc, AuthscopeError):
        say(f"error: {exc}")
        for kind, code in EXIT_CODES:
            if isinstance(exc, kind):
                return code
        return EXIT_FAILED
    import traceback

    traceback.print_exception(exc)
    say("internal error: this is a bug in authscope; please report it with the traceback above")
    return EXIT_INTERNAL

"""The errors authscope raises on purpose.

Every expected failure is an ``AuthscopeError`` subclass that carries the data
its message is built from. ``cli.py`` maps each class to an exit code; nothing
else prints errors or chooses exit codes.
"""

from __future__ import annotations

from .records import NamedTuple


class AuthscopeError(Exception):
    """Base class: an expected failure with a message a user can act on."""


class UsageError(AuthscopeError):
    """Raised when the command line is wrong or incomplete (nothing ran)."""


class SecretSourceError(AuthscopeError):
    """Raised when a secret cannot be read from the variable or file named."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class Problem(NamedTuple):
    """One thing wrong with the targets file."""

    file: str
    line: int
    where: str  # e.g. "targets[1].password_env"
    message: str

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}" if self.line else self.file  # line 0: the whole file
        return f"{place}: {self.where}: {self.message}" if self.where else f"{place}: {self.message}"


class TargetsFileError(AuthscopeError):
    """Raised when authscope.yml can't be used; lists every problem found."""

    def __init__(self, path: str, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        if len(problems) == 1 and not problems[0].line:  # the file itself: missing, unreadable
            super().__init__(f"{problems[0]}; nothing ran")
            return
        lines = "\n".join(f"  {p}" for p in problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{path}: {count}; nothing ran:\n{lines}")


class ConfigError(AuthscopeError):
    """Raised when a Docker config file cannot be used; it is left untouched."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason} (the file was left as it is)")


class BaseWriteError(AuthscopeError):
    """Raised when the base config could not be written (permissions, disk full)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot write {path}: {reason} (the previous file was left as it was)")


class LockTimeout(AuthscopeError):
    """Raised when the base lock is held by another process for too long."""

    def __init__(self, lock_file: str, seconds: float) -> None:
        self.lock_file = lock_file
        self.seconds = seconds
        super().__init__(
            f"waited {seconds:g}s for the lock {lock_file}; another authscope is "
            f"writing this config. Retry, or check for a hung process holding it"
        )


class ScopeError(AuthscopeError):
    """Raised when a scope directory cannot be made safely."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"scope directory {path}: {reason}")


class HelperError(AuthscopeError):
    """Raised when a credential helper cannot give the credential the run needs."""

    def __init__(self, helper: str, registry: str, reason: str) -> None:
        self.helper = helper
        self.registry = registry
        self.reason = reason
        super().__init__(f"credential helper docker-credential-{helper} could not get {registry}: {reason}")


class RegistryError(AuthscopeError):
    """Raised when a registry rejects credentials or cannot be reached (--verify)."""

    def __init__(self, registry: str, reason: str) -> None:
        self.registry = registry
        self.reason = reason
        super().__init__(f"{registry}: {reason}")


class GitLabError(AuthscopeError):
    """Raised when GitLab refuses, or does not answer, a release or deployment request.

    Carries the HTTP ``status`` (None when GitLab could not be reached), the
    ``operation`` that failed, GitLab's own message (``detail``) and a ``hint``
    that explains the status in GitLab's terms. ``done`` lists what the step had
    already done when it failed (the lines it would have returned).
    """

    def __init__(self, operation: str, status: int | None, detail: str, hint: str) -> None:
        self.operation = operation
        self.status = status
        self.detail = detail
        self.hint = hint
        self.done: tuple[str, ...] = ()
        answer = f"HTTP {status}" if status is not None else "no answer"
        said = f" ({detail})" if detail else ""
        super().__init__(f"GitLab: {operation}: {answer}{said}. {hint[:1].upper()}{hint[1:]}")


class CommandNotFound(AuthscopeError):
    """Raised when the command to run in a scope does not exist."""

    def __init__(self, command: str) -> None:
        self.command = command
        super().__init__(f"command not found: {command}")


class Interrupted(BaseException):
    """Raised when authscope gets SIGINT/SIGTERM/SIGHUP outside a child's run.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception``
    swallows it on its way to the cleanup handlers.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signum)

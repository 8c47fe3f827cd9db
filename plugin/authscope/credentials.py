"""Where usernames and passwords come from: variables, files, stdin — never argv."""

from __future__ import annotations

import sys
from typing import IO, Mapping, Optional

from .errors import SecretSourceError, UsageError


def _strip_newline(value: str) -> str:
    # A password file or `echo "$X" |` ends in a newline that is not part of it.
    if value.endswith("\r\n"):
        return value[:-2]
    if value.endswith("\n"):
        return value[:-1]
    return value


def username(literal: Optional[str], env_var: Optional[str], environ: Mapping[str, str]) -> str:
    """The username, taken literally (``robot$project+ci`` needs no escaping)."""
    if literal is not None:
        if not literal:
            raise UsageError("-u/--username is empty")
        return literal
    if env_var:
        value = environ.get(env_var)
        if value is None:
            raise SecretSourceError(f"--username-env {env_var}", "the variable is not set")
        if not value:
            raise SecretSourceError(f"--username-env {env_var}", "the variable is empty")
        return value
    raise UsageError("a username is needed: -u USER or --username-env VAR")


def password(
    env_var: Optional[str],
    file: Optional[str],
    use_stdin: bool,
    environ: Mapping[str, str],
    stdin: Optional[IO[str]] = None,
) -> str:
    """The password from exactly one of a variable, a file or stdin."""
    given = [x for x in (env_var, file, use_stdin or None) if x]
    if len(given) != 1:
        raise UsageError(
            "give the password with exactly one of --password-env VAR, --password-file PATH "
            "or --password-stdin (never on the command line)"
        )
    if env_var:
        value = environ.get(env_var)
        source = f"--password-env {env_var}"
        if value is None:
            raise SecretSourceError(
                source, "the variable is not set (in GitLab: is it protected, and is this a protected ref?)"
            )
    elif file:
        source = f"--password-file {file}"
        try:
            with open(file, encoding="utf-8") as f:
                value = _strip_newline(f.read())
        except FileNotFoundError:
            raise SecretSourceError(source, "no such file") from None
        except IsADirectoryError:
            raise SecretSourceError(source, "is a directory") from None
        except PermissionError:
            raise SecretSourceError(source, "permission denied") from None
        except UnicodeDecodeError:
            raise SecretSourceError(source, "is not UTF-8 text") from None
    else:
        source = "--password-stdin"
        value = _strip_newline((stdin or sys.stdin).read())
    if not value:
        raise SecretSourceError(source, "the password is empty")
    return value

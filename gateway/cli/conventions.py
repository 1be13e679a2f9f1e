"""CLI conventions every ``mragw`` command follows.

- ``--help`` on every command (Typer gives it).
- ``--json`` on every command that reports something: exactly one JSON document on stdout.
- Human messages and errors go to stderr; only the report goes to stdout.
- Exit codes: 0 done or answered; 1 a check that did not pass; 2 bad input or usage (the message
  names the bad value); 3 a dependency is unreachable.

Domain packages raise their own errors; this module alone maps them to exit codes, through one
table (sigstore-python style), so a command body never calls ``sys.exit``.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from enum import IntEnum
from typing import Any, ParamSpec, TypeVar

import sqlalchemy.exc
import typer

from crypto.errors import CryptoError, VerificationError
from gateway.errors import CheckFailedError, GatewayError, InputError, UnreachableError
from registry.errors import RegistryError


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1
    BAD_INPUT = 2
    UNREACHABLE = 3


# First match wins, so subclasses come before their roots.
ERROR_EXIT_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (VerificationError, ExitCode.CHECK_FAILED),
    (CheckFailedError, ExitCode.CHECK_FAILED),
    (UnreachableError, ExitCode.UNREACHABLE),
    # A database that refuses or drops connections (asyncpg raises OSError subclasses,
    # SQLAlchemy wraps driver failures in OperationalError/InterfaceError).
    (ConnectionError, ExitCode.UNREACHABLE),
    (TimeoutError, ExitCode.UNREACHABLE),
    (sqlalchemy.exc.OperationalError, ExitCode.UNREACHABLE),
    (sqlalchemy.exc.InterfaceError, ExitCode.UNREACHABLE),
    (InputError, ExitCode.BAD_INPUT),
    (CryptoError, ExitCode.BAD_INPUT),
    (RegistryError, ExitCode.BAD_INPUT),
    (GatewayError, ExitCode.BAD_INPUT),
    (OSError, ExitCode.BAD_INPUT),
)


def exit_code_for(error: BaseException) -> ExitCode | None:
    for kind, code in ERROR_EXIT_CODES:
        if isinstance(error, kind):
            return code
    return None


def say(message: str) -> None:
    """A human message: always stderr, so stdout stays a clean report."""
    print(message, file=sys.stderr, flush=True)


def emit_json(document: Any) -> None:
    """Write the one JSON document of a ``--json`` command to stdout."""
    sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=None, default=str))
    sys.stdout.write("\n")
    sys.stdout.flush()


def emit_text(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


P = ParamSpec("P")
R = TypeVar("R")


def command(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command body: our errors become a message on stderr and their exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as error:
            code = exit_code_for(error)
            if code is None:
                raise
            if code is ExitCode.UNREACHABLE and not isinstance(error, UnreachableError):
                # A raw driver error names an address, not the problem: say what it means.
                say(f"error: a dependency is unreachable (database?): {error}")
            else:
                say(f"error: {error}")
            raise typer.Exit(int(code)) from None

    return wrapper


def fail(code: ExitCode, message: str) -> typer.Exit:
    """Report ``message`` on stderr and return the Exit to raise."""
    say(f"error: {message}")
    return typer.Exit(int(code))

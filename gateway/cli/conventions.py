"""CLI conventions every ``mragw`` command follows.

- ``--help`` on every command (Typer gives it).
- ``--json`` on every command that reports something: exactly one JSON document on stdout.
- Human messages and errors go to stderr; only the report goes to stdout.
- Exit codes: 0 done or answered; 1 a check that did not pass; 2 bad input or usage (the message
  names the bad value); 3 a dependency is unreachable.
- Progress (a Rich bar with rate and ETA) is drawn on stderr only when stderr is a terminal and
  ``--json`` is not given; otherwise long work is silent until its report.
- Log records go to stderr through :mod:`gateway.logs` (text unless ``MRAGW_LOG_FORMAT`` says
  otherwise, warnings and above); ``mragw serve`` configures its own from its flags.

Domain packages raise their own errors; this module alone maps them to exit codes, through one
table (sigstore-python style), so a command body never calls ``sys.exit``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from enum import IntEnum
from typing import Any, ParamSpec, TypeVar

import sqlalchemy.exc
import typer

from crypto.errors import CryptoError, VerificationError
from gateway import logs
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


# -- logging -----------------------------------------------------------------------------------

LOG_FORMAT_ENV = "MRAGW_LOG_FORMAT"
LOG_LEVEL_ENV = "MRAGW_LOG_LEVEL"


def configure_logging(
    fmt: str | None = None,
    level: str | None = None,
    default_fmt: str = "text",
    default_level: str = "warning",
) -> None:
    """Configure logging for this ``mragw`` process: flags first, then the environment, then
    the defaults (text and warnings for a CLI command; ``serve`` passes auto and info)."""
    chosen_fmt = fmt or os.environ.get(LOG_FORMAT_ENV) or default_fmt
    chosen_level = level or os.environ.get(LOG_LEVEL_ENV) or default_level
    try:
        logs.configure(chosen_fmt, chosen_level)
    except ValueError as error:
        where = "--log-format/--log-level" if fmt or level else f"{LOG_FORMAT_ENV}/{LOG_LEVEL_ENV}"
        raise InputError(f"{where}: {error}") from None


def configure_cli_logging() -> None:
    """At process start (before any command): a bad ``MRAGW_LOG_*`` value is exit 2."""
    try:
        configure_logging()
    except InputError as error:
        say(f"error: {error}")
        raise SystemExit(int(ExitCode.BAD_INPUT)) from None


# -- progress ----------------------------------------------------------------------------------

Advance = Callable[[int], None]


def progress_enabled(json_out: bool) -> bool:
    """Whether to draw progress: never with ``--json``, only when stderr is a terminal (a pipe,
    a file or a CI log gets the report alone)."""
    if json_out:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _ignore(_count: int) -> None:
    return None


@contextlib.contextmanager
def progress_bar(
    description: str, total: int, *, enabled: bool, unit: str = "records"
) -> Iterator[Advance]:
    """A bar on stderr with count, rate and ETA; yields ``advance(n)``. Disabled, it draws
    nothing and ``advance`` does nothing, so callers need no second code path.

    The bar redraws from Rich's own thread (4 times a second), so ``advance`` only updates a
    counter: reporting per chunk costs nothing measurable next to signing the chunk."""
    if not enabled:
        yield _ignore
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn(f"{{task.fields[rate]}} {unit}/s"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), refresh_per_second=4) as bar:
        task = bar.add_task(description, total=total, rate="-")

        def advance(count: int) -> None:
            bar.advance(task, count)
            speed = bar.tasks[task].speed
            if speed:
                bar.update(task, rate=f"{speed:,.0f}")

        yield advance


@contextlib.contextmanager
def spinner(description: str, *, enabled: bool) -> Iterator[None]:
    """An activity line with elapsed time, for work whose size is unknown until it is done
    (parsing a whole input file); nothing when disabled."""
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        refresh_per_second=8,
    ) as bar:
        bar.add_task(description, total=None)
        yield

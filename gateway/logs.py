"""Logging for ``mragw serve`` and the CLI: one place that configures it, two formats, one
context, one hygiene guard.

Formats (``mragw serve --log-format``, or ``MRAGW_LOG_FORMAT``):
- ``json``: one object per line, for systemd, containers and log shippers: ``ts`` (RFC 3339,
  UTC, milliseconds), ``level``, ``logger``, ``msg``, the context fields that are set
  (:data:`CONTEXT_FIELDS`), and ``exc`` (a traceback, kept on one line by JSON's escaping);
- ``text``: one human line per event (a traceback follows on its own lines);
- ``auto`` (the default): text when stderr is a terminal, JSON otherwise.

Context comes from a :class:`contextvars.ContextVar`, so it follows a call or a task without
being passed around: the server binds ``rpc``, ``trace_id`` and ``peer`` per gRPC call
(:mod:`gateway.server.logcontext`), the replicator binds ``partner`` in each partner's task.
A log call may add fields too: ``log.info("...", extra={"entry": 12})``.

Hygiene: every formatted line passes :func:`redact`, which removes anything that looks like a
PEM private key (a whole block, or a header whose block was cut off) and collapses long byte
literals and long base64/hex runs, so a careless ``%r`` of an envelope or a key cannot reach a
log. That guard is a safety net: our log calls name records by index and partner, never by
body. Third-party loggers stay at WARNING even at ``--log-level debug``: some log SQL
parameters (record bodies, envelopes) at DEBUG.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any, Final, Literal, TextIO

LogFormat = Literal["auto", "json", "text"]
LOG_FORMATS: Final = ("auto", "json", "text")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

#: Context fields, in the order a line shows them.
CONTEXT_FIELDS: Final = ("partner", "rpc", "peer", "entry", "trace_id")
#: The loggers of this project; ``--log-level`` applies to these only.
OWN_LOGGERS: Final = ("mragw", "gateway", "crypto", "registry")
#: Level of every other logger (grpc, asyncio, sqlalchemy, aiosqlite, ...).
THIRD_PARTY_LEVEL: Final = logging.WARNING

ContextValue = str | int
# Each bind sets a new mapping (never mutated), so an immutable empty default is shared safely.
_context: ContextVar[Mapping[str, ContextValue]] = ContextVar(
    "mragw_log_context", default=MappingProxyType({})
)

# -- context -----------------------------------------------------------------------------------


def bind(**fields: ContextValue | None) -> Token[Mapping[str, ContextValue]]:
    """Add ``fields`` to the log context of the current task (None removes a field); returns
    the token :func:`unbind` takes to restore the previous context."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log context field(s): {', '.join(sorted(unknown))}")
    merged = dict(_context.get())
    for name, value in fields.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return _context.set(merged)


def unbind(token: Token[Mapping[str, ContextValue]]) -> None:
    """Restore the context from before :func:`bind` (a no-op from another task's context:
    a streaming call may be finalised elsewhere, and its own context dies with it)."""
    with contextlib.suppress(ValueError):
        _context.reset(token)


@contextlib.contextmanager
def log_context(**fields: ContextValue | None) -> Iterator[None]:
    """``with log_context(entry=12): ...`` -- the fields apply inside the block only."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current_context() -> Mapping[str, ContextValue]:
    return _context.get()


# -- trace ids ---------------------------------------------------------------------------------

TRACE_METADATA_KEY: Final = "x-trace-id"
# A caller's trace id is accepted only when it is short and made of characters that cannot
# forge a field or a line in either format (no spaces, quotes, '=', control characters): it
# is caller input copied into every log line of the call. Anything else gets a fresh one.
TRACE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{7,63}")


def new_trace_id() -> str:
    """A fresh trace id: 128 random bits in hex (the W3C trace-id shape)."""
    return secrets.token_hex(16)


def accepted_trace_id(value: object) -> str | None:
    """``value`` when it is an acceptable caller-supplied trace id, else None."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str) and TRACE_ID_PATTERN.fullmatch(value):
        return value
    return None


def trace_id_from(metadata: Any) -> str:
    """The call's trace id: the caller's ``x-trace-id`` if acceptable, else a new one."""
    for key, value in metadata or ():
        if key == TRACE_METADATA_KEY:
            return accepted_trace_id(value) or new_trace_id()
    return new_trace_id()


# -- hygiene -----------------------------------------------------------------------------------

REDACTED_KEY: Final = "[redacted: private key]"
# A whole PEM private-key block (any label: PRIVATE KEY, EC PRIVATE KEY, ENCRYPTED ...), or a
# header whose block was cut off (a truncated message): everything from the header on goes.
_PEM_PRIVATE = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
# The PEM label alone (a repr that split the block, a message quoting a header): never printed.
_PRIVATE_LABEL = re.compile(r"PRIVATE[\s_-]*KEY")
# Byte literals longer than a digest (envelopes, key material, record bodies as bytes).
_LONG_BYTES = re.compile(r"""b(['"])(?:\\.|(?!\1).){65,}?\1""")
# Runs of base64 or hex longer than a SHA-256 in either (fingerprints and root hashes stay
# readable; an envelope, a DER key or a payload does not get through). A base64 run must mix
# upper case, lower case and digits, so a long file path is not taken for one. A bare 32-byte
# key is shaped like a hash and cannot be told apart here: our log calls never pass one.
_LONG_B64 = re.compile(r"[A-Za-z0-9+/_-]{89,}={0,2}")
_MIXED = (re.compile(r"[A-Z]"), re.compile(r"[a-z]"), re.compile(r"[0-9]"))
_LONG_HEX = re.compile(r"\b[0-9a-fA-F]{65,}\b")


def redact(text: str) -> str:
    """``text`` without private keys or long binary-looking runs (see the module doc)."""
    text = _PEM_PRIVATE.sub(REDACTED_KEY, text)
    text = _PRIVATE_LABEL.sub("[redacted]", text)
    text = _LONG_BYTES.sub(lambda m: f"<{len(m.group(0))} chars of bytes redacted>", text)
    text = _LONG_HEX.sub(lambda m: f"<{len(m.group(0))} hex chars redacted>", text)
    return _LONG_B64.sub(_base64_run, text)


def _base64_run(match: re.Match[str]) -> str:
    run = match.group(0)
    if all(kind.search(run) for kind in _MIXED):
        return f"<{len(run)} base64 chars redacted>"
    return run


# -- formatters --------------------------------------------------------------------------------


def rfc3339(created: float) -> str:
    moment = dt.datetime.fromtimestamp(created, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(record: logging.LogRecord) -> dict[str, ContextValue]:
    """Context fields of ``record``: the bound context, overridden by ``extra=`` values."""
    out = dict(_context.get())
    for name in CONTEXT_FIELDS:
        value = record.__dict__.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool):
            out[name] = value
    return {name: out[name] for name in CONTEXT_FIELDS if name in out}


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    if record.exc_text:
        return record.exc_text
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module doc for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for name, value in _fields(record).items():
            document[name] = redact(value) if isinstance(value, str) else value
        exc = _exception_text(self, record)
        if exc:
            document["exc"] = redact(exc)
        if record.stack_info:
            document["stack"] = redact(record.stack_info)
        # ensure_ascii: a line stays one line and plain ASCII whatever a message contains.
        return json.dumps(document, ensure_ascii=True, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: msg [partner=.. rpc=.. peer=.. entry=.. trace_id=..]``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = (
            f"{rfc3339(record.created)} {record.levelname:<7} {record.name}: "
            f"{record.getMessage()}" + (f" [{fields}]" if fields else "")
        )
        exc = _exception_text(self, record)
        if exc:
            line += "\n" + exc
        if record.stack_info:
            line += "\n" + record.stack_info
        return redact(line)


# -- configuration -----------------------------------------------------------------------------

_HANDLER_NAME: Final = "mragw"


def resolve_format(fmt: str, stream: TextIO) -> Literal["json", "text"]:
    """``auto`` becomes text on a terminal and JSON elsewhere; anything unknown is refused."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(LOG_FORMATS)}")
    if fmt == "auto":
        return "text" if _isatty(stream) else "json"
    return "json" if fmt == "json" else "text"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream is not a terminal
        return False


def parse_level(level: str) -> int:
    name = level.strip().lower()
    if name not in LOG_LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LOG_LEVELS)}")
    return int(logging.getLevelName(name.upper()))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (as logging's own
    last-resort handler does), so a replaced stderr never receives records for a closed one."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass  # always sys.stderr


def configure(
    fmt: str = "auto", level: str = "info", stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) in ``fmt``; our loggers at ``level``,
    third-party ones at WARNING. Idempotent: calling it again replaces the handler it added
    (the CLI configures once per command, ``serve`` again with its flags)."""
    chosen = resolve_format(fmt, stream if stream is not None else sys.stderr)
    threshold = parse_level(level)
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    )
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(THIRD_PARTY_LEVEL)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(threshold)
    return handler


__all__ = [
    "CONTEXT_FIELDS",
    "TRACE_ID_PATTERN",
    "TRACE_METADATA_KEY",
    "JsonFormatter",
    "TextFormatter",
    "accepted_trace_id",
    "bind",
    "configure",
    "current_context",
    "log_context",
    "new_trace_id",
    "redact",
    "trace_id_from",
    "unbind",
]

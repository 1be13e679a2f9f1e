"""Reading the decoded record index for Check: one snapshot per answer, read one of two ways.

A ``Check`` reads a handful of rows by index (the identifier asked, the authorisation's
history, the latest records' identifiers, the active dataset's version). Through SQLAlchemy
and aiosqlite each of those reads is a statement compilation, a hop to aiosqlite's thread and
back, and row processing: about 2.5 ms per ``Check`` (docs/performance.md), against tens of
microseconds for the SQLite work itself. So on SQLite, :class:`SqliteSnapshots` reads through
the ``sqlite3`` module directly, on the calling thread, in one read transaction per answer
(a WAL snapshot: never blocked by a writer, never sees half a commit, sees every commit made
before it started by any process). PostgreSQL reads go through SQLAlchemy (:class:`AlchemyReads`)
as before. Both implement :class:`StatusReads` with the same queries (docs/adr/0009).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.records import OperatorId
from gateway.storage.schema import datasets, entries, identifiers, records

VALID = "valid"
#: Bound parameters per ``IN`` list, well under SQLite's and asyncpg's limits.
CHUNK = 1000
#: Idle read connections kept per database file (more are opened under load, then closed).
_IDLE_CONNECTIONS = 4


@dataclass(frozen=True, slots=True)
class StatusRecord:
    """One indexed AEO status record (a row of ``records``)."""

    log: str
    idx: int
    issuer: str
    authorisation: str
    aeo_type: str
    status: str
    status_date: str
    valid_from: str | None
    valid_until: str | None
    consent: bool
    country: str | None
    name: str | None
    disclosed_to: str | None

    @property
    def order(self) -> tuple[str, int, str]:
        """Latest status_date first, then the later entry (then the log, to be total)."""
        return (self.status_date, self.idx, self.log)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.log, self.issuer, self.authorisation, self.aeo_type)


#: value -> [(scheme, record)] for every valid record carrying that identifier value.
Matches = dict[str, list[tuple[str, StatusRecord]]]
IdentifiersByEntry = dict[tuple[str, int], list[OperatorId]]


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def grouped(keys: Iterable[tuple[Any, ...]]) -> Iterable[tuple[tuple[Any, ...], Sequence[Any]]]:
    """Split keys into (all but the last part, chunk of last parts), so a lookup reads
    ``a = ? AND b = ? AND c IN (...)``: SQLite uses every column of the index for that, while
    a row-value ``(a, b, c) IN (...)`` uses only the first and scans the rest."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for key in keys:
        groups.setdefault(tuple(key[:-1]), []).append(key[-1])
    for prefix in sorted(groups):
        for chunk in chunks(sorted(set(groups[prefix]))):
            yield prefix, chunk


def record_from_row(row: Any) -> StatusRecord:
    """A record from a row holding :data:`RECORD_COLUMNS` (by name)."""
    m = row._mapping
    return StatusRecord(
        log=m["log"],
        idx=int(m["idx"]),
        issuer=m["issuer"],
        authorisation=m["authorisation"],
        aeo_type=m["aeo_type"],
        status=m["status"],
        status_date=m["status_date"],
        valid_from=m["valid_from"],
        valid_until=m["valid_until"],
        consent=bool(m["consent"]),
        country=m["country"],
        name=m["name"],
        disclosed_to=m["disclosed_to"],
    )


RECORD_COLUMNS = (
    records.c.log,
    records.c.idx,
    records.c.issuer,
    records.c.authorisation,
    records.c.aeo_type,
    records.c.status,
    records.c.status_date,
    records.c.valid_from,
    records.c.valid_until,
    records.c.consent,
    records.c.country,
    records.c.name,
    records.c.disclosed_to,
)
VALID_ENTRY = and_(
    entries.c.log == records.c.log,
    entries.c.idx == records.c.idx,
    entries.c.sig_state == VALID,
)


class StatusReads(Protocol):
    """The reads one answer makes, all in one snapshot."""

    async def dataset_version(self) -> str | None:
        """The active registry dataset's version (None: no active dataset)."""

    async def dataset_content(self, version: str) -> bytes: ...

    async def match(self, values: Sequence[str]) -> Matches:
        """Every valid record carrying one of ``values`` (normalised identifier values)."""

    async def valid_records(self, keys: Iterable[tuple[str, str, str]]) -> list[StatusRecord]:
        """Every valid record of the given (log, issuer, authorisation) keys, any type."""

    async def identifiers(self, pairs: Iterable[tuple[str, int]]) -> IdentifiersByEntry:
        """The identifiers of the given (log, idx) entries."""


class AlchemyReads:
    """:class:`StatusReads` through SQLAlchemy, on one connection (PostgreSQL, and the paths
    that need an :class:`AsyncConnection` anyway: evidence and Watch)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def dataset_version(self) -> str | None:
        stmt = select(datasets.c.version).where(datasets.c.active.is_(True))
        version = (await self.conn.execute(stmt)).scalar()
        return None if version is None else str(version)

    async def dataset_content(self, version: str) -> bytes:
        stmt = select(datasets.c.content).where(datasets.c.version == version)
        return bytes((await self.conn.execute(stmt)).scalar_one())

    async def match(self, values: Sequence[str]) -> Matches:
        found: Matches = {}
        for chunk in chunks(sorted(set(values))):
            stmt = (
                select(identifiers.c.value, identifiers.c.scheme, *RECORD_COLUMNS)
                .select_from(
                    identifiers.join(
                        records,
                        and_(
                            records.c.log == identifiers.c.log, records.c.idx == identifiers.c.idx
                        ),
                    ).join(entries, VALID_ENTRY)
                )
                .where(identifiers.c.value.in_(chunk))
            )
            for row in (await self.conn.execute(stmt)).all():
                found.setdefault(row.value, []).append((row.scheme, record_from_row(row)))
        return found

    async def valid_records(self, keys: Iterable[tuple[str, str, str]]) -> list[StatusRecord]:
        out: list[StatusRecord] = []
        for (log, issuer), chunk in grouped(keys):
            stmt = (
                select(*RECORD_COLUMNS)
                .select_from(records.join(entries, VALID_ENTRY))
                .where(
                    records.c.log == log,
                    records.c.issuer == issuer,
                    records.c.authorisation.in_(chunk),
                )
            )
            out.extend(record_from_row(row) for row in (await self.conn.execute(stmt)).all())
        return out

    async def identifiers(self, pairs: Iterable[tuple[str, int]]) -> IdentifiersByEntry:
        out: IdentifiersByEntry = {}
        for (log,), chunk in grouped(pairs):
            stmt = select(
                identifiers.c.log, identifiers.c.idx, identifiers.c.scheme, identifiers.c.value
            ).where(identifiers.c.log == log, identifiers.c.idx.in_(chunk))
            for row in (await self.conn.execute(stmt)).all():
                out.setdefault((row.log, int(row.idx)), []).append(
                    OperatorId(row.scheme, row.value)
                )
        return out


# The same queries as AlchemyReads, as SQL text for the sqlite3 module (which caches the
# prepared statement per text, so a single-question Check never re-parses SQL).
_RECORD_SQL = (
    "r.log, r.idx, r.issuer, r.authorisation, r.aeo_type, r.status, r.status_date, "
    "r.valid_from, r.valid_until, r.consent, r.country, r.name, r.disclosed_to"
)
_VALID_JOIN = "JOIN entries e ON e.log = r.log AND e.idx = r.idx AND e.sig_state = 'valid'"


def _marks(n: int) -> str:
    """``?, ?, ...``: the SQL texts below are built from constants and a placeholder count
    only; every value is a bound parameter (hence the S608 exemptions)."""
    return ", ".join("?" * n)


def _status_record(row: Sequence[Any]) -> StatusRecord:
    return StatusRecord(
        row[0],
        int(row[1]),
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        bool(row[9]),
        row[10],
        row[11],
        row[12],
    )


class SqliteReads:
    """:class:`StatusReads` on one ``sqlite3`` connection inside a read transaction.

    The methods are coroutines only to share the protocol: they never suspend, so an answer's
    reads run back to back on the calling thread."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    async def dataset_version(self) -> str | None:
        row = self.db.execute("SELECT version FROM datasets WHERE active = 1").fetchone()
        return None if row is None else str(row[0])

    async def dataset_content(self, version: str) -> bytes:
        row = self.db.execute("SELECT content FROM datasets WHERE version = ?", (version,))
        return bytes(row.fetchone()[0])

    async def match(self, values: Sequence[str]) -> Matches:
        found: Matches = {}
        for chunk in chunks(sorted(set(values))):
            sql = (
                f"SELECT i.value, i.scheme, {_RECORD_SQL} FROM identifiers i "  # noqa: S608
                "JOIN records r ON r.log = i.log AND r.idx = i.idx "
                f"{_VALID_JOIN} WHERE i.value IN ({_marks(len(chunk))})"
            )
            for row in self.db.execute(sql, tuple(chunk)):
                found.setdefault(row[0], []).append((row[1], _status_record(row[2:])))
        return found

    async def valid_records(self, keys: Iterable[tuple[str, str, str]]) -> list[StatusRecord]:
        out: list[StatusRecord] = []
        for (log, issuer), chunk in grouped(keys):
            sql = (
                f"SELECT {_RECORD_SQL} FROM records r {_VALID_JOIN} "  # noqa: S608
                f"WHERE r.log = ? AND r.issuer = ? AND r.authorisation IN ({_marks(len(chunk))})"
            )
            out.extend(map(_status_record, self.db.execute(sql, (log, issuer, *chunk))))
        return out

    async def identifiers(self, pairs: Iterable[tuple[str, int]]) -> IdentifiersByEntry:
        out: IdentifiersByEntry = {}
        for (log,), chunk in grouped(pairs):
            sql = (
                "SELECT log, idx, scheme, value FROM identifiers "  # noqa: S608
                f"WHERE log = ? AND idx IN ({_marks(len(chunk))})"
            )
            for row in self.db.execute(sql, (log, *chunk)):
                out.setdefault((row[0], int(row[1])), []).append(OperatorId(row[2], row[3]))
        return out


def sqlite_file(engine: AsyncEngine) -> str | None:
    """The database file of a SQLite engine; None for PostgreSQL or an in-memory database."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return str(url.database)


class SqliteSnapshots:
    """Read transactions on a SQLite database file through the ``sqlite3`` module.

    Connections are opened on demand and reused; each is only ever used by the thread that
    opened it (sqlite3's rule), and ``query_only`` makes a stray write an error."""

    def __init__(self, path: str, *, busy_timeout_ms: int) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._idle = threading.local()

    def _open(self) -> sqlite3.Connection:
        # mode=rw: a missing file is an error, not a new empty database.
        uri = f"{Path(self.path).resolve().as_uri()}?mode=rw"
        db = sqlite3.connect(uri, uri=True, isolation_level=None, cached_statements=256)
        db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        db.execute("PRAGMA query_only=1")
        return db

    @contextmanager
    def snapshot(self) -> Iterator[SqliteReads]:
        """One read transaction; the connection goes back to this thread's idle list."""
        idle: list[sqlite3.Connection] = self._idle.__dict__.setdefault("connections", [])
        db = idle.pop() if idle else self._open()
        # Reused only once its transaction ended cleanly: a bad question raised inside the
        # snapshot leaves a healthy connection; a failed BEGIN or ROLLBACK does not.
        ended = False
        try:
            db.execute("BEGIN")
            try:
                yield SqliteReads(db)
            finally:
                db.execute("ROLLBACK")
                ended = True
        finally:
            if ended and len(idle) < _IDLE_CONNECTIONS:
                idle.append(db)
            else:
                db.close()

    def close(self) -> None:
        """Close the calling thread's idle connections (others close with their thread)."""
        idle: list[sqlite3.Connection] = self._idle.__dict__.get("connections", [])
        while idle:
            idle.pop().close()

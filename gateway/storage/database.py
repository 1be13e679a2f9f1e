"""Engine creation and schema migration for SQLite (default) and PostgreSQL.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction survives a crash
of the process (kill -9), which is what "acknowledged is never lost" needs on one host; a
power loss may lose the last commits, so production runs PostgreSQL. ``busy_timeout`` makes a
second writer (the CLI while ``serve`` runs) wait for the write lock instead of failing.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from gateway.errors import GatewayError, InputError, UnreachableError

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _sqlite_on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
    """An async engine for ``url`` (``sqlite+aiosqlite://`` or ``postgresql+asyncpg://``)."""
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        return engine
    if url.startswith("postgresql+asyncpg://"):
        return create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
        )
    raise InputError(f"database url {url!r}: use sqlite+aiosqlite:// or postgresql+asyncpg://")


def _alembic_config(connection: Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default: the newest migration; idempotent)."""

    def upgrade(connection: Connection) -> None:
        command.upgrade(_alembic_config(connection), revision)

    try:
        async with engine.begin() as connection:
            await connection.run_sync(upgrade)
    except (OperationalError, OSError, DBAPIError) as error:
        raise UnreachableError(f"database unreachable: {describe_db_error(error)}") from error


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Run the migrations' ``downgrade`` steps back to ``revision`` (tests and recovery from
    a failed upgrade; the software then refuses the node until it is upgraded again)."""

    def run(connection: Connection) -> None:
        command.downgrade(_alembic_config(connection), revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def schema_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(_current_revision)


# -- the schema a node may run with ----------------------------------------------------------


class SchemaMismatchError(GatewayError):
    """The database's schema is not the one this software was built for: the message names
    both revisions and what to run."""


@functools.cache
def _script() -> ScriptDirectory:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg)


def head_revision() -> str:
    """The newest migration this software ships (one head: the history is linear)."""
    heads = _script().get_heads()
    if len(heads) != 1:  # pragma: no cover - a packaging mistake, caught by the tests
        raise GatewayError(f"migrations have {len(heads)} heads, expected one: {heads}")
    return str(heads[0])


def known_revision(revision: str) -> bool:
    return any(script.revision == revision for script in _script().walk_revisions())


def schema_problem(current: str | None) -> str | None:
    """Why a database at ``current`` must not be used by this software (None: it may)."""
    head = head_revision()
    if current == head:
        return None
    if current is None:
        return (
            "the database has no schema revision (not a node database, or never migrated): "
            "run `mragw db upgrade`"
        )
    if known_revision(current):
        return (
            f"the database schema is at revision {current}, this software needs {head}: "
            "run `mragw db upgrade` (back up first: `mragw backup`)"
        )
    return (
        f"the database schema is at revision {current}, newer than this software knows "
        f"(its newest is {head}): the software was downgraded; install the version that "
        "wrote this database, or restore a backup made with this version"
    )


def _read_revision(dbapi_connection: DBAPIConnection) -> str | None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SELECT version_num FROM alembic_version")
        row = cursor.fetchone()
    except Exception:  # no alembic_version table (any driver's error): no schema at all
        row = None
    finally:
        cursor.close()
        # End the implicit transaction the read began (PostgreSQL), so the pool hands out a
        # connection with none open.
        dbapi_connection.rollback()
    return None if row is None else str(row[0])


def _schema_guard(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    problem = schema_problem(_read_revision(dbapi_connection))
    if problem is not None:
        raise SchemaMismatchError(problem)


def check_sqlite_schema(url: str) -> None:
    """Refuse a SQLite database file whose schema is not head, read with the sqlite3 module.

    Some readers bypass the engine (on SQLite, Check reads through sqlite3: ADR 0009), so a
    node checks the file when it is opened too. A missing file is left to whoever opens it
    next (it reports the path)."""
    if not is_sqlite(url):
        return
    database = make_url(url).database
    if not database or database == ":memory:" or not Path(database).is_file():
        return
    # mode=rw: never create a file; the read takes no lock a writer would wait for (WAL).
    conn = sqlite3.connect(f"file:{database}?mode=rw", uri=True, timeout=30)
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError:
        row = None
    finally:
        conn.close()
    problem = schema_problem(None if row is None else str(row[0]))
    if problem is not None:
        raise SchemaMismatchError(problem)


def require_current_schema(engine: AsyncEngine) -> AsyncEngine:
    """Make every new connection of ``engine`` refuse a schema other than this software's
    head, so ``serve`` and every CLI command fail before reading or writing anything (the
    check is one indexed read per pooled connection, not per query)."""
    event.listen(engine.sync_engine, "connect", _schema_guard)
    return engine


async def ping(engine: AsyncEngine) -> None:
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except (OperationalError, OSError, DBAPIError) as error:
        raise UnreachableError(f"database unreachable: {describe_db_error(error)}") from error


def describe_db_error(error: BaseException) -> str:
    """A one-line description without the SQL statement or bound parameters."""
    original: Any = getattr(error, "orig", None) or error
    return f"{type(original).__name__}: {str(original).splitlines()[0] if str(original) else ''}"

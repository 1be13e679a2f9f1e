"""Engine creation and schema migration for SQLite (default) and PostgreSQL.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction survives a crash
of the process (kill -9), which is what "acknowledged is never lost" needs on one host; a
power loss may lose the last commits, so production runs PostgreSQL. ``busy_timeout`` makes a
second writer (the CLI while ``serve`` runs) wait for the write lock instead of failing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, event, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from gateway.errors import InputError, UnreachableError

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


def _upgrade(connection: Connection) -> None:
    command.upgrade(_alembic_config(connection), "head")


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade)
    except (OperationalError, OSError, DBAPIError) as error:
        raise UnreachableError(f"database unreachable: {describe_db_error(error)}") from error


async def schema_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(_current_revision)


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

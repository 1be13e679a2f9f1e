"""Dialect-aware INSERT ... ON CONFLICT, the one place SQLite and PostgreSQL differ for us.

Both run through :mod:`gateway.storage.bulk`: the same SQL SQLAlchemy compiles, executed with
the SQLite driver's ``executemany`` inside the caller's transaction (PostgreSQL: SQLAlchemy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.bulk import insert_mappings


async def upsert(
    conn: AsyncConnection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    update: Sequence[str],
) -> None:
    """Insert rows; on a key conflict overwrite the ``update`` columns."""
    await insert_mappings(conn, table, rows, conflict="update", keys=keys, update=update)


async def insert_ignore(
    conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> None:
    """Insert rows; skip any whose key already exists (idempotent re-delivery)."""
    await insert_mappings(conn, table, rows, conflict="ignore", keys=keys)

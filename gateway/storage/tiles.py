"""Merkle tiles of any log this node holds, read and written inside the caller's transaction.

The hashing lives in :mod:`crypto.merkle`; this module only moves tile bytes between the
database and those pure functions, so proofs and appends stay O(log n) rows.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.merkle import (
    EMPTY_ROOT,
    AppendResult,
    Frontier,
    TileId,
    TileUpdate,
    consistency_proof_from_tiles,
    inclusion_proof_from_tiles,
    root_from_tiles,
    tiles_for_consistency_proof,
    tiles_for_inclusion_proof,
    tiles_for_root,
)
from gateway.storage.schema import logs, tiles
from gateway.storage.upsert import upsert


async def lock_log(conn: AsyncConnection, log: str) -> None:
    """Take ``log``'s write lock for the caller's transaction: a row lock on the head row on
    PostgreSQL, the database write lock on SQLite. Every writer of a log's entries, tiles or
    head takes it first and reads the head after it, so writers from any process or replica
    serialise and none can fork or gap the log."""
    await conn.execute(update(logs).where(logs.c.code == log).values(lock_seq=logs.c.lock_seq + 1))


async def create_empty_log(
    conn: AsyncConnection, code: str, *, own: bool, checkpoint: str | None = None
) -> None:
    """The head row of a new, empty log: ours (with its signed size-0 checkpoint) or a
    partner's replica (no checkpoint verified yet)."""
    await conn.execute(
        logs.insert().values(
            code=code,
            own=own,
            size=0,
            root=EMPTY_ROOT,
            frontier=Frontier.empty().to_bytes(),
            checkpoint=checkpoint,
            checkpoint_size=0,
            held_checkpoint=checkpoint,
            held_size=0,
            lock_seq=0,
        )
    )


async def read_tiles(
    conn: AsyncConnection, log: str, ids: Collection[TileId]
) -> dict[TileId, bytes]:
    if not ids:
        return {}
    wanted = or_(*(and_(tiles.c.level == t.level, tiles.c.idx == t.index) for t in set(ids)))
    rows = (
        await conn.execute(
            select(tiles.c.level, tiles.c.idx, tiles.c.hashes).where(tiles.c.log == log, wanted)
        )
    ).all()
    return {TileId(r.level, r.idx): bytes(r.hashes) for r in rows}


async def store_append(conn: AsyncConnection, log: str, result: AppendResult) -> None:
    """Persist the tile updates of one append (partial right-edge tiles are extended)."""
    await apply_tile_updates(conn, log, result.updates)


async def apply_tile_updates(
    conn: AsyncConnection, log: str, updates: Iterable[TileUpdate]
) -> None:
    updates = list(updates)
    partial = [u.tile_id for u in updates if u.start > 0]
    existing = await read_tiles(conn, log, partial)
    rows = [
        {
            "log": log,
            "level": u.tile_id.level,
            "idx": u.tile_id.index,
            "hashes": u.apply(existing.get(u.tile_id)),
        }
        for u in updates
    ]
    await upsert(conn, tiles, rows, keys=("log", "level", "idx"), update=("hashes",))


async def inclusion_proof(conn: AsyncConnection, log: str, index: int, size: int) -> list[bytes]:
    found = await read_tiles(conn, log, tiles_for_inclusion_proof(index, size))
    return inclusion_proof_from_tiles(index, size, found)


async def consistency_proof(conn: AsyncConnection, log: str, old: int, new: int) -> list[bytes]:
    found = await read_tiles(conn, log, tiles_for_consistency_proof(old, new))
    return consistency_proof_from_tiles(old, new, found)


async def root_at(conn: AsyncConnection, log: str, size: int) -> bytes:
    found = await read_tiles(conn, log, tiles_for_root(size))
    return root_from_tiles(size, found)


async def frontier_at(conn: AsyncConnection, log: str, size: int) -> Frontier:
    found = await read_tiles(conn, log, tiles_for_root(size))
    return Frontier.from_tiles(size, found)


__all__ = [
    "apply_tile_updates",
    "consistency_proof",
    "frontier_at",
    "inclusion_proof",
    "read_tiles",
    "root_at",
    "store_append",
]

"""The audit trail: every admin action, hash-chained so an edited or deleted row is detected.

Invariant: row n stores ``hash = SHA-256(prev_hash || canonical JSON of its fields)`` with
``prev_hash`` the hash of row n-1 (32 zero bytes for the first row). Appending first takes the
audit lock (the ``audit`` row of ``node_state``, bumped in the caller's transaction), then reads
the newest row: two transactions appending at once are serialised (PostgreSQL's row lock, SQLite's
write lock), so each links to the other's row instead of both to the same one (a fork).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.schema import audit, node_state
from gateway.storage.upsert import insert_ignore

GENESIS = bytes(32)
#: The ``node_state`` key whose row serialises appends to the chain.
AUDIT_LOCK = "audit"


def _row_hash(prev: bytes, at: float, actor: str, action: str, detail: str) -> bytes:
    body = json.dumps([f"{at:.6f}", actor, action, detail], separators=(",", ":"))
    return hashlib.sha256(prev + body.encode("utf-8")).digest()


async def _take_audit_lock(conn: AsyncConnection) -> None:
    """Lock the chain's head for the rest of the caller's transaction."""
    bump = (
        update(node_state)
        .where(node_state.c.key == AUDIT_LOCK)
        .values(value=node_state.c.value + 1)
    )
    if (await conn.execute(bump)).rowcount == 0:
        # First action of a node created before the lock row existed: create it (a concurrent
        # creator makes this a no-op), then lock it.
        await insert_ignore(conn, node_state, [{"key": AUDIT_LOCK, "value": 0}], keys=("key",))
        await conn.execute(bump)


async def record_action(
    conn: AsyncConnection, actor: str, action: str, detail: dict[str, Any]
) -> None:
    """Append one audit row in the caller's transaction."""
    await _take_audit_lock(conn)
    last = (await conn.execute(select(audit.c.hash).order_by(audit.c.id.desc()).limit(1))).scalar()
    prev = last if last is not None else GENESIS
    at = round(time.time(), 6)
    detail_text = json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str)
    await conn.execute(
        audit.insert().values(
            at=at,
            actor=actor,
            action=action,
            detail=detail_text,
            prev_hash=prev,
            hash=_row_hash(prev, at, actor, action, detail_text),
        )
    )


@dataclass(frozen=True)
class AuditCheck:
    rows: int
    broken_at: int | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.broken_at is None


async def verify_audit_chain(conn: AsyncConnection) -> AuditCheck:
    prev = GENESIS
    count = 0
    result = await conn.stream(select(audit).order_by(audit.c.id))
    async for row in result:
        count += 1
        if row.prev_hash != prev:
            return AuditCheck(count, row.id, f"row {row.id} does not follow the previous row")
        if row.hash != _row_hash(prev, row.at, row.actor, row.action, row.detail):
            return AuditCheck(count, row.id, f"row {row.id} was altered")
        prev = row.hash
    return AuditCheck(count, None, None)


async def audit_rows(conn: AsyncConnection, *, last: int | None = None) -> list[dict[str, Any]]:
    """The trail, oldest first (only the newest ``last`` rows when given)."""
    stmt = select(audit.c.id, audit.c.at, audit.c.actor, audit.c.action, audit.c.detail)
    if last is not None:
        stmt = stmt.order_by(audit.c.id.desc()).limit(last)
    rows = sorted((await conn.execute(stmt)).all(), key=lambda r: int(r.id))
    return [
        {
            "id": int(r.id),
            "at": datetime.fromtimestamp(float(r.at), tz=UTC).isoformat(),
            "actor": r.actor,
            "action": r.action,
            "detail": _detail(r.detail),
        }
        for r in rows
    ]


def _detail(text: str) -> Any:
    # Rows are written as JSON; an edited row may not be, and must still be listed.
    try:
        return json.loads(text)
    except ValueError:
        return text

"""The audit trail: every admin action, hash-chained so an edited or deleted row is detected.

Invariant: row n stores ``hash = SHA-256(prev_hash || canonical JSON of its fields)`` with
``prev_hash`` the hash of row n-1 (32 zero bytes for the first row). Appending takes the newest
row inside the caller's transaction, so the chain follows the database's commit order.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.schema import audit

GENESIS = bytes(32)


def _row_hash(prev: bytes, at: float, actor: str, action: str, detail: str) -> bytes:
    body = json.dumps([f"{at:.6f}", actor, action, detail], separators=(",", ":"))
    return hashlib.sha256(prev + body.encode("utf-8")).digest()


async def record_action(
    conn: AsyncConnection, actor: str, action: str, detail: dict[str, Any]
) -> None:
    """Append one audit row in the caller's transaction."""
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

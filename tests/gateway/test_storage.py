"""Schema migrations and the audit chain on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit import record_action, verify_audit_chain
from gateway.storage.database import migrate, schema_revision
from gateway.storage.schema import audit


async def test_migrations_reach_head_and_are_idempotent(engine: AsyncEngine) -> None:
    first = await schema_revision(engine)
    await migrate(engine)
    assert first is not None
    assert await schema_revision(engine) == first


async def test_audit_chain_detects_an_edited_row(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for n in range(3):
            await record_action(conn, "admin", "partner.add", {"partner": f"P{n}"})
    async with engine.connect() as conn:
        check = await verify_audit_chain(conn)
    assert check.ok
    assert check.rows == 3
    async with engine.begin() as conn:
        await conn.execute(update(audit).where(audit.c.id == 2).values(detail='{"partner":"XX"}'))
    async with engine.connect() as conn:
        check = await verify_audit_chain(conn)
    assert not check.ok
    assert check.broken_at == 2
    assert "altered" in (check.problem or "")

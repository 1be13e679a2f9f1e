"""Schema migrations and the audit chain on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import asyncio

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


async def test_concurrent_appends_stay_on_one_chain(engine: AsyncEngine) -> None:
    """Two transactions append at once: the second waits for the first's lock, so it links
    to the first's row (without the lock both read the same head and the chain forks)."""
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with engine.begin() as conn:
            await record_action(conn, "test", "first", {})
            first_in.set()
            await release.wait()

    async def second() -> None:
        await first_in.wait()
        async with engine.begin() as conn:
            await record_action(conn, "test", "second", {})

    one = asyncio.create_task(first())
    two = asyncio.create_task(second())
    await first_in.wait()
    # Let the second transaction run up to the lock; it must not finish while the first holds it.
    done, _ = await asyncio.wait({two}, timeout=0.5)
    assert not done
    release.set()
    await asyncio.gather(one, two)
    async with engine.connect() as conn:
        check = await verify_audit_chain(conn)
    assert check.ok, check.problem
    assert check.rows == 2

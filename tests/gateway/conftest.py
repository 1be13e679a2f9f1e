"""Database fixtures: every storage test runs on a real SQLite file and on a real PostgreSQL.

PostgreSQL comes from MRAGW_TEST_PG_DSN (scripts/test starts a throw-away server). Without it
the PostgreSQL cases are skipped locally; in CI (MRAGW_REQUIRE_PG=1) they fail instead, so a
missing server can never turn into a silently smaller suite.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from gateway.storage.database import create_engine, migrate

PG_DSN = os.environ.get("MRAGW_TEST_PG_DSN", "")


def _pg_or_skip() -> str:
    if PG_DSN:
        return PG_DSN
    if os.environ.get("MRAGW_REQUIRE_PG") == "1":
        pytest.fail("MRAGW_REQUIRE_PG=1 but MRAGW_TEST_PG_DSN is not set")
    pytest.skip("no PostgreSQL server (set MRAGW_TEST_PG_DSN; CI always does)")


async def fresh_pg_database() -> str:
    """Create an empty database on the test server and return its URL."""
    base = make_url(_pg_or_skip())
    name = f"mragw_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(
        host=base.host,
        port=base.port,
        user=base.username,
        password=base.password,
        database=base.database or "postgres",
    )
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return base.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'node.db'}"
    else:
        yield await fresh_pg_database()


@pytest.fixture
async def engine(db_url: str):  # type: ignore[no-untyped-def]
    eng = create_engine(db_url)
    await migrate(eng)
    try:
        yield eng
    finally:
        await eng.dispose()

"""ChangeProbe: False only when nothing was committed since it last said True."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sqlalchemy import update

from gateway.storage.changes import ChangeProbe
from gateway.storage.database import create_engine, migrate
from gateway.storage.schema import node_state


async def test_probe_sees_commits_from_this_process_and_others(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    probe = ChangeProbe(engine)
    try:
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.execute(node_state.insert().values(key="probe-test", value=0))
        assert probe.changed()  # the first look always says "maybe"
        assert not probe.changed()
        assert not probe.changed()
        async with engine.begin() as conn:  # a commit through the gateway's own engine
            await conn.execute(update(node_state).values(value=node_state.c.value + 1))
        assert probe.changed()
        assert not probe.changed()
        # A commit by another process (the CLI, another replica's writer).
        script = (
            "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
            "db.execute('UPDATE node_state SET value = value + 1'); db.commit()"
        )
        writer = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(path))
        assert await writer.wait() == 0
        assert probe.changed()
        assert not probe.changed()
        # A transaction that is rolled back commits nothing.
        async with engine.connect() as conn:
            await conn.execute(update(node_state).values(value=node_state.c.value + 1))
            await conn.rollback()
        assert not probe.changed()
    finally:
        probe.close()
        await engine.dispose()


async def test_probe_of_a_missing_file_says_maybe_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "gone.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    probe = ChangeProbe(engine)
    try:
        assert probe.changed()
        assert probe.changed()  # still cannot tell: the caller's own query reports why
        assert not path.exists()
    finally:
        probe.close()
        await engine.dispose()


async def test_probe_on_postgresql_always_says_maybe() -> None:
    # No connection is made: the URL alone says there is no data_version to ask.
    engine = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    probe = ChangeProbe(engine)
    try:
        assert all(probe.changed() for _ in range(3))
    finally:
        probe.close()
        await engine.dispose()

"""A node refuses a database whose schema is not this software's head, on SQLite and on
PostgreSQL, at its first connection and before any read; ``migrate`` brings it back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from gateway.node import Node, initialise_node
from gateway.status import node_status
from gateway.storage.database import (
    SchemaMismatchError,
    create_engine,
    downgrade,
    head_revision,
    migrate,
    schema_revision,
)
from tests.cli.test_db_cli import previous_revision


async def status_of(home: Path) -> dict[str, Any]:
    """Open the node (SQLite: checked at open) and read from it (checked at connection)."""
    node = Node.open(home, environ={})
    try:
        return await node_status(node)
    finally:
        await node.close()


async def test_a_node_behind_or_ahead_of_head_is_refused_until_migrated(
    tmp_path: Path, db_url: str
) -> None:
    home = tmp_path / "jp"
    await initialise_node(
        admin="JP",
        home=home,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        db_url=db_url,
    )
    raw = create_engine(db_url)
    try:
        await downgrade(raw, previous_revision())
        with pytest.raises(SchemaMismatchError, match="run `mragw db upgrade`"):
            await status_of(home)
        assert await schema_revision(raw) == previous_revision()

        await migrate(raw)
        assert (await status_of(home))["admin"] == "JP"

        async with raw.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'zz99'"))
        with pytest.raises(SchemaMismatchError, match="newer than this software knows"):
            await status_of(home)
        async with raw.begin() as conn:
            await conn.execute(
                text("UPDATE alembic_version SET version_num = :v"), {"v": head_revision()}
            )
    finally:
        await raw.dispose()

"""The two readers of the record index answer alike, and the SQLite one reads fresh snapshots.

Check reads SQLite through the sqlite3 module (``SqliteReads``) and PostgreSQL through
SQLAlchemy (``AlchemyReads``); the query tests run every answer on both databases, and here
both readers are compared row for row on the same SQLite file, which holds entries in every
signature state (valid, invalid, revoked, erased, hash only, unverified).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select, update

from gateway.errors import UnreachableError
from gateway.issuer_log import IssuerLog
from gateway.node import Node
from gateway.query import Checker, Question
from gateway.status_reads import AlchemyReads, SqliteSnapshots, sqlite_file
from gateway.storage.database import SQLITE_BUSY_TIMEOUT_MS
from gateway.storage.schema import datasets, entries, identifiers, records
from tests.gateway.test_query import TODAY, build_world, parse, status


@pytest.fixture
async def node(tmp_path: Path) -> Node:
    return await build_world(tmp_path, "")


def snapshots_of(node: Node) -> SqliteSnapshots:
    path = sqlite_file(node.engine)
    assert path is not None
    return SqliteSnapshots(path, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS)


async def test_both_readers_return_the_same_rows(node: Node) -> None:
    async with node.engine.connect() as conn:
        values = [str(v) for v in (await conn.execute(select(identifiers.c.value))).scalars()]
        keys = {
            (r.log, r.issuer, r.authorisation)
            for r in (
                await conn.execute(select(records.c.log, records.c.issuer, records.c.authorisation))
            ).all()
        }
        pairs = {(r.log, int(r.idx)) for r in (await conn.execute(select(entries))).all()}
        states = set((await conn.execute(select(entries.c.sig_state))).scalars())
        alchemy = AlchemyReads(conn)
        want = (
            await alchemy.dataset_version(),
            await alchemy.match([*values, "NOSUCHVALUE"]),
            sorted(await alchemy.valid_records(keys), key=lambda r: (r.log, r.idx)),
            await alchemy.identifiers(pairs),
        )
    # The world must exercise what the readers filter on, or the comparison proves little.
    assert {"valid", "invalid", "erased", "hash_only"} <= states
    assert len(want[1]) > 3
    snapshots = snapshots_of(node)
    try:
        with snapshots.snapshot() as sqlite:
            got = (
                await sqlite.dataset_version(),
                await sqlite.match([*values, "NOSUCHVALUE"]),
                sorted(await sqlite.valid_records(keys), key=lambda r: (r.log, r.idx)),
                await sqlite.identifiers(pairs),
            )
            assert await sqlite.dataset_content(str(got[0])) == await _content(node, str(got[0]))
    finally:
        snapshots.close()
        await node.close()
    assert got == want
    # Only valid entries are matched: no record of a non-valid entry comes back.
    valid = {(r.log, r.idx) for rs in got[1].values() for _, r in rs}
    async with node.engine.connect() as conn:
        states_of = {
            (r.log, int(r.idx)): r.sig_state
            for r in (await conn.execute(select(entries.c.log, entries.c.idx, entries.c.sig_state)))
        }
    assert {states_of[p] for p in valid} == {"valid"}


async def _content(node: Node, version: str) -> bytes:
    async with node.engine.connect() as conn:
        stmt = select(datasets.c.content).where(datasets.c.version == version)
        return bytes((await conn.execute(stmt)).scalar_one())


async def test_a_reused_connection_sees_later_commits(node: Node) -> None:
    """Connections are pooled; each answer must still see every commit made before it."""
    checker = Checker.for_node(node, today=lambda: TODAY)
    try:
        question = Question(operator_id="JP0000000042NEW", issuer="JP", scheme="NATIONAL")
        before = await checker.check(question)
        assert before.operator is None
        [new] = parse(
            [
                status(
                    "JP",
                    "JP0000000042NEW",
                    "JPAEO0042",
                    "AEO",
                    "ACTIVE",
                    "2015-01-01",
                    scheme="NATIONAL",
                )
            ]
        )
        await IssuerLog(node).publish([new], actor="test", today=TODAY)
        after = await checker.check(question)
        assert after.operator is not None
        # A change of signature state (here: revoked) is seen at once, too.
        async with node.engine.begin() as conn:
            await conn.execute(
                update(entries)
                .where(entries.c.log == "JP", entries.c.sig_state == "valid")
                .values(sig_state="revoked")
            )
        assert (await checker.check(question)).operator is None
    finally:
        checker.close()
        await node.close()


async def test_snapshot_connections_cannot_write(node: Node) -> None:
    snapshots = snapshots_of(node)
    try:
        with (
            snapshots.snapshot() as reads,
            pytest.raises(sqlite3.OperationalError, match=r"readonly"),
        ):
            reads.db.execute("DELETE FROM records")
        async with node.engine.connect() as conn:
            assert (await conn.execute(select(records.c.idx))).first() is not None
    finally:
        snapshots.close()
        await node.close()


async def test_a_missing_database_file_is_unreachable_not_recreated(tmp_path: Path) -> None:
    node = await build_world(tmp_path, "")
    path = Path(str(sqlite_file(node.engine)))
    checker = Checker.for_node(node, today=lambda: TODAY)
    await node.close()
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    with pytest.raises(UnreachableError, match="database unreachable"):
        await checker.check(Question(operator_id="JP1234567890", issuer="JP"))
    assert not path.exists()  # noqa: ASYNC240 - a test's one stat call
    checker.close()

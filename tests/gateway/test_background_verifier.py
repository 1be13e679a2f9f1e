"""The background verifier: entry signatures and record indexing off the replication hot path.

A catch-up stores batches once their checkpoint, consistency and root verified; the entries'
own signatures are checked (and the records indexed, which is what makes them usable) by a
per-partner verifier in large chunks. These tests pin what must still hold: an invalid entry
found there quarantines the partner, an entry not verified yet is never used, and entries a
crash left unverified are verified when the gateway starts again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from crypto.merkle import Frontier, TileId, TileUpdate, leaf_hash
from gateway.demo_data import eu_records
from gateway.query import Checker, Question
from gateway.replication import (
    PartnerLogState,
    ReplicaMovedError,
    load_state,
    merge_tile_updates,
    store_batches,
    verify_batch,
)
from gateway.replicator import INLINE_VERIFY_MAX, STORE_MAX_ENTRIES, batch_from_message
from gateway.serve import Gateway
from gateway.storage.schema import entries, identifiers, record_feed, records
from gateway.trust import TrustStatement
from mra.v1 import envelope_pb2, exchange_pb2
from tests.gateway.nodes import eventually, log_head
from tests.gateway.test_hostile_partner import HONEST_START, World, hostile_world

DE_HOLDER = "DE4711000012345"  # the operator of EU's entry 0


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


async def _states(w: World) -> dict[int, str]:
    async with w.jp.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(entries.c.idx, entries.c.sig_state).where(entries.c.log == "EU")
            )
        ).all()
    return {int(r.idx): str(r.sig_state) for r in rows}


async def test_an_invalid_entry_in_a_large_batch_quarantines_from_the_background(
    db_url: str, tmp_path: Path
) -> None:
    """A batch too large to verify inline is stored first; the background verifier then
    finds the forged entry, marks it invalid, never indexes it and quarantines EU."""
    async with hostile_world(tmp_path, db_url) as w:
        count = INLINE_VERIFY_MAX * 3
        start = w.log.size
        rows = eu_records()
        for n in range(count):
            w.log.items.append((w.envelope(rows[n % len(rows)]), True))
        bad = start + count // 2
        forged = envelope_pb2.Envelope.FromString(w.log.items[bad][0])
        forged.signatures[0].sig = _flip(forged.signatures[0].sig, 7)
        w.log.items[bad] = (forged.SerializeToString(), True)
        # The genuine entries up to ``start`` first, then the whole addition in one batch.
        await w.fake.queue.put(start)
        await w.fake.queue.put(w.log.batch(start, w.log.size))
        await w.quarantined("invalid entry", str(bad))
        states = await _states(w)
        assert states[bad] == "invalid"
        async with w.jp.engine.connect() as conn:
            indexed = (
                await conn.execute(
                    select(records.c.idx).where(records.c.log == "EU", records.c.idx == bad)
                )
            ).first()
        assert indexed is None
        status = w.gateway.replication.status("EU")
        assert status is not None
        assert status.faults.get("invalid_entry") == 1
        await w.resume_and_catch_up()
        assert (await _states(w))[bad] == "invalid"


async def test_unverified_entries_are_never_used_and_are_verified_at_restart(
    db_url: str, tmp_path: Path
) -> None:
    """As after a crash between storing a batch and verifying it: the stored entries are
    'unverified' and not indexed, so Check does not know them; a restarted gateway verifies
    and indexes them before they are used."""
    async with hostile_world(tmp_path, db_url) as w:
        await w.gateway.server.stop()
        async with w.jp.engine.begin() as conn:
            await conn.execute(
                update(entries)
                .where(entries.c.log == "EU", entries.c.sig_state == "valid")
                .values(sig_state="unverified", signer=None)
            )
            for table in (records, identifiers, record_feed):
                await conn.execute(delete(table).where(table.c.log == "EU"))
        checker = Checker.for_node(w.jp)
        answer = await checker.check(Question(operator_id=DE_HOLDER, issuer="EU"))
        assert answer.operator is None

        restarted = Gateway(w.jp)
        await restarted.server.start()
        try:
            await w.replicated(HONEST_START)
            answer = await Checker.for_node(w.jp).check(
                Question(operator_id=DE_HOLDER, issuer="EU")
            )
            assert answer.types[0].record is not None
            assert answer.types[0].record.idx == 0
            assert "unverified" not in (await _states(w)).values()
        finally:
            await restarted.server.stop()


async def test_a_catch_up_in_large_batches_becomes_usable(db_url: str, tmp_path: Path) -> None:
    """Many batches queued at once are stored several per transaction and verified in the
    background; every entry ends valid and indexed, and the replica is the partner's tree."""
    async with hostile_world(tmp_path, db_url) as w:
        rows = eu_records()
        start = w.log.size
        total = STORE_MAX_ENTRIES + INLINE_VERIFY_MAX * 4
        for n in range(total):
            w.log.items.append((w.envelope(rows[n % len(rows)]), True))
        step = INLINE_VERIFY_MAX * 2
        await w.fake.queue.put(start)
        for s in range(start, w.log.size, step):
            await w.fake.queue.put(w.log.batch(s, min(s + step, w.log.size)))
        await w.replicated(w.log.size)
        states = await _states(w)
        assert all(states[i] == "valid" for i in range(start, w.log.size))

        async def indexed() -> bool:
            async with w.jp.engine.connect() as conn:
                found = (
                    await conn.execute(
                        select(records.c.idx).where(records.c.log == "EU", records.c.idx >= start)
                    )
                ).all()
            return bool(len(found) == statuses)

        statuses = sum(rows[n % len(rows)]["kind"] == "aeo_status" for n in range(total))
        await eventually(indexed, deadline_s=10)
        head = await log_head(w.jp, "EU")
        assert head.size == w.log.size
        assert head.root == w.log.root(w.log.size)


async def test_store_is_guarded_by_the_head_it_extends(db_url: str, tmp_path: Path) -> None:
    """A batch verified against a head that moved meanwhile (another writer) is not stored."""
    async with hostile_world(tmp_path, db_url) as w:
        await w.gateway.server.stop()
        row = await w.partner()
        statement: TrustStatement = w.gateway.replication.replicators["EU"]._statement_for(row)
        rows = eu_records()
        for n in range(4):
            w.log.items.append((w.envelope(rows[n % len(rows)]), True))
        async with w.jp.engine.connect() as conn:
            state = await load_state(conn, "EU")
        message = w.log.batch(state.size, w.log.size).batch

        async def no_leaves(_start: int, _count: int) -> list[bytes]:
            return []

        async def no_proof(_old: int, _new: int) -> list[bytes]:
            return []

        verified = await verify_batch(
            state,
            batch_from_message(exchange_pb2.SubscribeResponse(batch=message)),
            statement,
            no_leaves,
            no_proof,
        )
        assert verified is not None
        stale = PartnerLogState(state.code, state.size, state.frontier, None, None)
        with pytest.raises(ReplicaMovedError):
            async with w.jp.engine.begin() as conn:
                await store_batches(conn, stale, [verified])
        assert (await log_head(w.jp, "EU")).size == state.size
        async with w.jp.engine.begin() as conn:
            after = await store_batches(conn, state, [verified])
        assert after.size == w.log.size
        assert (await log_head(w.jp, "EU")).root == w.log.root(w.log.size)


def test_consecutive_tile_updates_merge() -> None:
    leaves = [leaf_hash(n.to_bytes(2, "big")) for n in range(300)]
    first = Frontier.empty().append(leaves[:100])
    second = first.frontier.append(leaves[100:300])
    merged = {u.tile_id: u for u in merge_tile_updates([*first.updates, *second.updates])}
    whole = {u.tile_id: u for u in Frontier.empty().append(leaves).updates}
    assert merged.keys() == whole.keys()
    for tile_id, update_ in whole.items():
        assert merged[tile_id].apply(None) == update_.apply(None)
    with pytest.raises(Exception, match="does not follow"):
        merge_tile_updates(
            [TileUpdate(TileId(0, 0), 0, b"\x00" * 32), TileUpdate(TileId(0, 0), 2, b"\x00" * 32)]
        )

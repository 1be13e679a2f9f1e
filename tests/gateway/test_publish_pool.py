"""Publishing with signing worker processes (gateway.signing_pool): entries signed by a worker
are the very bytes in-process signing makes and verify; a publish through the pool stores the
same rows as one signed in process; a worker that dies fails the publish without storing the
chunk it held, and the next publish starts new workers. SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import func, select

from crypto.envelope import pae
from crypto.keys import PrivateKeySigner, Scheme
from crypto.merkle import leaf_hash
from gateway import codec
from gateway.issuer_log import IssuerLog, encode_entry
from gateway.node import Node
from gateway.signing_pool import (
    SigningPool,
    SigningWorkerError,
    envelope_bytes,
    sign_payloads,
)
from gateway.storage.schema import (
    audit,
    disclosure_state,
    entitlements,
    entries,
    identifiers,
    record_feed,
    records,
)
from mra.v1 import envelope_pb2
from tests.gateway.nodes import (
    assert_log_consistent,
    bulk_records,
    log_head,
    make_home,
    records_of,
)

CHUNK = 50


@pytest.fixture
def pool() -> Iterator[SigningPool]:
    """A private pool (not the process's shared one), closed after the test."""
    made = SigningPool(workers=1)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
async def node(db_url: str, tmp_path: Path) -> AsyncIterator[Node]:
    made = await make_home(tmp_path, "EU", db_url, {"MRAGW_LIMITS__PUBLISH_CHUNK": str(CHUNK)})
    try:
        yield made
    finally:
        await made.close()


async def entry_signer(node: Node) -> PrivateKeySigner:
    async with node.engine.connect() as conn:
        return (await node.active_signers(conn))[1]


async def checkpoint_key(node: Node) -> Any:
    async with node.engine.connect() as conn:
        return (await node.trust_statement(conn)).signing_keys[0].public_key


def payloads(count: int) -> list[tuple[str, bytes]]:
    out = []
    for record in records_of(bulk_records(count)):
        encoded = encode_entry(record)
        out.append((encoded.payload_type, encoded.payload))
    return out


def worker_pids_alive(pool: SigningPool) -> list[int]:
    pids = pool.worker_pids()
    assert pids, "the pool has no workers"
    return pids


# --- signing ------------------------------------------------------------------------------


def test_pool_signs_the_same_bytes_as_in_process_signing(pool: SigningPool) -> None:
    signer = PrivateKeySigner.generate(Scheme.ED25519)
    items = payloads(30)
    from_pool = pool.submit(signer, items).result(timeout=60)
    in_process = sign_payloads(signer, items)
    assert from_pool == in_process
    for (payload_type, payload), (envelope, leaf) in zip(items, from_pool, strict=True):
        assert envelope == envelope_bytes(payload_type, payload, signer)
        message = envelope_pb2.Envelope.FromString(envelope)
        assert (message.payload, message.payload_type) == (payload, payload_type)
        (signature,) = message.signatures
        assert signature.key_id == signer.key_id
        signer.public_key.verify(signature.sig, pae(payload_type, payload))
        assert leaf == leaf_hash(envelope)


def test_pool_signs_with_ecdsa_keys_too(pool: SigningPool) -> None:
    signer = PrivateKeySigner.generate(Scheme.ECDSA_P256_SHA256)
    items = payloads(5)
    for (payload_type, payload), (envelope, _) in zip(
        items, pool.submit(signer, items).result(timeout=60), strict=True
    ):
        (signature,) = envelope_pb2.Envelope.FromString(envelope).signatures
        signer.public_key.verify(signature.sig, pae(payload_type, payload))


def test_a_new_key_gets_new_workers_that_sign_with_it(pool: SigningPool) -> None:
    first, second = PrivateKeySigner.generate(), PrivateKeySigner.generate()
    items = payloads(3)
    assert pool.submit(first, items).result(timeout=60) == sign_payloads(first, items)
    old = set(pool.worker_pids())
    assert pool.submit(second, items).result(timeout=60) == sign_payloads(second, items)
    assert old.isdisjoint(pool.worker_pids())


def test_the_private_key_is_not_on_a_worker_command_line_or_environment(
    pool: SigningPool,
) -> None:
    signer = PrivateKeySigner.generate()
    pool.submit(signer, payloads(1)).result(timeout=60)
    key = signer.cryptography_key
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    raw = key.private_bytes_raw()
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    forms = [raw, der, raw.hex().encode(), der.hex().encode(), signer.to_pem()]
    forms += [base64.b64encode(raw), base64.b64encode(der)]
    for pid in worker_pids_alive(pool):
        for name in ("cmdline", "environ"):
            exposed = Path(f"/proc/{pid}/{name}").read_bytes()
            assert not any(form in exposed for form in forms)


def test_a_dead_worker_fails_the_chunk_and_the_next_use_starts_afresh(
    pool: SigningPool,
) -> None:
    signer = PrivateKeySigner.generate()
    items = payloads(3)
    pool.submit(signer, items).result(timeout=60)
    (pid,) = worker_pids_alive(pool)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(SigningWorkerError):
        pool.submit(signer, items).result(timeout=60)
    assert not pool.started
    assert pool.submit(signer, items).result(timeout=60) == sign_payloads(signer, items)
    assert pool.worker_pids() != [pid]


def test_encode_with_digest_is_encode_and_content_digest() -> None:
    salt = codec.new_salt()
    for record in records_of(bulk_records(5)):
        for audience in (None, ("JP",)):
            payload, digest = codec.encode_with_digest(record, salt, audience)
            assert payload == codec.encode(record, salt, audience)
            assert digest == codec.content_digest(record, audience)
    salts = codec.new_salts(1000)
    assert len(salts) == len(set(salts)) == 1000
    assert {len(s) for s in salts} == {codec.SALT_BYTES}


# --- publishing ------------------------------------------------------------------------------


async def stored_rows(node: Node) -> dict[str, list[tuple[Any, ...]]]:
    """Every row publishing writes, without the parts that depend on salt or key."""
    async with node.engine.connect() as conn:
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table, order in (
            (records, (records.c.idx,)),
            (identifiers, (identifiers.c.idx, identifiers.c.scheme, identifiers.c.value)),
            (entitlements, (entitlements.c.idx, entitlements.c.partner)),
            (disclosure_state, (disclosure_state.c.authorisation,)),
            (record_feed, (record_feed.c.seq,)),
        ):
            out[table.name] = [
                tuple(r) for r in (await conn.execute(select(table).order_by(*order))).all()
            ]
        out["entries"] = [
            tuple(r)
            for r in (
                await conn.execute(
                    select(
                        entries.c.idx,
                        entries.c.payload_type,
                        entries.c.sig_state,
                        entries.c.content_digest,
                    ).order_by(entries.c.idx)
                )
            ).all()
        ]
    return out


async def verify_entries(node: Node) -> int:
    """Every stored envelope verifies with the node's entry key, over its own payload."""
    signer = await entry_signer(node)
    async with node.engine.connect() as conn:
        rows = (await conn.execute(select(entries.c.envelope, entries.c.signer))).all()
    for envelope, key_id in rows:
        message = envelope_pb2.Envelope.FromString(bytes(envelope))
        (signature,) = message.signatures
        assert signature.key_id == key_id == signer.key_id
        signer.public_key.verify(signature.sig, pae(message.payload_type, message.payload))
    return len(rows)


async def test_publish_through_the_pool_stores_what_in_process_signing_stores(
    db_url: str, tmp_path: Path, pool: SigningPool
) -> None:
    env = {"MRAGW_LIMITS__PUBLISH_CHUNK": str(CHUNK)}
    pooled = await make_home(tmp_path / "pooled", "EU", db_url, env)
    in_process = await make_home(tmp_path / "plain", "EU", await second_url(db_url, tmp_path), env)
    try:
        batch = records_of(bulk_records(7 * CHUNK + 3))
        pool.warm_up(await entry_signer(pooled))
        assert IssuerLog(pooled, signing_pool=pool).signing_pool(len(batch), CHUNK) is pool
        unstarted = SigningPool(workers=1)
        assert IssuerLog(in_process, signing_pool=unstarted).signing_pool(len(batch), CHUNK) is None

        results = [
            await IssuerLog(pooled, signing_pool=pool).publish(batch, actor="test"),
            await IssuerLog(in_process, signing_pool=unstarted).publish(batch, actor="test"),
        ]
        assert not unstarted.started
        for result in results:
            assert (result.appended, result.duplicates, result.tree_size) == (
                len(batch),
                0,
                len(batch),
            )
        assert await stored_rows(pooled) == await stored_rows(in_process)
        assert await verify_entries(pooled) == len(batch)
        await assert_log_consistent(pooled, "EU", await checkpoint_key(pooled))

        again = await IssuerLog(pooled, signing_pool=pool).publish(batch, actor="test")
        assert (again.appended, again.duplicates) == (0, len(batch))
    finally:
        await pooled.close()
        await in_process.close()


async def second_url(db_url: str, tmp_path: Path) -> str:
    if db_url.startswith("sqlite"):
        return f"sqlite+aiosqlite:///{tmp_path / 'second.db'}"
    from tests.gateway.conftest import fresh_pg_database  # noqa: PLC0415 - PostgreSQL only

    return await fresh_pg_database()


async def appended_chunks(node: Node) -> int:
    async with node.engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    select(func.count()).select_from(audit).where(audit.c.action == "log.append")
                )
            ).scalar_one()
        )


async def test_a_dead_worker_fails_the_publish_and_stores_nothing(
    node: Node, pool: SigningPool
) -> None:
    batch = records_of(bulk_records(4 * CHUNK))
    pool.warm_up(await entry_signer(node))
    pool.submit(await entry_signer(node), payloads(1)).result(timeout=60)
    for pid in worker_pids_alive(pool):
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(SigningWorkerError):
        await IssuerLog(node, signing_pool=pool).publish(batch, actor="test")
    assert (await log_head(node, "EU")).size == 0
    async with node.engine.connect() as conn:
        for table in (entries, records, identifiers, entitlements, record_feed):
            count = (await conn.execute(select(func.count()).select_from(table))).scalar_one()
            assert count == 0, table.name
    assert await appended_chunks(node) == 0

    # The next publish starts new workers and completes.
    result = await IssuerLog(node, signing_pool=pool).publish(batch, actor="test")
    assert (result.appended, result.tree_size) == (len(batch), len(batch))
    assert await verify_entries(node) == len(batch)
    await assert_log_consistent(node, "EU", await checkpoint_key(node))


async def test_a_worker_dying_mid_publish_keeps_committed_chunks_whole(
    node: Node, pool: SigningPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = 12 * CHUNK
    batch = records_of(bulk_records(total))
    pool.warm_up(await entry_signer(node))
    append = IssuerLog.append
    calls = 0

    async def append_then_kill(self: IssuerLog, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        result = await append(self, *args, **kwargs)
        calls += 1
        if calls == 1:
            # The first chunk is committed; the worker dies while later ones are signed.
            for pid in pool.worker_pids():
                os.kill(pid, signal.SIGKILL)
        return result

    monkeypatch.setattr(IssuerLog, "append", append_then_kill)
    with pytest.raises(SigningWorkerError):
        await IssuerLog(node, signing_pool=pool).publish(batch, actor="test")
    monkeypatch.setattr(IssuerLog, "append", append)

    key = await checkpoint_key(node)
    head = await assert_log_consistent(node, "EU", key)
    assert 0 < head.size < total
    assert head.size % CHUNK == 0
    assert await appended_chunks(node) == head.size // CHUNK
    async with node.engine.connect() as conn:
        indexed = (await conn.execute(select(func.count()).select_from(records))).scalar_one()
    assert indexed == head.size

    rerun = await IssuerLog(node, signing_pool=pool).publish(batch, actor="test")
    assert (rerun.appended, rerun.duplicates, rerun.tree_size) == (
        total - head.size,
        head.size,
        total,
    )
    assert await verify_entries(node) == total
    await assert_log_consistent(node, "EU", key)


async def test_chunks_are_signed_in_process_while_the_workers_start(
    node: Node, pool: SigningPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until the workers report ready the event loop signs queued chunks itself (instead of
    waiting for interpreters to start); the log is the same whole, verifiable log."""
    taken_over = 0
    signed_here = sign_payloads

    def counting(signer: PrivateKeySigner, items: Any) -> Any:
        nonlocal taken_over
        taken_over += 1
        return signed_here(signer, items)

    monkeypatch.setattr("gateway.issuer_log.sign_payloads", counting)
    monkeypatch.setattr(SigningPool, "ready", lambda self, signer: False)
    batch = records_of(bulk_records(6 * CHUNK))
    pool.warm_up(await entry_signer(node))
    result = await IssuerLog(node, signing_pool=pool).publish(batch, actor="test")
    assert (result.appended, result.tree_size) == (len(batch), len(batch))
    # Chunks still queued behind the start-up probes were taken back (a chunk a worker thread
    # had already picked up would have been waited for).
    assert 1 <= taken_over <= 6
    assert await verify_entries(node) == len(batch)
    await assert_log_consistent(node, "EU", await checkpoint_key(node))

"""Key rotation, revocation and statement expiry in running gateways (EU, JP, US over real mTLS).

Rotations happen while the gateways run and replicate: partners learn each new trust statement
from ``GetTrustStatement`` (on their refresh schedule, or at once when a checkpoint or entry is
signed by a key they do not know yet) and replicate across every switch with no entry lost or
rejected, no quarantine and no fault. Every storage-touching test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from crypto.checkpoint import parse_note
from gateway import keys
from gateway.demo_data import jp_records, us_records
from gateway.node import Node
from gateway.query import Question
from gateway.server.tls import local_channel, partner_channel
from gateway.storage.schema import audit, entries, logs, partners
from mra.v1 import exchange_pb2, exchange_pb2_grpc, query_pb2, query_pb2_grpc
from tests.gateway.nodes import (
    Cluster,
    assert_log_consistent,
    bulk_records,
    cluster_of,
    eventually,
    log_head,
    partner_row,
)

CODES = ("EU", "JP", "US")
# Fast trust refresh so a partner learns a new statement within a fraction of a second.
TRUST_ENV = {
    "MRAGW_TRUST__REFRESH_INTERVAL_S": "0.2",
    "MRAGW_TRUST__CLOCK_SKEW_S": "0",
}
OVERLAP = dt.timedelta(seconds=1.5)


def eu_batch(start: int, count: int) -> list[dict[str, Any]]:
    return bulk_records(start + count)[start:]


def revalidated(rows: list[dict[str, Any]], day: int) -> list[dict[str, Any]]:
    """The same operators, revalidated on another day: new records, same authorisations."""
    return [{**r, "last_validation": f"2025-01-{day:02d}"} for r in rows]


async def connect_all(cluster: Cluster) -> None:
    await cluster.connect("EU", "JP")
    await cluster.connect("EU", "US")
    await cluster.connect("JP", "US")


async def all_replicated(cluster: Cluster) -> None:
    for issuer in CODES:
        size = (await log_head(cluster.node(issuer), issuer)).size
        for at in CODES:
            if at != issuer:
                await cluster.wait_replicated(at, issuer, size)


async def assert_nothing_lost_or_rejected(cluster: Cluster) -> None:
    for at in CODES:
        node = cluster.node(at)
        async with node.engine.connect() as conn:
            bad = (
                await conn.execute(
                    select(entries.c.log, entries.c.sig_state, func.count())
                    .where(entries.c.sig_state.in_(["invalid", "revoked", "unverified"]))
                    .group_by(entries.c.log, entries.c.sig_state)
                )
            ).all()
            held = (
                await conn.execute(
                    select(partners.c.code, partners.c.quarantined, partners.c.reason)
                )
            ).all()
        assert bad == [], (at, bad)
        assert [r for r in held if r.quarantined] == [], (at, held)
        for issuer in CODES:
            if issuer == at:
                continue
            replica = await assert_log_consistent(node, issuer)
            assert replica.root == (await log_head(cluster.node(issuer), issuer)).root
            status = cluster.gateways[at].replication.status(issuer)
            assert status is not None
            assert status.faults == {}, (at, issuer, status.faults)
            assert status.trust_rejected is None


async def trust_version_at(node: Node, partner: str) -> int:
    return int((await partner_row(node, partner)).trust_version)


async def wait_trust_version(cluster: Cluster, partner: str, version: int) -> None:
    for at in CODES:
        if at == partner:
            continue

        async def probe(at: str = at) -> bool:
            return await trust_version_at(cluster.node(at), partner) >= version

        await eventually(probe, deadline_s=15)


async def head_signers(node: Node) -> int:
    async with node.engine.connect() as conn:
        note = (
            await conn.execute(select(logs.c.checkpoint).where(logs.c.code == node.admin))
        ).scalar_one()
    return len(parse_note(note).signatures)


async def test_rotating_every_kind_of_key_while_running_loses_and_rejects_nothing(
    db_url: str, tmp_path: Path
) -> None:
    async with cluster_of(tmp_path, db_url, CODES, TRUST_ENV, start=True) as cluster:
        await connect_all(cluster)
        eu, jp, us = (cluster.node(c) for c in CODES)
        await cluster.publish("EU", eu_batch(0, 20))
        await cluster.publish("JP", jp_records())
        await cluster.publish("US", us_records())
        await all_replicated(cluster)

        # 1. EU rotates its signing key: published first, used after the overlap.
        async with eu.engine.connect() as conn:
            old_signer, _ = await eu.active_signers(conn)
        rotated = await keys.rotate_signing(eu, overlap=OVERLAP)
        (new_key,) = [k for k in rotated.signing_keys if k.key_id != old_signer.key_id]
        await cluster.publish("EU", eu_batch(20, 10))  # still the old key
        await wait_trust_version(cluster, "EU", rotated.version)

        async def new_key_in_use() -> bool:
            async with eu.engine.connect() as conn:
                checkpoint, _ = await eu.active_signers(conn)
            return checkpoint.key_id == new_key.key_id

        await eventually(new_key_in_use, deadline_s=10)
        # During the overlap checkpoints carry both signatures.
        published = await cluster.publish("EU", eu_batch(30, 10))
        assert len(parse_note(published.checkpoint).signatures) == 2
        await all_replicated(cluster)

        # After the old key's window ends the head is re-signed by the new key alone, and
        # partners keep replicating (they check the window of every checkpoint they receive).
        async def old_window_over() -> bool:
            return await head_signers(eu) == 1

        await eventually(old_window_over, deadline_s=15)
        await cluster.publish("EU", eu_batch(40, 10))
        await all_replicated(cluster)
        async with jp.engine.connect() as conn:
            signers = set(
                (
                    await conn.execute(
                        select(entries.c.signer)
                        .where(entries.c.log == "EU", entries.c.signer.is_not(None))
                        .distinct()
                    )
                ).scalars()
            )
        assert signers == {old_signer.key_id, new_key.key_id}, (
            signers,
            old_signer.key_id,
            new_key.key_id,
        )
        answer = await cluster.gateways["JP"].checker.check(
            Question(operator_id=eu_batch(46, 1)[0]["operator_ids"][0]["value"], issuer="EU")
        )
        assert answer.recognised  # from an entry the new key signed

        # 2. JP rotates its TLS CA and certificates: partners trust both CAs, then JP switches.
        tls_statement = await keys.rotate_tls(jp, overlap=OVERLAP)
        await wait_trust_version(cluster, "JP", tls_statement.version)
        old_ca = jp.paths.tls_file("ca.pem").read_bytes()

        async def jp_switched() -> bool:
            return jp.tls_dir() == jp.paths.tls_next

        await eventually(jp_switched, deadline_s=10)
        assert jp.tls_bytes("ca.pem") != old_ca
        await cluster.publish("JP", revalidated(jp_records(), 2))
        await all_replicated(cluster)
        # New connections both ways use the new certificates; the admin API takes the new
        # admin certificate.
        await gateways_talk(cluster, "EU", "JP")
        await gateways_talk(cluster, "JP", "EU")
        await admin_answers(cluster, "JP")
        # The next statement retires the old CA; partners follow and still connect.
        renewed = await keys.renew(jp)
        assert renewed.tls_ca_pem.encode() == jp.tls_bytes("ca.pem")
        await wait_trust_version(cluster, "JP", renewed.version)
        assert (await partner_row(eu, "JP")).ca_pem.encode() == jp.tls_bytes("ca.pem")
        await gateways_talk(cluster, "EU", "JP")
        await admin_answers(cluster, "JP")

        # 3. US rotates its root: the new statement is signed by both roots; partners follow
        # the chain from the fingerprint they pinned, with no manual step.
        pinned = (await partner_row(eu, "US")).root_fingerprint
        root_statement = await keys.rotate_root(us)
        assert root_statement.root_fingerprint != pinned
        await wait_trust_version(cluster, "US", root_statement.version)
        assert (await partner_row(eu, "US")).root_fingerprint == pinned
        later = await keys.renew(us)  # signed by the new root alone
        await wait_trust_version(cluster, "US", later.version)
        await cluster.publish("US", revalidated(us_records(), 3))
        await all_replicated(cluster)

        await assert_nothing_lost_or_rejected(cluster)
        async with eu.engine.connect() as conn:
            updates = (
                await conn.execute(
                    select(func.count()).where(audit.c.action == "partner.trust-update")
                )
            ).scalar_one()
        assert updates >= 3  # JP twice (TLS, renewal), US twice (root, renewal)


async def gateways_talk(cluster: Cluster, caller: str, callee: str) -> None:
    """A fresh mTLS connection from ``caller`` to ``callee`` (each with its current material)."""
    node = cluster.node(caller)
    row = await partner_row(node, callee)
    channel = partner_channel(node, callee, cluster.endpoints[callee], row.ca_pem)
    try:
        stub = exchange_pb2_grpc.ExchangeServiceStub(channel)
        response = await stub.GetCheckpoint(exchange_pb2.GetCheckpointRequest(), timeout=10)
        assert response.checkpoint.note
    finally:
        await channel.close(None)


async def admin_answers(cluster: Cluster, code: str) -> None:
    node = cluster.node(code)
    target = cluster.gateways[code].server.listeners.admin_target
    channel = local_channel(node, target)
    try:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        operator = bulk_records(2)[1]["operator_ids"][0]["value"]
        answer = await stub.Check(query_pb2.CheckRequest(operator_id=operator, issuer="EU"))
        assert answer.recognised  # EU operator 1 (AEOF, consent): recognised by JP and US
        assert answer.issuer == "EU"
    finally:
        await channel.close(None)

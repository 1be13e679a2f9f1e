"""Revocation bound to the log, expiry past grace, and the refusal of bad statement updates, in
running gateways (EU and JP over real mTLS, SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from crypto.checkpoint import Checkpoint, sign_checkpoint
from crypto.envelope import envelope_to_json
from crypto.keys import PrivateKeySigner
from gateway import keys
from gateway.cli.remote import running_status
from gateway.keys import KeyCommandError
from gateway.node import now_utc
from gateway.partners import partner_statement
from gateway.query import Question
from gateway.replication import ReplicationFaultError, verify_note
from gateway.storage.schema import audit, entries, trust_statements
from gateway.trust import sign_statement
from tests.gateway.nodes import bulk_records, cluster_of, eventually, log_head, partner_row

ENV = {"MRAGW_TRUST__REFRESH_INTERVAL_S": "0.2", "MRAGW_TRUST__CLOCK_SKEW_S": "0"}


async def states(node: Any, log: str, signer: str | None = None) -> dict[str, int]:
    query = select(entries.c.sig_state, func.count()).where(entries.c.log == log)
    if signer is not None:
        query = query.where(entries.c.signer == signer)
    async with node.engine.connect() as conn:
        rows = (await conn.execute(query.group_by(entries.c.sig_state))).all()
    return {str(state): int(n) for state, n in rows}


def operator(n: int) -> str:
    return str(bulk_records(n + 1)[n]["operator_ids"][0]["value"])


async def test_a_compromised_key_is_revoked_from_an_earlier_index_and_records_republished(
    db_url: str, tmp_path: Path
) -> None:
    async with cluster_of(tmp_path, db_url, ("EU", "JP"), ENV, start=True) as cluster:
        await cluster.connect("EU", "JP")
        eu, jp = cluster.node("EU"), cluster.node("JP")
        await cluster.publish("EU", bulk_records(12))
        async with eu.engine.connect() as conn:
            _, stolen = await eu.active_signers(conn)
        await cluster.wait_replicated("JP", "EU", 12)
        # Operators 1 and 10 (consent, AEOF) are recognised at JP before the compromise.
        for n in (1, 10):
            answer = await cluster.gateways["JP"].checker.check(
                Question(operator_id=operator(n), issuer="EU")
            )
            assert answer.recognised

        # The key leaked around index 8: rotate at once, revoke from 8, re-publish.
        with pytest.raises(KeyCommandError, match="last Ed25519 signing key"):
            await keys.revoke(eu, stolen.key_id, reason="compromised", from_index=8)
        await keys.rotate_signing(eu, overlap=dt.timedelta(0))
        with pytest.raises(KeyCommandError, match="between 0 and the log size 12"):
            await keys.revoke(eu, stolen.key_id, reason="compromised", from_index=13)
        with pytest.raises(KeyCommandError, match="--reason"):
            await keys.revoke(eu, stolen.key_id, reason=" ", from_index=8)
        revoked = await keys.revoke(eu, stolen.key_id, reason="compromised", from_index=8)
        assert revoked.signing_key(stolen.key_id).revoked_at_index == 8  # type: ignore[union-attr]
        assert await states(eu, "EU", stolen.key_id) == {"valid": 8, "revoked": 4}
        # At EU itself the revoked entries are unusable at once.
        answer = await cluster.gateways["EU"].checker.check(
            Question(operator_id=operator(10), issuer="EU")
        )
        assert not any(t.record for t in answer.types)

        # JP learns the revocation: entries from 8 signed by that key become unusable there,
        # earlier ones stay valid, and nobody is quarantined.
        async def jp_applied_revocation() -> bool:
            counts = await states(jp, "EU")
            return counts.get("revoked", 0) > 0

        await eventually(jp_applied_revocation, deadline_s=15)
        async with jp.engine.connect() as conn:
            by_index = dict(
                (
                    await conn.execute(
                        select(entries.c.idx, entries.c.sig_state).where(
                            entries.c.log == "EU", entries.c.signer.is_not(None)
                        )
                    )
                ).all()
            )
        assert {i for i, s in by_index.items() if s == "revoked"} == {i for i in by_index if i >= 8}
        assert not (await partner_row(jp, "EU")).quarantined
        (eu_status,) = (await cluster.gateways["JP"].status())["partners"]
        assert eu_status["unusable"] == len([i for i in by_index if i >= 8])
        answer = await cluster.gateways["JP"].checker.check(
            Question(operator_id=operator(10), issuer="EU")
        )
        assert not any(t.record for t in answer.types)
        assert (
            await cluster.gateways["JP"].checker.check(
                Question(operator_id=operator(1), issuer="EU")
            )
        ).recognised

        # Re-publishing signs the affected records with the new key; JP uses them again.
        assert await keys.republish(eu) == 4
        assert await keys.republish(eu) == 0  # idempotent
        await cluster.wait_replicated("JP", "EU", 16)

        async def recognised_again() -> bool:
            answer = await cluster.gateways["JP"].checker.check(
                Question(operator_id=operator(10), issuer="EU")
            )
            return answer.recognised

        await eventually(recognised_again, deadline_s=10)
        assert not (await partner_row(jp, "EU")).quarantined
        # A checkpoint of the grown log signed by the revoked key is refused at JP.
        statement = partner_statement(await partner_row(jp, "EU"))
        head = await log_head(eu, "EU")
        forged = sign_checkpoint(
            Checkpoint(origin=eu.origin, size=head.size, root_hash=head.root), eu.origin, stolen
        )
        with pytest.raises(ReplicationFaultError, match="revoked from index 8"):
            verify_note(forged, statement, now=now_utc())


async def test_an_expired_statement_stops_replication_after_the_grace_until_renewed(
    db_url: str, tmp_path: Path
) -> None:
    async with cluster_of(
        tmp_path, db_url, ("EU", "JP"), {**ENV, "MRAGW_TRUST__EXPIRY_GRACE_S": "0.5"}, start=True
    ) as cluster:
        await cluster.connect("EU", "JP")
        eu, jp = cluster.node("EU"), cluster.node("JP")
        await cluster.publish("EU", bulk_records(3))
        await cluster.wait_replicated("JP", "EU", 3)
        # EU publishes a statement that expires almost at once (as if renewal was forgotten).
        async with eu.engine.begin() as conn:
            current = await eu.trust_statement(conn)
            await keys.publish_statement(
                eu,
                conn,
                dataclasses.replace(current, expires=now_utc() + dt.timedelta(seconds=1)),
                actor="test",
                action="trust.renew",
                detail={},
            )

        async def blocked() -> bool:
            status = cluster.gateways["JP"].replication.status("EU")
            return bool(
                status and status.trust_state == "expired" and status.faults.get("trust_expired")
            )

        await eventually(blocked, deadline_s=15)
        status = cluster.gateways["JP"].replication.status("EU")
        assert status is not None
        assert "grace ended" in (status.last_error or "")
        # `mragw status` (through the running gateway's admin API) says why.
        live = await running_status(jp, cluster.gateways["JP"].server.listeners.admin_target)
        assert live is not None
        (eu_status,) = live["partners"]
        assert eu_status["trust"]["state"] == "expired"
        assert "trust_expired" in eu_status["trust_problem"]
        assert live["trust"]["state"] == "valid"
        await cluster.publish("EU", bulk_records(5))
        assert (await log_head(jp, "EU")).size == 3  # nothing applied while expired
        assert not (await partner_row(jp, "EU")).quarantined

        # EU renews: JP fetches the new statement at its next attempt and catches up.
        await keys.renew(eu, days=90)
        await cluster.wait_replicated("JP", "EU", 5)
        assert cluster.gateways["JP"].replication.status("EU").trust_state == "valid"  # type: ignore[union-attr]


async def test_a_bad_statement_update_is_refused_and_the_held_one_kept(
    db_url: str, tmp_path: Path
) -> None:
    async with cluster_of(tmp_path, db_url, ("EU", "JP"), ENV, start=True) as cluster:
        await cluster.connect("EU", "JP")
        eu, jp = cluster.node("EU"), cluster.node("JP")
        held = (await partner_row(jp, "EU")).trust_version
        # EU's database gains a version signed by a stranger (a stolen database, not the root).
        stranger = PrivateKeySigner.generate()
        async with eu.engine.begin() as conn:
            current = await eu.trust_statement(conn)
            forged = dataclasses.replace(
                current, version=current.version + 1, root_key=stranger.public_key
            )
            await conn.execute(
                trust_statements.insert().values(
                    version=forged.version,
                    envelope=envelope_to_json(sign_statement(forged, [stranger])),
                    created_at=0.0,
                )
            )

        async def refused() -> bool:
            status = cluster.gateways["JP"].replication.status("EU")
            return bool(status and status.trust_rejected)

        await eventually(refused, deadline_s=15)
        status = cluster.gateways["JP"].replication.status("EU")
        assert status is not None
        assert "0 valid signature(s)" in (status.trust_rejected or "")
        assert (await partner_row(jp, "EU")).trust_version == held
        async with jp.engine.connect() as conn:
            updates = (
                await conn.execute(
                    select(func.count()).where(audit.c.action == "partner.trust-update")
                )
            ).scalar_one()
        assert updates == 0
        async with jp.engine.connect() as conn:
            refusals = (
                await conn.execute(
                    select(func.count()).where(audit.c.action == "partner.trust-update-refused")
                )
            ).scalar_one()
        assert refusals == 1  # once, however often the partner offers it again
        # Replication itself goes on under the held statement.
        await cluster.publish("EU", bulk_records(2))
        await cluster.wait_replicated("JP", "EU", 2)

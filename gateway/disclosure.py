"""Disclosure entries: when entitlement newly arises, re-publish the current record for it.

Entitlement is decided at append time, so a partner pinned later, an arrangement that takes
effect later, or consent given later would otherwise never see records appended earlier. This
job finds, for each partner and each authorisation (issuer, number, type), the current record;
when that record is still in force (not revoked, annulled or withdrawn) and the partner is
entitled to it today but has no open disclosure, it appends a disclosure entry: the same
record with a fresh salt and the audience set to that partner alone.

It is idempotent: a second run right after the first appends nothing (the disclosure state is
open, and an identical disclosure is deduplicated by content digest anyway).
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import codec
from gateway.datasets import active_recogniser
from gateway.entitlement import status_entitles
from gateway.issuer_log import IssuerLog, PreparedEntry, prepare
from gateway.node import Node
from gateway.records import AeoStatusRecord
from gateway.storage.schema import disclosure_state, entries, partners, records
from gateway.verification import parse_envelope

# Statuses after which an authorisation is over; a newly entitled partner is not told of them.
ENDED = frozenset({"REVOKED", "ANNULLED", "WITHDRAWN", "CONSENT_WITHDRAWN"})


async def current_records(conn: AsyncConnection, admin: str) -> list[AeoStatusRecord]:
    """The newest original record of every authorisation in our own log."""
    rows = (
        await conn.execute(
            select(
                records.c.issuer,
                records.c.authorisation,
                records.c.aeo_type,
                records.c.status_date,
                records.c.idx,
            ).where(records.c.log == admin, records.c.disclosed_to.is_(None))
        )
    ).all()
    newest: dict[tuple[str, str, str], tuple[str, int]] = {}
    for row in rows:
        key = (row.issuer, row.authorisation, row.aeo_type)
        candidate = (row.status_date, row.idx)
        if key not in newest or candidate > newest[key]:
            newest[key] = candidate
    if not newest:
        return []
    wanted = sorted(idx for _, idx in newest.values())
    out: list[AeoStatusRecord] = []
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        envelopes = (
            (
                await conn.execute(
                    select(entries.c.envelope)
                    .where(entries.c.log == admin, entries.c.idx.in_(chunk))
                    .order_by(entries.c.idx)
                )
            )
            .scalars()
            .all()
        )
        for raw in envelopes:
            if raw is None:
                continue  # erased or pruned: nothing left to disclose
            message = parse_envelope(bytes(raw))
            record = codec.decode(message.payload_type, bytes(message.payload))
            if isinstance(record, AeoStatusRecord):
                out.append(record)
    return out


async def disclose(node: Node, *, actor: str, today: date | None = None) -> int:
    """Append the disclosure entries due today; return how many were appended."""
    day = today or node.config.today()
    async with node.engine.connect() as conn:
        recogniser = await active_recogniser(conn)
        partner_codes = list(
            (await conn.execute(select(partners.c.code).order_by(partners.c.code))).scalars()
        )
        if not partner_codes:
            return 0
        current = await current_records(conn, node.admin)
        state_rows = (await conn.execute(select(disclosure_state))).all()
        checkpoint_signer, entry_signer = await node.active_signers(conn)
    open_keys = {(r.partner, (r.issuer, r.authorisation, r.aeo_type)) for r in state_rows if r.open}
    due: list[PreparedEntry] = []
    for record in current:
        if record.status in ENDED:
            # Nothing to tell a partner that never saw the authorisation while it was in force:
            # disclose only what can still be relied on (data minimisation).
            continue
        for partner in partner_codes:
            if (partner, record.key) in open_keys:
                continue
            if status_entitles(recogniser, record, partner, day):
                due.append(prepare(record, entry_signer, disclosed_to=partner))
    appended = 0
    log = IssuerLog(node)
    chunk = node.config.limits.publish_chunk
    for start in range(0, len(due), chunk):
        result = await log.append(
            due[start : start + chunk],
            recogniser=recogniser,
            day=day,
            checkpoint_signer=checkpoint_signer,
            actor=actor,
        )
        appended += result.appended
    return appended

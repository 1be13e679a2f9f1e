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

from collections.abc import Callable
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import codec
from gateway.datasets import active_recogniser
from gateway.entitlement import status_entitles
from gateway.issuer_log import IssuerLog, PreparedEntry, prepare
from gateway.node import Node
from gateway.records import AeoStatusRecord, Record
from gateway.storage.schema import disclosure_state, entries, partners, records
from gateway.verification import parse_envelope
from registry.errors import QuestionError

# Statuses after which an authorisation is over; a newly entitled partner is not told of them.
ENDED = frozenset({"REVOKED", "ANNULLED", "WITHDRAWN", "CONSENT_WITHDRAWN"})


async def candidate_indices(
    conn: AsyncConnection,
    admin: str,
    partner_codes: list[str],
    may_recognise: Callable[[str, str, str], bool],
) -> dict[int, tuple[tuple[str, str, str], list[str]]]:
    """Index of the newest original record of each authorisation -> partners that may be newly
    entitled to it, from the decoded index alone (no envelope is parsed here, so a pass that
    discloses nothing stays cheap on a large log)."""
    rows = (
        await conn.execute(
            select(
                records.c.issuer,
                records.c.authorisation,
                records.c.aeo_type,
                records.c.status_date,
                records.c.idx,
                records.c.status,
                records.c.consent,
            ).where(records.c.log == admin, records.c.disclosed_to.is_(None))
        )
    ).all()
    newest: dict[tuple[str, str, str], Any] = {}
    for row in rows:
        key = (row.issuer, row.authorisation, row.aeo_type)
        held = newest.get(key)
        if held is None or (row.status_date, row.idx) > (held.status_date, held.idx):
            newest[key] = row
    out: dict[int, tuple[tuple[str, str, str], list[str]]] = {}
    for key, row in newest.items():
        if row.status in ENDED or not row.consent:
            # Nothing to tell a partner that never saw the authorisation while it was in force:
            # disclose only what can still be relied on (data minimisation).
            continue
        wanted = [p for p in partner_codes if may_recognise(p, row.issuer, row.aeo_type)]
        if wanted:
            out[int(row.idx)] = (key, wanted)
    return out


async def decode_own(conn: AsyncConnection, admin: str, wanted: list[int]) -> dict[int, Record]:
    out: dict[int, Record] = {}
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        rows = (
            await conn.execute(
                select(entries.c.idx, entries.c.envelope).where(
                    entries.c.log == admin, entries.c.idx.in_(chunk)
                )
            )
        ).all()
        for row in rows:
            if row.envelope is None:
                continue  # erased or pruned: nothing left to disclose
            message = parse_envelope(bytes(row.envelope))
            out[int(row.idx)] = codec.decode(message.payload_type, bytes(message.payload))
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
        answers: dict[tuple[str, str, str], bool] = {}

        def may_recognise(partner: str, issuer: str, aeo_type: str) -> bool:
            key = (partner, issuer, aeo_type)
            if key not in answers:
                try:
                    answers[key] = recogniser.check(partner, issuer, aeo_type, day).recognised
                except QuestionError:
                    answers[key] = False
            return answers[key]

        candidates = await candidate_indices(conn, node.admin, partner_codes, may_recognise)
        # The state is read after the records (each read is its own snapshot): every record
        # considered then has its entitlement state at least as new, so a record published
        # meanwhile is never mistaken for one its partners were not entitled to. The append
        # re-checks under the log lock in any case.
        state_rows = (await conn.execute(select(disclosure_state))).all()
        open_keys = {
            (r.partner, (r.issuer, r.authorisation, r.aeo_type)) for r in state_rows if r.open
        }
        due_to = {
            idx: kept
            for idx, (key, wanted) in candidates.items()
            if (kept := [p for p in wanted if (p, key) not in open_keys])
        }
        if not due_to:
            return 0
        decoded = await decode_own(conn, node.admin, sorted(due_to))
        checkpoint_signers = await node.checkpoint_signers(conn)
        _, entry_signer = await node.active_signers(conn)
    due: list[PreparedEntry] = []
    for idx in sorted(due_to):
        record = decoded.get(idx)
        if not isinstance(record, AeoStatusRecord):
            continue
        for partner in due_to[idx]:
            # The full rule (audience included) on the decoded record.
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
            checkpoint_signers=checkpoint_signers,
            actor=actor,
        )
        appended += result.appended
    return appended

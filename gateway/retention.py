"""Retention: prune the payloads of superseded AEO status records, keep a compact history.

A record of an authorisation (log, issuer, authorisation number, type) is *superseded before
the cutoff* when a later original record of the same authorisation (latest ``status_date``,
then the later entry, as Check orders them) took effect before the cutoff date (today minus
``--older-than``). Such a record never again decides the current status; it only answers
checks for past dates. Pruning it, in our own log and in partners' logs alike:

- sets its envelope to NULL (the signed payload with the operator's name, identifiers and
  salt); the leaf hash and tiles stay, so every checkpoint and proof verifies as before, and
  the entry is served to partners as its leaf hash only from then on;
- keeps its row in ``records`` (issuer, authorisation number, type, status, status date,
  validity, consent, country, leaf index) with ``name`` set to NULL, and of its identifiers
  only the authorisation number: that compact history is what Check reads for a past date, so
  a past-date Check answers exactly as before (the operator is found through the identifiers
  of its current record, which is never pruned); only evidence for the pruned record is gone
  (the answer says "evidence unavailable: ... pruned or erased");
- keeps the entry ``valid``: its signature was verified before the payload went, and the
  compact row stands on that verification.

Personal data: the name and the operator identifiers (an EORI or TIN can name a sole trader)
are treated as personal data and removed from superseded records. The authorisation number
is kept: it is the key of the status history, the issuer's own reference, and the current
record carries it anyway. In our own log the publish digest (SHA-256 of the record without
its salt) is kept, so re-publishing an old record from the national system stays a no-op
rather than re-appending personal data; it reveals nothing without the record itself.

Disclosure copies never supersede (only originals do), so the current original of every
authorisation keeps its payload and the disclosure job can always re-publish it.

Pruning is idempotent (a pruned entry has no envelope left to prune) and audited. Validation
outcomes are not superseded by anything and are not pruned (``mragw erase`` removes them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from sqlalchemy import and_, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit import record_action
from gateway.erasure import checkpoint_wal, secure_delete
from gateway.errors import InputError
from gateway.node import Node
from gateway.storage.schema import entries, identifiers, logs, records

__all__ = ["PruneResult", "parse_duration", "prunable", "prune"]

_DURATION = re.compile(r"(\d{1,6})([dw])")
# About a century: anything longer is a typo, not a retention period.
MAX_DAYS = 36_600
_CHUNK = 500


def parse_duration(text: str) -> timedelta:
    """``400d`` or ``57w`` as a number of days (retention is counted in calendar days)."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise InputError(f"--older-than: {text!r} is not a duration like 400d or 57w")
    days = int(found.group(1)) * (7 if found.group(2) == "w" else 1)
    if days < 1 or days > MAX_DAYS:
        raise InputError(f"--older-than: {text!r} must be between 1 and {MAX_DAYS} days")
    return timedelta(days=days)


@dataclass(frozen=True)
class PruneResult:
    cutoff: date
    pruned: dict[str, int] = field(default_factory=dict)
    wal_truncated: bool = True

    @property
    def total(self) -> int:
        return sum(self.pruned.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff.isoformat(),
            "pruned": dict(sorted(self.pruned.items())),
            "total": self.total,
            "wal_truncated": self.wal_truncated,
        }


async def prunable(conn: AsyncConnection, log: str, cutoff: date) -> list[int]:
    """Indices of ``log``'s records superseded before ``cutoff`` that still hold a payload."""
    rows = (
        await conn.execute(
            select(
                records.c.idx,
                records.c.issuer,
                records.c.authorisation,
                records.c.aeo_type,
                records.c.status_date,
                records.c.disclosed_to,
                entries.c.envelope.is_not(None).label("held"),
            )
            .select_from(
                records.join(
                    entries,
                    and_(entries.c.log == records.c.log, entries.c.idx == records.c.idx),
                )
            )
            .where(records.c.log == log, entries.c.sig_state == "valid")
        )
    ).all()
    histories: dict[tuple[str, str, str], list[Any]] = {}
    for row in rows:
        histories.setdefault((row.issuer, row.authorisation, row.aeo_type), []).append(row)
    limit = cutoff.isoformat()
    out: list[int] = []
    for history in histories.values():
        history.sort(key=lambda r: (r.status_date, int(r.idx)))
        # The last original in force before the cutoff supersedes everything before it.
        last = max(
            (k for k, r in enumerate(history) if r.disclosed_to is None and r.status_date < limit),
            default=None,
        )
        if last is None:
            continue
        out.extend(int(r.idx) for r in history[:last] if r.held)
    return sorted(out)


async def _prune_entries(conn: AsyncConnection, log: str, indices: Sequence[int]) -> None:
    for start in range(0, len(indices), _CHUNK):
        chunk = indices[start : start + _CHUNK]
        await conn.execute(
            update(entries)
            .where(entries.c.log == log, entries.c.idx.in_(chunk))
            .values(envelope=None)
        )
        await conn.execute(
            update(records).where(records.c.log == log, records.c.idx.in_(chunk)).values(name=None)
        )
        await conn.execute(
            delete(identifiers).where(
                identifiers.c.log == log,
                identifiers.c.idx.in_(chunk),
                identifiers.c.scheme != "AUTH",
            )
        )


async def prune(
    node: Node, *, older_than: timedelta, actor: str, today: date | None = None
) -> PruneResult:
    """Prune every log this node holds (ours and partners') in one transaction; audited."""
    if older_than < timedelta(days=1):
        raise InputError("--older-than: must be at least one day")
    cutoff = (today or node.config.today()) - older_than
    pruned: dict[str, int] = {}
    async with node.engine.begin() as conn:
        await secure_delete(conn)
        codes = list((await conn.execute(select(logs.c.code).order_by(logs.c.code))).scalars())
        for code in codes:
            indices = await prunable(conn, code, cutoff)
            if indices:
                await _prune_entries(conn, code, indices)
                pruned[code] = len(indices)
        await record_action(
            conn,
            actor,
            "retention.prune",
            {
                "older_than_days": older_than.days,
                "cutoff": cutoff.isoformat(),
                "pruned": pruned,
            },
        )
    truncated = await checkpoint_wal(node.engine) if pruned else True
    return PruneResult(cutoff, pruned, truncated)

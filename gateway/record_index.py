"""The decoded index of log entries: what Check and Watch read, for every log this node holds.

Invariant: a row here exists only for an entry whose signature verified (own entries are signed
here; partner entries are indexed by the verifier after their signature checked out), so an
answer never rests on an unverified or invalid entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.records import AeoStatusRecord, Record
from gateway.storage.bulk import insert_rows
from gateway.storage.schema import identifiers, record_feed, records
from gateway.storage.upsert import insert_ignore


@dataclass(frozen=True)
class IndexedEntry:
    index: int
    record: Record
    disclosed_to: str | None = None


def _day(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


async def index_records(conn: AsyncConnection, log: str, items: Sequence[IndexedEntry]) -> None:
    record_rows: list[dict[str, Any]] = []
    id_rows: list[dict[str, Any]] = []
    for item in items:
        record = item.record
        id_rows.extend(
            {"log": log, "idx": item.index, "scheme": i.scheme, "value": i.value}
            for i in record.operator_ids
        )
        if isinstance(record, AeoStatusRecord):
            id_rows.append(
                {"log": log, "idx": item.index, "scheme": "AUTH", "value": record.authorisation}
            )
            record_rows.append(
                {
                    "log": log,
                    "idx": item.index,
                    "issuer": record.issuer,
                    "authorisation": record.authorisation,
                    "aeo_type": record.aeo_type,
                    "status": record.status,
                    "status_date": record.status_date.isoformat(),
                    "valid_from": _day(record.valid_from),
                    "valid_until": _day(record.valid_until),
                    "consent": record.consent,
                    "country": record.country,
                    "name": record.name,
                    "disclosed_to": item.disclosed_to,
                }
            )
    if record_rows:
        await insert_ignore(conn, records, record_rows, keys=("log", "idx"))
        # insert_rows: the driver's executemany on SQLite (a catch-up indexes thousands of
        # records per transaction; SQLAlchemy's per-row work cost more than SQLite's).
        await insert_rows(conn, record_feed, ("log", "idx"), [(log, r["idx"]) for r in record_rows])
    if id_rows:
        await insert_ignore(conn, identifiers, id_rows, keys=("log", "idx", "scheme", "value"))

"""Entry signatures: verified before an entry is first used, and by a background verifier.

The hot replication path verifies checkpoints and roots only; an entry's own signature is
checked here, lazily, against the signing keys in the issuer's trust statement. Outcomes are
stored in ``entries.sig_state``:

- ``valid``: a key of the issuer's trust statement signed it, and the key was not revoked at or
  before the entry's index;
- ``revoked``: signed by a key revoked at an index <= this entry's: never used in an answer,
  but it quarantines nobody (the issuer re-publishes with a valid key);
- ``early``: signed by a key whose validity window had not started when this node received
  the entry (give or take the configured clock skew): a key must not sign before it is
  valid. Never used, no quarantine. (An entry carries no trusted signing time, so the end of a
  window is enforced through the log instead: a retired key is revoked from an index.)
- ``invalid``: the signature does not verify or the bytes are not an envelope: never used, and
  the partner is quarantined, because its log holds something it did not sign.
- ``notice``: a valid signature over a well-formed erasure notice, only for as long as the
  transaction that judged it runs: :func:`gateway.erasure.apply_notices` then checks it
  against the log and stores ``valid`` (applied) or ``invalid``.
- ``erased``: the payload was erased on an erasure notice (ours or the issuer's); the leaf hash
  stays, the envelope is gone, and the entry is never used again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.errors import VerificationError
from gateway import codec
from gateway.errors import GatewayError
from gateway.records import ErasureNotice, Record
from gateway.signatures import (
    KeyMaterial,
    Outcome,
    check_chunk,
    parse_envelope,
    verify_envelope,
)
from gateway.storage.schema import entries
from gateway.trust import TrustStatement

__all__ = [
    "NOTICE",
    "EntryCheck",
    "Judged",
    "PendingEntry",
    "apply_revocations",
    "check_entry",
    "decide_entry",
    "judge",
    "key_material",
    "parse_envelope",
    "select_pending",
    "store_outcomes",
    "verify_pending",
]


@dataclass(frozen=True)
class EntryCheck:
    index: int
    state: str
    problem: str | None = None
    # The key whose signature made the entry valid (kept so a later revocation can find it).
    signer: str | None = None
    # State ``notice``: the erasure notice the entry carries, to apply in the same transaction.
    notice: ErasureNotice | None = None


NOTICE = "notice"


def key_material(statement: TrustStatement) -> KeyMaterial:
    """The statement's signing keys as bytes, for :mod:`gateway.signatures` (maybe in a worker)."""
    return tuple((k.key_id, k.public_key.to_der()) for k in statement.signing_keys)


def decide_entry(
    index: int,
    outcome: Outcome,
    statement: TrustStatement,
    received_at: datetime | None = None,
    skew: timedelta = timedelta(0),
    *,
    unknown_is_final: bool = True,
) -> EntryCheck:
    """An entry's state from its signature results (see :func:`check_entry`)."""
    malformed, results = outcome
    if malformed is not None:
        return EntryCheck(index, "invalid", malformed)
    revoked_problem: str | None = None
    early_problem: str | None = None
    for key_id, error in results:
        key = statement.signing_key(key_id)
        if key is None:  # pragma: no cover - results only name keys of the statement
            continue
        if error is not None:
            return EntryCheck(index, "invalid", f"entry {index}: {error}")
        if key.revoked_at_index is not None and index >= key.revoked_at_index:
            revoked_problem = (
                f"entry {index} signed by key {key.key_id} revoked from index "
                f"{key.revoked_at_index}"
            )
            continue
        if received_at is not None and received_at < key.valid_from - skew:
            early_problem = (
                f"entry {index} signed by key {key.key_id} before its window starts "
                f"({key.valid_from:%Y-%m-%dT%H:%M:%SZ})"
            )
            continue
        return EntryCheck(index, "valid", signer=key.key_id)
    if revoked_problem is not None:
        return EntryCheck(index, "revoked", revoked_problem)
    if early_problem is not None:
        return EntryCheck(index, "early", early_problem)
    if not unknown_is_final:
        return EntryCheck(index, "unverified", "signed by a key not in the held statement yet")
    return EntryCheck(
        index,
        "invalid",
        f"entry {index}: no signature by a key of {statement.admin}'s trust statement",
    )


def check_entry(
    index: int,
    envelope: bytes,
    statement: TrustStatement,
    received_at: datetime | None = None,
    skew: timedelta = timedelta(0),
    *,
    unknown_is_final: bool = True,
) -> EntryCheck:
    """Decide one entry's state from its exact bytes and the issuer's trust statement (and,
    when known, the local time this node first received it).

    With ``unknown_is_final`` false, an entry signed only by keys the statement does not list
    stays ``unverified``: the issuer may have rotated and we have not fetched its newer
    statement since the entry arrived, so calling it forged would quarantine an honest
    partner."""
    outcome = verify_envelope(key_material(statement), envelope)
    return decide_entry(
        index, outcome, statement, received_at, skew, unknown_is_final=unknown_is_final
    )


@dataclass(frozen=True)
class PendingEntry:
    index: int
    envelope: bytes
    appended_at: float


async def select_pending(
    conn: AsyncConnection, log: str, indices: Iterable[int] | None = None, limit: int = 5000
) -> list[PendingEntry]:
    """Unverified entries of ``log``: those in ``indices`` (a ``range`` is read as a range),
    or any ``limit`` of them."""
    query = select(entries.c.idx, entries.c.envelope, entries.c.appended_at).where(
        entries.c.log == log, entries.c.sig_state == "unverified"
    )
    if isinstance(indices, range) and indices.step == 1:
        query = query.where(entries.c.idx >= indices.start, entries.c.idx < indices.stop)
    elif indices is not None:
        query = query.where(entries.c.idx.in_(list(indices)))
    # No ORDER BY: the order does not matter, and sorting by idx makes SQLite walk the primary
    # key of a large replica instead of the (log, sig_state) index.
    rows = (await conn.execute(query.limit(limit))).all()
    return [PendingEntry(int(r.idx), bytes(r.envelope), float(r.appended_at)) for r in rows]


@dataclass(frozen=True)
class Judged:
    """An entry's check, with its record when its signature verified (decoded alongside) or
    why its payload did not decode."""

    check: EntryCheck
    record: Record | None = None
    decode_problem: str | None = None


async def judge(
    pending: Sequence[PendingEntry],
    statement: TrustStatement,
    *,
    skew: timedelta = timedelta(0),
    trust_checked_at: float | None = None,
) -> list[Judged]:
    """Every pending entry's check (``unverified`` ones included: see ``check_entry``); the
    signatures of a large set are verified (and payloads decoded) in the worker pool."""
    checked = await check_chunk(key_material(statement), [p.envelope for p in pending])
    judged = [
        Judged(
            decide_entry(
                p.index,
                outcome,
                statement,
                datetime.fromtimestamp(p.appended_at, tz=UTC),
                skew,
                unknown_is_final=trust_checked_at is None or p.appended_at < trust_checked_at,
            ),
            record,
            problem,
        )
        for p, (outcome, record, problem) in zip(pending, checked, strict=True)
    ]
    # A valid signature over a payload that is no record may be an erasure notice (rare: the
    # worker decodes records only, so notices are decoded here).
    return [
        _as_notice(j, p, statement.admin) if j.check.state == "valid" and j.record is None else j
        for j, p in zip(judged, pending, strict=True)
    ]


def _as_notice(judged: Judged, pending: PendingEntry, issuer: str) -> Judged:
    """``judged`` as an erasure notice of ``issuer``'s log at ``pending.index`` when its payload
    is one; a malformed notice (or one naming entries at or above its own index) keeps its
    decode problem, which makes the entry invalid like any payload that does not parse."""
    try:
        message = parse_envelope(pending.envelope)
    except VerificationError:  # pragma: no cover - its signature verified, so it parsed
        return judged
    if message.payload_type != codec.ERASURE_NOTICE_TYPE:
        return judged
    try:
        notice = codec.decode_notice(bytes(message.payload))
    except GatewayError as error:
        return Judged(judged.check, None, str(error))
    if notice.issuer != issuer:
        return Judged(judged.check, None, f"erasure notice of log {notice.issuer}, not {issuer}")
    ahead = [e.leaf_index for e in notice.entries if e.leaf_index >= pending.index]
    if ahead:
        return Judged(
            judged.check,
            None,
            f"erasure notice at index {pending.index} names entry {ahead[0]}, not below it",
        )
    check = judged.check
    return Judged(EntryCheck(check.index, NOTICE, check.problem, check.signer, notice))


OUTCOME_UPDATE_SQL = "UPDATE entries SET sig_state = ?, signer = ? WHERE log = ? AND idx = ?"


async def store_outcomes(conn: AsyncConnection, log: str, checks: Sequence[EntryCheck]) -> None:
    """Write decided states: one executemany, whatever the number of entries (on SQLite with
    the driver's, in the caller's transaction: SQLAlchemy's per-row parameter work cost more
    than the updates themselves)."""
    decided = [c for c in checks if c.state != "unverified"]
    if not decided:
        return
    if conn.dialect.name == "sqlite":
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        if driver is None:  # pragma: no cover - an open connection always has one
            raise RuntimeError("no driver connection")
        await driver.executemany(
            OUTCOME_UPDATE_SQL, [(c.state, c.signer, log, c.index) for c in decided]
        )
        return
    await conn.execute(
        update(entries)
        .where(entries.c.log == bindparam("b_log"), entries.c.idx == bindparam("b_idx"))
        .values(sig_state=bindparam("b_state"), signer=bindparam("b_signer")),
        [
            {"b_log": log, "b_idx": c.index, "b_state": c.state, "b_signer": c.signer}
            for c in decided
        ],
    )


async def verify_pending(
    conn: AsyncConnection,
    log: str,
    statement: TrustStatement,
    indices: Iterable[int] | None = None,
    limit: int = 5000,
    *,
    skew: timedelta = timedelta(0),
    trust_checked_at: float | None = None,
) -> list[EntryCheck]:
    """Verify unverified entries of ``log`` (all, or those in ``indices``) and store outcomes;
    returns the entries decided. ``trust_checked_at`` (epoch seconds): when the issuer was
    last asked for a newer statement; an entry received after that and signed by an unknown
    key is left for after the next refresh."""
    pending = await select_pending(conn, log, indices, limit)
    judged = await judge(pending, statement, skew=skew, trust_checked_at=trust_checked_at)
    # Erasure notices stay unverified here: only the replication path applies them
    # (gateway.replication.store_verdicts), and a notice is valid only once applied.
    checks = [j.check for j in judged if j.check.state not in ("unverified", NOTICE)]
    await store_outcomes(conn, log, checks)
    return checks


async def apply_revocations(conn: AsyncConnection, log: str, statement: TrustStatement) -> int:
    """Entries already verified with a key the statement now revokes at index N become
    ``revoked`` from N on: never used in an answer again (no quarantine)."""
    changed = 0
    for key in statement.signing_keys:
        if key.revoked_at_index is None:
            continue
        result = await conn.execute(
            update(entries)
            .where(
                entries.c.log == log,
                entries.c.signer == key.key_id,
                entries.c.idx >= key.revoked_at_index,
                entries.c.sig_state == "valid",
            )
            .values(sig_state="revoked")
        )
        changed += result.rowcount or 0
    return changed

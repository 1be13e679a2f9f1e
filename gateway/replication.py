"""Replicating a partner's log: verify every batch before storing it, commit it atomically.

On the hot path each batch is checked (numbered as in the code):
1. it starts at or below our stored size (a gap is a fault); entries we already hold must be
   identical (a re-send is a no-op, a difference is a fork);
2. its checkpoint note is signed by a checkpoint key of the partner's trust statement, for the
   partner's log origin, and not by a key revoked below the checkpoint's size;
3. the checkpoint does not roll back (smaller than the last verified one, unless the batch is an
   identical re-send of entries we hold with an older checkpoint whose root is our tree's at
   that size: a replay, a no-op) or fork (same size, another root);
4. the root recomputed over our stored tree plus the new leaves, at the batch end s, is
   consistent with the signed root at S (the batch's consistency proof);
5. the new checkpoint is consistent with the last verified one (by our own leaves when we hold
   them, else by a consistency proof fetched from the partner).
Only then are entries, tiles, head and checkpoint stored, in one transaction. Any failure
raises :class:`ReplicationFaultError`, stores nothing, and the caller quarantines the partner.

Entry signatures are not checked here (they are checked before first use, by the verifier in
:func:`verify_and_index`), so catching up costs one hash per entry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.checkpoint import Checkpoint, parse_checkpoint_body, parse_note
from crypto.checkpoint import verify_note as verify_note_signatures
from crypto.errors import TileStoreError, VerificationError
from crypto.keys import Scheme
from crypto.merkle import Frontier, TileId, TileUpdate, leaf_hash, verify_consistency
from gateway.erasure import apply_notices
from gateway.errors import GatewayError
from gateway.exchange import Batch
from gateway.partners import quarantine
from gateway.record_index import IndexedEntry, index_records
from gateway.records import Record
from gateway.storage.bulk import insert_rows
from gateway.storage.schema import entries, logs
from gateway.storage.tiles import apply_tile_updates, lock_log
from gateway.trust import SigningKey, TrustStatement
from gateway.verification import (
    EntryCheck,
    Judged,
    apply_revocations,
    judge,
    select_pending,
    store_outcomes,
)
from registry.errors import QuestionError
from registry.resolver import Recogniser

FetchConsistency = Callable[[int, int], Awaitable[Sequence[bytes]]]

log = logging.getLogger(__name__)


class ReplicationFaultError(GatewayError):
    """A partner served content that cannot be true: the partner is quarantined."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(f"{kind}: {message}")


@dataclass(frozen=True)
class PartnerLogState:
    code: str
    size: int
    frontier: Frontier
    checkpoint: Checkpoint | None
    checkpoint_note: str | None


@dataclass(frozen=True)
class VerifiedBatch:
    start: int
    envelopes: tuple[bytes | None, ...]
    leaves: tuple[bytes, ...]
    frontier: Frontier
    updates: tuple[TileUpdate, ...]
    checkpoint: Checkpoint
    note: str
    result_root: bytes


async def load_state(conn: AsyncConnection, code: str) -> PartnerLogState:
    row = (await conn.execute(select(logs).where(logs.c.code == code))).one()
    cp = parse_note(row.checkpoint).checkpoint() if row.checkpoint else None
    return PartnerLogState(
        code, int(row.size), Frontier.from_bytes(bytes(row.frontier)), cp, row.checkpoint
    )


class UntrustedCheckpointError(GatewayError):
    """A checkpoint signed by a key outside its validity window: not applied, but no
    quarantine either (a clock difference or a statement not fetched yet can cause it); the
    replicator fetches the partner's newest statement and retries later."""

    kind = "key_window"


# Notes whose signatures verified, with the statement they verified under: during a catch-up
# every batch carries the same head checkpoint, so its Ed25519 check and parse are done once.
# Only the signature part is remembered; revocation and the key windows are judged per call.
_NOTES_REMEMBERED = 64
_verified_notes: dict[str, tuple[TrustStatement, Checkpoint, tuple[SigningKey, ...]]] = {}


def verify_note(
    note: str,
    statement: TrustStatement,
    *,
    now: datetime | None = None,
    skew: timedelta = timedelta(0),
) -> Checkpoint:
    """Step 2: a checkpoint signed by one of the partner's checkpoint keys, not revoked below
    its size and (when ``now`` is given: a checkpoint just received) inside its window."""
    known = _verified_notes.get(note)
    if known is not None and known[0] is statement:
        _, cp, signed_by = known
    else:
        cp, signed_by = _verify_note_signatures(note, statement)
        if len(_verified_notes) >= _NOTES_REMEMBERED:
            _verified_notes.pop(next(iter(_verified_notes)))
        _verified_notes[note] = (statement, cp, signed_by)
    return _judge_note_keys(cp, signed_by, now, skew)


def _verify_note_signatures(
    note: str, statement: TrustStatement
) -> tuple[Checkpoint, tuple[SigningKey, ...]]:
    try:
        parsed = parse_note(note)
    except VerificationError as error:
        raise ReplicationFaultError("bad_checkpoint", f"checkpoint note: {error}") from error
    origin = statement.log_origin
    signed_by = []
    for key in statement.signing_keys:
        if key.public_key.scheme is not Scheme.ED25519:
            continue
        try:
            names = verify_note_signatures(parsed, {origin: key.public_key})
        except VerificationError as error:
            raise ReplicationFaultError(
                "bad_checkpoint", f"checkpoint does not verify: {error}"
            ) from error
        if origin in names:
            signed_by.append(key)
    if not signed_by:
        raise ReplicationFaultError(
            "bad_checkpoint",
            f"checkpoint does not verify: no signature by required key {origin!r} of "
            f"{statement.admin}'s trust statement version {statement.version}",
        )
    try:
        cp = parse_checkpoint_body(parsed.body)
    except VerificationError as error:
        raise ReplicationFaultError("bad_checkpoint", f"checkpoint body: {error}") from error
    if cp.origin != origin:
        raise ReplicationFaultError(
            "bad_checkpoint", f"checkpoint origin {cp.origin!r} is not {origin!r}"
        )
    return cp, tuple(signed_by)


def _judge_note_keys(
    cp: Checkpoint, signed_by: Sequence[SigningKey], now: datetime | None, skew: timedelta
) -> Checkpoint:
    revoked: str | None = None
    outside: str | None = None
    for key in signed_by:
        # During a rotation the note carries several signatures: one good key suffices.
        if key.revoked_at_index is not None and cp.size > key.revoked_at_index:
            revoked = (
                f"checkpoint of size {cp.size} signed by key {key.key_id} "
                f"revoked from index {key.revoked_at_index}"
            )
            continue
        if now is not None and not key.in_window(now, skew):
            outside = (
                f"checkpoint signed by key {key.key_id} outside its validity window "
                f"({key.valid_from:%Y-%m-%dT%H:%M:%SZ} .. "
                f"{'open' if key.valid_until is None else f'{key.valid_until:%Y-%m-%dT%H:%M:%SZ}'})"
            )
            continue
        return cp
    if revoked is not None:
        raise ReplicationFaultError("revoked_key", revoked)
    raise UntrustedCheckpointError(f"key_window: {outside}")


async def verify_batch(
    state: PartnerLogState,
    batch: Batch,
    statement: TrustStatement,
    stored_leaves: Callable[[int, int], Awaitable[list[bytes]]],
    fetch_consistency: FetchConsistency,
    *,
    stored_root: Callable[[int], Awaitable[bytes]] | None = None,
    now: datetime | None = None,
    skew: timedelta = timedelta(0),
) -> VerifiedBatch | None:
    """Steps 1-5; returns None when the batch adds nothing new and changes nothing.

    ``stored_root(n)`` gives the root of our stored tree at size n; with it, an old batch
    replayed identically (older checkpoint included) is recognised as a no-op instead of a
    rollback."""
    # 1. Position: no gaps; what we hold must be re-sent identically.
    if batch.start > state.size:
        raise ReplicationFaultError("gap", f"batch starts at {batch.start}, we hold {state.size}")
    items = list(batch.items)
    overlap = min(state.size - batch.start, len(items))
    if overlap > 0:
        held = await stored_leaves(batch.start, overlap)
        sent = [
            leaf_hash(i.envelope) if i.envelope is not None else i.leaf_hash
            for i in items[:overlap]
        ]
        if held != sent:
            raise ReplicationFaultError(
                "fork",
                f"entries {batch.start}..{batch.start + overlap - 1} "
                "differ from those already verified",
            )
    start = batch.start + max(overlap, 0)
    items = items[max(overlap, 0) :]
    # 2. The checkpoint.
    cp = verify_note(batch.checkpoint, statement, now=now, skew=skew)
    leaves: list[bytes] = []
    for offset, item in enumerate(items):
        if item.envelope is not None:
            leaves.append(leaf_hash(item.envelope))
        elif len(item.leaf_hash) == 32:
            leaves.append(item.leaf_hash)
        else:
            raise ReplicationFaultError(
                "malformed", f"entry {start + offset}: leaf hash is not 32 bytes"
            )
    end = start + len(leaves)
    # 3. No rollback, no fork at equal size.
    old = state.checkpoint
    if old is not None and cp.size < old.size:
        if not leaves and end <= cp.size <= state.size and stored_root is not None:
            # An old batch re-sent as it was (its entries all held, its older checkpoint of a
            # size we hold): a no-op if that checkpoint's root is the one of our tree.
            if await stored_root(cp.size) != cp.root_hash:
                raise ReplicationFaultError(
                    "fork", f"checkpoint of size {cp.size} has another root than our tree"
                )
            return None
        raise ReplicationFaultError(
            "rollback", f"checkpoint size {cp.size} is below the verified {old.size}"
        )
    if cp.size < end:
        raise ReplicationFaultError(
            "bad_checkpoint", f"checkpoint size {cp.size} is below the batch end {end}"
        )
    if old is not None and cp.size == old.size and cp.root_hash != old.root_hash:
        raise ReplicationFaultError("fork", f"two different roots for tree size {cp.size}")
    if not leaves and old is not None and cp == old:
        return None
    # 4. Our tree plus the new leaves must lead to the signed root.
    result = state.frontier.append(leaves)
    try:
        verify_consistency(end, cp.size, list(batch.consistency), result.root, cp.root_hash)
    except VerificationError as error:
        raise ReplicationFaultError("bad_proof", f"batch ending at {end}: {error}") from error
    # 5. The new checkpoint must extend the last verified one.
    if old is not None and cp.size > old.size and old.size > state.size:
        if end >= old.size:
            prefix = state.frontier.append(leaves[: old.size - start]).root
            if prefix != old.root_hash:
                raise ReplicationFaultError(
                    "fork", f"leaves up to {old.size} do not match the checkpoint verified before"
                )
        else:
            proof = await fetch_consistency(old.size, cp.size)
            try:
                verify_consistency(old.size, cp.size, list(proof), old.root_hash, cp.root_hash)
            except VerificationError as error:
                raise ReplicationFaultError(
                    "fork", f"checkpoint {cp.size} is not consistent with {old.size}: {error}"
                ) from error
    return VerifiedBatch(
        start=start,
        envelopes=tuple(i.envelope for i in items),
        leaves=tuple(leaves),
        frontier=result.frontier,
        updates=tuple(result.updates),
        checkpoint=cp,
        note=batch.checkpoint,
        result_root=result.root,
    )


async def store_batch(conn: AsyncConnection, code: str, verified: VerifiedBatch) -> None:
    """Store a verified batch; the caller's transaction makes it atomic."""
    # Lock the replica's head so two replicators of one partner can never interleave.
    await lock_log(conn, code)
    size = (await conn.execute(select(logs.c.size).where(logs.c.code == code))).scalar_one()
    if size != verified.start:
        raise ReplicationFaultError("race", f"replica of {code} moved to {size} while verifying")
    now = time.time()
    if verified.leaves:
        await conn.execute(
            entries.insert(),
            [
                {
                    "log": code,
                    "idx": verified.start + k,
                    "leaf_hash": h,
                    "envelope": env,
                    "payload_type": None,
                    "sig_state": "unverified" if env is not None else "hash_only",
                    "signer": None,
                    "content_digest": None,
                    "appended_at": now,
                }
                for k, (h, env) in enumerate(zip(verified.leaves, verified.envelopes, strict=True))
            ],
        )
        await apply_tile_updates(conn, code, verified.updates)
    end = verified.start + len(verified.leaves)
    values: dict[str, object] = {
        "size": end,
        "root": verified.result_root,
        "frontier": verified.frontier.to_bytes(),
        "checkpoint": verified.note,
        "checkpoint_size": verified.checkpoint.size,
        "verified_at": now,
        "received_at": now,
    }
    if verified.checkpoint.size == end:
        values.update(held_checkpoint=verified.note, held_size=end)
    await conn.execute(update(logs).where(logs.c.code == code).values(**values))


class ReplicaMovedError(GatewayError):
    """The replica's head row is no longer the one the batches were verified against (another
    writer stored batches meanwhile): nothing is stored, and the replicator reloads its state.
    A local condition, not a fault of the partner, so it quarantines nobody."""


def advance(state: PartnerLogState, verified: VerifiedBatch) -> PartnerLogState:
    """The replica's state once ``verified`` is stored."""
    return PartnerLogState(
        state.code,
        verified.start + len(verified.leaves),
        verified.frontier,
        verified.checkpoint,
        verified.note,
    )


def merge_tile_updates(updates: Iterable[TileUpdate]) -> list[TileUpdate]:
    """Consecutive updates of the same tile (from consecutive batches) as one update each."""
    merged: dict[TileId, TileUpdate] = {}
    for update_ in updates:
        previous = merged.get(update_.tile_id)
        if previous is None:
            merged[update_.tile_id] = update_
        elif previous.width == update_.start:
            merged[update_.tile_id] = TileUpdate(
                update_.tile_id, previous.start, previous.data + update_.data
            )
        else:
            raise TileStoreError(
                f"tile {update_.tile_id.level}/{update_.tile_id.index}: update at slot "
                f"{update_.start} does not follow slot {previous.width}"
            )
    return list(merged.values())


ENTRY_COLUMNS = ("log", "idx", "leaf_hash", "envelope", "sig_state", "appended_at")


async def insert_entries(
    conn: AsyncConnection, code: str, start: int, batches: Sequence[VerifiedBatch], now: float
) -> None:
    """One row per entry. On SQLite through the driver's executemany: SQLAlchemy's per-row
    parameter processing cost more than SQLite itself on this path (same transaction: the
    DBAPI connection is the one the caller's transaction runs on)."""
    rows = []
    idx = start
    for batch in batches:
        for leaf, envelope in zip(batch.leaves, batch.envelopes, strict=True):
            state = "unverified" if envelope is not None else "hash_only"
            rows.append((code, idx, leaf, envelope, state, now))
            idx += 1
    await insert_rows(conn, entries, ENTRY_COLUMNS, rows)


async def store_batches(
    conn: AsyncConnection, head: PartnerLogState, batches: Sequence[VerifiedBatch]
) -> PartnerLogState:
    """Store consecutive verified batches in the caller's transaction; returns the new state.

    ``head`` is the stored state the first batch was verified against (the replicator keeps
    it in memory instead of re-reading it per batch). The head row is updated first, guarded
    by that state, which takes the row's write lock (two replicators of one partner never
    interleave) and proves in the same transaction that nothing moved it meanwhile."""
    code = head.code
    state = head
    held: str | None = None
    for batch in batches:
        if batch.start != state.size:
            raise ReplicaMovedError(f"batch starts at {batch.start}, not at {state.size}")
        state = advance(state, batch)
        if batch.checkpoint.size == state.size:
            held = batch.note
    now = time.time()
    values: dict[str, object] = {
        "size": state.size,
        "root": batches[-1].result_root,
        "frontier": state.frontier.to_bytes(),
        "checkpoint": state.checkpoint_note,
        "checkpoint_size": batches[-1].checkpoint.size,
        "verified_at": now,
        "received_at": now,
        "lock_seq": logs.c.lock_seq + 1,
    }
    if held is not None:
        values.update(held_checkpoint=held, held_size=state.size)
    result = await conn.execute(
        update(logs)
        .where(
            logs.c.code == code,
            logs.c.size == head.size,
            logs.c.checkpoint.is_not_distinct_from(head.checkpoint_note),
        )
        .values(**values)
    )
    if result.rowcount != 1:
        raise ReplicaMovedError(f"replica of {code} moved away from size {head.size}")
    if state.size > head.size:
        await insert_entries(conn, code, head.size, batches, now)
        await apply_tile_updates(
            conn, code, merge_tile_updates(u for b in batches for u in b.updates)
        )
    return state


def issuer_belongs(recogniser: Recogniser, partner: str, record: Record) -> bool:
    """A partner may only publish its own records (a union: its members' on their date)."""
    if record.issuer == partner:
        return True
    day = record.day
    try:
        return record.issuer in recogniser.members_on(partner, day)
    except QuestionError:
        return False


def decode_valid(
    code: str,
    judged: Sequence[Judged],
    *,
    recogniser: Recogniser,
    own_admin: str,
    memo: dict[tuple[str, date], bool] | None = None,
) -> tuple[list[EntryCheck], list[IndexedEntry]]:
    """The decided entries' final checks (a valid signature over a payload that does not
    parse, or a record of another issuer, makes the entry ``invalid``) and the records to
    index. Entries still ``unverified`` are left out."""
    final: list[EntryCheck] = []
    indexed: list[IndexedEntry] = []
    # Union membership is asked once per (issuer, day), not once per record; ``memo`` keeps
    # the answers across chunks (for one recogniser).
    belongs: dict[tuple[str, date], bool] = {} if memo is None else memo
    for item in judged:
        check = item.check
        if check.state == "unverified":
            continue
        if check.state != "valid":
            final.append(check)
            continue
        record = item.record
        if record is None:
            final.append(
                EntryCheck(check.index, "invalid", f"payload does not parse: {item.decode_problem}")
            )
            continue
        key = (record.issuer, record.day)
        if key not in belongs:
            belongs[key] = issuer_belongs(recogniser, code, record)
        if not belongs[key]:
            final.append(
                EntryCheck(check.index, "invalid", f"record issuer {record.issuer} is not {code}")
            )
            continue
        final.append(check)
        disclosed = own_admin if (record.audience == (own_admin,)) else None
        indexed.append(IndexedEntry(check.index, record, disclosed))
    return final, indexed


async def store_verdicts(
    conn: AsyncConnection, code: str, checks: Sequence[EntryCheck], indexed: Sequence[IndexedEntry]
) -> EntryCheck | None:
    """Store entry states and index the valid records, in the caller's transaction; an invalid
    entry quarantines the partner (returned, the first one).

    Nothing after the first invalid entry of ``checks`` is judged here: those entries stay
    stored but unverified (never used) until an operator resumes the partner and they are
    judged again. Which of them share a chunk with the invalid one depends on timing (queued
    batches are stored together), so this keeps "what a quarantine leaves usable" exact."""
    first_bad = min((c.index for c in checks if c.state == "invalid"), default=None)
    if first_bad is not None:
        checks = [c for c in checks if c.index <= first_bad]
        indexed = [i for i in indexed if i.index < first_bad]
    await store_outcomes(conn, code, checks)
    if indexed:
        await index_records(conn, code, sorted(indexed, key=lambda i: i.index))
    # Erasure notices among them erase what they name, after the indexing above (gateway.erasure).
    checks = [*checks, *await apply_notices(conn, code, checks)]
    invalid = sorted((c for c in checks if c.state == "invalid"), key=lambda c: c.index)
    if invalid:
        first = invalid[0]
        log.warning(
            "invalid entry %d of %s: %s",
            first.index,
            code,
            first.problem,
            extra={"partner": code, "entry": first.index},
        )
        await quarantine(conn, code, f"invalid entry {first.index}: {first.problem}")
        return invalid[0]
    return None


async def verify_and_index(
    conn: AsyncConnection,
    code: str,
    *,
    statement: TrustStatement,
    recogniser: Recogniser,
    own_admin: str,
    limit: int = 5000,
    indices: Iterable[int] | None = None,
    skew: timedelta = timedelta(0),
    trust_checked_at: float | None = None,
) -> int:
    """Verify pending entries' signatures, index the valid ones; quarantine on an invalid one.

    Returns how many entries were decided. Runs in the caller's transaction.
    """
    # A newer trust statement may revoke a key some held entries were verified with.
    await apply_revocations(conn, code, statement)
    pending = await select_pending(conn, code, indices, limit)
    judged = await judge(pending, statement, skew=skew, trust_checked_at=trust_checked_at)
    final, indexed = decode_valid(code, judged, recogniser=recogniser, own_admin=own_admin)
    await store_verdicts(conn, code, final, indexed)
    return len(final)

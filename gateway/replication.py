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

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.checkpoint import Checkpoint, parse_checkpoint_body, parse_note
from crypto.checkpoint import verify_note as verify_note_signatures
from crypto.errors import CryptoError, VerificationError
from crypto.keys import Scheme
from crypto.merkle import Frontier, TileUpdate, leaf_hash, verify_consistency
from gateway import codec
from gateway.errors import GatewayError
from gateway.exchange import Batch
from gateway.partners import quarantine
from gateway.record_index import IndexedEntry, index_records
from gateway.records import Record
from gateway.storage.schema import entries, logs
from gateway.storage.tiles import apply_tile_updates
from gateway.trust import TrustStatement
from gateway.verification import (
    EntryCheck,
    apply_revocations,
    parse_envelope,
    verify_pending,
)
from registry.errors import QuestionError
from registry.resolver import Recogniser

FetchConsistency = Callable[[int, int], Awaitable[Sequence[bytes]]]


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


def verify_note(
    note: str,
    statement: TrustStatement,
    *,
    now: datetime | None = None,
    skew: timedelta = timedelta(0),
) -> Checkpoint:
    """Step 2: a checkpoint signed by one of the partner's checkpoint keys, not revoked below
    its size and (when ``now`` is given: a checkpoint just received) inside its window."""
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
    await conn.execute(update(logs).where(logs.c.code == code).values(lock_seq=logs.c.lock_seq + 1))
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


def issuer_belongs(recogniser: Recogniser, partner: str, record: Record) -> bool:
    """A partner may only publish its own records (a union: its members' on their date)."""
    if record.issuer == partner:
        return True
    day = record.day
    try:
        return record.issuer in recogniser.members_on(partner, day)
    except QuestionError:
        return False


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

    Returns how many entries were verified. Runs in the caller's transaction.
    """
    # A newer trust statement may revoke a key some held entries were verified with.
    await apply_revocations(conn, code, statement)
    checks = await verify_pending(conn, code, statement, indices=indices, limit=limit, skew=skew)
    valid = [c.index for c in checks if c.state == "valid"]
    invalid = [c for c in checks if c.state == "invalid"]
    indexed: list[IndexedEntry] = []
    if valid:
        rows = (
            await conn.execute(
                select(entries.c.idx, entries.c.envelope).where(
                    entries.c.log == code, entries.c.idx.in_(valid)
                )
            )
        ).all()
        for row in rows:
            message = parse_envelope(bytes(row.envelope))
            try:
                record = codec.decode(message.payload_type, bytes(message.payload))
            except (GatewayError, CryptoError) as error:
                invalid.append(
                    EntryCheck(int(row.idx), "invalid", f"payload does not parse: {error}")
                )
                continue
            if not issuer_belongs(recogniser, code, record):
                invalid.append(
                    EntryCheck(
                        int(row.idx), "invalid", f"record issuer {record.issuer} is not {code}"
                    )
                )
                continue
            disclosed = own_admin if (record.audience == (own_admin,)) else None
            indexed.append(IndexedEntry(int(row.idx), record, disclosed))
    if indexed:
        await index_records(conn, code, indexed)
    if invalid:
        bad = sorted(c.index for c in invalid)
        await conn.execute(
            update(entries)
            .where(entries.c.log == code, entries.c.idx.in_(bad))
            .values(sig_state="invalid")
        )
        await quarantine(conn, code, f"invalid entry {invalid[0].index}: {invalid[0].problem}")
    return len(checks)

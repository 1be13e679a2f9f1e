"""The administration's own log: publish records as signed entries, sequenced by the database.

Invariants:
- The whole input is validated before anything is signed or stored (one bad record rejects
  it all).
- Appends are sequenced by the database: each chunk's transaction first bumps the log row's
  ``lock_seq`` (a row lock on PostgreSQL, the write lock on SQLite), then reads the head. Any
  number of processes can publish without forking the log.
- One chunk = one transaction: entries, decoded records, identifiers, entitlements, Merkle
  tiles, the new head and its signed checkpoint commit together or not at all. A chunk that
  committed is never lost (kill -9 included); one that did not left nothing behind.
- Publishing is idempotent: an entry whose record, salt aside, is already in the log is skipped,
  so re-running an interrupted publish duplicates nothing.
- Signing happens before the lock is taken, so the lock is held only for hashing and writes.
  A publish of several chunks signs the next chunks in worker processes
  (:mod:`gateway.signing_pool`) while the event loop appends the current one; the bytes signed
  are the same either way, and a worker that dies fails the publish before the chunk it held
  is appended.
- The hot tables are written with the driver's ``executemany`` inside the chunk's transaction
  (:mod:`gateway.storage.bulk`): same SQL, same transaction, no per-row SQLAlchemy work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import time
from bisect import bisect_right
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.checkpoint import Checkpoint, ed25519_key_hint, parse_note
from crypto.keys import PrivateKeySigner
from crypto.merkle import AppendResult, Frontier, leaf_hash
from gateway import codec
from gateway.audit import record_action
from gateway.datasets import active_recogniser
from gateway.entitlement import Recognition, decide
from gateway.errors import InputError
from gateway.node import Node, sign_head
from gateway.record_index import IndexedEntry, index_records
from gateway.records import AeoStatusRecord, Record, RecordInputError
from gateway.signing_pool import (
    SignedItem,
    SigningPool,
    SigningWorkerError,
    envelope_bytes,
    shared_pool,
    sign_payloads,
)
from gateway.storage.bulk import existing_values, insert_rows, select_by_groups
from gateway.storage.schema import (
    disclosure_state,
    entitlements,
    entries,
    logs,
    partners,
)
from gateway.storage.tiles import lock_log, store_append
from gateway.storage.upsert import upsert
from registry.errors import QuestionError
from registry.resolver import Recogniser

AuthKey = tuple[str, str, str]

__all__ = [
    "AHEAD_PER_WORKER",
    "POOL_COLD_MIN_RECORDS",
    "EncodedRecord",
    "IssuerLog",
    "PreparedEntry",
    "PublishResult",
    "SignedEntry",
    "check_issuers",
    "encode_entry",
    # Moved to gateway.signing_pool (workers import it without the database layers); callers
    # that import it from here keep working.
    "envelope_bytes",
    "prepare",
    "signed_entries",
]


T = TypeVar("T")


@dataclass(frozen=True)
class PreparedEntry:
    record: Record
    digest: bytes
    envelope: bytes
    leaf_hash: bytes
    payload_type: str
    signer: str
    disclosed_to: str | None = None


@dataclass(frozen=True)
class SignedEntry:
    """An entry signed outside the publish path (an erasure notice): its exact envelope bytes
    and the partners it is disclosed to, decided by the caller."""

    envelope: bytes
    payload_type: str
    signer: str
    partners: frozenset[str]


@dataclass(frozen=True)
class PublishResult:
    appended: int
    duplicates: int
    tree_size: int
    checkpoint: str
    first_index: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "appended": self.appended,
            "duplicates": self.duplicates,
            "tree_size": self.tree_size,
            "first_index": self.first_index,
            "checkpoint": self.checkpoint,
        }


def _memoised(question: Callable[[str, date], T]) -> Callable[[str, date], T]:
    """``question`` asked once per (code, day); a QuestionError is remembered and re-raised."""
    answers: dict[tuple[str, date], T | QuestionError] = {}

    def ask(code: str, day: date) -> T:
        key = (code, day)
        if key not in answers:
            try:
                answers[key] = question(code, day)
            except QuestionError as error:
                answers[key] = error
        answer = answers[key]
        if isinstance(answer, QuestionError):
            # A fresh error each time: re-raising one instance would grow its traceback.
            raise QuestionError(str(answer))
        return answer

    return ask


def _membership_epochs(recogniser: Recogniser, union: str) -> list[date]:
    """Days on which the membership of ``union`` may change: every start and end date of a
    membership, and the day after each (so whether the registry compares them inclusively or
    exclusively, no two days of one epoch can get different answers)."""
    bounds: set[date] = set()
    for found in recogniser.dataset.unions:
        if found.code != union:
            continue
        for membership in found.members:
            edges = [membership.start.as_start(), membership.start.as_end()]
            if membership.until is not None:
                edges += [membership.until.as_start(), membership.until.as_end()]
            for edge in edges:
                bounds.add(edge)
                if edge < date.max:
                    bounds.add(edge + timedelta(days=1))
    return sorted(bounds)


def _members_by_epoch(recogniser: Recogniser, union: str) -> Callable[[str, date], tuple[str, ...]]:
    """``recogniser.members_on`` asked once per membership epoch instead of once per day: a
    publish spans thousands of distinct record dates but a union's membership changes on a
    handful (it was most of the remaining ``check_issuers`` time)."""
    bounds = _membership_epochs(recogniser, union)
    ask = _memoised(recogniser.members_on)
    first_day: dict[tuple[str, int], date] = {}

    def members_on(code: str, day: date) -> tuple[str, ...]:
        epoch = bisect_right(bounds, day)
        return ask(code, first_day.setdefault((code, epoch), day))

    return members_on


def check_issuers(
    records_in: Sequence[Record], admin: str, recogniser: Recogniser, source: str = "input"
) -> None:
    """A union's gateway publishes records of its members on each record's date; any other
    gateway only its own; and a status's type must exist in the issuer's programme then."""
    problems: list[str] = []
    union = admin in recogniser.dataset.union_codes
    # A publish carries thousands of records over a handful of dates and issuers: each
    # membership and programme question is asked once (it was 16% of publish time).
    members_on = _members_by_epoch(recogniser, admin) if union else _memoised(recogniser.members_on)
    programme_types = _memoised(recogniser.programme_types)
    for number, record in enumerate(records_in, start=1):
        where = f"{source} record {number}"
        day = record.day
        if union:
            try:
                members = members_on(admin, day)
            except QuestionError as error:
                problems.append(f"{where}: issuer: {error}")
                continue
            if record.issuer not in members:
                problems.append(
                    f"{where}: issuer: {record.issuer} is not a member of {admin} "
                    f"on {day.isoformat()}"
                )
                continue
        elif record.issuer != admin:
            problems.append(
                f"{where}: issuer: {record.issuer} is not this administration ({admin})"
            )
            continue
        if isinstance(record, AeoStatusRecord):
            try:
                programme, types = programme_types(record.issuer, day)
            except QuestionError as error:
                problems.append(f"{where}: issuer: {error}")
                continue
            if record.aeo_type not in types:
                problems.append(
                    f"{where}: type: {record.aeo_type!r} is not a type of programme "
                    f"{programme} ({', '.join(types)}) on {day.isoformat()}"
                )
        for code in (
            *record.audience,
            *(record.joint_partners if not isinstance(record, AeoStatusRecord) else ()),
        ):
            if not recogniser.is_known_code(code):
                problems.append(f"{where}: audience: unknown administration code {code!r}")
    if problems:
        raise RecordInputError(problems, source)


@dataclass(frozen=True)
class EncodedRecord:
    """A record encoded with a fresh salt, not signed yet."""

    payload_type: str
    payload: bytes
    digest: bytes


def encode_entry(
    record: Record,
    disclosed_to: str | None = None,
    republished_from: int | None = None,
    *,
    salt: bytes | None = None,
) -> EncodedRecord:
    """The payload of a new entry for ``record`` (with ``salt``, default a fresh one) and its
    idempotency digest. ``republished_from``: the index of a revoked entry this one re-signs;
    it is part of the digest, so re-running a re-publication appends nothing twice while the
    revoked original keeps its own digest."""
    audience = (disclosed_to,) if disclosed_to else None
    fresh_salt = salt if salt is not None else codec.new_salt()
    payload, digest = codec.encode_with_digest(record, fresh_salt, audience)
    if republished_from is not None:
        digest = hashlib.sha256(b"republished-from:%d:" % republished_from + digest).digest()
    return EncodedRecord(codec.payload_type_of(record), payload, digest)


def prepare(
    record: Record,
    signer: PrivateKeySigner,
    disclosed_to: str | None = None,
    republished_from: int | None = None,
) -> PreparedEntry:
    """Sign a record as a new entry, in this process (see :func:`encode_entry`)."""
    encoded = encode_entry(record, disclosed_to, republished_from)
    envelope = envelope_bytes(encoded.payload_type, encoded.payload, signer)
    return PreparedEntry(
        record=record,
        digest=encoded.digest,
        envelope=envelope,
        leaf_hash=leaf_hash(envelope),
        payload_type=encoded.payload_type,
        signer=signer.key_id,
        disclosed_to=disclosed_to,
    )


def signed_entries(
    records_in: Sequence[Record],
    encoded: Sequence[EncodedRecord],
    signed: Sequence[SignedItem],
    signer: PrivateKeySigner,
) -> list[PreparedEntry]:
    """Entries from records, their encodings and what a signing worker returned for them."""
    if not len(records_in) == len(encoded) == len(signed):
        raise SigningWorkerError("a signing worker returned a chunk of the wrong length")
    key_id = signer.key_id
    return [
        PreparedEntry(
            record=record,
            digest=e.digest,
            envelope=envelope,
            leaf_hash=leaf,
            payload_type=e.payload_type,
            signer=key_id,
        )
        for record, e, (envelope, leaf) in zip(records_in, encoded, signed, strict=True)
    ]


# Below this many records a publish signs in process: starting the workers (spawned
# interpreters) takes longer than signing this many here; once they run (a serving gateway
# keeps them), two chunks are enough for signing ahead to pay.
POOL_COLD_MIN_RECORDS = 12_000
# Chunks signed ahead of the one being appended, per worker: enough that a worker never waits
# for the event loop to hand it the next chunk, few enough that a million-record publish holds
# only a handful of signed chunks in memory.
AHEAD_PER_WORKER = 2


@dataclass(frozen=True)
class _PendingChunk:
    """A chunk handed to the signing pool: its job there (cancellable while queued) and the
    same job as something the event loop can await."""

    records: Sequence[Record]
    encoded: list[EncodedRecord]
    items: list[tuple[str, bytes]]
    job: concurrent.futures.Future[list[SignedItem]]
    signing: asyncio.Future[list[SignedItem]]


_ENTRY_COLUMNS = (
    "log",
    "idx",
    "leaf_hash",
    "envelope",
    "payload_type",
    "sig_state",
    "signer",
    "content_digest",
    "appended_at",
)


class IssuerLog:
    """Appends to and reads this node's own log."""

    def __init__(self, node: Node, *, signing_pool: SigningPool | None = None) -> None:
        self.node = node
        # None: the process's shared pool (created on first large publish).
        self._pool = signing_pool

    async def publish(
        self,
        records_in: Sequence[Record],
        *,
        actor: str,
        source: str = "input",
        today: date | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> PublishResult:
        """``progress`` is told how many records each committed chunk handled (for a CLI bar)."""
        if not records_in:
            raise InputError(f"{source}: no records")
        async with self.node.engine.connect() as conn:
            recogniser = await active_recogniser(conn)
            checkpoint_signers = await self.node.checkpoint_signers(conn)
            _, entry_signer = await self.node.active_signers(conn)
        chunk = self.node.config.limits.publish_chunk
        pool = self.signing_pool(len(records_in), chunk)
        if pool is not None and not pool.started:
            # Spawning the workers overlaps validating the input; nothing is signed before
            # the whole input is valid.
            pool.warm_up(entry_signer)
        check_issuers(records_in, self.node.admin, recogniser, source)
        day = today or self.node.config.today()
        # One registry question per (partner, issuer, type) for the whole publish.
        recognition = Recognition(recogniser)
        appended = duplicates = 0
        first: int | None = None
        size = 0
        note = ""
        # aclosing: a failed append stops the signing of later chunks right away.
        async with aclosing(self._signed_chunks(records_in, chunk, entry_signer, pool)) as chunks:
            async for prepared in chunks:
                result = await self.append(
                    prepared,
                    recogniser=recognition,
                    day=day,
                    checkpoint_signers=checkpoint_signers,
                    actor=actor,
                )
                appended += result.appended
                duplicates += result.duplicates
                if first is None:
                    first = result.first_index
                size, note = result.tree_size, result.checkpoint
                if progress is not None:
                    progress(len(prepared))
        return PublishResult(appended, duplicates, size, note, first)

    def signing_pool(self, count: int, chunk: int) -> SigningPool | None:
        """The worker pool to sign a publish of ``count`` records with, or None to sign in
        process (a single chunk has nothing to overlap with; a small publish would wait longer
        for workers to start than for its signatures)."""
        if count <= chunk:
            return None
        pool = self._pool if self._pool is not None else shared_pool()
        if pool.started or count >= POOL_COLD_MIN_RECORDS:
            return pool
        return None

    async def _signed_chunks(
        self,
        records_in: Sequence[Record],
        chunk: int,
        signer: PrivateKeySigner,
        pool: SigningPool | None,
    ) -> AsyncGenerator[list[PreparedEntry], None]:
        """The chunks of a publish, signed, in order: in process, or by ``pool`` while the
        caller appends the chunk before (so signing and appending overlap)."""
        starts = range(0, len(records_in), chunk)
        if pool is None:
            for start in starts:
                part = records_in[start : start + chunk]
                encoded = [
                    encode_entry(r, salt=salt)
                    for r, salt in zip(part, codec.new_salts(len(part)), strict=True)
                ]
                signed = sign_payloads(signer, [(e.payload_type, e.payload) for e in encoded])
                yield signed_entries(part, encoded, signed, signer)
            return
        ahead = pool.workers * AHEAD_PER_WORKER
        pending: deque[_PendingChunk] = deque()
        upcoming = iter(starts)

        def submit_next() -> None:
            start = next(upcoming, None)
            if start is None:
                return
            part = records_in[start : start + chunk]
            # Encoding stays here: a record costs less to encode than to pickle.
            encoded = [
                encode_entry(r, salt=salt)
                for r, salt in zip(part, codec.new_salts(len(part)), strict=True)
            ]
            items = [(e.payload_type, e.payload) for e in encoded]
            job = pool.submit(signer, items)
            pending.append(_PendingChunk(part, encoded, items, job, asyncio.wrap_future(job)))

        try:
            for _ in range(ahead):
                submit_next()
            while pending:
                head = pending[0]
                if not pool.ready(signer) and head.job.cancel():
                    # The workers are still starting (an interpreter each, longer than this
                    # chunk takes to sign): sign it here rather than wait for them.
                    signed = sign_payloads(signer, head.items)
                else:
                    signed = await head.signing
                pending.popleft()
                submit_next()
                yield signed_entries(head.records, head.encoded, signed, signer)
        finally:
            # A failed append (or a dead worker) leaves later chunks signed for nothing.
            for left in pending:
                left.signing.cancel()

    async def resign_head(self) -> bool:
        """Re-sign the head checkpoint when the set of keys that may sign changed (a rotation
        reached its switch time, or a key's window ended): partners check the window of the
        key on every checkpoint they receive, so the head must never be left signed only by
        a key that has retired. Returns whether a new note was stored."""
        async with self.node.engine.begin() as conn:
            return await self.resign_head_in(conn)

    async def resign_head_in(self, conn: AsyncConnection) -> bool:
        """:meth:`resign_head` in the caller's transaction (a revocation re-signs the head in
        the transaction that publishes it, so no partner ever sees the head signed only by
        the key just revoked)."""
        admin = self.node.admin
        # Compare public keys first: private keys are loaded (and decrypted) only when
        # the head really needs a new signature.
        keys = await self.node.checkpoint_keys(conn)
        row = (await conn.execute(select(logs).where(logs.c.code == admin))).one()
        wanted = {ed25519_key_hint(self.node.origin, k.public_key) for k in keys}
        held = {s.key_hint for s in parse_note(row.checkpoint).signatures}
        if not keys or held == wanted:
            return False
        signers = await self.node.checkpoint_signers(conn)
        # Take the log's write lock, then re-read: an append may have moved the head.
        await lock_log(conn, admin)
        row = (await conn.execute(select(logs).where(logs.c.code == admin))).one()
        note = sign_head(
            Checkpoint(origin=self.node.origin, size=int(row.size), root_hash=bytes(row.root)),
            self.node.origin,
            signers,
        )
        await conn.execute(update(logs).where(logs.c.code == admin).values(checkpoint=note))
        return True

    async def append(
        self,
        prepared: Sequence[PreparedEntry],
        *,
        recogniser: Recogniser | Recognition,
        day: date,
        checkpoint_signers: list[PrivateKeySigner],
        actor: str,
    ) -> PublishResult:
        """Append one chunk in one transaction (the unit that is acknowledged)."""
        admin = self.node.admin
        recognition = recogniser if isinstance(recogniser, Recognition) else Recognition(recogniser)
        async with self.node.engine.begin() as conn:
            # 1. Take the log's write lock before reading its head.
            await lock_log(conn, admin)
            head = (await conn.execute(select(logs).where(logs.c.code == admin))).one()
            # 2. Drop what the log already holds (idempotent publish), and repeats in the chunk.
            known = await existing_values(
                conn, entries, "content_digest", {"log": admin}, [p.digest for p in prepared]
            )
            fresh: list[PreparedEntry] = []
            for entry in prepared:
                if entry.digest not in known:
                    known.add(entry.digest)
                    fresh.append(entry)
            if not fresh:
                return PublishResult(0, len(prepared), head.size, head.checkpoint or "", None)
            # 3. Decide entitlement now, once, and keep it with the entries.
            partner_codes = list(
                (await conn.execute(select(partners.c.code).order_by(partners.c.code))).scalars()
            )
            open_state = await self._open_state(conn, partner_codes, fresh)
            # A disclosure was decided outside this lock: drop it when the partner is entitled
            # by now (another writer disclosed or published it in the meantime).
            fresh = [
                e
                for e in fresh
                if not (
                    e.disclosed_to is not None
                    and isinstance(e.record, AeoStatusRecord)
                    and open_state.get((e.disclosed_to, e.record.key), False)
                )
            ]
            if not fresh:
                return PublishResult(0, len(prepared), head.size, head.checkpoint or "", None)
            changed: dict[tuple[str, AuthKey], tuple[bool, int]] = {}
            entitlement_rows: list[tuple[int, str]] = []
            first = head.size
            for offset, entry in enumerate(fresh):
                index = first + offset
                if entry.disclosed_to is not None:
                    targets = {entry.disclosed_to}
                    if isinstance(entry.record, AeoStatusRecord):
                        open_state[(entry.disclosed_to, entry.record.key)] = True
                        changed[(entry.disclosed_to, entry.record.key)] = (True, index)
                else:
                    decision = decide(recognition, entry.record, partner_codes, day, open_state)
                    targets = decision.partners
                    for state_key, is_open in decision.state_changes.items():
                        changed[state_key] = (is_open, index)
                entitlement_rows.extend((index, p) for p in sorted(targets))
            # 4. Extend the Merkle tree and persist its tiles.
            frontier = Frontier.from_bytes(bytes(head.frontier))
            result = frontier.append([e.leaf_hash for e in fresh])
            await store_append(conn, admin, result)
            now = time.time()
            await insert_rows(
                conn,
                entries,
                _ENTRY_COLUMNS,
                [
                    (
                        admin,
                        first + k,
                        e.leaf_hash,
                        e.envelope,
                        e.payload_type,
                        "valid",
                        e.signer,
                        e.digest,
                        now,
                    )
                    for k, e in enumerate(fresh)
                ],
            )
            await index_records(
                conn,
                admin,
                [IndexedEntry(first + k, e.record, e.disclosed_to) for k, e in enumerate(fresh)],
            )
            await insert_rows(conn, entitlements, ("idx", "partner"), entitlement_rows)
            if changed:
                await upsert(
                    conn,
                    disclosure_state,
                    [
                        {
                            "partner": p,
                            "issuer": k[0],
                            "authorisation": k[1],
                            "aeo_type": k[2],
                            "open": is_open,
                            "last_idx": idx,
                        }
                        for (p, k), (is_open, idx) in changed.items()
                    ],
                    keys=("partner", "issuer", "authorisation", "aeo_type"),
                    update=("open", "last_idx"),
                )
            # 5. Sign the checkpoint of the new head and move the head, in this transaction.
            size = result.frontier.size
            note = await self._move_head(conn, result, checkpoint_signers, now)
            await record_action(
                conn,
                actor,
                "log.append",
                {
                    "first_index": first,
                    "count": len(fresh),
                    "duplicates": len(prepared) - len(fresh),
                    "tree_size": size,
                },
            )
        return PublishResult(len(fresh), len(prepared) - len(fresh), size, note, first)

    async def append_signed(
        self, conn: AsyncConnection, items: Sequence[SignedEntry], *, actor: str
    ) -> PublishResult:
        """Append entries that are no record (erasure notices) in the caller's transaction, so
        they commit with whatever they announce: the same lock, tiles, entitlement rows and
        signed head as :meth:`append`, without the record index or idempotency digest."""
        admin = self.node.admin
        await lock_log(conn, admin)
        head = (await conn.execute(select(logs).where(logs.c.code == admin))).one()
        if not items:
            return PublishResult(0, 0, int(head.size), head.checkpoint or "", None)
        first = int(head.size)
        leaves = [leaf_hash(item.envelope) for item in items]
        result = Frontier.from_bytes(bytes(head.frontier)).append(leaves)
        await store_append(conn, admin, result)
        now = time.time()
        await insert_rows(
            conn,
            entries,
            _ENTRY_COLUMNS,
            [
                (
                    admin,
                    first + k,
                    leaf,
                    item.envelope,
                    item.payload_type,
                    "valid",
                    item.signer,
                    None,
                    now,
                )
                for k, (leaf, item) in enumerate(zip(leaves, items, strict=True))
            ],
        )
        await insert_rows(
            conn,
            entitlements,
            ("idx", "partner"),
            [(first + k, p) for k, item in enumerate(items) for p in sorted(item.partners)],
        )
        size = result.frontier.size
        note = await self._move_head(conn, result, await self.node.checkpoint_signers(conn), now)
        await record_action(
            conn,
            actor,
            "log.append",
            {"first_index": first, "count": len(items), "duplicates": 0, "tree_size": size},
        )
        return PublishResult(len(items), 0, size, note, first)

    async def _move_head(
        self,
        conn: AsyncConnection,
        result: AppendResult,
        signers: list[PrivateKeySigner],
        now: float,
    ) -> str:
        """Sign the checkpoint of the appended tree and make it our head, in ``conn``'s
        transaction (so entries, tiles and head commit together); returns the note."""
        size = result.frontier.size
        note = sign_head(
            Checkpoint(origin=self.node.origin, size=size, root_hash=result.root),
            self.node.origin,
            signers,
        )
        await conn.execute(
            update(logs)
            .where(logs.c.code == self.node.admin)
            .values(
                size=size,
                root=result.root,
                frontier=result.frontier.to_bytes(),
                checkpoint=note,
                checkpoint_size=size,
                verified_at=now,
            )
        )
        return note

    @staticmethod
    async def _open_state(
        conn: AsyncConnection, partner_codes: list[str], fresh: Sequence[PreparedEntry]
    ) -> dict[tuple[str, AuthKey], bool]:
        keys = {e.record.key for e in fresh if isinstance(e.record, AeoStatusRecord)}
        if not keys or not partner_codes:
            return {}
        # One index seek per (partner, issuer, authorisation) of the chunk: the table holds a
        # row per authorisation and partner, so filtering on authorisation alone scanned it
        # all on every chunk (the primary key starts with partner and issuer).
        by_issuer: dict[str, set[str]] = {}
        for issuer, authorisation, _ in keys:
            by_issuer.setdefault(issuer, set()).add(authorisation)
        groups: dict[tuple[Any, ...], Sequence[Any]] = {
            (partner, issuer): sorted(auths)
            for partner in partner_codes
            for issuer, auths in sorted(by_issuer.items())
        }
        rows = await select_by_groups(
            conn,
            disclosure_state,
            ("partner", "issuer", "authorisation", "aeo_type", "open"),
            group_columns=("partner", "issuer"),
            in_column="authorisation",
            groups=groups,
        )
        return {
            (partner, (issuer, auth, aeo_type)): bool(is_open)
            for partner, issuer, auth, aeo_type, is_open in rows
            if (issuer, auth, aeo_type) in keys
        }

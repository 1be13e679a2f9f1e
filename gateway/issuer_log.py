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
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.checkpoint import Checkpoint, ed25519_key_hint, parse_note
from crypto.envelope import pae
from crypto.keys import PrivateKeySigner
from crypto.merkle import Frontier, leaf_hash
from gateway import codec
from gateway.audit import record_action
from gateway.datasets import active_recogniser
from gateway.entitlement import decide
from gateway.errors import InputError
from gateway.node import Node, sign_head
from gateway.record_index import IndexedEntry, index_records
from gateway.records import AeoStatusRecord, Record, RecordInputError
from gateway.storage.schema import (
    disclosure_state,
    entitlements,
    entries,
    logs,
    partners,
)
from gateway.storage.tiles import store_append
from gateway.storage.upsert import upsert
from mra.v1 import envelope_pb2
from registry.errors import QuestionError
from registry.resolver import Recogniser

AuthKey = tuple[str, str, str]


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


def check_issuers(
    records_in: Sequence[Record], admin: str, recogniser: Recogniser, source: str = "input"
) -> None:
    """A union's gateway publishes records of its members on each record's date; any other
    gateway only its own; and a status's type must exist in the issuer's programme then."""
    problems: list[str] = []
    union = admin in recogniser.dataset.union_codes
    # A publish carries thousands of records over a handful of dates and issuers: each
    # membership and programme question is asked once (it was 16% of publish time).
    members_on = _memoised(recogniser.members_on)
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


def envelope_bytes(payload_type: str, payload: bytes, signer: PrivateKeySigner) -> bytes:
    message = envelope_pb2.Envelope(payload=payload, payload_type=payload_type)
    message.signatures.add(key_id=signer.key_id, sig=signer.sign(pae(payload_type, payload)))
    return bytes(message.SerializeToString(deterministic=True))


def prepare(
    record: Record,
    signer: PrivateKeySigner,
    disclosed_to: str | None = None,
    republished_from: int | None = None,
) -> PreparedEntry:
    """Sign a record as a new entry. ``republished_from``: the index of a revoked entry this
    one re-signs; it is part of the idempotency digest, so re-running a re-publication
    appends nothing twice while the revoked original keeps its own digest."""
    audience = (disclosed_to,) if disclosed_to else None
    payload_type = codec.payload_type_of(record)
    payload = codec.encode(record, codec.new_salt(), audience)
    envelope = envelope_bytes(payload_type, payload, signer)
    digest = codec.content_digest(record, audience)
    if republished_from is not None:
        digest = hashlib.sha256(b"republished-from:%d:" % republished_from + digest).digest()
    return PreparedEntry(
        record=record,
        digest=digest,
        envelope=envelope,
        leaf_hash=leaf_hash(envelope),
        payload_type=payload_type,
        signer=signer.key_id,
        disclosed_to=disclosed_to,
    )


class IssuerLog:
    """Appends to and reads this node's own log."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def publish(
        self,
        records_in: Sequence[Record],
        *,
        actor: str,
        source: str = "input",
        today: date | None = None,
    ) -> PublishResult:
        if not records_in:
            raise InputError(f"{source}: no records")
        async with self.node.engine.connect() as conn:
            recogniser = await active_recogniser(conn)
            checkpoint_signers = await self.node.checkpoint_signers(conn)
            _, entry_signer = await self.node.active_signers(conn)
        check_issuers(records_in, self.node.admin, recogniser, source)
        day = today or self.node.config.today()
        chunk = self.node.config.limits.publish_chunk
        appended = duplicates = 0
        first: int | None = None
        size = 0
        note = ""
        for start in range(0, len(records_in), chunk):
            prepared = [prepare(r, entry_signer) for r in records_in[start : start + chunk]]
            result = await self.append(
                prepared,
                recogniser=recogniser,
                day=day,
                checkpoint_signers=checkpoint_signers,
                actor=actor,
            )
            appended += result.appended
            duplicates += result.duplicates
            if first is None:
                first = result.first_index
            size, note = result.tree_size, result.checkpoint
        return PublishResult(appended, duplicates, size, note, first)

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
        await conn.execute(
            update(logs).where(logs.c.code == admin).values(lock_seq=logs.c.lock_seq + 1)
        )
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
        recogniser: Recogniser,
        day: date,
        checkpoint_signers: list[PrivateKeySigner],
        actor: str,
    ) -> PublishResult:
        """Append one chunk in one transaction (the unit that is acknowledged)."""
        admin = self.node.admin
        async with self.node.engine.begin() as conn:
            # 1. Take the log's write lock before reading its head.
            await conn.execute(
                update(logs).where(logs.c.code == admin).values(lock_seq=logs.c.lock_seq + 1)
            )
            head = (await conn.execute(select(logs).where(logs.c.code == admin))).one()
            # 2. Drop what the log already holds (idempotent publish), and repeats in the chunk.
            known = set(
                (
                    await conn.execute(
                        select(entries.c.content_digest).where(
                            entries.c.log == admin,
                            entries.c.content_digest.in_([p.digest for p in prepared]),
                        )
                    )
                ).scalars()
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
            entitlement_rows: list[dict[str, Any]] = []
            first = head.size
            for offset, entry in enumerate(fresh):
                index = first + offset
                if entry.disclosed_to is not None:
                    targets = {entry.disclosed_to}
                    if isinstance(entry.record, AeoStatusRecord):
                        open_state[(entry.disclosed_to, entry.record.key)] = True
                        changed[(entry.disclosed_to, entry.record.key)] = (True, index)
                else:
                    decision = decide(recogniser, entry.record, partner_codes, day, open_state)
                    targets = decision.partners
                    for state_key, is_open in decision.state_changes.items():
                        changed[state_key] = (is_open, index)
                entitlement_rows.extend({"idx": index, "partner": p} for p in sorted(targets))
            # 4. Extend the Merkle tree and persist its tiles.
            frontier = Frontier.from_bytes(bytes(head.frontier))
            result = frontier.append([e.leaf_hash for e in fresh])
            await store_append(conn, admin, result)
            now = time.time()
            await conn.execute(
                entries.insert(),
                [
                    {
                        "log": admin,
                        "idx": first + k,
                        "leaf_hash": e.leaf_hash,
                        "envelope": e.envelope,
                        "payload_type": e.payload_type,
                        "sig_state": "valid",
                        "signer": e.signer,
                        "content_digest": e.digest,
                        "appended_at": now,
                    }
                    for k, e in enumerate(fresh)
                ],
            )
            await index_records(
                conn,
                admin,
                [IndexedEntry(first + k, e.record, e.disclosed_to) for k, e in enumerate(fresh)],
            )
            if entitlement_rows:
                await conn.execute(entitlements.insert(), entitlement_rows)
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
            note = sign_head(
                Checkpoint(origin=self.node.origin, size=size, root_hash=result.root),
                self.node.origin,
                checkpoint_signers,
            )
            await conn.execute(
                update(logs)
                .where(logs.c.code == admin)
                .values(
                    size=size,
                    root=result.root,
                    frontier=result.frontier.to_bytes(),
                    checkpoint=note,
                    checkpoint_size=size,
                    verified_at=now,
                )
            )
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

    @staticmethod
    async def _open_state(
        conn: AsyncConnection, partner_codes: list[str], fresh: Sequence[PreparedEntry]
    ) -> dict[tuple[str, AuthKey], bool]:
        keys = {e.record.key for e in fresh if isinstance(e.record, AeoStatusRecord)}
        if not keys or not partner_codes:
            return {}
        auths = {k[1] for k in keys}
        rows = (
            await conn.execute(
                select(disclosure_state).where(disclosure_state.c.authorisation.in_(auths))
            )
        ).all()
        return {
            (r.partner, (r.issuer, r.authorisation, r.aeo_type)): bool(r.open)
            for r in rows
            if (r.issuer, r.authorisation, r.aeo_type) in keys
        }

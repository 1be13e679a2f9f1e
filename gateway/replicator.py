"""The replicator: one task per pinned, active partner, pulling its log over mTLS.

It resumes from the stored size after any crash, restart or network cut, with exponential
back-off and jitter; a batch that cannot be true (see :mod:`gateway.replication`) quarantines
the partner and stops its replicator until an operator runs ``mragw partner resume``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from sqlalchemy import select, update

from crypto.envelope import envelope_from_json
from crypto.errors import CryptoError
from gateway.audit import record_action
from gateway.cluster import replication_lease
from gateway.datasets import active_recogniser
from gateway.errors import GatewayError
from gateway.exchange import Batch, LogItem
from gateway.logs import bind as bind_log_context
from gateway.node import Node, now_utc
from gateway.partners import accept_statements, partner_statement, quarantine
from gateway.replication import (
    PartnerLogState,
    ReplicationFaultError,
    UntrustedCheckpointError,
    VerifiedBatch,
    advance,
    decode_valid,
    load_state,
    store_batches,
    store_verdicts,
    verify_batch,
    verify_note,
)
from gateway.storage.schema import entries, logs, node_state, partners
from gateway.storage.tiles import root_at
from gateway.trust import TrustError, TrustStatement
from gateway.verification import apply_revocations, judge, select_pending
from mra.v1 import exchange_pb2, exchange_pb2_grpc
from registry.resolver import Recogniser

log = logging.getLogger("mragw.replicator")

MAX_NOTE_BYTES = 64 * 1024
# Statements accepted from one GetTrustStatement answer (the rest are fetched next time).
MAX_NEW_STATEMENTS = 100
SUBSCRIBE_METHOD = "/mra.v1.ExchangeService/Subscribe"
# What gRPC says when a received message exceeds grpc.max_receive_message_length.
OVERSIZED_DETAIL = "Received message larger than max"
# Checkpoint faults a newer trust statement can explain (a key added or revoked since ours).
RETRY_AFTER_REFRESH = frozenset({"bad_checkpoint", "revoked_key"})


class PartnerQuarantinedError(GatewayError):
    """The partner was quarantined while replicating (an entry failed verification)."""


class Transport(Protocol):
    """What a replicator needs from a partner: the real one is gRPC over mTLS."""

    def subscribe(self, from_index: int) -> AsyncIterator[Batch]: ...

    async def consistency(self, old_size: int, new_size: int) -> Sequence[bytes]: ...

    async def trust_statements(self, from_version: int) -> list[bytes]:
        """The partner's statements from ``from_version`` on (DSSE JSON); [] when none."""
        ...


OpenTransport = Callable[[Any], AbstractAsyncContextManager[Transport]]


def batch_from_message(message: exchange_pb2.SubscribeResponse) -> Batch:
    """Convert a wire batch strictly; malformed content is a fault of the partner."""
    batch = message.batch
    items: list[LogItem] = []
    for offset, entry in enumerate(batch.entries):
        kind = entry.WhichOneof("entry")
        if kind == "envelope":
            items.append(LogItem(bytes(entry.envelope), b""))
        elif kind == "leaf_hash":
            items.append(LogItem(None, bytes(entry.leaf_hash)))
        else:
            raise ReplicationFaultError("malformed", f"entry {batch.start_index + offset} is empty")
    note = bytes(batch.checkpoint.note)
    if len(note) > MAX_NOTE_BYTES:
        raise ReplicationFaultError("malformed", "checkpoint note is oversized")
    try:
        text = note.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ReplicationFaultError("malformed", "checkpoint note is not UTF-8") from error
    proof = batch.consistency
    end = batch.start_index + len(items)
    if proof.hashes and (proof.old_size != end or proof.new_size < end):
        raise ReplicationFaultError(
            "malformed",
            f"consistency proof {proof.old_size}->{proof.new_size} for a batch ending at {end}",
        )
    return Batch(
        int(batch.start_index),
        tuple(items),
        text,
        int(proof.new_size),
        tuple(bytes(h) for h in proof.hashes),
    )


class GrpcTransport:
    def __init__(self, channel: grpc.aio.Channel, *, batch_entries: int = 0) -> None:
        self._stub = exchange_pb2_grpc.ExchangeServiceStub(channel)
        # Subscribe responses are received as bytes and decoded here, so that undecodable bytes
        # from the partner are a precise fault of the partner, not gRPC's opaque INTERNAL.
        self._subscribe: Any = channel.unary_stream(
            SUBSCRIBE_METHOD,
            request_serializer=exchange_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=None,
        )
        self._batch_entries = batch_entries

    async def subscribe(self, from_index: int) -> AsyncIterator[Batch]:
        call = self._subscribe(
            exchange_pb2.SubscribeRequest(
                from_index=from_index, max_batch_entries=self._batch_entries
            )
        )
        try:
            async for raw in call:
                try:
                    message = exchange_pb2.SubscribeResponse.FromString(raw)
                except DecodeError as error:
                    raise ReplicationFaultError(
                        "malformed", f"undecodable Subscribe response: {error}"
                    ) from error
                yield batch_from_message(message)
        except grpc.aio.AioRpcError as error:
            details = error.details() or ""
            if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and OVERSIZED_DETAIL in details:
                # gRPC refused a message from the partner over our limits.max_message_bytes.
                raise ReplicationFaultError("oversized", details) from error
            if error.code() is grpc.StatusCode.OUT_OF_RANGE:
                # We asked from the size we verified: a log now smaller than that rolled back.
                raise ReplicationFaultError(
                    "rollback",
                    f"partner's log is smaller than our verified {from_index}: {details}",
                ) from error
            raise
        finally:
            call.cancel()

    async def consistency(self, old_size: int, new_size: int) -> Sequence[bytes]:
        response = await self._stub.GetConsistencyProof(
            exchange_pb2.GetConsistencyProofRequest(old_size=old_size, new_size=new_size),
            timeout=30,
        )
        return [bytes(h) for h in response.proof.hashes]

    async def trust_statements(self, from_version: int) -> list[bytes]:
        try:
            response = await self._stub.GetTrustStatement(
                exchange_pb2.GetTrustStatementRequest(from_version=from_version), timeout=30
            )
        except grpc.aio.AioRpcError as error:
            # OUT_OF_RANGE: nothing newer; UNIMPLEMENTED: a peer without statement updates.
            if error.code() in {grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNIMPLEMENTED}:
                return []
            raise
        return [bytes(s.dsse_envelope) for s in response.statements][:MAX_NEW_STATEMENTS]


class TrustExpiredError(GatewayError):
    """The partner's newest trust statement expired longer ago than the grace period."""


# Faults kept per partner for the status page.
RECENT_FAULTS = 20


@dataclass
class ReplicatorStatus:
    connected: bool = False
    last_error: str | None = None
    batches: int = 0
    entries: int = 0
    last_batch_at: float | None = None
    faults: dict[str, int] = field(default_factory=dict)
    # The partner's trust statement as we hold it: version and expiry state, and the last
    # statement update it served that we refused (if any).
    trust_version: int | None = None
    trust_state: str | None = None
    trust_message: str | None = None
    trust_rejected: str | None = None
    # The newest faults, (unix time, kind, message), oldest first: the status page's "recent
    # rejections". Bounded, so a partner failing in a loop cannot grow it.
    recent_faults: deque[tuple[float, str, str]] = field(
        default_factory=lambda: deque(maxlen=RECENT_FAULTS)
    )

    def record_fault(self, kind: str, message: str) -> None:
        """Count a fault of ``kind`` and keep it among the recent ones."""
        self.faults[kind] = self.faults.get(kind, 0) + 1
        self.recent_faults.append((time.time(), kind, message[:500]))


# Verified batches waiting to be stored, at most: beyond that the receive path stops reading
# the stream, so gRPC flow control holds the partner back (bounded memory).
QUEUE_BATCHES = 16
# Queued batches are stored together, in one transaction of at most about this many entries
# (one head update and one executemany instead of one each per wire batch).
STORE_MAX_ENTRIES = 1024
# A stored batch with at most this many envelopes, when nothing before it awaits verification,
# is verified and indexed before the next store: the live tail, where that is the shortest
# way to "visible". Larger batches (a catch-up) go to the background verifier.
INLINE_VERIFY_MAX = 64
# Entries the background verifier reads, verifies and indexes per transaction.
VERIFY_CHUNK = 2048
# How long the receive path trusts its copy of the partner row; the store transaction reads
# the row again anyway, so nothing is stored for a suspended or quarantined partner.
PARTNER_RECHECK_S = 0.2
# Before retrying after a local fault of the background verifier (database busy, ...).
VERIFY_RETRY_S = 1.0

# Identifies the partner's pinned statement as the row holds it: a newer version, or the
# partner removed and pinned again, changes it.
Pin = tuple[str, int, float]


def _pin(row: Any) -> Pin:
    return (str(row.root_fingerprint), int(row.trust_version), float(row.added_at))


@dataclass(frozen=True)
class _Received:
    """A verified batch (``None``: a heartbeat that re-verified the held head) and the pin of
    the statement its checkpoint was verified with."""

    batch: VerifiedBatch | None
    pin: Pin


class _StoppedError(GatewayError):
    """The partner was suspended, quarantined or removed: stop following (not an error)."""


class Replicator:
    """Follows one partner's log.

    Three tasks share the work, so that catching up is bounded by hashing and storing, not by
    entry signatures (DESIGN.md: only checkpoint, consistency and root are on the hot path):
    - the receive path verifies each batch (checkpoint, consistency, root) against the state
      in memory, ahead of what is stored, and queues it;
    - the store path writes queued batches, several per transaction, each transaction guarded
      by the stored head it extends and by the partner row (not suspended, statement unchanged);
    - the verifier checks entry signatures and indexes records (what makes an entry usable by
      Check and Watch) in large chunks, signatures in a worker pool; an invalid entry
      quarantines the partner and stops the other two. Small live-tail batches are verified
      inline by the store path when nothing older is pending.
    Entries stored but not verified yet stay ``unverified`` (never used); after a crash the
    verifier's first pass finds them again.
    """

    def __init__(
        self,
        node: Node,
        code: str,
        open_transport: OpenTransport,
        on_applied: Callable[[], None] | None = None,
    ) -> None:
        self.node = node
        self.code = code
        self.open_transport = open_transport
        # Called (and ``applied`` set) when entries became usable: verified and indexed.
        self.on_applied = on_applied
        self.status = ReplicatorStatus()
        # Keyed by pinned root and bundle digest: a partner removed and re-pinned (maybe with
        # another root, again at version 1) must never be checked against the old statement.
        self._statement: tuple[tuple[str, int, bytes], TrustStatement] | None = None
        self._statement_row: Any = None
        # Whether a record's issuer belongs to the partner on a day, for one recogniser.
        self._memo_for: Recogniser | None = None
        self._memo: dict[tuple[str, date], bool] = {}
        self.applied = asyncio.Event()
        self._backoff = node.config.replication.backoff_initial_s
        # When the partner last answered GetTrustStatement (epoch s; 0: not yet): entries
        # received after it and signed by an unknown key wait for the next refresh.
        self._trust_checked_at = 0.0
        self._skew = timedelta(seconds=node.config.trust.clock_skew_s)
        # The replica as stored (committed), and as verified (ahead by the queued batches).
        self._stored: PartnerLogState | None = None
        self._state: PartnerLogState | None = None
        # Batches handed to the store path and not committed yet.
        self._unstored = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._row: Any = None
        self._row_at = 0.0
        # The store path and the verifier take turns writing (on SQLite a waiting writer
        # would otherwise sleep in the busy handler).
        self._write_lock = asyncio.Lock()
        # Every entry below this index was judged (or left for a trust refresh); None: unknown
        # until the verifier's first pass over what a previous run left unverified.
        self._verified_to: int | None = None
        self._verify_lock = asyncio.Lock()
        self._verify_wake = asyncio.Event()
        self._scan_requested = True
        # The statement revocations were last applied for (not again per chunk).
        self._revoked_for: Pin | None = None
        self._transport: Transport | None = None
        self._refresh_lock = asyncio.Lock()

    async def _partner(self) -> Any:
        async with self.node.engine.connect() as conn:
            row = (
                await conn.execute(select(partners).where(partners.c.code == self.code))
            ).one_or_none()
        self._row, self._row_at = row, time.monotonic()
        return row

    async def _partner_recent(self) -> Any:
        if self._row is None or time.monotonic() - self._row_at > PARTNER_RECHECK_S:
            return await self._partner()
        return self._row

    def _statement_for(self, row: Any) -> TrustStatement:
        if row is self._statement_row and self._statement is not None:
            # The same row object (the receive path's copy): no need to hash the bundle again.
            return self._statement[1]
        key = (row.root_fingerprint, row.trust_version, hashlib.sha256(bytes(row.bundle)).digest())
        if self._statement is None or self._statement[0] != key:
            self._statement = (key, partner_statement(row))
        self._statement_row = row
        return self._statement[1]

    async def _drain(self) -> None:
        """Until every batch handed to the store path is committed."""
        await self._drained.wait()

    async def _stored_leaves(self, start: int, count: int) -> list[bytes]:
        await self._drain()
        async with self.node.engine.connect() as conn:
            rows = (
                (
                    await conn.execute(
                        select(entries.c.leaf_hash)
                        .where(
                            entries.c.log == self.code,
                            entries.c.idx >= start,
                            entries.c.idx < start + count,
                        )
                        .order_by(entries.c.idx)
                    )
                )
                .scalars()
                .all()
            )
        return [bytes(r) for r in rows]

    async def _stored_root(self, size: int) -> bytes:
        await self._drain()
        async with self.node.engine.connect() as conn:
            return await root_at(conn, self.code, size)

    # -- receive path ---------------------------------------------------------------------------

    async def _verify(
        self, batch: Batch, transport: Transport, statement: TrustStatement
    ) -> VerifiedBatch | None:
        """Verify one batch against the state in memory (steps 1-5, nothing stored)."""
        state = self._state
        if state is None:  # pragma: no cover - set before following
            raise RuntimeError("replica state not loaded")
        verified = await verify_batch(
            state,
            batch,
            statement,
            self._stored_leaves,
            transport.consistency,
            stored_root=self._stored_root,
            now=now_utc(),
            skew=self._skew,
        )
        if verified is not None:
            self._state = advance(state, verified)
        return verified

    async def _verify_trusting(
        self, batch: Batch, transport: Transport, row: Any
    ) -> tuple[VerifiedBatch | None, Any]:
        """Verify a batch; a checkpoint our statement does not vouch for makes us fetch the
        partner's newest statement (a rotation or revocation we have not seen) and retry once."""
        statement = self._statement_for(row)
        self.check_expiry(statement)
        try:
            return await self._verify(batch, transport, statement), row
        except (UntrustedCheckpointError, ReplicationFaultError) as error:
            if isinstance(error, ReplicationFaultError) and error.kind not in RETRY_AFTER_REFRESH:
                raise
            refreshed = await self.refresh_trust(transport)
            if refreshed is None or refreshed.trust_version == row.trust_version:
                raise
            statement = self._statement_for(refreshed)
            self.check_expiry(statement)
            return await self._verify(batch, transport, statement), refreshed

    async def _receive(self, transport: Transport, queue: asyncio.Queue[_Received | None]) -> None:
        if self._state is None:  # pragma: no cover - set before following
            raise RuntimeError("replica state not loaded")
        async for batch in transport.subscribe(self._state.size):
            self.status.connected = True
            self.status.last_error = None
            # A suspension, removal or new trust statement takes effect at the next batch,
            # not at the next reconnection (and the store path re-reads the row anyway).
            row = await self._partner_recent()
            if row is None or row.suspended or row.quarantined:
                return
            verified, row = await self._verify_trusting(batch, transport, row)
            self._unstored += 1
            self._drained.clear()
            await queue.put(_Received(verified, _pin(row)))
            self._backoff = self.node.config.replication.backoff_initial_s

    # -- store path -----------------------------------------------------------------------------

    async def _store_loop(self, queue: asyncio.Queue[_Received | None]) -> None:
        ended = False
        while not ended:
            first = await queue.get()
            if first is None:
                return
            group = [first]
            count = len(first.batch.leaves) if first.batch is not None else 0
            # Whatever else was verified meanwhile goes into the same transaction, unless this
            # batch is one to verify inline: then it is stored and verified on its own before
            # anything after it is stored (an invalid entry stops the stream right there).
            while count < STORE_MAX_ENTRIES and not queue.empty() and not self._inline(first):
                item = queue.get_nowait()
                if item is None:
                    ended = True
                    break
                group.append(item)
                count += len(item.batch.leaves) if item.batch is not None else 0
            await self._store(group)
            self._unstored -= len(group)
            if self._unstored == 0:
                self._drained.set()

    async def _store(self, group: list[_Received]) -> None:
        head = self._stored
        if head is None:  # pragma: no cover - set before following
            raise RuntimeError("replica state not loaded")
        batches = [item.batch for item in group if item.batch is not None]
        async with self._write_lock, self.node.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(
                        partners.c.suspended,
                        partners.c.quarantined,
                        partners.c.root_fingerprint,
                        partners.c.trust_version,
                        partners.c.added_at,
                    ).where(partners.c.code == self.code)
                )
            ).one_or_none()
            if row is None or row.suspended or row.quarantined:
                raise _StoppedError(self.code)
            pin = _pin(row)
            stale = [b for item in group if item.pin != pin and (b := item.batch) is not None]
            if stale:
                # The statement changed since these checkpoints were verified (a refresh, a
                # revocation): they must hold under the current one too.
                full = (
                    await conn.execute(select(partners).where(partners.c.code == self.code))
                ).one()
                statement = self._statement_for(full)
                for batch in stale:
                    verify_note(batch.note, statement, now=now_utc(), skew=self._skew)
            if not batches:
                # Heartbeats that re-verified the same head: record that it is still fresh.
                await conn.execute(
                    update(logs).where(logs.c.code == self.code).values(verified_at=time.time())
                )
                return
            stored = await store_batches(conn, head, batches)
        start = head.size
        self._stored = stored
        self.status.batches += len(batches)
        self.status.entries += stored.size - start
        self.status.last_batch_at = time.time()
        envelopes = sum(1 for b in batches for e in b.envelopes if e is not None)
        await self._after_store(start, stored.size, envelopes)

    def _inline(self, item: _Received) -> bool:
        """Whether a received batch is verified inline once stored: a small one (the live
        tail) when nothing stored before it awaits the background verifier."""
        batch = item.batch
        return (
            batch is not None
            and self._stored is not None
            and self._verified_to == self._stored.size == batch.start
            and not self._scan_requested
            and sum(1 for e in batch.envelopes if e is not None) <= INLINE_VERIFY_MAX
        )

    async def _after_store(self, start: int, end: int, envelopes: int) -> None:
        if (
            envelopes <= INLINE_VERIFY_MAX
            and self._verified_to == start
            and not self._scan_requested
            and not self._verify_lock.locked()
        ):
            async with self._verify_lock:
                if self._verified_to == start:
                    try:
                        if envelopes:
                            await self._verify_range(start, end)
                    except PartnerQuarantinedError:
                        raise
                    except Exception:
                        # A local fault (database busy, ...): the background verifier retries.
                        log.exception("verifying entries of %s failed", self.code)
                    else:
                        self._verified_to = end
                        return
        self._verify_wake.set()

    async def _follow(self, transport: Transport) -> None:
        """Receive, verify and store until the stream ends or something fails; batches
        verified before a failure of the receive path are still stored."""
        queue: asyncio.Queue[_Received | None] = asyncio.Queue(QUEUE_BATCHES)
        self._unstored = 0
        self._drained.set()
        receive = asyncio.create_task(self._receive(transport, queue))
        store = asyncio.create_task(self._store_loop(queue))
        try:
            done, _ = await asyncio.wait({receive, store}, return_when=asyncio.FIRST_COMPLETED)
            if store in done:
                store.result()
                return
            await queue.put(None)
            await store
            receive.result()
        except _StoppedError:
            return
        finally:
            for task in (receive, store):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, _StoppedError):
                        await task

    # -- verifier -------------------------------------------------------------------------------

    def _request_scan(self) -> None:
        """Judge every entry still unverified (leftovers of a crash, entries waiting for a
        newer statement, entries made unverified again by a refresh)."""
        self._scan_requested = True
        self._verify_wake.set()

    async def _verify_loop(self) -> None:
        while True:
            await self._verify_wake.wait()
            self._verify_wake.clear()
            try:
                await self._verify_backlog()
            except PartnerQuarantinedError:
                raise
            except Exception:
                # A local fault (database busy, ...): the entries stay unverified (unused);
                # try again shortly.
                log.exception("verifying entries of %s failed", self.code)
                await asyncio.sleep(VERIFY_RETRY_S)
                self._verify_wake.set()

    async def _verify_backlog(self) -> None:
        async with self._verify_lock:
            if self._stored is None:
                return
            if self._scan_requested:
                self._scan_requested = False
                target = self._stored.size
                while await self._verify_once(None):
                    pass
                self._verified_to = max(self._verified_to or 0, target)
            if self._verified_to is None:
                return
            while self._verified_to < self._stored.size:
                end = min(self._stored.size, self._verified_to + VERIFY_CHUNK)
                await self._verify_range(self._verified_to, end)
                self._verified_to = end

    async def _verify_range(self, start: int, end: int) -> None:
        # A statement change between reading and writing makes a chunk be judged again.
        for _ in range(3):
            if await self._verify_once(range(start, end)) is not None:
                return

    async def _verify_once(self, indices: range | None) -> int | None:
        """Verify and index one chunk of unverified entries (``indices``, or any); returns how
        many were decided, or None when the partner's statement changed meanwhile. Raises
        :class:`PartnerQuarantinedError` when one was invalid (the partner is quarantined)."""
        row = await self._partner()
        if row is None:
            return 0
        if row.quarantined:
            raise PartnerQuarantinedError(str(row.reason))
        limit = VERIFY_CHUNK if indices is None else max(1, len(indices))
        async with self.node.engine.connect() as conn:
            pending = await select_pending(conn, self.code, indices, limit)
            recogniser = await active_recogniser(conn)
        if not pending:
            return 0
        statement = self._statement_for(row)
        judged = await judge(
            pending, statement, skew=self._skew, trust_checked_at=self._trust_checked_at
        )
        transport = self._transport
        if transport is not None and any(j.check.state == "unverified" for j in judged):
            # Signed by a key our statement does not list yet: the partner rotated. Fetch its
            # newest statement before judging them (else they would look forged).
            refreshed = await self.refresh_trust(transport)
            if refreshed is None:
                return 0
            row = refreshed
            statement = self._statement_for(row)
            judged = await judge(
                pending, statement, skew=self._skew, trust_checked_at=self._trust_checked_at
            )
        if self._memo_for is not recogniser:
            self._memo_for, self._memo = recogniser, {}
        final, indexed = decode_valid(
            self.code, judged, recogniser=recogniser, own_admin=self.node.admin, memo=self._memo
        )
        pin = _pin(row)
        async with self._write_lock, self.node.engine.begin() as conn:
            current = (
                await conn.execute(
                    select(
                        partners.c.root_fingerprint, partners.c.trust_version, partners.c.added_at
                    ).where(partners.c.code == self.code)
                )
            ).one_or_none()
            if current is None:
                return 0
            if _pin(current) != pin:
                return None
            if self._revoked_for != pin:
                # A newer trust statement may revoke a key some held entries were verified
                # with (once per statement, not per chunk).
                await apply_revocations(conn, self.code, statement)
            bad = await store_verdicts(conn, self.code, final, indexed)
        self._revoked_for = pin
        if final:
            self.applied.set()
            if self.on_applied is not None:
                self.on_applied()
        if bad is not None:
            raise PartnerQuarantinedError(f"invalid entry {bad.index}: {bad.problem}")
        return len(final)

    # -- trust ----------------------------------------------------------------------------------

    async def refresh_trust(self, transport: Transport) -> Any:
        """Ask the partner for statements newer than ours and accept them if they verify;
        a refused update is reported (status, log, audit) and the held statement stays."""
        async with self._refresh_lock:
            return await self._refresh_trust(transport)

    async def _refresh_trust(self, transport: Transport) -> Any:
        row = await self._partner()
        if row is None:
            return None
        asked_at = time.time()
        raw = await transport.trust_statements(int(row.trust_version) + 1)
        if raw:
            try:
                try:
                    newer = [envelope_from_json(r) for r in raw]
                except CryptoError as error:
                    raise TrustError(f"statement served by {self.code}: {error}") from error
                accepted = await accept_statements(self.node, self.code, newer)
            except TrustError as error:
                if self.status.trust_rejected != str(error):
                    # Audited once per distinct refusal, not at every refresh.
                    async with self.node.engine.begin() as conn:
                        await record_action(
                            conn,
                            "replicator",
                            "partner.trust-update-refused",
                            {"partner": self.code, "problem": str(error)[:2000]},
                        )
                self.status.trust_rejected = str(error)
                self.status.record_fault("trust_update_rejected", str(error))
                log.warning("refused a trust statement update from %s: %s", self.code, error)
            else:
                if accepted is not None:
                    self.status.trust_rejected = None
                    log.info(
                        "accepted trust statement version %d of %s", accepted.version, self.code
                    )
                    # A revocation takes effect now, not at the partner's next append; entries
                    # judged early (a key before its window) are judged again under it.
                    async with self._write_lock, self.node.engine.begin() as conn:
                        revoked = await apply_revocations(conn, self.code, accepted)
                        await conn.execute(
                            update(entries)
                            .where(entries.c.log == self.code, entries.c.sig_state == "early")
                            .values(sig_state="unverified")
                        )
                    if revoked and self.on_applied is not None:
                        self.on_applied()
            row = await self._partner()
        self._trust_checked_at = asked_at
        if raw and row is not None:
            # Entries left unverified for this statement (or made so just above) are judged
            # by the verifier under it.
            self._request_scan()
        return row

    def check_expiry(self, statement: TrustStatement) -> None:
        """Fail closed once the partner's statement is past its expiry and the grace period."""
        state = self.node.trust_expiry(statement)
        self.status.trust_version = statement.version
        self.status.trust_state = state.state
        self.status.trust_message = state.message
        if state.blocks_replication:
            raise TrustExpiredError(f"trust_expired: {state.message}")

    async def _follow_while_current(
        self, transport: Transport, tls_identity: bytes, verifier: asyncio.Task[None]
    ) -> None:
        """Follow the stream until it ends, the verifier stops (an invalid entry), or our own
        TLS material switched (a TLS rotation): the connection was made with the old
        certificate, which the partner stops trusting once the old CA is retired, so reconnect
        with the new one."""
        follow = asyncio.create_task(self._follow(transport))
        watch = asyncio.create_task(self._refresh_loop(transport, tls_identity))
        try:
            await asyncio.wait({follow, watch, verifier}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (follow, watch):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if verifier.done():
            verifier.result()  # re-raise why the verifier stopped
        if follow.done() and not follow.cancelled():
            follow.result()  # re-raise what ended the stream
        if watch.done() and not watch.cancelled():
            watch.result()

    async def _refresh_loop(self, transport: Transport, tls_identity: bytes) -> None:
        """A quiet log sends only heartbeats: refresh the statement on its own schedule, so a
        rotation or revocation is learnt within the interval. Returns when our TLS material
        switched."""
        interval = self.node.config.trust.refresh_interval_s
        tick = min(interval, 1.0)
        waited = 0.0
        while self.node.tls_identity() == tls_identity:
            await asyncio.sleep(tick)
            waited += tick
            if waited < interval:
                continue
            waited = 0.0
            try:
                await self.refresh_trust(transport)
            except grpc.aio.AioRpcError as error:
                log.info("trust refresh from %s failed: %s", self.code, error.code().name)
            except Exception:
                # A local fault (database busy, a removal race): keep following the stream,
                # the next tick tries again.
                log.exception("trust refresh from %s failed", self.code)

    async def run(self) -> str:
        """Replicate until stopped, suspended, removed or quarantined; returns why it stopped."""
        bind_log_context(partner=self.code)  # this task's log lines, and its verifier's
        verifier = asyncio.create_task(self._verify_loop(), name=f"verify-{self.code}")
        try:
            return await self._run(verifier)
        finally:
            verifier.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await verifier

    async def _run(self, verifier: asyncio.Task[None]) -> str:
        self._backoff = self.node.config.replication.backoff_initial_s
        ceiling = self.node.config.replication.backoff_max_s
        while True:
            try:
                if verifier.done():
                    verifier.result()
                row = await self._partner()
                if row is None:
                    return "removed"
                if row.suspended or row.quarantined:
                    return "quarantined" if row.quarantined else "suspended"
                # Read before the channel is made: if a TLS switch happens meanwhile, the
                # watcher sees a change and reconnects (never the other way round).
                tls_identity = self.node.tls_identity()
                async with self.open_transport(row) as transport:
                    # A newer statement first: it may renew an expired one or add a key
                    # that entries stored before a crash were signed with.
                    row = await self.refresh_trust(transport)
                    if row is None:
                        continue
                    statement = self._statement_for(row)
                    async with self.node.engine.connect() as conn:
                        self._stored = self._state = await load_state(conn, self.code)
                    self._transport = transport
                    # Whatever a previous run (or connection) left unverified is judged first.
                    self._request_scan()
                    try:
                        self.check_expiry(statement)
                        await self._follow_while_current(transport, tls_identity, verifier)
                    finally:
                        self._transport = None
            except PartnerQuarantinedError as error:
                self.status.connected = False
                self.status.record_fault("invalid_entry", str(error))
                log.warning("partner %s quarantined: %s", self.code, error)
                return "quarantined"
            except ReplicationFaultError as fault:
                self.status.connected = False
                self.status.record_fault(fault.kind, str(fault))
                log.warning("partner %s quarantined: %s", self.code, fault)
                async with self.node.engine.begin() as conn:
                    await quarantine(conn, self.code, str(fault))
                return "quarantined"
            except (TrustExpiredError, UntrustedCheckpointError) as error:
                # Fail closed without quarantine: nothing is applied until the partner renews
                # (or its key is valid again); we keep asking at each reconnection.
                self.status.connected = False
                self.status.last_error = str(error)
                kind = "trust_expired" if isinstance(error, TrustExpiredError) else "key_window"
                self.status.record_fault(kind, str(error))
                log.warning("not replicating %s: %s", self.code, error)
            except grpc.aio.AioRpcError as error:
                self.status.last_error = f"{error.code().name}: {error.details()}"
            except (OSError, ConnectionError) as error:
                self.status.last_error = str(error)
            except Exception as error:
                # A bug or a local fault (database, a replica moved by another writer): never
                # quarantine the partner for it; log it, back off and retry from the stored
                # cursor.
                log.exception("replicating %s failed", self.code)
                self.status.last_error = f"{type(error).__name__}: {error}"
            self.status.connected = False
            # Exponential back-off with full jitter, so partners recovering from an outage
            # do not reconnect in lockstep.
            await asyncio.sleep(random.uniform(0, self._backoff))  # noqa: S311 - jitter
            self._backoff = min(ceiling, self._backoff * 2)


class LeaseGate(Protocol):
    """Which leases this replica holds now (gateway.cluster.LeaseKeeper)."""

    def holds(self, lease: str) -> bool: ...

    def held(self) -> frozenset[str]: ...

    async def wait_changed(self, within: float | None = None) -> None: ...


class ReplicationManager:
    """Runs one replicator per pinned partner that is neither suspended nor quarantined and
    whose lease ``replication:<code>`` this replica holds (with ``leases``; without, every
    such partner: one gateway process alone).

    A lost lease cancels that replicator at once. A replicator cancelled while its store
    transaction runs cannot fork or duplicate: the transaction is guarded by the stored head it
    extends and by the partner row, so a replica that overlapped with the new holder fails its
    store instead of writing (docs/adr/0015-scale-out-on-postgresql.md)."""

    def __init__(
        self,
        node: Node,
        open_transport: OpenTransport,
        on_applied: Callable[[], None] | None = None,
        leases: LeaseGate | None = None,
    ) -> None:
        self.node = node
        self.open_transport = open_transport
        # Called after a batch of a partner's entries became usable (wakes Watch streams).
        self.on_applied = on_applied
        self.leases = leases
        self.replicators: dict[str, Replicator] = {}
        self._tasks: dict[str, asyncio.Task[str]] = {}

    def status(self, code: str) -> ReplicatorStatus | None:
        replicator = self.replicators.get(code)
        return replicator.status if replicator is not None else None

    async def _eligible(self) -> set[str]:
        async with self.node.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(partners.c.code).where(
                        partners.c.suspended.is_(False), partners.c.quarantined.is_(False)
                    )
                )
            ).scalars()
            return set(rows)

    async def _stop_unheld(self) -> None:
        for code, task in list(self._tasks.items()):
            if not self._held(code):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                del self._tasks[code]
                self.replicators[code].status.connected = False
                log.info("replication of %s stopped here: lease not held", code)

    def _held(self, code: str) -> bool:
        return self.leases is None or self.leases.holds(replication_lease(code))

    async def reconcile(self) -> None:
        wanted = {code for code in await self._eligible() if self._held(code)}
        for code, task in list(self._tasks.items()):
            if code not in wanted or task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                del self._tasks[code]
        for code in sorted(wanted - set(self._tasks)):
            replicator = self.replicators.get(code) or Replicator(
                self.node, code, self.open_transport, self.on_applied
            )
            self.replicators[code] = replicator
            self._tasks[code] = asyncio.create_task(replicator.run(), name=f"replicate-{code}")

    async def run(self) -> None:
        """Reconcile at start, whenever the partners change (polled, so CLI changes count) and
        the moment a lease is taken or lost."""
        seen = -1
        leases: frozenset[str] | None = None
        try:
            while True:
                held = self.leases.held() if self.leases is not None else None
                if held != leases:
                    leases = held
                    seen = -1
                    # A lost lease stops its replicator without asking the database (which
                    # may be what is unreachable): another replica may hold it by now.
                    await self._stop_unheld()
                try:
                    async with self.node.engine.connect() as conn:
                        version = (
                            await conn.execute(
                                select(node_state.c.value).where(node_state.c.key == "partners")
                            )
                        ).scalar_one()
                    finished = any(t.done() for t in self._tasks.values())
                    if version != seen or finished:
                        seen = version
                        await self.reconcile()
                except Exception as error:
                    if self.leases is None:
                        raise
                    # One replica among several: keep gating on leases, try again next time.
                    log.warning("replication manager: reading partners failed: %s", error)
                    seen = -1
                interval = self.node.config.replication.poll_interval_s
                if self.leases is None:
                    await asyncio.sleep(interval)
                else:
                    await self.leases.wait_changed(interval)
        finally:
            for task in self._tasks.values():
                task.cancel()
            for task in self._tasks.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

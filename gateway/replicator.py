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
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from sqlalchemy import select, update

from crypto.envelope import envelope_from_json
from crypto.errors import CryptoError, VerificationError
from gateway.audit import record_action
from gateway.datasets import active_recogniser
from gateway.errors import GatewayError
from gateway.exchange import Batch, LogItem
from gateway.node import Node, now_utc
from gateway.partners import accept_statements, partner_statement, quarantine
from gateway.replication import (
    ReplicationFaultError,
    UntrustedCheckpointError,
    load_state,
    store_batch,
    verify_and_index,
    verify_batch,
)
from gateway.storage.schema import entries, logs, node_state, partners
from gateway.storage.tiles import root_at
from gateway.trust import TrustError, TrustStatement
from gateway.verification import apply_revocations, parse_envelope
from mra.v1 import exchange_pb2, exchange_pb2_grpc

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


def _unknown_signers(envelopes: Sequence[bytes | None], statement: TrustStatement) -> bool:
    known = {k.key_id for k in statement.signing_keys}
    for envelope in envelopes:
        if envelope is None:
            continue
        try:
            message = parse_envelope(envelope)
        except VerificationError:
            continue  # judged (invalid) by the verifier
        if not any(s.key_id in known for s in message.signatures):
            return True
    return False


class TrustExpiredError(GatewayError):
    """The partner's newest trust statement expired longer ago than the grace period."""


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


class Replicator:
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
        self.on_applied = on_applied
        self.status = ReplicatorStatus()
        # Keyed by pinned root and bundle digest: a partner removed and re-pinned (maybe with
        # another root, again at version 1) must never be checked against the old statement.
        self._statement: tuple[tuple[str, int, bytes], TrustStatement] | None = None
        self.applied = asyncio.Event()
        self._backoff = node.config.replication.backoff_initial_s
        # When the partner last answered GetTrustStatement (epoch s; 0: not yet): entries
        # received after it and signed by an unknown key wait for the next refresh.
        self._trust_checked_at = 0.0

    async def _partner(self) -> Any:
        async with self.node.engine.connect() as conn:
            return (
                await conn.execute(select(partners).where(partners.c.code == self.code))
            ).one_or_none()

    def _statement_for(self, row: Any) -> TrustStatement:
        key = (row.root_fingerprint, row.trust_version, hashlib.sha256(bytes(row.bundle)).digest())
        if self._statement is None or self._statement[0] != key:
            self._statement = (key, partner_statement(row))
        return self._statement[1]

    async def _stored_leaves(self, start: int, count: int) -> list[bytes]:
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
        async with self.node.engine.connect() as conn:
            return await root_at(conn, self.code, size)

    async def apply(self, batch: Batch, transport: Transport, statement: TrustStatement) -> int:
        """Verify and store one batch; then verify and index its entries. Returns new entries."""
        async with self.node.engine.connect() as conn:
            state = await load_state(conn, self.code)
        verified = await verify_batch(
            state,
            batch,
            statement,
            self._stored_leaves,
            transport.consistency,
            stored_root=self._stored_root,
            now=now_utc(),
            skew=timedelta(seconds=self.node.config.trust.clock_skew_s),
        )
        if verified is None:
            # A heartbeat re-verified the same head: record that it is still fresh.
            async with self.node.engine.begin() as conn:
                await conn.execute(
                    update(logs).where(logs.c.code == self.code).values(verified_at=time.time())
                )
            return 0
        async with self.node.engine.begin() as conn:
            await store_batch(conn, self.code, verified)
        if _unknown_signers(verified.envelopes, statement):
            # Entries signed by a key our statement does not list yet: the partner rotated.
            # Fetch its newest statement before judging them (else they would look forged).
            row = await self.refresh_trust(transport)
            if row is not None:
                statement = self._statement_for(row)
        # Only the entries just stored: rescanning the whole replica per batch made catch-up
        # slow down as the log grew (a crash's leftovers are verified when run() starts).
        end = verified.start + len(verified.leaves)
        await self.verify_pending(statement, range(verified.start, end))
        self.status.batches += 1
        self.status.entries += len(verified.leaves)
        self.status.last_batch_at = time.time()
        self.applied.set()
        if self.on_applied is not None:
            self.on_applied()
        return len(verified.leaves)

    async def verify_pending(self, statement: TrustStatement, indices: range | None = None) -> None:
        """Verify and index stored entries (those in ``indices``, or all pending); raise
        :class:`PartnerQuarantinedError` when one was invalid (``verify_and_index``
        quarantined the partner), so nothing more is applied."""
        while True:
            async with self.node.engine.begin() as conn:
                recogniser = await active_recogniser(conn)
                done = await verify_and_index(
                    conn,
                    self.code,
                    statement=statement,
                    recogniser=recogniser,
                    own_admin=self.node.admin,
                    indices=indices,
                    skew=timedelta(seconds=self.node.config.trust.clock_skew_s),
                    trust_checked_at=self._trust_checked_at,
                )
                row = (
                    await conn.execute(
                        select(partners.c.quarantined, partners.c.reason).where(
                            partners.c.code == self.code
                        )
                    )
                ).one_or_none()
            if row is not None and row.quarantined:
                raise PartnerQuarantinedError(str(row.reason))
            if done == 0:
                return

    async def refresh_trust(self, transport: Transport) -> Any:
        """Ask the partner for statements newer than ours and accept them if they verify;
        a refused update is reported (status, log, audit) and the held statement stays."""
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
                self.status.faults["trust_update_rejected"] = (
                    self.status.faults.get("trust_update_rejected", 0) + 1
                )
                log.warning("refused a trust statement update from %s: %s", self.code, error)
            else:
                if accepted is not None:
                    self.status.trust_rejected = None
                    log.info(
                        "accepted trust statement version %d of %s", accepted.version, self.code
                    )
                    # A revocation takes effect now, not at the partner's next append; entries
                    # judged early (a key before its window) are judged again under it.
                    async with self.node.engine.begin() as conn:
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
            await self.verify_pending(self._statement_for(row))
        return row

    def check_expiry(self, statement: TrustStatement) -> None:
        """Fail closed once the partner's statement is past its expiry and the grace period."""
        state = self.node.trust_expiry(statement)
        self.status.trust_version = statement.version
        self.status.trust_state = state.state
        self.status.trust_message = state.message
        if state.blocks_replication:
            raise TrustExpiredError(f"trust_expired: {state.message}")

    async def _apply_trusting(self, batch: Batch, transport: Transport, row: Any) -> Any:
        """Apply a batch; a checkpoint our statement does not vouch for makes us fetch the
        partner's newest statement (a rotation or revocation we have not seen) and retry once."""
        statement = self._statement_for(row)
        self.check_expiry(statement)
        try:
            await self.apply(batch, transport, statement)
        except (UntrustedCheckpointError, ReplicationFaultError) as error:
            if isinstance(error, ReplicationFaultError) and error.kind not in RETRY_AFTER_REFRESH:
                raise
            refreshed = await self.refresh_trust(transport)
            if refreshed is None or refreshed.trust_version == row.trust_version:
                raise
            row = refreshed
            statement = self._statement_for(row)
            self.check_expiry(statement)
            await self.apply(batch, transport, statement)
        return row

    async def _follow_while_current(
        self, transport: Transport, from_index: int, tls_identity: bytes
    ) -> None:
        """Follow the stream until it ends, or until our own TLS material switched (a TLS
        rotation): the connection was made with the old certificate, which the partner stops
        trusting once the old CA is retired, so reconnect with the new one."""
        follow = asyncio.create_task(self._follow(transport, from_index))
        watch = asyncio.create_task(self._refresh_loop(transport, tls_identity))
        try:
            await asyncio.wait({follow, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (follow, watch):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
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

    async def _follow(self, transport: Transport, from_index: int) -> None:
        async for batch in transport.subscribe(from_index):
            self.status.connected = True
            self.status.last_error = None
            # A suspension, removal or new trust statement takes effect at the next batch,
            # not at the next reconnection.
            row = await self._partner()
            if row is None or row.suspended or row.quarantined:
                return
            await self._apply_trusting(batch, transport, row)
            self._backoff = self.node.config.replication.backoff_initial_s

    async def run(self) -> str:
        """Replicate until stopped, suspended, removed or quarantined; returns why it stopped."""
        self._backoff = self.node.config.replication.backoff_initial_s
        ceiling = self.node.config.replication.backoff_max_s
        while True:
            row = await self._partner()
            if row is None:
                return "removed"
            if row.suspended or row.quarantined:
                return "quarantined" if row.quarantined else "suspended"
            try:
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
                    await self.verify_pending(statement)
                    self.check_expiry(statement)
                    async with self.node.engine.connect() as conn:
                        state = await load_state(conn, self.code)
                    # A quiet log sends only heartbeats: refresh the statement on its own
                    # schedule, so a rotation or revocation is learnt within the interval.
                    await self._follow_while_current(transport, state.size, tls_identity)
            except PartnerQuarantinedError as error:
                self.status.connected = False
                self.status.faults["invalid_entry"] = self.status.faults.get("invalid_entry", 0) + 1
                log.warning("partner %s quarantined: %s", self.code, error)
                return "quarantined"
            except ReplicationFaultError as fault:
                self.status.connected = False
                self.status.faults[fault.kind] = self.status.faults.get(fault.kind, 0) + 1
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
                self.status.faults[kind] = self.status.faults.get(kind, 0) + 1
                log.warning("not replicating %s: %s", self.code, error)
            except grpc.aio.AioRpcError as error:
                self.status.last_error = f"{error.code().name}: {error.details()}"
            except (OSError, ConnectionError) as error:
                self.status.last_error = str(error)
            except Exception as error:
                # A bug or a local fault (database): never quarantine the partner for it;
                # log it, back off and retry from the stored cursor.
                log.exception("replicating %s failed", self.code)
                self.status.last_error = f"{type(error).__name__}: {error}"
            self.status.connected = False
            # Exponential back-off with full jitter, so partners recovering from an outage
            # do not reconnect in lockstep.
            await asyncio.sleep(random.uniform(0, self._backoff))  # noqa: S311 - jitter
            self._backoff = min(ceiling, self._backoff * 2)


class ReplicationManager:
    """Runs one replicator per pinned partner that is neither suspended nor quarantined."""

    def __init__(
        self,
        node: Node,
        open_transport: OpenTransport,
        on_applied: Callable[[], None] | None = None,
    ) -> None:
        self.node = node
        self.open_transport = open_transport
        # Called after a batch of a partner's entries became usable (wakes Watch streams).
        self.on_applied = on_applied
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

    async def reconcile(self) -> None:
        wanted = await self._eligible()
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
        """Reconcile at start and whenever the partners change (polled, so CLI changes count)."""
        seen = -1
        try:
            while True:
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
                await asyncio.sleep(self.node.config.replication.poll_interval_s)
        finally:
            for task in self._tasks.values():
                task.cancel()
            for task in self._tasks.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

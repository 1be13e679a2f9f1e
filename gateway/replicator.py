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
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from sqlalchemy import select, update

from gateway.datasets import active_recogniser
from gateway.errors import GatewayError
from gateway.exchange import Batch, LogItem
from gateway.node import Node
from gateway.partners import partner_statement, quarantine
from gateway.replication import (
    ReplicationFaultError,
    load_state,
    store_batch,
    verify_and_index,
    verify_batch,
)
from gateway.storage.schema import entries, logs, node_state, partners
from gateway.storage.tiles import root_at
from gateway.trust import TrustStatement
from mra.v1 import exchange_pb2, exchange_pb2_grpc

log = logging.getLogger("mragw.replicator")

MAX_NOTE_BYTES = 64 * 1024
SUBSCRIBE_METHOD = "/mra.v1.ExchangeService/Subscribe"
# What gRPC says when a received message exceeds grpc.max_receive_message_length.
OVERSIZED_DETAIL = "Received message larger than max"


class PartnerQuarantinedError(GatewayError):
    """The partner was quarantined while replicating (an entry failed verification)."""


class Transport(Protocol):
    """What a replicator needs from a partner: the real one is gRPC over mTLS."""

    def subscribe(self, from_index: int) -> AsyncIterator[Batch]: ...

    async def consistency(self, old_size: int, new_size: int) -> Sequence[bytes]: ...


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


@dataclass
class ReplicatorStatus:
    connected: bool = False
    last_error: str | None = None
    batches: int = 0
    entries: int = 0
    last_batch_at: float | None = None
    faults: dict[str, int] = field(default_factory=dict)


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

    async def run(self) -> str:
        """Replicate until stopped, suspended, removed or quarantined; returns why it stopped."""
        backoff = self.node.config.replication.backoff_initial_s
        ceiling = self.node.config.replication.backoff_max_s
        while True:
            row = await self._partner()
            if row is None:
                return "removed"
            if row.suspended or row.quarantined:
                return "quarantined" if row.quarantined else "suspended"
            statement = self._statement_for(row)
            try:
                # Entries stored before a crash may not have been verified yet.
                await self.verify_pending(statement)
                async with self.open_transport(row) as transport:
                    async with self.node.engine.connect() as conn:
                        state = await load_state(conn, self.code)
                    async for batch in transport.subscribe(state.size):
                        self.status.connected = True
                        self.status.last_error = None
                        # A suspension, removal or new trust statement takes effect at the
                        # next batch, not at the next reconnection.
                        row = await self._partner()
                        if row is None or row.suspended or row.quarantined:
                            break
                        statement = self._statement_for(row)
                        await self.apply(batch, transport, statement)
                        backoff = self.node.config.replication.backoff_initial_s
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
            await asyncio.sleep(random.uniform(0, backoff))  # noqa: S311 - jitter, not crypto
            backoff = min(ceiling, backoff * 2)


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

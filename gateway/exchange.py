"""The partner-facing exchange, transport-neutral: what a partner may read of our log.

Invariants:
- A partner receives an entry's envelope only when it was entitled to it at append time
  (``entitlements``); otherwise, and for erased entries, only the leaf hash. Either way it can
  recompute every root, so nothing can be withheld or rewritten unnoticed.
- Every batch ends at a size s and carries the latest checkpoint (size S >= s) and a
  consistency proof from s to S, so the receiver verifies and commits each batch on its own.
- Leaf hashes below the head are immutable, so batches read outside the append lock are
  stable. Envelopes are not: retention and erasure (gateway.retention, gateway.erasure) set
  them to NULL, and from then on such an entry is served as its leaf hash only, to every
  partner. The wire format needs nothing new for it (``LogEntry.leaf_hash`` already covers
  "erased or pruned"), and a receiver cannot tell it from an entry it is not entitled to, by
  design: an erasure must not tell a partner that never saw an entry that it was about
  someone. A batch read just before an erasure may still carry the envelope; the partner
  receives the erasure notice right after and erases it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from crypto.merkle import TileId, consistency_proof_from_tiles, tiles_for_consistency_proof
from gateway.errors import GatewayError, InputError
from gateway.node import Node
from gateway.storage.changes import ChangeProbe
from gateway.storage.schema import entitlements, entries, logs
from gateway.storage.tiles import consistency_proof, inclusion_proof, read_tiles

MAX_BATCH_ENTRIES = 4096
# Batches read from the database at once while catching up a partner (see ``_batches``), and
# the entries such a read holds at most (its memory) when batches are large.
WINDOW = 8
WINDOW_ENTRIES = 8192


class OutOfRangeError(InputError):
    """An index or size beyond the log's current size."""


class AccessEndedError(GatewayError):
    """The partner was suspended or removed while its stream was open."""


# Returns None while the partner may still read, else why it may not.
Authorise = Callable[[str], str | None]


@dataclass(frozen=True)
class LogItem:
    """One entry as a partner sees it: the envelope, or ``None`` and the leaf hash only."""

    envelope: bytes | None
    leaf_hash: bytes


@dataclass(frozen=True)
class Batch:
    start: int
    items: tuple[LogItem, ...]
    checkpoint: str
    checkpoint_size: int
    consistency: tuple[bytes, ...]

    @property
    def end(self) -> int:
        return self.start + len(self.items)


@dataclass(frozen=True)
class Head:
    size: int
    checkpoint: str


class LogWatcher:
    """Wakes live-tail subscribers when the log grows.

    Appends made in this process call :meth:`notify`; appends by other processes (the CLI, other
    replicas) are seen by polling every ``interval`` seconds (on SQLite, a
    :class:`~gateway.storage.changes.ChangeProbe` first, then the head row if it moved).
    """

    def __init__(self, engine: AsyncEngine, log: str, interval: float) -> None:
        self._engine = engine
        self._log = log
        self._interval = interval
        self._changed = asyncio.Condition()
        self._size = -1

    async def head(self) -> Head:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(logs.c.size, logs.c.checkpoint).where(logs.c.code == self._log)
                )
            ).one()
        return Head(int(row.size), row.checkpoint or "")

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def run(self) -> None:
        # The head row is read only when something was committed since the last look: ten
        # reads a second through SQLAlchemy were most of an idle gateway's CPU.
        probe = ChangeProbe(self._engine)
        try:
            while True:
                if probe.changed():
                    head = await self.head()
                    if head.size != self._size:
                        self._size = head.size
                        await self.notify()
                await asyncio.sleep(self._interval)
        finally:
            probe.close()

    async def wait_beyond(self, size: int, patience_s: float) -> None:
        """Return when the log may have grown past ``size``, or after ``patience_s`` seconds."""
        if self._size > size:
            return
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), patience_s)


class ExchangeHandler:
    def __init__(
        self,
        node: Node,
        watcher: LogWatcher,
        *,
        heartbeat_s: float = 10.0,
        stopping: asyncio.Event | None = None,
        authorise: Authorise | None = None,
    ) -> None:
        self.node = node
        self.watcher = watcher
        self.heartbeat_s = heartbeat_s
        # Set when the server drains: live tails end cleanly instead of being cut.
        self.stopping = stopping if stopping is not None else asyncio.Event()
        # Identity is checked when a call starts; a live tail outlives that check, so access is
        # re-checked before every batch (a suspension or removal ends the stream).
        self.authorise = authorise
        self.batch_entries = node.config.limits.batch_entries
        # Leave room for the checkpoint, proof and framing inside one gRPC message.
        self.batch_bytes = max(16 * 1024, node.config.limits.max_message_bytes // 2)

    async def head(self) -> Head:
        return await self.watcher.head()

    async def _batches(
        self, partner: str, start: int, limit: int, head: Head, window: int
    ) -> list[Batch]:
        """Consecutive batches from ``start`` covering up to ``window`` entries, read with one
        query for the entries, one for the entitlements and one for the tiles of every batch's
        consistency proof (per-batch queries bounded catch-up on the sending side)."""
        end = min(start + window, head.size)
        admin = self.node.admin
        async with self.node.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(entries.c.idx, entries.c.leaf_hash, entries.c.envelope)
                    .where(entries.c.log == admin, entries.c.idx >= start, entries.c.idx < end)
                    .order_by(entries.c.idx)
                )
            ).all()
            allowed = set(
                (
                    await conn.execute(
                        select(entitlements.c.idx).where(
                            entitlements.c.partner == partner,
                            entitlements.c.idx >= start,
                            entitlements.c.idx < end,
                        )
                    )
                ).scalars()
            )
            if start < end and (not rows or rows[0].idx != start):  # pragma: no cover
                raise RuntimeError(f"log {admin} has no entry {start} below its head")
            groups: list[list[LogItem]] = [[]]
            used = 0
            for row in rows:
                envelope = (
                    bytes(row.envelope)
                    if (row.envelope is not None and row.idx in allowed)
                    else None
                )
                items = groups[-1]
                items.append(LogItem(envelope, bytes(row.leaf_hash)))
                used += len(envelope) if envelope is not None else 32
                if len(items) >= limit or used >= self.batch_bytes:
                    groups.append([])
                    used = 0
            if not groups[-1] and len(groups) > 1:
                groups.pop()
            ends: list[int] = []
            position = start
            for items in groups:
                position += len(items)
                ends.append(position)
            wanted: set[TileId] = set()
            for batch_end in ends:
                wanted.update(tiles_for_consistency_proof(batch_end, head.size))
            found = await read_tiles(conn, admin, wanted)
        batches = []
        position = start
        for items, batch_end in zip(groups, ends, strict=True):
            proof = consistency_proof_from_tiles(batch_end, head.size, found)
            batches.append(Batch(position, tuple(items), head.checkpoint, head.size, tuple(proof)))
            position = batch_end
        return batches

    async def subscribe(
        self, partner: str, from_index: int, *, max_batch: int = 0, catch_up_only: bool = False
    ) -> AsyncIterator[Batch]:
        """Catch-up from ``from_index``, then (unless ``catch_up_only``) the live tail."""
        limit = min(max_batch or self.batch_entries, self.batch_entries, MAX_BATCH_ENTRIES)
        head = await self.head()
        if from_index > head.size:
            raise OutOfRangeError(f"from_index {from_index} is beyond the log size {head.size}")
        window = max(limit, min(limit * WINDOW, WINDOW_ENTRIES))
        cursor = from_index
        target = head.size
        if cursor == head.size:
            # Nothing to catch up on: answer at once with the signed head, so the subscriber
            # verifies it (and knows it is connected) without waiting for the first heartbeat.
            yield Batch(cursor, (), head.checkpoint, head.size, ())
        while True:
            while cursor < head.size:
                self._still_allowed(partner)
                for batch in await self._batches(partner, cursor, limit, head, window):
                    # Access is re-checked before every batch sent, also within a window.
                    self._still_allowed(partner)
                    cursor = batch.end
                    yield batch
            if (catch_up_only and cursor >= target) or self.stopping.is_set():
                return
            await self._wait_for_growth(cursor)
            if self.stopping.is_set():
                return
            self._still_allowed(partner)
            head = await self.head()
            if head.size == cursor:
                # Nothing new: a heartbeat carrying the latest checkpoint keeps the stream
                # alive through idle proxies and lets the partner see we are alive.
                yield Batch(cursor, (), head.checkpoint, head.size, ())

    def _still_allowed(self, partner: str) -> None:
        if self.authorise is not None:
            refused = self.authorise(partner)
            if refused is not None:
                raise AccessEndedError(refused)

    async def _wait_for_growth(self, cursor: int) -> None:
        """Until the log grows past ``cursor``, the heartbeat is due, or the server drains."""
        growth = asyncio.ensure_future(self.watcher.wait_beyond(cursor, self.heartbeat_s))
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({growth, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (growth, stop):
                task.cancel()

    async def inclusion(self, index: int, tree_size: int | None) -> tuple[int, list[bytes]]:
        head = await self.head()
        size = head.size if tree_size is None else tree_size
        if size > head.size or index >= size or index < 0:
            raise OutOfRangeError(f"leaf {index} at tree size {size}: log size is {head.size}")
        async with self.node.engine.connect() as conn:
            return size, await inclusion_proof(conn, self.node.admin, index, size)

    async def consistency(self, old_size: int, new_size: int | None) -> tuple[int, list[bytes]]:
        head = await self.head()
        size = head.size if new_size is None else new_size
        if size > head.size or old_size > size or old_size < 0:
            raise OutOfRangeError(f"consistency {old_size} -> {size}: log size is {head.size}")
        async with self.node.engine.connect() as conn:
            return size, await consistency_proof(conn, self.node.admin, old_size, size)

    async def trust_statements(self, from_version: int | None) -> list[bytes]:
        """The current statement, or the chain from ``from_version`` to the current one."""
        async with self.node.engine.connect() as conn:
            rows = await self.node.trust_envelopes(conn, from_version)
        if not rows:
            raise OutOfRangeError(f"no trust statement from version {from_version}")
        return [bytes(r) for r in rows]

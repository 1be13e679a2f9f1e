"""Witness gossip: every ``trust.witness_interval_s`` this gateway exchanges cosigned
checkpoints with each pinned partner over ExchangeService.Witness (mTLS).

One round, per pinned partner that is neither suspended nor quarantined, concurrently:
1. send our views (:func:`gateway.witness.our_views`, cosigned once per round) and feed the
   partner's answer to :func:`gateway.witness.receive_views` as that partner's views (the
   identity is the one we dialled and checked, never what the answer says);
2. ask the partner, as the issuer of its own log, to prove the views of its log other
   witnesses hold beyond our replica consistent with ours (:func:`gateway.witness.prove_pending`).
Then :func:`gateway.witness.check_pending` compares what our replicas have reached since.

A partner that is down, slow or answers badly is logged and tried again next round; nothing
here stops the gateway. The protobuf conversions of views live here too, so the servicer and
this client read the wire form alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from sqlalchemy import select

from crypto.checkpoint import MAX_NOTE_BYTES
from gateway.node import Node
from gateway.server.metrics import GatewayMetrics
from gateway.server.tls import partner_channel
from gateway.storage.schema import partners
from gateway.witness import (
    MAX_VIEWS,
    ForgedCosignatureError,
    View,
    WitnessInputError,
    WitnessOutcome,
    check_pending,
    our_views,
    prove_pending,
    receive_views,
)
from mra.v1 import exchange_pb2, exchange_pb2_grpc, log_pb2

log = logging.getLogger("mragw.witness")

RPC_TIMEOUT_S = 30.0

OpenChannel = Callable[[Node, Any], grpc.aio.Channel]


def _dial(node: Node, row: Any) -> grpc.aio.Channel:
    return partner_channel(node, row.code, row.endpoint, row.ca_pem)


# -- wire form ------------------------------------------------------------------------------


def views_from_message(items: Sequence[exchange_pb2.WitnessedCheckpoint]) -> list[View]:
    """Views from a Witness request or response, strictly: bounded, every note UTF-8."""
    if len(items) > MAX_VIEWS:
        raise WitnessInputError(f"{len(items)} checkpoints, at most {MAX_VIEWS} per exchange")
    views: list[View] = []
    for position, item in enumerate(items):
        if not item.HasField("checkpoint"):
            raise WitnessInputError(f"checkpoints[{position}] (log {item.log!r}) has no checkpoint")
        note = bytes(item.checkpoint.note)
        if len(note) > MAX_NOTE_BYTES:
            raise WitnessInputError(
                f"checkpoints[{position}] (log {item.log!r}): note of {len(note)} bytes, at most "
                f"{MAX_NOTE_BYTES}"
            )
        try:
            text = note.decode("utf-8")
        except UnicodeDecodeError as error:
            raise WitnessInputError(
                f"checkpoints[{position}] (log {item.log!r}): note is not UTF-8"
            ) from error
        views.append(View(item.log, text))
    return views


def views_message(views: Sequence[View]) -> list[exchange_pb2.WitnessedCheckpoint]:
    return [
        exchange_pb2.WitnessedCheckpoint(
            log=v.log, checkpoint=log_pb2.Checkpoint(note=v.note.encode("utf-8"))
        )
        for v in views
    ]


# -- metrics --------------------------------------------------------------------------------


def record_outcome(metrics: GatewayMetrics | None, outcome: WitnessOutcome) -> None:
    if metrics is None:
        return
    for name, amount in (
        ("cosigned", outcome.cosigned),
        ("pending", outcome.pending),
        ("ignored", outcome.ignored),
        ("bad_issuer_signature", outcome.bad_issuer_signature),
    ):
        if amount:
            metrics.witness_checkpoints.inc(name, amount=amount)
    for split in outcome.split_views:
        metrics.split_views.inc(split.log)


def record_rejection(metrics: GatewayMetrics | None, error: Exception) -> None:
    if metrics is not None:
        forged = isinstance(error, ForgedCosignatureError)
        metrics.witness_checkpoints.inc("forged_cosignature" if forged else "malformed")


async def answer_witness(
    node: Node, partner: str, views: Sequence[View], metrics: GatewayMetrics | None = None
) -> list[View]:
    """The server side of Witness: take ``partner``'s views, answer with ours (cosigned)."""
    try:
        outcome = await receive_views(node, partner, views)
    except (WitnessInputError, ForgedCosignatureError) as error:
        record_rejection(metrics, error)
        log.warning("witness views from %s refused: %s", partner, error)
        raise
    record_outcome(metrics, outcome)
    async with node.engine.connect() as conn:
        return await our_views(node, conn)


# -- the client loop ------------------------------------------------------------------------


class WitnessGossip:
    """Exchanges views with every active partner each round (see the module docstring)."""

    def __init__(
        self,
        node: Node,
        metrics: GatewayMetrics | None = None,
        open_channel: OpenChannel = _dial,
    ) -> None:
        self.node = node
        self.metrics = metrics
        self.open_channel = open_channel
        # partner code -> what the last exchange with it did, or why it failed.
        self.last: dict[str, WitnessOutcome | str] = {}

    async def _active_partners(self) -> list[Any]:
        async with self.node.engine.connect() as conn:
            return list(
                (
                    await conn.execute(
                        select(partners)
                        .where(partners.c.suspended.is_(False), partners.c.quarantined.is_(False))
                        .order_by(partners.c.code)
                    )
                ).all()
            )

    async def exchange_with(self, row: Any, views: Sequence[View]) -> WitnessOutcome:
        """One Witness call with partner ``row``, then the proofs of its log we wait for.

        The proofs are asked for even when the Witness call failed (a partner running an
        older version answers UNIMPLEMENTED but still proves its log); the call's error is
        raised afterwards."""
        channel = self.open_channel(self.node, row)
        failure: Exception | None = None
        outcome = WitnessOutcome()
        try:
            stub = exchange_pb2_grpc.ExchangeServiceStub(channel)
            try:
                outcome = await self._swap(stub, row.code, views)
            except Exception as error:
                failure = error

            async def fetch(old: int, new: int) -> Sequence[bytes]:
                answer = await stub.GetConsistencyProof(
                    exchange_pb2.GetConsistencyProofRequest(old_size=old, new_size=new),
                    timeout=RPC_TIMEOUT_S,
                )
                if (answer.proof.old_size, answer.proof.new_size) != (old, new):
                    raise WitnessInputError(
                        f"asked a proof {old}..{new}, got "
                        f"{answer.proof.old_size}..{answer.proof.new_size}"
                    )
                return [bytes(h) for h in answer.proof.hashes]

            outcome.merge(await prove_pending(self.node, row.code, fetch))
        finally:
            await channel.close(None)
        record_outcome(self.metrics, outcome)
        if failure is not None:
            raise failure
        return outcome

    async def _swap(
        self, stub: exchange_pb2_grpc.ExchangeServiceAsyncStub, partner: str, views: Sequence[View]
    ) -> WitnessOutcome:
        response = await stub.Witness(
            exchange_pb2.WitnessRequest(checkpoints=views_message(views)), timeout=RPC_TIMEOUT_S
        )
        try:
            # The answer is the partner's because we dialled it and checked its certificate
            # against its pinned CA for its code; nothing in the message says who it is.
            return await receive_views(self.node, partner, views_from_message(response.checkpoints))
        except (WitnessInputError, ForgedCosignatureError) as error:
            record_rejection(self.metrics, error)
            raise

    async def round(self) -> WitnessOutcome:
        """One round with every active partner, then the pending comparisons."""
        rows = await self._active_partners()
        total = WitnessOutcome()
        if rows:
            async with self.node.engine.connect() as conn:
                views = await our_views(self.node, conn)
            results = await asyncio.gather(
                *(self.exchange_with(row, views) for row in rows), return_exceptions=True
            )
            for row, result in zip(rows, results, strict=True):
                if isinstance(result, WitnessOutcome):
                    self.last[row.code] = result
                    total.merge(result)
                elif isinstance(result, Exception):
                    self.last[row.code] = _describe(result)
                    log.warning("witness exchange with %s failed: %s", row.code, _describe(result))
                else:  # a BaseException (cancellation) must not be swallowed
                    raise result
        pending = await check_pending(self.node)
        record_outcome(self.metrics, pending)
        total.merge(pending)
        return total

    async def run(self) -> None:
        """Rounds until cancelled; a failed round is logged and the next one runs on time."""
        interval = self.node.config.trust.witness_interval_s
        while True:
            try:
                await self.round()
            except Exception:
                log.exception("witness round failed")
            await asyncio.sleep(interval)


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


__all__ = [
    "WitnessGossip",
    "answer_witness",
    "record_outcome",
    "record_rejection",
    "views_from_message",
    "views_message",
]

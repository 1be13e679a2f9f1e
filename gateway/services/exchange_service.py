"""ExchangeService: the partner-facing servicer, thin over the exchange handler.

The caller's identity comes only from the TLS peer (``identify``, supplied by the server
layer); a request never names who it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from gateway.exchange import Batch, ExchangeHandler
from gateway.server.metrics import GatewayMetrics
from gateway.services.errors import guarded, guarded_stream
from gateway.witness_gossip import answer_witness, views_from_message, views_message
from mra.v1 import exchange_pb2, exchange_pb2_grpc, log_pb2, trust_pb2

Context = grpc.aio.ServicerContext[Any, Any]
Identify = Callable[[Context], Awaitable[str]]


def checkpoint_message(note: str) -> log_pb2.Checkpoint:
    """A C2SP checkpoint note on the wire: its exact UTF-8 bytes."""
    return log_pb2.Checkpoint(note=note.encode("utf-8"))


def batch_message(batch: Batch) -> exchange_pb2.SubscribeResponse:
    message = exchange_pb2.LogBatch(
        start_index=batch.start,
        checkpoint=checkpoint_message(batch.checkpoint),
        consistency=log_pb2.ConsistencyProof(
            old_size=batch.end, new_size=batch.checkpoint_size, hashes=list(batch.consistency)
        ),
    )
    for item in batch.items:
        if item.envelope is not None:
            message.entries.add(envelope=item.envelope)
        else:
            message.entries.add(leaf_hash=item.leaf_hash)
    return exchange_pb2.SubscribeResponse(batch=message)


class ExchangeServicer(exchange_pb2_grpc.ExchangeServiceServicer):
    def __init__(
        self,
        handler: ExchangeHandler,
        identify: Identify,
        *,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.handler = handler
        self.identify = identify
        self.metrics = metrics

    async def Subscribe(  # noqa: N802 - gRPC method name
        self, request: exchange_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[exchange_pb2.SubscribeResponse]:
        partner = await self.identify(context)
        stream = self.handler.subscribe(
            partner,
            int(request.from_index),
            max_batch=int(request.max_batch_entries),
            catch_up_only=request.catch_up_only,
        )
        async for batch in guarded_stream(context, stream):
            yield batch_message(batch)

    async def GetCheckpoint(  # noqa: N802
        self, request: exchange_pb2.GetCheckpointRequest, context: Context
    ) -> exchange_pb2.GetCheckpointResponse:
        await self.identify(context)
        head = await guarded(context, self.handler.head)
        return exchange_pb2.GetCheckpointResponse(checkpoint=checkpoint_message(head.checkpoint))

    async def GetInclusionProof(  # noqa: N802
        self, request: exchange_pb2.GetInclusionProofRequest, context: Context
    ) -> exchange_pb2.GetInclusionProofResponse:
        await self.identify(context)
        size = request.tree_size if request.HasField("tree_size") else None
        tree_size, hashes = await guarded(
            context, lambda: self.handler.inclusion(int(request.leaf_index), size)
        )
        head = await guarded(context, self.handler.head)
        return exchange_pb2.GetInclusionProofResponse(
            proof=log_pb2.InclusionProof(
                leaf_index=request.leaf_index, tree_size=tree_size, hashes=hashes
            ),
            checkpoint=checkpoint_message(head.checkpoint),
        )

    async def GetConsistencyProof(  # noqa: N802
        self, request: exchange_pb2.GetConsistencyProofRequest, context: Context
    ) -> exchange_pb2.GetConsistencyProofResponse:
        await self.identify(context)
        size = request.new_size if request.HasField("new_size") else None
        new_size, hashes = await guarded(
            context, lambda: self.handler.consistency(int(request.old_size), size)
        )
        head = await guarded(context, self.handler.head)
        return exchange_pb2.GetConsistencyProofResponse(
            proof=log_pb2.ConsistencyProof(
                old_size=request.old_size, new_size=new_size, hashes=hashes
            ),
            checkpoint=checkpoint_message(head.checkpoint),
        )

    async def GetTrustStatement(  # noqa: N802
        self, request: exchange_pb2.GetTrustStatementRequest, context: Context
    ) -> exchange_pb2.GetTrustStatementResponse:
        await self.identify(context)
        version = int(request.from_version) if request.HasField("from_version") else None
        statements = await guarded(context, lambda: self.handler.trust_statements(version))
        return exchange_pb2.GetTrustStatementResponse(
            statements=[trust_pb2.TrustStatement(dsse_envelope=s) for s in statements]
        )

    async def Witness(  # noqa: N802
        self, request: exchange_pb2.WitnessRequest, context: Context
    ) -> exchange_pb2.WitnessResponse:
        partner = await self.identify(context)
        node = self.handler.node
        ours = await guarded(
            context,
            lambda: answer_witness(
                node, partner, views_from_message(request.checkpoints), self.metrics
            ),
        )
        return exchange_pb2.WitnessResponse(checkpoints=views_message(ours))

"""Per-partner limits over real mTLS: concurrent streams, request rate, message size."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from gateway.config import LimitsSection
from gateway.node import Node
from gateway.server.app import GatewayServer
from gateway.server.limits import RATE_LIMITED, TOO_MANY_STREAMS, PartnerLimiter, TokenBucket
from mra.v1 import exchange_pb2, exchange_pb2_grpc, query_pb2, query_pb2_grpc
from tests.gateway.test_server_support import (
    PartnerPki,
    dial_admin,
    dial_partner,
    eventually,
    get_checkpoint,
    make_node,
    make_server,
    node_admin_identity,
    pin_partner,
)

MAX_MESSAGE = 64 * 1024


async def _serving(tmp_path: Path, **env: str) -> tuple[Node, GatewayServer, PartnerPki]:
    node = await make_node(tmp_path, **env)
    server = make_server(node)
    await server.start()
    us = PartnerPki.create("US")
    await pin_partner(node, us)
    await server.refresh_partners()
    return node, server, us


@pytest.fixture
async def streams_world(tmp_path: Path) -> AsyncIterator[tuple[GatewayServer, PartnerPki]]:
    node, server, us = await _serving(tmp_path, MRAGW_LIMITS__MAX_STREAMS_PER_PARTNER="2")
    try:
        yield server, us
    finally:
        server.stub_exchange.streams.release.set()  # type: ignore[attr-defined]
        await server.stop(grace=0)
        await node.close()


@pytest.fixture
async def rate_world(tmp_path: Path) -> AsyncIterator[tuple[GatewayServer, PartnerPki]]:
    # 0.01 tokens/s: after the burst of 3 nothing refills within the test.
    node, server, us = await _serving(
        tmp_path,
        MRAGW_LIMITS__REQUESTS_PER_SECOND="0.01",
        MRAGW_LIMITS__REQUEST_BURST="3",
    )
    try:
        yield server, us
    finally:
        await server.stop(grace=0)
        await node.close()


@pytest.fixture
async def size_world(tmp_path: Path) -> AsyncIterator[tuple[GatewayServer, PartnerPki]]:
    node, server, us = await _serving(tmp_path, MRAGW_LIMITS__MAX_MESSAGE_BYTES=str(MAX_MESSAGE))
    try:
        yield server, us
    finally:
        await server.stop(grace=0)
        await node.close()


async def test_too_many_concurrent_streams_is_resource_exhausted(
    streams_world: tuple[GatewayServer, PartnerPki],
) -> None:
    server, us = streams_world
    async with dial_partner(server, us.node_identity()) as channel:
        stub = exchange_pb2_grpc.ExchangeServiceStub(channel)
        held = [stub.Subscribe(exchange_pb2.SubscribeRequest(), timeout=30) for _ in range(2)]
        for call in held:
            await call.read()  # the first batch: the stream is open and counted
        assert server.metrics.partner_streams.value("US") == 2
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_checkpoint(channel)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many concurrent calls" in (caught.value.details() or "")
        assert server.metrics.rpc_rejected.value("partner", TOO_MANY_STREAMS, "US") == 1
        # A client that gives up on a stream frees its slot.
        held[0].cancel()

        async def admitted() -> bool:
            return await get_checkpoint(channel) == "US"

        await eventually(admitted, deadline_s=5.0)
        assert server.limiter.open_calls("US") == 1


async def test_request_rate_is_limited_per_partner(
    rate_world: tuple[GatewayServer, PartnerPki],
) -> None:
    server, us = rate_world
    async with dial_partner(server, us.node_identity()) as channel:
        for _ in range(3):
            assert await get_checkpoint(channel) == "US"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_checkpoint(channel)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "request rate" in (caught.value.details() or "")
    assert server.metrics.rpc_rejected.value("partner", RATE_LIMITED, "US") == 1
    # Another partner has its own bucket.
    kr = PartnerPki.create("KR")
    await pin_partner(server.node, kr)
    await server.refresh_partners()
    async with dial_partner(server, kr.node_identity()) as channel:
        assert await get_checkpoint(channel) == "KR"


async def test_oversized_message_is_resource_exhausted_on_both_listeners(
    size_world: tuple[GatewayServer, PartnerPki],
) -> None:
    server, us = size_world
    # The client's own limit is raised so the oversized message really reaches the server.
    generous = LimitsSection(max_message_bytes=4 * MAX_MESSAGE)
    async with dial_partner(server, us.node_identity(), limits=generous) as channel:
        raw = channel.unary_unary(
            "/mra.v1.ExchangeService/GetCheckpoint",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        # Unknown field 15, length-delimited: a well-formed message, only too big.
        big = b"\x7a" + _varint(2 * MAX_MESSAGE) + b"\0" * (2 * MAX_MESSAGE)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(big, timeout=5)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await get_checkpoint(channel) == "US"  # the connection is still usable
    async with dial_admin(server, node_admin_identity(server.node)) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(query_pb2.CheckRequest(operator_id="X" * (2 * MAX_MESSAGE)), timeout=5)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_malformed_request_bytes_are_invalid_argument_and_counted(
    streams_world: tuple[GatewayServer, PartnerPki],
) -> None:
    server, us = streams_world
    garbage = b"\xff"  # a truncated varint tag: not a protobuf message
    async with dial_partner(server, us.node_identity()) as channel:
        for method, kind in (
            ("/mra.v1.ExchangeService/GetCheckpoint", channel.unary_unary),
            ("/mra.v1.ExchangeService/Subscribe", channel.unary_stream),
        ):
            call = kind(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _complete(call(garbage, timeout=5))
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, method
        assert server.metrics.rpc_rejected.value("partner", "malformed", "US") == 2
        assert server.stub_exchange.streams.started == 0  # type: ignore[attr-defined]
        assert await get_checkpoint(channel) == "US"
    async with dial_admin(server, node_admin_identity(server.node)) as channel:
        check = channel.unary_unary(
            "/mra.v1.QueryService/Check",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await check(garbage, timeout=5)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert server.metrics.rpc_rejected.value("admin", "malformed", "") == 1


async def _complete(call: Any) -> None:
    """Await a unary call or read a response stream to its end."""
    if hasattr(call, "__aiter__"):
        async for _ in call:
            pass
    else:
        await call


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# -- the limiter without a network ------------------------------------------------------------


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one token back after half a second at 2/s
    assert not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped


def test_limiter_refusal_changes_no_state() -> None:
    now = [0.0]
    limiter = PartnerLimiter(
        LimitsSection(max_streams_per_partner=1, requests_per_second=1.0, request_burst=2),
        clock=lambda: now[0],
    )
    assert limiter.admit("US") is None
    assert limiter.admit("US") == TOO_MANY_STREAMS
    limiter.release("US")
    # The refused call took no token: one of the burst of two is left.
    assert limiter.admit("US") is None
    limiter.release("US")
    assert limiter.admit("US") == RATE_LIMITED
    assert limiter.open_calls("US") == 0
    assert limiter.admit("KR") is None  # per partner

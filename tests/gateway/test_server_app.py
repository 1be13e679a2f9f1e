"""GatewayServer life cycle: health, reflection, runtime file, background tasks, shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.node import Node
from gateway.server.app import GatewayServer, ListenError
from gateway.server.runtime import read_runtime, runtime_path
from mra.v1 import exchange_pb2, exchange_pb2_grpc
from tests.gateway.test_server_support import (
    PartnerPki,
    dial_admin,
    dial_partner,
    eventually,
    make_node,
    make_server,
    node_admin_identity,
    pin_partner,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = await make_node(tmp_path)
    try:
        yield n
    finally:
        await n.close()


@pytest.fixture
async def gateway(node: Node) -> AsyncIterator[GatewayServer]:
    server = make_server(node)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0)


async def _list_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names: set[str] = set()
    async for response in call:
        names |= {s.name for s in response.list_services_response.service}
    return names


async def test_reflection_lists_the_services_of_each_listener(
    node: Node, gateway: GatewayServer
) -> None:
    async with dial_admin(gateway, node_admin_identity(node)) as channel:
        assert await _list_services(channel) == {
            "mra.v1.QueryService",
            "mra.v1.AdminService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
    us = PartnerPki.create("US")
    await pin_partner(node, us)
    await gateway.refresh_partners()
    async with dial_partner(gateway, us.node_identity()) as channel:
        assert await _list_services(channel) == {
            "mra.v1.ExchangeService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }


async def test_health_is_serving_then_not_serving_during_shutdown(
    node: Node, gateway: GatewayServer
) -> None:
    async with dial_admin(gateway, node_admin_identity(node)) as channel:
        await asyncio.wait_for(channel.channel_ready(), 5)
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mra.v1.QueryService", "mra.v1.AdminService"):
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert (await watch.read()).status == SERVING
        stopping = asyncio.create_task(gateway.stop(grace=10))
        assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
        assert not gateway.serving
        watch.cancel()  # the last open call: shutdown need not wait out the grace
        await asyncio.wait_for(stopping, 10)


async def test_graceful_shutdown_lets_an_in_flight_stream_finish(
    node: Node, gateway: GatewayServer
) -> None:
    us = PartnerPki.create("US")
    await pin_partner(node, us)
    await gateway.refresh_partners()
    async with dial_partner(gateway, us.node_identity()) as channel:
        stub = exchange_pb2_grpc.ExchangeServiceStub(channel)
        call = stub.Subscribe(exchange_pb2.SubscribeRequest(), timeout=30)
        first = await call.read()
        assert first.batch.start_index == 0
        stopping = asyncio.create_task(gateway.stop(grace=10))
        # The stub ends its live tail when `draining` is set, as a real servicer should.
        last = await asyncio.wait_for(call.read(), 5)
        assert last.batch.start_index == 1
        assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
        assert await call.code() is grpc.StatusCode.OK
        await asyncio.wait_for(stopping, 10)
    assert gateway.stub_exchange.streams.finished == 1  # type: ignore[attr-defined]


async def test_runtime_file_names_the_bound_listeners_and_goes_away_on_stop(
    node: Node,
) -> None:
    server = make_server(node)
    listeners = await server.start()
    try:
        info = read_runtime(node.config.home)
        assert info is not None
        assert info.pid == os.getpid()
        assert info.admin == "JP"
        assert info.listen == listeners.partner
        assert not info.listen.endswith(":0")
        assert info.admin_target == listeners.admin_target
        assert info.http_url == listeners.http_url
        assert runtime_path(node.config.home).stat().st_mode & 0o777 == 0o600
    finally:
        await server.stop(grace=0)
    assert not runtime_path(node.config.home).exists()


async def test_background_tasks_run_and_are_cancelled_at_shutdown(node: Node) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def replicator() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def broken() -> None:
        raise RuntimeError("bug")

    server = make_server(node, background={"replicator": replicator, "broken": broken})
    await server.start()
    try:
        await asyncio.wait_for(started.wait(), 5)

        async def counted() -> bool:
            return server.metrics.background_failures.value("broken") == 1

        await eventually(counted, deadline_s=5)
        assert server.serving  # one failed task does not take serving down
    finally:
        await server.stop(grace=0)
    assert cancelled.is_set()


async def test_sigterm_stops_a_running_gateway(node: Node) -> None:
    server = make_server(node)
    running = asyncio.create_task(server.run())

    async def up() -> bool:
        return read_runtime(node.config.home) is not None

    await eventually(up, deadline_s=10)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, 10)
    assert server.draining.is_set()
    assert not runtime_path(node.config.home).exists()


async def test_a_taken_port_fails_start_naming_the_key(
    tmp_path: Path, gateway: GatewayServer
) -> None:
    taken = gateway.listeners.partner
    other = await make_node(tmp_path / "other", "KR", MRAGW_SERVER__LISTEN=taken)
    server = make_server(other)
    with pytest.raises(ListenError, match=r"server\.listen"):
        await server.start()
    assert not runtime_path(other.config.home).exists()

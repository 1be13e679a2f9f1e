"""Local clients against a running gateway, over real mTLS, on SQLite and PostgreSQL.

Each client is issued by :func:`gateway.clients.add_client` (what ``mragw clients add`` runs)
and dials with exactly the three files it was handed (client.key, client.pem, ca.pem). The
gateway is the real one (:class:`gateway.serve.Gateway`): real QueryService, real audit trail.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from sqlalchemy import select

from gateway.audit import (
    OPERATOR_KEY_FILE,
    audit_rows,
    operator_digest,
    read_operator_key,
    verify_audit_chain,
)
from gateway.clients import IssuedClient, add_client, revoke_client
from gateway.node import Node
from gateway.serve import Gateway
from gateway.server.tls import mtls_channel
from gateway.storage.schema import audit
from mra.v1 import query_pb2, query_pb2_grpc
from tests.cli.test_node_cli import run
from tests.gateway.nodes import FAST_ENV, eventually, make_home
from tests.gateway.test_query import NEW_JP, NEW_JP_REVOKED, publish_jp

OPERATOR = "DE000000000000003"


@dataclass
class Served:
    node: Node
    gateway: Gateway
    tmp_path: Path

    async def client(self, name: str, role: str) -> IssuedClient:
        return await add_client(self.node, name, role, self.tmp_path / name, actor="test")

    def dial(self, issued: IssuedClient) -> grpc.aio.Channel:
        return mtls_channel(
            self.gateway.server.listeners.admin_target,
            server_code=self.node.admin,
            root_pem=issued.ca.read_bytes(),
            key_pem=issued.key.read_bytes(),
            cert_pem=issued.certificate.read_bytes(),
            limits=self.node.config.limits,
        )


@pytest.fixture
async def served(tmp_path: Path, db_url: str) -> AsyncIterator[Served]:
    node = await make_home(tmp_path, "JP", db_url)
    # A fresh Node for the gateway (it disposes of its engine when it stops), as `serve` does.
    serving = Node.open(node.config.home, environ=FAST_ENV)
    gateway = Gateway(serving)
    await gateway.server.start()
    try:
        yield Served(node, gateway, tmp_path)
    finally:
        await gateway.server.stop(0)
        gateway.checker.close()
        await node.close()


def _check(operator: str = OPERATOR, issuer: str = "DE") -> query_pb2.CheckRequest:
    return query_pb2.CheckRequest(operator_id=operator, issuer=issuer)


async def _rows(node: Node) -> list[dict[str, Any]]:
    async with node.engine.connect() as conn:
        return await audit_rows(conn)


async def _raw_details(node: Node) -> list[str]:
    async with node.engine.connect() as conn:
        return list((await conn.execute(select(audit.c.detail).order_by(audit.c.id))).scalars())


async def test_risk_engine_may_check_many_and_agency_may_not(served: Served) -> None:
    risk = await served.client("risk-1", "risk-engine")
    agency = await served.client("border-police", "agency")
    async with served.dial(risk) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        response = await stub.CheckMany(
            query_pb2.CheckManyRequest(checks=[_check(), _check("DE000000000000004")]),
            timeout=10,
        )
    assert [r.issuer for r in response.responses] == ["DE", "DE"]
    assert [r.reasons[0].code for r in response.responses] == ["UNKNOWN_OPERATOR"] * 2
    before = await _rows(served.node)
    async with served.dial(agency) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CheckMany(query_pb2.CheckManyRequest(checks=[_check()]), timeout=10)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "role 'agency' may not call mra.v1.QueryService/CheckMany" in (
        caught.value.details() or ""
    )
    # Refused before the servicer: nothing was asked, nothing is audited; nor is a risk engine.
    assert await _rows(served.node) == before
    assert [r["action"] for r in before] == ["node.init", "clients.add", "clients.add"]


async def test_agency_check_and_watch_are_audited_with_a_hashed_operator(served: Served) -> None:
    agency = await served.client("border-police", "agency")
    async with served.dial(agency) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        answer = await stub.Check(_check(" de0000 0000 0000 003 "), timeout=10)
        watch = stub.Watch(query_pb2.WatchRequest(operator_ids=[OPERATOR], issuers=["DE"]))
        await watch.initial_metadata()  # sent once the Watch's starting point is fixed
        watch.cancel()
    assert answer.issuer == "DE"

    key = read_operator_key(served.node.paths.keys / OPERATOR_KEY_FILE)
    assert key is not None
    digest = operator_digest(key, OPERATOR)
    rows = await _rows(served.node)
    check, watched = rows[-2:]
    assert check["actor"] == "agency:border-police"
    assert check["action"] == "query.check"
    assert check["detail"]["client"] == "border-police"
    assert check["detail"]["method"] == "Check"
    [question] = check["detail"]["questions"]
    assert question["operator_hmac"] == digest  # the same id however it was typed
    assert question["issuer"] == "DE"
    assert watched["action"] == "query.watch"
    assert watched["actor"] == "agency:border-police"
    assert watched["detail"]["operator_hmacs"] == [digest]
    # The identifier itself is nowhere in the append-only trail.
    assert not [d for d in await _raw_details(served.node) if "000000000003" in d]
    async with served.node.engine.connect() as conn:
        assert (await verify_audit_chain(conn)).ok

    # An auditor asks "who checked this operator?" through the CLI (own thread: it runs its
    # own event loop).
    home = str(served.node.config.home)
    found = await asyncio.to_thread(
        run, "audit", "--home", home, "--operator", "DE 000000000000003", "--json"
    )
    assert found.exit_code == 0, found.output
    listed = json.loads(found.stdout)["actions"]
    assert [(a["id"], a["actor"]) for a in listed] == [
        (check["id"], "agency:border-police"),
        (watched["id"], "agency:border-police"),
    ]
    other = await asyncio.to_thread(
        run, "audit", "--home", home, "--operator", "DE000000000000004", "--json"
    )
    assert other.exit_code == 0
    assert json.loads(other.stdout)["actions"] == []


async def test_risk_engine_checks_are_not_audited(served: Served) -> None:
    risk = await served.client("risk-1", "risk-engine")
    before = await _rows(served.node)
    async with served.dial(risk) as channel:
        await query_pb2_grpc.QueryServiceStub(channel).Check(_check(), timeout=10)
    assert await _rows(served.node) == before


async def test_a_revoked_client_is_refused_by_the_running_gateway(served: Served) -> None:
    agency = await served.client("border-police", "agency")
    risk = await served.client("risk-1", "risk-engine")
    async with served.dial(agency) as channel:
        await query_pb2_grpc.QueryServiceStub(channel).Check(_check(), timeout=10)
    # Revoked the way the CLI does it: another process's connection to the database.
    revoker = Node.open(served.node.config.home, environ={})
    try:
        await revoke_client(revoker, "border-police", actor="cli")
    finally:
        await revoker.close()

    answered = 1

    async def refused() -> grpc.aio.AioRpcError | None:
        nonlocal answered
        async with served.dial(agency) as channel:
            try:
                await query_pb2_grpc.QueryServiceStub(channel).Check(_check(), timeout=10)
            except grpc.aio.AioRpcError as error:
                return error
        answered += 1  # until the gateway's next refresh, at most a poll interval
        return None

    error = await eventually(refused, deadline_s=10)
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "client certificate is revoked (local client 'border-police')"
    # Other clients, and the init admin certificate that is in no table, are unaffected.
    async with served.dial(risk) as channel:
        await query_pb2_grpc.QueryServiceStub(channel).Check(_check(), timeout=10)
    admin_key, admin_cert = served.node.tls_pair("admin")
    async with mtls_channel(
        served.gateway.server.listeners.admin_target,
        server_code=served.node.admin,
        root_pem=served.node.tls_bytes("ca.pem"),
        key_pem=admin_key,
        cert_pem=admin_cert,
        limits=served.node.config.limits,
    ) as channel:
        await query_pb2_grpc.QueryServiceStub(channel).Check(_check(), timeout=10)
    actions = [r["action"] for r in await _rows(served.node)]
    assert actions.count("clients.revoke") == 1
    # Every answered agency check is audited; the refused ones never reached the servicer.
    assert actions.count("query.check") == answered


async def test_an_open_watch_of_a_revoked_client_gets_nothing_more(served: Served) -> None:
    agency = await served.client("border-police", "agency")
    async with served.dial(agency) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        watch = stub.Watch(query_pb2.WatchRequest(issuers=["JP"]))
        await watch.initial_metadata()
        await publish_jp(served.node, NEW_JP)
        first = await asyncio.wait_for(watch.read(), 10)
        assert first.record.authorisation == "JPAEO0002"  # the stream works

        await revoke_client(served.node, "border-police", actor="cli")

        async def new_calls_refused() -> bool:
            try:
                await stub.Check(_check(), timeout=10)
            except grpc.aio.AioRpcError as error:
                return error.code() is grpc.StatusCode.UNAUTHENTICATED
            return False

        await eventually(new_calls_refused, deadline_s=10)  # the gateway has the revocation
        await publish_jp(served.node, NEW_JP_REVOKED)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(watch.read(), 10)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "client certificate is revoked" in (caught.value.details() or "")


async def test_an_agency_check_that_cannot_be_audited_is_not_answered(served: Served) -> None:
    agency = await served.client("border-police", "agency")
    (served.node.paths.keys / OPERATOR_KEY_FILE).write_text("not a key\n")
    before = await _rows(served.node)
    async with served.dial(agency) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await query_pb2_grpc.QueryServiceStub(channel).Check(_check(), timeout=10)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "audit trail is unavailable" in (caught.value.details() or "")
    assert await _rows(served.node) == before

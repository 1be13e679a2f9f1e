"""Caller identity over real mTLS: partners proven by their own pinned CA, local roles.

Each test runs a GatewayServer on 127.0.0.1 port 0 around stub servicers; certificates are made
in the test. The stubs echo the peer they were given, so the assertions are about what a real
servicer would see through current_partner() / current_local_peer().
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from crypto.pki import certificate_to_pem, generate_tls_key, issue_server_certificate
from gateway.node import Node
from gateway.server.app import GatewayServer
from gateway.server.identity import (
    NOT_A_PINNED_PARTNER,
    LocalPeer,
    PartnerPeer,
    PeerRejectedError,
    authorise_local,
    authorise_partner,
    current_peer,
    identify_partner,
)
from gateway.server.pinned import PinnedPartner, PinnedPartners
from mra.v1 import admin_pb2, admin_pb2_grpc, query_pb2, query_pb2_grpc
from tests.gateway.test_server_support import (
    NOW,
    Identity,
    PartnerPki,
    dial_admin,
    dial_partner,
    eventually,
    get_checkpoint,
    make_node,
    make_server,
    node_admin_identity,
    own_local_identity,
    peer_of,
    pin_partner,
    remove_partner,
    set_partner,
)


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


@pytest.fixture
def us() -> PartnerPki:
    return PartnerPki.create("US")


@pytest.fixture
def kr() -> PartnerPki:
    return PartnerPki.create("KR")


async def _code_of(server: GatewayServer, identity: Identity) -> grpc.StatusCode | str | None:
    """The peer the servicer saw, or the status code the call failed with."""
    async with dial_partner(server, identity) as channel:
        try:
            return await get_checkpoint(channel)
        except grpc.aio.AioRpcError as error:
            return error.code()


async def _rpc_error(server: GatewayServer, identity: Identity) -> grpc.aio.AioRpcError:
    async with dial_partner(server, identity) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_checkpoint(channel)
    return caught.value


# -- partner listener ------------------------------------------------------------------------


async def test_pinned_partner_is_identified_by_its_node_certificate(
    node: Node, gateway: GatewayServer, us: PartnerPki
) -> None:
    await pin_partner(node, us)
    await gateway.refresh_partners()
    assert await _code_of(gateway, us.node_identity()) == "US"


async def test_certificate_from_one_partners_ca_naming_another_is_unauthenticated(
    node: Node, gateway: GatewayServer, us: PartnerPki, kr: PartnerPki
) -> None:
    # Both pinned, so US's CA is in the TLS client-CA union and the handshake succeeds:
    # only the explicit per-partner check can refuse it.
    await pin_partner(node, us)
    await pin_partner(node, kr)
    await gateway.refresh_partners()
    error = await _rpc_error(gateway, us.forged_identity("KR"))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == NOT_A_PINNED_PARTNER
    # The same message as for an unknown administration: nothing about who is pinned leaks.
    assert "KR" not in (error.details() or "")
    rejected = gateway.metrics.rpc_rejected.value("partner", "unauthenticated", "")
    assert rejected == 1


async def test_certificate_from_an_unpinned_ca_fails_the_handshake(
    node: Node, gateway: GatewayServer, us: PartnerPki
) -> None:
    await pin_partner(node, us)
    await gateway.refresh_partners()
    stranger = PartnerPki.create("US")  # same code, different CA: not the pinned one
    error = await _rpc_error(gateway, stranger.node_identity())
    assert error.code() is grpc.StatusCode.UNAVAILABLE


async def test_listener_starts_with_no_partner_pinned_and_refuses_everyone(
    gateway: GatewayServer, us: PartnerPki, node: Node
) -> None:
    assert gateway.partners.current.partners == {}
    error = await _rpc_error(gateway, us.node_identity())
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    # Even this node's own certificate cannot get in (the placeholder CA has no known key).
    own = Identity(node.tls_private_key_pem("node"), node.tls_bytes("node.pem"))
    assert (await _rpc_error(gateway, own)).code() is grpc.StatusCode.UNAVAILABLE


async def test_partner_pinned_while_running_is_accepted_without_restart(
    node: Node, gateway: GatewayServer, us: PartnerPki
) -> None:
    identity = us.node_identity()
    assert await _code_of(gateway, identity) is grpc.StatusCode.UNAVAILABLE
    await pin_partner(node, us)  # as `mragw partner add` does against the database

    async def accepted() -> bool:
        return await _code_of(gateway, identity) == "US"

    # The refresh loop polls every 50 ms here; allow well over that, never a fixed sleep.
    await eventually(accepted, deadline_s=5.0)


async def test_removed_partner_is_refused_on_its_open_connection(
    node: Node, gateway: GatewayServer, us: PartnerPki
) -> None:
    await pin_partner(node, us)
    await gateway.refresh_partners()
    async with dial_partner(gateway, us.node_identity()) as channel:
        assert await get_checkpoint(channel) == "US"
        await remove_partner(node, "US")

        async def refused() -> bool:
            try:
                await get_checkpoint(channel)
            except grpc.aio.AioRpcError as error:
                return error.code() is grpc.StatusCode.UNAUTHENTICATED
            return False

        await eventually(refused, deadline_s=5.0)


async def test_suspended_partner_gets_permission_denied_naming_suspension(
    node: Node, gateway: GatewayServer, us: PartnerPki
) -> None:
    await pin_partner(node, us, suspended=True)
    await gateway.refresh_partners()
    error = await _rpc_error(gateway, us.node_identity())
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "suspended" in (error.details() or "")
    await set_partner(node, "US", suspended=False)  # `mragw partner resume`
    await gateway.refresh_partners()
    assert await _code_of(gateway, us.node_identity()) == "US"


async def test_quarantined_partner_is_still_served(
    node: Node, gateway: GatewayServer, us: PartnerPki
) -> None:
    await pin_partner(node, us)
    await set_partner(node, "US", quarantined=True, reason="forked checkpoint")
    await gateway.refresh_partners()
    assert await _code_of(gateway, us.node_identity()) == "US"


async def test_partners_local_client_certificate_is_not_a_partner_identity(
    node: Node, gateway: GatewayServer, us: PartnerPki
) -> None:
    await pin_partner(node, us)
    await gateway.refresh_partners()
    error = await _rpc_error(gateway, us.local_identity("admin"))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "not a partner identity" in (error.details() or "")


async def test_identity_comes_only_from_the_certificate_not_metadata(
    node: Node, gateway: GatewayServer, us: PartnerPki, kr: PartnerPki
) -> None:
    await pin_partner(node, us)
    await pin_partner(node, kr)
    await gateway.refresh_partners()
    async with dial_partner(gateway, us.node_identity()) as channel:
        stub_call = channel.unary_unary(
            "/mra.v1.ExchangeService/GetCheckpoint",
            request_serializer=lambda _: b"",
            response_deserializer=lambda b: b,
        )
        call = stub_call(b"", metadata=(("x-test-peer", "KR"), ("x-partner", "KR")), timeout=5)
        await call
        assert await peer_of(call) == "US"


# -- admin listener --------------------------------------------------------------------------


async def test_admin_certificate_may_call_admin_service(node: Node, gateway: GatewayServer) -> None:
    async with dial_admin(gateway, node_admin_identity(node)) as channel:
        call = admin_pb2_grpc.AdminServiceStub(channel).ListPartners(
            admin_pb2.ListPartnersRequest(), timeout=5
        )
        await call
        assert await peer_of(call) == "admin"


async def test_query_role_may_check_but_not_administer(node: Node, gateway: GatewayServer) -> None:
    async with dial_admin(gateway, own_local_identity(node, "query")) as channel:
        call = query_pb2_grpc.QueryServiceStub(channel).Check(
            query_pb2.CheckRequest(operator_id="X", issuer="US"), timeout=5
        )
        await call
        assert await peer_of(call) == "query"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin_pb2_grpc.AdminServiceStub(channel).ListPartners(
                admin_pb2.ListPartnersRequest(), timeout=5
            )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "mra.v1.AdminService" in (caught.value.details() or "")
    assert gateway.metrics.rpc_rejected.value("admin", "permission_denied", "") == 1


async def test_agency_may_check_one_at_a_time_but_not_in_bulk(
    node: Node, gateway: GatewayServer
) -> None:
    """The agency role is per method: Check yes, CheckMany (the same service) no."""
    async with dial_admin(gateway, own_local_identity(node, "agency")) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        call = stub.Check(query_pb2.CheckRequest(operator_id="X", issuer="US"), timeout=5)
        await call
        assert await peer_of(call) == "agency"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CheckMany(
                query_pb2.CheckManyRequest(
                    checks=[query_pb2.CheckRequest(operator_id="X", issuer="US")]
                ),
                timeout=5,
            )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "mra.v1.QueryService/CheckMany" in (caught.value.details() or "")


async def test_unknown_role_and_roleless_certificates_are_refused(
    node: Node, gateway: GatewayServer
) -> None:
    roleless = Identity(node.tls_private_key_pem("node"), node.tls_bytes("node.pem"))
    for identity in (own_local_identity(node, "risk"), roleless):
        async with dial_admin(gateway, identity) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await query_pb2_grpc.QueryServiceStub(channel).Check(
                    query_pb2.CheckRequest(), timeout=5
                )
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_partner_certificate_cannot_reach_the_admin_listener(
    node: Node, gateway: GatewayServer, us: PartnerPki
) -> None:
    await pin_partner(node, us)
    await gateway.refresh_partners()
    async with dial_admin(gateway, us.node_identity()) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await query_pb2_grpc.QueryServiceStub(channel).Check(
                query_pb2.CheckRequest(), timeout=5
            )
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_unimplemented_stub_method_is_unimplemented_not_unknown(
    node: Node, gateway: GatewayServer
) -> None:
    async with dial_admin(gateway, node_admin_identity(node)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await query_pb2_grpc.QueryServiceStub(channel).CheckMany(
                query_pb2.CheckManyRequest(), timeout=5
            )
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


# -- the checks without a network (table-driven) -----------------------------------------------


def _pinned(*partners: PinnedPartner) -> PinnedPartners:
    return PinnedPartners(generation=1, partners={p.code: p for p in partners})


def _expired(pki: PartnerPki) -> Identity:
    key = generate_tls_key()
    cert = issue_server_certificate(
        pki.ca,
        pki.ca_key,
        key.public_key,
        now=NOW - dt.timedelta(days=30),
        validity=dt.timedelta(days=1),
    )
    return Identity(key.to_pem(), certificate_to_pem(cert))


@pytest.fixture(scope="module")
def world() -> dict[str, PartnerPki]:
    return {
        "US": PartnerPki.create("US"),
        "KR": PartnerPki.create("KR"),
        "US2": PartnerPki.create("US"),
        "CN": PartnerPki.create("CN"),
    }


# (presented certificate, CAs pinned for US) -> expected code, None = UNAUTHENTICATED
IDENTITY_CASES = {
    "own node certificate": (lambda w: w["US"].node_identity(), ("US",), "US"),
    "second CA during a CA rotation": (lambda w: w["US2"].node_identity(), ("US", "US2"), "US"),
    "A's CA naming B": (lambda w: w["US"].forged_identity("KR"), ("US",), None),
    "unknown administration": (lambda w: w["CN"].node_identity(), ("US",), None),
    "same code, another CA": (lambda w: w["US2"].node_identity(), ("US",), None),
    "expired": (lambda w: _expired(w["US"]), ("US",), None),
    "local client of the partner": (lambda w: w["US"].local_identity("admin"), ("US",), None),
}


@pytest.mark.parametrize("case", list(IDENTITY_CASES), ids=list(IDENTITY_CASES))
def test_identify_partner_table(case: str, world: dict[str, PartnerPki]) -> None:
    make, us_cas, expected = IDENTITY_CASES[case]
    pinned = _pinned(
        PinnedPartner("US", tuple(world[name].ca for name in us_cas)),
        PinnedPartner("KR", (world["KR"].ca,)),
    )
    identity = make(world)
    if expected is None:
        with pytest.raises(PeerRejectedError) as caught:
            identify_partner(identity.cert_pem, pinned, NOW)
        assert caught.value.status is grpc.StatusCode.UNAUTHENTICATED
    else:
        assert identify_partner(identity.cert_pem, pinned, NOW).code == expected


@pytest.mark.parametrize("pem", [None, b"not a certificate"], ids=["none", "garbage"])
def test_identify_partner_without_a_readable_certificate(pem: bytes | None) -> None:
    with pytest.raises(PeerRejectedError):
        identify_partner(pem, _pinned(), NOW)


def test_authorise_partner_reads_the_current_flags() -> None:
    us = PartnerPki.create("US")
    peer = PartnerPeer("US")
    assert authorise_partner(peer, _pinned(PinnedPartner("US", (us.ca,)))) == peer
    quarantined = authorise_partner(peer, _pinned(PinnedPartner("US", (us.ca,), quarantined=True)))
    assert quarantined.quarantined
    with pytest.raises(PeerRejectedError) as caught:
        authorise_partner(peer, _pinned(PinnedPartner("US", (us.ca,), suspended=True)))
    assert caught.value.status is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(PeerRejectedError) as caught:
        authorise_partner(peer, _pinned())
    assert caught.value.status is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("role", "method", "allowed"),
    [
        ("admin", "/mra.v1.AdminService/Publish", True),
        ("admin", "/mra.v1.QueryService/Check", True),
        ("query", "/mra.v1.QueryService/Check", True),
        ("query", "/mra.v1.AdminService/Publish", False),
        ("query", "/grpc.health.v1.Health/Check", True),
        ("risk", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True),
        ("risk", "/mra.v1.QueryService/Check", False),
        ("risk-engine", "/mra.v1.QueryService/Check", True),
        ("risk-engine", "/mra.v1.QueryService/CheckMany", True),
        ("risk-engine", "/mra.v1.QueryService/Watch", True),
        ("risk-engine", "/mra.v1.AdminService/GetStatus", False),
        ("risk-engine", "/mra.v1.AdminService/Publish", False),
        ("agency", "/mra.v1.QueryService/Check", True),
        ("agency", "/mra.v1.QueryService/Watch", True),
        ("agency", "/mra.v1.QueryService/CheckMany", False),
        ("agency", "/mra.v1.AdminService/Publish", False),
        ("agency", "/grpc.health.v1.Health/Check", True),
        # A method name is matched whole: a prefix of an allowed one is not allowed.
        ("agency", "/mra.v1.QueryService/Chec", False),
    ],
)
def test_role_table(role: str, method: str, allowed: bool) -> None:
    peer = LocalPeer(role=role, common_name="x")
    if allowed:
        authorise_local(peer, method)
    else:
        with pytest.raises(PeerRejectedError):
            authorise_local(peer, method)


def test_current_peer_outside_a_call_is_a_wiring_error() -> None:
    with pytest.raises(RuntimeError):
        current_peer()

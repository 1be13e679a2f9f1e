"""A world for the serving tests: a node made by initialise_node, partner PKI made here,
stub servicers implementing the real generated interfaces, and helpers to dial.

No test lives here; the ``test_server_*`` modules import these helpers (the name keeps it inside
the files this part of the code base owns).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select, update

from crypto.keys import PrivateKeySigner, load_private_key
from crypto.pki import (
    certificate_to_pem,
    create_ca_certificate,
    dns_name_for,
    generate_tls_key,
    issue_client_certificate,
    issue_server_certificate,
)
from gateway.config import LimitsSection
from gateway.node import Node, initialise_node
from gateway.server.app import GatewayServer
from gateway.server.identity import current_local_peer, current_partner
from gateway.server.tls import mtls_channel
from gateway.storage.schema import node_state, partners
from mra.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    exchange_pb2,
    exchange_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)

NOW = dt.datetime.now(tz=dt.UTC)
PEER_HEADER = "x-test-peer"


@dataclass
class Identity:
    """A certificate and its key, as gRPC wants them (PEM bytes)."""

    key_pem: bytes
    cert_pem: bytes


@dataclass
class PartnerPki:
    """A partner administration's TLS CA, made in the test."""

    code: str
    ca_key: PrivateKeySigner
    ca: x509.Certificate

    @classmethod
    def create(cls, code: str) -> PartnerPki:
        key = generate_tls_key()
        return cls(code=code, ca_key=key, ca=create_ca_certificate(code, key, now=NOW))

    @property
    def ca_pem(self) -> bytes:
        return certificate_to_pem(self.ca)

    def node_identity(self) -> Identity:
        key = generate_tls_key()
        cert = issue_server_certificate(self.ca, self.ca_key, key.public_key, now=NOW)
        return Identity(key.to_pem(), certificate_to_pem(cert))

    def local_identity(self, role: str) -> Identity:
        key = generate_tls_key()
        cert = issue_client_certificate(self.ca, self.ca_key, key.public_key, now=NOW, role=role)
        return Identity(key.to_pem(), certificate_to_pem(cert))

    def forged_identity(self, named_code: str, *, role: str | None = None) -> Identity:
        """A certificate signed by THIS CA but naming ``named_code`` (crypto.pki refuses to)."""
        key = generate_tls_key()
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, named_code)]
        if role is not None:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, dns_name_for(named_code)))
        ca_private: Any = self.ca_key.cryptography_key
        public: Any = key.public_key.cryptography_key
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.ca.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(minutes=5))
            .not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(dns_name_for(named_code))]),
                critical=False,
            )
            .sign(ca_private, hashes.SHA256())
        )
        return Identity(key.to_pem(), certificate_to_pem(cert))


# -- the node ------------------------------------------------------------------------------


async def make_node(tmp_path: Path, code: str = "JP", **env: str) -> Node:
    """A fresh node home under ``tmp_path`` (listeners on 127.0.0.1 port 0), with overrides."""
    home = tmp_path / code.lower()
    await initialise_node(
        admin=code,
        home=home,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        db_url="",
    )
    environ = {"MRAGW_REPLICATION__POLL_INTERVAL_S": "0.05", **env}
    return Node.open(home, environ=environ)


async def pin_partner(node: Node, pki: PartnerPki, *, suspended: bool = False) -> None:
    """Insert a partners row as `mragw partner add` would, and bump node_state."""
    moment = NOW.timestamp()
    async with node.engine.begin() as conn:
        await conn.execute(
            partners.insert().values(
                code=pki.code,
                root_fingerprint="0" * 64,
                trust_version=1,
                bundle=b"",
                endpoint="127.0.0.1:1",
                ca_pem=pki.ca_pem.decode("ascii"),
                suspended=suspended,
                quarantined=False,
                reason=None,
                added_at=moment,
                updated_at=moment,
            )
        )
        await _bump(conn)


async def set_partner(node: Node, code: str, **values: Any) -> None:
    async with node.engine.begin() as conn:
        await conn.execute(update(partners).where(partners.c.code == code).values(**values))
        await _bump(conn)


async def remove_partner(node: Node, code: str) -> None:
    async with node.engine.begin() as conn:
        await conn.execute(partners.delete().where(partners.c.code == code))
        await _bump(conn)


async def _bump(conn: Any) -> None:
    value = (
        await conn.execute(select(node_state.c.value).where(node_state.c.key == "partners"))
    ).scalar_one()
    await conn.execute(
        update(node_state).where(node_state.c.key == "partners").values(value=value + 1)
    )


# -- stub servicers --------------------------------------------------------------------------


@dataclass
class StreamControl:
    """Lets a test hold Subscribe streams open and watch them end."""

    started: int = 0
    finished: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    draining: asyncio.Event | None = None


# Servicer method names are fixed by the generated interface.
# ruff: noqa: N802


class StubExchange(exchange_pb2_grpc.ExchangeServiceServicer):
    """Answers with the authenticated partner's code in trailing metadata."""

    def __init__(self) -> None:
        self.streams = StreamControl()

    async def GetCheckpoint(
        self,
        request: exchange_pb2.GetCheckpointRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> exchange_pb2.GetCheckpointResponse:
        context.set_trailing_metadata(((PEER_HEADER, current_partner().code),))
        return exchange_pb2.GetCheckpointResponse()

    async def Subscribe(
        self, request: exchange_pb2.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[exchange_pb2.SubscribeResponse]:
        current_partner()
        self.streams.started += 1
        yield exchange_pb2.SubscribeResponse(batch=exchange_pb2.LogBatch(start_index=0))
        waits = [asyncio.ensure_future(self.streams.release.wait())]
        if self.streams.draining is not None:
            waits.append(asyncio.ensure_future(self.streams.draining.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        # A clean end: one last batch, then the stream completes with OK.
        yield exchange_pb2.SubscribeResponse(batch=exchange_pb2.LogBatch(start_index=1))
        self.streams.finished += 1

    def GetInclusionProof(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    def GetConsistencyProof(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    def GetTrustStatement(self, request: Any, context: Any) -> Any:
        raise NotImplementedError


class StubQuery(query_pb2_grpc.QueryServiceServicer):
    async def Check(
        self, request: query_pb2.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> query_pb2.CheckResponse:
        peer = current_local_peer()
        context.set_trailing_metadata(((PEER_HEADER, peer.role),))
        return query_pb2.CheckResponse(issuer=request.issuer)

    def CheckMany(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    def Watch(self, request: Any, context: Any) -> Any:
        raise NotImplementedError


class StubAdmin(admin_pb2_grpc.AdminServiceServicer):
    async def ListPartners(
        self, request: admin_pb2.ListPartnersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListPartnersResponse:
        context.set_trailing_metadata(((PEER_HEADER, current_local_peer().role),))
        return admin_pb2.ListPartnersResponse()

    def Publish(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    def AddPartner(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    def RemovePartner(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    def SuspendPartner(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    def ResumePartner(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    def SetPartnerEndpoint(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    def ListKeys(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    def GetStatus(self, request: Any, context: Any) -> Any:
        raise NotImplementedError


def make_server(node: Node, *, status: Any = None, background: Any = None) -> GatewayServer:
    exchange = StubExchange()
    server = GatewayServer(
        node,
        exchange=exchange,
        query=StubQuery(),
        admin=StubAdmin(),
        status=status,
        background=background,
    )
    exchange.streams.draining = server.draining
    server.stub_exchange = exchange  # type: ignore[attr-defined]
    return server


# -- dialing ---------------------------------------------------------------------------------


def dial_partner(
    server: GatewayServer, identity: Identity, limits: LimitsSection | None = None
) -> grpc.aio.Channel:
    """Dial the partner listener presenting ``identity``, trusting the node's CA."""
    node = server.node
    return mtls_channel(
        server.listeners.partner,
        server_code=node.admin,
        root_pem=node.tls_bytes("ca.pem"),
        key_pem=identity.key_pem,
        cert_pem=identity.cert_pem,
        limits=limits or node.config.limits,
    )


def dial_admin(server: GatewayServer, identity: Identity) -> grpc.aio.Channel:
    node = server.node
    return mtls_channel(
        server.listeners.admin_target,
        server_code=node.admin,
        root_pem=node.tls_bytes("ca.pem"),
        key_pem=identity.key_pem,
        cert_pem=identity.cert_pem,
        limits=node.config.limits,
    )


def own_local_identity(node: Node, role: str) -> Identity:
    """A local client certificate from the node's own CA (as `mragw` would issue)."""
    ca_key = load_private_key(node.paths.tls_file("ca.key"), None)
    key = generate_tls_key()
    cert = issue_client_certificate(
        node.ca_certificate(), ca_key, key.public_key, now=NOW, role=role
    )
    return Identity(key.to_pem(), certificate_to_pem(cert))


def node_admin_identity(node: Node) -> Identity:
    return Identity(node.tls_private_key_pem("admin"), node.tls_bytes("admin.pem"))


async def peer_of(call: Any) -> str | None:
    """The peer the stub servicer saw, from the call's trailing metadata."""
    metadata: Mapping[str, Any] = dict(await call.trailing_metadata() or ())
    value = metadata.get(PEER_HEADER)
    return None if value is None else str(value)


async def get_checkpoint(channel: grpc.aio.Channel, deadline_s: float = 5.0) -> str | None:
    stub = exchange_pb2_grpc.ExchangeServiceStub(channel)
    call = stub.GetCheckpoint(exchange_pb2.GetCheckpointRequest(), timeout=deadline_s)
    await call
    return await peer_of(call)


async def eventually(probe: Any, *, deadline_s: float = 10.0, interval_s: float = 0.02) -> Any:
    """Poll ``probe()`` (async, returns a truthy value when done) until done or the deadline.

    Polling with a bounded deadline, not a fixed sleep: fast when the system is fast, and a
    clear failure (the last probe's error) when it is not.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    last: BaseException | None = None
    while True:
        try:
            result = await probe()
            if result:
                return result
        except Exception as error:
            last = error
        if loop.time() >= end:
            raise AssertionError(f"condition not met within {deadline_s}s (last error: {last!r})")
        await asyncio.sleep(interval_s)

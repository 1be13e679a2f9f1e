"""A hostile EU partner over valid mTLS.

The fake EU server presents EU's genuine node certificate (from a real EU home made by
``initialise_node``) and serves an ExchangeService this test controls; it signs checkpoints with
EU's real signing key where an attack needs a valid signature. JP is a real gateway replicating
from it. Each fault must end with EU quarantined, the reason naming the fault, JP's stored
replica unchanged by the bad batch, and ``partner resume`` lifting the quarantine (JP then
catches up honestly). Identical re-sends are a no-op, never a quarantine.

The last tests turn it around: callers presenting certificates that are not a pinned partner's
get nothing from a real EU gateway.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from crypto.checkpoint import Checkpoint, sign_checkpoint
from crypto.keys import PrivateKeySigner, Scheme, load_private_key
from crypto.merkle import consistency_proof, leaf_hash, root_from_leaf_hashes
from gateway.cli.main import app as cli
from gateway.demo_data import eu_records, eu_revocation, us_records
from gateway.issuer_log import IssuerLog, prepare
from gateway.node import Node
from gateway.partners import add_partner, export_bundle, set_endpoint
from gateway.query import Question
from gateway.serve import Gateway
from gateway.server.tls import mtls_channel
from gateway.storage.schema import entitlements, entries, identifiers, logs, records, tiles
from mra.v1 import envelope_pb2, exchange_pb2, exchange_pb2_grpc, log_pb2
from tests.gateway.nodes import (
    Cluster,
    assert_log_consistent,
    eventually,
    log_head,
    make_home,
    partner_row,
    records_of,
    storage_url,
)
from tests.gateway.test_server_support import Identity, PartnerPki

HONEST_START = 6  # JP first replicates entries 0..5 honestly
BATCH = 3

# Servicer method names are fixed by the generated interface.
# ruff: noqa: N802


# -- the fake EU log --------------------------------------------------------------------------


@dataclass
class FakeLog:
    """EU's log as the hostile server holds it: envelopes, whether JP may read each, and EU's
    real checkpoint key. Whatever it holds, it proves consistently (it *is* its own history)."""

    origin: str
    signer: PrivateKeySigner
    items: list[tuple[bytes, bool]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.items)

    def leaves(self) -> list[bytes]:
        return [leaf_hash(envelope) for envelope, _ in self.items]

    def root(self, size: int) -> bytes:
        return root_from_leaf_hashes(self.leaves()[:size])

    def note(self, size: int) -> str:
        return sign_checkpoint(
            Checkpoint(origin=self.origin, size=size, root_hash=self.root(size)),
            self.origin,
            self.signer,
        )

    def batch(
        self, start: int, end: int, size: int | None = None, note: str | None = None
    ) -> exchange_pb2.SubscribeResponse:
        size = self.size if size is None else size
        message = exchange_pb2.LogBatch(
            start_index=start,
            checkpoint=log_pb2.Checkpoint(note=(note or self.note(size)).encode()),
            consistency=log_pb2.ConsistencyProof(
                old_size=end,
                new_size=size,
                hashes=consistency_proof(self.leaves(), end, size) if 0 < end < size else [],
            ),
        )
        for envelope, visible in self.items[start:end]:
            if visible:
                message.entries.add(envelope=envelope)
            else:
                message.entries.add(leaf_hash=leaf_hash(envelope))
        return exchange_pb2.SubscribeResponse(batch=message)


Outgoing = exchange_pb2.SubscribeResponse | bytes | int


class HostileExchange(exchange_pb2_grpc.ExchangeServiceServicer):
    """Serves ``log`` honestly up to ``honest_size``, then whatever the test queues: a message,
    raw bytes (sent as they are), or an int N (serve honestly up to N)."""

    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.honest_size = 0
        self.queue: asyncio.Queue[Outgoing] = asyncio.Queue()
        self.sent: list[exchange_pb2.SubscribeResponse] = []
        self.open_streams = 0
        self.closed_streams = 0
        # Where consistency proofs come from (a forking server proves its fork).
        self.proof_log = log

    def _honest(self, start: int, end: int) -> list[exchange_pb2.SubscribeResponse]:
        if start == end:
            return [self.log.batch(start, end, end)]
        return [self.log.batch(s, min(s + BATCH, end), end) for s in range(start, end, BATCH)]

    async def Subscribe(
        self, request: exchange_pb2.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Outgoing]:
        self.open_streams += 1
        try:
            cursor = int(request.from_index)
            if cursor > self.honest_size:
                await context.abort(grpc.StatusCode.OUT_OF_RANGE, "beyond our log")
            for message in self._honest(cursor, self.honest_size):
                self.sent.append(message)
                yield message
            cursor = self.honest_size
            while True:
                item = await self.queue.get()
                if isinstance(item, int):
                    self.honest_size = item
                    for message in self._honest(cursor, item):
                        self.sent.append(message)
                        yield message
                    cursor = item
                else:
                    yield item
        finally:
            self.closed_streams += 1

    async def GetConsistencyProof(
        self,
        request: exchange_pb2.GetConsistencyProofRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> exchange_pb2.GetConsistencyProofResponse:
        old, new = int(request.old_size), int(request.new_size)
        return exchange_pb2.GetConsistencyProofResponse(
            proof=log_pb2.ConsistencyProof(
                old_size=old,
                new_size=new,
                hashes=consistency_proof(self.proof_log.leaves(), old, new),
            )
        )


def _passthrough(message: Outgoing) -> bytes:
    return message if isinstance(message, bytes) else bytes(message.SerializeToString())


def exchange_handler(servicer: HostileExchange) -> grpc.GenericRpcHandler:
    """The generated servicer's two methods the replicator uses, with a serializer that lets
    raw (malformed) bytes through."""
    return grpc.method_handlers_generic_handler(
        "mra.v1.ExchangeService",
        {
            "Subscribe": grpc.unary_stream_rpc_method_handler(
                servicer.Subscribe,
                request_deserializer=exchange_pb2.SubscribeRequest.FromString,
                response_serializer=_passthrough,
            ),
            "GetConsistencyProof": grpc.unary_unary_rpc_method_handler(
                servicer.GetConsistencyProof,
                request_deserializer=exchange_pb2.GetConsistencyProofRequest.FromString,
                response_serializer=_passthrough,
            ),
        },
    )


# -- the world: a real EU home (keys, certificates, genuine log), a fake EU server, real JP --


@dataclass
class World:
    eu: Node
    jp: Node
    gateway: Gateway
    fake: HostileExchange
    entry_signer: PrivateKeySigner

    @property
    def log(self) -> FakeLog:
        return self.fake.log

    def envelope(self, row: dict[str, Any]) -> bytes:
        """A record signed with EU's real entry key."""
        return prepare(records_of([row])[0], self.entry_signer).envelope

    async def partner(self) -> Any:
        return await partner_row(self.jp, "EU")

    async def quarantined(self, *words: str) -> str:
        async def probe() -> str | None:
            row = await self.partner()
            return str(row.reason) if row.quarantined else None

        reason = str(await eventually(probe, deadline_s=10))
        for word in words:
            assert word in reason, reason
        return reason

    async def replicated(self, size: int) -> None:
        async def probe() -> bool:
            head = await log_head(self.jp, "EU")
            async with self.jp.engine.connect() as conn:
                pending = (
                    await conn.execute(
                        select(entries.c.idx).where(
                            entries.c.log == "EU", entries.c.sig_state == "unverified"
                        )
                    )
                ).first()
            return head.size == size and pending is None

        await eventually(probe, deadline_s=10)

    async def resume_and_catch_up(self) -> None:
        """Lift the quarantine; the fake now serves its whole log honestly."""
        while not self.fake.queue.empty():
            self.fake.queue.get_nowait()
        self.fake.honest_size = self.log.size
        # `mragw partner resume` on JP's database, as an operator would run it.
        result = await asyncio.to_thread(
            CliRunner().invoke,
            cli,
            ["partner", "resume", "EU", "--home", str(self.jp.config.home)],
        )
        assert result.exit_code == 0, result.output
        await self.replicated(self.log.size)
        row = await self.partner()
        assert not row.quarantined, row.reason
        replica = await assert_log_consistent(self.jp, "EU")
        assert replica.root == self.log.root(self.log.size)


@contextlib.asynccontextmanager
async def hostile_world(tmp_path: Path, db_url: str) -> AsyncIterator[World]:
    # A genuine EU: home, keys, certificates, JP pinned, and a real published log (8 entries).
    jp = await make_home(tmp_path, "JP", db_url)
    eu = await make_home(tmp_path, "EU", await storage_url(db_url, tmp_path, "EU", first=False))
    bundle, fingerprint = await export_bundle(jp)
    await add_partner(eu, bundle, fingerprint, actor="test")
    await IssuerLog(eu).publish(records_of([*eu_records(), eu_revocation()]), actor="test")
    async with eu.engine.connect() as conn:
        checkpoint_signer, entry_signer = await eu.active_signers(conn)
        rows = (
            await conn.execute(
                select(entries.c.idx, entries.c.envelope)
                .where(entries.c.log == "EU")
                .order_by(entries.c.idx)
            )
        ).all()
        visible = set(
            (
                await conn.execute(select(entitlements.c.idx).where(entitlements.c.partner == "JP"))
            ).scalars()
        )
    log = FakeLog(eu.origin, checkpoint_signer)
    log.items = [(bytes(r.envelope), int(r.idx) in visible) for r in rows]
    fake = HostileExchange(log)
    fake.honest_size = HONEST_START
    assert [v for _, v in log.items] == [True, False, True, False, True, True, True, True]

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((exchange_handler(fake),))
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [(eu.tls_private_key_pem("node"), eu.tls_bytes("node.pem"))],
            root_certificates=jp.tls_bytes("ca.pem"),
            require_client_auth=True,
        ),
    )
    await server.start()
    bundle, fingerprint = await export_bundle(eu)
    await add_partner(jp, bundle, fingerprint, actor="test")
    await set_endpoint(jp, "EU", f"127.0.0.1:{port}", actor="test")
    gateway = Gateway(jp)
    await gateway.server.start()
    world = World(eu, jp, gateway, fake, entry_signer)
    try:
        await world.replicated(HONEST_START)
        yield world
    finally:
        await gateway.server.stop()
        await server.stop(0)
        await jp.close()
        await eu.close()


async def replica_snapshot(node: Node) -> dict[str, Any]:
    """Everything JP stores of EU's log (timestamps aside)."""
    async with node.engine.connect() as conn:
        head = (
            await conn.execute(
                select(
                    logs.c.size,
                    logs.c.root,
                    logs.c.frontier,
                    logs.c.checkpoint,
                    logs.c.checkpoint_size,
                    logs.c.held_checkpoint,
                    logs.c.held_size,
                ).where(logs.c.code == "EU")
            )
        ).one()
        out: dict[str, Any] = {"head": tuple(head)}
        for name, table, order in (
            ("entries", entries, entries.c.idx),
            ("tiles", tiles, tiles.c.idx),
            ("records", records, records.c.idx),
            ("identifiers", identifiers, identifiers.c.idx),
        ):
            columns = [c for c in table.c if c.name not in {"appended_at"}]
            out[name] = [
                tuple(r)
                for r in (
                    await conn.execute(select(*columns).where(table.c.log == "EU").order_by(order))
                ).all()
            ]
    return out


# -- the faults --------------------------------------------------------------------------------


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def tampered(w: World) -> list[Outgoing]:
    """The validation outcome (JP may read it) edited after signing: the root breaks."""
    message = w.log.batch(HONEST_START, w.log.size)
    entry = message.batch.entries[0]
    assert entry.WhichOneof("entry") == "envelope"
    entry.envelope = _flip(entry.envelope, len(entry.envelope) // 2)
    return [message]


def unknown_key(w: World) -> list[Outgoing]:
    stranger = PrivateKeySigner.generate(Scheme.ED25519)
    note = sign_checkpoint(
        Checkpoint(origin=w.log.origin, size=w.log.size, root_hash=w.log.root(w.log.size)),
        w.log.origin,
        stranger,
    )
    return [w.log.batch(HONEST_START, w.log.size, note=note)]


def wrong_origin(w: World) -> list[Outgoing]:
    """Signed by EU's real key under EU's key name, but for another log."""
    note = sign_checkpoint(
        Checkpoint(origin="forged.example/log", size=w.log.size, root_hash=w.log.root(w.log.size)),
        w.log.origin,
        w.log.signer,
    )
    return [w.log.batch(HONEST_START, w.log.size, note=note)]


def forged_signature(w: World) -> list[Outgoing]:
    """EU's genuine next checkpoint with its signature bytes altered (key hint intact)."""
    body, signature = w.log.note(w.log.size).rsplit("\n\u2014 ", 1)
    name, b64 = signature.rstrip("\n").split(" ")
    raw = base64.b64decode(b64)
    forged = base64.b64encode(raw[:10] + bytes([raw[10] ^ 0xFF]) + raw[11:]).decode()
    note = f"{body}\n\u2014 {name} {forged}\n"
    return [w.log.batch(HONEST_START, w.log.size, note=note)]


def rollback(w: World) -> list[Outgoing]:
    """EU answers our subscription at 6 with its genuine, older head of size 4."""
    return [w.log.batch(HONEST_START, HONEST_START, 4)]


def fork_same_size(w: World) -> list[Outgoing]:
    """A second, validly signed root for the size JP has verified."""
    other = FakeLog(w.log.origin, w.log.signer, list(w.log.items))
    other.items[2] = (w.envelope(eu_records()[2]), True)  # re-signed: new salt, new leaf
    note = other.note(HONEST_START)
    return [w.log.batch(HONEST_START, HONEST_START, HONEST_START, note=note)]


def fork_history(w: World) -> list[Outgoing]:
    """A second history re-sent from the start: entry 1 differs from the one JP verified."""
    other = FakeLog(w.log.origin, w.log.signer, list(w.log.items))
    other.items[1] = (w.envelope(eu_records()[1]), False)
    return [other.batch(0, other.size)]


def gap(w: World) -> list[Outgoing]:
    return [w.log.batch(HONEST_START + 1, w.log.size)]


def empty_entry(w: World) -> list[Outgoing]:
    message = w.log.batch(HONEST_START, w.log.size)
    message.batch.entries.add()  # neither envelope nor leaf hash
    return [message]


def short_leaf_hash(w: World) -> list[Outgoing]:
    message = w.log.batch(HONEST_START, w.log.size)
    message.batch.entries[-1].leaf_hash = b"\x00" * 31
    return [message]


def note_not_utf8(w: World) -> list[Outgoing]:
    message = w.log.batch(HONEST_START, w.log.size)
    message.batch.checkpoint.note = b"\xff\xfe" + message.batch.checkpoint.note
    return [message]


def undecodable(w: World) -> list[Outgoing]:
    # Field 1 (batch), length-delimited, claiming far more bytes than follow.
    return [b"\x0a\xff\xff\xff\x0f\x01\x02"]


def oversized(w: World) -> list[Outgoing]:
    message = w.log.batch(HONEST_START, w.log.size)
    message.batch.checkpoint.note = b"x" * (w.jp.config.limits.max_message_bytes + 1024)
    return [message]


@dataclass(frozen=True)
class Fault:
    make: Callable[[World], list[Outgoing]]
    words: tuple[str, ...]


FAULTS = {
    "tampered_entry": Fault(tampered, ("bad_proof",)),
    "unknown_key": Fault(unknown_key, ("bad_checkpoint", "no signature by required key")),
    "wrong_origin": Fault(wrong_origin, ("bad_checkpoint", "origin")),
    "forged_signature": Fault(forged_signature, ("bad_checkpoint", "does not verify")),
    "rollback": Fault(rollback, ("rollback",)),
    "fork_same_size": Fault(fork_same_size, ("fork",)),
    "fork_history": Fault(fork_history, ("fork",)),
    "gap": Fault(gap, ("gap",)),
    "empty_entry": Fault(empty_entry, ("malformed", "empty")),
    "short_leaf_hash": Fault(short_leaf_hash, ("malformed", "32 bytes")),
    "note_not_utf8": Fault(note_not_utf8, ("malformed", "UTF-8")),
    "undecodable_message": Fault(undecodable, ("malformed",)),
    "oversized_message": Fault(oversized, ("oversized",)),
}


@pytest.mark.parametrize("name", list(FAULTS))
async def test_fault_quarantines_and_changes_nothing(
    name: str, db_url: str, tmp_path: Path
) -> None:
    fault = FAULTS[name]
    async with hostile_world(tmp_path, db_url) as w:
        before = await replica_snapshot(w.jp)
        for message in fault.make(w):
            await w.fake.queue.put(message)
        await w.quarantined(*fault.words)
        assert await replica_snapshot(w.jp) == before
        status = w.gateway.replication.status("EU")
        assert status is not None
        assert sum(status.faults.values()) == 1
        await w.resume_and_catch_up()


async def test_replayed_batches_are_a_no_op(db_url: str, tmp_path: Path) -> None:
    async with hostile_world(tmp_path, db_url) as w:
        first_stream = list(w.fake.sent)
        assert len(first_stream) == 2  # 0..3 and 3..6, both with the checkpoint of size 6
        # Grow by one honestly: the checkpoint JP has verified is now 7.
        await w.fake.queue.put(HONEST_START + 1)
        await w.replicated(HONEST_START + 1)
        before = await replica_snapshot(w.jp)
        # Replay every batch sent so far, identically (older checkpoints included) ...
        for message in [*first_stream, *w.fake.sent[len(first_stream) :]]:
            await w.fake.queue.put(message)
        # ... then the rest of the log honestly: applied after the replays, in stream order.
        await w.fake.queue.put(w.log.size)
        await w.replicated(w.log.size)
        row = await w.partner()
        assert not row.quarantined, row.reason
        after = await replica_snapshot(w.jp)
        assert after["entries"][: HONEST_START + 1] == before["entries"]
        assert await assert_log_consistent(w.jp, "EU")
        assert w.gateway.replication.status("EU").faults == {}  # type: ignore[union-attr]


async def test_fork_beyond_the_held_leaves_is_caught_by_a_fetched_proof(
    db_url: str, tmp_path: Path
) -> None:
    """JP holds 7 leaves and EU's genuine checkpoint of size 8. EU then signs a size-9 tree
    whose first 7 leaves agree but whose leaf 7 differs: the batch proof alone passes, the
    consistency proof 8 -> 9 fetched from EU cannot."""
    async with hostile_world(tmp_path, db_url) as w:
        await w.fake.queue.put(w.log.batch(HONEST_START, HONEST_START + 1))  # checkpoint 8
        await w.replicated(HONEST_START + 1)
        assert (await log_head(w.jp, "EU")).checkpoint_size == w.log.size
        before = await replica_snapshot(w.jp)
        fork = FakeLog(w.log.origin, w.log.signer, list(w.log.items))
        fork.items.insert(HONEST_START + 1, (w.envelope(eu_records()[0]), True))
        w.fake.proof_log = fork
        await w.fake.queue.put(fork.batch(HONEST_START + 1, HONEST_START + 1))
        await w.quarantined("fork", "not consistent")
        assert await replica_snapshot(w.jp) == before
        w.fake.proof_log = w.log
        await w.resume_and_catch_up()


async def _inject_consistent_bad_entry(w: World, envelope: bytes) -> int:
    """EU's log gains ``envelope`` at index 6 (the tree and checkpoints stay consistent), then
    two more genuine entries; two batches are queued at once."""
    bad = HONEST_START
    w.log.items.insert(bad, (envelope, True))
    await w.fake.queue.put(w.log.batch(bad, bad + 1))
    await w.fake.queue.put(w.log.batch(bad + 1, w.log.size))
    return bad


async def _stopped_after(w: World, bad: int, words: tuple[str, ...]) -> None:
    await w.quarantined(*words)

    # The replicator stops: it hangs up on the hostile stream and applies nothing more.
    async def hung_up() -> bool:
        return w.fake.closed_streams >= 1

    await eventually(hung_up, deadline_s=10)
    # Entries after the bad one may be stored (queued batches are stored together; the tree
    # over them verified), but none of them is judged or used until the partner is resumed.
    head = await log_head(w.jp, "EU")
    assert head.size >= bad + 1
    async with w.jp.engine.connect() as conn:
        states = dict(
            (
                await conn.execute(
                    select(entries.c.idx, entries.c.sig_state).where(
                        entries.c.log == "EU", entries.c.idx >= bad
                    )
                )
            ).all()
        )
        indexed = (
            await conn.execute(
                select(records.c.idx).where(records.c.log == "EU", records.c.idx >= bad)
            )
        ).all()
    assert states.pop(bad) == "invalid"
    assert set(states.values()) <= {"unverified"}, states
    assert indexed == []


async def test_entry_with_a_bad_signature_is_marked_invalid_and_quarantines(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.replication")
    async with hostile_world(tmp_path, db_url) as w:
        genuine = envelope_pb2.Envelope.FromString(w.envelope(eu_records()[0]))
        genuine.signatures[0].sig = _flip(genuine.signatures[0].sig, 5)
        bad = await _inject_consistent_bad_entry(w, genuine.SerializeToString())
        await _stopped_after(w, bad, ("invalid entry", str(bad)))
        # The warning carries the partner and the entry index as log fields (JSON logs).
        [line] = [r for r in caplog.records if r.name == "gateway.replication"]
        assert (line.__dict__["partner"], line.__dict__["entry"]) == ("EU", bad)
        await w.resume_and_catch_up()
        # The invalid entry is never used: the DE holder is known from entry 0 only.
        answer = await w.gateway.checker.check(Question(operator_id="DE4711000012345", issuer="EU"))
        assert answer.types[0].record is not None
        assert answer.types[0].record.idx == 0


async def test_record_of_another_issuer_is_invalid_and_quarantines(
    db_url: str, tmp_path: Path
) -> None:
    async with hostile_world(tmp_path, db_url) as w:
        # Validly signed by EU's real entry key, but a US record: not EU's to publish.
        bad = await _inject_consistent_bad_entry(w, w.envelope(us_records()[0]))
        await _stopped_after(w, bad, ("issuer", "US"))
        await w.resume_and_catch_up()
        answer = await w.gateway.checker.check(Question(operator_id="USGRELAK1234CHI", issuer="US"))
        assert answer.operator is None


# -- callers that are not a pinned partner ------------------------------------------------------


def _pki_of(node: Node) -> PartnerPki:
    return PartnerPki(
        code=node.admin,
        ca_key=load_private_key(node.paths.tls_file("ca.key"), None),
        ca=node.ca_certificate(),
    )


async def _subscribe_as(eu_gateway: Gateway, identity: Identity) -> tuple[grpc.StatusCode, int]:
    """Catch up on EU's log presenting ``identity``: the status and how many batches came."""
    eu = eu_gateway.node
    received = 0
    channel = mtls_channel(
        eu_gateway.server.listeners.partner,
        server_code="EU",
        root_pem=eu.tls_bytes("ca.pem"),
        key_pem=identity.key_pem,
        cert_pem=identity.cert_pem,
        limits=eu.config.limits,
    )
    async with channel:
        stub = exchange_pb2_grpc.ExchangeServiceStub(channel)
        request = exchange_pb2.SubscribeRequest(from_index=0, catch_up_only=True)
        try:
            async for message in stub.Subscribe(request, timeout=10):
                received += len(message.batch.entries)
        except grpc.aio.AioRpcError as error:
            return error.code(), received
    return grpc.StatusCode.OK, received


Make = Callable[[Cluster], Awaitable[Identity]]


async def _jp_ca_naming_us(cluster: Cluster) -> Identity:
    return _pki_of(cluster.node("JP")).forged_identity("US")


async def _jp_ca_naming_unpinned(cluster: Cluster) -> Identity:
    return _pki_of(cluster.node("JP")).forged_identity("KR")


async def _jp_local_admin(cluster: Cluster) -> Identity:
    jp = cluster.node("JP")
    return Identity(jp.tls_private_key_pem("admin"), jp.tls_bytes("admin.pem"))


async def _unpinned_ca(cluster: Cluster) -> Identity:
    return PartnerPki.create("JP").node_identity()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        # The TLS layer only admits pinned partners' CAs: the handshake itself fails.
        pytest.param(_unpinned_ca, grpc.StatusCode.UNAVAILABLE, id="ca-not-pinned"),
        pytest.param(_jp_ca_naming_us, grpc.StatusCode.UNAUTHENTICATED, id="jp-ca-names-us"),
        pytest.param(_jp_ca_naming_unpinned, grpc.StatusCode.UNAUTHENTICATED, id="jp-ca-names-kr"),
        pytest.param(_jp_local_admin, grpc.StatusCode.UNAUTHENTICATED, id="jp-local-client"),
    ],
)
async def test_caller_not_a_pinned_partner_gets_nothing(
    make: Make, expected: grpc.StatusCode, tmp_path: Path
) -> None:
    cluster = Cluster(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'eu.db'}")
    try:
        for code in ("EU", "JP", "US"):
            await cluster.add(code)
        await cluster.pin("EU", "JP")
        await cluster.pin("EU", "US")
        await cluster.publish("EU", eu_records())
        eu_gateway = await cluster.start("EU")
        # JP's genuine node certificate reads its entitled share of EU's log.
        jp = cluster.node("JP")
        genuine = Identity(jp.tls_private_key_pem("node"), jp.tls_bytes("node.pem"))
        assert await _subscribe_as(eu_gateway, genuine) == (grpc.StatusCode.OK, 7)
        assert await _subscribe_as(eu_gateway, await make(cluster)) == (expected, 0)
    finally:
        await cluster.close()


async def test_bad_requests_from_a_pinned_partner_are_refused_and_change_nothing(
    tmp_path: Path,
) -> None:
    """JP's genuine certificate, hostile requests to a real EU gateway: undecodable bytes,
    an oversized message, one stream too many. Each gets its precise status; EU's state stays."""
    cluster = Cluster(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'eu.db'}")
    try:
        await cluster.add("EU")
        await cluster.add("JP")
        await cluster.pin("EU", "JP")
        await cluster.publish("EU", eu_records())
        eu_gateway = await cluster.start("EU")
        eu = cluster.node("EU")
        head = await log_head(eu, "EU")
        jp = cluster.node("JP")
        limits = eu.config.limits
        big = dataclasses.replace(limits, max_message_bytes=4 * limits.max_message_bytes)
        channel = mtls_channel(
            eu_gateway.server.listeners.partner,
            server_code="EU",
            root_pem=eu.tls_bytes("ca.pem"),
            key_pem=jp.tls_private_key_pem("node"),
            cert_pem=jp.tls_bytes("node.pem"),
            limits=big,
        )
        async with channel:
            raw = channel.unary_stream(
                "/mra.v1.ExchangeService/Subscribe",
                request_serializer=None,
                response_deserializer=None,
            )

            async def status_of(request: bytes) -> grpc.StatusCode:
                try:
                    async for _ in raw(request, timeout=10):
                        pass
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            # from_index: a varint that never ends.
            assert await status_of(b"\x08\xff\xff\xff") is grpc.StatusCode.INVALID_ARGUMENT
            # An unknown field carrying more than the listener accepts.
            size = limits.max_message_bytes + 1024
            payload = b"\x7a" + _varint(size) + b"\x00" * size
            assert await status_of(payload) is grpc.StatusCode.RESOURCE_EXHAUSTED

            stub = exchange_pb2_grpc.ExchangeServiceStub(channel)
            streams = []
            for _ in range(limits.max_streams_per_partner):
                call = stub.Subscribe(exchange_pb2.SubscribeRequest(from_index=0))
                assert len((await call.read()).batch.entries) == 7
                streams.append(call)
            one_more = stub.Subscribe(exchange_pb2.SubscribeRequest(from_index=0))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await one_more.read()
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            for call in streams:
                call.cancel()

        assert await log_head(eu, "EU") == head
        row = await partner_row(eu, "JP")
        assert (row.quarantined, row.suspended, row.reason) == (False, False, None)
    finally:
        await cluster.close()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)

"""Witnessing between real gateways: cosignatures exchanged over ExchangeService.Witness (real
mTLS), forged cosignatures refused, logs not held ignored, and split views (an issuer showing
two partners two histories, signed with its real key) quarantining the issuer at both.

Every test runs on SQLite and on PostgreSQL (one fresh database per node).
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from crypto.checkpoint import (
    Checkpoint,
    NoteSignature,
    parse_note,
    sign_checkpoint,
    verify_checkpoint,
)
from crypto.cosignature import add_cosignature, cosign, find_cosignature
from crypto.keys import PrivateKeySigner, PublicKey, Scheme
from gateway.alerts import QUARANTINE
from gateway.cli.main import app as cli
from gateway.demo_data import eu_records, jp_records, us_records
from gateway.node import Node, now_utc
from gateway.partners import set_endpoint
from gateway.server.tls import partner_channel
from gateway.status import node_status
from gateway.storage.schema import alerts, cosignatures, logs, partners, witnessed
from gateway.trust import witness_name
from gateway.witness import (
    SPLIT_VIEW,
    ForgedCosignatureError,
    View,
    WitnessInputError,
    receive_views,
    witness_keys,
)
from mra.v1 import exchange_pb2, exchange_pb2_grpc, log_pb2
from tests.gateway.nodes import cluster_of, eventually, partner_row
from tests.gateway.test_hostile_partner import FakeLog, HostileExchange, exchange_handler

# Background rounds every 0.1 s where a test relies on the loop; else never during a test, so
# that only the exchanges a test makes change state.
LOOP = {"MRAGW_TRUST__WITNESS_INTERVAL_S": "0.1"}
QUIET = {"MRAGW_TRUST__WITNESS_INTERVAL_S": "3600"}


# -- helpers ----------------------------------------------------------------------------------


async def held_note(node: Node, code: str) -> str:
    """The latest checkpoint ``node`` holds every leaf of, of log ``code``."""
    async with node.engine.connect() as conn:
        row = (await conn.execute(select(logs).where(logs.c.code == code))).one()
    note = row.checkpoint if row.own else row.held_checkpoint
    assert note, f"{node.admin} holds no checkpoint of {code}"
    return str(note)


async def checkpoint_signer(node: Node) -> PrivateKeySigner:
    async with node.engine.connect() as conn:
        return (await node.checkpoint_signers(conn))[0]


async def cosign_as(
    witness: Node,
    note: str,
    *,
    signer: PrivateKeySigner | None = None,
    timestamp: int | None = None,
) -> str:
    """``note`` with a cosignature under ``witness``'s name (by its real key by default)."""
    key = signer or await checkpoint_signer(witness)
    line = cosign(note, witness_name(witness.admin), key, timestamp or int(time.time()))
    return add_cosignature(note, line).to_text()


async def keys_of(node: Node) -> list[PublicKey]:
    async with node.engine.connect() as conn:
        statement = await node.trust_statement(conn)
    return witness_keys(statement, now_utc())


async def rows(node: Node, table: Any) -> list[tuple[Any, ...]]:
    async with node.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(select(table))).all()]


async def witness_state(node: Node) -> dict[str, Any]:
    """Everything witnessing may change at ``node``."""
    return {
        "cosignatures": await rows(node, cosignatures),
        "witnessed": await rows(node, witnessed),
        "alerts": await rows(node, alerts),
        "partners": [
            tuple(r) for r in await _select(node, partners.c.code, partners.c.quarantined)
        ],
    }


async def _select(node: Node, *columns: Any) -> list[Any]:
    async with node.engine.connect() as conn:
        return list((await conn.execute(select(*columns))).all())


async def open_split_views(node: Node) -> list[Any]:
    async with node.engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(alerts).where(alerts.c.kind == SPLIT_VIEW, alerts.c.cleared.is_(False))
                )
            ).all()
        )


def b64(root: bytes) -> str:
    return base64.b64encode(root).decode()


async def run_cli(*args: str) -> Any:
    # The CLI runs its own event loop: keep it off this one.
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


@asynccontextmanager
async def fake_issuer(issuer: Node, log: FakeLog, client: Node) -> AsyncIterator[HostileExchange]:
    """``issuer``'s log as ``log`` says, served to ``client`` only, with ``issuer``'s genuine
    node certificate: what a partner sees of an issuer that shows each partner its own
    history. Partners dial it where ``client``'s endpoint for ``issuer`` points."""
    fake = HostileExchange(log)
    fake.honest_size = log.size
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((exchange_handler(fake),))
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [(issuer.tls_private_key_pem("node"), issuer.tls_bytes("node.pem"))],
            root_certificates=client.tls_bytes("ca.pem"),
            require_client_auth=True,
        ),
    )
    await server.start()
    try:
        await set_endpoint(client, issuer.admin, f"127.0.0.1:{port}", actor="test")
        yield fake
    finally:
        await server.stop(0)


# -- (a) three gateways witness each other --------------------------------------------------


async def test_three_gateways_cosign_each_others_latest_checkpoints(
    db_url: str, tmp_path: Path
) -> None:
    async with cluster_of(tmp_path, db_url, ("EU", "JP", "US"), LOOP, start=True) as cluster:
        await cluster.connect("EU", "JP")
        await cluster.connect("EU", "US")
        await cluster.connect("JP", "US")
        sizes = {}
        for code, records in (("EU", eu_records()), ("JP", jp_records()), ("US", us_records())):
            sizes[code] = (await cluster.publish(code, records)).tree_size
        for at in ("EU", "JP", "US"):
            for code in ("EU", "JP", "US"):
                if code != at:
                    await cluster.wait_replicated(at, code, sizes[code])

        async def everyone_witnessed() -> bool:
            for code in ("EU", "JP", "US"):
                report = await node_status(cluster.node(code))
                # Our own log: both partners cosigned it. A partner's log: the third one did
                # (the issuer's cosignature of its own log does not count).
                if report["log_witnesses"] != 2:
                    return False
                if [p["witnesses"] for p in report["partners"]] != [1, 1]:
                    return False
            return True

        # The background loop (serve's "witness" task) does the exchanging.
        await eventually(everyone_witnessed, deadline_s=30)

        # Every stored cosignature of a held checkpoint verifies with crypto.cosignature, by
        # the witness's published key, on exactly the checkpoint we hold.
        verified = 0
        for at in ("EU", "JP", "US"):
            node = cluster.node(at)
            for row in await _select(node, cosignatures):
                note = parse_note(await held_note(node, row.log))
                if note.checkpoint().size != row.size:
                    continue  # an older head some witness cosigned on the way
                assert note.checkpoint().root_hash == bytes(row.root)
                cosigned = add_cosignature(note, row.line)
                witness = cluster.node(row.witness)
                found = [
                    find_cosignature(cosigned, witness_name(row.witness), key)
                    for key in await keys_of(witness)
                ]
                assert any(f is not None and f.timestamp == row.timestamp for f in found), row
                assert row.witness not in {at, row.log}
                verified += 1
        # Per node: its own log's 2 witnesses and 1 witness of each of its 2 partners' logs.
        assert verified == 3 * (2 + 1 + 1)
        for at in ("EU", "JP", "US"):
            assert await open_split_views(cluster.node(at)) == []


# -- (b) forged cosignatures ----------------------------------------------------------------


def _edit_cosignature(note: str, name: str, edit: Any) -> str:
    """``note`` with the blob (key ID || timestamp || signature) of ``name``'s line edited."""
    parsed = parse_note(note)
    lines = []
    for sig in parsed.signatures:
        if sig.name == name:
            blob = edit(sig.key_hint + sig.signature)
            sig = NoteSignature(sig.name, blob[:4], blob[4:])  # noqa: PLW2901 - the edit
        lines.append(sig.line())
    return parsed.body.decode() + "\n" + "".join(lines)


def _flip_signature_byte(note: str, name: str) -> str:
    return _edit_cosignature(note, name, lambda b: b[:-5] + bytes([b[-5] ^ 0x01]) + b[-4:])


def _edit_timestamp(note: str, name: str) -> str:
    def earlier(blob: bytes) -> bytes:
        (stamp,) = struct.unpack(">Q", blob[4:12])
        return blob[:4] + struct.pack(">Q", stamp - 1) + blob[12:]

    return _edit_cosignature(note, name, earlier)


async def test_forged_cosignatures_are_refused_and_store_nothing(
    db_url: str, tmp_path: Path
) -> None:
    async with cluster_of(tmp_path, db_url, ("EU", "JP", "US"), QUIET, start=False) as cluster:
        await cluster.connect("EU", "JP")
        await cluster.connect("EU", "US")
        await cluster.publish("EU", eu_records())
        eu, jp, us = cluster.node("EU"), cluster.node("JP"), cluster.node("US")
        note = await held_note(eu, "EU")
        name = witness_name("JP")
        good = await cosign_as(jp, note)
        stranger = PrivateKeySigner.generate(Scheme.ED25519)
        other_root = sign_checkpoint(
            Checkpoint(eu.origin, parse_note(note).checkpoint().size, b"\x07" * 32),
            eu.origin,
            await checkpoint_signer(eu),
        )
        moved_line = parse_note(await cosign_as(jp, other_root)).signatures[-1].line()
        jp_own = await cosign_as(jp, await held_note(jp, "JP"))
        before = await witness_state(eu)

        cases: list[tuple[str, list[View], type[Exception], str]] = [
            (
                "signature bytes altered",
                [View("EU", _flip_signature_byte(good, name))],
                ForgedCosignatureError,
                "does not verify",
            ),
            (
                "timestamp edited after signing",
                [View("EU", _edit_timestamp(good, name))],
                ForgedCosignatureError,
                "does not verify",
            ),
            (
                "a key JP never published",
                [View("EU", await cosign_as(jp, note, signer=stranger))],
                ForgedCosignatureError,
                "not by a valid key of JP's trust statement",
            ),
            (
                "US's genuine key under JP's name",
                [View("EU", await cosign_as(jp, note, signer=await checkpoint_signer(us)))],
                ForgedCosignatureError,
                "not by a valid key of JP's trust statement",
            ),
            (
                "JP's cosignature of another checkpoint",
                [View("EU", add_cosignature(note, moved_line).to_text())],
                ForgedCosignatureError,
                "does not verify",
            ),
            (
                "dated a day ahead",
                [View("EU", await cosign_as(jp, note, timestamp=int(time.time()) + 86400))],
                ForgedCosignatureError,
                "in the future",
            ),
            ("no cosignature by JP", [View("EU", note)], WitnessInputError, "no cosignature"),
            (
                "one forged view spoils the exchange",
                [View("JP", jp_own), View("EU", _flip_signature_byte(good, name))],
                ForgedCosignatureError,
                "does not verify",
            ),
        ]
        for case, views, error, words in cases:
            with pytest.raises(error, match=words):
                await receive_views(eu, "JP", views)
            assert await witness_state(eu) == before, case

        # The genuine cosignature is accepted and stored, so the checks above were not vacuous.
        outcome = await receive_views(eu, "JP", [View("EU", good)])
        assert (outcome.cosigned, outcome.split_views) == (1, [])
        stored = await _select(eu, cosignatures)
        assert [(r.log, r.witness, r.size) for r in stored] == [
            ("EU", "JP", parse_note(note).checkpoint().size)
        ]
        assert stored[0].line == parse_note(good).signatures[-1].line()


# -- (d) logs not held, bad issuer signatures -----------------------------------------------


async def test_checkpoints_of_logs_not_held_or_not_signed_by_the_issuer_are_ignored(
    db_url: str, tmp_path: Path
) -> None:
    async with cluster_of(tmp_path, db_url, ("EU", "JP", "US"), QUIET, start=False) as cluster:
        await cluster.connect("EU", "JP")
        await cluster.connect("JP", "US")  # EU does not pin US
        await cluster.publish("EU", eu_records())
        await cluster.publish("US", us_records())
        eu, jp, us = cluster.node("EU"), cluster.node("JP"), cluster.node("US")
        us_view = View("US", await cosign_as(jp, await held_note(us, "US")))
        # EU's origin and size, signed by a key EU never published.
        real = parse_note(await held_note(eu, "EU")).checkpoint()
        impostor = PrivateKeySigner.generate(Scheme.ED25519)
        unsigned = sign_checkpoint(
            Checkpoint(eu.origin, real.size, b"\x09" * 32), eu.origin, impostor
        )
        before = await witness_state(eu)

        outcome = await receive_views(
            eu, "JP", [us_view, View("EU", await cosign_as(jp, unsigned))]
        )
        assert (outcome.ignored, outcome.bad_issuer_signature) == (1, 1)
        assert (outcome.cosigned, outcome.pending, outcome.split_views) == (0, 0, [])
        # Nothing stored, nobody quarantined, no alert: a relayed bad signature proves nothing.
        assert await witness_state(eu) == before

        good = View("EU", await cosign_as(jp, await held_note(eu, "EU")))
        outcome = await receive_views(eu, "JP", [us_view, good])
        assert (outcome.ignored, outcome.cosigned) == (1, 1)
        assert {r.log for r in await _select(eu, cosignatures)} == {"EU"}


# -- (c) split views --------------------------------------------------------------------------


def histories(origin: str, signer: PrivateKeySigner, size: int) -> tuple[FakeLog, FakeLog]:
    """Two histories of one log, both signed with the issuer's real key: entry 2 differs."""
    shown_jp = FakeLog(origin, signer, [(f"EU entry {i}".encode(), False) for i in range(size)])
    shown_us = FakeLog(origin, signer, list(shown_jp.items))
    shown_us.items[2] = (b"another EU entry 2", False)
    return shown_jp, shown_us


async def test_split_view_between_two_partners_quarantines_the_issuer_at_both(
    db_url: str, tmp_path: Path
) -> None:
    async with cluster_of(tmp_path, db_url, ("EU", "JP", "US"), QUIET, start=False) as cluster:
        eu = cluster.node("EU")  # never served: EU's two faces are fake servers with its keys
        for code in ("JP", "US"):
            await cluster.start(code)
        await cluster.connect("JP", "US")
        shown_jp, shown_us = histories(eu.origin, await checkpoint_signer(eu), 7)
        await cluster.pin("JP", "EU")
        await cluster.pin("US", "EU")
        jp, us = cluster.node("JP"), cluster.node("US")
        async with fake_issuer(eu, shown_jp, jp), fake_issuer(eu, shown_us, us):
            await cluster.wait_replicated("JP", "EU", 7)
            await cluster.wait_replicated("US", "EU", 7)
            jp_note, us_note = await held_note(jp, "EU"), await held_note(us, "EU")
            jp_cp, us_cp = parse_note(jp_note).checkpoint(), parse_note(us_note).checkpoint()
            assert jp_cp.size == us_cp.size == 7
            assert jp_cp.root_hash != us_cp.root_hash

            # JP and US exchange views (JP dials US): both see both checkpoints.
            outcome = await cluster.gateways["JP"].witness.round()
            assert [s.log for s in outcome.split_views] == ["EU"]

            for node, mine, theirs, other in ((jp, jp_cp, us_cp, "US"), (us, us_cp, jp_cp, "JP")):
                row = await partner_row(node, "EU")
                assert row.quarantined, node.admin
                assert str(row.reason).startswith("split view of EU's log"), row.reason
                found = await open_split_views(node)
                assert len(found) == 1, node.admin
                alert = found[0]
                assert alert.subject == "EU"
                for words in (
                    f"showed {node.admin} a checkpoint of size 7 with root {b64(mine.root_hash)}",
                    f"{other} one of size 7 with root {b64(theirs.root_hash)}",
                    "same size, different roots",
                ):
                    assert words in alert.message, alert.message
                # The evidence: both notes, each signed by EU's real key.
                detail = json.loads(alert.detail)
                evidence = {c["holder"]: c["note"] for c in detail["checkpoints"]}
                assert set(evidence) == {"JP", "US"}
                eu_key = {eu.origin: (await checkpoint_signer(eu)).public_key}
                assert verify_checkpoint(evidence["JP"], eu_key, eu.origin) == jp_cp
                assert verify_checkpoint(evidence["US"], eu_key, eu.origin) == us_cp
                report = await node_status(node)
                # The split view, then the quarantine it caused (each its own alert).
                assert [(a["kind"], a["subject"]) for a in report["alerts"]] == [
                    (SPLIT_VIEW, "EU"),
                    (QUARANTINE, "EU"),
                ]
                assert report["alerts"][0]["message"] == alert.message
                assert report["alerts"][1]["message"].startswith("partner EU quarantined: split")

            # Idempotent: the same pair seen again raises no second alert.
            await cluster.gateways["US"].witness.round()
            await cluster.gateways["JP"].witness.round()
            for node in (jp, us):
                assert len(await open_split_views(node)) == 1

        await cluster.stop("JP")
        result = await run_cli("status", "--home", str(jp.config.home))
        assert result.exit_code == 0, result.output
        assert "ALERT split_view EU: split view of EU's log" in result.stdout
        assert "EU: quarantined" in result.stdout


async def test_split_view_at_different_sizes_is_caught_by_a_proof_that_fails(
    db_url: str, tmp_path: Path
) -> None:
    """JP holds EU's history A at 7, US holds history B at 9 (B's first 7 entries differ).
    US holds the leaves at 7: its tree there is not A's root -> split view at once. JP cannot
    tell until EU proves B's 9 consistent with A's 7: an unanswered request proves nothing;
    a proof that does not verify is a split view."""
    async with cluster_of(tmp_path, db_url, ("EU", "JP", "US"), QUIET, start=False) as cluster:
        eu = cluster.node("EU")
        for code in ("JP", "US"):
            await cluster.start(code)
        await cluster.connect("JP", "US")
        shown_jp, shown_us = histories(eu.origin, await checkpoint_signer(eu), 7)
        shown_us.items.extend([(b"EU entry 7", False), (b"EU entry 8", False)])
        await cluster.pin("JP", "EU")
        await cluster.pin("US", "EU")
        jp, us = cluster.node("JP"), cluster.node("US")
        async with fake_issuer(eu, shown_jp, jp) as to_jp, fake_issuer(eu, shown_us, us):
            await cluster.wait_replicated("JP", "EU", 7)
            await cluster.wait_replicated("US", "EU", 9)
            witness = cluster.gateways["JP"].witness

            await witness.round()
            # US compared A's 7 with its own tree at 7 and caught it.
            assert (await partner_row(us, "EU")).quarantined
            [at_us] = await open_split_views(us)
            assert f"the tree US holds has root {b64(shown_us.root(7))} at size 7" in at_us.message
            # JP waits: US's 9 is beyond its replica, and EU (honest to JP about its 7 only)
            # cannot answer a proof up to 9.
            await witness.round()
            assert not (await partner_row(jp, "EU")).quarantined
            assert [(r.log, r.witness, r.size) for r in await _select(jp, witnessed)] == [
                ("EU", "US", 9)
            ]

            # EU now answers with B's proof, which does not lead from JP's root at 7.
            to_jp.proof_log = shown_us
            await witness.round()
            row = await partner_row(jp, "EU")
            assert row.quarantined
            assert "no valid consistency proof from 7 to 9" in str(row.reason)
            [at_jp] = await open_split_views(jp)
            assert b64(shown_jp.root(7)) in at_jp.message
            assert b64(shown_us.root(9)) in at_jp.message


# -- (e) the Witness RPC over real mTLS -----------------------------------------------------


async def test_witness_rpc_over_mtls_answers_and_refuses_malformed_input(
    db_url: str, tmp_path: Path
) -> None:
    async with cluster_of(tmp_path, db_url, ("EU", "JP"), QUIET, start=True) as cluster:
        await cluster.connect("EU", "JP")
        size = (await cluster.publish("EU", eu_records())).tree_size
        await cluster.wait_replicated("JP", "EU", size)
        eu, jp = cluster.node("EU"), cluster.node("JP")
        good = await cosign_as(jp, await held_note(jp, "EU"))
        view = exchange_pb2.WitnessedCheckpoint(
            log="EU", checkpoint=log_pb2.Checkpoint(note=good.encode())
        )
        row = await partner_row(jp, "EU")
        before = await witness_state(eu)
        channel = partner_channel(jp, "EU", cluster.endpoints["EU"], row.ca_pem)
        try:
            stub = exchange_pb2_grpc.ExchangeServiceStub(channel)

            def request(*items: exchange_pb2.WitnessedCheckpoint) -> exchange_pb2.WitnessRequest:
                return exchange_pb2.WitnessRequest(checkpoints=list(items))

            def note_of(data: bytes, log: str = "EU") -> exchange_pb2.WitnessedCheckpoint:
                return exchange_pb2.WitnessedCheckpoint(
                    log=log, checkpoint=log_pb2.Checkpoint(note=data)
                )

            malformed = [
                ("not UTF-8", request(note_of(b"\xff\xfe\n\n")), "not UTF-8"),
                ("not a note", request(note_of(b"hello\n")), "malformed note"),
                ("lower-case code", request(note_of(good.encode(), "eu")), "administration code"),
                ("twice the same log", request(view, view), "a second checkpoint of EU"),
                ("no checkpoint", request(exchange_pb2.WitnessedCheckpoint(log="EU")), "has no"),
                ("too many", request(*[view] * 257), "at most 256"),
                (
                    "no cosignature",
                    request(note_of(good.split("\n\u2014 jp")[0].encode() + b"\n")),
                    "no cosignature",
                ),
            ]
            for case, message, words in malformed:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Witness(message, timeout=10)
                assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, case
                assert words in (caught.value.details() or ""), (case, caught.value.details())
                assert await witness_state(eu) == before, case

            # Bytes that are no WitnessRequest at all.
            raw = channel.unary_unary(
                "/mra.v1.ExchangeService/Witness",
                request_serializer=None,
                response_deserializer=None,
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await raw(b"\x0a\xff\xff\xff\xff", timeout=10)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert await witness_state(eu) == before

            # A forged cosignature: refused as a failed check, nothing stored.
            forged = _flip_signature_byte(good, witness_name("JP"))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Witness(request(note_of(forged.encode())), timeout=10)
            assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "jp.mragw/witness" in (caught.value.details() or "")
            assert await witness_state(eu) == before

            # The genuine exchange: EU stores JP's cosignature and answers with its views.
            response = await stub.Witness(request(view), timeout=10)
        finally:
            await channel.close(None)
        answered = {v.log: v.checkpoint.note.decode() for v in response.checkpoints}
        assert "EU" in answered
        eu_view = parse_note(answered["EU"])
        assert eu_view.checkpoint() == parse_note(await held_note(eu, "EU")).checkpoint()
        found = [find_cosignature(eu_view, witness_name("EU"), key) for key in await keys_of(eu)]
        assert any(f is not None for f in found)
        stored = await _select(eu, cosignatures)
        assert [(r.log, r.witness, r.size) for r in stored] == [("EU", "JP", size)]
        report = await node_status(eu)
        assert report["log_witnesses"] == 1


async def test_our_own_log_shown_differently_raises_an_alert_and_quarantines_nobody(
    db_url: str, tmp_path: Path
) -> None:
    """A partner holds checkpoints of our log that our key signed but our log never had (the
    key leaked): an alert each, no partner quarantined (the witness only reported it)."""
    async with cluster_of(tmp_path, db_url, ("EU", "JP"), QUIET, start=False) as cluster:
        await cluster.connect("EU", "JP")
        size = (await cluster.publish("EU", eu_records())).tree_size
        eu, jp = cluster.node("EU"), cluster.node("JP")
        key = await checkpoint_signer(eu)
        same_size = sign_checkpoint(Checkpoint(eu.origin, size, b"\x01" * 32), eu.origin, key)
        beyond = sign_checkpoint(Checkpoint(eu.origin, size + 5, b"\x02" * 32), eu.origin, key)
        for note, why in (
            (same_size, "same size, different roots"),
            (beyond, f"EU's log has only {size} entries"),
        ):
            outcome = await receive_views(eu, "JP", [View("EU", await cosign_as(jp, note))])
            assert [s.log for s in outcome.split_views] == ["EU"]
            assert why in outcome.split_views[0].message
            assert "our own checkpoint key signed both" in outcome.split_views[0].message
        assert len(await open_split_views(eu)) == 2
        assert not (await partner_row(eu, "JP")).quarantined
        assert await _select(eu, cosignatures) == []

"""Erasure on a lawful request: the issuer erases an operator's payloads and appends a notice;
partners erase their copies when they receive it; every checkpoint, inclusion proof and
consistency proof still verifies on every node; a partner catching up afterwards verifies the
log without quarantining anyone; a false notice quarantines its sender and erases nothing; bad
input changes nothing; and the identifier is gone from the SQLite file's bytes.

Real gateways over real mTLS (tests/gateway/nodes.py), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from crypto.merkle import root_from_leaf_hashes, verify_consistency, verify_inclusion
from gateway import codec
from gateway.audit import OPERATOR_KEY_FILE, operator_digest, read_operator_key
from gateway.demo_data import eu_records
from gateway.erasure import append_notices, apply_notices, erase_operator
from gateway.errors import GatewayError, InputError
from gateway.issuer_log import IssuerLog
from gateway.node import Node
from gateway.query import Checker, Question
from gateway.records import ErasedEntry, ErasureNotice
from gateway.replication import verify_note
from gateway.signatures import parse_envelope
from gateway.storage.schema import (
    audit,
    disclosure_state,
    entries,
    identifiers,
    logs,
    partners,
    records,
)
from gateway.storage.tiles import consistency_proof, inclusion_proof
from gateway.verification import NOTICE, EntryCheck
from mra.v1 import records_pb2
from tests.gateway.nodes import Cluster, eventually, make_home, records_of

DE_AEOF = "DE4711000012345"  # entry 0, and the joint validation outcome (entry 6, to JP)
DE_AUTH = "DEAEOF0000012"
DE_NAME = "Rheinhafen Logistik GmbH"
FR_AEOS = "FR55210098700019"  # untouched by the erasure
DAY = date(2026, 11, 28)


# -- helpers ----------------------------------------------------------------------------------


async def entry_rows(node: Node, log: str) -> dict[int, Any]:
    async with node.engine.connect() as conn:
        rows = await conn.execute(
            select(entries.c.idx, entries.c.envelope, entries.c.sig_state, entries.c.leaf_hash)
            .where(entries.c.log == log)
            .order_by(entries.c.idx)
        )
        return {int(r.idx): r for r in rows}


async def decoded_rows(node: Node, log: str, idx: int) -> int:
    async with node.engine.connect() as conn:
        n = 0
        for table in (records, identifiers):
            n += (
                await conn.execute(
                    select(func.count())
                    .select_from(table)
                    .where(table.c.log == log, table.c.idx == idx)
                )
            ).scalar_one()
        return int(n)


async def assert_every_proof_verifies(holder: Node, issuer: Node) -> int:
    """Every leaf of ``issuer``'s log as ``holder`` stores it has an inclusion proof (from the
    stored tiles) to the holder's verified checkpoint, whose signature verifies with the
    issuer's trust statement; every smaller size has a consistency proof to it."""
    log = issuer.admin
    async with issuer.engine.connect() as conn:
        statement = await issuer.trust_statement(conn)
    async with holder.engine.connect() as conn:
        head = (await conn.execute(select(logs).where(logs.c.code == log))).one()
        note = head.checkpoint if head.own else head.held_checkpoint
        cp = verify_note(note, statement)
        size = cp.size
        assert size == int(head.size)
        leaves = [
            bytes(r)
            for r in (
                await conn.execute(
                    select(entries.c.leaf_hash).where(entries.c.log == log).order_by(entries.c.idx)
                )
            ).scalars()
        ]
        assert len(leaves) == size
        assert root_from_leaf_hashes(leaves) == cp.root_hash
        for idx in range(size):
            proof = await inclusion_proof(conn, log, idx, size)
            verify_inclusion(leaves[idx], idx, size, proof, cp.root_hash)
        for old in range(1, size):
            proof = await consistency_proof(conn, log, old, size)
            verify_consistency(old, size, proof, root_from_leaf_hashes(leaves[:old]), cp.root_hash)
    return size


async def check(node: Node, operator: str, at: str | None = None) -> Any:
    checker = Checker.for_node(node)
    try:
        return await checker.check(Question(operator_id=operator, issuer="EU", at=at))
    finally:
        checker.close()


def codes(answer: Any) -> set[str]:
    found = {r.code for r in answer.reasons}
    for t in answer.types:
        found |= {r.code for r in t.reasons}
    return found


async def quarantined(node: Node, code: str) -> bool:
    async with node.engine.connect() as conn:
        return bool(
            (
                await conn.execute(select(partners.c.quarantined).where(partners.c.code == code))
            ).scalar_one()
        )


async def audit_details(node: Node, action: str) -> list[dict[str, Any]]:
    async with node.engine.connect() as conn:
        rows = await conn.execute(
            select(audit.c.detail).where(audit.c.action == action).order_by(audit.c.id)
        )
        return [json.loads(r) for r in rows.scalars()]


# -- the whole flow ---------------------------------------------------------------------------


async def test_erasure_reaches_partners_and_every_proof_still_verifies(
    db_url: str, tmp_path: Path
) -> None:
    cluster = Cluster(tmp_path, db_url)
    try:
        for code in ("EU", "JP", "US"):
            await cluster.add(code)
        await cluster.start("EU")
        await cluster.start("JP")
        await cluster.connect("EU", "JP")
        # US is pinned (so entitled at append time) but offline until after the erasure.
        await cluster.connect("EU", "US")
        assert (await cluster.publish("EU", eu_records())).appended == 7
        await cluster.wait_replicated("JP", "EU", 7)
        eu, jp = cluster.node("EU"), cluster.node("JP")
        assert (await check(jp, DE_AEOF)).recognised
        jp_before = await entry_rows(jp, "EU")
        assert jp_before[0].envelope is not None
        assert jp_before[6].envelope is not None

        result = await erase_operator(
            eu,
            operator=" de4711000012345 ",
            reason="data subject request of 2026-11-20",
            lawful_basis="GDPR Art. 17(1)(a)",
            reference="ERA-2026-0042",
            actor="test",
        )
        assert result.entries == (0, 6)
        assert result.notices == (7,)
        assert result.partners == ("JP", "US")

        # The issuer: payloads gone, leaf hashes kept, Check fails closed.
        eu_rows = await entry_rows(eu, "EU")
        for idx in (0, 6):
            assert (eu_rows[idx].envelope, eu_rows[idx].sig_state) == (None, "erased")
            assert eu_rows[idx].leaf_hash == jp_before[idx].leaf_hash
            assert await decoded_rows(eu, "EU", idx) == 0
        answer = await check(eu, DE_AEOF)
        assert not answer.recognised
        assert answer.operator is None
        assert "UNKNOWN_OPERATOR" in codes(answer)
        async with eu.engine.connect() as conn:
            left = await conn.execute(
                select(func.count()).where(disclosure_state.c.authorisation == DE_AUTH)
            )
            assert left.scalar_one() == 0

        # The partner erases its copy when the notice arrives.
        await cluster.wait_replicated("JP", "EU", 8)

        async def jp_erased() -> bool:
            rows = await entry_rows(jp, "EU")
            return all(rows[i].sig_state == "erased" for i in (0, 6))

        await eventually(jp_erased, deadline_s=20)
        jp_rows = await entry_rows(jp, "EU")
        for idx in (0, 6):
            assert jp_rows[idx].envelope is None
            assert jp_rows[idx].leaf_hash == jp_before[idx].leaf_hash
            assert await decoded_rows(jp, "EU", idx) == 0
        assert jp_rows[7].sig_state == "valid"  # the notice itself, applied
        answer = await check(jp, DE_AEOF)
        assert not answer.recognised
        assert answer.operator is None
        assert "UNKNOWN_OPERATOR" in codes(answer)
        assert (await check(jp, FR_AEOS)).recognised  # nobody else was touched
        assert not await quarantined(jp, "EU")

        # Every checkpoint, inclusion and consistency proof verifies on both.
        assert await assert_every_proof_verifies(eu, eu) == 8
        assert await assert_every_proof_verifies(jp, eu) == 8

        # Audited on both sides, the operator only as a digest.
        (erased,) = await audit_details(eu, "erasure.erase")
        key = read_operator_key(eu.paths.keys / OPERATOR_KEY_FILE)
        assert key is not None
        assert erased["operator_hmac"] == operator_digest(key, DE_AEOF)
        assert erased["entries"] == [0, 6]
        assert erased["notices"] == [7]
        assert DE_AEOF not in json.dumps(erased)
        (applied,) = await audit_details(jp, "erasure.applied")
        assert (applied["notice_index"], applied["named"], applied["erased"]) == (7, 2, 2)

        # Replaying the notice changes nothing.
        notice = await notice_at(jp, "EU", 7)
        async with jp.engine.begin() as conn:
            refused = await apply_notices(conn, "EU", [EntryCheck(7, NOTICE, notice=notice)])
        assert refused == []
        assert await entry_rows(jp, "EU") == jp_rows

        # A partner that catches up after the erasure verifies the log and quarantines no one.
        await cluster.start("US")
        us = cluster.node("US")
        await cluster.wait_replicated("US", "EU", 8)
        us_rows = await entry_rows(us, "EU")
        assert us_rows[0].envelope is None  # served as its leaf hash only
        assert us_rows[7].envelope is not None  # the notice was disclosed to US
        assert us_rows[7].sig_state == "valid"
        assert not await quarantined(us, "EU")
        assert await assert_every_proof_verifies(us, eu) == 8
        assert "UNKNOWN_OPERATOR" in codes(await check(us, DE_AEOF))
        assert (await check(us, FR_AEOS)).recognised
    finally:
        await cluster.close()
    if db_url.startswith("sqlite"):
        # Closed, each node's database file holds nothing of the erased operator any more.
        for name in ("node.db", "jp.db", "us.db"):
            data = read_database_files(tmp_path, name)
            assert b"EU" in data
            for needle in (DE_AEOF, DE_NAME, DE_AUTH):
                assert needle.encode() not in data, (name, needle)


async def notice_at(node: Node, log: str, idx: int) -> ErasureNotice:
    async with node.engine.connect() as conn:
        envelope = (
            await conn.execute(
                select(entries.c.envelope).where(entries.c.log == log, entries.c.idx == idx)
            )
        ).scalar_one()
    return codec.decode_notice(bytes(parse_envelope(bytes(envelope)).payload))


# -- a false notice ---------------------------------------------------------------------------


def _wrong_hash(held: dict[int, Any]) -> tuple[ErasedEntry, ...]:
    return (ErasedEntry(0, bytes(32)),)


def _beyond_itself(held: dict[int, Any]) -> tuple[ErasedEntry, ...]:
    return (ErasedEntry(0, bytes(held[0].leaf_hash)), ErasedEntry(7, bytes(32)))


@pytest.mark.parametrize(
    ("named", "words"),
    [(_wrong_hash, "leaf hash"), (_beyond_itself, "not below it")],
    ids=["wrong-leaf-hash", "names-itself-or-later"],
)
async def test_false_notice_quarantines_its_sender_and_erases_nothing(
    db_url: str,
    tmp_path: Path,
    named: Callable[[dict[int, Any]], tuple[ErasedEntry, ...]],
    words: str,
) -> None:
    cluster = Cluster(tmp_path, db_url)
    try:
        for code in ("EU", "JP"):
            await cluster.add(code)
            await cluster.start(code)
        await cluster.connect("EU", "JP")
        await cluster.publish("EU", eu_records())
        await cluster.wait_replicated("JP", "EU", 7)
        eu, jp = cluster.node("EU"), cluster.node("JP")
        before = await entry_rows(jp, "EU")
        # EU's real key signs a notice that misstates EU's own log.
        notice = ErasureNotice("EU", named(await entry_rows(eu, "EU")), "test", "", DAY)
        async with eu.engine.begin() as conn:
            assert await append_notices(
                conn, eu, [notice], partners=frozenset({"JP"}), actor="test"
            ) == [7]

        async def stopped() -> bool:
            return await quarantined(jp, "EU")

        await eventually(stopped, deadline_s=20)
        async with jp.engine.connect() as conn:
            reason = (
                await conn.execute(select(partners.c.reason).where(partners.c.code == "EU"))
            ).scalar_one()
        assert words in reason
        after = await entry_rows(jp, "EU")
        for idx, row in before.items():
            assert after[idx] == row
        assert after[7].sig_state == "invalid"
        assert (await check(jp, DE_AEOF)).recognised
        assert await audit_details(jp, "erasure.applied") == []
    finally:
        await cluster.close()


# -- bad input, and the bytes on disk ---------------------------------------------------------


async def published_node(tmp_path: Path, db_url: str) -> Node:
    node = await make_home(tmp_path, "EU", db_url)
    await IssuerLog(node).publish(records_of(eu_records()), actor="test")
    return node


async def snapshot(node: Node) -> tuple[Any, ...]:
    async with node.engine.connect() as conn:
        head = (await conn.execute(select(logs.c.size, logs.c.root, logs.c.checkpoint))).all()
        audits = (await conn.execute(select(func.count()).select_from(audit))).scalar_one()
        held = (
            await conn.execute(
                select(entries.c.idx, entries.c.sig_state, entries.c.envelope).order_by(
                    entries.c.idx
                )
            )
        ).all()
        indexed = (await conn.execute(select(func.count()).select_from(records))).scalar_one()
    return (head, audits, held, indexed)


BAD_ERASURES = [
    pytest.param({"operator": "DE999999999999"}, "no entry of log EU", id="unknown-operator"),
    pytest.param({"operator": "DE 47;11"}, "--operator", id="malformed-operator"),
    pytest.param({"reason": "  "}, "--reason: must not be empty", id="empty-reason"),
    pytest.param({"reason": "x\x00y"}, "control characters", id="control-in-reason"),
    pytest.param({"reason": "x" * 1001}, "longer than 1000", id="oversized-reason"),
    pytest.param({"reference": "has space"}, "--reference", id="malformed-reference"),
    pytest.param({"lawful_basis": " "}, "--lawful-basis", id="empty-lawful-basis"),
]


@pytest.mark.parametrize(("change", "words"), BAD_ERASURES)
async def test_bad_erasure_requests_are_refused_and_change_nothing(
    db_url: str, tmp_path: Path, change: dict[str, str], words: str
) -> None:
    node = await published_node(tmp_path, db_url)
    try:
        before = await snapshot(node)
        request = {"operator": DE_AEOF, "reason": "request", "reference": "", **change}
        with pytest.raises(InputError, match=words.replace("(", r"\(")):
            await erase_operator(node, actor="test", **request)
        assert await snapshot(node) == before
    finally:
        await node.close()


async def test_erased_operator_is_nowhere_in_the_sqlite_files(tmp_path: Path) -> None:
    node = await published_node(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'eu.db'}")
    try:
        await erase_operator(node, operator=DE_AEOF, reason="request", actor="test")
        # Erasing again finds nothing left about the operator, and says so.
        with pytest.raises(InputError, match="already erased"):
            await erase_operator(node, operator=DE_AEOF, reason="request", actor="test")
    finally:
        await node.close()
    data = read_database_files(tmp_path, "eu.db")
    assert FR_AEOS.encode() in data  # the search does find what is still there
    for needle in (DE_AEOF, DE_NAME, DE_AUTH):
        assert needle.encode() not in data, needle


def read_database_files(folder: Path, name: str) -> bytes:
    """The database file and its WAL/journal companions, as bytes."""
    return b"".join(p.read_bytes() for p in sorted(folder.glob(f"{name}*")) if p.is_file())


# -- the notice on its own --------------------------------------------------------------------


def _notice(**change: Any) -> bytes:
    message = records_pb2.ErasureNotice(
        issuer="EU", lawful_basis="GDPR Art. 17", date="2026-11-28", salt=bytes(16)
    )
    message.entries.add(leaf_index=3, leaf_hash=bytes(32))
    for name, value in change.items():
        if name == "entries":
            del message.entries[:]
            for idx, leaf in value:
                message.entries.add(leaf_index=idx, leaf_hash=leaf)
        else:
            setattr(message, name, value)
    return bytes(message.SerializeToString())


def test_notice_round_trips() -> None:
    notice = ErasureNotice(
        "EU", (ErasedEntry(1, b"\x01" * 32), ErasedEntry(4, b"\x02" * 32)), "b", "R-1", DAY
    )
    assert codec.decode_notice(codec.encode_notice(notice, codec.new_salt())) == notice
    assert dataclasses.replace(codec.decode_notice(_notice()), entries=()).issuer == "EU"


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"\xff\xff", "malformed protobuf"),
        (_notice(entries=[]), "names no entry"),
        (_notice(entries=[(1, bytes(31))]), "not 32 bytes"),
        (_notice(entries=[(1, bytes(32)), (1, bytes(32))]), "names an entry twice"),
        (_notice(entries=[(k, bytes(32)) for k in range(1001)]), "more than 1000"),
        (_notice(salt=b"short"), "salt"),
        (_notice(issuer="eu"), "not an administration code"),
        (_notice(lawful_basis=""), "lawful_basis is required"),
        (_notice(date="28.11.2026"), "not YYYY-MM-DD"),
        (_notice(reference="a\nb"), "control characters"),
        (_notice() + b"\xa0\x06\x01", "fields this version does not know"),
        (b"\x0a" + b"\x80\x80\x04" + bytes(70_000), "exceeds"),
    ],
    ids=[
        "undecodable",
        "empty",
        "short-hash",
        "duplicate",
        "too-many",
        "short-salt",
        "lower-case-issuer",
        "no-lawful-basis",
        "bad-date",
        "control-in-reference",
        "unknown-field",
        "oversized",
    ],
)
def test_malformed_notices_are_refused_naming_the_problem(payload: bytes, words: str) -> None:
    with pytest.raises(GatewayError, match=words):
        codec.decode_notice(payload)

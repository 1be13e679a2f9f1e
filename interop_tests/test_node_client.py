"""An independent client: a Node.js program (@grpc/grpc-js, @grpc/proto-loader) that knows only
our ``.proto`` files talks to real gateways over mTLS, and its answers must equal what the
Python side reports for the same question. A second gRPC implementation proves the ``mra.v1``
contract is language-neutral (issue 6, item 3).

- ``check``: QueryService.Check on JP's admin listener with JP's local admin certificate; the
  document equals :meth:`gateway.query.Checker.check` (and ``mragw check --json``) field by
  field, evidence bytes included; bad questions are INVALID_ARGUMENT naming the bad value.
- ``subscribe``: ExchangeService.Subscribe on EU's partner listener with JP's node certificate;
  the entries (envelopes and hash-only entries), leaf hashes, root and checkpoint equal what
  JP's own replica stored, and the Node client's own RFC 9162 verification of every batch
  passes. The live tail delivers a record published while the stream is open.

Needs ``node`` and ``npm ci --prefix interop_tests/node_client``. Without them the tests skip
locally; with MRAGW_REQUIRE_NODE=1 (CI) they fail instead.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from crypto.checkpoint import parse_checkpoint_body, parse_note
from gateway.demo_data import eu_records, eu_revocation, jp_records
from gateway.node import Node
from gateway.query import BadQuestionError, Question
from gateway.storage.schema import entries
from tests.gateway.nodes import Cluster, bulk_records, log_head

CLIENT_DIR = Path(__file__).resolve().parent / "node_client"
CLIENT = CLIENT_DIR / "client.js"
NPM_CI = "npm ci --prefix interop_tests/node_client"
RUN_TIMEOUT_S = 60.0
# Answers are for a fixed day, so that they never depend on when the test runs.
AT = "2025-01-15"


@pytest.fixture
def node_bin() -> str:
    """The ``node`` executable, with the client's npm dependencies installed."""
    node = shutil.which("node")
    if node is None:
        problem = "Node.js (`node`) is not on PATH"
    elif not all(
        (CLIENT_DIR / "node_modules" / "@grpc" / name / "package.json").is_file()
        for name in ("grpc-js", "proto-loader")
    ):
        problem = f"the Node client's dependencies are not installed: run `{NPM_CI}`"
    else:
        return node
    if os.environ.get("MRAGW_REQUIRE_NODE") == "1":
        pytest.fail(f"MRAGW_REQUIRE_NODE=1 but {problem}")
    pytest.skip(problem)


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def document(self) -> Any:
        assert self.code == 0, f"exit {self.code}: {self.stderr}"
        return json.loads(self.stdout)


async def run(*argv: str) -> Run:
    """Run a program without blocking the event loop that serves the in-process gateways."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def differences(ours: Any, theirs: Any, where: str = "$") -> Iterator[str]:
    """Every field where two JSON documents differ, by path (key order does not matter)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(set(ours) | set(theirs)):
            if key not in ours or key not in theirs:
                yield f"{where}.{key}: only in {'node' if key in ours else 'python'}"
            else:
                yield from differences(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, list) and isinstance(theirs, list):
        if len(ours) != len(theirs):
            yield f"{where}: {len(ours)} items (node) != {len(theirs)} (python)"
        for n, (a, b) in enumerate(zip(ours, theirs, strict=False)):
            yield from differences(a, b, f"{where}[{n}]")
    elif type(ours) is not type(theirs) or ours != theirs:
        yield f"{where}: node {ours!r} != python {theirs!r}"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """EU and JP gateways on loopback, onboarded to each other; EU has published the demo's
    realistic records (some entitled to JP, some not) and a later revocation, JP its own
    records (one suspended), and JP has replicated EU's log."""
    cluster = Cluster(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'eu.db'}")
    try:
        await cluster.add("EU")
        await cluster.add("JP")
        await cluster.start("EU")
        await cluster.start("JP")
        await cluster.connect("EU", "JP")
        published = await cluster.publish("EU", [*eu_records(), eu_revocation()])
        await cluster.publish("JP", [*jp_records(), jp_suspended()])
        await cluster.wait_replicated("JP", "EU", published.tree_size)
        yield cluster
    finally:
        await cluster.close()


def jp_suspended() -> dict[str, Any]:
    record = {**jp_records()[0]}
    record.update(
        operator_ids=[{"scheme": "NATIONAL", "value": "JP1010001055555"}],
        name="Suspended Logistics KK",
        authorisation="JPAEO0000555",
        status="SUSPENDED",
        status_date="2024-11-01",
        valid_from="2013-05-01",
        valid_until="2027-04-30",
    )
    return record


EU_RECORDS = len(eu_records()) + 1  # and the revocation


def home(node: Node) -> str:
    return str(node.config.home)


async def node_check(node_bin: str, cluster: Cluster, *args: str) -> Run:
    jp = cluster.gateways["JP"]
    return await run(
        node_bin,
        str(CLIENT),
        "check",
        "--target",
        jp.server.listeners.admin_target,
        "--home",
        home(cluster.node("JP")),
        *args,
    )


QUESTIONS: list[dict[str, Any]] = [
    # Recognised: an EU AEOF holder, entitled to JP.
    {"operator": "DE4711000012345", "issuer": "EU", "at": AT},
    # The same with evidence: entry bytes, inclusion proof, checkpoint note.
    {"operator": "de 4711000012345", "issuer": "EU", "at": AT, "evidence": True},
    # AEOC only: never disclosed to JP, so unknown there.
    {"operator": "DE4711000067890", "issuer": "EU", "at": AT},
    # A member state as issuer, one type, a mode and strict mode.
    {"operator": "FR55210098700019", "issuer": "FR", "at": AT, "type": "AEOS", "mode": "sea"},
    {"operator": "IT01234567890", "issuer": "EU", "at": AT, "strict": True, "scheme": "EORI"},
    # Revoked after the question's day, then asked again after the revocation.
    {"operator": "FR55210098700019", "issuer": "EU", "at": "2025-06-01"},
    # A type the operator does not hold.
    {"operator": "DE4711000012345", "issuer": "EU", "at": AT, "type": "AEOS"},
    # Before any record: unknown on that date.
    {"operator": "HR12345678901", "issuer": "EU", "at": "2010-06-30"},
    # An issuer that never issued it.
    {"operator": "DE4711000012345", "issuer": "US", "at": AT},
    # JP's own records: recognised within its own programme; a suspended one with validity.
    {"operator": "JP1010001012345", "issuer": "JP", "at": AT, "scheme": "NATIONAL"},
    {"operator": "JP1010001055555", "issuer": "JP", "at": AT, "evidence": True},
]


def argv_of(question: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in question.items():
        if value is True:
            out.append(f"--{key}")
        else:
            out += [f"--{key}", str(value)]
    return out


def question_of(q: dict[str, Any]) -> Question:
    return Question(
        operator_id=q["operator"],
        issuer=q["issuer"],
        scheme=q.get("scheme"),
        type=q.get("type"),
        at=q.get("at"),
        mode=q.get("mode"),
        strict=bool(q.get("strict")),
        evidence=bool(q.get("evidence")),
    )


async def test_check_from_node_equals_the_python_answer_field_by_field(
    node_bin: str, cluster: Cluster
) -> None:
    checker = cluster.gateways["JP"].checker
    answers: list[dict[str, Any]] = []
    for question in QUESTIONS:
        ours = (await node_check(node_bin, cluster, *argv_of(question))).document()
        python = (await checker.check(question_of(question))).to_json()
        diff = list(differences(ours, python))
        assert not diff, f"{question}: " + "; ".join(diff)
        answers.append(ours)

    # The questions cover what they claim to (else equality would prove little).
    recognised, with_evidence, aeoc, fr, it, revoked, no_type, early, us, own, suspended = answers
    assert recognised["recognised"] is True
    assert recognised["types"][0]["status"] == "ACTIVE"
    assert {"scheme": "EORI", "value": "DE4711000012345"} in recognised["operator"]["operator_ids"]
    evidence = with_evidence["types"][0]["evidence"]
    assert evidence["available"] is True
    assert base64.b64decode(evidence["entry"])
    assert evidence["checkpoint"].startswith(cluster.node("EU").origin)
    assert [r["code"] for r in aeoc["reasons"]] == ["UNKNOWN_OPERATOR"]
    assert aeoc["operator"] is None
    assert [t["type"] for t in fr["types"]] == ["AEOS"]
    assert [t["certainty"] for t in it["types"]] == ["confirmed"]
    assert revoked["types"][0]["status"] == "REVOKED"
    assert revoked["types"][0]["valid_until"] == "2025-03-01"
    assert revoked["recognised"] is False
    assert [r["code"] for r in no_type["reasons"]] == ["NO_RECORD_OF_TYPE"]
    assert [r["code"] for r in early["reasons"]] == ["UNKNOWN_OPERATOR"]
    assert us["recognised"] is False
    assert own["recognised"] is True
    assert own["types"][0]["arrangements"] == []
    assert suspended["types"][0]["status"] == "SUSPENDED"
    assert suspended["types"][0]["valid_until"] == "2027-04-30"
    assert [r["code"] for r in suspended["types"][0]["reasons"]] == ["STATUS_NOT_ACTIVE"]
    assert suspended["types"][0]["evidence"]["log"] == "JP"

    # The CLI reports the same document (the Python gRPC client is not involved: database).
    cli = await run(
        sys.executable,
        "-m",
        "gateway.cli.main",
        "check",
        "--home",
        home(cluster.node("JP")),
        "--json",
        *argv_of({k: v for k, v in QUESTIONS[1].items() if k != "operator"}),
        "--operator",
        QUESTIONS[1]["operator"],
    )
    assert not list(differences(with_evidence, cli.document()))


@pytest.mark.parametrize(
    ("args", "bad"),
    [
        (["--operator", "DE4711000012345", "--issuer", "EU", "--at", "2025-13-45"], "2025-13-45"),
        (["--operator", "DE4711000012345", "--issuer", "QQ", "--at", AT], "QQ"),
        (["--operator", "DE4711000012345", "--issuer", "EU", "--type", "NOPE"], "NOPE"),
    ],
)
async def test_a_bad_question_is_invalid_argument_naming_the_value(
    node_bin: str, cluster: Cluster, args: list[str], bad: str
) -> None:
    result = await node_check(node_bin, cluster, *args)
    assert result.code == 2, result
    assert result.stdout == ""
    assert "INVALID_ARGUMENT" in result.stderr
    assert bad in result.stderr
    q = dict(zip(args[::2], args[1::2], strict=True))
    with pytest.raises(BadQuestionError, match=bad):
        await cluster.gateways["JP"].checker.check(
            Question(
                operator_id=q["--operator"],
                issuer=q["--issuer"],
                at=q.get("--at"),
                type=q.get("--type"),
            )
        )


async def subscribe_to_eu(node_bin: str, cluster: Cluster, tls: Path, name: str, *args: str) -> Run:
    """The Node client subscribing to EU with the certificate ``tls/<name>.pem``."""
    return await run(
        node_bin,
        str(CLIENT),
        "subscribe",
        "--target",
        cluster.endpoints["EU"],
        "--ca",
        str(cluster.node("EU").config.home / "tls" / "ca.pem"),
        "--cert",
        str(tls / f"{name}.pem"),
        "--key",
        str(tls / f"{name}.key"),
        "--server-code",
        "EU",
        *args,
    )


async def subscribe_as_jp(node_bin: str, cluster: Cluster, *args: str) -> Run:
    return await subscribe_to_eu(
        node_bin, cluster, cluster.node("JP").config.home / "tls", "node", *args
    )


async def replica(node: Node, log: str) -> list[tuple[str, str | None]]:
    """(leaf hash, envelope or None) of every entry of ``log`` held by ``node``, base64."""
    async with node.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(entries.c.idx, entries.c.leaf_hash, entries.c.envelope)
                .where(entries.c.log == log)
                .order_by(entries.c.idx)
            )
        ).all()
    assert [int(r.idx) for r in rows] == list(range(len(rows)))
    return [
        (
            base64.b64encode(bytes(r.leaf_hash)).decode(),
            base64.b64encode(bytes(r.envelope)).decode() if r.envelope is not None else None,
        )
        for r in rows
    ]


def streamed(document: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(e["leaf_hash"], e["envelope"]) for b in document["batches"] for e in b["entries"]]


def note_body(note: str) -> tuple[str, int, bytes]:
    """Origin, size and root of a checkpoint note."""
    cp = parse_checkpoint_body(parse_note(note).body)
    return cp.origin, cp.size, cp.root_hash


async def test_subscribe_from_node_streams_what_jp_replicated(
    node_bin: str, cluster: Cluster
) -> None:
    jp, eu = cluster.node("JP"), cluster.node("EU")
    held = await replica(jp, "EU")
    size = len(held)
    assert size == EU_RECORDS
    # Entitlement is visible on the wire: JP holds some envelopes and some hashes only.
    assert any(envelope is None for _, envelope in held)
    assert any(envelope is not None for _, envelope in held)

    document = (await subscribe_as_jp(node_bin, cluster, "--max-batch-entries", "3")).document()
    assert document["end"] == "complete"
    batches = document["batches"]
    assert [b["start_index"] for b in batches] == list(range(0, size, 3))
    assert all(len(b["entries"]) <= 3 for b in batches)
    assert streamed(document) == held
    # The Node client verified each batch itself (RFC 9162 root and consistency proof).
    assert [b["verified"] for b in batches] == [True] * len(batches), batches
    assert any(b["consistency"]["hashes"] for b in batches[:-1])
    head = await log_head(jp, "EU")
    assert document["tree"] == {"size": size, "root": base64.b64encode(head.root).decode()}
    assert head.root == (await log_head(eu, "EU")).root
    # The checkpoint is the one JP verified and stored (cosignature lines may differ).
    assert head.checkpoint is not None
    final = batches[-1]["checkpoint"]
    assert note_body(final) == note_body(head.checkpoint) == (eu.origin, size, head.root)
    issuer_line = next(line for line in final.splitlines() if line.startswith(f"— {eu.origin}"))
    assert issuer_line in head.checkpoint.splitlines()

    # From the middle: the batch starts where asked; no tree can be recomputed.
    middle = (
        await subscribe_as_jp(node_bin, cluster, "--from", "4", "--max-batches", "1")
    ).document()
    assert middle["end"] in {"max_batches", "complete"}
    assert [b["start_index"] for b in middle["batches"]] == [4]
    assert streamed(middle) == held[4 : 4 + len(middle["batches"][0]["entries"])]
    assert "tree" not in middle

    # Beyond the tree size: OUT_OF_RANGE, a bad request (exit 2).
    beyond = await subscribe_as_jp(node_bin, cluster, "--from", str(size + 5))
    assert beyond.code == 2, beyond
    assert "OUT_OF_RANGE" in beyond.stderr


async def test_subscribe_live_tail_delivers_a_record_published_while_streaming(
    node_bin: str, cluster: Cluster
) -> None:
    size = EU_RECORDS
    follow = asyncio.ensure_future(
        subscribe_as_jp(
            node_bin, cluster, "--from", str(size), "--follow", "--until-size", str(size + 2)
        )
    )
    await asyncio.sleep(0.5)  # let the stream reach the live tail (not needed for correctness)
    # Operators 1 and 2 consented (0 did not): both entitled to JP.
    published = await cluster.publish("EU", bulk_records(3, issuer="DE")[1:])
    assert published.tree_size == size + 2
    document = (await follow).document()
    assert document["end"] == "until_size"
    await cluster.wait_replicated("JP", "EU", size + 2)
    held = await replica(cluster.node("JP"), "EU")
    assert streamed(document) == held[size:]
    assert all(envelope is not None for _, envelope in held[size:])
    last = document["batches"][-1]["checkpoint"]
    assert note_body(last)[1:] == (size + 2, (await log_head(cluster.node("JP"), "EU")).root)


async def test_subscribe_without_a_partner_identity_learns_nothing(
    node_bin: str, cluster: Cluster
) -> None:

    async def subscribe_with(tls: Path, name: str) -> Run:
        return await subscribe_to_eu(node_bin, cluster, tls, name)

    # A real administration's node certificate that EU never pinned: no TLS handshake.
    await cluster.add("US")
    stranger = await subscribe_with(cluster.node("US").config.home / "tls", "node")
    assert (stranger.code, stranger.stdout) == (3, ""), stranger
    assert "UNAVAILABLE" in stranger.stderr
    # JP's local admin certificate comes from a pinned CA but is no partner identity.
    admin = await subscribe_with(cluster.node("JP").config.home / "tls", "admin")
    assert (admin.code, admin.stdout) == (1, ""), admin
    assert "UNAUTHENTICATED" in admin.stderr

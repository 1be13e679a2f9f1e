"""Evidence bundles (gateway.evidence) and their offline verification (gateway.evidence_verify).

The world (real gateways, see :func:`jp_answers_from_eu_replica`): EU publishes the demo
records; JP replicates EU's log over real mTLS and answers from its replica; US is a partner of
JP that witnessed EU's checkpoint (its cosignature, made with US's real key, is stored at JP as
the witness gossip stores it). JP's bundle carries EU's chain (the issuer's), JP's own
cosignature and chain, and US's. Bundles are built on SQLite and PostgreSQL; the edit cases run
on one genuine bundle (verification is pure, no database involved) and each must fail naming the
part that was edited.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from crypto.checkpoint import parse_note
from crypto.cosignature import cosign
from crypto.envelope import envelope_to_json
from crypto.keys import PrivateKeySigner, Scheme
from crypto.merkle import leaf_hash
from gateway.demo_data import eu_records
from gateway.errors import InputError
from gateway.evidence import EvidenceRequest, NoEvidenceError, ProducedEvidence, build_evidence
from gateway.evidence_verify import (
    ANSWER,
    CHECKPOINT,
    COSIGNATURE,
    DATASET,
    ENTRY,
    FORMAT,
    INCLUSION,
    ISSUER_CHAIN,
    QUESTION,
    RECORD,
    EvidenceError,
    EvidenceReport,
    verify_evidence,
)
from gateway.issuer_log import IssuerLog
from gateway.node import Node, initialise_node
from gateway.partners import add_partner, export_bundle
from gateway.storage.schema import cosignatures, logs, records
from gateway.trust import TrustStatement, sign_statement, witness_name
from mra.v1 import envelope_pb2
from tests.gateway.conftest import db_url  # noqa: F401 - the SQLite/PostgreSQL fixture
from tests.gateway.nodes import FAST_ENV, Cluster, log_head, records_of, storage_url

DE_AEOF = "DE4711000012345"  # Rheinhafen Logistik, AEOF with consent: recognised by JP
NL_NO_CONSENT = "NL812345678"  # AEOF without consent: EU holds it, nobody else does
AT = "2025-01-15"


# --- the world --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Roots:
    """The root key fingerprints partners pin for each administration."""

    eu: str
    jp: str
    us: str

    @property
    def all(self) -> list[str]:
        return [self.eu, self.jp, self.us]


async def fingerprint(node: Node) -> str:
    return (await export_bundle(node))[1]


async def witness(holder: Node, log: str, by: Node) -> str:
    """``by`` cosigns the checkpoint of ``log`` that ``holder`` proves entries against, and
    ``holder`` stores the line (what the witness gossip does); returns the line."""
    async with holder.engine.connect() as conn:
        row = (
            await conn.execute(
                select(logs.c.held_checkpoint, logs.c.checkpoint).where(logs.c.code == log)
            )
        ).one()
    # Our own log's head is ``checkpoint``; a replica's proofs point to ``held_checkpoint``.
    note = row.checkpoint if log == holder.admin else row.held_checkpoint
    checkpoint = parse_note(note).checkpoint()
    async with by.engine.connect() as conn:
        signer = (await by.active_signers(conn))[0]
    stamp = int(time.time())
    line = cosign(note, witness_name(by.admin), signer, stamp)
    async with holder.engine.begin() as conn:
        await conn.execute(
            cosignatures.insert().values(
                log=log,
                size=checkpoint.size,
                witness=by.admin,
                root=checkpoint.root_hash,
                line=line,
                timestamp=stamp,
                received_at=time.time(),
            )
        )
    return line


async def jp_answers_from_eu_replica(tmp_path: Path, url: str) -> tuple[Cluster, Roots]:
    """EU, JP and US as in the module docstring; the caller closes the cluster."""
    cluster = Cluster(tmp_path, url)
    for code in ("EU", "JP", "US"):
        await cluster.add(code)
    await cluster.start("EU")
    await cluster.start("JP")
    await cluster.connect("EU", "JP")
    # JP and US pin each other, but US does not serve: here it only witnesses.
    await cluster.connect("JP", "US")
    published = await cluster.publish("EU", eu_records())
    await cluster.wait_replicated("JP", "EU", published.tree_size)
    await witness(cluster.node("JP"), "EU", cluster.node("US"))
    roots = Roots(
        eu=await fingerprint(cluster.node("EU")),
        jp=await fingerprint(cluster.node("JP")),
        us=await fingerprint(cluster.node("US")),
    )
    return cluster, roots


async def jp_evidence(cluster: Cluster, **fields: Any) -> ProducedEvidence:
    request = {"operator": DE_AEOF, "issuer": "EU", "at": AT, **fields}
    return await build_evidence(cluster.node("JP"), EvidenceRequest(**request))


def revoking_statement(node_statement: TrustStatement, root: PrivateKeySigner, at: int) -> Any:
    """A genuine next version of a chain (signed by its root) revoking every signing key from
    log index ``at``: what ``keys revoke`` publishes after a compromise."""
    keys = tuple(dataclasses.replace(k, revoked_at_index=at) for k in node_statement.signing_keys)
    statement = dataclasses.replace(
        node_statement, version=node_statement.version + 1, signing_keys=keys
    )
    return json.loads(envelope_to_json(sign_statement(statement, [root])))


@dataclass(frozen=True)
class Genuine:
    data: bytes
    roots: Roots
    #: Genuine v2 statements of EU revoking its keys from index 0 (the entry) and from 1 (the
    #: entry is fine, the size-7 checkpoint is not).
    revoke_entry: Any
    revoke_checkpoint: Any
    entry_index: int


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> Genuine:
    """One genuine bundle from real gateways on SQLite, for the edit cases (pure checks)."""

    async def build() -> Genuine:
        cluster, roots = await jp_answers_from_eu_replica(
            tmp_path_factory.mktemp("world"),
            f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'eu.db'}",
        )
        try:
            produced = await jp_evidence(cluster)
            eu = cluster.node("EU")
            async with eu.engine.connect() as conn:
                statement = await eu.trust_statement(conn)
            root = eu.root_signer()
            return Genuine(
                data=produced.data,
                roots=roots,
                revoke_entry=revoking_statement(statement, root, 0),
                revoke_checkpoint=revoking_statement(statement, root, 1),
                entry_index=produced.report.entry_index,
            )
        finally:
            await cluster.close()

    return asyncio.run(build())


# --- bundles from real nodes, SQLite and PostgreSQL -----------------------------------------


async def test_bundle_from_a_partner_replica_verifies_and_says_what_it_proves(
    db_url: str,  # noqa: F811 - the fixture, requested
    tmp_path: Path,
) -> None:
    cluster, roots = await jp_answers_from_eu_replica(tmp_path, db_url)
    try:
        produced = await jp_evidence(cluster)
        eu_head = await log_head(cluster.node("EU"), "EU")
        async with cluster.node("JP").engine.connect() as conn:
            index = (
                await conn.execute(
                    select(records.c.idx).where(
                        records.c.log == "EU", records.c.authorisation == "DEAEOF0000012"
                    )
                )
            ).scalar_one()
    finally:
        await cluster.close()
    report = verify_evidence(produced.data, roots.all)
    assert report == produced.report
    # Signed by EU, in EU's log, at the size and root EU itself holds.
    assert (report.issuer, report.issuer_root, report.trust_version) == ("EU", roots.eu, 1)
    assert (report.entry_index, report.tree_size) == (index, eu_head.size)
    assert report.root_hash == eu_head.root
    assert report.log_origin == "eu.mragw/log"
    # Cosigned by JP (the producer, which verified the checkpoint) and by US (stored line).
    assert [(w.admin, w.name, w.verified) for w in report.witnesses] == [
        ("JP", "jp.mragw/witness", True),
        ("US", "us.mragw/witness", True),
    ]
    assert [w.root_fingerprint for w in report.witnesses] == [roots.jp, roots.us]
    assert produced.skipped == ()
    # The record and the answer, re-derived from the embedded dataset.
    assert report.record["authorisation"] == "DEAEOF0000012"
    assert report.record["operator_ids"] == [{"scheme": "EORI", "value": DE_AEOF}]
    assert report.recognised
    assert report.answer["arrangements"] == ["EU-JP"]
    assert (report.question.recogniser, report.question.issuer) == ("JP", "EU")
    assert report.question.at.isoformat() == AT
    doc = json.loads(produced.data)
    assert hashlib.sha256(base64.b64decode(doc["dataset"]["content"])).hexdigest() == (
        report.dataset_version
    )
    text = report.summary()
    assert text.startswith("VERIFIED: evidence produced by JP")
    assert "RECOGNISED by JP on 2025-01-15 (any mode) under EU-JP" in text


async def test_own_log_bundle_with_ecdsa_entries_and_a_not_recognised_answer(
    db_url: str,  # noqa: F811 - the fixture, requested
    tmp_path: Path,
) -> None:
    """EU answers from its own log (no self-cosignature: its checkpoint signature says it
    all); entries signed with ECDSA P-256; a witness JP; an answer that is a "no"."""
    await initialise_node(
        admin="EU",
        home=tmp_path / "eu",
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        db_url=db_url,
        signing_algorithm="ecdsa-p256",
    )
    await initialise_node(
        admin="JP",
        home=tmp_path / "jp",
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        db_url=await storage_url(db_url, tmp_path, "JP", first=False),
    )
    eu = Node.open(tmp_path / "eu", environ=FAST_ENV)
    jp = Node.open(tmp_path / "jp", environ=FAST_ENV)
    try:
        bundle, jp_root = await export_bundle(jp)
        await add_partner(eu, bundle, jp_root, actor="test")
        await IssuerLog(eu).publish(records_of(eu_records()), actor="test")
        await witness(eu, "EU", jp)
        eu_root = await fingerprint(eu)
        yes = await build_evidence(eu, EvidenceRequest(DE_AEOF, "DE", at=AT))
        no = await build_evidence(eu, EvidenceRequest(NL_NO_CONSENT, "EU", at=AT))
        with pytest.raises(NoEvidenceError, match="UNKNOWN_OPERATOR"):
            await build_evidence(eu, EvidenceRequest("DE999999999999999", "DE", at=AT))
        # Dated before the record: NO_STATUS_ON_DATE, no record decides, nothing to prove.
        with pytest.raises(NoEvidenceError, match="NO_STATUS_ON_DATE"):
            await build_evidence(eu, EvidenceRequest(DE_AEOF, "DE", at="2010-01-01"))
    finally:
        await eu.close()
        await jp.close()
    report = verify_evidence(yes.data, [eu_root])
    assert report.entry_scheme == Scheme.ECDSA_P256_SHA256.value
    assert report.checkpoint_key_id != report.entry_key_id  # checkpoints stay Ed25519
    assert report.recognised
    assert (report.answer["arrangements"], report.answer["programme"]) == ([], "EU-AEO")
    assert [(w.admin, w.verified) for w in report.witnesses] == [("JP", False)]
    assert [
        (w.admin, w.verified) for w in verify_evidence(yes.data, [eu_root, jp_root]).witnesses
    ] == [("JP", True)]
    refused = verify_evidence(no.data, [eu_root])
    assert not refused.recognised
    assert [r["code"] for r in refused.answer["reasons"]] == ["NO_CONSENT"]
    assert "NOT RECOGNISED by EU on 2025-01-15 (any mode): NO_CONSENT" in refused.summary()


async def test_evidence_for_an_unknown_operator_is_refused(
    db_url: str,  # noqa: F811 - the fixture, requested
    tmp_path: Path,
) -> None:
    cluster, _ = await jp_answers_from_eu_replica(tmp_path, db_url)
    try:
        # The AEOC-only holder was never disclosed to JP: unknown there.
        with pytest.raises(NoEvidenceError, match="no record decides this answer"):
            await jp_evidence(cluster, operator="DE4711000067890")
        # A stored cosignature that does not verify is left out, never shipped.
        async with cluster.node("JP").engine.begin() as conn:
            line = (await conn.execute(select(cosignatures.c.line))).scalar_one()
            head, blob = line.rsplit(" ", 1)
            raw = bytearray(base64.b64decode(blob))
            raw[-1] ^= 1
            await conn.execute(
                cosignatures.update().values(line=f"{head} {base64.b64encode(raw).decode()}\n")
            )
        produced = await jp_evidence(cluster)
    finally:
        await cluster.close()
    assert produced.skipped == ("US: its stored cosignature does not verify",)
    assert [w.admin for w in produced.report.witnesses] == ["JP"]


# --- what verification says about a genuine bundle ------------------------------------------


def test_only_the_issuer_root_needs_trusting(genuine: Genuine) -> None:
    report = verify_evidence(genuine.data, [genuine.roots.eu])
    assert [(w.admin, w.verified, w.state) for w in report.witnesses] == [
        ("JP", False, "unverified (root not trusted)"),
        ("US", False, "unverified (root not trusted)"),
    ]
    assert "US as us.mragw/witness: unverified (root " in report.summary()


def test_an_untrusted_witness_is_unverified_and_a_trusted_one_verified(genuine: Genuine) -> None:
    report = verify_evidence(genuine.data, [genuine.roots.eu, genuine.roots.us])
    assert {w.admin: w.verified for w in report.witnesses} == {"JP": False, "US": True}
    us = report.to_json()["cosigned_by"][1]
    assert (us["state"], us["root_fingerprint"]) == ("verified", genuine.roots.us)


def test_report_json_names_every_proven_part(genuine: Genuine) -> None:
    doc = verify_evidence(genuine.data, genuine.roots.all).to_json()
    assert doc["verified"] is True
    assert doc["signed_by"]["admin"] == "EU"
    assert doc["included"]["tree_size"] == 7
    assert doc["included"]["index"] == genuine.entry_index
    assert doc["recognition"]["arrangements"] == ["EU-JP"]
    assert doc["recognition"]["recogniser"] == "JP"
    json.dumps(doc)  # a JSON document, as --json prints it


def test_an_expired_issuer_statement_is_a_warning(genuine: Genuine) -> None:
    later = datetime.now(tz=UTC) + timedelta(days=3650)
    report = verify_evidence(genuine.data, [genuine.roots.eu], now=later)
    assert any("expired" in w for w in report.warnings)
    assert "warning:" in report.summary()


# --- every edit is rejected, naming the part --------------------------------------------------

Edit = Callable[[dict[str, Any], Genuine], None]


def _flip(b64: str, at: int = 0) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[at] ^= 0x01
    return base64.b64encode(bytes(raw)).decode("ascii")


def _set_envelope(doc: dict[str, Any], envelope: bytes) -> None:
    """Replace the entry's bytes and keep every derived member consistent, so only the
    cryptography can notice."""
    message = envelope_pb2.Envelope()
    message.ParseFromString(envelope)
    doc["entry"]["envelope"] = base64.b64encode(envelope).decode()
    doc["entry"]["leaf_hash"] = base64.b64encode(leaf_hash(envelope)).decode()
    doc["entry"]["payload"] = base64.b64encode(message.payload).decode()
    doc["entry"]["signatures"] = [
        {"key_id": s.key_id, "sig": base64.b64encode(s.sig).decode()} for s in message.signatures
    ]


def edit_payload_byte(doc: dict[str, Any], _: Genuine) -> None:
    envelope = bytearray(base64.b64decode(doc["entry"]["envelope"]))
    payload = base64.b64decode(doc["entry"]["payload"])
    at = bytes(envelope).index(payload) + len(payload) // 2
    envelope[at] ^= 0x01
    _set_envelope(doc, bytes(envelope))


def remove_entry_signature(doc: dict[str, Any], _: Genuine) -> None:
    message = envelope_pb2.Envelope()
    message.ParseFromString(base64.b64decode(doc["entry"]["envelope"]))
    del message.signatures[:]
    _set_envelope(doc, message.SerializeToString(deterministic=True))


def _note_lines(doc: dict[str, Any]) -> list[str]:
    return str(doc["checkpoint"]).split("\n")


def edit_checkpoint_line(position: int, value: Callable[[str], str]) -> Edit:
    def edit(doc: dict[str, Any], _: Genuine) -> None:
        lines = _note_lines(doc)
        lines[position] = value(lines[position])
        doc["checkpoint"] = "\n".join(lines)

    return edit


def remove_issuer_checkpoint_signature(doc: dict[str, Any], _: Genuine) -> None:
    lines = [x for x in _note_lines(doc) if not x.startswith("\u2014 eu.mragw/log ")]
    doc["checkpoint"] = "\n".join(lines)


def forge_cosignature(doc: dict[str, Any], _: Genuine) -> None:
    """US's line with one signature bit flipped (key hint intact)."""
    lines = _note_lines(doc)
    n = next(i for i, x in enumerate(lines) if x.startswith("\u2014 us.mragw/witness "))
    head, blob = lines[n].rsplit(" ", 1)
    lines[n] = f"{head} {_flip(blob, -1)}"
    doc["checkpoint"] = "\n".join(lines)


def cosign_with_another_key(doc: dict[str, Any], _: Genuine) -> None:
    """US's line replaced by a valid cosignature under US's name by a key not in its chain."""
    note = parse_note(doc["checkpoint"])
    stranger = PrivateKeySigner.generate(Scheme.ED25519)
    forged = cosign(note, "us.mragw/witness", stranger, int(time.time())).rstrip("\n")
    lines = [forged if x.startswith("\u2014 us.mragw/witness ") else x for x in _note_lines(doc)]
    doc["checkpoint"] = "\n".join(lines)


def swap_issuer_chain(doc: dict[str, Any], _: Genuine) -> None:
    """JP's genuine chain presented as the issuer's."""
    jp = next(w for w in doc["witnesses"] if w["admin"] == "JP")
    doc["issuer_chain"] = jp["chain"]


def issuer_as_witness(doc: dict[str, Any], _: Genuine) -> None:
    """The issuer listed as a witness of its own log (with its own genuine chain)."""
    doc["witnesses"].append({"admin": "EU", "chain": doc["issuer_chain"]})


def swap_witness_chain(doc: dict[str, Any], _: Genuine) -> None:
    """US's entry carrying JP's chain."""
    jp = next(w for w in doc["witnesses"] if w["admin"] == "JP")
    us = next(w for w in doc["witnesses"] if w["admin"] == "US")
    us["chain"] = jp["chain"]


def edit_dataset(change: Callable[[dict[str, Any]], None], *, rehash: bool) -> Edit:
    def edit(doc: dict[str, Any], _: Genuine) -> None:
        dataset = json.loads(base64.b64decode(doc["dataset"]["content"]))
        change(dataset)
        content = json.dumps(dataset).encode()
        doc["dataset"]["content"] = base64.b64encode(content).decode()
        if rehash:
            doc["dataset"]["version"] = hashlib.sha256(content).hexdigest()

    return edit


def terminate_eu_jp(dataset: dict[str, Any]) -> None:
    arrangement = next(a for a in dataset["arrangements"] if a["id"] == "EU-JP")
    arrangement["terminated"] = "2020-01-01"


def set_path(path: str, value: Any) -> Edit:
    def edit(doc: dict[str, Any], _: Genuine) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for name in parents:
            target = target[int(name)] if isinstance(target, list) else target[name]
        target[last] = value

    return edit


def extend_issuer_chain(which: str) -> Edit:
    def edit(doc: dict[str, Any], g: Genuine) -> None:
        doc["issuer_chain"].append(getattr(g, which))

    return edit


EDITS = [
    pytest.param(set_path("record.name", "Someone Else GmbH"), RECORD, id="edited-record"),
    pytest.param(set_path("record.consent", False), RECORD, id="edited-record-consent"),
    pytest.param(edit_payload_byte, ENTRY, id="edited-payload-byte"),
    pytest.param(
        set_path("entry.payload", base64.b64encode(b"\x0a\x02DE").decode()),
        FORMAT,
        id="edited-split-payload",
    ),
    pytest.param(remove_entry_signature, ENTRY, id="removed-entry-signature"),
    pytest.param(set_path("entry.index", 1), FORMAT, id="edited-entry-index"),
    pytest.param(
        lambda d, _: d["inclusion_proof"]["hashes"].__setitem__(
            0, _flip(d["inclusion_proof"]["hashes"][0])
        ),
        INCLUSION,
        id="edited-proof-hash",
    ),
    pytest.param(
        lambda d, _: d["inclusion_proof"]["hashes"].pop(),
        INCLUSION,
        id="dropped-proof-hash",
    ),
    pytest.param(
        set_path("entry.leaf_hash", base64.b64encode(bytes(32)).decode()),
        INCLUSION,
        id="edited-leaf-hash",
    ),
    pytest.param(edit_checkpoint_line(1, lambda _: "8"), CHECKPOINT, id="edited-checkpoint-size"),
    pytest.param(edit_checkpoint_line(2, _flip), CHECKPOINT, id="edited-checkpoint-root"),
    pytest.param(remove_issuer_checkpoint_signature, CHECKPOINT, id="removed-issuer-signature"),
    pytest.param(
        lambda d, _: d["inclusion_proof"].__setitem__("tree_size", 8),
        INCLUSION,
        id="edited-proof-tree-size",
    ),
    pytest.param(forge_cosignature, f"{COSIGNATURE} of US", id="forged-cosignature"),
    pytest.param(cosign_with_another_key, f"{COSIGNATURE} of US", id="cosigned-by-another-key"),
    pytest.param(swap_issuer_chain, ISSUER_CHAIN, id="swapped-issuer-chain"),
    pytest.param(swap_witness_chain, f"{COSIGNATURE} of US", id="swapped-witness-chain"),
    pytest.param(issuer_as_witness, f"{COSIGNATURE} of EU", id="issuer-as-its-own-witness"),
    pytest.param(
        lambda d, _: d["issuer_chain"][0]["signatures"].clear(),
        FORMAT,
        id="removed-chain-signature",
    ),
    pytest.param(extend_issuer_chain("revoke_entry"), ENTRY, id="entry-key-revoked-at-0"),
    pytest.param(
        extend_issuer_chain("revoke_checkpoint"), CHECKPOINT, id="checkpoint-key-revoked-at-1"
    ),
    pytest.param(
        edit_dataset(terminate_eu_jp, rehash=True), ANSWER, id="edited-dataset-changes-answer"
    ),
    pytest.param(edit_dataset(terminate_eu_jp, rehash=False), DATASET, id="edited-dataset-bytes"),
    pytest.param(set_path("answer.recognised", False), ANSWER, id="edited-answer"),
    pytest.param(set_path("answer.arrangements", ["EU-US"]), ANSWER, id="edited-arrangements"),
    pytest.param(set_path("question.at", "2010-01-01"), QUESTION, id="question-before-record"),
    pytest.param(set_path("question.issuer", "FR"), QUESTION, id="question-other-issuer"),
    pytest.param(set_path("question.operator", "DE999"), QUESTION, id="question-other-operator"),
    pytest.param(set_path("question.mode", "ship"), FORMAT, id="question-bad-mode"),
    pytest.param(set_path("_type", "mra-gateway/evidence/v0"), FORMAT, id="other-type"),
    pytest.param(lambda d, _: d.__setitem__("extra", 1), FORMAT, id="unexpected-member"),
]


@pytest.mark.parametrize(("edit", "part"), EDITS)
def test_every_edit_is_rejected_naming_the_part(genuine: Genuine, edit: Edit, part: str) -> None:
    doc = json.loads(genuine.data)
    original = copy.deepcopy(doc)
    edit(doc, genuine)
    assert doc != original, "the edit changed nothing"
    data = json.dumps(doc, indent=2, ensure_ascii=False).encode()
    with pytest.raises(EvidenceError) as failure:
        verify_evidence(data, genuine.roots.all)
    assert failure.value.part == part, str(failure.value)
    assert str(failure.value).startswith(f"{part}: ")


def test_the_issuer_root_must_be_an_anchor(genuine: Genuine) -> None:
    with pytest.raises(EvidenceError) as failure:
        verify_evidence(genuine.data, [genuine.roots.jp, genuine.roots.us])
    assert failure.value.part == ISSUER_CHAIN
    assert f"the root of EU ({genuine.roots.eu}) is not among the --trust anchors" in str(
        failure.value
    )


@pytest.mark.parametrize(
    "cut", [1, 100, 0.5, -2], ids=["one-byte", "first-100", "half", "last-byte-missing"]
)
def test_a_truncated_file_is_rejected(genuine: Genuine, cut: float) -> None:
    end = int(len(genuine.data) * cut) if isinstance(cut, float) else cut
    with pytest.raises(EvidenceError) as failure:
        verify_evidence(genuine.data[:end], genuine.roots.all)
    assert failure.value.part == FORMAT
    assert "truncated" in str(failure.value)


def test_a_trailing_newline_alone_does_not_matter(genuine: Genuine) -> None:
    """Contrast for the truncation cases: whitespace outside the JSON is not content."""
    assert genuine.data.endswith(b"\n")
    report = verify_evidence(genuine.data[:-1], genuine.roots.all)
    assert isinstance(report, EvidenceReport)


def test_an_oversized_file_is_rejected_before_parsing(genuine: Genuine) -> None:
    with pytest.raises(EvidenceError, match="larger than"):
        verify_evidence(genuine.data + b" " * (8 * 1024 * 1024), genuine.roots.all)


def test_a_malformed_anchor_is_a_usage_error(genuine: Genuine) -> None:
    with pytest.raises(InputError, match="64 lowercase hex"):
        verify_evidence(genuine.data, ["not-a-fingerprint"])


def test_the_issuer_is_not_accepted_as_a_witness_of_its_own_log(genuine: Genuine) -> None:
    doc = json.loads(genuine.data)
    issuer_as_witness(doc, genuine)
    data = json.dumps(doc, indent=2, ensure_ascii=False).encode()
    with pytest.raises(EvidenceError, match="it cannot also be a witness of it"):
        verify_evidence(data, genuine.roots.all)

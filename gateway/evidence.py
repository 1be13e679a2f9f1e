"""Evidence bundles (``mragw evidence``): one answer of this node, provable offline.

A bundle is one JSON document (format: docs/evidence.md) holding everything a third party needs
to check an answer with no network and no database: the question and the answer; the signed
entry of the record that decided it, with its inclusion proof to a checkpoint of the log that
holds it; that checkpoint with the cosignatures this node holds for it plus its own; the trust
statement chains of the log's administration and of every cosigning witness; the record decoded;
and the registry dataset the answer was derived from (embedded).

Invariants:
- The answer, the record and its evidence come from one Check (gateway.query.Checker with
  ``evidence=True``), so the bundle shows exactly the record that decided what ``mragw check``
  says, and only an entry whose signature verified (``sig_state`` valid) can be in it.
- The dataset embedded is the one that answered (looked up by the answer's dataset version).
- A stored cosignature is included only if it verifies against the witness's pinned chain;
  this node cosigns a partner's checkpoint only after verifying it against the issuer's chain.
- Every bundle is verified by :func:`gateway.evidence_verify.verify_evidence` before it is
  handed out, with the roots this node pins as anchors: a bundle that would not verify is an
  error here, never a file.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.checkpoint import SignedNote, parse_note
from crypto.cosignature import add_cosignature, cosign, find_cosignature
from crypto.envelope import Envelope, envelope_to_json
from crypto.errors import CryptoError
from crypto.keys import Scheme
from crypto.merkle import leaf_hash
from gateway import codec
from gateway.errors import GatewayError, InputError
from gateway.evidence_verify import (
    EVIDENCE_TYPE,
    EvidenceError,
    EvidenceReport,
    answer_document,
    record_document,
    verify_evidence,
    verify_log_checkpoint,
)
from gateway.node import Node
from gateway.query import CheckAnswer, Checker, Question, TypeAnswer
from gateway.records import AeoStatusRecord
from gateway.storage.schema import cosignatures, datasets, partners
from gateway.trust import TrustError, TrustStatement, parse_bundle, verify_chain, witness_name
from mra.v1 import envelope_pb2

_TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"


class NoEvidenceError(InputError):
    """There is no record to prove (unknown operator, no status on the date), or its entry is
    not provable from this node (envelope not held, not yet under a checkpoint held here)."""


@dataclass(frozen=True, slots=True)
class EvidenceRequest:
    """What ``mragw evidence`` asks; the same fields as a Check question."""

    operator: str
    issuer: str
    at: date | str | None = None
    mode: str | None = None
    scheme: str | None = None
    type: str | None = None
    strict: bool = False


@dataclass(frozen=True, slots=True)
class ProducedEvidence:
    """A bundle (``data`` is the file), what verifying it proved, and the stored cosignatures
    left out because they did not verify (``skipped``, one line each)."""

    document: dict[str, Any]
    data: bytes
    report: EvidenceReport
    skipped: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Chain:
    admin: str
    fingerprint: str
    envelopes: tuple[Envelope, ...]
    statement: TrustStatement


def _deciding(answer: CheckAnswer) -> TypeAnswer:
    """The type answer whose record decided the answer: the first recognised type, else the
    first type with a status on the date (types come sorted, as ``mragw check`` shows them)."""
    held = [t for t in answer.types if t.record is not None]
    if not held:
        why = "; ".join(f"{r.code}: {r.detail}" for r in answer.reasons) or "; ".join(
            f"{t.type}: {', '.join(r.code for r in t.reasons)}" for t in answer.types
        )
        raise NoEvidenceError(
            f"no record decides this answer, so there is nothing to prove ({why})"
        )
    recognised = [t for t in held if t.recognised]
    return (recognised or held)[0]


def _chain_json(chain: tuple[Envelope, ...]) -> list[Any]:
    return [json.loads(envelope_to_json(e)) for e in chain]


async def _own_chain(node: Node, conn: AsyncConnection, now: datetime) -> _Chain:
    envelopes = tuple(await node.trust_chain(conn))
    first = TrustStatement.from_payload(envelopes[0].payload)
    statement = verify_chain(
        envelopes, first.root_fingerprint, now=now, admin=node.admin, check_expiry=False
    )
    return _Chain(node.admin, first.root_fingerprint, envelopes, statement)


async def _partner_chain(conn: AsyncConnection, code: str, now: datetime) -> _Chain | None:
    """A pinned partner's chain, re-verified from its pinned root; None if not pinned here."""
    row = (
        await conn.execute(
            select(partners.c.root_fingerprint, partners.c.bundle).where(partners.c.code == code)
        )
    ).one_or_none()
    if row is None:
        return None
    envelopes = tuple(parse_bundle(bytes(row.bundle), f"stored bundle of {code}"))
    statement = verify_chain(
        envelopes, row.root_fingerprint, now=now, admin=code, check_expiry=False
    )
    return _Chain(code, row.root_fingerprint, envelopes, statement)


def _verified_cosignature(note: SignedNote, line: str, witness: _Chain) -> SignedNote | None:
    """The note with ``line`` added, if it is a valid cosignature of ``witness``."""
    try:
        cosigned = add_cosignature(note, line)
    except CryptoError:
        return None
    name = witness_name(witness.admin)
    for key in witness.statement.signing_keys:
        if key.public_key.scheme is not Scheme.ED25519 or key.revoked_at_index is not None:
            continue
        try:
            if find_cosignature(cosigned, name, key.public_key) is not None:
                return cosigned
        except CryptoError:
            return None
    return None


async def build_evidence(
    node: Node, request: EvidenceRequest, *, now: datetime | None = None
) -> ProducedEvidence:
    """Answer ``request`` on ``node`` and build, self-verify and return its evidence bundle."""
    moment = (now or datetime.now(tz=UTC)).replace(microsecond=0)
    answer = await Checker.for_node(node).check(
        Question(
            operator_id=request.operator,
            issuer=request.issuer,
            scheme=request.scheme,
            type=request.type,
            at=request.at,
            mode=request.mode,
            strict=request.strict,
            evidence=True,
        )
    )
    deciding = _deciding(answer)
    evidence = deciding.evidence
    assert deciding.record is not None  # noqa: S101 - _deciding picks a type with a record
    if evidence is None or evidence.entry is None or evidence.checkpoint is None:
        detail = evidence.unavailable if evidence is not None else "no evidence was gathered"
        raise NoEvidenceError(
            f"entry {deciding.record.idx} of log {deciding.record.log} cannot be proven from "
            f"this node: {detail}"
        )
    log = evidence.log
    skipped: list[str] = []
    async with node.engine.connect() as conn:
        content = (
            await conn.execute(
                select(datasets.c.content).where(datasets.c.version == answer.dataset)
            )
        ).scalar_one()
        own = await _own_chain(node, conn, moment)
        issuer = own if log == node.admin else await _partner_chain(conn, log, moment)
        if issuer is None:
            raise NoEvidenceError(
                f"log {log} is no longer a pinned partner here: its trust chain is not held"
            )
        note = parse_note(evidence.checkpoint)
        # The held checkpoint was verified when it arrived; verify it again against the chain
        # the bundle will carry, so this node never cosigns or ships what it cannot prove.
        checkpoint, _ = verify_log_checkpoint(evidence.checkpoint, issuer.statement)
        rows = (
            await conn.execute(
                select(cosignatures.c.witness, cosignatures.c.line)
                .where(
                    cosignatures.c.log == log,
                    cosignatures.c.size == checkpoint.size,
                    cosignatures.c.root == checkpoint.root_hash,
                )
                .order_by(cosignatures.c.witness)
            )
        ).all()
        witnesses: dict[str, _Chain] = {}
        for row in rows:
            if row.witness in (log, node.admin):
                continue  # the log's own line is its signature; ours is added below
            try:
                chain = await _partner_chain(conn, row.witness, moment)
            except (TrustError, GatewayError) as error:
                skipped.append(f"{row.witness}: its stored trust chain does not verify: {error}")
                continue
            if chain is None:
                skipped.append(f"{row.witness}: no longer a pinned partner")
                continue
            cosigned = _verified_cosignature(note, row.line, chain)
            if cosigned is None:
                skipped.append(f"{row.witness}: its stored cosignature does not verify")
                continue
            note = cosigned
            witnesses[row.witness] = chain
        if log != node.admin:
            # Witnessing: this node verified the partner's checkpoint (above, and when it was
            # replicated), so it vouches for it with its own cosignature.
            signer = (await node.active_signers(conn))[0]
            line = cosign(note, witness_name(node.admin), signer, int(moment.timestamp()))
            note = add_cosignature(note, line)
            witnesses[node.admin] = own
    envelope = evidence.entry
    message = envelope_pb2.Envelope()
    message.ParseFromString(envelope)
    record = codec.decode(message.payload_type, bytes(message.payload))
    if not isinstance(record, AeoStatusRecord):  # Check answers from status records only
        raise GatewayError(f"entry {evidence.leaf_index} of log {log} is not an AEO status")
    document: dict[str, Any] = {
        "_type": EVIDENCE_TYPE,
        "produced_at": moment.strftime(_TIMESTAMP),
        "producer": node.admin,
        "question": {
            "operator": request.operator.strip(),
            "scheme": request.scheme.strip().upper() if request.scheme else None,
            "issuer": answer.issuer,
            "recogniser": node.admin,
            "at": answer.at.isoformat(),
            "mode": request.mode.strip().lower() if request.mode else None,
            "strict": request.strict,
            "type": request.type.strip().upper() if request.type else None,
        },
        "answer": answer_document(deciding),
        "entry": {
            "log": log,
            "index": evidence.leaf_index,
            "envelope": _b64(envelope),
            "leaf_hash": _b64(leaf_hash(envelope)),
            "payload_type": message.payload_type,
            "payload": _b64(bytes(message.payload)),
            "signatures": [
                {"key_id": s.key_id, "sig": _b64(bytes(s.sig))} for s in message.signatures
            ],
        },
        "inclusion_proof": {
            "index": evidence.leaf_index,
            "tree_size": evidence.tree_size,
            "hashes": [_b64(h) for h in evidence.proof],
        },
        "checkpoint": note.to_text(),
        "issuer_chain": _chain_json(issuer.envelopes),
        "witnesses": [
            {"admin": code, "chain": _chain_json(chain.envelopes)}
            for code, chain in sorted(witnesses.items())
        ],
        "record": record_document(record),
        "dataset": {"version": answer.dataset, "content": _b64(bytes(content))},
    }
    data = evidence_bytes(document)
    anchors = {issuer.fingerprint, own.fingerprint} | {c.fingerprint for c in witnesses.values()}
    try:
        report = verify_evidence(data, anchors, now=moment)
    except EvidenceError as error:
        raise EvidenceError(
            error.part, f"the bundle built here does not verify: {error.detail}"
        ) from error
    return ProducedEvidence(document, data, report, tuple(skipped))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def evidence_bytes(document: dict[str, Any]) -> bytes:
    """The file: indented UTF-8 JSON (the checkpoint's signature lines start with an em dash)."""
    return json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"


__all__ = [
    "EvidenceRequest",
    "NoEvidenceError",
    "ProducedEvidence",
    "build_evidence",
    "evidence_bytes",
]

"""Offline verification of an evidence bundle (``mragw verify``): no network, no database.

A bundle (format: docs/evidence.md, made by :mod:`gateway.evidence`) claims "administration R
answered this question so, because of this record, signed by the log of administration L,
included in L's log at this size, cosigned by these witnesses". :func:`verify_evidence` checks
every part of that claim against the trust anchors the verifier gives (root key fingerprints,
as partners pin them) and returns an :class:`EvidenceReport` saying exactly what was proven.

Checks, numbered as in the code:
1. the file parses strictly: bounded size, UTF-8, JSON without duplicate members, exactly the
   documented members, canonical base64, and the parts that repeat each other agree;
2. the chain of trust statements of L verifies from version 1, and version 1's root is one of
   the anchors (else it fails, naming the root);
3. the entry is signed by a signing key of L's newest statement that is not revoked at or
   before the entry's index (gateway.verification.check_entry: the rule replication uses);
4. the checkpoint note is signed, as L's log origin, by an Ed25519 key of that statement not
   revoked below the checkpoint's size;
5. SHA-256(0x00 || envelope bytes) is included at the entry's index in the checkpoint's tree;
6. every listed witness whose version-1 root is an anchor has a verified chain and a valid
   C2SP cosignature on the note; a witness whose root is not an anchor is reported as
   unverified (nothing about it is believed); a cosignature that is present but does not
   verify fails the whole bundle;
7. the record decoded from the signed payload is the bundle's record;
8. the question fits the record (issuer, identifier, type) and L's log speaks for that issuer;
9. the embedded registry dataset is the version it claims (SHA-256 of its bytes), and the answer
   re-derived from it with the same decision function as Check (gateway.query.decide_status)
   is the bundle's answer, member for member.

Invariant: nothing from the bundle is believed before the step that checks it. Every failure
raises :class:`EvidenceError` (a CheckFailedError: exit 1) naming the part that failed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from google.protobuf.message import DecodeError

from crypto.checkpoint import Checkpoint, parse_note, verify_checkpoint
from crypto.cosignature import find_cosignature
from crypto.envelope import Envelope, envelope_from_json
from crypto.errors import CryptoError, VerificationError
from crypto.keys import Scheme
from crypto.merkle import leaf_hash, verify_inclusion
from gateway import codec
from gateway.datasets import recogniser_for
from gateway.errors import CheckFailedError, GatewayError, InputError
from gateway.query import StatusRecord, TypeAnswer, decide_status, log_speaks_for
from gateway.records import SCHEMES, AeoStatusRecord, normalise_identifier
from gateway.trust import TrustError, TrustStatement, verify_chain, witness_name
from gateway.verification import check_entry
from mra.v1 import envelope_pb2
from registry.errors import QuestionError, RegistryError
from registry.model import MODES
from registry.resolver import Recogniser, parse_day

EVIDENCE_TYPE = "mra-gateway/evidence/v1"
#: The embedded dataset is the bulk of a bundle (about 160 KiB of base64 today).
MAX_EVIDENCE_BYTES = 8 * 1024 * 1024
MAX_WITNESSES = 64
#: An inclusion proof in a tree of at most 2^64 leaves has at most 64 hashes.
MAX_PROOF_HASHES = 64

# The parts a failure names (the first word of every EvidenceError message).
FORMAT = "format"
ISSUER_CHAIN = "issuer trust chain"
ENTRY = "entry signature"
CHECKPOINT = "checkpoint"
INCLUSION = "inclusion proof"
COSIGNATURE = "cosignature"
RECORD = "record"
QUESTION = "question"
DATASET = "dataset"
ANSWER = "answer"

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_CODE = re.compile(r"[A-Z]{2,4}")
_TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"


class EvidenceError(CheckFailedError):
    """An evidence bundle did not verify; ``part`` names what failed."""

    def __init__(self, part: str, detail: str) -> None:
        self.part = part
        self.detail = detail
        super().__init__(f"{part}: {detail}")


# --- the parsed bundle ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvidenceQuestion:
    """The question the producer answered (as normalised by its Checker)."""

    operator: str
    scheme: str | None
    issuer: str
    recogniser: str
    at: date
    mode: str | None
    strict: bool
    type: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "operator": self.operator,
            "scheme": self.scheme,
            "issuer": self.issuer,
            "recogniser": self.recogniser,
            "at": self.at.isoformat(),
            "mode": self.mode,
            "strict": self.strict,
            "type": self.type,
        }


@dataclass(frozen=True, slots=True)
class WitnessChain:
    admin: str
    chain: tuple[Envelope, ...]


@dataclass(frozen=True, slots=True)
class EvidenceBundle:
    """A bundle after strict parsing (step 1): nothing in it is verified yet."""

    produced_at: str
    producer: str
    question: EvidenceQuestion
    answer: dict[str, Any]
    log: str
    index: int
    envelope: bytes
    leaf_hash: bytes
    tree_size: int
    proof: tuple[bytes, ...]
    checkpoint: str
    issuer_chain: tuple[Envelope, ...]
    witnesses: tuple[WitnessChain, ...]
    record: dict[str, Any]
    dataset_version: str
    dataset: bytes


# --- the report -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WitnessReport:
    """One listed witness: ``verified`` only when its root is an anchor and its cosignature
    checked out."""

    admin: str
    name: str
    root_fingerprint: str
    verified: bool
    key_id: str | None = None
    timestamp: int | None = None

    @property
    def state(self) -> str:
        return "verified" if self.verified else "unverified (root not trusted)"

    def to_json(self) -> dict[str, Any]:
        return {
            "admin": self.admin,
            "name": self.name,
            "root_fingerprint": self.root_fingerprint,
            "state": "verified" if self.verified else "unverified",
            "detail": self.state,
            "key_id": self.key_id,
            "timestamp": _iso_seconds(self.timestamp) if self.timestamp is not None else None,
        }


@dataclass(frozen=True, slots=True)
class EvidenceReport:
    """What a verified bundle proves."""

    producer: str
    produced_at: str
    issuer: str
    issuer_root: str
    trust_version: int
    trust_expires: str
    entry_index: int
    entry_key_id: str
    entry_scheme: str
    leaf_hash: bytes
    log_origin: str
    tree_size: int
    root_hash: bytes
    checkpoint_key_id: str
    witnesses: tuple[WitnessReport, ...]
    #: Names of note signature lines that belong to no listed witness (ignored, as C2SP says).
    ignored_signatures: tuple[str, ...]
    record: dict[str, Any]
    question: EvidenceQuestion
    answer: dict[str, Any]
    dataset_version: str
    warnings: tuple[str, ...]

    @property
    def recognised(self) -> bool:
        return bool(self.answer["recognised"])

    def to_json(self) -> dict[str, Any]:
        a = self.answer
        return {
            "verified": True,
            "producer": self.producer,
            "produced_at": self.produced_at,
            "signed_by": {
                "admin": self.issuer,
                "root_fingerprint": self.issuer_root,
                "trust_version": self.trust_version,
                "trust_expires": self.trust_expires,
                "key_id": self.entry_key_id,
                "scheme": self.entry_scheme,
            },
            "included": {
                "log": self.issuer,
                "origin": self.log_origin,
                "index": self.entry_index,
                "leaf_hash": self.leaf_hash.hex(),
                "tree_size": self.tree_size,
                "root_hash": base64.b64encode(self.root_hash).decode("ascii"),
                "checkpoint_key_id": self.checkpoint_key_id,
            },
            "cosigned_by": [w.to_json() for w in self.witnesses],
            "ignored_signatures": list(self.ignored_signatures),
            "record": self.record,
            "recognition": {
                "recognised": a["recognised"],
                "recogniser": self.question.recogniser,
                "issuer": self.question.issuer,
                "operator": self.question.operator,
                "type": a["type"],
                "at": self.question.at.isoformat(),
                "mode": self.question.mode,
                "strict": self.question.strict,
                "arrangements": a["arrangements"],
                "programme": a["programme"],
                "reasons": a["reasons"],
                "certainty": a["certainty"],
                "dataset": self.dataset_version,
            },
            "warnings": list(self.warnings),
        }

    def summary(self) -> str:
        """The human report of ``mragw verify``."""
        a, q, r = self.answer, self.question, self.record
        lines = [
            f"VERIFIED: evidence produced by {self.producer} at {self.produced_at}",
            f"signed by:   {self.issuer} (root {self.issuer_root}, trust statement "
            f"v{self.trust_version}), entry key {self.entry_key_id} ({self.entry_scheme})",
            f"included in: log {self.log_origin}, entry {self.entry_index} of tree size "
            f"{self.tree_size} (root {base64.b64encode(self.root_hash).decode('ascii')}), "
            f"checkpoint key {self.checkpoint_key_id}",
        ]
        if not self.witnesses:
            lines.append("cosigned by: no witness")
        for n, w in enumerate(self.witnesses):
            head = "cosigned by: " if n == 0 else "             "
            detail = w.state
            if w.verified and w.timestamp is not None:
                detail += f" at {_iso_seconds(w.timestamp)} (key {w.key_id})"
            elif not w.verified:
                detail = f"unverified (root {w.root_fingerprint} not trusted)"
            lines.append(f"{head}{w.admin} as {w.name}: {detail}")
        if self.ignored_signatures:
            lines.append(f"ignored:     signature lines of {', '.join(self.ignored_signatures)}")
        ids = ", ".join(f"{i['scheme']}:{i['value']}" for i in r["operator_ids"])
        validity = f"{r['valid_from'] or '...'} to {r['valid_until'] or 'open end'}"
        lines.append(
            f"record:      {r['issuer']} {r['type']} {r['authorisation']} {r['status']} since "
            f"{r['status_date']} (valid {validity}, consent {'yes' if r['consent'] else 'no'}); "
            f"{r['name']} ({ids})"
        )
        mode = q.mode or "any mode"
        strict = ", strict" if q.strict else ""
        if a["recognised"]:
            why = (
                f"under {', '.join(a['arrangements'])}"
                if a["arrangements"]
                else f"within programme {a['programme']}"
            )
            verdict = f"RECOGNISED by {q.recogniser} on {q.at.isoformat()} ({mode}{strict}) {why}"
        else:
            codes = ", ".join(
                x["code"] + (f" [{x['arrangement']}]" if x["arrangement"] else "")
                for x in a["reasons"]
            )
            verdict = (
                f"NOT RECOGNISED by {q.recogniser} on {q.at.isoformat()} ({mode}{strict}): {codes}"
            )
        lines.append(f"answer:      {verdict}")
        lines.append(f"             re-derived from the embedded dataset {self.dataset_version}")
        lines.extend(f"warning:     {w}" for w in self.warnings)
        return "\n".join(lines)


def _iso_seconds(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime(_TIMESTAMP)


# --- step 1: strict parsing -----------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise EvidenceError(FORMAT, f"duplicate JSON member {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> None:
    raise EvidenceError(FORMAT, f"non-standard JSON constant {name}")


def _members(doc: Any, names: Collection[str], where: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise EvidenceError(FORMAT, f"{where} is not a JSON object")
    missing, extra = set(names) - set(doc), set(doc) - set(names)
    if missing or extra:
        raise EvidenceError(
            FORMAT, f"{where}: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    return doc


def _text(value: Any, where: str, *, optional: bool = False) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str) or not value:
        raise EvidenceError(FORMAT, f"{where} is not a non-empty string")
    return value


def _integer(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise EvidenceError(FORMAT, f"{where} is not an unsigned 64-bit integer")
    return value


def _code(value: Any, where: str) -> str:
    text = _text(value, where)
    if not _CODE.fullmatch(text):
        raise EvidenceError(FORMAT, f"{where}: {text!r} is not an administration code")
    return text


def _b64(value: Any, where: str) -> bytes:
    """Standard padded base64, canonical: one encoding per value."""
    if not isinstance(value, str):
        raise EvidenceError(FORMAT, f"{where} is not a base64 string")
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise EvidenceError(FORMAT, f"{where} is not valid base64") from None
    if base64.b64encode(decoded).decode("ascii") != value:
        raise EvidenceError(FORMAT, f"{where} is not canonical base64")
    return decoded


def _chain(value: Any, where: str) -> tuple[Envelope, ...]:
    if not isinstance(value, list) or not value:
        raise EvidenceError(FORMAT, f"{where} is not a non-empty list of trust statements")
    out: list[Envelope] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise EvidenceError(FORMAT, f"{where}[{i}] is not a DSSE envelope object")
        try:
            out.append(envelope_from_json(json.dumps(item).encode("utf-8")))
        except CryptoError as error:
            raise EvidenceError(FORMAT, f"{where}[{i}]: {error}") from error
    return tuple(out)


def _question(doc: Any) -> EvidenceQuestion:
    q = _members(
        doc,
        ("operator", "scheme", "issuer", "recogniser", "at", "mode", "strict", "type"),
        "question",
    )
    try:
        at = parse_day(_text(q["at"], "question.at"))
    except QuestionError as error:
        raise EvidenceError(FORMAT, f"question.at: {error}") from error
    mode = _text(q["mode"], "question.mode", optional=True) or None
    if mode is not None and mode not in MODES:
        raise EvidenceError(FORMAT, f"question.mode: {mode!r} is not one of {', '.join(MODES)}")
    scheme = _text(q["scheme"], "question.scheme", optional=True) or None
    if scheme is not None and scheme not in SCHEMES:
        raise EvidenceError(FORMAT, f"question.scheme: {scheme!r} is not a known scheme")
    if not isinstance(q["strict"], bool):
        raise EvidenceError(FORMAT, "question.strict is not a boolean")
    return EvidenceQuestion(
        operator=_text(q["operator"], "question.operator"),
        scheme=scheme,
        issuer=_code(q["issuer"], "question.issuer"),
        recogniser=_code(q["recogniser"], "question.recogniser"),
        at=at,
        mode=mode,
        strict=q["strict"],
        type=_text(q["type"], "question.type", optional=True) or None,
    )


def _split_envelope(envelope: bytes) -> envelope_pb2.Envelope:
    message = envelope_pb2.Envelope()
    try:
        message.ParseFromString(envelope)
    except DecodeError as error:
        raise EvidenceError(FORMAT, f"entry.envelope is not an mra.v1.Envelope: {error}") from error
    return message


def parse_evidence(data: bytes) -> EvidenceBundle:
    """Step 1: parse a bundle strictly; verifies nothing."""
    if len(data) > MAX_EVIDENCE_BYTES:
        raise EvidenceError(FORMAT, f"file is larger than {MAX_EVIDENCE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EvidenceError(FORMAT, "file is not UTF-8") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise EvidenceError(
            FORMAT, f"not a JSON document (truncated?): {error.msg} at line {error.lineno}"
        ) from None
    top = _members(
        doc,
        (
            "_type",
            "produced_at",
            "producer",
            "question",
            "answer",
            "entry",
            "inclusion_proof",
            "checkpoint",
            "issuer_chain",
            "witnesses",
            "record",
            "dataset",
        ),
        "bundle",
    )
    if top["_type"] != EVIDENCE_TYPE:
        raise EvidenceError(FORMAT, f"_type is {top['_type']!r}, not {EVIDENCE_TYPE!r}")
    produced_at = _text(top["produced_at"], "produced_at")
    try:
        datetime.strptime(produced_at, _TIMESTAMP)  # noqa: DTZ007 - the format ends in Z (UTC)
    except ValueError:
        raise EvidenceError(FORMAT, f"produced_at {produced_at!r} is not {_TIMESTAMP}") from None
    entry = _members(
        top["entry"],
        ("log", "index", "envelope", "leaf_hash", "payload_type", "payload", "signatures"),
        "entry",
    )
    envelope = _b64(entry["envelope"], "entry.envelope")
    index = _integer(entry["index"], "entry.index")
    # The split-out fields are for readers; they must say what the envelope bytes say.
    message = _split_envelope(envelope)
    if entry["payload_type"] != message.payload_type:
        raise EvidenceError(FORMAT, "entry.payload_type differs from the envelope's")
    if _b64(entry["payload"], "entry.payload") != message.payload:
        raise EvidenceError(FORMAT, "entry.payload differs from the envelope's payload")
    signatures = entry["signatures"]
    if not isinstance(signatures, list):
        raise EvidenceError(FORMAT, "entry.signatures is not a list")
    split = []
    for i, s in enumerate(signatures):
        m = _members(s, ("key_id", "sig"), f"entry.signatures[{i}]")
        split.append((_text(m["key_id"], f"entry.signatures[{i}].key_id"), _b64(m["sig"], "sig")))
    if split != [(s.key_id, bytes(s.sig)) for s in message.signatures]:
        raise EvidenceError(FORMAT, "entry.signatures differ from the envelope's signatures")
    proof_doc = _members(
        top["inclusion_proof"], ("index", "tree_size", "hashes"), "inclusion_proof"
    )
    if _integer(proof_doc["index"], "inclusion_proof.index") != index:
        raise EvidenceError(FORMAT, "inclusion_proof.index is not entry.index")
    hashes = proof_doc["hashes"]
    if not isinstance(hashes, list) or len(hashes) > MAX_PROOF_HASHES:
        raise EvidenceError(
            FORMAT, f"inclusion_proof.hashes is not a list of <= {MAX_PROOF_HASHES} hashes"
        )
    witnesses_doc = top["witnesses"]
    if not isinstance(witnesses_doc, list) or len(witnesses_doc) > MAX_WITNESSES:
        raise EvidenceError(FORMAT, f"witnesses is not a list of at most {MAX_WITNESSES}")
    witnesses: list[WitnessChain] = []
    for i, w in enumerate(witnesses_doc):
        m = _members(w, ("admin", "chain"), f"witnesses[{i}]")
        witnesses.append(
            WitnessChain(_code(m["admin"], f"witnesses[{i}].admin"), _chain(m["chain"], "chain"))
        )
    if len({w.admin for w in witnesses}) != len(witnesses):
        raise EvidenceError(FORMAT, "a witness is listed twice")
    dataset = _members(top["dataset"], ("version", "content"), "dataset")
    version = _text(dataset["version"], "dataset.version")
    if not _FINGERPRINT.fullmatch(version):
        raise EvidenceError(FORMAT, "dataset.version is not a lowercase hex SHA-256")
    if not isinstance(top["answer"], dict):
        raise EvidenceError(FORMAT, "answer is not a JSON object")
    if not isinstance(top["record"], dict):
        raise EvidenceError(FORMAT, "record is not a JSON object")
    return EvidenceBundle(
        produced_at=produced_at,
        producer=_code(top["producer"], "producer"),
        question=_question(top["question"]),
        answer=top["answer"],
        log=_code(entry["log"], "entry.log"),
        index=index,
        envelope=envelope,
        leaf_hash=_b64(entry["leaf_hash"], "entry.leaf_hash"),
        tree_size=_integer(proof_doc["tree_size"], "inclusion_proof.tree_size"),
        proof=tuple(_b64(h, f"inclusion_proof.hashes[{i}]") for i, h in enumerate(hashes)),
        checkpoint=_text(top["checkpoint"], "checkpoint"),
        issuer_chain=_chain(top["issuer_chain"], "issuer_chain"),
        witnesses=tuple(witnesses),
        record=top["record"],
        dataset_version=version,
        dataset=_b64(dataset["content"], "dataset.content"),
    )


# --- the steps ------------------------------------------------------------------------------


def root_fingerprint(chain: Sequence[Envelope], part: str) -> tuple[str, str]:
    """(administration, root key fingerprint) that version 1 of ``chain`` *claims*; nothing is
    believed until :func:`verify_chain` checked it against an anchor."""
    try:
        first = TrustStatement.from_payload(chain[0].payload)
    except TrustError as error:
        raise EvidenceError(part, f"version 1 does not parse: {error}") from error
    return first.admin, first.root_fingerprint


def verify_log_checkpoint(note: str, statement: TrustStatement) -> tuple[Checkpoint, str]:
    """Step 4: the note is signed as the log origin by an Ed25519 key of ``statement`` that is
    not revoked below the checkpoint's size. Returns the checkpoint and that key's id."""
    origin = statement.log_origin
    problems: list[str] = []
    for key in statement.signing_keys:
        if key.public_key.scheme is not Scheme.ED25519:
            continue
        try:
            cp = verify_checkpoint(note, {origin: key.public_key}, origin)
        except VerificationError as error:
            problems.append(str(error))
            continue
        if cp.origin != origin:
            raise EvidenceError(CHECKPOINT, f"origin {cp.origin!r} is not {origin!r}")
        if key.revoked_at_index is not None and cp.size > key.revoked_at_index:
            # Keep looking: during a rotation the note may also carry a valid key's signature.
            problems.append(
                f"signed for size {cp.size} by key {key.key_id}, revoked from index "
                f"{key.revoked_at_index}"
            )
            continue
        return cp, key.key_id
    detail = "; ".join(dict.fromkeys(problems)) or "no Ed25519 key in the trust statement"
    raise EvidenceError(
        CHECKPOINT, f"no valid signature by {statement.admin} as {origin!r}: {detail}"
    )


def record_document(record: AeoStatusRecord) -> dict[str, Any]:
    """The decoded record as JSON, in the ``mragw publish`` input format."""

    def day(value: date | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "kind": record.kind,
        "issuer": record.issuer,
        "operator_ids": [{"scheme": i.scheme, "value": i.value} for i in record.operator_ids],
        "name": record.name,
        "country": record.country,
        "authorisation": record.authorisation,
        "type": record.aeo_type,
        "status": record.status,
        "status_date": record.status_date.isoformat(),
        "valid_from": day(record.valid_from),
        "valid_until": day(record.valid_until),
        "last_validation": day(record.last_validation),
        "consent": record.consent,
        "audience": list(record.audience),
    }


def status_record(log: str, index: int, record: AeoStatusRecord) -> StatusRecord:
    """The record as Check's index holds it (gateway.record_index writes the same values)."""
    return StatusRecord(
        log=log,
        idx=index,
        issuer=record.issuer,
        authorisation=record.authorisation,
        aeo_type=record.aeo_type,
        status=record.status,
        status_date=record.status_date.isoformat(),
        valid_from=record.valid_from.isoformat() if record.valid_from else None,
        valid_until=record.valid_until.isoformat() if record.valid_until else None,
        consent=record.consent,
        country=record.country,
        name=record.name,
        disclosed_to=None,
    )


def answer_document(answer: TypeAnswer) -> dict[str, Any]:
    """A TypeAnswer's JSON without its evidence member (the bundle *is* the evidence)."""
    doc = answer.to_json()
    doc.pop("evidence", None)
    return doc


def _decoded(bundle: EvidenceBundle) -> AeoStatusRecord:
    message = _split_envelope(bundle.envelope)
    try:
        record = codec.decode(message.payload_type, bytes(message.payload))
    except (GatewayError, CryptoError) as error:
        raise EvidenceError(RECORD, f"the signed payload does not decode: {error}") from error
    if not isinstance(record, AeoStatusRecord):
        raise EvidenceError(RECORD, f"the entry is a {record.kind}, not an AEO status record")
    mine = record_document(record)
    if mine != bundle.record:
        differ = sorted(
            k for k in set(mine) | set(bundle.record) if mine.get(k) != bundle.record.get(k)
        )
        raise EvidenceError(
            RECORD, f"the bundle's record differs from the signed payload in {', '.join(differ)}"
        )
    return record


def _check_question(
    q: EvidenceQuestion, bundle: EvidenceBundle, record: AeoStatusRecord, recogniser: Recogniser
) -> None:
    """Step 8, with Check's rules: the record is of the issuer asked (a union matches a member
    on the record's status date), dated on or before the date asked, of the type asked, carries
    the identifier asked, and the log holding it speaks for its issuer."""
    unions = recogniser.dataset.union_codes

    def members_of(union: str, day: str) -> frozenset[str]:
        return frozenset(recogniser.members_on(union, day))

    if q.recogniser != bundle.producer:
        raise EvidenceError(QUESTION, f"recogniser {q.recogniser} is not the producer")
    day = record.status_date.isoformat()
    if record.issuer != q.issuer and not (
        q.issuer in unions and record.issuer in members_of(q.issuer, day)
    ):
        raise EvidenceError(QUESTION, f"the record's issuer {record.issuer} is not {q.issuer}")
    if record.status_date > q.at:
        # Check answers from the latest status on or before the date asked, never a later one.
        raise EvidenceError(
            QUESTION, f"the record's status date {day} is after the date asked, {q.at}"
        )
    if q.type is not None and q.type != record.aeo_type:
        raise EvidenceError(QUESTION, f"the record is of type {record.aeo_type}, not {q.type}")
    held = {(i.scheme, i.value) for i in record.operator_ids} | {("AUTH", record.authorisation)}
    asked = re.sub(r"\s+", "", q.operator).upper()
    if q.scheme is not None:
        try:
            asked = normalise_identifier(q.scheme, q.operator).value
        except ValueError as error:
            raise EvidenceError(QUESTION, f"operator identifier: {error}") from error
    if not any(v == asked and (q.scheme is None or s == q.scheme) for s, v in held):
        raise EvidenceError(QUESTION, f"the record does not carry identifier {q.operator}")
    if not log_speaks_for(
        bundle.log,
        record.issuer,
        own_admin=q.recogniser,
        day=q.at.isoformat(),
        unions=unions,
        members_of=members_of,
    ):
        raise EvidenceError(
            QUESTION, f"log {bundle.log} does not speak for issuer {record.issuer} on {q.at}"
        )


def _witness(w: WitnessChain, anchors: frozenset[str], now: datetime, note: str) -> WitnessReport:
    name = witness_name(w.admin)
    part = f"{COSIGNATURE} of {w.admin}"
    claimed, fingerprint = root_fingerprint(w.chain, part)
    if claimed != w.admin:
        raise EvidenceError(part, f"the chain listed for witness {w.admin} is {claimed}'s")
    if fingerprint not in anchors:
        return WitnessReport(w.admin, name, fingerprint, verified=False)
    try:
        statement = verify_chain(w.chain, fingerprint, now=now, admin=w.admin, check_expiry=False)
    except TrustError as error:
        raise EvidenceError(part, f"trust chain: {error}") from error
    for key in statement.signing_keys:
        if key.public_key.scheme is not Scheme.ED25519 or key.revoked_at_index is not None:
            continue
        try:
            found = find_cosignature(note, name, key.public_key)
        except (VerificationError, CryptoError) as error:
            raise EvidenceError(part, str(error)) from error
        if found is not None:
            return WitnessReport(
                w.admin,
                name,
                fingerprint,
                verified=True,
                key_id=key.key_id,
                timestamp=found.timestamp,
            )
    raise EvidenceError(
        part,
        f"listed as a witness but the checkpoint carries no cosignature by {name} with a "
        f"key of its trust statement v{statement.version}",
    )


def verify_evidence(
    data: bytes, trusted_roots: Collection[str], *, now: datetime | None = None
) -> EvidenceReport:
    """Verify a bundle's bytes against the anchors (root key fingerprints); see the module
    docstring. Raises EvidenceError naming the part that failed, InputError for a malformed
    anchor."""
    anchors = frozenset(trusted_roots)
    for fp in anchors:
        if not _FINGERPRINT.fullmatch(fp):
            raise InputError(f"--trust {fp!r}: expected 64 lowercase hex characters")
    if not anchors:
        raise InputError("at least one --trust root fingerprint is needed")
    moment = now or datetime.now(tz=UTC)
    # 1. Parse.
    bundle = parse_evidence(data)
    # 2. The issuer's chain, anchored.
    admin, fingerprint = root_fingerprint(bundle.issuer_chain, ISSUER_CHAIN)
    if admin != bundle.log:
        raise EvidenceError(
            ISSUER_CHAIN, f"the chain is {admin}'s, but the entry is in the log of {bundle.log}"
        )
    if fingerprint not in anchors:
        raise EvidenceError(
            ISSUER_CHAIN,
            f"the root of {admin} ({fingerprint}) is not among the --trust anchors",
        )
    try:
        statement = verify_chain(
            bundle.issuer_chain, fingerprint, now=moment, admin=bundle.log, check_expiry=False
        )
    except TrustError as error:
        raise EvidenceError(ISSUER_CHAIN, str(error)) from error
    warnings: list[str] = []
    if moment >= statement.expires:
        warnings.append(
            f"{statement.admin}'s trust statement v{statement.version} expired "
            f"{statement.expires.strftime(_TIMESTAMP)}: a later statement may revoke its keys"
        )
    # 3. The entry's signature.
    checked = check_entry(bundle.index, bundle.envelope, statement)
    if checked.state != "valid" or checked.signer is None:
        raise EvidenceError(ENTRY, checked.problem or f"entry {bundle.index} is {checked.state}")
    entry_key = statement.signing_key(checked.signer)
    assert entry_key is not None  # noqa: S101 - check_entry found it in this statement
    # 4. The checkpoint.
    try:
        parsed_note = parse_note(bundle.checkpoint)
    except VerificationError as error:
        raise EvidenceError(CHECKPOINT, f"not a signed note: {error}") from error
    cp, checkpoint_key = verify_log_checkpoint(bundle.checkpoint, statement)
    if cp.size != bundle.tree_size:
        raise EvidenceError(
            INCLUSION, f"proof is for tree size {bundle.tree_size}, the checkpoint's is {cp.size}"
        )
    # 5. Inclusion of the leaf.
    leaf = leaf_hash(bundle.envelope)
    if leaf != bundle.leaf_hash:
        raise EvidenceError(INCLUSION, "entry.leaf_hash is not SHA-256(0x00 || envelope)")
    try:
        verify_inclusion(leaf, bundle.index, cp.size, list(bundle.proof), cp.root_hash)
    except VerificationError as error:
        raise EvidenceError(INCLUSION, str(error)) from error
    # 6. Witnesses. The issuer vouching for its own log witnesses nothing.
    for w in bundle.witnesses:
        if w.admin == statement.admin:
            raise EvidenceError(
                f"{COSIGNATURE} of {w.admin}",
                f"{w.admin} issued the log; it cannot also be a witness of it",
            )
    witnesses = tuple(_witness(w, anchors, moment, bundle.checkpoint) for w in bundle.witnesses)
    listed = {statement.log_origin} | {witness_name(w.admin) for w in bundle.witnesses}
    ignored = tuple(dict.fromkeys(s.name for s in parsed_note.signatures if s.name not in listed))
    # 7. The record.
    record = _decoded(bundle)
    # 9a. The dataset is what it says it is (step 8 needs its union memberships).
    if hashlib.sha256(bundle.dataset).hexdigest() != bundle.dataset_version:
        raise EvidenceError(DATASET, "the embedded content's SHA-256 is not dataset.version")
    try:
        recogniser = recogniser_for(bundle.dataset)
    except RegistryError as error:
        raise EvidenceError(DATASET, str(error)) from error
    # 8. The question fits the record.
    q = bundle.question
    _check_question(q, bundle, record, recogniser)
    # 9b. The answer, re-derived with Check's own decision function.
    derived = answer_document(
        decide_status(
            q.recogniser,
            status_record(bundle.log, bundle.index, record),
            at=q.at,
            mode=q.mode,
            strict=q.strict,
            recogniser=recogniser,
        )
    )
    if derived != bundle.answer:
        differ = sorted(
            k for k in set(derived) | set(bundle.answer) if derived.get(k) != bundle.answer.get(k)
        )
        raise EvidenceError(
            ANSWER,
            f"re-derived from the embedded dataset, the answer differs in {', '.join(differ)} "
            f"(re-derived: recognised={derived['recognised']}, "
            f"arrangements={derived['arrangements']})",
        )
    return EvidenceReport(
        producer=bundle.producer,
        produced_at=bundle.produced_at,
        issuer=statement.admin,
        issuer_root=fingerprint,
        trust_version=statement.version,
        trust_expires=statement.expires.strftime(_TIMESTAMP),
        entry_index=bundle.index,
        entry_key_id=entry_key.key_id,
        entry_scheme=entry_key.public_key.scheme.value,
        leaf_hash=leaf,
        log_origin=statement.log_origin,
        tree_size=cp.size,
        root_hash=cp.root_hash,
        checkpoint_key_id=checkpoint_key,
        witnesses=witnesses,
        ignored_signatures=ignored,
        record=bundle.record,
        question=q,
        answer=derived,
        dataset_version=bundle.dataset_version,
        warnings=tuple(warnings),
    )


__all__ = [
    "ANSWER",
    "CHECKPOINT",
    "COSIGNATURE",
    "DATASET",
    "ENTRY",
    "EVIDENCE_TYPE",
    "FORMAT",
    "INCLUSION",
    "ISSUER_CHAIN",
    "MAX_EVIDENCE_BYTES",
    "QUESTION",
    "RECORD",
    "EvidenceBundle",
    "EvidenceError",
    "EvidenceQuestion",
    "EvidenceReport",
    "WitnessReport",
    "answer_document",
    "parse_evidence",
    "record_document",
    "root_fingerprint",
    "status_record",
    "verify_evidence",
    "verify_log_checkpoint",
]

"""Records <-> protobuf payload bytes: the one place domain records meet the wire format.

Invariants:
- A payload is serialised once, signed as those exact bytes, and stored as those bytes; it is
  never re-serialised for verification.
- The content digest (what makes publishing idempotent) is SHA-256 of the deterministic
  serialisation of the record with its salt cleared: the same record published twice has the
  same digest whatever salt it got.
- Decoding a payload from a partner validates it with the same rules as local input, so a
  hostile partner cannot plant a record we would refuse to publish ourselves.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
from typing import Any

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from gateway.errors import InputError
from gateway.records import (
    AeoStatusRecord,
    ErasedEntry,
    ErasureNotice,
    OperatorId,
    Record,
    RecordInputError,
    ValidationOutcomeRecord,
    record_from_mapping,
)
from mra.v1 import options_pb2, records_pb2

SALT_BYTES = 16
MAX_PAYLOAD_BYTES = 64 * 1024


def _payload_type(message: Any) -> str:
    return str(message.DESCRIPTOR.GetOptions().Extensions[options_pb2.payload_type])


AEO_STATUS_TYPE = _payload_type(records_pb2.AeoStatus)
VALIDATION_OUTCOME_TYPE = _payload_type(records_pb2.ValidationOutcome)
ERASURE_NOTICE_TYPE = _payload_type(records_pb2.ErasureNotice)
#: Entries one erasure notice names at most: about 40 bytes each keeps a notice far below
#: MAX_PAYLOAD_BYTES; an erasure of more entries appends several notices.
MAX_ERASED_PER_NOTICE = 1000

_SCHEME = {
    name: getattr(records_pb2, f"OPERATOR_ID_SCHEME_{name}")
    for name in ("EORI", "MID", "TIN", "NATIONAL", "AUTH")
}
_SCHEME_NAME = {v: k for k, v in _SCHEME.items()}
_STATUS = {
    name: getattr(records_pb2, f"AUTHORISATION_STATUS_{name}")
    for name in ("ACTIVE", "SUSPENDED", "REVOKED", "ANNULLED", "WITHDRAWN", "CONSENT_WITHDRAWN")
}
_STATUS_NAME = {v: k for k, v in _STATUS.items()}
_KIND = {
    name: getattr(records_pb2, f"VALIDATION_KIND_{name}")
    for name in ("INITIAL", "REVALIDATION", "MONITORING", "JOINT")
}
_KIND_NAME = {v: k for k, v in _KIND.items()}
_RESULT = {
    name: getattr(records_pb2, f"VALIDATION_RESULT_{name}")
    for name in ("PASSED", "PASSED_WITH_RECOMMENDATIONS", "FAILED")
}
_RESULT_NAME = {v: k for k, v in _RESULT.items()}


class PayloadError(InputError):
    """A payload is not a well-formed record."""


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def new_salts(count: int) -> list[bytes]:
    """``count`` salts from one read of the OS CSPRNG (a read per record was a system call
    per record on the publish path)."""
    pool = secrets.token_bytes(SALT_BYTES * count)
    return [pool[k : k + SALT_BYTES] for k in range(0, SALT_BYTES * count, SALT_BYTES)]


def _ids(message: Any, ids: tuple[OperatorId, ...]) -> None:
    for op_id in ids:
        message.operator_ids.add(scheme=_SCHEME[op_id.scheme], value=op_id.value)


def to_message(record: Record, salt: bytes, audience: tuple[str, ...] | None = None) -> Any:
    """The protobuf message of a record; ``audience`` overrides it (disclosure entries)."""
    if isinstance(record, AeoStatusRecord):
        status = records_pb2.AeoStatus(
            issuer=record.issuer,
            name=record.name,
            country=record.country,
            authorisation=record.authorisation,
            type=record.aeo_type,
            status=_STATUS[record.status],
            status_date=record.status_date.isoformat(),
            valid_from=record.valid_from.isoformat() if record.valid_from else "",
            consent=record.consent,
            salt=salt,
        )
        if record.valid_until is not None:
            status.valid_until = record.valid_until.isoformat()
        if record.last_validation is not None:
            status.last_validation = record.last_validation.isoformat()
        _ids(status, record.operator_ids)
        status.audience.extend(record.audience if audience is None else audience)
        return status
    outcome = records_pb2.ValidationOutcome(
        issuer=record.issuer,
        validation_id=record.validation_id,
        kind=_KIND[record.validation_kind],
        date=record.date.isoformat(),
        result=_RESULT[record.result],
        salt=salt,
    )
    if record.next_review is not None:
        outcome.next_review = record.next_review.isoformat()
    _ids(outcome, record.operator_ids)
    outcome.criteria.extend(record.criteria)
    outcome.joint_partners.extend(record.joint_partners)
    outcome.audience.extend(record.audience if audience is None else audience)
    return outcome


def payload_type_of(record: Record) -> str:
    return AEO_STATUS_TYPE if isinstance(record, AeoStatusRecord) else VALIDATION_OUTCOME_TYPE


def encode(record: Record, salt: bytes, audience: tuple[str, ...] | None = None) -> bytes:
    return bytes(to_message(record, salt, audience).SerializeToString(deterministic=True))


def content_digest(record: Record, audience: tuple[str, ...] | None = None) -> bytes:
    """Identity of a record for idempotent publishing: its bytes with an empty salt."""
    return hashlib.sha256(encode(record, b"", audience)).digest()


def encode_with_digest(
    record: Record, salt: bytes, audience: tuple[str, ...] | None = None
) -> tuple[bytes, bytes]:
    """(``encode(record, salt, audience)``, ``content_digest(record, audience)``) from one
    message: publishing needs both for every record, and building the message is most of the
    cost. An empty bytes field is not serialised, so the message before its salt is set is
    exactly the one :func:`content_digest` hashes."""
    message = to_message(record, b"", audience)
    digest = hashlib.sha256(message.SerializeToString(deterministic=True)).digest()
    message.salt = salt
    return bytes(message.SerializeToString(deterministic=True)), digest


def message_mapping(message: Any, kind: str) -> dict[str, Any]:
    ids = [
        {"scheme": _SCHEME_NAME.get(i.scheme, "?"), "value": i.value} for i in message.operator_ids
    ]
    if kind == "aeo_status":
        return {
            "kind": kind,
            "issuer": message.issuer,
            "operator_ids": ids,
            "name": message.name,
            "country": message.country,
            "authorisation": message.authorisation,
            "type": message.type,
            "status": _STATUS_NAME.get(message.status, "?"),
            "status_date": message.status_date,
            "valid_from": message.valid_from or None,
            "valid_until": message.valid_until if message.HasField("valid_until") else None,
            "last_validation": message.last_validation
            if message.HasField("last_validation")
            else None,
            "consent": message.consent,
            "audience": list(message.audience),
        }
    return {
        "kind": kind,
        "issuer": message.issuer,
        "operator_ids": ids,
        "validation_id": message.validation_id,
        "validation_kind": _KIND_NAME.get(message.kind, "?"),
        "date": message.date,
        "result": _RESULT_NAME.get(message.result, "?"),
        "criteria": list(message.criteria),
        "next_review": message.next_review if message.HasField("next_review") else None,
        "joint_partners": list(message.joint_partners),
        "audience": list(message.audience),
    }


def decode(payload_type: str, payload: bytes) -> Record:
    """Parse and validate a record payload (call only after its signature verified)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    if payload_type == AEO_STATUS_TYPE:
        message: Any = records_pb2.AeoStatus()
        kind = "aeo_status"
    elif payload_type == VALIDATION_OUTCOME_TYPE:
        message = records_pb2.ValidationOutcome()
        kind = "validation_outcome"
    else:
        raise PayloadError(f"unknown payload type {payload_type!r}")
    try:
        message.ParseFromString(payload)
    except DecodeError as error:
        raise PayloadError(f"{payload_type}: malformed protobuf: {error}") from error
    if len(UnknownFieldSet(message)):
        raise PayloadError(f"{payload_type}: carries fields this version does not know")
    if len(message.salt) < SALT_BYTES:
        raise PayloadError(f"{payload_type}: salt shorter than {SALT_BYTES} bytes")
    problems: list[str] = []
    record = record_from_mapping(message_mapping(message, kind), "payload", problems)
    if record is None:
        raise RecordInputError(problems, "payload")
    return record


_NOTICE_ISSUER = re.compile(r"[A-Z]{2,8}")
_NOTICE_TEXT_MAX = 256


def encode_notice(notice: ErasureNotice, salt: bytes) -> bytes:
    """The payload of an erasure notice entry (deterministic serialisation)."""
    message = records_pb2.ErasureNotice(
        issuer=notice.issuer,
        lawful_basis=notice.lawful_basis,
        reference=notice.reference,
        date=notice.date.isoformat(),
        salt=salt,
    )
    for entry in notice.entries:
        message.entries.add(leaf_index=entry.leaf_index, leaf_hash=entry.leaf_hash)
    return bytes(message.SerializeToString(deterministic=True))


def _notice_text(name: str, value: str, *, required: bool) -> str:
    if required and not value.strip():
        raise PayloadError(f"{ERASURE_NOTICE_TYPE}: {name} is required")
    if len(value) > _NOTICE_TEXT_MAX:
        raise PayloadError(f"{ERASURE_NOTICE_TYPE}: {name} longer than {_NOTICE_TEXT_MAX}")
    if any(ord(c) < 32 for c in value):
        raise PayloadError(f"{ERASURE_NOTICE_TYPE}: {name} contains control characters")
    return value


def decode_notice(payload: bytes) -> ErasureNotice:
    """Parse and validate an erasure notice payload (call only after its signature verified).

    Whether the named entries exist, sit below the notice and carry the named leaf hashes is
    judged against the log by :mod:`gateway.erasure`; this checks the message on its own."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    message = records_pb2.ErasureNotice()
    try:
        message.ParseFromString(payload)
    except DecodeError as error:
        raise PayloadError(f"{ERASURE_NOTICE_TYPE}: malformed protobuf: {error}") from error
    where = ERASURE_NOTICE_TYPE
    if len(UnknownFieldSet(message)):
        raise PayloadError(f"{where}: carries fields this version does not know")
    if len(message.salt) < SALT_BYTES or len(message.salt) > 32:
        raise PayloadError(f"{where}: salt is not 16 to 32 bytes")
    if not _NOTICE_ISSUER.fullmatch(message.issuer):
        raise PayloadError(f"{where}: issuer {message.issuer!r} is not an administration code")
    if not message.entries:
        raise PayloadError(f"{where}: names no entry")
    if len(message.entries) > MAX_ERASED_PER_NOTICE:
        raise PayloadError(f"{where}: names more than {MAX_ERASED_PER_NOTICE} entries")
    named: list[ErasedEntry] = []
    for entry in message.entries:
        if len(entry.leaf_hash) != 32:
            raise PayloadError(f"{where}: entry {entry.leaf_index}: leaf hash is not 32 bytes")
        named.append(ErasedEntry(int(entry.leaf_index), bytes(entry.leaf_hash)))
    if len({e.leaf_index for e in named}) != len(named):
        raise PayloadError(f"{where}: names an entry twice")
    try:
        day = datetime.date.fromisoformat(message.date)
    except ValueError as error:
        raise PayloadError(f"{where}: date {message.date!r} is not YYYY-MM-DD") from error
    if len(message.date) != 10:
        raise PayloadError(f"{where}: date {message.date!r} is not YYYY-MM-DD")
    return ErasureNotice(
        issuer=message.issuer,
        entries=tuple(sorted(named)),
        lawful_basis=_notice_text("lawful_basis", message.lawful_basis, required=True),
        reference=_notice_text("reference", message.reference, required=False),
        date=day,
    )


__all__ = [
    "AEO_STATUS_TYPE",
    "ERASURE_NOTICE_TYPE",
    "MAX_ERASED_PER_NOTICE",
    "VALIDATION_OUTCOME_TYPE",
    "AeoStatusRecord",
    "PayloadError",
    "ValidationOutcomeRecord",
    "content_digest",
    "decode",
    "decode_notice",
    "encode",
    "encode_notice",
    "encode_with_digest",
    "new_salt",
    "new_salts",
    "payload_type_of",
]

"""DSSE v1 envelopes: the signed container for log entries and trust statements.

Invariants:

* What is signed is exactly ``PAE(payload_type, payload)`` as defined by DSSE v1::

      "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

  with LEN the ASCII decimal of the *byte* length (type encoded as UTF-8). The payload bytes are
  signed as given, never re-serialized, so the verifier checks the very bytes it will parse.
* :func:`verify_envelope` accepts an envelope iff at least ``threshold`` *distinct* keys from
  ``trusted_keys`` produced a valid signature. Signatures whose key id is unknown are ignored
  (they may belong to keys of other parties, e.g. a rotation co-signer). A signature that claims
  a trusted key id but does not verify is also *not counted* and otherwise ignored (DSSE,
  securesystemslib and TUF behave the same way): rejecting the whole envelope for it would let
  anyone who can append a bogus signature line veto a validly signed statement, and the
  threshold alone decides trust. Such a signature is never reported as verifying.
* The JSON form is DSSE's standard JSON (``payload``, ``payloadType``, ``signatures`` with
  ``keyid`` and ``sig``; binary fields in standard padded base64). Parsing is strict: UTF-8,
  exactly those members, no duplicates, canonical base64, bounded size. Use
  :func:`verified_payload` to go from untrusted bytes to payload bytes: it verifies first and
  only then returns the payload for the caller to parse.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from crypto.errors import MalformedEnvelopeError, MalformedInputError, VerificationError
from crypto.keys import PublicKey, Signer

__all__ = [
    "MAX_ENVELOPE_JSON_BYTES",
    "Envelope",
    "Signature",
    "envelope_from_json",
    "envelope_to_json",
    "pae",
    "sign_envelope",
    "verified_payload",
    "verify_envelope",
]

#: Upper bound for a JSON envelope we are willing to parse (a trust statement is a few KiB).
MAX_ENVELOPE_JSON_BYTES = 4 * 1024 * 1024
_MAX_SIGNATURES = 64


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of ``payload_type`` and ``payload``."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), bytes(payload))


@dataclass(frozen=True, slots=True)
class Signature:
    """One DSSE signature: the signer's key id (a hint for lookup) and the signature bytes."""

    key_id: str
    sig: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, str) or not isinstance(self.sig, bytes):
            raise MalformedInputError("Signature needs key_id: str and sig: bytes")


@dataclass(frozen=True, slots=True)
class Envelope:
    """A DSSE envelope. Immutable; ``signatures`` keeps the order they were made in."""

    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.payload, bytes):
            raise MalformedInputError("Envelope.payload must be bytes")
        if not isinstance(self.payload_type, str) or not self.payload_type:
            raise MalformedInputError("Envelope.payload_type must be a non-empty str")
        if not isinstance(self.signatures, tuple) or not all(
            isinstance(s, Signature) for s in self.signatures
        ):
            raise MalformedInputError("Envelope.signatures must be a tuple of Signature")

    def pae(self) -> bytes:
        """The exact bytes every signature of this envelope covers."""
        return pae(self.payload_type, self.payload)


def sign_envelope(payload_type: str, payload: bytes, signers: Iterable[Signer]) -> Envelope:
    """Sign ``PAE(payload_type, payload)`` with every signer, in the order given.

    Raises MalformedInputError for no signers or two signers with the same key id (a second
    signature by one key adds nothing and would only confuse threshold counting by readers).
    """
    if not payload_type:
        raise MalformedInputError("payload_type must not be empty")
    message = pae(payload_type, payload)
    signatures: list[Signature] = []
    seen: set[str] = set()
    for signer in signers:
        if signer.key_id in seen:
            raise MalformedInputError(f"key {signer.key_id} given twice as envelope signer")
        seen.add(signer.key_id)
        signatures.append(Signature(key_id=signer.key_id, sig=signer.sign(message)))
    if not signatures:
        raise MalformedInputError("an envelope needs at least one signer")
    return Envelope(payload=bytes(payload), payload_type=payload_type, signatures=tuple(signatures))


def verify_envelope(
    envelope: Envelope, trusted_keys: Mapping[str, PublicKey], threshold: int = 1
) -> frozenset[str]:
    """Return the ids of the trusted keys whose signatures verify; raise unless >= threshold.

    ``trusted_keys`` maps key id to key; each entry must be keyed by that key's own id (a
    mismatch is a configuration error and raises rather than silently trusting a wrong key).
    See the module docstring for how unknown and invalid signatures are treated.
    """
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    for key_id, key in trusted_keys.items():
        if key.key_id != key_id:
            raise VerificationError(
                f"trusted key registered under id {key_id} actually has id {key.key_id}"
            )
    message = envelope.pae()
    verified: set[str] = set()
    failures: list[str] = []
    for signature in envelope.signatures:
        trusted = trusted_keys.get(signature.key_id)
        if trusted is None or signature.key_id in verified:
            continue
        try:
            trusted.verify(signature.sig, message)
        except VerificationError as exc:
            failures.append(str(exc))
            continue
        verified.add(signature.key_id)
    if len(verified) < threshold:
        detail = f"; rejected: {'; '.join(failures)}" if failures else ""
        raise VerificationError(
            f"envelope ({envelope.payload_type}) has {len(verified)} valid signature(s) from "
            f"trusted keys, {threshold} required{detail}"
        )
    return frozenset(verified)


# -- JSON ------------------------------------------------------------------------------------


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(value: object, field: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedEnvelopeError(f"envelope field {field} must be a base64 string")
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MalformedEnvelopeError(f"envelope field {field} is not valid base64") from exc
    # b64decode tolerates non-zero padding bits; one encoding per value keeps bytes canonical.
    if _b64encode(decoded) != value:
        raise MalformedEnvelopeError(f"envelope field {field} is not canonical base64")
    return decoded


def envelope_to_json(envelope: Envelope) -> bytes:
    """DSSE standard JSON, compact, UTF-8, fixed member order (deterministic output)."""
    document = {
        "payload": _b64encode(envelope.payload),
        "payloadType": envelope.payload_type,
        "signatures": [{"keyid": s.key_id, "sig": _b64encode(s.sig)} for s in envelope.signatures],
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise MalformedEnvelopeError(f"duplicate JSON member {key!r} in envelope")
        result[key] = value
    return result


def _reject_constant(name: str) -> None:
    raise MalformedEnvelopeError(f"non-standard JSON constant {name} in envelope")


def _exact_members(obj: object, expected: set[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise MalformedEnvelopeError(f"{what} must be a JSON object")
    keys = set(obj)
    if keys != expected:
        missing = sorted(expected - keys)
        extra = sorted(keys - expected)
        raise MalformedEnvelopeError(f"{what} members wrong: missing {missing}, unexpected {extra}")
    return obj


def envelope_from_json(data: bytes) -> Envelope:
    """Parse DSSE JSON strictly. Raises MalformedEnvelopeError naming the problem."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedEnvelopeError("envelope JSON must be given as bytes")
    raw = bytes(data)
    if len(raw) > MAX_ENVELOPE_JSON_BYTES:
        raise MalformedEnvelopeError(
            f"envelope JSON is {len(raw)} bytes, more than the {MAX_ENVELOPE_JSON_BYTES} allowed"
        )
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise MalformedEnvelopeError("envelope JSON is not valid UTF-8") from exc
    try:
        document = json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as exc:
        raise MalformedEnvelopeError(f"envelope is not valid JSON: {exc.msg}") from exc
    obj = _exact_members(document, {"payload", "payloadType", "signatures"}, "envelope")
    payload_type = obj["payloadType"]
    if not isinstance(payload_type, str) or not payload_type:
        raise MalformedEnvelopeError("envelope payloadType must be a non-empty string")
    payload = _b64decode(obj["payload"], "payload")
    raw_signatures = obj["signatures"]
    if not isinstance(raw_signatures, list):
        raise MalformedEnvelopeError("envelope signatures must be a JSON array")
    if not raw_signatures:
        raise MalformedEnvelopeError("envelope has no signatures")
    if len(raw_signatures) > _MAX_SIGNATURES:
        raise MalformedEnvelopeError(
            f"envelope has {len(raw_signatures)} signatures, more than {_MAX_SIGNATURES}"
        )
    signatures: list[Signature] = []
    for position, entry in enumerate(raw_signatures):
        member = _exact_members(entry, {"keyid", "sig"}, f"signatures[{position}]")
        key_id = member["keyid"]
        if not isinstance(key_id, str) or not key_id:
            raise MalformedEnvelopeError(f"signatures[{position}].keyid must be a non-empty string")
        sig = _b64decode(member["sig"], f"signatures[{position}].sig")
        signatures.append(Signature(key_id, sig))
    return Envelope(payload=payload, payload_type=payload_type, signatures=tuple(signatures))


def verified_payload(
    envelope_json: bytes,
    trusted_keys: Mapping[str, PublicKey],
    *,
    expected_payload_type: str,
    threshold: int = 1,
) -> tuple[bytes, frozenset[str]]:
    """Parse DSSE JSON, check type and signatures, and only then hand out the payload bytes.

    Returns ``(payload, verifying_key_ids)``. The payload type is compared before any signature
    work so a statement of another kind can never be read as this one.
    """
    envelope = envelope_from_json(envelope_json)
    if envelope.payload_type != expected_payload_type:
        raise VerificationError(
            f"envelope payloadType is {envelope.payload_type!r}, expected {expected_payload_type!r}"
        )
    key_ids = verify_envelope(envelope, trusted_keys, threshold)
    return envelope.payload, key_ids

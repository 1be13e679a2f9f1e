"""C2SP tlog-cosignature/v1 (Ed25519): a witness's timestamped signature on a checkpoint.

Format (https://c2sp.org/tlog-cosignature)::

    signed message = "cosignature/v1\\n" || "time <decimal POSIX seconds>\\n" || note body
    signature line = "— <witness name> base64(key ID || u64 big-endian timestamp || sig[64])"
    key ID         = SHA-256(<witness name> || 0x0A || 0x04 || 32-byte Ed25519 key)[:4]

The note body is the whole checkpoint text (extension lines included), exactly as received.
A cosignature is a separate line of the same signed note, so a checkpoint carrying the log's
signature and any number of cosignatures is still one C2SP signed note; verifiers that do not
know a witness ignore its line (its key ID does not match any key they know).

Invariants:
- Only Ed25519 (signature type 0x04); the key ID's type byte differs from a log signature's
  (0x01), so a cosignature line can never be mistaken for the log's own signature.
- Verification checks the line's key ID first, then the signature over the exact body bytes,
  and only then reports the timestamp; timestamps above 2^63 - 1 are rejected.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from crypto.checkpoint import (
    KEY_HINT_SIZE,
    MAX_SIGNATURES,
    NoteSignature,
    SignedNote,
    check_key_name,
    parse_note,
)
from crypto.errors import MalformedNoteError, UnsupportedKeyTypeError, VerificationError
from crypto.keys import ED25519_SIGNATURE_SIZE, PublicKey, Scheme, Signer

__all__ = [
    "Cosignature",
    "cosign",
    "cosignature_key_hint",
    "cosigned_message",
    "find_cosignature",
    "verify_cosignature",
]

_SIG_TYPE_COSIGNATURE_V1 = b"\x04"
_HEADER = b"cosignature/v1\n"
_MAX_TIMESTAMP = (1 << 63) - 1
_BLOB_SIZE = 8 + ED25519_SIGNATURE_SIZE


def _ed25519(key: PublicKey, what: str) -> bytes:
    if key.scheme is not Scheme.ED25519:
        raise UnsupportedKeyTypeError(
            f"{what}: cosignatures are Ed25519 only; key {key.key_id} is {key.scheme.value}"
        )
    return key.ed25519_raw()


def cosignature_key_hint(name: str, key: PublicKey) -> bytes:
    """SHA-256(name || 0x0A || 0x04 || 32-byte Ed25519 key)[:4]."""
    raw = _ed25519(key, f"witness {name!r}")
    check_key_name(name)
    return hashlib.sha256(name.encode("utf-8") + b"\n" + _SIG_TYPE_COSIGNATURE_V1 + raw).digest()[
        :KEY_HINT_SIZE
    ]


def cosigned_message(body: bytes, timestamp: int) -> bytes:
    """The exact bytes a cosignature covers."""
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise MalformedNoteError(f"cosignature timestamp {timestamp} is out of range")
    return _HEADER + f"time {timestamp}\n".encode("ascii") + body


@dataclass(frozen=True, slots=True)
class Cosignature:
    """A verified cosignature: who (name and key id) vouched for the body, and when."""

    name: str
    key_id: str
    timestamp: int
    line: str


def cosign(note: SignedNote | str | bytes, name: str, signer: Signer, timestamp: int) -> str:
    """Return the cosignature line (with its final newline) by ``signer`` as witness ``name``.

    The caller must have verified the checkpoint (and its consistency) first: a cosignature
    says "this is the largest consistent tree head I have seen for this log"."""
    if signer.scheme is not Scheme.ED25519:
        raise UnsupportedKeyTypeError(
            f"cosignatures are Ed25519 only; key {signer.key_id} is {signer.scheme.value}"
        )
    parsed = note if isinstance(note, SignedNote) else parse_note(note)
    hint = cosignature_key_hint(name, signer.public_key)
    signature = signer.sign(cosigned_message(parsed.body, timestamp))
    return NoteSignature(name, hint, struct.pack(">Q", timestamp) + signature).line()


def add_cosignature(note: SignedNote | str | bytes, line: str) -> SignedNote:
    """Append a cosignature line (as returned by :func:`cosign`) to a note, once."""
    parsed = note if isinstance(note, SignedNote) else parse_note(note)
    extra = parse_note(parsed.body + b"\n" + line.encode("utf-8")).signatures
    if len(extra) != 1:
        raise MalformedNoteError("expected exactly one cosignature line")
    new = extra[0]
    if any((s.name, s.key_hint) == (new.name, new.key_hint) for s in parsed.signatures):
        return parsed
    if len(parsed.signatures) >= MAX_SIGNATURES:
        raise MalformedNoteError(f"note already has {MAX_SIGNATURES} signatures")
    return SignedNote(parsed.body, (*parsed.signatures, new))


def find_cosignature(
    note: SignedNote | str | bytes, name: str, key: PublicKey
) -> Cosignature | None:
    """The verified cosignature of witness (``name``, ``key``) on the note, or None if it did
    not cosign. Raises VerificationError when its line is present but does not verify."""
    parsed = note if isinstance(note, SignedNote) else parse_note(note)
    hint = cosignature_key_hint(name, key)
    for sig in parsed.signatures:
        if sig.name == name and sig.key_hint == hint:
            return verify_cosignature(parsed.body, sig, key)
    return None


def verify_cosignature(body: bytes, sig: NoteSignature, key: PublicKey) -> Cosignature:
    """Verify one cosignature line over the exact note body."""
    if sig.key_hint != cosignature_key_hint(sig.name, key):
        raise VerificationError(f"cosignature by {sig.name!r}: key ID does not match the key")
    if len(sig.signature) != _BLOB_SIZE:
        raise VerificationError(
            f"cosignature by {sig.name!r} is {len(sig.signature)} bytes, not {_BLOB_SIZE}"
        )
    (timestamp,) = struct.unpack(">Q", sig.signature[:8])
    if timestamp > _MAX_TIMESTAMP:
        raise VerificationError(f"cosignature by {sig.name!r}: timestamp out of range")
    try:
        key.verify(sig.signature[8:], cosigned_message(body, timestamp))
    except VerificationError as exc:
        raise VerificationError(f"cosignature by {sig.name!r} does not verify") from exc
    return Cosignature(sig.name, key.key_id, timestamp, sig.line())

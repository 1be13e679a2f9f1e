"""C2SP tlog-cosignature/v1: layout checked by hand, round trips, and every way a forged or
edited cosignature must fail."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from crypto.checkpoint import (
    Checkpoint,
    NoteSignature,
    SignedNote,
    ed25519_key_hint,
    parse_note,
    sign_checkpoint,
    verify_checkpoint,
)
from crypto.cosignature import (
    add_cosignature,
    cosign,
    cosignature_key_hint,
    cosigned_message,
    find_cosignature,
    verify_cosignature,
)
from crypto.errors import MalformedNoteError, UnsupportedKeyTypeError, VerificationError
from crypto.keys import PrivateKeySigner, PublicKey, Scheme, generate_private_key

ORIGIN = "eu.mragw/log"
WITNESS_NAME = "jp.mragw/witness"
ROOT = hashlib.sha256(b"root").digest()
CP = Checkpoint(ORIGIN, 20852163, ROOT)
LOG = generate_private_key()
WITNESS = generate_private_key()
STRANGER = generate_private_key()
WHEN = 1_700_000_000
MAX_TIMESTAMP = (1 << 63) - 1


def _note() -> str:
    return sign_checkpoint(CP, ORIGIN, LOG)


def _raw(key: PublicKey) -> bytes:
    # The 32-byte key taken from the SPKI DER, not through the API under test.
    der = key.to_der()
    assert len(der) == 44
    return der[-32:]


def _blob(line: str) -> bytes:
    assert line.startswith(f"\u2014 {WITNESS_NAME} ")
    assert line.endswith("\n")
    return base64.b64decode(line.rstrip("\n").split(" ")[2], validate=True)


def _line(name: str, blob: bytes) -> str:
    return f"\u2014 {name} {base64.b64encode(blob).decode()}\n"


def _signature_of(line: str) -> NoteSignature:
    return parse_note(CP.body().decode() + "\n" + line).signatures[0]


def test_cosigned_message_is_the_spec_layout() -> None:
    body = CP.body()
    expected = b"cosignature/v1\ntime 1700000000\n" + body
    assert cosigned_message(body, WHEN) == expected
    assert cosigned_message(body, 0) == b"cosignature/v1\ntime 0\n" + body
    # The whole note text is covered, extension lines included.
    extended = Checkpoint(ORIGIN, 1, ROOT, ("ext",)).body()
    assert cosigned_message(extended, 7).endswith(b"\next\n")


def test_line_layout_key_id_timestamp_and_signature_by_hand() -> None:
    line = cosign(_note(), WITNESS_NAME, WITNESS, WHEN)
    blob = _blob(line)
    assert len(blob) == 4 + 8 + 64
    key_id = hashlib.sha256(WITNESS_NAME.encode() + b"\n\x04" + _raw(WITNESS.public_key)).digest()
    assert blob[:4] == key_id[:4]
    assert blob[4:12] == struct.pack(">Q", WHEN)
    # The signature verifies with the raw key over the hand-built message.
    raw_key = ed25519.Ed25519PublicKey.from_public_bytes(_raw(WITNESS.public_key))
    raw_key.verify(blob[12:], b"cosignature/v1\ntime 1700000000\n" + CP.body())


def test_key_id_type_byte_differs_from_a_log_signature_hint() -> None:
    cosig = cosignature_key_hint(WITNESS_NAME, WITNESS.public_key)
    note_sig = ed25519_key_hint(WITNESS_NAME, WITNESS.public_key)
    assert cosig != note_sig
    expected = hashlib.sha256(WITNESS_NAME.encode() + b"\n\x01" + _raw(WITNESS.public_key))
    assert note_sig == expected.digest()[:4]
    # So a cosignature line is never taken for the log's own signature by the same key name.
    line = cosign(_note(), ORIGIN, LOG, WHEN)
    note = add_cosignature(_note(), line)
    assert verify_checkpoint(note.to_text(), {ORIGIN: LOG.public_key}, ORIGIN) == CP
    only_cosigned = SignedNote(CP.body(), (_signature_of(line),))
    with pytest.raises(VerificationError, match="no signature by required key"):
        verify_checkpoint(only_cosigned.to_text(), {ORIGIN: LOG.public_key}, ORIGIN)


def _fields(line: str) -> tuple[str, bytes, bytes]:
    sig = parse_note(CP.body().decode() + "\n" + line).signatures[0]
    return sig.name, sig.key_hint, sig.signature


def test_round_trip_through_the_note_text() -> None:
    line = cosign(_note(), WITNESS_NAME, WITNESS, WHEN)
    note = add_cosignature(_note(), line)
    assert len(note.signatures) == 2
    reparsed = parse_note(note.to_bytes())
    found = find_cosignature(reparsed, WITNESS_NAME, WITNESS.public_key)
    assert found is not None
    assert (found.name, found.key_id, found.timestamp, found.line) == (
        WITNESS_NAME,
        WITNESS.public_key.key_id,
        WHEN,
        line,
    )
    # The log's signature still verifies next to the cosignature.
    assert verify_checkpoint(note.to_text(), {ORIGIN: LOG.public_key}, ORIGIN) == CP
    # Adding the same witness's line again changes nothing (one line per witness key).
    assert add_cosignature(note, cosign(note, WITNESS_NAME, WITNESS, WHEN + 1)) == note


def test_a_witness_that_did_not_cosign_is_not_found() -> None:
    note = add_cosignature(_note(), cosign(_note(), WITNESS_NAME, WITNESS, WHEN))
    assert find_cosignature(note, "us.mragw/witness", WITNESS.public_key) is None
    # Same name, another key: its key ID differs, so the line is not that key's.
    assert find_cosignature(note, WITNESS_NAME, STRANGER.public_key) is None
    assert find_cosignature(_note(), WITNESS_NAME, WITNESS.public_key) is None


def test_forged_signature_bytes_are_rejected() -> None:
    blob = bytearray(_blob(cosign(_note(), WITNESS_NAME, WITNESS, WHEN)))
    blob[40] ^= 0x01
    forged = _line(WITNESS_NAME, bytes(blob))
    note = add_cosignature(_note(), forged)
    with pytest.raises(VerificationError, match="does not verify"):
        find_cosignature(note, WITNESS_NAME, WITNESS.public_key)


def test_edited_timestamp_is_rejected() -> None:
    blob = _blob(cosign(_note(), WITNESS_NAME, WITNESS, WHEN))
    edited = blob[:4] + struct.pack(">Q", WHEN + 1) + blob[12:]
    with pytest.raises(VerificationError, match="does not verify"):
        verify_cosignature(
            CP.body(), _signature_of(_line(WITNESS_NAME, edited)), WITNESS.public_key
        )


def test_cosignature_moved_to_another_checkpoint_is_rejected() -> None:
    line = cosign(_note(), WITNESS_NAME, WITNESS, WHEN)
    other = Checkpoint(ORIGIN, CP.size, hashlib.sha256(b"other root").digest())
    moved = add_cosignature(sign_checkpoint(other, ORIGIN, LOG), line)
    with pytest.raises(VerificationError, match="does not verify"):
        find_cosignature(moved, WITNESS_NAME, WITNESS.public_key)


def test_wrong_key_and_key_id_mismatch_are_rejected() -> None:
    line = cosign(_note(), WITNESS_NAME, STRANGER, WHEN)
    with pytest.raises(VerificationError, match="key ID does not match"):
        verify_cosignature(CP.body(), _signature_of(line), WITNESS.public_key)
    # A stranger's signature under the witness's key ID: the ID matches, the signature not.
    blob = _blob(line)
    spoofed = cosignature_key_hint(WITNESS_NAME, WITNESS.public_key) + blob[4:]
    note = add_cosignature(_note(), _line(WITNESS_NAME, spoofed))
    with pytest.raises(VerificationError, match="does not verify"):
        find_cosignature(note, WITNESS_NAME, WITNESS.public_key)
    # The same key under another name is another witness (the name is in the key ID).
    renamed = cosign(_note(), "us.mragw/witness", WITNESS, WHEN)
    with pytest.raises(VerificationError, match="key ID does not match"):
        verify_cosignature(
            CP.body(),
            NoteSignature(WITNESS_NAME, _signature_of(renamed).key_hint, _fields(renamed)[2]),
            WITNESS.public_key,
        )


@pytest.mark.parametrize("size", [4 + 8 + 63, 4 + 8 + 65, 4 + 64, 4 + 1])
def test_truncated_or_padded_cosignature_is_rejected(size: int) -> None:
    blob = _blob(cosign(_note(), WITNESS_NAME, WITNESS, WHEN))
    wrong = (blob + b"\x00" * 8)[:size]
    with pytest.raises(VerificationError, match=f"is {size - 4} bytes"):
        verify_cosignature(CP.body(), _signature_of(_line(WITNESS_NAME, wrong)), WITNESS.public_key)


def test_timestamp_bound() -> None:
    assert cosigned_message(b"x\n", MAX_TIMESTAMP).startswith(
        f"cosignature/v1\ntime {MAX_TIMESTAMP}\n".encode()
    )
    with pytest.raises(MalformedNoteError, match="out of range"):
        cosigned_message(b"x\n", MAX_TIMESTAMP + 1)
    with pytest.raises(MalformedNoteError, match="out of range"):
        cosigned_message(b"x\n", -1)
    with pytest.raises(MalformedNoteError, match="out of range"):
        cosign(_note(), WITNESS_NAME, WITNESS, MAX_TIMESTAMP + 1)
    # The largest allowed timestamp round-trips.
    line = cosign(_note(), WITNESS_NAME, WITNESS, MAX_TIMESTAMP)
    found = find_cosignature(add_cosignature(_note(), line), WITNESS_NAME, WITNESS.public_key)
    assert found is not None
    assert found.timestamp == MAX_TIMESTAMP
    # A line whose 8 timestamp bytes exceed 2^63 - 1 is refused before the signature is checked.
    blob = _blob(line)
    high = blob[:4] + struct.pack(">Q", 1 << 63) + blob[12:]
    with pytest.raises(VerificationError, match="timestamp out of range"):
        verify_cosignature(CP.body(), _signature_of(_line(WITNESS_NAME, high)), WITNESS.public_key)


def test_only_ed25519_witness_keys() -> None:
    ecdsa = PrivateKeySigner.generate(Scheme.ECDSA_P256_SHA256)
    with pytest.raises(UnsupportedKeyTypeError):
        cosign(_note(), WITNESS_NAME, ecdsa, WHEN)
    with pytest.raises(UnsupportedKeyTypeError):
        cosignature_key_hint(WITNESS_NAME, ecdsa.public_key)


def test_add_cosignature_takes_exactly_one_line() -> None:
    line = cosign(_note(), WITNESS_NAME, WITNESS, WHEN)
    other = cosign(_note(), "us.mragw/witness", STRANGER, WHEN)
    with pytest.raises(MalformedNoteError, match="exactly one"):
        add_cosignature(_note(), line + other)
    with pytest.raises(MalformedNoteError):
        add_cosignature(_note(), "not a signature line\n")

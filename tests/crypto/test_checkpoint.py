"""C2SP checkpoints / signed notes: format, key hints, cosignatures, strict parsing."""

from __future__ import annotations

import base64
import hashlib

import pytest

from crypto.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    NoteSignature,
    SignedNote,
    add_signature,
    ed25519_key_hint,
    parse_checkpoint_body,
    parse_note,
    sign_checkpoint,
    verify_checkpoint,
    verify_note,
)
from crypto.errors import MalformedNoteError, UnsupportedKeyTypeError, VerificationError
from crypto.keys import Scheme, generate_private_key

ORIGIN = "mra.example/DE"
ROOT = hashlib.sha256(b"root").digest()
LOG = generate_private_key()
WITNESS = generate_private_key()
STRANGER = generate_private_key()
CP = Checkpoint(ORIGIN, 1234, ROOT)


def _sig_line(name: str, blob: bytes) -> str:
    return f"\u2014 {name} {base64.b64encode(blob).decode()}\n"


def test_body_format_by_hand() -> None:
    root_b64 = base64.b64encode(ROOT).decode()
    assert CP.body() == f"{ORIGIN}\n1234\n{root_b64}\n".encode()
    ext = Checkpoint(ORIGIN, 0, ROOT, ("ext one", "two"))
    assert ext.body() == f"{ORIGIN}\n0\n{root_b64}\next one\ntwo\n".encode()


def test_key_hint_matches_c2sp_formula_from_openssl_free_raw_key() -> None:
    # Raw key taken from the SPKI DER (last 32 bytes of the 44-byte Ed25519 SPKI), not our API.
    der = LOG.public_key.to_der()
    assert len(der) == 44
    raw = der[-32:]
    expected = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + raw).digest()[:4]
    assert ed25519_key_hint(ORIGIN, LOG.public_key) == expected
    assert ed25519_key_hint("other", LOG.public_key) != expected


def test_signed_note_layout_and_verification() -> None:
    text = sign_checkpoint(CP, ORIGIN, LOG)
    body, rest = text.split("\n\n")
    assert (body + "\n").encode() == CP.body()
    assert rest.startswith("\u2014 " + ORIGIN + " ")
    assert rest.endswith("\n")
    blob = base64.b64decode(rest.split(" ")[2])
    assert blob[:4] == ed25519_key_hint(ORIGIN, LOG.public_key)
    assert len(blob) == 68
    LOG.public_key.verify(blob[4:], CP.body())
    assert verify_checkpoint(text, {ORIGIN: LOG.public_key}, ORIGIN) == CP
    assert verify_checkpoint(text.encode(), {ORIGIN: LOG.public_key}, ORIGIN) == CP


def test_cosigned_by_unknown_key_is_ignored() -> None:
    note = add_signature(sign_checkpoint(CP, ORIGIN, LOG), "witness.example/x", STRANGER)
    assert len(note.signatures) == 2
    assert verify_checkpoint(note.to_text(), {ORIGIN: LOG.public_key}, ORIGIN) == CP


def test_known_witness_cosignature_verified() -> None:
    note = add_signature(sign_checkpoint(CP, ORIGIN, LOG), "witness.example/w", WITNESS)
    keys = {ORIGIN: LOG.public_key, "witness.example/w": WITNESS.public_key}
    assert verify_note(note, keys) == {ORIGIN, "witness.example/w"}
    assert parse_note(note.to_bytes()) == note
    with pytest.raises(MalformedNoteError, match="already signed"):
        add_signature(note, "witness.example/w", WITNESS)


def test_same_name_other_key_is_ignored_but_required_still_needed() -> None:
    # A line with the log's name but another key's hint is "unknown" and ignored.
    impostor = sign_checkpoint(CP, ORIGIN, STRANGER)
    with pytest.raises(VerificationError, match="no signature by required key"):
        verify_checkpoint(impostor, {ORIGIN: LOG.public_key}, ORIGIN)
    both = add_signature(impostor, ORIGIN, LOG)
    assert verify_checkpoint(both.to_bytes(), {ORIGIN: LOG.public_key}, ORIGIN) == CP


def test_known_key_with_bad_signature_rejects_note() -> None:
    note = parse_note(sign_checkpoint(CP, ORIGIN, LOG))
    hint = ed25519_key_hint("witness.example/w", WITNESS.public_key)
    bad = SignedNote(
        note.body, (*note.signatures, NoteSignature("witness.example/w", hint, b"\x00" * 64))
    )
    keys = {ORIGIN: LOG.public_key, "witness.example/w": WITNESS.public_key}
    with pytest.raises(VerificationError, match=r"witness\.example/w"):
        verify_checkpoint(bad.to_bytes(), keys, ORIGIN)
    short = SignedNote(
        note.body, (NoteSignature(ORIGIN, note.signatures[0].key_hint, b"\x01" * 10),)
    )
    with pytest.raises(VerificationError, match="10 bytes"):
        verify_checkpoint(short.to_bytes(), {ORIGIN: LOG.public_key}, ORIGIN)


def test_tampered_body_fails() -> None:
    text = sign_checkpoint(CP, ORIGIN, LOG)
    with pytest.raises(VerificationError):
        verify_checkpoint(text.replace("1234", "1235"), {ORIGIN: LOG.public_key}, ORIGIN)


def test_required_name_must_be_configured_and_ed25519() -> None:
    text = sign_checkpoint(CP, ORIGIN, LOG)
    with pytest.raises(VerificationError, match="no verifier key"):
        verify_checkpoint(text, {"x": LOG.public_key}, ORIGIN)
    ec = generate_private_key(Scheme.ECDSA_P256_SHA256)
    with pytest.raises(UnsupportedKeyTypeError):
        verify_checkpoint(text, {ORIGIN: ec.public_key}, ORIGIN)
    with pytest.raises(UnsupportedKeyTypeError):
        sign_checkpoint(CP, ORIGIN, ec)


def _valid_text() -> str:
    return sign_checkpoint(CP, ORIGIN, LOG)


def _with_body(body: str) -> str:
    return body + "\n" + _valid_text().split("\n\n")[1]


@pytest.mark.parametrize(
    ("note", "message"),
    [
        (_valid_text().encode()[:-1], "newline"),
        (_valid_text().encode() + b"\xff", "UTF-8"),
        (b"\xc3\x28" + _valid_text().encode(), "UTF-8"),
        (_valid_text().replace("\n\n", "\n"), "no blank line"),
        (_valid_text() + _valid_text().split("\n\n")[1], "duplicate"),
        (_valid_text() + "\n", "empty line"),
        (_valid_text().replace("\u2014", "-"), "em dash"),
        (_valid_text().replace("\u2014 ", "\u2014  "), "name"),
        (_valid_text().replace(ORIGIN + " ", ORIGIN + "+x "), "name"),
        (_valid_text()[:-3] + "!=\n", "base64"),
        (_valid_text()[:-2] + "\n", "base64"),
        (_valid_text().replace("\n", "\r\n"), "control"),
        (_valid_text().split("\n\n")[0] + "\n\n", "no signature lines"),
        ("\n\n" + _valid_text().split("\n\n")[1], "empty"),
        (_valid_text() + _sig_line("x", b"\x01\x02\x03\x04"), "too short"),
        (_valid_text().replace(f"{ORIGIN}\n1234", f"{ORIGIN}\n\n1234", 1), "empty line"),
        ("a" * 70_000, "bytes"),
    ],
)
def test_malformed_notes(note: str | bytes, message: str) -> None:
    with pytest.raises(MalformedNoteError, match=message):
        parse_note(note)
    with pytest.raises(VerificationError):
        verify_checkpoint(note, {ORIGIN: LOG.public_key}, ORIGIN)


def test_too_many_signatures() -> None:
    text = _valid_text()
    extra = "".join(_sig_line(f"w{i}.example", bytes(68)) for i in range(MAX_SIGNATURES))
    with pytest.raises(MalformedNoteError, match="at most 100"):
        parse_note(text + extra)
    # 16 unknown cosignatures (the C2SP minimum) are fine.
    ok = text + "".join(_sig_line(f"w{i}.example", bytes(68)) for i in range(16))
    assert verify_checkpoint(ok, {ORIGIN: LOG.public_key}, ORIGIN) == CP


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"{ORIGIN}\n01234\n{base64.b64encode(ROOT).decode()}\n", "leading zeros"),
        (f"{ORIGIN}\n+1\n{base64.b64encode(ROOT).decode()}\n", "canonical decimal"),
        (f"{ORIGIN}\n1 \n{base64.b64encode(ROOT).decode()}\n", "canonical decimal"),
        (f"{ORIGIN}\n\u0661\n{base64.b64encode(ROOT).decode()}\n", "canonical decimal"),
        (f"{ORIGIN}\n{2**64}\n{base64.b64encode(ROOT).decode()}\n", "64 bits"),
        (f"{ORIGIN}\n1\n{base64.b64encode(ROOT[:31]).decode()}\n", "31 bytes"),
        (f"{ORIGIN}\n1\n{base64.b64encode(ROOT).decode().rstrip('=')}\n", "base64"),
        (f"{ORIGIN}\n1\n", "at least 3"),
    ],
)
def test_malformed_checkpoint_bodies(body: str, message: str) -> None:
    with pytest.raises(MalformedNoteError, match=message):
        parse_checkpoint_body(body.encode())
    # Even correctly signed, a malformed body is rejected by verify_checkpoint.
    hint = ed25519_key_hint(ORIGIN, LOG.public_key)
    note = SignedNote(body.encode(), (NoteSignature(ORIGIN, hint, LOG.sign(body.encode())),))
    with pytest.raises(MalformedNoteError):
        verify_checkpoint(note.to_bytes(), {ORIGIN: LOG.public_key}, ORIGIN)


def test_zero_size_and_extensions_round_trip() -> None:
    cp = Checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest(), ("x-ext",))
    text = sign_checkpoint(cp, ORIGIN, LOG)
    assert verify_checkpoint(text, {ORIGIN: LOG.public_key}, ORIGIN) == cp


def test_checkpoint_constructor_validates() -> None:
    for origin, size, root in (
        ("", 1, ROOT),
        ("a\nb", 1, ROOT),
        (ORIGIN, -1, ROOT),
        (ORIGIN, 1, ROOT[:31]),
    ):
        with pytest.raises(MalformedNoteError):
            Checkpoint(origin, size, root)
    with pytest.raises(MalformedNoteError):
        Checkpoint(ORIGIN, 1, ROOT, ("",))

"""Independence checks: signatures cross-verified with the ``openssl`` command line tool."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from crypto.checkpoint import (
    Checkpoint,
    NoteSignature,
    SignedNote,
    ed25519_key_hint,
    parse_note,
    sign_checkpoint,
    verify_checkpoint,
)
from crypto.envelope import Envelope, Signature, pae, sign_envelope, verify_envelope
from crypto.keys import PublicKey, Scheme, generate_private_key, load_private_key

Openssl = Callable[..., subprocess.CompletedProcess[bytes]]

PAYLOAD_TYPE = "application/vnd.mra.aeo-status+protobuf"
PAYLOAD = b"\x0a\x05DE123\x10\x01 any bytes \xff\x00"


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_pae_bytes_are_exactly_dsse_v1() -> None:
    # Hand-written from the DSSE v1 spec, byte lengths in ASCII decimal.
    expected = (
        b"DSSEv1 39 application/vnd.mra.aeo-status+protobuf "
        + str(len(PAYLOAD)).encode()
        + b" "
        + PAYLOAD
    )
    assert pae(PAYLOAD_TYPE, PAYLOAD) == expected
    # Multi-byte type: the length counts UTF-8 bytes, not characters.
    assert pae("t\u00e9", b"") == b"DSSEv1 3 t\xc3\xa9 0 "


def test_ed25519_envelope_signature_verifies_with_openssl(tmp_path: Path, openssl: Openssl) -> None:
    signer = generate_private_key(Scheme.ED25519)
    env = sign_envelope(PAYLOAD_TYPE, PAYLOAD, [signer])
    pub = _write(tmp_path / "pub.pem", signer.public_key.to_pem())
    data = _write(tmp_path / "data", pae(PAYLOAD_TYPE, PAYLOAD))
    sig = _write(tmp_path / "sig", env.signatures[0].sig)
    args = ["pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", data, "-sigfile", sig]
    ok = openssl(*args)
    assert b"Signature Verified Successfully" in ok.stdout
    # The oracle can say no: the same signature over other bytes fails.
    _write(tmp_path / "data", pae(PAYLOAD_TYPE, PAYLOAD + b"!"))
    assert openssl(*args, check=False).returncode != 0


def test_openssl_ed25519_signature_verifies_with_ours(tmp_path: Path, openssl: Openssl) -> None:
    key = tmp_path / "k.pem"
    openssl("genpkey", "-algorithm", "ed25519", "-out", str(key))
    data = _write(tmp_path / "data", pae(PAYLOAD_TYPE, PAYLOAD))
    openssl(
        "pkeyutl", "-sign", "-inkey", str(key), "-rawin", "-in", data, "-out", str(tmp_path / "sig")
    )
    sig = (tmp_path / "sig").read_bytes()
    pub = PublicKey.from_pem(openssl("pkey", "-in", str(key), "-pubout").stdout)
    env = Envelope(PAYLOAD, PAYLOAD_TYPE, (Signature(pub.key_id, sig),))
    assert verify_envelope(env, {pub.key_id: pub}) == {pub.key_id}


def test_ecdsa_p256_envelope_both_directions(tmp_path: Path, openssl: Openssl) -> None:
    # Ours -> openssl dgst -verify
    signer = generate_private_key(Scheme.ECDSA_P256_SHA256)
    env = sign_envelope(PAYLOAD_TYPE, PAYLOAD, [signer])
    pub = _write(tmp_path / "pub.pem", signer.public_key.to_pem())
    data = _write(tmp_path / "data", env.pae())
    sig = _write(tmp_path / "sig", env.signatures[0].sig)
    ok = openssl("dgst", "-sha256", "-verify", pub, "-signature", sig, data)
    assert b"Verified OK" in ok.stdout
    _write(tmp_path / "data", env.pae() + b"x")
    assert openssl(
        "dgst", "-sha256", "-verify", pub, "-signature", sig, data, check=False
    ).returncode
    # openssl dgst -sign -> ours
    key = tmp_path / "k.pem"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    data = _write(tmp_path / "data", pae(PAYLOAD_TYPE, PAYLOAD))
    openssl("dgst", "-sha256", "-sign", str(key), "-out", str(tmp_path / "osig"), data)
    theirs = load_private_key(key).public_key
    env2 = Envelope(
        PAYLOAD, PAYLOAD_TYPE, (Signature(theirs.key_id, (tmp_path / "osig").read_bytes()),)
    )
    assert verify_envelope(env2, {theirs.key_id: theirs}) == {theirs.key_id}


def test_checkpoint_signature_both_directions(tmp_path: Path, openssl: Openssl) -> None:
    cp = Checkpoint("mra.example/DE", 42, bytes(range(32)))
    body = b"mra.example/DE\n42\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
    assert cp.body() == body  # written by hand from the C2SP checkpoint format
    signer = generate_private_key()
    note = parse_note(sign_checkpoint(cp, "mra.example/DE", signer))
    sig = note.signatures[0].signature
    pub = _write(tmp_path / "pub.pem", signer.public_key.to_pem())
    data = _write(tmp_path / "body", body)
    sigf = _write(tmp_path / "sig", sig)
    ok = openssl(
        "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", data, "-sigfile", sigf
    )
    assert b"Signature Verified Successfully" in ok.stdout
    # openssl signs a body; we splice its signature into a note and verify it.
    key = tmp_path / "k.pem"
    openssl("genpkey", "-algorithm", "ed25519", "-out", str(key))
    openssl(
        "pkeyutl", "-sign", "-inkey", str(key), "-rawin", "-in", data, "-out", str(tmp_path / "os")
    )
    theirs = PublicKey.from_pem(openssl("pkey", "-in", str(key), "-pubout").stdout)
    hint = ed25519_key_hint("mra.example/DE", theirs)
    spliced = SignedNote(
        body, (NoteSignature("mra.example/DE", hint, (tmp_path / "os").read_bytes()),)
    )
    assert verify_checkpoint(spliced.to_bytes(), {"mra.example/DE": theirs}, "mra.example/DE") == cp

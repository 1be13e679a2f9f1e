"""Key generation, files, formats and errors; key ids checked against openssl's DER output."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crypto.errors import (
    KeyFormatError,
    PassphraseError,
    UnsupportedKeyTypeError,
    VerificationError,
)
from crypto.keys import (
    PrivateKeySigner,
    PublicKey,
    Scheme,
    Signer,
    Verifier,
    generate_private_key,
    load_private_key,
    load_public_key,
    save_private_key,
    save_public_key,
)

Openssl = Callable[..., subprocess.CompletedProcess[bytes]]
SCHEMES = [Scheme.ED25519, Scheme.ECDSA_P256_SHA256]


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Umask 0 would make a careless writer produce a world-readable file."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_default_scheme_is_ed25519() -> None:
    signer = generate_private_key()
    assert signer.scheme is Scheme.ED25519
    assert isinstance(signer, Signer)
    assert isinstance(signer.public_key, Verifier)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sign_verify_round_trip_and_tamper(scheme: Scheme) -> None:
    signer = generate_private_key(scheme)
    sig = signer.sign(b"payload")
    signer.public_key.verify(sig, b"payload")
    with pytest.raises(VerificationError, match=signer.key_id):
        signer.public_key.verify(sig, b"payload!")
    other = generate_private_key(scheme)
    with pytest.raises(VerificationError):
        other.public_key.verify(sig, b"payload")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_truncated_signatures_named(scheme: Scheme) -> None:
    signer = generate_private_key(scheme)
    sig = signer.sign(b"x")
    expected = "must be 64 bytes" if scheme is Scheme.ED25519 else "malformed ECDSA signature"
    for bad in (sig[:-1], sig[:10], b""):
        with pytest.raises(VerificationError, match=expected):
            signer.public_key.verify(bad, b"x")


def test_ecdsa_non_canonical_der_rejected() -> None:
    signer = generate_private_key(Scheme.ECDSA_P256_SHA256)
    sig = signer.sign(b"x")
    for bad in (sig + b"\x00", sig[:1] + bytes([0x81, sig[1]]) + sig[2:]):  # trailing, BER length
        with pytest.raises(VerificationError, match="malformed ECDSA signature"):
            signer.public_key.verify(bad, b"x")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_key_id_is_sha256_of_spki_der_from_openssl(
    scheme: Scheme, tmp_path: Path, openssl: Openssl
) -> None:
    signer = generate_private_key(scheme)
    save_private_key(signer, tmp_path / "k.pem")
    der = openssl("pkey", "-in", str(tmp_path / "k.pem"), "-pubout", "-outform", "DER").stdout
    assert len(der) > 40
    assert signer.key_id == hashlib.sha256(der).hexdigest()
    assert signer.public_key.to_der() == der
    assert PublicKey.from_der(der).key_id == signer.key_id


@pytest.mark.parametrize(
    ("args", "scheme"),
    [
        (["-algorithm", "ed25519"], Scheme.ED25519),
        (["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], Scheme.ECDSA_P256_SHA256),
    ],
)
def test_openssl_generated_keys_load(
    args: list[str], scheme: Scheme, tmp_path: Path, openssl: Openssl
) -> None:
    path = tmp_path / "k.pem"
    openssl("genpkey", *args, "-out", str(path))
    signer = load_private_key(path)
    assert signer.scheme is scheme
    pub = openssl("pkey", "-in", str(path), "-pubout").stdout
    assert PublicKey.from_pem(pub) == signer.public_key


def test_private_file_mode_0600_even_with_umask_0(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "signing.pem"
    save_private_key(generate_private_key(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # overwrite=True keeps the mode too (it goes through a fresh 0600 file).
    save_private_key(generate_private_key(), path, overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["signing.pem"]


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    first = generate_private_key()
    save_private_key(first, path)
    with pytest.raises(FileExistsError):
        save_private_key(generate_private_key(), path)
    assert load_private_key(path).key_id == first.key_id
    second = generate_private_key()
    save_private_key(second, path, overwrite=True)
    assert load_private_key(path).key_id == second.key_id


def test_refuses_to_follow_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "k.pem"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        save_private_key(generate_private_key(), link)
    assert not target.exists()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_passphrase_round_trip_and_errors(scheme: Scheme, tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    signer = generate_private_key(scheme)
    save_private_key(signer, path, passphrase="correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert load_private_key(path, "correct horse").key_id == signer.key_id
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        load_private_key(path, "wrong")
    with pytest.raises(PassphraseError, match="no passphrase"):
        load_private_key(path)
    plain = tmp_path / "plain.pem"
    save_private_key(signer, plain)
    with pytest.raises(PassphraseError, match="not encrypted"):
        load_private_key(plain, "x")


def test_openssl_encrypted_key_loads(tmp_path: Path, openssl: Openssl) -> None:
    path = tmp_path / "enc.pem"
    openssl(
        "genpkey",
        "-algorithm",
        "ed25519",
        "-aes-256-cbc",
        "-pass",
        "pass:s3cret",
        "-out",
        str(path),
    )
    assert load_private_key(path, b"s3cret").scheme is Scheme.ED25519
    with pytest.raises(PassphraseError):
        load_private_key(path, b"nope")


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], "RSA"),
        (["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"], "secp384r1"),
        (["-algorithm", "ed448"], "Ed448"),
        (["-algorithm", "x25519"], "X25519"),
    ],
)
def test_other_key_types_rejected_by_name(
    args: list[str], name: str, tmp_path: Path, openssl: Openssl
) -> None:
    path = tmp_path / "k.pem"
    openssl("genpkey", *args, "-out", str(path))
    with pytest.raises(UnsupportedKeyTypeError, match=name):
        load_private_key(path)
    pub = openssl("pkey", "-in", str(path), "-pubout").stdout
    with pytest.raises(UnsupportedKeyTypeError, match=name):
        PublicKey.from_pem(pub)


def test_traditional_rsa_pem_rejected(tmp_path: Path, openssl: Openssl) -> None:
    path = tmp_path / "rsa.pem"
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path))
    trad = openssl("pkey", "-in", str(path), "-traditional").stdout
    assert b"BEGIN RSA PRIVATE KEY" in trad
    with pytest.raises(UnsupportedKeyTypeError, match="RSA"):
        PrivateKeySigner.from_pem(trad)


def test_wrong_pem_kinds_named(tmp_path: Path, openssl: Openssl) -> None:
    key = tmp_path / "k.pem"
    cert = tmp_path / "c.pem"
    openssl("genpkey", "-algorithm", "ed25519", "-out", str(key))
    openssl(
        "req", "-new", "-x509", "-key", str(key), "-subj", "/CN=t", "-days", "1", "-out", str(cert)
    )
    with pytest.raises(KeyFormatError, match="got a certificate"):
        load_private_key(cert)
    pub = openssl("pkey", "-in", str(key), "-pubout").stdout
    with pytest.raises(KeyFormatError, match="got a public key"):
        PrivateKeySigner.from_pem(pub)
    with pytest.raises(KeyFormatError, match="got PEM 'PRIVATE KEY'"):
        PublicKey.from_pem(key.read_bytes())
    with pytest.raises(KeyFormatError, match="got PEM 'CERTIFICATE'"):
        load_public_key(cert)


def test_malformed_pem() -> None:
    with pytest.raises(KeyFormatError, match="not PEM"):
        PrivateKeySigner.from_pem(b"hello")
    bad = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    with pytest.raises(KeyFormatError, match="malformed PEM private key"):
        PrivateKeySigner.from_pem(bad)
    with pytest.raises(KeyFormatError, match="malformed PEM public key"):
        PublicKey.from_pem(bad.replace(b"PRIVATE", b"PUBLIC"))
    with pytest.raises(KeyFormatError, match="malformed DER"):
        PublicKey.from_der(b"\x30\x03\x02\x01")


def test_no_key_material_in_repr_or_errors(tmp_path: Path) -> None:
    signer = generate_private_key()
    pem = signer.to_pem()
    body = b"".join(pem.splitlines()[1:-1]).decode()
    text = repr(signer) + repr(signer.public_key)
    assert signer.key_id in text
    assert body not in text
    assert body[:16] not in text
    path = tmp_path / "k.pem"
    save_private_key(signer, path, passphrase="hunter2hunter2")
    with pytest.raises(PassphraseError) as info:
        load_private_key(path, "hunter3hunter3")
    assert "hunter" not in str(info.value)
    assert "hunter" not in repr(info.value)


def test_public_key_files(tmp_path: Path) -> None:
    signer = generate_private_key(Scheme.ECDSA_P256_SHA256)
    path = tmp_path / "pub.pem"
    save_public_key(signer.public_key, path)
    loaded = load_public_key(path)
    assert loaded == signer.public_key
    assert hash(loaded) == hash(signer.public_key)
    assert loaded.scheme is Scheme.ECDSA_P256_SHA256
    with pytest.raises(UnsupportedKeyTypeError):
        loaded.ed25519_raw()


def test_ed25519_raw_round_trip() -> None:
    signer = generate_private_key()
    raw = signer.public_key.ed25519_raw()
    assert len(raw) == 32
    assert PublicKey.from_ed25519_raw(raw) == signer.public_key
    with pytest.raises(KeyFormatError):
        PublicKey.from_ed25519_raw(raw[:31])

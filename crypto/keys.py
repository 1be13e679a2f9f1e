"""Signing keys: generation, loading, saving, key ids, and the Signer / PublicKey interfaces.

Invariants:

* Only two key types exist here: Ed25519 (the default) and ECDSA over NIST P-256 with SHA-256.
  Every loader rejects anything else (RSA, DSA, other curves, X25519, ...) with
  :class:`~crypto.errors.UnsupportedKeyTypeError` naming the type it found.
* A key id is the lowercase hex SHA-256 of the public key's SubjectPublicKeyInfo DER encoding,
  so anyone can recompute it with standard tools (``openssl pkey -pubin -outform DER | sha256sum``).
* Private keys are PEM PKCS#8 (optionally encrypted with the best encryption the library offers);
  public keys are PEM SubjectPublicKeyInfo. Private key files are created with mode 0600 in one
  ``open(O_CREAT|O_EXCL)`` call, so they are never briefly readable by others, and an existing file
  is only replaced when the caller asks (then atomically, through a 0600 temporary file).
* ECDSA signatures are DER-encoded ``Ecdsa-Sig-Value`` as OpenSSL produces and expects; only
  the canonical DER encoding is accepted. Ed25519 signatures are exactly 64 bytes.
* No error message and no ``repr`` ever contains private key material or passphrases.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Protocol, TypeAlias, runtime_checkable

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from crypto.errors import (
    KeyFormatError,
    PassphraseError,
    UnsupportedKeyTypeError,
    VerificationError,
)

__all__ = [
    "ED25519_SIGNATURE_SIZE",
    "PrivateKeySigner",
    "PublicKey",
    "Scheme",
    "Signer",
    "Verifier",
    "generate_private_key",
    "key_id_from_spki_der",
    "load_private_key",
    "load_public_key",
    "require_scheme",
    "save_private_key",
    "save_public_key",
]

ED25519_SIGNATURE_SIZE = 64
_PRIVATE_FILE_MODE = 0o600
_PUBLIC_FILE_MODE = 0o644
# The PEM pre-encapsulation boundary; used only to name what we were given when it is wrong.
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")

_PrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
_PublicKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class Scheme(StrEnum):
    """Signature schemes, named as securesystemslib names them."""

    ED25519 = "ed25519"
    ECDSA_P256_SHA256 = "ecdsa-sha2-nistp256"


def key_id_from_spki_der(spki_der: bytes) -> str:
    """Return the key id: lowercase hex SHA-256 of a SubjectPublicKeyInfo DER encoding."""
    return hashlib.sha256(spki_der).hexdigest()


def _pem_label(data: bytes) -> str | None:
    match = _PEM_LABEL.search(data)
    return match.group(1).decode("ascii") if match else None


def _describe_type(key: object) -> str:
    """A human name for a key object's type, for error messages (never its value)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    name = type(key).__name__
    # cryptography's concrete classes are e.g. "RSAPrivateKey" / "_RSAPublicKey".
    return name.lstrip("_").replace("PrivateKey", "").replace("PublicKey", "") or name


def _scheme_of(key: object) -> Scheme:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return Scheme.ED25519
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return Scheme.ECDSA_P256_SHA256
        raise UnsupportedKeyTypeError(
            f"unsupported key type ECDSA {key.curve.name}: only Ed25519 and ECDSA P-256 are allowed"
        )
    raise UnsupportedKeyTypeError(
        f"unsupported key type {_describe_type(key)}: only Ed25519 and ECDSA P-256 are allowed"
    )


def _to_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


@runtime_checkable
class Verifier(Protocol):
    """Anything that can check a signature made by one key."""

    @property
    def key_id(self) -> str: ...

    @property
    def scheme(self) -> Scheme: ...

    def verify(self, signature: bytes, data: bytes) -> None:
        """Return if ``signature`` is valid over ``data``; raise VerificationError otherwise."""
        ...


@runtime_checkable
class Signer(Protocol):
    """Anything that signs bytes with one key (a file key here; an HSM or KMS elsewhere)."""

    @property
    def key_id(self) -> str: ...

    @property
    def scheme(self) -> Scheme: ...

    @property
    def public_key(self) -> PublicKey: ...

    def sign(self, data: bytes) -> bytes:
        """Sign exactly ``data`` (no re-encoding, no pre-hashing by the caller)."""
        ...


class PublicKey:
    """An Ed25519 or ECDSA P-256 public key that verifies signatures (implements Verifier).

    Equality and hashing follow the SubjectPublicKeyInfo DER, hence the key id.
    """

    __slots__ = ("_der", "_key", "_key_id", "_scheme")

    def __init__(self, key: _PublicKey) -> None:
        self._scheme = _scheme_of(key)
        self._key: _PublicKey = key
        self._der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._key_id = key_id_from_spki_der(self._der)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_pem(cls, pem: bytes | str) -> PublicKey:
        """Load a SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``)."""
        data = _to_bytes(pem)
        label = _pem_label(data)
        if label is None:
            raise KeyFormatError("not PEM: no '-----BEGIN PUBLIC KEY-----' line found")
        if label != "PUBLIC KEY":
            raise KeyFormatError(f"expected a PEM public key (PUBLIC KEY), got PEM '{label}'")
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError("malformed PEM public key: could not be decoded") from exc
        return cls._from_loaded(key)

    @classmethod
    def from_der(cls, der: bytes) -> PublicKey:
        """Load a SubjectPublicKeyInfo DER encoding."""
        try:
            key = serialization.load_der_public_key(bytes(der))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError("malformed DER public key: not a SubjectPublicKeyInfo") from exc
        return cls._from_loaded(key)

    @classmethod
    def from_ed25519_raw(cls, raw: bytes) -> PublicKey:
        """Load a raw 32-byte Ed25519 public key (RFC 8032 encoding)."""
        if len(raw) != 32:
            raise KeyFormatError(f"raw Ed25519 public key must be 32 bytes, got {len(raw)}")
        try:
            return cls(ed25519.Ed25519PublicKey.from_public_bytes(bytes(raw)))
        except ValueError as exc:
            raise KeyFormatError("invalid raw Ed25519 public key") from exc

    @classmethod
    def _from_loaded(cls, key: object) -> PublicKey:
        if isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
            return cls(key)
        raise UnsupportedKeyTypeError(
            f"unsupported key type {_describe_type(key)}: only Ed25519 and ECDSA P-256 are allowed"
        )

    # -- properties ---------------------------------------------------------------------------

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def scheme(self) -> Scheme:
        return self._scheme

    @property
    def cryptography_key(self) -> _PublicKey:
        """The underlying ``cryptography`` object (for X.509 building inside this package)."""
        return self._key

    def to_der(self) -> bytes:
        """SubjectPublicKeyInfo DER (the bytes the key id hashes)."""
        return self._der

    def to_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM."""
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def ed25519_raw(self) -> bytes:
        """The 32-byte RFC 8032 encoding; only for Ed25519 keys (C2SP note key hints need it)."""
        if not isinstance(self._key, ed25519.Ed25519PublicKey):
            raise UnsupportedKeyTypeError(f"key {self._key_id} is {self._scheme}, not Ed25519")
        return self._key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    # -- verification -------------------------------------------------------------------------

    def verify(self, signature: bytes, data: bytes) -> None:
        """Raise VerificationError unless ``signature`` is a valid signature over ``data``."""
        signature = bytes(signature)
        if isinstance(self._key, ed25519.Ed25519PublicKey):
            if len(signature) != ED25519_SIGNATURE_SIZE:
                raise VerificationError(
                    f"Ed25519 signature for key {self._key_id} must be "
                    f"{ED25519_SIGNATURE_SIZE} bytes, got {len(signature)}"
                )
            try:
                self._key.verify(signature, bytes(data))
            except InvalidSignature as exc:
                raise VerificationError(
                    f"Ed25519 signature does not verify with key {self._key_id}"
                ) from exc
            return
        _check_canonical_der_signature(signature, self._key_id)
        try:
            self._key.verify(signature, bytes(data), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise VerificationError(
                f"ECDSA P-256 signature does not verify with key {self._key_id}"
            ) from exc

    # -- dunder -------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other._der == self._der

    def __hash__(self) -> int:
        return hash(self._der)

    def __repr__(self) -> str:
        return f"PublicKey(scheme={self._scheme.value!r}, key_id={self._key_id!r})"


def _check_canonical_der_signature(signature: bytes, key_id: str) -> None:
    """Reject truncated, padded or non-canonical DER ECDSA signatures with a clear message.

    OpenSSL would reject most of these too, but only as "invalid signature"; we want the
    message to say the encoding is wrong, and we want exactly one accepted encoding per (r, s)
    so signatures cannot be malleated into different bytes that still verify.
    """
    try:
        r, s = decode_dss_signature(signature)
    except ValueError as exc:
        raise VerificationError(
            f"malformed ECDSA signature for key {key_id}: not a DER Ecdsa-Sig-Value "
            f"({len(signature)} bytes; truncated or not canonical?)"
        ) from exc
    if encode_dss_signature(r, s) != signature:
        raise VerificationError(
            f"malformed ECDSA signature for key {key_id}: "
            "not canonical DER (trailing or padded bytes)"
        )


class PrivateKeySigner:
    """A private key held in memory that signs (implements :class:`Signer`)."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: _PrivateKey) -> None:
        _scheme_of(key)  # rejects other curves before we hold the key
        self._key: _PrivateKey = key
        self._public = PublicKey(key.public_key())

    @classmethod
    def generate(cls, scheme: Scheme = Scheme.ED25519) -> PrivateKeySigner:
        """Generate a fresh key of ``scheme`` from the OS CSPRNG."""
        if scheme is Scheme.ED25519:
            return cls(ed25519.Ed25519PrivateKey.generate())
        if scheme is Scheme.ECDSA_P256_SHA256:
            return cls(ec.generate_private_key(ec.SECP256R1()))
        raise UnsupportedKeyTypeError(f"unsupported scheme {scheme!r}")

    @classmethod
    def from_pem(cls, pem: bytes | str, passphrase: bytes | str | None = None) -> PrivateKeySigner:
        """Load a PEM PKCS#8 private key, decrypting with ``passphrase`` if it is encrypted."""
        data = _to_bytes(pem)
        label = _pem_label(data)
        if label is None:
            raise KeyFormatError("not PEM: no '-----BEGIN PRIVATE KEY-----' line found")
        if label == "CERTIFICATE":
            raise KeyFormatError("expected a PEM private key, got a certificate")
        if label == "PUBLIC KEY":
            raise KeyFormatError("expected a PEM private key, got a public key")
        if label == "RSA PRIVATE KEY":
            raise UnsupportedKeyTypeError(
                "unsupported key type RSA: only Ed25519 and ECDSA P-256 are allowed"
            )
        if label not in {"PRIVATE KEY", "ENCRYPTED PRIVATE KEY"}:
            raise KeyFormatError(
                f"expected a PKCS#8 PEM private key (PRIVATE KEY or ENCRYPTED PRIVATE KEY), "
                f"got PEM '{label}'"
            )
        password = _to_bytes(passphrase) if passphrase is not None else None
        if label == "ENCRYPTED PRIVATE KEY" and password is None:
            raise PassphraseError("private key is encrypted but no passphrase was given")
        if label == "PRIVATE KEY" and password is not None:
            raise PassphraseError("a passphrase was given but the private key is not encrypted")
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # cryptography says "Bad decrypt. Incorrect password?" for a wrong passphrase and
            # generic errors for garbage; we never echo its text since it may quote input.
            if label == "ENCRYPTED PRIVATE KEY":
                raise PassphraseError(
                    "could not decrypt private key: wrong passphrase or corrupted key"
                ) from exc
            raise KeyFormatError("malformed PEM private key: could not be decoded") from exc
        if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            return cls(key)
        raise UnsupportedKeyTypeError(
            f"unsupported key type {_describe_type(key)}: only Ed25519 and ECDSA P-256 are allowed"
        )

    @property
    def key_id(self) -> str:
        return self._public.key_id

    @property
    def scheme(self) -> Scheme:
        return self._public.scheme

    @property
    def public_key(self) -> PublicKey:
        return self._public

    @property
    def cryptography_key(self) -> _PrivateKey:
        """The underlying ``cryptography`` object (for X.509 building inside this package)."""
        return self._key

    def sign(self, data: bytes) -> bytes:
        """Ed25519 (64 bytes) or ECDSA P-256/SHA-256 (DER) signature over exactly ``data``."""
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(bytes(data))
        return self._key.sign(bytes(data), ec.ECDSA(hashes.SHA256()))

    def to_pem(self, passphrase: bytes | str | None = None) -> bytes:
        """PEM PKCS#8, encrypted with the best available scheme when a passphrase is given."""
        encryption: serialization.KeySerializationEncryption
        if passphrase is None:
            encryption = serialization.NoEncryption()
        else:
            password = _to_bytes(passphrase)
            if not password:
                raise PassphraseError("an empty passphrase is not allowed; pass None instead")
            encryption = serialization.BestAvailableEncryption(password)
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def __repr__(self) -> str:
        return f"PrivateKeySigner(scheme={self.scheme.value!r}, key_id={self.key_id!r})"


def generate_private_key(scheme: Scheme = Scheme.ED25519) -> PrivateKeySigner:
    """Generate a new signing key (Ed25519 unless asked otherwise)."""
    return PrivateKeySigner.generate(scheme)


def _write_new_file(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` created with ``mode`` from the first byte.

    Without ``overwrite`` the file is created with O_EXCL so an existing file (or a symlink
    planted there) makes us fail rather than follow it. With ``overwrite`` we write a fresh
    temporary file the same way and rename it over the target, which is atomic on POSIX.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    target = path
    if overwrite:
        target = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError as exc:
        raise FileExistsError(f"refusing to overwrite existing file {path}") from exc
    try:
        # The umask may have removed bits but never adds any; fchmod pins the exact mode.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        if fd != -1:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        raise
    if overwrite:
        os.replace(target, path)


def save_private_key(
    signer: PrivateKeySigner,
    path: str | os.PathLike[str],
    passphrase: bytes | str | None = None,
    *,
    overwrite: bool = False,
) -> None:
    """Write the key as PEM PKCS#8 to a new file with mode 0600.

    Raises FileExistsError if ``path`` exists and ``overwrite`` is false.
    """
    _write_new_file(Path(path), signer.to_pem(passphrase), _PRIVATE_FILE_MODE, overwrite=overwrite)


def load_private_key(
    path: str | os.PathLike[str], passphrase: bytes | str | None = None
) -> PrivateKeySigner:
    """Read a PEM PKCS#8 private key file."""
    return PrivateKeySigner.from_pem(Path(path).read_bytes(), passphrase)


def save_public_key(
    key: PublicKey, path: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Write a SubjectPublicKeyInfo PEM file (mode 0644: public keys are public)."""
    _write_new_file(Path(path), key.to_pem(), _PUBLIC_FILE_MODE, overwrite=overwrite)


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Read a SubjectPublicKeyInfo PEM file."""
    return PublicKey.from_pem(Path(path).read_bytes())


def require_scheme(key: Signer | Verifier, scheme: Scheme, purpose: str) -> None:
    """Raise UnsupportedKeyTypeError unless ``key`` uses ``scheme`` (e.g. checkpoints)."""
    if key.scheme is not scheme:
        raise UnsupportedKeyTypeError(
            f"{purpose} requires a {scheme.value} key, key {key.key_id} is {key.scheme.value}"
        )

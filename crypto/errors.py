"""The error hierarchy of :mod:`crypto`.

Every failure of this package is a :class:`CryptoError`. Every way a signature, proof or
checkpoint can fail to verify is a :class:`VerificationError`, so callers can treat "did not
verify" uniformly (python-tuf / securesystemslib style) while the message names the cause.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Root of every error raised by :mod:`crypto`."""


class KeyFormatError(CryptoError):
    """A key or certificate could not be loaded: bad PEM, wrong type, wrong passphrase."""


class MalformedInputError(CryptoError):
    """Input bytes or values are structurally invalid (wrong length, bad encoding, ...)."""


class VerificationError(CryptoError):
    """A signature, Merkle proof or checkpoint did not verify."""


class UnsupportedKeyTypeError(KeyFormatError):
    """A key of a type we refuse (RSA, DSA, an EC curve other than P-256, ...)."""


class PassphraseError(KeyFormatError):
    """A private key's passphrase is wrong, missing when needed, or given when not needed."""


class MalformedEnvelopeError(MalformedInputError, VerificationError):
    """DSSE JSON that does not parse strictly; also a verification failure for callers."""


class MalformedNoteError(MalformedInputError, VerificationError):
    """A signed note / checkpoint that does not parse strictly; also a verification failure."""


class MalformedProofError(MalformedInputError, VerificationError):
    """A Merkle proof input of the wrong shape (hash length, proof length, sizes, indices)."""


class TileStoreError(CryptoError):
    """Persisted tiles are missing or inconsistent with the tree size being served."""

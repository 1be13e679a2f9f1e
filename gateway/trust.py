"""Trust statements: what an administration tells its partners to trust, signed by its root key.

A trust statement is a DSSE envelope (payload type :data:`STATEMENT_TYPE`) over an RFC 8785
canonical JSON document: administration code, endpoint, log origin, TLS CA certificate, signing
keys with validity windows and revocation indices, a version and an expiry. The partner bundle
exchanged at onboarding is the current statement with its chain back to version 1.

Chain rules (TUF-style, checked by :func:`verify_chain`):
1. Version 1's root key id equals the fingerprint the partner pinned out of band, and version 1
   is signed by that root.
2. Each later statement has version n+1, the same administration, and is signed by the root of
   statement n; when the root changes it is also signed by its own (new) root. Every statement is
   signed by its own root in any case.
3. Expiry is checked on the newest statement only (older ones are history); callers decide the
   grace period.

Nothing here does I/O; the functions raise :class:`TrustError` (a CheckFailedError) or return.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from crypto.envelope import (
    Envelope,
    envelope_from_json,
    envelope_to_json,
    sign_envelope,
    verify_envelope,
)
from crypto.errors import CryptoError, VerificationError
from crypto.keys import PublicKey, Signer
from crypto.pki import load_certificate
from gateway.errors import CheckFailedError, InputError

STATEMENT_TYPE = "application/vnd.mra.trust-statement.v1+json"
STATEMENT_SCHEMA = "mra-gateway/trust-statement/v1"
BUNDLE_SCHEMA = "mra-gateway/partner-bundle/v1"
# A statement is a few kB; with a rotation or renewal a month a chain stays far below this
# for decades. Writers check it (and the key cap) before storing, so no node can make a
# statement or chain its partners would refuse.
MAX_BUNDLE_BYTES = 8 * 1024 * 1024
MAX_SIGNING_KEYS = 64
MAX_CHAIN_LENGTH = 1000


class TrustError(CheckFailedError):
    """A trust statement or partner bundle did not verify."""


class BundleFormatError(InputError):
    """A partner bundle file is malformed."""


def log_origin(admin: str) -> str:
    """The C2SP checkpoint origin of an administration's log."""
    return f"{admin.lower()}.mragw/log"


def witness_name(admin: str) -> str:
    """The C2SP cosigner name an administration's gateway cosigns checkpoints as; its keys are
    the Ed25519 signing keys of its trust statement (cosignature/v1 key IDs differ from log
    signature key IDs, so the two uses cannot be confused)."""
    return f"{admin.lower()}.mragw/witness"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise TrustError(f"trust statement {where}: not a timestamp")
    try:
        moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise TrustError(
            f"trust statement {where}: {value!r} is not YYYY-MM-DDTHH:MM:SSZ"
        ) from None
    return moment


@dataclass(frozen=True)
class SigningKey:
    """A log signing key as published: entries and checkpoints signed by it are trusted while
    it is valid and for log indices below ``revoked_at_index`` (when revoked)."""

    public_key: PublicKey
    valid_from: datetime
    valid_until: datetime | None = None
    revoked_at_index: int | None = None
    revocation_reason: str | None = None

    @property
    def key_id(self) -> str:
        return self.public_key.key_id

    def in_window(self, moment: datetime, skew: timedelta = timedelta(0)) -> bool:
        """Whether the key may sign at ``moment`` (give or take ``skew`` of clock difference)."""
        if moment < self.valid_from - skew:
            return False
        return self.valid_until is None or moment < self.valid_until + skew

    def usable_for(self, index: int) -> bool:
        """Whether an entry at ``index`` (or a checkpoint of that many entries) may be signed
        by this key: revocation is bound to the log, not to a claimed signing time."""
        return self.revoked_at_index is None or index < self.revoked_at_index

    def to_document(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "scheme": self.public_key.scheme.value,
            "public_key": self.public_key.to_pem().decode("ascii"),
            "valid_from": _iso(self.valid_from),
            "valid_until": _iso(self.valid_until) if self.valid_until else None,
            "revoked_at_index": self.revoked_at_index,
            "revocation_reason": self.revocation_reason,
        }

    @classmethod
    def from_document(cls, doc: Any, where: str) -> SigningKey:
        _exact(
            doc,
            {
                "key_id",
                "scheme",
                "public_key",
                "valid_from",
                "valid_until",
                "revoked_at_index",
                "revocation_reason",
            },
            where,
        )
        key = _public_key(doc["public_key"], f"{where}.public_key")
        if key.key_id != doc["key_id"] or key.scheme.value != doc["scheme"]:
            raise TrustError(f"trust statement {where}: key_id or scheme does not match the key")
        revoked = doc["revoked_at_index"]
        if revoked is not None and (
            not isinstance(revoked, int) or isinstance(revoked, bool) or revoked < 0
        ):
            raise TrustError(f"trust statement {where}.revoked_at_index: not an index")
        reason = doc["revocation_reason"]
        if reason is not None and not isinstance(reason, str):
            raise TrustError(f"trust statement {where}.revocation_reason: not a string")
        return cls(
            public_key=key,
            valid_from=_parse_iso(doc["valid_from"], f"{where}.valid_from"),
            valid_until=None
            if doc["valid_until"] is None
            else _parse_iso(doc["valid_until"], f"{where}.valid_until"),
            revoked_at_index=revoked,
            revocation_reason=reason,
        )


@dataclass(frozen=True)
class TrustStatement:
    admin: str
    version: int
    issued: datetime
    expires: datetime
    endpoint: str
    root_key: PublicKey
    tls_ca_pem: str
    signing_keys: tuple[SigningKey, ...]
    origin: str = field(default="")

    @property
    def root_fingerprint(self) -> str:
        return self.root_key.key_id

    @property
    def log_origin(self) -> str:
        return self.origin or log_origin(self.admin)

    def signing_key(self, key_id: str) -> SigningKey | None:
        for key in self.signing_keys:
            if key.key_id == key_id:
                return key
        return None

    def to_document(self) -> dict[str, Any]:
        return {
            "_type": STATEMENT_SCHEMA,
            "admin": self.admin,
            "version": self.version,
            "issued": _iso(self.issued),
            "expires": _iso(self.expires),
            "endpoint": self.endpoint,
            "log_origin": self.log_origin,
            "root_key": {
                "key_id": self.root_key.key_id,
                "scheme": self.root_key.scheme.value,
                "public_key": self.root_key.to_pem().decode("ascii"),
            },
            "tls_ca": self.tls_ca_pem,
            "signing_keys": [k.to_document() for k in self.signing_keys],
        }

    def canonical_bytes(self) -> bytes:
        """RFC 8785 canonical JSON: the exact bytes the root signs."""
        return rfc8785.dumps(self.to_document())

    @classmethod
    def from_payload(cls, payload: bytes) -> TrustStatement:
        """Parse a statement payload *that has already been verified*."""
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise TrustError(f"trust statement payload is not JSON: {error}") from error
        _exact(
            doc,
            {
                "_type",
                "admin",
                "version",
                "issued",
                "expires",
                "endpoint",
                "log_origin",
                "root_key",
                "tls_ca",
                "signing_keys",
            },
            "$",
        )
        if doc["_type"] != STATEMENT_SCHEMA:
            raise TrustError(f"trust statement $._type: {doc['_type']!r} is not {STATEMENT_SCHEMA}")
        admin, version = doc["admin"], doc["version"]
        if not isinstance(admin, str) or not admin.isalpha() or not admin.isupper():
            raise TrustError(f"trust statement $.admin: {admin!r} is not an administration code")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise TrustError(f"trust statement $.version: {version!r} is not a positive integer")
        for name in ("endpoint", "log_origin", "tls_ca"):
            if not isinstance(doc[name], str):
                raise TrustError(f"trust statement $.{name}: not a string")
        root = doc["root_key"]
        _exact(root, {"key_id", "scheme", "public_key"}, "$.root_key")
        root_key = _public_key(root["public_key"], "$.root_key.public_key")
        if root_key.key_id != root["key_id"]:
            raise TrustError("trust statement $.root_key.key_id does not match the key")
        tls_ca_certificates(doc["tls_ca"], "$.tls_ca")
        keys_doc = doc["signing_keys"]
        if not isinstance(keys_doc, list) or len(keys_doc) > MAX_SIGNING_KEYS:
            raise TrustError(
                f"trust statement $.signing_keys: must be a list of at most {MAX_SIGNING_KEYS} keys"
            )
        keys = tuple(
            SigningKey.from_document(k, f"$.signing_keys[{i}]") for i, k in enumerate(keys_doc)
        )
        if len({k.key_id for k in keys}) != len(keys):
            raise TrustError("trust statement $.signing_keys: a key is listed twice")
        statement = cls(
            admin=admin,
            version=version,
            issued=_parse_iso(doc["issued"], "$.issued"),
            expires=_parse_iso(doc["expires"], "$.expires"),
            endpoint=doc["endpoint"],
            root_key=root_key,
            tls_ca_pem=doc["tls_ca"],
            signing_keys=keys,
            origin=doc["log_origin"],
        )
        if statement.log_origin != log_origin(admin):
            # Bound to the administration, so one partner can never claim another's log.
            raise TrustError(
                f"trust statement $.log_origin: {statement.log_origin!r} is not "
                f"{log_origin(admin)!r}"
            )
        if statement.canonical_bytes() != payload:
            # Only canonical payloads are accepted, so one statement has exactly one encoding.
            raise TrustError("trust statement payload is not RFC 8785 canonical JSON")
        return statement


def _exact(doc: Any, names: set[str], where: str) -> None:
    if not isinstance(doc, dict):
        raise TrustError(f"trust statement {where}: not an object")
    missing, extra = names - set(doc), set(doc) - names
    if missing or extra:
        raise TrustError(
            f"trust statement {where}: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )


def _public_key(pem: Any, where: str) -> PublicKey:
    if not isinstance(pem, str):
        raise TrustError(f"trust statement {where}: not a PEM string")
    try:
        return PublicKey.from_pem(pem.encode("ascii"))
    except (CryptoError, UnicodeEncodeError) as error:
        raise TrustError(f"trust statement {where}: {error}") from error


MAX_TLS_CAS = 4


def tls_ca_certificates(pem: str, where: str = "tls_ca") -> list[x509.Certificate]:
    """The TLS CA certificates of a statement: one, or two during a TLS CA rotation (the new
    one first); all are trusted for the administration's gateway certificates."""
    try:
        certs = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as error:
        raise TrustError(f"trust statement {where}: not PEM certificates: {error}") from error
    if not 1 <= len(certs) <= MAX_TLS_CAS:
        raise TrustError(f"trust statement {where}: holds {len(certs)} certificates, 1..4 allowed")
    for cert in certs:
        try:
            load_certificate(cert.public_bytes(serialization.Encoding.PEM))
        except CryptoError as error:
            raise TrustError(f"trust statement {where}: {error}") from error
    return certs


def sign_statement(statement: TrustStatement, root_signers: Sequence[Signer]) -> Envelope:
    """Sign with the statement's root (and, on a root rotation, the previous root too)."""
    if statement.root_key.key_id not in {s.key_id for s in root_signers}:
        raise TrustError("a trust statement must be signed by its own root key")
    return sign_envelope(STATEMENT_TYPE, statement.canonical_bytes(), root_signers)


def _verified(envelope: Envelope, keys: Sequence[PublicKey], what: str) -> None:
    try:
        verify_envelope(envelope, {k.key_id: k for k in keys}, threshold=len(keys))
    except VerificationError as error:
        raise TrustError(f"{what}: {error}") from error


def _first(envelope: Envelope, pinned_fingerprint: str) -> TrustStatement:
    """Version 1 carries its own root key (as TUF root metadata does): parse only to find that
    key, then accept nothing from it before the fingerprint and the signature both check out."""
    if envelope.payload_type != STATEMENT_TYPE:
        raise TrustError(f"statement 1: payload type {envelope.payload_type!r}")
    claimed = TrustStatement.from_payload(envelope.payload)
    where = f"trust statement version {claimed.version} of {claimed.admin}"
    if claimed.version != 1:
        raise TrustError(f"{where}: a chain must start at version 1")
    if claimed.root_fingerprint != pinned_fingerprint:
        raise TrustError(
            f"{where}: root key fingerprint {claimed.root_fingerprint} does not match "
            f"the pinned {pinned_fingerprint}"
        )
    _verified(envelope, [claimed.root_key], where)
    return claimed


def next_statement(previous: TrustStatement, envelope: Envelope) -> TrustStatement:
    """Accept the statement after ``previous`` only if the root trusted so far signed it, it
    is version n+1 of the same administration, and a new root (rotation) co-signed it."""
    if envelope.payload_type != STATEMENT_TYPE:
        raise TrustError(
            f"trust statement after version {previous.version}: payload type "
            f"{envelope.payload_type!r}"
        )
    # Verify with the root already trusted before parsing anything.
    _verified(
        envelope,
        [previous.root_key],
        f"trust statement after version {previous.version} of {previous.admin} "
        f"(root {previous.root_key.key_id})",
    )
    claimed = TrustStatement.from_payload(envelope.payload)
    where = f"trust statement version {claimed.version} of {claimed.admin}"
    if claimed.version <= previous.version:
        raise TrustError(
            f"{where}: stale, not newer than the held version {previous.version} "
            "(a replay or a rollback)"
        )
    if claimed.version != previous.version + 1:
        raise TrustError(
            f"{where}: skips version {previous.version + 1} (expected {previous.version + 1} "
            f"after {previous.version})"
        )
    if claimed.admin != previous.admin:
        raise TrustError(f"{where}: administration changed from {previous.admin}")
    if claimed.root_key.key_id != previous.root_key.key_id:
        # A root rotation must be signed by the old root (checked above) and the new one.
        _verified(envelope, [claimed.root_key], f"{where} (root rotation: new root)")
    return claimed


def verify_chain(
    chain: Sequence[Envelope],
    pinned_fingerprint: str,
    *,
    now: datetime,
    admin: str | None = None,
    check_expiry: bool = True,
) -> TrustStatement:
    """Verify a chain of statements from version 1 and return the newest one."""
    if not chain:
        raise TrustError("partner bundle holds no trust statement")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise TrustError(f"trust chain longer than {MAX_CHAIN_LENGTH} statements")
    current = _first(chain[0], pinned_fingerprint)
    for envelope in chain[1:]:
        current = next_statement(current, envelope)
    if admin is not None and current.admin != admin:
        raise TrustError(f"partner bundle is for {current.admin}, not {admin}")
    if check_expiry and now >= current.expires:
        raise TrustError(
            f"trust statement version {current.version} of {current.admin} expired "
            f"{_iso(current.expires)}"
        )
    return current


def verify_update(current: TrustStatement, newer: Sequence[Envelope]) -> TrustStatement:
    """Extend a verified statement with statements fetched from the partner; returns the
    newest. Every one must be the next version, signed as :func:`next_statement` demands."""
    if not newer:
        raise TrustError("no trust statement to add")
    if len(newer) > MAX_CHAIN_LENGTH:
        raise TrustError(f"more than {MAX_CHAIN_LENGTH} new trust statements")
    for envelope in newer:
        current = next_statement(current, envelope)
    return current


@dataclass(frozen=True)
class ExpiryState:
    """Where a statement stands against its expiry: ``valid``, ``renew_soon`` (inside the
    warning period), ``grace`` (expired, still honoured) or ``expired`` (past the grace)."""

    state: str
    message: str

    @property
    def blocks_replication(self) -> bool:
        return self.state == "expired"


def expiry_state(
    statement: TrustStatement, now: datetime, *, grace: timedelta, warn: timedelta
) -> ExpiryState:
    who = f"trust statement version {statement.version} of {statement.admin}"
    expires = _iso(statement.expires)
    if now >= statement.expires + grace:
        return ExpiryState(
            "expired", f"{who} expired {expires}; grace ended {_iso(statement.expires + grace)}"
        )
    if now >= statement.expires:
        return ExpiryState(
            "grace",
            f"{who} expired {expires}; honoured until {_iso(statement.expires + grace)}",
        )
    if now >= statement.expires - warn:
        return ExpiryState("renew_soon", f"{who} expires {expires}: renew it")
    return ExpiryState("valid", f"{who} valid until {expires}")


def bundle_bytes(chain: Sequence[Envelope]) -> bytes:
    """The partner bundle file: the statement chain from version 1, as DSSE JSON envelopes."""
    document = {
        "_type": BUNDLE_SCHEMA,
        "statements": [json.loads(envelope_to_json(e)) for e in chain],
    }
    return json.dumps(document, indent=2).encode("utf-8") + b"\n"


def parse_bundle(data: bytes, source: str = "bundle") -> list[Envelope]:
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleFormatError(f"{source}: larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleFormatError(f"{source}: not a JSON partner bundle: {error}") from error
    if not isinstance(document, dict) or document.get("_type") != BUNDLE_SCHEMA:
        raise BundleFormatError(f"{source}: _type is not {BUNDLE_SCHEMA}")
    statements = document.get("statements")
    if (
        not isinstance(statements, list)
        or not statements
        or set(document) != {"_type", "statements"}
    ):
        raise BundleFormatError(
            f"{source}: must hold a non-empty 'statements' list and nothing else"
        )
    out: list[Envelope] = []
    for i, item in enumerate(statements):
        try:
            out.append(envelope_from_json(json.dumps(item).encode("utf-8")))
        except CryptoError as error:
            raise BundleFormatError(f"{source}: statements[{i}]: {error}") from error
    return out

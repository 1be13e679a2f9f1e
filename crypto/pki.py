"""X.509 material for mutual TLS between gateways and with local clients.

Identity rules (the gateway relies on them):

* Every certificate's subject carries the administration code in **organizationName (O)**,
  exactly one O attribute. CN is descriptive only and is never used for identity.
* Server and partner (client) certificates carry the DNS SAN ``<code lower>.mragw``; partners
  dial by address and check this name (target name override).
* Local client certificates (CLI admin, risk engine, other agencies) carry their role in the
  subject's **organizationalUnitName (OU)**, exactly one; partner certificates carry no OU.
* Which administration a peer is comes from *which pinned CA issued its certificate*, checked by
  :func:`verify_issued_by` against that one CA certificate (signature with that CA's key, issuer
  name, validity at a given time, CA constraints), never merely by chaining to any trusted CA.

Key choice: every TLS key and the CA key are ECDSA P-256 (signatures ecdsa-with-SHA256). gRPC's
TLS stack (BoringSSL, and OpenSSL builds) does not reliably negotiate Ed25519 certificates, and
many operators' inspection tools do not handle them; P-256 works everywhere. The Ed25519 keys of
:mod:`crypto.keys` sign log entries and checkpoints, never TLS.

All times are caller-supplied timezone-aware datetimes, so tests are deterministic.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto.errors import KeyFormatError, MalformedInputError, VerificationError
from crypto.keys import PrivateKeySigner, PublicKey, Scheme, require_scheme

__all__ = [
    "CA_VALIDITY",
    "LEAF_VALIDITY",
    "ROLE_PATTERN",
    "certificate_identity",
    "certificate_to_pem",
    "create_ca_certificate",
    "dns_name_for",
    "generate_tls_key",
    "issue_client_certificate",
    "issue_server_certificate",
    "load_certificate",
    "verify_issued_by",
]

LEAF_VALIDITY = dt.timedelta(days=90)
CA_VALIDITY = dt.timedelta(days=3650)
# Backdating absorbs small clock skew between gateways without widening validity materially.
_BACKDATE = dt.timedelta(minutes=5)
_ADMIN_CODE = re.compile(r"[A-Z0-9](?:[A-Z0-9-]{0,61}[A-Z0-9])?")
ROLE_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_DNS_SUFFIX = ".mragw"
_CERT_LABEL = b"-----BEGIN CERTIFICATE-----"


def _check_code(admin_code: str) -> str:
    # The code becomes a DNS label, so it must be one (upper case in the subject).
    if not isinstance(admin_code, str) or not _ADMIN_CODE.fullmatch(admin_code):
        raise MalformedInputError(
            f"administration code {admin_code!r} must be 1-63 upper-case letters, digits or '-'"
        )
    return admin_code


def _check_now(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None:
        raise MalformedInputError("'now' must be timezone-aware")
    return now.astimezone(dt.UTC)


def dns_name_for(admin_code: str) -> str:
    """The DNS SAN that names an administration's gateway: ``<code lower>.mragw``."""
    return _check_code(admin_code).lower() + _DNS_SUFFIX


def generate_tls_key() -> PrivateKeySigner:
    """A fresh ECDSA P-256 key for a CA or TLS certificate (see the module docstring)."""
    return PrivateKeySigner.generate(Scheme.ECDSA_P256_SHA256)


def _ec_private(signer: PrivateKeySigner, purpose: str) -> ec.EllipticCurvePrivateKey:
    require_scheme(signer, Scheme.ECDSA_P256_SHA256, purpose)
    key = signer.cryptography_key
    if not isinstance(key, ec.EllipticCurvePrivateKey):  # pragma: no cover - scheme checked
        raise KeyFormatError(f"{purpose} requires an ECDSA P-256 key")
    return key


def _ec_public(key: PublicKey, purpose: str) -> ec.EllipticCurvePublicKey:
    require_scheme(key, Scheme.ECDSA_P256_SHA256, purpose)
    public = key.cryptography_key
    if not isinstance(public, ec.EllipticCurvePublicKey):  # pragma: no cover - scheme checked
        raise KeyFormatError(f"{purpose} requires an ECDSA P-256 key")
    return public


def create_ca_certificate(
    admin_code: str,
    ca_key: PrivateKeySigner,
    *,
    now: dt.datetime,
    validity: dt.timedelta = CA_VALIDITY,
) -> x509.Certificate:
    """Self-signed administration CA: CA:true, pathlen 0, keyCertSign + cRLSign, SKI/AKI."""
    code = _check_code(admin_code)
    start = _check_now(now)
    private = _ec_private(ca_key, "an administration CA")
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, code),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{code} MRA gateway CA"),
        ]
    )
    public = private.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    return builder.sign(private, hashes.SHA256())


def _issue(
    ca_cert: x509.Certificate,
    ca_key: PrivateKeySigner,
    subject: x509.Name,
    subject_key: PublicKey,
    *,
    eku: Sequence[x509.ObjectIdentifier],
    dns_names: Sequence[str],
    now: dt.datetime,
    validity: dt.timedelta,
) -> x509.Certificate:
    start = _check_now(now)
    private = _ec_private(ca_key, "the issuing CA")
    public = _ec_public(subject_key, "a TLS certificate")
    if ca_cert.public_key() != private.public_key():
        raise KeyFormatError("the CA private key does not match the CA certificate")
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    # A leaf must not outlive its CA: clamp instead of issuing something partners would reject.
    not_after = min(start + validity, ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
    return builder.sign(private, hashes.SHA256())


def _ca_code(ca_cert: x509.Certificate) -> str:
    code, _role = certificate_identity(ca_cert)
    return code


def issue_server_certificate(
    ca_cert: x509.Certificate,
    ca_key: PrivateKeySigner,
    server_key: PublicKey,
    *,
    now: dt.datetime,
    validity: dt.timedelta = LEAF_VALIDITY,
    extra_dns_names: Sequence[str] = (),
) -> x509.Certificate:
    """The gateway's TLS certificate: O=<code>, SAN <code lower>.mragw, EKU serverAuth+clientAuth.

    clientAuth is included because a gateway presents the same certificate when it dials a
    partner (one credential model). ``extra_dns_names`` is for operators' own host names.
    """
    code = _ca_code(ca_cert)
    dns = dns_name_for(code)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, code),
            x509.NameAttribute(NameOID.COMMON_NAME, dns),
        ]
    )
    return _issue(
        ca_cert,
        ca_key,
        subject,
        server_key,
        eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        dns_names=[dns, *extra_dns_names],
        now=now,
        validity=validity,
    )


def issue_client_certificate(
    ca_cert: x509.Certificate,
    ca_key: PrivateKeySigner,
    client_key: PublicKey,
    *,
    now: dt.datetime,
    role: str | None = None,
    common_name: str | None = None,
    validity: dt.timedelta = LEAF_VALIDITY,
) -> x509.Certificate:
    """A client certificate (EKU clientAuth) from this administration's CA.

    ``role=None``: a partner-facing identity of the CA's administration (SAN <code>.mragw, no OU).
    ``role="admin"`` etc.: a local client; the role goes in OU, no DNS SAN.
    """
    code = _ca_code(ca_cert)
    if role is not None and not ROLE_PATTERN.fullmatch(role):
        raise MalformedInputError(f"role {role!r} must match {ROLE_PATTERN.pattern}")
    dns = dns_name_for(code)
    cn = common_name or (dns if role is None else f"{role}@{dns}")
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, code)]
    if role is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return _issue(
        ca_cert,
        ca_key,
        x509.Name(attributes),
        client_key,
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        dns_names=[dns] if role is None else [],
        now=now,
        validity=validity,
    )


def load_certificate(pem: bytes | str) -> x509.Certificate:
    """Load one PEM certificate; anything else raises KeyFormatError naming what it was."""
    data = pem.encode("utf-8") if isinstance(pem, str) else bytes(pem)
    if _CERT_LABEL not in data:
        label = re.search(rb"-----BEGIN ([A-Z0-9 ]+)-----", data)
        found = f"PEM '{label.group(1).decode('ascii')}'" if label else "no PEM block"
        raise KeyFormatError(f"expected a PEM certificate, got {found}")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise KeyFormatError("malformed PEM certificate: could not be decoded") from exc


def certificate_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _single(name: x509.Name, oid: x509.ObjectIdentifier, what: str) -> str | None:
    values = name.get_attributes_for_oid(oid)
    if len(values) > 1:
        raise VerificationError(f"certificate subject has {len(values)} {what} attributes")
    if not values:
        return None
    value = values[0].value
    if not isinstance(value, str):
        raise VerificationError(f"certificate subject {what} is not a string")
    return value


def certificate_identity(cert: x509.Certificate) -> tuple[str, str | None]:
    """``(administration code, role or None)`` from the subject's O and OU.

    This reads names only; it proves nothing until :func:`verify_issued_by` succeeded.
    """
    code = _single(cert.subject, NameOID.ORGANIZATION_NAME, "organizationName")
    if code is None or not _ADMIN_CODE.fullmatch(code):
        raise VerificationError("certificate subject has no valid administration code in O")
    role = _single(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "organizationalUnitName")
    if role is not None and not ROLE_PATTERN.fullmatch(role):
        raise VerificationError("certificate subject OU is not a valid role")
    return code, role


def _check_window(cert: x509.Certificate, at: dt.datetime, what: str) -> None:
    if at < cert.not_valid_before_utc:
        raise VerificationError(f"{what} is not yet valid at {at.isoformat()}")
    if at > cert.not_valid_after_utc:
        raise VerificationError(f"{what} expired before {at.isoformat()}")


def verify_issued_by(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    *,
    now: dt.datetime,
    expected_code: str | None = None,
) -> tuple[str, str | None]:
    """Check that THIS ``ca_cert`` issued ``cert`` and both are valid at ``now``.

    Checks: the CA is a CA (basicConstraints CA:true, keyCertSign); the leaf is not a CA;
    issuer name equals the CA's subject; the leaf's signature verifies with the CA's key; both
    validity windows contain ``now``; the leaf's O equals the CA's O (a CA only speaks for its
    own administration) and ``expected_code`` if given. Returns the leaf's identity.
    """
    at = _check_now(now)
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise VerificationError("CA certificate lacks basicConstraints or keyUsage") from exc
    if not constraints.ca or not usage.key_cert_sign:
        raise VerificationError("CA certificate is not a CA (CA:true and keyCertSign required)")
    try:
        leaf_constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        leaf_constraints = None
    if leaf_constraints is not None and leaf_constraints.ca:
        raise VerificationError("presented certificate is a CA, not a leaf")
    if cert.issuer != ca_cert.subject:
        raise VerificationError("certificate issuer name does not match the CA's subject")
    try:
        # Checks the signature with this CA's public key (and that issuer == subject again).
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise VerificationError("certificate signature was not made by this CA's key") from exc
    _check_window(ca_cert, at, "CA certificate")
    _check_window(cert, at, "certificate")
    code, role = certificate_identity(cert)
    ca_code, _ = certificate_identity(ca_cert)
    if code != ca_code:
        raise VerificationError(
            f"certificate names administration {code} but its CA belongs to {ca_code}"
        )
    if expected_code is not None and code != expected_code:
        raise VerificationError(
            f"certificate names administration {code}, expected {expected_code}"
        )
    return code, role

"""X.509 for mutual TLS: CA, server and client certificates, identity and issuer checks."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto.errors import (
    KeyFormatError,
    MalformedInputError,
    UnsupportedKeyTypeError,
    VerificationError,
)
from crypto.keys import PrivateKeySigner, generate_private_key
from crypto.pki import (
    certificate_identity,
    certificate_to_pem,
    create_ca_certificate,
    dns_name_for,
    generate_tls_key,
    issue_client_certificate,
    issue_server_certificate,
    load_certificate,
    verify_issued_by,
)

Openssl = Callable[..., subprocess.CompletedProcess[bytes]]
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def _ca(code: str) -> tuple[x509.Certificate, PrivateKeySigner]:
    key = generate_tls_key()
    return create_ca_certificate(code, key, now=NOW), key


CA_A, KEY_A = _ca("DE")
CA_B, KEY_B = _ca("FR")


def test_ca_certificate_properties() -> None:
    assert CA_A.subject == CA_A.issuer
    bc = CA_A.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 0
    ku = CA_A.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign
    assert not ku.digital_signature
    ski = CA_A.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = CA_A.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert CA_A.not_valid_after_utc - NOW == dt.timedelta(days=3650)
    assert certificate_identity(CA_A) == ("DE", None)


def test_server_certificate_properties_and_openssl_verify(tmp_path: Path, openssl: Openssl) -> None:
    key = generate_tls_key()
    cert = issue_server_certificate(CA_A, KEY_A, key.public_key, now=NOW)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "DE"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["de.mragw"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = CA_A.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=90)
    assert verify_issued_by(cert, CA_A, now=NOW) == ("DE", None)
    # Independent check with openssl verify (purpose sslserver, hostname de.mragw).
    (tmp_path / "ca.pem").write_bytes(certificate_to_pem(CA_A))
    (tmp_path / "leaf.pem").write_bytes(certificate_to_pem(cert))
    at = str(int(NOW.timestamp()))
    ok = openssl(
        "verify",
        "-CAfile",
        str(tmp_path / "ca.pem"),
        "-purpose",
        "sslserver",
        "-verify_hostname",
        "de.mragw",
        "-attime",
        at,
        str(tmp_path / "leaf.pem"),
    )
    assert b"OK" in ok.stdout
    bad = openssl(
        "verify",
        "-CAfile",
        str(tmp_path / "ca.pem"),
        "-verify_hostname",
        "fr.mragw",
        "-attime",
        at,
        str(tmp_path / "leaf.pem"),
        check=False,
    )
    assert bad.returncode != 0


def test_client_certificates_partner_and_local_roles() -> None:
    partner = issue_client_certificate(CA_A, KEY_A, generate_tls_key().public_key, now=NOW)
    assert verify_issued_by(partner, CA_A, now=NOW, expected_code="DE") == ("DE", None)
    eku = partner.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    admin = issue_client_certificate(
        CA_A, KEY_A, generate_tls_key().public_key, now=NOW, role="admin"
    )
    ou = admin.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert [a.value for a in ou] == ["admin"]
    assert certificate_identity(admin) == ("DE", "admin")
    assert verify_issued_by(admin, CA_A, now=NOW) == ("DE", "admin")
    with pytest.raises(MalformedInputError):
        issue_client_certificate(
            CA_A, KEY_A, generate_tls_key().public_key, now=NOW, role="Bad Role"
        )


def test_other_ca_cannot_mint_identity_even_with_same_subject() -> None:
    # CA-B is a different key whose CA subject copies CA-A's exactly (O=DE).
    evil_key = generate_tls_key()
    evil_ca = create_ca_certificate("DE", evil_key, now=NOW)
    assert evil_ca.subject == CA_A.subject
    forged = issue_server_certificate(evil_ca, evil_key, generate_tls_key().public_key, now=NOW)
    assert certificate_identity(forged) == ("DE", None)
    with pytest.raises(VerificationError, match="not made by this CA"):
        verify_issued_by(forged, CA_A, now=NOW)
    # And a genuine FR certificate is not accepted as coming from DE's CA.
    fr = issue_server_certificate(CA_B, KEY_B, generate_tls_key().public_key, now=NOW)
    with pytest.raises(VerificationError, match="issuer name"):
        verify_issued_by(fr, CA_A, now=NOW)
    with pytest.raises(VerificationError, match="expected DE"):
        verify_issued_by(fr, CA_B, now=NOW, expected_code="DE")


def test_validity_window_enforced() -> None:
    cert = issue_server_certificate(CA_A, KEY_A, generate_tls_key().public_key, now=NOW)
    with pytest.raises(VerificationError, match="expired"):
        verify_issued_by(cert, CA_A, now=NOW + dt.timedelta(days=91))
    with pytest.raises(VerificationError, match="not yet valid"):
        verify_issued_by(cert, CA_A, now=NOW - dt.timedelta(hours=1))
    short = issue_server_certificate(
        CA_A, KEY_A, generate_tls_key().public_key, now=NOW, validity=dt.timedelta(days=7)
    )
    assert verify_issued_by(short, CA_A, now=NOW + dt.timedelta(days=6))
    with pytest.raises(VerificationError, match="expired"):
        verify_issued_by(short, CA_A, now=NOW + dt.timedelta(days=8))
    with pytest.raises(MalformedInputError):
        verify_issued_by(cert, CA_A, now=dt.datetime(2026, 3, 1))  # noqa: DTZ001 - naive on purpose


def test_leaf_as_ca_and_ca_as_leaf_rejected() -> None:
    leaf = issue_server_certificate(CA_A, KEY_A, generate_tls_key().public_key, now=NOW)
    with pytest.raises(VerificationError, match="not a CA"):
        verify_issued_by(leaf, leaf, now=NOW)
    with pytest.raises(VerificationError, match="is a CA"):
        verify_issued_by(CA_A, CA_A, now=NOW)


def test_tls_keys_are_p256_only() -> None:
    ed = generate_private_key()
    with pytest.raises(UnsupportedKeyTypeError):
        create_ca_certificate("DE", ed, now=NOW)
    with pytest.raises(UnsupportedKeyTypeError):
        issue_server_certificate(CA_A, KEY_A, ed.public_key, now=NOW)
    with pytest.raises(KeyFormatError, match="does not match"):
        issue_server_certificate(CA_A, KEY_B, generate_tls_key().public_key, now=NOW)


def test_admin_code_validation_and_dns_name() -> None:
    assert dns_name_for("EU") == "eu.mragw"
    for bad in ("", "de", "D E", "-DE", "DE.", "A" * 64):
        with pytest.raises(MalformedInputError):
            create_ca_certificate(bad, generate_tls_key(), now=NOW)


def test_load_certificate_rejects_non_certificates() -> None:
    pem = certificate_to_pem(CA_A)
    assert load_certificate(pem) == CA_A
    assert load_certificate(pem.decode()) == CA_A
    with pytest.raises(KeyFormatError, match="got PEM 'PRIVATE KEY'"):
        load_certificate(KEY_A.to_pem())
    with pytest.raises(KeyFormatError, match="got PEM 'PUBLIC KEY'"):
        load_certificate(KEY_A.public_key.to_pem())
    with pytest.raises(KeyFormatError, match="no PEM block"):
        load_certificate(b"garbage")
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(KeyFormatError, match="malformed"):
        load_certificate(broken)


def test_identity_requires_single_organization() -> None:
    key = generate_tls_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "DE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FR"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key.cryptography_key)
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(key.cryptography_key, hashes.SHA256())
    )
    with pytest.raises(VerificationError, match="2 organizationName"):
        certificate_identity(cert)

"""Trust statements and partner bundles: TUF-style chain rules, strict parsing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from crypto.envelope import Envelope, envelope_from_json, envelope_to_json, sign_envelope
from crypto.keys import PrivateKeySigner, Scheme
from crypto.pki import certificate_to_pem, create_ca_certificate, generate_tls_key
from gateway.trust import (
    MAX_BUNDLE_BYTES,
    STATEMENT_TYPE,
    BundleFormatError,
    SigningKey,
    TrustError,
    TrustStatement,
    bundle_bytes,
    parse_bundle,
    sign_statement,
    verify_chain,
)

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


def statement(
    root: PrivateKeySigner, version: int = 1, admin: str = "JP", expires: dt.datetime | None = None
) -> TrustStatement:
    ca_key = generate_tls_key()
    ca = create_ca_certificate(admin, ca_key, now=NOW)
    signing = PrivateKeySigner.generate(Scheme.ED25519)
    return TrustStatement(
        admin=admin,
        version=version,
        issued=NOW,
        expires=expires or NOW + dt.timedelta(days=365),
        endpoint="jp.example:7443",
        root_key=root.public_key,
        tls_ca_pem=certificate_to_pem(ca).decode(),
        signing_keys=(SigningKey(signing.public_key, valid_from=NOW),),
    )


def test_a_chain_verifies_from_the_pinned_root_and_survives_a_root_rotation() -> None:
    old_root = PrivateKeySigner.generate()
    new_root = PrivateKeySigner.generate()
    v1 = statement(old_root)
    v2 = dataclasses.replace(v1, version=2, endpoint="jp2.example:7443")
    v3 = dataclasses.replace(v2, version=3, root_key=new_root.public_key)
    chain = [
        sign_statement(v1, [old_root]),
        sign_statement(v2, [old_root]),
        sign_statement(v3, [old_root, new_root]),
    ]
    newest = verify_chain(chain, old_root.key_id, now=NOW)
    assert newest.version == 3
    assert newest.root_fingerprint == new_root.key_id
    assert newest.endpoint == "jp2.example:7443"


@pytest.mark.parametrize(
    "case",
    [
        "wrong-pin",
        "skipped-version",
        "rotation-one-root",
        "admin-changed",
        "expired",
        "starts-at-2",
        "forged",
    ],
)
def test_chain_rejections(case: str) -> None:
    root = PrivateKeySigner.generate()
    other = PrivateKeySigner.generate()
    v1 = statement(root)
    chain: list[Envelope] = [sign_statement(v1, [root])]
    pin = root.key_id
    if case == "wrong-pin":
        pin = other.key_id
    elif case == "skipped-version":
        chain.append(sign_statement(dataclasses.replace(v1, version=3), [root]))
    elif case == "rotation-one-root":
        # New root signs alone: the old root never approved it.
        chain.append(
            sign_statement(dataclasses.replace(v1, version=2, root_key=other.public_key), [other])
        )
    elif case == "admin-changed":
        chain.append(sign_statement(dataclasses.replace(v1, version=2, admin="KR"), [root]))
    elif case == "expired":
        chain = [sign_statement(statement(root, expires=NOW - dt.timedelta(days=1)), [root])]
    elif case == "starts-at-2":
        chain = [sign_statement(dataclasses.replace(v1, version=2), [root])]
    elif case == "forged":
        forged = chain[0]
        chain = [
            Envelope(
                forged.payload.replace(b"jp.example", b"xx.example"),
                forged.payload_type,
                forged.signatures,
            )
        ]
    with pytest.raises(TrustError):
        verify_chain(chain, pin, now=NOW)


def test_a_non_canonical_payload_is_refused_even_when_signed() -> None:
    root = PrivateKeySigner.generate()
    doc = statement(root).to_document()
    pretty = json.dumps(doc, indent=2).encode()
    envelope = sign_envelope(STATEMENT_TYPE, pretty, [root])
    with pytest.raises(TrustError, match="canonical"):
        verify_chain([envelope], root.key_id, now=NOW)


def test_bundle_round_trip_and_malformed_bundles() -> None:
    root = PrivateKeySigner.generate()
    chain = [sign_statement(statement(root), [root])]
    data = bundle_bytes(chain)
    parsed = parse_bundle(data)
    assert [envelope_to_json(e) for e in parsed] == [envelope_to_json(e) for e in chain]
    assert envelope_from_json(envelope_to_json(parsed[0])) == chain[0]
    for bad, needle in [
        (b"\xff\xfe", "not a JSON partner bundle"),
        (b"{}", "_type"),
        (
            json.dumps({"_type": "mra-gateway/partner-bundle/v1", "statements": []}).encode(),
            "non-empty",
        ),
        (
            json.dumps(
                {"_type": "mra-gateway/partner-bundle/v1", "statements": [{"payload": "x"}]}
            ).encode(),
            "statements[0]",
        ),
        (b" " * (MAX_BUNDLE_BYTES + 1), "larger than"),
    ]:
        with pytest.raises(BundleFormatError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            parse_bundle(bad)


def test_the_log_origin_is_bound_to_the_administration() -> None:
    root = PrivateKeySigner.generate()
    other_origin = dataclasses.replace(statement(root), origin="us.mragw/log")
    with pytest.raises(TrustError, match="log_origin"):
        verify_chain([sign_statement(other_origin, [root])], root.key_id, now=NOW)

"""DSSE envelope signing, threshold verification and strict JSON."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from crypto.envelope import (
    Envelope,
    Signature,
    envelope_from_json,
    envelope_to_json,
    pae,
    sign_envelope,
    verified_payload,
    verify_envelope,
)
from crypto.errors import MalformedEnvelopeError, MalformedInputError, VerificationError
from crypto.keys import PrivateKeySigner, PublicKey, Scheme, generate_private_key

TYPE = "application/vnd.mra.trust-statement+json"
PAYLOAD = b'{"admin":"DE","version":1}'

A = generate_private_key()
B = generate_private_key(Scheme.ECDSA_P256_SHA256)
C = generate_private_key()


def trusted(*signers: PrivateKeySigner) -> dict[str, PublicKey]:
    return {s.key_id: s.public_key for s in signers}


def test_pae_spec_examples() -> None:
    # DSSE v1 protocol document example: PAE("http://example.com/HelloWorld", "hello world").
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("", b"") == b"DSSEv1 0  0 "


def test_signatures_cover_pae_not_payload() -> None:
    env = sign_envelope(TYPE, PAYLOAD, [A])
    A.public_key.verify(env.signatures[0].sig, pae(TYPE, PAYLOAD))
    with pytest.raises(VerificationError):
        A.public_key.verify(env.signatures[0].sig, PAYLOAD)


def test_threshold_counts_distinct_trusted_keys() -> None:
    env = sign_envelope(TYPE, PAYLOAD, [A, B])
    assert verify_envelope(env, trusted(A, B), threshold=2) == {A.key_id, B.key_id}
    assert verify_envelope(env, trusted(A), threshold=1) == {A.key_id}
    with pytest.raises(VerificationError, match=r"1 valid signature.*2 required"):
        verify_envelope(env, trusted(A), threshold=2)
    # The same signature repeated does not count twice.
    doubled = Envelope(env.payload, env.payload_type, (env.signatures[0], env.signatures[0]))
    with pytest.raises(VerificationError):
        verify_envelope(doubled, trusted(A, B), threshold=2)


def test_unknown_keys_ignored_and_none_trusted_fails() -> None:
    env = sign_envelope(TYPE, PAYLOAD, [C, A])
    assert verify_envelope(env, trusted(A)) == {A.key_id}
    with pytest.raises(VerificationError, match="0 valid"):
        verify_envelope(env, trusted(B))
    with pytest.raises(VerificationError):
        verify_envelope(env, {})


def test_bad_signature_from_trusted_key_does_not_count() -> None:
    good = sign_envelope(TYPE, PAYLOAD, [A, B])
    bad_b = Signature(B.key_id, B.sign(b"something else"))
    env = Envelope(good.payload, good.payload_type, (good.signatures[0], bad_b))
    assert verify_envelope(env, trusted(A, B)) == {A.key_id}
    with pytest.raises(VerificationError, match="does not verify"):
        verify_envelope(env, trusted(A, B), threshold=2)


def _flip_last(sig: bytes) -> bytes:
    return sig[:-1] + bytes([sig[-1] ^ 0x01])


def test_tampering_fails() -> None:
    env = sign_envelope(TYPE, PAYLOAD, [A])
    for changed in (
        Envelope(PAYLOAD + b" ", TYPE, env.signatures),
        Envelope(PAYLOAD, TYPE + "x", env.signatures),
        # Flip a bit of the last byte (setting it to 0 would be a no-op 1 time in 256).
        Envelope(PAYLOAD, TYPE, (Signature(A.key_id, _flip_last(env.signatures[0].sig)),)),
    ):
        with pytest.raises(VerificationError):
            verify_envelope(changed, trusted(A))


def test_trusted_key_map_must_be_keyed_by_own_id() -> None:
    env = sign_envelope(TYPE, PAYLOAD, [A])
    with pytest.raises(VerificationError, match="registered under id"):
        verify_envelope(env, {A.key_id: B.public_key})


def test_sign_rejects_no_or_duplicate_signers() -> None:
    with pytest.raises(MalformedInputError):
        sign_envelope(TYPE, PAYLOAD, [])
    with pytest.raises(MalformedInputError, match="twice"):
        sign_envelope(TYPE, PAYLOAD, [A, A])
    with pytest.raises(ValueError, match="threshold"):
        verify_envelope(sign_envelope(TYPE, PAYLOAD, [A]), trusted(A), threshold=0)


def test_json_is_dsse_standard_and_round_trips() -> None:
    env = sign_envelope(TYPE, PAYLOAD, [A, B])
    data = envelope_to_json(env)
    doc = json.loads(data)
    assert list(doc) == ["payload", "payloadType", "signatures"]
    assert base64.b64decode(doc["payload"]) == PAYLOAD
    assert doc["payloadType"] == TYPE
    assert [s["keyid"] for s in doc["signatures"]] == [A.key_id, B.key_id]
    assert base64.b64decode(doc["signatures"][1]["sig"]) == env.signatures[1].sig
    assert envelope_from_json(data) == env


def _doc() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(envelope_to_json(sign_envelope(TYPE, PAYLOAD, [A])))
    return result


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe", "UTF-8"),
        (b"[1]", "must be a JSON object"),
        (b"{", "not valid JSON"),
        (b'{"payload":"","payload":"","payloadType":"t","signatures":[]}', "duplicate"),
        (b'{"payload":NaN,"payloadType":"t","signatures":[]}', "NaN"),
    ],
)
def test_json_strictness_raw(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedEnvelopeError, match=message):
        envelope_from_json(raw)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("payloadType"), "missing"),
        (lambda d: d.update(extra=1), "unexpected"),
        (lambda d: d.update(payload="!!!"), "not valid base64"),
        (lambda d: d.update(payload="YQ"), "not valid base64"),  # missing padding
        (lambda d: d.update(payload="YR=="), "not canonical"),  # non-zero pad bits
        (lambda d: d.update(payload="YQ==\n"), "base64"),
        (lambda d: d.update(payloadType=""), "payloadType"),
        (lambda d: d.update(payloadType=5), "payloadType"),
        (lambda d: d.update(signatures=[]), "no signatures"),
        (lambda d: d.update(signatures={}), "array"),
        (lambda d: d.update(signatures=[{"keyid": "", "sig": "AA=="}]), "keyid"),
        (lambda d: d.update(signatures=[{"keyid": "k", "sig": "AA==", "x": 1}]), "unexpected"),
        (lambda d: d.update(signatures=[{"keyid": "k"}]), "missing"),
        (lambda d: d.update(signatures=[{"keyid": "k", "sig": 1}]), "base64"),
        (lambda d: d.update(signatures=[{"keyid": "k", "sig": "AA=="}] * 65), "more than"),
    ],
)
def test_json_strictness_fields(mutate: Callable[[dict[str, Any]], object], message: str) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(MalformedEnvelopeError, match=message):
        envelope_from_json(json.dumps(doc).encode())


def test_malformed_envelope_is_a_verification_error() -> None:
    with pytest.raises(VerificationError):
        envelope_from_json(b"{}")


def test_verified_payload_checks_type_then_signatures() -> None:
    data = envelope_to_json(sign_envelope(TYPE, PAYLOAD, [A]))
    payload, ids = verified_payload(data, trusted(A), expected_payload_type=TYPE)
    assert payload == PAYLOAD
    assert ids == {A.key_id}
    with pytest.raises(VerificationError, match="expected"):
        verified_payload(data, trusted(A), expected_payload_type="other/type")
    with pytest.raises(VerificationError):
        verified_payload(data, trusted(B), expected_payload_type=TYPE)
    tampered = json.loads(data)
    tampered["payload"] = base64.b64encode(b'{"admin":"FR","version":1}').decode()
    with pytest.raises(VerificationError):
        verified_payload(json.dumps(tampered).encode(), trusted(A), expected_payload_type=TYPE)

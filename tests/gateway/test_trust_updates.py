"""Trust statement updates (what GetTrustStatement brings), expiry with grace, key windows and
revocation indices on checkpoints: every rejection path names its problem."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from crypto.checkpoint import Checkpoint, add_signature, parse_note, sign_checkpoint
from crypto.envelope import Envelope, sign_envelope
from crypto.keys import PrivateKeySigner, Scheme
from crypto.merkle import EMPTY_ROOT
from gateway.replication import ReplicationFaultError, UntrustedCheckpointError, verify_note
from gateway.trust import (
    STATEMENT_TYPE,
    SigningKey,
    TrustError,
    TrustStatement,
    expiry_state,
    sign_statement,
    tls_ca_certificates,
    verify_chain,
    verify_update,
)
from tests.gateway.test_trust import NOW, statement

DAY = dt.timedelta(days=1)


@dataclasses.dataclass
class Chain:
    root: PrivateKeySigner
    statements: list[TrustStatement]
    envelopes: list[Envelope]

    @classmethod
    def start(cls) -> Chain:
        root = PrivateKeySigner.generate()
        v1 = statement(root)
        return cls(root, [v1], [sign_statement(v1, [root])])

    @property
    def newest(self) -> TrustStatement:
        return self.statements[-1]

    def next(self, *, signers: list[PrivateKeySigner] | None = None, **changes: object) -> Envelope:
        s = dataclasses.replace(self.newest, version=self.newest.version + 1, **changes)
        envelope = sign_statement(s, signers or [self.root])
        self.statements.append(s)
        self.envelopes.append(envelope)
        return envelope


def held(chain: Chain, upto: int) -> TrustStatement:
    return verify_chain(chain.envelopes[:upto], chain.root.key_id, now=NOW)


def test_an_update_to_the_next_version_is_accepted() -> None:
    chain = Chain.start()
    chain.next(endpoint="jp2.example:7443")
    chain.next(expires=NOW + 700 * DAY)
    newest = verify_update(held(chain, 1), chain.envelopes[1:])
    assert (newest.version, newest.endpoint) == (3, "jp2.example:7443")
    assert newest.expires == NOW + 700 * DAY


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("stale", "stale"),
        ("rollback", "stale"),
        ("skipped", "skips version 3"),
        ("wrong-root", "0 valid signature(s)"),
        ("rotation-old-root-only", "new root"),
        ("rotation-new-root-only", "0 valid signature(s)"),
        ("other-admin", "administration changed"),
        ("empty", "no trust statement"),
    ],
)
def test_update_rejections_name_the_problem(case: str, words: str) -> None:
    chain = Chain.start()
    chain.next()  # v2
    chain.next()  # v3
    current = held(chain, 2)  # we hold v2
    stranger = PrivateKeySigner.generate()
    new_root = PrivateKeySigner.generate()
    if case == "stale":
        newer = [chain.envelopes[1]]  # v2 again: a replay
    elif case == "rollback":
        newer = [chain.envelopes[0]]  # v1
    elif case == "skipped":
        chain.next()  # v4
        newer = [chain.envelopes[3]]
    elif case == "wrong-root":
        forged = dataclasses.replace(chain.statements[2], root_key=stranger.public_key)
        newer = [sign_statement(forged, [stranger])]
    elif case == "rotation-old-root-only":
        rotated = dataclasses.replace(chain.statements[2], root_key=new_root.public_key)
        newer = [sign_statement_by(rotated, chain.root)]
    elif case == "rotation-new-root-only":
        rotated = dataclasses.replace(chain.statements[2], root_key=new_root.public_key)
        newer = [sign_statement(rotated, [new_root])]
    elif case == "other-admin":
        newer = [sign_statement(dataclasses.replace(chain.statements[2], admin="US"), [chain.root])]
    else:
        newer = []
    with pytest.raises(TrustError) as caught:
        verify_update(current, newer)
    assert words in str(caught.value)


def test_a_root_rotation_signed_by_both_roots_is_followed_by_the_new_root_only() -> None:
    chain = Chain.start()
    new_root = PrivateKeySigner.generate()
    chain.next(root_key=new_root.public_key, signers=[chain.root, new_root])
    v3 = dataclasses.replace(chain.newest, version=3)
    # After the rotation the old root alone no longer counts (a thief of it gains nothing) ...
    with pytest.raises(TrustError, match=r"0 valid signature\(s\)"):
        verify_update(chain.newest, [sign_statement_by(v3, chain.root)])
    # ... and the new one does.
    assert verify_update(chain.newest, [sign_statement(v3, [new_root])]).version == 3
    assert (
        verify_chain(chain.envelopes, chain.root.key_id, now=NOW).root_fingerprint
        == new_root.key_id
    )


def sign_statement_by(s: TrustStatement, signer: PrivateKeySigner) -> Envelope:
    """Sign a statement with a key that is not its root (what a thief of the old root could do)."""
    return sign_envelope(STATEMENT_TYPE, s.canonical_bytes(), [signer])


def test_expiry_states_warn_then_honour_a_grace_then_block() -> None:
    s = statement(PrivateKeySigner.generate(), expires=NOW + 10 * DAY)
    grace, warn = 7 * DAY, 30 * DAY
    assert expiry_state(s, NOW - 40 * DAY, grace=grace, warn=warn).state == "valid"
    soon = expiry_state(s, NOW, grace=grace, warn=warn)
    assert soon.state == "renew_soon"
    assert "renew" in soon.message
    in_grace = expiry_state(s, NOW + 12 * DAY, grace=grace, warn=warn)
    assert in_grace.state == "grace"
    assert not in_grace.blocks_replication
    expired = expiry_state(s, NOW + 18 * DAY, grace=grace, warn=warn)
    assert expired.state == "expired"
    assert expired.blocks_replication
    assert "grace ended" in expired.message


def test_a_statement_may_list_two_tls_cas_during_a_tls_rotation() -> None:
    a, b = statement(PrivateKeySigner.generate()), statement(PrivateKeySigner.generate())
    both = a.tls_ca_pem + b.tls_ca_pem
    assert len(tls_ca_certificates(both)) == 2
    root = PrivateKeySigner.generate()
    s = dataclasses.replace(statement(root), tls_ca_pem=both)
    parsed = TrustStatement.from_payload(s.canonical_bytes())
    assert parsed.tls_ca_pem == both
    with pytest.raises(TrustError, match=r"1\.\.4"):
        tls_ca_certificates(both * 3)
    with pytest.raises(TrustError, match="not PEM"):
        tls_ca_certificates("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


# -- checkpoints: windows and revocation indices --------------------------------------------------


def with_keys(*keys: SigningKey) -> TrustStatement:
    return dataclasses.replace(statement(PrivateKeySigner.generate()), signing_keys=keys)


def note(size: int, *signers: PrivateKeySigner, origin: str = "jp.mragw/log") -> str:
    cp = Checkpoint(origin=origin, size=size, root_hash=EMPTY_ROOT if size == 0 else bytes(32))
    signed = parse_note(sign_checkpoint(cp, origin, signers[0]))
    for extra in signers[1:]:
        signed = add_signature(signed, origin, extra)
    return signed.to_text()


def test_a_checkpoint_key_outside_its_window_is_not_trusted_but_does_not_quarantine() -> None:
    old, new = PrivateKeySigner.generate(), PrivateKeySigner.generate()
    s = with_keys(
        SigningKey(old.public_key, valid_from=NOW - 10 * DAY, valid_until=NOW),
        SigningKey(new.public_key, valid_from=NOW + DAY),
    )
    skew = dt.timedelta(minutes=5)
    # Inside the window (and within the skew after its end) the old key is fine.
    assert verify_note(note(3, old), s, now=NOW - DAY, skew=skew).size == 3
    assert verify_note(note(3, old), s, now=NOW + dt.timedelta(minutes=4), skew=skew).size == 3
    with pytest.raises(UntrustedCheckpointError, match="outside its validity window"):
        verify_note(note(3, old), s, now=NOW + DAY, skew=skew)
    # A key used before its window starts is refused too ...
    with pytest.raises(UntrustedCheckpointError, match="outside its validity window"):
        verify_note(note(3, new), s, now=NOW, skew=skew)
    # ... but a note carrying both signatures (the rotation overlap) verifies by either.
    assert verify_note(note(3, old, new), s, now=NOW - DAY, skew=skew).size == 3
    assert verify_note(note(3, old, new), s, now=NOW + 2 * DAY, skew=skew).size == 3
    assert not issubclass(UntrustedCheckpointError, ReplicationFaultError)


def test_a_revoked_key_signs_checkpoints_up_to_its_index_only() -> None:
    key, other = PrivateKeySigner.generate(), PrivateKeySigner.generate()
    s = with_keys(
        SigningKey(key.public_key, valid_from=NOW - DAY, revoked_at_index=5, revocation_reason="x"),
        SigningKey(other.public_key, valid_from=NOW - DAY),
    )
    assert verify_note(note(5, key), s, now=NOW).size == 5
    with pytest.raises(ReplicationFaultError) as caught:
        verify_note(note(6, key), s, now=NOW)
    assert caught.value.kind == "revoked_key"
    assert "revoked from index 5" in str(caught.value)
    assert verify_note(note(6, key, other), s, now=NOW).size == 6


def test_an_unknown_or_forged_checkpoint_signature_is_a_fault() -> None:
    key = PrivateKeySigner.generate()
    s = with_keys(SigningKey(key.public_key, valid_from=NOW - DAY))
    with pytest.raises(ReplicationFaultError, match="no signature by required key"):
        verify_note(note(2, PrivateKeySigner.generate()), s, now=NOW)
    good = note(2, key)
    body, line = good.rsplit("\u2014 ", 1)
    name, blob = line.split(" ")
    forged = body + "\u2014 " + name + " " + blob[:8] + ("A" if blob[8] != "A" else "B") + blob[9:]
    with pytest.raises(ReplicationFaultError, match="does not verify"):
        verify_note(forged, s, now=NOW)
    # An ECDSA entry key never counts for checkpoints (C2SP notes are Ed25519).
    ecdsa = PrivateKeySigner.generate(Scheme.ECDSA_P256_SHA256)
    only_ecdsa = with_keys(SigningKey(ecdsa.public_key, valid_from=NOW - DAY))
    with pytest.raises(ReplicationFaultError, match="no signature by required key"):
        verify_note(good, only_ecdsa, now=NOW)

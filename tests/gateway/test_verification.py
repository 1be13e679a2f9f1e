"""Entry signatures: checked against the issuer's trust statement, and revocation bound to
the log index (entries from the revocation index on become unusable, earlier ones stay)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crypto.keys import PrivateKeySigner
from crypto.merkle import leaf_hash
from gateway.issuer_log import envelope_bytes
from gateway.replication import store_verdicts
from gateway.storage.schema import entries
from gateway.storage.tiles import create_empty_log
from gateway.trust import SigningKey, TrustStatement
from gateway.verification import EntryCheck, apply_revocations, check_entry, verify_pending

NOW = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
TYPE = "application/vnd.mra.v1.AeoStatus+protobuf"


def statement(*keys: SigningKey) -> TrustStatement:
    root = PrivateKeySigner.generate()
    return TrustStatement(
        admin="EU",
        version=1,
        issued=NOW,
        expires=NOW + dt.timedelta(days=9),
        endpoint="eu:7443",
        root_key=root.public_key,
        tls_ca_pem="",
        signing_keys=keys,
    )


async def store_unverified(
    conn: AsyncConnection, envelopes: list[bytes], *, received_at: float | None = None
) -> None:
    """A replica of EU holding ``envelopes`` from index 0, none verified yet."""
    await create_empty_log(conn, "EU", own=False)
    await conn.execute(
        entries.insert(),
        [
            {
                "log": "EU",
                "idx": i,
                "leaf_hash": leaf_hash(env),
                "envelope": env,
                "payload_type": None,
                "sig_state": "unverified",
                "signer": None,
                "content_digest": None,
                "appended_at": time.time() if received_at is None else received_at,
            }
            for i, env in enumerate(envelopes)
        ],
    )


def test_check_entry_states() -> None:
    good, other = PrivateKeySigner.generate(), PrivateKeySigner.generate()
    trusted = statement(SigningKey(good.public_key, valid_from=NOW))
    envelope = envelope_bytes(TYPE, b"payload", good)
    assert check_entry(3, envelope, trusted).state == "valid"
    assert check_entry(3, envelope, trusted).signer == good.key_id
    assert check_entry(3, envelope_bytes(TYPE, b"payload", other), trusted).state == "invalid"
    tampered = envelope.replace(b"payload", b"paYload")
    assert check_entry(3, tampered, trusted).state == "invalid"
    assert check_entry(3, b"\xff\xff", trusted).state == "invalid"
    revoked = statement(SigningKey(good.public_key, valid_from=NOW, revoked_at_index=3))
    assert check_entry(2, envelope, revoked).state == "valid"
    assert check_entry(3, envelope, revoked).state == "revoked"
    # A key may not sign before its window starts: judged by when this node received the entry.
    later = statement(SigningKey(good.public_key, valid_from=NOW + dt.timedelta(hours=1)))
    early = check_entry(3, envelope, later, received_at=NOW, skew=dt.timedelta(minutes=5))
    assert early.state == "early"
    assert "before its window starts" in (early.problem or "")
    assert (
        check_entry(
            3,
            envelope,
            later,
            received_at=NOW + dt.timedelta(minutes=56),
            skew=dt.timedelta(minutes=5),
        ).state
        == "valid"
    )
    assert check_entry(3, envelope, later).state == "valid"  # no receipt time: not judged


async def test_a_later_revocation_marks_verified_entries_from_its_index(
    engine: AsyncEngine,
) -> None:
    key = PrivateKeySigner.generate()
    before = statement(SigningKey(key.public_key, valid_from=NOW))
    async with engine.begin() as conn:
        await store_unverified(
            conn, [envelope_bytes(TYPE, f"p{i}".encode(), key) for i in range(5)]
        )
        checks = await verify_pending(conn, "EU", before)
    assert [c.state for c in checks] == ["valid"] * 5
    after = dataclasses.replace(
        before,
        version=2,
        signing_keys=(SigningKey(key.public_key, valid_from=NOW, revoked_at_index=2),),
    )
    async with engine.begin() as conn:
        assert await apply_revocations(conn, "EU", after) == 3
    async with engine.connect() as conn:
        states = (
            (
                await conn.execute(
                    select(entries.c.sig_state).where(entries.c.log == "EU").order_by(entries.c.idx)
                )
            )
            .scalars()
            .all()
        )
    assert list(states) == ["valid", "valid", "revoked", "revoked", "revoked"]


async def test_an_unknown_key_waits_for_a_statement_refresh_before_it_counts_as_forged(
    engine: AsyncEngine,
) -> None:
    known, rotated = PrivateKeySigner.generate(), PrivateKeySigner.generate()
    held = statement(SigningKey(known.public_key, valid_from=NOW))
    received = time.time()
    async with engine.begin() as conn:
        await store_unverified(
            conn,
            [envelope_bytes(TYPE, b"a", known), envelope_bytes(TYPE, b"b", rotated)],
            received_at=received,
        )
        # Received after our last refresh: the rotated key's entry is left for later.
        checks = await verify_pending(conn, "EU", held, trust_checked_at=received - 1)
    assert [(c.index, c.state) for c in checks] == [(0, "valid")]
    async with engine.begin() as conn:
        # A refresh that brought the new key: valid.
        newer = statement(
            SigningKey(known.public_key, valid_from=NOW),
            SigningKey(rotated.public_key, valid_from=NOW),
        )
        checks = await verify_pending(conn, "EU", newer, trust_checked_at=received + 1)
    assert [(c.index, c.state) for c in checks] == [(1, "valid")]
    async with engine.begin() as conn:
        await conn.execute(
            entries.update().where(entries.c.idx == 1).values(sig_state="unverified")
        )
        # A refresh after it arrived that still does not list the key: forged.
        checks = await verify_pending(conn, "EU", held, trust_checked_at=received + 1)
    assert [(c.index, c.state) for c in checks] == [(1, "invalid")]


async def test_nothing_after_the_first_invalid_entry_of_a_chunk_is_judged(
    engine: AsyncEngine,
) -> None:
    """Entries after an invalid one stay unverified (unused) until the partner is resumed,
    whichever of them happened to be stored in the same chunk."""
    key = PrivateKeySigner.generate()
    async with engine.begin() as conn:
        await store_unverified(
            conn, [envelope_bytes(TYPE, f"p{i}".encode(), key) for i in range(4)]
        )
        checks = [
            EntryCheck(0, "valid", signer="k"),
            EntryCheck(1, "invalid", "signature does not verify"),
            EntryCheck(2, "valid", signer="k"),
            EntryCheck(3, "invalid", "signature does not verify"),
        ]
        first = await store_verdicts(conn, "EU", checks, [])
    assert first is not None
    assert first.index == 1
    async with engine.connect() as conn:
        states = (
            (
                await conn.execute(
                    select(entries.c.sig_state).where(entries.c.log == "EU").order_by(entries.c.idx)
                )
            )
            .scalars()
            .all()
        )
    assert list(states) == ["valid", "invalid", "unverified", "unverified"]

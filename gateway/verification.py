"""Entry signatures: verified before an entry is first used, and by a background verifier.

The hot replication path verifies checkpoints and roots only; an entry's own signature is
checked here, lazily, against the signing keys in the issuer's trust statement. Outcomes are
stored in ``entries.sig_state``:

- ``valid``: a key of the issuer's trust statement signed it, and the key was not revoked at or
  before the entry's index;
- ``revoked``: signed by a key revoked at an index <= this entry's: never used in an answer,
  but it quarantines nobody (the issuer re-publishes with a valid key);
- ``early``: signed by a key whose validity window had not started when this node received
  the entry (give or take the configured clock skew): a key must not sign before it is
  valid. Never used, no quarantine. (An entry carries no trusted signing time, so the end of a
  window is enforced through the log instead: a retired key is revoked from an index.)
- ``invalid``: the signature does not verify or the bytes are not an envelope: never used, and
  the partner is quarantined, because its log holds something it did not sign.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.message import DecodeError
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.envelope import pae
from crypto.errors import VerificationError
from gateway.storage.schema import entries
from gateway.trust import TrustStatement
from mra.v1 import envelope_pb2


@dataclass(frozen=True)
class EntryCheck:
    index: int
    state: str
    problem: str | None = None
    # The key whose signature made the entry valid (kept so a later revocation can find it).
    signer: str | None = None


def parse_envelope(envelope: bytes) -> envelope_pb2.Envelope:
    message = envelope_pb2.Envelope()
    try:
        message.ParseFromString(envelope)
    except DecodeError as error:
        raise VerificationError(f"entry is not a serialized Envelope: {error}") from error
    if not message.signatures:
        raise VerificationError("entry envelope carries no signature")
    return message


def check_entry(
    index: int,
    envelope: bytes,
    statement: TrustStatement,
    received_at: datetime | None = None,
    skew: timedelta = timedelta(0),
    *,
    unknown_is_final: bool = True,
) -> EntryCheck:
    """Decide one entry's state from its exact bytes and the issuer's trust statement (and,
    when known, the local time this node first received it).

    With ``unknown_is_final`` false, an entry signed only by keys the statement does not list
    stays ``unverified``: the issuer may have rotated and we have not fetched its newer
    statement since the entry arrived, so calling it forged would quarantine an honest
    partner."""
    try:
        message = parse_envelope(envelope)
    except VerificationError as error:
        return EntryCheck(index, "invalid", str(error))
    message_bytes = pae(message.payload_type, message.payload)
    revoked_problem: str | None = None
    early_problem: str | None = None
    for signature in message.signatures:
        key = statement.signing_key(signature.key_id)
        if key is None:
            continue
        try:
            key.public_key.verify(signature.sig, message_bytes)
        except VerificationError as error:
            return EntryCheck(index, "invalid", f"entry {index}: {error}")
        if key.revoked_at_index is not None and index >= key.revoked_at_index:
            revoked_problem = (
                f"entry {index} signed by key {key.key_id} revoked from index "
                f"{key.revoked_at_index}"
            )
            continue
        if received_at is not None and received_at < key.valid_from - skew:
            early_problem = (
                f"entry {index} signed by key {key.key_id} before its window starts "
                f"({key.valid_from:%Y-%m-%dT%H:%M:%SZ})"
            )
            continue
        return EntryCheck(index, "valid", signer=key.key_id)
    if revoked_problem is not None:
        return EntryCheck(index, "revoked", revoked_problem)
    if early_problem is not None:
        return EntryCheck(index, "early", early_problem)
    if not unknown_is_final:
        return EntryCheck(index, "unverified", "signed by a key not in the held statement yet")
    return EntryCheck(
        index,
        "invalid",
        f"entry {index}: no signature by a key of {statement.admin}'s trust statement",
    )


async def verify_pending(
    conn: AsyncConnection,
    log: str,
    statement: TrustStatement,
    indices: Iterable[int] | None = None,
    limit: int = 5000,
    *,
    skew: timedelta = timedelta(0),
    trust_checked_at: float | None = None,
) -> list[EntryCheck]:
    """Verify unverified entries of ``log`` (all, or those in ``indices``) and store outcomes;
    returns the entries decided. ``trust_checked_at`` (epoch seconds): when the issuer was
    last asked for a newer statement; an entry received after that and signed by an unknown
    key is left for after the next refresh."""
    query = select(entries.c.idx, entries.c.envelope, entries.c.appended_at).where(
        entries.c.log == log, entries.c.sig_state == "unverified"
    )
    if indices is not None:
        query = query.where(entries.c.idx.in_(list(indices)))
    # No ORDER BY: the order does not matter, and sorting by idx makes SQLite walk the primary
    # key of a large replica instead of the (log, sig_state) index.
    rows = (await conn.execute(query.limit(limit))).all()
    checks = [
        check_entry(
            r.idx,
            bytes(r.envelope),
            statement,
            datetime.fromtimestamp(float(r.appended_at), tz=UTC),
            skew,
            unknown_is_final=trust_checked_at is None or float(r.appended_at) < trust_checked_at,
        )
        for r in rows
    ]
    checks = [c for c in checks if c.state != "unverified"]
    if checks:
        await conn.execute(
            update(entries)
            .where(entries.c.log == bindparam("b_log"), entries.c.idx == bindparam("b_idx"))
            .values(sig_state=bindparam("b_state"), signer=bindparam("b_signer")),
            [
                {"b_log": log, "b_idx": c.index, "b_state": c.state, "b_signer": c.signer}
                for c in checks
            ],
        )
    return checks


async def apply_revocations(conn: AsyncConnection, log: str, statement: TrustStatement) -> int:
    """Entries already verified with a key the statement now revokes at index N become
    ``revoked`` from N on: never used in an answer again (no quarantine)."""
    changed = 0
    for key in statement.signing_keys:
        if key.revoked_at_index is None:
            continue
        result = await conn.execute(
            update(entries)
            .where(
                entries.c.log == log,
                entries.c.signer == key.key_id,
                entries.c.idx >= key.revoked_at_index,
                entries.c.sig_state == "valid",
            )
            .values(sig_state="revoked")
        )
        changed += result.rowcount or 0
    return changed

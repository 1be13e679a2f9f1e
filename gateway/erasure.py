"""Erasure of record payloads on a lawful request: our own log, and partners' copies of theirs.

Invariants:
- An erased entry keeps its leaf hash (``entries.leaf_hash``) and its place in the tiles, so
  every checkpoint, inclusion proof and consistency proof of the log verifies as before. What
  goes is the envelope (the personal data), the publish digest of its content, and every row
  decoded from it (``records``, ``identifiers``, ``record_feed``): the entry is ``erased``, is
  never used again, and Check answers for the operator as for one it never heard of
  (``unknown_operator``, not recognised: fail closed).
- Our own erasure and the notice that announces it commit in one transaction: the payloads
  are gone exactly when the signed ``ErasureNotice`` entry is in the log. The notice names
  entries (index and leaf hash), never the operator, and is disclosed to every partner that
  was entitled to any of them.
- A partner's notice is applied only once its signature verified (:mod:`gateway.verification`
  gives it the transient state ``notice``) and, in the transaction that stores that verdict,
  only if every entry it names is one we hold below the notice with the leaf hash it names:
  anything else is a false statement about the issuer's own log, so the notice is ``invalid``
  and quarantines the partner, and nothing is erased. Entries we hold as a leaf hash only
  (never received) have nothing to erase and are left as they are. Applying a notice again
  erases nothing more (idempotent).
- On SQLite the erasing connection runs with ``PRAGMA secure_delete``, so erased bytes are
  overwritten instead of lingering in free pages; the CLI also checkpoints the WAL afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway import codec
from gateway.audit import (
    OPERATOR_KEY_FILE,
    operator_digest,
    operator_key,
    operator_key_id,
    record_action,
)
from gateway.errors import InputError
from gateway.issuer_log import IssuerLog, SignedEntry
from gateway.node import Node
from gateway.records import ErasedEntry, ErasureNotice
from gateway.signing_pool import envelope_bytes
from gateway.storage.schema import (
    disclosure_state,
    entitlements,
    entries,
    identifiers,
    record_feed,
    records,
)
from gateway.storage.tiles import lock_log
from gateway.verification import NOTICE, EntryCheck, store_outcomes

__all__ = [
    "ERASED",
    "ErasureResult",
    "append_notices",
    "apply_notices",
    "checkpoint_wal",
    "erase_operator",
    "erase_payloads",
    "secure_delete",
]

ERASED = "erased"
# Rows per IN list (well below SQLite's and asyncpg's parameter limits).
_CHUNK = 500
_OPERATOR = re.compile(r"[A-Z0-9][A-Z0-9./-]{0,39}")
_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
DEFAULT_LAWFUL_BASIS = "erasure on a lawful request"
MAX_REASON = 1000


def _chunks(items: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


async def secure_delete(conn: AsyncConnection) -> None:
    """On SQLite, overwrite deleted content with zeros on this connection from now on."""
    if conn.dialect.name == "sqlite":
        await conn.execute(text("PRAGMA secure_delete=ON"))


async def checkpoint_wal(engine: AsyncEngine) -> bool:
    """On SQLite, copy the WAL into the database file and truncate it, so pages written before
    an erasure do not survive in the WAL. Returns False when a reader kept it from completing
    (a running gateway): the WAL is then reused and overwritten as it goes."""
    if engine.dialect.name != "sqlite":
        return True
    async with engine.connect() as conn:
        row = (await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))).one()
    return int(row[0]) == 0


async def erase_payloads(conn: AsyncConnection, log: str, indices: Iterable[int]) -> list[int]:
    """Erase the payloads of ``log``'s entries at ``indices`` in the caller's transaction:
    envelope and content digest to NULL, state ``erased``, decoded rows deleted; the leaf hash
    stays. Returns the indices whose payload was erased now (not before)."""
    wanted = sorted(set(indices))
    erased: list[int] = []
    for chunk in _chunks(wanted):
        erased.extend(
            int(i)
            for i in (
                await conn.execute(
                    select(entries.c.idx).where(
                        entries.c.log == log,
                        entries.c.idx.in_(chunk),
                        or_(entries.c.envelope.is_not(None), entries.c.sig_state != ERASED),
                        entries.c.sig_state != "hash_only",
                    )
                )
            ).scalars()
        )
        await conn.execute(
            update(entries)
            .where(
                entries.c.log == log,
                entries.c.idx.in_(chunk),
                entries.c.sig_state != "hash_only",
            )
            .values(envelope=None, content_digest=None, sig_state=ERASED)
        )
        for table in (identifiers, records, record_feed):
            await conn.execute(delete(table).where(table.c.log == log, table.c.idx.in_(chunk)))
    return sorted(erased)


# -- receiving: a partner's notice ------------------------------------------------------------


async def apply_notices(
    conn: AsyncConnection, log: str, checks: Sequence[EntryCheck]
) -> list[EntryCheck]:
    """Apply the verified erasure notices among ``checks`` (state ``notice``) to our copy of
    ``log``, in the caller's transaction (after the chunk's records were indexed, so a notice
    also erases entries indexed in the same chunk). Returns the notices found false, as
    ``invalid`` checks; each applied notice is stored ``valid`` and audited."""
    notices = sorted((c for c in checks if c.state == NOTICE), key=lambda c: c.index)
    if not notices:
        return []
    await secure_delete(conn)
    refused: list[EntryCheck] = []
    applied: list[EntryCheck] = []
    for check in notices:
        notice = check.notice
        if notice is None:  # pragma: no cover - the verifier sets it with the state
            raise RuntimeError(f"entry {check.index}: notice state without a notice")
        problem = await _false_statement(conn, log, check.index, notice)
        if problem is not None:
            refused.append(EntryCheck(check.index, "invalid", problem))
            continue
        named = [e.leaf_index for e in notice.entries]
        erased = await erase_payloads(conn, log, named)
        applied.append(EntryCheck(check.index, "valid", signer=check.signer))
        await record_action(
            conn,
            "replicator",
            "erasure.applied",
            {
                "log": log,
                "notice_index": check.index,
                "named": len(named),
                "erased": len(erased),
                "lawful_basis": notice.lawful_basis,
                "reference": notice.reference,
            },
        )
    await store_outcomes(conn, log, [*applied, *refused])
    return refused


async def _false_statement(
    conn: AsyncConnection, log: str, index: int, notice: ErasureNotice
) -> str | None:
    """Why the notice at ``index`` misstates ``log`` as we hold it, or None."""
    held: dict[int, bytes] = {}
    named = [e.leaf_index for e in notice.entries]
    for chunk in _chunks(named):
        rows = await conn.execute(
            select(entries.c.idx, entries.c.leaf_hash).where(
                entries.c.log == log, entries.c.idx.in_(chunk)
            )
        )
        held.update((int(r.idx), bytes(r.leaf_hash)) for r in rows)
    for entry in notice.entries:
        if entry.leaf_index >= index:
            return f"erasure notice at index {index} names entry {entry.leaf_index}, not below it"
        found = held.get(entry.leaf_index)
        if found is None:
            # Every leaf below a stored entry is stored: the notice names a place that is not
            # in the log the issuer proved to us.
            return f"erasure notice at index {index} names entry {entry.leaf_index}, not held"
        if found != entry.leaf_hash:
            return (
                f"erasure notice at index {index} names entry {entry.leaf_index} with leaf "
                f"hash {entry.leaf_hash.hex()[:16]}..., the log holds {found.hex()[:16]}..."
            )
    return None


# -- issuing: our own erasure -----------------------------------------------------------------


@dataclass(frozen=True)
class ErasureResult:
    entries: tuple[int, ...]
    notices: tuple[int, ...]
    partners: tuple[str, ...]
    tree_size: int
    wal_truncated: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "erased_entries": list(self.entries),
            "notice_indices": list(self.notices),
            "notified_partners": list(self.partners),
            "tree_size": self.tree_size,
            "wal_truncated": self.wal_truncated,
        }


def _text(name: str, value: str, *, limit: int, required: bool) -> str:
    value = value.strip()
    if required and not value:
        raise InputError(f"--{name}: must not be empty")
    if len(value) > limit:
        raise InputError(f"--{name}: longer than {limit} characters")
    if any(ord(c) < 32 for c in value):
        raise InputError(f"--{name}: contains control characters")
    return value


async def _entries_about(conn: AsyncConnection, log: str, operator: str) -> list[int]:
    """Entries of ``log`` about ``operator``: those carrying the identifier (any scheme, both
    record kinds) and every record of the same authorisations (a later record may no longer
    carry that identifier). Not a closure over the operator's other identifiers: those may be
    shared, and an erasure cannot be undone."""
    carrying = set(
        (
            await conn.execute(
                select(identifiers.c.idx).where(
                    identifiers.c.log == log, identifiers.c.value == operator
                )
            )
        ).scalars()
    )
    authorisations: set[tuple[str, str]] = set()
    for chunk in _chunks(sorted(carrying)):
        rows = await conn.execute(
            select(records.c.issuer, records.c.authorisation).where(
                records.c.log == log, records.c.idx.in_(chunk)
            )
        )
        authorisations.update((r.issuer, r.authorisation) for r in rows)
    found = set(carrying)
    for issuer, authorisation in sorted(authorisations):
        found.update(
            (
                await conn.execute(
                    select(records.c.idx).where(
                        records.c.log == log,
                        records.c.issuer == issuer,
                        records.c.authorisation == authorisation,
                    )
                )
            ).scalars()
        )
    return sorted(int(i) for i in found)


async def erase_operator(
    node: Node,
    *,
    operator: str,
    reason: str,
    lawful_basis: str | None = None,
    reference: str = "",
    actor: str,
    today: date | None = None,
) -> ErasureResult:
    """Erase every payload of our log about ``operator`` and append the notice(s) announcing
    it, in one transaction; audited with the operator's digest, never the identifier."""
    value = re.sub(r"\s+", "", operator).upper()
    if not _OPERATOR.fullmatch(value):
        raise InputError(f"--operator: {operator!r} is not an operator identifier")
    reason = _text("reason", reason, limit=MAX_REASON, required=True)
    basis = _text("lawful-basis", lawful_basis or DEFAULT_LAWFUL_BASIS, limit=256, required=True)
    reference = _text("reference", reference, limit=64, required=False)
    if reference and not _REFERENCE.fullmatch(reference):
        raise InputError(
            f"--reference: {reference!r} is malformed (letters, digits and ._:/- only)"
        )
    admin = node.admin
    day = today or node.config.today()
    audit_key = operator_key(node.paths.keys / OPERATOR_KEY_FILE)
    async with node.engine.begin() as conn:
        await secure_delete(conn)
        _, entry_signer = await node.active_signers(conn)
        # The log's write lock first: no append can interleave with the erasure.
        await lock_log(conn, admin)
        about = await _entries_about(conn, admin, value)
        if not about:
            raise InputError(
                f"--operator: no entry of log {admin} is about {value} "
                "(never published here, or already erased)"
            )
        named: list[ErasedEntry] = []
        partners: set[str] = set()
        keys: set[tuple[str, str, str]] = set()
        for chunk in _chunks(about):
            for row in await conn.execute(
                select(entries.c.idx, entries.c.leaf_hash).where(
                    entries.c.log == admin, entries.c.idx.in_(chunk)
                )
            ):
                named.append(ErasedEntry(int(row.idx), bytes(row.leaf_hash)))
            partners.update(
                (
                    await conn.execute(
                        select(entitlements.c.partner).where(entitlements.c.idx.in_(chunk))
                    )
                ).scalars()
            )
            for key in await conn.execute(
                select(records.c.issuer, records.c.authorisation, records.c.aeo_type).where(
                    records.c.log == admin, records.c.idx.in_(chunk)
                )
            ):
                keys.add((key.issuer, key.authorisation, key.aeo_type))
        erased = await erase_payloads(conn, admin, about)
        # The per-partner disclosure state names the authorisation: it goes with it.
        for issuer, authorisation, aeo_type in sorted(keys):
            remaining = (
                await conn.execute(
                    select(func.count())
                    .select_from(records)
                    .where(
                        records.c.log == admin,
                        records.c.issuer == issuer,
                        records.c.authorisation == authorisation,
                    )
                )
            ).scalar_one()
            if not remaining:
                await conn.execute(
                    delete(disclosure_state).where(
                        and_(
                            disclosure_state.c.issuer == issuer,
                            disclosure_state.c.authorisation == authorisation,
                            disclosure_state.c.aeo_type == aeo_type,
                        )
                    )
                )
        notices = [
            ErasureNotice(
                issuer=admin,
                entries=tuple(sorted(named[k : k + codec.MAX_ERASED_PER_NOTICE])),
                lawful_basis=basis,
                reference=reference,
                date=day,
            )
            for k in range(0, len(named), codec.MAX_ERASED_PER_NOTICE)
        ]
        appended = await append_notices(
            conn, node, notices, partners=frozenset(partners), actor=actor, signer=entry_signer
        )
        await record_action(
            conn,
            actor,
            "erasure.erase",
            {
                # Keyed like agency checks (gateway.audit): a plain hash of an EORI could be
                # reversed by trying every number; `mragw audit --operator` finds it.
                "operator_hmac": operator_digest(audit_key, value),
                "operator_key": operator_key_id(audit_key),
                "entries": about,
                "newly_erased": len(erased),
                "notices": appended,
                "partners": sorted(partners),
                "reason": reason,
                "lawful_basis": basis,
                "reference": reference,
            },
        )
        size = appended[-1] + 1
    truncated = await checkpoint_wal(node.engine)
    return ErasureResult(tuple(about), tuple(appended), tuple(sorted(partners)), size, truncated)


async def append_notices(
    conn: AsyncConnection,
    node: Node,
    notices: Sequence[ErasureNotice],
    *,
    partners: frozenset[str],
    actor: str,
    signer: Any = None,
) -> list[int]:
    """Sign ``notices`` and append them to our log (disclosed to ``partners``) in the caller's
    transaction; returns their indices."""
    if signer is None:
        _, signer = await node.active_signers(conn)
    items = [
        SignedEntry(
            envelope_bytes(
                codec.ERASURE_NOTICE_TYPE, codec.encode_notice(n, codec.new_salt()), signer
            ),
            codec.ERASURE_NOTICE_TYPE,
            signer.key_id,
            partners,
        )
        for n in notices
    ]
    result = await IssuerLog(node).append_signed(conn, items, actor=actor)
    first = result.first_index
    if first is None:
        return []
    return list(range(first, first + result.appended))

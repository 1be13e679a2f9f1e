"""The audit trail: every admin action, hash-chained so an edited or deleted row is detected.

Invariant: row n stores ``hash = SHA-256(prev_hash || canonical JSON of its fields)`` with
``prev_hash`` the hash of row n-1 (32 zero bytes for the first row). Appending first takes the
audit lock (the ``audit`` row of ``node_state``, bumped in the caller's transaction), then reads
the newest row: two transactions appending at once are serialised (PostgreSQL's row lock, SQLite's
write lock), so each links to the other's row instead of both to the same one (a fork).

Operators named in audited questions (checks by an ``agency`` client) are never written in
clear: the trail is append-only while an operator may ask for erasure. The row holds
:func:`operator_digest`, an HMAC-SHA256 of the normalised identifier under a per-node secret
(``keys/audit-operator.key``, 0600), which ``mragw audit --operator`` recomputes to find the
rows about one operator (docs/adr/0010-local-clients-and-agency-audit.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.errors import InputError
from gateway.storage.schema import audit, node_state
from gateway.storage.upsert import insert_ignore

if TYPE_CHECKING:
    from gateway.node import Node

GENESIS = bytes(32)
#: The ``node_state`` key whose row serialises appends to the chain.
AUDIT_LOCK = "audit"
#: The per-node HMAC secret for operator identifiers, in the node's ``keys/`` folder.
OPERATOR_KEY_FILE = "audit-operator.key"
_OPERATOR_KEY_BYTES = 32
_HEX_KEY = re.compile(rb"[0-9a-f]{64}\n?")


def _row_hash(prev: bytes, at: float, actor: str, action: str, detail: str) -> bytes:
    body = json.dumps([f"{at:.6f}", actor, action, detail], separators=(",", ":"))
    return hashlib.sha256(prev + body.encode("utf-8")).digest()


async def _take_audit_lock(conn: AsyncConnection) -> None:
    """Lock the chain's head for the rest of the caller's transaction."""
    bump = (
        update(node_state)
        .where(node_state.c.key == AUDIT_LOCK)
        .values(value=node_state.c.value + 1)
    )
    if (await conn.execute(bump)).rowcount == 0:
        # First action of a node created before the lock row existed: create it (a concurrent
        # creator makes this a no-op), then lock it.
        await insert_ignore(conn, node_state, [{"key": AUDIT_LOCK, "value": 0}], keys=("key",))
        await conn.execute(bump)


async def record_action(
    conn: AsyncConnection, actor: str, action: str, detail: dict[str, Any]
) -> None:
    """Append one audit row in the caller's transaction."""
    await _take_audit_lock(conn)
    last = (await conn.execute(select(audit.c.hash).order_by(audit.c.id.desc()).limit(1))).scalar()
    prev = last if last is not None else GENESIS
    at = round(time.time(), 6)
    detail_text = json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str)
    await conn.execute(
        audit.insert().values(
            at=at,
            actor=actor,
            action=action,
            detail=detail_text,
            prev_hash=prev,
            hash=_row_hash(prev, at, actor, action, detail_text),
        )
    )


@dataclass(frozen=True)
class AuditCheck:
    rows: int
    broken_at: int | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.broken_at is None


async def verify_audit_chain(conn: AsyncConnection) -> AuditCheck:
    prev = GENESIS
    count = 0
    result = await conn.stream(select(audit).order_by(audit.c.id))
    async for row in result:
        count += 1
        if row.prev_hash != prev:
            return AuditCheck(count, row.id, f"row {row.id} does not follow the previous row")
        if row.hash != _row_hash(prev, row.at, row.actor, row.action, row.detail):
            return AuditCheck(count, row.id, f"row {row.id} was altered")
        prev = row.hash
    return AuditCheck(count, None, None)


async def audit_rows(
    conn: AsyncConnection, *, last: int | None = None, mentioning: str | None = None
) -> list[dict[str, Any]]:
    """The trail, oldest first (only the newest ``last`` rows when given); with
    ``mentioning``, only rows whose detail contains that text (an operator digest: 64 hex
    digits cannot occur in a row by accident)."""
    stmt = select(audit.c.id, audit.c.at, audit.c.actor, audit.c.action, audit.c.detail)
    if mentioning is not None:
        stmt = stmt.where(audit.c.detail.contains(mentioning, autoescape=True))
    if last is not None:
        stmt = stmt.order_by(audit.c.id.desc()).limit(last)
    rows = sorted((await conn.execute(stmt)).all(), key=lambda r: int(r.id))
    return [
        {
            "id": int(r.id),
            "at": datetime.fromtimestamp(float(r.at), tz=UTC).isoformat(),
            "actor": r.actor,
            "action": r.action,
            "detail": _detail(r.detail),
        }
        for r in rows
    ]


def _detail(text: str) -> Any:
    # Rows are written as JSON; an edited row may not be, and must still be listed.
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- operator identifiers under a keyed hash ------------------------------------------------


def normalise_operator_id(operator_id: str) -> str:
    """The form a question's identifier is matched in (as the Checker does): no white space,
    upper case. The same identifier typed differently hashes the same."""
    return re.sub(r"\s+", "", operator_id).upper()


def operator_digest(key: bytes, operator_id: str) -> str:
    """HMAC-SHA256 of the normalised identifier under the node's secret, lowercase hex."""
    message = normalise_operator_id(operator_id).encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def operator_key_id(key: bytes) -> str:
    """A short name of the secret, stored with each digest: a row hashed under another key
    (a different home, a replaced file) is then recognisable, the secret itself stays hidden."""
    return hashlib.sha256(b"mragw audit operator key\x00" + key).hexdigest()[:16]


def read_operator_key(path: Path) -> bytes | None:
    """The secret in ``path`` (None when there is no such file)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if not _HEX_KEY.fullmatch(data):
        raise InputError(f"{path}: not an audit operator key (64 lowercase hex digits)")
    return bytes.fromhex(data[:64].decode("ascii"))


def operator_key(path: Path) -> bytes:
    """The secret in ``path``, created (mode 0600) on first use.

    Two processes creating it at once agree on one: each writes a private temporary file and
    hard-links it into place, which fails for the second, who then reads the first's."""
    found = read_operator_key(path)
    if found is not None:
        return found
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # the umask may remove bits, never add: pin it
            handle.write(secrets.token_bytes(_OPERATOR_KEY_BYTES).hex().encode("ascii") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    created = read_operator_key(path)
    if created is None:  # pragma: no cover - removed between link and read
        raise InputError(f"{path}: the audit operator key vanished while being created")
    return created


# --- the listing `mragw audit` prints (locally or through a replica's ListAudit) ------------


def operator_filter(keys_dir: Path, operator: str) -> str:
    """The digest agency checks stored for ``operator``. Without this node's key no digest can
    be recomputed, and answering "nobody checked it" would be a lie: that is bad input."""
    if not normalise_operator_id(operator):
        raise InputError("--operator: empty identifier")
    path = keys_dir / OPERATOR_KEY_FILE
    key = read_operator_key(path)
    if key is None:
        raise InputError(
            f"--operator: no audit operator key in this home ({path.name}): no agency check "
            "was audited with it, or the key is kept elsewhere"
        )
    return operator_digest(key, operator)


async def audit_listing(
    node: Node, *, last: int | None = None, operator: str | None = None
) -> tuple[list[dict[str, Any]], AuditCheck]:
    """The rows ``mragw audit`` lists and the verdict on the whole chain, from one snapshot so
    that both describe the same rows."""
    mentioning = None if operator is None else operator_filter(node.paths.keys, operator)
    async with node.engine.begin() as conn:
        rows = await audit_rows(conn, last=last, mentioning=mentioning)
        return rows, await verify_audit_chain(conn)

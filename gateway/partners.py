"""Partner administrations: onboarding by bundle and pinned fingerprint, and their lifecycle.

Invariants:
- A partner is pinned only after its bundle's chain verified from version 1 against the root
  fingerprint confirmed out of band; on a mismatch nothing is stored.
- Each pinned partner has a ``logs`` row for the replica of its log; removing a partner keeps
  that replica (history stays verifiable) but stops replication and disclosure to it.
- Every change bumps ``node_state['partners']`` so a running gateway picks it up, and goes to
  the audit trail.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.envelope import Envelope, envelope_to_json
from gateway.alerts import QUARANTINE, raise_alert
from gateway.audit import record_action
from gateway.config import parse_hostport
from gateway.errors import InputError
from gateway.node import Node, now_utc
from gateway.storage.schema import logs, node_state, partners
from gateway.storage.tiles import create_empty_log
from gateway.trust import (
    MAX_BUNDLE_BYTES,
    TrustError,
    TrustStatement,
    bundle_bytes,
    parse_bundle,
    verify_chain,
    verify_update,
)

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


class UnknownPartnerError(InputError):
    """No partner with that code is pinned here."""


@dataclass(frozen=True)
class PartnerInfo:
    code: str
    fingerprint: str
    endpoint: str
    trust_version: int
    trust_expires: str
    suspended: bool
    quarantined: bool
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "admin": self.code,
            "fingerprint": self.fingerprint,
            "endpoint": self.endpoint,
            "trust_version": self.trust_version,
            "trust_expires": self.trust_expires,
            "suspended": self.suspended,
            "quarantined": self.quarantined,
            "reason": self.reason,
        }


def partner_statement(row: Any) -> TrustStatement:
    """The newest statement of a pinned partner, re-verified from its stored chain."""
    chain = parse_bundle(bytes(row.bundle), f"stored bundle of {row.code}")
    return verify_chain(
        chain, row.root_fingerprint, now=now_utc(), admin=row.code, check_expiry=False
    )


def _info(row: Any) -> PartnerInfo:
    statement = partner_statement(row)
    return PartnerInfo(
        code=row.code,
        fingerprint=row.root_fingerprint,
        endpoint=row.endpoint,
        trust_version=row.trust_version,
        trust_expires=statement.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        suspended=bool(row.suspended),
        quarantined=bool(row.quarantined),
        reason=row.reason,
    )


async def bump(conn: AsyncConnection, key: str) -> None:
    await conn.execute(
        update(node_state).where(node_state.c.key == key).values(value=node_state.c.value + 1)
    )


async def export_bundle(node: Node) -> tuple[bytes, str]:
    """This administration's partner bundle and its root key fingerprint."""
    async with node.engine.connect() as conn:
        chain = await node.trust_chain(conn)
        statement = await node.trust_statement(conn)
    return bundle_bytes(chain), statement.root_fingerprint


async def add_partner(
    node: Node, bundle: bytes, fingerprint: str, *, actor: str, source: str = "bundle"
) -> PartnerInfo:
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise InputError(f"--fingerprint {fingerprint!r}: expected 64 lowercase hex characters")
    chain = parse_bundle(bundle, source)
    try:
        statement = verify_chain(chain, fingerprint, now=now_utc())
    except TrustError as error:
        raise TrustError(f"{source}: {error}") from error
    if statement.admin == node.admin:
        raise InputError(f"{source}: this is our own bundle ({node.admin}), not a partner's")
    now = time.time()
    async with node.engine.begin() as conn:
        existing = (
            await conn.execute(select(partners).where(partners.c.code == statement.admin))
        ).one_or_none()
        if existing is not None and existing.root_fingerprint != fingerprint:
            raise InputError(
                f"{statement.admin} is already pinned with root {existing.root_fingerprint}; "
                "remove it first to pin another root"
            )
        if existing is not None:
            _refuse_rollback(existing, chain, statement.version, source)
        values = {
            "root_fingerprint": fingerprint,
            "trust_version": statement.version,
            "bundle": bundle,
            "ca_pem": statement.tls_ca_pem,
            "updated_at": now,
        }
        if existing is None:
            await conn.execute(
                partners.insert().values(
                    code=statement.admin,
                    endpoint=statement.endpoint,
                    suspended=False,
                    quarantined=False,
                    reason=None,
                    added_at=now,
                    **values,
                )
            )
        else:
            await conn.execute(
                update(partners).where(partners.c.code == statement.admin).values(**values)
            )
        has_log = (
            await conn.execute(select(logs.c.code).where(logs.c.code == statement.admin))
        ).scalar()
        if has_log is None:
            await create_empty_log(conn, statement.admin, own=False)
        await bump(conn, "partners")
        await record_action(
            conn,
            actor,
            "partner.add",
            {
                "partner": statement.admin,
                "fingerprint": fingerprint,
                "trust_version": statement.version,
                "endpoint": statement.endpoint,
            },
        )
        row = (await conn.execute(select(partners).where(partners.c.code == statement.admin))).one()
    return _info(row)


def _refuse_rollback(existing: Any, chain: list[Any], version: int, source: str) -> None:
    """A re-added bundle may only extend the chain we hold: an older chain would bring back
    keys a later statement revoked (TUF's rollback rule)."""
    if version < existing.trust_version:
        raise TrustError(
            f"{source}: trust statement version {version} is older than the pinned "
            f"version {existing.trust_version} of {existing.code}"
        )
    held = parse_bundle(bytes(existing.bundle), f"stored bundle of {existing.code}")
    if [envelope_to_json(e) for e in chain[: len(held)]] != [envelope_to_json(e) for e in held]:
        raise TrustError(
            f"{source}: the chain does not extend the {len(held)} statement(s) pinned for "
            f"{existing.code}"
        )


async def accept_statements(
    node: Node, code: str, newer: list[Envelope], *, actor: str = "replicator"
) -> TrustStatement | None:
    """Extend a pinned partner's chain with statements it served (``GetTrustStatement``).

    Each must be version n+1, signed by the root trusted so far and, on a root rotation, by
    the new root too (:func:`gateway.trust.verify_update`); otherwise a :class:`TrustError`
    names the problem and nothing changes. Returns the newest statement, or None when another
    process stored the same update first."""
    async with node.engine.begin() as conn:
        row = (await conn.execute(select(partners).where(partners.c.code == code))).one_or_none()
        if row is None:
            raise UnknownPartnerError(f"partner {code!r} is not pinned here")
        held = parse_bundle(bytes(row.bundle), f"stored bundle of {code}")
        current = verify_chain(
            held, row.root_fingerprint, now=now_utc(), admin=code, check_expiry=False
        )
        newest = verify_update(current, newer)
        bundle = bundle_bytes([*held, *newer])
        if len(bundle) > MAX_BUNDLE_BYTES:
            raise TrustError(
                f"{code}'s trust chain would exceed {MAX_BUNDLE_BYTES} bytes; not stored"
            )
        values: dict[str, Any] = {
            "trust_version": newest.version,
            "bundle": bundle,
            "ca_pem": newest.tls_ca_pem,
            "updated_at": time.time(),
        }
        if row.endpoint == current.endpoint:
            # Follow the partner's published endpoint unless an operator set another one.
            values["endpoint"] = newest.endpoint
        result = await conn.execute(
            update(partners)
            .where(partners.c.code == code, partners.c.trust_version == current.version)
            .values(**values)
        )
        if result.rowcount == 0:
            return None
        await bump(conn, "partners")
        await record_action(
            conn,
            actor,
            "partner.trust-update",
            {
                "partner": code,
                "from_version": current.version,
                "to_version": newest.version,
                "root_rotated": newest.root_fingerprint != current.root_fingerprint,
                "signing_keys": [k.key_id for k in newest.signing_keys],
            },
        )
    return newest


async def list_partners(node: Node) -> list[PartnerInfo]:
    async with node.engine.connect() as conn:
        rows = (await conn.execute(select(partners).order_by(partners.c.code))).all()
    return [_info(r) for r in rows]


async def _change(
    node: Node,
    code: str,
    *,
    action: str,
    actor: str,
    values: dict[str, Any],
    detail: dict[str, Any] | None = None,
) -> None:
    async with node.engine.begin() as conn:
        result = await conn.execute(
            update(partners).where(partners.c.code == code).values(updated_at=time.time(), **values)
        )
        if result.rowcount == 0:
            raise UnknownPartnerError(f"partner {code!r} is not pinned here")
        await bump(conn, "partners")
        await record_action(conn, actor, action, {"partner": code, **(detail or {})})


async def suspend_partner(node: Node, code: str, *, actor: str, reason: str = "") -> None:
    await _change(
        node,
        code,
        action="partner.suspend",
        actor=actor,
        values={"suspended": True, "reason": reason or "suspended by operator"},
        detail={"reason": reason},
    )


async def resume_partner(node: Node, code: str, *, actor: str) -> None:
    """Lift a suspension and a quarantine: replication resumes from the stored cursor."""
    await _change(
        node,
        code,
        action="partner.resume",
        actor=actor,
        values={"suspended": False, "quarantined": False, "reason": None},
    )


async def set_endpoint(node: Node, code: str, endpoint: str, *, actor: str) -> None:
    parse_hostport(endpoint, "endpoint")
    await _change(
        node,
        code,
        action="partner.set-endpoint",
        actor=actor,
        values={"endpoint": endpoint},
        detail={"endpoint": endpoint},
    )


async def remove_partner(node: Node, code: str, *, actor: str) -> None:
    async with node.engine.begin() as conn:
        result = await conn.execute(delete(partners).where(partners.c.code == code))
        if result.rowcount == 0:
            raise UnknownPartnerError(f"partner {code!r} is not pinned here")
        await bump(conn, "partners")
        await record_action(conn, actor, "partner.remove", {"partner": code})


async def quarantine(conn: AsyncConnection, code: str, reason: str) -> None:
    """Stop applying a partner's entries until an operator runs ``partner resume``."""
    await conn.execute(
        update(partners)
        .where(partners.c.code == code)
        .values(quarantined=True, reason=reason[:2000], updated_at=time.time())
    )
    await bump(conn, "partners")
    await record_action(
        conn, "replicator", "partner.quarantine", {"partner": code, "reason": reason[:2000]}
    )
    # An operator must look (and `partner resume` once the cause is understood).
    await raise_alert(
        conn,
        QUARANTINE,
        code,
        f"partner {code} quarantined: {reason[:500]}",
        {"reason": reason[:2000]},
    )

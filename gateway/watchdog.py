"""Conditions an operator must hear about before they become outages: alerts on expiry and
silence.

A serving gateway runs :func:`raise_due_alerts` periodically. Each condition opens at most one
alert per (kind, administration) while it is open (:func:`gateway.alerts.raise_alert`):
- ``trust_expiry``: our trust statement, or a partner's, expires within
  ``trust.renew_warning_days`` (or already did): `mragw trust renew` on the side concerned.
  Signing keys have no expiry of their own (a key's window ends only when a rotation retires
  it): they lapse with the statement that publishes them, so this alert covers them;
- ``certificate_expiry``: one of our TLS certificates (CA, node, local admin) expires within
  that period: `mragw keys rotate --tls`;
- ``silent``: a partner (not suspended) sent neither entries nor a heartbeat for
  ``replication.silent_after_s`` (0: never alert).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.pki import load_certificate
from gateway.alerts import raise_alert
from gateway.errors import GatewayError
from gateway.node import Node, now_utc
from gateway.partners import partner_statement
from gateway.storage.schema import logs, partners

TRUST_EXPIRY = "trust_expiry"
CERTIFICATE_EXPIRY = "certificate_expiry"
SILENT = "silent"

#: Opens one alert: (kind, subject, message, detail).
Alert = Callable[[str, str, str, dict[str, Any]], Awaitable[None]]

#: Our TLS files whose expiry is watched.
_CERTIFICATES = ("ca.pem", "node.pem", "admin.pem")


async def raise_due_alerts(node: Node) -> list[tuple[str, str]]:
    """Open the alerts due now (one transaction); returns the (kind, subject) opened."""
    now = now_utc()
    warn = dt.timedelta(days=node.config.trust.renew_warning_days)
    opened: list[tuple[str, str]] = []
    async with node.engine.begin() as conn:

        async def alert(kind: str, subject: str, message: str, detail: dict[str, Any]) -> None:
            if await raise_alert(conn, kind, subject, message, detail):
                opened.append((kind, subject))

        statement = await node.trust_statement(conn)
        own = node.trust_expiry(statement)
        if own.state != "valid":
            await alert(TRUST_EXPIRY, node.admin, own.message, {"version": statement.version})
        expiring = _expiring_certificates(node, now + warn)
        if expiring:
            await alert(
                CERTIFICATE_EXPIRY,
                node.admin,
                "TLS certificate(s) of "
                + node.admin
                + " expire soon: "
                + ", ".join(f"{name} on {when}" for name, when in expiring)
                + " (mragw keys rotate --tls)",
                {"certificates": dict(expiring)},
            )
        for row in await _partner_rows(conn):
            await _partner_alerts(node, row, alert)
    return opened


def _expiring_certificates(node: Node, horizon: dt.datetime) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name in _CERTIFICATES:
        try:
            cert = load_certificate(node.tls_bytes(name))
        except FileNotFoundError:
            continue
        if cert.not_valid_after_utc < horizon:
            out.append((name, cert.not_valid_after_utc.isoformat()))
    return out


async def _partner_rows(conn: AsyncConnection) -> list[Any]:
    query = select(
        partners.c.code,
        partners.c.root_fingerprint,
        partners.c.trust_version,
        partners.c.bundle,
        partners.c.suspended,
        partners.c.added_at,
        logs.c.received_at,
        logs.c.verified_at,
    ).select_from(partners.outerjoin(logs, logs.c.code == partners.c.code))
    return list((await conn.execute(query)).all())


async def _partner_alerts(node: Node, row: Any, alert: Alert) -> None:
    if row.suspended:
        return  # an operator decided to stop this partner: nothing to warn about
    try:
        state = node.trust_expiry(partner_statement(row))
    except GatewayError:
        state = None  # a chain that no longer verifies is reported by status, not here
    if state is not None and state.state != "valid":
        await alert(TRUST_EXPIRY, row.code, state.message, {"version": int(row.trust_version)})
    silent_after = node.config.replication.silent_after_s
    if silent_after > 0:
        heard = max(float(t) for t in (row.added_at, row.received_at, row.verified_at) if t)
        quiet = time.time() - heard
        if quiet > silent_after:
            await alert(
                SILENT,
                row.code,
                f"partner {row.code} sent neither entries nor a heartbeat for {quiet:.0f} s "
                f"(replication.silent_after_s = {silent_after:g})",
                {"last_heard": heard},
            )

"""Operator alerts (split views, ...): raised by the gateway, cleared by an operator.

An alert stays open until an operator clears it after investigating, so a condition that
resolved itself (a partner resumed, say) still leaves a trace to read; clearing is audited.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit import record_action
from gateway.errors import InputError
from gateway.node import Node
from gateway.storage.schema import alerts

log = logging.getLogger("mragw.alerts")

#: A partner's entries are no longer applied (a fault, a forged entry, a split view).
QUARANTINE = "quarantine"


async def raise_alert(
    conn: AsyncConnection, kind: str, subject: str, message: str, detail: dict[str, Any]
) -> bool:
    """Open an alert in the caller's transaction and log it at error level; an open alert of
    the same kind about the same subject is not repeated. Returns whether one was opened."""
    held = (
        await conn.execute(
            select(alerts.c.id).where(
                alerts.c.kind == kind, alerts.c.subject == subject, alerts.c.cleared.is_(False)
            )
        )
    ).first()
    if held is not None:
        return False
    await open_alert(conn, kind, subject, message, detail)
    return True


async def open_alert(
    conn: AsyncConnection, kind: str, subject: str, message: str, detail: dict[str, Any]
) -> None:
    """Open an alert in the caller's transaction and log it at error level (the caller has
    decided it is not a repeat: by kind and subject in :func:`raise_alert`, by the pair of
    checkpoints for a split view)."""
    await conn.execute(
        alerts.insert().values(
            at=time.time(),
            kind=kind,
            subject=subject,
            message=message,
            detail=json.dumps(detail, sort_keys=True),
            cleared=False,
        )
    )
    log.error("alert %s about %s: %s", kind, subject, message)


async def alert_rows(conn: AsyncConnection, *, include_cleared: bool) -> list[dict[str, Any]]:
    """Alerts, oldest first: id, kind, subject, message, at (UTC), cleared."""
    query = select(alerts).order_by(alerts.c.at, alerts.c.id)
    if not include_cleared:
        query = query.where(alerts.c.cleared.is_(False))
    return [
        {
            "id": int(r.id),
            "kind": r.kind,
            "subject": r.subject,
            "message": r.message,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.at)),
            "cleared": bool(r.cleared),
        }
        for r in (await conn.execute(query)).all()
    ]


async def open_alerts(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Open alerts as status reports them: kind, subject, message, at."""
    return [
        {k: a[k] for k in ("kind", "subject", "message", "at")}
        for a in await alert_rows(conn, include_cleared=False)
    ]


async def list_alerts(node: Node, *, include_cleared: bool = False) -> list[dict[str, Any]]:
    async with node.engine.connect() as conn:
        return await alert_rows(conn, include_cleared=include_cleared)


async def clear_alerts(
    node: Node, *, alert_id: int | None = None, subject: str | None = None, actor: str
) -> int:
    """Clear one alert (by id) or every open alert about an administration; returns how many."""
    if (alert_id is None) == (subject is None):
        raise InputError("give exactly one of an alert id or --subject")
    query = update(alerts).where(alerts.c.cleared.is_(False)).values(cleared=True)
    if alert_id is not None:
        query = query.where(alerts.c.id == alert_id)
    else:
        query = query.where(alerts.c.subject == subject)
    async with node.engine.begin() as conn:
        cleared = (await conn.execute(query)).rowcount or 0
        if cleared == 0:
            what = f"alert {alert_id}" if alert_id is not None else f"alerts about {subject}"
            raise InputError(f"no open {what}")
        await record_action(
            conn, actor, "alerts.clear", {"id": alert_id, "subject": subject, "cleared": cleared}
        )
    return cleared

"""The node status report: ``mragw status`` and ``AdminService.GetStatus`` share it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from gateway.alerts import open_alerts
from gateway.errors import GatewayError
from gateway.node import Node
from gateway.partners import partner_statement
from gateway.storage.schema import entries, logs, partners
from gateway.trust import TrustStatement
from gateway.witness import witness_counts

UNUSABLE = ("revoked", "early", "invalid")
# partner code -> connected now (only a running gateway knows; the CLI alone says False)
Connectivity = Callable[[str], bool]
# partner code -> why trust holds its replication back (only a running gateway knows)
TrustProblems = Callable[[str], str | None]


def metrics_url(http_url: str | None) -> str | None:
    """Where Prometheus scrapes a running gateway (its HTTP listener's ``/metrics``)."""
    return f"{http_url.rstrip('/')}/metrics" if http_url else None


def trust_state(node: Node, statement: TrustStatement) -> dict[str, Any]:
    state = node.trust_expiry(statement)
    return {
        "version": statement.version,
        "expires": statement.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "state": state.state,
        "message": state.message,
    }


def _partner_trust(node: Node, row: Any) -> dict[str, Any] | None:
    try:
        return trust_state(node, partner_statement(row))
    except GatewayError as error:  # a stored chain that no longer verifies: say so
        return {
            "version": int(row.trust_version),
            "expires": "",
            "state": "invalid",
            "message": str(error),
        }


async def node_status(
    node: Node,
    connected: Connectivity | None = None,
    http_url: str | None = None,
    trust_problem: TrustProblems | None = None,
) -> dict[str, Any]:
    async with node.engine.connect() as conn:
        own = (
            await conn.execute(select(logs.c.size).where(logs.c.code == node.admin))
        ).scalar_one()
        rows = (
            await conn.execute(
                select(
                    partners.c.code,
                    partners.c.root_fingerprint,
                    partners.c.trust_version,
                    partners.c.bundle,
                    partners.c.suspended,
                    partners.c.quarantined,
                    partners.c.reason,
                    logs.c.size,
                    logs.c.checkpoint_size,
                    logs.c.verified_at,
                )
                .select_from(partners.outerjoin(logs, logs.c.code == partners.c.code))
                .order_by(partners.c.code)
            )
        ).all()
        counted = await conn.execute(
            select(entries.c.log, entries.c.sig_state, func.count())
            .where(entries.c.sig_state.in_(["unverified", *UNUSABLE]))
            .group_by(entries.c.log, entries.c.sig_state)
        )
        pending: dict[str, int] = {}
        unusable: dict[str, int] = {}
        for log, state, count in counted:
            into = pending if state == "unverified" else unusable
            into[str(log)] = into.get(str(log), 0) + int(count)
        # Distinct partners that cosigned the latest checkpoint we hold of each log.
        witnesses = await witness_counts(conn)
        alerts = await open_alerts(conn)
        own_statement = await node.trust_statement(conn)
    now = time.time()
    report: dict[str, Any] = {
        "admin": node.admin,
        "log_size": int(own),
        "log_witnesses": witnesses.get(node.admin, 0),
        # Our own statement: renew it (`mragw trust renew`) before partners stop trusting it.
        "trust": trust_state(node, own_statement),
        "partners": [
            {
                "admin": r.code,
                "connected": bool(connected(r.code)) if connected is not None else False,
                "entries": int(r.size or 0),
                "tree_size": int(r.checkpoint_size or 0),
                "checkpoint_age_s": round(now - r.verified_at, 3) if r.verified_at else None,
                "quarantined": bool(r.quarantined),
                "suspended": bool(r.suspended),
                "reason": r.reason,
                # Entries stored but not yet signature-checked and indexed (not yet usable).
                "unverified": int(pending.get(r.code, 0)),
                "witnesses": witnesses.get(r.code, 0),
                # Entries never used in answers: revoked, early or invalid.
                "unusable": int(unusable.get(r.code, 0)),
                "trust": _partner_trust(node, r),
                "trust_problem": trust_problem(r.code) if trust_problem is not None else None,
            }
            for r in rows
        ],
        # Open alerts (split views, ...), oldest first: kind, subject, message, at.
        "alerts": alerts,
    }
    report["http_url"] = http_url
    report["metrics_url"] = metrics_url(http_url)
    return report

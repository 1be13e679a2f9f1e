"""The node status report: ``mragw status`` and ``AdminService.GetStatus`` share it."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.checkpoint import parse_note
from crypto.errors import CryptoError
from gateway.alerts import open_alerts
from gateway.cluster import database_now, read_leases, read_replicas, replication_lease
from gateway.datasets import active_recogniser
from gateway.errors import GatewayError
from gateway.node import Node
from gateway.partners import partner_statement
from gateway.storage.schema import entries, logs, partners
from gateway.trust import TrustStatement
from gateway.witness import witness_counts
from registry.graph import network, to_svg

UNUSABLE = ("revoked", "early", "invalid")
# partner code -> connected now (only a running gateway knows; the CLI alone says False)
Connectivity = Callable[[str], bool]
# partner code -> why trust holds its replication back (only a running gateway knows)
TrustProblems = Callable[[str], str | None]
# partner code -> its replicator's newest faults, (unix time, kind, message), oldest first
RecentFaults = Callable[[str], Sequence[tuple[float, str, str]]]
# Rejections listed in a report, at most (newest first, across partners).
MAX_REJECTIONS = 50


def metrics_url(http_url: str | None) -> str | None:
    """Where Prometheus scrapes a running gateway (its HTTP listener's ``/metrics``)."""
    return f"{http_url.rstrip('/')}/metrics" if http_url else None


@dataclass(frozen=True)
class ReplicationLag:
    """How far we are behind a partner's log.

    ``entries``: the partner's newest checkpoint size we have seen and verified, minus the
    entries of its log we stored *and* signature-checked (stored but unverified entries are not
    usable yet, so they count as lag). ``seconds``: seconds since we last verified a checkpoint
    of that partner (a new head or a heartbeat re-verifying the same head), None before the
    first. The status page and the node metrics share this definition.
    """

    entries: int
    seconds: float | None


def replication_lag(
    checkpoint_size: int,
    stored: int,
    unverified: int,
    verified_at: float | None,
    now: float,
) -> ReplicationLag:
    usable = max(stored - unverified, 0)
    return ReplicationLag(
        entries=max(checkpoint_size - usable, 0),
        seconds=round(max(now - verified_at, 0.0), 3) if verified_at else None,
    )


def _utc(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _checkpoint_summary(
    note: str | None, size: int, verified_at: float | None
) -> dict[str, Any] | None:
    """Size, root (hex) and verification time of the newest checkpoint we hold of a log."""
    if not note:
        return None
    try:
        root = parse_note(note).checkpoint().root_hash.hex()
    except CryptoError:  # verified when stored; should it no longer parse, show no root
        root = None
    return {"size": size, "root": root, "at": _utc(verified_at) if verified_at else None}


def recent_rejections(
    codes: Iterable[str], faults: RecentFaults, limit: int = MAX_REJECTIONS
) -> list[dict[str, Any]]:
    """The newest replication faults across partners, newest first: at, partner, kind, message.

    The message is the partner's data as our verifier described it: display it escaped."""
    merged = [
        (moment, code, kind, message) for code in codes for moment, kind, message in faults(code)
    ]
    merged.sort(key=lambda f: (-f[0], f[1]))
    return [
        {"at": _utc(moment), "partner": code, "kind": kind, "message": message}
        for moment, code, kind, message in merged[:limit]
    ]


# (dataset version, day, focus) -> SVG: a drawing depends on nothing else.
_GRAPHS: dict[tuple[str, dt.date, str | None], str] = {}


async def recognition_graph_svg(node: Node, day: dt.date | None = None) -> str:
    """Today's recognition network around this node's administration, drawn by the code of
    ``mragw registry graph --focus <admin>``, from the node's active dataset."""
    day = day or node.config.today()
    async with node.engine.connect() as conn:
        recogniser = await active_recogniser(conn)
    focus = node.admin if recogniser.is_known_code(node.admin) else None
    key = (recogniser.version, day, focus)
    svg = _GRAPHS.get(key)
    if svg is None:
        svg = to_svg(network(recogniser, day, focus=focus))
        if len(_GRAPHS) >= 8:
            _GRAPHS.clear()
        _GRAPHS[key] = svg
    return svg


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
    recent_faults: RecentFaults | None = None,
    *,
    replica: str | None = None,
) -> dict[str, Any]:
    """``replica``: the name of the running replica answering (None: the CLI alone)."""
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
                    logs.c.checkpoint,
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
        cluster = await cluster_status(conn, node.config.cluster.takeover_s)
    holders = {lease["name"]: lease["holder"] for lease in cluster["leases"] if lease["live"]}
    now = time.time()
    lags = {
        r.code: replication_lag(
            int(r.checkpoint_size or 0),
            int(r.size or 0),
            int(pending.get(r.code, 0)),
            r.verified_at,
            now,
        )
        for r in rows
    }
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
                "lag_entries": lags[r.code].entries,
                "lag_s": lags[r.code].seconds,
                "checkpoint": _checkpoint_summary(
                    r.checkpoint, int(r.checkpoint_size or 0), r.verified_at
                ),
                # The replica whose replicator follows this partner now (None: none live).
                "lease_holder": holders.get(replication_lease(r.code)),
            }
            for r in rows
        ],
        # Open alerts (split views, ...), oldest first: kind, subject, message, at.
        "alerts": alerts,
    }
    if recent_faults is not None:
        # Replication faults (rejected batches, checkpoints, statements), newest first; only a
        # running gateway's replicators know them, so the report of the CLI alone has none.
        report["rejections"] = recent_rejections([r.code for r in rows], recent_faults)
    report["http_url"] = http_url
    report["metrics_url"] = metrics_url(http_url)
    report["replicas"] = cluster["replicas"]
    report["leases"] = cluster["leases"]
    if replica is not None:
        report["replica"] = replica
    return report


async def cluster_status(conn: AsyncConnection, takeover_s: float) -> dict[str, Any]:
    """The replicas sharing this database and the leases, judged by the database's clock.

    ``alive``: not stopped and a heartbeat within ``takeover_s``; ``live`` (a lease): held and
    not expired."""
    now = await database_now(conn)
    return {
        "replicas": [
            {
                "name": r.name,
                "host": r.host,
                "pid": r.pid,
                "listen": r.listen,
                "admin_target": r.admin_target,
                "http_url": r.http_url,
                "started_at": _utc(r.started_at),
                "heartbeat_at": _utc(r.heartbeat_at),
                "alive": r.alive(now, takeover_s),
            }
            for r in await read_replicas(conn)
        ],
        "leases": [
            {
                "name": lease.name,
                "holder": lease.holder or None,
                "expires_at": _utc(lease.expires_at),
                "live": lease.live(now),
            }
            for lease in await read_leases(conn)
        ],
    }

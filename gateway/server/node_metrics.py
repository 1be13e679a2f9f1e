"""Node metrics, computed when ``/metrics`` is scraped (docs/adr/0012, docs/metrics.md).

Nothing polls: each scrape reads the database once (one connection, three statements: the
log heads joined with the partners, alert counts per kind, our newest trust statement) and
the replicators' in-memory status, then replaces every series of the families below. So the
figures are as fresh as the scrape, several replicas sharing one database export the same
database figures, and a partner removed stops being exported at the next scrape.

Cost per scrape: a few milliseconds (docs/metrics.md has the measurement: about 3-6 ms with 2
partners, 5-20 ms with 90, SQLite or PostgreSQL), once per scrape interval; the per-partner
work is linear in the number of pinned partners (about 90 MRAs exist worldwide). Partner trust
statements are re-verified only when their stored bundle changes, certificates re-parsed only
when their file changes. Concurrent scrapes share one collection. Check never waits for it: on
SQLite it reads through its own connections (docs/adr/0009), on PostgreSQL through the pool.

Label values come from bounded sets: partner codes from our partner table, rejection reasons
from :data:`REJECTION_REASONS` (anything else is counted as ``other``), alert kinds from
:data:`ALERT_KINDS` (likewise), certificate names and our own signing key ids. The exposition
escapes every label value anyway.

When the database cannot be read, the database-derived series are dropped (never exported
stale) and ``mragw_node_metrics_up`` is 0; the process metrics are still served.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from crypto.pki import load_certificate
from gateway.alerts import QUARANTINE
from gateway.errors import GatewayError
from gateway.node import Node
from gateway.partners import partner_statement
from gateway.replicator import ReplicatorStatus
from gateway.server.metrics import Collected, GatewayMetrics, LabelValues
from gateway.status import replication_lag
from gateway.storage.schema import alerts, entries, logs, partners, witnessed
from gateway.trust import TrustStatement
from gateway.watchdog import CERTIFICATE_EXPIRY, SILENT, TRUST_EXPIRY
from gateway.witness import SPLIT_VIEW

log = logging.getLogger("mragw.metrics")

#: Why a replicator refused what a partner sent (the ``kind`` of its faults). A kind not listed
#: here (a newer one) is exported as ``other`` rather than as a new label value.
REJECTION_REASONS = frozenset(
    {
        "malformed",  # undecodable or ill-formed batch, note or proof
        "oversized",  # a message over limits.max_message_bytes
        "rollback",  # a checkpoint or log smaller than what we verified
        "gap",  # a batch that does not start where our replica ends
        "fork",  # two roots for one size, or leaves contradicting a verified checkpoint
        "bad_checkpoint",  # a checkpoint that does not verify (key, origin, signature)
        "bad_proof",  # a consistency proof or recomputed root that does not verify
        "revoked_key",  # a checkpoint signed by a key revoked below its size
        "race",  # our replica moved while a batch was verified (another writer)
        "invalid_entry",  # an entry whose own signature or content failed verification
        "trust_expired",  # the partner's trust statement expired beyond the grace period
        "key_window",  # a checkpoint key used outside its validity window
        "trust_update_rejected",  # a trust statement update that does not verify
    }
)
OTHER = "other"
#: The alerts a gateway raises (gateway.alerts, gateway.watchdog, gateway.witness).
ALERT_KINDS = (QUARANTINE, SPLIT_VIEW, TRUST_EXPIRY, CERTIFICATE_EXPIRY, SILENT)
#: Our TLS certificates whose expiry is exported (files ``<name>.pem``), as the watchdog does.
CERTIFICATES = ("ca", "node", "admin")

#: partner code -> its replicator's status in this process (None: no replicator here).
ReplicatorStatuses = Callable[[str], ReplicatorStatus | None]


def rejection_reason(kind: str) -> str:
    return kind if kind in REJECTION_REASONS else OTHER


def alert_kind(kind: str) -> str:
    return kind if kind in ALERT_KINDS else OTHER


@dataclass
class _Snapshot:
    """What one scrape read from the database."""

    own: Any
    partners: list[Any]
    alert_counts: list[tuple[str, bool, int]]
    statement: TrustStatement


@dataclass
class _Families:
    """The scrape-time families, all replaced together."""

    all: list[Collected] = field(default_factory=list)

    def add(self, family: Collected) -> Collected:
        self.all.append(family)
        return family


class NodeMetrics:
    """Registers the node's scrape-time families on ``metrics`` and refreshes them per scrape."""

    def __init__(
        self,
        node: Node,
        metrics: GatewayMetrics,
        replicators: ReplicatorStatuses | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.replicators = replicators
        self.clock = clock
        self._lock = asyncio.Lock()
        self._failing = False
        # (partner code, fingerprint, version, bundle digest) -> expiry (None: does not verify)
        self._partner_expiry: dict[tuple[str, str, int, bytes], float | None] = {}
        # certificate file bytes digest -> not_after
        self._cert_expiry: dict[str, tuple[bytes, float]] = {}
        r = metrics.registry
        f = self._families = _Families()
        p = ("partner",)
        self.up = r.collected(
            "mragw_node_metrics_up",
            "1 when the last scrape read the node's database, 0 when it could not (the "
            "database-derived series are then absent, never stale).",
        )
        self.collect_seconds = r.collected(
            "mragw_node_metrics_collect_seconds",
            "Time the last scrape spent reading the database and replicator status.",
        )
        self.info = f.add(
            r.collected("mragw_node_info", "This node's administration code (value 1).", ("admin",))
        )
        self.log_entries = f.add(
            r.collected(
                "mragw_log_entries_total",
                "Entries in our own log (its tree size), read from the database: it only "
                "grows (append-only log), so rate() is the publish rate, whichever process "
                "appended; every replica sharing the database reports the same value.",
                kind="counter",
            )
        )
        self.checkpoint_age = f.add(
            r.collected(
                "mragw_log_checkpoint_age_seconds",
                "Seconds since our newest checkpoint was signed for a new tree size (our log "
                "last grew).",
            )
        )
        self.partner_entries = f.add(
            r.collected(
                "mragw_partner_log_entries",
                "Entries of the partner's log we hold, root-verified against its checkpoint.",
                p,
            )
        )
        self.received = f.add(
            r.collected(
                "mragw_replication_entries_received_total",
                "Entries (log positions, envelopes or leaf hashes) received from the partner "
                "and stored by this process.",
                p,
                kind="counter",
            )
        )
        self.batches = f.add(
            r.collected(
                "mragw_replication_batches_received_total",
                "Batches received from the partner and stored by this process.",
                p,
                kind="counter",
            )
        )
        self.rejected = f.add(
            r.collected(
                "mragw_replication_rejected_total",
                "What this process refused from the partner, by reason (a batch, a checkpoint, "
                "an entry or a trust statement; reasons not known to this version: other).",
                ("partner", "reason"),
                kind="counter",
            )
        )
        self.lag_entries = f.add(
            r.collected(
                "mragw_replication_lag_entries",
                "The partner's largest tree size we saw in a checkpoint whose signature we "
                "verified (from its stream or from witness gossip) minus the entries of its log "
                "we stored and signature-checked.",
                p,
            )
        )
        self.lag_seconds = f.add(
            r.collected(
                "mragw_replication_lag_seconds",
                "Seconds since we last verified a checkpoint of the partner (a new head or a "
                "heartbeat re-verifying it): how old our view of its log is; since it was "
                "pinned when none yet.",
                p,
            )
        )
        self.partner_checkpoint_age = f.add(
            r.collected(
                "mragw_partner_checkpoint_age_seconds",
                "Seconds since we last received entries of the partner (its log last grew as "
                "we saw it).",
                p,
            )
        )
        self.connected = f.add(
            r.collected(
                "mragw_partner_connected",
                "1 while this process holds a replication stream from the partner.",
                p,
            )
        )
        self.quarantined = f.add(
            r.collected(
                "mragw_partner_quarantined",
                "1 when the partner is quarantined (its entries are no longer applied).",
                p,
            )
        )
        self.suspended = f.add(
            r.collected("mragw_partner_suspended", "1 when an operator suspended the partner.", p)
        )
        self.trust_expiry = f.add(
            r.collected(
                "mragw_trust_statement_expiry_timestamp_seconds",
                "When our newest trust statement expires (unix time).",
            )
        )
        self.partner_trust_expiry = f.add(
            r.collected(
                "mragw_partner_trust_statement_expiry_timestamp_seconds",
                "When the partner's newest trust statement we hold expires (unix time; absent "
                "when its stored chain no longer verifies).",
                p,
            )
        )
        self.key_expiry = f.add(
            r.collected(
                "mragw_signing_key_expiry_timestamp_seconds",
                "End of the validity window of each of our published signing keys that has one "
                "(unix time).",
                ("key_id",),
            )
        )
        self.cert_expiry = f.add(
            r.collected(
                "mragw_tls_certificate_expiry_timestamp_seconds",
                "notAfter of our TLS certificates in use: ca, node, admin (unix time).",
                ("certificate",),
            )
        )
        self.alerts_open = f.add(
            r.collected("mragw_alerts_open", "Alerts open (not cleared), by kind.", ("kind",))
        )
        self.alerts_raised = f.add(
            r.collected(
                "mragw_alerts_raised_total",
                "Alerts ever raised on this node's database, by kind (cleared ones included).",
                ("kind",),
                kind="counter",
            )
        )
        metrics.add_collector(self.collect)

    # -- the collection ---------------------------------------------------------------------

    async def collect(self) -> None:
        """Refresh every family; never raises (a failure is exported and logged)."""
        if self._lock.locked():
            # A collection is under way: its figures are as fresh as ours would be.
            async with self._lock:
                return
        async with self._lock:
            started = time.perf_counter()
            try:
                snapshot = await self._read()
                self._export(snapshot, self.clock())
            except asyncio.CancelledError:
                raise
            except Exception as error:
                for family in self._families.all:
                    family.clear()
                self.up.replace({(): 0})
                if not self._failing:
                    log.warning("node metrics: cannot read the node's state: %s", error)
                self._failing = True
            else:
                self.up.replace({(): 1})
                if self._failing:
                    log.info("node metrics: the node's state is readable again")
                self._failing = False
            self.collect_seconds.replace({(): time.perf_counter() - started})

    async def _read(self) -> _Snapshot:
        # Per log, the largest checkpoint size a witness exchange showed us beyond our replica
        # (rows go once the replica reaches it) and the entries still awaiting their signature
        # check (index ix_entries_sig_state: the cost is the size of that backlog).
        seen = (
            select(witnessed.c.log, func.max(witnessed.c.size).label("seen"))
            .group_by(witnessed.c.log)
            .subquery()
        )
        pending = (
            select(entries.c.log, func.count().label("unverified"))
            .where(entries.c.sig_state == "unverified")
            .group_by(entries.c.log)
            .subquery()
        )
        heads = (
            select(
                logs.c.code,
                logs.c.own,
                logs.c.size,
                logs.c.checkpoint_size,
                logs.c.verified_at,
                logs.c.received_at,
                partners.c.code.label("partner"),
                partners.c.root_fingerprint,
                partners.c.trust_version,
                partners.c.bundle,
                partners.c.suspended,
                partners.c.quarantined,
                partners.c.added_at,
                seen.c.seen,
                pending.c.unverified,
            )
            .select_from(
                logs.outerjoin(partners, partners.c.code == logs.c.code)
                .outerjoin(seen, seen.c.log == logs.c.code)
                .outerjoin(pending, pending.c.log == logs.c.code)
            )
            .where(logs.c.own.is_(True) | partners.c.code.is_not(None))
            .order_by(logs.c.code)
        )
        counts = select(alerts.c.kind, alerts.c.cleared, func.count()).group_by(
            alerts.c.kind, alerts.c.cleared
        )
        async with self.node.engine.connect() as conn:
            rows = (await conn.execute(heads)).all()
            alert_counts = [
                (str(k), bool(c), int(n)) for k, c, n in (await conn.execute(counts)).all()
            ]
            statement = await self.node.trust_statement(conn)
        own = next((r for r in rows if r.own and r.code == self.node.admin), None)
        if own is None:
            raise GatewayError(f"no log row for our own log {self.node.admin}")
        return _Snapshot(own, [r for r in rows if not r.own], alert_counts, statement)

    def _export(self, snap: _Snapshot, now: float) -> None:
        own = snap.own
        self.info.replace({(self.node.admin,): 1})
        self.log_entries.replace({(): int(own.size)})
        self.checkpoint_age.replace(
            {(): max(now - float(own.verified_at), 0.0)} if own.verified_at else {}
        )
        self.trust_expiry.replace({(): snap.statement.expires.timestamp()})
        self.key_expiry.replace(
            {
                (k.key_id,): k.valid_until.timestamp()
                for k in snap.statement.signing_keys
                if k.valid_until is not None
            }
        )
        self.cert_expiry.replace(self._certificates())
        self._export_partners(snap.partners, now)
        self._export_alerts(snap.alert_counts)

    def _export_partners(self, rows: list[Any], now: float) -> None:
        out: dict[str, dict[LabelValues, float]] = {
            name: {}
            for name in (
                "entries",
                "received",
                "batches",
                "rejected",
                "lag_entries",
                "lag_seconds",
                "age",
                "connected",
                "quarantined",
                "suspended",
                "trust",
            )
        }
        expiries: dict[tuple[str, str, int, bytes], float | None] = {}
        for row in rows:
            code = str(row.code)
            key = (code,)
            size = int(row.size or 0)
            out["entries"][key] = size
            lag = replication_lag(
                max(int(row.checkpoint_size or 0), int(row.seen or 0)),
                size,
                int(row.unverified or 0),
                row.verified_at,
                now,
            )
            out["lag_entries"][key] = lag.entries
            since = lag.seconds if lag.seconds is not None else now - float(row.added_at)
            out["lag_seconds"][key] = max(since, 0.0)
            if row.received_at:
                out["age"][key] = max(now - float(row.received_at), 0.0)
            out["quarantined"][key] = 1 if row.quarantined else 0
            out["suspended"][key] = 1 if row.suspended else 0
            status = self.replicators(code) if self.replicators is not None else None
            out["connected"][key] = 1 if status is not None and status.connected else 0
            out["received"][key] = status.entries if status is not None else 0
            out["batches"][key] = status.batches if status is not None else 0
            if status is not None:
                for kind, count in status.faults.items():
                    reason = (code, rejection_reason(kind))
                    out["rejected"][reason] = out["rejected"].get(reason, 0) + count
            expires, cache_key = self._partner_trust_expiry(row)
            expiries[cache_key] = expires
            if expires is not None:
                out["trust"][key] = expires
        # Only the current partners' statements stay cached.
        self._partner_expiry = expiries
        self.partner_entries.replace(out["entries"])
        self.received.replace(out["received"])
        self.batches.replace(out["batches"])
        self.rejected.replace(out["rejected"])
        self.lag_entries.replace(out["lag_entries"])
        self.lag_seconds.replace(out["lag_seconds"])
        self.partner_checkpoint_age.replace(out["age"])
        self.connected.replace(out["connected"])
        self.quarantined.replace(out["quarantined"])
        self.suspended.replace(out["suspended"])
        self.partner_trust_expiry.replace(out["trust"])

    def _partner_trust_expiry(self, row: Any) -> tuple[float | None, tuple[str, str, int, bytes]]:
        """The expiry of the partner's stored statement; its chain is verified again only
        when the stored bundle changed (that verification is the costly part)."""
        bundle = bytes(row.bundle)
        key = (
            str(row.code),
            str(row.root_fingerprint),
            int(row.trust_version),
            hashlib.sha256(bundle).digest(),
        )
        if key in self._partner_expiry:
            return self._partner_expiry[key], key
        try:
            expires: float | None = partner_statement(row).expires.timestamp()
        except GatewayError as error:
            # Status reports the broken chain; here the series is simply absent.
            log.debug("node metrics: statement of %s does not verify: %s", row.code, error)
            expires = None
        return expires, key

    def _certificates(self) -> dict[LabelValues, float]:
        out: dict[LabelValues, float] = {}
        for name in CERTIFICATES:
            try:
                pem = self.node.tls_bytes(f"{name}.pem")
            except FileNotFoundError:
                continue
            digest = hashlib.sha256(pem).digest()
            cached = self._cert_expiry.get(name)
            if cached is None or cached[0] != digest:
                cached = (digest, load_certificate(pem).not_valid_after_utc.timestamp())
                self._cert_expiry[name] = cached
            out[(name,)] = cached[1]
        return out

    def _export_alerts(self, counts: list[tuple[str, bool, int]]) -> None:
        # Every known kind is exported, at 0 when none: an alerting rule on a series that
        # does not exist yet never fires.
        open_: dict[LabelValues, float] = {(k,): 0 for k in ALERT_KINDS}
        raised: dict[LabelValues, float] = {(k,): 0 for k in ALERT_KINDS}
        for kind, cleared, n in counts:
            label = (alert_kind(kind),)
            raised[label] = raised.get(label, 0) + n
            if not cleared:
                open_[label] = open_.get(label, 0) + n
        self.alerts_open.replace(open_)
        self.alerts_raised.replace(raised)

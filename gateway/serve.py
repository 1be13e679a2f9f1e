"""``mragw serve``: wire the domain handlers, servicers, replicators and jobs into one process.

Background work of a running gateway:
- the replication manager: one replicator per pinned, active partner;
- the log watcher: wakes live-tail subscribers when the log grows (also from other processes);
- the disclosure job: at start, after partner or dataset changes, and daily;
- witness gossip: cosigned checkpoints exchanged with each partner every
  ``trust.witness_interval_s`` (split-view detection, see :mod:`gateway.witness`).

Several replicas of one administration may share the database (gateway.cluster). The lease
keeper registers this replica and holds leases: each partner's replicator runs only in the
replica holding ``replication:<code>``, and the jobs that must run once per administration
(``ONCE_PER_ADMINISTRATION``) only under ``job:<name>``. The log watcher, the partner refresh
loop, HTTP, metrics and every RPC run in every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select

from gateway.clients import QueryAuditTrail
from gateway.cluster import (
    LeaseKeeper,
    ReplicaAddress,
    default_replica_name,
    job_lease,
    run_while_held,
    validate_replica_name,
)
from gateway.config import build_config, config_document
from gateway.disclosure import disclose
from gateway.exchange import ExchangeHandler, LogWatcher
from gateway.issuer_log import IssuerLog
from gateway.node import Node
from gateway.query import Checker
from gateway.replicator import GrpcTransport, ReplicationManager, Transport
from gateway.server.app import GatewayServer
from gateway.server.identity import current_local_peer, current_partner
from gateway.server.metrics import GatewayMetrics
from gateway.server.node_metrics import NodeMetrics
from gateway.server.tls import partner_channel
from gateway.services.admin_service import AdminServicer
from gateway.services.exchange_service import ExchangeServicer
from gateway.services.query_service import QueryServicer
from gateway.signatures import close_verifier_pool
from gateway.signing_pool import close_shared_pool
from gateway.status import node_status
from gateway.storage.changes import ChangeProbe
from gateway.storage.database import ping
from gateway.storage.schema import node_state
from gateway.watchdog import raise_due_alerts
from gateway.witness_gossip import WitnessGossip

log = logging.getLogger("mragw.serve")

Job = Callable[[], Coroutine[Any, Any, None]]

KEY_SCHEDULE_PERIOD_S = 1.0
#: Longest the key schedule goes without reading the trust statement.
KEY_SCHEDULE_RECHECK_S = 60.0
#: Seconds between looks for expiring keys, certificates, statements and silent partners.
ALERT_CHECK_PERIOD_S = 60.0
DISCLOSURE_PERIOD_S = 24 * 3600.0
#: Background jobs that run in one replica at a time, each under lease ``job:<name>``:
#: disclosure and key-schedule append to or re-sign our log (done twice they would race for
#: the head and, for disclosure, could re-publish the same record twice); alerts would be
#: raised twice; witness gossip would double the cosigning traffic to every partner.
ONCE_PER_ADMINISTRATION = ("disclosure", "key-schedule", "alerts", "witness")


def with_overrides(node: Node, overrides: Mapping[str, str]) -> Node:
    """The node with ``serve``'s listener flags applied, validated like any other input."""
    if not overrides:
        return node
    document = config_document(node.config)
    document["server"].update(overrides)
    return Node(build_config(node.config.home, document, {}))


class Gateway:
    """One administration's running gateway (in this process)."""

    def __init__(self, node: Node, replica_name: str | None = None) -> None:
        """``replica_name``: this replica's name among the replicas sharing the database
        (validated; default ``<hostname>-<pid>``)."""
        self.node = node
        self.replica_name = validate_replica_name(replica_name or default_replica_name())
        self.keeper = LeaseKeeper(
            node.engine,
            self.replica_name,
            node.config.cluster.takeover_s,
            address=self._address,
            jobs=ONCE_PER_ADMINISTRATION,
        )
        self.watcher = LogWatcher(
            node.engine, node.admin, min(0.1, node.config.replication.poll_interval_s)
        )
        self.draining = asyncio.Event()
        self.exchange = ExchangeHandler(
            node, self.watcher, stopping=self.draining, authorise=self._may_read
        )
        self.checker = Checker.for_node(node)
        self.replication = ReplicationManager(
            node, self.open_transport, on_applied=self.checker.notify, leases=self.keeper
        )
        metrics = GatewayMetrics()
        # Read from the database and the replicators on each /metrics scrape.
        self.node_metrics = NodeMetrics(node, metrics, self.replication.status)
        self.witness = WitnessGossip(node, metrics)
        self.server = GatewayServer(
            node,
            exchange=ExchangeServicer(self.exchange, self._partner_code, metrics=metrics),
            query=QueryServicer(self.checker, audit=QueryAuditTrail(node)),
            admin=AdminServicer(node, self._actor, self.status, on_publish=self._published),
            status=self.status,
            background={
                "leases": self.keeper.run,
                "log-watcher": self.watcher.run,
                "replication": self.replication.run,
                **self._once_per_administration(
                    {
                        "disclosure": self.disclosure_job,
                        "key-schedule": self.key_schedule_job,
                        "alerts": self.alert_job,
                        "witness": self.witness.run,
                    }
                ),
                "drain-follower": self._follow_draining,
            },
            metrics=metrics,
            replica=self.replica_name,
        )

    def _once_per_administration(self, jobs: Mapping[str, Job]) -> dict[str, Job]:
        """Each job wrapped to run only while this replica holds its ``job:<name>`` lease."""
        return {
            name: functools.partial(run_while_held, self.keeper, job_lease(name), job)
            for name, job in jobs.items()
        }

    def _address(self) -> ReplicaAddress:
        """Where this replica listens, for the ``replicas`` table (empty before start)."""
        if self.server.serving:
            listeners = self.server.listeners
            return ReplicaAddress(listeners.partner, listeners.admin_target, listeners.http_url)
        return ReplicaAddress()

    def _may_read(self, code: str) -> str | None:
        """Re-checked before every batch of an open stream (the call's check is long past)."""
        partner = self.server.partners.current.get(code)
        if partner is None:
            return f"partner {code} is no longer pinned here"
        if partner.suspended:
            return f"partner {code} is suspended"
        return None

    @staticmethod
    async def _partner_code(_context: Any) -> str:
        return current_partner().code

    @staticmethod
    async def _actor(_context: Any) -> str:
        return current_local_peer().actor

    async def _published(self) -> None:
        await self.watcher.notify()
        self.checker.notify()

    def _connected(self, code: str) -> bool:
        status = self.replication.status(code)
        return bool(status and status.connected)

    async def status(self) -> dict[str, Any]:
        return await node_status(
            self.node,
            self._connected,
            self.server.listeners.http_url if self.server.serving else None,
            trust_problem=self._trust_problem,
            recent_faults=self._recent_faults,
            replica=self.replica_name,
        )

    def _recent_faults(self, code: str) -> list[tuple[float, str, str]]:
        status = self.replication.status(code)
        return list(status.recent_faults) if status is not None else []

    def _trust_problem(self, code: str) -> str | None:
        status = self.replication.status(code)
        if status is None:
            return None
        if status.trust_rejected:
            return f"refused a trust statement update: {status.trust_rejected}"
        error = status.last_error or ""
        return error if error.startswith(("trust_expired", "key_window")) else None

    @asynccontextmanager
    async def open_transport(self, row: Any) -> AsyncIterator[Transport]:
        channel = partner_channel(self.node, row.code, row.endpoint, row.ca_pem)
        try:
            yield GrpcTransport(channel, batch_entries=self.node.config.limits.batch_entries)
        finally:
            await channel.close(None)

    async def disclosure_job(self) -> None:
        """Disclose at start, whenever partners or the dataset change, and once a day."""
        seen: tuple[int, int] | None = None
        last_run = 0.0
        loop = asyncio.get_running_loop()
        probe = ChangeProbe(self.node.engine)
        try:
            while True:
                due = loop.time() - last_run > DISCLOSURE_PERIOD_S
                if probe.changed() or due or seen is None:
                    async with self.node.engine.connect() as conn:
                        result = await conn.execute(select(node_state.c.key, node_state.c.value))
                        rows = {str(key): int(value) for key, value in result}
                    current = (int(rows.get("partners", 0)), int(rows.get("dataset", 0)))
                    if current != seen or due:
                        seen, last_run = current, loop.time()
                        try:
                            appended = await disclose(self.node, actor="disclosure-job")
                        except Exception:  # a failed run must not stop the gateway; retried
                            log.exception("disclosure job failed")
                            seen = None
                        else:
                            if appended:
                                await self._published()
                await asyncio.sleep(self.node.config.replication.poll_interval_s)
        finally:
            probe.close()

    async def key_schedule_job(self) -> None:
        """Re-sign our head checkpoint when a rotation reaches its switch time or a key's
        window ends, so partners never receive a head signed only by a retired key.

        Looks again when the database changed (a rotation or revocation committed) or when
        the next window boundary of a published key is reached; otherwise it costs a probe
        per second, not a statement read (idle CPU)."""
        log_ = IssuerLog(self.node)
        probe = ChangeProbe(self.node.engine)
        next_boundary = 0.0
        try:
            while True:
                if probe.changed() or time.time() >= next_boundary:
                    try:
                        if await log_.resign_head():
                            await self._published()
                        next_boundary = await self._next_key_boundary()
                    except Exception:  # retried next round; a failure must not stop the gateway
                        log.exception("re-signing the head checkpoint failed")
                        next_boundary = 0.0
                await asyncio.sleep(KEY_SCHEDULE_PERIOD_S)
        finally:
            probe.close()

    async def alert_job(self) -> None:
        """Open the alerts that are due (expiry within the warning period, silent partners):
        at start, then every ALERT_CHECK_PERIOD_S (days-ahead warnings need no more)."""
        while True:
            try:
                await raise_due_alerts(self.node)
            except Exception:  # retried next round; a failure must not stop the gateway
                log.exception("checking for due alerts failed")
            await asyncio.sleep(ALERT_CHECK_PERIOD_S)

    async def _next_key_boundary(self) -> float:
        """When the set of keys that may sign next changes: the nearest future start or end of
        a published key's window (at most KEY_SCHEDULE_RECHECK_S away, as a safety net)."""
        now = time.time()
        async with self.node.engine.connect() as conn:
            statement = await self.node.trust_statement(conn)
        moments = [
            m.timestamp()
            for k in statement.signing_keys
            for m in (k.valid_from, k.valid_until)
            if m is not None and m.timestamp() > now
        ]
        return min([*moments, now + KEY_SCHEDULE_RECHECK_S])

    async def _follow_draining(self) -> None:
        """Live tails end cleanly as soon as the server starts draining."""
        await self.server.draining.wait()
        self.draining.set()

    async def run(self) -> None:
        await ping(self.node.engine)
        # Before any listener binds: a second live replica of this name is refused here.
        await self.keeper.claim()
        # Everything loaded so far (modules, the registry index, ORM metadata: ~100,000
        # objects) lives as long as the process; frozen, the cyclic collector stops scanning
        # it on every full collection, which took a fifth of a CheckMany's time.
        gc.collect()
        gc.freeze()
        try:
            await self.server.run()
        finally:
            self.checker.close()
            # Signing and verification workers stop with the server, not at interpreter exit.
            close_shared_pool()
            close_verifier_pool()


async def run_gateway(
    home: Path, overrides: Mapping[str, str], replica_name: str | None = None
) -> None:
    """Serve until stopped. Logging is the caller's (``mragw serve`` uses gateway.logs)."""
    if replica_name is not None:
        validate_replica_name(replica_name)  # before opening anything
    node = with_overrides(Node.open(home), overrides)
    gateway = Gateway(node, replica_name)
    try:
        await gateway.run()
    finally:
        with contextlib.suppress(Exception):
            await node.close()

"""``GatewayServer``: the two gRPC listeners, the HTTP listener, and their life cycle.

- Partner listener (``server.listen``, mTLS with partner CAs): ExchangeService, health,
  reflection. Interceptors, outermost first: metrics, partner identity, per-partner limits,
  malformed-request refusal (INVALID_ARGUMENT instead of gRPC's INTERNAL).
- Admin listener (``server.admin_listen``, loopback by default, mTLS with the node's own CA):
  QueryService + AdminService, health, reflection. Interceptors: metrics, local identity + role,
  malformed-request refusal.
- HTTP listener (``server.http_listen``): ``/metrics``, ``/healthz``, status page; off loopback
  HTTPS requiring an admin client certificate of our own CA (ADR 0013).
- A refresh loop polls ``node_state`` every ``replication.poll_interval_s`` and reloads the
  pinned-partner snapshot when partners changed, so ``mragw partner add|remove|suspend`` run
  against the database reach a running gateway within a second, without a restart.

The servicers are constructor arguments: this module knows nothing of what they do. A servicer
gets its caller from :func:`gateway.server.identity.current_partner` /
:func:`~gateway.server.identity.current_local_peer`.

Shutdown (SIGTERM / SIGINT, or :meth:`GatewayServer.stop`), in order:
  1. ``draining`` is set and health turns NOT_SERVING on both listeners (and ``/healthz`` 503),
     so load balancers and ``mragw health`` stop sending work; long-lived streams (Subscribe's
     live tail, Watch) should watch ``draining`` and end cleanly;
  2. both gRPC servers stop accepting calls and give running ones ``server.shutdown_grace_s``
     to finish (``server.stop(grace)``), then cancel what is left;
  3. the refresh loop and background tasks are cancelled and awaited;
  4. the HTTP listener closes, the runtime file is removed, the database engine is disposed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.clients import Revocations
from gateway.config import parse_hostport
from gateway.errors import InputError
from gateway.node import Node
from gateway.server.guard import MalformedRequestInterceptor
from gateway.server.http import StatusHttpServer, StatusSource, is_loopback_host, reader_check
from gateway.server.identity import (
    ADMIN_LISTENER,
    DEFAULT_ROLES,
    PARTNER_LISTENER,
    LocalIdentityInterceptor,
    PartnerIdentityInterceptor,
    PartnerPeer,
    current_peer_or_none,
)
from gateway.server.limits import PartnerLimiter, PartnerLimitInterceptor
from gateway.server.logcontext import CallLogContextInterceptor
from gateway.server.metrics import GatewayMetrics, RpcMetricsInterceptor
from gateway.server.pinned import PinnedPartnerStore
from gateway.server.runtime import RuntimeInfo, remove_runtime, write_runtime
from gateway.server.tls import (
    HttpServerTls,
    admin_server_credentials,
    partner_server_credentials,
    server_options,
)
from gateway.status import recognition_graph_svg
from gateway.storage.changes import ChangeProbe
from mra.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    exchange_pb2,
    exchange_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)

log = logging.getLogger(__name__)

# grpc-stubs do not describe grpc_health's asyncio servicer.
_HealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]

BackgroundTask = Callable[[], Coroutine[Any, Any, None]]

EXCHANGE_SERVICE = exchange_pb2.DESCRIPTOR.services_by_name["ExchangeService"].full_name
QUERY_SERVICE = query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
#: Seconds between looks at our CA files for a TLS rotation (see ``_own_cas``).
OWN_CA_RECHECK_S = 1.0


class ListenError(InputError):
    """A listener could not bind; the message names the config key and address."""


@dataclass(frozen=True)
class Listeners:
    """Where the running gateway listens (actual ports, also when configured as 0)."""

    partner: str
    admin: str
    admin_target: str
    http_url: str


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dialable(host: str) -> str:
    return "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host  # noqa: S104


class GatewayServer:
    """Builds and runs a gateway's listeners around servicers provided by the caller."""

    def __init__(
        self,
        node: Node,
        *,
        exchange: exchange_pb2_grpc.ExchangeServiceServicer,
        query: query_pb2_grpc.QueryServiceServicer,
        admin: admin_pb2_grpc.AdminServiceServicer,
        status: StatusSource | None = None,
        background: Mapping[str, BackgroundTask] | None = None,
        metrics: GatewayMetrics | None = None,
        roles: Mapping[str, frozenset[str]] = DEFAULT_ROLES,
        close_node: bool = True,
        replica: str = "",
    ) -> None:
        """
        ``status`` feeds the HTTP status page (the ``mragw status --json`` document);
        ``background`` maps a name to a coroutine factory started once the listeners are up
        and cancelled at shutdown (replicators, verifier, disclosure job); ``close_node``
        disposes the node's database engine at shutdown.
        """
        self.node = node
        self.config = node.config
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        self.partners = PinnedPartnerStore(node.admin)
        # Revoked local clients (``mragw clients revoke``), refreshed with the partners.
        self.revocations = Revocations()
        self.limiter = PartnerLimiter(self.config.limits)
        # Set when shutdown begins; long-lived streams should end when it is set.
        self.draining = asyncio.Event()
        self._exchange = exchange
        self._query = query
        self._admin = admin
        self._status = status
        self._own_cas_cache: tuple[tuple[Any, ...], list[Any]] | None = None
        self._own_cas_checked = 0.0
        self._background_factories = dict(background or {})
        self._roles = roles
        self._close_node = close_node
        # Names this replica's runtime file (gateway.cluster); "" writes run/serve.json.
        self.replica = replica
        self._partner_server: grpc.aio.Server | None = None
        self._admin_server: grpc.aio.Server | None = None
        self._partner_health = _HealthServicer()
        self._admin_health = _HealthServicer()
        self._http: StatusHttpServer | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._listeners: Listeners | None = None
        self._stop_requested = asyncio.Event()
        self._stopping: asyncio.Task[None] | None = None
        self._pid = os.getpid()

    # -- public ----------------------------------------------------------------------------

    @property
    def listeners(self) -> Listeners:
        if self._listeners is None:
            raise RuntimeError("the gateway is not started")
        return self._listeners

    @property
    def serving(self) -> bool:
        return self._listeners is not None and not self.draining.is_set()

    async def start(self) -> Listeners:
        """Load partners, bind and start every listener, start background work."""
        if self._listeners is not None:
            raise RuntimeError("the gateway is already started")
        try:
            # Fails start-up if the database is unreachable: serving without knowing who the
            # partners are would refuse everyone anyway.
            await self.partners.refresh(self.node.engine, force=True)
            await self.revocations.refresh(self.node.engine, force=True)
            self._after_refresh()
            partner_addr = await self._start_partner_server()
            admin_addr = await self._start_admin_server()
            http_host, _ = parse_hostport(self.config.server.http_listen, "server.http_listen")
            # Off loopback: HTTPS, admin client certificates of our own CA only (ADR 0013).
            off_loopback = not is_loopback_host(http_host)
            self._http = StatusHttpServer(
                self.config.server.http_listen,
                metrics=self.metrics,
                healthy=lambda: self.serving,
                status=self._status,
                graph=functools.partial(recognition_graph_svg, self.node),
                tls=HttpServerTls(self.node).context if off_loopback else None,
                peer_check=(
                    reader_check(self._own_cas, self.node.admin, revoked=self.revocations.revoked)
                    if off_loopback
                    else None
                ),
            )
            try:
                await self._http.start()
            except OSError as error:
                raise ListenError(
                    f"server.http_listen: cannot listen on {self.config.server.http_listen}: "
                    f"{error.strerror or error}"
                ) from error
        except BaseException:
            await self._abort_start()
            raise
        admin_host, admin_port = parse_hostport(admin_addr, "server.admin_listen")
        self._listeners = Listeners(
            partner=partner_addr,
            admin=admin_addr,
            admin_target=_hostport(_dialable(admin_host), admin_port),
            http_url=self._http.url,
        )
        for service in ("", EXCHANGE_SERVICE):
            await self._partner_health.set(service, health_pb2.HealthCheckResponse.SERVING)
        for service in ("", QUERY_SERVICE, ADMIN_SERVICE):
            await self._admin_health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._tasks["refresh"] = asyncio.create_task(self._refresh_loop(), name="mragw-refresh")
        for name, factory in self._background_factories.items():
            task = asyncio.create_task(factory(), name=f"mragw-{name}")
            task.add_done_callback(self._background_done)
            self._tasks[name] = task
        write_runtime(
            self.config.home,
            RuntimeInfo(
                pid=self._pid,
                admin=self.node.admin,
                started_at=dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds"),
                listen=self._listeners.partner,
                admin_listen=self._listeners.admin,
                admin_target=self._listeners.admin_target,
                http_url=self._listeners.http_url,
                replica=self.replica,
            ),
        )
        log.info(
            "serving %s: partners on %s, admin on %s, http on %s",
            self.node.admin,
            self._listeners.partner,
            self._listeners.admin,
            self._listeners.http_url,
        )
        return self._listeners

    async def refresh_partners(self) -> bool:
        """Reload the pinned partners now (an AdminService change need not wait for the poll)."""
        changed = await self.partners.refresh(self.node.engine, force=True)
        self._after_refresh()
        return changed

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down (what SIGTERM / SIGINT do)."""
        self._stop_requested.set()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown (see the module docstring); safe to call more than once."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._shutdown(grace), name="mragw-shutdown")
        await asyncio.shield(self._stopping)

    async def run(self) -> None:
        """Start, serve until SIGTERM / SIGINT (or :meth:`request_stop`), then stop."""
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        # Installed before start: a SIGTERM while starting still means "stop", cleanly.
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Not possible off the main thread or on Windows; then request_stop() is the way.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
        try:
            await self.start()
            await self._stop_requested.wait()
        finally:
            try:
                if self._listeners is not None:
                    await self.stop()
            finally:
                for sig in installed:
                    loop.remove_signal_handler(sig)

    # -- listeners ---------------------------------------------------------------------------

    def _server(self, listener: str, interceptors: list[Any]) -> grpc.aio.Server:
        # Innermost: undecodable request bytes become INVALID_ARGUMENT after identity and
        # limits ran, so they are attributed to an authenticated caller.
        malformed = MalformedRequestInterceptor(functools.partial(self._malformed, listener))
        return grpc.aio.server(
            interceptors=[*interceptors, malformed], options=server_options(self.config.limits)
        )

    async def _malformed(
        self,
        listener: str,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        error: Exception,
    ) -> None:
        peer = current_peer_or_none()
        who = "" if not isinstance(peer, PartnerPeer) else peer.code
        self.metrics.rpc_rejected.inc(listener, "malformed", who)
        log.warning(
            "%s listener: malformed %s request from %s: %s",
            listener,
            method,
            peer.actor if peer is not None else context.peer(),
            error,
        )
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {method} request")

    def _bind(
        self, server: grpc.aio.Server, address: str, key: str, creds: grpc.ServerCredentials
    ) -> str:
        host, _ = parse_hostport(address, key)
        try:
            port = server.add_secure_port(address, creds)
        except RuntimeError as error:
            raise ListenError(f"{key}: cannot listen on {address}: {error}") from error
        if port == 0:
            raise ListenError(f"{key}: cannot listen on {address}")
        return _hostport(host, port)

    async def _start_partner_server(self) -> str:
        server = self._server(
            PARTNER_LISTENER,
            [
                RpcMetricsInterceptor(self.metrics, PARTNER_LISTENER),
                CallLogContextInterceptor(PartnerIdentityInterceptor(self.partners, self.metrics)),
                PartnerLimitInterceptor(self.limiter, self.metrics),
            ],
        )
        self._partner_server = server
        exchange_pb2_grpc.add_ExchangeServiceServicer_to_server(self._exchange, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._partner_health, server)
        reflection.enable_server_reflection(
            [EXCHANGE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        address = self._bind(
            server,
            self.config.server.listen,
            "server.listen",
            partner_server_credentials(self.node, self.partners),
        )
        await server.start()
        return address

    def _own_cas(self) -> list[Any]:
        """Our CA certificates, re-read when a TLS rotation adds or retires one.

        Called on every admin call, so the files are looked at (stat) at most once per
        OWN_CA_RECHECK_S: a TLS switch is scheduled minutes ahead and both CAs are accepted
        across it, so a second's delay in noticing changes nothing."""
        now = time.monotonic()
        if self._own_cas_cache is not None and now < self._own_cas_checked + OWN_CA_RECHECK_S:
            return self._own_cas_cache[1]
        self._own_cas_checked = now
        key = self.node.own_ca_stamp()
        if self._own_cas_cache is None or self._own_cas_cache[0] != key:
            self._own_cas_cache = (key, self.node.own_ca_certificates())
        return self._own_cas_cache[1]

    async def _start_admin_server(self) -> str:
        server = self._server(
            ADMIN_LISTENER,
            [
                RpcMetricsInterceptor(self.metrics, ADMIN_LISTENER),
                CallLogContextInterceptor(
                    LocalIdentityInterceptor(
                        self._own_cas,
                        self.node.admin,
                        self.metrics,
                        roles=self._roles,
                        revoked=self.revocations.revoked,
                    )
                ),
            ],
        )
        self._admin_server = server
        query_pb2_grpc.add_QueryServiceServicer_to_server(self._query, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(self._admin, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._admin_health, server)
        reflection.enable_server_reflection(
            [QUERY_SERVICE, ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        address = self._bind(
            server,
            self.config.server.admin_listen,
            "server.admin_listen",
            admin_server_credentials(self.node),
        )
        await server.start()
        return address

    async def _abort_start(self) -> None:
        for server in (self._partner_server, self._admin_server):
            if server is not None:
                await server.stop(None)
        if self._http is not None:
            await self._http.close()
        if self._close_node:
            await self.node.close()

    # -- background work -----------------------------------------------------------------

    def _after_refresh(self) -> None:
        current = self.partners.current
        self.metrics.pinned_partners.set(len(current.partners))
        self.limiter.forget(set(current.partners))

    async def _refresh_loop(self) -> None:
        interval = self.config.replication.poll_interval_s
        failing = False
        probe = ChangeProbe(self.node.engine)
        try:
            await self._refresh_while(probe, interval, failing)
        finally:
            probe.close()

    async def _refresh_while(self, probe: ChangeProbe, interval: float, failing: bool) -> None:
        while True:
            await asyncio.sleep(interval)
            if not failing and not probe.changed():
                continue  # nothing committed since the last look: the snapshot is current
            try:
                changed = await self.partners.refresh(self.node.engine)
                await self.revocations.refresh(self.node.engine)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.metrics.trust_refreshes.inc("error")
                if not failing:
                    # Keep serving with the last snapshot; log once per failure streak.
                    log.warning("partner refresh failed, keeping the last snapshot: %s", error)
                failing = True
                continue
            if failing:
                log.info("partner refresh works again")
            failing = False
            if changed:
                self.metrics.trust_refreshes.inc("changed")
                self._after_refresh()

    def _background_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            name = task.get_name().removeprefix("mragw-")
            self.metrics.background_failures.inc(name)
            log.error("background task %s failed", name, exc_info=error)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stop_requested.is_set():
            log.warning("%s again: shutdown is already under way", sig.name)
            return
        log.info("%s: shutting down (grace %.1fs)", sig.name, self.config.server.shutdown_grace_s)
        self._stop_requested.set()

    async def _shutdown(self, grace: float | None) -> None:
        grace = self.config.server.shutdown_grace_s if grace is None else grace
        # 1. Stop attracting work.
        self.draining.set()
        self._stop_requested.set()
        await self._partner_health.enter_graceful_shutdown()
        await self._admin_health.enter_graceful_shutdown()
        # 2. Refuse new calls; running ones get the grace period.
        servers = [s for s in (self._partner_server, self._admin_server) if s is not None]
        await asyncio.gather(*(s.stop(grace) for s in servers))
        # 3. Background work.
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                log.debug("task %s ended with %r", task.get_name(), result)
        # 4. The rest.
        if self._http is not None:
            await self._http.close()
        remove_runtime(self.config.home, self._pid, self.replica)
        if self._close_node:
            await self.node.close()
        log.info("%s stopped", self.node.admin)

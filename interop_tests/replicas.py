"""Several replicas of one administration, each a real ``mragw serve`` on its own "host".

An administration scaled out on PostgreSQL (the scale-out issue): every replica runs in its own
network namespace (a :class:`~interop_tests.harness.Host` of the shared
:class:`~interop_tests.harness.Network`) and all of them share one node home (keys, config:
one directory, as a shared volume would be) whose database is a fresh database on the
PostgreSQL test server. That server listens on 127.0.0.1 of the root namespace only, so a
:class:`Forwarder` in this (root) process listens on the bridge's address ``<subnet>.1`` and
forwards to it; the home is initialised with ``--db`` naming the forwarder.

Each replica is started with ``--replica-name rN --listen <its addr>:7443 --admin-listen
<its addr>:7444``; the test (root namespace) drives it with ``--target <its addr>:7444``.
Partners dial the administration at one endpoint: a round-robin :class:`Forwarder` over the
replicas' partner listeners (a new connection goes to the next replica that accepts it), as a
TCP load balancer in front of the replicas would; it records which replica served each
connection.

Environment (as the other interop tests): ``MRAGW_TEST_PG_DSN`` names the PostgreSQL test
server; without it the tests skip, or fail when ``MRAGW_REQUIRE_PG=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from interop_tests.harness import MRAGW, PORT, SPEED_ENV, HarnessError, Host, Network

T = TypeVar("T")

ADMIN_PORT = 7444
PG_FORWARD_PORT = 15432
PARTNER_BALANCER_PORT = 17443


def postgres_dsn() -> str:
    """The PostgreSQL test server's URL, or skip (fail under ``MRAGW_REQUIRE_PG=1``)."""
    dsn = os.environ.get("MRAGW_TEST_PG_DSN", "")
    if dsn:
        return dsn
    if os.environ.get("MRAGW_REQUIRE_PG") == "1":
        pytest.fail("MRAGW_REQUIRE_PG=1 but MRAGW_TEST_PG_DSN is not set")
    pytest.skip("no PostgreSQL server (set MRAGW_TEST_PG_DSN; CI always does)")


# -- PostgreSQL, read directly by the test -----------------------------------------------------


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class PgDatabase:
    """A fresh database on the test server, created for one test and dropped after it."""

    def __init__(self, dsn: str) -> None:
        self.server = make_url(dsn)
        self.name = f"mragw_{uuid.uuid4().hex[:12]}"

    async def _connect(self, database: str) -> asyncpg.Connection:
        url = self.server
        conn: asyncpg.Connection = await asyncpg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            database=database,
        )
        return conn

    def create(self) -> None:
        async def body() -> None:
            conn = await self._connect(self.server.database or "postgres")
            try:
                await conn.execute(f'CREATE DATABASE "{self.name}"')
            finally:
                await conn.close()

        _run(body())

    def drop(self) -> None:
        """Drop it (every replica is gone by now; ``FORCE`` ends a straggling session)."""

        async def body() -> None:
            conn = await self._connect(self.server.database or "postgres")
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            finally:
                await conn.close()

        _run(body())

    def url_via(self, host: str, port: int) -> str:
        """The URL a replica uses: this database through the forwarder at ``host:port``."""
        return self.server.set(host=host, port=port, database=self.name).render_as_string(
            hide_password=False
        )

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of one read (``$1``-style parameters), straight from the server."""

        async def body() -> list[tuple[Any, ...]]:
            conn = await self._connect(self.name)
            try:
                return [tuple(r) for r in await conn.fetch(sql, *params)]
            finally:
                await conn.close()

        return _run(body())


# -- a TCP forwarder / round-robin balancer in this process ------------------------------------


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


@dataclass
class Forwarded:
    """One forwarded connection: which target served it, and the bytes each way so far."""

    number: int
    target: str
    opened_at: float
    up: int = 0  # client -> target
    down: int = 0  # target -> client


class Forwarder:
    """Accept on ``listen``; forward each connection to the next target (round robin) that
    accepts it. Runs an event loop on a thread of this (root namespace) process; every
    connection is recorded in :attr:`served`. :meth:`drop_all` resets every open connection
    (both sides), as a balancer restarting would."""

    def __init__(self, name: str, listen: str, targets: Sequence[str]) -> None:
        if not targets:
            raise ValueError("a forwarder needs at least one target")
        self.name = name
        self.listen = listen
        self.targets = list(targets)
        self.served: list[Forwarded] = []
        self.refused = 0
        self._next = 0
        self._opened = 0
        self._open: dict[int, list[asyncio.StreamWriter]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> str:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                host, port = _hostport(self.listen)
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, host, port)
                )
            except BaseException as error:
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"forwarder-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout=10) or failure:
            raise HarnessError(
                f"forwarder {self.name} could not listen on {self.listen}: {failure}"
            )
        return self.listen

    def served_by(self, min_down: int = 0) -> list[str]:
        """The target of each connection so far (those that sent at least ``min_down`` bytes
        to the client), in order."""
        with self._lock:
            return [c.target for c in self.served if c.down >= min_down]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._opened += 1
        number = self._opened
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        chosen = ""
        # Like a TCP balancer with passive health checks: a target that refuses (a killed
        # replica) is skipped for this connection, and the rotation moves on.
        for _ in range(len(self.targets)):
            target = self.targets[self._next % len(self.targets)]
            self._next += 1
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(*_hostport(target)), timeout=2.0
                )
            except (OSError, TimeoutError):
                continue
            chosen = target
            break
        if upstream is None:
            self.refused += 1
            writer.transport.abort()
            return
        conn = Forwarded(number, chosen, time.time())
        with self._lock:
            self.served.append(conn)
        up_reader, up_writer = upstream
        self._open[number] = [writer, up_writer]
        try:
            pumps = [
                asyncio.create_task(self._pump(reader, up_writer, conn, down=False)),
                asyncio.create_task(self._pump(up_reader, writer, conn, down=True)),
            ]
            # One side ending ends the connection: a half-open TLS or PostgreSQL stream is of
            # no use to either end.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for task in pumps:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        finally:
            for w in self._open.pop(number, []):
                w.transport.abort()

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: Forwarded,
        *,
        down: bool,
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
                if down:
                    conn.down += len(data)
                else:
                    conn.up += len(data)

    def _call(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        done = threading.Event()

        def wrapped() -> None:
            try:
                fn()
            finally:
                done.set()

        loop.call_soon_threadsafe(wrapped)
        done.wait(timeout=10)

    def drop_all(self) -> int:
        """Reset every open connection; return how many there were."""
        count = [0]

        def drop() -> None:
            count[0] = len(self._open)
            for writers in list(self._open.values()):
                for w in writers:
                    w.transport.abort()

        self._call(drop)
        return count[0]

    def close(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def stop() -> None:
            if self._server is not None:
                self._server.close()
            for writers in list(self._open.values()):
                for w in writers:
                    w.transport.abort()
            loop.call_later(0.1, loop.stop)

        self._call(stop)
        if self._thread is not None:
            self._thread.join(timeout=10)


# -- the replicated administration -------------------------------------------------------------


@dataclass
class Replica:
    """One ``mragw serve`` of the administration, on its own host (namespace)."""

    name: str
    host: Host

    @property
    def addr(self) -> str:
        return self.host.addr

    @property
    def partner_listen(self) -> str:
        return f"{self.host.addr}:{PORT}"

    @property
    def admin_target(self) -> str:
        return f"{self.host.addr}:{ADMIN_PORT}"

    @property
    def running(self) -> bool:
        return self.host.proc is not None and self.host.proc.poll() is None


@dataclass
class ReplicatedAdministration:
    """One administration as ``count`` replicas sharing a home and a PostgreSQL database."""

    net: Network
    code: str
    count: int
    dsn: str
    env: dict[str, str] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=list)
    database: PgDatabase | None = None
    pg_forwarder: Forwarder | None = None
    balancer: Forwarder | None = None
    fingerprint: str = ""
    bundle: Path | None = None

    @property
    def home(self) -> Path:
        return self.net.base / self.code.lower()

    @property
    def endpoint(self) -> str:
        """Where partners dial: the round-robin balancer over the replicas."""
        return f"{self.net.subnet}.1:{PARTNER_BALANCER_PORT}"

    def setup(self) -> None:
        """Database, forwarders, replica hosts and the shared home (not started)."""
        self.database = PgDatabase(self.dsn)
        self.database.create()
        gateway_side = f"{self.net.subnet}.1"
        self.pg_forwarder = Forwarder(
            "postgres",
            f"{gateway_side}:{PG_FORWARD_PORT}",
            [f"{self.database.server.host}:{self.database.server.port}"],
        )
        self.pg_forwarder.start()
        for n in range(1, self.count + 1):
            host = self.net.add_host(f"{self.code}{n}")
            name = f"r{n}"
            host.home = self.home
            host.log_path = self.net.base / f"{self.code.lower()}-{name}.log"
            host.env.update(self.env)
            host.serve_args = [
                "--replica-name",
                name,
                "--listen",
                f"{host.addr}:{PORT}",
                "--admin-listen",
                f"{host.addr}:{ADMIN_PORT}",
            ]
            self.replicas.append(Replica(name, host))
        self.balancer = Forwarder(
            "partners", self.endpoint, [r.partner_listen for r in self.replicas]
        )
        self.balancer.start()
        self.cli_json(
            "init",
            "--admin",
            self.code,
            "--home",
            str(self.home),
            "--db",
            self.database.url_via(gateway_side, PG_FORWARD_PORT),
            "--endpoint",
            self.endpoint,
        )
        self.bundle = self.net.base / f"{self.code.lower()}.bundle"
        out = self.cli_json(
            "partner", "export", "--home", str(self.home), "--out", str(self.bundle)
        )
        self.fingerprint = str(out["fingerprint"])

    def replica(self, name: str) -> Replica:
        for r in self.replicas:
            if r.name == name:
                return r
        raise KeyError(name)

    # -- the CLI in the root namespace (the test's side of the network) -------------------

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.update(SPEED_ENV)
        env.update(self.env)
        done = subprocess.run(
            [MRAGW, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if check and done.returncode != 0:
            raise HarnessError(
                f"[{self.code}] mragw {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stderr.strip()}\n{done.stdout.strip()}"
            )
        return done

    def cli_json(self, *args: str, timeout: float = 120.0) -> Any:
        return json.loads(self.cli(*args, "--json", timeout=timeout).stdout)

    def pin(self, other: Host) -> None:
        assert other.bundle is not None
        self.cli(
            "partner",
            "add",
            str(other.bundle),
            "--home",
            str(self.home),
            "--fingerprint",
            other.fingerprint,
        )

    def publish(self, path: Path, via: Replica | None = None) -> dict[str, Any]:
        """``mragw publish --json`` through ``via``'s admin listener, or on the database."""
        target = ["--target", via.admin_target] if via is not None else []
        return dict(self.cli_json("publish", str(path), "--home", str(self.home), *target))

    def status(self, via: Replica | None = None) -> dict[str, Any]:
        """``mragw status --json`` as ``via`` answers it (GetStatus), or from the database."""
        if via is None:
            return dict(self.cli_json("status", "--home", str(self.home), timeout=60))
        return dict(
            self.cli_json(
                "status", "--home", str(self.home), "--target", via.admin_target, timeout=60
            )
        )

    # -- replicas -------------------------------------------------------------------------

    def start(self, replica: Replica) -> None:
        replica.host.start()

    def wait_healthy(self, replica: Replica, timeout: float = 30.0) -> None:
        """Poll ``mragw health --target`` (from the root namespace) until it exits 0."""
        deadline = time.monotonic() + timeout
        while True:
            proc = replica.host.proc
            if proc is not None and proc.poll() is not None:
                raise HarnessError(f"{self.code} {replica.name}: serve exited {proc.returncode}")
            done = self.cli(
                "health", "--home", str(self.home), "--target", replica.admin_target, check=False
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"{self.code} {replica.name}: not healthy after {timeout:.0f} s: "
                    f"{done.stdout.strip()} {done.stderr.strip()}"
                )
            time.sleep(0.1)

    def start_all(self) -> None:
        for r in self.replicas:
            self.start(r)
        for r in self.replicas:
            self.wait_healthy(r)

    def kill(self, replica: Replica) -> float:
        """SIGKILL ``replica``'s process group; return the monotonic time of the kill."""
        replica.host.kill()
        return time.monotonic()

    def restart(self, replica: Replica) -> None:
        replica.host.stop()
        self.start(replica)
        self.wait_healthy(replica)

    def lease_holder(self, name: str, via: Replica | None = None) -> str | None:
        """The replica holding lease ``name`` while it is live (status ``leases``), else None."""
        for lease in self.status(via).get("leases", []):
            if lease["name"] == name and lease["live"]:
                return str(lease["holder"])
        return None

    def logs(self) -> str:
        return "\n".join(
            f"----- {self.code} {r.name} ({r.host.ns}, {r.addr}) log -----\n{r.host.log_text()}"
            for r in self.replicas
        )

    def close(self) -> None:
        """Stop the replicas, the forwarders and drop the database; safe to call twice."""
        for r in self.replicas:
            r.host.stop()
        for fwd in (self.balancer, self.pg_forwarder):
            if fwd is not None:
                fwd.close()
        if self.database is not None:
            with contextlib.suppress(Exception):
                self.database.drop()
            self.database = None

"""Several ``mragw serve`` replicas of one administration on one database: who is running, and
which replica does the work that must run once (docs/adr/0015-scale-out-on-postgresql.md).

- **Replicas** register in ``replicas`` at start (a second live replica of the same name is
  refused), heartbeat it, and mark it stopped on a clean shutdown.
- **Leases** (``leases``) give one replica at a time a partner's replication
  (``replication:<code>``) or a once-per-administration job (``job:<name>``). A lease is taken
  or renewed with one conditional UPDATE (``holder = me OR expires_at < now``) after an
  insert-if-missing, so two replicas can never both succeed for the same lease and expiry.
- **Time** is the database's (``clock_timestamp()``) on PostgreSQL, so replicas' clocks need not
  agree; on SQLite (one host) the process's.
- **Self-fencing**: a replica counts a lease as held only until its *local* deadline, the TTL
  measured on its monotonic clock from *before* the renewal that set it was sent; the database's
  expiry is never earlier. So a replica that cannot reach the database stops the work before
  any other replica can take the lease. Work that overlaps anyway (a slow cancel) is fenced by
  its own guarded store transaction (see ADR 0015).

:class:`LeaseKeeper` does all of this for one replica: every ``takeover_s / 4`` it heartbeats,
renews what it holds and takes what it may; leases last ``0.7 * takeover_s``, so a dead
holder's lease is taken within ``takeover_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.errors import GatewayError, InputError
from gateway.storage.schema import leases, partners, replicas
from gateway.storage.upsert import insert_ignore

log = logging.getLogger("mragw.cluster")

REPLICATION_PREFIX = "replication:"
JOB_PREFIX = "job:"
#: Lease lifetime and renewal period as fractions of ``cluster.takeover_s``: a holder that
#: dies right after renewing leaves a lease that expires after 0.7, and a keeper round at most
#: 0.25 later takes it (0.95 < 1).
TTL_FRACTION = 0.7
ROUND_FRACTION = 0.25
#: Rows of replicas stopped or silent for this long are deleted (default names embed a pid,
#: so every restart leaves one).
FORGET_REPLICA_S = 86400.0

_REPLICA_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

#: (database, replica name) of the running keepers of this process: an in-process restart (the
#: same host and pid) may take its name back, a second live keeper may not.
_ACTIVE_HERE: set[tuple[str, str]] = set()


class ReplicaNameError(InputError):
    """A replica name that is not a short name of [A-Za-z0-9._-]."""


class DuplicateReplicaError(GatewayError):
    """Another live replica already runs under this name."""


def validate_replica_name(name: str) -> str:
    if not _REPLICA_NAME.fullmatch(name):
        raise ReplicaNameError(
            f"--replica-name {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ - "
            "(it names the replica in status, leases and its runtime file)"
        )
    if name in {".", ".."}:
        raise ReplicaNameError(f"--replica-name {name!r}: not a usable name")
    return name


def default_replica_name() -> str:
    """``<hostname>-<pid>``, cut and cleaned to a valid replica name."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]) or "host"
    return f"{host[:50]}-{os.getpid()}"


def replication_lease(code: str) -> str:
    return f"{REPLICATION_PREFIX}{code}"


def job_lease(name: str) -> str:
    return f"{JOB_PREFIX}{name}"


def lease_ttl(takeover_s: float) -> float:
    return TTL_FRACTION * takeover_s


#: The database's "now" (epoch seconds) in a transaction; injectable for tests.
DbClock = Callable[[AsyncConnection], Awaitable[float]]


async def database_now(conn: AsyncConnection) -> float:
    """PostgreSQL: the server's clock (``clock_timestamp()``, which moves within a
    transaction), so leases never depend on replicas' clocks agreeing. SQLite: this
    process's clock (one host)."""
    if conn.dialect.name == "postgresql":
        query = text("SELECT extract(epoch FROM clock_timestamp())")
        return float((await conn.execute(query)).scalar_one())
    return time.time()


# -- leases ------------------------------------------------------------------------------------


async def acquire(
    conn: AsyncConnection, name: str, holder: str, now: float, ttl: float, *, exists: bool = False
) -> bool:
    """Take or renew ``name`` for ``holder`` until ``now + ttl``; True when it is ours.

    One conditional UPDATE decides: on PostgreSQL two replicas racing for the same row are
    serialised by its row lock and the loser re-reads the winner's row, so at most one wins.
    ``exists``: the row is known to exist (skip the insert-if-missing)."""
    if not exists:
        await ensure_lease(conn, name, now)
    same = leases.c.holder == holder
    result = await conn.execute(
        update(leases)
        .where(leases.c.name == name, same | (leases.c.expires_at <= now))
        .values(
            # A change of holder is a new epoch; a renewal keeps it.
            epoch=_case(same, leases.c.epoch, leases.c.epoch + 1),
            acquired_at=_case(same, leases.c.acquired_at, now),
            holder=holder,
            renewed_at=now,
            expires_at=now + ttl,
        )
    )
    return bool(result.rowcount)


async def ensure_lease(conn: AsyncConnection, name: str, now: float) -> None:
    """Insert ``name`` as a free lease (never held, free since ``now``) unless it exists."""
    free = {
        "name": name,
        "holder": "",
        "epoch": 0,
        "acquired_at": now,
        "renewed_at": now,
        "expires_at": now,
    }
    await insert_ignore(conn, leases, [free], ["name"])


def _case(condition: Any, then: Any, otherwise: Any) -> Any:
    return case((condition, then), else_=otherwise)


async def release(conn: AsyncConnection, names: Collection[str], holder: str, now: float) -> None:
    """Give leases up at once (another replica takes them at its next round, not after
    expiry). The holder stays named, so status shows who held it last."""
    if names:
        await conn.execute(
            update(leases)
            .where(leases.c.name.in_(sorted(names)), leases.c.holder == holder)
            .values(expires_at=now, renewed_at=now)
        )


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    epoch: int
    expires_at: float

    def live(self, now: float) -> bool:
        return bool(self.holder) and self.expires_at > now


async def read_leases(conn: AsyncConnection) -> list[Lease]:
    rows = await conn.execute(
        select(leases.c.name, leases.c.holder, leases.c.epoch, leases.c.expires_at).order_by(
            leases.c.name
        )
    )
    return [Lease(str(r.name), str(r.holder), int(r.epoch), float(r.expires_at)) for r in rows]


# -- replicas ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaAddress:
    """Where a replica listens (empty until its listeners are bound)."""

    listen: str = ""
    admin_target: str = ""
    http_url: str = ""


@dataclass(frozen=True)
class Replica:
    name: str
    host: str
    pid: int
    listen: str
    admin_target: str
    http_url: str
    started_at: float
    heartbeat_at: float
    stopped_at: float | None

    def alive(self, now: float, within: float) -> bool:
        """Running, by a heartbeat within ``within`` seconds (the status's ``alive``)."""
        return self.stopped_at is None and now - self.heartbeat_at <= within


async def read_replicas(conn: AsyncConnection) -> list[Replica]:
    rows = await conn.execute(select(replicas).order_by(replicas.c.name))
    return [
        Replica(
            name=str(r.name),
            host=str(r.host),
            pid=int(r.pid),
            listen=str(r.listen),
            admin_target=str(r.admin_target),
            http_url=str(r.http_url),
            started_at=float(r.started_at),
            heartbeat_at=float(r.heartbeat_at),
            stopped_at=float(r.stopped_at) if r.stopped_at is not None else None,
        )
        for r in rows
    ]


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def claim_replica(
    conn: AsyncConnection,
    name: str,
    *,
    host: str,
    pid: int,
    now: float,
    takeover_s: float,
    address: ReplicaAddress = ReplicaAddress(),
    running_here: bool = False,
) -> None:
    """Register replica ``name`` as started now, unless another live replica holds the name.

    Live: not stopped and a heartbeat within ``takeover_s``, except that a row of this same
    host whose process is gone (a ``kill -9`` and a restart) or of this very process with no
    running keeper (``running_here`` False: an in-process restart) is taken back at once."""
    placeholder = {
        "name": name,
        "host": host,
        "pid": pid,
        "listen": "",
        "admin_target": "",
        "http_url": "",
        "started_at": now,
        "heartbeat_at": now,
        "stopped_at": now,  # a stopped row: claimable below
    }
    await insert_ignore(conn, replicas, [placeholder], ["name"])
    # The row lock (PostgreSQL) serialises two replicas claiming one name at the same moment.
    row = (
        await conn.execute(select(replicas).where(replicas.c.name == name).with_for_update())
    ).one()
    live = row.stopped_at is None and now - float(row.heartbeat_at) <= takeover_s
    if live:
        same_host = str(row.host) == host
        gone = same_host and int(row.pid) != pid and not _pid_running(int(row.pid))
        restarted_here = same_host and int(row.pid) == pid and not running_here
        if not (gone or restarted_here):
            raise DuplicateReplicaError(
                f"replica name {name!r} is in use by a live replica (host {row.host}, pid "
                f"{row.pid}, heartbeat {now - float(row.heartbeat_at):.1f}s ago): give this one "
                "another --replica-name, or stop the other first"
            )
    await conn.execute(
        update(replicas)
        .where(replicas.c.name == name)
        .values(
            host=host,
            pid=pid,
            listen=address.listen,
            admin_target=address.admin_target,
            http_url=address.http_url,
            started_at=now,
            heartbeat_at=now,
            stopped_at=None,
        )
    )


# -- the keeper --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Round:
    """What one keeper round decided."""

    held: frozenset[str]
    started: float  # monotonic, before anything was sent


Job = Callable[[], Coroutine[Any, Any, None]]


class LeaseKeeper:
    """One replica's registration, heartbeat and leases (see the module docstring).

    ``jobs`` are the ``job:<name>`` leases this replica wants; partner leases are wanted for
    every partner that is neither suspended nor quarantined, at most a fair share of them while
    other replicas are alive. :meth:`holds` answers from the local deadline, so it turns False
    on time even when the database does not answer; ``changed`` is set (and replaced) whenever
    the held set changes, so lease-gated work reacts at once."""

    def __init__(
        self,
        engine: AsyncEngine,
        name: str,
        takeover_s: float,
        *,
        address: Callable[[], ReplicaAddress] = ReplicaAddress,
        jobs: Iterable[str] = (),
        db_clock: DbClock = database_now,
        monotonic: Callable[[], float] = time.monotonic,
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        self.engine = engine
        self.name = validate_replica_name(name)
        self.takeover_s = takeover_s
        self.ttl = lease_ttl(takeover_s)
        self.interval = ROUND_FRACTION * takeover_s
        self.address = address
        self.jobs = frozenset(job_lease(j) for j in jobs)
        self.db_clock = db_clock
        self.monotonic = monotonic
        self.host = host if host is not None else socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        # lease name -> local deadline (monotonic): held until then unless renewed.
        self._deadlines: dict[str, float] = {}
        self._claimed = False
        self._here = (engine.url.render_as_string(hide_password=True), self.name)
        self._changed = asyncio.Event()
        # When rows of long-gone replicas were last deleted (database time).
        self._forgot_at = 0.0

    # -- queries ---------------------------------------------------------------------------

    def holds(self, lease: str) -> bool:
        deadline = self._deadlines.get(lease)
        return deadline is not None and self.monotonic() < deadline

    def held(self) -> frozenset[str]:
        now = self.monotonic()
        return frozenset(n for n, d in self._deadlines.items() if now < d)

    async def wait_changed(self, within: float | None = None) -> None:
        """Until the held set may have changed (or ``within`` seconds passed)."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), within)

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    # -- life cycle ------------------------------------------------------------------------

    async def claim(self) -> None:
        """Register this replica (refused if its name is live elsewhere). Idempotent."""
        if self._claimed:
            return
        async with self.engine.begin() as conn:
            await claim_replica(
                conn,
                self.name,
                host=self.host,
                pid=self.pid,
                now=await self.db_clock(conn),
                takeover_s=self.takeover_s,
                address=self.address(),
                running_here=self._here in _ACTIVE_HERE,
            )
        self._claimed = True
        _ACTIVE_HERE.add(self._here)

    async def run(self) -> None:
        """Claim, then keep rounds going until cancelled; on cancellation release everything
        and mark the replica stopped (a clean shutdown: others take over at once)."""
        await self.claim()
        fence = asyncio.create_task(self._fence(), name=f"fence-{self.name}")
        try:
            while True:
                try:
                    await asyncio.wait_for(self.round(), timeout=self.ttl)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # the database is away: the fence stops the work
                    log.warning("lease round of replica %s failed: %s", self.name, error)
                await asyncio.sleep(self.interval)
        finally:
            fence.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fence
            await self._stop()

    async def _stop(self) -> None:
        self._deadlines.clear()
        self._notify()
        self._claimed = False
        _ACTIVE_HERE.discard(self._here)
        try:
            # Bounded: a shutdown must not hang on an unreachable database.
            await asyncio.wait_for(self._release_all(), timeout=self.ttl)
        except Exception as error:  # the leases then expire on their own
            log.warning("releasing the leases of replica %s failed: %s", self.name, error)

    async def _release_all(self) -> None:
        async with self.engine.begin() as conn:
            now = await self.db_clock(conn)
            stopped = await conn.execute(
                update(replicas)
                .where(replicas.c.name == self.name, replicas.c.pid == self.pid)
                .values(stopped_at=now)
            )
            # Only while the name is still ours: a process that took it over (we were presumed
            # dead) holds leases under the same name.
            if stopped.rowcount:
                await release(conn, await self._held_in_db(conn), self.name, now)

    async def _held_in_db(self, conn: AsyncConnection) -> set[str]:
        rows = await conn.execute(select(leases.c.name).where(leases.c.holder == self.name))
        return {str(n) for n in rows.scalars()}

    async def _fence(self) -> None:
        """Drop each lease the moment its local deadline passes, database or not."""
        while True:
            now = self.monotonic()
            expired = [n for n, d in self._deadlines.items() if d <= now]
            if expired:
                for n in expired:
                    del self._deadlines[n]
                log.warning(
                    "replica %s lost lease(s) %s: not renewed in time", self.name, sorted(expired)
                )
                self._notify()
            wait = min(self._deadlines.values()) - now if self._deadlines else self.interval
            event = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), max(wait, 0.001))

    # -- one round -------------------------------------------------------------------------

    async def round(self) -> frozenset[str]:
        """Heartbeat, renew, release surplus and take what this replica may; returns the
        leases held after it."""
        started = self.monotonic()
        async with self.engine.begin() as conn:
            now = await self.db_clock(conn)
            beat = await conn.execute(
                update(replicas)
                .where(replicas.c.name == self.name, replicas.c.pid == self.pid)
                .values(heartbeat_at=now, stopped_at=None, **dataclasses.asdict(self.address()))
            )
            if not beat.rowcount:
                # Our row was taken by a replica of the same name (we were presumed dead):
                # hold nothing, so the work stops here.
                self._apply(_Round(frozenset(), started))
                raise DuplicateReplicaError(
                    f"replica {self.name}: its registration was taken over by another process"
                )
            decided = await self._decide(conn, now)
            if now - self._forgot_at > FORGET_REPLICA_S / 24:
                self._forgot_at = now
                await conn.execute(
                    delete(replicas).where(
                        replicas.c.heartbeat_at < now - FORGET_REPLICA_S,
                        replicas.c.name != self.name,
                    )
                )
        self._apply(_Round(decided, started))
        return self.held()

    async def _decide(self, conn: AsyncConnection, now: float) -> frozenset[str]:
        eligible = (
            await conn.execute(
                select(partners.c.code).where(
                    partners.c.suspended.is_(False), partners.c.quarantined.is_(False)
                )
            )
        ).scalars()
        partner_leases = {replication_lease(str(c)) for c in eligible}
        wanted = partner_leases | self.jobs
        rows = {lease.name: lease for lease in await read_leases(conn)}
        everyone = await read_replicas(conn)
        # Live for sharing: heartbeat within a lease TTL (a dead replica's leases expire about
        # when it stops counting, so the partners it held are no one's share for long).
        sharing = {r.name for r in everyone if r.alive(now, self.ttl)} | {self.name}
        share = math.ceil(len(partner_leases) / len(sharing)) if partner_leases else 0

        mine = {n for n, lease in rows.items() if lease.holder == self.name and n in wanted}
        unwanted = {n for n, lease in rows.items() if lease.holder == self.name and n not in wanted}
        kept: set[str] = set()
        for name in sorted(mine):
            if await acquire(conn, name, self.name, now, self.ttl, exists=True):
                kept.add(name)
        await release(conn, unwanted, self.name, now)

        held_partners = sorted(n for n in kept if n.startswith(REPLICATION_PREFIX))
        if len(sharing) > 1 and len(held_partners) > share:
            # Give one surplus lease back per round: the replicas below their share take it.
            surplus = held_partners[-1]
            await release(conn, [surplus], self.name, now)
            kept.discard(surplus)
            held_partners.pop()

        for name in sorted(wanted - kept):
            lease = rows.get(name)
            if lease is not None and lease.expires_at > now:
                continue  # held by someone (or released by us this very round)
            if name.startswith(REPLICATION_PREFIX) and len(held_partners) >= share:
                # At our share: leave a free partner to a replica below its share, unless
                # nobody took it for a whole round, or its holder is gone (dead or stopped).
                uncovered = lease is not None and (
                    lease.expires_at < now - self.interval
                    or (lease.holder != "" and lease.holder not in sharing)
                )
                if not uncovered:
                    if lease is None:
                        await ensure_lease(conn, name, now)  # free from now: see above
                    continue
            if await acquire(conn, name, self.name, now, self.ttl, exists=lease is not None):
                kept.add(name)
                if name.startswith(REPLICATION_PREFIX):
                    held_partners.append(name)
        return frozenset(kept)

    def _apply(self, decided: _Round) -> None:
        deadline = decided.started + self.ttl
        before = self.held()
        self._deadlines = dict.fromkeys(decided.held, deadline)
        if self.held() != before:
            self._notify()


async def run_while_held(keeper: LeaseKeeper, lease: str, job: Job) -> None:
    """Run ``job`` only while ``keeper`` holds ``lease``: start it when the lease is taken,
    cancel it the moment the lease is lost (``job`` restarts on the next taking)."""
    task: asyncio.Task[None] | None = None
    try:
        while True:
            held = keeper.holds(lease)
            if held and (task is None or task.done()):
                if task is not None and not task.cancelled() and task.exception() is not None:
                    log.error("job %s failed", lease, exc_info=task.exception())
                task = asyncio.create_task(job(), name=f"lease-{lease}")
            elif not held and task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                task = None
            await keeper.wait_changed(keeper.interval)
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def lease_holders(rows: Iterable[Lease], now: float) -> Mapping[str, str]:
    """Lease name -> live holder."""
    return {lease.name: lease.holder for lease in rows if lease.live(now)}

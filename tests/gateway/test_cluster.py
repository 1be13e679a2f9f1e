"""Several replicas of one administration on one database (gateway.cluster, ADR 0015).

Lease rules with a controlled clock on SQLite and PostgreSQL; then real gateways in this
process: two replicas of EU (one node home, one database, each its own listeners) and a partner
JP, over real mTLS. Readiness is polled with a deadline, never slept for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from gateway.cli.conventions import ExitCode
from gateway.cli.main import app as cli
from gateway.cluster import (
    DuplicateReplicaError,
    LeaseKeeper,
    ReplicaNameError,
    acquire,
    database_now,
    job_lease,
    read_leases,
    read_replicas,
    release,
    replication_lease,
    validate_replica_name,
)
from gateway.config import ConfigError, build_config
from gateway.demo_data import eu_records, jp_records
from gateway.issuer_log import IssuerLog
from gateway.node import Node
from gateway.partners import set_endpoint
from gateway.query import Question
from gateway.serve import ONCE_PER_ADMINISTRATION, Gateway
from gateway.server.http import render_status_page
from gateway.server.runtime import read_runtime, read_runtimes, runtime_path
from gateway.storage.schema import entries, leases, partners, records
from tests.gateway.conftest import fresh_pg_database
from tests.gateway.nodes import (
    FAST_ENV,
    Cluster,
    assert_log_consistent,
    bulk_records,
    count_rows,
    eventually,
    log_head,
    records_of,
)

TAKEOVER_S = 2.0
CLUSTER_ENV = {"MRAGW_CLUSTER__TAKEOVER_S": str(TAKEOVER_S)}
JP_LEASE = replication_lease("JP")


@pytest.fixture
async def pg_url() -> str:
    """A fresh PostgreSQL database: scale-out is a PostgreSQL feature."""
    return await fresh_pg_database()


# -- leases and keepers with a controlled clock ------------------------------------------------


class Clocks:
    """A database clock and a monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.db = 1_000_000.0
        self.mono = 50.0

    async def db_now(self, _conn: Any) -> float:
        return self.db

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.db += seconds
        self.mono += seconds


async def lease_row(engine: AsyncEngine, name: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(select(leases).where(leases.c.name == name))).one()


async def test_a_lease_is_taken_renewed_expires_and_changes_holder_once(
    engine: AsyncEngine,
) -> None:
    async def take(holder: str, now: float) -> bool:
        async with engine.begin() as conn:
            return await acquire(conn, "job:x", holder, now, ttl=7.0)

    assert await take("a", 100.0)
    assert (await lease_row(engine, "job:x")).epoch == 1
    assert not await take("b", 101.0)  # held: refused, nothing changes
    assert await take("a", 102.0)  # renewal: same epoch, later expiry
    row = await lease_row(engine, "job:x")
    assert (row.holder, row.epoch, row.expires_at, row.acquired_at) == ("a", 1, 109.0, 100.0)
    assert not await take("b", 108.9)
    assert await take("b", 109.5)  # expired: taken over, a new epoch
    row = await lease_row(engine, "job:x")
    assert (row.holder, row.epoch, row.acquired_at) == ("b", 2, 109.5)
    assert not await take("a", 110.0)
    async with engine.begin() as conn:
        await release(conn, ["job:x"], "a", 110.0)  # not a's: no effect
    assert not await take("a", 110.1)
    async with engine.begin() as conn:
        await release(conn, ["job:x"], "b", 110.2)
    assert await take("a", 110.3)  # released: taken at once, not after expiry
    assert (await lease_row(engine, "job:x")).epoch == 3


async def test_racing_replicas_never_both_take_a_lease(engine: AsyncEngine) -> None:
    """Ten concurrent takers, each in its own transaction: exactly one wins (PostgreSQL: the
    row lock serialises the conditional UPDATEs; SQLite: the database write lock)."""

    async def take(holder: str) -> bool:
        async with engine.begin() as conn:
            return await acquire(conn, "job:race", holder, 500.0, ttl=7.0)

    results = await asyncio.gather(*(take(f"r{i}") for i in range(10)))
    assert sum(results) == 1
    row = await lease_row(engine, "job:race")
    assert row.holder == f"r{results.index(True)}"
    assert row.epoch == 1


async def add_fake_partners(engine: AsyncEngine, codes: list[str]) -> None:
    """Partner rows good enough for the keeper (which only counts eligible partners)."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(partners),
            [
                {
                    "code": code,
                    "root_fingerprint": "0" * 64,
                    "trust_version": 1,
                    "bundle": b"",
                    "endpoint": "127.0.0.1:1",
                    "ca_pem": "",
                    "suspended": False,
                    "quarantined": False,
                    "added_at": 0.0,
                    "updated_at": 0.0,
                }
                for code in codes
            ],
        )


def keeper(engine: AsyncEngine, name: str, clocks: Clocks) -> LeaseKeeper:
    return LeaseKeeper(
        engine,
        name,
        10.0,
        jobs=ONCE_PER_ADMINISTRATION,
        db_clock=clocks.db_now,
        monotonic=clocks.monotonic,
        pid=hash(name) % 100_000 + 2,
    )


async def test_three_keepers_split_the_partners_and_take_a_dead_ones_within_takeover(
    engine: AsyncEngine,
) -> None:
    clocks = Clocks()
    await add_fake_partners(engine, ["JP", "KR", "US"])
    keepers = [keeper(engine, n, clocks) for n in ("r1", "r2", "r3")]
    for k in keepers:
        await k.claim()
    # Rounds as the keepers would run them, a quarter of takeover_s apart.
    for _ in range(4):
        for k in keepers:
            await k.round()
        clocks.advance(2.5)
    partner_leases = {replication_lease(c) for c in ("JP", "KR", "US")}
    held = [k.held() & partner_leases for k in keepers]
    assert [len(h) for h in held] == [1, 1, 1], held  # one each: the fair share
    assert set().union(*held) == partner_leases
    jobs = {job_lease(j) for j in ONCE_PER_ADMINISTRATION}
    assert sorted(j for k in keepers for j in k.held() & jobs) == sorted(jobs)  # each job once

    # r3 dies (no more rounds, no release). Within takeover_s another replica holds its lease.
    dead = held[2]
    (lost,) = dead
    step = 0
    while step < 4:
        step += 1
        clocks.advance(2.5)
        for k in keepers[:2]:
            await k.round()
        if any(lost in k.held() for k in keepers[:2]):
            break
    assert step * 2.5 <= 10.0, f"taken after {step * 2.5}s"
    assert any(lost in k.held() for k in keepers[:2])
    # Fencing: r3 counts the lease as lost on its own clock (TTL 7 s since its last renewal),
    # although it never heard from the database again.
    assert not keepers[2].holds(lost)
    async with engine.connect() as conn:
        rows = {lease.name: lease for lease in await read_leases(conn)}
    assert rows[lost].holder in {"r1", "r2"}
    assert rows[lost].epoch == 2


async def test_a_keeper_that_cannot_renew_stops_holding_at_its_local_deadline(
    engine: AsyncEngine,
) -> None:
    clocks = Clocks()
    k = keeper(engine, "solo", clocks)
    await k.claim()
    assert job_lease("alerts") in await k.round()
    clocks.mono += 6.9  # the database is silent from here on; only the local clock moves
    assert k.holds(job_lease("alerts"))
    clocks.mono += 0.2
    assert not k.holds(job_lease("alerts"))
    assert k.held() == frozenset()


async def test_a_clean_stop_releases_everything_and_marks_the_replica_stopped(
    engine: AsyncEngine,
) -> None:
    clocks = Clocks()
    a, b = keeper(engine, "a", clocks), keeper(engine, "b", clocks)
    task = asyncio.create_task(a.run())

    async def held_by_a() -> bool:
        return job_lease("witness") in a.held()

    await eventually(held_by_a)
    await b.claim()
    assert job_lease("witness") not in await b.round()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # Same database instant: no expiry waited for.
    assert job_lease("witness") in await b.round()
    async with engine.connect() as conn:
        stopped = {r.name: r.stopped_at for r in await read_replicas(conn)}
    assert stopped["a"] is not None
    assert stopped["b"] is None


async def test_a_second_live_replica_of_the_same_name_is_refused(engine: AsyncEngine) -> None:
    clocks = Clocks()
    first = LeaseKeeper(engine, "gw-1", 10.0, db_clock=clocks.db_now, host="h1", pid=11)
    await first.claim()
    other_host = LeaseKeeper(engine, "gw-1", 10.0, db_clock=clocks.db_now, host="h2", pid=12)
    with pytest.raises(DuplicateReplicaError, match="'gw-1' is in use by a live replica"):
        await other_host.claim()
    # Once the first is silent for longer than takeover_s, the name is free again.
    clocks.advance(10.5)
    await other_host.claim()


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "has space", "a/b", "x" * 65, "..", "ü"])
def test_bad_replica_names_are_refused(name: str) -> None:
    with pytest.raises(ReplicaNameError, match="--replica-name"):
        validate_replica_name(name)


def test_serve_refuses_a_bad_replica_name_before_opening_anything(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["serve", "--home", str(tmp_path / "none"), "--replica-name", "bad name"]
    )
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "--replica-name 'bad name'" in result.output


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "positive"),
        ("-1", "positive"),
        ("nan", "positive"),
        ("0.1", "between"),
        ("7200", "between"),
        ("soon", "not a number"),
    ],
)
def test_bad_takeover_s_is_refused_naming_the_key(tmp_path: Path, value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"cluster\.takeover_s.*{problem}"):
        build_config(tmp_path, {"node": {"admin": "EU"}}, {"MRAGW_CLUSTER__TAKEOVER_S": value})
    config = build_config(tmp_path, {"node": {"admin": "EU"}, "cluster": {"takeover_s": 3}}, {})
    assert config.cluster.takeover_s == 3.0


# -- real replicas -----------------------------------------------------------------------------


def jp_bulk(count: int, start: int = 0) -> list[dict[str, Any]]:
    """``count`` distinct JP AEO records (all entitled to EU)."""
    base = jp_records()[0]
    return [
        {
            **base,
            "operator_ids": [{"scheme": "NATIONAL", "value": f"JP9{n:012d}"}],
            "name": f"Operator {n}",
            "authorisation": f"JPAEO9{n:06d}",
        }
        for n in range(start, start + count)
    ]


class Replicas:
    """Replicas of EU (one home, one database) and a partner JP with its own database."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.eu: dict[str, Gateway] = {}

    async def start(self, name: str) -> Gateway:
        home = self.cluster.node("EU").config.home
        node = Node.open(home, environ={**FAST_ENV, **CLUSTER_ENV})
        gateway = Gateway(node, name)
        await gateway.keeper.claim()  # what Gateway.run does before binding
        await gateway.server.start()
        self.eu[name] = gateway
        return gateway

    async def stop(self, name: str) -> None:
        await self.eu.pop(name).server.stop(0.2)

    def holders(self) -> list[str]:
        return [n for n, g in self.eu.items() if g.keeper.holds(JP_LEASE)]

    def replicating(self) -> list[str]:
        return [n for n, g in self.eu.items() if "JP" in g.replication._tasks]

    async def one_holder(self) -> Gateway:
        async def single() -> bool:
            return len(self.holders()) == 1 and self.holders() == self.replicating()

        await eventually(single, deadline_s=15)
        return self.eu[self.holders()[0]]

    async def close(self) -> None:
        for name in list(self.eu):
            with contextlib.suppress(Exception):
                await self.stop(name)


@contextlib.asynccontextmanager
async def eu_replicas(tmp_path: Path, db_url: str, *names: str) -> AsyncIterator[Replicas]:
    cluster = Cluster(tmp_path, db_url)
    replicas = Replicas(cluster)
    try:
        await cluster.add("EU", **CLUSTER_ENV)
        await cluster.add("JP")
        await cluster.start("JP")
        await cluster.connect("EU", "JP")
        for name in names:
            await replicas.start(name)
        first = replicas.eu[names[0]]
        await set_endpoint(cluster.node("JP"), "EU", first.server.listeners.partner, actor="test")
        yield replicas
    finally:
        await replicas.close()
        await cluster.close()


async def replicated(replicas: Replicas, size: int) -> None:
    await replicas.cluster.wait_replicated("EU", "JP", size, deadline_s=30)


@pytest.mark.postgres
async def test_one_replica_replicates_a_partner_and_a_clean_stop_hands_it_over_at_once(
    pg_url: str,
    tmp_path: Path,
) -> None:
    async with eu_replicas(tmp_path, pg_url, "eu-a", "eu-b") as replicas:
        cluster = replicas.cluster
        await cluster.publish("JP", jp_records())
        holder = await replicas.one_holder()
        await replicated(replicas, 2)
        other = next(g for g in replicas.eu.values() if g is not holder)
        assert other.replication.status("JP") is None  # never even started there
        # Each once-per-administration job runs in exactly one replica.
        for job in ONCE_PER_ADMINISTRATION:
            assert [g.keeper.holds(job_lease(job)) for g in replicas.eu.values()].count(True) == 1

        # Status, from either replica: both replicas alive, who holds JP, who answered.
        report = await other.status()
        assert report["replica"] == other.replica_name
        assert {r["name"]: r["alive"] for r in report["replicas"]} == {
            "eu-a": True,
            "eu-b": True,
        }
        assert all(r["admin_target"] and r["http_url"] for r in report["replicas"])
        (jp,) = report["partners"]
        assert jp["lease_holder"] == holder.replica_name
        (lease,) = [x for x in report["leases"] if x["name"] == JP_LEASE]
        assert lease["holder"] == holder.replica_name
        assert lease["live"]
        assert lease["expires_at"].endswith("Z")
        page = render_status_page(report)
        assert '<tr data-name="eu-a">' in page
        assert '<tr data-name="eu-b">' in page
        assert f"replica {other.replica_name}" in page
        # The same through that replica's admin API (`mragw status --target`, GetStatus).
        remote = await asyncio.to_thread(
            CliRunner().invoke,
            cli,
            [
                "status",
                "--home",
                str(other.node.config.home),
                "--target",
                other.server.listeners.admin_target,
                "--json",
            ],
        )
        assert remote.exit_code == 0, remote.output
        answered = json.loads(remote.output)
        assert answered["replica"] == other.replica_name
        assert answered["partners"][0]["lease_holder"] == holder.replica_name
        assert {r["name"]: r["alive"] for r in answered["replicas"]} == {
            "eu-a": True,
            "eu-b": True,
        }
        assert {x["name"]: x["holder"] for x in answered["leases"]} == {
            x["name"]: x["holder"] for x in report["leases"]
        }

        # A clean stop releases the lease: the other replica takes it at its next round,
        # well before the released lease would have expired.
        expires_at = float((await lease_row(other.node.engine, JP_LEASE)).expires_at)
        await replicas.stop(holder.replica_name)
        await replicas.one_holder()
        assert replicas.holders() == [other.replica_name]
        row = await lease_row(other.node.engine, JP_LEASE)
        assert row.acquired_at < expires_at
        await cluster.publish("JP", jp_bulk(40))
        await replicated(replicas, 42)
        await assert_log_consistent(other.node, "JP")
        report = await other.status()
        assert {r["name"]: r["alive"] for r in report["replicas"]} == {
            "eu-a": other.replica_name == "eu-a",
            "eu-b": other.replica_name == "eu-b",
        }


@pytest.mark.postgres
async def test_a_holder_that_cannot_renew_is_replaced_within_takeover_with_nothing_lost(
    pg_url: str,
    tmp_path: Path,
) -> None:
    async with eu_replicas(tmp_path, pg_url, "eu-a", "eu-b") as replicas:
        cluster = replicas.cluster
        holder = await replicas.one_holder()
        other = next(g for g in replicas.eu.values() if g is not holder)
        await cluster.publish("JP", jp_bulk(3000))

        async def in_flight() -> bool:
            size = (await log_head(other.node, "JP")).size
            return 0 < size < 3000

        await eventually(in_flight, deadline_s=30, interval_s=0.005)

        # The holder's database calls now hang (a partition): no renewal, no release.
        async def hang() -> frozenset[str]:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        holder.keeper.round = hang  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        cut = loop.time()

        async def taken_over() -> bool:
            return replicas.holders() == [other.replica_name]

        await eventually(taken_over, deadline_s=3 * TAKEOVER_S, interval_s=0.01)
        # Slack for a busy machine; the bound itself is 0.95 * takeover_s.
        assert loop.time() - cut <= TAKEOVER_S + 1.0
        assert not holder.keeper.holds(JP_LEASE)  # it fenced itself on its own clock

        async def stopped_there() -> bool:
            return replicas.replicating() == [other.replica_name]

        await eventually(stopped_there, deadline_s=5)
        await cluster.publish("JP", jp_bulk(10, start=3000))
        await replicated(replicas, 3010)
        await assert_log_consistent(other.node, "JP")
        assert await count_rows(other.node, entries, entries.c.log == "JP") == 3010
        jp_root = (await log_head(cluster.node("JP"), "JP")).root
        assert (await log_head(other.node, "JP")).root == jp_root


@pytest.mark.postgres
async def test_replicas_publishing_concurrently_extend_one_log(pg_url: str, tmp_path: Path) -> None:
    async with eu_replicas(tmp_path, pg_url, "eu-a", "eu-b") as replicas:
        a, b = replicas.eu["eu-a"], replicas.eu["eu-b"]
        rows = bulk_records(800)
        parts = [rows[i::4] for i in range(4)]
        # Four publishes at once, two through each replica's own engine.
        results = await asyncio.gather(
            *(
                IssuerLog(g.node).publish(records_of(part, f"p{i}"), actor="test")
                for i, (g, part) in enumerate(zip([a, b, a, b], parts, strict=True))
            )
        )
        assert sum(r.appended for r in results) == len(rows)
        async with a.node.engine.connect() as conn:
            (key, *_) = await a.node.checkpoint_keys(conn)
        # No gap, no duplicate index, the root over every leaf is the head's and the signed one.
        head = await assert_log_consistent(a.node, "EU", key.public_key)
        originals = await count_rows(
            a.node, records, records.c.log == "EU", records.c.disclosed_to.is_(None)
        )
        assert originals == len(rows)
        assert head.size >= len(rows)  # plus any disclosure entries for JP
        assert (await log_head(b.node, "EU")).root == head.root


@pytest.mark.postgres
async def test_check_and_watch_on_one_replica_see_a_publish_through_another(
    pg_url: str,
    tmp_path: Path,
) -> None:
    async with eu_replicas(tmp_path, pg_url, "eu-a", "eu-b") as replicas:
        a, b = replicas.eu["eu-a"], replicas.eu["eu-b"]
        feed = await b.checker.start_watch()
        first = asyncio.ensure_future(anext(feed))
        await IssuerLog(a.node).publish(records_of(eu_records(), "a"), actor="test")
        await a._published()
        change = await asyncio.wait_for(first, timeout=10)
        assert change.record.issuer in {"DE", "FR", "NL", "IT", "HR"}
        await feed.aclose()
        answer = await b.checker.check(Question(operator_id="DE4711000012345", issuer="EU"))
        assert answer.operator is not None, answer.to_json()


async def test_each_replica_has_its_own_runtime_file(db_url: str, tmp_path: Path) -> None:
    async with eu_replicas(tmp_path, db_url, "eu-a", "eu-b") as replicas:
        home = replicas.cluster.node("EU").config.home
        found = {info.replica: info for info in read_runtimes(home)}
        assert set(found) == {"eu-a", "eu-b"}
        assert found["eu-b"].admin_target == replicas.eu["eu-b"].server.listeners.admin_target
        assert runtime_path(home, "eu-a").stat().st_mode & 0o777 == 0o600
        assert read_runtime(home, replica="eu-b") == found["eu-b"]
        # A second replica named like a live one is refused before it binds anything.
        duplicate = Gateway(Node.open(home, environ={**FAST_ENV, **CLUSTER_ENV}), "eu-a")
        try:
            with pytest.raises(DuplicateReplicaError, match="eu-a"):
                await duplicate.keeper.claim()
        finally:
            await duplicate.node.close()
        await replicas.stop("eu-a")
        assert not runtime_path(home, "eu-a").exists()
        assert read_runtime(home) == found["eu-b"]  # any live one


async def test_a_suspended_partner_s_lease_is_released(db_url: str, tmp_path: Path) -> None:
    async with eu_replicas(tmp_path, db_url, "eu-a") as replicas:
        gateway = await replicas.one_holder()
        async with gateway.node.engine.begin() as conn:
            await conn.execute(partners.update().values(suspended=True))

        async def released() -> bool:
            return not gateway.keeper.holds(JP_LEASE) and not replicas.replicating()

        await eventually(released, deadline_s=10)

        async def expired_in_database() -> bool:
            async with gateway.node.engine.connect() as conn:
                now = await database_now(conn)
                rows = {lease.name: lease for lease in await read_leases(conn)}
            # The row stays, naming its last holder, but is no longer live.
            return rows[JP_LEASE].holder == "eu-a" and not rows[JP_LEASE].live(now)

        await eventually(expired_in_database, deadline_s=10)


async def test_status_text_shows_live_replicas_and_their_leases(
    db_url: str, tmp_path: Path
) -> None:
    cluster = Cluster(tmp_path, db_url)
    try:
        node = await cluster.add("EU", **CLUSTER_ENV)
        # A registered replica with leases, and no runtime file: status reads the database.
        keeper_ = LeaseKeeper(node.engine, "eu-9", TAKEOVER_S, jobs=ONCE_PER_ADMINISTRATION)
        await keeper_.claim()
        await keeper_.round()
        home = str(node.config.home)
        result = await asyncio.to_thread(CliRunner().invoke, cli, ["status", "--home", home])
        assert result.exit_code == 0, result.output
        assert "replicas:" in result.output
        assert "  eu-9: alive," in result.output
        assert "leases: job:alerts, job:disclosure, job:key-schedule, job:witness" in result.output
        result = await asyncio.to_thread(
            CliRunner().invoke, cli, ["status", "--home", home, "--json"]
        )
        report = json.loads(result.output)
        (replica,) = report["replicas"]
        assert replica["name"] == "eu-9"
        assert replica["alive"]
        assert {lease["holder"] for lease in report["leases"]} == {"eu-9"}
        assert "replica" not in report  # only a running replica names itself
    finally:
        await cluster.close()

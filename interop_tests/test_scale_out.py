"""Scale-out: three replicas of EU, each a `mragw serve` on its own host, sharing one home and
one PostgreSQL database (``interop_tests/replicas.py``); JP is a partner on its own host and
dials EU through a round-robin TCP balancer over the three replicas' partner listeners.

- publishing through all three admin listeners (and the database) at once, overlapping and
  distinct files: no gap, no duplicate index or record, every leaf hash recomputes from its
  envelope, the stored tiles and head give the root over all leaves, and every checkpoint any
  replica signed is consistent with it (same size -> same root; smaller -> a consistency proof
  from the stored tiles verifies); every replica reports the same log; JP replicates it whole;
- SIGKILL the replica holding ``replication:JP`` while EU catches up on a large backlog from
  JP: another replica takes the lease within ``cluster.takeover_s`` and the catch-up completes
  with nothing lost, duplicated or quarantined;
- JP replicating EU through the balancer while connections are reset and a replica is killed
  and restarted: JP ends with EU's whole log, never quarantined, every checkpoint it stored or
  cosigned consistent with EU's final root, and more than one replica served it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from crypto.checkpoint import parse_note
from crypto.merkle import (
    TileId,
    consistency_proof_from_tiles,
    leaf_hash,
    root_from_leaf_hashes,
    root_from_tiles,
    verify_consistency,
)
from interop_tests import records as rec
from interop_tests.harness import HarnessError, Host, Network, env_float, env_int
from interop_tests.replicas import ReplicatedAdministration, postgres_dsn

pytestmark = [pytest.mark.netns, pytest.mark.postgres]

REPLICAS = 3
SHARED_RECORDS = env_int("MRAGW_INTEROP_SCALE_SHARED", 300)
DISTINCT_RECORDS = env_int("MRAGW_INTEROP_SCALE_DISTINCT", 300)
BACKLOG = env_int("MRAGW_INTEROP_SCALE_BACKLOG", 4000)
# About 125 kB/s: EU's catch-up of the backlog takes several seconds.
SLOW_LINK_KBPS = env_float("MRAGW_INTEROP_SCALE_LINK_KBPS", 1000.0)
SLOW_LINK_PORT = 17444
TAKEOVER_S = 3.0
# The takeover is observed by polling `mragw status` (a CLI process, about a second): what the
# poll adds on top of takeover_s, plus scheduling noise on a loaded 2-core machine.
TAKEOVER_MARGIN_S = 3.0
REPLICATION_LEASE = "replication:JP"

Build = Callable[..., tuple[ReplicatedAdministration, Host]]


@pytest.fixture
def scale_out(network: Network) -> Generator[Build, None, None]:
    """``build(env=..., jp_env=...)`` -> (EU as three replicas, JP), onboarded both ways, not
    started; torn down (replicas, forwarders, database) before the network is."""
    dsn = postgres_dsn()
    made: list[ReplicatedAdministration] = []

    def build(
        env: dict[str, str] | None = None, jp_env: dict[str, str] | None = None
    ) -> tuple[ReplicatedAdministration, Host]:
        eu = ReplicatedAdministration(network, "EU", REPLICAS, dsn, env=dict(env or {}))
        made.append(eu)
        eu.setup()
        jp = network.add_host("JP")
        jp.env.update(jp_env or {})
        jp.init()
        eu.pin(jp)
        assert eu.bundle is not None
        jp.run(
            "partner",
            "add",
            str(eu.bundle),
            "--home",
            str(jp.home),
            "--fingerprint",
            eu.fingerprint,
        )
        return eu, jp

    try:
        yield build
    finally:
        for eu in made:
            eu.close()


# -- reading EU's log from its database --------------------------------------------------------


def _eu_leaves(eu: ReplicatedAdministration) -> list[bytes]:
    """EU's own log, checked row by row: indices 0..n-1 once each, every leaf hash recomputed
    from its envelope, no record twice (salt aside)."""
    assert eu.database is not None
    rows = eu.database.query(
        "SELECT idx, leaf_hash, envelope, content_digest FROM entries WHERE log = $1 ORDER BY idx",
        "EU",
    )
    indices = [int(r[0]) for r in rows]
    assert indices == list(range(len(rows))), "EU's log has a gap or a duplicate index"
    for idx, stored, envelope, _ in rows:
        assert envelope is not None, f"entry {idx} has no envelope"
        assert bytes(stored) == leaf_hash(bytes(envelope)), f"leaf {idx} does not recompute"
    digests = [bytes(r[3]) for r in rows if r[3] is not None]
    assert len(set(digests)) == len(digests), "a record was appended twice"
    return [bytes(r[1]) for r in rows]


def _eu_tiles(eu: ReplicatedAdministration) -> dict[TileId, bytes]:
    assert eu.database is not None
    rows = eu.database.query("SELECT level, idx, hashes FROM tiles WHERE log = $1", "EU")
    return {TileId(int(r[0]), int(r[1])): bytes(r[2]) for r in rows}


def _assert_checkpoints_consistent(
    notes: list[str], leaves: list[bytes], tiles: dict[TileId, bytes]
) -> None:
    """Every note's root is EU's root at its size; between any two sizes a consistency proof
    built from the stored tiles verifies against the two signed roots."""
    heads = sorted({(c.size, c.root_hash) for c in (parse_note(n).checkpoint() for n in notes)})
    by_size: dict[int, bytes] = {}
    for size, root in heads:
        assert by_size.setdefault(size, root) == root, f"two roots signed for size {size}"
        assert size <= len(leaves)
        assert root == root_from_leaf_hashes(leaves[:size]), f"checkpoint {size} forks the log"
    sizes = sorted(by_size)
    for old, new in itertools.pairwise(sizes):
        if old == 0:
            continue
        proof = consistency_proof_from_tiles(old, new, tiles)
        verify_consistency(old, new, proof, by_size[old], by_size[new])


def _source_switches(eu: ReplicatedAdministration) -> int:
    """How often, in index order, the next entry came from another publish (the numbering
    ranges of ``bulk_records``: one per 100,000, shared records below 100,000)."""
    assert eu.database is not None
    rows = eu.database.query("SELECT authorisation FROM records WHERE log = $1 ORDER BY idx", "EU")
    sources = [int(str(r[0])[-7:]) // 100_000 for r in rows]
    return sum(1 for a, b in itertools.pairwise(sources) if a != b)


def _head(eu: ReplicatedAdministration, code: str) -> tuple[int, bytes, str | None]:
    assert eu.database is not None
    rows = eu.database.query("SELECT size, root, checkpoint FROM logs WHERE code = $1", code)
    assert rows, f"EU stores no log {code}"
    size, root, note = rows[0]
    return int(size), bytes(root), note


def _wait_jp_has_eu(net: Network, jp: Host, eu: ReplicatedAdministration, timeout: float) -> int:
    size, root, _ = _head(eu, "EU")
    net.wait_replicated(jp, "EU", size, timeout=timeout, interval=0.3)
    assert jp.log_head("EU") == (size, root)
    return size


# -- 1. concurrent publishing through every replica --------------------------------------------


def test_publishing_through_three_replicas_at_once_keeps_one_log(
    scale_out: Build, network: Network, tmp_path: Path
) -> None:
    # Small chunks: each publish is many transactions, so the replicas' appends interleave.
    eu, jp = scale_out(env={"MRAGW_LIMITS__PUBLISH_CHUNK": "50"})
    eu.start_all()
    jp.start()
    jp.wait_healthy()

    # The same records through every replica; the second replica sends them in reverse order,
    # so its chunks meet the others' in the middle of the file.
    shared_records = rec.bulk_records(SHARED_RECORDS, "DE")
    shared = rec.write_jsonl(tmp_path / "shared.jsonl", shared_records)
    reverse = rec.write_jsonl(tmp_path / "shared-reversed.jsonl", shared_records[::-1])
    jobs: list[tuple[str, Path, Any]] = []
    for n, replica in enumerate(eu.replicas, start=1):
        jobs.append((f"shared via {replica.name}", reverse if n == 2 else shared, replica))
        distinct = rec.bulk_records(DISTINCT_RECORDS, "FR", start=100_000 * n)
        jobs.append(
            (
                f"distinct via {replica.name}",
                rec.write_jsonl(tmp_path / f"d{n}.jsonl", distinct),
                replica,
            )
        )
    # And the CLI on the database at the same time (no --target).
    direct = rec.bulk_records(DISTINCT_RECORDS, "NL", start=900_000)
    jobs.append(("distinct on the database", rec.write_jsonl(tmp_path / "db.jsonl", direct), None))

    start = threading.Barrier(len(jobs))

    def publish(job: tuple[str, Path, Any]) -> dict[str, Any]:
        start.wait(timeout=30)
        return eu.publish(job[1], via=job[2])

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        reports = list(pool.map(publish, jobs))
    unique = SHARED_RECORDS + (REPLICAS + 1) * DISTINCT_RECORDS
    by_job = {job[0]: r for job, r in zip(jobs, reports, strict=True)}
    print(
        "\n"
        + "\n".join(
            f"{k}: {v['appended']} appended, {v['duplicates']} duplicates"
            for k, v in by_job.items()
        )
    )
    assert sum(int(r["appended"]) for r in reports) == unique
    shared_reports = [
        r for job, r in zip(jobs, reports, strict=True) if job[1] in (shared, reverse)
    ]
    assert sum(int(r["appended"]) for r in shared_reports) == SHARED_RECORDS
    assert sum(int(r["duplicates"]) for r in shared_reports) == SHARED_RECORDS * (REPLICAS - 1)

    leaves = _eu_leaves(eu)
    assert len(leaves) == unique
    # The publishes really ran at once: in index order, the log switches between their
    # chunks more often than one-after-the-other publishing would.
    switches = _source_switches(eu)
    print(f"the log switches between publishes {switches} times")
    assert switches > len(jobs) - 1, "the publishes did not overlap: the test proves nothing"
    size, root, note = _head(eu, "EU")
    assert size == unique
    assert root == root_from_leaf_hashes(leaves)
    tiles = _eu_tiles(eu)
    assert root_from_tiles(size, tiles) == root
    # Every checkpoint a replica signed (each publish answer) and the one stored at the head.
    notes = [str(r["checkpoint"]) for r in reports] + ([note] if note else [])
    _assert_checkpoints_consistent(notes, leaves, tiles)

    # Every replica answers with the same log and names itself.
    for replica in eu.replicas:
        status = eu.status(via=replica)
        assert status["replica"] == replica.name
        assert status["log_size"] == unique
    # JP, dialling the balancer, holds the same log with the same root.
    assert _wait_jp_has_eu(network, jp, eu, timeout=90) == unique
    partner = jp.partner_status("EU")
    assert partner is not None
    assert not partner["quarantined"], partner


# -- 2. the replica holding a partner's lease dies mid-catch-up --------------------------------


def _jp_records(count: int) -> list[rec.Record]:
    return [
        rec.aeo_status("JP", "NATIONAL", f"JP{n:013d}", f"JPAEO{n:07d}", "AEO", since="2020-01-01")
        for n in range(count)
    ]


def _eu_holds_of_jp(eu: ReplicatedAdministration) -> int:
    assert eu.database is not None
    ((count,),) = eu.database.query("SELECT COUNT(*) FROM entries WHERE log = $1", "JP")
    return int(count)


def _live_holder(eu: ReplicatedAdministration, lease: str) -> tuple[str | None, dict[str, Any]]:
    """The live holder of ``lease`` as any running replica reports it (with the report)."""
    for replica in eu.replicas:
        if not replica.running:
            continue
        try:
            status = eu.status(via=replica)
        except HarnessError:
            continue  # starting or just killed: ask the next one
        for row in status.get("leases", []):
            if row["name"] == lease and row["live"]:
                return str(row["holder"]), status
        return None, status
    raise HarnessError("no replica answered `mragw status`")


def test_replica_holding_the_lease_killed_mid_catch_up(
    scale_out: Build, network: Network, tmp_path: Path, record_property: Any
) -> None:
    eu, jp = scale_out(
        env={"MRAGW_CLUSTER__TAKEOVER_S": str(TAKEOVER_S)},
        # JP serves small batches, so EU's catch-up is many verified commits.
        jp_env={"MRAGW_LIMITS__BATCH_ENTRIES": "50"},
    )
    # EU dials JP over a slow link (a pacing proxy on JP's host), so the catch-up is still in
    # flight after the test has found the lease holder.
    _, slow = network.spawn_module(
        jp,
        "interop_tests.proxy",
        [
            "--listen",
            f"{jp.addr}:{SLOW_LINK_PORT}",
            "--target",
            jp.endpoint,
            "--bandwidth-kbps",
            str(SLOW_LINK_KBPS),
        ],
        network.base / "jp-link.log",
    )
    eu.cli("partner", "set-endpoint", "JP", slow, "--home", str(eu.home))
    jp.start()
    jp.wait_healthy()
    jp.publish(rec.write_jsonl(tmp_path / "jp.jsonl", _jp_records(BACKLOG)))
    jp_size, jp_root = jp.log_head("JP")
    assert jp_size == BACKLOG

    eu.start_all()
    # Who took the partner's lease (exactly one live holder)?
    deadline = time.monotonic() + 30
    holder: str | None = None
    while holder is None:
        assert time.monotonic() < deadline, "no replica took replication:JP"
        holder, _ = _live_holder(eu, REPLICATION_LEASE)
    victim = eu.replica(holder)

    # Kill it while the catch-up is in flight: EU holds some, not all, of JP's entries.
    deadline = time.monotonic() + 60
    while True:
        held = _eu_holds_of_jp(eu)
        if 0 < held < BACKLOG:
            break
        assert held < BACKLOG, "the catch-up finished before the kill: slow the link down"
        assert time.monotonic() < deadline, "EU never started catching up on JP"
        time.sleep(0.02)
    killed_at = eu.kill(victim)
    held_at_kill = _eu_holds_of_jp(eu)
    assert held_at_kill < BACKLOG, "the catch-up finished at the kill: slow the link down"

    # Another replica takes the lease within takeover_s.
    new_holder: str | None = None
    status: dict[str, Any] = {}
    while True:
        new_holder, status = _live_holder(eu, REPLICATION_LEASE)
        took = time.monotonic() - killed_at
        if new_holder is not None and new_holder != victim.name:
            break
        assert took < TAKEOVER_S + TAKEOVER_MARGIN_S + 10, f"no takeover; status: {status}"
        time.sleep(0.1)
    print(
        f"\n{victim.name} killed holding {REPLICATION_LEASE} at {held_at_kill}/{BACKLOG} "
        f"entries; {new_holder} held it {took:.2f} s later (takeover_s {TAKEOVER_S})"
    )
    record_property("lease_takeover_s", round(took, 3))
    assert took <= TAKEOVER_S + TAKEOVER_MARGIN_S
    partner = next(p for p in status["partners"] if p["admin"] == "JP")
    assert partner["lease_holder"] == new_holder

    # The catch-up completes on the new holder, from the stored cursor.
    deadline = time.monotonic() + 120
    while True:
        partner = next(
            p for p in eu.status(via=eu.replica(new_holder))["partners"] if p["admin"] == "JP"
        )
        if (
            partner["entries"] == BACKLOG
            and partner["tree_size"] == BACKLOG
            and (partner["unverified"] == 0)
        ):
            break
        assert time.monotonic() < deadline, f"the catch-up did not complete: {partner}"
        time.sleep(0.3)
    assert not partner["quarantined"], partner
    assert partner["unusable"] == 0
    assert eu.database is not None
    rows = eu.database.query(
        "SELECT COUNT(*), COUNT(DISTINCT idx), MIN(idx), MAX(idx) FROM entries WHERE log = $1",
        "JP",
    )
    assert rows[0] == (BACKLOG, BACKLOG, 0, BACKLOG - 1)
    ours = [
        bytes(r[0])
        for r in eu.database.query(
            "SELECT leaf_hash FROM entries WHERE log = $1 ORDER BY idx", "JP"
        )
    ]
    theirs = [
        bytes(r[0]) for r in jp.query("SELECT leaf_hash FROM entries WHERE log = 'JP' ORDER BY idx")
    ]
    assert ours == theirs
    size, root, _ = _head(eu, "JP")
    assert (size, root) == (jp_size, jp_root)
    bad = eu.database.query(
        "SELECT COUNT(*) FROM entries WHERE log = $1 AND sig_state IN ('invalid', 'revoked', "
        "'early')",
        "JP",
    )
    assert bad == [(0,)]

    # The dead replica is reported as such, and holds nothing.
    deadline = time.monotonic() + TAKEOVER_S + 10
    while True:
        report = eu.status(via=eu.replica(new_holder))
        dead = [r for r in report["replicas"] if r["name"] == victim.name]
        held_by_dead = [x for x in report["leases"] if x["holder"] == victim.name and x["live"]]
        if dead and not dead[0]["alive"] and not held_by_dead:
            break
        assert time.monotonic() < deadline, f"{victim.name} still reported alive: {report}"
        time.sleep(0.3)


# -- 3. a partner replicating through a balancer over the replicas -----------------------------


ROUND_RECORDS = env_int("MRAGW_INTEROP_SCALE_ROUND", 200)
ROUNDS = 4


def test_partner_through_a_balancer_sees_one_log(
    scale_out: Build, network: Network, tmp_path: Path, record_property: Any
) -> None:
    eu, jp = scale_out()
    eu.start_all()
    jp.start()
    jp.wait_healthy()
    balancer = eu.balancer
    assert balancer is not None

    total = 0
    for n in range(ROUNDS):
        via = eu.replicas[n % REPLICAS]
        batch = rec.bulk_records(ROUND_RECORDS, "DE", start=total)
        total += len(batch)
        report = eu.publish(rec.write_jsonl(tmp_path / f"round{n}.jsonl", batch), via=via)
        assert report["appended"] == ROUND_RECORDS
        assert _wait_jp_has_eu(network, jp, eu, timeout=90) == total
        # Between rounds, make JP reconnect through the balancer (to the next replica).
        if n == 1:
            # Kill the replica JP's last connection went to, then bring it back.
            serving = balancer.served_by()[-1]
            victim = next(r for r in eu.replicas if r.partner_listen == serving)
            eu.kill(victim)
            balancer.drop_all()
            eu.restart(victim)
        else:
            balancer.drop_all()

    names = {r.partner_listen: r.name for r in eu.replicas}
    served = balancer.served_by()
    counts = {names[t]: served.count(t) for t in set(served)}
    # Connections that carried a round's entries (not only trust or witness calls): the
    # replicas that served JP's Subscribe streams.
    streamed = balancer.served_by(min_down=ROUND_RECORDS * 100)
    streams = {names[t]: streamed.count(t) for t in set(streamed)}
    print(
        f"\nJP's {len(served)} connections through the balancer, per replica: {counts}; "
        f"those that carried entries: {streams}"
    )
    record_property("balancer_connections", len(served))
    assert len(streams) > 1, f"one replica served all of JP's entries: {streams}"

    # JP holds EU's whole log, verified, never quarantined.
    size, root, _ = _head(eu, "EU")
    assert size == total
    leaves = _eu_leaves(eu)
    assert jp.log_head("EU") == (size, root)
    rows = jp.query(
        "SELECT COUNT(*), COUNT(DISTINCT idx), MIN(idx), MAX(idx) FROM entries WHERE log = 'EU'"
    )
    assert rows[0] == (total, total, 0, total - 1)
    theirs = [
        bytes(r[0]) for r in jp.query("SELECT leaf_hash FROM entries WHERE log = 'EU' ORDER BY idx")
    ]
    assert theirs == leaves
    partner = jp.partner_status("EU")
    assert partner is not None
    assert not partner["quarantined"], partner["reason"]
    assert partner["unusable"] == 0
    alerts = jp.run_json("alerts", "list", "--home", str(jp.home))["alerts"]
    assert not [a for a in alerts if a["kind"] in ("split_view", "quarantine")], alerts

    # Every checkpoint JP stored of EU, and every one it cosigned (EU keeps JP's cosignatures),
    # is consistent with EU's final root.
    stored = jp.query("SELECT checkpoint, held_checkpoint FROM logs WHERE code = 'EU'")
    notes = [n for n in stored[0] if n]
    assert notes, "JP stores no checkpoint of EU"
    _assert_checkpoints_consistent(notes, leaves, _eu_tiles(eu))
    assert eu.database is not None
    cosigned = eu.database.query(
        "SELECT size, root FROM cosignatures WHERE log = $1 AND witness = $2", "EU", "JP"
    )
    for cosigned_size, cosigned_root in cosigned:
        assert bytes(cosigned_root) == root_from_leaf_hashes(leaves[: int(cosigned_size)])
    print(f"JP cosigned {len(cosigned)} checkpoint(s) of EU, all consistent")

"""Scale-out benchmark: publish throughput with one, two and three ``mragw serve`` replicas of
one administration on one PostgreSQL database.

Run (from the repository root; needs a PostgreSQL server, as the tests do)::

    MRAGW_TEST_PG_DSN=postgresql+asyncpg://user@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/bench_replicas.py [--quick] [--records N] [--clients N] [--keep]

How (everything on loopback, real mTLS, a fresh database per measurement):

1. Baselines, in the same run and on the same server: raw ``asyncpg`` ``executemany`` of
   entry-shaped rows (envelope-sized bytes, one transaction per ``limits.publish_chunk``
   rows), and ``IssuerLog.publish`` in this process (the whole publish path without a gateway
   process or gRPC: validation, entitlement, signing, tiles, checkpoint).
2. For R = 1, 2, 3: a fresh home (``mragw init --db``) pinning one partner (JP, never
   started: EU decides entitlement for it at append time, as in production), R replicas
   started with ``mragw serve --replica-name rN`` on their own admin ports, then ``--clients``
   concurrent ``AdminService.Publish`` streams (the RPC ``mragw publish --target`` makes),
   spread round-robin over the R replicas, each with its own distinct records. The clock runs
   from the first request to the last answer (each answer comes after its records are
   committed); the requests are encoded before it starts. The offered load is the same for
   every R; only the number of replicas changes.
3. After each measurement the log is checked: ``--records`` entries, indices 0..n-1 once
   each.

No goal is set: the figures are reported with their ratio to one replica (and to the
baselines). Every process started is stopped by pid, every database made is dropped, and
the temporary directory removed (unless ``--keep``).
"""

# A benchmark script: it starts processes, reads files and imports lazily on purpose.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg  # noqa: E402
from gateway_support import (  # noqa: E402
    MRAGW,
    cpu_seconds,
    eu_records,
    free_ports,
    make_node,
    mragw,
    stop_process,
)
from sqlalchemy.engine import URL, make_url  # noqa: E402

RESULTS = ROOT / "bench" / "results"
REPLICA_COUNTS = (1, 2, 3)
#: Records per Publish request message (what ``mragw publish --target`` sends).
REQUEST_RECORDS = 500
#: CPU seconds per second under which a replica counts as idle (see wait_idle).
IDLE_CPU_S = 0.05


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass
class Row:
    name: str
    records: int
    seconds: float
    note: str = ""
    #: CPU seconds the gateway replicas and their signing workers (in process: this process
    #: and its workers) used while measured.
    gateway_cpu: float | None = None
    #: CPU seconds this process (the clients) used while measured.
    client_cpu: float | None = None
    #: CPU seconds of the PostgreSQL backends serving the measured database.
    database_cpu: float | None = None

    @property
    def rate(self) -> float:
        return self.records / self.seconds


# -- CPU accounting -----------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text(encoding="ascii")
        except OSError:
            continue
        parent = int(text[text.rindex(")") + 2 :].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def tree_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds so far of each of ``pids`` and every live descendant (signing workers)."""
    tree = _children()
    seen: dict[int, float] = {}
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            seen[pid] = cpu_seconds(pid)
        todo += tree.get(pid, [])
    return seen


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two :func:`tree_cpu` readings (a process born meanwhile: all of it)."""
    return sum(used - before.get(pid, 0.0) for pid, used in after.items())


async def backend_pids(url: str) -> list[int]:
    """The PostgreSQL server processes serving connections to the database at ``url``."""
    target = make_url(url)
    conn = await _server_conn(target, target.database)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            target.database,
        )
    finally:
        await conn.close()
    return [int(r[0]) for r in rows]


# -- the database server ------------------------------------------------------------------------


async def _server_conn(server: URL, database: str | None = None) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(
        host=server.host,
        port=server.port,
        user=server.username,
        password=server.password,
        database=database or server.database or "postgres",
    )
    return conn


async def create_database(server: URL, made: list[str]) -> str:
    """A fresh database on the server; its URL (remembered in ``made`` for the cleanup)."""
    name = f"mragw_bench_{uuid.uuid4().hex[:10]}"
    conn = await _server_conn(server)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    made.append(name)
    return server.set(database=name).render_as_string(hide_password=False)


async def drop_databases(server: URL, names: list[str]) -> None:
    conn = await _server_conn(server)
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def log_rows(url: str, code: str) -> tuple[int, int, int]:
    """(rows, distinct indices, max index + 1) of ``code``'s log in the database at ``url``."""
    target = make_url(url)
    conn = await _server_conn(target, target.database)
    try:
        row = await conn.fetchrow(
            "SELECT COUNT(*), COUNT(DISTINCT idx), COALESCE(MAX(idx) + 1, 0) FROM entries "
            "WHERE log = $1",
            code,
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


# -- baselines ----------------------------------------------------------------------------------


async def raw_insert_rate(url: str, rows: int, envelope_size: int, chunk: int) -> Row:
    """Raw asyncpg executemany of entry-shaped rows, ``chunk`` rows per transaction."""
    target = make_url(url)
    conn = await _server_conn(target, target.database)
    try:
        await conn.execute(
            "CREATE TABLE raw_entries (log VARCHAR(8), idx BIGINT, leaf_hash BYTEA, "
            "envelope BYTEA, appended_at DOUBLE PRECISION, PRIMARY KEY (log, idx))"
        )
        payload = os.urandom(envelope_size)
        data = [("EU", i, os.urandom(32), payload, time.time()) for i in range(rows)]
        started = time.perf_counter()
        for start in range(0, rows, chunk):
            async with conn.transaction():
                await conn.executemany(
                    "INSERT INTO raw_entries VALUES ($1, $2, $3, $4, $5)",
                    data[start : start + chunk],
                )
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return Row(
        f"raw asyncpg executemany, {chunk:,} rows/transaction",
        rows,
        seconds,
        f"rows of ~{envelope_size + 60} B, one connection",
    )


async def in_process_publish(home: Path, url: str, records: list[Any]) -> tuple[Row, int]:
    """``IssuerLog.publish`` in this process on a fresh PostgreSQL home; also returns the
    mean envelope size (for the raw baseline's rows)."""
    from gateway.issuer_log import IssuerLog, prepare
    from gateway.node import Node, initialise_node

    config = await initialise_node(
        admin="EU",
        home=home,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        db_url=url,
    )
    node = Node(config)
    try:
        async with node.engine.connect() as conn:
            _, signer = await node.active_signers(conn)
        sample = [prepare(r, signer) for r in records[:200]]
        envelope_size = round(sum(len(p.envelope) for p in sample) / len(sample))
        # The node's pool is connected (the signer read above); its backends are measured.
        backends = await backend_pids(url)
        database_before = tree_cpu(backends)
        before = tree_cpu([os.getpid()])
        started = time.perf_counter()
        result = await IssuerLog(node).publish(records, actor="bench")
        seconds = time.perf_counter() - started
        cpu = cpu_between(before, tree_cpu([os.getpid()]))
        backends = sorted({*backends, *await backend_pids(url)})
        database_cpu = cpu_between(database_before, tree_cpu(backends))
        assert result.appended == len(records), result
    finally:
        await node.close()
    return (
        Row(
            "IssuerLog.publish in process (no gateway, no gRPC)",
            len(records),
            seconds,
            gateway_cpu=cpu,
            database_cpu=database_cpu,
        ),
        envelope_size,
    )


# -- replicas -----------------------------------------------------------------------------------


def publish_requests(records: list[Any]) -> list[Any]:
    """The Publish request messages for ``records`` (as ``mragw publish --target`` makes)."""
    from gateway import codec
    from mra.v1 import admin_pb2

    requests = []
    for start in range(0, len(records), REQUEST_RECORDS):
        request = admin_pb2.PublishRequest()
        for record in records[start : start + REQUEST_RECORDS]:
            request.records.add(aeo_status=codec.to_message(record, b""))
        requests.append(request)
    return requests


async def publish_through(node: Any, targets: list[str], batches: list[list[Any]]) -> float:
    """One Publish stream per batch, batch i through ``targets[i % len]``, all at once;
    return the seconds from the first request to the last answer."""
    from gateway.server.tls import local_channel
    from mra.v1 import admin_pb2_grpc

    channels = [local_channel(node, t) for t in targets]
    try:
        # Connected (TLS handshakes done) before the clock starts.
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 30) for c in channels))

        async def client(number: int, requests: list[Any]) -> int:
            stub = admin_pb2_grpc.AdminServiceStub(channels[number % len(channels)])

            async def stream() -> Any:
                for request in requests:
                    yield request

            response = await stub.Publish(stream(), timeout=1800)
            if response.errors:
                raise RuntimeError(f"client {number}: {response.errors[0]}")
            return int(response.appended)

        started = time.perf_counter()
        appended = await asyncio.gather(*(client(n, b) for n, b in enumerate(batches)))
        seconds = time.perf_counter() - started
        expected = sum(len(r.records) for b in batches for r in b)
        assert sum(appended) == expected, (appended, expected)
        return seconds
    finally:
        for c in channels:
            await c.close(None)


def spawn_replica(home: Path, name: str, admin: str, log: Any) -> subprocess.Popen[bytes]:
    """``mragw serve`` as replica ``name`` with its admin listener on ``admin``."""
    return subprocess.Popen(
        [
            MRAGW,
            "serve",
            "--home",
            str(home),
            "--replica-name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            admin,
            "--http-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def wait_healthy(home: Path, target: str, proc: subprocess.Popen[bytes], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"replica at {target} exited with {proc.returncode}")
        if mragw("health", "--home", str(home), "--target", target).returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"replica at {target} not serving after {limit_s:.0f} s")
        time.sleep(0.2)


def wait_idle(procs: list[subprocess.Popen[bytes]], limit_s: float = 120.0) -> float:
    """Wait until every replica's start-up jobs are done (each used under 5 % of a CPU over
    the last second: an idle replica on PostgreSQL polls and heartbeats at about 2 %), so the
    measurement is of publishing only; return the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        before = [cpu_seconds(p.pid) for p in procs]
        time.sleep(1.0)
        after = [cpu_seconds(p.pid) for p in procs]
        if all(b - a < IDLE_CPU_S for a, b in zip(before, after, strict=True)):
            return time.monotonic() - started
    raise TimeoutError(f"replicas still busy after {limit_s:.0f} s")


async def measure_replicas(
    *,
    tmp: Path,
    url: str,
    count: int,
    records: list[Any],
    clients: int,
    partner_bundle: Path,
    partner_fingerprint: str,
) -> Row:
    from gateway.node import Node

    home = tmp / f"eu-{count}"
    init = mragw(
        "init",
        "--admin",
        "EU",
        "--home",
        str(home),
        "--db",
        url,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    )
    if init.returncode != 0:
        raise RuntimeError(f"mragw init: {init.stderr}")
    added = mragw(
        "partner",
        "add",
        str(partner_bundle),
        "--home",
        str(home),
        "--fingerprint",
        partner_fingerprint,
    )
    if added.returncode != 0:
        raise RuntimeError(f"mragw partner add: {added.stderr}")
    ports = free_ports(count)
    procs: list[subprocess.Popen[bytes]] = []
    targets = [f"127.0.0.1:{p}" for p in ports]
    logs = []
    try:
        for n, target in enumerate(targets, start=1):
            log = (tmp / f"eu-{count}-r{n}.log").open("wb")
            logs.append(log)
            procs.append(spawn_replica(home, f"r{n}", target, log))
        for target, proc in zip(targets, procs, strict=True):
            wait_healthy(home, target, proc, limit_s=120)
        busy_s = wait_idle(procs)
        per_client = len(records) // clients
        batches = [
            publish_requests(records[n * per_client : (n + 1) * per_client]) for n in range(clients)
        ]
        published = per_client * clients
        node = Node.open(home)
        try:
            say(
                f"{count} replica(s) idle after {busy_s:.0f} s: {clients} clients publishing "
                f"{published:,} records"
            )
            backends = await backend_pids(url)
            database_before = tree_cpu(backends)
            gateway_before = tree_cpu([p.pid for p in procs])
            client_cpu = time.process_time()
            seconds = await publish_through(node, targets, batches)
            client_cpu = time.process_time() - client_cpu
            gateway_cpu = cpu_between(gateway_before, tree_cpu([p.pid for p in procs]))
            backends = sorted({*backends, *await backend_pids(url)})
            database_cpu = cpu_between(database_before, tree_cpu(backends))
        finally:
            await node.close()
        rows, distinct, end = await log_rows(url, "EU")
        assert rows == distinct == end == published, (rows, distinct, end, published)
    finally:
        for proc in procs:
            stop_process(proc)
        for log in logs:
            log.close()
    label = "1 replica" if count == 1 else f"{count} replicas"
    return Row(
        f"publish through {label} (AdminService.Publish)",
        published,
        seconds,
        f"{clients} concurrent clients over {count} replica(s); log checked: no gap, no duplicate",
        gateway_cpu=gateway_cpu,
        client_cpu=client_cpu,
        database_cpu=database_cpu,
    )


async def bench(args: argparse.Namespace) -> list[Row]:
    dsn = args.dsn or os.environ.get("MRAGW_TEST_PG_DSN", "")
    if not dsn:
        raise SystemExit("bench_replicas.py needs PostgreSQL: set MRAGW_TEST_PG_DSN (or --dsn)")
    server = make_url(dsn)
    tmp = Path(tempfile.mkdtemp(prefix="mragw-bench-replicas-"))
    say(f"working in {tmp}")
    made: list[str] = []
    rows: list[Row] = []
    try:
        from gateway.partners import export_bundle

        jp = await make_node(tmp / "jp", "JP")
        bundle, fingerprint = await export_bundle(jp)
        await jp.close()
        bundle_path = tmp / "jp.bundle"
        bundle_path.write_bytes(bundle)
        records = eu_records(0, args.records)

        say(f"baseline: IssuerLog.publish of {args.records:,} records in process")
        in_process, envelope_size = await in_process_publish(
            tmp / "eu-in-process", await create_database(server, made), records
        )
        say("baseline: raw inserts")
        raw = await raw_insert_rate(
            await create_database(server, made), args.records, envelope_size, args.chunk
        )
        rows += [raw, in_process]
        for count in REPLICA_COUNTS:
            url = await create_database(server, made)
            rows.append(
                await measure_replicas(
                    tmp=tmp,
                    url=url,
                    count=count,
                    records=records,
                    clients=args.clients,
                    partner_bundle=bundle_path,
                    partner_fingerprint=fingerprint,
                )
            )
            say(f"{count} replica(s): {rows[-1].rate:,.0f} records/s")
    finally:
        with contextlib.suppress(Exception):
            await drop_databases(server, made)
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def report(args: argparse.Namespace, rows: list[Row], wall: float) -> str:
    one = next(r for r in rows if r.name.startswith("publish through 1 replica"))
    in_process = next(r for r in rows if r.name.startswith("IssuerLog"))
    raw = rows[0]
    lines = [
        f"python {platform.python_version()}, {os.cpu_count()} cpus, PostgreSQL on loopback; "
        f"{args.records:,} records per measurement, {args.clients} clients; wall {wall:.0f} s",
        "",
        "| measurement | records | seconds | records/s | ratio to 1 replica "
        "| ratio to in-process publish | ratio to raw inserts | gateway CPU s | database CPU s "
        "| client CPU s | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def cpu(value: float | None) -> str:
        return "" if value is None else f"{value:.1f}"

    for r in rows:
        lines.append(
            f"| {r.name} | {r.records:,} | {r.seconds:.1f} | {r.rate:,.0f} "
            f"| {r.rate / one.rate:.2f}x | {r.rate / in_process.rate:.1%} "
            f"| {r.rate / raw.rate:.1%} | {cpu(r.gateway_cpu)} | {cpu(r.database_cpu)} "
            f"| {cpu(r.client_cpu)} "
            f"| {r.note} |"
        )
    lines += [
        "",
        "CPU seconds while measured: gateway - every replica with its signing workers (in "
        "process: this process and its workers); database - the PostgreSQL backends serving "
        "the measured database (from pg_stat_activity; readable when this runs as root or as "
        "the server's user, else 0); client - this process, sending the requests. "
        f"{os.cpu_count()} cores give {os.cpu_count()} CPU seconds per second of wall time.",
    ]
    return "\n".join(lines) + "\n"


def summary_rows(rows: list[Row]) -> list[dict[str, str]]:
    """Rows for bench/summary.py: reported, no goal (the scale-out issue sets none)."""
    one = next(r for r in rows if r.name.startswith("publish through 1 replica"))
    in_process = next(r for r in rows if r.name.startswith("IssuerLog"))
    return [
        {
            "name": r.name,
            "figure": f"{r.rate:,.0f}",
            "unit": "records/s",
            "baseline": f"1 replica {one.rate:,.0f}/s; in process {in_process.rate:,.0f}/s",
            "ratio": f"{r.rate / one.rate:.2f}x of 1 replica",
            "goal": "none (reported)",
            "verdict": "-",
        }
        for r in rows
        if r.name.startswith("publish through")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--records", type=int, help="records per measurement")
    parser.add_argument("--clients", type=int, default=6, help="concurrent Publish streams")
    parser.add_argument("--chunk", type=int, default=2000, help="raw baseline rows/transaction")
    parser.add_argument("--dsn", help="PostgreSQL server URL (default: MRAGW_TEST_PG_DSN)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--summary", help="append rows for bench/summary.py (JSON lines)")
    args = parser.parse_args()
    if args.records is None:
        args.records = 6_000 if args.quick else 30_000
    if args.records < args.clients:
        parser.error("--records must be at least --clients")
    started = time.perf_counter()
    rows = asyncio.run(bench(args))
    text = report(args, rows, time.perf_counter() - started)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "replicas.md").write_text(
        f"# bench/bench_replicas.py{' --quick' if args.quick else ''}\n\n{text}", encoding="utf-8"
    )
    if args.summary:
        with Path(args.summary).open("a", encoding="utf-8") as out:
            for row in summary_rows(rows):
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

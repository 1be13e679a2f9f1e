"""Benchmark of the running gateway: publish, catch-up, Check, CheckMany, publish-to-visible,
idle cost.

Run (from the repository root)::

    .venv/bin/python bench/bench_gateway.py [--quick] [--publish N] [--catchup N]
        [--small N] [--check-seconds S] [--checkmany-calls N] [--checkmany-size N]
        [--latency N] [--idle-seconds S] [--keep]

Everything runs on loopback with real mTLS and certificates made by ``initialise_node`` in a
temporary directory, on SQLite (the default store), and stops by itself (every phase is
bounded in count and time). Raw baselines are measured in the same run, so the figures read as
ratios that hold on any machine:

1. publish: ``IssuerLog.publish`` of ``--publish`` realistic EU records (default 100,000), one
   call; baselines: raw ``sqlite3`` ``executemany`` and raw SQLAlchemy Core ``executemany`` of
   as many rows of the entry's size (same WAL / synchronous=NORMAL, one commit per
   ``publish_chunk`` rows) and raw Ed25519 sign/s.
2. catch-up: the source log is grown to ``--catchup`` entries (default 1,000,000) by publishing
   in 100,000-record calls (its build time is reported); the source gateway (EU) then serves in
   this process, and the partner (JP) runs as a separate ``mragw serve`` process that catches
   up over mTLS into its own SQLite file. Entries/s from its first stored batch until every
   entry is stored and no signature check is pending (Check reads verified entries only; the
   rate of storing alone is reported too); the peak RSS is the ``VmHWM`` of that process
   (/proc/<pid>/status). The replica size and the process's RSS / VmHWM are sampled every
   0.1 s; the time each milestone (10k, 30k, 100k,
   300k, 1M) was reached, the rate between milestones and the VmHWM at each are reported and
   plotted (bench/results/catchup.png, quick: catchup-quick.png, other sizes:
   catchup-custom.png): a constant rate means the
   catch-up time grows linearly with the log. Baseline: a raw grpc.aio server-streaming call
   with the same mTLS credentials that sends as many entries in batches of ``batch_entries``
   random envelope-sized byte strings (transport only: no storage, no verification).
3. ``Check`` at concurrency 64 against JP's admin listener (mTLS), from this process, against a
   raw grpc.aio unary server with the same mTLS credentials in a separate process that answers
   a fixed ``CheckResponse`` (a real answer captured from JP), for ``--check-seconds`` each.
   Then the same load at a partner holding only ``--small`` operators (default 10,000): a
   second pair of nodes (EU', JP') where EU' publishes the first ``--small`` records and JP'
   catches up, made just before and measured right after JP so both see the same machine;
   the p50 / p99 ratio shows whether ``Check`` latency grows with the operators stored.
4. ``CheckMany`` of ``--checkmany-size`` questions per call (default 10,000) at JP.
5. publish-to-visible: ``--latency`` single-record publishes (default 200) through EU's
   AdminService.Publish (one persistent ``local_channel``), each timed until a ``Check`` at JP
   (polled every 5 ms) finds the operator; p50 / p99, while a background task publishes
   ``--update-rate`` other records per second (default 1,000, the goal's load; 50 ms batches
   through the same API). The rate it reached is reported; the verdict needs 90% of it.
6. idle: ``mragw serve`` of a node with no data (measured in a thread while phase 2 builds
   the source log: an idle process's own CPU time and RSS do not depend on other load), then
   of EU (``--catchup`` operators stored, its partner removed so it is alone like the empty
   one); each waited for with ``mragw health``, then left alone until its start-up jobs
   settle (bounded, reported), then RSS and CPU time (/proc/<pid>/stat) over
   ``--idle-seconds`` (bench/bench_idle.py).

``--quick`` (sized to keep ``bench/run --quick`` under two minutes): 10,000 published, 50,000
caught up (milestones 10k, 30k, 50k; at most 120 s), 2 s of Check, 2 CheckMany calls, 20 latency
samples, 2 s idle windows. Internal roles (``--role raw-server``) are how the script starts
its helper process.
"""

# A benchmark script: it starts processes, reads files and imports lazily on purpose.
# ruff: noqa: PLC0415, ASYNC220, ASYNC230, ASYNC240

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402
from bench_idle import IdleResult, idle_rows, measure_idle  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402
from gateway_support import (  # noqa: E402
    MRAGW,
    eori_of,
    eu_records,
    make_node,
    pin,
    read_rss_kb,
    stop_process,
    write_summary,
)

CHECK_CONCURRENCY = 64
BUILD_CHUNK = 100_000
LATENCY_POLL_S = 0.005
LATENCY_TIMEOUT_S = 10.0
LATENCY_PHASE_S = 300.0
#: Log sizes at which the catch-up's progress is reported and plotted (those <= --catchup).
MILESTONES = (10_000, 30_000, 100_000, 300_000, 1_000_000)
#: Check p99 goal at concurrency 64 (issue 7).
CHECK_P99_GOAL_S = 0.040
#: The background publish load of the publish-to-visible phase: batches every LOAD_TICK_S.
LOAD_TICK_S = 0.05
LOAD_IN_FLIGHT = 8
#: How often the catch-up's progress is sampled (a one-row read of the replica's size).
CATCHUP_SAMPLE_S = 0.1
RESULTS = ROOT / "bench" / "results"


@dataclasses.dataclass
class Row:
    name: str
    figure: float | None
    unit: str
    baseline: str = ""
    ratio: str = ""
    goal: str = ""
    verdict: str = ""
    note: str = ""


ROWS: list[Row] = []
NOTES: list[str] = []


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- baselines ------------------------------------------------------------------------------


def raw_ed25519_sign_rate(count: int, size: int) -> float:
    key = ed25519.Ed25519PrivateKey.generate()
    message = os.urandom(size)
    start = time.perf_counter()
    for _ in range(count):
        key.sign(message)
    return count / (time.perf_counter() - start)


ENTRY_COLUMNS = (
    "log TEXT NOT NULL, idx INTEGER NOT NULL, leaf_hash BLOB NOT NULL, envelope BLOB, "
    "payload_type TEXT, sig_state TEXT NOT NULL, signer TEXT, content_digest BLOB, "
    "appended_at REAL NOT NULL, PRIMARY KEY (log, idx), UNIQUE (log, content_digest)"
)


def entry_rows(rows: int, envelope_size: int) -> list[tuple[Any, ...]]:
    """``rows`` rows shaped like the gateway's entries (random hashes and envelopes)."""
    return [
        (
            "EU",
            n,
            os.urandom(32),
            os.urandom(envelope_size),
            "aeo",
            "valid",
            "k" * 64,
            os.urandom(32),
            0.0,
        )
        for n in range(rows)
    ]


def raw_sqlite_insert_rate(path: Path, rows: int, envelope_size: int, chunk: int) -> float:
    """executemany of ``rows`` entry-sized rows, one commit per ``chunk`` (as publish commits)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"CREATE TABLE entries ({ENTRY_COLUMNS})")
    payload = entry_rows(rows, envelope_size)
    start = time.perf_counter()
    for first in range(0, rows, chunk):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?)", payload[first : first + chunk]
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return rows / elapsed


def raw_sqlalchemy_insert_rate(path: Path, rows: int, envelope_size: int, chunk: int) -> float:
    """The same rows and commits through SQLAlchemy Core (synchronous engine, ``insert()``
    executemany of dicts): what the gateway's storage layer costs before any gateway logic."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.exec_driver_sql(f"CREATE TABLE entries ({ENTRY_COLUMNS})")
    table = sa.Table("entries", sa.MetaData(), autoload_with=engine)
    names = [c.name for c in table.columns]
    payload = [dict(zip(names, row, strict=True)) for row in entry_rows(rows, envelope_size)]
    insert = table.insert()
    start = time.perf_counter()
    for first in range(0, rows, chunk):
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
            conn.execute(insert, payload[first : first + chunk])
    elapsed = time.perf_counter() - start
    engine.dispose()
    return rows / elapsed


# --- the raw gRPC server (a separate process) -----------------------------------------------

RAW_STREAM_METHOD = "/bench.Raw/Stream"


async def raw_server_main(home: str, response_file: str, batch_bytes: int) -> None:
    """A grpc.aio QueryService with mTLS (JP's node certificate, JP's CA as client root)
    whose Check returns the same fixed response, and a server-streaming method that sends the
    asked number of ``batch_bytes`` messages (the batched-streaming transport baseline of
    catch-up); prints its port, runs until SIGTERM."""
    from gateway.node import Node
    from gateway.server.tls import server_options
    from mra.v1 import query_pb2, query_pb2_grpc

    node = Node.open(Path(home))
    fixed = query_pb2.CheckResponse.FromString(Path(response_file).read_bytes())
    batch = os.urandom(batch_bytes)

    class Fixed(query_pb2_grpc.QueryServiceServicer):
        async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802
            return fixed

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        (count,) = struct.unpack(">Q", request)
        for _ in range(count):
            yield batch

    # The gateway's own server options (message limits, keepalive policy), no interceptors.
    server = grpc.aio.server(options=server_options(node.config.limits))
    query_pb2_grpc.add_QueryServiceServicer_to_server(Fixed(), server)
    # No (de)serialisers: the method moves raw bytes, so only transport and TLS are measured.
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Raw", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
            ),
        )
    )
    credentials = grpc.ssl_server_credentials(
        [(node.tls_private_key_pem("node"), node.tls_bytes("node.pem"))],
        root_certificates=node.tls_bytes("ca.pem"),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    print(port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


async def raw_stream_rate(channel: grpc.aio.Channel, entries: int, batch_entries: int) -> float:
    """Entries/s received from the raw server's batched stream (``entries`` in all)."""
    call = channel.unary_stream(
        RAW_STREAM_METHOD, request_serializer=None, response_deserializer=None
    )
    batches = max(1, entries // batch_entries)
    received = 0
    start = time.perf_counter()
    async for message in call(struct.pack(">Q", batches), timeout=300):
        received += len(message) > 0
    return received * batch_entries / (time.perf_counter() - start)


# --- helpers ----------------------------------------------------------------------------------


async def wait_process_idle(
    window_s: float = 0.5, idle_share: float = 0.15, windows: int = 3, limit_s: float = 600.0
) -> float:
    """Wait until this process (every thread: the event loop and aiosqlite's workers) used
    less than ``idle_share`` of a core for ``windows`` windows in a row, i.e. the gateway's
    start-up jobs are done; returns the seconds it was busy."""
    started = time.perf_counter()
    quiet = 0
    last_busy = started
    while time.perf_counter() - started < limit_s and quiet < windows:
        cpu = time.process_time()
        await asyncio.sleep(window_s)
        if (time.process_time() - cpu) / window_s < idle_share:
            quiet += 1
        else:
            quiet = 0
            last_busy = time.perf_counter()
    return last_busy - started


def replica_size(db: Path, code: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute("SELECT size FROM logs WHERE code = ?", (code,)).fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()


def replica_states(db: Path, code: str) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute(
            "SELECT sig_state, count(*) FROM entries WHERE log = ? GROUP BY sig_state", (code,)
        ).fetchall()
        return {str(state): int(count) for state, count in rows}
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


async def timed_load(
    call: Callable[[int], Awaitable[Any]], seconds: float, concurrency: int
) -> tuple[float, list[float], int]:
    """``concurrency`` workers calling ``call`` back to back for ``seconds`` (after a 1 s
    warm-up); returns (calls/s, latencies in s, errors)."""
    latencies: list[float] = []
    errors = 0
    measuring = False
    deadline = 0.0

    async def worker(number: int) -> int:
        nonlocal errors
        done = 0
        n = number
        while True:
            now = time.perf_counter()
            if measuring and now >= deadline:
                return done
            try:
                await call(n)
            except grpc.aio.AioRpcError:
                errors += 1
            end = time.perf_counter()
            if measuring and end <= deadline:
                latencies.append(end - now)
                done += 1
            n += concurrency

    tasks = [asyncio.create_task(worker(k)) for k in range(concurrency)]
    await asyncio.sleep(1.0)  # warm-up: connections, handshakes, caches
    start = time.perf_counter()
    deadline = start + seconds
    measuring = True
    counts = await asyncio.gather(*tasks)
    return sum(counts) / seconds, latencies, errors


def check_requests(size: int, seed: int = 5, count: int = 4096) -> list[Any]:
    """``count`` Check questions for operators spread over the first ``size`` records (the
    same draw at every log size, so two sizes are asked alike)."""
    from mra.v1 import query_pb2

    known = list(range(0, size, max(1, size // 5000)))
    rng = random.Random(seed)
    return [
        query_pb2.CheckRequest(operator_id=eori_of(rng.choice(known)), issuer="EU")
        for _ in range(count)
    ]


async def admin_target(home: Path, proc: subprocess.Popen[Any], limit_s: float = 60.0) -> str:
    """The admin listener a ``mragw serve`` process wrote into its runtime file."""
    from gateway.server.runtime import read_runtime

    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mragw serve exited with {proc.returncode}")
        info = read_runtime(home)
        if info is not None:
            return info.admin_target
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no runtime file after {limit_s:.0f} s")


def spawn_serve(home: Path, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [MRAGW, "serve", "--home", str(home)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
    )


def pending_signatures(db: Path, code: str) -> bool | None:
    """Whether any entry of the replica still waits for its signature check (None: this
    schema has no such state, so there is nothing to wait for)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute(
            "SELECT 1 FROM entries WHERE log = ? AND sig_state = 'unverified' LIMIT 1", (code,)
        ).fetchone()
    except sqlite3.OperationalError as error:
        if "no such column" in str(error):
            return None
        raise
    else:
        return row is not None
    finally:
        conn.close()


async def wait_replica(
    db: Path, code: str, size: int, proc: subprocess.Popen[Any], limit_s: float
) -> bool:
    """Wait (bounded) until the replica of ``code`` in ``db`` holds ``size`` entries and none
    of them waits for its signature check (Check reads only verified entries)."""
    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mragw serve exited with {proc.returncode}")
        with contextlib.suppress(sqlite3.OperationalError):
            if replica_size(db, code) >= size and not pending_signatures(db, code):
                return True
        await asyncio.sleep(0.25)
    return False


@dataclasses.dataclass
class Milestone:
    entries: int
    at_s: float  # seconds from the first stored batch
    rate: float  # entries/s since the previous milestone
    average: float  # entries/s since the first stored batch
    hwm_mb: float  # VmHWM of the catching-up process when the milestone was reached


def milestones(samples: list[tuple[float, int, int, int]], target: int) -> list[Milestone]:
    """When the replica passed each milestone, interpolated between samples of
    (seconds from spawn, entries, RSS kB, VmHWM kB); times count from the first sample that
    held entries, whose entries are subtracted."""
    stored = [s for s in samples if s[1] > 0]
    if not stored:
        return []
    t0, n0 = stored[0][0], stored[0][1]
    sizes = sorted({m for m in MILESTONES if n0 < m < target} | {target})
    result: list[Milestone] = []
    previous_t, previous_n = t0, n0
    for size in sizes:
        for (ta, na, _, _), (tb, nb, _, hwm) in itertools.pairwise(stored):
            if na < size <= nb:
                at = ta + (tb - ta) * (size - na) / (nb - na)
                result.append(
                    Milestone(
                        entries=size,
                        at_s=at - t0,
                        rate=(size - previous_n) / max(at - previous_t, 1e-9),
                        average=(size - n0) / max(at - t0, 1e-9),
                        hwm_mb=hwm / 1024,
                    )
                )
                previous_t, previous_n = at, size
                break
    return result


def plot_catchup(
    points: list[Milestone], path: Path, title: str, verified_s: float | None = None
) -> None:
    """Two panels against log size: time to reach it (with the straight line a constant rate
    would give), and entries/s between milestones with the receiving process's peak RSS."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    sizes = [p.entries for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(sizes, [p.at_s for p in points], "o-", label="stored")
    overall = points[-1].average
    left.plot(sizes, [p.entries / overall for p in points], "--", label="constant rate")
    if verified_s is not None:
        left.plot([sizes[-1]], [verified_s], "x", markersize=9, label="all verified")
    left.set_xlabel("log size (entries)")
    left.set_ylabel("time until that many are stored (s)")
    left.set_title("catch-up time")
    left.legend()
    right.plot(sizes, [p.rate for p in points], "o-", color="tab:blue", label="entries/s")
    right.set_xscale("log")
    right.set_xlabel("log size (entries)")
    right.set_ylabel("entries/s (since previous size)", color="tab:blue")
    right.set_ylim(bottom=0)
    memory = right.twinx()
    memory.plot(sizes, [p.hwm_mb for p in points], "s-", color="tab:red", label="peak RSS")
    memory.set_ylabel("peak RSS of the receiving gateway (MB)", color="tab:red")
    memory.set_ylim(bottom=0)
    right.set_title("throughput and memory")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# --- the benchmark ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def small_world(
    tmp: Path, size: int, timeout_s: float
) -> AsyncIterator[Callable[[int], Awaitable[Any]] | None]:
    """A partner (JP') that holds only ``size`` EU operators, for Check at the small size: a
    second EU node publishes the first ``size`` records of the same generator and serves them
    from this process; JP' (a ``mragw serve`` process) catches up and verifies them. Yields
    a Check call against JP's admin listener (None if it could not catch up in time); stops
    both on exit."""
    from gateway.issuer_log import IssuerLog
    from gateway.partners import set_endpoint
    from gateway.serve import Gateway
    from gateway.server.tls import local_channel
    from mra.v1 import query_pb2_grpc

    eu = await make_node(tmp / "eu-small", "EU")
    jp = await make_node(tmp / "jp-small", "JP")
    await pin(eu, jp)
    await pin(jp, eu)
    await IssuerLog(eu).publish(eu_records(0, size), actor="bench")
    gateway = Gateway(eu)
    listeners = await gateway.server.start()
    await set_endpoint(jp, "EU", listeners.partner, actor="bench")
    await jp.close()
    log = open(tmp / "jp-small-serve.log", "wb")  # noqa: SIM115 - closed below
    proc = spawn_serve(jp.config.home, log)
    channel: grpc.aio.Channel | None = None
    try:
        if not await wait_replica(jp.config.home / "mragw.db", "EU", size, proc, timeout_s):
            NOTES.append(f"JP' did not catch up {size:,} entries in {timeout_s:.0f} s")
            yield None
            return
        channel = local_channel(jp, await admin_target(jp.config.home, proc))
        stub = query_pb2_grpc.QueryServiceStub(channel)
        requests = check_requests(size)

        async def call(n: int) -> Any:
            return await stub.Check(requests[n % len(requests)], timeout=30)

        yield call
    finally:
        if channel is not None:
            await channel.close(None)
        stop_process(proc)
        log.close()
        await gateway.server.stop(1)
        await eu.close()
        await jp.close()


async def bench(args: argparse.Namespace) -> None:
    from gateway.issuer_log import IssuerLog, prepare
    from gateway.partners import remove_partner, set_endpoint
    from gateway.serve import Gateway
    from gateway.server.tls import local_channel
    from mra.v1 import admin_pb2, admin_pb2_grpc, query_pb2, query_pb2_grpc

    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="mragw-bench-"))
    say(f"working in {tmp}")
    eu = await make_node(tmp / "eu", "EU")
    jp = await make_node(tmp / "jp", "JP")
    await pin(eu, jp)  # EU decides entitlement for JP at append time
    await pin(jp, eu)
    chunk = eu.config.limits.publish_chunk
    batch_entries = eu.config.limits.batch_entries
    eu_gateway: Gateway | None = None
    jp_proc: subprocess.Popen[bytes] | None = None
    raw_proc: subprocess.Popen[str] | None = None
    jp_log = open(tmp / "jp-serve.log", "wb")  # noqa: SIM115 - closed at the end
    stack = contextlib.AsyncExitStack()  # the small-size partner of phase 3
    try:
        # 1. Publish -----------------------------------------------------------------------
        records = eu_records(0, args.publish)
        async with eu.engine.connect() as conn:
            _, signer = await eu.active_signers(conn)
        sample = [prepare(r, signer) for r in records[:1000]]
        envelope_size = round(statistics.mean(len(p.envelope) for p in sample))
        sign_rate = raw_ed25519_sign_rate(20_000, envelope_size)
        sqlite_rate = raw_sqlite_insert_rate(tmp / "raw.db", args.publish, envelope_size, chunk)
        core_rate = raw_sqlalchemy_insert_rate(
            tmp / "raw-core.db", args.publish, envelope_size, chunk
        )
        say(f"publishing {args.publish:,} records")
        started = time.perf_counter()
        result = await IssuerLog(eu).publish(records, actor="bench")
        publish_s = time.perf_counter() - started
        assert result.appended == args.publish, result
        publish_rate = args.publish / publish_s
        ROWS.append(
            Row(
                "raw Ed25519 sign (cryptography)",
                sign_rate,
                "sign/s",
                note=f"{envelope_size}-byte messages",
            )
        )
        ROWS.append(
            Row(
                f"raw sqlite3 executemany, {chunk:,} rows/commit",
                sqlite_rate,
                "rows/s",
                note=f"{args.publish:,} rows of ~{envelope_size + 100} B, WAL",
            )
        )
        ROWS.append(
            Row(
                f"raw SQLAlchemy Core executemany, {chunk:,} rows/commit",
                core_rate,
                "rows/s",
                baseline=f"sqlite3 {sqlite_rate:,.0f}/s",
                ratio=f"{core_rate / sqlite_rate:.1%} of sqlite3",
                note="same rows and table, synchronous engine",
            )
        )
        ROWS.append(
            Row(
                f"publish (IssuerLog.publish, {args.publish:,} records)",
                publish_rate,
                "records/s",
                baseline=(
                    f"sqlite3 {sqlite_rate:,.0f}/s; Core {core_rate:,.0f}/s; "
                    f"sign {sign_rate:,.0f}/s"
                ),
                ratio=(
                    f"{publish_rate / sqlite_rate:.1%} of sqlite3; "
                    f"{publish_rate / core_rate:.1%} of Core; "
                    f"{publish_rate / sign_rate:.1%} of sign"
                ),
                goal=">= 20,000/s",
                verdict="met" if publish_rate >= 20_000 else "NOT met",
                note=f"{publish_s:.1f} s; {chunk:,} records/transaction",
            )
        )
        say(f"publish: {publish_rate:,.0f}/s")
        del records

        # 2. Build the source log, serve it, let the partner catch up ---------------------
        # The empty node's idle measurement (phase 6) runs meanwhile in a thread: an idle
        # process's own CPU time and RSS do not depend on other load, and the build's rate is
        # only a note, so overlapping them saves the quick run its wall time.
        empty = await make_node(tmp / "idle-empty", "US")
        await empty.close()
        idle_empty = asyncio.create_task(
            asyncio.to_thread(measure_idle, empty.config.home, args.idle_seconds)
        )
        size = args.publish
        build_started = time.perf_counter()
        while size < args.catchup:
            count = min(BUILD_CHUNK, args.catchup - size)
            part = eu_records(size, count)
            await IssuerLog(eu).publish(part, actor="bench")
            size += count
            say(f"source log: {size:,} entries")
        build_s = time.perf_counter() - build_started
        idle_results: list[tuple[str, IdleResult]] = [("no data", await idle_empty)]
        if args.catchup > args.publish:
            NOTES.append(
                f"source log grown from {args.publish:,} to {args.catchup:,} entries in "
                f"{build_s:.0f} s ({(args.catchup - args.publish) / build_s:,.0f} records/s, "
                f"publish calls of {BUILD_CHUNK:,})"
            )

        eu_gateway = Gateway(eu)
        listeners = await eu_gateway.server.start()
        busy_s = await wait_process_idle()
        say(f"EU gateway serving on {listeners.partner}; start-up jobs kept it busy {busy_s:.1f} s")
        NOTES.append(
            f"EU gateway start with {args.catchup:,} entries: the process stayed busy for "
            f"{busy_s:.1f} s after the listeners were up (its start-up jobs); the partner was "
            "started after it"
        )
        await set_endpoint(jp, "EU", listeners.partner, actor="bench")
        await jp.close()

        jp_proc = spawn_serve(jp.config.home, jp_log)
        spawned = time.perf_counter()
        db = jp.config.home / "mragw.db"
        first_at: float | None = None
        first_size = 0
        current = 0
        idle_rss = 0
        stored_at: float | None = None
        verified_at: float | None = None
        stored_states: dict[str, int] = {}
        samples: list[tuple[float, int, int, int]] = []
        deadline = spawned + args.catchup_timeout
        while time.perf_counter() < deadline:
            await asyncio.sleep(CATCHUP_SAMPLE_S)
            if jp_proc.poll() is not None:
                raise RuntimeError(f"mragw serve (JP) exited with {jp_proc.returncode}")
            rss, hwm = read_rss_kb(jp_proc.pid)
            with contextlib.suppress(sqlite3.OperationalError):
                current = replica_size(db, "EU")
            now = time.perf_counter()
            samples.append((now - spawned, current, rss, hwm))
            if current == 0:
                idle_rss = rss
            elif first_at is None:
                first_at, first_size = now, current
            if current >= args.catchup and stored_at is None:
                stored_at = now
                stored_states = replica_states(db, "EU")
            # Stored is not usable yet: Check reads only verified entries, and the gateway may
            # verify signatures after storing them. Probed every few samples (a cheap query,
            # but the partner is busy verifying on the same two cores).
            if stored_at is not None and len(samples) % 5 == 0:
                pending = pending_signatures(db, "EU")
                if not pending:  # None: no sig_state column any more, stored is all we know
                    verified_at = now
                    break
        _, hwm = read_rss_kb(jp_proc.pid)
        states = replica_states(db, "EU")

        def rate_until(moment: float | None) -> float:
            if moment is None or first_at is None or moment <= first_at:
                return 0.0
            return float(args.catchup - first_size) / (moment - first_at)

        stored_rate = rate_until(stored_at)
        catchup_rate = rate_until(verified_at)
        timed_out = "NOT met (timed out)"
        ROWS.append(
            Row(
                f"catch-up, {args.catchup:,} entries stored (before background verification)",
                stored_rate,
                "entries/s",
                note=(
                    f"{current:,} of {args.catchup:,} stored "
                    + (
                        f"{stored_at - spawned:.1f} s after spawn; states then {stored_states}"
                        if stored_at
                        else f"when the {args.catchup_timeout:.0f} s bound ended"
                    )
                ),
            )
        )
        catchup_row = Row(
            f"catch-up over mTLS into SQLite ({args.catchup:,} entries, stored and verified)",
            catchup_rate,
            "entries/s",
            goal=">= 100,000/s",
            verdict=("met" if catchup_rate >= 100_000 else "NOT met") if verified_at else timed_out,
            note=(
                f"from the first stored batch until no entry is left unverified "
                f"({verified_at - spawned:.1f} s after spawn); states {states}"
                if verified_at
                else f"not verified within {args.catchup_timeout:.0f} s; states {states}"
            ),
        )
        ROWS.append(catchup_row)
        ROWS.append(
            Row(
                "catch-up peak RSS (VmHWM of the JP process)",
                hwm / 1024,
                "MB",
                baseline=f"idle {idle_rss / 1024:.0f} MB",
                goal="<= 300 MB",
                verdict="met" if hwm / 1024 <= 300 else "NOT met",
            )
        )
        points = milestones(samples, current)
        for point in points:
            ROWS.append(
                Row(
                    f"catch-up stored {point.entries:,} entries",
                    point.at_s,
                    "s",
                    baseline=f"{point.average:,.0f} entries/s overall",
                    ratio=f"{point.rate / points[0].rate:.2f}x first rate",
                    note=f"{point.rate:,.0f} entries/s since the previous size; "
                    f"VmHWM {point.hwm_mb:.0f} MB",
                )
            )
        if len(points) >= 2:
            spread = points[-1].rate / points[0].rate
            ROWS.append(
                Row(
                    "catch-up cost growth (rate at the last size / at the first)",
                    spread,
                    "x",
                    goal="linear: rate roughly constant (0.5x-2x)",
                    verdict="met" if 0.5 <= spread <= 2 else "NOT met",
                    note=f"sizes {', '.join(f'{p.entries:,}' for p in points)}",
                )
            )
            # The full run's plot is the reference; other sizes must not overwrite it.
            name = "catchup-quick.png" if args.quick else "catchup.png"
            if args.catchup != (50_000 if args.quick else 1_000_000):
                name = "catchup-custom.png"
            plot = RESULTS / name
            plot_catchup(
                points,
                plot,
                f"partner catching up {args.catchup:,} entries over mTLS into SQLite "
                f"({GIT_STATE.split(',', maxsplit=1)[0]}"
                + (", uncommitted changes)" if "uncommitted" in GIT_STATE else ")"),
                verified_s=verified_at - first_at if verified_at and first_at else None,
            )
            NOTES.append(
                f"catch-up plot: bench/results/{plot.name} (milestones of one catch-up of the "
                "whole log, sampled every "
                f"{CATCHUP_SAMPLE_S:.1f} s; the peak RSS at a size is the VmHWM when the replica "
                "reached it)"
            )
        elif points:
            NOTES.append("catch-up too fast for two milestones at this sampling: no growth figure")
        step = max(1, len(samples) // 8)
        NOTES.append(
            "catch-up progress (s from spawn, entries, RSS MB): "
            + ", ".join(f"({t:.1f}, {n:,}, {r / 1024:.0f})" for t, n, r, _ in samples[::step])
        )
        say(
            f"catch-up: stored {stored_rate:,.0f} entries/s, verified {catchup_rate:,.0f} "
            f"entries/s, peak RSS {hwm / 1024:.0f} MB"
        )

        # The partner must hold and have verified the whole log before the query phases, or
        # they measure the rest of the catch-up too (bounded: a partner that cannot is noted).
        settled = await wait_replica(db, "EU", args.catchup, jp_proc, args.catchup_timeout / 2)
        if not verified_at:
            NOTES.append(
                "the catch-up finished after the timeout; phases 3-5 ran after it"
                if settled
                else "the partner had NOT caught up when phases 3-5 "
                "ran: their figures include catch-up load"
            )

        # 3. Check at concurrency 64: JP's admin listener vs a raw grpc.aio server ----------
        target = await admin_target(jp.config.home, jp_proc)
        requests = check_requests(args.catchup)
        channel = local_channel(jp, target)
        stub = query_pb2_grpc.QueryServiceStub(channel)
        fixed = None
        for request in requests:
            response = await stub.Check(request)
            if response.recognised:
                fixed = response
                break
        assert fixed is not None, "no recognised operator found at JP"
        recognised = sum([(await stub.Check(r)).recognised for r in requests[:200]])
        (tmp / "fixed.bin").write_bytes(fixed.SerializeToString())
        entry_wire = envelope_size + 3  # the envelope and its protobuf field header
        raw_proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--role",
                "raw-server",
                "--home",
                str(jp.config.home),
                "--response",
                str(tmp / "fixed.bin"),
                "--batch-bytes",
                str(batch_entries * entry_wire),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert raw_proc.stdout is not None
        raw_port = int(raw_proc.stdout.readline())
        raw_channel = local_channel(jp, f"127.0.0.1:{raw_port}")
        raw_stub = query_pb2_grpc.QueryServiceStub(raw_channel)

        # The transport baseline of catch-up, measured now that the raw server runs.
        stream_rate = await raw_stream_rate(raw_channel, args.catchup, batch_entries)
        ROWS.insert(
            ROWS.index(catchup_row),
            Row(
                "raw grpc.aio batched stream + mTLS",
                stream_rate,
                "entries/s",
                note=f"{args.catchup:,} entries of {entry_wire} B in batches of "
                f"{batch_entries}; transport only",
            ),
        )
        catchup_row.baseline = f"raw stream {stream_rate:,.0f}/s"
        catchup_row.ratio = f"{catchup_rate / stream_rate:.1%} of raw stream"

        async def raw_call(n: int) -> Any:
            return await raw_stub.Check(requests[n % len(requests)], timeout=30)

        async def gw_call(n: int) -> Any:
            return await stub.Check(requests[n % len(requests)], timeout=30)

        # The small size's partner is made now so its Check runs right after JP's, under the
        # same load on this shared machine (set up any earlier, the two drift apart).
        small_call = None
        if args.small < args.catchup:
            say(f"setting up a partner holding {args.small:,} operators")
            small_call = await stack.enter_async_context(
                small_world(tmp, args.small, args.catchup_timeout / 4)
            )
        say(f"Check at concurrency {CHECK_CONCURRENCY}, {args.check_seconds} s each")
        raw_rate, raw_lat, raw_err = await timed_load(
            raw_call, args.check_seconds, CHECK_CONCURRENCY
        )
        gw_rate, gw_lat, gw_err = await timed_load(gw_call, args.check_seconds, CHECK_CONCURRENCY)
        small = (
            await timed_load(small_call, args.check_seconds, CHECK_CONCURRENCY)
            if small_call is not None
            else None
        )
        await stack.aclose()
        ratio = gw_rate / raw_rate
        gw_p99 = percentile(gw_lat, 0.99)
        ROWS.append(
            Row(
                f"raw grpc.aio unary + mTLS, concurrency {CHECK_CONCURRENCY}",
                raw_rate,
                "calls/s",
                note=f"p50 {fmt_ms(percentile(raw_lat, 0.5))}, "
                f"p99 {fmt_ms(percentile(raw_lat, 0.99))}, errors {raw_err}",
            )
        )
        ROWS.append(
            Row(
                f"Check at JP admin listener, concurrency {CHECK_CONCURRENCY}",
                gw_rate,
                "calls/s",
                baseline=f"raw {raw_rate:,.0f}/s",
                ratio=f"{ratio:.1%}",
                goal=">= 85% of raw; p99 <= 40 ms",
                verdict="met" if ratio >= 0.85 and gw_p99 <= CHECK_P99_GOAL_S else "NOT met",
                note=f"p50 {fmt_ms(percentile(gw_lat, 0.5))}, p99 {fmt_ms(gw_p99)}, "
                f"errors {gw_err}; {recognised / 2:.0f}% of questions recognised",
            )
        )
        say(f"Check: {gw_rate:,.0f}/s vs raw {raw_rate:,.0f}/s")
        if small is not None:
            s_rate, s_lat, s_err = small
            growth = percentile(gw_lat, 0.5) / percentile(s_lat, 0.5)
            growth99 = gw_p99 / percentile(s_lat, 0.99)
            ROWS.append(
                Row(
                    f"Check at JP' holding {args.small:,} operators, concurrency "
                    f"{CHECK_CONCURRENCY}",
                    s_rate,
                    "calls/s",
                    note=f"p50 {fmt_ms(percentile(s_lat, 0.5))}, "
                    f"p99 {fmt_ms(percentile(s_lat, 0.99))}, errors {s_err}",
                )
            )
            ROWS.append(
                Row(
                    f"Check latency growth, {args.small:,} -> {args.catchup:,} operators",
                    growth,
                    "x p50",
                    baseline=f"{args.small:,}: p50 {fmt_ms(percentile(s_lat, 0.5))}, "
                    f"p99 {fmt_ms(percentile(s_lat, 0.99))}",
                    ratio=f"p50 {growth:.2f}x, p99 {growth99:.2f}x",
                    goal="does not grow (p50 <= 1.25x, p99 <= 1.5x)",
                    verdict="met" if growth <= 1.25 and growth99 <= 1.5 else "NOT met",
                    note=f"{args.catchup:,}: p50 {fmt_ms(percentile(gw_lat, 0.5))}, "
                    f"p99 {fmt_ms(gw_p99)}; measured one after the other",
                )
            )

        # 4. CheckMany ----------------------------------------------------------------------
        rng = random.Random(5)
        many = query_pb2.CheckManyRequest(
            checks=[
                query_pb2.CheckRequest(
                    operator_id=eori_of(rng.randrange(args.catchup)), issuer="EU"
                )
                for _ in range(args.checkmany_size)
            ]
        )
        times = []
        for _ in range(args.checkmany_calls):
            started = time.perf_counter()
            answer = await stub.CheckMany(many, timeout=300)
            times.append(time.perf_counter() - started)
            assert len(answer.responses) == args.checkmany_size
        many_rate = args.checkmany_size / statistics.median(times)
        ROWS.append(
            Row(
                f"CheckMany ({args.checkmany_size:,} questions/call)",
                many_rate,
                "checks/s",
                baseline=f"Check {gw_rate:,.0f}/s",
                ratio=f"{many_rate / gw_rate:.1f}x Check",
                goal=">= 50,000/s",
                verdict="met" if many_rate >= 50_000 else "NOT met",
                note=f"median of {args.checkmany_calls} calls, "
                f"{statistics.median(times):.2f} s/call",
            )
        )
        say(f"CheckMany: {many_rate:,.0f}/s")

        # 5. Publish-to-visible at the partner -----------------------------------------------
        eu_admin = local_channel(eu, listeners.admin_target)
        admin_stub = admin_pb2_grpc.AdminServiceStub(eu_admin)
        from gateway import codec
        from gateway.records import AeoStatusRecord

        # The partner must hold the whole log first, or the first samples time the rest of
        # the catch-up instead (bounded: a partner that cannot catch up ends the phase).
        await wait_replica(db, "EU", args.catchup, jp_proc, args.catchup_timeout / 3)
        visible: list[float] = []
        acked: list[float] = []
        base = args.catchup + 1_000_000
        # The goal holds "under 1,000 updates/s": a background task publishes that many
        # records per second (other operators, in batches every 50 ms) while the probes run.
        load_stop = asyncio.Event()
        load_sent = 0
        load_errors = 0
        load_skipped = 0  # ticks with LOAD_IN_FLIGHT batches still unacknowledged

        async def send(batch: Any) -> None:
            nonlocal load_sent, load_errors
            try:
                load_sent += (await admin_stub.Publish(iter([batch]), timeout=30)).appended
            except grpc.aio.AioRpcError:
                load_errors += 1

        async def background_load() -> None:
            # Open loop: a batch leaves every tick whether or not the previous ones were
            # acknowledged (up to LOAD_IN_FLIGHT at once), so a slow ack does not lower the
            # offered rate; the rate actually appended is what the row reports.
            nonlocal load_skipped
            per_tick = max(1, round(args.update_rate * LOAD_TICK_S))
            n = base + 10 * args.latency + 1000
            next_at = time.perf_counter()
            in_flight: set[asyncio.Task[None]] = set()
            while not load_stop.is_set():
                if len(in_flight) < LOAD_IN_FLIGHT:
                    batch = admin_pb2.PublishRequest()
                    for record in eu_records(n, per_tick):
                        batch.records.add(aeo_status=codec.to_message(record, b""))
                    n += per_tick
                    task = asyncio.create_task(send(batch))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                else:
                    load_skipped += 1
                next_at += LOAD_TICK_S
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            if in_flight:
                await asyncio.gather(*in_flight)

        load_task = asyncio.create_task(background_load()) if args.update_rate > 0 else None
        await asyncio.sleep(0.5 if load_task else 0)  # let the load reach its pace first
        load_started, sent_before = time.perf_counter(), load_sent
        phase_deadline = time.perf_counter() + LATENCY_PHASE_S
        for k in range(args.latency):
            if time.perf_counter() > phase_deadline:
                NOTES.append(
                    f"publish-to-visible phase stopped after {k} publishes "
                    f"({LATENCY_PHASE_S:.0f} s bound)"
                )
                break
            record = dataclasses.replace(
                eu_records(base + k, 1)[0],
                aeo_type="AEOF",
                consent=True,
                status="ACTIVE",
                valid_until=None,
            )
            record = dataclasses.replace(record, authorisation=f"{record.issuer}AEOF{base + k:08d}")
            request = admin_pb2.PublishRequest()
            assert isinstance(record, AeoStatusRecord)
            request.records.add(aeo_status=codec.to_message(record, b""))
            question = query_pb2.CheckRequest(operator_id=record.operator_ids[0].value, issuer="EU")
            started = time.perf_counter()
            reply = await admin_stub.Publish(iter([request]), timeout=30)
            acked.append(time.perf_counter() - started)
            assert reply.appended == 1, reply
            while time.perf_counter() - started < LATENCY_TIMEOUT_S:
                if (await stub.Check(question, timeout=10)).operator.operator_ids:
                    visible.append(time.perf_counter() - started)
                    break
                await asyncio.sleep(LATENCY_POLL_S)
            await asyncio.sleep(rng.uniform(0.001, 0.02))
        load_s = time.perf_counter() - load_started
        load_stop.set()
        if load_task is not None:
            await load_task
        load_rate = (load_sent - sent_before) / load_s if load_s > 0 else 0.0
        p50, p99 = percentile(visible, 0.5), percentile(visible, 0.99)
        ROWS.append(
            Row(
                "publish ack (AdminService.Publish, 1 record)",
                percentile(acked, 0.5) * 1000,
                "ms p50",
                note=f"p99 {fmt_ms(percentile(acked, 0.99))}",
            )
        )
        ROWS.append(
            Row(
                f"publish-to-visible at JP ({len(visible)}/{len(acked)} seen)",
                p50 * 1000,
                "ms p50",
                baseline=f"ack p50 {fmt_ms(percentile(acked, 0.5))}; background "
                f"{load_rate:,.0f} updates/s",
                goal=f"p50 <= 50 ms, p99 <= 250 ms under {args.update_rate:,.0f} updates/s",
                verdict="met"
                if p50 <= 0.05
                and p99 <= 0.25
                and len(visible) == len(acked)
                and load_rate >= 0.9 * args.update_rate
                else "NOT met",
                note=f"p99 {fmt_ms(p99)}; Check polled every {LATENCY_POLL_S * 1000:.0f} ms; "
                f"background load {load_sent - sent_before:,} records in {load_s:.1f} s, "
                f"{load_errors} failed calls, {load_skipped} ticks skipped (>= {LOAD_IN_FLIGHT} "
                "batches in flight)",
            )
        )
        say(f"publish-to-visible p50 {fmt_ms(p50)}, p99 {fmt_ms(p99)}")
        _, hwm = read_rss_kb(jp_proc.pid)
        NOTES.append(f"JP process VmHWM at the end of the run: {hwm / 1024:.0f} MB")
        await eu_admin.close(None)
        await channel.close(None)
        await raw_channel.close(None)

        # 6. Idle: an empty node, then EU with its whole log -------------------------------
        stop_process(raw_proc)
        stop_process(jp_proc)
        await eu_gateway.server.stop(1)
        eu_gateway = None
        # Alone like the empty node: a pinned partner that is down would make EU retry.
        await remove_partner(eu, "JP", actor="bench")
        await eu.close()
        label = f"{args.catchup + len(acked) + load_sent:,} records stored"
        say(f"idle: {label}")
        idle_results.append((label, measure_idle(eu.config.home, args.idle_seconds)))
        ROWS.extend(Row(**row) for row in idle_rows(idle_results))
    finally:
        await stack.aclose()
        stop_process(raw_proc)
        stop_process(jp_proc)
        jp_log.close()
        if eu_gateway is not None:
            await eu_gateway.server.stop(1)
        await jp.close()
        await eu.close()
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def figure_text(figure: float | None) -> str:
    if figure is None:
        return "-"
    return f"{figure:,.1f}" if figure < 100 else f"{figure:,.0f}"


def summary_row(row: Row) -> dict[str, str]:
    return {**dataclasses.asdict(row), "figure": figure_text(row.figure)}


def report(args: argparse.Namespace, wall: float) -> None:
    cpu = "cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cpus ({cpu}), "
        f"grpcio {grpc.__version__}, SQLite {sqlite3.sqlite_version}; wall {wall:.0f} s"
    )
    print(f"code: {GIT_STATE}")
    print()
    print("| measurement | figure | unit | baseline (same run) | ratio | goal | verdict | note |")
    print("|---|---:|---|---|---|---|---|---|")
    for r in ROWS:
        figure = figure_text(r.figure)
        print(
            f"| {r.name} | {figure} | {r.unit} | {r.baseline} | {r.ratio} | {r.goal} | "
            f"{r.verdict} | {r.note} |"
        )
    print()
    for note in NOTES:
        print(f"- {note}")


def git_state() -> str:
    """The commit measured, and any uncommitted change to product code at the start."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--short", "gateway", "crypto", "registry"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    changed = [line[3:] for line in dirty.splitlines()]
    return f"commit {head}" + (
        f", uncommitted changes in {', '.join(changed)}" if changed else ", product code clean"
    )


GIT_STATE = ""


def main() -> None:
    global GIT_STATE  # noqa: PLW0603 - set once before the run
    GIT_STATE = git_state()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--publish", type=int)
    parser.add_argument("--catchup", type=int)
    parser.add_argument("--catchup-timeout", type=float)
    parser.add_argument("--small", type=int, default=10_000, help="operators at the small size")
    parser.add_argument("--check-seconds", type=float)
    parser.add_argument("--checkmany-calls", type=int)
    parser.add_argument("--checkmany-size", type=int, default=10_000)
    parser.add_argument("--latency", type=int)
    parser.add_argument("--idle-seconds", type=float)
    parser.add_argument(
        "--update-rate",
        type=float,
        default=1000.0,
        help="background publishes/s during publish-to-visible (0: none)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--summary", help="append the rows with a goal to this JSON-lines file")
    parser.add_argument("--role", choices=("bench", "raw-server"), default="bench")
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--response", help=argparse.SUPPRESS)
    parser.add_argument("--batch-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "raw-server":
        asyncio.run(raw_server_main(args.home, args.response, args.batch_bytes))
        return
    defaults = (
        {
            "publish": 10_000,
            "catchup": 50_000,
            "catchup_timeout": 120.0,
            "check_seconds": 2.0,
            "checkmany_calls": 2,
            "latency": 20,
            "idle_seconds": 2.0,
        }
        if args.quick
        else {
            "publish": 100_000,
            "catchup": 1_000_000,
            "catchup_timeout": 900.0,
            "check_seconds": 10.0,
            "checkmany_calls": 5,
            "latency": 200,
            "idle_seconds": 10.0,
        }
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.catchup = max(args.catchup, args.publish)
    started = time.perf_counter()
    asyncio.run(bench(args))
    report(args, time.perf_counter() - started)
    if args.summary:
        write_summary(Path(args.summary), [summary_row(r) for r in ROWS])


if __name__ == "__main__":
    main()

"""Benchmark of the running gateway: publish, catch-up, Check, CheckMany, publish-to-visible.

Run (from the repository root)::

    .venv/bin/python bench/bench_gateway.py [--quick] [--publish N] [--catchup N]
        [--check-seconds S] [--checkmany-calls N] [--checkmany-size N] [--latency N]

Everything runs on loopback with real mTLS and certificates made by ``initialise_node`` in a
temporary directory, on SQLite (the default store), and stops by itself (every phase is
bounded in count and time). Raw baselines are measured in the same run, so the figures read as
ratios that hold on any machine:

1. publish: ``IssuerLog.publish`` of ``--publish`` realistic EU records (default 100,000), one
   call; baselines: raw ``sqlite3`` ``executemany`` of as many rows of the entry's size (same
   WAL / synchronous=NORMAL, one commit per ``publish_chunk`` rows) and raw Ed25519 sign/s.
2. catch-up: the source log is grown to ``--catchup`` entries (default 1,000,000) by publishing
   in 100,000-record calls (its build time is reported); the source gateway (EU) then serves in
   this process, and the partner (JP) runs as a separate ``mragw serve`` process that catches
   up over mTLS into its own SQLite file. Entries/s from its first stored batch to the last; the
   peak RSS is the ``VmHWM`` of that process (/proc/<pid>/status).
3. ``Check`` at concurrency 64 against JP's admin listener (mTLS), from this process, against a
   raw grpc.aio unary server with the same mTLS credentials in a separate process that answers
   a fixed ``CheckResponse`` (a real answer captured from JP), for ``--check-seconds`` each.
4. ``CheckMany`` of ``--checkmany-size`` questions per call (default 10,000) at JP.
5. publish-to-visible: ``--latency`` single-record publishes (default 200) through EU's
   AdminService.Publish (one persistent ``local_channel``), each timed until a ``Check`` at JP
   (polled every 5 ms) finds the operator; p50 / p99.

``--quick``: 20,000 published, 100,000 caught up, 5 s of Check, 3 CheckMany calls, 50 latency
samples. Internal roles (``--role raw-server``) are how the script starts its helper process.
"""

# A benchmark script: it starts processes, reads files and imports lazily on purpose.
# ruff: noqa: PLC0415, ASYNC110, ASYNC220, ASYNC230, ASYNC240

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402
from gateway_support import eori_of, eu_records, make_node, pin, read_rss_kb  # noqa: E402

CHECK_CONCURRENCY = 64
BUILD_CHUNK = 100_000
LATENCY_POLL_S = 0.005
LATENCY_TIMEOUT_S = 10.0
LATENCY_PHASE_S = 300.0


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


def raw_sqlite_insert_rate(path: Path, rows: int, envelope_size: int, chunk: int) -> float:
    """executemany of ``rows`` entry-sized rows, one commit per ``chunk`` (as publish commits)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE entries (log TEXT NOT NULL, idx INTEGER NOT NULL, leaf_hash BLOB NOT NULL, "
        "envelope BLOB, payload_type TEXT, sig_state TEXT NOT NULL, signer TEXT, "
        "content_digest BLOB, appended_at REAL NOT NULL, PRIMARY KEY (log, idx), "
        "UNIQUE (log, content_digest))"
    )
    payload = [
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


# --- the raw gRPC server (a separate process) -----------------------------------------------


async def raw_server_main(home: str, response_file: str) -> None:
    """A grpc.aio QueryService with mTLS (JP's node certificate, JP's CA as client root)
    whose Check returns the same fixed response; prints its port, runs until SIGTERM."""
    from gateway.node import Node
    from gateway.server.tls import server_options
    from mra.v1 import query_pb2, query_pb2_grpc

    node = Node.open(Path(home))
    fixed = query_pb2.CheckResponse.FromString(Path(response_file).read_bytes())

    class Fixed(query_pb2_grpc.QueryServiceServicer):
        async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802
            return fixed

    # The gateway's own server options (message limits, keepalive policy), no interceptors.
    server = grpc.aio.server(options=server_options(node.config.limits))
    query_pb2_grpc.add_QueryServiceServicer_to_server(Fixed(), server)
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


# --- the benchmark ----------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> None:
    from gateway.issuer_log import IssuerLog, prepare
    from gateway.partners import set_endpoint
    from gateway.serve import Gateway
    from gateway.server.runtime import read_runtime
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

    # 1. Publish ---------------------------------------------------------------------------
    records = eu_records(0, args.publish)
    async with eu.engine.connect() as conn:
        _, signer = await eu.active_signers(conn)
    sample = [prepare(r, signer) for r in records[:1000]]
    envelope_size = round(statistics.mean(len(p.envelope) for p in sample))
    sign_rate = raw_ed25519_sign_rate(20_000, envelope_size)
    sqlite_rate = raw_sqlite_insert_rate(tmp / "raw.db", args.publish, envelope_size, chunk)
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
            f"publish (IssuerLog.publish, {args.publish:,} records)",
            publish_rate,
            "records/s",
            baseline=f"sqlite {sqlite_rate:,.0f}/s; sign {sign_rate:,.0f}/s",
            ratio=(
                f"{publish_rate / sqlite_rate:.1%} of sqlite; "
                f"{publish_rate / sign_rate:.1%} of sign"
            ),
            goal=">= 20,000/s",
            verdict="met" if publish_rate >= 20_000 else "NOT met",
            note=f"{publish_s:.1f} s; {chunk:,} records/transaction",
        )
    )
    say(f"publish: {publish_rate:,.0f}/s")
    del records

    # 2. Build the source log, serve it, let the partner catch up -------------------------
    size = args.publish
    build_started = time.perf_counter()
    while size < args.catchup:
        count = min(BUILD_CHUNK, args.catchup - size)
        part = eu_records(size, count)
        await IssuerLog(eu).publish(part, actor="bench")
        size += count
        say(f"source log: {size:,} entries")
    build_s = time.perf_counter() - build_started
    if args.catchup > args.publish:
        NOTES.append(
            f"source log grown from {args.publish:,} to {args.catchup:,} entries in "
            f"{build_s:.0f} s ({(args.catchup - args.publish) / build_s:,.0f} records/s, "
            f"publish calls of {BUILD_CHUNK:,})"
        )

    eu_gateway = Gateway(eu)
    listeners = await eu_gateway.server.start()
    started = time.perf_counter()
    busy_s = await wait_process_idle()
    say(f"EU gateway serving on {listeners.partner}; start-up jobs kept it busy {busy_s:.1f} s")
    NOTES.append(
        f"EU gateway start with {args.catchup:,} entries: the process stayed busy for "
        f"{busy_s:.1f} s after the listeners were up (the disclosure job's first pass, "
        "Gateway.disclosure_job -> disclose -> current_records); the partner was started "
        "after it"
    )
    await set_endpoint(jp, "EU", listeners.partner, actor="bench")
    await jp.close()

    jp_log = open(tmp / "jp-serve.log", "wb")  # noqa: SIM115 - closed at the end
    jp_proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "mragw"), "serve", "--home", str(jp.config.home)],
        stdout=jp_log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    raw_proc: subprocess.Popen[str] | None = None
    try:
        spawned = time.perf_counter()
        db = jp.config.home / "mragw.db"
        first_at: float | None = None
        first_size = 0
        current = 0
        idle_rss = 0
        samples: list[tuple[float, int, int]] = []
        deadline = spawned + args.catchup_timeout
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.5)
            if jp_proc.poll() is not None:
                raise RuntimeError(f"mragw serve (JP) exited with {jp_proc.returncode}")
            rss, hwm = read_rss_kb(jp_proc.pid)
            with contextlib.suppress(sqlite3.OperationalError):
                current = replica_size(db, "EU")
            now = time.perf_counter()
            samples.append((now - spawned, current, rss))
            if current == 0:
                idle_rss = rss
            elif first_at is None:
                first_at, first_size = now, current
            if current >= args.catchup:
                break
        done_at = time.perf_counter()
        _, hwm = read_rss_kb(jp_proc.pid)
        states = replica_states(db, "EU")
        caught = current - first_size
        catchup_rate = caught / (done_at - first_at) if first_at and done_at > first_at else 0.0
        complete = current >= args.catchup
        ROWS.append(
            Row(
                f"catch-up over mTLS into SQLite ({args.catchup:,} entries)",
                catchup_rate,
                "entries/s",
                goal=">= 100,000/s",
                verdict=("met" if catchup_rate >= 100_000 else "NOT met")
                if complete
                else "NOT met (timed out)",
                note=(
                    f"{current:,} of {args.catchup:,} in {done_at - spawned:.0f} s from spawn; "
                    f"states {states}"
                ),
            )
        )
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
        step = max(1, len(samples) // 8)
        NOTES.append(
            "catch-up progress (s from spawn, entries, RSS MB): "
            + ", ".join(f"({t:.0f}, {n:,}, {r / 1024:.0f})" for t, n, r in samples[::step])
        )
        say(f"catch-up: {catchup_rate:,.0f} entries/s, peak RSS {hwm / 1024:.0f} MB")

        # The partner must hold the whole log before the query phases, or they measure the
        # rest of the catch-up too (bounded: a partner that cannot catch up is noted).
        settle_deadline = time.perf_counter() + args.catchup_timeout / 2
        while replica_size(db, "EU") < args.catchup and time.perf_counter() < settle_deadline:
            await asyncio.sleep(1.0)
        if not complete:
            NOTES.append(
                f"the catch-up finished {time.perf_counter() - done_at:.0f} s after the "
                "timeout; phases 3-5 ran after it"
                if replica_size(db, "EU") >= args.catchup
                else "the partner had NOT caught up when phases 3-5 "
                "ran: their figures include catch-up load"
            )

        # 3. Check at concurrency 64: JP's admin listener vs a raw grpc.aio server ----------
        info = None
        for _ in range(100):
            info = read_runtime(jp.config.home)
            if info is not None:
                break
            await asyncio.sleep(0.1)
        assert info is not None, "JP wrote no runtime file"
        target = info.admin_target
        known = list(range(0, args.catchup, max(1, args.catchup // 5000)))
        rng = random.Random(5)
        operators = [eori_of(rng.choice(known)) for _ in range(4096)]
        channel = local_channel(jp, target)
        stub = query_pb2_grpc.QueryServiceStub(channel)
        fixed = None
        for eori in operators:
            response = await stub.Check(query_pb2.CheckRequest(operator_id=eori, issuer="EU"))
            if response.recognised:
                fixed = response
                break
        assert fixed is not None, "no recognised operator found at JP"
        recognised = sum(
            [
                (await stub.Check(query_pb2.CheckRequest(operator_id=e, issuer="EU"))).recognised
                for e in operators[:200]
            ]
        )
        (tmp / "fixed.bin").write_bytes(fixed.SerializeToString())
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
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert raw_proc.stdout is not None
        raw_port = int(raw_proc.stdout.readline())
        raw_channel = local_channel(jp, f"127.0.0.1:{raw_port}")
        raw_stub = query_pb2_grpc.QueryServiceStub(raw_channel)
        requests = [query_pb2.CheckRequest(operator_id=e, issuer="EU") for e in operators]

        async def raw_call(n: int) -> Any:
            return await raw_stub.Check(requests[n % len(requests)], timeout=30)

        async def gw_call(n: int) -> Any:
            return await stub.Check(requests[n % len(requests)], timeout=30)

        say(f"Check at concurrency {CHECK_CONCURRENCY}, {args.check_seconds} s each")
        raw_rate, raw_lat, raw_err = await timed_load(
            raw_call, args.check_seconds, CHECK_CONCURRENCY
        )
        gw_rate, gw_lat, gw_err = await timed_load(gw_call, args.check_seconds, CHECK_CONCURRENCY)
        ratio = gw_rate / raw_rate
        ROWS.append(
            Row(
                f"raw grpc.aio unary + mTLS, concurrency {CHECK_CONCURRENCY}",
                raw_rate,
                "calls/s",
                note=f"p50 {percentile(raw_lat, 0.5) * 1000:.1f} ms, "
                f"p99 {percentile(raw_lat, 0.99) * 1000:.1f} ms, errors {raw_err}",
            )
        )
        ROWS.append(
            Row(
                f"Check at JP admin listener, concurrency {CHECK_CONCURRENCY}",
                gw_rate,
                "calls/s",
                baseline=f"raw {raw_rate:,.0f}/s",
                ratio=f"{ratio:.1%}",
                goal=">= 85% of raw",
                verdict="met" if ratio >= 0.85 else "NOT met",
                note=f"p50 {percentile(gw_lat, 0.5) * 1000:.1f} ms, "
                f"p99 {percentile(gw_lat, 0.99) * 1000:.1f} ms, errors {gw_err}; "
                f"{recognised / 2:.0f}% of questions recognised",
            )
        )
        say(f"Check: {gw_rate:,.0f}/s vs raw {raw_rate:,.0f}/s")

        # 4. CheckMany ----------------------------------------------------------------------
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

        # 5. Publish-to-visible at the partner ---------------------------------------------
        eu_admin = local_channel(eu, listeners.admin_target)
        admin_stub = admin_pb2_grpc.AdminServiceStub(eu_admin)
        from gateway import codec
        from gateway.records import AeoStatusRecord

        # The partner must hold the whole log first, or the first samples time the rest of
        # the catch-up instead (bounded: a partner that cannot catch up ends the phase).
        settle_deadline = time.perf_counter() + args.catchup_timeout / 3
        while replica_size(db, "EU") < args.catchup and time.perf_counter() < settle_deadline:
            await asyncio.sleep(1.0)
        visible: list[float] = []
        acked: list[float] = []
        base = args.catchup + 1_000_000
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
            await asyncio.sleep(rng.uniform(0, 0.02))
        p50, p99 = percentile(visible, 0.5), percentile(visible, 0.99)
        ROWS.append(
            Row(
                "publish ack (AdminService.Publish, 1 record)",
                percentile(acked, 0.5) * 1000,
                "ms p50",
                note=f"p99 {percentile(acked, 0.99) * 1000:.1f} ms",
            )
        )
        ROWS.append(
            Row(
                f"publish-to-visible at JP ({len(visible)}/{len(acked)} seen)",
                p50 * 1000,
                "ms p50",
                baseline=f"ack p50 {percentile(acked, 0.5) * 1000:.1f} ms",
                goal="p50 <= 50 ms (p99 <= 250 ms)",
                verdict="met" if p50 <= 0.05 and len(visible) == len(acked) else "NOT met",
                note=f"p99 {p99 * 1000:.1f} ms; Check polled every {LATENCY_POLL_S * 1000:.0f} ms",
            )
        )
        say(f"publish-to-visible p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
        _, hwm = read_rss_kb(jp_proc.pid)
        NOTES.append(f"JP process VmHWM at the end of the run: {hwm / 1024:.0f} MB")
        await eu_admin.close()
        await channel.close()
        await raw_channel.close()
    finally:
        for proc in (raw_proc, jp_proc):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        jp_log.close()
        await eu_gateway.server.stop(1)
        await jp.close()
        await eu.close()
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


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
        figure = (
            "-"
            if r.figure is None
            else (f"{r.figure:,.1f}" if r.figure < 100 else f"{r.figure:,.0f}")
        )
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
    parser.add_argument("--catchup-timeout", type=float, default=900.0)
    parser.add_argument("--check-seconds", type=float)
    parser.add_argument("--checkmany-calls", type=int)
    parser.add_argument("--checkmany-size", type=int, default=10_000)
    parser.add_argument("--latency", type=int)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--role", choices=("bench", "raw-server"), default="bench")
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--response", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "raw-server":
        asyncio.run(raw_server_main(args.home, args.response))
        return
    defaults = (
        {
            "publish": 20_000,
            "catchup": 100_000,
            "check_seconds": 5.0,
            "checkmany_calls": 3,
            "latency": 50,
        }
        if args.quick
        else {
            "publish": 100_000,
            "catchup": 1_000_000,
            "check_seconds": 10.0,
            "checkmany_calls": 5,
            "latency": 200,
        }
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.catchup = max(args.catchup, args.publish)
    started = time.perf_counter()
    asyncio.run(bench(args))
    report(args, time.perf_counter() - started)


if __name__ == "__main__":
    main()

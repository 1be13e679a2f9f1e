"""Hub benchmark: one unmodified gateway replicating many partner administrations.

Run (from the repository root)::

    .venv/bin/python bench/bench_hub.py [--quick] [--partners N] [--entries N]
        [--processes N] [--timeout S] [--keep]

Goal (issue 7): a hub replicating 100 partners that publish 10,000 entries each has them all
caught up in <= 60 s. Defaults: 100 partners x 10,000 entries served by 4 processes;
``--quick``: 20 x 1,000 served by 2 processes (sized to keep ``bench/run --quick`` under two
minutes).

How (everything on loopback, real mTLS, SQLite, temporary directory):

1. The registry dataset. The packaged (real-world) dataset cannot make 100 administrations
   partners of one hub: entitlement is decided by the partner at append time from its active
   dataset (``gateway/entitlement.py``: the hub must recognise the partner's programme on the
   append day), and no administration has anywhere near 100 arrangements in it. So the bench
   writes a synthetic dataset (one programme per administration, one bilateral arrangement
   hub <-> partner each, effective 2015), validates it with the registry's own parser
   (``registry.dataset.parse_dataset``) and checks with the ``Recogniser`` that the hub
   recognises every partner; every node then runs with it.
2. The hub: ``mragw init`` (CLI), ``mragw registry use`` (CLI) and ``mragw partner export``
   (CLI) for its bundle and root fingerprint.
3. The partners: ``--processes`` worker processes (this script with ``--role partners``), each
   making its share of the partner nodes with ``initialise_node`` (own keys, CA and trust
   statement; partner-facing listener on a loopback port chosen in advance so the endpoint in
   the trust statement is right), activating the dataset with ``use_dataset`` (what
   ``mragw registry use`` runs), pinning the hub with ``add_partner`` (what ``mragw partner
   add`` runs), publishing ``--entries`` records with ``IssuerLog.publish``, exporting its
   bundle with ``export_bundle``, then serving every node with the real gateway
   (``gateway.serve.Gateway``: Exchange service and all background jobs) until SIGTERM.
4. The hub pins every partner with ``add_partner`` and one ``disclose`` pass (what
   ``mragw partner add`` runs), then is started as a plain ``mragw serve`` process. The
   replica sizes are read from the hub's SQLite file (read-only) every 0.5 s until every
   partner's replica holds its log size and none of its entries waits for its signature check
   (the hub's Check reads verified entries only; the time until all were merely stored is
   reported too). Time is counted from the hub's spawn; the time it became ready
   (``mragw health``) and its peak RSS (VmHWM) are reported too.

Bounded by ``--timeout`` (default 900 s, quick 60 s) for the catch-up and the same for the
set-up; every process started is stopped by pid and the temporary directory removed (unless
``--keep``).
"""

# A benchmark script: it starts processes, reads files and imports lazily on purpose.
# ruff: noqa: PLC0415, ASYNC240

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_support import (  # noqa: E402
    cpu_seconds,
    free_ports,
    mragw,
    read_rss_kb,
    stop_process,
    wait_healthy,
    write_summary,
)

HUB = "SG"
#: The one AEO type of every synthetic programme.
AEO_TYPE = "AEO"
EFFECTIVE = "2015-01-01"
GOAL_S = 60.0
POLL_S = 0.5


def partner_codes(count: int) -> list[str]:
    """``count`` officially assigned ISO codes other than the hub's (deterministic)."""
    from registry.iso3166 import OFFICIALLY_ASSIGNED

    codes = sorted(c for c in OFFICIALLY_ASSIGNED if c != HUB)
    if count > len(codes):
        raise SystemExit(f"--partners {count}: at most {len(codes)} administrations exist")
    return codes[:count]


def synthetic_dataset(partners: list[str]) -> bytes:
    """A dataset where the hub and each partner recognise each other's programme, validated
    by the registry's own parser and checked with its resolver before any node uses it."""
    from registry.dataset import parse_dataset
    from registry.resolver import Recogniser

    document = {
        "about": "Synthetic hub world of bench/bench_hub.py: one bilateral arrangement "
        "between the hub and every partner.",
        "programmes": [
            {"administration": code, "id": f"{code}-AEO", "types": [AEO_TYPE]}
            for code in [HUB, *partners]
        ],
        "unions": [],
        "arrangements": [
            {
                "id": f"{HUB}-{code}",
                "kind": "bilateral",
                "parties": [HUB, code],
                "signed": EFFECTIVE,
                "effective": EFFECTIVE,
            }
            for code in partners
        ],
    }
    content = json.dumps(document, indent=1).encode()
    recogniser = Recogniser(parse_dataset(content, "synthetic hub dataset"))
    today = datetime.now(UTC).date()  # entitlement is decided on the append day (UTC nodes)
    missing = [c for c in partners if not recogniser.check(HUB, c, AEO_TYPE, today).recognised]
    if missing:
        raise SystemExit(f"synthetic dataset: {HUB} does not recognise {missing}")
    return content


def partner_records(code: str, count: int) -> list[Any]:
    """``count`` consented, active status records of ``code``'s programme, one operator each."""
    from gateway.records import AeoStatusRecord, OperatorId

    rng = random.Random(code)
    first = date(2016, 1, 1)
    records = []
    for n in range(count):
        since = first + timedelta(days=rng.randint(0, 9 * 365))
        records.append(
            AeoStatusRecord(
                issuer=code,
                operator_ids=(OperatorId("TIN", f"{code}{n:010d}"),),
                name=f"Operator {code} {n}",
                country=code,
                authorisation=f"{code}{AEO_TYPE}{n:08d}",
                aeo_type=AEO_TYPE,
                status="ACTIVE",
                status_date=since,
                valid_from=since,
                valid_until=None,
                last_validation=since - timedelta(days=30),
                consent=True,
                audience=(),
            )
        )
    return records


# --- the partner worker (a separate process) ------------------------------------------------


async def partners_main(spec_file: Path, index: int) -> None:
    """Make, fill and serve this worker's partner nodes; print one READY line; serve until
    SIGTERM."""
    from gateway.datasets import use_dataset
    from gateway.issuer_log import IssuerLog
    from gateway.node import Node, initialise_node
    from gateway.partners import add_partner, export_bundle
    from gateway.serve import Gateway

    spec = json.loads(spec_file.read_text())
    work = Path(spec["work"])
    dataset = Path(spec["dataset"]).read_bytes()
    hub_bundle = Path(spec["hub_bundle"]).read_bytes()
    mine: dict[str, int] = spec["workers"][index]
    nodes: list[Node] = []
    gateways: list[Gateway] = []
    report: dict[str, dict[str, Any]] = {}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        for code, port in mine.items():
            config = await initialise_node(
                admin=code,
                home=work / code,
                listen=f"127.0.0.1:{port}",
                admin_listen="127.0.0.1:0",
                http_listen="127.0.0.1:0",
                db_url="",
            )
            node = Node(config)
            nodes.append(node)
            async with node.engine.begin() as conn:
                await use_dataset(conn, dataset, "synthetic hub dataset", actor="bench")
            # The hub is pinned before publishing, so entitlement is decided at append time.
            await add_partner(node, hub_bundle, spec["hub_fingerprint"], actor="bench")
            result = await IssuerLog(node).publish(
                partner_records(code, spec["entries"]), actor="bench"
            )
            bundle, fingerprint = await export_bundle(node)
            (work / f"{code}.bundle").write_bytes(bundle)
            report[code] = {
                "fingerprint": fingerprint,
                "appended": result.appended,
                "db": str(config.home / "mragw.db"),
            }
        for node in nodes:
            gateway = Gateway(node)
            await gateway.server.start()
            gateways.append(gateway)
        print("READY " + json.dumps(report), flush=True)
        await stop.wait()
    finally:
        for gateway in gateways:
            with contextlib.suppress(Exception):
                await gateway.server.stop(1)
        for node in nodes:
            with contextlib.suppress(Exception):
                await node.close()


# --- the benchmark --------------------------------------------------------------------------


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def log_sizes(db: Path) -> dict[str, int]:
    """Every log's size in a node's database (read-only; the gateway keeps writing)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {str(c): int(n) for c, n in conn.execute("SELECT code, size FROM logs")}
    finally:
        conn.close()


def entry_states(db: Path) -> dict[str, int]:
    """How many replicated entries are in each signature state (one scan, at the end)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        query = "SELECT sig_state, count(*) FROM entries WHERE log != ? GROUP BY sig_state"
        return {str(state): int(n) for state, n in conn.execute(query, (HUB,))}
    except sqlite3.OperationalError as error:
        return {"unknown": 0} if "no such column" in str(error) else {}
    finally:
        conn.close()


def verified(db: Path, codes: list[str]) -> list[str]:
    """Those of ``codes`` whose replica has no entry waiting for its signature check (the
    hub's Check reads verified entries only). A schema without that state: all of them."""
    if not codes:
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        query = "SELECT 1 FROM entries WHERE log = ? AND sig_state = 'unverified' LIMIT 1"
        return [c for c in codes if conn.execute(query, (c,)).fetchone() is None]
    except sqlite3.OperationalError as error:
        if "no such column" in str(error):
            return codes
        raise
    finally:
        conn.close()


def wait_ready_lines(
    workers: list[subprocess.Popen[str]], limit_s: float, log: Path | None = None
) -> dict[str, dict[str, Any]]:
    """The READY report of every worker, read as they come (bounded by ``limit_s``)."""
    selector = selectors.DefaultSelector()
    for proc in workers:
        assert proc.stdout is not None
        selector.register(proc.stdout, selectors.EVENT_READ, proc)
    reports: dict[str, dict[str, Any]] = {}
    pending = len(workers)
    deadline = time.perf_counter() + limit_s
    while pending:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError(f"{pending} partner workers not ready after {limit_s:.0f} s")
        for key, _ in selector.select(timeout=min(left, 1.0)):
            proc = key.data
            line = key.fileobj.readline()  # type: ignore[union-attr]
            if not line:
                tail = ""
                if log is not None and log.exists():
                    tail = "; its log ends: " + " | ".join(log.read_text().splitlines()[-8:])
                raise RuntimeError(f"partner worker {proc.pid} exited with {proc.wait()}{tail}")
            if line.startswith("READY "):
                reports.update(json.loads(line[len("READY ") :]))
                selector.unregister(key.fileobj)
                pending -= 1
    selector.close()
    return reports


async def pin_partners(hub: Path, work: Path, reports: dict[str, dict[str, Any]]) -> None:
    """What ``mragw partner add`` does for each bundle, in one process (one CLI start per
    partner would cost ~1 s each and measure nothing of interest)."""
    from gateway.disclosure import disclose
    from gateway.node import Node
    from gateway.partners import add_partner

    node = Node.open(hub)
    try:
        for code, report in reports.items():
            bundle = (work / f"{code}.bundle").read_bytes()
            await add_partner(node, bundle, report["fingerprint"], actor="bench", source=code)
        await disclose(node, actor="bench")
    finally:
        await node.close()


def bench(args: argparse.Namespace) -> list[dict[str, str]]:
    tmp = Path(tempfile.mkdtemp(prefix="mragw-hub-"))
    workers: list[subprocess.Popen[str]] = []
    hub_proc: subprocess.Popen[bytes] | None = None
    hub_log = None
    rows: list[dict[str, str]] = []
    worker_log = None
    try:
        codes = partner_codes(args.partners)
        dataset = tmp / "hub-world.json"
        dataset.write_bytes(synthetic_dataset(codes))
        hub = tmp / "hub"
        ports = free_ports(args.partners + 1)
        hub_port, partner_ports = ports[0], ports[1:]
        setup_started = time.perf_counter()
        for command in (
            (
                "init",
                "--admin",
                HUB,
                "--home",
                str(hub),
                "--listen",
                f"127.0.0.1:{hub_port}",
                "--admin-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ),
            ("registry", "use", str(dataset), "--home", str(hub)),
            ("partner", "export", "--home", str(hub), "--out", str(tmp / "hub.bundle"), "--json"),
        ):
            done = mragw(*command)
            if done.returncode != 0:
                raise RuntimeError(f"mragw {command[0]} failed: {done.stderr.strip()}")
        hub_fingerprint = json.loads(done.stdout)["fingerprint"]

        # Partners split evenly over the workers, each with its pre-chosen port.
        shares: list[dict[str, int]] = [{} for _ in range(args.processes)]
        for n, (code, port) in enumerate(zip(codes, partner_ports, strict=True)):
            shares[n % args.processes][code] = port
        spec = tmp / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "work": str(tmp),
                    "dataset": str(dataset),
                    "hub_bundle": str(tmp / "hub.bundle"),
                    "hub_fingerprint": hub_fingerprint,
                    "entries": args.entries,
                    "workers": shares,
                }
            )
        )
        say(
            f"{args.processes} workers making and filling {args.partners} partners "
            f"x {args.entries:,} entries"
        )
        # Their logs (the partners' gateways warn until the hub is up) go to a file.
        worker_log = open(tmp / "workers.log", "w")  # noqa: SIM115 - closed at the end
        for index in range(args.processes):
            workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--role",
                        "partners",
                        "--spec",
                        str(spec),
                        "--index",
                        str(index),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=worker_log,
                    text=True,
                    cwd=ROOT,
                )
            )
        reports = wait_ready_lines(workers, args.timeout, tmp / "workers.log")
        setup_s = time.perf_counter() - setup_started
        expected = {code: int(r["appended"]) for code, r in reports.items()}
        total = sum(expected.values())
        say(f"partners serving ({total:,} entries) after {setup_s:.0f} s; pinning them at the hub")
        asyncio.run(pin_partners(hub, tmp, reports))

        # The hub: a plain `mragw serve` of the node made above.
        hub_log = open(tmp / "hub-serve.log", "wb")  # noqa: SIM115 - closed at the end
        hub_proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mragw")), "serve", "--home", str(hub)],
            stdout=hub_log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        spawned = time.perf_counter()
        # The partners share this machine with the hub: their CPU while it catches up is
        # reported, since it is taken from the hub (on separate hosts it would not be).
        workers_cpu = sum(cpu_seconds(p.pid) for p in workers)
        ready_s = wait_healthy(hub, hub_proc, limit_s=args.timeout)
        say(f"hub serving after {ready_s:.1f} s; waiting for {len(expected)} replicas")
        stored_at: dict[str, float] = {}  # replica holds the partner's whole log
        done_at: dict[str, float] = {}  # ... and no entry waits for its signature check
        sizes: dict[str, int] = {}
        progress: list[tuple[float, int]] = []
        deadline = spawned + args.timeout
        while time.perf_counter() < deadline and len(done_at) < len(expected):
            if hub_proc.poll() is not None:
                raise RuntimeError(f"hub exited with {hub_proc.returncode}")
            with contextlib.suppress(sqlite3.OperationalError):
                sizes = log_sizes(hub / "mragw.db")
                now = time.perf_counter() - spawned
                for code, size in expected.items():
                    if code not in stored_at and sizes.get(code, 0) >= size:
                        stored_at[code] = now
                waiting = [c for c in stored_at if c not in done_at]
                for code in verified(hub / "mragw.db", waiting):
                    done_at[code] = now
                progress.append((now, sum(min(sizes.get(c, 0), n) for c, n in expected.items())))
            time.sleep(POLL_S)  # the sampling period; the hub runs in its own process
        _, hwm = read_rss_kb(hub_proc.pid)
        window = time.perf_counter() - spawned
        workers_cores = (sum(cpu_seconds(p.pid) for p in workers) - workers_cpu) / window
        hub_cores = cpu_seconds(hub_proc.pid) / window
        held = sum(min(sizes.get(c, 0), n) for c, n in expected.items())
        now = time.perf_counter() - spawned
        for label, reached, goal in (
            ("stored", stored_at, ""),
            ("stored and verified", done_at, f"<= {GOAL_S:.0f} s"),
        ):
            complete = len(reached) == len(expected)
            elapsed = max(reached.values()) if complete else now
            times = sorted(reached.values()) or [float("nan")]
            rows.append(
                {
                    "name": f"hub: {args.partners} partners x {args.entries:,} entries, "
                    f"all {label}",
                    "figure": f"{elapsed:.1f}" if complete else f"timed out at {elapsed:.0f}",
                    "unit": "s",
                    "baseline": f"{held / elapsed:,.0f} entries/s overall" if elapsed else "",
                    "goal": goal,
                    "verdict": ("met" if complete and elapsed <= GOAL_S else "NOT met")
                    if goal
                    else "",
                    "note": f"from the hub's spawn; {len(reached)}/{len(expected)} partners; "
                    f"per partner first {times[0]:.1f} s, median {times[len(times) // 2]:.1f} s",
                }
            )
        rows[-1]["note"] += (
            f"; {held:,} of {total:,} entries stored; hub ready (mragw health) {ready_s:.1f} s "
            f"after spawn; entry states at the hub {entry_states(hub / 'mragw.db')} (all "
            "'valid': the hub was entitled to every entry)"
        )
        rows.append(
            {
                "name": "hub: CPU while catching up (cores)",
                "figure": f"{hub_cores:.2f}",
                "unit": "cores",
                "baseline": f"partner processes {workers_cores:.2f} cores",
                "note": f"{os.cpu_count()} cores in all; the partner gateways' own background "
                "jobs run on the same machine as the hub",
            }
        )
        rows.append(
            {
                "name": "hub: peak RSS (VmHWM of the hub process)",
                "figure": f"{hwm / 1024:.0f}",
                "unit": "MB",
                "note": f"{len(expected)} partners replicated at once",
            }
        )
        step = max(1, len(progress) // 8)
        rows.append(
            {
                "name": "hub: set-up (nodes, dataset, publish, serve)",
                "figure": f"{setup_s:.0f}",
                "unit": "s",
                "note": f"{args.processes} worker processes; progress (s from the hub's spawn, "
                "entries held): " + ", ".join(f"({t:.0f}, {n:,})" for t, n in progress[::step]),
            }
        )
        say(f"hub: {len(done_at)}/{len(expected)} partners stored and verified after {now:.1f} s")
    finally:
        stop_process(hub_proc)
        if hub_log is not None:
            hub_log.close()
        for proc in workers:
            stop_process(proc)
        if worker_log is not None:
            worker_log.close()
        if args.keep:
            say("kept the temporary directory")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--partners", type=int)
    parser.add_argument("--entries", type=int)
    parser.add_argument("--processes", type=int)
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--summary", help="append the rows with a goal to this JSON-lines file")
    parser.add_argument("--role", choices=("bench", "partners"), default="bench")
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "partners":
        asyncio.run(partners_main(Path(args.spec), args.index))
        return
    defaults = (
        {"partners": 20, "entries": 1_000, "processes": 2, "timeout": 60.0}
        if args.quick
        else {"partners": 100, "entries": 10_000, "processes": 4, "timeout": 900.0}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.processes = max(1, min(args.processes, args.partners))
    started = time.perf_counter()
    rows = bench(args)
    print(
        f"{args.partners} partners x {args.entries:,} entries, {args.processes} partner "
        f"processes, {os.cpu_count()} cpus; wall {time.perf_counter() - started:.0f} s"
    )
    print()
    columns = ("name", "figure", "unit", "baseline", "ratio", "goal", "verdict", "note")
    print("| measurement | figure | unit | baseline (same run) | ratio | goal | verdict | note |")
    print("|---|---:|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row.get(c, "") for c in columns) + " |")
    if args.summary:
        write_summary(Path(args.summary), rows)


if __name__ == "__main__":
    main()

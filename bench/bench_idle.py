"""Idle cost of a gateway: RSS and CPU of ``mragw serve`` when nothing talks to it.

Run (from the repository root)::

    .venv/bin/python bench/bench_idle.py [--quick] [--operators N] [--window S] [--keep]

Two nodes made by ``initialise_node`` in a temporary directory (SQLite, no partners): one with
no data, one that published ``--operators`` records through ``IssuerLog.publish`` (default
1,000,000; quick 100,000), one operator per record. Each is started as a plain ``mragw serve``
process, waited for with ``mragw health`` (readiness is that answer, never a fixed sleep), then
left alone until its start-up jobs settle (two 0.5 s windows in a row under 5% of a core,
bounded at 120 s; the time is reported), and measured over ``--window`` seconds (default 10,
quick 3): RSS and VmHWM from /proc/<pid>/status, CPU time (utime + stime of every thread) from
/proc/<pid>/stat. Goals (issue 7): RSS <= 150 MB with no data; CPU ~0 while idle (no busy
polling: we call under 1% of a core "idle").

bench/bench_gateway.py runs the same measurement (``measure_idle``) at its end on its source
node, which then holds the catch-up log, so ``bench/run`` does not publish the big log twice.
"""

# A benchmark script: it starts processes and sleeps as a measuring window on purpose.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_support import (  # noqa: E402
    MRAGW,
    cpu_seconds,
    eu_records,
    make_node,
    read_rss_kb,
    stop_process,
    wait_healthy,
)

#: "CPU ~0 when idle": under this share of one core over the window.
IDLE_CPU_GOAL = 0.01
EMPTY_RSS_GOAL_MB = 150.0
SETTLE_WINDOW_S = 0.5
SETTLE_SHARE = 0.05
SETTLE_LIMIT_S = 120.0
PUBLISH_CALL = 100_000


@dataclasses.dataclass
class IdleResult:
    ready_s: float  # spawn to the first healthy answer
    settle_s: float  # after ready, until start-up jobs went quiet (SETTLE_LIMIT_S: never)
    settled: bool
    rss_mb: float
    hwm_mb: float
    cpu_share: float  # CPU seconds per wall second over the window (1.0 = one core)
    window_s: float


def measure_idle(home: Path, window_s: float) -> IdleResult:
    """Start ``mragw serve --home home``, wait until it serves and settles, measure, stop."""
    log = open(home / "serve-idle.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [MRAGW, "serve", "--home", str(home)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
    )
    try:
        ready_s = wait_healthy(home, proc)
        # Start-up jobs (disclosure pass, first checkpoint) may still run once the listeners
        # answer; the idle figure is about what follows them, and their length is reported.
        started = time.perf_counter()
        quiet = 0
        while quiet < 2 and time.perf_counter() - started < SETTLE_LIMIT_S:
            before = cpu_seconds(proc.pid)
            time.sleep(SETTLE_WINDOW_S)
            calm = cpu_seconds(proc.pid) - before < SETTLE_SHARE * SETTLE_WINDOW_S
            quiet = quiet + 1 if calm else 0
        settle_s = time.perf_counter() - started
        before, t0 = cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(window_s)  # the measuring window: nothing talks to the gateway
        used, elapsed = cpu_seconds(proc.pid) - before, time.perf_counter() - t0
        rss, hwm = read_rss_kb(proc.pid)
        if proc.poll() is not None:
            raise RuntimeError(f"mragw serve exited with {proc.returncode} while idle")
        return IdleResult(
            ready_s=ready_s,
            settle_s=settle_s,
            settled=quiet >= 2,
            rss_mb=rss / 1024,
            hwm_mb=hwm / 1024,
            cpu_share=used / elapsed,
            window_s=elapsed,
        )
    finally:
        stop_process(proc)
        log.close()


def idle_rows(results: list[tuple[str, IdleResult]]) -> list[dict[str, Any]]:
    """Table rows (the fields of bench_gateway.Row) for each measured node."""
    rows: list[dict[str, Any]] = []
    for n, (label, r) in enumerate(results):
        settle = (
            f"settled {r.settle_s:.1f} s after ready"
            if r.settled
            else (f"NOT settled after {r.settle_s:.0f} s")
        )
        rss_goal = f"<= {EMPTY_RSS_GOAL_MB:.0f} MB" if n == 0 else "reported"
        rows.append(
            {
                "name": f"idle gateway, {label}: RSS",
                "figure": r.rss_mb,
                "unit": "MB",
                "baseline": f"VmHWM {r.hwm_mb:.0f} MB",
                "goal": rss_goal,
                "verdict": "" if n else ("met" if r.rss_mb <= EMPTY_RSS_GOAL_MB else "NOT met"),
                "note": f"ready (mragw health) {r.ready_s:.1f} s after spawn; {settle}",
            }
        )
        rows.append(
            {
                "name": f"idle gateway, {label}: CPU",
                "figure": r.cpu_share * 100,
                "unit": "% of a core",
                "goal": f"~0 (< {IDLE_CPU_GOAL:.0%})",
                "verdict": "met" if r.cpu_share < IDLE_CPU_GOAL else "NOT met",
                "note": f"utime+stime over a {r.window_s:.1f} s window",
            }
        )
    return rows


async def build(tmp: Path, operators: int) -> tuple[Path, Path]:
    """An empty node and one whose own log holds ``operators`` records (one operator each)."""
    from gateway.issuer_log import IssuerLog

    empty = await make_node(tmp / "empty", "US")
    await empty.close()
    full = await make_node(tmp / "full", "EU")
    try:
        for first in range(0, operators, PUBLISH_CALL):
            count = min(PUBLISH_CALL, operators - first)
            await IssuerLog(full).publish(eu_records(first, count), actor="bench")
    finally:
        await full.close()
    return empty.config.home, full.config.home


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--operators", type=int)
    parser.add_argument("--window", type=float)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    operators = args.operators or (100_000 if args.quick else 1_000_000)
    window = args.window or (3.0 if args.quick else 10.0)
    tmp = Path(tempfile.mkdtemp(prefix="mragw-idle-"))
    try:
        started = time.perf_counter()
        empty, full = asyncio.run(build(tmp, operators))
        print(f"built: {operators:,} records published in {time.perf_counter() - started:.0f} s")
        results = [
            ("no data", measure_idle(empty, window)),
            (f"{operators:,} operators stored", measure_idle(full, window)),
        ]
    finally:
        if args.keep:
            print("kept the temporary directory", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("| measurement | figure | unit | baseline | goal | verdict | note |")
    print("|---|---:|---|---|---|---|---|")
    for row in idle_rows(results):
        print(
            f"| {row['name']} | {row['figure']:,.1f} | {row['unit']} | {row.get('baseline', '')} "
            f"| {row['goal']} | {row['verdict']} | {row['note']} |"
        )


if __name__ == "__main__":
    main()

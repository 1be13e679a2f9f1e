"""Helpers for the bench scripts: realistic records, node homes, onboarding, processes, RSS.

Kept apart from the benchmark script so the child processes it starts (the catch-up sink) and
the script share the same data generator and setup code. Not a test, not product code.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import string
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from gateway.node import Node, initialise_node
from gateway.partners import add_partner, export_bundle
from gateway.records import AeoStatusRecord, OperatorId
from gateway.server.runtime import read_runtime

#: EU member states on every date the generator uses (2014-01-01 onwards; HR joined 2013-07-01).
MEMBER_STATES = ("DE", "FR", "NL", "IT", "ES", "BE", "PL", "AT", "SE", "IE", "HR", "CZ")
#: Weights of the states above, roughly the shape of the EU's AEO population.
MEMBER_WEIGHTS = (32, 10, 9, 9, 7, 5, 5, 4, 4, 3, 1, 3)
#: EU AEO types: AEOF is the most common authorisation, AEOS the rarest.
TYPES = ("AEOF", "AEOC", "AEOS")
TYPE_WEIGHTS = (55, 38, 7)
_WORDS = (
    "Rhein",
    "Logistik",
    "Transport",
    "Spedition",
    "Hafen",
    "Maritime",
    "Cargo",
    "Freight",
    "Industrie",
    "Handel",
    "Precision",
    "Chemicals",
    "Textiles",
    "Foods",
    "Trading",
    "Global",
    "Nord",
    "Sud",
    "Euro",
    "Atlantic",
    "Baltic",
    "Alpine",
    "Danube",
    "Iberia",
    "Forwarding",
)
_FORMS = ("GmbH", "AG", "SA", "SAS", "BV", "NV", "SpA", "Srl", "SL", "sp. z o.o.", "AB", "Ltd")

EU_EPOCH = date(2014, 1, 1)

#: The project's CLI in the same virtual environment as this interpreter.
MRAGW = str(Path(sys.executable).with_name("mragw"))


_STATE_TABLE = tuple(
    s for s, w in zip(MEMBER_STATES, MEMBER_WEIGHTS, strict=True) for _ in range(w)
)


def state_of(n: int) -> str:
    """The member state of record ``n`` (a fixed function of ``n``, weighted as above)."""
    return _STATE_TABLE[(n * 2654435761) % len(_STATE_TABLE)]


def eori_of(n: int) -> str:
    """The EORI of record ``n`` (without generating the record)."""
    return f"{state_of(n)}{n:012d}"


def eu_record(n: int, rng: random.Random) -> AeoStatusRecord:
    """The ``n``-th synthetic EU AEO status record: one authorisation per ``n``."""
    state = state_of(n)
    aeo_type = rng.choices(TYPES, TYPE_WEIGHTS)[0]
    since = EU_EPOCH + timedelta(days=rng.randint(0, 11 * 365))
    # 1 in 20 records is a later status change (suspension or revocation) of an authorisation.
    status = "ACTIVE" if rng.random() >= 0.05 else rng.choice(("SUSPENDED", "REVOKED"))
    valid_until = since + timedelta(days=400) if status == "REVOKED" else None
    name = (
        f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} "
        f"{''.join(rng.choices(string.ascii_uppercase, k=3))} {rng.choice(_FORMS)}"
    )
    eori = eori_of(n)
    return AeoStatusRecord(
        issuer=state,
        operator_ids=(OperatorId("EORI", eori),),
        name=name,
        country=state,
        authorisation=f"{state}{aeo_type}{n:08d}",
        aeo_type=aeo_type,
        status=status,
        status_date=since,
        valid_from=since,
        valid_until=valid_until,
        last_validation=since - timedelta(days=rng.randint(10, 60)),
        consent=rng.random() < 0.9,
        audience=(),
    )


def eu_records(start: int, count: int, seed: int = 7) -> list[AeoStatusRecord]:
    """Records ``start`` .. ``start + count - 1`` (deterministic for the same start and count)."""
    rng = random.Random(seed * 1_000_003 + start)
    return [eu_record(n, rng) for n in range(start, start + count)]


async def make_node(home: Path, admin: str) -> Node:
    """A fresh node home (keys, certificates, SQLite database) listening on loopback port 0."""
    config = await initialise_node(
        admin=admin,
        home=home,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        db_url="",
    )
    return Node(config)


async def pin(node: Node, partner: Node) -> None:
    """``node`` pins ``partner`` from its exported bundle and fingerprint."""
    bundle, fingerprint = await export_bundle(partner)
    await add_partner(node, bundle, fingerprint, actor="bench")


def read_rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in kB from /proc."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) from /proc/<pid>/stat, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        text = stat.read()
    # The command name (field 2) may hold spaces; the fields after its closing ")" do not.
    fields = text[text.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux; a common default)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as ports:
            low, high = (int(part) for part in ports.read().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that are free now and stay free until a node binds
    them, for nodes whose trust statement must name their port before they listen (minutes
    later, after publishing). They are taken below the ephemeral range: a port bound with 0
    can meanwhile be handed to some outgoing connection, which made such a node fail to
    listen. The sockets are held open together so no two are the same, then closed."""
    low, _ = ephemeral_range()
    rng = random.Random()
    candidates = list(range(10_000, max(10_000 + count, low)))
    rng.shuffle(candidates)
    sockets: list[socket.socket] = []
    try:
        for port in candidates:
            if len(sockets) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        if len(sockets) < count:
            raise RuntimeError(f"only {len(sockets)} free loopback ports below {low}")
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def stop_process(proc: subprocess.Popen[Any] | None, grace_s: float = 30.0) -> None:
    """SIGTERM the process we started (by its pid), then SIGKILL if it does not exit."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def mragw(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run the project's CLI from this virtual environment (exit code not checked)."""
    return subprocess.run(
        [MRAGW, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_healthy(home: Path, proc: subprocess.Popen[Any], limit_s: float = 120.0) -> float:
    """Wait until ``mragw health`` says the gateway serves; returns the seconds it took. Raises
    if the process exits or ``limit_s`` passes (readiness is the health answer, never a sleep).

    Each probe starts the CLI (about a second of CPU on this machine), so probing back to
    back would load the very start-up being waited for: the probes begin once the process
    wrote its runtime file (a cheap file read, done when its listeners are up)."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        if proc.poll() is not None:
            raise RuntimeError(f"mragw serve exited with {proc.returncode} before serving")
        info = read_runtime(home)
        if (
            info is not None
            and int(info.pid) == proc.pid
            and mragw("health", "--home", str(home), timeout=30).returncode == 0
        ):
            return time.perf_counter() - started
        time.sleep(0.05)  # between cheap checks; the health probe is the readiness test
    raise TimeoutError(f"gateway not serving after {limit_s:.0f} s")


def write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append the rows that carry a goal to ``path`` (JSON lines) for bench/summary.py."""
    with path.open("a", encoding="utf-8") as out:
        for row in rows:
            if row.get("goal"):
                out.write(json.dumps({k: v for k, v in row.items() if k != "note"}) + "\n")

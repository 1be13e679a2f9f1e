"""``mragw demo``: three administrations (EU, JP, US) on loopback, end to end.

Each administration is a real ``mragw serve`` process with its own home, keys, SQLite database
and mTLS listeners. The demo onboards them to each other with partner bundles and pinned
fingerprints, publishes a small realistic data set through each gateway's admin API, waits for
replication, and asks each gateway's QueryService the questions a risk engine would. It stops
every gateway cleanly at the end or on Ctrl-C, and removes its temporary directory unless asked
to keep it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from gateway import demo_data, keys
from gateway.cli.remote import probe_health, publish_remote, running_status
from gateway.errors import UnreachableError
from gateway.evidence import EvidenceRequest, build_evidence
from gateway.evidence_verify import verify_evidence
from gateway.node import Node, initialise_node
from gateway.partners import add_partner, export_bundle
from gateway.records import parse_records
from gateway.server.runtime import read_runtime
from gateway.server.tls import local_channel
from gateway.storage.schema import partners
from mra.v1 import query_pb2, query_pb2_grpc, records_pb2

ADMINS = ("EU", "JP", "US")
READY_DEADLINE_S = 60.0
REPLICATION_DEADLINE_S = 60.0
ROTATION_OVERLAP = dt.timedelta(seconds=2)


@dataclass
class DemoNode:
    admin: str
    home: Path
    process: subprocess.Popen[bytes] | None = None
    _node: Node | None = None

    @property
    def node(self) -> Node:
        """The demo's own handle on this home (one engine for the whole run)."""
        if self._node is None:
            self._node = Node.open(self.home, {})
        return self._node

    def admin_target(self) -> str:
        info = read_runtime(self.home)
        if info is None:
            raise UnreachableError(f"{self.admin} gateway is not running")
        return info.admin_target

    async def close(self) -> None:
        if self._node is not None:
            await self._node.close()
            self._node = None


@dataclass(frozen=True)
class Question:
    at: str  # the administration asking
    operator: str
    issuer: str
    date: str
    why: str


QUESTIONS: tuple[Question, ...] = (
    Question("JP", "DE4711000012345", "EU", "2025-01-15", "EU AEOF holder at Japanese customs"),
    Question(
        "JP",
        "DE4711000067890",
        "EU",
        "2025-01-15",
        "EU AEOC-only holder: never sent to JP (security component required)",
    ),
    Question(
        "JP",
        "NL812345678",
        "EU",
        "2025-01-15",
        "EU holder without consent: never sent to any partner",
    ),
    Question("US", "FR55210098700019", "EU", "2025-01-15", "EU AEOS holder at US CBP"),
    Question(
        "US",
        "HR12345678901",
        "EU",
        "2025-01-15",
        "Croatian AEOF holder (Croatia in the EU since 2013-07-01)",
    ),
    Question(
        "EU",
        "USGRELAK1234CHI",
        "US",
        "2013-01-15",
        "C-TPAT member in the EU before 2013-01-31 (EU<-US phase-in)",
    ),
    Question("EU", "USGRELAK1234CHI", "US", "2025-01-15", "the same member today"),
    Question("EU", "JP1010001012345", "JP", "2025-01-15", "Japanese AEO in the EU"),
    Question("US", "JP1010001098765", "JP", "2025-01-15", "Japanese AEO at US CBP"),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def create_nodes(root: Path, console: Console) -> list[DemoNode]:
    nodes: list[DemoNode] = []
    for admin in ADMINS:
        home = root / admin.lower()
        await initialise_node(
            admin=admin,
            home=home,
            listen=f"127.0.0.1:{free_port()}",
            admin_listen=f"127.0.0.1:{free_port()}",
            http_listen="127.0.0.1:0",
            db_url="",
        )
        nodes.append(DemoNode(admin, home))
        console.print(f"  created [bold]{admin}[/] in {home}")
    return nodes


async def onboard(nodes: Sequence[DemoNode], console: Console) -> None:
    bundles: dict[str, tuple[bytes, str]] = {}
    for demo in nodes:
        bundles[demo.admin] = await export_bundle(demo.node)
        console.print(f"  {demo.admin} root key fingerprint {bundles[demo.admin][1][:16]}...")
    for demo in nodes:
        for other, (bundle, fingerprint) in bundles.items():
            if other != demo.admin:
                await add_partner(demo.node, bundle, fingerprint, actor="demo")
    console.print("  every administration pinned the other two (fingerprints checked)")


def start(demo: DemoNode, log_dir: Path) -> None:
    log_file = (log_dir / f"{demo.admin.lower()}.log").open("wb")
    demo.process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
        [sys.executable, "-m", "gateway.cli.main", "serve", "--home", str(demo.home)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def wait_ready(demo: DemoNode) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        if demo.process is not None and demo.process.poll() is not None:
            raise UnreachableError(f"{demo.admin} gateway exited with {demo.process.returncode}")
        if read_runtime(demo.home) is not None:
            serving, _ = await probe_health(demo.node, None)
            if serving:
                return
        await asyncio.sleep(0.1)
    raise UnreachableError(f"{demo.admin} gateway not serving within {READY_DEADLINE_S:.0f}s")


async def publish(demo: DemoNode, rows: list[dict[str, Any]]) -> dict[str, Any]:
    data = "\n".join(json.dumps(r) for r in rows).encode()
    records = parse_records(data, source=f"{demo.admin.lower()}-demo.jsonl")
    return await publish_remote(demo.node, demo.admin_target(), records)


async def status(demo: DemoNode) -> dict[str, Any]:
    report = await running_status(demo.node, None)
    if report is None:
        raise UnreachableError(f"{demo.admin} gateway is not running")
    return report


async def wait_replicated(nodes: Sequence[DemoNode]) -> None:
    """Until every gateway holds every partner's whole log (as far as its checkpoint)."""
    deadline = time.monotonic() + REPLICATION_DEADLINE_S
    while time.monotonic() < deadline:
        reports = {d.admin: await status(d) for d in nodes}
        sizes = {a: r["log_size"] for a, r in reports.items()}
        if all(
            p["entries"] == sizes[p["admin"]] and p["connected"] and not p["unverified"]
            for r in reports.values()
            for p in r["partners"]
        ):
            return
        await asyncio.sleep(0.2)
    raise UnreachableError("replication did not complete in time")


async def ask(demo: DemoNode, question: Question) -> query_pb2.CheckResponse:
    async with local_channel(demo.node, demo.admin_target()) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        return await stub.Check(
            query_pb2.CheckRequest(
                operator_id=question.operator, issuer=question.issuer, at=question.date
            ),
            timeout=30,
        )


def answer_row(question: Question, response: query_pb2.CheckResponse) -> list[str]:
    if response.recognised:
        via = sorted(
            {a for t in response.types if t.recognised for a in t.arrangements}
            | {t.programme for t in response.types if t.recognised and not t.arrangements}
        )
        verdict = f"[green]yes[/], {', '.join(via)}"
    else:
        reasons = [r.code for r in response.reasons]
        for t in response.types:
            reasons.extend(r.code for r in t.reasons)
        verdict = f"[red]no[/], {', '.join(dict.fromkeys(reasons))}"
    held = ", ".join(f"{t.type} {_status_name(t.status)}" for t in response.types)
    operator = f"{question.operator} ({question.issuer}{'; ' + held if held else ''})"
    return [question.at, operator, question.date, verdict, question.why]


def _status_name(value: records_pb2.AuthorisationStatus.ValueType) -> str:
    return records_pb2.AuthorisationStatus.Name(value).removeprefix("AUTHORISATION_STATUS_")


async def show_checks(
    nodes: dict[str, DemoNode], questions: Sequence[Question], console: Console, title: str
) -> list[query_pb2.CheckResponse]:
    table = Table(title=title, show_lines=False)
    for column in ("at", "operator (issuer; status held)", "date", "recognised?", "case"):
        table.add_column(column, overflow="fold")
    answers = []
    for question in questions:
        response = await ask(nodes[question.at], question)
        answers.append(response)
        table.add_row(*answer_row(question, response))
    console.print(table)
    return answers


async def show_status(nodes: Sequence[DemoNode], console: Console) -> None:
    table = Table(title="Gateways")
    for column in ("gateway", "own log", "partner", "connected", "entries held", "quarantined"):
        table.add_column(column)
    for demo in nodes:
        report = await status(demo)
        for p in report["partners"]:
            table.add_row(
                demo.admin,
                str(report["log_size"]),
                p["admin"],
                "yes" if p["connected"] else "no",
                str(p["entries"]),
                "yes" if p["quarantined"] else "no",
            )
    console.print(table)


async def rotate_and_prove(
    by_admin: dict[str, DemoNode], nodes: Sequence[DemoNode], root: Path, console: Console
) -> None:
    """Steps 7 and 8: a signing key rotation while running, then offline evidence."""
    eu, jp = by_admin["EU"], by_admin["JP"]
    console.print("7. The EU rotates its log signing key while everything runs")
    statement = await keys.rotate_signing(eu.node, overlap=ROTATION_OVERLAP)
    console.print(
        f"   trust statement v{statement.version} publishes the new key; it signs from "
        f"{ROTATION_OVERLAP.total_seconds():.0f}s on"
    )
    await wait_for_new_key(eu.node)
    revalidated = {**demo_data.eu_records()[0], "last_validation": "2025-02-01"}
    result = await publish(eu, [revalidated])
    await wait_replicated(nodes)
    followed = []
    for partner in (jp, by_admin["US"]):
        async with partner.node.engine.connect() as conn:
            followed.append(
                (
                    await conn.execute(
                        select(partners.c.trust_version).where(partners.c.code == "EU")
                    )
                ).scalar_one()
            )
    version = min(followed)
    console.print(
        f"   EU log size {result['tree_size']}: JP and US followed to statement v{version} "
        "and verified the new key's entries, with no restart and no manual step"
    )
    console.print("8. JP writes evidence a third party can check offline")
    produced = await build_evidence(
        jp.node, EvidenceRequest(operator="DE4711000012345", issuer="EU", at="2025-01-15")
    )
    bundle = root / "evidence-DE4711000012345.json"
    bundle.write_bytes(produced.data)
    anchors = [await by_admin[code].node.root_fingerprint() for code in ("EU", "JP")]
    report = verify_evidence(bundle.read_bytes(), anchors)
    console.print(f"   {bundle.name}, verified with the EU and JP root fingerprints only:")
    for line in report.summary().splitlines():
        console.print(f"   {line}", highlight=False, markup=False)


async def wait_for_new_key(node: Node) -> None:
    """Until the rotated key's overlap has passed and the node signs with it."""
    async with node.engine.connect() as conn:
        statement = await node.trust_statement(conn)
    newest = max(statement.signing_keys, key=lambda k: k.valid_from)
    deadline = asyncio.get_running_loop().time() + ROTATION_OVERLAP.total_seconds() + 30
    while asyncio.get_running_loop().time() < deadline:
        async with node.engine.connect() as conn:
            checkpoint, _ = await node.active_signers(conn)
        if checkpoint.key_id == newest.key_id:
            return
        await asyncio.sleep(0.2)
    raise UnreachableError("the rotated signing key did not become active")


def stop(nodes: Sequence[DemoNode], grace_s: float = 15.0) -> None:
    for demo in nodes:
        if demo.process is not None and demo.process.poll() is None:
            demo.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for demo in nodes:
        if demo.process is None:
            continue
        with contextlib.suppress(subprocess.TimeoutExpired):
            demo.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        if demo.process.poll() is None:
            demo.process.kill()
            demo.process.wait()


async def scenario(
    root: Path, console: Console, nodes_out: list[DemoNode], keep_running: bool
) -> int:
    try:
        return await _scenario(root, console, nodes_out, keep_running)
    finally:
        for demo in nodes_out:
            await demo.close()


async def _scenario(
    root: Path, console: Console, nodes_out: list[DemoNode], keep_running: bool
) -> int:
    console.rule("[bold]mra-gateway demo: EU, Japan and the United States")
    console.print("1. Each administration creates its gateway (keys, TLS CA, database)")
    nodes = await create_nodes(root, console)
    nodes_out.extend(nodes)
    console.print("2. Onboarding: partner bundles exchanged, root fingerprints pinned")
    await onboard(nodes, console)
    console.print("3. Starting the three gateways (mutual TLS on loopback)")
    for demo in nodes:
        start(demo, root)
    for demo in nodes:
        await wait_ready(demo)
    console.print("   all three serving")
    by_admin = {d.admin: d for d in nodes}
    console.print("4. Publishing signed AEO records through each gateway's admin API")
    for admin, rows in (
        ("EU", demo_data.eu_records()),
        ("JP", demo_data.jp_records()),
        ("US", demo_data.us_records()),
    ):
        result = await publish(by_admin[admin], rows)
        console.print(
            f"   {admin}: {result['appended']} entries appended, log size {result['tree_size']}"
        )
    await wait_replicated(nodes)
    console.print("   replicated: every gateway verified its partners' logs")
    await show_status(nodes, console)
    console.print("5. Risk engines ask their own gateway")
    answers = await show_checks(by_admin, QUESTIONS, console, "Is this operator recognised here?")
    console.print("6. The EU revokes the French AEOS holder; the change reaches its partners")
    await publish(by_admin["EU"], [demo_data.eu_revocation()])
    await wait_replicated(nodes)
    later = (
        Question(
            "US", "FR55210098700019", "EU", "2025-06-01", "after the revocation of 2025-03-01"
        ),
        Question(
            "US",
            "FR55210098700019",
            "EU",
            "2024-06-01",
            "a past date still answers from the history",
        ),
    )
    answers.extend(await show_checks(by_admin, later, console, "After the revocation"))
    await rotate_and_prove(by_admin, nodes, root, console)
    console.rule("[bold]done")
    if keep_running:
        console.print(f"Gateways keep running in {root}; press Ctrl-C to stop them.")
        stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop_event.set)
        await stop_event.wait()
    expected = [True, False, False, True, True, False, True, True, True, False, True]
    got = [a.recognised for a in answers]
    if got != expected:
        console.print(f"[red]unexpected answers: {got}[/]")
        return 1
    return 0


def run_demo(
    *, keep: bool = False, keep_running: bool = False, directory: Path | None = None
) -> int:
    console = Console(stderr=False)
    root = Path(tempfile.mkdtemp(prefix="mragw-demo-", dir=directory))
    nodes: list[DemoNode] = []
    try:
        return asyncio.run(scenario(root, console, nodes, keep_running))
    except KeyboardInterrupt:
        console.print("\ninterrupted: stopping the gateways")
        return 130
    except grpc.aio.AioRpcError as error:
        raise UnreachableError(f"{error.code().name}: {error.details()}") from error
    finally:
        stop(nodes)
        if keep or keep_running:
            console.print(
                f"kept {root} (gateway logs: {', '.join(a.lower() + '.log' for a in ADMINS)})"
            )
        else:
            shutil.rmtree(root, ignore_errors=True)


__all__ = ["run_demo"]

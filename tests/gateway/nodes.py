"""Several real gateways in one test process: node homes made by ``initialise_node``, each with
its own database, serving on 127.0.0.1 port 0 over real mTLS, onboarded to each other through
their partner bundles and pinned fingerprints (as ``mragw partner export|add`` do).

No test lives here; ``test_multi_node``, ``test_hostile_partner``, ``test_publish_faults`` and
``test_entitlement`` import these helpers. Readiness is always polled with a bounded deadline
(:func:`eventually`), never slept for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from crypto.checkpoint import verify_checkpoint
from crypto.merkle import root_from_leaf_hashes
from gateway.disclosure import disclose
from gateway.issuer_log import IssuerLog, PublishResult
from gateway.node import Node, initialise_node
from gateway.partners import add_partner, export_bundle, set_endpoint
from gateway.records import Record, parse_records
from gateway.serve import Gateway
from gateway.storage.schema import entries, logs, partners, records, tiles
from gateway.storage.tiles import root_at
from tests.gateway.conftest import fresh_pg_database
from tests.gateway.test_server_support import eventually

__all__ = [
    "Cluster",
    "bulk_records",
    "cluster_of",
    "eventually",
    "jsonl",
    "log_head",
    "records_of",
    "storage_url",
]

# Fast polling and back-off so that a test never waits for production-sized intervals.
FAST_ENV = {
    "MRAGW_REPLICATION__POLL_INTERVAL_S": "0.05",
    "MRAGW_REPLICATION__BACKOFF_INITIAL_S": "0.05",
    "MRAGW_REPLICATION__BACKOFF_MAX_S": "0.3",
    "MRAGW_SERVER__SHUTDOWN_GRACE_S": "0.2",
}


def jsonl(rows: Sequence[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def bulk_records(count: int, issuer: str = "DE") -> list[dict[str, Any]]:
    """``count`` distinct, valid EU AEOF status records (all entitled to JP)."""
    return [
        {
            "kind": "aeo_status",
            "issuer": issuer,
            "operator_ids": [{"scheme": "EORI", "value": f"{issuer}9{n:012d}"}],
            "name": f"Operator {n}",
            "country": issuer,
            "authorisation": f"{issuer}AEOF{n:07d}",
            "type": "AEOF",
            "status": "ACTIVE",
            "status_date": "2020-01-01",
            "valid_from": "2020-01-01",
            "valid_until": None,
            "last_validation": "2020-01-01",
            "consent": n % 3 != 0,
            "audience": [],
        }
        for n in range(count)
    ]


def records_of(rows: Sequence[dict[str, Any]], source: str = "test") -> list[Record]:
    return parse_records(jsonl(rows), source=f"{source}.jsonl")


async def storage_url(db_url: str, tmp_path: Path, code: str, *, first: bool) -> str:
    """The database of one node: the ``db_url`` fixture's for the first node, then a fresh
    one of the same kind (a new PostgreSQL database, or a new SQLite file) per further node."""
    if first:
        return db_url
    if db_url.startswith("postgresql"):
        return await fresh_pg_database()
    return f"sqlite+aiosqlite:///{tmp_path / f'{code.lower()}.db'}"


async def make_home(
    tmp_path: Path, code: str, db_url: str, env: dict[str, str] | None = None
) -> Node:
    home = tmp_path / code.lower()
    await initialise_node(
        admin=code,
        home=home,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        db_url=db_url,
    )
    return Node.open(home, environ={**FAST_ENV, **(env or {})})


@dataclass(frozen=True)
class LogHead:
    size: int
    root: bytes
    checkpoint: str | None
    checkpoint_size: int


async def log_head(node: Node, code: str) -> LogHead:
    async with node.engine.connect() as conn:
        row = (await conn.execute(select(logs).where(logs.c.code == code))).one()
    return LogHead(int(row.size), bytes(row.root), row.checkpoint, int(row.checkpoint_size))


async def partner_row(node: Node, code: str) -> Any:
    async with node.engine.connect() as conn:
        return (await conn.execute(select(partners).where(partners.c.code == code))).one()


async def assert_log_consistent(node: Node, code: str, origin_key: Any = None) -> LogHead:
    """The log ``code`` held by ``node`` is whole: entries 0..size-1 with no gap or duplicate,
    root over the stored leaves == head root == root from the tiles, and (for an own log) the
    stored checkpoint verifies for that size and root."""
    head = await log_head(node, code)
    async with node.engine.connect() as conn:
        leaves = [
            (int(r.idx), bytes(r.leaf_hash))
            for r in (
                await conn.execute(
                    select(entries.c.idx, entries.c.leaf_hash)
                    .where(entries.c.log == code)
                    .order_by(entries.c.idx)
                )
            ).all()
        ]
        from_tiles = await root_at(conn, code, head.size)
    assert [i for i, _ in leaves] == list(range(head.size)), "entries have gaps or extras"
    root = root_from_leaf_hashes([h for _, h in leaves])
    assert root == head.root == from_tiles
    if origin_key is not None:
        assert head.checkpoint is not None
        cp = verify_checkpoint(head.checkpoint, {node.origin: origin_key}, node.origin)
        assert (cp.size, cp.root_hash) == (head.size, head.root)
    return head


async def count_rows(node: Node, table: Any, *where: Any) -> int:
    async with node.engine.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one()
        )


class Cluster:
    """Gateways of several administrations, each with its own home and database."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.nodes: dict[str, Node] = {}
        self.gateways: dict[str, Gateway] = {}
        self.endpoints: dict[str, str] = {}
        self._env: dict[str, dict[str, str]] = {}

    async def add(self, code: str, **env: str) -> Node:
        url = await storage_url(self.db_url, self.tmp_path, code, first=not self.nodes)
        self.nodes[code] = await make_home(self.tmp_path, code, url, env)
        self._env[code] = env
        return self.nodes[code]

    def node(self, code: str) -> Node:
        return self.nodes[code]

    async def start(self, code: str) -> Gateway:
        """Serve ``code`` (fresh Node object: a stopped gateway disposed of the old engine) and
        point every partner that pinned it at its real port."""
        assert code not in self.gateways
        node = Node.open(self.nodes[code].config.home, environ={**FAST_ENV, **self._env[code]})
        await self.nodes[code].close()
        self.nodes[code] = node
        gateway = Gateway(node)
        listeners = await gateway.server.start()
        self.gateways[code] = gateway
        self.endpoints[code] = listeners.partner
        for other, other_node in self.nodes.items():
            if other != code and await self._pins(other_node, code):
                await set_endpoint(other_node, code, listeners.partner, actor="test")
        return gateway

    async def stop(self, code: str, grace: float | None = None) -> None:
        gateway = self.gateways.pop(code)
        await gateway.server.stop(grace)

    @staticmethod
    async def _pins(node: Node, code: str) -> bool:
        async with node.engine.connect() as conn:
            found = (
                await conn.execute(select(partners.c.code).where(partners.c.code == code))
            ).scalar()
        return found is not None

    async def pin(self, at: str, partner: str) -> None:
        """``at`` pins ``partner`` from its exported bundle and fingerprint, as the CLI does
        (``partner add`` then disclosure), and dials it where it really listens."""
        bundle, fingerprint = await export_bundle(self.nodes[partner])
        node = self.nodes[at]
        await add_partner(node, bundle, fingerprint, actor="test", source=f"{partner}.bundle")
        if partner in self.endpoints:
            await set_endpoint(node, partner, self.endpoints[partner], actor="test")
        await disclose(node, actor="test")

    async def connect(self, a: str, b: str) -> None:
        await self.pin(a, b)
        await self.pin(b, a)

    async def publish(self, code: str, rows: Sequence[dict[str, Any]], **kw: Any) -> PublishResult:
        return await IssuerLog(self.nodes[code]).publish(records_of(rows, code), actor="test", **kw)

    async def wait_replicated(
        self, at: str, code: str, size: int, deadline_s: float = 20.0
    ) -> None:
        """Until ``at`` holds ``size`` entries of ``code``'s log and has verified them all."""
        node = self.nodes[at]

        async def probe() -> bool:
            head = await log_head(node, code)
            if head.size < size:
                return False
            pending = await count_rows(
                node, entries, entries.c.log == code, entries.c.sig_state == "unverified"
            )
            return pending == 0

        await eventually(probe, deadline_s=deadline_s)

    async def close(self) -> None:
        for code in list(self.gateways):
            with contextlib.suppress(Exception):  # best effort at teardown
                await self.stop(code)
        for node in self.nodes.values():
            await node.close()
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def cluster_of(
    tmp_path: Path, db_url: str, codes: tuple[str, ...], env: dict[str, str], *, start: bool
) -> AsyncIterator[Cluster]:
    """A cluster of ``codes`` (each with ``env``), started when ``start``, always closed."""
    cluster = Cluster(tmp_path, db_url)
    try:
        for code in codes:
            await cluster.add(code, **env)
            if start:
                await cluster.start(code)
        yield cluster
    finally:
        await cluster.close()


async def disclosed_records(node: Node, log: str) -> list[Any]:
    async with node.engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(records).where(records.c.log == log).order_by(records.c.idx)
                )
            ).all()
        )


async def tile_count(node: Node, log: str) -> int:
    return await count_rows(node, tiles, tiles.c.log == log)

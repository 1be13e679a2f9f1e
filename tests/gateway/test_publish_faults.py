"""Publishing under faults, with the real CLI in separate processes: ``mragw publish`` killed
with SIGKILL in the middle of a multi-chunk publish, and two processes publishing to the same
node database at once. SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.node import Node
from gateway.storage.schema import audit, entries, records
from tests.gateway.nodes import (
    assert_log_consistent,
    bulk_records,
    eventually,
    jsonl,
    log_head,
    make_home,
)

REPO = Path(__file__).resolve().parents[2]


def publish_process(home: Path, file: Path, chunk: int) -> subprocess.Popen[bytes]:
    """``mragw publish --json`` as its own process, with ``limits.publish_chunk`` = ``chunk``."""
    env = {**os.environ, "MRAGW_LIMITS__PUBLISH_CHUNK": str(chunk)}
    command = [sys.executable, "-m", "gateway.cli.main", "publish", "--home", str(home)]
    return subprocess.Popen(
        [*command, "--json", str(file)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def finished(process: subprocess.Popen[bytes], deadline_s: float = 90) -> dict[str, Any]:
    out, err = await asyncio.wait_for(asyncio.to_thread(process.communicate), deadline_s)
    assert process.returncode == 0, err.decode()
    report: dict[str, Any] = json.loads(out)
    return report


async def checkpoint_key(node: Node) -> Any:
    async with node.engine.connect() as conn:
        statement = await node.trust_statement(conn)
    return statement.signing_keys[0].public_key


async def own_counts(node: Node) -> tuple[int, int, int]:
    """(record rows, distinct authorisations, acknowledged chunks) of the node's own log."""
    async with node.engine.connect() as conn:
        indexed = (
            await conn.execute(
                select(func.count(), func.count(func.distinct(records.c.authorisation))).where(
                    records.c.log == node.admin
                )
            )
        ).one()
        chunks = (
            await conn.execute(
                select(func.count()).select_from(audit).where(audit.c.action == "log.append")
            )
        ).scalar_one()
    return int(indexed[0]), int(indexed[1]), int(chunks)


async def test_publish_killed_mid_way_leaves_a_whole_log_and_rerun_completes_it(
    db_url: str, tmp_path: Path
) -> None:
    total, chunk = 4000, 25
    node = await make_home(tmp_path, "EU", db_url)
    key = await checkpoint_key(node)
    file = tmp_path / "records.jsonl"
    file.write_bytes(jsonl(bulk_records(total)))
    try:
        process = publish_process(node.config.home, file, chunk)
        try:

            async def grown() -> int:
                size = (await log_head(node, "EU")).size
                return size if size >= 2 * chunk else 0

            await eventually(grown, deadline_s=60, interval_s=0.002)
            process.send_signal(signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            await asyncio.to_thread(process.communicate)  # reap it, close its pipes
        assert process.returncode == -signal.SIGKILL

        await node.close()  # see the database as a new process would
        head = await assert_log_consistent(node, "EU", key)
        assert 0 < head.size < total, f"publish was not interrupted (size {head.size})"
        # Every committed chunk is complete: entries, index rows and its audit record.
        assert head.size % chunk == 0
        assert await own_counts(node) == (head.size, head.size, head.size // chunk)

        report = await finished(publish_process(node.config.home, file, chunk))
        assert report["appended"] + head.size == total
        assert report["duplicates"] == head.size
        assert report["tree_size"] == total
        final = await assert_log_consistent(node, "EU", key)
        assert final.size == total
        rows, distinct, _ = await own_counts(node)
        assert rows == distinct == total
    finally:
        await node.close()


@pytest.mark.parametrize("overlap", ["disjoint", "same-file"])
async def test_concurrent_publishers_never_fork_the_log(
    overlap: str, db_url: str, tmp_path: Path
) -> None:
    node = await make_home(tmp_path, "EU", db_url)
    key = await checkpoint_key(node)
    everything = bulk_records(3000)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    if overlap == "disjoint":
        first.write_bytes(jsonl(everything[:1500]))
        second.write_bytes(jsonl(everything[1500:]))
    else:
        first.write_bytes(jsonl(everything))
        second.write_bytes(jsonl(everything))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        # Small chunks (many transactions each, so the two runs overlap), of different sizes
        # so that the audit trail shows whose chunks interleaved.
        processes.append(publish_process(node.config.home, first, 12))
        processes.append(publish_process(node.config.home, second, 10))
        reports = [await finished(p) for p in processes]
        head = await assert_log_consistent(node, "EU", key)
        assert head.size == len(everything)
        assert sum(r["appended"] for r in reports) == len(everything)
        expected_duplicates = 0 if overlap == "disjoint" else len(everything)
        assert sum(r["duplicates"] for r in reports) == expected_duplicates
        rows, distinct, _ = await own_counts(node)
        assert rows == distinct == len(everything)
        async with node.engine.connect() as conn:
            appends = [
                json.loads(d)
                for d in (
                    await conn.execute(
                        select(audit.c.detail)
                        .where(audit.c.action == "log.append")
                        .order_by(audit.c.id)
                    )
                ).scalars()
            ]
            digests = (
                await conn.execute(
                    select(func.count(func.distinct(entries.c.content_digest))).where(
                        entries.c.log == "EU"
                    )
                )
            ).scalar_one()
        assert digests == len(everything)
        # Appends were sequenced: each starts where the previous one ended.
        position = 0
        for append in appends:
            assert append["first_index"] == position
            position += append["count"]
            assert append["tree_size"] == position
        assert position == len(everything)
        if overlap == "disjoint":
            # Both processes really did write at the same time (chunks of 12 and of 10 mixed).
            sizes = [a["count"] for a in appends]
            of_12 = [n for n, size in enumerate(sizes) if size == 12]
            of_10 = [n for n, size in enumerate(sizes) if size == 10]
            assert of_10[0] < of_12[-1], sizes
            assert of_12[0] < of_10[-1], sizes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                await asyncio.to_thread(process.communicate)
        await node.close()

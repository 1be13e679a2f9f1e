"""Two and three real gateways (EU, JP, US) on loopback over real mTLS: onboarding by bundle and
fingerprint, publishing, replication, entitlement-filtered disclosure, checks at the partner,
a revocation through the admin API, and crash-and-resume of the replicator.

Every storage-touching test runs on SQLite and on PostgreSQL (one fresh database per node).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from gateway.cli.remote import publish_remote
from gateway.demo_data import eu_records, eu_revocation, jp_records
from gateway.partners import resume_partner, suspend_partner
from gateway.query import Question
from gateway.server.tls import local_channel
from gateway.storage.schema import entries, records
from mra.v1 import query_pb2, query_pb2_grpc
from tests.gateway.nodes import (
    Cluster,
    assert_log_consistent,
    bulk_records,
    eventually,
    log_head,
    records_of,
)

DE_AEOF = "DE4711000012345"  # consent, AEOF: recognised by JP and US
DE_AEOC = "DE4711000067890"  # AEOC only: never disclosed to JP or US
FR_AEOS = "FR55210098700019"  # revoked later
NL_NO_CONSENT = "NL812345678"  # AEOF without consent: never disclosed
IT_AEOS = "IT01234567890"
HR_AEOF = "HR12345678901"


async def own_index(node: Any, authorisation: str) -> int:
    """The index of the original record of ``authorisation`` in the node's own log."""
    async with node.engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    select(func.min(records.c.idx)).where(
                        records.c.log == node.admin, records.c.authorisation == authorisation
                    )
                )
            ).scalar_one()
        )


async def replica_entry(node: Any, log: str, idx: int) -> Any:
    async with node.engine.connect() as conn:
        return (
            await conn.execute(
                select(entries.c.envelope, entries.c.sig_state).where(
                    entries.c.log == log, entries.c.idx == idx
                )
            )
        ).one()


def reason_codes(answer: Any) -> set[str]:
    codes = {r.code for r in answer.reasons}
    for t in answer.types:
        codes |= {r.code for r in t.reasons}
    return codes


async def check(cluster: Cluster, at: str, operator: str, issuer: str = "EU") -> Any:
    return await cluster.gateways[at].checker.check(Question(operator_id=operator, issuer=issuer))


async def test_two_gateways_exchange_both_ways(db_url: str, tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, db_url)
    try:
        await cluster.add("EU")
        await cluster.add("JP")
        await cluster.start("EU")
        await cluster.start("JP")
        await cluster.connect("EU", "JP")
        await cluster.publish("EU", eu_records())
        await cluster.publish("JP", jp_records())
        eu_size = (await log_head(cluster.node("EU"), "EU")).size
        jp_size = (await log_head(cluster.node("JP"), "JP")).size
        assert (eu_size, jp_size) == (7, 2)
        await cluster.wait_replicated("JP", "EU", eu_size)
        await cluster.wait_replicated("EU", "JP", jp_size)

        answer = await check(cluster, "JP", DE_AEOF)
        assert answer.recognised
        assert "EU-JP" in answer.types[0].arrangements
        # EU recognises Japanese AEOs under the same arrangement, from JP's replicated log.
        answer = await check(cluster, "EU", "JP1010001012345", issuer="JP")
        assert answer.recognised, answer.to_json()
        for at, code in (("JP", "EU"), ("EU", "JP")):
            replica = await assert_log_consistent(cluster.node(at), code)
            assert replica.root == (await log_head(cluster.node(code), code)).root
    finally:
        await cluster.close()


async def test_three_gateways_disclose_only_what_each_partner_is_entitled_to(
    db_url: str, tmp_path: Path
) -> None:
    cluster = Cluster(tmp_path, db_url)
    try:
        for code in ("EU", "JP", "US"):
            await cluster.add(code)
            await cluster.start(code)
        await cluster.connect("EU", "JP")
        await cluster.connect("EU", "US")
        await cluster.connect("JP", "US")
        published = await cluster.publish("EU", eu_records())
        assert published.appended == 7
        eu = cluster.node("EU")
        await cluster.wait_replicated("JP", "EU", 7)
        await cluster.wait_replicated("US", "EU", 7)

        # Registry: EU-JP and US-EU recognise AEOS/AEOF only; NL gave no consent.
        withheld = [await own_index(eu, a) for a in ("DEAEOC0000457", "NLAEOF0001187")]
        outcome = 6  # the joint validation outcome, audience [JP]
        for idx in withheld:
            for at in ("JP", "US"):
                row = await replica_entry(cluster.node(at), "EU", idx)
                assert (row.envelope, row.sig_state) == (None, "hash_only"), (at, idx)
        jp_outcome = await replica_entry(cluster.node("JP"), "EU", outcome)
        us_outcome = await replica_entry(cluster.node("US"), "EU", outcome)
        assert jp_outcome.envelope is not None
        assert jp_outcome.sig_state == "valid"
        assert (us_outcome.envelope, us_outcome.sig_state) == (None, "hash_only")
        for auth in ("DEAEOF0000012", "FRAEOS0000213", "ITAEOS0000921", "HRAEOF0000031"):
            idx = await own_index(eu, auth)
            for at in ("JP", "US"):
                row = await replica_entry(cluster.node(at), "EU", idx)
                assert row.sig_state == "valid", (at, auth)

        # Checks at JP answer as the registry says.
        answer = await check(cluster, "JP", DE_AEOF)
        assert answer.recognised
        assert answer.types[0].arrangements == ("EU-JP",)
        for hidden in (DE_AEOC, NL_NO_CONSENT):
            answer = await check(cluster, "JP", hidden)
            assert not answer.recognised
            assert answer.operator is None
            assert "UNKNOWN_OPERATOR" in reason_codes(answer)
        # US: AEOS/AEOF holders under US-EU (US<-EU from 2012-07-01).
        for holder in (DE_AEOF, FR_AEOS, IT_AEOS, HR_AEOF):
            answer = await check(cluster, "US", holder)
            assert answer.recognised, (holder, answer.to_json())
            assert "US-EU" in answer.types[0].arrangements
        answer = await check(cluster, "US", DE_AEOC)
        assert "UNKNOWN_OPERATOR" in reason_codes(answer)

        # The same check through JP's QueryService over its admin mTLS listener.
        jp_gateway = cluster.gateways["JP"]
        async with local_channel(
            cluster.node("JP"), jp_gateway.server.listeners.admin_target
        ) as channel:
            reply = await query_pb2_grpc.QueryServiceStub(channel).Check(
                query_pb2.CheckRequest(operator_id=DE_AEOF, issuer="EU"), timeout=10
            )
        assert reply.recognised
        assert list(reply.types[0].arrangements) == ["EU-JP"]

        # A revocation published through EU's admin API reaches JP and US.
        eu_gateway = cluster.gateways["EU"]
        result = await publish_remote(
            eu, eu_gateway.server.listeners.admin_target, records_of([eu_revocation()])
        )
        assert (result["appended"], result["tree_size"]) == (1, 8)
        await cluster.wait_replicated("JP", "EU", 8)
        await cluster.wait_replicated("US", "EU", 8)
        for at in ("JP", "US"):
            answer = await check(cluster, at, FR_AEOS)
            assert not answer.recognised
            assert answer.types[0].record is not None
            assert answer.types[0].record.status == "REVOKED"
            assert "STATUS_NOT_ACTIVE" in reason_codes(answer), answer.to_json()

        # Roots of each replica equal EU's own log root at the same size.
        eu_head = await log_head(eu, "EU")
        for at in ("JP", "US"):
            replica = await assert_log_consistent(cluster.node(at), "EU")
            assert (replica.size, replica.root) == (eu_head.size, eu_head.root)
        # Nobody was quarantined on the way.
        for at in ("JP", "US"):
            status = await cluster.gateways[at].status()
            assert all(not p["quarantined"] for p in status["partners"]), status
    finally:
        await cluster.close()


async def test_replicator_killed_mid_catch_up_resumes_without_duplicates_or_gaps(
    db_url: str, tmp_path: Path
) -> None:
    total = 3000
    cluster = Cluster(tmp_path, db_url)
    try:
        await cluster.add("EU")
        # Small batches so that catch-up takes many batches (and transactions).
        await cluster.add("JP", MRAGW_LIMITS__BATCH_ENTRIES="100")
        await cluster.start("EU")
        await cluster.connect("EU", "JP")
        await cluster.publish("EU", bulk_records(total))
        eu_head = await log_head(cluster.node("EU"), "EU")
        assert eu_head.size == total

        jp_gateway = await cluster.start("JP")

        async def replicator_applied_two_batches() -> bool:
            status = jp_gateway.replication.status("EU")
            return status is not None and status.batches >= 2

        await eventually(replicator_applied_two_batches, deadline_s=20, interval_s=0.001)
        # Cancel the replicator (and everything else) mid-catch-up: no grace period.
        await cluster.stop("JP", grace=0)
        cut = await log_head(cluster.node("JP"), "EU")
        assert 0 < cut.size < total, f"catch-up was not interrupted (size {cut.size})"
        await assert_log_consistent(cluster.node("JP"), "EU")

        await cluster.start("JP")
        await cluster.wait_replicated("JP", "EU", total, deadline_s=60)
        replica = await assert_log_consistent(cluster.node("JP"), "EU")
        assert (replica.size, replica.root) == (eu_head.size, eu_head.root)
        async with cluster.node("JP").engine.connect() as conn:
            indexed = (
                await conn.execute(
                    select(func.count(), func.count(func.distinct(records.c.authorisation))).where(
                        records.c.log == "EU"
                    )
                )
            ).one()
        entitled = sum(1 for r in bulk_records(total) if r["consent"])
        assert tuple(indexed) == (entitled, entitled)
    finally:
        await cluster.close()


async def test_a_partner_suspended_mid_stream_receives_nothing_more(
    db_url: str, tmp_path: Path
) -> None:
    """Identity is checked when a call starts; a live tail outlives that check. Suspending JP
    at EU must end JP's open stream before any entry published afterwards reaches it."""
    cluster = Cluster(tmp_path, db_url)
    try:
        await cluster.add("EU")
        await cluster.add("JP")
        await cluster.start("EU")
        await cluster.start("JP")
        await cluster.connect("EU", "JP")
        first = await cluster.publish("EU", eu_records()[:1])
        await cluster.wait_replicated("JP", "EU", first.tree_size)
        eu = cluster.gateways["EU"]
        await suspend_partner(cluster.node("EU"), "JP", actor="test", reason="test")
        await eu.server.refresh_partners()
        second = await cluster.publish("EU", eu_records()[2:3])  # FR AEOS: JP entitled
        assert second.tree_size == first.tree_size + 1
        jp_replicator = cluster.gateways["JP"].replication.replicators["EU"]

        async def refused() -> bool:
            error = jp_replicator.status.last_error or ""
            return "PERMISSION_DENIED" in error and "suspended" in error

        await eventually(refused, deadline_s=20)
        assert (await log_head(cluster.node("JP"), "EU")).size == first.tree_size
        await resume_partner(cluster.node("EU"), "JP", actor="test")
        await eu.server.refresh_partners()
        await cluster.wait_replicated("JP", "EU", second.tree_size, deadline_s=60)
    finally:
        await cluster.close()


async def test_watch_at_the_partner_wakes_on_replicated_records(
    db_url: str, tmp_path: Path
) -> None:
    """Replicated entries wake Watch at once: with JP's poll interval set to a minute, a Watch
    that relied on polling would not see EU's record within the deadline."""
    cluster = Cluster(tmp_path, db_url)
    try:
        await cluster.add("EU")
        await cluster.add("JP", MRAGW_REPLICATION__POLL_INTERVAL_S="60")
        # Pinned before JP starts: with a one-minute poll, JP only looks at its partners once.
        await cluster.connect("EU", "JP")
        await cluster.start("EU")
        await cluster.start("JP")
        checker = cluster.gateways["JP"].checker
        stream = await checker.start_watch()
        try:
            await cluster.publish("EU", eu_records()[:1])
            change = await asyncio.wait_for(anext(stream), timeout=20)
        finally:
            await stream.aclose()
        assert change.log == "EU"
        assert change.record.authorisation == "DEAEOF0000012"
    finally:
        await cluster.close()


async def test_check_through_a_running_gateway_prints_the_direct_document(
    db_url: str, tmp_path: Path
) -> None:
    """`mragw check --target` (QueryService over mTLS with the admin certificate) and
    `mragw check` (the database) print the same JSON document."""
    cluster = Cluster(tmp_path, db_url)
    try:
        await cluster.add("EU")
        await cluster.add("JP")
        await cluster.connect("EU", "JP")
        await cluster.start("EU")
        jp = await cluster.start("JP")
        published = await cluster.publish("EU", eu_records())
        await cluster.wait_replicated("JP", "EU", published.tree_size)
        home = str(cluster.node("JP").config.home)
        args = [
            sys.executable,
            "-m",
            "gateway.cli.main",
            "check",
            "--home",
            home,
            "--operator",
            DE_AEOF,
            "--issuer",
            "EU",
            "--at",
            "2025-01-15",
            "--evidence",
            "--json",
        ]
        env = {
            **os.environ,
            **(
                {"MRAGW_DATABASE__URL": cluster.node("JP").config.database.url}
                if cluster.node("JP").config.database.url
                else {}
            ),
        }

        def run(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*args, *extra], capture_output=True, text=True, timeout=60, env=env, check=False
            )

        direct, remote = await asyncio.gather(
            asyncio.to_thread(run),
            asyncio.to_thread(run, "--target", jp.server.listeners.admin_target),
        )
        assert direct.returncode == 0, direct.stderr
        assert remote.returncode == 0, remote.stderr
        document = json.loads(direct.stdout)
        assert document["recognised"] is True
        assert document["types"][0]["evidence"]["available"] is True
        assert json.loads(remote.stdout) == document
        bad = await asyncio.to_thread(
            run, "--target", jp.server.listeners.admin_target, "--mode", "teleport"
        )
        assert bad.returncode == 2
        assert "teleport" in bad.stderr
    finally:
        await cluster.close()

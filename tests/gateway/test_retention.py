"""Retention: ``prune`` removes the payloads of records superseded before the cutoff, on our
own log and on partners' copies, and keeps a compact history without personal data, so a
past-date Check answers exactly as before and every proof still verifies. Idempotent and
audited. Two real gateways over mTLS, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import copy
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.demo_data import eu_records, eu_revocation
from gateway.errors import InputError
from gateway.node import Node
from gateway.query import Checker, Question
from gateway.retention import parse_duration, prune
from gateway.storage.schema import audit, entries, identifiers, records
from tests.gateway.nodes import Cluster
from tests.gateway.test_erasure import (
    DE_AEOF,
    FR_AEOS,
    assert_every_proof_verifies,
    audit_details,
    entry_rows,
    published_node,
    quarantined,
    snapshot,
)

TODAY = date(2026, 11, 28)
DATES = [
    None,
    "2015-06-01",
    "2017-01-01",
    "2020-05-01",
    "2021-01-01",
    "2024-12-31",
    "2025-06-01",
    "2026-01-01",
]


def de_history() -> list[dict[str, Any]]:
    """The Rhine forwarder (entry 0) is suspended in 2020, reinstated later that year, and
    suspended again in 2026 (after the cutoff: that change keeps its predecessor whole)."""
    base = next(r for r in eu_records() if r["operator_ids"][0]["value"] == DE_AEOF)
    out = []
    for status, day in (
        ("SUSPENDED", "2020-03-01"),  # entry 7
        ("ACTIVE", "2020-09-01"),  # entry 8
        ("SUSPENDED", "2026-06-01"),  # entry 9
    ):
        record = copy.deepcopy(base)
        record.update(status=status, status_date=day)
        out.append(record)
    return out


async def answers(node: Node, evidence: bool = False) -> dict[tuple[str, str | None], Any]:
    checker = Checker.for_node(node)
    try:
        return {
            (op, at): (
                await checker.check(Question(operator_id=op, issuer="EU", at=at, evidence=evidence))
            ).to_json()
            for op in (DE_AEOF, FR_AEOS)
            for at in DATES
        }
    finally:
        checker.close()


async def test_pruned_nodes_answer_past_dates_as_before_and_verify_every_proof(
    db_url: str, tmp_path: Path
) -> None:
    cluster = Cluster(tmp_path, db_url)
    try:
        for code in ("EU", "JP"):
            await cluster.add(code)
            await cluster.start(code)
        await cluster.connect("EU", "JP")
        await cluster.publish("EU", [*eu_records(), *de_history(), eu_revocation()])
        await cluster.wait_replicated("JP", "EU", 11)
        eu, jp = cluster.node("EU"), cluster.node("JP")
        before = {code: await answers(cluster.node(code)) for code in ("EU", "JP")}
        # The history really is answered from different records on different dates.
        statuses = {before["JP"][(DE_AEOF, at)]["types"][0]["status"] for at in DATES}
        assert statuses == {"ACTIVE", "SUSPENDED", None}

        # Cutoff 2025-10-24: entries 0 and 7 (DE, superseded by 7 and 8) and 2 (FR, by the
        # 2025-03-01 revocation, entry 10) go; 8 stays (its successor is after the cutoff).
        results = {
            code: await prune(
                cluster.node(code), older_than=timedelta(days=400), actor="test", today=TODAY
            )
            for code in ("EU", "JP")
        }
        assert results["EU"].cutoff == date(2025, 10, 24)
        assert results["EU"].pruned == {"EU": 3}
        assert results["JP"].pruned == {"EU": 3}

        for node in (eu, jp):
            rows = await entry_rows(node, "EU")
            assert [
                i for i, r in rows.items() if r.envelope is None and r.sig_state == "valid"
            ] == [
                0,
                2,
                7,
            ]
            async with node.engine.connect() as conn:
                names = dict(
                    (
                        await conn.execute(
                            select(records.c.idx, records.c.name).where(records.c.log == "EU")
                        )
                    ).all()
                )
                kept_ids = (
                    await conn.execute(
                        select(identifiers.c.scheme).where(
                            identifiers.c.log == "EU", identifiers.c.idx.in_([0, 2, 7])
                        )
                    )
                ).scalars()
                assert set(kept_ids) == {"AUTH"}
            assert [names[i] for i in (0, 2, 7)] == [None, None, None]
            assert names[8] == "Rheinhafen Logistik GmbH"

        # Past-date checks answer exactly as before, and every proof still verifies.
        for code in ("EU", "JP"):
            assert await answers(cluster.node(code)) == before[code], code
            assert await assert_every_proof_verifies(cluster.node(code), eu) == 11
        # Evidence for a pruned record is gone, and the answer says so.
        with_evidence = await answers(jp, evidence=True)
        pruned_type = with_evidence[(DE_AEOF, "2017-01-01")]["types"][0]
        assert pruned_type["leaf_index"] == 0
        assert pruned_type["evidence"]["available"] is False
        assert any("pruned or erased" in w for w in pruned_type["warnings"])
        assert with_evidence[(DE_AEOF, "2021-01-01")]["types"][0]["evidence"]["available"]

        # Idempotent; audited each time.
        again = await prune(eu, older_than=timedelta(days=400), actor="test", today=TODAY)
        assert again.pruned == {}
        audited = await audit_details(eu, "retention.prune")
        assert [a["pruned"] for a in audited] == [{"EU": 3}, {}]
        assert audited[0]["cutoff"] == "2025-10-24"

        # The partner keeps replicating: a new record after the prune arrives and is used.
        revoke_de = de_history()[-1] | {"status": "REVOKED", "status_date": "2026-11-01"}
        await cluster.publish("EU", [revoke_de])
        await cluster.wait_replicated("JP", "EU", 12)
        late = await answers(jp)
        assert late[(DE_AEOF, None)]["types"][0]["status"] == "REVOKED"
        assert late[(DE_AEOF, "2017-01-01")] == before["JP"][(DE_AEOF, "2017-01-01")]
        assert not await quarantined(jp, "EU")
    finally:
        await cluster.close()


@pytest.mark.parametrize(
    ("text", "days"),
    [("400d", 400), (" 57W ", 399), ("1d", 1)],
)
def test_durations(text: str, days: int) -> None:
    assert parse_duration(text) == timedelta(days=days)


@pytest.mark.parametrize("text", ["", "400", "0d", "-1d", "5x", "1.5d", "36601d", "9999999d"])
def test_bad_durations_are_refused_naming_the_value(text: str) -> None:
    with pytest.raises(InputError, match="--older-than"):
        parse_duration(text)


async def test_prune_refuses_a_period_under_a_day_and_changes_nothing(
    db_url: str, tmp_path: Path
) -> None:
    node = await published_node(tmp_path, db_url)
    try:
        before = await snapshot(node)
        with pytest.raises(InputError, match="at least one day"):
            await prune(node, older_than=timedelta(hours=5), actor="test")
        assert await snapshot(node) == before
        async with node.engine.connect() as conn:
            count = select(func.count()).where(audit.c.action == "retention.prune")
            assert (await conn.execute(count)).scalar_one() == 0
            held = select(func.count()).where(entries.c.envelope.is_(None))
            assert (await conn.execute(held)).scalar_one() == 0
    finally:
        await node.close()

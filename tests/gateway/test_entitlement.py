"""Entitlement and disclosure: decided at append time, stored, and extended by disclosure
entries when entitlement newly arises (an arrangement taking effect later, a partner pinned
later), with real gateways replicating over mTLS. SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import select

from gateway.datasets import active_recogniser, packaged_bytes, use_dataset
from gateway.demo_data import eu_records, eu_revocation
from gateway.disclosure import disclose
from gateway.issuer_log import IssuerLog, prepare
from gateway.query import Question
from gateway.storage.schema import entitlements, entries, records
from tests.gateway.nodes import (
    Cluster,
    assert_log_consistent,
    disclosed_records,
    log_head,
    records_of,
)

SECURITY_HOLDERS = {"DEAEOF0000012", "FRAEOS0000213", "ITAEOS0000921", "HRAEOF0000031"}
APPEND_DAY = date(2029, 12, 1)
EFFECTIVE = "2030-01-01"
AFTER = date(2030, 2, 1)


def eu_jp_effective_later() -> bytes:
    """The packaged registry, except that EU-JP takes effect on 2030-01-01."""
    dataset = json.loads(packaged_bytes())
    for arrangement in dataset["arrangements"]:
        if arrangement["id"] == "EU-JP":
            arrangement["effective"] = EFFECTIVE
    return json.dumps(dataset).encode()


async def envelopes_held(node: Any, log: str) -> set[int]:
    async with node.engine.connect() as conn:
        return set(
            (
                await conn.execute(
                    select(entries.c.idx).where(
                        entries.c.log == log, entries.c.envelope.is_not(None)
                    )
                )
            ).scalars()
        )


async def entitled_indices(node: Any, partner: str) -> set[int]:
    async with node.engine.connect() as conn:
        return set(
            (
                await conn.execute(
                    select(entitlements.c.idx).where(entitlements.c.partner == partner)
                )
            ).scalars()
        )


async def test_arrangement_taking_effect_later_discloses_each_newly_entitled_record_once(
    db_url: str, tmp_path: Path
) -> None:
    cluster = Cluster(tmp_path, db_url)
    try:
        eu = await cluster.add("EU")
        async with eu.engine.begin() as conn:
            await use_dataset(conn, eu_jp_effective_later(), "eu-jp-2030.json", "test")
        await cluster.add("JP")
        await cluster.start("EU")
        await cluster.start("JP")
        await cluster.connect("EU", "JP")
        eu = cluster.node("EU")

        published = await cluster.publish("EU", eu_records(), today=APPEND_DAY)
        assert published.tree_size == 7
        await cluster.wait_replicated("JP", "EU", 7)
        jp = cluster.node("JP")
        # Before EU-JP takes effect JP gets only the validation outcome addressed to it.
        assert await envelopes_held(jp, "EU") == {6}
        assert await disclosed_records(jp, "EU") == []

        appended = await disclose(eu, actor="test", today=AFTER)
        assert appended == len(SECURITY_HOLDERS)
        await cluster.wait_replicated("JP", "EU", 7 + appended)
        rows = await disclosed_records(jp, "EU")
        assert sorted(r.authorisation for r in rows) == sorted(SECURITY_HOLDERS)
        assert {r.disclosed_to for r in rows} == {"JP"}
        assert {r.idx for r in rows} == set(range(7, 7 + appended))
        assert await envelopes_held(jp, "EU") == {6, *range(7, 7 + appended)}
        assert await entitled_indices(eu, "JP") == {6, *range(7, 7 + appended)}

        # Running it again appends nothing.
        assert await disclose(eu, actor="test", today=AFTER) == 0
        assert (await log_head(eu, "EU")).size == 7 + appended

        answer = await cluster.gateways["JP"].checker.check(
            Question(operator_id="DE4711000012345", issuer="EU", at=AFTER)
        )
        assert answer.recognised, answer.to_json()

        # Once disclosed, a later record of the authorisation reaches JP (and ends it).
        revoked = await cluster.publish("EU", [eu_revocation()], today=date(2030, 3, 1))
        size = revoked.tree_size
        await cluster.wait_replicated("JP", "EU", size)
        assert size - 1 in await envelopes_held(jp, "EU")
        answer = await cluster.gateways["JP"].checker.check(
            Question(operator_id="FR55210098700019", issuer="EU", at=date(2030, 3, 2))
        )
        assert not answer.recognised
        replica = await assert_log_consistent(jp, "EU")
        assert replica.root == (await log_head(eu, "EU")).root
    finally:
        await cluster.close()


async def test_partner_pinned_later_receives_current_records_as_disclosures(
    db_url: str, tmp_path: Path
) -> None:
    cluster = Cluster(tmp_path, db_url)
    try:
        await cluster.add("EU")
        await cluster.add("JP")
        await cluster.start("EU")
        await cluster.start("JP")
        await cluster.connect("EU", "JP")
        await cluster.publish("EU", eu_records())
        await cluster.publish("EU", [eu_revocation()])
        await cluster.wait_replicated("JP", "EU", 8)
        eu = cluster.node("EU")

        await cluster.add("US")
        await cluster.start("US")
        await cluster.connect("EU", "US")  # pins, then discloses as `partner add` does
        head = await log_head(eu, "EU")
        # The current record of each AEOS/AEOF holder with consent, except FR's: its current
        # record is a revocation, and a partner that never saw it in force is not told.
        current = [a for a in SECURITY_HOLDERS if a != "FRAEOS0000213"]
        assert head.size == 8 + len(current)
        await cluster.wait_replicated("US", "EU", head.size)
        us = cluster.node("US")
        rows = await disclosed_records(us, "EU")
        assert sorted(r.authorisation for r in rows) == sorted(current)
        assert {r.disclosed_to for r in rows} == {"US"}
        assert {r.status for r in rows} == {"ACTIVE"}
        assert await envelopes_held(us, "EU") == set(range(8, head.size))
        # JP was already entitled: it sees US's disclosures as leaf hashes only.
        await cluster.wait_replicated("JP", "EU", head.size)
        assert not (await envelopes_held(cluster.node("JP"), "EU")) & set(range(8, head.size))
        assert await disclose(eu, actor="test") == 0
        answer = await cluster.gateways["US"].checker.check(
            Question(operator_id="DE4711000012345", issuer="EU")
        )
        assert answer.recognised
        assert "US-EU" in answer.types[0].arrangements
    finally:
        await cluster.close()


def status(state: str, *, consent: bool = True, day: str = "2020-01-01") -> dict[str, Any]:
    return {
        "kind": "aeo_status",
        "issuer": "DE",
        "operator_ids": [{"scheme": "EORI", "value": "DE4711000012345"}],
        "name": "Rheinhafen Logistik GmbH",
        "country": "DE",
        "authorisation": "DEAEOF0000012",
        "type": "AEOF",
        "status": state,
        "status_date": day,
        "valid_from": "2016-04-11",
        "valid_until": None,
        "last_validation": "2016-04-11",
        "consent": consent,
        "audience": [],
    }


async def test_later_records_reach_an_entitled_partner_up_to_the_one_ending_it(
    db_url: str, tmp_path: Path
) -> None:
    cluster = Cluster(tmp_path, db_url)
    try:
        eu = await cluster.add("EU")
        await cluster.add("JP")
        await cluster.pin("EU", "JP")
        rows = [
            status("ACTIVE", day="2020-01-01"),  # 0: entitled
            status("SUSPENDED", day="2021-01-01"),  # 1: reaches JP (open)
            status("CONSENT_WITHDRAWN", consent=False, day="2022-01-01"),  # 2: ends it, sent
            status("ACTIVE", consent=False, day="2023-01-01"),  # 3: closed, not sent
            {**status("ACTIVE", day="2024-01-01"), "audience": ["US"]},  # 4: not for JP
            status("ACTIVE", day="2025-01-01"),  # 5: entitled again
        ]
        for row in rows:  # one append per record: state carried across transactions
            await cluster.publish("EU", [row])
        assert await entitled_indices(eu, "JP") == {0, 1, 2, 5}
        # Re-running the same publish is a no-op.
        again = await cluster.publish("EU", rows)
        assert (again.appended, again.duplicates) == (0, len(rows))
        async with eu.engine.connect() as conn:
            own = (await conn.execute(select(records.c.idx).where(records.c.log == "EU"))).scalars()
            assert sorted(own) == list(range(len(rows)))
    finally:
        await cluster.close()


async def test_a_disclosure_decided_outside_the_lock_is_dropped_if_already_entitled(
    db_url: str, tmp_path: Path
) -> None:
    """The disclosure job decides outside the log lock; if the partner became entitled in the
    meantime (a publish, or another disclosure run), the append drops the disclosure."""
    cluster = Cluster(tmp_path, db_url)
    try:
        eu = await cluster.add("EU")
        await cluster.add("JP")
        await cluster.pin("EU", "JP")
        published = await cluster.publish("EU", eu_records()[:1])  # DE AEOF: JP entitled
        async with eu.engine.connect() as conn:
            recogniser = await active_recogniser(conn)
            checkpoint_signer, entry_signer = await eu.active_signers(conn)
        (record,) = records_of(eu_records()[:1])
        late = prepare(record, entry_signer, disclosed_to="JP")
        result = await IssuerLog(eu).append(
            [late],
            recogniser=recogniser,
            day=eu.config.today(),
            checkpoint_signers=[checkpoint_signer],
            actor="test",
        )
        assert (result.appended, result.duplicates) == (0, 1)
        assert (await log_head(eu, "EU")).size == published.tree_size
    finally:
        await cluster.close()

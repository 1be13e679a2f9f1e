"""Entitlement across hosts: EU AEOC-only holders are never disclosed to the US or JP; the
partners hold those entries as leaf hashes only, and answer "unknown operator"."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from interop_tests import records as rec
from interop_tests.harness import Network, parallel

pytestmark = pytest.mark.netns


def test_aeoc_only_never_disclosed_to_us_or_jp(network: Network, tmp_path: Path) -> None:
    eu, jp, us = network.build(["EU", "JP", "US"])
    records = (
        rec.eu_records()
        + rec.bulk_records(20, "IT", aeo_type="AEOC")
        + rec.bulk_records(20, "ES", aeo_type="AEOS")
    )
    eu.publish(rec.write_jsonl(tmp_path / "eu.jsonl", records))
    size = eu.log_head("EU")[0]
    for partner in (jp, us):
        network.wait_replicated(partner, "EU", size, timeout=60)

    aeoc = {i for (i,) in eu.query("SELECT idx FROM records WHERE log='EU' AND aeo_type='AEOC'")}
    security = {
        i
        for (i,) in eu.query(
            "SELECT idx FROM records WHERE log='EU' AND aeo_type IN ('AEOS','AEOF') AND consent"
        )
    }
    assert len(aeoc) == 21
    assert security
    for partner in (jp, us):
        stored = dict(partner.query("SELECT idx, envelope IS NOT NULL FROM entries WHERE log='EU'"))
        assert len(stored) == size
        # AEOC-only: leaf hash only, no record; security holders with consent: disclosed.
        assert not any(stored[i] for i in aeoc), partner.code
        assert all(stored[i] for i in security), partner.code
        held = {a for (a,) in partner.query("SELECT aeo_type FROM records WHERE log='EU'")}
        assert "AEOC" not in held, partner.code

    today = dt.datetime.now(dt.UTC).date().isoformat()
    aeoc_ops = [r["operator_ids"][0]["value"] for r in records if r["type"] == "AEOC"][:3]
    questions = [(p, op) for p in (jp, us) for op in aeoc_ops]
    answers = parallel(lambda q: q[0].check(q[1], "EU", today), questions)
    for (partner, op), answer in zip(questions, answers, strict=False):
        assert answer["recognised"] is False, (partner.code, op)
        assert [r["code"] for r in answer["reasons"]] == ["UNKNOWN_OPERATOR"], (partner.code, op)
    # The EU itself holds and recognises them (same programme).
    own = eu.check(aeoc_ops[0], "EU", today)
    assert own["recognised"] is True

"""Five administrations (EU for several member states, JP, US, CN, GB), each its own host,
onboarded through partner bundles: replication converges and every recognition answer at
every host matches the registry's own answer combined with what was disclosed."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest

from interop_tests import records as rec
from interop_tests.harness import Host, Network, parallel
from interop_tests.registry import arrangement_pairs, registry_check

pytestmark = pytest.mark.netns

CODES = ["EU", "JP", "US", "CN", "GB"]
PUBLISHED: dict[str, list[rec.Record]] = {
    "EU": rec.eu_records(),
    "JP": rec.jp_records(),
    "US": rec.us_records(),
    "CN": rec.cn_records(),
    "GB": rec.gb_records(),
}


def test_mesh_answers_match_registry(
    network: Network, tmp_path: Path, record_property: Any
) -> None:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    pairs = arrangement_pairs(CODES, today)
    assert ("EU", "JP") in pairs
    assert ("GB", "US") in pairs
    t_build = time.monotonic()
    network.build(CODES, pairs)
    print(f"\n{len(CODES)} hosts built in {time.monotonic() - t_build:.1f} s")
    pinned = {c: {b if a == c else a for a, b in pairs if c in (a, b)} for c in CODES}

    def publish(host: Host) -> None:
        host.publish(rec.write_jsonl(tmp_path / f"{host.code}.jsonl", PUBLISHED[host.code]))

    t0 = time.monotonic()
    parallel(publish, network.hosts.values())
    network.wait_all_replicated(timeout=60)
    took = time.monotonic() - t0
    print(f"\nmesh of {len(CODES)} converged in {took:.2f} s ({len(pairs)} arrangements)")
    record_property("mesh_convergence_s", round(took, 3))

    # The registry's own answers, one per (recogniser, issuer, type).
    triples = sorted(
        {(r, x["issuer"], x["type"]) for r in CODES for rs in PUBLISHED.values() for x in rs}
    )
    answers = {t: registry_check(t[0], t[1], t[2], today) for t in triples}

    # Every answer comes from each host's database (`mragw check` reads it directly): stop the
    # gateways first so that ~50 CLI processes do not compete with them for CPU.
    parallel(lambda h: h.stop(), network.hosts.values(), workers=len(network.hosts))

    questions = [
        (host, owner, record)
        for host in network.hosts.values()
        for owner, rs in PUBLISHED.items()
        for record in rs
    ]

    def ask(q: tuple[Host, str, rec.Record]) -> dict[str, Any]:
        host, _owner, record = q
        return host.check(record["operator_ids"][0]["value"], record["issuer"], today)

    t1 = time.monotonic()
    got = parallel(ask, questions)
    print(f"{len(questions)} checks took {time.monotonic() - t1:.1f} s")
    disclosed_count = 0
    for (host, owner, record), answer in zip(questions, got, strict=False):
        reg = answers[(host.code, record["issuer"], record["type"])]
        disclosed = owner == host.code or (
            owner in pinned[host.code] and record["consent"] and reg["recognised"]
        )
        where = (
            f"{host.code} asked about {record['authorisation']}"
            f" ({record['issuer']} {record['type']})"
        )
        if not disclosed:
            assert answer["recognised"] is False, where
            assert [r["code"] for r in answer["reasons"]] == ["UNKNOWN_OPERATOR"], where
            continue
        disclosed_count += 1
        # A status is used only with the operator's consent (only the own node holds a record
        # without it), and then recognised exactly when the registry says so.
        expected = bool(reg["recognised"]) and bool(record["consent"])
        (typed,) = [t for t in answer["types"] if t["authorisation"] == record["authorisation"]]
        assert answer["recognised"] is expected, (where, typed, reg)
        assert typed["recognised"] is expected, where
        assert typed["log"] == owner, where
        if not record["consent"]:
            assert [r["code"] for r in typed["reasons"]] == ["NO_CONSENT"], (where, typed)
        if expected:
            assert sorted(typed["arrangements"]) == sorted(reg["arrangements"]), where
    # Foreign answers were exercised, not only each host's own records.
    own = sum(len(rs) for rs in PUBLISHED.values())
    assert disclosed_count > own
    print(f"{len(questions)} answers checked, {disclosed_count} from disclosed records")

"""A hostile EU partner over valid mTLS, on EU's own host and address.

EU is initialised and publishes honestly; JP (a real ``mragw serve``) replicates it. Then EU's
real gateway is stopped and a test build of it (``interop_tests/hostile_gateway.py``: EU's
genuine keys, certificates and log) serves one hostile batch after EU's genuine head. For each
fault JP must quarantine EU with a reason naming the fault (``mragw status --json``) and apply
nothing of the batch; ``partner resume`` lets the next attack in.

- ``fork`` and ``edited-entry`` are caught before anything is stored: JP's replica (head,
  entries, index) is unchanged;
- ``forged-entry`` sits in a tree EU's real key signed, so JP keeps that tree (its evidence)
  but marks the entry invalid: the entry is never indexed and answers are unchanged.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from interop_tests import records as rec
from interop_tests.harness import Host, Network, env_int
from interop_tests.hostile_gateway import EDITED_OPERATOR, FORGED_OPERATOR

pytestmark = pytest.mark.netns

RECORDS = env_int("MRAGW_INTEROP_HOSTILE_RECORDS", 30)


def _replica(jp: Host) -> dict[str, Any]:
    """Everything JP stores of EU's log (the heartbeat's verified_at aside)."""
    return {
        "head": jp.query(
            "SELECT size, root, frontier, checkpoint, checkpoint_size, held_checkpoint, "
            "held_size FROM logs WHERE code = 'EU'"
        ),
        "entries": jp.query(
            "SELECT idx, leaf_hash, envelope, sig_state FROM entries WHERE log = 'EU' ORDER BY idx"
        ),
        "records": jp.query("SELECT COUNT(*), MAX(idx) FROM records WHERE log = 'EU'"),
        "identifiers": jp.query(
            "SELECT idx, scheme, value FROM identifiers WHERE log = 'EU' ORDER BY idx, value"
        ),
    }


def _quarantined(jp: Host, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = jp.partner_status("EU")
        assert status is not None
        if status["quarantined"]:
            return str(status["reason"])
        assert time.monotonic() < deadline, f"EU not quarantined: {status}"
        time.sleep(0.2)


def _attack(net: Network, eu: Host, jp: Host, mode: str) -> tuple[str, str]:
    """Run the hostile build in ``mode`` until JP quarantines EU; (reason, its log)."""
    log = eu.home.parent / f"hostile-{mode}.log"
    proc, bound = net.spawn_module(
        eu,
        "interop_tests.hostile_gateway",
        ["--home", str(eu.home), "--listen", eu.endpoint, "--mode", mode],
        log,
    )
    assert bound == eu.endpoint
    try:
        reason = _quarantined(jp)
    finally:
        net.end(proc)
    return reason, log.read_text(encoding="utf-8", errors="replace")


def _unknown(jp: Host, operator: str) -> None:
    today = datetime.now(UTC).date().isoformat()
    answer = jp.check(operator, "EU", today)
    assert answer["recognised"] is False, answer
    assert [r["code"] for r in answer["reasons"]] == ["UNKNOWN_OPERATOR"], answer


def test_hostile_partner_is_quarantined_and_nothing_is_applied(
    network: Network, tmp_path: Path
) -> None:
    eu, jp = network.build(["EU", "JP"])
    rows = [*rec.eu_records(), *rec.bulk_records(RECORDS, "DE")]
    eu.publish(rec.write_jsonl(tmp_path / "honest.jsonl", rows))
    size = eu.log_head("EU")[0]
    network.wait_replicated(jp, "EU", size, timeout=30)
    eu.stop()
    honest = _replica(jp)
    assert honest["head"][0][0] == size
    assert jp.log_head("EU") == eu.log_head("EU")

    for mode, words in (("fork", ("fork",)), ("edited-entry", ("bad_proof",))):
        reason, served = _attack(network, eu, jp, mode)
        assert f"stream 1 from index {size}" in served, served
        print(f"\n{mode}: quarantined: {reason}")
        for word in words:
            assert word in reason, (mode, reason)
        assert _replica(jp) == honest, mode
        jp.run("partner", "resume", "EU", "--home", str(jp.home))
        status = jp.partner_status("EU")
        assert status is not None
        assert not status["quarantined"]
    _unknown(jp, EDITED_OPERATOR)

    reason, served = _attack(network, eu, jp, "forged-entry")
    print(f"forged-entry: quarantined: {reason}")
    assert f"stream 1 from index {size}" in served, served
    assert f"invalid entry {size}" in reason, reason
    after = _replica(jp)
    # EU's real key signed a tree holding the forged entry: JP keeps the tree as evidence,
    # with the honest prefix untouched and the forged entry marked invalid, never indexed.
    assert after["entries"][:size] == honest["entries"]
    assert [(e[0], e[3]) for e in after["entries"][size:]] == [(size, "invalid")]
    assert after["records"] == honest["records"]
    assert after["identifiers"] == honest["identifiers"]
    _unknown(jp, FORGED_OPERATOR)
    status = jp.partner_status("EU")
    assert status is not None
    assert status["quarantined"]
    assert status["unusable"] == 1

"""A network partition (the partner's link down) while the issuer keeps publishing, then
healed: the partner converges; the time from healing to convergence is printed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from interop_tests import records as rec
from interop_tests.harness import Network, env_float, env_int

pytestmark = pytest.mark.netns

PARTITION_S = env_float("MRAGW_INTEROP_PARTITION_S", 3.0)
RECORDS = env_int("MRAGW_INTEROP_RECORDS", 3000)


def test_partition_then_heal_converges(
    network: Network, tmp_path: Path, record_property: Any
) -> None:
    eu, jp = network.build(["EU", "JP"])
    first = rec.bulk_records(50, "DE")
    eu.publish(rec.write_jsonl(tmp_path / "before.jsonl", first))
    network.wait_replicated(jp, "EU", len(first), timeout=30)

    network.link_down(jp)
    cut = time.monotonic()
    published = len(first)
    batch = max(1, RECORDS // 4)
    n = 0
    while n == 0 or time.monotonic() - cut < PARTITION_S:
        rows = rec.bulk_records(batch, "DE", start=published)
        eu.publish(rec.write_jsonl(tmp_path / f"during-{n}.jsonl", rows))
        published += batch
        n += 1
    # Nothing crossed the cut.
    assert jp.log_head("EU")[0] == len(first)
    assert eu.log_head("EU")[0] == published

    network.link_up(jp)
    took = network.wait_replicated(jp, "EU", published, timeout=60, interval=0.1)
    print(
        f"\npartition of {time.monotonic() - cut - took:.1f} s, {published - len(first)} "
        f"entries behind: converged {took:.2f} s after healing"
    )
    record_property("partition_convergence_s", round(took, 3))
    assert jp.log_head("EU") == eu.log_head("EU")
    status = jp.partner_status("EU")
    assert status is not None
    assert not status["quarantined"]

"""A gateway SIGKILLed mid-stream and restarted with the same command: nothing lost or
duplicated, and the partner's stored log of the issuer has the issuer's own root."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from interop_tests import records as rec
from interop_tests.harness import Host, Network, env_int

pytestmark = pytest.mark.netns

RECORDS = env_int("MRAGW_INTEROP_RECORDS", 3000)


def _kill_mid_stream(net: Network, victim: Host, eu: Host, jp: Host, path: Path) -> bool:
    """Publish ``path`` at EU in the background; SIGKILL ``victim`` once JP's replica has
    grown past where it stood but is not complete. Returns whether it was caught mid-stream."""
    start, _ = jp.log_head("EU")
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            eu.publish(path)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    worker = threading.Thread(target=publish)
    worker.start()
    caught = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        size, _ = jp.log_head("EU")
        eu_size, _ = eu.log_head("EU")
        if start < size < eu_size or (start < size and worker.is_alive()):
            net.kill(victim, signal.SIGKILL)
            caught = True
            break
        if not worker.is_alive() and size == eu_size and size > start:
            break
        time.sleep(0.01)
    worker.join(timeout=120)
    assert not errors, errors
    return caught


def test_sigkill_mid_stream_then_restart(
    network: Network, tmp_path: Path, record_property: Any
) -> None:
    eu, jp = network.build(["EU", "JP"])
    eu.env["MRAGW_LIMITS__PUBLISH_CHUNK"] = "250"
    total = 0
    for phase, victim in (("receiver", jp), ("issuer", eu)):
        batch = rec.bulk_records(RECORDS, "DE", start=total)
        total += RECORDS
        path = rec.write_jsonl(tmp_path / f"{phase}.jsonl", batch)
        caught = _kill_mid_stream(network, victim, eu, jp, path)
        killed_at, _ = jp.log_head("EU")
        t0 = time.monotonic()
        network.restart(victim)
        network.wait_replicated(jp, "EU", total, timeout=60)
        took = time.monotonic() - t0
        print(
            f"\n{phase} killed {'mid-stream' if caught else 'after the stream'} at JP size "
            f"{killed_at}/{total}; converged {took:.2f} s after restart"
        )
        record_property(f"kill_{phase}_convergence_s", round(took, 3))

        # Nothing lost or duplicated; the partner's stored log has the issuer's root.
        eu_head = eu.log_head("EU")
        assert eu_head[0] == total
        assert jp.log_head("EU") == eu_head
        rows = jp.query(
            "SELECT COUNT(*), COUNT(DISTINCT idx), MIN(idx), MAX(idx) FROM entries WHERE log = 'EU'"
        )
        assert rows[0] == (total, total, 0, total - 1)
        (held,) = eu.query("SELECT COUNT(*) FROM records WHERE log = 'EU'")
        assert held[0] == total
        status = jp.partner_status("EU")
        assert status is not None
        assert not status["quarantined"]
        assert status["unusable"] == 0

    # Publishing the same input again appends nothing (idempotent after the crashes).
    again = eu.publish(tmp_path / "issuer.jsonl")
    assert "appended 0" in again, again

"""Signing-key and TLS rotation on a live EU gateway while JP and US stream from it:
replication continues, nothing is lost, nobody is quarantined, and the new signing key is
used after its overlap."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from interop_tests import records as rec
from interop_tests.harness import REFRESH_INTERVAL_S, Network

pytestmark = pytest.mark.netns

SIGNING_OVERLAP_S = 2.0
TLS_OVERLAP_S = max(2.0, 3 * REFRESH_INTERVAL_S)


def test_rotation_while_streaming(network: Network, tmp_path: Path) -> None:
    eu, jp, us = network.build(["EU", "JP", "US"])
    stop = threading.Event()
    errors: list[BaseException] = []
    published = [0]

    def stream() -> None:
        n = 0
        try:
            while not stop.is_set():
                rows = rec.bulk_records(40, "DE", start=published[0])
                eu.publish(rec.write_jsonl(tmp_path / f"stream-{n}.jsonl", rows))
                published[0] += len(rows)
                n += 1
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    worker = threading.Thread(target=stream)
    worker.start()
    try:
        while published[0] < 80:
            assert not errors, errors
            time.sleep(0.1)
        eu.run(
            "keys",
            "rotate",
            "--signing",
            "--home",
            str(eu.home),
            "--overlap",
            str(SIGNING_OVERLAP_S),
        )
        eu.run("keys", "rotate", "--tls", "--home", str(eu.home), "--overlap", str(TLS_OVERLAP_S))
        rotated = time.monotonic()
        while time.monotonic() - rotated < max(SIGNING_OVERLAP_S, TLS_OVERLAP_S) + 3:
            assert not errors, errors
            time.sleep(0.2)
    finally:
        stop.set()
        worker.join(timeout=120)
    assert not errors, errors

    size = eu.log_head("EU")[0]
    assert size == published[0]
    for partner in (jp, us):
        network.wait_replicated(partner, "EU", size, timeout=60)
        status = partner.partner_status("EU")
        assert status is not None
        assert status["quarantined"] is False, (partner.code, status)
        assert status["unusable"] == 0, (partner.code, status)
        assert status["unverified"] == 0, (partner.code, status)
        assert status["entries"] == size
        assert status["tree_size"] == size
        assert partner.log_head("EU") == eu.log_head("EU")
        assert status["trust"]["version"] >= 3, (partner.code, status["trust"])
    # Entries signed by the old and by the new signing key both arrived (the leaf is the
    # same at every partner, so look at the issuer's own store).
    signers = {s for (s,) in eu.query("SELECT DISTINCT signer FROM entries WHERE log='EU'")}
    assert len(signers) >= 2, signers

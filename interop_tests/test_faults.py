"""Network faults injected by a TCP proxy (``interop_tests/proxy.py``; this kernel has no
``netem``) on a third host between JP and EU: JP dials EU through it
(``mragw partner set-endpoint``).

- latency, a bandwidth limit and connections dropped every second or so: replication still
  converges, with no quarantine; the convergence time is printed;
- a proxy that flips one server->client byte on every connection: TLS rejects the stream, so
  JP only reconnects: its replica stays consistent with EU's log (its root is EU's root at
  its size), nothing is marked invalid, no quarantine; dialled directly again, it converges.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from crypto.merkle import root_from_leaf_hashes
from interop_tests import records as rec
from interop_tests.harness import Host, Network, env_float, env_int

pytestmark = pytest.mark.netns

RECORDS = env_int("MRAGW_INTEROP_FAULT_RECORDS", 600)
LATENCY_MS = env_float("MRAGW_INTEROP_LATENCY_MS", 40.0)
BANDWIDTH_KBPS = env_float("MRAGW_INTEROP_BANDWIDTH_KBPS", 1024.0)
DROP_EVERY_S = env_float("MRAGW_INTEROP_DROP_EVERY_S", 1.0)
# Past the TLS handshake and the trust refresh, inside the replication stream.
CORRUPT_AFTER = env_int("MRAGW_INTEROP_CORRUPT_AFTER_BYTES", 20000)
CORRUPTED_STREAMS = env_int("MRAGW_INTEROP_CORRUPTED_STREAMS", 4)
PROXY_PORT = 17443


def _through_proxy(net: Network, *fault_args: str) -> tuple[Host, Host, Host]:
    """EU and JP (started, healthy) with JP dialling EU through a proxy on host PX."""
    eu, jp = net.build(["EU", "JP"], start=False)
    px = net.add_host("PX")  # a bare host: only the proxy runs there
    _, bound = net.spawn_module(
        px,
        "interop_tests.proxy",
        ["--listen", f"{px.addr}:{PROXY_PORT}", "--target", eu.endpoint, *fault_args],
        px.log_path,
    )
    assert bound == f"{px.addr}:{PROXY_PORT}"
    jp.run("partner", "set-endpoint", "EU", bound, "--home", str(jp.home))
    for h in (eu, jp):
        h.start()
    for h in (eu, jp):
        h.wait_healthy()
    return eu, jp, px


def _root_at(issuer: Host, size: int) -> bytes:
    """The issuer's own root of its log at ``size`` (from its stored leaf hashes)."""
    rows = issuer.query(
        "SELECT leaf_hash FROM entries WHERE log = ? AND idx < ? ORDER BY idx", issuer.code, size
    )
    assert len(rows) == size
    return root_from_leaf_hashes([bytes(r[0]) for r in rows])


def _assert_consistent(jp: Host, eu: Host) -> int:
    """JP's replica of EU is a prefix of EU's log, every stored entry verified and valid."""
    size, root = jp.log_head("EU")
    if size:
        assert root == _root_at(eu, size)
    (stored,) = jp.query("SELECT COUNT(*), COALESCE(MAX(idx) + 1, 0) FROM entries WHERE log = 'EU'")
    assert stored == (size, size)
    bad = jp.query(
        "SELECT COUNT(*) FROM entries WHERE log = 'EU' AND sig_state IN ('invalid', 'revoked', "
        "'early')"
    )
    assert bad == [(0,)]
    status = jp.partner_status("EU")
    assert status is not None
    assert not status["quarantined"], status["reason"]
    assert status["unusable"] == 0
    return size


def _proxy_events(px: Host, pattern: str) -> int:
    return len(re.findall(pattern, px.log_text()))


def test_latency_bandwidth_and_drops_still_converge(
    network: Network, tmp_path: Path, record_property: Any
) -> None:
    eu, jp, px = _through_proxy(
        network,
        "--latency-ms",
        str(LATENCY_MS),
        "--bandwidth-kbps",
        str(BANDWIDTH_KBPS),
        "--drop-every-s",
        str(DROP_EVERY_S),
    )
    first = rec.bulk_records(RECORDS // 2, "DE")
    eu.publish(rec.write_jsonl(tmp_path / "first.jsonl", first))
    network.wait_replicated(jp, "EU", len(first), timeout=40, interval=0.2)
    second = rec.bulk_records(RECORDS - len(first), "DE", start=len(first))
    t0 = time.monotonic()
    eu.publish(rec.write_jsonl(tmp_path / "second.jsonl", second))
    network.wait_replicated(jp, "EU", RECORDS, timeout=40, interval=0.2)
    took = time.monotonic() - t0
    drops = _proxy_events(px, r"dropping \d+ connection")
    conns = _proxy_events(px, r"conn \d+: open")
    print(
        f"\n{LATENCY_MS:.0f} ms latency, {BANDWIDTH_KBPS:.0f} kbit/s, drops every "
        f"{DROP_EVERY_S:.1f} s: {RECORDS - len(first)} entries converged {took:.2f} s after "
        f"publishing ({conns} connections, {drops} drops)"
    )
    record_property("faults_convergence_s", round(took, 3))

    assert jp.log_head("EU") == eu.log_head("EU")
    assert _assert_consistent(jp, eu) == RECORDS
    # The faults were exercised: connections were cut and JP dialled again.
    assert drops >= 1
    assert conns >= 2
    # JP received every byte through the proxy: it never dialled EU directly.
    assert f"-> {eu.addr}:" in px.log_text()


def test_corrupted_bytes_only_cause_reconnects(
    network: Network, tmp_path: Path, record_property: Any
) -> None:
    eu, jp, px = _through_proxy(network, "--corrupt-after-bytes", str(CORRUPT_AFTER))
    rows = rec.bulk_records(RECORDS, "DE")
    eu.publish(rec.write_jsonl(tmp_path / "records.jsonl", rows))
    eu_size = eu.log_head("EU")[0]
    assert eu_size == RECORDS

    # Several streams are corrupted (JP keeps reconnecting); JP stays consistent throughout.
    deadline = time.monotonic() + 30
    sizes: list[int] = []
    while _proxy_events(px, r"corrupted server->client byte") < CORRUPTED_STREAMS:
        assert time.monotonic() < deadline, "the proxy corrupted too few streams"
        sizes.append(_assert_consistent(jp, eu))
        time.sleep(0.2)
    # Let the last corrupted stream end (JP notices and hangs up), then check again.
    deadline = time.monotonic() + 10
    while _proxy_events(px, r"closed .*corrupted_at=") < CORRUPTED_STREAMS:
        assert time.monotonic() < deadline, "a corrupted stream stayed open"
        time.sleep(0.1)
    reached = _assert_consistent(jp, eu)
    assert reached < eu_size, "corruption did not stop replication: the test proves nothing"
    assert sizes == sorted(sizes), "JP's replica went backwards"
    conns = _proxy_events(px, r"conn \d+: open")
    # What JP's TLS layer said (gRPC core logs it at ERROR level by default).
    rejected = jp.log_text().count("TSI_DATA_CORRUPTED")
    print(
        f"\ncorrupting byte {CORRUPT_AFTER} of every stream: {conns} connections, "
        f"{rejected} TLS records rejected by JP, JP at {reached}/{eu_size} entries"
    )

    # Corruption removed: dialled directly, JP converges.
    t0 = time.monotonic()
    jp.run("partner", "set-endpoint", "EU", eu.endpoint, "--home", str(jp.home))
    network.wait_replicated(jp, "EU", eu_size, timeout=40, interval=0.2)
    took = time.monotonic() - t0
    print(f"dialled directly again: converged {took:.2f} s later")
    record_property("corruption_recovery_s", round(took, 3))
    assert jp.log_head("EU") == eu.log_head("EU")
    assert _assert_consistent(jp, eu) == eu_size

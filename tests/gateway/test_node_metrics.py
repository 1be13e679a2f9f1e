"""Node metrics computed at scrape time (gateway.server.node_metrics), scraped over HTTP from
real gateways exchanging their logs over mTLS, on a real SQLite file and a real PostgreSQL.

Every exposition is read twice: by the strict reader of tests/gateway/test_server_http.py (the
format, line by line) and by prometheus_client's own parser (an independent implementation,
which also unescapes label values); the values asserted come from the latter.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from crypto.pki import load_certificate
from gateway.alerts import clear_alerts
from gateway.demo_data import eu_records
from gateway.keys import rotate_signing
from gateway.node import Node
from gateway.partners import set_endpoint
from gateway.replicator import ReplicatorStatus
from gateway.server.metrics import GatewayMetrics
from gateway.server.node_metrics import ALERT_KINDS, NodeMetrics
from gateway.storage.schema import logs, partners
from mra.v1 import envelope_pb2, exchange_pb2
from tests.gateway.nodes import (
    Cluster,
    bulk_records,
    cluster_of,
    eventually,
    log_head,
    make_home,
)
from tests.gateway.test_hostile_partner import (
    _flip,
    _inject_consistent_bad_entry,
    _stopped_after,
    hostile_world,
)
from tests.gateway.test_server_http import get, parse_exposition

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]

# Witness gossip only when a test asks for a round (so lag is not resolved behind its back).
QUIET = {"MRAGW_TRUST__WITNESS_INTERVAL_S": "3600"}
GET_TRUST = "/" + exchange_pb2.DESCRIPTOR.services_by_name["ExchangeService"].full_name
GET_TRUST += "/GetTrustStatement"


def read_exposition(body: str) -> Series:
    """Every sample by (name, labels), after both parsers accepted the text."""
    parse_exposition(body)  # strict: fails on any malformed line
    out: Series = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = float(sample.value)
    return out


async def scrape(url: str) -> Series:
    status, headers, body = await get(url, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return read_exposition(body.decode("utf-8"))


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, frozenset(labels.items()))]


def labelled(series: Series, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in series.items() if n == name}


def url_of(cluster: Cluster, code: str) -> str:
    return cluster.gateways[code].server.listeners.http_url


@contextmanager
def dead_endpoint() -> Iterator[str]:
    """A loopback address where nothing listens (bound, never listening: refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def pair(db_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with cluster_of(tmp_path, db_url, ("EU", "JP"), QUIET, start=True) as cluster:
        await cluster.connect("EU", "JP")
        yield cluster


async def test_two_gateways_export_what_they_published_received_and_lag(pair: Cluster) -> None:
    published = await pair.publish("EU", bulk_records(10))
    assert published.appended == 10
    size = (await log_head(pair.node("EU"), "EU")).size
    assert size == 10
    await pair.wait_replicated("JP", "EU", size)

    eu = await scrape(url_of(pair, "EU"))
    assert value(eu, "mragw_node_info", admin="EU") == 1
    assert value(eu, "mragw_node_metrics_up") == 1
    assert value(eu, "mragw_log_entries_total") == published.appended
    assert 0 <= value(eu, "mragw_log_checkpoint_age_seconds") < 60
    # JP's replicator asked EU for newer trust statements: each unary call's latency is
    # counted under its final status code, exactly as often as the call was counted handled.
    latencies = labelled(eu, "mragw_grpc_handling_seconds_count")
    asked = {dict(k)["code"]: v for k, v in latencies.items() if dict(k)["method"] == GET_TRUST}
    assert sum(asked.values()) >= 1
    for labels, count in latencies.items():
        assert "code" in dict(labels)
        assert eu[("mragw_grpc_handled_total", labels)] == count

    jp = await scrape(url_of(pair, "JP"))
    assert value(jp, "mragw_replication_entries_received_total", partner="EU") == size
    assert value(jp, "mragw_replication_batches_received_total", partner="EU") >= 1
    assert value(jp, "mragw_partner_log_entries", partner="EU") == size
    assert value(jp, "mragw_replication_lag_entries", partner="EU") == 0
    assert 0 <= value(jp, "mragw_replication_lag_seconds", partner="EU") < 60
    assert 0 <= value(jp, "mragw_partner_checkpoint_age_seconds", partner="EU") < 60
    assert value(jp, "mragw_partner_connected", partner="EU") == 1
    assert value(jp, "mragw_partner_quarantined", partner="EU") == 0
    assert value(jp, "mragw_partner_suspended", partner="EU") == 0
    assert labelled(jp, "mragw_replication_rejected_total") == {}
    for kind in ALERT_KINDS:
        assert value(jp, "mragw_alerts_open", kind=kind) == 0
        assert value(jp, "mragw_alerts_raised_total", kind=kind) == 0

    # Expiry times are the certificates' and statements' own.
    jp_node, eu_node = pair.node("JP"), pair.node("EU")
    for name in ("ca", "node", "admin"):
        cert = load_certificate(jp_node.tls_bytes(f"{name}.pem"))
        expected = cert.not_valid_after_utc.timestamp()
        assert value(jp, "mragw_tls_certificate_expiry_timestamp_seconds", certificate=name) == (
            expected
        )
    async with jp_node.engine.connect() as conn:
        jp_statement = await jp_node.trust_statement(conn)
    async with eu_node.engine.connect() as conn:
        eu_statement = await eu_node.trust_statement(conn)
    assert value(jp, "mragw_trust_statement_expiry_timestamp_seconds") == (
        jp_statement.expires.timestamp()
    )
    assert value(jp, "mragw_partner_trust_statement_expiry_timestamp_seconds", partner="EU") == (
        eu_statement.expires.timestamp()
    )
    # No signing key has a window yet (one ends only when a rotation retires it).
    assert labelled(jp, "mragw_signing_key_expiry_timestamp_seconds") == {}

    # JP goes down; meanwhile EU publishes 3 more. JP comes back unable to reach EU (a cut
    # link), but EU's witness gossip shows JP EU's newer signed checkpoint: 3 entries behind.
    await pair.stop("JP")
    stopped_at = time.time()
    more = await pair.publish("EU", bulk_records(13)[10:])
    assert more.appended == 3
    with dead_endpoint() as nowhere:
        await set_endpoint(pair.node("JP"), "EU", nowhere, actor="test")
        await pair.start("JP")
        await pair.gateways["EU"].witness.round()
        before = time.time()
        jp = await scrape(url_of(pair, "JP"))
        assert value(jp, "mragw_replication_lag_entries", partner="EU") == 3
        assert value(jp, "mragw_replication_lag_seconds", partner="EU") >= before - stopped_at
        assert value(jp, "mragw_partner_connected", partner="EU") == 0
        # A new process: its replicator received nothing yet (counters restart at 0).
        assert value(jp, "mragw_replication_entries_received_total", partner="EU") == 0
        assert value(jp, "mragw_partner_log_entries", partner="EU") == size

        # The link is back: JP catches up and the lag is gone.
        await set_endpoint(pair.node("JP"), "EU", pair.endpoints["EU"], actor="test")
        await pair.wait_replicated("JP", "EU", size + 3)
    jp = await scrape(url_of(pair, "JP"))
    assert value(jp, "mragw_replication_lag_entries", partner="EU") == 0
    assert value(jp, "mragw_replication_entries_received_total", partner="EU") == 3
    assert value(jp, "mragw_partner_log_entries", partner="EU") == size + 3
    assert value(jp, "mragw_replication_lag_seconds", partner="EU") < time.time() - before + 1


async def test_hostile_entry_quarantines_and_is_counted(db_url: str, tmp_path: Path) -> None:
    async with hostile_world(tmp_path, db_url) as w:
        url = w.gateway.server.listeners.http_url
        before = await scrape(url)
        assert value(before, "mragw_partner_quarantined", partner="EU") == 0
        assert value(before, "mragw_alerts_raised_total", kind="quarantine") == 0

        # An entry validly placed in EU's tree but whose signature was altered.
        genuine = envelope_pb2.Envelope.FromString(w.envelope(eu_records()[0]))
        genuine.signatures[0].sig = _flip(genuine.signatures[0].sig, 5)
        bad = await _inject_consistent_bad_entry(w, genuine.SerializeToString())
        await _stopped_after(w, bad, ("invalid entry",))

        # The replicator records the fault as it stops, just after hanging up.
        async def stopped() -> Series | None:
            series = await scrape(url)
            return series if labelled(series, "mragw_replication_rejected_total") else None

        after = await eventually(stopped, deadline_s=10)
        assert value(after, "mragw_partner_quarantined", partner="EU") == 1
        assert labelled(after, "mragw_replication_rejected_total") == {
            frozenset({("partner", "EU"), ("reason", "invalid_entry")}): 1
        }
        assert value(after, "mragw_alerts_open", kind="quarantine") == 1
        assert value(after, "mragw_alerts_raised_total", kind="quarantine") == 1
        # EU signed a checkpoint of its whole log; JP stored (and judged) up to the bad one.
        lag = w.log.size - (bad + 1)
        assert lag == 2
        assert value(after, "mragw_replication_lag_entries", partner="EU") == lag
        assert value(after, "mragw_partner_connected", partner="EU") == 0

        # Cleared by an operator: no longer open, still counted as raised.
        assert await clear_alerts(w.jp, subject="EU", actor="test") == 1
        cleared = await scrape(url)
        assert value(cleared, "mragw_alerts_open", kind="quarantine") == 0
        assert value(cleared, "mragw_alerts_raised_total", kind="quarantine") == 1

        await w.resume_and_catch_up()
        resumed = await scrape(url)
        assert value(resumed, "mragw_partner_quarantined", partner="EU") == 0
        assert value(resumed, "mragw_replication_lag_entries", partner="EU") == 0


# -- one node, no network: label escaping, key windows, a database that fails --------------


HOSTILE_CODE = 'Q"\n\\'


async def _odd_partner(node: Node) -> None:
    """A partner row whose code needs escaping and whose stored bundle does not verify."""
    now = time.time()
    async with node.engine.begin() as conn:
        await conn.execute(
            partners.insert().values(
                code=HOSTILE_CODE,
                root_fingerprint="0" * 64,
                trust_version=1,
                bundle=b"not a bundle",
                endpoint="127.0.0.1:1",
                ca_pem="",
                suspended=False,
                quarantined=True,
                reason='a "reason"\nwith newlines',
                added_at=now - 5,
                updated_at=now,
            )
        )
        await conn.execute(
            logs.insert().values(
                code=HOSTILE_CODE,
                own=False,
                size=0,
                root=b"\x00" * 32,
                frontier=b"",
                checkpoint_size=0,
                held_size=0,
                lock_seq=0,
            )
        )


async def test_label_values_are_escaped_and_reasons_bounded(db_url: str, tmp_path: Path) -> None:
    node = await make_home(tmp_path, "JP", db_url)
    try:
        await _odd_partner(node)
        status = ReplicatorStatus()
        for kind in ("gap", 'evil"\nkind', "gap", "made-up"):
            status.record_fault(kind, "x")
        metrics = GatewayMetrics()
        NodeMetrics(node, metrics, lambda code: status if code == HOSTILE_CODE else None)
        await metrics.collect()
        series = read_exposition(metrics.registry.render())
        assert value(series, "mragw_partner_quarantined", partner=HOSTILE_CODE) == 1
        assert labelled(series, "mragw_replication_rejected_total") == {
            frozenset({("partner", HOSTILE_CODE), ("reason", "gap")}): 2,
            frozenset({("partner", HOSTILE_CODE), ("reason", "other")}): 2,
        }
        # Never heard from: lag in seconds counts from when it was pinned.
        assert value(series, "mragw_replication_lag_seconds", partner=HOSTILE_CODE) >= 5
        # A stored chain that does not verify exports no expiry (status says why).
        assert labelled(series, "mragw_partner_trust_statement_expiry_timestamp_seconds") == {}
    finally:
        await node.close()


async def test_signing_keys_with_a_window_export_its_end(db_url: str, tmp_path: Path) -> None:
    node = await make_home(tmp_path, "JP", db_url)
    try:
        metrics = GatewayMetrics()
        NodeMetrics(node, metrics)
        await rotate_signing(node, overlap=dt.timedelta(hours=1), actor="test")
        # As published (the signed document carries whole seconds).
        async with node.engine.connect() as conn:
            statement = await node.trust_statement(conn)
        windows = {
            k.key_id: k.valid_until.timestamp()
            for k in statement.signing_keys
            if k.valid_until is not None
        }
        assert windows  # the retiring key's window ends after the overlap
        await metrics.collect()
        series = read_exposition(metrics.registry.render())
        assert {
            dict(labels)["key_id"]: v
            for labels, v in labelled(series, "mragw_signing_key_expiry_timestamp_seconds").items()
        } == windows
        assert value(series, "mragw_trust_statement_expiry_timestamp_seconds") == (
            statement.expires.timestamp()
        )
    finally:
        await node.close()


async def test_an_unreadable_database_drops_its_series_not_the_endpoint(
    db_url: str, tmp_path: Path
) -> None:
    node = await make_home(tmp_path, "JP", db_url)
    try:
        metrics = GatewayMetrics()
        metrics.pinned_partners.set(2)
        NodeMetrics(node, metrics)
        await metrics.collect()
        assert value(read_exposition(metrics.registry.render()), "mragw_log_entries_total") == 0
        async with node.engine.begin() as conn:
            await conn.execute(text("DROP TABLE witnessed"))
        await metrics.collect()
        series = read_exposition(metrics.registry.render())
        assert value(series, "mragw_node_metrics_up") == 0
        # Nothing stale: every database-derived family is empty; process metrics remain.
        assert labelled(series, "mragw_log_entries_total") == {}
        assert labelled(series, "mragw_alerts_open") == {}
        assert value(series, "mragw_pinned_partners") == 2
    finally:
        await node.close()

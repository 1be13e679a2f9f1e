"""The status page's content (lag, rejections, graph) and its access rules off loopback.

- Content: lag as defined in :func:`gateway.status.replication_lag`, rejections newest first,
  every partner-supplied text escaped, the recognition graph inline and checked.
- Access: on loopback plain HTTP; bound elsewhere HTTPS with the node certificate, and only an
  admin client certificate of the node's own CA gets an answer. Real certificates, made here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes

from crypto.pki import dns_name_for, load_certificate
from gateway.datasets import packaged_bytes, recogniser_for
from gateway.server.http import (
    PlainHttpRefusedError,
    StatusHttpServer,
    UnsafeSvgError,
    inline_svg,
    is_loopback_host,
    reader_check,
)
from gateway.server.metrics import GatewayMetrics
from gateway.server.tls import HttpServerTls
from gateway.status import (
    RecentFaults,
    node_status,
    recent_rejections,
    recognition_graph_svg,
    replication_lag,
)
from registry.graph import network, to_svg
from tests.gateway.test_server_http import get
from tests.gateway.test_server_support import (
    Identity,
    PartnerPki,
    make_node,
    make_server,
    node_admin_identity,
    own_local_identity,
)

HOSTILE = "<img src=x onerror=alert(1)>\"&'</td></tr><script>alert(2)</script>"


def test_lag_counts_unverified_entries_and_never_goes_negative() -> None:
    lag = replication_lag(checkpoint_size=10, stored=8, unverified=3, verified_at=100.0, now=112.5)
    assert (lag.entries, lag.seconds) == (5, 12.5)  # 10 seen - (8 stored - 3 unverified)
    caught_up = replication_lag(10, 10, 0, 100.0, 100.0)
    assert (caught_up.entries, caught_up.seconds) == (0, 0.0)
    # A stored head ahead of the newest checkpoint (not possible today) is no negative lag.
    assert replication_lag(4, 6, 0, None, 1.0).entries == 0
    assert replication_lag(4, 6, 0, None, 1.0).seconds is None


def test_rejections_merge_partners_newest_first() -> None:
    faults = {
        "EU": [(100.0, "bad_proof", "root mismatch"), (300.0, "gap", "index 9 after 7")],
        "US": [(200.0, "malformed", "note is not UTF-8")],
    }
    source: RecentFaults = lambda code: faults.get(code, [])  # noqa: E731
    rows = recent_rejections(["EU", "US", "KR"], source)
    assert [(r["partner"], r["kind"]) for r in rows] == [
        ("EU", "gap"),
        ("US", "malformed"),
        ("EU", "bad_proof"),
    ]
    assert rows[0]["at"] == "1970-01-01T00:05:00Z"
    assert len(recent_rejections(["EU", "US"], source, limit=2)) == 2


def _graph_svg() -> str:
    recogniser = recogniser_for(packaged_bytes())
    return to_svg(network(recogniser, dt.date(2025, 1, 15), focus="JP"))


def test_the_real_graph_is_embedded_without_its_xml_declaration() -> None:
    svg = _graph_svg()
    inline = inline_svg(svg)
    assert inline.startswith("<svg ")
    assert inline == svg[svg.index("<svg") :]


@pytest.mark.parametrize(
    ("mutation", "named"),
    [
        (lambda s: s.replace("</svg>", "<script>alert(1)</script></svg>"), "script"),
        (lambda s: s.replace("<svg ", '<svg onload="alert(1)" '), "onload"),
        (
            lambda s: s.replace("</svg>", "<foreignObject><p>x</p></foreignObject></svg>"),
            "foreignObject",
        ),
        (
            lambda s: s.replace('marker-end="url(#head)"', 'marker-end="url(http://x/#a)"', 1),
            "refers outside",
        ),
        (
            lambda s: s.replace("</svg>", '<image href="http://example.invalid/x.png"/></svg>'),
            "image",
        ),
        (lambda s: s.replace("<svg ", '<!DOCTYPE svg [<!ENTITY a "b">]><svg '), "document type"),
        (lambda s: s.replace("</svg>", "<g>"), "well-formed"),
        (lambda s: s + " " * (3 * 1024 * 1024), "more than"),
    ],
    ids=["script", "handler", "foreign", "external-url", "image", "doctype", "broken", "huge"],
)
def test_an_svg_with_anything_unexpected_is_refused_naming_it(mutation: Any, named: str) -> None:
    with pytest.raises(UnsafeSvgError, match=named):
        inline_svg(mutation(_graph_svg()))


def test_loopback_hosts() -> None:
    assert is_loopback_host("127.0.0.1")
    assert is_loopback_host("127.0.0.2")
    assert is_loopback_host("::1")
    assert is_loopback_host("localhost")
    for host in ("0.0.0.0", "::", "", "192.0.2.1", "gw.example", "localhost.example"):  # noqa: S104
        assert not is_loopback_host(host), host


def test_plain_http_off_loopback_is_refused_before_binding() -> None:
    with pytest.raises(PlainHttpRefusedError, match=r"server\.http_listen: 0\.0\.0\.0:0 .*plain"):
        StatusHttpServer("0.0.0.0:0", metrics=GatewayMetrics(), healthy=lambda: True)
    with pytest.raises(ValueError, match="both"):
        StatusHttpServer(
            "127.0.0.1:0",
            metrics=GatewayMetrics(),
            healthy=lambda: True,
            tls=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
        )


# -- escaping over real HTTP --------------------------------------------------------------


STATUS: dict[str, Any] = {
    "admin": "JP",
    "log_size": 4,
    "partners": [
        {
            "admin": "EU",
            "quarantined": True,
            "reason": HOSTILE,
            "lag_entries": 3,
            "lag_s": 2.5,
            "checkpoint": {"size": 9, "root": "ab" * 32, "at": "2026-11-28T00:00:00Z"},
            "trust_problem": HOSTILE,
        }
    ],
    "rejections": [
        {"at": "2026-11-28T00:00:01Z", "partner": "EU", "kind": "bad_proof", "message": HOSTILE}
    ],
    "alerts": [{"at": "x", "kind": "quarantine", "subject": "EU", "message": HOSTILE}],
}


async def test_partner_reason_and_fault_text_are_escaped_on_the_page() -> None:
    async def graph() -> str:
        return _graph_svg()

    server = StatusHttpServer(
        "127.0.0.1:0",
        metrics=GatewayMetrics(),
        healthy=lambda: True,
        status=lambda: STATUS,
        graph=graph,
    )
    await server.start()
    try:
        status, headers, body = await get(server.url, "/")
        graph_status, graph_headers, graph_body = await get(server.url, "/graph.svg")
    finally:
        await server.close()
    assert status == 200
    page = body.decode("utf-8")
    escaped = (
        "&lt;img src=x onerror=alert(1)&gt;&quot;&amp;&#x27;&lt;/td&gt;&lt;/tr&gt;"
        "&lt;script&gt;alert(2)&lt;/script&gt;"
    )
    # Reason, trust problem, rejection message and alert: four escaped copies, no raw one.
    assert page.count(escaped) == 4
    assert "<script" not in page
    assert "<img" not in page
    assert "onerror=alert(1)>" not in page
    assert '<td class="state">quarantined</td>' in page
    assert '<td class="lag_entries">3</td>' in page
    assert '<td class="lag_s">2.5</td>' in page
    assert f'<td class="last_checkpoint">size 9, root {"ab" * 8}…, 2026-11-28T00:00:00Z' in page
    assert '<td class="kind">bad_proof</td>' in page
    assert '<div id="graph"><svg ' in page
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "form-action 'none'" in csp
    assert "script-src" not in csp
    assert "<form" not in page
    assert graph_status == 200
    assert graph_headers["content-type"] == "image/svg+xml; charset=utf-8"
    assert graph_headers["content-security-policy"] == csp
    assert graph_body.decode("utf-8") == _graph_svg()


async def test_an_unsafe_graph_is_left_out_and_the_page_still_served() -> None:
    async def graph() -> str:
        return _graph_svg().replace("</svg>", "<script>alert(1)</script></svg>")

    server = StatusHttpServer(
        "127.0.0.1:0",
        metrics=GatewayMetrics(),
        healthy=lambda: True,
        status=lambda: STATUS,
        graph=graph,
    )
    await server.start()
    try:
        status, _, body = await get(server.url, "/")
        graph_status, _, _ = await get(server.url, "/graph.svg")
    finally:
        await server.close()
    assert status == 200
    assert b"recognition graph unavailable" in body
    assert b"<svg" not in body
    assert b"<script" not in body
    assert graph_status == 503


async def test_the_graph_is_todays_around_the_node_from_its_active_dataset(
    tmp_path: Path,
) -> None:
    node = await make_node(tmp_path)
    try:
        day = dt.date(2025, 1, 15)
        svg = await recognition_graph_svg(node, day)
        assert svg == _graph_svg()  # the code of `mragw registry graph --focus JP --at ...`
        assert "Recognition network on 2025-01-15 around JP" in svg
        assert node.config.today().isoformat() in await recognition_graph_svg(node)
    finally:
        await node.close()


# -- HTTPS off loopback --------------------------------------------------------------------


def _client_context(tmp_path: Path, ca_pem: bytes, identity: Identity | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem.decode())
    if identity is not None:
        key = tmp_path / f"client-{id(identity)}.key"
        cert = tmp_path / f"client-{id(identity)}.pem"
        key.touch(mode=0o600)
        key.write_bytes(identity.key_pem)
        cert.write_bytes(identity.cert_pem)
        context.load_cert_chain(cert, key)
    return context


async def https_get(
    url: str, path: str, context: ssl.SSLContext, server_name: str
) -> tuple[int, bytes]:
    """One request over TLS; raises ssl.SSLError (or a reset) when the server refuses."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, int(port), ssl=context, server_hostname=server_name), 5
    )
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    if not raw:
        raise ConnectionResetError("closed without an answer")
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.fixture
async def off_loopback(tmp_path: Path) -> AsyncIterator[Any]:
    # Bound to the wildcard (not loopback), dialled on 127.0.0.1: all traffic stays local.
    node = await make_node(tmp_path, MRAGW_SERVER__HTTP_LISTEN="0.0.0.0:0")
    server = make_server(node, status=lambda: node_status(node, http_url=server.listeners.http_url))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0)
        await node.close()


async def test_off_loopback_only_an_admin_certificate_of_our_ca_reads(
    off_loopback: Any, tmp_path: Path
) -> None:
    server = off_loopback
    node = server.node
    url = server.listeners.http_url
    assert url.startswith("https://127.0.0.1:")
    ca = node.tls_bytes("ca.pem")
    name = dns_name_for(node.admin)

    def context(identity: Identity | None) -> ssl.SSLContext:
        return _client_context(tmp_path, ca, identity)

    # The handshake refuses: no client certificate; an admin certificate naming our code
    # from another CA. (TLS 1.3 reports it at the first read, as an alert or a reset.)
    refused: Sequence[Identity | None] = [None, PartnerPki.create("JP").local_identity("admin")]
    for identity in refused:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await https_get(url, "/healthz", context(identity), name)

    # Our CA, but a role that may not read it, and our node certificate (no role): 403.
    for identity in (own_local_identity(node, "agency"), _node_identity(node)):
        status, body = await https_get(url, "/", context(identity), name)
        assert status == 403
        assert b"Partners" not in body

    admin = context(node_admin_identity(node))
    status, body = await https_get(url, "/", admin, name)
    assert status == 200
    assert b"<h2>Partners</h2>" in body
    status, body = await https_get(url, "/metrics", admin, name)
    assert status == 200
    assert b"mragw_http_requests_total" in body

    report = await node_status(node, http_url=url)
    assert report["metrics_url"] == f"{url}/metrics"
    assert report["metrics_url"].startswith("https://")


async def test_plain_http_to_the_tls_listener_gets_no_page(off_loopback: Any) -> None:
    url = off_loopback.listeners.http_url.replace("https://", "http://")
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        raw = b""
    finally:
        writer.close()
    assert not raw.startswith(b"HTTP/1.1 200")
    assert b"Partners" not in raw


def _node_identity(node: Any) -> Identity:
    pair = node.tls_pair("node")
    return Identity(pair[0], pair[1])


async def test_a_revoked_admin_certificate_is_refused_per_request(tmp_path: Path) -> None:
    # The listener as app.py builds it off loopback, here on loopback to keep traffic local.
    node = await make_node(tmp_path)
    ops = own_local_identity(node, "admin")
    fingerprint = load_certificate(ops.cert_pem).fingerprint(hashes.SHA256()).hex()
    revoked: dict[str, str] = {}
    server = StatusHttpServer(
        "127.0.0.1:0",
        metrics=GatewayMetrics(),
        healthy=lambda: True,
        tls=HttpServerTls(node).context,
        peer_check=reader_check(node.own_ca_certificates, node.admin, revoked=lambda: revoked),
    )
    await server.start()
    try:
        context = _client_context(tmp_path, node.tls_bytes("ca.pem"), ops)
        name = dns_name_for(node.admin)
        assert server.url.startswith("https://")
        assert (await https_get(server.url, "/healthz", context, name))[0] == 200
        revoked[fingerprint] = "ops"  # `mragw clients revoke ops`, as the refresh loop sees it
        status, body = await https_get(server.url, "/healthz", context, name)
        assert status == 403
        assert b"revoked" in body
    finally:
        await server.close()
        await node.close()


async def test_a_stalled_tls_handshake_is_cut_off_by_the_read_deadline(tmp_path: Path) -> None:
    node = await make_node(tmp_path)
    server = StatusHttpServer(
        "127.0.0.1:0",
        metrics=GatewayMetrics(),
        healthy=lambda: True,
        tls=HttpServerTls(node).context,
        peer_check=reader_check(node.own_ca_certificates, node.admin),
        read_timeout_s=0.3,
    )
    await server.start()
    try:
        # A TCP connection that never starts TLS: the server closes it after 0.3 s; the
        # client-side bound only guards the test.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            started = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert asyncio.get_running_loop().time() - started < 4
        finally:
            writer.close()
    finally:
        await server.close()
        await node.close()

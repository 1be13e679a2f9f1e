"""The HTTP listener: /metrics exposition, /healthz, the escaped status page, strictness."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.server.http import StatusHttpServer, render_status_page
from gateway.server.metrics import GatewayMetrics, Registry
from tests.gateway.test_server_support import (
    PartnerPki,
    dial_partner,
    get_checkpoint,
    make_node,
    make_server,
    pin_partner,
)

# -- a strict reader of the Prometheus text format 0.0.4 --------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
_HELP = re.compile(rf"^# HELP ({_NAME}) .*$")
_TYPE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)$")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_exposition(text: str) -> tuple[Samples, dict[str, str]]:
    """Samples by (name, labels) and the TYPE of each family; fails on any malformed line."""
    assert text.endswith("\n")
    samples: Samples = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            typed = _TYPE.match(line)
            if typed:
                assert typed.group(1) not in types, f"second TYPE for {typed.group(1)}"
                types[typed.group(1)] = typed.group(2)
            else:
                assert _HELP.match(line), line
            continue
        match = _SAMPLE.match(line)
        assert match, f"malformed sample line: {line!r}"
        name, raw_labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"sample {name} before its TYPE"
        labels: list[tuple[str, str]] = []
        rest = raw_labels or ""
        while rest:
            label = _LABEL.match(rest)
            assert label, f"malformed labels in {line!r}"
            labels.append((label.group(1), label.group(2)))
            rest = rest[label.end() :]
        key = (name, frozenset(labels))
        assert key not in samples, f"duplicate series {line!r}"
        samples[key] = float(value)
    return samples, types


# -- a raw HTTP client ---------------------------------------------------------------------


async def exchange(
    url: str, request: bytes, *, deadline_s: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), deadline_s)  # until the server closes
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


async def get(url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    return await exchange(url, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


HOSTILE = '<script>alert("x")</script>&'
STATUS: dict[str, Any] = {
    "admin": "JP",
    "log_size": 12,
    "partners": [
        {
            "admin": "US",
            "connected": True,
            "entries": 3,
            "tree_size": 3,
            "checkpoint_age_s": 1.25,
            "quarantined": True,
            "suspended": False,
            "reason": HOSTILE,
        }
    ],
}


@pytest.fixture
async def http() -> AsyncIterator[StatusHttpServer]:
    metrics = GatewayMetrics()
    metrics.rpc_rejected.inc("partner", "unauthenticated", "")
    healthy = {"value": True}

    async def status() -> dict[str, Any]:
        return STATUS

    server = StatusHttpServer(
        "127.0.0.1:0",
        metrics=metrics,
        healthy=lambda: healthy["value"],
        status=status,
        read_timeout_s=0.3,
        max_request_bytes=2048,
    )
    server.healthy_flag = healthy  # type: ignore[attr-defined]
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_metrics_exposition_parses(http: StatusHttpServer) -> None:
    status, headers, body = await get(http.url, "/metrics")
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples, types = parse_exposition(body.decode("utf-8"))
    assert types["mragw_grpc_rejected_total"] == "counter"
    key = (
        "mragw_grpc_rejected_total",
        frozenset({("listener", "partner"), ("reason", "unauthenticated"), ("partner", "")}),
    )
    assert samples[key] == 1


async def test_healthz_follows_the_serving_state(http: StatusHttpServer) -> None:
    status, _, body = await get(http.url, "/healthz")
    assert (status, body) == (200, b"ok\n")
    http.healthy_flag["value"] = False  # type: ignore[attr-defined]
    status, _, _ = await get(http.url, "/healthz")
    assert status == 503


async def test_status_page_escapes_every_value(http: StatusHttpServer) -> None:
    status, headers, body = await get(http.url, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["content-security-policy"]
    assert "default-src 'none'" in headers["content-security-policy"]
    page = body.decode("utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    assert '<td class="admin">US</td>' in page


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET /metrics\r\n\r\n", 400),  # HTTP/0.9 style
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-" + b"a" * 4096 + b": 1\r\n\r\n", 431),
        (b"GET \xff HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ],
    ids=[
        "post",
        "delete",
        "unknown-path",
        "no-host",
        "body",
        "chunked",
        "http09",
        "huge",
        "binary",
    ],
)
async def test_bad_requests_are_refused_cleanly(
    http: StatusHttpServer, request_bytes: bytes, expected: int
) -> None:
    status, headers, _ = await exchange(http.url, request_bytes)
    assert status == expected
    assert headers["connection"] == "close"
    if expected == 405:
        assert headers["allow"] == "GET, HEAD"


async def test_head_sends_headers_only(http: StatusHttpServer) -> None:
    status, headers, body = await exchange(http.url, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (200, b"")
    assert headers["content-length"] == "3"


async def test_slowloris_is_cut_off_by_the_read_deadline(http: StatusHttpServer) -> None:
    # Half a request head, then silence: the server answers 408 and closes (0.3 s deadline);
    # the client-side bound only guards the test.
    status, _, _ = await exchange(http.url, b"GET / HTTP/1.1\r\nHost: x\r\n", deadline_s=5.0)
    assert status == 408


async def test_a_failing_status_source_is_a_500_not_a_crash() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("db down")

    server = StatusHttpServer(
        "127.0.0.1:0", metrics=GatewayMetrics(Registry()), healthy=lambda: True, status=broken
    )
    await server.start()
    try:
        status, _, body = await get(server.url, "/")
        assert status == 500
        assert b"db down" not in body
        assert (await get(server.url, "/healthz"))[0] == 200
    finally:
        await server.close()


async def test_gateway_metrics_count_a_real_rejection(tmp_path: Path) -> None:
    node = await make_node(tmp_path)
    server = make_server(node)
    await server.start()
    try:
        us, kr = PartnerPki.create("US"), PartnerPki.create("KR")
        await pin_partner(node, us)
        await pin_partner(node, kr)
        await server.refresh_partners()
        async with dial_partner(server, us.node_identity()) as channel:
            assert await get_checkpoint(channel) == "US"
        async with dial_partner(server, us.forged_identity("KR")) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await get_checkpoint(channel)
        status, _, body = await get(server.listeners.http_url, "/metrics")
        assert status == 200
        samples, _ = parse_exposition(body.decode("utf-8"))
        rejected = frozenset(
            {("listener", "partner"), ("reason", "unauthenticated"), ("partner", "")}
        )
        assert samples[("mragw_grpc_rejected_total", rejected)] == 1
        handled = frozenset(
            {
                ("listener", "partner"),
                ("method", "/mra.v1.ExchangeService/GetCheckpoint"),
                ("code", "OK"),
            }
        )
        assert samples[("mragw_grpc_handled_total", handled)] == 1
        assert samples[("mragw_pinned_partners", frozenset())] == 2
    finally:
        await server.stop(grace=0)
        await node.close()


def test_status_page_shows_witnesses_trust_and_alerts_escaped() -> None:
    page = render_status_page(
        {
            "admin": "JP",
            "log_size": 3,
            "log_witnesses": 2,
            "trust": {"version": 4, "state": "renew_soon", "expires": "2026-12-01T00:00:00Z"},
            "alerts": [
                {
                    "at": "2026-11-27T00:00:00Z",
                    "kind": "split_view",
                    "subject": "EU",
                    "message": "EU showed <b>two</b> roots",
                }
            ],
            "partners": [
                {
                    "admin": "EU",
                    "witnesses": 1,
                    "unusable": 4,
                    "trust": {"version": 2, "state": "expired", "expires": "2026-11-01T00:00:00Z"},
                    "trust_problem": "trust_expired: grace ended",
                }
            ],
        }
    )
    assert "witnesses of its latest checkpoint: 2" in page
    assert "v4 renew_soon (expires 2026-12-01T00:00:00Z)" in page
    assert "split_view EU: EU showed &lt;b&gt;two&lt;/b&gt; roots" in page
    assert '<td class="trust_state">v2 expired (expires 2026-11-01T00:00:00Z)</td>' in page
    assert '<td class="trust_problem">trust_expired: grace ended</td>' in page
    assert '<td class="unusable">4</td>' in page

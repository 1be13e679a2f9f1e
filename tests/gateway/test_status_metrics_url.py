"""`mragw status --json` names the running gateway's Prometheus endpoint (``metrics_url``), and
scraping it yields the gateway's metrics, including the status call just made."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

from gateway.cli.remote import running_status
from tests.gateway.nodes import cluster_of
from tests.gateway.test_server_http import parse_exposition


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback URL we made
        assert response.status == 200
        return str(response.read().decode("utf-8"))


async def test_status_reports_a_metrics_url_that_serves_the_gateways_metrics(
    tmp_path: Path,
) -> None:
    async with cluster_of(tmp_path, "", ("JP",), {}, start=True) as cluster:
        node = cluster.gateways["JP"].node
        report = await running_status(node, None)  # what `mragw status` asks a running gateway
        assert report is not None
        http_url = report["http_url"]
        assert isinstance(http_url, str)
        assert http_url.startswith("http://127.0.0.1:")
        assert report["metrics_url"] == f"{http_url}/metrics"
        assert (await cluster.gateways["JP"].status())["metrics_url"] == report["metrics_url"]
        samples, types = parse_exposition(await asyncio.to_thread(_scrape, report["metrics_url"]))
        assert all(name.startswith("mragw_") for name in types)
        handled = {
            dict(labels).get("method"): value
            for (name, labels), value in samples.items()
            if name == "mragw_grpc_handled_total"
        }
        assert handled.get("/mra.v1.AdminService/GetStatus", 0) >= 1

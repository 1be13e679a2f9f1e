"""Alerts on what is about to expire, and on partners gone silent; each opened once."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import update

from gateway.alerts import alert_rows
from gateway.node import Node
from gateway.partners import add_partner, export_bundle
from gateway.storage.schema import alerts, partners
from gateway.watchdog import CERTIFICATE_EXPIRY, SILENT, TRUST_EXPIRY, raise_due_alerts
from tests.gateway.test_server_support import make_node


async def jp_pinning_eu(tmp_path: Path, **env: str) -> Node:
    eu = await make_node(tmp_path, "EU")
    jp = await make_node(tmp_path, "JP", **{f"MRAGW_{k}": v for k, v in env.items()})
    try:
        bundle, fingerprint = await export_bundle(eu)
        await add_partner(jp, bundle, fingerprint, actor="test")
    finally:
        await eu.close()
    return jp


async def test_fresh_nodes_raise_nothing(tmp_path: Path) -> None:
    jp = await jp_pinning_eu(tmp_path)
    try:
        assert await raise_due_alerts(jp) == []
        async with jp.engine.connect() as conn:
            assert await alert_rows(conn, include_cleared=True) == []
    finally:
        await jp.close()


async def test_expiry_within_the_warning_period_alerts_once_per_subject(tmp_path: Path) -> None:
    # Statements last 365 days and TLS leaves 90: a 400-day warning period covers them all.
    jp = await jp_pinning_eu(tmp_path, TRUST__RENEW_WARNING_DAYS="400")
    try:
        opened = await raise_due_alerts(jp)
        assert sorted(opened) == [
            (CERTIFICATE_EXPIRY, "JP"),
            (TRUST_EXPIRY, "EU"),
            (TRUST_EXPIRY, "JP"),
        ]
        assert await raise_due_alerts(jp) == []  # still open: not repeated
        async with jp.engine.connect() as conn:
            rows = {
                (a["kind"], a["subject"]): a["message"]
                for a in await alert_rows(conn, include_cleared=False)
            }
        assert "node.pem" in rows[(CERTIFICATE_EXPIRY, "JP")]
        assert "trust statement version 1 of EU" in rows[(TRUST_EXPIRY, "EU")]
        assert "trust statement version 1 of JP" in rows[(TRUST_EXPIRY, "JP")]
    finally:
        await jp.close()


async def test_a_silent_partner_alerts_unless_suspended_or_disabled(tmp_path: Path) -> None:
    jp = await jp_pinning_eu(tmp_path, REPLICATION__SILENT_AFTER_S="60")
    try:
        assert await raise_due_alerts(jp) == []  # just added: not silent yet
        async with jp.engine.begin() as conn:
            await conn.execute(update(partners).values(added_at=time.time() - 120, suspended=True))
        assert await raise_due_alerts(jp) == []  # suspended on purpose: not an alert
        async with jp.engine.begin() as conn:
            await conn.execute(update(partners).values(suspended=False))
        assert await raise_due_alerts(jp) == [(SILENT, "EU")]
    finally:
        await jp.close()
    off = Node.open(tmp_path / "jp", environ={"MRAGW_REPLICATION__SILENT_AFTER_S": "0"})
    try:
        async with off.engine.begin() as conn:
            await conn.execute(update(partners).values(added_at=time.time() - 10**6))
            await conn.execute(update(alerts).values(cleared=True))
        assert await raise_due_alerts(off) == []
    finally:
        await off.close()

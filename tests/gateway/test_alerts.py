"""Quarantining a partner opens an alert, logged at error level, not repeated while open."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.alerts import QUARANTINE, alert_rows
from gateway.partners import quarantine
from gateway.storage.schema import alerts


async def test_quarantine_opens_one_alert_until_cleared(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="mragw.alerts"):
        async with engine.begin() as conn:
            await quarantine(conn, "EU", "fork: entry 7 differs from the one we hold")
    async with engine.connect() as conn:
        opened = await alert_rows(conn, include_cleared=False)
    assert [(a["kind"], a["subject"]) for a in opened] == [(QUARANTINE, "EU")]
    assert opened[0]["message"] == (
        "partner EU quarantined: fork: entry 7 differs from the one we hold"
    )
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "EU" in errors[0].getMessage()
    assert "fork" in errors[0].getMessage()

    # The same partner quarantined again while the alert is open: no second alert.
    async with engine.begin() as conn:
        await quarantine(conn, "EU", "forged entry 9")
    async with engine.connect() as conn:
        assert len(await alert_rows(conn, include_cleared=False)) == 1

    # Once an operator cleared it, a new quarantine is a new alert.
    async with engine.begin() as conn:
        await conn.execute(update(alerts).values(cleared=True))
        await quarantine(conn, "EU", "gap at 12")
    async with engine.connect() as conn:
        rows = (await conn.execute(select(alerts.c.message, alerts.c.cleared))).all()
    assert sorted((r.message, bool(r.cleared)) for r in rows) == [
        ("partner EU quarantined: fork: entry 7 differs from the one we hold", True),
        ("partner EU quarantined: gap at 12", False),
    ]

"""``mragw alerts list|clear``: open alerts listed, cleared by id or subject, audited."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from sqlalchemy import func, select

from gateway.node import Node
from gateway.storage.schema import alerts, audit
from tests.cli.test_node_cli import init, run


async def raise_alerts(home: Path) -> None:
    node = Node.open(home, environ={})
    try:
        async with node.engine.begin() as conn:
            for subject in ("EU", "US"):
                await conn.execute(
                    alerts.insert().values(
                        at=time.time(),
                        kind="split_view",
                        subject=subject,
                        message=f"split view of {subject}'s log",
                        detail="{}",
                        cleared=False,
                    )
                )
    finally:
        await node.close()


async def audited(home: Path) -> int:
    node = Node.open(home, environ={})
    try:
        async with node.engine.connect() as conn:
            return int(
                (
                    await conn.execute(select(func.count()).where(audit.c.action == "alerts.clear"))
                ).scalar_one()
            )
    finally:
        await node.close()


def test_alerts_are_listed_and_cleared(tmp_path: Path) -> None:
    home = tmp_path / "jp"
    init(home, "JP", 17200)
    asyncio.run(raise_alerts(home))
    listed = json.loads(run("alerts", "list", "--home", str(home), "--json").stdout)["alerts"]
    assert [(a["kind"], a["subject"]) for a in listed] == [
        ("split_view", "EU"),
        ("split_view", "US"),
    ]
    status = json.loads(run("status", "--home", str(home), "--json").stdout)
    assert [a["subject"] for a in status["alerts"]] == ["EU", "US"]

    nothing = run("alerts", "clear", "--home", str(home))
    assert nothing.exit_code == 2
    assert "exactly one" in nothing.stderr
    unknown = run("alerts", "clear", "999", "--home", str(home))
    assert unknown.exit_code == 2
    assert "no open alert 999" in unknown.stderr

    cleared = run("alerts", "clear", str(listed[0]["id"]), "--home", str(home), "--json")
    assert json.loads(cleared.stdout) == {"cleared": 1}
    by_subject = run("alerts", "clear", "--subject", "US", "--home", str(home), "--json")
    assert json.loads(by_subject.stdout) == {"cleared": 1}
    assert json.loads(run("alerts", "list", "--home", str(home), "--json").stdout) == {"alerts": []}
    every = json.loads(run("alerts", "list", "--all", "--home", str(home), "--json").stdout)
    assert [a["cleared"] for a in every["alerts"]] == [True, True]
    assert asyncio.run(audited(home)) == 2

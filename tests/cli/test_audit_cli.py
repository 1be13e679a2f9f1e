"""``mragw audit``: the trail listed oldest first, the chain verified (exit 1 when broken)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sqlalchemy import update

from gateway.node import Node
from gateway.storage.schema import audit
from tests.cli.test_node_cli import init, run


def test_actions_are_listed_in_order_and_the_chain_is_intact(tmp_path: Path) -> None:
    home = tmp_path / "jp"
    init(home, "JP", 17300)
    assert run("trust", "renew", "--home", str(home), "--days", "90").exit_code == 0
    assert run("trust", "renew", "--home", str(home), "--days", "60").exit_code == 0
    result = run("audit", "--home", str(home), "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    actions = document["actions"]
    assert [a["action"] for a in actions] == ["node.init", "trust.renew", "trust.renew"]
    assert [a["id"] for a in actions] == sorted(a["id"] for a in actions)
    assert all(a["actor"] and a["at"].endswith("+00:00") for a in actions)
    assert document["chain"] == {"intact": True, "rows": 3, "broken_at": None, "problem": None}
    last = json.loads(run("audit", "--home", str(home), "--last", "1", "--json").stdout)
    assert [a["id"] for a in last["actions"]] == [actions[-1]["id"]]
    assert last["chain"]["rows"] == 3  # the whole chain is verified, whatever is listed
    text = run("audit", "--home", str(home))
    assert text.exit_code == 0
    assert text.stdout.splitlines()[-1] == "chain intact: 3 action(s)"


async def _edit_second_row(home: Path) -> int:
    node = Node.open(home, environ={})
    try:
        async with node.engine.begin() as conn:
            second = sorted((await conn.execute(audit.select())).all(), key=lambda r: r.id)[1]
            await conn.execute(
                update(audit).where(audit.c.id == second.id).values(actor="someone-else")
            )
            return int(second.id)
    finally:
        await node.close()


def test_an_edited_row_exits_1_naming_it(tmp_path: Path) -> None:
    home = tmp_path / "jp"
    init(home, "JP", 17310)
    assert run("trust", "renew", "--home", str(home), "--days", "90").exit_code == 0
    edited = asyncio.run(_edit_second_row(home))
    result = run("audit", "--home", str(home), "--json")
    assert result.exit_code == 1
    chain = json.loads(result.stdout)["chain"]
    assert chain["intact"] is False
    assert chain["broken_at"] == edited
    assert f"row {edited} was altered" in result.stderr
    assert run("audit", "--home", str(home)).exit_code == 1

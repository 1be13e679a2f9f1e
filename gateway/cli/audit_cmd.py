"""``mragw audit``: list the audit trail and verify its hash chain (exit 1 when broken)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from gateway.cli.conventions import command, emit_json, emit_text
from gateway.cli.node_cmd import HomeOption, JsonOption, run_on_node
from gateway.errors import CheckFailedError
from gateway.node import Node


def register(app: typer.Typer) -> None:
    """Add ``audit`` to the root ``mragw`` app."""
    app.command("audit")(audit)


@command
def audit(
    home: HomeOption,
    last: Annotated[
        int | None, typer.Option("--last", min=1, help="List only the newest N actions.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Who did what and when: every admin action, oldest first, and whether the hash chain
    over them is intact. Exit 0 intact, 1 broken (naming the first bad row)."""
    from gateway.audit import audit_rows, verify_audit_chain

    async def body(node: Node) -> tuple[list[dict[str, Any]], Any]:
        # One snapshot for both, so the listing and the verdict describe the same rows.
        async with node.engine.begin() as conn:
            return await audit_rows(conn, last=last), await verify_audit_chain(conn)

    rows, chain = run_on_node(home, body)
    if json_out:
        emit_json(
            {
                "actions": rows,
                "chain": {
                    "intact": chain.ok,
                    "rows": chain.rows,
                    "broken_at": chain.broken_at,
                    "problem": chain.problem,
                },
            }
        )
    else:
        for r in rows:
            emit_text(f"{r['id']} {r['at']} {r['actor']} {r['action']} {_compact(r['detail'])}")
        if chain.ok:
            emit_text(f"chain intact: {chain.rows} action(s)")
    if not chain.ok:
        raise CheckFailedError(f"audit chain broken: {chain.problem}")


def _compact(detail: Any) -> str:
    return detail if isinstance(detail, str) else json.dumps(detail, separators=(",", ":"))

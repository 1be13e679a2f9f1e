"""``mragw audit``: list the audit trail and verify its hash chain (exit 1 when broken).

``--operator ID`` lists only the rows about one operator: agency checks store the identifier
as a keyed hash (HMAC under the node's ``keys/audit-operator.key``), recomputed here."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from gateway.cli.conventions import command, emit_json, emit_text
from gateway.cli.node_cmd import HomeOption, JsonOption, TargetOption, run_on_node
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
    operator: Annotated[
        str | None,
        typer.Option(
            "--operator",
            metavar="ID",
            help="List only the checks about this operator identifier (EORI, MID, ...).",
        ),
    ] = None,
    target: TargetOption = None,
    json_out: JsonOption = False,
) -> None:
    """Who did what and when: every admin action and every check by an agency client, oldest
    first, and whether the hash chain over them is intact. Exit 0 intact, 1 broken (naming
    the first bad row)."""
    from gateway.audit import audit_listing
    from gateway.cli.remote import remote_audit

    async def body(node: Node) -> tuple[list[dict[str, Any]], Any]:
        if target:
            # The replica hashes --operator with the node's key (the same file in the home).
            return await remote_audit(node, target, last=last, operator=operator)
        return await audit_listing(node, last=last, operator=operator)

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

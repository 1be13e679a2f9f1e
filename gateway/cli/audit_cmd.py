"""``mragw audit``: list the audit trail and verify its hash chain (exit 1 when broken).

``--operator ID`` lists only the rows about one operator: agency checks store the identifier
as a keyed hash (HMAC under the node's ``keys/audit-operator.key``), recomputed here."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from gateway.cli.conventions import command, emit_json, emit_text
from gateway.cli.node_cmd import HomeOption, JsonOption, run_on_node
from gateway.errors import CheckFailedError, InputError
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
    json_out: JsonOption = False,
) -> None:
    """Who did what and when: every admin action and every check by an agency client, oldest
    first, and whether the hash chain over them is intact. Exit 0 intact, 1 broken (naming
    the first bad row)."""
    from gateway.audit import audit_rows, verify_audit_chain

    async def body(node: Node) -> tuple[list[dict[str, Any]], Any]:
        mentioning = None if operator is None else _operator_digest(node, operator)
        # One snapshot for both, so the listing and the verdict describe the same rows.
        async with node.engine.begin() as conn:
            rows = await audit_rows(conn, last=last, mentioning=mentioning)
            return rows, await verify_audit_chain(conn)

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


def _operator_digest(node: Node, operator: str) -> str:
    """The digest agency checks stored for ``operator``. Without this home's key no digest can
    be recomputed, and answering "nobody checked it" would be a lie: that is bad input."""
    from gateway.audit import (
        OPERATOR_KEY_FILE,
        normalise_operator_id,
        operator_digest,
        read_operator_key,
    )

    if not normalise_operator_id(operator):
        raise InputError("--operator: empty identifier")
    path = node.paths.keys / OPERATOR_KEY_FILE
    key = read_operator_key(path)
    if key is None:
        raise InputError(
            f"--operator: no audit operator key in this home ({path.name}): no agency check "
            "was audited with it, or the key is kept elsewhere"
        )
    return operator_digest(key, operator)


def _compact(detail: Any) -> str:
    return detail if isinstance(detail, str) else json.dumps(detail, separators=(",", ":"))

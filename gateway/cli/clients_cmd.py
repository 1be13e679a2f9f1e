"""``mragw clients``: local clients of this node (admin, risk-engine, agency certificates)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.conventions import command, emit_json, emit_text, say
from gateway.cli.node_cmd import HomeOption, JsonOption, TargetOption, run_on_node
from gateway.cli.target import PRIVATE_KEY_HERE, HomeOnlyTargetOption, refuse_target
from gateway.node import Node

app = typer.Typer(
    help="Local clients: certificates from this node's CA, each with one role.",
    no_args_is_help=True,
)

NameArgument = Annotated[str, typer.Argument(help="The client's name (also its certificate CN).")]


@app.command("add")
@command
def add(
    name: NameArgument,
    role: Annotated[str, typer.Option("--role", help="admin, risk-engine or agency.")],
    out: Annotated[
        Path,
        typer.Option("--out", help="A new or empty folder for client.key, client.pem, ca.pem."),
    ],
    home: HomeOption,
    days: Annotated[
        int | None,
        typer.Option("--days", help="Certificate validity in days (default keys.tls_leaf_days)."),
    ] = None,
    target: HomeOnlyTargetOption = None,
    json_out: JsonOption = False,
) -> None:
    """Issue a key and certificate for a local client and record it (audited)."""
    from gateway.clients import add_client

    refuse_target(target, "clients add", PRIVATE_KEY_HERE)

    async def body(node: Node) -> dict[str, Any]:
        issued = await add_client(node, name, role, out, actor="cli", days=days)
        return issued.to_json()

    report = run_on_node(home, body)
    if json_out:
        emit_json(report)
        return
    emit_text(
        f"added {report['name']} ({report['role']}), certificate {report['fingerprint']}, "
        f"valid until {report['not_after']}"
    )
    say(f"give the client the files in {out}: client.key (keep it secret), client.pem, ca.pem")


@app.command("list")
@command
def list_(home: HomeOption, target: TargetOption = None, json_out: JsonOption = False) -> None:
    """Every local client added with ``clients add``, by name, with its state."""
    from gateway.cli.remote import remote_clients
    from gateway.clients import list_clients

    async def body(node: Node) -> list[dict[str, Any]]:
        if target:
            return await remote_clients(node, target)
        return [c.to_json() for c in await list_clients(node)]

    clients = run_on_node(home, body)
    if json_out:
        emit_json({"clients": clients})
        return
    for c in clients:
        emit_text(f"{c['name']} {c['role']} {c['state']} until {c['not_after']} {c['fingerprint']}")


@app.command("revoke")
@command
def revoke(
    name: NameArgument, home: HomeOption, target: TargetOption = None, json_out: JsonOption = False
) -> None:
    """Revoke a local client's certificate (audited); every running replica refuses it within
    its refresh interval, without a restart."""
    from gateway.cli.remote import remote_revoke_client
    from gateway.clients import revoke_client

    async def body(node: Node) -> dict[str, Any]:
        if target:
            return await remote_revoke_client(node, target, name)
        return (await revoke_client(node, name, actor="cli")).to_json()

    report = run_on_node(home, body)
    if json_out:
        emit_json(report)
    else:
        emit_text(f"revoked {report['name']} ({report['role']}) at {report['revoked_at']}")

"""``mragw alerts list|clear``: alerts the gateway raised (split views, ...)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gateway.cli.conventions import command, emit_json, emit_text
from gateway.cli.node_cmd import HomeOption, JsonOption, TargetOption, run_on_node
from gateway.node import Node

app = typer.Typer(help="Alerts raised by the gateway (split views, ...).", no_args_is_help=True)


@app.command("list")
@command
def list_(
    home: HomeOption,
    all_: Annotated[bool, typer.Option("--all", help="Include cleared alerts.")] = False,
    target: TargetOption = None,
    json_out: JsonOption = False,
) -> None:
    """Open alerts, oldest first."""
    from gateway.alerts import list_alerts
    from gateway.cli.remote import remote_alerts

    async def body(node: Node) -> list[dict[str, Any]]:
        if target:
            return await remote_alerts(node, target, include_cleared=all_)
        return await list_alerts(node, include_cleared=all_)

    found = run_on_node(home, body)
    if json_out:
        emit_json({"alerts": found})
        return
    for a in found:
        state = " (cleared)" if a["cleared"] else ""
        emit_text(f"{a['id']} {a['at']} {a['kind']} {a['subject']}: {a['message']}{state}")


@app.command("clear")
@command
def clear(
    home: HomeOption,
    alert_id: Annotated[int | None, typer.Argument(help="The alert id (see alerts list).")] = None,
    subject: Annotated[
        str | None, typer.Option("--subject", help="Clear every open alert about this code.")
    ] = None,
    target: TargetOption = None,
    json_out: JsonOption = False,
) -> None:
    """Clear an alert after investigating it (audited)."""
    from gateway.alerts import clear_alerts
    from gateway.cli.remote import remote_clear_alerts

    async def body(node: Node) -> int:
        if target:
            return await remote_clear_alerts(node, target, alert_id=alert_id, subject=subject)
        return await clear_alerts(node, alert_id=alert_id, subject=subject, actor="cli")

    cleared = run_on_node(home, body)
    if json_out:
        emit_json({"cleared": cleared})
    else:
        emit_text(f"cleared {cleared} alert(s)")

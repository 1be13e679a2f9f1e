"""``mragw partner export|add|list|remove|suspend|resume|set-endpoint``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.conventions import command, emit_json, emit_text, say
from gateway.cli.node_cmd import HomeOption, JsonOption, TargetOption, read_input, run_on_node
from gateway.cli.target import HomeOnlyTargetOption, refuse_target
from gateway.node import Node

app = typer.Typer(help="Onboard and manage partner administrations.", no_args_is_help=True)

MAX_BUNDLE_FILE = 1024 * 1024


@app.command("export")
@command
def export(
    home: HomeOption,
    out: Annotated[Path, typer.Option("--out", help="Where to write the partner bundle.")],
    target: HomeOnlyTargetOption = None,
    json_out: JsonOption = False,
) -> None:
    """Write this administration's partner bundle and print its root key fingerprint."""
    from gateway.partners import export_bundle

    refuse_target(
        target,
        "partner export",
        "writes a local file from the home's own trust statements (every replica would hand "
        "out the same bundle)",
    )

    bundle, fingerprint = run_on_node(home, export_bundle)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(bundle)
    os.replace(tmp, out)
    if json_out:
        emit_json({"bundle": str(out), "fingerprint": fingerprint})
    else:
        say(f"partner bundle written to {out}; confirm this fingerprint out of band:")
        emit_text(fingerprint)


@app.command("add")
@command
def add(
    file: Annotated[Path, typer.Argument(help="The partner's bundle file.")],
    home: HomeOption,
    fingerprint: Annotated[
        str,
        typer.Option(
            "--fingerprint", help="The partner's root key fingerprint, confirmed out of band."
        ),
    ],
    target: TargetOption = None,
    json_out: JsonOption = False,
) -> None:
    """Pin a partner after checking its bundle against the fingerprint (exit 1 on mismatch)."""
    from gateway.cli.remote import admin_call
    from gateway.disclosure import disclose
    from gateway.partners import add_partner

    bundle = read_input(file, MAX_BUNDLE_FILE)

    async def body(node: Node) -> dict[str, Any]:
        if target:
            return await admin_call(
                node, target, "AddPartner", bundle=bundle, fingerprint=fingerprint.strip().lower()
            )
        info = await add_partner(
            node, bundle, fingerprint.strip().lower(), actor="cli", source=str(file)
        )
        report = info.to_json()
        # A newly pinned partner may be entitled to records published before: disclose now.
        report["disclosed"] = await disclose(node, actor="cli")
        return report

    report = run_on_node(home, body)
    if json_out:
        emit_json(report)
    else:
        emit_text(
            f"pinned {report['admin']} (trust statement v{report['trust_version']}, "
            f"endpoint {report['endpoint']})"
        )


@app.command("list")
@command
def list_(home: HomeOption, target: TargetOption = None, json_out: JsonOption = False) -> None:
    """The pinned partners."""
    from gateway.cli.remote import admin_call
    from gateway.partners import list_partners

    async def body(node: Node) -> list[dict[str, Any]]:
        if target:
            return list((await admin_call(node, target, "ListPartners"))["partners"])
        return [i.to_json() for i in await list_partners(node)]

    rows = run_on_node(home, body)
    if json_out:
        emit_json({"partners": rows})
        return
    if not rows:
        emit_text("no partners pinned")
    for r in rows:
        flags = [f for f in ("suspended", "quarantined") if r.get(f)]
        emit_text(
            f"{r['admin']}  {r['endpoint']}  v{r['trust_version']}  {r['fingerprint'][:16]}"
            + (f"  [{', '.join(flags)}]" if flags else "")
        )


def _simple(
    action: str, rpc: str, help_text: str, *, with_reason: bool = False, with_endpoint: bool = False
) -> None:
    def run(code: str, home: Path, target: str | None, json_out: bool, **extra: str) -> None:
        from gateway import partners as domain
        from gateway.cli.remote import admin_call

        partner = code.strip().upper()

        async def body(node: Node) -> None:
            if target:
                await admin_call(node, target, rpc, admin=partner, **extra)
                return
            if action == "remove":
                await domain.remove_partner(node, partner, actor="cli")
            elif action == "suspend":
                await domain.suspend_partner(
                    node, partner, actor="cli", reason=extra.get("reason", "")
                )
            elif action == "resume":
                await domain.resume_partner(node, partner, actor="cli")
            else:
                await domain.set_endpoint(node, partner, extra["endpoint"], actor="cli")

        run_on_node(home, body)
        if json_out:
            emit_json({"admin": partner, "action": action, **extra})
        else:
            emit_text(f"{partner}: {action} done")

    if with_endpoint:

        @app.command(action, help=help_text)
        @command
        def endpoint_cmd(
            code: Annotated[str, typer.Argument(help="Partner code.")],
            endpoint: Annotated[str, typer.Argument(help="HOST:PORT to dial.")],
            home: HomeOption,
            target: TargetOption = None,
            json_out: JsonOption = False,
        ) -> None:
            run(code, home, target, json_out, endpoint=endpoint)
    elif with_reason:

        @app.command(action, help=help_text)
        @command
        def reason_cmd(
            code: Annotated[str, typer.Argument(help="Partner code.")],
            home: HomeOption,
            reason: Annotated[str, typer.Option(help="Why (audited).")] = "",
            target: TargetOption = None,
            json_out: JsonOption = False,
        ) -> None:
            run(code, home, target, json_out, reason=reason)
    else:

        @app.command(action, help=help_text)
        @command
        def plain_cmd(
            code: Annotated[str, typer.Argument(help="Partner code.")],
            home: HomeOption,
            target: TargetOption = None,
            json_out: JsonOption = False,
        ) -> None:
            run(code, home, target, json_out)


_simple("remove", "RemovePartner", "Unpin a partner (its replicated log is kept).")
_simple("suspend", "SuspendPartner", "Stop replicating from a partner.", with_reason=True)
_simple("resume", "ResumePartner", "Resume a suspended or quarantined partner.")
_simple(
    "set-endpoint",
    "SetPartnerEndpoint",
    "Change the address a partner is dialled at.",
    with_endpoint=True,
)

"""``mragw keys list|rotate|revoke|republish`` and ``mragw trust show|renew``.

Each change is a new trust statement signed by the root key (which must be present in
``keys/root.key`` for the command; it can live offline the rest of the time). A running gateway
picks the change up from the database: partners fetch the new statement on their next refresh.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer

from gateway.cli.conventions import command, emit_json, emit_text
from gateway.cli.node_cmd import HomeOption, JsonOption, TargetOption, run_on_node
from gateway.cli.target import NEEDS_ROOT_KEY, HomeOnlyTargetOption, refuse_target
from gateway.node import Node

keys_app = typer.Typer(
    help="Signing, TLS and root keys: list, rotate, revoke.", no_args_is_help=True
)
trust_app = typer.Typer(help="This administration's trust statement.", no_args_is_help=True)

OverlapOption = Annotated[
    float | None,
    typer.Option(
        "--overlap",
        help="Seconds the new key is published before use (default: trust.rotation_overlap_s).",
        min=0,
    ),
]


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(trust_app, name="trust")


def _statement_report(statement: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "admin": statement.admin,
        "trust_version": statement.version,
        "expires": statement.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "root_key": statement.root_fingerprint,
        "signing_keys": [k.key_id for k in statement.signing_keys],
        **(extra or {}),
    }


def _print_statement(report: dict[str, Any], headline: str) -> None:
    emit_text(
        f"{headline}: trust statement v{report['trust_version']} of {report['admin']}, "
        f"expires {report['expires']}, root {report['root_key']}"
    )


@keys_app.command("list")
@command
def list_(home: HomeOption, target: TargetOption = None, json_out: JsonOption = False) -> None:
    """The root key, signing keys (with windows and revocations) and TLS CAs in use."""
    from gateway.cli.remote import remote_keys
    from gateway.keys import KeyInfo, list_keys

    async def body(node: Node) -> list[KeyInfo]:
        return await (remote_keys(node, target) if target else list_keys(node))

    keys = run_on_node(home, body)
    if json_out:
        emit_json({"keys": [k.to_json() for k in keys]})
        return
    for k in keys:
        window = f"{k.valid_from or '-'} .. {k.valid_until or 'open'}"
        revoked = (
            f" revoked from index {k.revoked_at_index} ({k.reason})"
            if k.revoked_at_index is not None
            else ""
        )
        private = "" if k.private_key_here else " (private key not here)"
        emit_text(f"{k.kind:8} {k.key_id} {k.scheme} {k.state} {window}{revoked}{private}")


@keys_app.command("rotate")
@command
def rotate(
    home: HomeOption,
    signing: Annotated[bool, typer.Option("--signing", help="Rotate the log signing key.")] = False,
    tls: Annotated[bool, typer.Option("--tls", help="Rotate the TLS CA and certificates.")] = False,
    root: Annotated[bool, typer.Option("--root", help="Rotate the root key.")] = False,
    overlap: OverlapOption = None,
    target: HomeOnlyTargetOption = None,
    json_out: JsonOption = False,
) -> None:
    """Publish a new key in a new trust statement; it is used after the overlap period."""
    from gateway.keys import KeyCommandError, rotate_root, rotate_signing, rotate_tls

    refuse_target(target, "keys rotate", NEEDS_ROOT_KEY)

    chosen = [name for name, flag in (("signing", signing), ("tls", tls), ("root", root)) if flag]
    if len(chosen) != 1:
        raise KeyCommandError("choose exactly one of --signing, --tls, --root")
    gap = None if overlap is None else dt.timedelta(seconds=overlap)

    async def body(node: Node) -> dict[str, Any]:
        if chosen[0] == "signing":
            statement = await rotate_signing(node, overlap=gap)
        elif chosen[0] == "tls":
            statement = await rotate_tls(node, overlap=gap)
        else:
            statement = await rotate_root(node)
        return _statement_report(statement, {"rotated": chosen[0]})

    report = run_on_node(home, body)
    if json_out:
        emit_json(report)
    else:
        _print_statement(report, f"rotated the {chosen[0]} key")


@keys_app.command("revoke")
@command
def revoke(
    key_id: Annotated[str, typer.Argument(help="The signing key id to revoke.")],
    home: HomeOption,
    reason: Annotated[str, typer.Option("--reason", help="Why (published to partners).")],
    from_index: Annotated[
        int | None,
        typer.Option(
            "--from-index",
            help="First log index the key is no longer trusted for (default: the log size; "
            "earlier for a compromise).",
            min=0,
        ),
    ] = None,
    republish: Annotated[
        bool,
        typer.Option("--republish", help="Re-sign the affected records with a valid key."),
    ] = False,
    target: HomeOnlyTargetOption = None,
    json_out: JsonOption = False,
) -> None:
    """Revoke a signing key from a log index: partners reject what it signed from there on."""
    from gateway.keys import republish as republish_records
    from gateway.keys import revoke as revoke_key

    refuse_target(target, "keys revoke", NEEDS_ROOT_KEY)

    async def body(node: Node) -> dict[str, Any]:
        statement = await revoke_key(
            node, key_id.strip().lower(), reason=reason, from_index=from_index
        )
        key = statement.signing_key(key_id.strip().lower())
        report = _statement_report(
            statement,
            {"revoked": key_id, "from_index": key.revoked_at_index if key else None},
        )
        report["republished"] = await republish_records(node) if republish else 0
        return report

    report = run_on_node(home, body)
    if json_out:
        emit_json(report)
    else:
        _print_statement(report, f"revoked {report['revoked']} from index {report['from_index']}")
        if republish:
            emit_text(f"re-published {report['republished']} record(s) with a valid key")


@keys_app.command("republish")
@command
def republish(home: HomeOption, target: TargetOption = None, json_out: JsonOption = False) -> None:
    """Re-sign with a valid key the records of our entries that a revocation made unusable."""
    from gateway.cli.remote import remote_republish
    from gateway.keys import republish as republish_records

    async def body(node: Node) -> int:
        return await (remote_republish(node, target) if target else republish_records(node))

    count = run_on_node(home, body)
    if json_out:
        emit_json({"republished": count})
    else:
        emit_text(f"re-published {count} record(s)")


@trust_app.command("show")
@command
def show(home: HomeOption, target: TargetOption = None, json_out: JsonOption = False) -> None:
    """Our current trust statement: version, expiry, keys."""
    from gateway.cli.remote import remote_trust
    from gateway.status import trust_state

    async def body(node: Node) -> dict[str, Any]:
        if target:
            return await remote_trust(node, target)
        async with node.engine.connect() as conn:
            statement = await node.trust_statement(conn)
        state = trust_state(node, statement)
        return _statement_report(
            statement, {"expiry": {"state": state["state"], "message": state["message"]}}
        )

    report = run_on_node(home, body)
    if json_out:
        emit_json(report)
    else:
        _print_statement(report, "current")
        emit_text(report["expiry"]["message"])


@trust_app.command("renew")
@command
def renew(
    home: HomeOption,
    days: Annotated[
        int | None,
        typer.Option("--days", help="Lifetime (default: keys.trust_statement_days).", min=1),
    ] = None,
    target: HomeOnlyTargetOption = None,
    json_out: JsonOption = False,
) -> None:
    """Re-sign our trust statement with the root key, with a fresh expiry."""
    from gateway.keys import renew as renew_statement

    refuse_target(target, "trust renew", NEEDS_ROOT_KEY)

    async def body(node: Node) -> dict[str, Any]:
        return _statement_report(await renew_statement(node, days=days))

    report = run_on_node(home, body)
    if json_out:
        emit_json(report)
    else:
        _print_statement(report, "renewed")

"""``mragw check``: is this foreign operator recognised here on a date?

Works on the node's database directly (``Node.open(home)``). The command body only parses
flags, calls :func:`check_document` (the one function that returns the JSON document: the seam
where ``--target HOST:PORT`` will ask a running gateway's QueryService instead) and prints it.
Exit 0 whenever it answered, recognised or not; 2 for a bad question (the message names the bad
value); 3 when the database is unreachable (see :mod:`gateway.cli.conventions`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.conventions import command, emit_json, emit_text

# Shared by `check` and `evidence` (the same question).
AtOption = Annotated[
    str | None,
    typer.Option("--at", help="The date, YYYY-MM-DD (default: today in the node's time zone)."),
]
ModeOption = Annotated[
    str | None, typer.Option("--mode", help="Transport mode: road, air, sea or rail.")
]


def register(app: typer.Typer) -> None:
    """Add ``check`` to the root ``mragw`` app."""
    app.command("check")(check)


async def check_document(
    home: Path,
    *,
    target: str | None = None,
    operator: str,
    issuer: str,
    scheme: str | None = None,
    type_: str | None = None,
    at: str | None = None,
    mode: str | None = None,
    strict: bool = False,
    evidence: bool = False,
) -> dict[str, Any]:
    """Answer one question from the node at ``home``: the ``mragw check --json`` document."""
    from gateway.node import Node
    from gateway.query import Checker, Question

    node = Node.open(home)
    try:
        answer = await Checker.for_node(node).check(
            Question(
                operator_id=operator,
                issuer=issuer,
                scheme=scheme,
                type=type_,
                at=at,
                mode=mode,
                strict=strict,
                evidence=evidence,
            )
        )
        return answer.to_json()
    finally:
        await node.close()


async def remote_check_document(
    home: Path,
    *,
    target: str | None,
    operator: str,
    issuer: str,
    scheme: str | None = None,
    type_: str | None = None,
    at: str | None = None,
    mode: str | None = None,
    strict: bool = False,
    evidence: bool = False,
) -> dict[str, Any]:
    """The same document, asked of a running gateway's QueryService over mTLS (``--target``)."""
    import grpc

    from gateway.cli.remote import RPC_TIMEOUT_S, checked_target, translate_rpc_error
    from gateway.node import Node
    from gateway.server.tls import local_channel
    from gateway.services.query_service import document_from_response
    from mra.v1 import query_pb2, query_pb2_grpc, records_pb2

    request = query_pb2.CheckRequest(
        operator_id=operator, issuer=issuer, strict=strict, evidence=evidence
    )
    try:
        if scheme:
            request.scheme = records_pb2.OperatorIdScheme.Value(
                f"OPERATOR_ID_SCHEME_{scheme.strip().upper()}"
            )
        if mode:
            request.mode = query_pb2.TransportMode.Value(f"TRANSPORT_MODE_{mode.strip().upper()}")
    except ValueError as error:
        from gateway.errors import InputError

        raise InputError(f"--scheme {scheme!r} / --mode {mode!r}: {error}") from error
    if type_:
        request.type = type_
    if at:
        request.at = at
    node = Node.open(home)
    try:
        where = checked_target(target or "")
        async with local_channel(node, where) as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            try:
                response = await stub.Check(request, timeout=RPC_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                raise translate_rpc_error(error, where) from error
        return document_from_response(response)
    finally:
        await node.close()


def summary(document: dict[str, Any]) -> str:
    """A readable summary of a check document."""
    verdict = "RECOGNISED" if document["recognised"] else "NOT RECOGNISED"
    lines = [f"{verdict}: issuer {document['issuer']} on {document['at']}"]
    operator = document.get("operator")
    if operator:
        ids = ", ".join(f"{i['scheme']}:{i['value']}" for i in operator["operator_ids"])
        lines.append(
            f"operator: {operator['name'] or '-'} ({operator['country'] or '-'}), "
            f"{operator['issuer']} record in log {operator['log']}; ids {ids}"
        )
    for reason in document["reasons"]:
        lines.append(f"  {reason['code']}: {reason['detail']}")
    for t in document["types"]:
        mark = "yes" if t["recognised"] else "no"
        status = t["status"] or "no status"
        head = f"- {t['type']}: {mark} ({status}"
        if t["authorisation"]:
            head += f", {t['authorisation']} since {t['status_date']}"
        head += ")"
        if t["arrangements"]:
            head += f" under {', '.join(t['arrangements'])}"
        elif t["recognised"] and t["programme"]:
            head += f" within programme {t['programme']}"
        lines.append(head)
        lines.extend(
            f"    {r['code']}"
            + (f" [{r['arrangement']}]" if r["arrangement"] else "")
            + f": {r['detail']}"
            for r in t["reasons"]
        )
        lines.extend(f"    warning: {w}" for w in t["warnings"])
        if t["certainty"]:
            lines.append(f"    certainty: {t['certainty']}")
        ev = t["evidence"]
        if ev is not None and ev["available"]:
            lines.append(
                f"    evidence: entry {ev['leaf_index']} of log {ev['log']}, inclusion proof "
                f"to tree size {ev['tree_size']} ({len(ev['inclusion_proof'])} hashes)"
            )
    lines.append(f"dataset {document['dataset'][:12]}")
    return "\n".join(lines)


@command
def check(
    *,
    home: Annotated[Path, typer.Option("--home", help="The node's home directory.")],
    operator: Annotated[
        str,
        typer.Option(
            "--operator",
            help="Any identifier of the operator: EORI, MID, TIN, national code or "
            "authorisation number (upper case and spaces do not matter).",
        ),
    ],
    issuer: Annotated[
        str,
        typer.Option(
            "--issuer",
            help="The issuing administration; a union code (EU) matches its member states' "
            "records.",
        ),
    ],
    scheme: Annotated[
        str | None,
        typer.Option(
            "--scheme",
            help="Scheme of --operator: EORI, MID, TIN, NATIONAL or AUTH (default: any).",
        ),
    ] = None,
    type_: Annotated[
        str | None, typer.Option("--type", help="Only this programme type (default: every type).")
    ] = None,
    at: AtOption = None,
    mode: ModeOption = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Never use a signature date for an effective date.")
    ] = False,
    evidence: Annotated[
        bool,
        typer.Option("--evidence", help="Include the signed entry and its inclusion proof."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            metavar="HOST:PORT",
            help="Ask a running gateway's QueryService instead of the database.",
        ),
    ] = None,
) -> None:
    """Is an operator, as an AEO of ISSUER, recognised by this administration on a date? Exit 0
    when answered (recognised or not), 2 for a bad question, 3 if the database is unreachable."""
    ask = remote_check_document if target else check_document
    document = asyncio.run(
        ask(
            home,
            target=target,
            operator=operator,
            issuer=issuer,
            scheme=scheme,
            type_=type_,
            at=at,
            mode=mode,
            strict=strict,
            evidence=evidence,
        )
    )
    if as_json:
        emit_json(document)
    else:
        emit_text(summary(document))

"""``mragw prune`` and ``mragw erase``: retention and lawful erasure of record payloads.

Both work on the node's database directly (a running gateway serves the result at once: erased
or pruned entries go out as leaf hashes, a new erasure notice through Subscribe), both are
audited, and both leave every leaf hash, checkpoint and proof as it was (docs/retention.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from gateway.cli.conventions import command, emit_json, emit_text, say
from gateway.cli.node_cmd import HomeOption, JsonOption, run_on_node
from gateway.cli.target import IRREVERSIBLE, HomeOnlyTargetOption, refuse_target
from gateway.node import Node

if TYPE_CHECKING:
    from gateway.erasure import ErasureResult
    from gateway.retention import PruneResult

WAL_WARNING = (
    "warning: a reader kept the SQLite WAL from being truncated; erased bytes may stay in it "
    "until it is reused (see docs/retention.md)"
)


def register(app: typer.Typer) -> None:
    """Add ``prune`` and ``erase`` to the root ``mragw`` app."""
    app.command("prune")(prune)
    app.command("erase")(erase)


@command
def prune(
    home: HomeOption,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Prune records superseded more than this long ago: days or weeks, e.g. 400d.",
        ),
    ],
    target: HomeOnlyTargetOption = None,
    json_out: JsonOption = False,
) -> None:
    """Remove the payloads of superseded records; past-date checks still answer."""
    from gateway.retention import parse_duration
    from gateway.retention import prune as prune_logs

    refuse_target(target, "prune", IRREVERSIBLE)

    period = parse_duration(older_than)

    async def body(node: Node) -> PruneResult:
        return await prune_logs(node, older_than=period, actor="cli")

    result = run_on_node(home, body)
    if not result.wal_truncated:
        say(WAL_WARNING)
    if json_out:
        emit_json(result.to_json())
        return
    emit_text(
        f"pruned {result.total} record payload(s) superseded before {result.cutoff.isoformat()}"
        + "".join(f"\n  {log}: {n}" for log, n in sorted(result.pruned.items()))
    )


@command
def erase(
    home: HomeOption,
    operator: Annotated[
        str,
        typer.Option("--operator", help="Any identifier of the operator (EORI, MID, ...)."),
    ],
    reason: Annotated[
        str,
        typer.Option(
            "--reason", help="Why (kept in the audit trail; must not contain personal data)."
        ),
    ],
    lawful_basis: Annotated[
        str | None,
        typer.Option(
            "--lawful-basis",
            help="Legal ground sent to partners in the notice, e.g. 'GDPR Art. 17(1)(a)'.",
        ),
    ] = None,
    reference: Annotated[
        str,
        typer.Option(
            "--reference",
            help="Your case number, sent to partners (no personal data).",
        ),
    ] = "",
    target: HomeOnlyTargetOption = None,
    json_out: JsonOption = False,
) -> None:
    """Erase an operator's payloads from our log and tell partners to erase their copies."""
    from gateway.erasure import erase_operator

    refuse_target(target, "erase", IRREVERSIBLE)

    async def body(node: Node) -> ErasureResult:
        return await erase_operator(
            node,
            operator=operator,
            reason=reason,
            lawful_basis=lawful_basis,
            reference=reference,
            actor="cli",
        )

    result = run_on_node(home, body)
    if not result.wal_truncated:
        say(WAL_WARNING)
    if json_out:
        emit_json(result.to_json())
        return
    emit_text(
        f"erased the payloads of entries {list(result.entries)}; erasure notice(s) at "
        f"{list(result.notices)}, disclosed to {', '.join(result.partners) or 'no partner'}"
    )

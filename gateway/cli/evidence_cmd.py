"""``mragw evidence`` (write an evidence bundle) and ``mragw verify`` (check one offline).

``evidence`` works on the node's database directly, like ``check``: exit 0 when the bundle is
written, 2 for a bad question or when there is nothing to prove (the message says why), 3 when
the database is unreachable. ``verify`` needs no node, no network and no database: exit 0 when
the bundle verified, 1 when it did not (the message names the part that failed), 2 for bad
usage or an unreadable file. With ``--json`` each prints exactly one JSON document on stdout;
``verify --json`` prints one for a failed verification too (``verified: false``).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gateway.cli.check_cmd import AtOption, ModeOption
from gateway.cli.conventions import ExitCode, command, emit_json, emit_text, say
from gateway.cli.target import NO_NODE, HomeOnlyTargetOption, refuse_target

if TYPE_CHECKING:
    from gateway.evidence_verify import EvidenceError, EvidenceReport


def register(app: typer.Typer) -> None:
    """Add ``evidence`` and ``verify`` to the root ``mragw`` app."""
    app.command("evidence")(evidence)
    app.command("verify")(verify)


@command
def evidence(
    *,
    home: Annotated[Path, typer.Option("--home", help="The node's home directory.")],
    operator: Annotated[
        str, typer.Option("--operator", help="Any identifier of the operator (as for check).")
    ],
    issuer: Annotated[str, typer.Option("--issuer", help="The issuing administration.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the bundle (JSON).")],
    at: AtOption = None,
    mode: ModeOption = None,
    scheme: Annotated[
        str | None,
        typer.Option("--scheme", help="Scheme of --operator: EORI, MID, TIN, NATIONAL or AUTH."),
    ] = None,
    type_: Annotated[
        str | None,
        typer.Option(
            "--type",
            help="Prove the answer for this programme type (default: the recognised type, else "
            "the first type with a status on the date).",
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Never use a signature date for an effective date.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            metavar="HOST:PORT",
            help="Have a running gateway build the bundle (verified again here) instead of "
            "reading the database.",
        ),
    ] = None,
) -> None:
    """Write a self-contained evidence bundle for one answer: the signed entry, its inclusion
    proof, the checkpoint with cosignatures, trust chains, the record and the registry dataset.
    Exit 0 written, 2 bad question or nothing to prove, 3 database unreachable."""
    from gateway.evidence import EvidenceRequest, build_evidence
    from gateway.node import Node

    question = EvidenceRequest(
        operator=operator, issuer=issuer, at=at, mode=mode, scheme=scheme, type=type_, strict=strict
    )

    async def produce() -> tuple[bytes, EvidenceReport, tuple[str, ...]]:
        from gateway.cli.remote import remote_evidence

        node = Node.open(home)
        try:
            if target:
                return await remote_evidence(node, target, question)
            produced = await build_evidence(node, question)
            return produced.data, produced.report, produced.skipped
        finally:
            await node.close()

    data, report, skipped = asyncio.run(produce())
    # Written whole or not at all: a reader never sees half a bundle.
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    for line in skipped:
        say(f"warning: cosignature left out: {line}")
    if as_json:
        emit_json({"out": str(out), "skipped": list(skipped), **report.to_json()})
        return
    a = report.answer
    verdict = "RECOGNISED" if a["recognised"] else "NOT RECOGNISED"
    witnesses = ", ".join(w.admin for w in report.witnesses) or "no witness"
    emit_text(
        f"evidence written to {out}: {verdict} ({a['type']} of {report.record['authorisation']}"
        f"), entry {report.entry_index} of log {report.issuer} at tree size "
        f"{report.tree_size}, cosigned by {witnesses}\n"
        f"verify it with: mragw verify {out} --trust {report.issuer_root}"
    )


@command
def verify(
    file: Annotated[Path, typer.Argument(help="The evidence bundle.")],
    trust: Annotated[
        list[str],
        typer.Option(
            "--trust",
            metavar="ROOT_FINGERPRINT",
            help="A root key fingerprint you trust (64 hex characters; repeatable). The "
            "issuer's root must be one; witnesses whose root is not are reported unverified.",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    target: HomeOnlyTargetOption = None,
) -> None:
    """Verify an evidence bundle offline and say what it proves. Exit 0 verified, 1 failed
    (naming the part), 2 bad usage or unreadable file."""
    from gateway.errors import InputError
    from gateway.evidence_verify import MAX_EVIDENCE_BYTES, EvidenceError, verify_evidence

    refuse_target(target, "verify", NO_NODE)

    anchors = [t.strip().lower() for t in trust]
    if not anchors:
        raise InputError("give at least one --trust ROOT_FINGERPRINT")
    with file.open("rb") as handle:  # OSError (missing, unreadable): exit 2
        data = handle.read(MAX_EVIDENCE_BYTES + 1)
    try:
        report = verify_evidence(data, anchors)
    except EvidenceError as error:
        if as_json:
            emit_json(_failure(error))
        say(f"NOT VERIFIED: {error}")
        raise typer.Exit(int(ExitCode.CHECK_FAILED)) from None
    if as_json:
        emit_json(report.to_json())
    else:
        emit_text(report.summary())


def _failure(error: EvidenceError) -> dict[str, Any]:
    return {"verified": False, "part": error.part, "error": str(error)}

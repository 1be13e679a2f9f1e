"""``mragw registry``: ask the recognition registry, list and draw it, validate dataset files.

A thin edge over :mod:`registry`: parse flags, call the domain, print the report. Errors are
mapped to exit codes by :func:`gateway.cli.conventions.command` (a bad code, type, date, mode or
registry file is exit 2, with the bad value named on stderr).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.conventions import (
    ExitCode,
    command,
    emit_json,
    emit_text,
    fail,
    progress_enabled,
    spinner,
)
from gateway.cli.target import HomeOnlyTargetOption, refuse_target
from registry.dataset import MAX_DATASET_BYTES, load_dataset, parse_dataset
from registry.errors import DatasetError
from registry.graph import network, to_dot, to_svg
from registry.resolver import Recogniser, default_recogniser, parse_day

app = typer.Typer(
    help="The recognition registry: does R recognise an AEO of type T issued by I on a date?",
    no_args_is_help=True,
    add_completion=False,
)

RegistryOption = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        help="A dataset file in the mra-facts.json format (default: the packaged dataset).",
    ),
]
AtOption = Annotated[
    str | None, typer.Option("--at", help="The date, YYYY-MM-DD (default: today, UTC).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
# Why these commands never go to a replica (completes "`mragw registry X` ...").
REGISTRY_ONLY = (
    "answers from the packaged registry or a dataset file, not from a node; a node's own "
    "answers come from `mragw check --target`"
)
StrictOption = Annotated[
    bool, typer.Option("--strict", help="Rule 7: never use a signature date for an effective date.")
]


class Mode(StrEnum):
    road = "road"
    air = "air"
    sea = "sea"
    rail = "rail"


class GraphFormat(StrEnum):
    dot = "dot"
    svg = "svg"


def _recogniser(registry: Path | None) -> Recogniser:
    if registry is None:
        return default_recogniser()
    return Recogniser(load_dataset(registry))


def _day(at: str | None) -> date:
    if at is None:
        return datetime.now(UTC).date()
    return parse_day(at)


@app.command("check")
@command
def check(
    *,
    recogniser: Annotated[
        str,
        typer.Option(
            "--recogniser", "--recognizer", help="The administration that recognises (R)."
        ),
    ],
    issuer: Annotated[
        str, typer.Option("--issuer", help="The administration that issued the AEO status (I).")
    ],
    type_: Annotated[str, typer.Option("--type", help="The AEO type (T), e.g. AEOS.")],
    at: Annotated[str, typer.Option("--at", help="The date, YYYY-MM-DD.")],
    mode: Annotated[
        str | None, typer.Option("--mode", help="Transport mode: road, air, sea or rail.")
    ] = None,
    strict: StrictOption = False,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
    target: HomeOnlyTargetOption = None,
) -> None:
    """Does R recognise an AEO of type T issued by I on a date (for a mode)? Exit 0 when
    answered, recognised or not; 2 for an unknown code, type or mode, a malformed date or an
    invalid registry file."""
    refuse_target(target, "registry check", REGISTRY_ONLY)
    answer = _recogniser(registry).check(recogniser, issuer, type_, at, mode=mode, strict=strict)
    if as_json:
        emit_json(answer.to_json())
    else:
        emit_text(answer.explanation)


@app.command("list")
@command
def list_(
    at: AtOption = None,
    strict: StrictOption = False,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
    target: HomeOnlyTargetOption = None,
) -> None:
    """Arrangements in force on a date, with their parties. "In force" means: the arrangement
    applies in at least one direction (one party recognising another) for at least one
    transport mode on that date: its start date has passed (rule 3, signature date standing
    in when no effective date is known, unless --strict), it is not terminated and that
    direction is not suspended. Type scopes are not considered."""
    refuse_target(target, "registry list", REGISTRY_ONLY)
    day = _day(at)
    recogniser = _recogniser(registry)
    items = recogniser.in_force(day, strict=strict)
    if as_json:
        emit_json(
            {
                "at": day.isoformat(),
                "strict": strict,
                "dataset": recogniser.version,
                "arrangements": [item.to_json() for item in items],
            }
        )
        return
    lines = [
        f"{len(items)} arrangements in force on {day.isoformat()} "
        f"(dataset {recogniser.version[:12]}):"
    ]
    for item in items:
        a = item.arrangement
        ways = (
            "both ways"
            if item.both_ways
            else "one way: " + ", ".join(f"{d.recogniser}<-{d.issuer}" for d in item.directions)
        )
        note = f" [{'; '.join(item.warnings)}]" if item.warnings else ""
        lines.append(f"  {a.id:<14} {a.kind.value:<12} {' '.join(a.parties)} ({ways}){note}")
    emit_text("\n".join(lines))


@app.command("partners")
@command
def partners(
    admin: Annotated[str, typer.Argument(help="An administration or union code.")],
    at: AtOption = None,
    strict: StrictOption = False,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
    target: HomeOnlyTargetOption = None,
) -> None:
    """Who recognises ADMIN's AEOs and whose AEOs ADMIN recognises on a date, with types."""
    refuse_target(target, "registry partners", REGISTRY_ONLY)
    day = _day(at)
    result = _recogniser(registry).partners(admin, day, strict=strict)
    if as_json:
        emit_json(result.to_json())
        return
    acting = ", ".join(result.acts_as)
    lines = [
        f"{admin} on {day.isoformat()} acts as {acting}; issues under "
        f"{result.programme.id} ({', '.join(result.programme.types)})."
    ]
    for union, programme, members in result.same_programme:
        lines.append(f"  same programme {programme} ({union}): {' '.join(members)}")
    lines.append(f"  recognised by ({len(result.recognised_by)}):")
    lines.extend(
        f"    {p.party:<6} via {p.arrangement:<14} types {', '.join(p.types)}"
        for p in result.recognised_by
    )
    lines.append(f"  recognises ({len(result.recognises)}):")
    lines.extend(
        f"    {p.party:<6} via {p.arrangement:<14} types {', '.join(p.types)}"
        for p in result.recognises
    )
    emit_text("\n".join(lines))


# The packaged dataset (120 kB) validates in about 5 ms, the largest file accepted (16 MiB) in
# about a second: only files from this size on get an activity line on a terminal. A bar is
# not possible without hooks in registry.dataset, and would only flash for a second anyway.
VALIDATE_SPINNER_MIN_BYTES = 2 * 1024 * 1024


@app.command("validate")
@command
def validate(
    file: Annotated[Path, typer.Argument(help="The dataset file to validate.")],
    as_json: JsonOption = False,
    target: HomeOnlyTargetOption = None,
) -> None:
    """Validate a dataset file. Exit 0 when valid, 1 when invalid (every problem listed with
    its JSON path), 2 when it cannot be read."""
    refuse_target(target, "registry validate", REGISTRY_ONLY)
    with file.open("rb") as stream:  # an unreadable file is bad input (exit 2)
        data = stream.read(MAX_DATASET_BYTES + 1)
    show = len(data) >= VALIDATE_SPINNER_MIN_BYTES and progress_enabled(as_json)
    try:
        with spinner(f"validating {file.name} ({len(data):,} bytes)", enabled=show):
            dataset = parse_dataset(data, str(file))
    except DatasetError as error:
        if as_json:
            emit_json(
                {"valid": False, "file": str(file), "version": None, "problems": error.problems}
            )
        else:
            emit_text(
                f"{file}: invalid, {len(error.problems)} problem(s):\n"
                + "\n".join(f"  {p}" for p in error.problems)
            )
        raise typer.Exit(int(ExitCode.CHECK_FAILED)) from None
    if as_json:
        emit_json(
            {
                "valid": True,
                "file": str(file),
                "version": dataset.version,
                "problems": [],
                "programmes": len(dataset.programmes),
                "unions": len(dataset.unions),
                "arrangements": len(dataset.arrangements),
            }
        )
    else:
        emit_text(
            f"{file}: valid ({len(dataset.arrangements)} arrangements, "
            f"{len(dataset.unions)} unions, {len(dataset.programmes)} programmes); "
            f"version {hashlib.sha256(data).hexdigest()}"
        )


@app.command("graph")
@command
def graph(
    *,
    at: AtOption = None,
    format_: Annotated[GraphFormat, typer.Option("--format", help="dot or svg.")] = (
        GraphFormat.svg
    ),
    focus: Annotated[
        str | None,
        typer.Option("--focus", help="Draw only this administration and its counterparts."),
    ] = None,
    strict: StrictOption = False,
    registry: RegistryOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write here, not to stdout.")] = None,
    as_json: JsonOption = False,
    target: HomeOnlyTargetOption = None,
) -> None:
    """Draw the recognition network on a date: administrations as nodes, unions as clusters of
    their members on that date, arrangements in force (see `list`) as edges labelled with their
    id; an arrow A -> B means B recognises A's AEOs, two heads mean both ways. --json prints
    the nodes, clusters and edges instead of a drawing."""
    refuse_target(target, "registry graph", REGISTRY_ONLY)
    day = _day(at)
    recogniser = _recogniser(registry)
    if focus is not None and not recogniser.is_known_code(focus):
        raise fail(ExitCode.BAD_INPUT, f"unknown --focus code {focus!r}")
    net = network(recogniser, day, focus=focus, strict=strict)
    if as_json:
        emit_json(net.to_json())
        return
    text = to_dot(net) if format_ is GraphFormat.dot else to_svg(net)
    if out is None:
        emit_text(text)
    else:
        out.write_text(text, encoding="utf-8")

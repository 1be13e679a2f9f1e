"""The registry's own answers, from the `mragw registry` commands (no gateway involved).

They run in this process through the CLI application itself (the same command line a user
types, parsed by the same code), because a registry answer needs no node and starting a
process per question would dominate the suite's run time on a small CI machine.
"""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from gateway.cli.main import app
from interop_tests.harness import HarnessError


def registry_json(*args: str) -> Any:
    """`mragw registry ARGS --json`, parsed."""
    result = CliRunner().invoke(app, ["registry", *args, "--json"])
    if result.exit_code != 0:
        raise HarnessError(f"mragw registry {' '.join(args)}: exit {result.exit_code}")
    return json.loads(result.stdout)


def registry_check(recogniser: str, issuer: str, aeo_type: str, at: str) -> dict[str, Any]:
    """`mragw registry check` for one (recogniser, issuer, type, date)."""
    return dict(
        registry_json(
            "check",
            "--recogniser",
            recogniser,
            "--issuer",
            issuer,
            "--type",
            aeo_type,
            "--at",
            at,
        )
    )


def arrangement_pairs(codes: list[str], at: str) -> list[tuple[str, str]]:
    """Pairs of ``codes`` with an arrangement in force on ``at`` in either direction."""
    wanted = set(codes)
    pairs: set[tuple[str, str]] = set()
    for code in codes:
        info = registry_json("partners", code, "--at", at)
        for side in ("recognised_by", "recognises"):
            for item in info.get(side, []):
                other = str(item["party"])
                if other in wanted and other != code:
                    a, b = sorted((code, other))
                    pairs.add((a, b))
    return sorted(pairs)

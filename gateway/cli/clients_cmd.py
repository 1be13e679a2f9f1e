"""``mragw clients``: local clients of this node (admin, risk-engine, agency certificates)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Local clients: certificates from this node's CA, each with one role.")

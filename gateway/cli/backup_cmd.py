"""``mragw backup``, ``mragw restore`` and ``mragw db``: copies of a node and schema upgrades."""

from __future__ import annotations

import typer

db_app = typer.Typer(help="The node's database schema (Alembic).")


def register(app: typer.Typer) -> None:
    """Add ``backup`` and ``restore`` to the root ``mragw`` app."""

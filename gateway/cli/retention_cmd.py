"""``mragw prune`` and ``mragw erase``: retention and lawful erasure of record payloads."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add ``prune`` and ``erase`` to the root ``mragw`` app."""

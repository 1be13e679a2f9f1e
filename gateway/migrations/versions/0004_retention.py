"""retention and erasure: pruned and erased payloads, compact status history

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 04:10:00

No table or column changes: retention and erasure reuse columns that were nullable from the
start (``entries.envelope``, ``entries.content_digest``, ``records.name``) and the states of
``entries.sig_state`` (``erased``; ``notice`` only inside the transaction that applies a
partner's erasure notice). The compact status history of a pruned record is its ``records``
row with ``name`` cleared. The revision exists so the schema history records the change of
meaning (docs/adr/0011-retention-and-erasure.md).
"""

from __future__ import annotations

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing to change (see the module docstring)."""


def downgrade() -> None:
    """Nothing to undo; erased and pruned payloads are gone for good either way."""

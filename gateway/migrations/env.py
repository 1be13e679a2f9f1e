"""Alembic environment: runs on a connection handed in by gateway.storage.database."""

from __future__ import annotations

from alembic import context

from gateway.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - always run through gateway.storage.database
    raise RuntimeError("run migrations through gateway.storage.database.migrate")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

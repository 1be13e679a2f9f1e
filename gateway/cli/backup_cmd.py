"""``mragw backup``, ``mragw restore`` and ``mragw db``: copies of a node and schema upgrades."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.conventions import ExitCode, command, emit_json, emit_text, say
from gateway.cli.node_cmd import HomeOption, JsonOption
from gateway.cli.target import (
    OFFLINE_SCHEMA,
    WRITES_HOME,
    HomeOnlyTargetOption,
    refuse_target,
)

# Why `backup` runs on the home (it completes "`mragw backup` ...").
COPIES_HOME = (
    "copies the home's own files (config, keys and, on SQLite, the database) into a local "
    "archive; a replica never sends private keys over the network"
)

db_app = typer.Typer(help="The node's database schema (Alembic).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``backup`` and ``restore`` to the root ``mragw`` app."""

    @app.command("backup")
    @command
    def backup(
        home: HomeOption,
        out: Annotated[Path, typer.Option("--out", help="The archive to write (a new file).")],
        target: HomeOnlyTargetOption = None,
        json_out: JsonOption = False,
    ) -> None:
        """A consistent copy of a node (safe while it serves): config, keys and, on SQLite,
        the database, in one tar archive with a manifest. Mode 0600: it holds private keys."""
        from gateway.backup import backup_node

        refuse_target(target, "backup", COPIES_HOME)

        report = backup_node(home, out)
        if json_out:
            emit_json(report.to_json())
            return
        if report.note:
            say(f"note: {report.note}")
        emit_text(
            f"backed up {report.manifest.node} (log size {report.manifest.log.size}, schema "
            f"{report.manifest.schema_revision}) to {report.archive}\nsha256 {report.sha256}"
        )

    @app.command("restore")
    @command
    def restore(
        home: HomeOption,
        source: Annotated[Path, typer.Option("--from", help="A backup archive.")],
        force: Annotated[
            bool, typer.Option("--force", help="Replace a non-empty home (kept beside it).")
        ] = False,
        accept_rollback: Annotated[
            bool,
            typer.Option(
                "--accept-rollback",
                help="Restore although partners may have verified more of our log than the "
                "backup holds (check first: see the operator guide).",
            ),
        ] = False,
        sha256: Annotated[
            str | None,
            typer.Option(
                "--sha256",
                help="The archive's SHA-256 as `mragw backup` printed it (kept apart from the "
                "archive): refuse any other file.",
            ),
        ] = None,
        target: HomeOnlyTargetOption = None,
        json_out: JsonOption = False,
    ) -> None:
        """Check every member of a backup, then restore it into --home."""
        from gateway.backup import restore_node

        refuse_target(target, "restore", WRITES_HOME)

        report = restore_node(
            source, home, force=force, accept_rollback=accept_rollback, expect_sha256=sha256
        )
        if json_out:
            emit_json(report.to_json())
            return
        if report.replaced:
            say(f"the replaced home is kept in {report.replaced}")
        if report.note:
            say(f"note: {report.note}")
        if report.upgrade_needed:
            say("note: the backup's schema is older than this software: run `mragw db upgrade`")
        emit_text(
            f"restored {report.manifest.node} into {report.home} (log size "
            f"{report.manifest.log.size}, backup of {report.manifest.created_at})"
        )


def _schema_report(home: Path) -> dict[str, Any]:
    from gateway.config import load_config
    from gateway.storage.database import create_engine, head_revision, schema_revision

    config = load_config(home.resolve(), dict(os.environ))

    async def main() -> str | None:
        # Not Node.engine: that one refuses a schema other than head, which is what we report.
        engine = create_engine(config.database_url)
        try:
            return await schema_revision(engine)
        finally:
            await engine.dispose()

    current = asyncio.run(main())
    return {"current": current, "head": head_revision()}


def _state(current: str | None, head: str) -> str:
    from gateway.storage.database import known_revision

    if current == head:
        return "current"
    if current is None:
        return "empty"
    return "behind" if known_revision(current) else "ahead"


@db_app.command("status")
@command
def status(
    home: HomeOption, target: HomeOnlyTargetOption = None, json_out: JsonOption = False
) -> None:
    """The database's schema revision and this software's newest (exit 1 when they differ)."""
    refuse_target(target, "db status", OFFLINE_SCHEMA)
    report = _schema_report(home)
    report["state"] = _state(report["current"], report["head"])
    if json_out:
        emit_json(report)
    else:
        emit_text(f"schema {report['current']} (head {report['head']}): {report['state']}")
    if report["state"] != "current":
        if report["state"] == "behind":
            say("run `mragw db upgrade` (after `mragw backup`)")
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


@db_app.command("upgrade")
@command
def upgrade(
    home: HomeOption, target: HomeOnlyTargetOption = None, json_out: JsonOption = False
) -> None:
    """Run the Alembic migrations up to this software's newest revision (audited)."""
    refuse_target(target, "db upgrade", OFFLINE_SCHEMA)
    from gateway.audit import record_action
    from gateway.config import load_config
    from gateway.errors import InputError
    from gateway.storage.database import (
        create_engine,
        head_revision,
        known_revision,
        migrate,
        schema_revision,
    )

    config = load_config(home.resolve(), dict(os.environ))

    async def main() -> tuple[str | None, str]:
        engine = create_engine(config.database_url)
        try:
            before = await schema_revision(engine)
            if before is not None and not known_revision(before):
                raise InputError(
                    f"the database schema is at revision {before}, newer than this software "
                    f"knows (its newest is {head_revision()}): nothing to upgrade; install "
                    "the version that wrote it"
                )
            if before is None:
                raise InputError(
                    "the database has no schema revision: not a node database (`mragw init` "
                    "makes one)"
                )
            await migrate(engine)
            after = await schema_revision(engine)
            if before != after:
                async with engine.begin() as conn:
                    await record_action(conn, "cli", "db.upgrade", {"from": before, "to": after})
            return before, str(after)
        finally:
            await engine.dispose()

    before, after = asyncio.run(main())
    report = {"from": before, "to": after, "upgraded": before != after}
    if json_out:
        emit_json(report)
    elif before == after:
        emit_text(f"schema already at {after}")
    else:
        emit_text(f"schema upgraded from {before} to {after}")


__all__ = ["db_app", "register"]

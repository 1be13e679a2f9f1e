"""Entry point of ``mragw``: the root Typer app; each command group lives in its own module."""

from __future__ import annotations

import os

import typer

# gRPC's C core writes its own lines to stderr, outside Python logging (so outside the JSON
# log format): keep it to errors unless the operator asks for more. Read once, when gRPC is
# first imported, which the command modules below do.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

app = typer.Typer(
    name="mragw",
    help="mra-gateway: sign, exchange and check AEO status under Mutual Recognition Arrangements.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported here so each group module can import `app`-free helpers without cycles.
    from gateway.cli import (
        alerts_cmd,
        audit_cmd,
        backup_cmd,
        check_cmd,
        clients_cmd,
        evidence_cmd,
        keys_cmd,
        node_cmd,
        partner_cmd,
        registry_cmd,
        retention_cmd,
    )

    node_cmd.register(app)
    check_cmd.register(app)
    evidence_cmd.register(app)
    keys_cmd.register(app)
    audit_cmd.register(app)
    retention_cmd.register(app)
    backup_cmd.register(app)
    app.add_typer(partner_cmd.app, name="partner")
    app.add_typer(registry_cmd.app, name="registry")
    app.add_typer(alerts_cmd.app, name="alerts")
    app.add_typer(clients_cmd.app, name="clients")
    app.add_typer(backup_cmd.db_app, name="db")


_register()


def main() -> None:
    from gateway.cli.conventions import configure_cli_logging

    configure_cli_logging()  # `serve` configures again from its own flags
    app()


if __name__ == "__main__":
    main()

"""``mragw init``, ``publish``, ``status``, ``health``, ``serve`` and ``registry use``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from gateway.cli.conventions import (
    ExitCode,
    command,
    configure_logging,
    emit_json,
    emit_text,
    fail,
    progress_bar,
    progress_enabled,
    say,
    spinner,
)
from gateway.cli.target import WRITES_HOME, HomeOnlyTargetOption, refuse_target
from gateway.errors import InputError
from gateway.node import Node

T = TypeVar("T")


class LogFormat(StrEnum):
    auto = "auto"
    json = "json"
    text = "text"


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


HomeOption = Annotated[Path, typer.Option("--home", help="The node's home directory.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
TargetOption = Annotated[
    str | None,
    typer.Option(
        "--target",
        metavar="HOST:PORT",
        help="Talk to this running replica's admin listener (mTLS, the home's admin "
        "certificate) instead of the database.",
    ),
]


def run_on_node(home: Path, body: Callable[[Node], Awaitable[T]]) -> T:
    """Open the node, run ``body`` on it, and always dispose of the database engine."""

    async def main() -> T:
        node = Node.open(home)
        try:
            return await body(node)
        finally:
            await node.close()

    return asyncio.run(main())


def register(app: typer.Typer) -> None:
    @app.command("init")
    @command
    def init(
        admin: Annotated[str, typer.Option("--admin", help="Administration code, e.g. JP or EU.")],
        home: HomeOption,
        listen: Annotated[str, typer.Option(help="Partner-facing mTLS listener.")] = "0.0.0.0:7443",
        admin_listen: Annotated[str, typer.Option(help="Local admin listener.")] = "127.0.0.1:7444",
        http_listen: Annotated[str, typer.Option(help="Metrics/status HTTP listener.")] = (
            "127.0.0.1:0"
        ),
        db: Annotated[
            str,
            typer.Option(
                "--db",
                help="Database URL (default: SQLite file in the home); "
                "postgresql+asyncpg://... for PostgreSQL.",
            ),
        ] = "",
        endpoint: Annotated[
            str, typer.Option(help="HOST:PORT partners dial (default: derived from --listen).")
        ] = "",
        timezone: Annotated[str, typer.Option(help="Time zone for dates like today.")] = "UTC",
        target: HomeOnlyTargetOption = None,
        json_out: JsonOption = False,
    ) -> None:
        """Create a node: keys, certificates, config, database and trust statement v1."""
        from gateway.node import initialise_node

        refuse_target(target, "init", WRITES_HOME)

        code = admin.strip().upper()
        config = asyncio.run(
            initialise_node(
                admin=code,
                home=home,
                listen=listen,
                admin_listen=admin_listen,
                http_listen=http_listen,
                db_url=db,
                endpoint=endpoint,
                timezone=timezone,
            )
        )
        fingerprint = run_on_node(home, Node.root_fingerprint)
        report = {
            "admin": code,
            "home": str(config.home),
            "endpoint": config.server.endpoint,
            "fingerprint": fingerprint,
        }
        if json_out:
            emit_json(report)
        else:
            say(f"initialised {code} in {config.home}")
            emit_text(f"root key fingerprint: {fingerprint}")

    @app.command("publish")
    @command
    def publish(
        file: Annotated[Path, typer.Argument(help="Records as JSON lines or CSV.")],
        home: HomeOption,
        fmt: Annotated[
            str | None, typer.Option("--format", help="jsonl or csv (default: from the file name).")
        ] = None,
        target: TargetOption = None,
        json_out: JsonOption = False,
    ) -> None:
        """Validate a whole file of records, then sign and append them to the log. On a
        terminal (and without --json) a bar on stderr shows records appended, rate and ETA."""
        from gateway.cli.remote import publish_remote
        from gateway.issuer_log import IssuerLog
        from gateway.records import parse_records

        data = read_input(file)
        show = progress_enabled(json_out)

        async def body(node: Node) -> dict[str, Any]:
            # Validation is one pass over the whole input (nothing is signed before all of
            # it is valid): its length is unknown until it ends, so a spinner, not a bar.
            with spinner(f"validating {file.name}", enabled=show):
                records = parse_records(
                    data,
                    source=file.name,
                    fmt=fmt,
                    max_records=node.config.limits.max_publish_records,
                )
            with progress_bar("publishing", len(records), enabled=show) as advance:
                if target:
                    return await publish_remote(node, target, records, progress=advance)
                result = await IssuerLog(node).publish(
                    records, actor="cli", source=file.name, progress=advance
                )
            return result.to_json()

        report = run_on_node(home, body)
        if json_out:
            emit_json(report)
        else:
            emit_text(
                f"appended {report['appended']}, duplicates {report['duplicates']}, "
                f"log size {report['tree_size']}"
            )

    @app.command("status")
    @command
    def status(
        home: HomeOption,
        target: TargetOption = None,
        json_out: JsonOption = False,
        watch: Annotated[
            bool,
            typer.Option(
                "--watch",
                help="Refresh a live view of each partner's catch-up (verified entries, rate, "
                "ETA) until Ctrl-C; one plain line per partner per refresh when not a terminal.",
            ),
        ] = False,
        interval: Annotated[
            float,
            typer.Option("--interval", metavar="S", help="Seconds between --watch refreshes."),
        ] = 2.0,
    ) -> None:
        """The node's log size and each partner's replication state."""
        from gateway.cli.remote import running_status
        from gateway.status import node_status

        async def body(node: Node) -> dict[str, Any]:
            live = await running_status(node, target)
            return live if live is not None else await node_status(node)

        if watch:
            _watch(home, body, json_out, interval)
            return
        report = run_on_node(home, body)
        if json_out:
            emit_json(report)
            return
        lines = [
            f"{report['admin']}: log size {report['log_size']}"
            + (f", http {report['http_url']}" if report.get("http_url") else "")
        ]
        own_trust = report.get("trust")
        if own_trust and own_trust["state"] != "valid":
            lines.append(f"  WARNING {own_trust['message']} (mragw trust renew)")
        for p in report["partners"]:
            state = (
                "quarantined"
                if p["quarantined"]
                else "suspended"
                if p["suspended"]
                else "connected"
                if p["connected"]
                else "not connected"
            )
            age = p["checkpoint_age_s"]
            witnesses = p.get("witnesses")
            lines.append(
                f"  {p['admin']}: {state}, {p['entries']} entries, verified size "
                f"{p['tree_size']}"
                + (f", checkpoint {age:.0f}s old" if age else "")
                + (f", {witnesses} witness(es)" if witnesses is not None else "")
                + (f" ({p['reason']})" if p["reason"] else "")
            )
            trust = p.get("trust")
            if trust and trust["state"] != "valid":
                lines.append(f"    trust: {trust['message']}")
            if p.get("trust_problem"):
                lines.append(f"    trust: {p['trust_problem']}")
            if p.get("lease_holder"):
                lines.append(f"    replicated by {p['lease_holder']}")
        for alert in report.get("alerts", []):
            lines.append(f"  ALERT {alert['kind']} {alert['subject']}: {alert['message']}")
        holding: dict[str, list[str]] = {}
        for lease in report.get("leases", []):
            if lease["live"] and lease["holder"]:
                holding.setdefault(lease["holder"], []).append(lease["name"])
        shown = [r for r in report.get("replicas", []) if r["alive"] or r["name"] in holding]
        if shown or report.get("replica"):
            lines.append(
                "replicas"
                + (f" (answered by {report['replica']})" if report.get("replica") else "")
                + ":"
            )
        for r in shown:
            lines.append(
                f"  {r['name']}: {'alive' if r['alive'] else 'NOT ALIVE'}, {r['host']} pid "
                f"{r['pid']}, heartbeat {r['heartbeat_at']}"
                + (f", admin {r['admin_target']}" if r["admin_target"] else "")
            )
            if holding.get(r["name"]):
                lines.append(f"    leases: {', '.join(sorted(holding[r['name']]))}")
        emit_text("\n".join(lines))

    @app.command("health")
    @command
    def health(home: HomeOption, target: TargetOption = None, json_out: JsonOption = False) -> None:
        """Probe the local admin listener (exit 0 serving, 1 not), as container checks expect."""
        from gateway.cli.remote import probe_health

        serving, detail = run_on_node(home, lambda node: probe_health(node, target))
        if json_out:
            emit_json({"serving": serving, "detail": detail})
        else:
            emit_text("SERVING" if serving else f"NOT SERVING: {detail}")
        if not serving:
            raise typer.Exit(1)

    @app.command("serve")
    @command
    def serve(
        home: HomeOption,
        listen: Annotated[str | None, typer.Option(help="Override server.listen.")] = None,
        admin_listen: Annotated[
            str | None, typer.Option(help="Override server.admin_listen.")
        ] = None,
        http_listen: Annotated[
            str | None, typer.Option(help="Override server.http_listen.")
        ] = None,
        replica_name: Annotated[
            str | None,
            typer.Option(
                "--replica-name",
                metavar="NAME",
                help="This replica's name among the replicas sharing the database "
                "([A-Za-z0-9._-], default <hostname>-<pid>).",
            ),
        ] = None,
        log_format: Annotated[
            LogFormat,
            typer.Option(
                "--log-format",
                envvar="MRAGW_LOG_FORMAT",
                help="auto: text on a terminal, JSON lines otherwise (systemd, containers).",
            ),
        ] = LogFormat.auto,
        log_level: Annotated[
            LogLevel,
            typer.Option(
                "--log-level", envvar="MRAGW_LOG_LEVEL", help="For this gateway's loggers."
            ),
        ] = LogLevel.info,
    ) -> None:
        """Run the gateway until SIGTERM or SIGINT. Logs go to stderr (see --log-format)."""
        from gateway.cluster import validate_replica_name
        from gateway.serve import run_gateway

        if replica_name is not None:
            validate_replica_name(replica_name)
        configure_logging(log_format.value, log_level.value)

        overrides = {
            k: v
            for k, v in (
                ("listen", listen),
                ("admin_listen", admin_listen),
                ("http_listen", http_listen),
            )
            if v
        }
        asyncio.run(run_gateway(home, overrides, replica_name))

    @app.command("demo")
    @command
    def demo(
        keep: Annotated[bool, typer.Option(help="Keep the demo directory (homes, logs).")] = False,
        keep_running: Annotated[
            bool, typer.Option(help="Leave the three gateways running until Ctrl-C.")
        ] = False,
    ) -> None:
        """Three administrations (EU, JP, US) on loopback: onboard, publish, replicate, check."""
        from gateway.demo import run_demo

        code = run_demo(keep=keep, keep_running=keep_running)
        if code:
            raise typer.Exit(code)

    registry_use(app)


MIN_WATCH_INTERVAL_S = 0.1
MAX_WATCH_INTERVAL_S = 3600.0


def _watch(
    home: Path, fetch: Callable[[Node], Awaitable[dict[str, Any]]], json_out: bool, interval: float
) -> None:
    """``status --watch``: refuses ``--json`` (one document per command), runs until Ctrl-C."""
    import os
    import sys

    from gateway.cli.status_watch import watch_status

    if json_out:
        raise fail(
            ExitCode.BAD_INPUT,
            "--watch with --json: --json prints one document; poll `mragw status --json` "
            "or scrape the gateway's /metrics instead",
        )
    if not MIN_WATCH_INTERVAL_S <= interval <= MAX_WATCH_INTERVAL_S:
        raise fail(
            ExitCode.BAD_INPUT,
            f"--interval {interval}: use {MIN_WATCH_INTERVAL_S} to {MAX_WATCH_INTERVAL_S:.0f} s",
        )
    live = sys.stdout.isatty()
    try:
        run_on_node(home, lambda node: watch_status(node, fetch, interval, live=live))
    except KeyboardInterrupt:
        return  # Ctrl-C is how a watch ends: exit 0
    except BrokenPipeError:
        # The reader went away (`| head`): also an end. Point stdout at /dev/null so the
        # interpreter's final flush does not report the closed pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def registry_use(app: typer.Typer) -> None:
    from gateway.cli import registry_cmd

    @registry_cmd.app.command("use")
    @command
    def use(
        file: Annotated[Path, typer.Argument(help="A registry dataset (mra-facts.json format).")],
        home: HomeOption,
        target: TargetOption = None,
        json_out: JsonOption = False,
    ) -> None:
        """Validate a dataset file and make it the one this node answers with (audited)."""
        from gateway.cli.remote import remote_use_dataset
        from gateway.datasets import use_dataset

        data = read_input(file)

        async def body(node: Node) -> str:
            if target:
                return await remote_use_dataset(node, target, data, str(file))
            async with node.engine.begin() as conn:
                return await use_dataset(conn, data, str(file), actor="cli")

        version = run_on_node(home, body)
        if json_out:
            emit_json({"dataset": version, "file": str(file)})
        else:
            emit_text(f"now answering with dataset {version}")


MAX_INPUT_BYTES = 512 * 1024 * 1024


def read_input(file: Path, limit: int = MAX_INPUT_BYTES) -> bytes:
    """A whole input file, refused (naming it) when missing, not a file, or over ``limit``."""
    if not file.is_file():
        raise InputError(f"{file}: no such file")
    if file.stat().st_size > limit:
        raise InputError(f"{file}: larger than {limit} bytes")
    return file.read_bytes()


__all__ = ["register", "run_on_node"]

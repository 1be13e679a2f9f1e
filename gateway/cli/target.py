"""``--target HOST:PORT`` on the commands that act on the node's home, not on a replica.

Every ``mragw`` command accepts ``--target``. Commands that read or change the node's shared
state send it to the chosen replica's admin API (``TargetOption`` in :mod:`gateway.cli.node_cmd`).
The others act on local files or need what never leaves the home (the offline root key, a new
client's private key, the database below the gateway); with ``--target`` they refuse, exit 2,
saying why, before doing anything (docs/cli-target.md lists every command). Kept free of gRPC
imports: every command module loads it at start.
"""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.errors import InputError

HomeOnlyTargetOption = Annotated[
    str | None,
    typer.Option(
        "--target",
        metavar="HOST:PORT",
        help="Refused: this command acts on the node's home, not through a running replica "
        "(see docs/cli-target.md).",
    ),
]

# Why each kind of command runs on the home. The message completes "`mragw X` ...".
NEEDS_ROOT_KEY = (
    "signs a new trust statement with the root key, which is read from this home "
    "(keys/root.key, kept offline in between) and never sent to a gateway"
)
WRITES_HOME = "creates or replaces the node's home itself, which no running replica serves"
LOCAL_FILES = "reads the home's own files (config, keys, SQLite database), not a replica's state"
NO_NODE = "works without any node, from a file and the registry alone"
OFFLINE_SCHEMA = (
    "works on the database schema directly, also when no gateway can run on it "
    "(every replica refuses a schema other than its own)"
)
IRREVERSIBLE = (
    "deletes data for good: it runs against the database from the home, where the operator "
    "names it, not relayed through whichever replica answers"
)
PRIVATE_KEY_HERE = (
    "writes the new client's private key into a local folder: a private key is never made "
    "by a gateway and sent over the network"
)


def refuse_target(target: str | None, command: str, why: str) -> None:
    """Exit 2 (InputError) when ``--target`` was given to a command that acts on the home."""
    if target is not None:
        raise InputError(
            f"--target {target}: `mragw {command}` {why}; run it without --target on a host "
            "that holds the node's home"
        )


__all__ = ["HomeOnlyTargetOption", "refuse_target"]

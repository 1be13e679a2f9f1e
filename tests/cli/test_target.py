"""``--target HOST:PORT``: every command a replica can answer gives, through a real running
``mragw serve`` over mTLS, the same JSON as the local path on the same node; wrong targets fail
with a clear message; commands that act on the home refuse ``--target`` and say why.

One ``mragw serve`` process per database kind (SQLite file, PostgreSQL): the commands run
in-process (``CliRunner``) with the home's admin certificate, the gateway in its own process.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.audit import OPERATOR_KEY_FILE, operator_key
from gateway.datasets import packaged_bytes
from gateway.node import Node
from gateway.storage.schema import audit, datasets
from tests.cli.test_alerts_cli import raise_alerts
from tests.cli.test_node_cli import run
from tests.gateway.conftest import fresh_pg_database
from tests.gateway.nodes import jsonl
from tests.gateway.test_query import NEW_JP

MRAGW = [sys.executable, "-m", "gateway.cli.main"]
# The gateway re-reads revoked clients with its partners, every poll interval: keep it short.
SERVE_ENV = {"MRAGW_REPLICATION__POLL_INTERVAL_S": "0.1", "MRAGW_SERVER__SHUTDOWN_GRACE_S": "0.2"}
DEADLINE_S = 60.0


@dataclass(frozen=True)
class Served:
    home: Path
    target: str  # the running gateway's admin listener
    process: subprocess.Popen[str]


def init(home: Path, admin: str, db: str = "") -> None:
    result = run(
        "init", "--admin", admin, "--home", str(home), "--listen", "127.0.0.1:0",
        "--admin-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--db", db,
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def admin_target(home: Path, process: subprocess.Popen[str], log: Path) -> str:
    """The admin listener the serve process bound, from its runtime file in the home (polled
    until the file names a listener that answers health)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        assert process.poll() is None, log.read_text(encoding="utf-8")
        for path in sorted((home / "run").glob("serve*.json")):
            try:
                info = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # being written
            if info.get("pid") == process.pid:
                target = str(info["admin_target"])
                if run("health", "--home", str(home), "--target", target).exit_code == 0:
                    return target
        assert time.monotonic() < deadline, "serve did not become healthy"
        time.sleep(0.05)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    # fresh_pg_database skips without a server, or fails under MRAGW_REQUIRE_PG=1.
    db = "" if request.param == "sqlite" else asyncio.run(fresh_pg_database())
    home = tmp_path_factory.mktemp(request.param) / "jp"
    init(home, "JP", db)
    asyncio.run(raise_alerts(home))  # open alerts about EU and US
    for name, role in (("risk-1", "risk-engine"), ("ops-2", "admin"), ("agency-1", "agency")):
        out = home.parent / name
        added = run("clients", "add", name, "--role", role, "--out", str(out), "--home", str(home))
        assert added.exit_code == 0, added.output
    # The log goes to a file: a pipe nobody drains would stall the gateway once full.
    log = home.parent / "serve.log"
    with log.open("w", encoding="utf-8") as sink:
        process = subprocess.Popen(
            [*MRAGW, "serve", "--home", str(home), "--log-format", "json"],
            env={**os.environ, **SERVE_ENV},
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
        )
    try:
        yield Served(home, admin_target(home, process, log), process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def cli(served: Served, *args: str, remote: bool, home: Path | None = None) -> Any:
    where = ["--target", served.target] if remote else []
    return run(*args, "--home", str(home or served.home), *where)


def same_json(served: Served, *args: str) -> Any:
    """Run a command locally and through the replica; both must succeed with one document."""
    local = cli(served, *args, "--json", remote=False)
    remote = cli(served, *args, "--json", remote=True)
    assert local.exit_code == 0, local.output
    assert remote.exit_code == 0, remote.output
    document = json.loads(local.stdout)
    assert json.loads(remote.stdout) == document, args
    return document


def as_client(served: Served, name: str) -> Path:
    """A copy of the home whose admin certificate is local client ``name``'s (the files
    ``clients add`` handed out): what an operator holding that client's files would run."""
    copy = served.home.parent / f"home-as-{name}"
    if not copy.exists():
        shutil.copytree(served.home, copy, ignore=shutil.ignore_patterns("run", "mragw.db*"))
        issued = served.home.parent / name
        shutil.copyfile(issued / "client.key", copy / "tls" / "admin.key")
        shutil.copyfile(issued / "client.pem", copy / "tls" / "admin.pem")
    return copy


async def audit_actions(home: Path) -> list[tuple[str, str]]:
    node = Node.open(home, environ={})
    try:
        async with node.engine.connect() as conn:
            rows = (await conn.execute(select(audit.c.actor, audit.c.action))).all()
    finally:
        await node.close()
    return [(r.actor, r.action) for r in rows]


# -- reads: the same document both ways -------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("alerts", "list"), id="alerts-list"),
        pytest.param(("alerts", "list", "--all"), id="alerts-list-all"),
        pytest.param(("audit",), id="audit"),
        pytest.param(("audit", "--last", "2"), id="audit-last"),
        pytest.param(("audit", "--last", str(2**40)), id="audit-last-beyond-uint32"),
        pytest.param(("keys", "list"), id="keys-list"),
        pytest.param(("clients", "list"), id="clients-list"),
        pytest.param(("partner", "list"), id="partner-list"),
    ],
)
def test_reads_through_a_replica_print_the_local_document(
    served: Served, args: tuple[str, ...]
) -> None:
    document = same_json(served, *args)
    assert document  # a document with content, not an empty answer both ways
    # The text forms agree too (one renderer for both paths).
    assert cli(served, *args, remote=True).stdout == cli(served, *args, remote=False).stdout


def test_the_read_documents_hold_the_node_state(served: Served) -> None:
    """What the replica answered is this node's state, not defaults that happen to agree."""
    alerts = same_json(served, "alerts", "list", "--all")["alerts"]
    assert {(a["kind"], a["subject"]) for a in alerts} >= {
        ("split_view", "EU"),
        ("split_view", "US"),
    }
    keys = same_json(served, "keys", "list")["keys"]
    assert [k["kind"] for k in keys] == ["root", "signing", "tls-ca"]
    assert keys[1]["state"] == "active"
    assert keys[1]["valid_from"].endswith("Z")
    clients = same_json(served, "clients", "list")["clients"]
    assert {c["name"]: c["role"] for c in clients}.items() >= {
        "risk-1": "risk-engine",
        "ops-2": "admin",
        "agency-1": "agency",
    }.items()
    trail = same_json(served, "audit")
    assert trail["chain"]["intact"] is True
    assert trail["chain"]["rows"] == len(trail["actions"]) >= 4
    assert trail["actions"][0]["action"] == "node.init"
    assert isinstance(trail["actions"][0]["detail"], dict)


def test_audit_by_operator_through_a_replica_uses_the_node_key(served: Served) -> None:
    """The replica hashes the identifier with the node's key: the same (empty here) listing
    and the same refusal without a key."""
    key_path = served.home / "keys" / OPERATOR_KEY_FILE
    if not key_path.exists():
        missing_local = cli(served, "audit", "--operator", "DE4711", remote=False)
        missing_remote = cli(served, "audit", "--operator", "DE4711", remote=True)
        assert (missing_local.exit_code, missing_remote.exit_code) == (2, 2)
        assert "no audit operator key" in missing_local.stderr
        assert "no audit operator key" in missing_remote.stderr
        operator_key(key_path)
    listed = same_json(served, "audit", "--operator", "de 4711")
    assert listed["actions"] == []
    empty = cli(served, "audit", "--operator", "  ", remote=True)
    assert empty.exit_code == 2
    assert "--operator: empty identifier" in empty.stderr


# -- changes: the same effect and document both ways, audited with the caller ----------------


def test_alerts_cleared_through_a_replica_and_locally(served: Served) -> None:
    listed = same_json(served, "alerts", "list")["alerts"]
    eu = next(a for a in listed if a["subject"] == "EU")
    remote = cli(served, "alerts", "clear", str(eu["id"]), "--json", remote=True)
    assert remote.exit_code == 0, remote.output
    assert json.loads(remote.stdout) == {"cleared": 1}
    local = cli(served, "alerts", "clear", "--subject", "US", "--json", remote=False)
    assert json.loads(local.stdout) == {"cleared": 1}
    assert same_json(served, "alerts", "list") == {"alerts": []}

    # Refusals name the problem and change nothing, as locally.
    again = cli(served, "alerts", "clear", str(eu["id"]), remote=True)
    assert again.exit_code == 2
    assert f"no open alert {eu['id']}" in again.stderr
    neither = cli(served, "alerts", "clear", remote=True)
    assert neither.exit_code == 2
    assert "exactly one" in neither.stderr
    huge = cli(served, "alerts", "clear", str(2**64), remote=True)
    assert huge.exit_code == 2
    assert f"no open alert {2**64}" in huge.stderr
    actions = asyncio.run(audit_actions(served.home))
    # The replica audits the action under the calling certificate, the local path as "cli".
    assert ("admin:admin@jp.mragw", "alerts.clear") in actions
    assert ("cli", "alerts.clear") in actions
    assert sum(1 for _, action in actions if action == "alerts.clear") == 2


def test_client_revoked_through_a_replica_is_refused_by_it(served: Served) -> None:
    ops = as_client(served, "ops-2")  # an admin client, holding only its own files
    assert run("alerts", "list", "--home", str(ops), "--target", served.target).exit_code == 0

    revoked = cli(served, "clients", "revoke", "ops-2", "--json", remote=True)
    assert revoked.exit_code == 0, revoked.output
    report = json.loads(revoked.stdout)
    assert (report["name"], report["state"]) == ("ops-2", "revoked")
    listed = same_json(served, "clients", "list")["clients"]
    assert next(c for c in listed if c["name"] == "ops-2") == report

    deadline = time.monotonic() + DEADLINE_S
    while True:
        refused = run("alerts", "list", "--home", str(ops), "--target", served.target)
        if refused.exit_code != 0:
            break
        assert time.monotonic() < deadline, "the replica still accepts a revoked client"
        time.sleep(0.05)
    assert refused.exit_code == 2
    assert "client certificate is revoked" in refused.stderr

    twice = cli(served, "clients", "revoke", "ops-2", remote=True)
    assert twice.exit_code == 2
    assert "already revoked" in twice.stderr
    unknown = cli(served, "clients", "revoke", "nobody", remote=True)
    assert unknown.exit_code == 2
    assert "no such client" in unknown.stderr


def test_publish_revoke_and_republish_through_a_replica(served: Served, tmp_path: Path) -> None:
    """Records published through the replica, their key revoked on the home (root key), then
    re-signed through the replica: the same trust and key documents both ways at each step."""
    second = {
        **NEW_JP,
        "operator_ids": [{"scheme": "NATIONAL", "value": "JP8888888888888"}],
        "authorisation": "JPAEO0003",
    }
    records = tmp_path / "jp.jsonl"
    records.write_bytes(jsonl([NEW_JP, second]))
    published = cli(served, "publish", str(records), "--json", remote=True)
    assert published.exit_code == 0, published.output
    assert json.loads(published.stdout)["appended"] == 2
    (old,) = [k for k in same_json(served, "keys", "list")["keys"] if k["kind"] == "signing"]

    home = str(served.home)
    rotated = run("keys", "rotate", "--signing", "--overlap", "0", "--home", home)
    assert rotated.exit_code == 0, rotated.output
    revoked = run(
        "keys", "revoke", old["key_id"], "--reason", "compromised", "--from-index", "0",
        "--home", home,
    )  # fmt: skip
    assert revoked.exit_code == 0, revoked.output
    keys = same_json(served, "keys", "list")["keys"]
    (gone,) = [k for k in keys if k["key_id"] == old["key_id"]]
    assert (gone["state"], gone["revoked_at_index"], gone["reason"]) == (
        "revoked",
        0,
        "compromised",
    )
    trust = same_json(served, "trust", "show")
    assert trust["trust_version"] == 3
    assert old["key_id"] in trust["signing_keys"]

    again = cli(served, "keys", "republish", "--json", remote=True)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == {"republished": 2}
    # Idempotent, whichever path runs it next.
    assert same_json(served, "keys", "republish") == {"republished": 0}
    # Both appends (publish, republish) were made by the replica, under the caller's name.
    appends = [a for a in asyncio.run(audit_actions(served.home)) if a[1] == "log.append"]
    assert appends == [("admin:admin@jp.mragw", "log.append")] * 2


def test_evidence_through_a_replica_is_the_bundle_the_home_builds(
    served: Served, tmp_path: Path
) -> None:
    """The replica builds the bundle, the CLI verifies it again: the same report as on the
    home (the production time aside), and a bundle `mragw verify` accepts."""
    record = {
        **NEW_JP,
        "operator_ids": [{"scheme": "NATIONAL", "value": "JP7777777777777"}],
        "authorisation": "JPAEO0004",
    }
    records = tmp_path / "jp.jsonl"
    records.write_bytes(jsonl([record]))
    assert cli(served, "publish", str(records), remote=True).exit_code == 0
    question = ("--operator", "JP7777777777777", "--issuer", "JP", "--at", "2025-01-15")
    documents = []
    for remote in (False, True):
        out = tmp_path / f"evidence-{remote}.json"
        made = cli(served, "evidence", *question, "--out", str(out), "--json", remote=remote)
        assert made.exit_code == 0, made.output
        document = json.loads(made.stdout)
        assert document.pop("out") == str(out)
        document.pop("produced_at")
        documents.append(document)
        root = document["signed_by"]["root_fingerprint"]
        checked = run("verify", str(out), "--trust", root, "--json")
        assert checked.exit_code == 0, checked.output
        assert json.loads(checked.stdout)["recognition"]["recognised"] is True
    assert documents[1] == documents[0]
    assert documents[0]["verified"] is True

    unknown = cli(served, "evidence", "--operator", "JP0", "--issuer", "JP", "--out",
                  str(tmp_path / "none.json"), remote=True)  # fmt: skip
    assert unknown.exit_code == 2
    assert not (tmp_path / "none.json").exists()


# -- wrong targets ----------------------------------------------------------------------------


def test_nothing_listening_is_unreachable(served: Served) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    for args in (("alerts", "list"), ("audit",), ("keys", "list"), ("clients", "list")):
        result = run(*args, "--home", str(served.home), "--target", nowhere)
        assert result.exit_code == 3, (args, result.output)
        assert f"gateway at {nowhere} is unreachable" in result.stderr


@pytest.mark.parametrize("bad", ["nonsense", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:70000"])
def test_a_malformed_target_is_bad_input_naming_it(served: Served, bad: str) -> None:
    before = asyncio.run(audit_actions(served.home))
    for args in (
        ("alerts", "clear", "--subject", "EU"),
        ("clients", "list"),
        ("check", "--operator", "JP1", "--issuer", "JP"),
        ("status", "--json"),
        ("health",),
    ):
        result = run(*args, "--home", str(served.home), "--target", bad)
        assert result.exit_code == 2, (args, result.output)
        assert "--target" in result.stderr
        assert "unreachable" not in result.stderr
    assert asyncio.run(audit_actions(served.home)) == before


def test_another_nodes_admin_listener_is_refused_at_the_handshake(served: Served) -> None:
    """EU's home dialling JP's admin listener: neither side's CA vouches for the other."""
    eu = served.home.parent / "eu"
    if not eu.exists():
        init(eu, "EU")
    result = run("clients", "list", "--home", str(eu), "--target", served.target)
    assert result.exit_code == 3, result.output
    assert f"gateway at {served.target} is unreachable: the TLS handshake failed" in result.stderr
    assert "not the admin listener of this node" in result.stderr


@pytest.mark.parametrize("name", ["risk-1", "agency-1"])
def test_a_non_admin_client_may_not_use_the_admin_api(served: Served, name: str) -> None:
    home = as_client(served, name)
    before = asyncio.run(audit_actions(served.home))
    for args in (("alerts", "list"), ("audit",), ("clients", "revoke", "ops-2"), ("keys", "list")):
        result = run(*args, "--home", str(home), "--target", served.target)
        assert result.exit_code == 2, (args, result.output)
        assert "refused this home's admin certificate" in result.stderr
        assert "may not call mra.v1.AdminService/" in result.stderr
    assert asyncio.run(audit_actions(served.home)) == before


# -- commands that act on the home refuse --target, saying why, before doing anything ---------


GROUPS = {"db", "keys", "trust", "clients", "partner", "registry"}
HOME_COMMANDS = [
    pytest.param(["init", "--admin", "JP"], "creates or replaces the node's home", id="init"),
    pytest.param(["backup", "--out", "{tmp}/b.tar"], "copies the home's own files", id="backup"),
    pytest.param(["restore", "--from", "{tmp}/b.tar"], "creates or replaces", id="restore"),
    pytest.param(["db", "status"], "database schema directly", id="db-status"),
    pytest.param(["db", "upgrade"], "database schema directly", id="db-upgrade"),
    pytest.param(["keys", "rotate", "--signing"], "root key", id="keys-rotate"),
    pytest.param(["keys", "revoke", "ab" * 32, "--reason", "x"], "root key", id="keys-revoke"),
    pytest.param(["trust", "renew"], "root key", id="trust-renew"),
    pytest.param(
        ["clients", "add", "x", "--role", "agency", "--out", "{tmp}/x"],
        "private key",
        id="clients-add",
    ),
    pytest.param(["partner", "export", "--out", "{tmp}/p.bundle"], "local file", id="export"),
    pytest.param(["prune", "--older-than", "400d"], "deletes data for good", id="prune"),
    pytest.param(
        ["erase", "--operator", "DE1", "--reason", "r"], "deletes data for good", id="erase"
    ),
]


@pytest.mark.parametrize(("args", "why"), HOME_COMMANDS)
def test_home_commands_refuse_target_and_say_why(tmp_path: Path, args: list[str], why: str) -> None:
    home = tmp_path / "jp"
    if args[0] != "init":
        init(home, "JP")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    filled = [a.replace("{tmp}", str(tmp_path)) for a in args]
    # A port where nothing listens: the refusal must come before any dialling (exit 2, not 3).
    result = run(*filled, "--home", str(home), "--target", "127.0.0.1:1")
    assert result.exit_code == 2, result.output
    name = " ".join(args[:2]) if args[0] in GROUPS else args[0]
    assert f"--target 127.0.0.1:1: `mragw {name}`" in result.stderr
    assert why in result.stderr
    assert "run it without --target" in result.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "ev.json", "--trust", "ab" * 32],
        [
            "registry",
            "check",
            "--recogniser",
            "US",
            "--issuer",
            "DE",
            "--type",
            "AEOS",
            "--at",
            "2024-05-01",
        ],
        ["registry", "list"],
        ["registry", "partners", "JP"],
        ["registry", "validate", "facts.json"],
        ["registry", "graph"],
    ],
    ids=["verify", "registry-check", "registry-list", "registry-partners", "validate", "graph"],
)
def test_commands_without_a_node_refuse_target(args: list[str]) -> None:
    result = run(*args, "--target", "127.0.0.1:1")
    assert result.exit_code == 2, result.output
    assert "not from a node" in result.stderr or "without any node" in result.stderr
    assert result.stdout == ""


def test_registry_use_through_a_replica_activates_the_dataset(
    served: Served, tmp_path: Path
) -> None:
    """The dataset's bytes go to the replica, which validates, activates and audits them; a
    bad dataset is refused naming the problem and the active one stays."""
    facts = json.loads(packaged_bytes())
    facts["collected"] = "2026-11-28"  # another dataset version
    newer = tmp_path / "facts-newer.json"
    newer.write_text(json.dumps(facts))
    used = cli(served, "registry", "use", str(newer), "--json", remote=True)
    assert used.exit_code == 0, used.output
    version = json.loads(used.stdout)["dataset"]
    assert asyncio.run(active_dataset(served.home)) == version
    assert ("admin:admin@jp.mragw", "registry.use") in asyncio.run(audit_actions(served.home))

    broken = tmp_path / "facts-broken.json"
    broken.write_text(json.dumps({**facts, "arrangements": 5}))
    refused = cli(served, "registry", "use", str(broken), "--json", remote=True)
    assert refused.exit_code == 2, refused.output
    assert "INVALID_ARGUMENT" in refused.output
    assert "arrangements" in refused.output
    assert asyncio.run(active_dataset(served.home)) == version


async def active_dataset(home: Path) -> str:
    node = Node.open(home, environ={})
    try:
        async with node.engine.connect() as conn:
            return str(
                (
                    await conn.execute(select(datasets.c.version).where(datasets.c.active))
                ).scalar_one()
            )
    finally:
        await node.close()

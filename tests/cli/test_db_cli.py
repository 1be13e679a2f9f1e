"""``mragw db status|upgrade`` and the schema check every command and ``serve`` make.

A real node is taken one revision back by running the migration's real ``downgrade``; then a
real ``mragw serve`` process refuses it naming ``mragw db upgrade``, the upgrade runs (and is
audited), and ``serve`` starts and answers health checks.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.storage.database import MIGRATIONS, create_engine, downgrade, head_revision

MRAGW = str(Path(sys.executable).parent / "mragw")
runner = CliRunner()


def run(*args: str) -> Any:
    return runner.invoke(app, list(args))


def previous_revision() -> str:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    down = ScriptDirectory.from_config(cfg).get_revision(head_revision()).down_revision
    assert isinstance(down, str)
    return down


def make_node(home: Path) -> None:
    result = run(
        "init",
        "--admin",
        "JP",
        "--home",
        str(home),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--json",
    )
    assert result.exit_code == 0, result.output


def revision_in(home: Path) -> str:
    conn = sqlite3.connect(home / "mragw.db")
    try:
        return str(conn.execute("SELECT version_num FROM alembic_version").fetchone()[0])
    finally:
        conn.close()


def step_back(home: Path) -> str:
    """Run the head migration's real downgrade on the node's database."""
    target = previous_revision()

    async def main() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{home / 'mragw.db'}")
        try:
            await downgrade(engine, target)
        finally:
            await engine.dispose()

    asyncio.run(main())
    assert revision_in(home) == target
    return target


def test_serve_refuses_a_schema_behind_head_until_db_upgrade(tmp_path: Path) -> None:
    home = tmp_path / "jp"
    make_node(home)
    head = head_revision()
    older = step_back(home)

    served = subprocess.run(
        [MRAGW, "serve", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert served.returncode == 2, served.stderr
    assert f"the database schema is at revision {older}, this software needs {head}" in (
        served.stderr
    )
    assert "run `mragw db upgrade`" in served.stderr
    # Every command that opens the database refuses the same way, before touching anything.
    for command in (
        ("status", "--json"),
        ("partner", "list"),
        # On SQLite, Check reads through the sqlite3 module, not the engine: refused too.
        ("check", "--operator", "JP1010001012345", "--issuer", "JP"),
    ):
        refused = run(*command, "--home", str(home))
        assert refused.exit_code == 2, (command, refused.output)
        assert "run `mragw db upgrade`" in refused.stderr, command
    assert revision_in(home) == older

    db_status = run("db", "status", "--home", str(home), "--json")
    assert db_status.exit_code == 1
    assert json.loads(db_status.stdout) == {"current": older, "head": head, "state": "behind"}

    upgraded = run("db", "upgrade", "--home", str(home), "--json")
    assert upgraded.exit_code == 0, upgraded.output
    assert json.loads(upgraded.stdout) == {"from": older, "to": head, "upgraded": True}
    assert revision_in(home) == head
    again = run("db", "upgrade", "--home", str(home), "--json")
    assert json.loads(again.stdout) == {"from": head, "to": head, "upgraded": False}
    audit = run("audit", "--home", str(home), "--json")
    assert audit.exit_code == 0, audit.output
    actions = [row["action"] for row in json.loads(audit.stdout)["actions"]]
    assert actions.count("db.upgrade") == 1

    process = subprocess.Popen(
        [MRAGW, "serve", "--home", str(home)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while run("health", "--home", str(home)).exit_code != 0:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "serve did not become healthy"
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode == 0


def test_a_schema_newer_than_the_software_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "jp"
    make_node(home)
    conn = sqlite3.connect(home / "mragw.db")
    with conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.close()
    status = run("status", "--home", str(home))
    assert status.exit_code == 2
    assert "at revision 9999, newer than this software knows" in status.stderr
    assert "the software was downgraded" in status.stderr
    db_status = run("db", "status", "--home", str(home), "--json")
    assert db_status.exit_code == 1
    assert json.loads(db_status.stdout)["state"] == "ahead"
    upgraded = run("db", "upgrade", "--home", str(home))
    assert upgraded.exit_code == 2
    assert "newer than this software knows" in upgraded.stderr
    assert revision_in(home) == "9999"


def test_db_status_of_a_current_node(tmp_path: Path) -> None:
    home = tmp_path / "jp"
    make_node(home)
    result = run("db", "status", "--home", str(home), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "current": head_revision(),
        "head": head_revision(),
        "state": "current",
    }

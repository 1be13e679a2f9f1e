"""``mragw backup`` / ``restore``: the CLI contract (JSON documents, exit codes, messages)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.storage.database import head_revision

runner = CliRunner()


def run(*args: str) -> Any:
    return runner.invoke(app, list(args))


def test_backup_then_restore_through_the_cli(tmp_path: Path) -> None:
    home = tmp_path / "jp"
    made = run(
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
    assert made.exit_code == 0, made.output
    archive = tmp_path / "jp.tar"
    backup = run("backup", "--home", str(home), "--out", str(archive), "--json")
    assert backup.exit_code == 0, backup.output
    report = json.loads(backup.stdout)
    assert report["node"] == "JP"
    assert report["database"] == "sqlite"
    assert report["schema_revision"] == head_revision()
    assert report["log_size"] == 0
    assert report["note"] is None
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600

    again = run("backup", "--home", str(home), "--out", str(archive))
    assert again.exit_code == 2
    assert "exists; choose a new file" in again.stderr

    target = tmp_path / "restored"
    refused = run("restore", "--home", str(target), "--from", str(archive))
    assert refused.exit_code == 2
    assert "--accept-rollback" in refused.stderr
    assert "partners[].tree_size" in refused.stderr
    assert not target.exists()

    restored = run(
        "restore",
        "--home",
        str(target),
        "--from",
        str(archive),
        "--accept-rollback",
        "--sha256",
        report["sha256"],
        "--json",
    )
    assert restored.exit_code == 0, restored.output
    document = json.loads(restored.stdout)
    assert document["node"] == "JP"
    assert document["rollback_accepted"] is True
    assert document["upgrade_needed"] is False
    status = run("status", "--home", str(target), "--json")
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["admin"] == "JP"

    missing = run("restore", "--home", str(tmp_path / "x"), "--from", str(tmp_path / "no.tar"))
    assert missing.exit_code == 2
    assert "no.tar: no such file" in missing.stderr

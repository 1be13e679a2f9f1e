"""The node commands' CLI contract: exit codes, JSON documents, nothing stored on refusal."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.demo_data import eu_records

runner = CliRunner()


def run(*args: str) -> Any:
    return runner.invoke(app, list(args))


def init(home: Path, admin: str, port: int) -> str:
    result = run(
        "init",
        "--admin",
        admin,
        "--home",
        str(home),
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",
        f"127.0.0.1:{port + 1}",
        "--json",
    )
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["fingerprint"])


def test_init_creates_a_node_with_private_keys_0600(tmp_path: Path) -> None:
    home = tmp_path / "jp"
    fingerprint = init(home, "JP", 17000)
    assert len(fingerprint) == 64
    assert int(fingerprint, 16) >= 0
    for key in [*home.glob("keys/**/*.key"), *home.glob("tls/*.key")]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    status = run("status", "--home", str(home), "--json")
    assert status.exit_code == 0, status.output
    report = json.loads(status.stdout)
    trust = report.pop("trust")
    assert (trust["version"], trust["state"]) == (1, "valid")
    assert report == {
        "admin": "JP",
        "log_size": 0,
        "log_witnesses": 0,
        "partners": [],
        "alerts": [],
        "http_url": None,
        "metrics_url": None,  # no gateway running
        "replicas": [],  # no replica has served this node yet
        "leases": [],
    }


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param(["--admin", "UK"], "'UK'", id="unknown-admin-code"),
        pytest.param(["--admin", "JP", "--listen", "nowhere"], "--listen", id="bad-listen"),
        pytest.param(["--admin", "JP", "--db", "mysql://x"], "database.url", id="bad-db"),
        pytest.param(["--admin", "JP", "--timezone", "Mars/Base"], "node.timezone", id="bad-tz"),
    ],
)
def test_init_bad_input_exits_2_naming_the_value(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    home = tmp_path / "n"
    result = run("init", "--home", str(home), *args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert not (home / "mragw.toml").exists()


def test_init_refuses_an_existing_node(tmp_path: Path) -> None:
    init(tmp_path / "jp", "JP", 17010)
    result = run("init", "--admin", "JP", "--home", str(tmp_path / "jp"))
    assert result.exit_code == 2
    assert "already" in result.stderr


def test_partner_add_with_the_wrong_fingerprint_exits_1_and_stores_nothing(tmp_path: Path) -> None:
    eu_fp = init(tmp_path / "eu", "EU", 17020)
    jp_fp = init(tmp_path / "jp", "JP", 17030)
    bundle = tmp_path / "eu.bundle"
    exported = run("partner", "export", "--home", str(tmp_path / "eu"), "--out", str(bundle))
    assert exported.exit_code == 0
    assert exported.stdout.strip() == eu_fp
    wrong = run(
        "partner", "add", str(bundle), "--home", str(tmp_path / "jp"), "--fingerprint", jp_fp
    )
    assert wrong.exit_code == 1
    assert "does not match the pinned" in wrong.stderr
    listed = run("partner", "list", "--home", str(tmp_path / "jp"), "--json")
    assert json.loads(listed.stdout) == {"partners": []}
    malformed = run(
        "partner", "add", str(bundle), "--home", str(tmp_path / "jp"), "--fingerprint", "XYZ"
    )
    assert malformed.exit_code == 2
    right = run(
        "partner",
        "add",
        str(bundle),
        "--home",
        str(tmp_path / "jp"),
        "--fingerprint",
        eu_fp,
        "--json",
    )
    assert right.exit_code == 0, right.output
    assert json.loads(right.stdout)["admin"] == "EU"
    for action in ("suspend", "resume"):
        assert run("partner", action, "EU", "--home", str(tmp_path / "jp")).exit_code == 0
    unknown = run("partner", "suspend", "KR", "--home", str(tmp_path / "jp"))
    assert unknown.exit_code == 2
    assert "'KR'" in unknown.stderr


def test_publish_rejects_the_whole_file_with_line_and_field(tmp_path: Path) -> None:
    init(tmp_path / "eu", "EU", 17040)
    rows = eu_records()
    rows[2] = {**rows[2], "status": "ALIVE"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    result = run("publish", str(bad), "--home", str(tmp_path / "eu"))
    assert result.exit_code == 1
    assert "bad.jsonl line 3: status: 'ALIVE'" in result.stderr
    status = json.loads(run("status", "--home", str(tmp_path / "eu"), "--json").stdout)
    assert status["log_size"] == 0


def test_publish_checks_the_issuer_against_union_membership(tmp_path: Path) -> None:
    init(tmp_path / "eu", "EU", 17050)
    row = {
        **eu_records()[0],
        "issuer": "GB",
        "country": "GB",
        "status_date": "2021-02-01",
        "operator_ids": [{"scheme": "EORI", "value": "GB123456789000"}],
    }
    path = tmp_path / "gb.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    result = run("publish", str(path), "--home", str(tmp_path / "eu"))
    assert result.exit_code == 1
    assert "GB is not a member of EU on 2021-02-01" in result.stderr
    before_exit = {**row, "status_date": "2020-06-01", "valid_from": "2020-06-01"}
    path.write_text(json.dumps(before_exit) + "\n", encoding="utf-8")
    ok = run("publish", str(path), "--home", str(tmp_path / "eu"), "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["appended"] == 1


def test_publish_is_idempotent(tmp_path: Path) -> None:
    init(tmp_path / "eu", "EU", 17060)
    path = tmp_path / "eu.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in eu_records()) + "\n", encoding="utf-8")
    first = json.loads(run("publish", str(path), "--home", str(tmp_path / "eu"), "--json").stdout)
    again = json.loads(run("publish", str(path), "--home", str(tmp_path / "eu"), "--json").stdout)
    assert first["appended"] == len(eu_records())
    assert again == {
        **again,
        "appended": 0,
        "duplicates": len(eu_records()),
        "tree_size": first["tree_size"],
    }


def test_commands_without_a_node_exit_2_and_health_without_a_gateway_exits_1(
    tmp_path: Path,
) -> None:
    missing = run("status", "--home", str(tmp_path / "none"))
    assert missing.exit_code == 2
    assert "mragw init" in missing.stderr
    init(tmp_path / "jp", "JP", 17070)
    health = run("health", "--home", str(tmp_path / "jp"))
    assert health.exit_code == 1
    assert "no running gateway" in health.stdout


def test_unreachable_database_exits_3(tmp_path: Path) -> None:
    home = tmp_path / "jp"
    init(home, "JP", 17080)
    env = {"MRAGW_DATABASE__URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = run("status", "--home", str(home))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert result.exit_code == 3, result.output
    assert "unreachable" in result.stderr

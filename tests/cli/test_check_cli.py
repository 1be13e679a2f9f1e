"""The `mragw check` contract: one JSON document with --json, a readable summary otherwise, exit
0 whenever it answered (recognised or not), 2 for a bad question (named on stderr), 3 when the
database is unreachable. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from crypto.checkpoint import parse_note
from crypto.merkle import leaf_hash, verify_inclusion
from gateway.cli.check_cmd import register
from tests.cli.support import app_with
from tests.gateway.conftest import db_url  # noqa: F401 - the SQLite/PostgreSQL fixture
from tests.gateway.test_query import A_EORI, build_world

runner = CliRunner()


APP = app_with(register)


@pytest.fixture
async def home(tmp_path: Path, db_url: str) -> Path:  # noqa: F811 - the fixture, requested
    node = await build_world(tmp_path, db_url)
    await node.close()
    return node.config.home


def run(home: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(APP, ["check", "--home", str(home), *args], env=env)


def document(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)  # exactly one JSON document
    assert isinstance(doc, dict)
    return doc


ANSWERED = [
    pytest.param(
        ["--operator", "DE000000000000003", "--issuer", "DE", "--at", "2024-06-01"],
        True,
        [],
        {"AEOC": ["TYPE_NOT_COVERED"], "AEOS": []},
        id="recognised-one-type",
    ),
    pytest.param(
        ["--operator", "DE000000000000003", "--issuer", "DE", "--type", "AEOC"],
        False,
        [],
        {"AEOC": ["TYPE_NOT_COVERED"]},
        id="type-not-covered",
    ),
    pytest.param(
        [
            "--operator",
            "de 0000 0000 0000 004",
            "--scheme",
            "eori",
            "--issuer",
            "DE",
            "--at",
            "2021-06-01",
        ],
        False,
        [],
        {"AEOS": ["STATUS_NOT_ACTIVE"]},
        id="revoked-normalised-id",
    ),
    pytest.param(
        ["--operator", "GB123456789001", "--issuer", "EU", "--at", "2021-06-01"],
        False,
        ["UNKNOWN_OPERATOR"],
        {},
        id="unknown-operator",
    ),
    pytest.param(
        ["--operator", A_EORI, "--issuer", "DE", "--type", "AEOS"],
        False,
        ["NO_RECORD_OF_TYPE"],
        {},
        id="no-record-of-type",
    ),
    pytest.param(
        [
            "--operator",
            "USACMEWID1234CH",
            "--scheme",
            "MID",
            "--issuer",
            "US",
            "--strict",
            "--mode",
            "air",
        ],
        False,
        [],
        {"CTPAT": ["NO_DATE"]},
        id="strict",
    ),
]


@pytest.mark.parametrize(("args", "recognised", "top", "types"), ANSWERED)
def test_check_json_answers_exit_zero(
    home: Path, args: list[str], recognised: bool, top: list[str], types: dict[str, list[str]]
) -> None:
    doc = document(run(home, *args, "--json"))
    assert set(doc) == {"recognised", "operator", "issuer", "at", "reasons", "types", "dataset"}
    assert doc["recognised"] is recognised
    assert [r["code"] for r in doc["reasons"]] == top
    assert {t["type"]: [r["code"] for r in t["reasons"]] for t in doc["types"]} == types
    assert len(doc["dataset"]) == 64
    for t in doc["types"]:
        assert set(t) >= {
            "type",
            "status",
            "recognised",
            "arrangements",
            "programme",
            "reasons",
            "warnings",
            "certainty",
            "evidence",
        }
        assert t["evidence"] is None


def test_check_operator_object(home: Path) -> None:
    doc = document(run(home, "--operator", "DEAEOF0001", "--issuer", "EU", "--json"))
    assert doc["issuer"] == "EU"
    op = doc["operator"]
    assert op["name"] == "Alpha Logistik GmbH"
    assert (op["issuer"], op["log"], op["country"]) == ("DE", "EU", "DE")
    assert {"scheme": "EORI", "value": A_EORI} in op["operator_ids"]
    assert op["authorisations"] == [
        {"issuer": "DE", "authorisation": "DEAEOF0001", "type": "AEOF", "log": "EU"}
    ]


def test_check_evidence_flag(home: Path) -> None:
    doc = document(run(home, "--operator", A_EORI, "--issuer", "DE", "--evidence", "--json"))
    [t] = doc["types"]
    ev = t["evidence"]
    note = parse_note(ev["checkpoint"]).checkpoint()
    verify_inclusion(
        leaf_hash(base64.b64decode(ev["entry"])),
        ev["leaf_index"],
        ev["tree_size"],
        [base64.b64decode(h) for h in ev["inclusion_proof"]],
        note.root_hash,
    )


def test_check_summary_is_readable(home: Path) -> None:
    result = run(home, "--operator", "DE000000000000003", "--issuer", "DE")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("RECOGNISED: issuer DE")
    assert "AEOS: yes" in result.stdout
    assert "under EU-JP" in result.stdout
    assert "TYPE_NOT_COVERED" in result.stdout
    unknown = run(home, "--operator", "DE999999999999999", "--issuer", "DE")
    assert unknown.exit_code == 0, unknown.stderr
    assert unknown.stdout.startswith("NOT RECOGNISED")
    assert "UNKNOWN_OPERATOR" in unknown.stdout


BAD = [
    pytest.param(["--operator", A_EORI, "--issuer", "QQ"], "QQ", id="unknown-issuer"),
    pytest.param(
        ["--operator", A_EORI, "--issuer", "DE", "--at", "2021-02-29"],
        "2021-02-29",
        id="bad-date",
    ),
    pytest.param(["--operator", A_EORI, "--issuer", "DE", "--mode", "ship"], "ship", id="mode"),
    pytest.param(["--operator", A_EORI, "--issuer", "DE", "--scheme", "VAT"], "VAT", id="scheme"),
    pytest.param(["--operator", A_EORI, "--issuer", "DE", "--type", "CTPAT"], "CTPAT", id="type"),
    pytest.param(["--operator", "!!", "--issuer", "DE"], "!!", id="identifier"),
]


@pytest.mark.parametrize(("args", "named"), BAD)
def test_bad_question_exits_two_naming_the_value(home: Path, args: list[str], named: str) -> None:
    result = run(home, *args, "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert named in result.stderr


def test_unknown_home_exits_two(tmp_path: Path) -> None:
    result = runner.invoke(
        APP, ["check", "--home", str(tmp_path / "nowhere"), "--operator", A_EORI, "--issuer", "DE"]
    )
    assert result.exit_code == 2
    assert result.stdout == ""


def test_unreachable_database_exits_three(home: Path) -> None:
    # Nothing listens on port 1: the configured database is unreachable.
    env = {"MRAGW_DATABASE__URL": "postgresql+asyncpg://mragw:x@127.0.0.1:1/mragw"}
    result = run(home, "--operator", A_EORI, "--issuer", "DE", "--json", env=env)
    assert result.exit_code == 3, result.stderr
    assert result.stdout == ""
    assert "unreachable" in result.stderr

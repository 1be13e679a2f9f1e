"""The `mragw evidence` and `mragw verify` contracts, end to end on real node homes.

`evidence` exits 0 when the bundle is written, 2 for a bad question or nothing to prove, 3 when
the database is unreachable. `verify` needs no home: 0 verified, 1 not (stderr names the part
that failed; with --json a `verified: false` document), 2 for bad usage or an unreadable file.
Node homes come from real gateways (tests.gateway.test_evidence), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from gateway.cli.evidence_cmd import register
from tests.cli.support import app_with
from tests.gateway.conftest import db_url  # noqa: F401 - the SQLite/PostgreSQL fixture
from tests.gateway.test_evidence import AT, DE_AEOF, Roots, jp_answers_from_eu_replica

runner = CliRunner()


APP = app_with(register)


@dataclass(frozen=True)
class World:
    jp_home: Path
    roots: Roots
    tmp: Path


@pytest.fixture
async def world(tmp_path: Path, db_url: str) -> World:  # noqa: F811 - the fixture, requested
    cluster, roots = await jp_answers_from_eu_replica(tmp_path, db_url)
    home = cluster.node("JP").config.home
    await cluster.close()
    return World(home, roots, tmp_path)


def evidence(world: World, out: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(
        APP,
        ["evidence", "--home", str(world.jp_home), "--issuer", "EU", "--out", str(out), *args],
        env=env,
    )


def verify(file: Path, *trust: str, json_out: bool = False) -> Result:
    args = ["verify", str(file)]
    for fp in trust:
        args += ["--trust", fp]
    return runner.invoke(APP, [*args, "--json"] if json_out else args)


def one_document(result: Result) -> dict[str, Any]:
    doc = json.loads(result.stdout)  # exactly one JSON document
    assert isinstance(doc, dict)
    return doc


def test_evidence_then_verify_human(world: World) -> None:
    out = world.tmp / "answer.evidence.json"
    made = evidence(world, out, "--operator", DE_AEOF, "--at", AT)
    assert made.exit_code == 0, made.stderr
    assert made.stdout.startswith(f"evidence written to {out}: RECOGNISED (AEOF of DEAEOF0000012)")
    assert f"mragw verify {out} --trust {world.roots.eu}" in made.stdout
    assert not out.with_name(out.name + ".tmp").exists()

    checked = verify(out, world.roots.eu, world.roots.jp)
    assert checked.exit_code == 0, checked.stderr
    lines = checked.stdout.splitlines()
    assert lines[0].startswith("VERIFIED: evidence produced by JP at ")
    assert lines[1].startswith(f"signed by:   EU (root {world.roots.eu}, trust statement v1)")
    assert lines[2].startswith("included in: log eu.mragw/log, entry 0 of tree size 7")
    assert lines[3].startswith("cosigned by: JP as jp.mragw/witness: verified at ")
    assert lines[4] == (
        f"             US as us.mragw/witness: unverified (root {world.roots.us} not trusted)"
    )
    assert "answer:      RECOGNISED by JP on 2025-01-15 (any mode) under EU-JP" in lines


def test_evidence_and_verify_json(world: World) -> None:
    out = world.tmp / "e.json"
    made = evidence(world, out, "--operator", DE_AEOF, "--at", AT, "--mode", "sea", "--json")
    assert made.exit_code == 0, made.stderr
    doc = one_document(made)
    assert (doc["out"], doc["verified"], doc["skipped"]) == (str(out), True, [])
    assert doc["recognition"]["mode"] == "sea"

    checked = verify(out, *world.roots.all, json_out=True)
    assert checked.exit_code == 0, checked.stderr
    report = one_document(checked)
    assert report["verified"] is True
    assert report["signed_by"]["root_fingerprint"] == world.roots.eu
    assert [(w["admin"], w["state"]) for w in report["cosigned_by"]] == [
        ("JP", "verified"),
        ("US", "verified"),
    ]
    assert report["recognition"]["recognised"] is True
    assert report["recognition"]["arrangements"] == ["EU-JP"]
    # The bundle on disk is the documented format.
    bundle = json.loads(out.read_text(encoding="utf-8"))
    assert bundle["_type"] == "mra-gateway/evidence/v1"
    assert bundle["question"]["mode"] == "sea"


def test_verify_rejects_edited_and_truncated_files_exit_one(world: World) -> None:
    out = world.tmp / "e.json"
    assert evidence(world, out, "--operator", DE_AEOF, "--at", AT).exit_code == 0
    bundle = json.loads(out.read_text(encoding="utf-8"))
    bundle["answer"]["recognised"] = False
    edited = world.tmp / "edited.json"
    edited.write_text(json.dumps(bundle), encoding="utf-8")
    failed = verify(edited, world.roots.eu)
    assert failed.exit_code == 1
    assert failed.stdout == ""
    assert "NOT VERIFIED: answer: re-derived from the embedded dataset" in failed.stderr

    failed = verify(edited, world.roots.eu, json_out=True)
    assert failed.exit_code == 1
    assert one_document(failed) == {
        "verified": False,
        "part": "answer",
        "error": failed.stderr.strip().removeprefix("NOT VERIFIED: "),
    }

    truncated = world.tmp / "truncated.json"
    truncated.write_bytes(out.read_bytes()[:-300])
    failed = verify(truncated, world.roots.eu)
    assert failed.exit_code == 1
    assert "NOT VERIFIED: format: not a JSON document (truncated?)" in failed.stderr

    # The issuer's root not among the anchors: not verified, naming that root.
    failed = verify(out, world.roots.jp, world.roots.us)
    assert failed.exit_code == 1
    assert f"issuer trust chain: the root of EU ({world.roots.eu})" in failed.stderr


BAD_USAGE = [
    pytest.param(["missing.json", "--trust", "ab" * 32], "missing.json", id="missing-file"),
    pytest.param(["FILE", "--trust", "not-hex"], "not-hex", id="bad-fingerprint"),
    pytest.param(["FILE"], "--trust", id="no-anchor"),
]


@pytest.mark.parametrize(("args", "named"), BAD_USAGE)
def test_verify_bad_usage_exits_two(world: World, args: list[str], named: str) -> None:
    out = world.tmp / "e.json"
    assert evidence(world, out, "--operator", DE_AEOF, "--at", AT).exit_code == 0
    argv = [str(out) if a == "FILE" else a for a in args]
    if argv[0] == "missing.json":
        argv[0] = str(world.tmp / "missing.json")
    result = runner.invoke(APP, ["verify", *argv])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert named in result.stderr


def test_evidence_with_nothing_to_prove_exits_two(world: World) -> None:
    out = world.tmp / "none.json"
    # The AEOC-only holder was never disclosed to JP.
    result = evidence(world, out, "--operator", "DE4711000067890", "--at", AT, "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "UNKNOWN_OPERATOR" in result.stderr
    assert not out.exists()
    bad = evidence(world, out, "--operator", DE_AEOF, "--at", "2025-02-30")
    assert bad.exit_code == 2
    assert "2025-02-30" in bad.stderr


def test_evidence_with_an_unreachable_database_exits_three(world: World) -> None:
    env = {"MRAGW_DATABASE__URL": "postgresql+asyncpg://mragw:x@127.0.0.1:1/mragw"}
    out = world.tmp / "none.json"
    result = evidence(world, out, "--operator", DE_AEOF, env=env)
    assert result.exit_code == 3, result.stderr
    assert result.stdout == ""
    assert not out.exists()

"""``mragw erase`` and ``mragw prune``: JSON reports, exit codes, audit, nothing changed on
refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.demo_data import eu_records, eu_revocation
from tests.cli.test_node_cli import init, run
from tests.gateway.nodes import jsonl

DE_AEOF = "DE4711000012345"


def published(tmp_path: Path, port: int, extra: list[dict[str, object]] | None = None) -> Path:
    home = tmp_path / "eu"
    init(home, "EU", port)
    source = tmp_path / "records.jsonl"
    source.write_bytes(jsonl([*eu_records(), *(extra or [])]))
    result = run("publish", str(source), "--home", str(home), "--json")
    assert result.exit_code == 0, result.output
    return home


def audit_actions(home: Path) -> list[str]:
    result = run("audit", "--home", str(home), "--json")
    assert result.exit_code == 0, result.output
    return [row["action"] for row in json.loads(result.stdout)["actions"]]


def state(home: Path) -> tuple[object, ...]:
    """Log size, audit trail and Check's answer: what a refused command must leave alone."""
    status = json.loads(run("status", "--home", str(home), "--json").stdout)
    answer = run("check", "--home", str(home), "--operator", DE_AEOF, "--issuer", "EU", "--json")
    return (status["log_size"], audit_actions(home), json.loads(answer.stdout)["recognised"])


def test_erase_reports_json_and_check_then_fails_closed(tmp_path: Path) -> None:
    home = published(tmp_path, 17410)
    result = run(
        "erase",
        "--home",
        str(home),
        "--operator",
        DE_AEOF,
        "--reason",
        "erasure request",
        "--lawful-basis",
        "GDPR Art. 17(1)(a)",
        "--reference",
        "ERA-1",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["erased_entries"] == [0, 6]
    assert report["notice_indices"] == [7]
    assert report["notified_partners"] == []
    answer = json.loads(
        run("check", "--home", str(home), "--operator", DE_AEOF, "--issuer", "EU", "--json").stdout
    )
    assert answer["recognised"] is False
    assert answer["operator"] is None
    assert audit_actions(home)[-1] == "erasure.erase"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--operator", "DE999999999999", "--reason", "r"], "no entry of log EU"),
        (["--operator", DE_AEOF, "--reason", " "], "--reason"),
        (["--operator", DE_AEOF, "--reason", "r", "--reference", "a b"], "--reference"),
        (["--operator", "DE;1", "--reason", "r"], "--operator"),
        (["--operator", DE_AEOF], "--reason"),
    ],
    ids=["unknown-operator", "empty-reason", "bad-reference", "bad-operator", "no-reason"],
)
def test_erase_refuses_bad_input_with_exit_2_and_changes_nothing(
    tmp_path: Path, args: list[str], words: str
) -> None:
    home = published(tmp_path, 17420)
    before = state(home)
    result = run("erase", "--home", str(home), *args)
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert state(home) == before


def test_prune_reports_json_is_idempotent_and_refuses_bad_durations(tmp_path: Path) -> None:
    home = published(tmp_path, 17430, [eu_revocation()])
    for bad in ("400", "5x", "0d"):
        before = state(home)
        refused = run("prune", "--home", str(home), "--older-than", bad)
        assert refused.exit_code == 2, refused.output
        assert repr(bad) in refused.output
        assert state(home) == before
    # The French holder's first record is superseded by its 2025-03-01 revocation.
    first = json.loads(run("prune", "--home", str(home), "--older-than", "400d", "--json").stdout)
    assert first["pruned"] == {"EU": 1}
    again = run("prune", "--home", str(home), "--older-than", "400d")
    assert again.exit_code == 0, again.output
    assert "pruned 0 record payload(s)" in again.stdout
    assert audit_actions(home)[-2:] == ["retention.prune", "retention.prune"]

"""The `mragw registry` contract: JSON shapes, exit codes 0/1/2, the --recognizer alias, and
error messages on stderr that name the bad value."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from tests.registry.worlds import BASE, encode

runner = CliRunner()


def parse_svg(text: str) -> ET.Element:
    """Parse SVG that our own code just made (trusted input, so no defusedxml needed)."""
    return ET.fromstring(text)  # noqa: S314 - our own output, not untrusted data


def run(*args: str) -> Any:
    return runner.invoke(app, ["registry", *args])


def test_check_json_shape() -> None:
    result = run(
        "check",
        "--recogniser",
        "US",
        "--issuer",
        "DE",
        "--type",
        "AEOS",
        "--at",
        "2012-07-01",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["recognised"] is True
    assert document["arrangements"] == ["US-EU"]
    assert document["programme"] is None
    assert document["warnings"] == []
    assert document["reasons"] == []
    assert document["certainty"] == "confirmed"
    assert len(document["dataset"]) == 64


def test_check_not_recognised_exits_zero_with_reasons() -> None:
    result = run(
        "check",
        "--recognizer",
        "DE",
        "--issuer",
        "US",
        "--type",
        "CTPAT",
        "--at",
        "2013-01-30",
        "--json",
    )
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert document["recognised"] is False
    assert document["reasons"][0]["arrangement"] == "US-EU"
    assert document["reasons"][0]["code"] == "NOT_YET_EFFECTIVE"
    assert set(document["reasons"][0]) == {"arrangement", "code", "detail"}


def test_check_programme_and_text() -> None:
    result = run(
        "check",
        "--recogniser",
        "FR",
        "--issuer",
        "GB",
        "--type",
        "AEOC",
        "--at",
        "2020-12-31",
        "--json",
    )
    assert json.loads(result.stdout)["programme"] == "EU-AEO"
    text = run(
        "check", "--recogniser", "JP", "--issuer", "MD", "--type", "AEOS", "--at", "2024-01-01"
    )
    assert text.exit_code == 0
    assert "does not recognise" in text.stdout
    assert "NO_ARRANGEMENT" in text.stdout
    assert text.stdout.count("\n") == 1  # one paragraph


def test_check_strict_and_mode() -> None:
    result = run(
        "check",
        "--recogniser",
        "HK",
        "--issuer",
        "CN",
        "--type",
        "ADVANCED",
        "--at",
        "2014-05-18",
        "--mode",
        "road",
        "--strict",
        "--json",
    )
    document = json.loads(result.stdout)
    assert document["recognised"] is True
    assert document["warnings"] == []


@pytest.mark.parametrize(
    ("args", "named"),
    [
        pytest.param(
            ("--recogniser", "UK", "--issuer", "FR", "--type", "AEOS", "--at", "2021-01-01"),
            "'UK'",
            id="unknown-code",
        ),
        pytest.param(
            ("--recogniser", "JP", "--issuer", "FR", "--type", "AEOX", "--at", "2021-01-01"),
            "'AEOX'",
            id="unknown-type",
        ),
        pytest.param(
            ("--recogniser", "JP", "--issuer", "FR", "--type", "AEOS", "--at", "2021-02-30"),
            "'2021-02-30'",
            id="malformed-date",
        ),
        pytest.param(
            (
                "--recogniser",
                "JP",
                "--issuer",
                "FR",
                "--type",
                "AEOS",
                "--at",
                "2021-01-01",
                "--mode",
                "boat",
            ),
            "'boat'",
            id="unknown-mode",
        ),
    ],
)
def test_check_bad_input_exits_two(args: tuple[str, ...], named: str) -> None:
    result = run("check", *args, "--json")
    assert result.exit_code == 2
    assert named in result.stderr
    assert result.stdout == ""


def test_check_with_registry_file(tmp_path: Path) -> None:
    good = tmp_path / "world.json"
    good.write_bytes(encode(BASE))
    result = run(
        "check",
        "--recogniser",
        "JP",
        "--issuer",
        "FR",
        "--type",
        "AEOS",
        "--at",
        "2015-01-01",
        "--registry",
        str(good),
        "--json",
    )
    assert json.loads(result.stdout)["arrangements"] == ["BLOC-JP"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"arrangements": [{"id": "X", "kind": "trilateral", "parties": []}]}')
    result = run(
        "check",
        "--recogniser",
        "JP",
        "--issuer",
        "FR",
        "--type",
        "AEOS",
        "--at",
        "2015-01-01",
        "--registry",
        str(bad),
    )
    assert result.exit_code == 2
    assert "trilateral" in result.stderr
    assert str(bad) in result.stderr


def test_list_json() -> None:
    result = run("list", "--at", "2014-06-01", "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    ids = {a["id"]: a for a in document["arrangements"]}
    assert "CN-AU" not in ids
    assert ids["CN-HK"]["directions"][0]["modes"] == ["road"]
    assert ids["US-EU"]["parties"] == ["US", "EU"]
    assert ids["US-EU"]["both_ways"]


def test_partners_json() -> None:
    result = run("partners", "JP", "--at", "2024-01-01", "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    eu = next(p for p in document["recognises"] if p["party"] == "EU")
    assert eu["arrangement"] == "EU-JP"
    assert eu["types"] == ["AEOS", "AEOF"]
    assert any(p["party"] == "EU" for p in document["recognised_by"])
    assert run("partners", "UK").exit_code == 2


def test_validate(tmp_path: Path) -> None:
    assert run("validate", "registry/data/mra-facts.json").exit_code == 0
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "arrangements": [
                    {"id": "A", "kind": "bilateral", "parties": ["JP", "NZ", "AU"]},
                    {"id": "A", "kind": "bilateral", "parties": ["JP", "XX"]},
                ]
            }
        )
    )
    result = run("validate", str(bad), "--json")
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    assert any(p.startswith("$.arrangements[0].parties:") for p in problems)
    assert any(p.startswith("$.arrangements[1].parties[1]:") for p in problems)
    assert any(p.startswith("$.arrangements[1].id:") for p in problems)
    text = run("validate", str(bad))
    assert text.exit_code == 1
    assert "3 problem(s)" in text.stdout
    assert run("validate", str(tmp_path / "missing.json")).exit_code == 2


def test_graph(tmp_path: Path) -> None:
    out = tmp_path / "net.svg"
    result = run("graph", "--at", "2024-01-01", "--format", "svg", "--out", str(out))
    assert result.exit_code == 0
    assert parse_svg(out.read_text()).tag.endswith("svg")
    dot = run("graph", "--at", "2024-01-01", "--format", "dot", "--focus", "JP")
    assert dot.stdout.startswith("digraph")
    document = json.loads(run("graph", "--at", "2024-01-01", "--json").stdout)
    assert {"nodes", "clusters", "edges"} <= set(document)
    bad = run("graph", "--focus", "UK")
    assert bad.exit_code == 2
    assert "'UK'" in bad.stderr
    assert run("graph", "--format", "png").exit_code == 2

"""Dataset loading and validation: one case per problem kind, each with its JSON path, and every
problem of a file reported at once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from registry.dataset import MAX_DATASET_BYTES, load_dataset, parse_dataset
from registry.errors import DatasetError
from registry.model import FactDate

from .worlds import BASE, encode, world


def problems_of(document: Any) -> list[str]:
    data = document if isinstance(document, bytes) else encode(document)
    with pytest.raises(DatasetError) as caught:
        parse_dataset(data, "test")
    return caught.value.problems


def arrangement(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "T",
        "kind": "bilateral",
        "parties": ["JP", "NZ"],
        "effective": "2020-01-01",
    }
    base.update(fields)
    return {"arrangements": [base]}


def union(members: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "unions": [
            {"code": "BLOC", "programme": {"id": "BLOC-AEO", "types": ["AEOS"]}, "members": members}
        ]
    }


def test_base_world_is_valid() -> None:
    dataset = parse_dataset(encode(BASE), "base")
    assert dataset.version == hashlib.sha256(encode(BASE)).hexdigest()
    assert len(dataset.arrangements) == len(BASE["arrangements"])


CASES = [
    pytest.param(
        arrangement(kind="trilateral"), "$.arrangements[0].kind", "unknown kind", id="unknown-kind"
    ),
    pytest.param(
        arrangement(parties=["JP", "NZ", "AU"]),
        "$.arrangements[0].parties",
        "two parties, not 3",
        id="bilateral-three-parties",
    ),
    pytest.param(
        arrangement(parties=["JP"]),
        "$.arrangements[0].parties",
        "two parties, not 1",
        id="bilateral-one-party",
    ),
    pytest.param(
        arrangement(parties=["JP", "JP"]),
        "$.arrangements[0].parties[1]",
        "listed twice",
        id="party-twice",
    ),
    pytest.param(
        arrangement(kind="bloc_to_bloc", parties=["JP", "NZ", "AU"]),
        "$.arrangements[0].sides",
        "needs two sides",
        id="bloc-no-sides",
    ),
    pytest.param(
        arrangement(
            kind="bloc_to_bloc", parties=["JP", "NZ", "AU"], sides=[["JP"], ["NZ"], ["AU"]]
        ),
        "$.arrangements[0].sides",
        "two sides, not 3",
        id="bloc-three-sides",
    ),
    pytest.param(
        arrangement(kind="bloc_to_bloc", parties=["JP", "NZ", "AU"], sides=[["JP"], ["NZ", "CA"]]),
        "$.arrangements[0].sides[1][1]",
        "CA which is not a party",
        id="bloc-side-non-party",
    ),
    pytest.param(
        arrangement(kind="bloc_to_bloc", parties=["JP", "NZ", "AU"], sides=[["JP"], ["NZ"]]),
        "$.arrangements[0].sides",
        "AU is on no side",
        id="bloc-party-on-no-side",
    ),
    pytest.param(
        arrangement(kind="bloc_to_bloc", parties=["JP", "NZ"], sides=[["JP", "NZ"], ["NZ"]]),
        "$.arrangements[0].sides[1][0]",
        "more than one side",
        id="bloc-party-on-two-sides",
    ),
    pytest.param(
        arrangement(kind="bloc_to_bloc", parties=["JP", "NZ"], sides=[["JP", "NZ"], []]),
        "$.arrangements[0].sides[1]",
        "at least one party",
        id="bloc-empty-side",
    ),
    pytest.param(
        arrangement(sides=[["JP"], ["NZ"]]),
        "$.arrangements[0].sides",
        "only a bloc_to_bloc",
        id="sides-on-bilateral",
    ),
    pytest.param(
        arrangement(effective="2020-13-01"),
        "$.arrangements[0].effective",
        "'2020-13-01' is not a calendar date",
        id="date-bad-month",
    ),
    pytest.param(
        arrangement(signed="2021-02-29"),
        "$.arrangements[0].signed",
        "'2021-02-29'",
        id="date-not-leap",
    ),
    pytest.param(
        arrangement(terminated="soon"),
        "$.arrangements[0].terminated",
        "'soon' is not a date",
        id="date-text",
    ),
    pytest.param(
        arrangement(effective=2020),
        "$.arrangements[0].effective",
        "must be a date string",
        id="date-number",
    ),
    pytest.param(
        arrangement(effective="2020-00"),
        "$.arrangements[0].effective",
        "not a calendar month",
        id="date-month-zero",
    ),
    pytest.param(
        union([{"code": "FR", "from": "2000-01-01", "until": "1999-01-01"}]),
        "$.unions[0].members[0].until",
        "not after from",
        id="membership-until-before-from",
    ),
    pytest.param(
        arrangement(suspensions=[{"from": "2021-01-01", "until": "2020-01-01"}]),
        "$.arrangements[0].suspensions[0].until",
        "not after from",
        id="suspension-until-before-from",
    ),
    pytest.param(
        arrangement(directions={"JP<-XX": "2020-01-01"}),
        '$.arrangements[0].directions["JP<-XX"]',
        "direction names XX which is not a party",
        id="direction-non-party",
    ),
    pytest.param(
        arrangement(directions={"JP<-AU": "2020-01-01"}),
        '$.arrangements[0].directions["JP<-AU"]',
        "direction names AU which is not a party",
        id="direction-known-code-non-party",
    ),
    pytest.param(
        arrangement(directions={"JP-NZ": "2020-01-01"}),
        '$.arrangements[0].directions["JP-NZ"]',
        "not of the form",
        id="direction-malformed",
    ),
    pytest.param(
        arrangement(directions={"JP<-NZ": None}),
        '$.arrangements[0].directions["JP<-NZ"]',
        "not null",
        id="direction-null-date",
    ),
    pytest.param(
        arrangement(modes={"space": "2020-01-01"}),
        '$.arrangements[0].modes["space"]',
        "unknown mode 'space'",
        id="mode-unknown",
    ),
    pytest.param(
        arrangement(recognised_types={"JP": ["AEOS"]}),
        '$.arrangements[0].recognised_types["JP"][0]',
        "type AEOS is not a type of JP",
        id="recognised-type-not-in-programme",
    ),
    pytest.param(
        arrangement(recognised_types={"AU": ["AEO"]}),
        '$.arrangements[0].recognised_types["AU"]',
        "AU which is not a party",
        id="recognised-types-non-party",
    ),
    pytest.param(
        union(
            [
                {"code": "FR", "from": "2000-01-01", "until": "2010-01-01"},
                {"code": "FR", "from": "2009-01-01"},
            ]
        ),
        "$.unions[0].members[1]",
        "overlaps $.unions[0].members[0]",
        id="membership-overlap",
    ),
    pytest.param(
        {
            "arrangements": [
                arrangement()["arrangements"][0],
                arrangement(parties=["JP", "AU"])["arrangements"][0],
            ]
        },
        "$.arrangements[1].id",
        "duplicate id T",
        id="duplicate-arrangement-id",
    ),
    pytest.param(
        {
            "programmes": [
                {"administration": "JP", "id": "P", "types": ["A"]},
                {"administration": "NZ", "id": "P", "types": ["A"]},
            ]
        },
        "$.programmes[1].id",
        "duplicate programme id P",
        id="duplicate-programme-id",
    ),
    pytest.param(
        {
            "programmes": [
                {"administration": "JP", "id": "P1", "types": ["A"]},
                {"administration": "JP", "id": "P2", "types": ["A"]},
            ]
        },
        "$.programmes[1].administration",
        "already has a programme",
        id="two-programmes-one-administration",
    ),
    pytest.param(
        {"unions": [union([])["unions"][0], union([])["unions"][0]]},
        "$.unions[1].code",
        "duplicate union code BLOC",
        id="duplicate-union-code",
    ),
    pytest.param(
        arrangement(parties=["UK", "NZ"]),
        "$.arrangements[0].parties[0]",
        "unknown code UK",
        id="unknown-code-uk",
    ),
    pytest.param(
        arrangement(parties=["EU", "NZ"]),
        "$.arrangements[0].parties[0]",
        "unknown code EU",
        id="union-code-not-defined",
    ),
    pytest.param(
        union([{"code": "ZZ", "from": "2000-01-01"}]),
        "$.unions[0].members[0].code",
        "unknown code ZZ",
        id="unknown-member-code",
    ),
    pytest.param(
        {"programmes": [{"administration": "UK", "id": "P", "types": ["A"]}]},
        "$.programmes[0].administration",
        "unknown code UK",
        id="unknown-programme-code",
    ),
    pytest.param(
        {"unions": [{"code": "FR", "programme": {"id": "X", "types": ["A"]}, "members": []}]},
        "$.unions[0].code",
        "is an administration code",
        id="union-code-is-iso",
    ),
    pytest.param(
        arrangement(parties="JP NZ"),
        "$.arrangements[0].parties",
        "must be an array, not a string",
        id="type-parties-string",
    ),
    pytest.param(
        {"arrangements": {"id": "T"}},
        "$.arrangements",
        "must be an array, not an object",
        id="type-arrangements-object",
    ),
    pytest.param(
        arrangement(certainty="maybe"),
        "$.arrangements[0].certainty",
        "'maybe'",
        id="type-certainty-value",
    ),
    pytest.param(
        {"programmes": [{"administration": "JP", "id": "P", "types": "AEO"}]},
        "$.programmes[0].types",
        "must be an array",
        id="type-types-string",
    ),
    pytest.param(
        arrangement(id=7),
        "$.arrangements[0].id",
        "must be a string, not a number",
        id="type-id-number",
    ),
    pytest.param(
        arrangement(effectve="2020-01-01"),
        "$.arrangements[0].effectve",
        "unknown field",
        id="unknown-field",
    ),
    pytest.param(
        {"arrangements": [{"kind": "bilateral", "parties": ["JP", "NZ"]}]},
        "$.arrangements[0].id",
        "missing",
        id="missing-id",
    ),
    pytest.param([], "$", "must be an object, not an array", id="top-level-array"),
]


@pytest.mark.parametrize(("document", "path", "words"), CASES)
def test_problem_is_reported_with_its_path(document: Any, path: str, words: str) -> None:
    problems = problems_of(document)
    assert any(p.startswith(f"{path}: ") and words in p for p in problems), problems


RAW = [
    pytest.param(b"\xff\xfe{}", "not UTF-8", id="not-utf8"),
    pytest.param(b'{"arrangements": [', "invalid JSON at line 1", id="invalid-json"),
    pytest.param(
        b'{"arrangements": [], "arrangements": []}',
        "$.arrangements: key given more than once",
        id="duplicate-key",
    ),
    pytest.param(b'{"counts": {"x": NaN}}', "NaN", id="nan"),
    pytest.param(b" " * (MAX_DATASET_BYTES + 1), "more than the limit", id="oversized"),
]


@pytest.mark.parametrize(("data", "words"), RAW)
def test_raw_bytes_problems(data: bytes, words: str) -> None:
    problems = problems_of(data)
    assert any(words in p for p in problems), problems


def test_every_problem_reported_at_once() -> None:
    document = world()
    document["arrangements"][0]["kind"] = "trilateral"
    document["arrangements"][1]["directions"]["BLOC<-XX"] = "2020-01-01"
    document["arrangements"][2]["effective"] = "2023-02-30"
    document["arrangements"][3]["modes"]["boat"] = "2014-01-01"
    document["arrangements"][4]["id"] = "BLOC-JP"
    document["unions"][0]["members"].append({"code": "FR", "from": "1990-01-01"})
    document["arrangements"][0]["recognised_types"]["BLOC"].append("AEOX")
    problems = problems_of(document)
    expected = [
        "$.arrangements[0].kind: unknown kind 'trilateral'",
        '$.arrangements[1].directions["BLOC<-XX"]: direction names XX which is not a party',
        "$.arrangements[2].effective: '2023-02-30' is not a calendar date",
        '$.arrangements[3].modes["boat"]: unknown mode',
        "$.arrangements[4].id: duplicate id BLOC-JP",
        "$.unions[0].members[6]: membership of FR overlaps $.unions[0].members[0]",
        '$.arrangements[0].recognised_types["BLOC"][2]: type AEOX is not a type of BLOC',
    ]
    for prefix in expected:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    assert len(problems) == len(expected)


def test_load_dataset_reads_a_file(tmp_path: Path) -> None:
    file = tmp_path / "facts.json"
    file.write_bytes(encode(BASE))
    assert load_dataset(file).version == hashlib.sha256(file.read_bytes()).hexdigest()
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(tmp_path / "missing.json")


def test_month_only_dates_resolve_fail_closed() -> None:
    month = FactDate.parse("2017-11")
    assert month.month_only
    assert month.as_start().isoformat() == "2017-12-01"
    assert month.as_end().isoformat() == "2017-11-01"
    assert FactDate.parse("2017-12").as_start().isoformat() == "2018-01-01"
    day = FactDate.parse("2017-11-05")
    assert not day.month_only
    assert day.as_start() == day.as_end()
    assert day.warnings() == ()
    assert month.warnings() == ("date known to the month only",)


def test_real_dataset_round_trips() -> None:
    data = (Path(__file__).parents[2] / "registry" / "data" / "mra-facts.json").read_bytes()
    dataset = parse_dataset(data)
    assert len(dataset.arrangements) == len(json.loads(data)["arrangements"])

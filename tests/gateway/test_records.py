"""Input records: JSON lines and CSV, validated whole, every problem named by line and field."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest

from gateway.records import (
    AeoStatusRecord,
    OperatorId,
    RecordInputError,
    ValidationOutcomeRecord,
    normalise_identifier,
    parse_records,
)


def status(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kind": "aeo_status",
        "issuer": "DE",
        "operator_ids": [{"scheme": "EORI", "value": "DE123456789012345"}],
        "name": "Muster Logistik GmbH",
        "country": "DE",
        "authorisation": "DEAEOF0001",
        "type": "AEOF",
        "status": "ACTIVE",
        "status_date": "2019-03-01",
        "valid_from": "2019-03-01",
        "valid_until": None,
        "last_validation": "2019-02-10",
        "consent": True,
        "audience": [],
    }
    base.update(changes)
    return base


def outcome(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kind": "validation_outcome",
        "issuer": "DE",
        "operator_ids": [{"scheme": "EORI", "value": "DE123456789012345"}],
        "validation_id": "VAL-2024-17",
        "validation_kind": "JOINT",
        "date": "2024-05-02",
        "result": "PASSED",
        "criteria": ["security"],
        "next_review": "2027-05-02",
        "joint_partners": ["JP"],
        "audience": ["JP"],
    }
    base.update(changes)
    return base


def jsonl(*rows: dict[str, Any]) -> bytes:
    return b"\n".join(json.dumps(r).encode() for r in rows) + b"\n"


def test_json_lines_parse_into_records() -> None:
    records = parse_records(jsonl(status(), outcome()), source="in.jsonl")
    first, second = records
    assert isinstance(first, AeoStatusRecord)
    assert first.operator_ids == (OperatorId("EORI", "DE123456789012345"),)
    assert first.status_date == date(2019, 3, 1)
    assert first.valid_until is None
    assert first.key == ("DE", "DEAEOF0001", "AEOF")
    assert isinstance(second, ValidationOutcomeRecord)
    assert second.joint_partners == ("JP",)


def test_csv_uses_the_same_columns() -> None:
    text = (
        "kind,issuer,operator_ids,name,country,authorisation,type,status,status_date,"
        "valid_from,valid_until,last_validation,consent,audience\n"
        'aeo_status,DE,EORI:de 1234 5678;MID:DEMUSLOG1BER,"Muster, GmbH",DE,deaeof0001,AEOF,'
        "ACTIVE,2019-03-01,2019-03-01,,2019-02-10,true,JP;US\n"
    )
    (record,) = parse_records(text.encode(), source="in.csv")
    assert isinstance(record, AeoStatusRecord)
    assert record.operator_ids == (
        OperatorId("EORI", "DE12345678"),
        OperatorId("MID", "DEMUSLOG1BER"),
    )
    assert record.name == "Muster, GmbH"
    assert record.authorisation == "DEAEOF0001"
    assert record.audience == ("JP", "US")
    assert record.valid_until is None


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        pytest.param(status(status="ALIVE"), "line 2: status: 'ALIVE'", id="bad-status"),
        pytest.param(status(status_date="2019-13-01"), "line 2: status_date", id="bad-date"),
        pytest.param(status(status_date="01/03/2019"), "line 2: status_date", id="not-iso"),
        pytest.param(
            status(valid_until="2018-01-01"),
            "valid_until: is before valid_from",
            id="until-before-from",
        ),
        pytest.param(
            status(operator_ids=[{"scheme": "EORI", "value": "D"}]),
            "operator_ids[0]: EORI identifier",
            id="short-eori",
        ),
        pytest.param(
            status(operator_ids=[{"scheme": "EORI", "value": "DE1234567890123456"}]),
            "operator_ids[0]",
            id="eori-too-long",
        ),
        pytest.param(
            status(operator_ids=[{"scheme": "DUNS", "value": "123"}]),
            "unknown identifier scheme 'DUNS'",
            id="unknown-scheme",
        ),
        pytest.param(status(operator_ids=[]), "operator_ids: must be a non-empty", id="no-ids"),
        pytest.param(status(consent="yes"), "consent: 'yes' is not true or false", id="consent"),
        pytest.param(status(issuer="germany"), "issuer: ", id="bad-issuer"),
        pytest.param(status(colour="red"), "colour: unknown field", id="unknown-field"),
        pytest.param(status(name="x" * 600), "name: longer than 512", id="oversized-name"),
        pytest.param(status(name="a\u0000b"), "name: contains control", id="control-char"),
        pytest.param(status(audience=["JP", "JP"]), "audience: lists a code twice", id="dup-aud"),
        pytest.param(status(kind="gossip"), "kind: 'gossip'", id="unknown-kind"),
        pytest.param(outcome(audience=[]), "audience: is required", id="outcome-no-audience"),
        pytest.param(outcome(result="MAYBE"), "result: 'MAYBE'", id="outcome-result"),
        pytest.param(outcome(next_review="2020-01-01"), "next_review: is before", id="review"),
    ],
)
def test_one_bad_record_rejects_the_whole_input(row: dict[str, Any], needle: str) -> None:
    with pytest.raises(RecordInputError) as caught:
        parse_records(jsonl(status(), row, status(authorisation="DEAEOF0002")), source="in.jsonl")
    assert any(needle in p for p in caught.value.problems), caught.value.problems


def test_every_problem_is_reported_at_once() -> None:
    data = jsonl(status(status="X"), status(type=""), status()) + b"{not json\n\xff\xfe\n[1]\n"
    with pytest.raises(RecordInputError) as caught:
        parse_records(data, source="in.jsonl")
    problems = caught.value.problems
    assert any(p.startswith("in.jsonl line 1: status") for p in problems)
    assert any(p.startswith("in.jsonl line 2: type: is required") for p in problems)
    assert any(p.startswith("in.jsonl line 4: not JSON") for p in problems)
    assert any(p.startswith("in.jsonl line 5: not UTF-8") for p in problems)
    assert any(p.startswith("in.jsonl line 6: a record must be a JSON object") for p in problems)
    assert len(problems) == 5


def test_limits_on_input() -> None:
    with pytest.raises(RecordInputError, match="no records"):
        parse_records(b"\n\n", source="empty.jsonl")
    with pytest.raises(RecordInputError, match="more than 2 records"):
        parse_records(jsonl(status(), status(), status()), source="in.jsonl", max_records=2)
    with pytest.raises(RecordInputError, match="longer than"):
        parse_records(b"{" + b" " * 70_000 + b"}\n", source="in.jsonl")


def test_csv_problems_name_the_line() -> None:
    text = "kind,issuer,operator_ids\naeo_status,DE,EORI-DE123\n"
    with pytest.raises(RecordInputError) as caught:
        parse_records(text.encode(), source="in.csv")
    assert any(
        "in.csv line 2: operator_ids: 'EORI-DE123' is not SCHEME:VALUE" in p
        for p in caught.value.problems
    )
    with pytest.raises(RecordInputError, match="no 'kind' column"):
        parse_records(b"issuer\nDE\n", source="in.csv")


@pytest.mark.parametrize(
    ("scheme", "value", "expected"),
    [
        ("eori", " de 123 456 ", "DE123456"),
        ("AUTH", "XX/1234/TIP1", "XX/1234/TIP1"),
        ("AUTH", "aeocn1234567890", "AEOCN1234567890"),
        ("MID", "USACMEWID1234NY", "USACMEWID1234NY"),
    ],
)
def test_identifiers_are_normalised(scheme: str, value: str, expected: str) -> None:
    assert normalise_identifier(scheme, value).value == expected

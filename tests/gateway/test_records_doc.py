"""docs/records.md: every example is accepted, every invalid example is refused with exactly
the documented message, by the same validation ``mragw publish`` runs (parsing, then the
issuer rules against the packaged registry)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.datasets import packaged_bytes, recogniser_for
from gateway.issuer_log import check_issuers
from gateway.records import AeoStatusRecord, Record, RecordInputError, parse_records
from registry.resolver import Recogniser

DOC = Path(__file__).resolve().parents[2] / "docs" / "records.md"
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    fmt: str
    role: str  # "example", "invalid" or "error"
    admin: str
    body: str


def blocks() -> list[Block]:
    found = []
    for match in FENCE.finditer(DOC.read_text(encoding="utf-8")):
        words = match["info"].split()
        if len(words) < 2 or words[1] not in ("example", "invalid", "error"):
            continue
        admin = next((w.split("=", 1)[1] for w in words[2:] if w.startswith("admin=")), "")
        found.append(Block(words[0], words[1], admin, match["body"]))
    return found


@pytest.fixture(scope="module")
def recogniser() -> Recogniser:
    return recogniser_for(packaged_bytes())


def validate(block: Block, recogniser: Recogniser) -> list[Record]:
    """What ``mragw publish`` checks before signing anything."""
    source = f"records.{block.fmt}"
    records = parse_records(block.body.encode("utf-8"), source=source)
    check_issuers(records, block.admin, recogniser, source)
    return records


def test_the_document_has_examples_of_every_kind() -> None:
    found = blocks()
    assert {(b.fmt, b.role) for b in found} >= {
        ("jsonl", "example"),
        ("csv", "example"),
        ("jsonl", "invalid"),
        ("csv", "invalid"),
        ("text", "error"),
    }
    roles = [b.role for b in found if b.role != "example"]
    # Every invalid example is followed by its error.
    assert roles == ["invalid", "error"] * (len(roles) // 2)


def test_every_example_is_accepted(recogniser: Recogniser) -> None:
    examples = [b for b in blocks() if b.role == "example"]
    for block in examples:
        assert block.admin, "an example names the gateway that publishes it (admin=)"
        records = validate(block, recogniser)
        assert len(records) == len(block.body.strip().splitlines()) - (block.fmt == "csv")
    eu_jsonl = validate(examples[0], recogniser)
    first, second = eu_jsonl[0], eu_jsonl[1]
    assert isinstance(first, AeoStatusRecord)
    assert first.valid_until is None
    assert isinstance(second, AeoStatusRecord)
    # What the document says about normalisation.
    assert [str(i) for i in second.operator_ids] == ["EORI:FR55210098700019", "NATIONAL:552100987"]
    assert second.audience == ("JP", "US")


def test_every_invalid_example_is_refused_with_the_documented_message(
    recogniser: Recogniser,
) -> None:
    found = [b for b in blocks() if b.role != "example"]
    pairs = list(zip(found[::2], found[1::2], strict=True))
    assert len(pairs) >= 5
    for invalid, error in pairs:
        with pytest.raises(RecordInputError) as refused:
            validate(invalid, recogniser)
        assert str(refused.value) == error.body.strip()

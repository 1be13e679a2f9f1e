"""The records an administration publishes, and the input formats they arrive in.

Input comes from the national AEO system as JSON lines or CSV (the contract in the gateway
issue). Parsing validates the *whole* input before anything is signed or stored: every problem
is collected with its line number and field, and one bad record rejects the whole input.

Invariants:
- Identifiers are normalised (upper case, no spaces) and checked per scheme, so a lookup by any
  spelling of an identifier finds the same operator.
- Records here are plain domain values; protobuf messages are built from them at the edge
  (``gateway.codec``), never the other way round.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from gateway.errors import CheckFailedError, InputError

SCHEMES = ("EORI", "MID", "TIN", "NATIONAL", "AUTH")
STATUSES = ("ACTIVE", "SUSPENDED", "REVOKED", "ANNULLED", "WITHDRAWN", "CONSENT_WITHDRAWN")
VALIDATION_KINDS = ("INITIAL", "REVALIDATION", "MONITORING", "JOINT")
RESULTS = ("PASSED", "PASSED_WITH_RECOMMENDATIONS", "FAILED")

MAX_LINE_BYTES = 64 * 1024
MAX_PROBLEMS_REPORTED = 50

_SCHEME_PATTERNS: dict[str, re.Pattern[str]] = {
    # ISO country code + up to 15 letters or digits (max 17 characters in all).
    "EORI": re.compile(r"[A-Z]{2}[A-Z0-9]{1,15}"),
    # US manufacturer id: country, name letters, address digits, city letters; up to 15.
    "MID": re.compile(r"[A-Z]{2}[A-Z0-9]{1,13}"),
    "TIN": re.compile(r"[A-Z0-9][A-Z0-9./-]{0,29}"),
    "NATIONAL": re.compile(r"[A-Z0-9][A-Z0-9./-]{0,39}"),
    # EU DEAEOF0001, EAEU XX/HHHH/TIPX, China AEOCN + 10 digits, Hong Kong 15 digits.
    "AUTH": re.compile(r"[A-Z0-9][A-Z0-9./-]{0,39}"),
}
_CODE = re.compile(r"[A-Z]{2,4}")
_TYPE = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TEXT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")


class RecordInputError(CheckFailedError):
    """The input holds invalid records; ``problems`` names each with its line and field.

    A rejected batch (exit 1), not a usage error: the file was read, its content refused."""

    def __init__(self, problems: list[str], source: str = "input") -> None:
        self.problems = problems
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"{source}: {len(problems)} problem(s): {shown}{more}")


@dataclass(frozen=True, order=True)
class OperatorId:
    scheme: str
    value: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.value}"


@dataclass(frozen=True)
class AeoStatusRecord:
    issuer: str
    operator_ids: tuple[OperatorId, ...]
    name: str
    country: str
    authorisation: str
    aeo_type: str
    status: str
    status_date: date
    valid_from: date | None
    valid_until: date | None
    last_validation: date | None
    consent: bool
    audience: tuple[str, ...]

    kind = "aeo_status"

    @property
    def day(self) -> date:
        """The date the record speaks for (union membership is judged on it)."""
        return self.status_date

    @property
    def key(self) -> tuple[str, str, str]:
        """One authorisation of one type: what a status history is kept for."""
        return (self.issuer, self.authorisation, self.aeo_type)


@dataclass(frozen=True)
class ValidationOutcomeRecord:
    issuer: str
    operator_ids: tuple[OperatorId, ...]
    validation_id: str
    validation_kind: str
    date: dt.date
    result: str
    criteria: tuple[str, ...]
    next_review: dt.date | None
    joint_partners: tuple[str, ...]
    audience: tuple[str, ...]

    kind = "validation_outcome"

    @property
    def day(self) -> dt.date:
        """The date the record speaks for (union membership is judged on it)."""
        return self.date


Record = AeoStatusRecord | ValidationOutcomeRecord


def normalise_identifier(scheme: str, value: str) -> OperatorId:
    """Upper-case, strip spaces and check the value against its scheme."""
    scheme_n = scheme.strip().upper()
    if scheme_n not in SCHEMES:
        raise ValueError(
            f"unknown identifier scheme {scheme!r} (expected one of {', '.join(SCHEMES)})"
        )
    value_n = re.sub(r"\s+", "", value).upper()
    if not _SCHEME_PATTERNS[scheme_n].fullmatch(value_n):
        raise ValueError(f"{scheme_n} identifier {value!r} is malformed")
    return OperatorId(scheme_n, value_n)


class _Fields:
    """Reads one raw record, collecting every problem instead of stopping at the first."""

    def __init__(self, raw: Mapping[str, Any], where: str, problems: list[str]) -> None:
        self.raw = raw
        self.where = where
        self.problems = problems
        self.used: set[str] = {"kind"}

    def problem(self, name: str, message: str) -> None:
        self.problems.append(f"{self.where}: {name}: {message}")

    def _get(self, name: str) -> Any:
        self.used.add(name)
        return self.raw.get(name)

    def text(
        self,
        name: str,
        *,
        pattern: re.Pattern[str] | None = None,
        max_len: int = 256,
        required: bool = True,
    ) -> str:
        value = self._get(name)
        if value is None or value == "":
            if required:
                self.problem(name, "is required")
            return ""
        if not isinstance(value, str):
            self.problem(name, f"must be a string, got {type(value).__name__}")
            return ""
        if len(value) > max_len:
            self.problem(name, f"longer than {max_len} characters")
            return ""
        if any(ord(c) < 32 for c in value):
            self.problem(name, "contains control characters")
            return ""
        if pattern is not None and not pattern.fullmatch(value):
            self.problem(name, f"{value!r} is malformed")
            return ""
        return value

    def code(self, name: str) -> str:
        value = self.text(name, max_len=4)
        if value and not _CODE.fullmatch(value):
            self.problem(name, f"{value!r} is not an administration code")
            return ""
        return value

    def choice(self, name: str, options: tuple[str, ...]) -> str:
        value = self.text(name, max_len=32)
        if value and value not in options:
            self.problem(name, f"{value!r} is not one of {', '.join(options)}")
            return ""
        return value

    def day(self, name: str, *, required: bool) -> date | None:
        value = self._get(name)
        if value is None or value == "":
            if required:
                self.problem(name, "is required")
            return None
        if not isinstance(value, str) or not _DATE.fullmatch(value):
            self.problem(name, f"{value!r} is not a date YYYY-MM-DD")
            return None
        try:
            return date.fromisoformat(value)
        except ValueError:
            self.problem(name, f"{value!r} is not a valid date")
            return None

    def boolean(self, name: str) -> bool:
        value = self._get(name)
        if isinstance(value, bool):
            return value
        if value is None or value == "":
            self.problem(name, "is required (true or false)")
        else:
            self.problem(name, f"{value!r} is not true or false")
        return False

    def codes(self, name: str) -> tuple[str, ...]:
        values = self.strings(name, max_items=300)
        out: list[str] = []
        for value in values:
            if not _CODE.fullmatch(value):
                self.problem(name, f"{value!r} is not an administration code")
            else:
                out.append(value)
        if len(set(out)) != len(out):
            self.problem(name, "lists a code twice")
        return tuple(out)

    def strings(self, name: str, *, max_items: int = 100) -> tuple[str, ...]:
        value = self._get(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(name, "must be a list of strings")
            return ()
        if len(value) > max_items:
            self.problem(name, f"more than {max_items} items")
            return ()
        return tuple(value)

    def operator_ids(self) -> tuple[OperatorId, ...]:
        value = self._get("operator_ids")
        if not isinstance(value, list) or not value:
            self.problem("operator_ids", "must be a non-empty list of {scheme, value}")
            return ()
        if len(value) > 20:
            self.problem("operator_ids", "more than 20 identifiers")
            return ()
        out: list[OperatorId] = []
        for i, item in enumerate(value):
            if (
                not isinstance(item, Mapping)
                or set(item) != {"scheme", "value"}
                or not isinstance(item["scheme"], str)
                or not isinstance(item["value"], str)
            ):
                self.problem(f"operator_ids[{i}]", 'must be {"scheme": str, "value": str}')
                continue
            try:
                out.append(normalise_identifier(item["scheme"], item["value"]))
            except ValueError as error:
                self.problem(f"operator_ids[{i}]", str(error))
        if len(set(out)) != len(out):
            self.problem("operator_ids", "lists an identifier twice")
        return tuple(sorted(set(out)))

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        for name in unknown:
            self.problem(name, "unknown field")


def record_from_mapping(raw: Mapping[str, Any], where: str, problems: list[str]) -> Record | None:
    """Build one record from a decoded JSON object or CSV row; ``None`` if it had problems."""
    before = len(problems)
    kind = raw.get("kind")
    f = _Fields(raw, where, problems)
    record: Record
    if kind == "aeo_status":
        record = AeoStatusRecord(
            issuer=f.code("issuer"),
            operator_ids=f.operator_ids(),
            name=f.text("name", max_len=512),
            country=f.text("country", pattern=re.compile(r"[A-Z]{2}"), max_len=2),
            authorisation=normalise_auth(f.text("authorisation", max_len=40)),
            aeo_type=f.text("type", pattern=_TYPE, max_len=32),
            status=f.choice("status", STATUSES),
            status_date=f.day("status_date", required=True) or date.min,
            valid_from=f.day("valid_from", required=False),
            valid_until=f.day("valid_until", required=False),
            last_validation=f.day("last_validation", required=False),
            consent=f.boolean("consent"),
            audience=f.codes("audience"),
        )
        if record.valid_from and record.valid_until and record.valid_until < record.valid_from:
            f.problem("valid_until", "is before valid_from")
        if record.authorisation and not _SCHEME_PATTERNS["AUTH"].fullmatch(record.authorisation):
            f.problem("authorisation", f"{record.authorisation!r} is malformed")
    elif kind == "validation_outcome":
        record = ValidationOutcomeRecord(
            issuer=f.code("issuer"),
            operator_ids=f.operator_ids(),
            validation_id=f.text("validation_id", pattern=_TEXT_ID, max_len=64),
            validation_kind=f.choice("validation_kind", VALIDATION_KINDS),
            date=f.day("date", required=True) or date.min,
            result=f.choice("result", RESULTS),
            criteria=f.strings("criteria"),
            next_review=f.day("next_review", required=False),
            joint_partners=f.codes("joint_partners"),
            audience=f.codes("audience"),
        )
        if record.next_review and record.next_review < record.date:
            f.problem("next_review", "is before date")
        if not record.audience:
            # A validation outcome goes only to its audience; with none it would go nowhere.
            f.problem("audience", "is required for a validation outcome")
    else:
        problems.append(f"{where}: kind: {kind!r} is not aeo_status or validation_outcome")
        return None
    f.finish()
    return record if len(problems) == before else None


def normalise_auth(value: str) -> str:
    return re.sub(r"\s+", "", value).upper()


def _json_lines(data: bytes, source: str, problems: list[str]) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        if len(line) > MAX_LINE_BYTES:
            problems.append(f"{where}: longer than {MAX_LINE_BYTES} bytes")
            continue
        try:
            yield where, json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            problems.append(f"{where}: not UTF-8")
        except json.JSONDecodeError as error:
            problems.append(f"{where}: not JSON: {error.msg} at column {error.colno}")


_CSV_LISTS = ("operator_ids", "audience", "criteria", "joint_partners")
_CSV_BOOLS = ("consent",)


def _csv_rows(data: bytes, source: str, problems: list[str]) -> Iterator[tuple[str, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        problems.append(f"{source}: not UTF-8")
        return
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames or []
        if "kind" not in header:
            problems.append(f"{source} line 1: header has no 'kind' column")
            return
        for row in reader:
            where = f"{source} line {reader.line_num}"
            if None in row:
                problems.append(f"{where}: more values than header columns")
                continue
            yield where, _csv_to_mapping(row, where, problems)
    except csv.Error as error:
        problems.append(f"{source} line {reader.line_num}: bad CSV: {error}")


def _csv_to_mapping(
    row: Mapping[str, str | None], where: str, problems: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, cell in row.items():
        value = (cell or "").strip()
        if name in _CSV_LISTS:
            items = [v.strip() for v in value.split(";") if v.strip()] if value else []
            if name == "operator_ids":
                ids: list[dict[str, str]] = []
                for item in items:
                    scheme, sep, ident = item.partition(":")
                    if not sep:
                        problems.append(f"{where}: operator_ids: {item!r} is not SCHEME:VALUE")
                        continue
                    ids.append({"scheme": scheme, "value": ident})
                out[name] = ids
            else:
                out[name] = items
        elif name in _CSV_BOOLS:
            lowered = value.lower()
            out[name] = {"true": True, "false": False}.get(lowered, value)
        elif value == "":
            out[name] = None
        else:
            out[name] = value
    return out


def detect_format(name: str, data: bytes) -> str:
    lowered = name.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return "jsonl" if data.lstrip()[:1] == b"{" else "csv"


def parse_records(
    data: bytes, *, source: str, fmt: str | None = None, max_records: int = 1_000_000
) -> list[Record]:
    """Parse and validate a whole JSON-lines or CSV input; raise with every problem found."""
    problems: list[str] = []
    chosen = fmt or detect_format(source, data)
    rows: Iterable[tuple[str, Any]]
    if chosen == "jsonl":
        rows = _json_lines(data, source, problems)
    elif chosen == "csv":
        rows = _csv_rows(data, source, problems)
    else:
        raise InputError(f"--format {chosen!r}: use jsonl or csv")
    out: list[Record] = []
    count = 0
    for where, raw in rows:
        count += 1
        if count > max_records:
            problems.append(
                f"{source}: more than {max_records} records (limits.max_publish_records)"
            )
            break
        if not isinstance(raw, Mapping):
            problems.append(f"{where}: a record must be a JSON object")
            continue
        record = record_from_mapping(raw, where, problems)
        if record is not None:
            out.append(record)
        if len(problems) >= MAX_PROBLEMS_REPORTED:
            problems.append(f"{source}: stopped after {MAX_PROBLEMS_REPORTED} problems")
            break
    if problems:
        raise RecordInputError(problems, source)
    if not out:
        raise RecordInputError([f"{source}: no records"], source)
    return out


@dataclass(frozen=True, order=True)
class ErasedEntry:
    """One entry of a log whose payload an erasure notice erases (its leaf hash stays)."""

    leaf_index: int
    leaf_hash: bytes


@dataclass(frozen=True)
class ErasureNotice:
    """An issuer's notice that it erased the payloads of earlier entries of its log.

    Not a :data:`Record`: it names entries, never an operator, is never published from input
    and never answers a Check; it only makes holders of the named entries erase their copies
    (:mod:`gateway.erasure`)."""

    issuer: str
    entries: tuple[ErasedEntry, ...]
    lawful_basis: str
    reference: str
    date: dt.date

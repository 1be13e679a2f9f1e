"""Records the interop scenarios publish, as the JSON-lines input `mragw publish` reads.

Written here rather than imported from the gateway, so the interop suite depends on the
CLI's input format only. Identifiers follow the real formats (EORI, US MID, Chinese
unified social credit code as a national identifier).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def aeo_status(
    issuer: str,
    scheme: str,
    ident: str,
    auth: str,
    aeo_type: str,
    *,
    name: str = "",
    consent: bool = True,
    since: str = "2018-01-15",
    country: str | None = None,
) -> Record:
    """One ACTIVE AEO status record."""
    return {
        "kind": "aeo_status",
        "issuer": issuer,
        "operator_ids": [{"scheme": scheme, "value": ident}],
        "name": name or f"Operator {ident}",
        "country": country or issuer,
        "authorisation": auth,
        "type": aeo_type,
        "status": "ACTIVE",
        "status_date": since,
        "valid_from": since,
        "valid_until": None,
        "last_validation": since,
        "consent": consent,
        "audience": [],
    }


def eu_records() -> list[Record]:
    """EU records issued by several member states: security holders (recognised by the EU's
    partners), an AEOC-only holder (not), and a holder without consent (never disclosed)."""
    return [
        aeo_status("DE", "EORI", "DE4711000012345", "DEAEOF0000012", "AEOF", since="2016-04-11"),
        aeo_status("DE", "EORI", "DE4711000067890", "DEAEOC0000457", "AEOC", since="2018-09-03"),
        aeo_status("FR", "EORI", "FR55210098700019", "FRAEOS0000213", "AEOS", since="2015-02-16"),
        aeo_status(
            "NL", "EORI", "NL812345678", "NLAEOF0001187", "AEOF", consent=False, since="2017-06-20"
        ),
        aeo_status("HR", "EORI", "HR12345678901", "HRAEOF0000031", "AEOF", since="2014-03-10"),
    ]


def jp_records() -> list[Record]:
    return [aeo_status("JP", "NATIONAL", "JP1010001012345", "JPAEO0000321", "AEO")]


def us_records() -> list[Record]:
    return [aeo_status("US", "MID", "USGRELAK1234CHI", "CTPAT0045721", "CTPAT")]


def cn_records() -> list[Record]:
    return [
        aeo_status("CN", "NATIONAL", "91310000MA1FL1234X", "AEOCN3100012345", "ADVANCED"),
        aeo_status("CN", "NATIONAL", "91440300MA5F98765Q", "AEOCN4403098765", "GENERAL"),
    ]


def gb_records() -> list[Record]:
    return [
        aeo_status("GB", "EORI", "GB123456789000", "GBAEOS0000101", "AEOS"),
        aeo_status("GB", "EORI", "GB987654321000", "GBAEOC0000202", "AEOC"),
    ]


def bulk_records(
    count: int, issuer: str = "DE", aeo_type: str = "AEOF", start: int = 0
) -> list[Record]:
    """``count`` distinct valid records numbered from ``start``; every third withholds consent."""
    return [
        aeo_status(
            issuer,
            "EORI",
            f"{issuer}9{n:012d}",
            f"{issuer}{aeo_type}{n:07d}",
            aeo_type,
            consent=n % 3 != 0,
            since="2020-01-01",
        )
        for n in range(start, start + count)
    ]


def write_jsonl(path: Path, records: Iterable[Record]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path

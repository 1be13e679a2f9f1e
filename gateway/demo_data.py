"""A small, realistic data set for ``mragw demo``: EU, Japanese and US operators.

Identifiers follow the real formats (EORI = country code + up to 15 characters, EU
authorisation numbers = member state + AEOC/AEOS/AEOF + national number, US MIDs). Names are
invented. The set exercises what the product decides: security-component holders (AEOS/AEOF)
recognised by partners, AEOC-only holders not, an operator without consent never disclosed,
a suspension, and a later revocation.
"""

from __future__ import annotations

from typing import Any

EU_OPERATORS: list[dict[str, Any]] = [
    # (member state, EORI, name, authorisation, type, consent)
    {
        "issuer": "DE",
        "eori": "DE4711000012345",
        "name": "Rheinhafen Logistik GmbH",
        "auth": "DEAEOF0000012",
        "type": "AEOF",
        "consent": True,
        "since": "2016-04-11",
    },
    {
        "issuer": "DE",
        "eori": "DE4711000067890",
        "name": "Bayerische Praezisionsteile AG",
        "auth": "DEAEOC0000457",
        "type": "AEOC",
        "consent": True,
        "since": "2018-09-03",
    },
    {
        "issuer": "FR",
        "eori": "FR55210098700019",
        "name": "Transports Seine et Loire SA",
        "auth": "FRAEOS0000213",
        "type": "AEOS",
        "consent": True,
        "since": "2015-02-16",
    },
    {
        "issuer": "NL",
        "eori": "NL812345678",
        "name": "Maasvlakte Forwarding BV",
        "auth": "NLAEOF0001187",
        "type": "AEOF",
        "consent": False,
        "since": "2017-06-20",
    },
    {
        "issuer": "IT",
        "eori": "IT01234567890",
        "name": "Ceramiche Emiliane SpA",
        "auth": "ITAEOS0000921",
        "type": "AEOS",
        "consent": True,
        "since": "2019-11-05",
    },
    {
        "issuer": "HR",
        "eori": "HR12345678901",
        "name": "Jadranska Spedicija d.o.o.",
        "auth": "HRAEOF0000031",
        "type": "AEOF",
        "consent": True,
        "since": "2014-03-10",
    },
]

JP_OPERATORS: list[dict[str, Any]] = [
    {
        "national": "JP1010001012345",
        "name": "Kansai Denki Seisakusho KK",
        "auth": "JPAEO0000321",
        "since": "2012-10-01",
    },
    {
        "national": "JP1010001098765",
        "name": "Yokohama Kaiun Shoji KK",
        "auth": "JPAEO0000874",
        "since": "2014-07-15",
    },
]

US_OPERATORS: list[dict[str, Any]] = [
    {
        "mid": "USGRELAK1234CHI",
        "name": "Great Lakes Machinery Inc.",
        "auth": "CTPAT0045721",
        "since": "2009-05-12",
    },
    {
        "mid": "USPACSHI88SEA",
        "name": "Pacific Shipping Partners LLC",
        "auth": "CTPAT0078812",
        "since": "2013-08-30",
    },
]


def eu_records() -> list[dict[str, Any]]:
    out = []
    for op in EU_OPERATORS:
        out.append(
            {
                "kind": "aeo_status",
                "issuer": op["issuer"],
                "operator_ids": [{"scheme": "EORI", "value": op["eori"]}],
                "name": op["name"],
                "country": op["issuer"],
                "authorisation": op["auth"],
                "type": op["type"],
                "status": "ACTIVE",
                "status_date": op["since"],
                "valid_from": op["since"],
                "valid_until": None,
                "last_validation": op["since"],
                "consent": op["consent"],
                "audience": [],
            }
        )
    # An EU-JP joint validation of the Rhine forwarder, addressed to Japan only.
    out.append(
        {
            "kind": "validation_outcome",
            "issuer": "DE",
            "operator_ids": [{"scheme": "EORI", "value": "DE4711000012345"}],
            "validation_id": "DE-JV-2024-0007",
            "validation_kind": "JOINT",
            "date": "2024-05-14",
            "result": "PASSED",
            "criteria": ["security", "record-keeping"],
            "next_review": "2027-05-14",
            "joint_partners": ["JP"],
            "audience": ["JP"],
        }
    )
    return out


def eu_revocation() -> dict[str, Any]:
    """The French holder's authorisation is revoked (criteria no longer met)."""
    op = EU_OPERATORS[2]
    return {
        "kind": "aeo_status",
        "issuer": op["issuer"],
        "operator_ids": [{"scheme": "EORI", "value": op["eori"]}],
        "name": op["name"],
        "country": op["issuer"],
        "authorisation": op["auth"],
        "type": op["type"],
        "status": "REVOKED",
        "status_date": "2025-03-01",
        "valid_from": op["since"],
        "valid_until": "2025-03-01",
        "last_validation": "2025-01-20",
        "consent": True,
        "audience": [],
    }


def jp_records() -> list[dict[str, Any]]:
    return [
        {
            "kind": "aeo_status",
            "issuer": "JP",
            "operator_ids": [{"scheme": "NATIONAL", "value": op["national"]}],
            "name": op["name"],
            "country": "JP",
            "authorisation": op["auth"],
            "type": "AEO",
            "status": "ACTIVE",
            "status_date": op["since"],
            "valid_from": op["since"],
            "valid_until": None,
            "last_validation": op["since"],
            "consent": True,
            "audience": [],
        }
        for op in JP_OPERATORS
    ]


def us_records() -> list[dict[str, Any]]:
    return [
        {
            "kind": "aeo_status",
            "issuer": "US",
            "operator_ids": [{"scheme": "MID", "value": op["mid"]}],
            "name": op["name"],
            "country": "US",
            "authorisation": op["auth"],
            "type": "CTPAT",
            "status": "ACTIVE",
            "status_date": op["since"],
            "valid_from": op["since"],
            "valid_until": None,
            "last_validation": op["since"],
            "consent": True,
            "audience": [],
        }
        for op in US_OPERATORS
    ]

"""Local recognition checks (gateway.query) on a real SQLite file and a real PostgreSQL.

The world: a JP node with its own published record, and replicated partner logs (EU, GB, US)
written into the same tables the replicator fills (``logs``, ``tiles``, ``entries``,
``records``, ``identifiers``, ``record_feed``). Expected values come from the issue (item 8)
and the registry dataset's facts: EU-JP is effective 2011-05-24 and covers only EU AEOS/AEOF;
JP-GB is effective 2021-01-01 and covers GB AEOS/AEOF; US-JP has only a signature date
(2009-06), so it applies only outside strict mode; GB left the EU customs union at the end of
2020-12-31; DE's issuing programme is EU-AEO (AEOC, AEOS, AEOF) since 2008.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from crypto.checkpoint import Checkpoint, parse_note, sign_checkpoint
from crypto.keys import PrivateKeySigner, Scheme
from crypto.merkle import Frontier, leaf_hash, root_from_leaf_hashes, verify_inclusion
from gateway.issuer_log import IssuerLog, prepare
from gateway.node import Node, initialise_node
from gateway.query import (
    BadQuestionError,
    Change,
    Checker,
    Question,
    UnknownSequenceError,
    WatchFilter,
)
from gateway.records import AeoStatusRecord, OperatorId, parse_records
from gateway.storage.schema import entries, identifiers, logs, record_feed, records
from gateway.storage.tiles import store_append
from gateway.trust import log_origin

TODAY = date(2024, 6, 1)
FAST_POLL = 0.05


# --- the world -------------------------------------------------------------------------------


def status(  # noqa: PLR0917 - a table row reads best positionally
    issuer: str,
    eori: str,
    authorisation: str,
    type_: str,
    state: str,
    status_date: str,
    *,
    valid_from: str | None = None,
    valid_until: str | None = None,
    consent: bool = True,
    extra_ids: Sequence[tuple[str, str]] = (),
    name: str = "Operator",
    country: str | None = None,
    scheme: str = "EORI",
) -> dict[str, Any]:
    return {
        "kind": "aeo_status",
        "issuer": issuer,
        "operator_ids": [{"scheme": scheme, "value": eori}]
        + [{"scheme": s, "value": v} for s, v in extra_ids],
        "name": name,
        "country": country or issuer,
        "authorisation": authorisation,
        "type": type_,
        "status": state,
        "status_date": status_date,
        "valid_from": valid_from if valid_from is not None else status_date,
        "valid_until": valid_until,
        "last_validation": None,
        "consent": consent,
        "audience": [],
    }


def parse(items: Sequence[dict[str, Any]]) -> list[AeoStatusRecord]:
    data = "\n".join(json.dumps(i) for i in items).encode()
    out = parse_records(data, source="test.jsonl", fmt="jsonl")
    assert all(isinstance(r, AeoStatusRecord) for r in out)
    return [r for r in out if isinstance(r, AeoStatusRecord)]


A_EORI = "DE123456789012345"
A_IDS = (("TIN", "DE-TIN-12/345"), ("NATIONAL", "DENAT777"), ("MID", "DEACMFAC123BER"))
BAD_STATES = ("unverified", "invalid", "revoked", "erased", "hash_only")

# (record, sig_state) in log order: EU log (DE and GB records, as the EU gateway publishes).
EU_LOG: list[tuple[dict[str, Any], str]] = [
    # 0: A, a full AEO (AEOF) with an identifier of every scheme.
    (
        status(
            "DE",
            A_EORI,
            "DEAEOF0001",
            "AEOF",
            "ACTIVE",
            "2019-03-01",
            extra_ids=A_IDS,
            name="Alpha Logistik GmbH",
        ),
        "valid",
    ),
    # 1-2: C holds AEOC and AEOS.
    (status("DE", "DE000000000000003", "DEAEOC0003", "AEOC", "ACTIVE", "2019-01-01"), "valid"),
    (status("DE", "DE000000000000003", "DEAEOS0003", "AEOS", "ACTIVE", "2019-01-01"), "valid"),
    # 3: B holds AEOC only.
    (status("DE", "DE000000000000002", "DEAEOC0002", "AEOC", "ACTIVE", "2018-01-01"), "valid"),
    # 4-7: D's history; 5 and 6 share a status_date (the later entry, 6, wins).
    (status("DE", "DE000000000000004", "DEAEOS0004", "AEOS", "ACTIVE", "2018-01-01"), "valid"),
    (
        status(
            "DE",
            "DE000000000000004",
            "DEAEOS0004",
            "AEOS",
            "SUSPENDED",
            "2020-01-01",
            valid_from="2018-01-01",
        ),
        "valid",
    ),
    (
        status(
            "DE",
            "DE000000000000004",
            "DEAEOS0004",
            "AEOS",
            "ACTIVE",
            "2020-01-01",
            valid_from="2018-01-01",
        ),
        "valid",
    ),
    (
        status(
            "DE",
            "DE000000000000004",
            "DEAEOS0004",
            "AEOS",
            "REVOKED",
            "2021-01-01",
            valid_from="2018-01-01",
        ),
        "valid",
    ),
    # 8-9: D2, the same tie the other way round (the later entry, 9, is SUSPENDED).
    (status("DE", "DE000000000000014", "DEAEOS0014", "AEOS", "ACTIVE", "2020-01-01"), "valid"),
    (status("DE", "DE000000000000014", "DEAEOS0014", "AEOS", "SUSPENDED", "2020-01-01"), "valid"),
    # 10: E, valid 2019-02-01 to 2022-12-31 (status known from 2019-01-01).
    (
        status(
            "DE",
            "DE000000000000005",
            "DEAEOS0005",
            "AEOS",
            "ACTIVE",
            "2019-01-01",
            valid_from="2019-02-01",
            valid_until="2022-12-31",
        ),
        "valid",
    ),
    # 11: F never consented.
    (
        status(
            "DE", "DE000000000000006", "DEAEOS0006", "AEOS", "ACTIVE", "2019-01-01", consent=False
        ),
        "valid",
    ),
    # 12-13: G withdrew consent on 2021-01-01.
    (status("DE", "DE000000000000007", "DEAEOS0007", "AEOS", "ACTIVE", "2019-01-01"), "valid"),
    (
        status(
            "DE",
            "DE000000000000007",
            "DEAEOS0007",
            "AEOS",
            "CONSENT_WITHDRAWN",
            "2021-01-01",
            valid_from="2019-01-01",
            consent=False,
        ),
        "valid",
    ),
    # 14: H, a GB record of 2020-06-01 (GB a member of the EU then).
    (status("GB", "GB123456789000", "GBAEOS0008", "AEOS", "ACTIVE", "2020-06-01"), "valid"),
    # 15-16: K, whose revocation arrived but is not verified: never used.
    (status("DE", "DE000000000000009", "DEAEOS0009", "AEOS", "ACTIVE", "2019-01-01"), "valid"),
    (
        status(
            "DE",
            "DE000000000000009",
            "DEAEOS0009",
            "AEOS",
            "REVOKED",
            "2020-01-01",
            valid_from="2019-01-01",
        ),
        "unverified",
    ),
    # 17-21: one operator per unusable entry state.
    *[
        (
            status("DE", f"DE00000000000002{n}", f"DEAEOS002{n}", "AEOS", "ACTIVE", "2019-01-01"),
            state,
        )
        for n, state in enumerate(BAD_STATES)
    ],
]
# The GB log after the UK left: its checkpoint covers entry 0 only.
GB_LOG: list[tuple[dict[str, Any], str]] = [
    (status("GB", "GB123456789001", "GBAEOS0009", "AEOS", "ACTIVE", "2021-02-01"), "valid"),
    (status("GB", "GB123456789002", "GBAEOS0010", "AEOS", "ACTIVE", "2021-03-01"), "valid"),
]
US_LOG: list[tuple[dict[str, Any], str]] = [
    (
        status(
            "US", "USACMEWID1234CH", "USCTPAT0001", "CTPAT", "ACTIVE", "2015-01-01", scheme="MID"
        ),
        "valid",
    ),
]
JP_OWN = [
    status(
        "JP",
        "JP1234567890123",
        "JPAEO0001",
        "AEO",
        "ACTIVE",
        "2015-01-01",
        scheme="NATIONAL",
        name="Nippon Forwarding KK",
    )
]


async def add_partner_log(
    node: Node,
    code: str,
    items: Sequence[tuple[dict[str, Any], str]],
    *,
    checkpoint_size: int | None = None,
) -> None:
    """Store a partner's log as the replicator would: head, tiles, entries and the index."""
    signer = PrivateKeySigner.generate(Scheme.ED25519)
    recs = parse([i for i, _ in items])
    prepared = [prepare(r, signer) for r in recs]
    hashes = [p.leaf_hash for p in prepared]
    result = Frontier.empty().append(hashes)
    covered = len(hashes) if checkpoint_size is None else checkpoint_size
    origin = log_origin(code)
    note = sign_checkpoint(
        Checkpoint(origin=origin, size=covered, root_hash=root_from_leaf_hashes(hashes[:covered])),
        origin,
        signer,
    )
    async with node.engine.begin() as conn:
        await conn.execute(
            logs.insert().values(
                code=code,
                own=False,
                size=len(hashes),
                root=result.root,
                frontier=result.frontier.to_bytes(),
                checkpoint=note,
                checkpoint_size=covered,
                verified_at=0.0,
                lock_seq=0,
            )
        )
        await store_append(conn, code, result)
        await conn.execute(
            entries.insert(),
            [
                {
                    "log": code,
                    "idx": n,
                    "leaf_hash": p.leaf_hash,
                    "envelope": None if state in {"erased", "hash_only"} else p.envelope,
                    "payload_type": p.payload_type,
                    "sig_state": state,
                    "signer": signer.key_id,
                    "content_digest": None,
                    "appended_at": 0.0,
                }
                for n, (p, (_, state)) in enumerate(zip(prepared, items, strict=True))
            ],
        )
        await conn.execute(
            records.insert(),
            [
                {
                    "log": code,
                    "idx": n,
                    "issuer": r.issuer,
                    "authorisation": r.authorisation,
                    "aeo_type": r.aeo_type,
                    "status": r.status,
                    "status_date": r.status_date.isoformat(),
                    "valid_from": r.valid_from.isoformat() if r.valid_from else None,
                    "valid_until": r.valid_until.isoformat() if r.valid_until else None,
                    "consent": r.consent,
                    "country": r.country,
                    "name": r.name,
                    "disclosed_to": None,
                }
                for n, r in enumerate(recs)
            ],
        )
        await conn.execute(
            identifiers.insert(),
            [
                {"log": code, "idx": n, "scheme": i.scheme, "value": i.value}
                for n, r in enumerate(recs)
                for i in (*r.operator_ids, *_auth(r))
            ],
        )
        await conn.execute(
            record_feed.insert(), [{"log": code, "idx": n} for n in range(len(recs))]
        )


def _auth(r: AeoStatusRecord) -> tuple[OperatorId, ...]:
    return (OperatorId("AUTH", r.authorisation),)


async def make_node(tmp_path: Path, db_url: str, admin: str = "JP") -> Node:
    home = tmp_path / f"node-{admin.lower()}"
    await initialise_node(
        admin=admin,
        home=home,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        db_url=db_url,
    )
    return Node.open(home, environ={})


async def build_world(tmp_path: Path, db_url: str) -> Node:
    node = await make_node(tmp_path, db_url)
    await IssuerLog(node).publish(parse(JP_OWN), actor="test", today=TODAY)
    await add_partner_log(node, "EU", EU_LOG)
    await add_partner_log(node, "GB", GB_LOG, checkpoint_size=1)
    await add_partner_log(node, "US", US_LOG)
    return node


@dataclass
class World:
    node: Node
    checker: Checker


@pytest.fixture
async def world(tmp_path: Path, db_url: str) -> AsyncIterator[World]:
    node = await build_world(tmp_path, db_url)
    try:
        yield World(node, Checker.for_node(node, today=lambda: TODAY, poll_interval=FAST_POLL))
    finally:
        await node.close()


def codes(reasons: Sequence[dict[str, Any]]) -> list[str]:
    return [r["code"] for r in reasons]


async def ask(world: World, **kwargs: Any) -> dict[str, Any]:
    return (await world.checker.check(Question(**kwargs))).to_json()


# --- lookup ----------------------------------------------------------------------------------

LOOKUPS = [
    pytest.param({"operator_id": A_EORI, "scheme": "EORI"}, True, id="eori"),
    pytest.param({"operator_id": "DE-TIN-12/345", "scheme": "TIN"}, True, id="tin"),
    pytest.param({"operator_id": "DENAT777", "scheme": "NATIONAL"}, True, id="national"),
    pytest.param({"operator_id": "DEACMFAC123BER", "scheme": "MID"}, True, id="mid"),
    pytest.param({"operator_id": "DEAEOF0001", "scheme": "AUTH"}, True, id="authorisation"),
    pytest.param({"operator_id": A_EORI}, True, id="any-scheme"),
    pytest.param({"operator_id": "deaeof0001"}, True, id="authorisation-any-scheme-lower"),
    pytest.param(
        {"operator_id": " de 1234 5678 9012 345 ", "scheme": "eori"}, True, id="normalised-spelling"
    ),
    pytest.param({"operator_id": "de nat 777"}, True, id="normalised-national"),
    pytest.param({"operator_id": A_EORI, "scheme": "TIN"}, False, id="wrong-scheme"),
    pytest.param({"operator_id": "DE999999999999999"}, False, id="unknown-identifier"),
]


@pytest.mark.parametrize(("lookup", "found"), LOOKUPS)
async def test_lookup_by_any_identifier(world: World, lookup: dict[str, Any], found: bool) -> None:
    doc = await ask(world, issuer="DE", **lookup)
    if not found:
        assert doc["operator"] is None
        assert codes(doc["reasons"]) == ["UNKNOWN_OPERATOR"]
        assert doc["types"] == []
        assert doc["recognised"] is False
        return
    assert doc["reasons"] == []
    assert doc["recognised"] is True
    op = doc["operator"]
    assert op["name"] == "Alpha Logistik GmbH"
    assert op["country"] == "DE"
    assert op["issuer"] == "DE"
    assert op["log"] == "EU"
    assert {(i["scheme"], i["value"]) for i in op["operator_ids"]} == {
        ("EORI", A_EORI),
        ("TIN", "DE-TIN-12/345"),
        ("NATIONAL", "DENAT777"),
        ("MID", "DEACMFAC123BER"),
        ("AUTH", "DEAEOF0001"),
    }
    assert op["authorisations"] == [
        {"issuer": "DE", "authorisation": "DEAEOF0001", "type": "AEOF", "log": "EU"}
    ]
    [t] = doc["types"]
    assert t["type"] == "AEOF"
    assert t["status"] == "ACTIVE"
    assert t["arrangements"] == ["EU-JP"]
    assert t["programme"] == "EU-AEO"
    assert t["certainty"] == "confirmed"
    assert t["evidence"] is None


async def test_answer_document_shape(world: World) -> None:
    doc = await ask(world, operator_id=A_EORI, issuer="de")
    assert set(doc) == {"recognised", "operator", "issuer", "at", "reasons", "types", "dataset"}
    assert doc["issuer"] == "DE"
    assert doc["at"] == TODAY.isoformat()  # no date asked: today in the node's time zone
    assert len(doc["dataset"]) == 64
    assert int(doc["dataset"], 16) >= 0
    [t] = doc["types"]
    assert {
        "type",
        "status",
        "recognised",
        "arrangements",
        "programme",
        "reasons",
        "warnings",
        "certainty",
        "evidence",
    } <= set(t)
    json.dumps(doc)  # one JSON document, nothing that does not serialise


# --- the status on a date, and every reason code ---------------------------------------------

# (question, top-level recognised, {type: (status, recognised, reason codes)})
CASES = [
    pytest.param(
        {"operator_id": "DE000000000000003", "issuer": "DE"},
        True,
        {"AEOC": ("ACTIVE", False, ["TYPE_NOT_COVERED"]), "AEOS": ("ACTIVE", True, [])},
        id="jp-recognises-aeos-not-aeoc",
    ),
    pytest.param(
        {"operator_id": "DE000000000000003", "issuer": "DE", "type": "AEOC"},
        False,
        {"AEOC": ("ACTIVE", False, ["TYPE_NOT_COVERED"])},
        id="type-asked-aeoc",
    ),
    pytest.param(
        {"operator_id": "DE000000000000003", "issuer": "DE", "type": "aeos"},
        True,
        {"AEOS": ("ACTIVE", True, [])},
        id="type-asked-aeos",
    ),
    pytest.param(
        {"operator_id": "DE000000000000002", "issuer": "DE"},
        False,
        {"AEOC": ("ACTIVE", False, ["TYPE_NOT_COVERED"])},
        id="aeoc-only-holder",
    ),
    pytest.param(
        {"operator_id": "DE000000000000004", "issuer": "DE", "at": "2017-12-31"},
        False,
        {"AEOS": (None, False, ["NO_STATUS_ON_DATE"])},
        id="before-first-status",
    ),
    pytest.param(
        {"operator_id": "DE000000000000004", "issuer": "DE", "at": "2018-01-01"},
        True,
        {"AEOS": ("ACTIVE", True, [])},
        id="on-first-status-date",
    ),
    pytest.param(
        {"operator_id": "DE000000000000004", "issuer": "DE", "at": "2020-01-01"},
        True,
        {"AEOS": ("ACTIVE", True, [])},
        id="tie-later-entry-active",
    ),
    pytest.param(
        {"operator_id": "DE000000000000014", "issuer": "DE", "at": "2020-06-01"},
        False,
        {"AEOS": ("SUSPENDED", False, ["STATUS_NOT_ACTIVE"])},
        id="tie-later-entry-suspended",
    ),
    pytest.param(
        {"operator_id": "DE000000000000004", "issuer": "DE", "at": "2021-06-01"},
        False,
        {"AEOS": ("REVOKED", False, ["STATUS_NOT_ACTIVE"])},
        id="revoked",
    ),
    pytest.param(
        {"operator_id": "DE000000000000005", "issuer": "DE", "at": "2019-01-31"},
        False,
        {"AEOS": ("ACTIVE", False, ["OUTSIDE_VALIDITY"])},
        id="before-valid-from",
    ),
    pytest.param(
        {"operator_id": "DE000000000000005", "issuer": "DE", "at": "2019-02-01"},
        True,
        {"AEOS": ("ACTIVE", True, [])},
        id="on-valid-from",
    ),
    pytest.param(
        {"operator_id": "DE000000000000005", "issuer": "DE", "at": "2022-12-31"},
        True,
        {"AEOS": ("ACTIVE", True, [])},
        id="on-valid-until",
    ),
    pytest.param(
        {"operator_id": "DE000000000000005", "issuer": "DE", "at": "2023-01-01"},
        False,
        {"AEOS": ("ACTIVE", False, ["OUTSIDE_VALIDITY"])},
        id="after-valid-until",
    ),
    pytest.param(
        {"operator_id": "DE000000000000006", "issuer": "DE"},
        False,
        {"AEOS": ("ACTIVE", False, ["NO_CONSENT"])},
        id="no-consent",
    ),
    pytest.param(
        {"operator_id": "DE000000000000007", "issuer": "DE", "at": "2020-12-31"},
        True,
        {"AEOS": ("ACTIVE", True, [])},
        id="before-consent-withdrawn",
    ),
    pytest.param(
        {"operator_id": "DE000000000000007", "issuer": "DE", "at": "2021-01-01"},
        False,
        {"AEOS": ("CONSENT_WITHDRAWN", False, ["NO_CONSENT"])},
        id="consent-withdrawn",
    ),
    pytest.param(
        {"operator_id": "DE000000000000009", "issuer": "DE", "at": "2020-06-01"},
        True,
        {"AEOS": ("ACTIVE", True, [])},
        id="unverified-revocation-not-used",
    ),
    pytest.param(
        {"operator_id": "GB123456789000", "issuer": "EU", "at": "2020-07-01"},
        True,
        {"AEOS": ("ACTIVE", True, [])},
        id="union-issuer-gb-member-on-status-date",
    ),
    pytest.param(
        {"operator_id": A_EORI, "issuer": "EU"},
        True,
        {"AEOF": ("ACTIVE", True, [])},
        id="union-issuer-de",
    ),
    pytest.param(
        {"operator_id": "GB123456789001", "issuer": "GB", "at": "2021-06-01"},
        True,
        {"AEOS": ("ACTIVE", True, [])},
        id="gb-after-brexit-own-issuer",
    ),
    pytest.param(
        {"operator_id": "USACMEWID1234CH", "issuer": "US", "scheme": "MID"},
        True,
        {"CTPAT": ("ACTIVE", True, [])},
        id="signature-date-fallback",
    ),
    pytest.param(
        {"operator_id": "USACMEWID1234CH", "issuer": "US", "strict": True},
        False,
        {"CTPAT": ("ACTIVE", False, ["NO_DATE"])},
        id="strict-no-effective-date",
    ),
    pytest.param(
        {"operator_id": A_EORI, "issuer": "DE", "mode": "SEA"},
        True,
        {"AEOF": ("ACTIVE", True, [])},
        id="mode-any-for-arrangement-without-modes",
    ),
    pytest.param(
        {"operator_id": "JP1234567890123", "issuer": "JP"},
        True,
        {"AEO": ("ACTIVE", True, [])},
        id="own-record",
    ),
]


@pytest.mark.parametrize(("question", "recognised", "types"), CASES)
async def test_status_on_date(
    world: World,
    question: dict[str, Any],
    recognised: bool,
    types: dict[str, tuple[str | None, bool, list[str]]],
) -> None:
    doc = await ask(world, **question)
    assert doc["reasons"] == []
    assert doc["recognised"] is recognised
    got = {t["type"]: (t["status"], t["recognised"], codes(t["reasons"])) for t in doc["types"]}
    assert got == types
    assert [t["type"] for t in doc["types"]] == sorted(types)


async def test_tie_uses_the_later_entry(world: World) -> None:
    [t] = (await ask(world, operator_id="DE000000000000004", issuer="DE", at="2020-06-01"))["types"]
    assert (t["status_date"], t["leaf_index"], t["log"]) == ("2020-01-01", 6, "EU")


async def test_registry_reason_names_the_arrangement(world: World) -> None:
    doc = await ask(world, operator_id="DE000000000000002", issuer="DE")
    [t] = doc["types"]
    [reason] = t["reasons"]
    assert reason["code"] == "TYPE_NOT_COVERED"
    assert reason["arrangement"] == "EU-JP"
    assert reason["detail"]
    assert t["arrangements"] == []


async def test_own_record_recognised_through_the_same_programme(world: World) -> None:
    [t] = (await ask(world, operator_id="JP1234567890123", issuer="JP"))["types"]
    assert t["arrangements"] == []
    assert t["programme"] == "JP-AEO"


async def test_signature_date_fallback_is_uncertain(world: World) -> None:
    [t] = (await ask(world, operator_id="USACMEWID1234CH", issuer="US"))["types"]
    assert t["arrangements"] == ["US-JP"]
    assert t["certainty"] == "uncertain"
    assert t["warnings"]
    [strict] = (await ask(world, operator_id="USACMEWID1234CH", issuer="US", strict=True))["types"]
    assert [(r["code"], r["arrangement"]) for r in strict["reasons"]] == [("NO_DATE", "US-JP")]


async def test_not_recognised_names_no_arrangement(world: World) -> None:
    # The registry would recognise DE AEOS under EU-JP, but the status is REVOKED: only the
    # status reason, and no arrangement is named for a type that is not recognised.
    doc = await ask(world, operator_id="DE000000000000004", issuer="DE", at="2021-06-01")
    [t] = doc["types"]
    assert codes(t["reasons"]) == ["STATUS_NOT_ACTIVE"]
    assert t["arrangements"] == []


TOP_LEVEL = [
    pytest.param(
        {"operator_id": "GB123456789001", "issuer": "EU", "at": "2021-06-01"},
        "UNKNOWN_OPERATOR",
        id="union-issuer-gb-not-member-on-status-date",
    ),
    pytest.param({"operator_id": A_EORI, "issuer": "FR"}, "UNKNOWN_OPERATOR", id="another-issuer"),
    pytest.param(
        {"operator_id": A_EORI, "issuer": "DE", "type": "AEOS"},
        "NO_RECORD_OF_TYPE",
        id="no-record-of-type",
    ),
    *[
        pytest.param(
            {"operator_id": f"DE00000000000002{n}", "issuer": "DE"},
            "UNKNOWN_OPERATOR",
            id=f"entry-{state}-never-used",
        )
        for n, state in enumerate(BAD_STATES)
    ],
]


@pytest.mark.parametrize(("question", "code"), TOP_LEVEL)
async def test_top_level_reasons(world: World, question: dict[str, Any], code: str) -> None:
    doc = await ask(world, **question)
    assert codes(doc["reasons"]) == [code]
    assert doc["recognised"] is False
    assert doc["types"] == []
    assert all(r["arrangement"] is None and r["detail"] for r in doc["reasons"])
    if code == "UNKNOWN_OPERATOR":
        assert doc["operator"] is None
    else:
        assert doc["operator"]["name"] == "Alpha Logistik GmbH"


# --- bad questions ---------------------------------------------------------------------------

BAD = [
    pytest.param({"issuer": "QQ"}, "QQ", id="unknown-issuer"),
    pytest.param({"issuer": "D3"}, "D3", id="malformed-issuer"),
    pytest.param({"at": "2020-13-01"}, "2020-13-01", id="impossible-date"),
    pytest.param({"at": "yesterday"}, "yesterday", id="malformed-date"),
    pytest.param({"mode": "ship"}, "ship", id="unknown-mode"),
    pytest.param({"type": "CTPAT"}, "CTPAT", id="type-not-of-issuer"),
    pytest.param({"scheme": "FOO"}, "FOO", id="unknown-scheme"),
    pytest.param({"operator_id": "@@@"}, "@@@", id="malformed-identifier"),
    pytest.param({"operator_id": "D", "scheme": "EORI"}, "'D'", id="malformed-eori"),
    pytest.param({"operator_id": "  "}, "empty", id="empty-identifier"),
]


@pytest.mark.parametrize(("change", "named"), BAD)
async def test_bad_question_is_an_input_error_naming_the_value(
    world: World, change: dict[str, Any], named: str
) -> None:
    question = {"operator_id": A_EORI, "issuer": "DE", **change}
    with pytest.raises(BadQuestionError) as caught:
        await world.checker.check(Question(**question))
    assert named in str(caught.value)
    assert caught.value.position is None


# --- evidence --------------------------------------------------------------------------------


def verify_evidence(evidence: dict[str, Any]) -> None:
    assert evidence["available"] is True
    envelope = base64.b64decode(evidence["entry"])
    checkpoint = parse_note(evidence["checkpoint"]).checkpoint()
    assert checkpoint.size == evidence["tree_size"]
    verify_inclusion(
        leaf_hash(envelope),
        evidence["leaf_index"],
        evidence["tree_size"],
        [base64.b64decode(h) for h in evidence["inclusion_proof"]],
        checkpoint.root_hash,
    )


EVIDENCE = [
    pytest.param({"operator_id": "JP1234567890123", "issuer": "JP"}, "JP", 0, id="own-log"),
    pytest.param({"operator_id": A_EORI, "issuer": "DE"}, "EU", 0, id="partner-log-first"),
    pytest.param(
        {"operator_id": "DE000000000000004", "issuer": "DE", "at": "2020-06-01"},
        "EU",
        6,
        id="partner-log-middle",
    ),
    pytest.param({"operator_id": "GB123456789001", "issuer": "GB"}, "GB", 0, id="covered"),
]


@pytest.mark.parametrize(("question", "log", "index"), EVIDENCE)
async def test_evidence_only_when_asked_and_it_verifies(
    world: World, question: dict[str, Any], log: str, index: int
) -> None:
    without = await ask(world, **question)
    assert all(t["evidence"] is None for t in without["types"])
    doc = await ask(world, evidence=True, **question)
    [t] = doc["types"]
    ev = t["evidence"]
    assert (ev["log"], ev["leaf_index"]) == (log, index)
    verify_evidence(ev)
    # The entry is the exact envelope stored for that leaf.
    async with world.node.engine.connect() as conn:
        stored = (
            await conn.execute(
                select(entries.c.envelope).where(entries.c.log == log, entries.c.idx == index)
            )
        ).scalar_one()
    assert base64.b64decode(ev["entry"]) == bytes(stored)


async def test_evidence_unavailable_beyond_the_checkpoint(world: World) -> None:
    # The GB checkpoint covers entry 0 only; entry 1 is held but not yet covered.
    doc = await ask(world, operator_id="GB123456789002", issuer="GB", evidence=True)
    [t] = doc["types"]
    assert t["recognised"] is True  # evidence does not change the answer
    assert t["evidence"]["available"] is False
    assert t["evidence"]["entry"] is None
    assert "not yet covered" in t["evidence"]["detail"]
    assert any("evidence unavailable" in w for w in t["warnings"])


# --- many questions --------------------------------------------------------------------------

MANY = [
    Question(A_EORI, "DE"),
    Question("DE000000000000003", "DE"),
    Question("GB123456789001", "EU", at="2021-06-01"),
    Question("DE000000000000004", "DE", at="2017-12-31"),
    Question("DE000000000000004", "DE", at="2020-06-01", evidence=True),
    Question("GB123456789000", "EU", at="2020-07-01"),
    Question("DEAEOF0001", "DE", scheme="AUTH", type="AEOF"),
    Question("USACMEWID1234CH", "US", strict=True),
    Question(A_EORI, "DE", type="AEOS"),
    Question("JP1234567890123", "JP", evidence=True),
    Question("DE000000000000020", "DE"),
]


async def test_check_many_in_order_equals_single_checks(world: World) -> None:
    many = [a.to_json() for a in await world.checker.check_many(MANY * 3)]
    single = [(await world.checker.check(q)).to_json() for q in MANY]
    assert many == single * 3
    assert await world.checker.check_many([]) == []


async def test_check_many_names_the_position_of_a_bad_question(world: World) -> None:
    questions = [*MANY[:3], Question(A_EORI, "QQ"), *MANY[3:]]
    with pytest.raises(BadQuestionError) as caught:
        await world.checker.check_many(questions)
    assert caught.value.position == 3
    assert "question 3" in str(caught.value)
    assert "QQ" in str(caught.value)


async def test_check_many_caps_the_number_of_questions(world: World) -> None:
    checker = Checker(world.node.engine, "JP", today=lambda: TODAY, max_questions=5)
    with pytest.raises(BadQuestionError, match="at most 5"):
        await checker.check_many(MANY[:6])


async def test_check_many_batches_a_large_list(world: World) -> None:
    # More distinct identifiers than one IN list holds, mostly unknown.
    questions = [Question(f"DE{n:015d}", "DE") for n in range(2500)] + [Question(A_EORI, "DE")]
    answers = await world.checker.check_many(questions)
    assert len(answers) == 2501
    assert answers[-1].recognised is True
    known = {f"DE{n:015d}" for n in (2, 3, 4, 5, 6, 7, 9, 14)}
    for q, a in zip(questions[:-1], answers[:-1], strict=True):
        assert (a.operator is not None) == (q.operator_id in known), q.operator_id


# --- the change feed -------------------------------------------------------------------------


async def first_changes(
    checker: Checker,
    count: int,
    *,
    after: int | None = None,
    filters: WatchFilter | None = None,
    ready: asyncio.Event | None = None,
) -> list[Change]:
    out: list[Change] = []
    feed = checker.watch(after, filters, ready=ready)
    try:
        async for change in feed:
            out.append(change)
            if len(out) == count:
                break
    finally:
        await feed.aclose()
    return out


async def publish_jp(node: Node, *items: dict[str, Any]) -> None:
    await IssuerLog(node).publish(parse(list(items)), actor="test", today=TODAY)


NEW_JP = status(
    "JP", "JP9999999999999", "JPAEO0002", "AEO", "ACTIVE", "2024-01-01", scheme="NATIONAL"
)
NEW_JP_REVOKED = {
    **NEW_JP,
    "status": "REVOKED",
    "status_date": "2024-05-01",
    "valid_from": "2024-01-01",
}


async def test_watch_yields_records_appended_after_it_started(world: World) -> None:
    ready = asyncio.Event()
    task = asyncio.create_task(first_changes(world.checker, 2, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    await publish_jp(world.node, NEW_JP)
    await publish_jp(world.node, NEW_JP_REVOKED)
    changes = await asyncio.wait_for(task, 20)
    assert [(c.log, c.idx) for c in changes] == [("JP", 1), ("JP", 2)]
    assert changes[0].seq < changes[1].seq
    assert changes[0].record.status == "ACTIVE"
    assert changes[0].previous_status is None
    assert changes[1].record.status == "REVOKED"
    assert changes[1].previous_status == "ACTIVE"
    assert ("NATIONAL", "JP9999999999999") in {(i.scheme, i.value) for i in changes[1].operator_ids}


async def test_watch_notify_wakes_without_waiting_for_the_poll(world: World) -> None:
    slow = Checker(world.node.engine, "JP", today=lambda: TODAY, poll_interval=3600)
    ready = asyncio.Event()
    task = asyncio.create_task(first_changes(slow, 1, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    await publish_jp(world.node, NEW_JP)
    slow.notify()
    [change] = await asyncio.wait_for(task, 20)
    assert change.record.authorisation == "JPAEO0002"


async def count_feed(node: Node) -> int:
    async with node.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(record_feed))).scalar_one())


# The feed holds JP 0, EU 0-21, GB 0-1 and US 0 (26 rows); 6 EU entries are unusable (16 and
# 17-21), so 20 changes are usable.
USABLE = 20
WATCH_FILTERS = [
    pytest.param(WatchFilter(), USABLE, id="everything-usable"),
    pytest.param(WatchFilter(types=("ctpat",)), 1, id="type"),
    # H (in the EU log, issuer GB) and both records of the GB log.
    pytest.param(WatchFilter(issuers=("GB",)), 3, id="issuer"),
    # Every usable EU-log record (H included: GB was a member on 2020-06-01); not the GB log.
    pytest.param(WatchFilter(issuers=("EU",)), 16, id="union-issuer"),
    pytest.param(WatchFilter(operator_ids=("de 000000000000004",)), 4, id="operator"),
    pytest.param(WatchFilter(operator_ids=("DEAEOS0014",)), 2, id="authorisation"),
]
MARKER = status(
    "JP", "JP8888888888888", "JPAEO0003", "AEO", "ACTIVE", "2024-01-01", scheme="NATIONAL"
)


@pytest.mark.parametrize(("filters", "expected"), WATCH_FILTERS)
async def test_watch_replays_from_a_sequence_with_filters(
    world: World, filters: WatchFilter, expected: int
) -> None:
    assert await count_feed(world.node) == 1 + len(EU_LOG) + len(GB_LOG) + len(US_LOG)
    # A marker appended after the replayed records, matching every filter below, ends the
    # replay deterministically: it must come right after exactly `expected` changes.
    await publish_jp(world.node, MARKER)
    widened = WatchFilter(
        issuers=(*filters.issuers, "JP") if filters.issuers else (),
        operator_ids=(*filters.operator_ids, "JP8888888888888") if filters.operator_ids else (),
        types=(*filters.types, "AEO") if filters.types else (),
    )
    # Widening by issuer JP or type AEO also lets JP's own first record through.
    extra = ["JPAEO0001"] if filters.issuers or filters.types else []
    changes = await asyncio.wait_for(
        first_changes(world.checker, expected + len(extra) + 1, after=0, filters=widened), 20
    )
    assert changes[-1].record.authorisation == "JPAEO0003"
    replayed = [c for c in changes[:-1] if c.record.authorisation not in extra]
    assert len(replayed) == len(changes) - 1 - len(extra)
    assert [c.seq for c in replayed] == sorted(c.seq for c in replayed)
    assert len({c.seq for c in replayed}) == expected
    unusable = {f"DEAEOS002{n}" for n in range(len(BAD_STATES))}
    assert not any(c.record.authorisation in unusable for c in replayed)
    # K's revocation is unverified: only its ACTIVE record is a change.
    assert all(
        c.record.status == "ACTIVE" for c in replayed if c.record.authorisation == "DEAEOS0009"
    )


async def test_watch_rejects_a_sequence_never_given(world: World) -> None:
    total = await count_feed(world.node)
    with pytest.raises(UnknownSequenceError, match=str(total + 5)):
        await first_changes(world.checker, 1, after=total + 5)


async def test_watch_rejects_an_unknown_issuer(world: World) -> None:
    with pytest.raises(BadQuestionError, match="QQ"):
        await first_changes(world.checker, 1, filters=WatchFilter(issuers=("QQ",)))


# --- whose word counts ------------------------------------------------------------------------


async def test_a_union_log_speaks_for_a_state_only_while_it_is_a_member(world: World) -> None:
    """The EU log holds a GB record dated 2020-06-01 (GB a member then). A union gateway could
    write any ``status_date``: after GB left (2020-12-31) the EU's records of GB must not answer
    for GB, or a hostile union could plant authorisations in a former member's name."""
    during = await ask(world, operator_id="GB123456789000", issuer="GB", at="2020-07-01")
    assert during["recognised"] is True
    assert during["types"][0]["log"] == "EU"
    after = await ask(world, operator_id="GB123456789000", issuer="GB", at="2025-01-01")
    assert after["recognised"] is False
    assert codes(after["reasons"]) == ["UNKNOWN_OPERATOR"]
    # GB's own log answers for GB after it left.
    own = await ask(world, operator_id="GB123456789001", issuer="GB", at="2025-01-01")
    assert own["types"][0]["log"] == "GB"

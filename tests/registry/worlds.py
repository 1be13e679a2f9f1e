"""Small datasets built in the tests, and a helper that turns one into a Recogniser.

The base world mirrors the shapes of the real facts (a union with joins and exits, direction
and mode phasing, type scopes, plurilateral and bloc-to-bloc arrangements) with dates chosen so
each rule of data/README.md can be exercised alone.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from registry.dataset import parse_dataset
from registry.resolver import Recogniser

BASE: dict[str, Any] = {
    "programmes": [
        {"administration": "US", "id": "US-CTPAT", "types": ["CTPAT"]},
        {"administration": "CN", "id": "CN-AEO", "types": ["ADVANCED", "GENERAL"]},
        {
            "administration": "GB",
            "id": "GB-AEO",
            "types": ["AEOC", "AEOS", "AEOF"],
            "since": "2021-01-01",
        },
        {"administration": "KH", "id": "KH-AEO", "types": ["A1", "A2"]},
    ],
    "unions": [
        {
            "code": "BLOC",
            "name": "A customs union",
            "programme": {
                "id": "BLOC-AEO",
                "types": ["AEOC", "AEOS", "AEOF"],
                "since": "2008-01-01",
            },
            "members": [
                {"code": "FR", "from": "1958-01-01", "until": None},
                {"code": "DE", "from": "1958-01-01", "until": None},
                {"code": "IT", "from": "1958-01-01", "until": "2030-03"},
                {"code": "GB", "from": "1973-01-01", "until": "2021-01-01"},
                {"code": "PL", "from": "2004-05", "until": None},
                {"code": "HR", "from": "2013-07-01", "until": None},
            ],
            "certainty": "confirmed",
        },
        {
            "code": "XU",
            "name": "An uncertain union",
            "programme": {"id": "XU-AEO", "types": ["T1", "T2"], "since": "2018-01-01"},
            "members": [{"code": "AM", "from": "2018-01-01"}, {"code": "BY", "from": "2018-01-01"}],
            "certainty": "uncertain",
        },
    ],
    "arrangements": [
        {
            "id": "BLOC-JP",
            "kind": "bilateral",
            "parties": ["BLOC", "JP"],
            "signed": "2010-06-24",
            "effective": "2011-05-24",
            "recognised_types": {"BLOC": ["AEOS", "AEOF"]},
        },
        {
            "id": "US-BLOC",
            "kind": "bilateral",
            "parties": ["US", "BLOC"],
            "signed": "2012-05-04",
            "directions": {"US<-BLOC": "2012-07-01", "BLOC<-US": "2013-01-31"},
        },
        {
            "id": "CN-AU",
            "kind": "bilateral",
            "parties": ["CN", "AU"],
            "signed": "2017-11",
            "effective": "2023-12-14",
            "recognised_types": {"CN": ["ADVANCED"]},
        },
        {
            "id": "CN-HK",
            "kind": "bilateral",
            "parties": ["CN", "HK"],
            "signed": "2013-10",
            "modes": {"road": "2014-05-18", "air": "2014-09-01", "sea": "2014-09-01"},
        },
        {"id": "JP-NZ", "kind": "bilateral", "parties": ["JP", "NZ"], "signed": "2008-05"},
        {
            "id": "SG-TH",
            "kind": "bilateral",
            "parties": ["SG", "TH"],
            "signed": None,
            "effective": None,
        },
        {
            "id": "KR-MX",
            "kind": "bilateral",
            "parties": ["KR", "MX"],
            "effective": "2015-02-16",
            "terminated": "2020-01-01",
        },
        {
            "id": "KR-CA",
            "kind": "bilateral",
            "parties": ["KR", "CA"],
            "effective": "2010-01-01",
            "terminated": "2020-06",
        },
        {
            "id": "AU-NZ",
            "kind": "bilateral",
            "parties": ["AU", "NZ"],
            "effective": "2016-01-01",
            "suspensions": [{"from": "2020-01-01", "until": "2020-06-01"}],
        },
        {
            "id": "AU-CA",
            "kind": "bilateral",
            "parties": ["AU", "CA"],
            "effective": "2016-01-01",
            "suspensions": [
                {"from": "2020-01-01", "until": None, "recogniser": "AU", "issuer": "CA"}
            ],
        },
        {
            "id": "AU-SG",
            "kind": "bilateral",
            "parties": ["AU", "SG"],
            "effective": "2016-01-01",
            "suspensions": [{"from": "2020-01", "until": "2020-03", "issuer": "SG"}],
        },
        {
            "id": "PA",
            "kind": "plurilateral",
            "parties": ["CL", "CO", "MX", "PE"],
            "effective": "2018-07-21",
        },
        {
            "id": "MERCO-PA",
            "kind": "bloc_to_bloc",
            "parties": ["AR", "BR", "CL", "CO"],
            "sides": [["AR", "BR"], ["CL", "CO"]],
            "effective": "2025-06-01",
        },
        {"id": "KR-BLOC", "kind": "bilateral", "parties": ["KR", "BLOC"], "effective": "2019-03"},
        {
            "id": "IN-BLOC",
            "kind": "bilateral",
            "parties": ["IN", "BLOC"],
            "effective": "2021-01-01",
            "modes": {"rail": "2020-01-01"},
        },
        {
            "id": "EG-JO",
            "kind": "bilateral",
            "parties": ["EG", "JO"],
            "effective": "2016-05-10",
            "certainty": "uncertain",
        },
        {
            "id": "CN-BY",
            "kind": "bilateral",
            "parties": ["CN", "BY"],
            "effective": "2019-07-24",
            "recognised_types": {"BY": ["T1"]},
        },
        {"id": "GB-JP", "kind": "bilateral", "parties": ["GB", "JP"], "effective": "2021-01-01"},
        {
            "id": "BLOC-MD",
            "kind": "bilateral",
            "parties": ["BLOC", "MD"],
            "effective": "2022-11-01",
        },
        {
            "id": "BLOC-NO",
            "kind": "bilateral",
            "parties": ["BLOC", "NO"],
            "effective": "2000-01-01",
        },
        {
            "id": "NZ-CA",
            "kind": "bilateral",
            "parties": ["NZ", "CA"],
            "directions": {"NZ<-CA": "2019-06", "CA<-NZ": "2019-01-01"},
        },
        {
            "id": "KR-NZ",
            "kind": "bilateral",
            "parties": ["KR", "NZ"],
            "effective": "2011-06-01",
            "modes": {"sea": "2012-01"},
        },
        {
            "id": "VN-KH",
            "kind": "bilateral",
            "parties": ["VN", "KH"],
            "effective": "2020-01-01",
            "terminated": "2030-01-01",
            "suspensions": [{"from": "2022-01-01", "until": "2023-01-01"}],
            "recognised_types": {"KH": ["A1"]},
        },
        {
            "id": "BLOC2",
            "kind": "bloc_to_bloc",
            "parties": ["BO", "PY", "EC", "VE"],
            "sides": [["BO", "PY"], ["EC", "VE"]],
        },
    ],
}


def world(changes: dict[str, Any] | None = None, *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A deep copy of the base world, with top-level ``changes`` and arrangements dropped."""
    document = copy.deepcopy(BASE)
    document.update(copy.deepcopy(changes or {}))
    document["arrangements"] = [a for a in document["arrangements"] if a["id"] not in drop]
    return document


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def recogniser(document: dict[str, Any] | None = None) -> Recogniser:
    return Recogniser(parse_dataset(encode(document if document is not None else BASE), "test"))

"""The facts the registry issue names, against the packaged dataset (registry/data/
mra-facts.json). Expected values come from the facts as the issue and data/README.md state
them, not from running the resolver."""

from __future__ import annotations

import hashlib
from importlib import resources

import pytest

from registry.dataset import default_dataset
from registry.errors import QuestionError
from registry.resolver import Recogniser, default_recogniser

from .test_rules import NONE, E, Q, no, same, yes

S = "effective date not found; signature date used"
M = "date known to the month only"


@pytest.fixture(scope="module")
def real() -> Recogniser:
    return default_recogniser()


def test_dataset_version_is_sha256_of_the_packaged_file(real: Recogniser) -> None:
    data = resources.files("registry").joinpath("data", "mra-facts.json").read_bytes()
    assert real.version == hashlib.sha256(data).hexdigest()
    assert len(default_dataset().arrangements) == 157


def test_default_is_built_once() -> None:
    assert default_recogniser() is default_recogniser()
    assert default_dataset() is default_dataset()


FACTS = [
    # Croatia joined the EU customs union on 2013-07-01; the UK left it at the end of 2020.
    pytest.param(Q("JP", "HR", "AEOS", "2013-07-01"), yes("EU-JP"), id="hr-joins-eu-jp"),
    pytest.param(Q("JP", "HR", "AEO", "2013-06-30"), no(NONE), id="hr-before-join"),
    pytest.param(Q("FR", "HR", "AEOC", "2013-07-01"), same("EU-AEO"), id="hr-same-programme"),
    pytest.param(Q("FR", "GB", "AEOC", "2020-12-31"), same("EU-AEO"), id="gb-last-day-in-eu"),
    pytest.param(
        Q("FR", "GB", "AEOC", "2021-01-01"),
        no(("EU-GB", "TYPE_NOT_COVERED")),
        id="gb-aeoc-after-exit",
    ),
    pytest.param(Q("FR", "GB", "AEOS", "2021-01-01"), yes("EU-GB"), id="gb-aeos-after-exit"),
    pytest.param(Q("JP", "GB", "AEOS", "2020-12-31"), yes("EU-JP"), id="gb-via-eu-jp"),
    pytest.param(Q("JP", "GB", "AEOS", "2021-01-01"), yes("JP-GB"), id="gb-via-jp-gb"),
    # China-Australia: signed 2017-11, effective 2023-12-14; only ADVANCED Chinese AEOs.
    pytest.param(
        Q("CN", "AU", "AEO", "2023-12-13"), no(("CN-AU", "NOT_YET_EFFECTIVE")), id="cn-au-before"
    ),
    pytest.param(Q("CN", "AU", "AEO", "2023-12-14"), yes("CN-AU"), id="cn-au-effective"),
    pytest.param(Q("AU", "CN", "ADVANCED", "2023-12-14"), yes("CN-AU"), id="au-cn-advanced"),
    pytest.param(
        Q("AU", "CN", "GENERAL", "2023-12-14"),
        no(("CN-AU", "TYPE_NOT_COVERED")),
        id="au-cn-general",
    ),
    # US<-EU from 2012-07-01, EU<-US from 2013-01-31.
    pytest.param(
        Q("US", "DE", "AEOS", "2012-06-30"), no(("US-EU", "NOT_YET_EFFECTIVE")), id="us-eu-before"
    ),
    pytest.param(Q("US", "DE", "AEOS", "2012-07-01"), yes("US-EU"), id="us-eu-from"),
    pytest.param(
        Q("DE", "US", "CTPAT", "2012-07-01"), no(("US-EU", "NOT_YET_EFFECTIVE")), id="eu-us-not-yet"
    ),
    pytest.param(
        Q("DE", "US", "CTPAT", "2013-01-30"),
        no(("US-EU", "NOT_YET_EFFECTIVE")),
        id="eu-us-day-before",
    ),
    pytest.param(Q("DE", "US", "CTPAT", "2013-01-31"), yes("US-EU"), id="eu-us-from"),
    # China-Hong Kong: road from 2014-05-18, air and sea from 2014-09-01, no rail.
    pytest.param(Q("HK", "CN", "ADVANCED", "2014-05-18", "road"), yes("CN-HK"), id="cn-hk-road"),
    pytest.param(
        Q("HK", "CN", "ADVANCED", "2014-05-17", "road"),
        no(("CN-HK", "NOT_YET_EFFECTIVE")),
        id="cn-hk-road-before",
    ),
    pytest.param(
        Q("HK", "CN", "ADVANCED", "2014-05-18", "air"),
        no(("CN-HK", "NOT_YET_EFFECTIVE")),
        id="cn-hk-air-not-yet",
    ),
    pytest.param(Q("HK", "CN", "ADVANCED", "2014-09-01", "air"), yes("CN-HK"), id="cn-hk-air"),
    pytest.param(Q("CN", "HK", "AEO", "2014-09-01", "sea"), yes("CN-HK"), id="cn-hk-sea"),
    pytest.param(
        Q("CN", "HK", "AEO", "2014-09-01", "rail"),
        no(("CN-HK", "MODE_NOT_COVERED")),
        id="cn-hk-rail",
    ),
    # Partners recognise only EU AEOs with the security component (AEOS, AEOF).
    pytest.param(
        Q("US", "FR", "AEOC", "2020-01-01"), no(("US-EU", "TYPE_NOT_COVERED")), id="aeoc-us"
    ),
    pytest.param(
        Q("JP", "DE", "AEOC", "2020-01-01"), no(("EU-JP", "TYPE_NOT_COVERED")), id="aeoc-jp"
    ),
    pytest.param(
        Q("CN", "IT", "AEOC", "2020-01-01"), no(("EU-CN", "TYPE_NOT_COVERED")), id="aeoc-cn"
    ),
    pytest.param(Q("JP", "DE", "AEOF", "2020-01-01"), yes("EU-JP"), id="aeof-jp"),
    # Pacific Alliance (signed 2018-07-21; no effective date found), CEFTA (AEOS/AEOF from
    # 2020-04-01), MERCOSUR-Pacific Alliance (bloc to bloc, signed 2025-05: from 2025-06-01).
    pytest.param(Q("CL", "MX", "AEO", "2018-07-21"), yes("PA-MRA"), id="pa-from-signature"),
    pytest.param(
        Q("CL", "MX", "AEO", "2018-07-20"),
        no(("PA-MRA", "NOT_YET_EFFECTIVE"), ("MERCOSUR-PA", "SAME_SIDE")),
        id="pa-before",
    ),
    pytest.param(Q("AL", "RS", "AEOS", "2020-04-01"), yes("CEFTA-AEOS"), id="cefta"),
    pytest.param(
        Q("AL", "RS", "AEOS", "2020-03-31"),
        no(("CEFTA-AEOS", "NOT_YET_EFFECTIVE")),
        id="cefta-before",
    ),
    pytest.param(
        Q("RS", "XK", "AEOC", "2021-01-01"),
        no(("CEFTA-AEOS", "TYPE_NOT_COVERED")),
        id="cefta-aeoc-xk",
    ),
    pytest.param(Q("RS", "XK", "AEOF", "2021-01-01"), yes("CEFTA-AEOS"), id="cefta-xk"),
    pytest.param(
        Q("AR", "MX", "AEO", "2025-05-31"),
        no(("MERCOSUR-PA", "NOT_YET_EFFECTIVE")),
        id="mercosur-pa-before",
    ),
    pytest.param(Q("AR", "MX", "AEO", "2025-06-01"), yes("MERCOSUR-PA"), id="mercosur-pa-across"),
    pytest.param(
        Q("AR", "PY", "AEO", "2019-01-01"),
        no(
            ("AMERICAS-MRA", "NOT_YET_EFFECTIVE"),
            ("MERCOSUR-PA", "SAME_SIDE"),
            ("MERCOSUR-MRA", "NOT_YET_EFFECTIVE"),
        ),
        id="mercosur-pa-same-side",
    ),
    # Unified programmes (EU from 2008, GCC from 2023) and no transitivity.
    pytest.param(Q("DE", "FR", "AEOC", "2024-01-01"), same("EU-AEO"), id="eu-programme"),
    pytest.param(Q("DE", "FR", "AEO", "2007-12-31"), no(NONE), id="eu-before-programme"),
    pytest.param(Q("SA", "AE", "AEO", "2023-01-01"), same("GCC-AEO"), id="gcc-programme"),
    pytest.param(Q("SA", "AE", "AEO", "2022-12-31"), no(NONE), id="gcc-before-programme"),
    pytest.param(Q("JP", "MD", "AEOS", "2024-01-01"), no(NONE), id="no-transitivity"),
]


@pytest.mark.parametrize(("q", "expected"), FACTS)
def test_fact(real: Recogniser, q: Q, expected: E) -> None:
    answer = real.check(q.r, q.i, q.t, q.d, mode=q.mode, strict=q.strict)
    assert answer.recognised is expected.recognised
    assert answer.arrangements == expected.arrangements
    assert answer.programme == expected.programme
    assert tuple((x.arrangement, x.code) for x in answer.reasons) == expected.reasons


def test_signature_fallback_is_flagged(real: Recogniser) -> None:
    answer = real.check("CL", "MX", "AEO", "2018-07-21")
    assert S in answer.warnings
    assert answer.certainty.value == "uncertain"
    strict = real.check("CL", "MX", "AEO", "2020-01-01", strict=True)
    assert not strict.recognised
    assert ("PA-MRA", "NO_DATE") in {(x.arrangement, x.code) for x in strict.reasons}


def test_month_only_signature_is_flagged(real: Recogniser) -> None:
    answer = real.check("AR", "MX", "AEO", "2025-06-01")
    assert set(answer.warnings) == {S, M}


def test_confirmed_answer(real: Recogniser) -> None:
    answer = real.check("CN", "AU", "AEO", "2023-12-14")
    assert answer.warnings == ()
    assert answer.certainty.value == "confirmed"


def test_uk_is_not_a_code(real: Recogniser) -> None:
    with pytest.raises(QuestionError, match="'UK'"):
        real.check("FR", "UK", "AEOS", "2021-01-01")

"""Rules 0-7 of data/README.md, one table row per case, against the small base world.

Expected values are derived by hand from the rules and the world's facts (tests/registry/
worlds.py), never from running the resolver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import pytest

from registry.errors import QuestionError
from registry.resolver import Recogniser

from .worlds import recogniser

M = "date known to the month only"
S = "effective date not found; signature date used"


def only(modes: str) -> str:
    return f"covers only modes: {modes}"


@dataclass(frozen=True)
class Q:
    r: str
    i: str
    t: str
    d: str
    mode: str | None = None
    strict: bool = False


@dataclass(frozen=True)
class E:
    recognised: bool
    arrangements: tuple[str, ...] = ()
    programme: str | None = None
    reasons: tuple[tuple[str | None, str], ...] = ()
    warnings: frozenset[str] = field(default_factory=frozenset)
    certainty: str | None = None  # None: "uncertain" iff warnings, else "confirmed"


def yes(*arrangements: str, warn: tuple[str, ...] = (), cert: str | None = None) -> E:
    return E(True, arrangements, None, (), frozenset(warn), cert)


def same(programme: str, warn: tuple[str, ...] = (), cert: str | None = None) -> E:
    return E(True, (), programme, (), frozenset(warn), cert)


def no(*reasons: tuple[str | None, str], warn: tuple[str, ...] = (), cert: str | None = None) -> E:
    return E(False, (), None, reasons, frozenset(warn), cert)


NONE = (None, "NO_ARRANGEMENT")

CASES = [
    # Rule 2: same programme.
    pytest.param(Q("JP", "JP", "AEO", "2000-01-01"), same("JP-AEO"), id="r2-same-administration"),
    pytest.param(Q("FR", "DE", "AEOC", "2010-01-01"), same("BLOC-AEO"), id="r2-same-union"),
    pytest.param(
        Q("BLOC", "FR", "AEOS", "2010-01-01"), same("BLOC-AEO"), id="r2-union-recognises-member"
    ),
    pytest.param(
        Q("FR", "BLOC", "AEOF", "2010-01-01"), same("BLOC-AEO"), id="r2-member-recognises-union"
    ),
    pytest.param(Q("FR", "DE", "AEO", "2005-01-01"), no(NONE), id="r2-before-union-programme"),
    # Rule 1: membership before and after a join or an exit.
    pytest.param(Q("FR", "HR", "AEO", "2013-06-30"), no(NONE), id="r1-join-day-before"),
    pytest.param(Q("FR", "HR", "AEOC", "2013-07-01"), same("BLOC-AEO"), id="r1-join-day"),
    pytest.param(Q("JP", "HR", "AEO", "2013-06-30"), no(NONE), id="r1-partner-before-join"),
    pytest.param(Q("JP", "HR", "AEOS", "2013-07-01"), yes("BLOC-JP"), id="r1-partner-on-join"),
    pytest.param(Q("JP", "GB", "AEOS", "2020-12-31"), yes("BLOC-JP"), id="r1-last-day-in-union"),
    pytest.param(Q("JP", "GB", "AEOS", "2021-01-01"), yes("GB-JP"), id="r1-first-day-out"),
    pytest.param(
        Q("FR", "GB", "AEOC", "2020-12-31"), same("BLOC-AEO"), id="r1-exit-same-programme-before"
    ),
    pytest.param(Q("FR", "GB", "AEOC", "2021-01-01"), no(NONE), id="r1-exit-no-arrangement-after"),
    pytest.param(
        Q("JP", "BLOC", "AEOS", "2012-01-01"), yes("BLOC-JP"), id="r1-union-code-as-issuer"
    ),
    pytest.param(
        Q("BLOC", "JP", "AEO", "2012-01-01"), yes("BLOC-JP"), id="r1-union-code-as-recogniser"
    ),
    # Rule 0: month-only dates in each role.
    pytest.param(
        Q("NO", "PL", "AEO", "2004-05-31"),
        no(NONE, warn=(M,)),
        id="r0-membership-from-month-before",
    ),
    pytest.param(
        Q("NO", "PL", "AEO", "2004-06-01"),
        yes("BLOC-NO", warn=(M,)),
        id="r0-membership-from-month-after",
    ),
    pytest.param(
        Q("NO", "IT", "AEOS", "2030-02-28"),
        yes("BLOC-NO", warn=(M,)),
        id="r0-membership-until-month-before",
    ),
    pytest.param(
        Q("NO", "IT", "AEO", "2030-03-01"),
        no(NONE, warn=(M,)),
        id="r0-membership-until-month-from-first",
    ),
    pytest.param(
        Q("JP", "NZ", "AEO", "2008-05-31"),
        no(("JP-NZ", "NOT_YET_EFFECTIVE"), warn=(S, M)),
        id="r0-signed-month-before",
    ),
    pytest.param(
        Q("JP", "NZ", "AEO", "2008-06-01"), yes("JP-NZ", warn=(S, M)), id="r0-signed-month-after"
    ),
    pytest.param(
        Q("KR", "FR", "AEOC", "2019-03-31"),
        no(("KR-BLOC", "NOT_YET_EFFECTIVE"), warn=(M,)),
        id="r0-effective-month-before",
    ),
    pytest.param(
        Q("KR", "FR", "AEOC", "2019-04-01"),
        yes("KR-BLOC", warn=(M,)),
        id="r0-effective-month-after",
    ),
    pytest.param(
        Q("NZ", "CA", "AEO", "2019-06-30"),
        no(("NZ-CA", "NOT_YET_EFFECTIVE"), warn=(M,)),
        id="r0-direction-month-before",
    ),
    pytest.param(
        Q("NZ", "CA", "AEO", "2019-07-01"), yes("NZ-CA", warn=(M,)), id="r0-direction-month-after"
    ),
    pytest.param(
        Q("KR", "NZ", "AEO", "2012-01-31", "sea"),
        no(("KR-NZ", "NOT_YET_EFFECTIVE"), warn=(M,)),
        id="r0-mode-month-before",
    ),
    pytest.param(
        Q("KR", "NZ", "AEO", "2012-02-01", "sea"), yes("KR-NZ", warn=(M,)), id="r0-mode-month-after"
    ),
    pytest.param(
        Q("KR", "CA", "AEO", "2020-05-31"), yes("KR-CA", warn=(M,)), id="r0-terminated-month-before"
    ),
    pytest.param(
        Q("KR", "CA", "AEO", "2020-06-01"),
        no(("KR-CA", "TERMINATED"), warn=(M,)),
        id="r0-terminated-month-first-day",
    ),
    pytest.param(
        Q("AU", "SG", "AEO", "2019-12-31"),
        yes("AU-SG", warn=(M,)),
        id="r0-suspension-from-month-before",
    ),
    pytest.param(
        Q("AU", "SG", "AEO", "2020-01-01"),
        no(("AU-SG", "SUSPENDED"), warn=(M,)),
        id="r0-suspension-from-month-first-day",
    ),
    pytest.param(
        Q("AU", "SG", "AEO", "2020-03-31"),
        no(("AU-SG", "SUSPENDED"), warn=(M,)),
        id="r0-suspension-until-month-last-day",
    ),
    pytest.param(
        Q("AU", "SG", "AEO", "2020-04-01"),
        yes("AU-SG", warn=(M,)),
        id="r0-suspension-until-month-next",
    ),
    # Rule 3: directions.
    pytest.param(
        Q("US", "DE", "AEOS", "2012-06-30"),
        no(("US-BLOC", "NOT_YET_EFFECTIVE")),
        id="r3-direction-us-before",
    ),
    pytest.param(Q("US", "DE", "AEOC", "2012-07-01"), yes("US-BLOC"), id="r3-direction-us-from"),
    pytest.param(
        Q("DE", "US", "CTPAT", "2013-01-30"),
        no(("US-BLOC", "NOT_YET_EFFECTIVE")),
        id="r3-direction-bloc-before",
    ),
    pytest.param(Q("DE", "US", "CTPAT", "2013-01-31"), yes("US-BLOC"), id="r3-direction-bloc-from"),
    pytest.param(
        Q("NZ", "CA", "AEO", "2019-01-01"),
        no(("NZ-CA", "NOT_YET_EFFECTIVE"), warn=(M,)),
        id="r3-direction-one-way-only",
    ),
    pytest.param(Q("CA", "NZ", "AEO", "2019-01-01"), yes("NZ-CA"), id="r3-direction-other-way"),
    # Rule 3: signature fallback and effective dates.
    pytest.param(
        Q("CN", "AU", "AEO", "2023-12-13"),
        no(("CN-AU", "NOT_YET_EFFECTIVE")),
        id="r3-effective-not-signed",
    ),
    pytest.param(Q("CN", "AU", "AEO", "2023-12-14"), yes("CN-AU"), id="r3-effective-day"),
    # Rule 3: modes, and modes combined with a base date.
    pytest.param(
        Q("HK", "CN", "ADVANCED", "2014-05-17", "road"),
        no(("CN-HK", "NOT_YET_EFFECTIVE"), warn=(S, M)),
        id="r3-mode-road-before",
    ),
    pytest.param(
        Q("HK", "CN", "ADVANCED", "2014-05-18", "road"),
        yes("CN-HK", warn=(S, M)),
        id="r3-mode-road-from",
    ),
    pytest.param(
        Q("HK", "CN", "ADVANCED", "2014-05-18", "air"),
        no(("CN-HK", "NOT_YET_EFFECTIVE"), warn=(S, M)),
        id="r3-mode-air-not-yet",
    ),
    pytest.param(
        Q("HK", "CN", "ADVANCED", "2014-09-01", "air"),
        yes("CN-HK", warn=(S, M)),
        id="r3-mode-air-from",
    ),
    pytest.param(
        Q("HK", "CN", "ADVANCED", "2015-01-01", "rail"),
        no(("CN-HK", "MODE_NOT_COVERED")),
        id="r3-mode-not-listed",
    ),
    pytest.param(
        Q("HK", "CN", "ADVANCED", "2014-08-31"),
        no(("CN-HK", "NOT_YET_EFFECTIVE"), warn=(S, only("road, air, sea"), M)),
        id="r3-no-mode-latest-date-before",
    ),
    pytest.param(
        Q("HK", "CN", "ADVANCED", "2014-09-01"),
        yes("CN-HK", warn=(S, only("road, air, sea"), M)),
        id="r3-no-mode-latest-date-from",
    ),
    pytest.param(
        Q("IN", "FR", "AEOC", "2020-06-01", "rail"),
        no(("IN-BLOC", "NOT_YET_EFFECTIVE")),
        id="r3-mode-and-base-later-base",
    ),
    pytest.param(
        Q("IN", "FR", "AEOC", "2021-01-01", "rail"),
        yes("IN-BLOC"),
        id="r3-mode-and-base-both-passed",
    ),
    pytest.param(
        Q("IN", "FR", "AEOC", "2021-01-01", "road"),
        no(("IN-BLOC", "MODE_NOT_COVERED")),
        id="r3-mode-and-base-other-mode",
    ),
    pytest.param(
        Q("IN", "FR", "AEOC", "2021-01-01"),
        yes("IN-BLOC", warn=(only("rail"),)),
        id="r3-mode-and-base-no-mode",
    ),
    pytest.param(
        Q("KR", "NZ", "AEO", "2013-01-01", "road"),
        no(("KR-NZ", "MODE_NOT_COVERED")),
        id="r3-mode-not-covered-road",
    ),
    # Rule 3: termination.
    pytest.param(Q("KR", "MX", "AEO", "2019-12-31"), yes("KR-MX"), id="r3-terminated-day-before"),
    pytest.param(
        Q("KR", "MX", "AEO", "2020-01-01"), no(("KR-MX", "TERMINATED")), id="r3-terminated-day"
    ),
    # Rule 3: suspensions, both ways and one way.
    pytest.param(
        Q("AU", "NZ", "AEO", "2020-03-01"),
        no(("AU-NZ", "SUSPENDED")),
        id="r3-suspended-both-ways-1",
    ),
    pytest.param(
        Q("NZ", "AU", "AEO", "2020-03-01"),
        no(("AU-NZ", "SUSPENDED")),
        id="r3-suspended-both-ways-2",
    ),
    pytest.param(Q("AU", "NZ", "AEO", "2020-06-01"), yes("AU-NZ"), id="r3-suspension-until-day"),
    pytest.param(
        Q("AU", "CA", "AEO", "2021-01-01"), no(("AU-CA", "SUSPENDED")), id="r3-suspended-one-way"
    ),
    pytest.param(
        Q("CA", "AU", "AEO", "2021-01-01"), yes("AU-CA"), id="r3-suspended-one-way-other-way"
    ),
    pytest.param(
        Q("SG", "AU", "AEO", "2020-02-01"), yes("AU-SG"), id="r3-suspension-issuer-only-other-way"
    ),
    # Rule 3: type scopes.
    pytest.param(
        Q("JP", "FR", "AEOC", "2015-01-01"),
        no(("BLOC-JP", "TYPE_NOT_COVERED")),
        id="r3-type-not-covered",
    ),
    pytest.param(Q("JP", "FR", "AEOS", "2015-01-01"), yes("BLOC-JP"), id="r3-type-covered"),
    pytest.param(
        Q("FR", "JP", "AEO", "2015-01-01"), yes("BLOC-JP"), id="r3-type-unlisted-party-all-types"
    ),
    pytest.param(
        Q("AU", "CN", "GENERAL", "2024-01-01"),
        no(("CN-AU", "TYPE_NOT_COVERED")),
        id="r3-type-general-not-covered",
    ),
    pytest.param(Q("AU", "CN", "ADVANCED", "2024-01-01"), yes("CN-AU"), id="r3-type-advanced"),
    # Plurilateral and bloc-to-bloc.
    pytest.param(Q("CL", "PE", "AEO", "2018-07-21"), yes("PA"), id="plurilateral-applies"),
    pytest.param(
        Q("PE", "CL", "AEO", "2018-07-20"),
        no(("PA", "NOT_YET_EFFECTIVE")),
        id="plurilateral-not-yet",
    ),
    pytest.param(Q("AR", "CL", "AEO", "2025-06-01"), yes("MERCO-PA"), id="bloc-across-sides"),
    pytest.param(
        Q("CL", "AR", "AEO", "2025-05-31"),
        no(("MERCO-PA", "NOT_YET_EFFECTIVE")),
        id="bloc-across-not-yet",
    ),
    pytest.param(
        Q("AR", "BR", "AEO", "2025-06-01"), no(("MERCO-PA", "SAME_SIDE")), id="bloc-same-side"
    ),
    pytest.param(
        Q("CL", "CO", "AEO", "2025-06-01"), yes("PA"), id="bloc-same-side-but-plurilateral"
    ),
    pytest.param(
        Q("CL", "CO", "AEO", "2018-07-20"),
        no(("PA", "NOT_YET_EFFECTIVE"), ("MERCO-PA", "SAME_SIDE")),
        id="reasons-per-arrangement-dataset-order",
    ),
    # Undated arrangements and strict mode (rule 7).
    pytest.param(
        Q("SG", "TH", "AEO", "2020-01-01"), no(("SG-TH", "NO_DATE")), id="undated-never-applies"
    ),
    pytest.param(
        Q("SG", "TH", "AEO", "2020-01-01", strict=True),
        no(("SG-TH", "NO_DATE")),
        id="undated-strict",
    ),
    pytest.param(
        Q("JP", "NZ", "AEO", "2010-01-01", strict=True),
        no(("JP-NZ", "NO_DATE")),
        id="strict-no-signature-fallback",
    ),
    pytest.param(
        Q("US", "DE", "AEOS", "2012-07-01", strict=True),
        yes("US-BLOC"),
        id="strict-directions-count",
    ),
    pytest.param(
        Q("CN", "AU", "AEO", "2024-01-01", strict=True), yes("CN-AU"), id="strict-effective-counts"
    ),
    pytest.param(
        Q("HK", "CN", "ADVANCED", "2014-05-18", "road", strict=True),
        yes("CN-HK"),
        id="strict-mode-date-alone",
    ),
    pytest.param(
        Q("CN", "HK", "AEO", "2014-05-18", "sea", strict=True),
        no(("CN-HK", "NOT_YET_EFFECTIVE")),
        id="strict-mode-date-alone-not-yet",
    ),
    # Rule 4: reason precedence.
    pytest.param(
        Q("BO", "PY", "AEO", "2020-01-01"),
        no(("BLOC2", "SAME_SIDE")),
        id="order-same-side-before-no-date",
    ),
    pytest.param(Q("BO", "EC", "AEO", "2020-01-01"), no(("BLOC2", "NO_DATE")), id="order-no-date"),
    pytest.param(
        Q("HK", "CN", "ADVANCED", "2013-01-01", "rail"),
        no(("CN-HK", "MODE_NOT_COVERED")),
        id="order-mode-before-not-yet",
    ),
    pytest.param(
        Q("VN", "KH", "A2", "2019-06-01"),
        no(("VN-KH", "NOT_YET_EFFECTIVE")),
        id="order-not-yet-before-type",
    ),
    pytest.param(
        Q("VN", "KH", "A2", "2030-06-01"),
        no(("VN-KH", "TERMINATED")),
        id="order-terminated-before-type",
    ),
    pytest.param(
        Q("VN", "KH", "A2", "2022-06-01"),
        no(("VN-KH", "SUSPENDED")),
        id="order-suspended-before-type",
    ),
    pytest.param(
        Q("VN", "KH", "A2", "2024-01-01"), no(("VN-KH", "TYPE_NOT_COVERED")), id="order-type-last"
    ),
    pytest.param(Q("VN", "KH", "A1", "2024-01-01"), yes("VN-KH"), id="order-all-pass"),
    # Rule 5: no transitivity.
    pytest.param(Q("JP", "MD", "AEO", "2023-01-01"), no(NONE), id="r5-not-transitive"),
    pytest.param(Q("MD", "JP", "AEO", "2023-01-01"), no(NONE), id="r5-not-transitive-reverse"),
    # Rule 4: certainty.
    pytest.param(
        Q("CN", "BY", "T1", "2020-01-01"),
        yes("CN-BY", cert="uncertain"),
        id="certainty-uncertain-union",
    ),
    pytest.param(
        Q("CN", "BY", "T2", "2020-01-01"),
        no(("CN-BY", "TYPE_NOT_COVERED"), cert="uncertain"),
        id="certainty-uncertain-union-no",
    ),
    pytest.param(
        Q("CN", "BY", "AEO", "2017-01-01"),
        no(("CN-BY", "NOT_YET_EFFECTIVE"), cert="uncertain"),
        id="certainty-before-union-programme",
    ),
    pytest.param(
        Q("AM", "BY", "T2", "2019-01-01"),
        same("XU-AEO", cert="uncertain"),
        id="certainty-uncertain-union-programme",
    ),
    pytest.param(
        Q("EG", "JO", "AEO", "2017-01-01"),
        yes("EG-JO", cert="uncertain"),
        id="certainty-uncertain-arrangement",
    ),
    pytest.param(
        Q("JO", "EG", "AEO", "2016-05-09"),
        no(("EG-JO", "NOT_YET_EFFECTIVE"), cert="uncertain"),
        id="certainty-uncertain-arrangement-no",
    ),
]


@pytest.fixture(scope="module")
def base() -> Recogniser:
    return recogniser()


@pytest.mark.parametrize(("q", "expected"), CASES)
def test_rule(base: Recogniser, q: Q, expected: E) -> None:
    answer = base.check(q.r, q.i, q.t, q.d, mode=q.mode, strict=q.strict)
    assert answer.recognised is expected.recognised
    assert answer.arrangements == expected.arrangements
    assert answer.programme == expected.programme
    assert tuple((r.arrangement, r.code) for r in answer.reasons) == expected.reasons
    assert frozenset(answer.warnings) == expected.warnings
    assert len(set(answer.warnings)) == len(answer.warnings), "warnings are deduplicated"
    certainty = expected.certainty or ("uncertain" if expected.warnings else "confirmed")
    assert answer.certainty.value == certainty
    assert answer.dataset == base.version
    assert all(r.detail for r in answer.reasons)
    assert answer.explanation.startswith(f"On {q.d}")


ERRORS = [
    pytest.param(Q("UK", "FR", "AEOC", "2020-01-01"), "'UK'", id="unknown-recogniser-UK"),
    pytest.param(Q("JP", "ZZ", "AEO", "2020-01-01"), "'ZZ'", id="unknown-issuer"),
    pytest.param(Q("EU", "JP", "AEO", "2020-01-01"), "'EU'", id="union-not-in-dataset"),
    pytest.param(Q("jp", "FR", "AEOS", "2020-01-01"), "'jp'", id="lowercase-code"),
    pytest.param(Q("JP", "FR", "AEOX", "2020-01-01"), "'AEOX'", id="unknown-type"),
    pytest.param(Q("JP", "FR", "AEOC", "2005-01-01"), "'AEOC'", id="type-before-union-programme"),
    pytest.param(Q("JP", "HR", "AEOS", "2013-06-30"), "'AEOS'", id="type-before-join"),
    pytest.param(Q("JP", "GB", "AEO", "2021-01-01"), "'AEO'", id="type-after-exit-own-programme"),
    pytest.param(Q("JP", "NZ", "AEO", "2020-02-30"), "'2020-02-30'", id="date-not-calendar"),
    pytest.param(Q("JP", "NZ", "AEO", "2020/01/01"), "'2020/01/01'", id="date-slashes"),
    pytest.param(Q("JP", "NZ", "AEO", "20200101"), "'20200101'", id="date-basic-format"),
    pytest.param(Q("JP", "NZ", "AEO", "2020-01"), "'2020-01'", id="date-month-only-question"),
    pytest.param(Q("JP", "NZ", "AEO", "2020-01-01", "space"), "'space'", id="unknown-mode"),
    pytest.param(Q("JP", "NZ", "AEO", "2020-01-01", "ROAD"), "'ROAD'", id="mode-wrong-case"),
]


@pytest.mark.parametrize(("q", "named"), ERRORS)
def test_bad_question_is_an_error(base: Recogniser, q: Q, named: str) -> None:
    with pytest.raises(QuestionError) as caught:
        base.check(q.r, q.i, q.t, q.d, mode=q.mode, strict=q.strict)
    assert named in str(caught.value)


def test_question_date_object_and_string_agree(base: Recogniser) -> None:
    by_text = base.check("JP", "FR", "AEOS", "2015-01-01")
    by_date = base.check("JP", "FR", "AEOS", date(2015, 1, 1))
    assert by_text == by_date
    with pytest.raises(QuestionError):
        base.check("JP", "FR", "AEOS", datetime(2015, 1, 1))  # noqa: DTZ001 - the point of it


def test_answer_is_frozen(base: Recogniser) -> None:
    answer = base.check("JP", "FR", "AEOS", "2015-01-01")
    with pytest.raises(AttributeError):
        answer.recognised = False  # type: ignore[misc]  # frozen on purpose


def test_programme_types_and_known_codes(base: Recogniser) -> None:
    assert base.programme_types("GB", "2020-12-31") == ("BLOC-AEO", ("AEOC", "AEOS", "AEOF"))
    assert base.programme_types("GB", "2021-01-01") == ("GB-AEO", ("AEOC", "AEOS", "AEOF"))
    assert base.programme_types("FR", "2007-12-31") == ("FR-AEO", ("AEO",))
    assert base.programme_types("BLOC", "2010-01-01") == ("BLOC-AEO", ("AEOC", "AEOS", "AEOF"))
    assert base.programme_types("TH", "2010-01-01") == ("TH-AEO", ("AEO",))
    assert base.is_known_code("XK")
    assert base.is_known_code("BLOC")
    assert base.is_known_code("HK")
    assert not base.is_known_code("UK")
    assert not base.is_known_code("EU")


def test_answer_json_shape(base: Recogniser) -> None:
    document: dict[str, Any] = base.check("CL", "CO", "AEO", "2018-07-20").to_json()
    assert document["recognised"] is False
    assert document["arrangements"] == []
    assert document["programme"] is None
    assert document["reasons"][0] == {
        "arrangement": "PA",
        "code": "NOT_YET_EFFECTIVE",
        "detail": document["reasons"][0]["detail"],
    }
    assert document["certainty"] == "confirmed"
    assert document["dataset"] == base.version


def test_in_force_and_partners(base: Recogniser) -> None:
    ids = [item.arrangement.id for item in base.in_force("2020-03-01")]
    assert "AU-NZ" not in ids  # suspended both ways
    assert "AU-CA" in ids  # suspended one way only
    assert "SG-TH" not in ids  # no date
    assert "KR-MX" not in ids  # terminated
    au_ca = next(i for i in base.in_force("2020-03-01") if i.arrangement.id == "AU-CA")
    assert not au_ca.both_ways
    assert [(d.recogniser, d.issuer) for d in au_ca.directions] == [("CA", "AU")]
    partners = base.partners("JP", "2015-01-01")
    assert {(p.party, p.arrangement) for p in partners.recognised_by} == {
        ("BLOC", "BLOC-JP"),
        ("NZ", "JP-NZ"),
    }
    bloc = next(p for p in partners.recognises if p.party == "BLOC")
    assert bloc.types == ("AEOS", "AEOF")
    fr = base.partners("FR", "2015-01-01")
    assert fr.acts_as == ("FR", "BLOC")
    assert fr.same_programme[0][:2] == ("BLOC", "BLOC-AEO")
    assert "DE" in fr.same_programme[0][2]
    assert "GB" in fr.same_programme[0][2]

"""Publishing checks each record's issuer and type against the registry on the record's date;
the answers are memoised per (code, day), so every bad record must still be reported."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.datasets import packaged_bytes, recogniser_for
from gateway.issuer_log import check_issuers
from gateway.records import RecordInputError
from tests.gateway.nodes import bulk_records, records_of


def rows(issuer: str, day: str, count: int, **change: Any) -> list[dict[str, Any]]:
    out = bulk_records(count, issuer=issuer)
    for r in out:
        r.update(status_date=day, valid_from=day, last_validation=day, **change)
    return out


def test_every_bad_record_is_reported_though_answers_are_memoised() -> None:
    recogniser = recogniser_for(packaged_bytes())
    good = rows("DE", "2020-01-01", 50)
    # Croatia joined the EU (and its customs union) on 2013-07-01.
    early_hr = rows("HR", "2012-01-01", 3)
    wrong_type = rows("FR", "2020-01-01", 2, type="CTPAT")
    records = records_of([*good, *early_hr, *good[:1], *wrong_type], "EU")
    with pytest.raises(RecordInputError) as caught:
        check_issuers(records, "EU", recogniser)
    problems = caught.value.problems
    assert len(problems) == 5, problems
    assert sum("HR is not a member of EU on 2012-01-01" in p for p in problems) == 3
    assert sum("'CTPAT' is not a type of programme" in p for p in problems) == 2
    # The same records alone are fine.
    check_issuers(records_of(good, "EU"), "EU", recogniser)

"""Hypothesis properties of the resolver over the base world and generated bilateral worlds."""

from __future__ import annotations

import functools
import re
from datetime import date, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from registry.model import MODES, FactDate
from registry.resolver import Answer, Recogniser

from .worlds import BASE, recogniser, world


def _change_days(document: Any) -> set[date]:
    """Every day on which some fact of ``document`` may change (a superset is fine)."""
    days: set[date] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", value):
            fact = FactDate.parse(value)
            days.update((fact.as_start(), fact.as_end()))

    walk(document)
    return days


CHANGES = sorted(_change_days(BASE))
CODES = sorted(
    {p for a in BASE["arrangements"] for p in a["parties"]}
    | {m["code"] for u in BASE["unions"] for m in u["members"]}
    | {u["code"] for u in BASE["unions"]}
    | {"FJ"}
)
IDS = [a["id"] for a in BASE["arrangements"]]


@functools.cache
def base() -> Recogniser:
    return recogniser()


@functools.cache
def without(arrangement_id: str) -> Recogniser:
    return recogniser(world(drop=(arrangement_id,)))


days = st.one_of(
    st.sampled_from(CHANGES).flatmap(
        lambda d: st.integers(-2, 1).map(lambda k: d + timedelta(days=k))
    ),
    st.dates(min_value=date(1950, 1, 1), max_value=date(2040, 12, 31)),
)
modes = st.sampled_from((None, *MODES))


@st.composite
def questions(draw: st.DrawFn) -> tuple[str, str, str, date, str | None, bool]:
    r = draw(st.sampled_from(CODES))
    i = draw(st.sampled_from(CODES))
    day = draw(days)
    _, types = base().programme_types(i, day)
    return r, i, draw(st.sampled_from(types)), day, draw(modes), draw(st.booleans())


def _essence(answer: Answer) -> tuple[Any, ...]:
    return (
        answer.recognised,
        answer.arrangements,
        answer.programme,
        answer.warnings,
        tuple((r.arrangement, r.code) for r in answer.reasons),
        answer.certainty,
    )


@given(questions())
def test_answer_constant_between_fact_changes(
    q: tuple[str, str, str, date, str | None, bool],
) -> None:
    r, i, t, day, mode, strict = q
    following = day + timedelta(days=1)
    if following in CHANGES:
        return
    first = base().check(r, i, t, day, mode=mode, strict=strict)
    second = base().check(r, i, t, following, mode=mode, strict=strict)
    assert _essence(first) == _essence(second)


@given(questions())
def test_strict_never_says_yes_where_default_says_no(
    q: tuple[str, str, str, date, str | None, bool],
) -> None:
    r, i, t, day, mode, _ = q
    if base().check(r, i, t, day, mode=mode, strict=True).recognised:
        assert base().check(r, i, t, day, mode=mode).recognised


@given(questions(), st.sampled_from(IDS))
def test_removing_an_arrangement_never_turns_no_into_yes(
    q: tuple[str, str, str, date, str | None, bool], removed: str
) -> None:
    r, i, t, day, mode, strict = q
    if without(removed).check(r, i, t, day, mode=mode, strict=strict).recognised:
        assert base().check(r, i, t, day, mode=mode, strict=strict).recognised


fact_dates = st.one_of(
    st.none(),
    st.dates(min_value=date(2000, 1, 1), max_value=date(2030, 12, 31)).map(date.isoformat),
    st.dates(min_value=date(2000, 1, 1), max_value=date(2030, 12, 31)).map(
        lambda d: d.isoformat()[:7]
    ),
)


@st.composite
def plain_bilaterals(draw: st.DrawFn) -> dict[str, Any]:
    """A bilateral arrangement without directions, recognised_types, modes or suspensions."""
    return {
        "id": "LA-NP",
        "kind": "bilateral",
        "parties": ["LA", "NP"],
        "signed": draw(fact_dates),
        "effective": draw(fact_dates),
        "terminated": draw(fact_dates),
        "certainty": draw(st.sampled_from(("confirmed", "uncertain"))),
    }


@given(
    arrangement=plain_bilaterals(),
    day=st.dates(min_value=date(1999, 1, 1), max_value=date(2032, 1, 1)),
    mode=modes,
    strict=st.booleans(),
)
def test_plain_bilateral_is_symmetric(
    arrangement: dict[str, Any], day: date, mode: str | None, strict: bool
) -> None:
    document: dict[str, Any] = {"arrangements": [arrangement]}
    world_ = recogniser(document)
    one = world_.check("LA", "NP", "AEO", day, mode=mode, strict=strict)
    other = world_.check("NP", "LA", "AEO", day, mode=mode, strict=strict)
    assert _essence(one) == _essence(other)

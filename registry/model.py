"""The typed, frozen model of a recognition registry.

Invariants (established by :mod:`registry.dataset`, relied on by :mod:`registry.resolver`):

- every object is immutable once built; mappings are read-only views;
- every code an object names is known (rule 0): an officially assigned ISO 3166-1 alpha-2 code,
  ``XK``, or the code of a union of the same dataset;
- a :class:`FactDate` remembers whether only its month is known, and resolves itself in one
  place, fail closed, by the role it plays (rule 0): :meth:`FactDate.as_start` for a date that
  enables recognition, :meth:`FactDate.as_end` for a date that ends it.
"""

from __future__ import annotations

import calendar
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import Any

#: The transport modes an arrangement may phase by, in the order reports list them.
MODES: tuple[str, ...] = ("road", "air", "sea", "rail")

#: Warning raised whenever a month-only date is resolved (rule 0).
MONTH_ONLY_WARNING = "date known to the month only"
#: Warning raised whenever the signature date stands in for the effective date (rule 3).
SIGNATURE_WARNING = "effective date not found; signature date used"
#: Prefix of the warning raised when an arrangement lists fewer than all four modes (rule 3).
MODES_WARNING_PREFIX = "covers only modes: "

_FULL_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_MONTH_DATE = re.compile(r"(\d{4})-(\d{2})")


def modes_warning(listed: tuple[str, ...]) -> str:
    """The warning for an arrangement that covers only the ``listed`` modes."""
    return MODES_WARNING_PREFIX + ", ".join(m for m in MODES if m in listed)


class DateRole(Enum):
    """What a date does to recognition, which decides how a month-only date resolves."""

    START = "start"  # signed, effective, directions, modes, membership from, suspension until
    END = "end"  # terminated, membership until, suspension from


@dataclass(frozen=True, slots=True)
class FactDate:
    """A date of the dataset: a full ISO date, or a month when only the month is known."""

    year: int
    month: int
    day: int | None = None

    @classmethod
    def parse(cls, text: str) -> FactDate:
        """Parse ``YYYY-MM-DD`` or ``YYYY-MM``; raise :class:`ValueError` naming ``text``."""
        full = _FULL_DATE.fullmatch(text)
        if full:
            year, month, day = (int(g) for g in full.groups())
            try:
                date(year, month, day)
            except ValueError:
                raise ValueError(f"{text!r} is not a calendar date") from None
            return cls(year, month, day)
        month_only = _MONTH_DATE.fullmatch(text)
        if month_only:
            year, month = (int(g) for g in month_only.groups())
            if not 1 <= month <= 12 or year < 1:
                raise ValueError(f"{text!r} is not a calendar month")
            return cls(year, month, None)
        raise ValueError(f"{text!r} is not a date (expected YYYY-MM-DD or YYYY-MM)")

    @property
    def month_only(self) -> bool:
        return self.day is None

    def as_start(self) -> date:
        """Resolve as a date that starts something enabling recognition: a month-only date
        becomes the first day of the following month (the latest it can mean)."""
        if self.day is not None:
            return date(self.year, self.month, self.day)
        if self.month == 12:
            return date(self.year + 1, 1, 1)
        return date(self.year, self.month + 1, 1)

    def as_end(self) -> date:
        """Resolve as a date that ends recognition: a month-only date becomes the first day of
        that month (the earliest it can mean)."""
        return date(self.year, self.month, self.day or 1)

    def resolve(self, role: DateRole) -> date:
        return self.as_start() if role is DateRole.START else self.as_end()

    def warnings(self) -> tuple[str, ...]:
        """The warnings resolving this date raises: the month-only warning, or none."""
        return (MONTH_ONLY_WARNING,) if self.day is None else ()

    def earliest(self) -> date:
        """The earliest day this date can mean (for ordering checks, not for resolution)."""
        return date(self.year, self.month, self.day or 1)

    def latest(self) -> date:
        """The latest day this date can mean (for ordering checks, not for resolution)."""
        if self.day is not None:
            return date(self.year, self.month, self.day)
        return date(self.year, self.month, calendar.monthrange(self.year, self.month)[1])

    def __str__(self) -> str:
        if self.day is None:
            return f"{self.year:04d}-{self.month:02d}"
        return f"{self.year:04d}-{self.month:02d}-{self.day:02d}"


class Certainty(StrEnum):
    CONFIRMED = "confirmed"
    UNCERTAIN = "uncertain"


class Kind(StrEnum):
    BILATERAL = "bilateral"
    PLURILATERAL = "plurilateral"
    BLOC_TO_BLOC = "bloc_to_bloc"


def _empty_map() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Programme:
    """An AEO programme: of one administration, or of a customs union (``administration`` is
    then the union code). ``since`` None means it exists on every date."""

    id: str
    administration: str
    types: tuple[str, ...]
    since: FactDate | None = None
    implied: bool = False
    notes: str | None = None
    sources: tuple[str, ...] = ()

    def has_type(self, type_: str) -> bool:
        return type_ in self.types

    @classmethod
    def implied_for(cls, code: str) -> Programme:
        """The implied programme ``<code>-AEO`` with the single type ``AEO`` (rule 2)."""
        return cls(id=f"{code}-AEO", administration=code, types=("AEO",), implied=True)


@dataclass(frozen=True)
class Membership:
    """``code`` is a member of ``union`` from ``start`` (inclusive) until ``until`` (exclusive;
    None: still a member)."""

    code: str
    union: str
    start: FactDate
    until: FactDate | None = None

    def holds_on(self, day: date) -> bool:
        return self.start.as_start() <= day and (self.until is None or day < self.until.as_end())


@dataclass(frozen=True)
class CustomsUnion:
    """A customs union with one AEO programme; it acts as one party of arrangements."""

    code: str
    name: str
    programme: Programme
    members: tuple[Membership, ...]
    certainty: Certainty = Certainty.CONFIRMED
    notes: str | None = None
    sources: tuple[str, ...] = ()

    def members_on(self, day: date) -> tuple[str, ...]:
        return tuple(m.code for m in self.members if m.holds_on(day))


@dataclass(frozen=True)
class Suspension:
    """Recognition suspended from ``start`` until ``until`` (None: until further notice), for
    one direction when ``recogniser``/``issuer`` are given (either alone matches any
    counterpart), else both."""

    start: FactDate
    until: FactDate | None = None
    recogniser: str | None = None
    issuer: str | None = None

    def matches(self, recogniser: str, issuer: str) -> bool:
        return (self.recogniser is None or self.recogniser == recogniser) and (
            self.issuer is None or self.issuer == issuer
        )


@dataclass(frozen=True)
class Arrangement:
    """A mutual recognition arrangement between ``parties`` (administration or union codes)."""

    id: str
    kind: Kind
    parties: tuple[str, ...]
    title: str = ""
    sides: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    signed: FactDate | None = None
    effective: FactDate | None = None
    terminated: FactDate | None = None
    #: ``(recogniser party, issuer party)`` -> the date that direction took effect.
    directions: Mapping[tuple[str, str], FactDate] = field(default_factory=_empty_map)
    modes: Mapping[str, FactDate] = field(default_factory=_empty_map)
    recognised_types: Mapping[str, frozenset[str]] = field(default_factory=_empty_map)
    suspensions: tuple[Suspension, ...] = ()
    certainty: Certainty = Certainty.CONFIRMED
    notes: str | None = None
    sources: tuple[str, ...] = ()

    def side_of(self, party: str) -> int | None:
        if self.sides is None:
            return None
        for number, side in enumerate(self.sides):
            if party in side:
                return number
        return None

    def same_side(self, recogniser: str, issuer: str) -> bool:
        """True for a bloc-to-bloc pair on one side, which recognise nothing of each other."""
        return self.kind is Kind.BLOC_TO_BLOC and self.side_of(recogniser) == self.side_of(issuer)

    def ordered_pairs(self) -> tuple[tuple[str, str], ...]:
        """Every ``(recogniser, issuer)`` pair of distinct parties, in party order."""
        return tuple((r, i) for r in self.parties for i in self.parties if r != i)

    @property
    def has_date(self) -> bool:
        return bool(self.signed or self.effective or self.directions or self.modes)


@dataclass(frozen=True)
class Administration:
    """A customs administration known to a dataset: its listed programme, if any, and its
    union memberships."""

    code: str
    programme: Programme | None
    memberships: tuple[Membership, ...]


@dataclass(frozen=True)
class Dataset:
    """A validated registry dataset. ``version`` is the lowercase hex SHA-256 of its bytes."""

    version: str
    source: str
    programmes: tuple[Programme, ...]
    unions: tuple[CustomsUnion, ...]
    arrangements: tuple[Arrangement, ...]
    about: str | None = None
    collected: str | None = None

    @functools.cached_property
    def union_codes(self) -> frozenset[str]:
        # Asked on every Check: built once per dataset (a frozen dataclass without slots,
        # so the cache lives in the instance's __dict__).
        return frozenset(u.code for u in self.unions)

    def union(self, code: str) -> CustomsUnion | None:
        return next((u for u in self.unions if u.code == code), None)

    def arrangement(self, arrangement_id: str) -> Arrangement | None:
        return next((a for a in self.arrangements if a.id == arrangement_id), None)

    def administrations(self) -> tuple[Administration, ...]:
        """Every administration the dataset names (not unions), sorted by code."""
        union_codes = self.union_codes
        codes: set[str] = {p.administration for p in self.programmes}
        for union in self.unions:
            codes.update(m.code for m in union.members)
        for arrangement in self.arrangements:
            codes.update(p for p in arrangement.parties if p not in union_codes)
        programmes = {p.administration: p for p in self.programmes}
        memberships: dict[str, list[Membership]] = {}
        for union in self.unions:
            for member in union.members:
                memberships.setdefault(member.code, []).append(member)
        return tuple(
            Administration(code, programmes.get(code), tuple(memberships.get(code, ())))
            for code in sorted(codes)
        )

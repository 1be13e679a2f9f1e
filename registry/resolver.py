"""The resolver: "does R recognise an AEO of type T issued by I on date D, for mode M?"

It implements rules 0-7 of data/README.md exactly. Invariants:

- the index is built once per dataset (:class:`Recogniser` construction) and never changes;
  a question does no I/O and touches only the arrangements in which R and I can act as two
  parties: ``pairs[Pr][Pi]`` for Pr in {R} + R's unions on D, Pi in {I} + I's unions on D;
- every date is resolved once, fail closed, by :class:`~registry.model.FactDate` at index time
  and kept as an ordinal next to the warnings its resolution raises (rule 0);
- a question naming an unknown code, a type the issuing programme does not have, a malformed
  date or an unknown mode raises :class:`~registry.errors.QuestionError` naming the value;
  it is never a silent "not recognised" (rule 6);
- checks run in the order of the reason codes (rule 4), and a check that fails stops the
  evaluation of that (arrangement, direction): later dates are not consulted, so they raise
  no warning;
- ``Answer.arrangements`` and ``Answer.reasons`` follow dataset order; ``Answer.warnings`` is
  deduplicated in the order the warnings were first raised.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

from registry.dataset import default_dataset
from registry.errors import QuestionError
from registry.iso3166 import ADMINISTRATION_CODES
from registry.model import (
    MODES,
    SIGNATURE_WARNING,
    Arrangement,
    Certainty,
    Dataset,
    FactDate,
    Programme,
    modes_warning,
)

# Reason codes, in the order rule 4 gives them; a higher rank got further through the checks.
SAME_SIDE = "SAME_SIDE"
NO_DATE = "NO_DATE"
MODE_NOT_COVERED = "MODE_NOT_COVERED"
NOT_YET_EFFECTIVE = "NOT_YET_EFFECTIVE"
TERMINATED = "TERMINATED"
SUSPENDED = "SUSPENDED"
TYPE_NOT_COVERED = "TYPE_NOT_COVERED"
NO_ARRANGEMENT = "NO_ARRANGEMENT"
REASON_CODES: tuple[str, ...] = (
    SAME_SIDE, NO_DATE, MODE_NOT_COVERED, NOT_YET_EFFECTIVE, TERMINATED, SUSPENDED,
    TYPE_NOT_COVERED,
)
_SAME_SIDE, _NO_DATE, _MODE_NOT_COVERED, _NOT_YET, _TERMINATED, _SUSPENDED, _TYPE, _APPLIES = (
    range(8)
)

#: Index of a question's mode in the per-mode start table; None (no mode given) is 0.
_MODE_SLOT: dict[str | None, int] = {None: 0, **{m: n + 1 for n, m in enumerate(MODES)}}
_NEVER = date.max.toordinal() + 1  # an end that never comes


@dataclass(frozen=True, slots=True)
class Reason:
    """Why one arrangement does not apply (``arrangement`` None: there is no arrangement)."""

    arrangement: str | None
    code: str
    detail: str

    def to_json(self) -> dict[str, str | None]:
        return {"arrangement": self.arrangement, "code": self.code, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to one recognition question (rule 4)."""

    recogniser: str
    issuer: str
    type: str
    at: date
    mode: str | None
    strict: bool
    recognised: bool
    #: Ids of the arrangements that apply, in dataset order.
    arrangements: tuple[str, ...]
    #: The shared programme when rule 2 applies, else None.
    programme: str | None
    warnings: tuple[str, ...]
    reasons: tuple[Reason, ...]
    certainty: Certainty
    #: The dataset version: lowercase hex SHA-256 of the dataset file.
    dataset: str

    @property
    def explanation(self) -> str:
        """One readable paragraph."""
        mode = f" for {self.mode}" if self.mode else ""
        strict = " (strict)" if self.strict else ""
        head = (f"On {self.at.isoformat()}{mode}{strict}, {self.recogniser} "
                f"{'recognises' if self.recognised else 'does not recognise'} "
                f"AEOs of type {self.type} issued by {self.issuer}")
        if self.programme is not None:
            body = f": both fall under the same programme {self.programme} (rule 2)."
        elif self.recognised:
            body = f" under {_join(self.arrangements)}."
        else:
            body = ": " + "; ".join(f"{r.code}: {r.detail}" for r in self.reasons) + "."
        text = head + body
        if self.warnings:
            text += " Warnings: " + "; ".join(self.warnings) + "."
        return text + f" Certainty: {self.certainty.value}. Dataset {self.dataset[:12]}."

    def to_json(self) -> dict[str, object]:
        return {
            "recognised": self.recognised,
            "recogniser": self.recogniser,
            "issuer": self.issuer,
            "type": self.type,
            "at": self.at.isoformat(),
            "mode": self.mode,
            "strict": self.strict,
            "arrangements": list(self.arrangements),
            "programme": self.programme,
            "warnings": list(self.warnings),
            "reasons": [r.to_json() for r in self.reasons],
            "certainty": self.certainty.value,
            "dataset": self.dataset,
            "explanation": self.explanation,
        }


@dataclass(frozen=True, slots=True)
class IssuingProgramme:
    """The programme under which an administration issues AEOs on a date (rule 2)."""

    id: str
    types: tuple[str, ...]
    implied: bool


@dataclass(frozen=True, slots=True)
class DirectionInForce:
    """``recogniser`` recognises ``issuer`` (party codes) under an arrangement on a date, for
    ``modes`` (every listed mode of the arrangement in force; all four when it lists none)."""

    recogniser: str
    issuer: str
    modes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InForce:
    """An arrangement in force on a date: it applies in at least one direction for at least
    one transport mode (types aside)."""

    arrangement: Arrangement
    directions: tuple[DirectionInForce, ...]
    warnings: tuple[str, ...]

    @property
    def both_ways(self) -> bool:
        """Every ordered pair of parties (across sides for bloc_to_bloc) is in force."""
        pairs = {(d.recogniser, d.issuer) for d in self.directions}
        return all((d.issuer, d.recogniser) in pairs for d in self.directions)

    def to_json(self) -> dict[str, object]:
        a = self.arrangement
        return {
            "id": a.id,
            "title": a.title,
            "kind": a.kind.value,
            "parties": list(a.parties),
            "sides": [list(s) for s in a.sides] if a.sides else None,
            "directions": [{"recogniser": d.recogniser, "issuer": d.issuer,
                            "modes": list(d.modes)} for d in self.directions],
            "both_ways": self.both_ways,
            "warnings": list(self.warnings),
            "certainty": (Certainty.UNCERTAIN if self.warnings else a.certainty).value,
        }


@dataclass(frozen=True, slots=True)
class Partner:
    """One recognition link of an administration: ``party`` (a code) under ``arrangement``,
    for ``types`` (of the issuing side) and ``modes``."""

    party: str
    arrangement: str
    as_party: str
    types: tuple[str, ...]
    modes: tuple[str, ...]
    warnings: tuple[str, ...]
    certainty: Certainty

    def to_json(self) -> dict[str, object]:
        return {"party": self.party, "arrangement": self.arrangement, "as": self.as_party,
                "types": list(self.types), "modes": list(self.modes),
                "warnings": list(self.warnings), "certainty": self.certainty.value}


@dataclass(frozen=True, slots=True)
class Partners:
    """Who recognises ``administration`` and whom it recognises, on ``at``."""

    administration: str
    at: date
    acts_as: tuple[str, ...]
    programme: IssuingProgramme
    #: (union, its programme, members on ``at``) for every union whose programme ``administration``
    #: shares on ``at`` (rule 2: recognised through the programme, no arrangement).
    same_programme: tuple[tuple[str, str, tuple[str, ...]], ...]
    recognised_by: tuple[Partner, ...]
    recognises: tuple[Partner, ...]
    dataset: str

    def to_json(self) -> dict[str, object]:
        return {
            "administration": self.administration,
            "at": self.at.isoformat(),
            "acts_as": list(self.acts_as),
            "programme": {"id": self.programme.id, "types": list(self.programme.types),
                          "implied": self.programme.implied},
            "same_programme": [{"union": u, "programme": p, "members": list(m)}
                               for u, p, m in self.same_programme],
            "recognised_by": [p.to_json() for p in self.recognised_by],
            "recognises": [p.to_json() for p in self.recognises],
            "dataset": self.dataset,
        }


# --- the index ------------------------------------------------------------------------------


class _Start:
    """When one direction of an arrangement starts applying for one (mode, strict) slot."""

    __slots__ = ("day", "label", "status", "warnings")

    def __init__(self, status: int, day: int, warnings: tuple[str, ...], label: str) -> None:
        self.status = status
        self.day = day
        self.warnings = warnings
        self.label = label


class _Directed:
    """One arrangement seen from one ordered pair of parties (recogniser Pr, issuer Pi)."""

    __slots__ = ("arrangement", "end", "end_warnings", "issuer", "position", "recogniser",
                 "same_side", "starts", "suspension_warnings", "suspensions", "types",
                 "uncertain")

    def __init__(self, position: int, arrangement: Arrangement, recogniser: str,
                 issuer: str) -> None:
        a = arrangement
        self.position = position
        self.arrangement = a
        self.recogniser = recogniser
        self.issuer = issuer
        self.same_side = a.same_side(recogniser, issuer)
        # starts[2 * mode_slot + strict]
        self.starts = tuple(
            _start(a, recogniser, issuer, mode, strict)
            for mode in (None, *MODES) for strict in (False, True)
        )
        self.end = a.terminated.as_end().toordinal() if a.terminated else _NEVER
        self.end_warnings = a.terminated.warnings() if a.terminated else ()
        matching = [s for s in a.suspensions if s.matches(recogniser, issuer)]
        self.suspensions = tuple(
            (s.start.as_end().toordinal(), s.until.as_start().toordinal() if s.until else _NEVER,
             s.start, s.until)
            for s in matching
        )
        self.suspension_warnings = tuple(
            w for s in matching for d in (s.start, s.until) if d for w in d.warnings()
        )
        types = a.recognised_types.get(issuer)
        self.types = frozenset(types) if types is not None else None
        self.uncertain = a.certainty is Certainty.UNCERTAIN


def _start(a: Arrangement, recogniser: str, issuer: str, mode: str | None,
           strict: bool) -> _Start:
    """Rule 3's start date for one direction and one (mode, strict) slot, fail closed."""
    warnings: list[str] = []
    base: tuple[FactDate, str] | None = None
    direction = a.directions.get((recogniser, issuer))
    if direction is not None:
        base = (direction, f"direction date {recogniser}<-{issuer}")
    elif a.effective is not None:
        base = (a.effective, "effective date")
    elif a.signed is not None and not strict:
        base = (a.signed, "signature date")
    if base is None and not a.modes:
        return _Start(_NO_DATE, 0, (), "no date")
    if a.modes and mode is not None and mode not in a.modes:
        return _Start(_MODE_NOT_COVERED, 0, (), f"modes {', '.join(_listed(a))}")
    candidates: list[tuple[FactDate, str]] = []
    if base is not None:
        if base[1] == "signature date":
            warnings.append(SIGNATURE_WARNING)
        candidates.append(base)
    if a.modes:
        if mode is not None:
            candidates.append((a.modes[mode], f"{mode} date"))
        else:
            listed = _listed(a)
            if len(listed) < len(MODES):
                warnings.append(modes_warning(listed))
            candidates.extend((a.modes[m], f"{m} date") for m in listed)
    for day, _ in candidates:
        warnings.extend(day.warnings())
    day, label = max(candidates, key=lambda c: c[0].as_start())
    shown = f"{day} (read as {day.as_start().isoformat()})" if day.month_only else str(day)
    return _Start(_APPLIES, day.as_start().toordinal(), tuple(dict.fromkeys(warnings)),
                  f"{label} {shown}")


def _listed(a: Arrangement) -> tuple[str, ...]:
    return tuple(m for m in MODES if m in a.modes)


class _Code:
    """What the index knows of one code: its union memberships and issuing programmes."""

    __slots__ = ("boundaries", "code", "is_union", "memberships", "programmes", "uncertain",
                 "warnings")

    def __init__(self, code: str, *, is_union: bool,
                 memberships: tuple[tuple[int, int, str], ...],
                 timeline: list[tuple[int, IssuingProgramme]],
                 warnings: tuple[str, ...], uncertain: bool) -> None:
        self.code = code
        self.is_union = is_union
        self.memberships = memberships  # (start ordinal, end ordinal, union code)
        self.boundaries = [start for start, _ in timeline]
        self.programmes = [programme for _, programme in timeline]
        self.warnings = warnings
        self.uncertain = uncertain

    def acting(self, day: int) -> tuple[str, ...]:
        """Rule 1: the parties this code acts as on ``day``: itself, and its unions."""
        if not self.memberships:
            return (self.code,)
        return (self.code, *(u for start, end, u in self.memberships if start <= day < end))

    def programme(self, day: int) -> IssuingProgramme:
        return self.programmes[bisect.bisect_right(self.boundaries, day) - 1]


def _ordinal(at: date | str) -> int:
    if type(at) is date:
        return at.toordinal()
    if isinstance(at, str):
        if len(at) == 10 and at[4] == "-" and at[7] == "-" and at[:4].isdigit() \
                and at[5:7].isdigit() and at[8:].isdigit():
            try:
                return date(int(at[:4]), int(at[5:7]), int(at[8:])).toordinal()
            except ValueError:
                pass
        raise QuestionError(f"malformed date {at!r} (expected YYYY-MM-DD)")
    if isinstance(at, datetime):
        raise QuestionError(f"a date is needed, not the datetime {at.isoformat()!r}")
    raise QuestionError(f"malformed date {at!r} (expected YYYY-MM-DD)")


def parse_day(text: str) -> date:
    """Parse a question date ``YYYY-MM-DD``; raise :class:`QuestionError` naming it."""
    return date.fromordinal(_ordinal(text))


class Recogniser:
    """Answers recognition questions over one :class:`Dataset` from an index built once."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.version = dataset.version
        self._unions = {u.code: u for u in dataset.unions}
        self._union_since = {
            u.code: u.programme.since.as_start().toordinal() if u.programme.since else 0
            for u in dataset.unions
        }
        self._codes: dict[str, _Code] = {}
        for code in sorted(ADMINISTRATION_CODES | set(self._unions)):
            self._codes[code] = self._index_code(code)
        # pairs[Pr][Pi]: the arrangements in which Pr and Pi are two parties, dataset order.
        self._pairs: dict[str, dict[str, tuple[_Directed, ...]]] = {}
        self._directed: list[tuple[_Directed, ...]] = []
        building: dict[str, dict[str, list[_Directed]]] = {}
        for position, arrangement in enumerate(dataset.arrangements):
            entries = tuple(_Directed(position, arrangement, r, i)
                            for r, i in arrangement.ordered_pairs())
            self._directed.append(entries)
            for entry in entries:
                building.setdefault(entry.recogniser, {}).setdefault(entry.issuer, []).append(
                    entry)
        self._pairs = {r: {i: tuple(es) for i, es in row.items()} for r, row in building.items()}

    @classmethod
    def default(cls) -> Recogniser:
        """The recogniser over the packaged dataset, built once per process."""
        return default_recogniser()

    # --- index construction -----------------------------------------------------------------

    def _index_code(self, code: str) -> _Code:
        dataset = self.dataset
        union = self._unions.get(code)
        warnings: list[str] = []
        uncertain = False
        if union is not None:
            own: Programme | None = union.programme
            memberships: list[tuple[int, int, str]] = []
            uncertain = union.certainty is Certainty.UNCERTAIN
        else:
            own = next((p for p in dataset.programmes if p.administration == code), None)
            memberships = []
            for other in dataset.unions:
                for m in other.members:
                    if m.code != code:
                        continue
                    memberships.append((m.start.as_start().toordinal(),
                                        m.until.as_end().toordinal() if m.until else _NEVER,
                                        other.code))
                    warnings.extend(m.start.warnings())
                    if m.until:
                        warnings.extend(m.until.warnings())
                    if other.programme.since:
                        warnings.extend(other.programme.since.warnings())
                    uncertain = uncertain or other.certainty is Certainty.UNCERTAIN
        memberships.sort()
        if own is not None and own.since is not None:
            warnings.extend(own.since.warnings())
        # The issuing programme changes only at these days; evaluate it once per segment.
        points = {0}
        for start, end, u in memberships:
            points.update((start, end, max(start, self._union_since[u])))
        if own is not None and own.since is not None:
            points.add(own.since.as_start().toordinal())
        points = {p for p in points if p < _NEVER}
        implied = IssuingProgramme(f"{code}-AEO", ("AEO",), implied=True)
        timeline: list[tuple[int, IssuingProgramme]] = []
        for point in sorted(points):
            chosen = implied
            for start, end, u in memberships:
                if start <= point < end and self._union_since[u] <= point:
                    shared = self._unions[u].programme
                    chosen = IssuingProgramme(shared.id, shared.types, implied=False)
                    break
            else:
                since = own.since.as_start().toordinal() if own and own.since else 0
                if own is not None and since <= point:
                    chosen = IssuingProgramme(own.id, own.types, implied=False)
            if not timeline or timeline[-1][1] != chosen:
                timeline.append((point, chosen))
        return _Code(code, is_union=union is not None, memberships=tuple(memberships),
                     timeline=timeline, warnings=tuple(dict.fromkeys(warnings)),
                     uncertain=uncertain)

    # --- lookups the gateway uses ---------------------------------------------------------

    def is_known_code(self, code: str) -> bool:
        """Rule 0: an officially assigned ISO 3166-1 alpha-2 code, XK, or a union here."""
        return code in self._codes

    def programme_types(self, issuer: str, at: date | str) -> tuple[str, tuple[str, ...]]:
        """The issuing programme of ``issuer`` on ``at`` (rule 2): its id and its types."""
        programme = self._code(issuer, "issuer").programme(_ordinal(at))
        return programme.id, programme.types

    def issuing_programme(self, issuer: str, at: date | str) -> IssuingProgramme:
        return self._code(issuer, "issuer").programme(_ordinal(at))

    def _code(self, code: str, role: str) -> _Code:
        known = self._codes.get(code)
        if known is None:
            raise QuestionError(
                f"unknown {role} code {code!r}: not an officially assigned ISO 3166-1 alpha-2 "
                f"code, XK, or a union of this dataset ({', '.join(sorted(self._unions))})")
        return known

    # --- the question ---------------------------------------------------------------------

    def check(self, recogniser: str, issuer: str, type_: str, at: date | str, *,
              mode: str | None = None, strict: bool = False) -> Answer:
        """Does ``recogniser`` recognise an AEO of ``type_`` issued by ``issuer`` on ``at``
        (for ``mode``)? Rules 0-7; raises :class:`QuestionError` for a bad question."""
        # Rule 0 and 6: the question itself.
        r = self._codes.get(recogniser) or self._code(recogniser, "recogniser")
        i = self._codes.get(issuer) or self._code(issuer, "issuer")
        day = _ordinal(at)
        slot = _MODE_SLOT.get(mode, -1) if mode is None or type(mode) is str else -1
        if slot < 0:
            raise QuestionError(f"unknown mode {mode!r} (expected road, air, sea or rail)")
        slot = slot * 2 + (1 if strict else 0)
        issuing = i.programme(day)
        if type_ not in issuing.types:
            raise QuestionError(
                f"type {type_!r} is not a type of {issuing.id}, the issuing programme of "
                f"{issuer} on {date.fromordinal(day).isoformat()} "
                f"(types: {', '.join(issuing.types)})")
        warnings = r.warnings + i.warnings
        uncertain = r.uncertain or i.uncertain
        acting_r = r.acting(day)
        acting_i = i.acting(day)
        at_day = at if type(at) is date else date.fromordinal(day)

        # Rule 2: the same programme, no arrangement evaluated.
        if recogniser == issuer or (
            (len(acting_r) > 1 or len(acting_i) > 1 or r.is_union or i.is_union)
            and self._share_programme(acting_r, acting_i, day)
        ):
            return Answer(recogniser, issuer, type_, at_day, mode, strict, True, (),
                          issuing.id, tuple(dict.fromkeys(warnings)), (),
                          Certainty.UNCERTAIN if uncertain or warnings else Certainty.CONFIRMED,
                          self.version)

        # Rule 3: only the arrangements where R and I act as two parties.
        found: list[_Directed] = []
        pairs = self._pairs
        for pr in acting_r:
            row = pairs.get(pr)
            if row is None:
                continue
            for pi in acting_i:
                if pi != pr:
                    entries = row.get(pi)
                    if entries is not None:
                        found.extend(entries)
        if not found:
            return Answer(recogniser, issuer, type_, at_day, mode, strict, False, (), None,
                          tuple(dict.fromkeys(warnings)),
                          (Reason(None, NO_ARRANGEMENT, self._no_arrangement(
                              recogniser, issuer, acting_r, acting_i, at_day)),),
                          Certainty.UNCERTAIN if uncertain or warnings else Certainty.CONFIRMED,
                          self.version)

        raised = list(warnings)
        best: dict[int, tuple[int, _Directed]] = {}
        for entry in found:
            rank = _decide(entry, day, slot, type_, raised)
            uncertain = uncertain or entry.uncertain
            previous = best.get(entry.position)
            if previous is None or rank > previous[0]:
                best[entry.position] = (rank, entry)
        ordered = sorted(best.items()) if len(best) > 1 else list(best.items())
        applying = tuple(e.arrangement.id for _, (rank, e) in ordered if rank == _APPLIES)
        reasons: tuple[Reason, ...] = ()
        if not applying:
            reasons = tuple(_reason(rank, e, day, slot, type_=type_, mode=mode,
                                    recogniser=recogniser, issuer=issuer)
                            for _, (rank, e) in ordered)
        unique = tuple(dict.fromkeys(raised))
        return Answer(recogniser, issuer, type_, at_day, mode, strict, bool(applying), applying,
                      None, unique, reasons,
                      Certainty.UNCERTAIN if uncertain or unique else Certainty.CONFIRMED,
                      self.version)

    def _share_programme(self, acting_r: tuple[str, ...], acting_i: tuple[str, ...],
                         day: int) -> bool:
        """Rule 2: R and I in one union, or one is a union the other belongs to, on ``day``,
        with that union's programme existing on ``day``."""
        for party in acting_r:
            if party in acting_i and party in self._union_since \
                    and self._union_since[party] <= day:
                return True
        return False

    def _no_arrangement(self, recogniser: str, issuer: str, acting_r: tuple[str, ...],
                        acting_i: tuple[str, ...], at: date) -> str:
        def who(code: str, acting: tuple[str, ...]) -> str:
            unions = acting[1:]
            return f"{code} (or {_join(unions)})" if unions else code

        return (f"no arrangement has {who(recogniser, acting_r)} and {who(issuer, acting_i)} "
                f"as two of its parties on {at.isoformat()}")

    # --- the network on a date ----------------------------------------------------------

    def in_force(self, at: date | str, strict: bool = False) -> tuple[InForce, ...]:
        """Arrangements in force on ``at``: each applies in at least one direction for at least
        one transport mode (start passed, not terminated, not suspended; types aside)."""
        day = _ordinal(at)
        result: list[InForce] = []
        for entries in self._directed:
            directions: list[DirectionInForce] = []
            raised: list[str] = []
            for entry in entries:
                modes = _modes_in_force(entry, day, strict, raised)
                if modes:
                    directions.append(DirectionInForce(entry.recogniser, entry.issuer, modes))
            if directions:
                result.append(InForce(entries[0].arrangement, tuple(directions),
                                      tuple(dict.fromkeys(raised))))
        return tuple(result)

    def members_on(self, union: str, at: date | str) -> tuple[str, ...]:
        """The members of ``union`` on ``at``."""
        found = self._unions.get(union)
        if found is None:
            raise QuestionError(f"unknown union {union!r}")
        return found.members_on(date.fromordinal(_ordinal(at)))

    def union_programme_exists(self, union: str, at: date | str) -> bool:
        return self._union_since.get(union, _NEVER) <= _ordinal(at)

    def acting_parties(self, code: str, at: date | str) -> tuple[str, ...]:
        """Rule 1: the parties ``code`` acts as on ``at`` (itself first, then its unions)."""
        return self._code(code, "administration").acting(_ordinal(at))

    def partners(self, administration: str, at: date | str, strict: bool = False) -> Partners:
        """Who recognises ``administration`` on ``at``, and whom it recognises, with types."""
        me = self._code(administration, "administration")
        day = _ordinal(at)
        acting = me.acting(day)
        programme = me.programme(day)
        same: list[tuple[str, str, tuple[str, ...]]] = []
        for party in acting:
            if party in self._unions and self._union_since[party] <= day:
                same.append((party, self._unions[party].programme.id,
                             self.members_on(party, at)))
        recognised_by: list[Partner] = []
        recognises: list[Partner] = []
        for mine in acting:
            row = self._pairs.get(mine, {})
            for other, entries in row.items():
                if other in acting:
                    continue
                for entry in entries:  # `mine` recognises `other`
                    link = self._link(entry, day, strict, party=other, mine=mine,
                                      issuer_types=self._codes[other].programme(day).types)
                    if link is not None:
                        recognises.append(link)
                for entry in self._pairs.get(other, {}).get(mine, ()):  # `other` recognises me
                    link = self._link(entry, day, strict, party=other, mine=mine,
                                      issuer_types=programme.types)
                    if link is not None:
                        recognised_by.append(link)
        order = {a.id: n for n, a in enumerate(self.dataset.arrangements)}
        return Partners(
            administration, date.fromordinal(day), acting, programme, tuple(same),
            tuple(sorted(recognised_by, key=lambda p: (order[p.arrangement], p.party))),
            tuple(sorted(recognises, key=lambda p: (order[p.arrangement], p.party))),
            self.version,
        )

    def _link(self, entry: _Directed, day: int, strict: bool, *, party: str, mine: str,
              issuer_types: tuple[str, ...]) -> Partner | None:
        raised: list[str] = []
        modes = _modes_in_force(entry, day, strict, raised)
        if not modes:
            return None
        types = tuple(t for t in issuer_types if entry.types is None or t in entry.types)
        if not types:
            return None
        unique = tuple(dict.fromkeys(raised))
        uncertain = entry.uncertain or bool(unique)
        return Partner(party, entry.arrangement.id, mine, types, modes, unique,
                       Certainty.UNCERTAIN if uncertain else Certainty.CONFIRMED)


def _decide(entry: _Directed, day: int, slot: int, type_: str, raised: list[str]) -> int:
    """Rule 3 for one (arrangement, direction), checks in reason-code order (rule 4)."""
    if entry.same_side:
        return _SAME_SIDE
    start = entry.starts[slot]
    if start.warnings:
        raised.extend(start.warnings)
    if start.status != _APPLIES:
        return start.status
    if day < start.day:
        return _NOT_YET
    if entry.end_warnings:
        raised.extend(entry.end_warnings)
    if day >= entry.end:
        return _TERMINATED
    if entry.suspensions:
        raised.extend(entry.suspension_warnings)
        for begin, until, _, _ in entry.suspensions:
            if begin <= day < until:
                return _SUSPENDED
    if entry.types is not None and type_ not in entry.types:
        return _TYPE
    return _APPLIES


def _modes_in_force(entry: _Directed, day: int, strict: bool,
                    raised: list[str]) -> tuple[str, ...]:
    """The modes for which ``entry`` applies on ``day`` (types aside); all four when the
    arrangement lists no mode."""
    if entry.same_side:
        return ()
    listed = _listed(entry.arrangement) or MODES
    result: list[str] = []
    for mode in listed:
        # Types aside: a direction blocked only by its type scope is still in force.
        if _decide(entry, day, _MODE_SLOT[mode] * 2 + int(strict), "", raised) >= _TYPE:
            result.append(mode)
    return tuple(result)


def _reason(rank: int, entry: _Directed, day: int, slot: int, *, type_: str,
            mode: str | None, recogniser: str, issuer: str) -> Reason:
    a = entry.arrangement
    pr, pi = entry.recogniser, entry.issuer
    as_r = recogniser if recogniser == pr else f"{recogniser} (as {pr})"
    as_i = issuer if issuer == pi else f"{issuer} (as {pi})"
    on = date.fromordinal(day).isoformat()
    start = entry.starts[slot]
    if rank == _SAME_SIDE:
        return Reason(a.id, SAME_SIDE, f"{as_r} and {as_i} are on the same side of {a.id}, "
                                       "which recognises only across its sides")
    if rank == _NO_DATE:
        what = "no direction, effective or mode date" + (
            " (strict mode does not use the signature date)" if slot % 2 else
            " and no signature date")
        return Reason(a.id, NO_DATE, f"{a.id} has {what} for {pr}<-{pi}; it is listed for "
                                     "information only and never applies")
    if rank == _MODE_NOT_COVERED:
        return Reason(a.id, MODE_NOT_COVERED,
                      f"{a.id} covers only {', '.join(_listed(a))}, not {mode}")
    if rank == _NOT_YET:
        return Reason(a.id, NOT_YET_EFFECTIVE,
                      f"under {a.id}, {pr} recognises {pi} from {start.label}; not yet on {on}")
    if rank == _TERMINATED:
        return Reason(a.id, TERMINATED, f"{a.id} terminated on {a.terminated} "
                                        f"(no longer applies on {on})")
    if rank == _SUSPENDED:
        spans = [f"from {s} until {u or 'further notice'}" for b, e, s, u in entry.suspensions
                 if b <= day < e]
        return Reason(a.id, SUSPENDED, f"{a.id} is suspended for {pr}<-{pi} {spans[0]}")
    return Reason(a.id, TYPE_NOT_COVERED,
                  f"under {a.id}, {as_r} recognises only {_join(sorted(entry.types or ()))} "
                  f"of {pi}, not {type_}")


def _join(items: Iterable[str]) -> str:
    return ", ".join(items)


@functools.cache
def default_recogniser() -> Recogniser:
    """The recogniser over the packaged dataset, indexed once per process (memoised: the
    index is immutable, so sharing it is safe)."""
    return Recogniser(default_dataset())

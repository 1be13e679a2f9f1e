"""Load and validate a registry dataset (the format of ``mra-facts.json``, see data/README.md).

Invariants:

- bytes are checked before they are parsed: at most :data:`MAX_DATASET_BYTES`, strict UTF-8,
  strict JSON (no ``NaN``, no duplicate keys);
- the WHOLE file is validated and every problem is reported at once, each with its JSON path
  (``$.arrangements[12].directions["EU<-XX"]: ...``), in one :class:`DatasetError`;
- a :class:`~registry.model.Dataset` is only ever built from a file with no problem, and its
  ``version`` is the lowercase hex SHA-256 of the exact bytes read;
- the packaged default (``registry/data/mra-facts.json``) is read through importlib.resources
  and parsed once per process (:func:`default_dataset` is memoised; the value is immutable).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from registry.errors import DatasetError
from registry.iso3166 import ADMINISTRATION_CODES
from registry.model import (
    MODES,
    Arrangement,
    Certainty,
    CustomsUnion,
    Dataset,
    FactDate,
    Kind,
    Membership,
    Programme,
    Suspension,
)

#: Largest dataset file accepted: the real one is ~100 KiB; 16 MiB leaves room for any real
#: registry while bounding memory and parse time for a hostile file.
MAX_DATASET_BYTES = 16 * 1024 * 1024

DEFAULT_RESOURCE = "mra-facts.json"

_UNION_CODE = re.compile(r"[A-Z][A-Z0-9]{1,15}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_TOP_KEYS = {"about", "collected", "counts", "programmes", "unions", "arrangements"}
_PROGRAMME_KEYS = {"administration", "id", "types", "since", "notes", "sources"}
_UNION_PROGRAMME_KEYS = {"id", "types", "since", "notes", "sources"}
_UNION_KEYS = {"code", "name", "programme", "members", "certainty", "notes", "sources"}
_MEMBER_KEYS = {"code", "from", "until", "notes", "sources"}
_ARRANGEMENT_KEYS = {
    "id", "title", "kind", "parties", "sides", "signed", "effective", "directions", "modes",
    "recognised_types", "terminated", "suspensions", "certainty", "notes", "sources",
}
_SUSPENSION_KEYS = {"from", "until", "recogniser", "issuer", "notes", "sources"}

T = TypeVar("T")


class _Object(dict[str, Any]):
    """A JSON object that remembers keys given more than once (json keeps the last)."""

    duplicates: tuple[str, ...] = ()


def _object_hook(pairs: list[tuple[str, Any]]) -> _Object:
    result = _Object()
    seen: list[str] = []
    for key, value in pairs:
        if key in result:
            seen.append(key)
        result[key] = value
    if seen:
        result.duplicates = tuple(seen)
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _key(path: str, key: str) -> str:
    return f"{path}.{key}"


def _map_key(path: str, key: str) -> str:
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


class _Validator:
    """Walks the parsed JSON once, collecting every problem and building model objects."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.union_codes: set[str] = set()
        self.paths: dict[int, str] = {}  # id() of a built object -> its JSON path

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    # --- JSON shapes ----------------------------------------------------------------------

    def obj(self, value: Any, path: str, allowed: set[str], required: set[str]) -> bool:
        if not isinstance(value, dict):
            self.problem(path, f"must be an object, not {_json_type(value)}")
            return False
        for key in getattr(value, "duplicates", ()):
            self.problem(_key(path, key), "key given more than once")
        for key in value:
            if key not in allowed:
                self.problem(_key(path, key), f"unknown field {key!r}")
        for key in sorted(required - value.keys()):
            self.problem(_key(path, key), "missing")
        return True

    def mapping(self, value: Any, path: str) -> dict[str, Any] | None:
        """A JSON object whose keys are data (directions, modes, recognised_types)."""
        if value is None:
            return None
        if not isinstance(value, dict):
            self.problem(path, f"must be an object, not {_json_type(value)}")
            return None
        for key in getattr(value, "duplicates", ()):
            self.problem(_map_key(path, key), "key given more than once")
        return value

    def string(self, value: Any, path: str, pattern: re.Pattern[str] | None = None) -> str | None:
        if not isinstance(value, str):
            self.problem(path, f"must be a string, not {_json_type(value)}")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.problem(path, f"{value!r} is not a valid value here")
            return None
        return value

    def optional_text(self, parent: dict[str, Any], key: str, path: str) -> str | None:
        if parent.get(key) is None:
            return None
        return self.string(parent[key], _key(path, key))

    def sources(self, parent: dict[str, Any], path: str) -> tuple[str, ...]:
        value = parent.get("sources")
        if value is None:
            return ()
        items = self.array(value, _key(path, "sources"))
        return tuple(
            s for n, v in enumerate(items)
            if (s := self.string(v, f"{path}.sources[{n}]")) is not None
        )

    def array(self, value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            self.problem(path, f"must be an array, not {_json_type(value)}")
            return []
        return value

    def date(self, value: Any, path: str, *, nullable: bool) -> FactDate | None:
        if value is None:
            if not nullable:
                self.problem(path, "must be a date, not null")
            return None
        if not isinstance(value, str):
            self.problem(path, f"must be a date string, not {_json_type(value)}")
            return None
        try:
            return FactDate.parse(value)
        except ValueError as error:
            self.problem(path, str(error))
            return None

    def certainty(self, parent: dict[str, Any], path: str) -> Certainty:
        value = parent.get("certainty")
        if value is None:
            return Certainty.CONFIRMED  # the format marks the uncertain facts, not the others
        try:
            return Certainty(value)
        except ValueError:
            self.problem(_key(path, "certainty"),
                         f"{value!r} is not 'confirmed' or 'uncertain'")
            return Certainty.UNCERTAIN

    def types(self, value: Any, path: str) -> tuple[str, ...]:
        items = self.array(value, path)
        result: list[str] = []
        for n, item in enumerate(items):
            text = self.string(item, f"{path}[{n}]", _TYPE)
            if text is None:
                continue
            if text in result:
                self.problem(f"{path}[{n}]", f"type {text} listed twice")
                continue
            result.append(text)
        if isinstance(value, list) and not items:
            self.problem(path, "must list at least one type")
        return tuple(result)

    def code(self, value: Any, path: str, *, union_allowed: bool = True) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        if text in self.union_codes:
            if not union_allowed:
                self.problem(path, f"{text} is a union code, not an administration")
                return None
            return text
        if text not in ADMINISTRATION_CODES:
            self.problem(path, f"unknown code {text} (not an officially assigned ISO 3166-1 "
                               "alpha-2 code, XK, or a union of this dataset)")
            return None
        return text

    # --- sections -------------------------------------------------------------------------

    def programme(self, value: Any, path: str, administration: str | None,
                  keys: set[str]) -> Programme | None:
        required = {"id", "types"} | ({"administration"} if "administration" in keys else set())
        if not self.obj(value, path, keys, required):
            return None
        if administration is None:
            administration = self.code(value.get("administration"), _key(path, "administration"),
                                       union_allowed=False)
        programme_id = self.string(value.get("id"), _key(path, "id"), _ID)
        types = self.types(value.get("types"), _key(path, "types")) if "types" in value else ()
        since = self.date(value.get("since"), _key(path, "since"), nullable=True)
        notes = self.optional_text(value, "notes", path)
        sources = self.sources(value, path)
        if administration is None or programme_id is None or not types:
            return None
        return Programme(programme_id, administration, types, since, notes=notes,
                         sources=sources)

    def membership(self, value: Any, path: str, union: str) -> Membership | None:
        if not self.obj(value, path, _MEMBER_KEYS, {"code", "from"}):
            return None
        code = self.code(value.get("code"), _key(path, "code"), union_allowed=False)
        start = self.date(value.get("from"), _key(path, "from"), nullable=False)
        until = self.date(value.get("until"), _key(path, "until"), nullable=True)
        if start is not None and until is not None and until.latest() <= start.earliest():
            self.problem(_key(path, "until"), f"until {until} is not after from {start}")
            return None
        if code is None or start is None:
            return None
        member = Membership(code, union, start, until)
        self.paths[id(member)] = path
        return member

    def union(self, value: Any, path: str) -> CustomsUnion | None:
        if not self.obj(value, path, _UNION_KEYS, {"code", "programme", "members"}):
            return None
        code = value.get("code")
        if not isinstance(code, str) or code not in self.union_codes:
            return None  # reported by collect_union_codes
        name = self.optional_text(value, "name", path) or code
        programme = self.programme(value.get("programme"), _key(path, "programme"), code,
                                   _UNION_PROGRAMME_KEYS)
        members = [
            m for n, item in enumerate(self.array(value.get("members"), _key(path, "members")))
            if (m := self.membership(item, f"{path}.members[{n}]", code)) is not None
        ]
        certainty = self.certainty(value, path)
        notes = self.optional_text(value, "notes", path)
        sources = self.sources(value, path)
        self.check_overlaps(members)
        if programme is None:
            return None
        union = CustomsUnion(code, name, programme, tuple(members), certainty, notes, sources)
        self.paths[id(union)] = path
        return union

    def check_overlaps(self, members: list[Membership]) -> None:
        by_code: dict[str, list[tuple[int, Membership]]] = {}
        for n, member in enumerate(members):
            by_code.setdefault(member.code, []).append((n, member))
        for code, spans in by_code.items():
            for a, (_, first) in enumerate(spans):
                for _, second in spans[a + 1:]:
                    if _overlap(first, second):
                        self.problem(self.paths[id(second)],
                                     f"membership of {code} overlaps {self.paths[id(first)]}")

    def collect_union_codes(self, unions: list[Any]) -> None:
        for n, value in enumerate(unions):
            if not isinstance(value, dict) or "code" not in value:
                continue
            path = f"$.unions[{n}].code"
            code = self.string(value["code"], path, _UNION_CODE)
            if code is None:
                continue
            if code in ADMINISTRATION_CODES:
                self.problem(path, f"union code {code} is an administration code")
            elif code in self.union_codes:
                self.problem(path, f"duplicate union code {code}")
            else:
                self.union_codes.add(code)

    def arrangement(self, value: Any, path: str,
                    types_of: Callable[[str], frozenset[str]]) -> Arrangement | None:
        if not self.obj(value, path, _ARRANGEMENT_KEYS, {"id", "kind", "parties"}):
            return None
        ok = True
        arrangement_id = self.string(value.get("id"), _key(path, "id"), _ID)
        kind: Kind | None = None
        raw_kind = value.get("kind")
        try:
            kind = Kind(raw_kind)
        except ValueError:
            self.problem(_key(path, "kind"), f"unknown kind {raw_kind!r} (expected bilateral, "
                                             "plurilateral or bloc_to_bloc)")
        parties: list[str] = []
        raw_parties = self.array(value.get("parties"), _key(path, "parties"))
        for n, item in enumerate(raw_parties):
            code = self.code(item, f"{path}.parties[{n}]")
            if code is None:
                ok = False
            elif code in parties:
                self.problem(f"{path}.parties[{n}]", f"party {code} listed twice")
                ok = False
            else:
                parties.append(code)
        if kind is Kind.BILATERAL and len(raw_parties) != 2:
            self.problem(_key(path, "parties"),
                         f"a bilateral arrangement has two parties, not {len(raw_parties)}")
            ok = False
        elif kind in (Kind.PLURILATERAL, Kind.BLOC_TO_BLOC) and len(raw_parties) < 2:
            self.problem(_key(path, "parties"),
                         f"a {kind.value} arrangement needs at least two parties")
            ok = False
        sides = self.sides(value, path, kind, parties)
        if kind is Kind.BLOC_TO_BLOC and sides is None:
            ok = False
        party_set = set(parties)

        def side(code: str) -> int | None:
            if sides is None:
                return None
            return 0 if code in sides[0] else 1 if code in sides[1] else None

        signed = self.date(value.get("signed"), _key(path, "signed"), nullable=True)
        effective = self.date(value.get("effective"), _key(path, "effective"), nullable=True)
        terminated = self.date(value.get("terminated"), _key(path, "terminated"), nullable=True)
        ok = ok and all(
            value.get(k) is None or d is not None
            for k, d in (("signed", signed), ("effective", effective), ("terminated", terminated))
        )

        directions: dict[tuple[str, str], FactDate] = {}
        raw = self.mapping(value.get("directions"), _key(path, "directions"))
        if raw is not None:
            for key, when in raw.items():
                where = _map_key(_key(path, "directions"), key)
                day = self.date(when, where, nullable=False)
                pair = key.split("<-") if isinstance(key, str) else []
                if len(pair) != 2:
                    self.problem(where, f"direction {key!r} is not of the form 'R<-I'")
                    ok = False
                    continue
                recogniser, issuer = pair
                bad = [c for c in (recogniser, issuer) if c not in party_set]
                for code in bad:
                    self.problem(where, f"direction names {code} which is not a party")
                if bad:
                    ok = False
                    continue
                if recogniser == issuer:
                    self.problem(where, f"direction {key!r} names one party twice")
                    ok = False
                elif kind is Kind.BLOC_TO_BLOC and side(recogniser) == side(issuer):
                    self.problem(where, f"direction {key!r} joins two parties on the same side")
                    ok = False
                elif day is None:
                    ok = False
                else:
                    directions[(recogniser, issuer)] = day

        modes: dict[str, FactDate] = {}
        raw = self.mapping(value.get("modes"), _key(path, "modes"))
        if raw is not None:
            for key, when in raw.items():
                where = _map_key(_key(path, "modes"), key)
                day = self.date(when, where, nullable=False)
                if key not in MODES:
                    self.problem(where, f"unknown mode {key!r} (expected road, air, sea or rail)")
                    ok = False
                elif day is None:
                    ok = False
                else:
                    modes[key] = day

        recognised: dict[str, frozenset[str]] = {}
        raw = self.mapping(value.get("recognised_types"), _key(path, "recognised_types"))
        if raw is not None:
            for key, listed in raw.items():
                where = _map_key(_key(path, "recognised_types"), key)
                if key not in party_set:
                    self.problem(where, f"recognised_types names {key} which is not a party")
                    ok = False
                    continue
                types = self.types(listed, where)
                available = types_of(key)
                for n, type_ in enumerate(types):
                    if type_ not in available:
                        self.problem(f"{where}[{n}]", f"type {type_} is not a type of {key}'s "
                                     f"programme (has: {', '.join(sorted(available))})")
                        ok = False
                if not types:
                    ok = False
                recognised[key] = frozenset(types)

        suspensions: list[Suspension] = []
        raw = value.get("suspensions")
        if raw is not None:
            for n, item in enumerate(self.array(raw, _key(path, "suspensions"))):
                suspension = self.suspension(item, f"{path}.suspensions[{n}]", party_set)
                if suspension is None:
                    ok = False
                else:
                    suspensions.append(suspension)
        elif "suspensions" in value:
            self.problem(_key(path, "suspensions"), "must be an array, not null")

        certainty = self.certainty(value, path)
        title = self.optional_text(value, "title", path) or ""
        notes = self.optional_text(value, "notes", path)
        sources = self.sources(value, path)
        if not ok or arrangement_id is None or kind is None:
            return None
        return Arrangement(
            id=arrangement_id, kind=kind, parties=tuple(parties), title=title, sides=sides,
            signed=signed, effective=effective, terminated=terminated,
            directions=_proxy(directions), modes=_proxy(modes),
            recognised_types=_proxy(recognised), suspensions=tuple(suspensions),
            certainty=certainty, notes=notes, sources=sources,
        )

    def sides(self, value: dict[str, Any], path: str, kind: Kind | None,
              parties: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        raw = value.get("sides")
        where = _key(path, "sides")
        if kind is not Kind.BLOC_TO_BLOC:
            if raw is not None and kind is not None:
                self.problem(where, f"only a bloc_to_bloc arrangement has sides, not a "
                                    f"{kind.value} one")
            return None
        if raw is None:
            self.problem(where, "a bloc_to_bloc arrangement needs two sides")
            return None
        items = self.array(raw, where)
        if isinstance(raw, list) and len(items) != 2:
            self.problem(where, f"a bloc_to_bloc arrangement has two sides, not {len(items)}")
            return None
        result: list[tuple[str, ...]] = []
        seen: dict[str, int] = {}
        ok = len(items) == 2
        for n, side in enumerate(items):
            codes: list[str] = []
            side_items = self.array(side, f"{where}[{n}]")
            if isinstance(side, list) and not side_items:
                self.problem(f"{where}[{n}]", "a side needs at least one party")
                ok = False
            for m, item in enumerate(side_items):
                spot = f"{where}[{n}][{m}]"
                code = self.string(item, spot)
                if code is None:
                    ok = False
                elif code not in parties:
                    self.problem(spot, f"side names {code} which is not a party")
                    ok = False
                elif code in seen:
                    self.problem(spot, f"{code} is on more than one side or listed twice")
                    ok = False
                else:
                    seen[code] = n
                    codes.append(code)
            result.append(tuple(codes))
        for code in parties:
            if code not in seen and ok:
                self.problem(where, f"party {code} is on no side")
                ok = False
        if not ok:
            return None
        return result[0], result[1]

    def suspension(self, value: Any, path: str, parties: set[str]) -> Suspension | None:
        if not self.obj(value, path, _SUSPENSION_KEYS, {"from"}):
            return None
        start = self.date(value.get("from"), _key(path, "from"), nullable=False)
        until = self.date(value.get("until"), _key(path, "until"), nullable=True)
        ends: list[str | None] = []
        ok = True
        for role in ("recogniser", "issuer"):
            raw = value.get(role)
            if raw is None:
                ends.append(None)
                continue
            code = self.string(raw, _key(path, role))
            if code is not None and code not in parties:
                self.problem(_key(path, role), f"{role} {code} is not a party")
                code = None
            ok = ok and code is not None
            ends.append(code)
        if ends[0] is not None and ends[0] == ends[1]:
            self.problem(path, "recogniser and issuer are the same party")
            ok = False
        if start is not None and until is not None and until.latest() <= start.earliest():
            self.problem(_key(path, "until"), f"until {until} is not after from {start}")
            ok = False
        if not ok or start is None:
            return None
        return Suspension(start, until, ends[0], ends[1])


def _proxy(items: dict[Any, T]) -> Any:
    return MappingProxyType(items)


def _overlap(first: Membership, second: Membership) -> bool:
    a0 = first.start.as_start()
    a1 = first.until.as_end() if first.until else None
    b0 = second.start.as_start()
    b1 = second.until.as_end() if second.until else None
    return (b1 is None or a0 < b1) and (a1 is None or b0 < a1)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _decode(data: bytes, source: str) -> Any:
    if len(data) > MAX_DATASET_BYTES:
        raise DatasetError([f"$: file is {len(data)} bytes, more than the limit of "
                            f"{MAX_DATASET_BYTES}"], source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError([f"$: not UTF-8 (byte {error.start}: {error.reason})"],
                           source) from None
    try:
        return json.loads(text, object_pairs_hook=_object_hook, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise DatasetError([f"$: invalid JSON at line {error.lineno} column {error.colno}: "
                            f"{error.msg}"], source) from None
    except (ValueError, RecursionError) as error:
        raise DatasetError([f"$: invalid JSON: {error}"], source) from None


def parse_dataset(data: bytes, source: str = "dataset") -> Dataset:
    """Validate ``data`` (the bytes of a dataset file) and build its :class:`Dataset`.

    Raises :class:`DatasetError` listing every problem, each with its JSON path.
    """
    document = _decode(data, source)
    check = _Validator()
    if not check.obj(document, "$", _TOP_KEYS, set()):
        raise DatasetError(check.problems, source)
    raw_programmes = check.array(document.get("programmes", []), "$.programmes")
    raw_unions = check.array(document.get("unions", []), "$.unions")
    raw_arrangements = check.array(document.get("arrangements", []), "$.arrangements")
    about = check.optional_text(document, "about", "$")
    collected = check.optional_text(document, "collected", "$")
    if document.get("counts") is not None and not isinstance(document["counts"], dict):
        check.problem("$.counts", f"must be an object, not {_json_type(document['counts'])}")

    # Union codes first: arrangements and memberships may name any union of the file.
    check.collect_union_codes(raw_unions)
    programmes: list[Programme] = []
    for n, item in enumerate(raw_programmes):
        programme = check.programme(item, f"$.programmes[{n}]", None, _PROGRAMME_KEYS)
        if programme is not None:
            programmes.append(programme)
    unions = [
        u for n, item in enumerate(raw_unions)
        if (u := check.union(item, f"$.unions[{n}]")) is not None
    ]
    _check_identities(check, programmes, unions, raw_programmes)

    types_of = _possible_types(programmes, unions)
    arrangements: list[Arrangement] = []
    seen_ids: dict[str, int] = {}
    for n, item in enumerate(raw_arrangements):
        arrangement = check.arrangement(item, f"$.arrangements[{n}]", types_of)
        raw_id = item.get("id") if isinstance(item, dict) else None
        if isinstance(raw_id, str):
            if raw_id in seen_ids:
                check.problem(f"$.arrangements[{n}].id",
                              f"duplicate id {raw_id} (also $.arrangements[{seen_ids[raw_id]}])")
                arrangement = None
            else:
                seen_ids[raw_id] = n
        if arrangement is not None:
            arrangements.append(arrangement)
    if check.problems:
        raise DatasetError(check.problems, source)
    return Dataset(
        version=hashlib.sha256(data).hexdigest(),
        source=source,
        programmes=tuple(programmes),
        unions=tuple(unions),
        arrangements=tuple(arrangements),
        about=about,
        collected=collected,
    )


def _check_identities(check: _Validator, programmes: list[Programme],
                      unions: list[CustomsUnion], raw_programmes: list[Any]) -> None:
    """Duplicate programme ids and administrations, and codes in two unions at once."""
    ids: dict[str, str] = {}
    owners: dict[str, int] = {}
    n = 0
    for n, item in enumerate(raw_programmes):
        if not isinstance(item, dict):
            continue
        raw_id, owner = item.get("id"), item.get("administration")
        if isinstance(raw_id, str):
            if raw_id in ids:
                check.problem(f"$.programmes[{n}].id",
                              f"duplicate programme id {raw_id} (also {ids[raw_id]})")
            ids[raw_id] = f"$.programmes[{n}]"
        if isinstance(owner, str):
            if owner in owners:
                check.problem(f"$.programmes[{n}].administration",
                              f"{owner} already has a programme ($.programmes[{owners[owner]}])")
            owners[owner] = n
    for union in unions:
        if union.programme.id in ids:
            check.problem(f"{check.paths[id(union)]}.programme.id",
                          f"duplicate programme id {union.programme.id} "
                          f"(also {ids[union.programme.id]})")
        ids[union.programme.id] = f"union {union.code}"
    spans: dict[str, list[Membership]] = {}
    for union in unions:
        for member in union.members:
            for other in spans.get(member.code, []):
                if other.union != union.code and _overlap(member, other):
                    check.problem(check.paths[id(member)],
                                  f"{member.code} is a member of {other.union} and "
                                  f"{union.code} at the same time")
            spans.setdefault(member.code, []).append(member)


def _possible_types(programmes: list[Programme],
                    unions: list[CustomsUnion]) -> Callable[[str], frozenset[str]]:
    """The types a party may issue on some date: its listed programme's, its unions', and
    ``AEO`` whenever the implied programme can apply (no listed programme, or one with a
    ``since``, or a union membership that predates the union's programme)."""
    own = {p.administration: p for p in programmes}
    union_by_code = {u.code: u for u in unions}
    member_unions: dict[str, set[str]] = {}
    for union in unions:
        for member in union.members:
            member_unions.setdefault(member.code, set()).add(union.code)

    def types_of(code: str) -> frozenset[str]:
        if code in union_by_code:
            shared = union_by_code[code].programme
            implied = {"AEO"} if shared.since is not None else set()
            return frozenset(shared.types) | implied
        result: set[str] = set()
        programme = own.get(code)
        if programme is None or programme.since is not None:
            result.add("AEO")
        if programme is not None:
            result.update(programme.types)
        for union_code in member_unions.get(code, ()):
            result.update(union_by_code[union_code].programme.types)
        return frozenset(result)

    return types_of


def load_dataset(path: str | Path) -> Dataset:
    """Read and validate the dataset file at ``path``."""
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > MAX_DATASET_BYTES:
            raise DatasetError([f"$: file is {size} bytes, more than the limit of "
                                f"{MAX_DATASET_BYTES}"], str(file))
        with file.open("rb") as stream:
            data = stream.read(MAX_DATASET_BYTES + 1)
    except OSError as error:
        raise DatasetError([f"$: cannot read {file}: {error.strerror or error}"],
                           str(file)) from None
    return parse_dataset(data, str(file))


@functools.cache
def default_dataset() -> Dataset:
    """The packaged dataset, read from package data and validated once per process."""
    data = resources.files("registry").joinpath("data", DEFAULT_RESOURCE).read_bytes()
    return parse_dataset(data, f"registry/data/{DEFAULT_RESOURCE}")

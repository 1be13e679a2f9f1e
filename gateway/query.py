"""Local recognition checks: "is this foreign operator recognised here on date D?".

Transport-neutral: the gRPC ``QueryService`` (gateway.services.query_service) and ``mragw
check`` (gateway.cli.check_cmd) both translate to and from the domain types here.

Invariants:
- Only entries whose ``entries.sig_state`` is ``valid`` are ever used, in answers, evidence and
  the change feed; an entry that is unverified, invalid, revoked, erased or held as a leaf hash
  only does not exist for this module.
- The operator is found by any of its identifiers (normalised like published identifiers:
  upper case, no spaces) among the records of the issuer asked about, across every log this
  node holds. A union issuer (``EU``) matches a record whose issuer was a member of the union on
  that record's ``status_date``.
- Per type, the status on date D is the record with the latest ``status_date`` on or before D;
  ties go to the later log entry (higher index). A type is recognised when that status is
  ``ACTIVE``, D lies within ``valid_from``..``valid_until`` (inclusive, null = open), consent is
  given, and the registry says this administration recognises the record's issuer and type on D
  (with the question's mode and strict flag).
- Fail closed: a rule that cannot decide answers "not recognised" with a reason; a bad question
  (unknown code, type or mode, malformed date or identifier) raises :class:`BadQuestionError`
  naming the bad value, never a silent "no".
- One question or many: every question of a batch is answered over one connection (one
  consistent snapshot) and one registry dataset, with the identifier and record lookups batched.

The ``operator`` object of an answer (JSON):

    {"operator_ids": [{"scheme": "EORI", "value": "DE123..."}, {"scheme": "AUTH", ...}],
     "name": str, "country": str, "issuer": "DE", "log": "EU",
     "authorisations": [{"issuer": "DE", "authorisation": "DEAEOF0001", "type": "AEOF",
                         "log": "EU"}]}

``operator_ids`` lists every identifier (any scheme, authorisation numbers as ``AUTH``) of the
operator's latest record of each authorisation and type, so any of them finds it again;
``name``, ``country``, ``issuer`` and ``log`` come from its newest record (latest
``status_date``, then latest entry); ``authorisations`` lists each (issuer, authorisation, type)
the node holds for it.
"""

from __future__ import annotations

import asyncio
import base64
import re
import sqlite3
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Collection,
    Sequence,
)
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.datasets import recogniser_of
from gateway.errors import InputError, UnreachableError
from gateway.records import SCHEMES, OperatorId, normalise_identifier
from gateway.status_reads import (
    CHUNK,
    RECORD_COLUMNS,
    VALID,
    AlchemyReads,
    Matches,
    SqliteSnapshots,
    StatusReads,
    StatusRecord,
    grouped,
    record_from_row,
    sqlite_file,
)
from gateway.storage.database import SQLITE_BUSY_TIMEOUT_MS, describe_db_error
from gateway.storage.schema import entries, logs, record_feed, records
from gateway.storage.tiles import inclusion_proof
from registry.errors import QuestionError
from registry.model import MODES
from registry.resolver import Answer, Reason, Recogniser, parse_day

if TYPE_CHECKING:
    from gateway.node import Node

# Top-level reason codes.
UNKNOWN_OPERATOR = "UNKNOWN_OPERATOR"
NO_RECORD_OF_TYPE = "NO_RECORD_OF_TYPE"
# Per-type reason codes (the registry's codes come on top of these).
NO_STATUS_ON_DATE = "NO_STATUS_ON_DATE"
STATUS_NOT_ACTIVE = "STATUS_NOT_ACTIVE"
OUTSIDE_VALIDITY = "OUTSIDE_VALIDITY"
NO_CONSENT = "NO_CONSENT"
#: The registry could not ask about a stored record's type on the date (the issuer's programme
#: on that date has no such type): fail closed.
TYPE_NOT_IN_PROGRAMME = "TYPE_NOT_IN_PROGRAMME"

#: Most questions one ``check_many`` call answers (the gRPC edge enforces it too).
MAX_QUESTIONS = 10_000
_CODE = re.compile(r"[A-Z]{2,4}")
#: Entries each kept in a Checker's memo of registry answers and union memberships.
_MEMO_LIMIT = 100_000
#: (issuer, type, day, mode, strict) -> the registry's answer, or why it could not answer.
_RegistryMemo = dict[tuple[str, str, str, str | None, bool], Answer | str]
#: (union, day) -> its members on that day.
_MembersMemo = dict[tuple[str, str], frozenset[str]]


class BadQuestionError(InputError):
    """A question names an unknown code, type or mode, or a malformed date or identifier.

    ``position`` is the 0-based index of the question in a ``check_many`` batch (None for a
    single question)."""

    def __init__(self, message: str, *, position: int | None = None) -> None:
        self.position = position
        super().__init__(message if position is None else f"question {position}: {message}")


class UnknownSequenceError(InputError):
    """``watch`` was asked to resume after a change sequence this node never gave."""


# --- questions and answers ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Question:
    """One question, as a client asks it (validated and normalised by the :class:`Checker`).

    ``scheme`` None matches an identifier of any scheme; ``type`` None asks about every type
    of the operator; ``at`` None means today in the node's time zone; ``mode`` is a registry
    transport mode (road, air, sea, rail) or None."""

    operator_id: str
    issuer: str
    scheme: str | None = None
    type: str | None = None
    at: date | str | None = None
    mode: str | None = None
    strict: bool = False
    evidence: bool = False


@dataclass(frozen=True, slots=True)
class Evidence:
    """What proves a record: its signed entry and an inclusion proof to a verified checkpoint.

    ``unavailable`` says why there is none (envelope not held, or the entry not yet covered by
    a checkpoint this node holds every leaf of); then the other fields are empty."""

    log: str
    leaf_index: int
    entry: bytes | None = None
    tree_size: int = 0
    proof: tuple[bytes, ...] = ()
    checkpoint: str | None = None
    unavailable: str | None = None

    @property
    def available(self) -> bool:
        return self.unavailable is None

    def to_json(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "log": self.log,
            "leaf_index": self.leaf_index,
            "entry": base64.b64encode(self.entry).decode("ascii") if self.entry else None,
            "tree_size": self.tree_size if self.available else None,
            "inclusion_proof": [base64.b64encode(h).decode("ascii") for h in self.proof],
            "checkpoint": self.checkpoint,
            "detail": self.unavailable,
        }


@dataclass(frozen=True, slots=True)
class TypeAnswer:
    """The answer for one programme type of the operator."""

    type: str
    #: The record the status rests on; None when the node holds no status on the date.
    record: StatusRecord | None
    recognised: bool
    arrangements: tuple[str, ...]
    #: The issuing programme of the record's issuer on the date (registry), None without record.
    programme: str | None
    reasons: tuple[Reason, ...]
    warnings: tuple[str, ...]
    #: "confirmed" | "uncertain"; None when the registry was not asked.
    certainty: str | None
    evidence: Evidence | None = None

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "type": self.type,
            "status": r.status if r else None,
            "recognised": self.recognised,
            "arrangements": list(self.arrangements),
            "programme": self.programme,
            "reasons": [x.to_json() for x in self.reasons],
            "warnings": list(self.warnings),
            "certainty": self.certainty,
            "evidence": self.evidence.to_json() if self.evidence else None,
            "authorisation": r.authorisation if r else None,
            "issuer": r.issuer if r else None,
            "status_date": r.status_date if r else None,
            "valid_from": r.valid_from if r else None,
            "valid_until": r.valid_until if r else None,
            "consent": r.consent if r else None,
            "log": r.log if r else None,
            "leaf_index": r.idx if r else None,
        }


@dataclass(frozen=True, slots=True)
class Authorisation:
    issuer: str
    authorisation: str
    type: str
    log: str

    def to_json(self) -> dict[str, str]:
        return {
            "issuer": self.issuer,
            "authorisation": self.authorisation,
            "type": self.type,
            "log": self.log,
        }


@dataclass(frozen=True, slots=True)
class Operator:
    """The operator as known from the issuer's records (see the module docstring)."""

    operator_ids: tuple[OperatorId, ...]
    name: str | None
    country: str | None
    issuer: str
    log: str
    authorisations: tuple[Authorisation, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "operator_ids": [{"scheme": i.scheme, "value": i.value} for i in self.operator_ids],
            "name": self.name,
            "country": self.country,
            "issuer": self.issuer,
            "log": self.log,
            "authorisations": [a.to_json() for a in self.authorisations],
        }


@dataclass(frozen=True, slots=True)
class CheckAnswer:
    """The answer to one question; :meth:`to_json` is the ``mragw check --json`` document."""

    recognised: bool
    operator: Operator | None
    issuer: str
    at: date
    reasons: tuple[Reason, ...]
    types: tuple[TypeAnswer, ...]
    dataset: str

    def to_json(self) -> dict[str, Any]:
        return {
            "recognised": self.recognised,
            "operator": self.operator.to_json() if self.operator else None,
            "issuer": self.issuer,
            "at": self.at.isoformat(),
            "reasons": [r.to_json() for r in self.reasons],
            "types": [t.to_json() for t in self.types],
            "dataset": self.dataset,
        }


@dataclass(frozen=True, slots=True)
class WatchFilter:
    """Which changes ``watch`` yields; an empty tuple means "any"."""

    issuers: tuple[str, ...] = ()
    operator_ids: tuple[str, ...] = ()
    types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Change:
    """A record that became usable at this node (a row of ``record_feed``)."""

    seq: int
    record: StatusRecord
    #: The record's identifiers (its authorisation number is in ``record.authorisation``).
    operator_ids: tuple[OperatorId, ...]
    #: Status of the same (issuer, authorisation, type) in that log before this record.
    previous_status: str | None

    @property
    def log(self) -> str:
        return self.record.log

    @property
    def idx(self) -> int:
        return self.record.idx


# --- validated questions --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Asked:
    value: str
    scheme: str | None
    issuer: str
    union: bool
    type: str | None
    at: date
    day: str
    mode: str | None
    strict: bool
    evidence: bool
    shown: str


@dataclass(slots=True)
class _Decided:
    """A question after the lookups, before identifiers and evidence are attached."""

    asked: _Asked
    history: list[StatusRecord] = field(default_factory=list)
    reasons: list[Reason] = field(default_factory=list)
    types: list[TypeAnswer] = field(default_factory=list)


def _utc_today() -> date:
    return datetime.now(tz=UTC).date()


def _normalise_value(text: str) -> str:
    return re.sub(r"\s+", "", text).upper()


class Checker:
    """Answers recognition questions from the node's database and registry dataset.

    Answers use the node's active registry dataset, read in the answer's snapshot; ``today``
    is the date of a question without one (the node's configured time zone);
    ``poll_interval`` is how often ``watch`` looks for changes made by other processes. On
    SQLite, checks without evidence read through :class:`SqliteSnapshots` (no thread hop,
    no statement compilation); call :meth:`close` on the thread that used the checker."""

    def __init__(
        self,
        engine: AsyncEngine,
        admin: str,
        *,
        today: Callable[[], date] = _utc_today,
        poll_interval: float = 0.5,
        max_questions: int = MAX_QUESTIONS,
        gap_timeout: float = 30.0,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.engine = engine
        self.admin = admin
        path = sqlite_file(engine)
        self._snapshots = (
            SqliteSnapshots(path, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS) if path else None
        )
        self._today = today
        self.poll_interval = poll_interval
        self.max_questions = max_questions
        self.gap_timeout = gap_timeout
        self._wake = asyncio.Event()
        # (dataset version, its registry answers, its union memberships): see _memo_for.
        self._memo: tuple[str, _RegistryMemo, _MembersMemo] = ("", {}, {})

    @classmethod
    def for_node(cls, node: Node, **options: Any) -> Checker:
        options.setdefault("today", node.config.today)
        options.setdefault("poll_interval", node.config.replication.poll_interval_s)
        return cls(node.engine, node.admin, **options)

    # --- connections ----------------------------------------------------------------------

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        """One read connection (one snapshot); database failures become UnreachableError."""
        try:
            async with self.engine.connect() as conn:
                yield conn
        except (OperationalError, DBAPIError, OSError) as error:
            raise UnreachableError(f"database unreachable: {describe_db_error(error)}") from error

    # --- checks ---------------------------------------------------------------------------

    async def check(self, question: Question) -> CheckAnswer:
        """Answer one question; :class:`BadQuestionError` for a bad one."""
        return (await self._answer([question], positions=False))[0]

    async def check_many(self, questions: Sequence[Question]) -> list[CheckAnswer]:
        """Answer every question, in order; any bad question fails them all, naming its
        0-based position."""
        if len(questions) > self.max_questions:
            raise BadQuestionError(
                f"{len(questions)} questions in one call: at most {self.max_questions}"
            )
        if not questions:
            return []
        return await self._answer(questions, positions=True)

    def _memo_for(self, recogniser: Recogniser) -> tuple[_RegistryMemo, _MembersMemo]:
        """Registry answers and union memberships already worked out with this dataset: they
        depend only on the dataset and the question's date, and asking the registry again
        was a fifth of a ``Check``. Dropped when the dataset changes or the memo grows big."""
        version, registry, members = self._memo
        if (
            version != recogniser.version
            or len(registry) > _MEMO_LIMIT
            or len(members) > _MEMO_LIMIT
        ):
            registry, members = {}, {}
            self._memo = (recogniser.version, registry, members)
        return registry, members

    def close(self) -> None:
        """Release the read connections this thread opened."""
        if self._snapshots is not None:
            self._snapshots.close()

    async def _answer(self, questions: Sequence[Question], *, positions: bool) -> list[CheckAnswer]:
        if self._snapshots is not None and not any(q.evidence for q in questions):
            try:
                with self._snapshots.snapshot() as reads:
                    return await self._answer_with(reads, None, questions, positions=positions)
            except sqlite3.Error as error:
                raise UnreachableError(f"database unreachable: {error}") from error
        async with self._reading() as conn:
            return await self._answer_with(AlchemyReads(conn), conn, questions, positions=positions)

    async def _answer_with(
        self,
        reads: StatusReads,
        conn: AsyncConnection | None,
        questions: Sequence[Question],
        *,
        positions: bool,
    ) -> list[CheckAnswer]:
        """Answer from one snapshot; ``conn`` (the same snapshot) is needed for evidence."""
        recogniser = await recogniser_of(reads)
        asked = [
            self._validate(q, recogniser, n if positions else None) for n, q in enumerate(questions)
        ]
        matches = await reads.match([a.value for a in asked])
        histories = await self._histories(reads, matches)
        decided: list[_Decided] = []
        registry, members = self._memo_for(recogniser)
        for a in asked:
            decided.append(
                self._decide(
                    a,
                    matches=matches,
                    histories=histories,
                    recogniser=recogniser,
                    registry=registry,
                    members=members,
                )
            )
        pairs = {(r.log, r.idx) for d in decided for r in _latest_per_authorisation(d.history)}
        ids = await reads.identifiers(pairs)
        wanted = {
            (t.record.log, t.record.idx)
            for d in decided
            if d.asked.evidence
            for t in d.types
            if t.record is not None
        }
        evidence: dict[tuple[str, int], Evidence] = {}
        if wanted:
            if conn is None:
                raise AssertionError("evidence needs the SQLAlchemy connection")
            evidence = await self._evidence(conn, wanted)
        return [_finish(d, ids, evidence, recogniser.version) for d in decided]

    def _validate(self, q: Question, recogniser: Recogniser, position: int | None) -> _Asked:
        def bad(message: str) -> BadQuestionError:
            return BadQuestionError(message, position=position)

        issuer = q.issuer.strip().upper() if isinstance(q.issuer, str) else ""
        if not _CODE.fullmatch(issuer) or not recogniser.is_known_code(issuer):
            raise bad(
                f"issuer {q.issuer!r}: not an administration or union code known to the registry"
            )
        if q.at is None:
            at = self._today()
        elif isinstance(q.at, datetime):
            raise bad(f"date {q.at.isoformat()!r}: a date is needed, not a date and time")
        elif isinstance(q.at, date):
            at = q.at
        else:
            try:
                at = parse_day(q.at)
            except QuestionError as error:
                raise bad(f"date: {error}") from error
        mode: str | None = None
        if q.mode is not None and q.mode != "":
            mode = q.mode.strip().lower()
            if mode not in MODES:
                raise bad(f"mode {q.mode!r}: unknown (expected {', '.join(MODES)})")
        value = _normalise_value(q.operator_id) if isinstance(q.operator_id, str) else ""
        scheme: str | None = None
        if not value:
            raise bad("operator identifier: empty")
        if q.scheme is not None and q.scheme != "":
            try:
                op_id = normalise_identifier(q.scheme, q.operator_id)
            except ValueError as error:
                raise bad(f"operator identifier: {error}") from error
            scheme, value = op_id.scheme, op_id.value
        else:
            for name in SCHEMES:
                try:
                    normalise_identifier(name, value)
                    break
                except ValueError:
                    continue
            else:
                raise bad(f"operator identifier {q.operator_id!r} is malformed for every scheme")
        type_: str | None = None
        if q.type is not None and q.type != "":
            type_ = q.type.strip().upper()
            try:
                programme, types = recogniser.programme_types(issuer, at)
            except QuestionError as error:
                raise bad(str(error)) from error
            if type_ not in types:
                raise bad(
                    f"type {q.type!r} is not a type of {programme}, the programme of {issuer} "
                    f"on {at.isoformat()} (types: {', '.join(types)})"
                )
        return _Asked(
            value=value,
            scheme=scheme,
            issuer=issuer,
            union=issuer in recogniser.dataset.union_codes,
            type=type_,
            at=at,
            day=at.isoformat(),
            mode=mode,
            strict=bool(q.strict),
            evidence=bool(q.evidence),
            shown=f"{scheme}:{value}" if scheme else value,
        )

    @staticmethod
    async def _histories(
        reads: StatusReads, matches: Matches
    ) -> dict[tuple[str, str, str], list[StatusRecord]]:
        """(log, issuer, authorisation) -> every valid record of that authorisation (any type),
        so a later record that no longer carries the identifier asked still counts."""
        keys = sorted(
            {(r.log, r.issuer, r.authorisation) for ms in matches.values() for _, r in ms}
        )
        out: dict[tuple[str, str, str], list[StatusRecord]] = {}
        for rec in await reads.valid_records(keys):
            out.setdefault((rec.log, rec.issuer, rec.authorisation), []).append(rec)
        return out

    def _decide(
        self,
        a: _Asked,
        *,
        matches: dict[str, list[tuple[str, StatusRecord]]],
        histories: dict[tuple[str, str, str], list[StatusRecord]],
        recogniser: Recogniser,
        registry: _RegistryMemo,
        members: _MembersMemo,
    ) -> _Decided:
        def members_of(union: str, day: str) -> frozenset[str]:
            key = (union, day)
            known = members.get(key)
            if known is None:
                known = frozenset(recogniser.members_on(union, day))
                members[key] = known
            return known

        def of_issuer(r: StatusRecord) -> bool:
            if r.issuer != a.issuer and not (
                a.union and r.issuer in members_of(a.issuer, r.status_date)
            ):
                return False
            return authoritative(r)

        def authoritative(r: StatusRecord) -> bool:
            return log_speaks_for(
                r.log,
                r.issuer,
                own_admin=self.admin,
                day=a.day,
                unions=unions,
                members_of=members_of,
            )

        unions = recogniser.dataset.union_codes
        decided = _Decided(a)
        hits = [
            r
            for scheme, r in matches.get(a.value, ())
            if (a.scheme is None or scheme == a.scheme) and of_issuer(r)
        ]
        if not hits:
            decided.reasons.append(
                Reason(
                    None,
                    UNKNOWN_OPERATOR,
                    f"this node holds no usable record of {a.shown} from {a.issuer}",
                )
            )
            return decided
        seen: set[tuple[str, int]] = set()
        for key in sorted({(r.log, r.issuer, r.authorisation) for r in hits}):
            for r in histories.get(key, ()):
                if (r.log, r.idx) not in seen and of_issuer(r):
                    seen.add((r.log, r.idx))
                    decided.history.append(r)
        by_type: dict[str, list[StatusRecord]] = {}
        for r in decided.history:
            by_type.setdefault(r.aeo_type, []).append(r)
        if a.type is not None:
            if a.type not in by_type:
                decided.reasons.append(
                    Reason(
                        None,
                        NO_RECORD_OF_TYPE,
                        f"this node holds no record of type {a.type} for {a.shown} from "
                        f"{a.issuer} (types held: {', '.join(sorted(by_type))})",
                    )
                )
                return decided
            by_type = {a.type: by_type[a.type]}
        for type_ in sorted(by_type):
            decided.types.append(self._type_answer(a, type_, by_type[type_], recogniser, registry))
        return decided

    def _type_answer(
        self,
        a: _Asked,
        type_: str,
        history: list[StatusRecord],
        recogniser: Recogniser,
        registry: _RegistryMemo,
    ) -> TypeAnswer:
        on_date = [r for r in history if r.status_date <= a.day]
        if not on_date:
            first = min(r.status_date for r in history)
            return TypeAnswer(
                type=type_,
                record=None,
                recognised=False,
                arrangements=(),
                programme=None,
                reasons=(
                    Reason(
                        None,
                        NO_STATUS_ON_DATE,
                        f"no {type_} status on or before {a.day} (the first is dated {first})",
                    ),
                ),
                warnings=(),
                certainty=None,
            )
        r = max(on_date, key=lambda x: x.order)
        return decide_status(
            self.admin,
            r,
            at=a.at,
            mode=a.mode,
            strict=a.strict,
            recogniser=recogniser,
            registry=registry,
        )

    @staticmethod
    async def _evidence(
        conn: AsyncConnection, wanted: set[tuple[str, int]]
    ) -> dict[tuple[str, int], Evidence]:
        """Entry bytes and an inclusion proof to the largest verified checkpoint this node holds
        every leaf of: ``held_checkpoint``, or ``checkpoint`` when it is not ahead of the stored
        tree (``logs.size``), whichever is larger."""
        log_codes = sorted({log for log, _ in wanted})
        held = "held_checkpoint" in logs.c
        columns = [logs.c.code, logs.c.size, logs.c.checkpoint, logs.c.checkpoint_size]
        if held:
            columns += [logs.c.held_checkpoint, logs.c.held_size]
        heads: dict[str, tuple[str | None, int]] = {}
        for row in (await conn.execute(select(*columns).where(logs.c.code.in_(log_codes)))).all():
            m = row._mapping
            candidates: list[tuple[int, str]] = []
            if held and m["held_checkpoint"] is not None:
                candidates.append((int(m["held_size"]), m["held_checkpoint"]))
            if m["checkpoint"] is not None and int(m["checkpoint_size"]) <= int(m["size"]):
                candidates.append((int(m["checkpoint_size"]), m["checkpoint"]))
            if candidates:
                size, note = max(candidates, key=lambda c: c[0])
                heads[m["code"]] = (note, size)
        envelopes: dict[tuple[str, int], bytes | None] = {}
        for (log,), chunk in grouped(wanted):
            stmt = select(entries.c.log, entries.c.idx, entries.c.envelope).where(
                entries.c.log == log, entries.c.idx.in_(chunk), entries.c.sig_state == VALID
            )
            for row in (await conn.execute(stmt)).all():
                envelopes[(row.log, int(row.idx))] = (
                    bytes(row.envelope) if row.envelope is not None else None
                )
        out: dict[tuple[str, int], Evidence] = {}
        for log, idx in sorted(wanted):
            envelope = envelopes.get((log, idx))
            head_note, head_size = heads.get(log, (None, 0))
            if envelope is None:
                out[(log, idx)] = Evidence(
                    log,
                    idx,
                    unavailable="the entry's envelope is not held here (leaf hash only, "
                    "pruned or erased)",
                )
            elif head_note is None or idx >= head_size:
                out[(log, idx)] = Evidence(
                    log,
                    idx,
                    unavailable=f"entry {idx} of log {log} is not yet covered by a verified "
                    f"checkpoint this node holds (size {head_size})",
                )
            else:
                proof = await inclusion_proof(conn, log, idx, head_size)
                out[(log, idx)] = Evidence(log, idx, envelope, head_size, tuple(proof), head_note)
        return out

    # --- the change feed ------------------------------------------------------------------

    def notify(self) -> None:
        """Wake every ``watch`` now (an in-process append); other processes are picked up by
        polling."""
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def last_sequence(self) -> int:
        async with self._reading() as conn:
            return int((await conn.execute(select(func.max(record_feed.c.seq)))).scalar() or 0)

    async def watch(
        self,
        after_seq: int | None = None,
        filters: WatchFilter | None = None,
        *,
        ready: asyncio.Event | None = None,
        batch: int = 500,
    ) -> AsyncGenerator[Change, None]:
        """Yield every change after ``after_seq`` (None: from now on), then new ones as they
        become usable, forever; ``ready`` is set once the starting point is fixed. A bad
        filter or sequence raises on the first iteration (see :meth:`start_watch`)."""
        feed = await self.start_watch(after_seq, filters, batch=batch)
        if ready is not None:
            ready.set()
        async with aclosing(feed):
            async for change in feed:
                yield change

    async def start_watch(
        self,
        after_seq: int | None = None,
        filters: WatchFilter | None = None,
        *,
        batch: int = 500,
    ) -> AsyncGenerator[Change, None]:
        """Check the filters and fix the starting point now (raising BadQuestionError or
        UnknownSequenceError), then return the feed: every change after ``after_seq`` (None:
        from now on), then new ones as they become usable, forever.

        Sequences are allocated when a transaction inserts, and on PostgreSQL two transactions
        may commit out of sequence order: a sequence skipped over is remembered as a gap and
        looked for again for ``gap_timeout`` seconds (after that it was a rollback), so no
        change is lost to a slow commit."""
        filters = filters or WatchFilter()
        async with self._reading() as conn:
            recogniser = await recogniser_of(AlchemyReads(conn))
            last = int((await conn.execute(select(func.max(record_feed.c.seq)))).scalar() or 0)
        issuers = self._watch_issuers(filters, recogniser)
        if after_seq is not None:
            if after_seq < 0 or after_seq > last:
                raise UnknownSequenceError(
                    f"after_sequence {after_seq}: this node has given sequences up to {last} only"
                )
            last = after_seq
        return self._follow(
            last,
            batch=batch,
            recogniser=recogniser,
            issuers=issuers,
            wanted_ids=frozenset(_normalise_value(v) for v in filters.operator_ids),
            wanted_types=frozenset(t.strip().upper() for t in filters.types),
        )

    async def _follow(
        self,
        last: int,
        *,
        batch: int,
        recogniser: Recogniser,
        issuers: tuple[str, ...],
        wanted_ids: frozenset[str],
        wanted_types: frozenset[str],
    ) -> AsyncGenerator[Change, None]:
        gaps: dict[int, float] = {}
        while True:
            wake = self._wake
            changes, last, full = await self._poll(
                last,
                gaps=gaps,
                batch=batch,
                recogniser=recogniser,
                issuers=issuers,
                wanted_ids=wanted_ids,
                wanted_types=wanted_types,
            )
            for change in changes:
                yield change
            if not full:
                # Not a busy loop: wait for the poll interval, or less when notify() is called.
                with suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.poll_interval)

    @staticmethod
    def _watch_issuers(filters: WatchFilter, recogniser: Recogniser) -> tuple[str, ...]:
        out: list[str] = []
        for code in filters.issuers:
            c = code.strip().upper()
            if not _CODE.fullmatch(c) or not recogniser.is_known_code(c):
                raise BadQuestionError(f"issuer {code!r}: not an administration or union code")
            out.append(c)
        return tuple(out)

    async def _poll(
        self,
        last: int,
        *,
        gaps: dict[int, float],
        batch: int,
        recogniser: Recogniser,
        issuers: tuple[str, ...],
        wanted_ids: frozenset[str],
        wanted_types: frozenset[str],
    ) -> tuple[list[Change], int, bool]:
        now = time.monotonic()
        for seq in [s for s, t in gaps.items() if now - t > self.gap_timeout]:
            del gaps[seq]
        wanted_seq = record_feed.c.seq > last
        if gaps:
            wanted_seq = wanted_seq | record_feed.c.seq.in_(sorted(gaps)[:CHUNK])
        stmt = (
            select(record_feed.c.seq, entries.c.sig_state, *RECORD_COLUMNS)
            .select_from(
                record_feed.outerjoin(
                    records,
                    and_(records.c.log == record_feed.c.log, records.c.idx == record_feed.c.idx),
                ).outerjoin(
                    entries,
                    and_(entries.c.log == record_feed.c.log, entries.c.idx == record_feed.c.idx),
                )
            )
            .where(wanted_seq)
            .order_by(record_feed.c.seq)
            .limit(batch)
        )
        async with self._reading() as conn:
            # Union membership comes from the dataset active now (it may have been switched).
            recogniser = await recogniser_of(AlchemyReads(conn))
            rows = (await conn.execute(stmt)).all()
            full = len(rows) >= batch
            picked: list[tuple[int, StatusRecord]] = []
            for row in rows:
                seq = int(row.seq)
                gaps.pop(seq, None)
                if seq > last:
                    gaps.update((s, now) for s in range(last + 1, seq) if len(gaps) < 10 * CHUNK)
                    last = seq
                if row.sig_state != VALID or row.issuer is None:
                    continue
                rec = record_from_row(row)
                if wanted_types and rec.aeo_type not in wanted_types:
                    continue
                if issuers and not any(
                    rec.issuer == code
                    or (
                        code in recogniser.dataset.union_codes
                        and rec.issuer in recogniser.members_on(code, rec.status_date)
                    )
                    for code in issuers
                ):
                    continue
                picked.append((seq, rec))
            if not picked:
                return [], last, full
            ids = await AlchemyReads(conn).identifiers({(r.log, r.idx) for _, r in picked})
            if wanted_ids:
                picked = [
                    (s, r)
                    for s, r in picked
                    if any(i.value in wanted_ids for i in ids.get((r.log, r.idx), ()))
                ]
            previous = await self._previous(conn, [r for _, r in picked])
        changes = [
            Change(
                seq=s,
                record=r,
                # The index adds the authorisation number as an AUTH identifier; the record
                # carries it in its own field.
                operator_ids=tuple(
                    sorted(
                        i
                        for i in ids.get((r.log, r.idx), ())
                        if not (i.scheme == "AUTH" and i.value == r.authorisation)
                    )
                ),
                previous_status=previous.get((r.log, r.idx)),
            )
            for s, r in sorted(picked, key=lambda p: p[0])
        ]
        return changes, last, full

    @staticmethod
    async def _previous(
        conn: AsyncConnection, recs: Sequence[StatusRecord]
    ) -> dict[tuple[str, int], str]:
        """For each record, the status the node held for its authorisation before it: the
        latest (status_date, index) among the earlier entries of the same key."""
        keys = sorted({r.key for r in recs})
        history: dict[tuple[str, str, str, str], list[StatusRecord]] = {}
        wanted = set(keys)
        for rec in await AlchemyReads(conn).valid_records({(k[0], k[1], k[2]) for k in keys}):
            if rec.key in wanted:
                history.setdefault(rec.key, []).append(rec)
        out: dict[tuple[str, int], str] = {}
        for r in recs:
            earlier = [x for x in history.get(r.key, ()) if x.idx < r.idx]
            if earlier:
                out[(r.log, r.idx)] = max(earlier, key=lambda x: x.order).status
        return out


# --- the decision, shared with offline evidence verification ---------------------------------


def log_speaks_for(
    log: str,
    issuer: str,
    *,
    own_admin: str,
    day: str,
    unions: Collection[str],
    members_of: Callable[[str, str], Collection[str]],
) -> bool:
    """Whose word counts for issuer I on the date asked: I's own log, our own log (we signed
    it), or the log of the union I belongs to *on that date*. A union gateway cannot speak for a
    state outside the union's membership on the date asked, whatever ``status_date`` it writes
    into a record (a former member's history stays usable for dates when it was a member)."""
    if log in (issuer, own_admin):
        return True
    if log not in unions:
        return False
    return issuer in members_of(log, day)


def decide_status(
    own_admin: str,
    r: StatusRecord,
    *,
    at: date,
    mode: str | None,
    strict: bool,
    recogniser: Recogniser,
    registry: _RegistryMemo | None = None,
) -> TypeAnswer:
    """Steps 1-4 for the status record ``r`` that holds on ``at``: is its type recognised by
    ``own_admin``? Pure (no I/O), so ``mragw verify`` re-derives an answer from an evidence
    bundle's record and embedded dataset exactly as Check decided it. ``registry`` memoises
    registry answers across the questions of one batch."""
    type_ = r.aeo_type
    day = at.isoformat()
    reasons: list[Reason] = []
    # 1. The status itself.
    if r.status == "CONSENT_WITHDRAWN":
        reasons.append(
            Reason(None, NO_CONSENT, f"the operator withdrew its consent on {r.status_date}")
        )
    elif r.status != "ACTIVE":
        reasons.append(Reason(None, STATUS_NOT_ACTIVE, f"status {r.status} since {r.status_date}"))
    # 2. The validity window, both bounds inclusive.
    if (r.valid_from is not None and day < r.valid_from) or (
        r.valid_until is not None and day > r.valid_until
    ):
        reasons.append(
            Reason(
                None,
                OUTSIDE_VALIDITY,
                f"{day} is outside the validity {r.valid_from or '...'} to "
                f"{r.valid_until or 'open end'}",
            )
        )
    # 3. Consent to share (a CONSENT_WITHDRAWN status already said it).
    if not r.consent and r.status != "CONSENT_WITHDRAWN":
        reasons.append(
            Reason(None, NO_CONSENT, "the operator has not consented to its data being used")
        )
    # 4. The registry: does this administration recognise the record's issuer and type?
    memo_key = (r.issuer, type_, day, mode, strict)
    answer = registry.get(memo_key) if registry is not None else None
    if answer is None:
        try:
            answer = recogniser.check(own_admin, r.issuer, type_, at, mode=mode, strict=strict)
        except QuestionError as error:
            answer = str(error)
        if registry is not None:
            registry[memo_key] = answer
    if isinstance(answer, str):
        reasons.append(Reason(None, TYPE_NOT_IN_PROGRAMME, answer))
        return TypeAnswer(type_, r, False, (), None, tuple(reasons), (), None)
    if not answer.recognised:
        reasons.extend(answer.reasons)
    recognised = not reasons
    try:
        programme: str | None = recogniser.programme_types(r.issuer, at)[0]
    except QuestionError:
        programme = None
    return TypeAnswer(
        type=type_,
        record=r,
        recognised=recognised,
        arrangements=answer.arrangements if recognised else (),
        programme=programme,
        reasons=tuple(reasons),
        warnings=answer.warnings,
        certainty=answer.certainty.value,
    )


def _latest_per_authorisation(history: Sequence[StatusRecord]) -> list[StatusRecord]:
    latest: dict[tuple[str, str, str, str], StatusRecord] = {}
    for r in history:
        held = latest.get(r.key)
        if held is None or r.order > held.order:
            latest[r.key] = r
    return list(latest.values())


def _finish(
    d: _Decided,
    ids: dict[tuple[str, int], list[OperatorId]],
    evidence: dict[tuple[str, int], Evidence],
    dataset: str,
) -> CheckAnswer:
    a = d.asked
    operator: Operator | None = None
    if d.history:
        newest = max(d.history, key=lambda r: r.order)
        latest = _latest_per_authorisation(d.history)
        operator = Operator(
            operator_ids=tuple(sorted({i for r in latest for i in ids.get((r.log, r.idx), ())})),
            name=newest.name,
            country=newest.country,
            issuer=newest.issuer,
            log=newest.log,
            authorisations=tuple(
                sorted(
                    {Authorisation(r.issuer, r.authorisation, r.aeo_type, r.log) for r in latest},
                    key=lambda x: (x.type, x.issuer, x.authorisation, x.log),
                )
            ),
        )
    types = tuple(
        _with_evidence(t, evidence) if a.evidence and t.record is not None else t for t in d.types
    )
    return CheckAnswer(
        recognised=any(t.recognised for t in types),
        operator=operator,
        issuer=a.issuer,
        at=a.at,
        reasons=tuple(d.reasons),
        types=types,
        dataset=dataset,
    )


def _with_evidence(t: TypeAnswer, evidence: dict[tuple[str, int], Evidence]) -> TypeAnswer:
    assert t.record is not None  # noqa: S101 - checked by the caller
    found = evidence.get((t.record.log, t.record.idx))
    if found is None:
        found = Evidence(t.record.log, t.record.idx, unavailable="the entry is no longer usable")
    warnings = t.warnings
    if found.unavailable:
        warnings = (*warnings, f"evidence unavailable: {found.unavailable}")
    return TypeAnswer(
        t.type,
        t.record,
        t.recognised,
        t.arrangements,
        t.programme,
        t.reasons,
        warnings,
        t.certainty,
        found,
    )


__all__ = [
    "MAX_QUESTIONS",
    "NO_CONSENT",
    "NO_RECORD_OF_TYPE",
    "NO_STATUS_ON_DATE",
    "OUTSIDE_VALIDITY",
    "STATUS_NOT_ACTIVE",
    "TYPE_NOT_IN_PROGRAMME",
    "UNKNOWN_OPERATOR",
    "Authorisation",
    "BadQuestionError",
    "Change",
    "CheckAnswer",
    "Checker",
    "Evidence",
    "Operator",
    "Question",
    "StatusRecord",
    "TypeAnswer",
    "UnknownSequenceError",
    "WatchFilter",
    "decide_status",
    "log_speaks_for",
]

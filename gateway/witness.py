"""Witnessing: partners cosign the checkpoints they verified and compare views of each log.

Every gateway is a witness (C2SP tlog-cosignature/v1, key name
:func:`gateway.trust.witness_name`, keys: the Ed25519 signing keys of its trust statement).
It hands each partner the latest checkpoint it holds of every log it replicates (its own
included), cosigned, and receives theirs (:mod:`gateway.witness_gossip` carries them). Two
checkpoints of one log that cannot both be true are a *split view*: the issuer showed two
partners two histories.

Rules for a checkpoint of log L that witness W says it holds (:func:`receive_views`),
checked in this order (numbered as in the code):
1. The request is well formed: at most :data:`MAX_VIEWS` views, one per log, each a strict
   signed note; else :class:`WitnessInputError` and nothing is stored.
2. Every view carries W's cosignature, by a key of W's pinned trust statement that is not
   revoked, not dated in the future; else :class:`ForgedCosignatureError` (or
   :class:`WitnessInputError` when missing) and nothing at all is stored.
3. Views of logs we do not hold (not ours, not a pinned partner's) are ignored.
4. The issuer's signature must verify with the issuer's statement (ours for our own log); a
   view failing it is ignored and counted, never held against anyone (W may hold an older
   statement).
5. Compared with what we verified ourselves: same size as our latest checkpoint but another
   root, or a size we hold the leaves of but another root than our tree's -> split view. A
   size beyond our replica waits in ``witnessed`` until our replica reaches it
   (:func:`check_pending`), or until the issuer proves it consistent with our latest
   checkpoint (:func:`prove_pending`; a proof that does not verify is a split view). Two
   waiting views of one size with different roots are a split view too.
6. A matching view's cosignature is stored in ``cosignatures`` (idempotent) unless W is the
   issuer itself (self-witnessing proves nothing).

A split view quarantines the issuer (unless the log is our own: then our checkpoint key signed
two histories, which no quarantine of a partner fixes, so only the alert is raised) and raises
one ``alerts`` row naming both checkpoints and who holds each; the same pair never raises a
second open alert. Comparison and its consequences commit in one transaction, taken with the
log's head row locked (``lock_seq``) so they serialise with replication of that log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.checkpoint import Checkpoint, SignedNote, parse_note
from crypto.cosignature import Cosignature, add_cosignature, cosign, find_cosignature
from crypto.errors import CryptoError, VerificationError
from crypto.keys import PublicKey, Scheme
from crypto.merkle import verify_consistency
from gateway.alerts import open_alert
from gateway.errors import CheckFailedError, InputError
from gateway.node import Node, now_utc
from gateway.partners import UnknownPartnerError, partner_statement, quarantine
from gateway.replication import ReplicationFaultError, verify_note
from gateway.storage.schema import alerts, cosignatures, logs, partners, witnessed
from gateway.storage.tiles import lock_log, root_at
from gateway.storage.upsert import insert_ignore
from gateway.trust import TrustStatement, witness_name

log = logging.getLogger("mragw.witness")

#: At most this many views per exchange: one per log, and an administration has far fewer
#: partners (about 90 MRAs exist worldwide).
MAX_VIEWS = 256
SPLIT_VIEW = "split_view"
_LOG_CODE = re.compile(r"[A-Z]{1,8}")

FetchProof = Callable[[int, int], Awaitable[Sequence[bytes]]]


class WitnessInputError(InputError):
    """A malformed witness exchange: the message names the problem; nothing was stored."""


class ForgedCosignatureError(CheckFailedError):
    """A witness's cosignature did not verify with its published keys; nothing was stored."""


@dataclass(frozen=True)
class View:
    """A checkpoint note of ``log`` as a witness holds it (issuer's signature, cosignatures)."""

    log: str
    note: str


@dataclass(frozen=True)
class SplitView:
    """A split view raised as an alert: the issuer and the alert's message."""

    log: str
    message: str


@dataclass
class WitnessOutcome:
    """What one exchange did, for logs and metrics: views that matched ours (their
    cosignature stored, unless the witness is the issuer), waiting for our replica, of logs we
    do not hold, failing the issuer's signature, and the split views raised."""

    cosigned: int = 0
    pending: int = 0
    ignored: int = 0
    bad_issuer_signature: int = 0
    split_views: list[SplitView] = field(default_factory=list)

    def merge(self, other: WitnessOutcome) -> None:
        self.cosigned += other.cosigned
        self.pending += other.pending
        self.ignored += other.ignored
        self.bad_issuer_signature += other.bad_issuer_signature
        self.split_views.extend(other.split_views)


# -- our views ------------------------------------------------------------------------------


async def our_views(node: Node, conn: AsyncConnection) -> list[View]:
    """The latest checkpoint we hold every leaf of, for our own log and each pinned partner's,
    with our cosignature appended. Logs without a verified checkpoint yet are skipped."""
    # Cosigned with every checkpoint key we may sign with now: during a key rotation a
    # partner that has not fetched our new statement yet still verifies the older key's line.
    signers = await node.checkpoint_signers(conn)
    if not signers:
        raise InputError("no valid Ed25519 checkpoint key on this node to cosign with")
    name = witness_name(node.admin)
    now = int(time.time())
    rows = (
        await conn.execute(
            select(logs.c.code, logs.c.own, logs.c.checkpoint, logs.c.held_checkpoint)
            .select_from(logs.outerjoin(partners, partners.c.code == logs.c.code))
            .where(logs.c.own.is_(True) | partners.c.code.is_not(None))
            .order_by(logs.c.code)
        )
    ).all()
    views: list[View] = []
    for row in rows:
        note = _held_note(row)
        if note is None:
            continue
        cosigned = parse_note(note)
        for signer in signers:
            cosigned = add_cosignature(cosigned, cosign(cosigned, name, signer, now))
        views.append(View(str(row.code), cosigned.to_text()))
    return views


def _held_note(row: Any) -> str | None:
    # Our own log's head checkpoint covers every leaf we hold; a replica's latest verified
    # checkpoint may be ahead of its leaves, so the one evidence points to is held_checkpoint.
    return str(row.checkpoint) if row.own else (row.held_checkpoint or None)


# -- receiving ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Checked:
    log: str
    note: str
    checkpoint: Checkpoint
    cosignature: Cosignature


@dataclass
class _Trust:
    """The statements a comparison needs, re-verified from the database once per call."""

    node: Node
    own: TrustStatement
    rows: dict[str, Any]
    _statements: dict[str, TrustStatement] = field(default_factory=dict)

    @classmethod
    async def load(cls, node: Node, conn: AsyncConnection) -> _Trust:
        rows = {str(r.code): r for r in (await conn.execute(select(partners))).all()}
        return cls(node, await node.trust_statement(conn), rows)

    def holds(self, log: str) -> bool:
        return log == self.node.admin or log in self.rows

    def statement(self, code: str) -> TrustStatement:
        if code == self.node.admin:
            return self.own
        if code not in self._statements:
            self._statements[code] = partner_statement(self.rows[code])
        return self._statements[code]


def witness_keys(
    statement: TrustStatement, moment: datetime, skew: timedelta = timedelta(0)
) -> list[PublicKey]:
    """The keys a gateway may cosign with at ``moment``: its statement's Ed25519 signing keys,
    not revoked, inside their validity window (give or take ``skew``)."""
    return [
        k.public_key
        for k in statement.signing_keys
        if k.public_key.scheme is Scheme.ED25519
        and k.revoked_at_index is None
        and k.in_window(moment, skew)
    ]


def verify_witness_cosignature(
    note: SignedNote, log: str, witness: str, keys: Iterable[PublicKey], *, not_after: float
) -> Cosignature:
    """Witness ``witness``'s cosignature on ``note`` (a checkpoint of ``log``); raises
    :class:`WitnessInputError` when it carries none, :class:`ForgedCosignatureError` when the
    line does not verify with one of ``keys`` or is dated after ``not_after``."""
    name = witness_name(witness)
    if not any(s.name == name for s in note.signatures):
        raise WitnessInputError(f"checkpoint of {log} carries no cosignature by {name}")
    valid: list[Cosignature] = []
    for key in keys:
        # Every line by a known key must verify; lines by keys we do not know are ignored (a
        # witness cosigns with each of its keys during a rotation, as C2SP notes allow).
        try:
            found = find_cosignature(note, name, key)
        except VerificationError as error:
            raise ForgedCosignatureError(
                f"cosignature by {name} on the checkpoint of {log}: {error}"
            ) from error
        if found is None:
            continue
        if found.timestamp > not_after:
            raise ForgedCosignatureError(
                f"cosignature by {name} on the checkpoint of {log} is dated "
                f"{found.timestamp}, in the future"
            )
        valid.append(found)
    if not valid:
        raise ForgedCosignatureError(
            f"cosignature by {name} on the checkpoint of {log} is not by a valid key of "
            f"{witness}'s trust statement"
        )
    return max(valid, key=lambda c: c.timestamp)


def _parse_views(views: Sequence[View]) -> list[tuple[str, str, SignedNote]]:
    """1. Shape: bounded, one view per log, strict notes."""
    if len(views) > MAX_VIEWS:
        raise WitnessInputError(f"{len(views)} checkpoints, at most {MAX_VIEWS} per exchange")
    seen: set[str] = set()
    parsed: list[tuple[str, str, SignedNote]] = []
    for position, view in enumerate(views):
        if not _LOG_CODE.fullmatch(view.log):
            raise WitnessInputError(
                f"checkpoints[{position}].log {view.log!r} is not an administration code"
            )
        if view.log in seen:
            raise WitnessInputError(f"checkpoints[{position}]: a second checkpoint of {view.log}")
        seen.add(view.log)
        try:
            parsed.append((view.log, view.note, parse_note(view.note)))
        except CryptoError as error:
            raise WitnessInputError(
                f"checkpoints[{position}] (log {view.log}): malformed note: {error}"
            ) from error
    return parsed


async def receive_views(node: Node, witness: str, views: Sequence[View]) -> WitnessOutcome:
    """Check and compare the views partner ``witness`` (identified by mTLS, never by the
    message) says it holds; see the module docstring for the rules."""
    parsed = _parse_views(views)
    async with node.engine.connect() as conn:
        trust = await _Trust.load(node, conn)
    if witness not in trust.rows:
        raise UnknownPartnerError(f"witness {witness!r} is not a pinned partner")
    # 2. Every cosignature first: one forged line rejects the whole exchange.
    skew = timedelta(seconds=node.config.trust.clock_skew_s)
    keys = witness_keys(trust.statement(witness), now_utc(), skew)
    not_after = time.time() + skew.total_seconds()
    cosigned = [
        (code, text, verify_witness_cosignature(note, code, witness, keys, not_after=not_after))
        for code, text, note in parsed
    ]
    outcome = WitnessOutcome()
    checked: list[_Checked] = []
    for code, text, cosignature in cosigned:
        if not trust.holds(code):  # 3.
            outcome.ignored += 1
            continue
        try:  # 4.
            checkpoint = verify_note(text, trust.statement(code))
        except ReplicationFaultError as fault:
            outcome.bad_issuer_signature += 1
            log.warning("witness %s: checkpoint of %s ignored: %s", witness, code, fault)
            continue
        checked.append(_Checked(code, text, checkpoint, cosignature))
    if not checked:
        return outcome
    # 5.-6. One transaction; logs in code order so concurrent exchanges lock rows alike.
    async with node.engine.begin() as conn:
        for view in sorted(checked, key=lambda c: c.log):
            await _compare(conn, trust, witness, view, outcome)
            await _check_pending_log(conn, trust, view.log, outcome)
    return outcome


# -- comparing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sighting:
    """A checkpoint of a log and who holds it (who the issuer showed it to)."""

    holder: str
    size: int
    root: bytes
    note: str


@dataclass(frozen=True)
class _Replica:
    """What we verified of one log: leaves held, latest checkpoint, the one covering them."""

    log: str
    own: bool
    size: int
    latest: Checkpoint | None
    latest_note: str | None
    held: Checkpoint | None
    held_note: str | None

    def reference(self, size: int) -> tuple[Checkpoint, str] | None:
        """Our signed checkpoint that covers leaves up to ``size`` (for an alert's evidence)."""
        if self.held is not None and self.held_note is not None and self.held.size >= size:
            return self.held, self.held_note
        if self.latest is not None and self.latest_note is not None:
            return self.latest, self.latest_note
        return None


async def _lock_replica(conn: AsyncConnection, code: str) -> _Replica | None:
    # Taking the head row's write lock first (as appends and replication do) makes the
    # compare-then-write below atomic with respect to them and to other exchanges.
    await lock_log(conn, code)
    row = (await conn.execute(select(logs).where(logs.c.code == code))).one_or_none()
    if row is None:
        return None
    latest_note = row.checkpoint or None
    held_note = _held_note(row)
    return _Replica(
        log=code,
        own=bool(row.own),
        size=int(row.size),
        latest=parse_note(latest_note).checkpoint() if latest_note else None,
        latest_note=latest_note,
        held=parse_note(held_note).checkpoint() if held_note else None,
        held_note=held_note,
    )


def _b64(root: bytes) -> str:
    return base64.b64encode(root).decode("ascii")


async def _judge(
    conn: AsyncConnection, replica: _Replica, us: str, seen: _Sighting
) -> tuple[_Sighting, str] | bool | None:
    """True when ``seen`` matches our view, None when we cannot tell yet, else the sighting of
    ours it contradicts and why."""
    latest = replica.latest
    if latest is not None and seen.size == latest.size:
        if seen.root != latest.root_hash:
            assert replica.latest_note is not None  # noqa: S101 - set together with latest
            mine = _Sighting(us, latest.size, latest.root_hash, replica.latest_note)
            return mine, "same size, different roots"
        return True
    if seen.size <= replica.size:
        ours = await root_at(conn, replica.log, seen.size)
        if ours == seen.root:
            return True
        reference = replica.reference(seen.size)
        if reference is None:  # pragma: no cover - leaves are only stored under a checkpoint
            return None
        cp, note = reference
        why = f"the tree {us} holds has root {_b64(ours)} at size {seen.size}"
        return _Sighting(us, cp.size, cp.root_hash, note), why
    if replica.own and latest is not None and replica.latest_note is not None:
        # Our head row is locked: a checkpoint of our log beyond it was never signed here.
        mine = _Sighting(us, latest.size, latest.root_hash, replica.latest_note)
        return mine, f"{us}'s log has only {replica.size} entries"
    return None


async def _compare(
    conn: AsyncConnection, trust: _Trust, witness: str, view: _Checked, outcome: WitnessOutcome
) -> None:
    replica = await _lock_replica(conn, view.log)
    if replica is None:
        outcome.ignored += 1
        return
    cp = view.checkpoint
    seen = _Sighting(witness, cp.size, cp.root_hash, view.note)
    verdict = await _judge(conn, replica, trust.node.admin, seen)
    if verdict is True:
        await _store_cosignature(conn, view.log, cp, witness, view.cosignature)
        outcome.cosigned += 1
        return
    if isinstance(verdict, tuple):
        mine, why = verdict
        await _split_view(conn, trust, view.log, (mine, seen), why=why, outcome=outcome)
        return
    # Beyond our replica: two waiting views of one size must agree, then wait for ours.
    waiting = (
        await conn.execute(
            select(witnessed).where(witnessed.c.log == view.log, witnessed.c.size == cp.size)
        )
    ).all()
    for row in waiting:
        if bytes(row.root) != cp.root_hash:
            other = _Sighting(str(row.witness), int(row.size), bytes(row.root), str(row.note))
            same = "same size, different roots"
            await _split_view(conn, trust, view.log, (other, seen), why=same, outcome=outcome)
            return
    held = (
        await conn.execute(
            select(witnessed.c.size).where(
                witnessed.c.log == view.log, witnessed.c.witness == witness
            )
        )
    ).scalar()
    now = time.time()
    if held is None:
        await conn.execute(
            witnessed.insert().values(
                log=view.log,
                witness=witness,
                size=cp.size,
                root=cp.root_hash,
                note=view.note,
                received_at=now,
            )
        )
    elif int(held) <= cp.size:
        # A smaller view later proves nothing by itself; keep the largest one to compare.
        await conn.execute(
            update(witnessed)
            .where(witnessed.c.log == view.log, witnessed.c.witness == witness)
            .values(size=cp.size, root=cp.root_hash, note=view.note, received_at=now)
        )
    outcome.pending += 1


async def _store_cosignature(
    conn: AsyncConnection, log_code: str, cp: Checkpoint, witness: str, cosignature: Cosignature
) -> None:
    if witness == log_code:
        return  # an issuer vouching for its own log adds nothing
    await insert_ignore(
        conn,
        cosignatures,
        [
            {
                "log": log_code,
                "size": cp.size,
                "witness": witness,
                "root": cp.root_hash,
                "line": cosignature.line,
                "timestamp": cosignature.timestamp,
                "received_at": time.time(),
            }
        ],
        keys=("log", "size", "witness"),
    )


async def _check_pending_log(
    conn: AsyncConnection, trust: _Trust, log_code: str, outcome: WitnessOutcome
) -> None:
    """Compare the waiting views of ``log_code`` our replica has now reached (row locked)."""
    replica = await _lock_replica(conn, log_code)
    if replica is None:
        return
    rows = (
        await conn.execute(
            select(witnessed).where(witnessed.c.log == log_code, witnessed.c.size <= replica.size)
        )
    ).all()
    for row in rows:
        seen = _Sighting(str(row.witness), int(row.size), bytes(row.root), str(row.note))
        verdict = await _judge(conn, replica, trust.node.admin, seen)
        if verdict is None:  # pragma: no cover - every size up to ours can be judged
            continue
        await conn.execute(
            delete(witnessed).where(witnessed.c.log == log_code, witnessed.c.witness == row.witness)
        )
        if isinstance(verdict, tuple):
            mine, why = verdict
            await _split_view(conn, trust, log_code, (mine, seen), why=why, outcome=outcome)
            continue
        cosignature = _stored_cosignature(trust, log_code, seen)
        if cosignature is not None:
            cp = parse_note(seen.note).checkpoint()
            await _store_cosignature(conn, log_code, cp, seen.holder, cosignature)
            outcome.cosigned += 1


def _stored_cosignature(trust: _Trust, log_code: str, seen: _Sighting) -> Cosignature | None:
    """The holder's cosignature on a waiting view, re-checked with its current keys (a
    witness removed or re-keyed since then contributes to comparison only)."""
    if seen.holder not in trust.rows:
        return None
    try:
        return verify_witness_cosignature(
            parse_note(seen.note),
            log_code,
            seen.holder,
            witness_keys(
                trust.statement(seen.holder),
                now_utc(),
                timedelta(seconds=trust.node.config.trust.clock_skew_s),
            ),
            not_after=float("inf"),
        )
    except (WitnessInputError, ForgedCosignatureError, CryptoError):
        return None


async def check_pending(node: Node) -> WitnessOutcome:
    """Compare every waiting view with our replica where it has reached the view's size."""
    outcome = WitnessOutcome()
    async with node.engine.connect() as conn:
        codes = sorted(set((await conn.execute(select(witnessed.c.log))).scalars()))
    if not codes:
        return outcome
    async with node.engine.connect() as conn:
        trust = await _Trust.load(node, conn)
    async with node.engine.begin() as conn:
        for code in codes:
            if trust.holds(code):
                await _check_pending_log(conn, trust, code, outcome)
    return outcome


async def prove_pending(node: Node, issuer: str, fetch: FetchProof) -> WitnessOutcome:
    """Ask ``issuer`` (``fetch(old, new)``: its GetConsistencyProof) to prove each waiting view
    of its log consistent with our latest checkpoint; one that does not verify is a split view.

    A failed call proves nothing (the issuer may be down) and leaves the view waiting."""
    outcome = WitnessOutcome()
    async with node.engine.connect() as conn:
        row = (await conn.execute(select(logs).where(logs.c.code == issuer))).one_or_none()
        waiting = (await conn.execute(select(witnessed).where(witnessed.c.log == issuer))).all()
    if row is None or not row.checkpoint or not waiting:
        return outcome
    latest = parse_note(row.checkpoint).checkpoint()
    broken: list[tuple[_Sighting, str]] = []
    for w in waiting:
        seen = _Sighting(str(w.witness), int(w.size), bytes(w.root), str(w.note))
        if latest.size in {0, seen.size}:
            continue  # nothing to prove (an empty tree is a prefix of all; equal: compared)
        old, new = sorted((latest.size, seen.size))
        old_root, new_root = (
            (latest.root_hash, seen.root)
            if latest.size < seen.size
            else (seen.root, latest.root_hash)
        )
        try:
            proof = await fetch(old, new)
        except Exception as error:  # the issuer's failure to answer is not evidence
            log.info("consistency proof %s..%s of %s not available: %s", old, new, issuer, error)
            continue
        try:
            verify_consistency(old, new, list(proof), old_root, new_root)
        except VerificationError as error:
            broken.append((seen, f"no valid consistency proof from {old} to {new}: {error}"))
    if not broken:
        return outcome
    async with node.engine.connect() as conn:
        trust = await _Trust.load(node, conn)
    async with node.engine.begin() as conn:
        await _lock_replica(conn, issuer)
        for seen, why in broken:
            mine = _Sighting(node.admin, latest.size, latest.root_hash, str(row.checkpoint))
            await conn.execute(
                delete(witnessed).where(
                    witnessed.c.log == issuer, witnessed.c.witness == seen.holder
                )
            )
            await _split_view(conn, trust, issuer, (mine, seen), why=why, outcome=outcome)
    return outcome


# -- split views and alerts -----------------------------------------------------------------


def _pair_key(log_code: str, a: _Sighting, b: _Sighting) -> str:
    sides = sorted(f"{s.size}:{s.root.hex()}" for s in (a, b))
    return hashlib.sha256(f"{log_code}|{sides[0]}|{sides[1]}".encode()).hexdigest()


async def _split_view(
    conn: AsyncConnection,
    trust: _Trust,
    log_code: str,
    sightings: tuple[_Sighting, _Sighting],
    *,
    why: str,
    outcome: WitnessOutcome,
) -> None:
    """Raise the alert (once per pair) and quarantine the issuer, in the caller's transaction."""
    first, second = sightings
    key = _pair_key(log_code, first, second)
    open_rows = (
        await conn.execute(
            select(alerts.c.detail).where(
                alerts.c.kind == SPLIT_VIEW,
                alerts.c.subject == log_code,
                alerts.c.cleared.is_(False),
            )
        )
    ).scalars()
    if any(json.loads(detail).get("pair") == key for detail in open_rows):
        return
    own = log_code == trust.node.admin
    message = (
        f"split view of {log_code}'s log: {log_code} showed {first.holder} a checkpoint of size "
        f"{first.size} with root {_b64(first.root)} and {second.holder} one of size "
        f"{second.size} with root {_b64(second.root)}; they cannot both be true ({why})"
    )
    if own:
        message += "; our own checkpoint key signed both: treat it as compromised"
    detail = {
        "pair": key,
        "log": log_code,
        "reason": why,
        "checkpoints": [
            {"holder": s.holder, "size": s.size, "root": _b64(s.root), "note": s.note}
            for s in (first, second)
        ],
    }
    await open_alert(conn, SPLIT_VIEW, log_code, message, detail)
    if not own:
        quarantined = (
            await conn.execute(select(partners.c.quarantined).where(partners.c.code == log_code))
        ).scalar()
        if quarantined is False:
            await quarantine(conn, log_code, message)
    outcome.split_views.append(SplitView(log_code, message))


# -- status ---------------------------------------------------------------------------------


async def witness_counts(conn: AsyncConnection) -> dict[str, int]:
    """Per log: how many distinct witnesses cosigned the latest checkpoint we hold every leaf
    of (same size and root), the issuer itself not counted."""
    rows = (
        await conn.execute(
            select(logs.c.code, logs.c.own, logs.c.checkpoint, logs.c.held_checkpoint)
        )
    ).all()
    counts: dict[str, int] = {}
    for row in rows:
        note = _held_note(row)
        if note is None:
            counts[str(row.code)] = 0
            continue
        cp = parse_note(note).checkpoint()
        counts[str(row.code)] = int(
            (
                await conn.execute(
                    select(func.count(func.distinct(cosignatures.c.witness))).where(
                        cosignatures.c.log == row.code,
                        cosignatures.c.size == cp.size,
                        cosignatures.c.root == cp.root_hash,
                        cosignatures.c.witness != row.code,
                    )
                )
            ).scalar_one()
        )
    return counts


__all__ = [
    "MAX_VIEWS",
    "SPLIT_VIEW",
    "ForgedCosignatureError",
    "SplitView",
    "View",
    "WitnessInputError",
    "WitnessOutcome",
    "check_pending",
    "our_views",
    "prove_pending",
    "receive_views",
    "verify_witness_cosignature",
    "witness_counts",
    "witness_keys",
]

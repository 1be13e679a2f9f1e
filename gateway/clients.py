"""Local clients of a node, and the audit of what ``agency`` clients ask.

A local client (a risk engine, another government agency, an operator's admin tool) holds a
certificate from the node's own TLS CA with its role in the subject's OU and its name in the
CN (:func:`crypto.pki.issue_client_certificate`, as ``mragw init`` makes ``tls/admin.pem``).
``mragw clients add`` issues one and records it in ``local_clients``; ``revoke`` marks the row,
and a running gateway refuses that certificate from its next refresh on (:class:`Revocations`).

Decisions (docs/adr/0010-local-clients-and-agency-audit.md):
- Revocation is a deny list keyed by the certificate's SHA-256 fingerprint. A certificate of
  our CA that is not in the table (the init admin certificate, certificates older nodes
  issued) stays valid: being issued by our CA is what authenticates; the table names clients
  and withdraws them. To withdraw every certificate at once, rotate the TLS CA.
- A name is never reused, even after revocation, so the audit trail's "who" stays unambiguous.
- The client's private key is written unencrypted (0600): it is handed to another system,
  which needs it to dial; the node's passphrase protects the node's keys only.
- Every Check, CheckMany and Watch of an audited role (``agency``) is appended to the audit
  chain *before* it is answered, in its own transaction; when that fails the call is refused
  (UNAVAILABLE): an unaudited agency check is never answered. Operator identifiers go in as
  :func:`gateway.audit.operator_digest`, never in clear.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crypto.keys import load_private_key, save_private_key
from crypto.pki import (
    certificate_to_pem,
    generate_tls_key,
    issue_client_certificate,
    load_certificate,
)
from gateway.audit import (
    OPERATOR_KEY_FILE,
    operator_digest,
    operator_key,
    operator_key_id,
    record_action,
)
from gateway.errors import InputError, UnreachableError
from gateway.node import Node, now_utc
from gateway.storage.schema import local_clients, node_state
from gateway.storage.upsert import insert_ignore

if TYPE_CHECKING:  # annotations only: the CLI's `clients` commands need not load the Checker
    from gateway.query import Question, WatchFilter

log = logging.getLogger(__name__)

#: Roles ``clients add`` issues (``query``, the first read-only role, is kept for certificates
#: already issued but no longer handed out).
CLIENT_ROLES = ("admin", "risk-engine", "agency")
#: Roles whose queries are written to the audit trail.
AUDITED_ROLES = frozenset({"agency"})
#: Lower case letters, digits, ``.``, ``_``, ``-``; starting and ending with a letter or digit.
NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
MAX_DAYS = 3650
#: The ``node_state`` key bumped by every add and revoke: a running gateway reloads on a move.
CLIENTS_STATE_KEY = "clients"
#: Even without a bump, reload this often (a row edited by hand in an emergency).
FULL_RELOAD_INTERVAL_S = 30.0
#: An audited Watch whose filter lists more values than this is refused: the audit row of a
#: call must stay small, and it must be complete.
MAX_AUDITED_FILTER = 1000
#: Clear-text question fields (codes, dates, modes) are clipped to this in the audit row.
_FIELD_LIMIT = 64

KEY_FILE = "client.key"
CERT_FILE = "client.pem"
CA_FILE = "ca.pem"


@dataclass(frozen=True)
class LocalClient:
    """One row of ``local_clients``."""

    name: str
    role: str
    serial: str
    fingerprint: str
    not_after: float
    added_at: float
    revoked_at: float | None = None

    def state(self, now: float | None = None) -> str:
        """revoked, expired or active."""
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if (time.time() if now is None else now) > self.not_after else "active"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "state": self.state(),
            "serial": self.serial,
            "fingerprint": self.fingerprint,
            "not_after": _iso(self.not_after),
            "added_at": _iso(self.added_at),
            "revoked_at": None if self.revoked_at is None else _iso(self.revoked_at),
        }


@dataclass(frozen=True)
class IssuedClient:
    client: LocalClient
    key: Path
    certificate: Path
    ca: Path

    def to_json(self) -> dict[str, Any]:
        return {
            **self.client.to_json(),
            "files": {
                "key": str(self.key),
                "certificate": str(self.certificate),
                "ca": str(self.ca),
            },
        }


def _iso(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, tz=dt.UTC).isoformat(timespec="seconds")


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InputError(
            f"client name {name!r}: use 1-64 lower-case letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def check_role(role: str) -> str:
    if role not in CLIENT_ROLES:
        raise InputError(f"--role {role!r}: unknown (expected one of {', '.join(CLIENT_ROLES)})")
    return role


def _client_from_row(row: Any) -> LocalClient:
    return LocalClient(
        name=row.name,
        role=row.role,
        serial=row.serial,
        fingerprint=row.fingerprint,
        not_after=float(row.not_after),
        added_at=float(row.added_at),
        revoked_at=None if row.revoked_at is None else float(row.revoked_at),
    )


async def _bump_clients_state(conn: AsyncConnection) -> None:
    bump = (
        update(node_state)
        .where(node_state.c.key == CLIENTS_STATE_KEY)
        .values(value=node_state.c.value + 1)
    )
    if (await conn.execute(bump)).rowcount == 0:
        await insert_ignore(
            conn, node_state, [{"key": CLIENTS_STATE_KEY, "value": 0}], keys=("key",)
        )
        await conn.execute(bump)


async def _client(conn: AsyncConnection, name: str) -> LocalClient | None:
    row = (await conn.execute(select(local_clients).where(local_clients.c.name == name))).first()
    return None if row is None else _client_from_row(row)


class _Output:
    """The --out folder: checked before anything is issued, removed again on failure."""

    def __init__(self, out: Path) -> None:
        self.path = Path(os.path.abspath(out))
        self._created: list[Path] = []  # folders we made, innermost last
        self._written: list[Path] = []
        if self.path.exists() or self.path.is_symlink():
            if not self.path.is_dir():
                raise InputError(f"--out {out}: exists and is not a folder")
            if any(self.path.iterdir()):
                raise InputError(f"--out {out}: folder is not empty")
            if not os.access(self.path, os.W_OK | os.X_OK):
                raise InputError(f"--out {out}: folder is not writable")
        else:
            parent = self.path.parent
            while not parent.exists():
                parent = parent.parent
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise InputError(
                    f"--out {out}: cannot create it, {parent} is not a writable folder"
                )

    def write(self, key: Any, certificate: bytes, ca: bytes) -> tuple[Path, Path, Path]:
        missing = []
        folder = self.path
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        try:
            for folder in reversed(missing):
                folder.mkdir(mode=0o700)
                self._created.append(folder)
            paths = (self.path / KEY_FILE, self.path / CERT_FILE, self.path / CA_FILE)
            save_private_key(key, paths[0])  # O_EXCL, 0600 from the first byte
            self._written.append(paths[0])
            for path, data in ((paths[1], certificate), (paths[2], ca)):
                with open(path, "xb") as handle:
                    self._written.append(path)
                    handle.write(data)
        except OSError as error:
            problem = error.strerror or str(error)
            raise InputError(f"--out {self.path}: cannot write: {problem}") from error
        return paths

    def remove(self) -> None:
        for path in reversed(self._written):
            with contextlib.suppress(OSError):
                path.unlink()
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()


async def add_client(
    node: Node,
    name: str,
    role: str,
    out: Path,
    *,
    actor: str,
    days: int | None = None,
    now: dt.datetime | None = None,
) -> IssuedClient:
    """Issue a key and certificate for ``name`` with ``role`` into ``out``, record and audit it.

    Everything is checked before anything is written; a failure after that removes the files
    and rolls the row back, so a refused add leaves no state behind."""
    check_name(name)
    check_role(role)
    validity_days = node.config.keys.tls_leaf_days if days is None else days
    if not 1 <= validity_days <= MAX_DAYS:
        raise InputError(f"--days {validity_days}: must be between 1 and {MAX_DAYS}")
    output = _Output(out)
    async with node.engine.connect() as conn:
        if await _client(conn, name) is not None:
            raise InputError(f"client {name!r} already exists (names are never reused)")
    moment = now or now_utc()
    folder = node.tls_dir(moment.timestamp())  # CA certificate and key from one folder
    ca_cert = load_certificate((folder / "ca.pem").read_bytes())
    ca_key = load_private_key(folder / "ca.key", node.passphrase)
    key = generate_tls_key()
    cert = issue_client_certificate(
        ca_cert,
        ca_key,
        key.public_key,
        now=moment,
        role=role,
        common_name=name,
        validity=dt.timedelta(days=validity_days),
    )
    client = LocalClient(
        name=name,
        role=role,
        serial=format(cert.serial_number, "x"),
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        not_after=cert.not_valid_after_utc.timestamp(),
        added_at=moment.timestamp(),
    )
    if role in AUDITED_ROLES:
        # Made now, not at the client's first check, so it is there before any question is.
        operator_key(node.paths.keys / OPERATOR_KEY_FILE)
    try:
        async with node.engine.begin() as conn:
            await conn.execute(local_clients.insert().values(**asdict(client)))
            await record_action(
                conn,
                actor,
                "clients.add",
                {
                    "name": name,
                    "role": role,
                    "serial": client.serial,
                    "fingerprint": client.fingerprint,
                    "not_after": _iso(client.not_after),
                },
            )
            await _bump_clients_state(conn)
            # Last, inside the transaction: a write that fails rolls the row back.
            paths = output.write(key, certificate_to_pem(cert), node.own_ca_pem())
    except IntegrityError as error:
        output.remove()
        raise InputError(f"client {name!r} already exists (names are never reused)") from error
    except BaseException:
        output.remove()
        raise
    log.info("local client %s (%s) added, certificate %s", name, role, client.fingerprint)
    return IssuedClient(client, *paths)


async def list_clients(node: Node) -> list[LocalClient]:
    """Every local client ever added, by name."""
    async with node.engine.connect() as conn:
        rows = (await conn.execute(select(local_clients).order_by(local_clients.c.name))).all()
    return [_client_from_row(r) for r in rows]


async def revoke_client(
    node: Node, name: str, *, actor: str, now: dt.datetime | None = None
) -> LocalClient:
    """Mark ``name`` revoked (audited); a running gateway refuses it from its next refresh."""
    check_name(name)
    moment = (now or now_utc()).timestamp()
    async with node.engine.begin() as conn:
        # The update is conditional, so two revokes at once revoke (and audit) exactly once.
        done = await conn.execute(
            update(local_clients)
            .where(local_clients.c.name == name, local_clients.c.revoked_at.is_(None))
            .values(revoked_at=moment)
        )
        if done.rowcount == 0:
            existing = await _client(conn, name)
            if existing is None:
                raise InputError(f"client {name!r}: no such client")
            raise InputError(
                f"client {name!r}: already revoked at {_iso(existing.revoked_at or 0.0)}"
            )
        client = await _client(conn, name)
        assert client is not None  # noqa: S101 - just updated in this transaction
        await record_action(
            conn,
            actor,
            "clients.revoke",
            {"name": name, "role": client.role, "fingerprint": client.fingerprint},
        )
        await _bump_clients_state(conn)
    log.info("local client %s revoked", name)
    return client


class Revocations:
    """The revoked client certificates a running gateway refuses: fingerprint -> name.

    Read by the admin listener's identity check on every call, so it never touches the
    database; :meth:`refresh` (the server's refresh loop) swaps in a new immutable mapping."""

    def __init__(self) -> None:
        self._revoked: Mapping[str, str] = {}
        self._state_seen: int | None = None
        self._last_full_reload = -FULL_RELOAD_INTERVAL_S

    def revoked(self) -> Mapping[str, str]:
        return self._revoked

    async def refresh(self, engine: AsyncEngine, *, force: bool = False) -> bool:
        """Reload when ``node_state['clients']`` moved (or on ``force``, or every 30 s);
        returns whether the set changed. Database errors propagate: the caller keeps the
        last set."""
        now = time.monotonic()
        async with engine.connect() as conn:
            state = (
                await conn.execute(
                    select(node_state.c.value).where(node_state.c.key == CLIENTS_STATE_KEY)
                )
            ).scalar_one_or_none()
            stale = now - self._last_full_reload >= FULL_RELOAD_INTERVAL_S
            if not force and not stale and state == self._state_seen:
                return False
            rows = (
                await conn.execute(
                    select(local_clients.c.fingerprint, local_clients.c.name).where(
                        local_clients.c.revoked_at.is_not(None)
                    )
                )
            ).all()
        revoked = {str(fingerprint): str(name) for fingerprint, name in rows}
        self._state_seen = state
        self._last_full_reload = now
        changed = revoked != self._revoked
        self._revoked = revoked
        if changed:
            log.info("revoked local clients: %s", ", ".join(sorted(revoked.values())) or "none")
        return changed


# --- the audit of agency queries -----------------------------------------------------------


class AuditUnavailableError(UnreachableError):
    """The audit trail could not be written, so the audited call is refused."""


def _clip(value: object) -> str | None:
    if value is None or value == "":
        return None
    text = value.isoformat() if isinstance(value, dt.date) else str(value)
    return text[:_FIELD_LIMIT]


class QueryAuditTrail:
    """Appends the questions of audited roles to the audit chain (see the module docstring).

    Used by the QueryService servicer through two hooks; the servicer passes the caller's role
    and name as the TLS peer proved them."""

    def __init__(self, node: Node, roles: frozenset[str] = AUDITED_ROLES) -> None:
        self._node = node
        self._roles = roles
        self._key: bytes | None = None

    def audits(self, role: str) -> bool:
        return role in self._roles

    def _operator_key(self) -> bytes:
        if self._key is None:
            self._key = operator_key(self._node.paths.keys / OPERATOR_KEY_FILE)
        return self._key

    def _question(self, key: bytes, question: Question) -> dict[str, Any]:
        return {
            "operator_hmac": operator_digest(key, str(question.operator_id)),
            "scheme": _clip(question.scheme),
            "issuer": _clip(question.issuer),
            "type": _clip(question.type),
            "at": _clip(question.at),
            "mode": _clip(question.mode),
        }

    async def checked(
        self, role: str, client: str, method: str, questions: Sequence[Question]
    ) -> None:
        """Record a Check or CheckMany of an audited role; other roles cost nothing."""
        if not self.audits(role):
            return
        key = self._key_or_refuse()
        await self._append(
            role,
            client,
            "query.check",
            {
                "client": client,
                "method": method,
                "operator_key": operator_key_id(key),
                "questions": [self._question(key, q) for q in questions],
            },
        )

    async def watched(
        self, role: str, client: str, filters: WatchFilter, after: int | None
    ) -> None:
        """Record the start of a Watch of an audited role (its filter names the operators)."""
        if not self.audits(role):
            return
        for what, values in (
            ("operator identifiers", filters.operator_ids),
            ("issuers", filters.issuers),
            ("types", filters.types),
        ):
            if len(values) > MAX_AUDITED_FILTER:
                raise InputError(
                    f"{len(values)} {what} in one Watch filter: at most {MAX_AUDITED_FILTER} "
                    "for an audited client"
                )
        key = self._key_or_refuse()
        await self._append(
            role,
            client,
            "query.watch",
            {
                "client": client,
                "method": "Watch",
                "operator_key": operator_key_id(key),
                "after_sequence": after,
                "issuers": [_clip(i) for i in filters.issuers],
                "types": [_clip(t) for t in filters.types],
                "operator_hmacs": [operator_digest(key, i) for i in filters.operator_ids],
            },
        )

    def _key_or_refuse(self) -> bytes:
        try:
            return self._operator_key()
        except (OSError, InputError) as error:
            log.error(  # noqa: TRY400 - the cause is in the message; no traceback wanted
                "audit operator key unusable; refusing audited queries: %s", error
            )
            raise AuditUnavailableError(
                "the audit trail is unavailable, so this check is refused"
            ) from error

    async def _append(self, role: str, client: str, action: str, detail: dict[str, Any]) -> None:
        try:
            async with self._node.engine.begin() as conn:
                await record_action(conn, f"{role}:{client}", action, detail)
        except (SQLAlchemyError, OSError) as error:
            log.error(  # noqa: TRY400 - the cause is in the message; no traceback wanted
                "cannot append to the audit trail; refusing %s by %s: %s", action, client, error
            )
            raise AuditUnavailableError(
                "the audit trail is unavailable, so this check is refused"
            ) from error

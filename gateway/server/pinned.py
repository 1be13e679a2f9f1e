"""The in-memory snapshot of pinned partners that the partner listener authenticates against.

Two consumers read it, on different threads, and neither may touch the database:

- the TLS certificate-configuration fetcher (:mod:`gateway.server.tls`), which gRPC calls from
  a C-core thread at the start of every handshake, needs the set of partner CA certificates;
- the identity check (:mod:`gateway.server.identity`), on the event loop, needs *the* CA of
  one partner and its suspended flag.

So the database is read only by :meth:`PinnedPartnerStore.refresh` (on the event loop, from
the refresh loop of :class:`~gateway.server.app.GatewayServer`), which builds a new immutable
:class:`PinnedPartners` and swaps one reference. Readers take that reference once and use it;
a swap is atomic in CPython, so no lock is needed and no reader sees half an update.

Invariants:
- ``generation`` increases exactly when the trusted content changes (codes, CA certificates,
  suspended / quarantined flags), so the TLS fetcher can answer "unchanged" cheaply.
- Suspended and quarantined partners stay in the snapshot (and their CAs in the TLS client-CA
  set): they complete the handshake and then get a precise gRPC status instead of an opaque
  TLS failure. Only a removed partner disappears.
- A row whose CA PEM cannot be parsed is left out (and logged): one bad row must not take the
  listener down for every other partner, and leaving it out fails closed for that partner.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from crypto.pki import create_ca_certificate, generate_tls_key
from gateway.storage.schema import node_state, partners

log = logging.getLogger(__name__)

PARTNERS_STATE_KEY = "partners"
# Even without a node_state bump, reload this often: a writer that forgot to bump (or a row
# edited by hand in an emergency) is still picked up, at the cost of one small query.
FULL_RELOAD_INTERVAL_S = 30.0


@dataclass(frozen=True)
class PinnedPartner:
    """One row of ``partners`` as the serving layer needs it."""

    code: str
    # Usually one CA; several during a partner's TLS CA rotation (all from its trust statement).
    cas: tuple[x509.Certificate, ...]
    suspended: bool = False
    quarantined: bool = False
    reason: str | None = None

    def fingerprint(self) -> tuple[object, ...]:
        """Everything that, when changed, must change what the listener trusts or says."""
        return (
            self.code,
            tuple(ca.fingerprint(hashes.SHA256()) for ca in self.cas),
            self.suspended,
            self.quarantined,
        )


def _ca_pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass(frozen=True)
class PinnedPartners:
    """An immutable snapshot: partners by code plus the PEM of every CA to offer TLS."""

    generation: int
    partners: Mapping[str, PinnedPartner] = field(default_factory=dict)

    def get(self, code: str) -> PinnedPartner | None:
        return self.partners.get(code)

    @cached_property
    def client_ca_pem(self) -> bytes:
        """Concatenated CA certificates of every pinned partner (empty when none)."""
        return _ca_pem(ca for p in self.partners.values() for ca in p.cas)


def parse_ca_pem(code: str, pem: str | bytes) -> tuple[x509.Certificate, ...]:
    """All certificates in a partner's ``ca_pem`` column; raises ValueError when none parse."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else bytes(pem)
    try:
        certs = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as error:
        raise ValueError(f"partner {code}: CA PEM does not parse: {error}") from error
    if not certs:
        raise ValueError(f"partner {code}: no CA certificate in its PEM")
    return certs


class PinnedPartnerStore:
    """Holds the current :class:`PinnedPartners` and refreshes it from the database."""

    def __init__(self, own_code: str) -> None:
        self.own_code = own_code
        self._current = PinnedPartners(generation=0)
        self._state_seen: int | None = None
        self._last_full_reload = -FULL_RELOAD_INTERVAL_S
        self._placeholder: bytes | None = None

    @property
    def current(self) -> PinnedPartners:
        return self._current

    def replace(self, rows: Iterable[PinnedPartner]) -> bool:
        """Install a new partner set; returns True (and bumps the generation) if it changed."""
        by_code: dict[str, PinnedPartner] = {}
        for row in rows:
            if row.code == self.own_code:
                # Our own CA as a "partner" would let our local clients pose as a partner.
                log.error("partners table pins our own code %s; ignoring that row", row.code)
                continue
            by_code[row.code] = row
        old = self._current
        changed = sorted(p.fingerprint() for p in old.partners.values()) != sorted(
            p.fingerprint() for p in by_code.values()
        )
        # Always swap (a new ``reason`` text should show up), bump only on trust changes.
        self._current = PinnedPartners(
            generation=old.generation + 1 if changed else old.generation, partners=by_code
        )
        return changed

    def placeholder_ca_pem(self) -> bytes:
        """A CA nobody holds the key of: the client-CA set while no partner is pinned.

        gRPC needs some root to require client certificates. Offering this one makes every
        partner handshake fail (fail closed), while the listener still starts, so pinning
        the first partner later needs no restart. The key is dropped right away.
        """
        if self._placeholder is None:
            key = generate_tls_key()
            cert = create_ca_certificate("NO-PARTNER-PINNED", key, now=dt.datetime.now(tz=dt.UTC))
            self._placeholder = _ca_pem([cert])
        return self._placeholder

    async def refresh(self, engine: AsyncEngine, *, force: bool = False) -> bool:
        """Reload from the database if ``node_state['partners']`` moved (or on ``force``).

        Returns True when what the listener trusts changed. Database errors propagate; the
        caller keeps serving with the previous snapshot.
        """
        now = time.monotonic()
        async with engine.connect() as conn:
            state = (
                await conn.execute(
                    select(node_state.c.value).where(node_state.c.key == PARTNERS_STATE_KEY)
                )
            ).scalar_one_or_none()
            stale = now - self._last_full_reload >= FULL_RELOAD_INTERVAL_S
            if not force and not stale and state == self._state_seen:
                return False
            rows = (
                await conn.execute(
                    select(
                        partners.c.code,
                        partners.c.ca_pem,
                        partners.c.suspended,
                        partners.c.quarantined,
                        partners.c.reason,
                    )
                )
            ).all()
        loaded: list[PinnedPartner] = []
        for code, ca_pem, suspended, quarantined, reason in rows:
            try:
                cas = parse_ca_pem(code, ca_pem)
            except ValueError as error:
                log.error("%s; the partner cannot connect until it is fixed", error)  # noqa: TRY400 - the message says it all
                continue
            loaded.append(
                PinnedPartner(
                    code=code,
                    cas=cas,
                    suspended=bool(suspended),
                    quarantined=bool(quarantined),
                    reason=reason,
                )
            )
        self._state_seen = state
        self._last_full_reload = now
        changed = self.replace(loaded)
        if changed:
            log.info(
                "partner trust snapshot %d: %s",
                self._current.generation,
                ", ".join(sorted(self._current.partners)) or "no partner pinned",
            )
        return changed

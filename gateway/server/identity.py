"""Who is calling: the caller's identity, taken only from its TLS client certificate.

Nothing a caller *says* (metadata, request fields, the certificate's names on their own) is
identity. The certificate the TLS layer verified is read from ``context.auth_context()``
(``x509_pem_cert``) and checked again here, explicitly:

Partner listener (:class:`PartnerIdentityInterceptor`), per call:
  1. read the administration code the certificate claims (subject O);
  2. look up *that* partner in the current pinned-partner snapshot;
  3. check with :func:`crypto.pki.verify_issued_by` that *that partner's* pinned CA issued it,
     valid now, naming that code -- never merely "some trusted CA", so partner A's CA cannot
     mint an identity for B (the TLS layer accepted it because A's CA is in the union);
  4. refuse certificates that carry a role (OU): those are a partner's *local* clients;
  5. refuse suspended partners.
  Steps 1-3 failing (unknown, removed, wrong CA, expired) all give UNAUTHENTICATED with one
  uniform message, so a caller learns nothing about which administrations are pinned. The
  detail goes to the log and the rejection counter.

Admin listener (:class:`LocalIdentityInterceptor`): the certificate must be issued by the
node's own CA and name the node's own code; its role (OU) decides which services it may call
(:data:`DEFAULT_ROLES`); anything else is PERMISSION_DENIED. Health checking and reflection are
open to every authenticated local caller (``mragw health`` and tooling need them). A certificate
``mragw clients revoke`` withdrew is refused with UNAUTHENTICATED "client certificate is revoked"
(checked per call against an in-memory set, like suspension; certificates of our CA that were
never recorded as clients, such as the init admin certificate, are not affected).

Decisions:
- Suspended partner: PERMISSION_DENIED "partner XX is suspended". It *is* authenticated (its
  own CA issued the certificate); it is not authorised. It learns only its own state.
- Quarantined partner: served normally. Quarantine stops us *applying* its entries; it says
  nothing about its right to read ours. :attr:`PartnerPeer.quarantined` lets a servicer differ.
- Servicers get the peer from a context variable the interceptor sets for the call:
  :func:`current_partner` on the partner listener, :func:`current_local_peer` on the admin
  listener. Outside a guarded call they raise RuntimeError (a wiring bug, never a client error).
- Successful verifications are cached per certificate (bounded, keyed by the exact PEM bytes
  and the snapshot generation, honouring the certificate's validity window) so a Check-heavy
  client does not pay an ECDSA verification per call; suspension is still read per call.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from crypto.errors import CryptoError
from crypto.pki import certificate_identity, load_certificate, verify_issued_by
from gateway.errors import CheckFailedError
from gateway.server.guard import GuardInterceptor, service_of
from gateway.server.metrics import GatewayMetrics
from gateway.server.pinned import PinnedPartners, PinnedPartnerStore

log = logging.getLogger(__name__)

PARTNER_LISTENER = "partner"
ADMIN_LISTENER = "admin"

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = frozenset(
    {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)
# Services any authenticated local caller may use, whatever its role.
OPEN_LOCAL_SERVICES = frozenset({HEALTH_SERVICE, *REFLECTION_SERVICES})
ALL_SERVICES = "*"
_QUERY = "mra.v1.QueryService"
# role -> what it may call: a whole service ("pkg.Service") or one method
# ("pkg.Service/Method"). Unknown roles get only OPEN_LOCAL_SERVICES (fail closed).
DEFAULT_ROLES: Mapping[str, frozenset[str]] = {
    "admin": frozenset({ALL_SERVICES}),
    # A risk engine asks whether operators are recognised and follows changes.
    "risk-engine": frozenset({f"{_QUERY}/Check", f"{_QUERY}/CheckMany", f"{_QUERY}/Watch"}),
    # Another government agency of the same country (SAFE Framework 2021: customs-agency
    # cooperation): one question at a time, and the change feed; no bulk CheckMany.
    "agency": frozenset({f"{_QUERY}/Check", f"{_QUERY}/Watch"}),
    # The first read-only role, kept for certificates already issued: all of QueryService.
    "query": frozenset({_QUERY}),
}

NOT_A_PINNED_PARTNER = (
    "client certificate is not issued by the pinned CA of the administration it names"
)
_CACHE_SIZE = 1024


@dataclass(frozen=True)
class PartnerPeer:
    """A partner administration, proven by its pinned CA."""

    code: str
    quarantined: bool = False

    @property
    def actor(self) -> str:
        """The audit-trail actor for actions this peer causes."""
        return f"partner:{self.code}"


@dataclass(frozen=True)
class LocalPeer:
    """A local client of this node (CLI, risk engine, agency) with the role in its OU."""

    role: str
    common_name: str
    #: SHA-256 of the certificate's DER, lowercase hex: what revocation is matched on.
    fingerprint: str = ""

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.common_name}"


Peer = PartnerPeer | LocalPeer

_current: ContextVar[Peer | None] = ContextVar("mragw_peer", default=None)
# How to re-check the current call's peer mid-call (set by the identity guard).
_recheck: ContextVar[Callable[[], None] | None] = ContextVar("mragw_peer_recheck", default=None)


def current_peer_or_none() -> Peer | None:
    """The authenticated peer of the current call, or None outside a guarded call."""
    return _current.get()


def current_peer() -> Peer:
    """The authenticated peer of the gRPC call being handled."""
    peer = _current.get()
    if peer is None:
        raise RuntimeError("no authenticated peer: not inside a call guarded by an identity check")
    return peer


def recheck_peer() -> None:
    """Raise :class:`PeerRejectedError` when the current call's peer lost its right since the
    call began (a local client revoked while its Watch stream is open). Long-lived streams
    call it before each message; a no-op outside a guarded call."""
    recheck = _recheck.get()
    if recheck is not None:
        recheck()


def current_partner() -> PartnerPeer:
    """The partner calling the partner listener (for ExchangeService servicers)."""
    peer = current_peer()
    if not isinstance(peer, PartnerPeer):
        raise RuntimeError("the current call is not from a partner")  # noqa: TRY004 - wiring bug
    return peer


def current_local_peer() -> LocalPeer:
    """The local client calling the admin listener (for Query/AdminService servicers)."""
    peer = current_peer()
    if not isinstance(peer, LocalPeer):
        raise RuntimeError("the current call is not from a local client")  # noqa: TRY004
    return peer


class PeerRejectedError(CheckFailedError):
    """A caller refused by an identity or authorisation check.

    ``public`` is what the caller is told; ``detail`` goes to the log only. ``reason`` is the
    metrics label; ``partner`` is set only once the partner is authenticated.
    """

    def __init__(
        self,
        status: grpc.StatusCode,
        reason: str,
        public: str,
        detail: str = "",
        partner: str = "",
    ) -> None:
        super().__init__(f"{public} ({detail})" if detail else public)
        self.status = status
        self.reason = reason
        self.public = public
        self.detail = detail or public
        self.partner = partner


def _unauthenticated(detail: str) -> PeerRejectedError:
    return PeerRejectedError(
        grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", NOT_A_PINNED_PARTNER, detail
    )


def presented_certificate(auth_context: Mapping[str, Any]) -> bytes | None:
    """The PEM of the client certificate TLS verified, or None when there is none."""
    values = list(auth_context.get("x509_pem_cert") or ())
    if len(values) != 1 or not isinstance(values[0], bytes):
        return None
    return values[0]


def _in_window(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


class _VerifiedCache:
    """Bounded LRU of certificates already verified: key -> (certificate, identity)."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self._size = size
        self._items: OrderedDict[tuple[bytes, int], tuple[x509.Certificate, Peer]] = OrderedDict()

    def get(self, key: tuple[bytes, int], now: dt.datetime) -> Peer | None:
        item = self._items.get(key)
        if item is None:
            return None
        cert, peer = item
        if not _in_window(cert, now):
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return peer

    def put(self, key: tuple[bytes, int], cert: x509.Certificate, peer: Peer) -> None:
        self._items[key] = (cert, peer)
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


def identify_partner(pem: bytes | None, pinned: PinnedPartners, now: dt.datetime) -> PartnerPeer:
    """The partner that ``pem`` proves, or :class:`PeerRejectedError` (numbered as in the doc).

    Suspension is not checked here (see :func:`authorise_partner`), so this is cacheable.
    """
    return _verify_partner(pem, pinned, now)[1]


def _verify_partner(
    pem: bytes | None, pinned: PinnedPartners, now: dt.datetime
) -> tuple[x509.Certificate, PartnerPeer]:
    if pem is None:
        raise _unauthenticated("no client certificate in the TLS auth context")
    try:
        cert = load_certificate(pem)
        code, role = certificate_identity(cert)  # 1. claimed, not yet proven
    except CryptoError as error:
        raise _unauthenticated(f"unreadable certificate: {error}") from error
    partner = pinned.get(code)  # 2.
    if partner is None:
        raise _unauthenticated(f"certificate names {code}, which is not a pinned partner")
    failures: list[str] = []
    for ca in partner.cas:  # 3. that partner's CA(s) only
        try:
            verify_issued_by(cert, ca, now=now, expected_code=code)
            break
        except CryptoError as error:
            failures.append(str(error))
    else:
        raise _unauthenticated(f"certificate naming {code}: {'; '.join(failures)}")
    if role is not None:  # 4.
        raise PeerRejectedError(
            grpc.StatusCode.UNAUTHENTICATED,
            "unauthenticated",
            f"a local-client certificate (role {role!r}) is not a partner identity",
            partner=code,
        )
    return cert, PartnerPeer(code=code, quarantined=partner.quarantined)


def authorise_partner(peer: PartnerPeer, pinned: PinnedPartners) -> PartnerPeer:
    """5. Refuse a suspended partner; return the peer with its current quarantine flag."""
    partner = pinned.get(peer.code)
    if partner is None:  # removed between two calls on one connection
        raise _unauthenticated(f"partner {peer.code} is no longer pinned")
    if partner.suspended:
        raise PeerRejectedError(
            grpc.StatusCode.PERMISSION_DENIED,
            "suspended",
            f"partner {peer.code} is suspended",
            partner=peer.code,
        )
    if partner.quarantined != peer.quarantined:
        return PartnerPeer(code=peer.code, quarantined=partner.quarantined)
    return peer


def identify_local(
    pem: bytes | None, own_ca: x509.Certificate, own_code: str, now: dt.datetime
) -> LocalPeer:
    """The local client ``pem`` proves: issued by our own CA, naming our code, with a role."""
    return _verify_local(pem, [own_ca], own_code, now)[1]


def _verify_local(
    pem: bytes | None, own_cas: Sequence[x509.Certificate], own_code: str, now: dt.datetime
) -> tuple[x509.Certificate, LocalPeer]:
    if pem is None:
        raise PeerRejectedError(
            grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", "no client certificate"
        )
    problem = "no CA of this node"
    for own_ca in own_cas:
        # Several CAs only during a TLS CA rotation: certificates of the old and the new one
        # both stay valid until the old CA is retired.
        try:
            cert = load_certificate(pem)
            _code, role = verify_issued_by(cert, own_ca, now=now, expected_code=own_code)
            break
        except CryptoError as error:
            problem = str(error)
    else:
        raise PeerRejectedError(
            grpc.StatusCode.UNAUTHENTICATED,
            "unauthenticated",
            "client certificate is not a local client certificate of this node",
            problem,
        )
    if role is None:
        raise PeerRejectedError(
            grpc.StatusCode.PERMISSION_DENIED,
            "permission_denied",
            "client certificate carries no role (OU); local clients need one",
        )
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    return cert, LocalPeer(role=role, common_name=common_name, fingerprint=fingerprint)


def refuse_revoked(peer: LocalPeer, revoked: Mapping[str, str]) -> None:
    """UNAUTHENTICATED when ``peer``'s certificate is in the revoked set (fingerprint -> name)."""
    name = revoked.get(peer.fingerprint)
    if name is not None:
        raise PeerRejectedError(
            grpc.StatusCode.UNAUTHENTICATED,
            "revoked",
            f"client certificate is revoked (local client {name!r})",
        )


def authorise_local(
    peer: LocalPeer, method: str, roles: Mapping[str, frozenset[str]] = DEFAULT_ROLES
) -> None:
    """Raise PERMISSION_DENIED unless ``peer``'s role may call ``method``."""
    service = service_of(method)
    if service in OPEN_LOCAL_SERVICES:
        return
    allowed = roles.get(peer.role, frozenset())
    if ALL_SERVICES in allowed or service in allowed or method.lstrip("/") in allowed:
        return
    raise PeerRejectedError(
        grpc.StatusCode.PERMISSION_DENIED,
        "permission_denied",
        f"role {peer.role!r} may not call {method.lstrip('/')}",
    )


def _now() -> dt.datetime:
    return dt.datetime.now(tz=dt.UTC)


class _IdentityInterceptor(GuardInterceptor):
    listener = ""

    def __init__(self, metrics: GatewayMetrics, clock: Callable[[], dt.datetime] = _now) -> None:
        self._metrics = metrics
        self._clock = clock
        self._cache = _VerifiedCache()

    def identify(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Peer:
        raise NotImplementedError  # pragma: no cover - abstract

    @asynccontextmanager
    async def guard(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        try:
            peer = self.identify(method, context)
        except PeerRejectedError as rejected:
            self._metrics.rpc_rejected.inc(self.listener, rejected.reason, rejected.partner)
            log.warning(
                "%s listener refused %s from %s: %s",
                self.listener,
                method,
                context.peer(),
                rejected.detail,
            )
            await context.abort(rejected.status, rejected.public)
            raise  # pragma: no cover - abort raises
        token = _current.set(peer)
        recheck_token = _recheck.set(functools.partial(self.recheck, peer))
        try:
            yield
        finally:
            # ValueError: a streaming call finalised from another task; its own task's
            # context dies with it, so there is nothing to undo.
            with contextlib.suppress(ValueError):
                _recheck.reset(recheck_token)
                _current.reset(token)

    def recheck(self, peer: Peer) -> None:
        """Mid-call re-check of ``peer`` (:func:`recheck_peer`); nothing by default."""


class PartnerIdentityInterceptor(_IdentityInterceptor):
    """Authenticates every call on the partner listener (see the module docstring)."""

    listener = PARTNER_LISTENER

    def __init__(
        self,
        store: PinnedPartnerStore,
        metrics: GatewayMetrics,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        super().__init__(metrics, clock)
        self._store = store

    def identify(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Peer:
        pinned = self._store.current
        now = self._clock()
        pem = presented_certificate(context.auth_context())
        key = (pem or b"", pinned.generation)
        cached = self._cache.get(key, now) if pem is not None else None
        if isinstance(cached, PartnerPeer):
            peer = cached
        else:
            cert, peer = _verify_partner(pem, pinned, now)
            self._cache.put(key, cert, peer)
        return authorise_partner(peer, pinned)


class LocalIdentityInterceptor(_IdentityInterceptor):
    """Authenticates and authorises every call on the admin listener."""

    listener = ADMIN_LISTENER

    def __init__(
        self,
        own_cas: Callable[[], Sequence[x509.Certificate]],
        own_code: str,
        metrics: GatewayMetrics,
        *,
        roles: Mapping[str, frozenset[str]] = DEFAULT_ROLES,
        revoked: Callable[[], Mapping[str, str]] | None = None,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        """``revoked`` returns the current revoked certificates (fingerprint -> client name);
        it is called on every call, so it must answer from memory."""
        super().__init__(metrics, clock)
        self._own_cas = own_cas
        self._revoked = revoked
        self._cas_seen: Sequence[x509.Certificate] | None = None
        self._cas_key = 0
        self._own_code = own_code
        self._roles = roles

    def identify(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Peer:
        now = self._clock()
        pem = presented_certificate(context.auth_context())
        cas = self._own_cas()
        if cas is not self._cas_seen:  # the source hands back the same list until CAs change
            self._cas_seen = cas
            self._cas_key = hash(tuple(c.fingerprint(hashes.SHA256()) for c in cas))
        # The cache is keyed by the set of CAs too, so a retired CA's certificates stop working.
        key = (pem or b"", self._cas_key)
        cached = self._cache.get(key, now) if pem is not None else None
        if isinstance(cached, LocalPeer):
            peer = cached
        else:
            cert, local = _verify_local(pem, cas, self._own_code, now)
            self._cache.put(key, cert, local)
            peer = local
        self.recheck(peer)  # after the cache, like suspension: no invalidation needed
        authorise_local(peer, method, self._roles)
        return peer

    def recheck(self, peer: Peer) -> None:
        if self._revoked is not None and isinstance(peer, LocalPeer):
            refuse_revoked(peer, self._revoked())

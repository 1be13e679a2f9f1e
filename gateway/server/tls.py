"""gRPC TLS credentials: the partner listener, the admin listener, and the channels that dial.

One credential model (DESIGN.md "Keys and trust"): every caller presents a client
certificate. The TLS layer only filters *which CAs may complete a handshake*; who the caller is
is decided afterwards, per call, by :mod:`gateway.server.identity`, against the one CA pinned
for the administration the certificate names.

Partner listener:
- ``require_client_auth`` with the CAs of every pinned partner as client roots, served through
  ``grpc.dynamic_ssl_server_credentials`` so partners pinned or removed while running take
  effect on the next handshake without a restart. The fetcher runs on a gRPC C-core thread at
  each handshake: it only compares a generation number on the in-memory snapshot and never
  touches the database or the event loop; it returns None ("unchanged") almost always.
- Suspended and quarantined partners stay in the client-CA set, so they get a precise gRPC
  status (PERMISSION_DENIED "suspended") instead of an opaque handshake failure.
- With no partner pinned the client-CA set is a throwaway CA whose key nobody holds: the
  listener starts, every handshake fails, and the first ``partner add`` opens it.
- Removing a CA from the set does not close connections that were already established; the
  per-call identity check, which reads the current snapshot, rejects their next call.

Admin listener: the node's own CA is the only client root; roles come from the certificate OU.

HTTP listener off loopback (:class:`HttpServerTls`): an ``ssl.SSLContext`` with the node
certificate, requiring a client certificate from our own CA(s) (ADR 0013). asyncio serves one
fixed context, so its ``sni_callback`` (called at every handshake, SNI or not) swaps in a
context rebuilt when a TLS rotation changed our certificate or CAs, as the fetchers above do.
The key is read from its file with the node passphrase by OpenSSL itself: no unencrypted copy.

Channels: a gateway dials a partner by address and checks the partner's certificate against
the name ``<code lower>.mragw`` (``grpc.ssl_target_name_override``) and against that partner's
CA only, presenting ``tls/node.pem``; the CLI dials the local admin listener with
``tls/admin.pem`` and the node's own CA. gRPC wants unencrypted PEM keys in memory, so keys come
from :meth:`Node.tls_private_key_pem` (decrypted in memory, never written).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from crypto.pki import dns_name_for
from gateway.config import LimitsSection
from gateway.node import Node
from gateway.server.pinned import PinnedPartners, PinnedPartnerStore

log = logging.getLogger(__name__)

ChannelOption = tuple[str, Any]

# Long-lived Subscribe streams sit idle between appends; keepalive pings find a dead peer (a
# cut network, a crashed partner) in about a minute instead of at the next TCP timeout.
_KEEPALIVE_TIME_MS = 30_000
_KEEPALIVE_TIMEOUT_MS = 20_000
# The server must allow the client's pings, or it answers GOAWAY "too_many_pings".
_MIN_PING_INTERVAL_MS = 10_000


def server_options(limits: LimitsSection) -> list[ChannelOption]:
    """Options for both gRPC servers.

    Message size limits make gRPC itself refuse an oversized message with RESOURCE_EXHAUSTED
    before any of our code sees it. ``so_reuseport`` is off so that a second gateway on the same
    port fails to start instead of silently sharing (gRPC enables it by default on Linux).
    """
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", _MIN_PING_INTERVAL_MS),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def channel_options(limits: LimitsSection, server_code: str) -> list[ChannelOption]:
    """Options for a channel to a gateway of ``server_code``: name check and limits."""
    return [
        # Dial by address, check the certificate against <code>.mragw (DESIGN.md).
        ("grpc.ssl_target_name_override", dns_name_for(server_code)),
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.keepalive_time_ms", _KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Each channel gets its own connections. With gRPC's process-wide subchannel pool a
        # new channel to the same address may reuse a connection made with credentials we
        # have since replaced (a TLS rotation), and present a certificate the partner no
        # longer trusts.
        ("grpc.use_local_subchannel_pool", 1),
    ]


class _PartnerCertificateFetcher:
    """Called by gRPC at each handshake; answers from the snapshot only (see module doc)."""

    def __init__(self, store: PinnedPartnerStore, node: Node) -> None:
        self._store = store
        self._node = node
        self._served: tuple[int, bytes] = (-1, b"")

    def configuration(
        self, snapshot: PinnedPartners, pair: tuple[bytes, bytes]
    ) -> grpc.ServerCertificateConfiguration:
        roots = snapshot.client_ca_pem or self._store.placeholder_ca_pem()
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=roots)

    def _current(self) -> tuple[PinnedPartners, tuple[bytes, bytes], tuple[int, bytes]]:
        snapshot = self._store.current
        # Keyed by the certificate's content, not its directory: after a TLS switch and the
        # promotion of tls/next the directory is the same again but the certificate is not.
        pair = self._node.tls_pair("node")
        return snapshot, pair, (snapshot.generation, hashlib.sha256(pair[1]).digest())

    def initial(self) -> grpc.ServerCertificateConfiguration:
        snapshot, pair, state = self._current()
        self._served = state
        return self.configuration(snapshot, pair)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            snapshot = self._store.current
            identity = self._node.tls_identity()
            if (snapshot.generation, identity) == self._served:
                return None
            snapshot, pair, state = self._current()
            config = self.configuration(snapshot, pair)
            self._served = state
        except Exception:
            # Raising here would only make gRPC log and keep the old set; say why instead.
            log.exception("building the partner TLS configuration failed; keeping the old one")
            return None
        return config


def partner_server_credentials(node: Node, store: PinnedPartnerStore) -> grpc.ServerCredentials:
    """Credentials for the partner listener (see the module docstring)."""
    fetcher = _PartnerCertificateFetcher(store, node)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.initial(),
        fetcher,  # type: ignore[arg-type]  # gRPC documents None as "unchanged"; stubs omit it
        require_client_authentication=True,
    )


class _AdminCertificateFetcher:
    """The admin listener's certificate and client roots (our own CAs), re-read when a TLS
    rotation switches or retires material."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._served: tuple[bytes, bytes] | None = None

    def _state(self) -> tuple[bytes, bytes]:
        # Content, not paths (see _PartnerCertificateFetcher): our certificate and our CAs.
        return (self._node.tls_identity(), hashlib.sha256(self._node.own_ca_pem()).digest())

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        node = self._node
        return grpc.ssl_server_certificate_configuration(
            [node.tls_pair("node")],
            root_certificates=node.own_ca_pem(),
        )

    def initial(self) -> grpc.ServerCertificateConfiguration:
        self._served = self._state()
        return self.configuration()

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            state = self._state()
            if state == self._served:
                return None
            config = self.configuration()
            self._served = state
        except Exception:
            log.exception("building the admin TLS configuration failed; keeping the old one")
            return None
        return config


def admin_server_credentials(node: Node) -> grpc.ServerCredentials:
    """Credentials for the admin listener: node certificate, own CA(s) as the only client
    roots."""
    fetcher = _AdminCertificateFetcher(node)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.initial(),
        fetcher,  # type: ignore[arg-type]  # gRPC documents None as "unchanged"; stubs omit it
        require_client_authentication=True,
    )


class HttpServerTls:
    """The HTTP listener's TLS (see the module docstring): build once, hand :attr:`context`
    to the server; every handshake gets the material current at that moment."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._state = self._current_state()
        self._serving = self._build()
        # The outer context is also the first one served; the callback replaces it per
        # connection once our material changes.
        self.context = self._build()
        self.context.sni_callback = self._select

    def _current_state(self) -> tuple[bytes, bytes]:
        return (self._node.tls_identity(), hashlib.sha256(self._node.own_ca_pem()).digest())

    def _build(self) -> ssl.SSLContext:
        node = self._node
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=node.own_ca_pem().decode("ascii"))
        folder = node.tls_dir()  # key and certificate from one directory (a switch may be due)
        passphrase = node.passphrase or b""
        # A callable, never None: OpenSSL would otherwise prompt on the terminal for the
        # passphrase of an encrypted key.
        context.load_cert_chain(
            folder / "node.pem", folder / "node.key", password=lambda: passphrase
        )
        return context

    def _select(self, conn: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        try:
            state = self._current_state()
            if state != self._state:
                self._serving = self._build()
                self._state = state
        except Exception:
            log.exception("building the HTTP listener's TLS context failed; keeping the old one")
        conn.context = self._serving


def mtls_channel(
    target: str,
    *,
    server_code: str,
    root_pem: bytes,
    key_pem: bytes,
    cert_pem: bytes,
    limits: LimitsSection,
    options: Sequence[ChannelOption] = (),
) -> grpc.aio.Channel:
    """A secure channel to ``target`` presenting ``cert_pem`` and trusting only ``root_pem``.

    The building block of :func:`partner_channel` and :func:`local_channel`; tests and the
    hostile test partner use it to present other certificates.
    """
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root_pem, private_key=key_pem, certificate_chain=cert_pem
    )
    return grpc.aio.secure_channel(
        target, credentials, options=[*channel_options(limits, server_code), *options]
    )


def partner_channel(
    node: Node,
    partner_code: str,
    endpoint: str,
    partner_ca_pem: str | bytes,
    *,
    options: Sequence[ChannelOption] = (),
) -> grpc.aio.Channel:
    """A channel to a partner's gateway at ``endpoint``, as this node (``tls/node.pem``)."""
    root = partner_ca_pem.encode("ascii") if isinstance(partner_ca_pem, str) else partner_ca_pem
    key_pem, cert_pem = node.tls_pair("node")
    return mtls_channel(
        endpoint,
        server_code=partner_code,
        root_pem=root,
        key_pem=key_pem,
        cert_pem=cert_pem,
        limits=node.config.limits,
        options=options,
    )


def local_channel(
    node: Node,
    target: str,
    *,
    client: str = "admin",
    options: Sequence[ChannelOption] = (),
) -> grpc.aio.Channel:
    """A channel to this node's admin listener at ``target`` (the CLI's ``--target``).

    ``client`` names the certificate pair under ``tls/`` to present (``admin`` by default).
    """
    key_pem, cert_pem = node.tls_pair(client)
    return mtls_channel(
        target,
        server_code=node.admin,
        root_pem=node.own_ca_pem(),
        key_pem=key_pem,
        cert_pem=cert_pem,
        limits=node.config.limits,
        options=options,
    )

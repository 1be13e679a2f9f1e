"""Serving: the partner and admin gRPC listeners, mTLS identity, limits, metrics and HTTP.

Entry point: :class:`gateway.server.app.GatewayServer`. Servicers get their caller from
:func:`gateway.server.identity.current_partner` (partner listener) or
:func:`gateway.server.identity.current_local_peer` (admin listener). Decisions are recorded in
docs/adr/0004-mtls-identity.md.
"""

"""The HTTP listener: Prometheus ``/metrics``, ``/healthz`` and a read-only status page ``/``.

Deliberately tiny and strict (stdlib asyncio, no web framework, no new dependency): it serves
operators and a Prometheus scraper on loopback by default, not the public.

- One request per connection (``Connection: close``): no keep-alive state to abuse.
- Only ``GET`` (and ``HEAD``, which every HTTP/1.1 server must support) -> otherwise 405.
- The request head must arrive whole within ``read_timeout_s`` (a total deadline, so a
  slowloris client that trickles bytes is cut off) and fit in ``max_request_bytes`` (431).
- A request with a body (Content-Length > 0 or Transfer-Encoding) is refused (400): nothing
  here takes input.
- At most ``max_connections`` at once; more are closed unanswered rather than queued.
- Every value on the status page is HTML-escaped (partner reasons are operator text and may
  come from a partner's data); the page sends a CSP that forbids scripts.
- The status page shows partners (state, lag, last checkpoint), recent replication rejections,
  alerts and today's recognition graph, inline as SVG (also at ``/graph.svg``). The SVG is our
  own drawing, but its labels come from the dataset, so it is checked against the elements and
  attributes :mod:`registry.graph` emits before it is embedded (:func:`inline_svg`); anything
  else (a script, an event handler, an external reference) drops the drawing, not the page.
- Read-only: no forms, no state changes; the CSP also says ``form-action 'none'``.
- Bound to loopback it is plain HTTP. Bound anywhere else it serves only HTTPS and requires a
  client certificate from the node's own CA with a reader role (ADR 0013); without a TLS
  context it refuses to start (:class:`PlainHttpRefusedError`). The TLS handshake itself
  refuses a missing certificate or one from another CA; the role is checked per request (403).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import html
import inspect
import ipaddress
import json
import logging
import math
import re
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc
from cryptography import x509

from gateway.config import ConfigError, parse_hostport
from gateway.server.identity import PeerRejectedError, identify_local, refuse_revoked
from gateway.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.server.metrics import GatewayMetrics

log = logging.getLogger(__name__)

StatusSource = Callable[[], Awaitable[Mapping[str, Any]] | Mapping[str, Any]]
# Today's recognition graph as SVG text (registry.graph.to_svg).
GraphSource = Callable[[], Awaitable[str]]
# The verified client certificate (DER) -> the reader's actor name, or PeerRejectedError.
PeerCheck = Callable[[bytes], str]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_PATHS = ("/", "/metrics", "/healthz", "/graph.svg")
# Exactly what the page uses: its own inline <style> (inline SVG needs nothing more, its
# styling is presentation attributes). No scripts, images, fonts or connections; no forms.
_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
#: Local-client roles that may read this listener off loopback (ADR 0013).
READER_ROLES = frozenset({"admin"})
# The drawing is a few hundred kB for the whole world; more means something is wrong.
MAX_SVG_BYTES = 2 * 1024 * 1024


class PlainHttpRefusedError(ConfigError):
    """The HTTP listener was asked to serve plain HTTP off loopback."""


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals; a wildcard or any other name is not
    (fail closed: a name could resolve anywhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dialable_url(host: str, port: int, scheme: str = "http") -> str:
    """``http://host:port`` with wildcard binds mapped to loopback and IPv6 bracketed."""
    if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - mapping a wildcard bind to loopback
        host = "127.0.0.1"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class _Response:
    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = dict(headers or {})

    def encode(self, *, include_body: bool) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS[self.status]}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        return head + self.body if include_body else head


def _text(status: int, message: str, headers: Mapping[str, str] | None = None) -> _Response:
    return _Response(status, (message + "\n").encode("utf-8"), headers=headers)


class _BadRequestError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.response = _text(status, message, headers)


def _parse_head(head: bytes) -> tuple[str, str]:
    """(method, path) of a request head, or :class:`_BadRequestError`."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise _BadRequestError(400, "request head is not ASCII") from None
    lines = text[: -len("\r\n\r\n")].split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in {"HTTP/1.0", "HTTP/1.1"}:
        raise _BadRequestError(400, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise _BadRequestError(400, "malformed header line")
        headers[name.lower()] = value.strip()
    if version == "HTTP/1.1" and "host" not in headers:
        raise _BadRequestError(400, "HTTP/1.1 request without Host")
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        raise _BadRequestError(400, "this server takes no request body")
    if method not in {"GET", "HEAD"}:
        raise _BadRequestError(405, f"method {method} not allowed", {"Allow": "GET, HEAD"})
    if not target.startswith("/"):
        raise _BadRequestError(400, "request target must be a path")
    return method, target.split("?", 1)[0]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.1f}"
    return html.escape(str(value), quote=True)


# (key, title); a row's cells carry the key as their class, so tools can find them.
_PARTNER_COLUMNS = (
    ("admin", "Partner"),
    ("state", "State"),
    ("connected", "Connected"),
    ("trust_state", "Trust statement"),
    ("lag_entries", "Lag (entries)"),
    ("lag_s", "Lag (s)"),
    ("last_checkpoint", "Last checkpoint"),
    ("entries", "Entries stored"),
    ("unverified", "Not yet verified"),
    ("witnesses", "Witnesses"),
    ("unusable", "Unusable entries"),
    ("reason", "Reason"),
    ("trust_problem", "Trust problem"),
)
_REJECTION_COLUMNS = (
    ("at", "At (UTC)"),
    ("partner", "Partner"),
    ("kind", "Kind"),
    ("message", "Message"),
)
_REPLICA_COLUMNS = (
    ("name", "Replica"),
    ("health", "Health"),
    ("host", "Host"),
    ("pid", "PID"),
    ("heartbeat_at", "Last heartbeat (UTC)"),
    ("leases", "Leases held"),
)
# Root hash digits shown; enough to compare with a partner's by eye.
_ROOT_PREFIX = 16


def _trust_text(trust: Any) -> str | None:
    if not isinstance(trust, Mapping):
        return None
    return f"v{trust.get('version')} {trust.get('state')} (expires {trust.get('expires')})"


def _partner_state(partner: Mapping[str, Any]) -> str:
    if partner.get("quarantined"):
        return "quarantined"
    if partner.get("suspended"):
        return "suspended"
    return "active"


def _checkpoint_text(checkpoint: Any) -> str | None:
    if not isinstance(checkpoint, Mapping):
        return None
    root = checkpoint.get("root")
    root_text = f"{str(root)[:_ROOT_PREFIX]}…" if root else "-"
    return f"size {checkpoint.get('size')}, root {root_text}, {checkpoint.get('at') or '-'}"


def _table(
    table_id: str,
    columns: Sequence[tuple[str, str]],
    rows: Iterable[Mapping[str, Any]],
    row_key: str,
) -> str:
    header = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    lines = [
        f'<tr data-{row_key}="{_cell(row.get(row_key))}">'
        + "".join(f'<td class="{key}">{_cell(row.get(key))}</td>' for key, _ in columns)
        + "</tr>"
        for row in rows
    ]
    body = "\n".join(lines) or f'<tr><td colspan="{len(columns)}">none</td></tr>'
    return (
        f'<table id="{table_id}"><thead><tr>{header}</tr></thead>\n<tbody>\n{body}\n'
        "</tbody></table>"
    )


def render_status_page(status: Mapping[str, Any], graph_svg: str | None = None) -> str:
    """The status page as HTML; every value escaped. ``graph_svg`` must come from
    :func:`inline_svg` (it is embedded as is)."""
    admin = _cell(status.get("admin"))
    partners = [
        {
            **partner,
            "state": _partner_state(partner),
            "trust_state": _trust_text(partner.get("trust")),
            "last_checkpoint": _checkpoint_text(partner.get("checkpoint")),
        }
        for partner in status.get("partners") or []
        if isinstance(partner, Mapping)
    ]
    rejections = [r for r in status.get("rejections") or [] if isinstance(r, Mapping)]
    alerts = "".join(
        f"<li>{_cell(a.get('at'))} {_cell(a.get('kind'))} {_cell(a.get('subject'))}: "
        f"{_cell(a.get('message'))}</li>"
        for a in status.get("alerts") or []
    )
    graph = graph_svg or '<p class="unavailable">recognition graph unavailable</p>'
    # Replicas sharing the database (gateway.cluster), each with the live leases it holds.
    held: dict[str, list[str]] = {}
    for lease in status.get("leases") or []:
        if isinstance(lease, Mapping) and lease.get("live") and lease.get("holder"):
            held.setdefault(str(lease["holder"]), []).append(str(lease.get("name")))
    replicas = [
        {
            **r,
            "health": "alive" if r.get("alive") else "not alive",
            "leases": ", ".join(sorted(held.get(str(r.get("name")), []))) or None,
        }
        for r in status.get("replicas") or []
        if isinstance(r, Mapping) and (r.get("alive") or str(r.get("name")) in held)
    ]
    replica_section = ""
    if replicas:
        replica_section = (
            f"<h2>Replicas</h2>\n{_table('replicas', _REPLICA_COLUMNS, replicas, 'name')}\n"
        )
        if status.get("replica"):
            replica_section += f"<p>This page: replica {_cell(status.get('replica'))}.</p>\n"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>mra-gateway {admin}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:.3em .6em;text-align:left}"
        "#graph svg{max-width:100%;height:auto}</style></head>\n"
        f"<body><h1>mra-gateway {admin}</h1>\n"
        f"<p>Own log size: {_cell(status.get('log_size'))}; witnesses of its latest "
        f"checkpoint: {_cell(status.get('log_witnesses'))}; our trust statement: "
        f"{_cell(_trust_text(status.get('trust')))}</p>\n"
        f'<h2>Alerts</h2>\n<ul id="alerts">{alerts or "<li>none</li>"}</ul>\n'
        f"<h2>Partners</h2>\n{_table('partners', _PARTNER_COLUMNS, partners, 'admin')}\n"
        "<p>Lag: the partner's newest verified checkpoint size minus its entries we stored and "
        "verified; seconds since we last verified a checkpoint of it.</p>\n"
        "<h2>Recent rejections</h2>\n"
        f"{_table('rejections', _REJECTION_COLUMNS, rejections, 'partner')}\n"
        f"{replica_section}"
        f'<h2>Recognition today</h2>\n<div id="graph">{graph}</div>\n'
        '<p><a href="/metrics">metrics</a> · <a href="/healthz">health</a> · '
        '<a href="/graph.svg">graph.svg</a></p>\n'
        "</body></html>\n"
    )


_SVG_NS = "{http://www.w3.org/2000/svg}"
# What registry.graph.to_svg emits, and nothing else: no script, foreignObject, image, use,
# style or animation element; no event handler, href or style attribute.
_SVG_ELEMENTS = frozenset({"svg", "defs", "marker", "g", "path", "rect", "circle", "text"})
_SVG_ATTRIBUTES = frozenset(
    {
        "class", "cx", "cy", "d", "data-arrangement", "data-id", "data-source",
        "data-target", "data-union", "fill", "font-family", "font-size", "font-weight",
        "height", "id", "marker-end", "marker-start", "markerHeight", "markerWidth",
        "orient", "paint-order", "r", "refX", "refY", "rx", "stroke", "stroke-opacity",
        "stroke-width", "text-anchor", "viewBox", "width", "x", "y",
    }
)  # fmt: skip
_LOCAL_URL = re.compile(r"url\(#[A-Za-z0-9_-]+\)")


class UnsafeSvgError(ValueError):
    """An SVG with something the status page does not embed; the message names it."""


def inline_svg(svg: str) -> str:
    """``svg`` (a standalone document from :func:`registry.graph.to_svg`) checked element by
    element and attribute by attribute, without its XML declaration, for inline use in HTML.

    Raises :class:`UnsafeSvgError` naming the first thing that is not allowed."""
    if len(svg) > MAX_SVG_BYTES:
        raise UnsafeSvgError(f"SVG of {len(svg)} characters, more than {MAX_SVG_BYTES}")
    if "<!DOCTYPE" in svg or "<!ENTITY" in svg:
        raise UnsafeSvgError("SVG with a document type or entity declaration")
    try:
        root = ET.fromstring(svg)  # noqa: S314 - our own drawing, no DTD (checked above)
    except ET.ParseError as error:
        raise UnsafeSvgError(f"SVG is not well-formed XML: {error}") from error
    for element in root.iter():
        tag = element.tag if isinstance(element.tag, str) else ""
        if not tag.startswith(_SVG_NS) or tag[len(_SVG_NS) :] not in _SVG_ELEMENTS:
            raise UnsafeSvgError(f"SVG element {tag!r} is not allowed")
        for name, value in element.attrib.items():
            if name not in _SVG_ATTRIBUTES:
                raise UnsafeSvgError(f"SVG attribute {name!r} is not allowed")
            if "url(" in value and not _LOCAL_URL.fullmatch(value):
                raise UnsafeSvgError(f"SVG attribute {name!r} refers outside the drawing")
    # The text is embedded as generated (its escaping is XML's, which the HTML parser reads
    # the same way); the declaration is the only part HTML would not take.
    start = svg.find("<svg")
    return svg[start:]


def reader_check(
    own_cas: Callable[[], Sequence[x509.Certificate]],
    own_code: str,
    roles: frozenset[str] = READER_ROLES,
    revoked: Callable[[], Mapping[str, str]] | None = None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(tz=dt.UTC),
) -> PeerCheck:
    """A :data:`PeerCheck`: the certificate must be a local client certificate of this node
    (own CA, own code, a role in OU: the admin listener's rules), not revoked (``revoked``:
    fingerprint -> client name, from memory), with a role in ``roles``."""

    def check(der: bytes) -> str:
        if not der:
            raise PeerRejectedError(
                grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", "no client certificate"
            )
        pem = ssl.DER_cert_to_PEM_cert(der).encode("ascii")
        now = clock()
        problem: PeerRejectedError | None = None
        for ca in own_cas():  # more than one only during a TLS CA rotation
            try:
                peer = identify_local(pem, ca, own_code, now)
                break
            except PeerRejectedError as error:
                problem = error
        else:
            raise problem or PeerRejectedError(
                grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", "no CA of this node"
            )
        if revoked is not None:
            refuse_revoked(peer, revoked())
        if peer.role not in roles:
            raise PeerRejectedError(
                grpc.StatusCode.PERMISSION_DENIED,
                "permission_denied",
                f"role {peer.role!r} may not read this listener",
            )
        return peer.actor

    return check


class StatusHttpServer:
    """The HTTP listener of a gateway (see the module docstring)."""

    def __init__(
        self,
        listen: str,
        *,
        metrics: GatewayMetrics,
        healthy: Callable[[], bool],
        status: StatusSource | None = None,
        graph: GraphSource | None = None,
        tls: ssl.SSLContext | None = None,
        peer_check: PeerCheck | None = None,
        read_timeout_s: float = 5.0,
        max_request_bytes: int = 8192,
        max_connections: int = 64,
    ) -> None:
        """``tls`` (a context requiring client certificates) and ``peer_check`` (who may read)
        go together; off loopback both are required."""
        self._host, self._port = parse_hostport(listen, "server.http_listen")
        if (tls is None) != (peer_check is None):
            raise ValueError("the HTTP listener needs both a TLS context and a peer check")
        if tls is not None and tls.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("the HTTP listener's TLS context must require client certificates")
        if tls is None and not is_loopback_host(self._host):
            raise PlainHttpRefusedError(
                f"server.http_listen: {listen} is not a loopback address; there the HTTP "
                "listener serves only HTTPS with client certificates of this node's CA, and "
                "none was set up: refusing to serve plain HTTP"
            )
        self._metrics = metrics
        self._healthy = healthy
        self._status = status
        self._graph = graph
        self._tls = tls
        self._peer_check = peer_check
        self.read_timeout_s = read_timeout_s
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._active = 0
        self._bound: tuple[str, int] | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle,
            self._host or None,
            self._port,
            limit=self.max_request_bytes,
            ssl=self._tls,
            # A client that opens a connection and never finishes the handshake is cut off
            # like one that never finishes its request head.
            ssl_handshake_timeout=self.read_timeout_s if self._tls is not None else None,
        )
        # The socket's own address, not the configured host: a host name may resolve to
        # several addresses, each bound to its own ephemeral port.
        name = self._server.sockets[0].getsockname()
        self._bound = (str(name[0]), int(name[1]))

    @property
    def port(self) -> int:
        if self._bound is None:
            raise RuntimeError("the HTTP listener is not started")
        return self._bound[1]

    @property
    def url(self) -> str:
        """The bound URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash); ``https`` when
        the listener requires client certificates."""
        if self._bound is None:
            raise RuntimeError("the HTTP listener is not started")
        return dialable_url(*self._bound, scheme="http" if self._tls is None else "https")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= self.max_connections:
            writer.close()
            return
        self._active += 1
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            log.exception("HTTP listener: unexpected error")
        finally:
            self._active -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self.read_timeout_s)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        include_body = True
        path = "other"
        try:
            try:
                head = await asyncio.wait_for(
                    reader.readuntil(b"\r\n\r\n"), timeout=self.read_timeout_s
                )
            except TimeoutError:
                raise _BadRequestError(408, "request head not received in time") from None
            except asyncio.LimitOverrunError:
                raise _BadRequestError(431, "request head too large") from None
            except asyncio.IncompleteReadError as error:
                if len(error.partial) >= self.max_request_bytes:
                    raise _BadRequestError(431, "request head too large") from None
                return  # the client went away before sending a request
            method, target = _parse_head(head)
            include_body = method != "HEAD"
            path = target if target in _PATHS else "other"
            self._check_peer(writer)
            response = await self._route(target)
        except _BadRequestError as bad:
            response = bad.response
        self._metrics.http_requests.inc(path, str(response.status))
        writer.write(response.encode(include_body=include_body))
        await asyncio.wait_for(writer.drain(), timeout=self.read_timeout_s)

    def _check_peer(self, writer: asyncio.StreamWriter) -> None:
        """Off loopback: the TLS layer verified the chain; is it a reader of ours? (403)"""
        if self._peer_check is None:
            return
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            # The handshake requires a certificate; b"" (never served) if there were none.
            self._peer_check(der or b"")
        except PeerRejectedError as rejected:
            log.warning(
                "HTTP listener refused %s: %s",
                writer.get_extra_info("peername"),
                rejected.detail,
            )
            raise _BadRequestError(403, rejected.public) from None

    async def _route(self, path: str) -> _Response:
        if path == "/metrics":
            await self._metrics.collect()  # scrape-time figures (database, replicators)
            body = self._metrics.registry.render().encode("utf-8")
            return _Response(200, body, METRICS_CONTENT_TYPE)
        if path == "/healthz":
            return _text(200, "ok") if self._healthy() else _text(503, "not serving")
        if path == "/":
            try:
                status = await self._read_status()
            except Exception:
                log.exception("status page: the status source failed")
                return _text(500, "status unavailable")
            graph = await self._read_graph()
            return _Response(
                200,
                render_status_page(status, inline_svg(graph) if graph else None).encode("utf-8"),
                "text/html; charset=utf-8",
                {"Content-Security-Policy": _CSP},
            )
        if path == "/graph.svg":
            graph = await self._read_graph()
            if graph is None:
                return _text(503, "recognition graph unavailable")
            return _Response(
                200,
                graph.encode("utf-8"),
                "image/svg+xml; charset=utf-8",
                {"Content-Security-Policy": _CSP},
            )
        return _text(404, "not found")

    async def _read_graph(self) -> str | None:
        """Today's graph, checked by :func:`inline_svg`; None (logged) when it cannot be had:
        the rest of the page is still worth serving."""
        if self._graph is None:
            return None
        try:
            svg = await self._graph()
            inline_svg(svg)
        except Exception:
            log.exception("status page: the recognition graph is unavailable")
            return None
        return svg

    async def _read_status(self) -> Mapping[str, Any]:
        if self._status is None:
            return {}
        result = self._status()
        if inspect.isawaitable(result):
            result = await result
        # Round-trip through JSON so only plain data reaches the page.
        plain: Mapping[str, Any] = json.loads(json.dumps(result, default=str))
        return plain

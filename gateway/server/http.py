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
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import inspect
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.config import parse_hostport
from gateway.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.server.metrics import GatewayMetrics

log = logging.getLogger(__name__)

StatusSource = Callable[[], Awaitable[Mapping[str, Any]] | Mapping[str, Any]]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_PATHS = ("/", "/metrics", "/healthz")
_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


def dialable_url(host: str, port: int) -> str:
    """``http://host:port`` with wildcard binds mapped to loopback and IPv6 bracketed."""
    if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - mapping a wildcard bind to loopback
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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


_PARTNER_COLUMNS = (
    ("admin", "Partner"),
    ("connected", "Connected"),
    ("entries", "Entries"),
    ("tree_size", "Verified tree size"),
    ("checkpoint_age_s", "Checkpoint age (s)"),
    ("suspended", "Suspended"),
    ("quarantined", "Quarantined"),
    ("reason", "Reason"),
    ("witnesses", "Witnesses"),
    ("unusable", "Unusable entries"),
    ("trust_state", "Trust statement"),
    ("trust_problem", "Trust problem"),
)


def _trust_text(trust: Any) -> str | None:
    if not isinstance(trust, Mapping):
        return None
    return f"v{trust.get('version')} {trust.get('state')} (expires {trust.get('expires')})"


def render_status_page(status: Mapping[str, Any]) -> str:
    """The status page as HTML; every value escaped."""
    admin = _cell(status.get("admin"))
    rows = []
    for partner in status.get("partners") or []:
        values = {**partner, "trust_state": _trust_text(partner.get("trust"))}
        cells = "".join(f"<td>{_cell(values.get(key))}</td>" for key, _ in _PARTNER_COLUMNS)
        rows.append(f"<tr>{cells}</tr>")
    alerts = "".join(
        f"<li>{_cell(a.get('at'))} {_cell(a.get('kind'))} {_cell(a.get('subject'))}: "
        f"{_cell(a.get('message'))}</li>"
        for a in status.get("alerts") or []
    )
    header = "".join(f"<th>{html.escape(title)}</th>" for _, title in _PARTNER_COLUMNS)
    body = "\n".join(rows) or f'<tr><td colspan="{len(_PARTNER_COLUMNS)}">none</td></tr>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>mra-gateway {admin}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:.3em .6em;text-align:left}</style></head>\n"
        f"<body><h1>mra-gateway {admin}</h1>\n"
        f"<p>Own log size: {_cell(status.get('log_size'))}; witnesses of its latest "
        f"checkpoint: {_cell(status.get('log_witnesses'))}; our trust statement: "
        f"{_cell(_trust_text(status.get('trust')))}</p>\n"
        f"<h2>Alerts</h2>\n<ul>{alerts or '<li>none</li>'}</ul>\n"
        f"<h2>Partners</h2>\n<table><thead><tr>{header}</tr></thead>\n<tbody>\n{body}\n"
        "</tbody></table>\n"
        '<p><a href="/metrics">metrics</a> · <a href="/healthz">health</a></p>\n'
        "</body></html>\n"
    )


class StatusHttpServer:
    """The HTTP listener of a gateway (see the module docstring)."""

    def __init__(
        self,
        listen: str,
        *,
        metrics: GatewayMetrics,
        healthy: Callable[[], bool],
        status: StatusSource | None = None,
        read_timeout_s: float = 5.0,
        max_request_bytes: int = 8192,
        max_connections: int = 64,
    ) -> None:
        self._host, self._port = parse_hostport(listen, "server.http_listen")
        self._metrics = metrics
        self._healthy = healthy
        self._status = status
        self.read_timeout_s = read_timeout_s
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._active = 0
        self._bound: tuple[str, int] | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self._host or None, self._port, limit=self.max_request_bytes
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
        """The bound URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        if self._bound is None:
            raise RuntimeError("the HTTP listener is not started")
        return dialable_url(*self._bound)

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
            response = await self._route(target)
        except _BadRequestError as bad:
            response = bad.response
        self._metrics.http_requests.inc(path, str(response.status))
        writer.write(response.encode(include_body=include_body))
        await asyncio.wait_for(writer.drain(), timeout=self.read_timeout_s)

    async def _route(self, path: str) -> _Response:
        if path == "/metrics":
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
            return _Response(
                200,
                render_status_page(status).encode("utf-8"),
                "text/html; charset=utf-8",
                {"Content-Security-Policy": _CSP},
            )
        return _text(404, "not found")

    async def _read_status(self) -> Mapping[str, Any]:
        if self._status is None:
            return {}
        result = self._status()
        if inspect.isawaitable(result):
            result = await result
        # Round-trip through JSON so only plain data reaches the page.
        plain: Mapping[str, Any] = json.loads(json.dumps(result, default=str))
        return plain

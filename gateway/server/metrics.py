"""A small metrics registry rendered in the Prometheus text exposition format 0.0.4.

Why hand-written: the gateway needs counters, gauges and histograms with labels and one text
rendering; ``prometheus-client`` would add a dependency and a process-global default registry
(STYLE: no module-level singletons). Here every :class:`Registry` is an ordinary object owned
by one :class:`~gateway.server.app.GatewayServer`, so tests run several in one process.

Invariants:
- A metric name and its label names are fixed at registration; a second registration of the
  same name is an error (two components must not silently share or fight over a family).
- Label *values* come only from bounded sets chosen by our code (listener names, registered
  method names, pinned partner codes, rejection reasons), never from what a peer claims, so a
  hostile peer cannot blow up the number of series.
- Updates are thread-safe (one lock per family): the event loop updates them, a scrape may
  render them, and nothing else needs to coordinate.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio

from gateway.server.guard import GuardInterceptor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Latency buckets (seconds) for unary RPCs and HTTP requests: 1 ms .. 10 s.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

LabelValues = tuple[str, ...]


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _series(name: str, label_names: Sequence[str], values: Sequence[str]) -> str:
    if not label_names:
        return name
    pairs = ",".join(
        f'{k}="{_escape_label_value(v)}"' for k, v in zip(label_names, values, strict=True)
    )
    return f"{name}{{{pairs}}}"


class _Family:
    kind = ""

    def __init__(self, name: str, documentation: str, label_names: Sequence[str]) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"metric name {name!r} is not valid")
        for label in label_names:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__") or label == "le":
                raise ValueError(f"label name {label!r} is not valid for {name}")
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"duplicate label names for {name}")
        self.name = name
        self.documentation = documentation
        self.label_names = tuple(label_names)
        self._lock = threading.Lock()

    def _key(self, labels: Sequence[str]) -> LabelValues:
        if len(labels) != len(self.label_names):
            raise ValueError(
                f"{self.name} takes labels {self.label_names}, got {len(labels)} values"
            )
        return tuple(str(v) for v in labels)

    def header(self) -> list[str]:
        return [
            f"# HELP {self.name} {_escape_help(self.documentation)}",
            f"# TYPE {self.name} {self.kind}",
        ]

    def render(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError


class Counter(_Family):
    """A monotonically increasing count. The name should end in ``_total``."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, label_names)
        self._values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        lines = self.header()
        lines += [f"{_series(self.name, self.label_names, k)} {_format_value(v)}" for k, v in items]
        return lines


class Gauge(_Family):
    """A value that goes up and down (in-flight streams, connected partners)."""

    kind = "gauge"

    def __init__(self, name: str, documentation: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, label_names)
        self._values: dict[LabelValues, float] = {}

    def set(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, *labels: str, amount: float = 1.0) -> None:
        self.inc(*labels, amount=-amount)

    def remove(self, *labels: str) -> None:
        """Drop a series (a partner that was removed), so it stops being exported."""
        key = self._key(labels)
        with self._lock:
            self._values.pop(key, None)

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        lines = self.header()
        lines += [f"{_series(self.name, self.label_names, k)} {_format_value(v)}" for k, v in items]
        return lines


class Histogram(_Family):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        label_names: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, documentation, label_names)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct and non-empty")
        self.bounds = (*bounds, math.inf)
        # Per series: per-bucket (non-cumulative) counts, sum, count.
        self._values: dict[LabelValues, tuple[list[int], float, int]] = {}

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total, count = self._values.get(key, ([0] * len(self.bounds), 0.0, 0))
            for i, bound in enumerate(self.bounds):
                if value <= bound:
                    counts[i] += 1
                    break
            self._values[key] = (counts, total + value, count + 1)

    def count(self, *labels: str) -> int:
        with self._lock:
            entry = self._values.get(self._key(labels))
            return entry[2] if entry else 0

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s, n)) for k, (c, s, n) in self._values.items())
        lines = self.header()
        bucket_labels = (*self.label_names, "le")
        for key, (counts, total, count) in items:
            cumulative = 0
            for bound, n in zip(self.bounds, counts, strict=True):
                cumulative += n
                series = _series(f"{self.name}_bucket", bucket_labels, (*key, _format_value(bound)))
                lines.append(f"{series} {cumulative}")
            lines.append(
                f"{_series(self.name + '_sum', self.label_names, key)} {_format_value(total)}"
            )
            lines.append(f"{_series(self.name + '_count', self.label_names, key)} {count}")
        return lines


class Collected(_Family):
    """A family whose series are all replaced at once by a collector at scrape time.

    For figures read from the database or from another component's in-memory state on each
    scrape (log sizes, lags, expiry times, fault counts kept by a replicator): the collector
    hands over every current series, so a partner that was removed simply stops being
    exported. ``kind`` is "gauge", or "counter" when the source only ever grows (a log's size,
    a replicator's fault counts: those restart at 0 with the process, as counters may).
    """

    def __init__(
        self, name: str, documentation: str, label_names: Sequence[str], kind: str
    ) -> None:
        if kind not in {"gauge", "counter"}:
            raise ValueError(f"{name}: a collected family is a gauge or a counter, not {kind}")
        super().__init__(name, documentation, label_names)
        self.kind = kind
        self._values: dict[LabelValues, float] = {}

    def replace(self, values: Mapping[LabelValues, float]) -> None:
        """Make ``values`` (labels -> value) the family's whole set of series."""
        fresh = {self._key(labels): float(v) for labels, v in values.items()}
        with self._lock:
            self._values = fresh

    def clear(self) -> None:
        with self._lock:
            self._values = {}

    def value(self, *labels: str) -> float | None:
        with self._lock:
            return self._values.get(self._key(labels))

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        lines = self.header()
        lines += [f"{_series(self.name, self.label_names, k)} {_format_value(v)}" for k, v in items]
        return lines


class Registry:
    """The metric families of one gateway process, rendered together for ``/metrics``."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()

    def _add(self, family: _Family) -> None:
        with self._lock:
            if family.name in self._families:
                raise ValueError(f"metric {family.name} is already registered")
            self._families[family.name] = family

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        family = Counter(name, documentation, labels)
        self._add(family)
        return family

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        family = Gauge(name, documentation, labels)
        self._add(family)
        return family

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        family = Histogram(name, documentation, labels, buckets)
        self._add(family)
        return family

    def collected(
        self, name: str, documentation: str, labels: Sequence[str] = (), kind: str = "gauge"
    ) -> Collected:
        family = Collected(name, documentation, labels, kind)
        self._add(family)
        return family

    def families(self) -> Iterable[_Family]:
        with self._lock:
            return list(self._families.values())

    def render(self) -> str:
        """The exposition text: every family's HELP, TYPE and samples, newline-terminated."""
        lines: list[str] = []
        for family in self.families():
            lines.extend(family.render())
        return "\n".join(lines) + "\n"


#: Refreshes families right before a scrape renders them (see :meth:`GatewayMetrics.collect`).
Collector = Callable[[], Awaitable[None]]


class GatewayMetrics:
    """The metric families the serving layer updates, on one registry.

    Other parts of the gateway (replicators, publisher) register their own families on
    :attr:`registry`; names are prefixed ``mragw_``. Figures that live in the database are
    not pushed here by polling: a collector registered with :meth:`add_collector` reads them
    when ``/metrics`` is scraped (:mod:`gateway.server.node_metrics`).
    """

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry if registry is not None else Registry()
        self._collectors: list[Collector] = []
        r = self.registry
        self.rpc_handled = r.counter(
            "mragw_grpc_handled_total",
            "gRPC calls completed, by listener, method and status code.",
            ("listener", "method", "code"),
        )
        self.rpc_seconds = r.histogram(
            "mragw_grpc_handling_seconds",
            "Handling time of unary-response gRPC calls (streams are not latencies), by "
            "listener, method and status code.",
            ("listener", "method", "code"),
        )
        self.rpc_in_flight = r.gauge(
            "mragw_grpc_in_flight", "gRPC calls currently being handled.", ("listener",)
        )
        self.rpc_rejected = r.counter(
            "mragw_grpc_rejected_total",
            "gRPC calls refused before reaching a service: unauthenticated, permission, "
            "suspended, too many streams, rate limited. partner is empty when unauthenticated.",
            ("listener", "reason", "partner"),
        )
        self.partner_streams = r.gauge(
            "mragw_partner_streams",
            "Concurrent calls (HTTP/2 streams) held open per authenticated partner.",
            ("partner",),
        )
        self.pinned_partners = r.gauge(
            "mragw_pinned_partners", "Partners whose CA the partner listener trusts."
        )
        self.trust_refreshes = r.counter(
            "mragw_trust_refresh_total",
            "Reloads of the partner CA snapshot from the database, by outcome.",
            ("outcome",),
        )
        self.http_requests = r.counter(
            "mragw_http_requests_total",
            "Requests to the HTTP listener, by path (or 'other') and status.",
            ("path", "status"),
        )
        self.background_failures = r.counter(
            "mragw_background_task_failures_total",
            "Background tasks that ended with an unexpected error.",
            ("task",),
        )
        self.witness_checkpoints = r.counter(
            "mragw_witness_checkpoints_total",
            "Checkpoints received from witnesses, by outcome: cosigned, pending, ignored, "
            "bad_issuer_signature, forged_cosignature (whole exchange refused), malformed.",
            ("outcome",),
        )
        self.split_views = r.counter(
            "mragw_split_views_total",
            "Split views detected: two checkpoints of one log that cannot both be true.",
            ("log",),
        )

    def add_collector(self, collector: Collector) -> None:
        """Run ``collector`` before every rendering of ``/metrics``."""
        self._collectors.append(collector)

    async def collect(self) -> None:
        """Refresh the scrape-time families; a collector handles (and exports) its own
        failures, so one failing source never takes the process metrics down with it."""
        for collector in self._collectors:
            await collector()


def _code_name(code: object) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return "UNKNOWN"


class RpcMetricsInterceptor(GuardInterceptor):
    """Counts every routed call by method and final status; outermost on each listener.

    Method labels are only registered method names (unknown methods never reach a guard), so
    the series stay bounded.
    """

    def __init__(self, metrics: GatewayMetrics, listener: str) -> None:
        self._metrics = metrics
        self._listener = listener
        # Methods whose response is a stream: their lifetime is not a latency.
        self._streaming: set[str] = set()

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if handler.response_streaming:
            self._streaming.add(method)
        return super().wrap(handler, method)

    @asynccontextmanager
    async def guard(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        started = time.perf_counter()
        self._metrics.rpc_in_flight.inc(self._listener)
        code = "OK"
        try:
            yield
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except BaseException:
            # An abort (status already on the context) or a servicer bug (UNKNOWN).
            code = _code_name(context.code()) if context.code() is not None else "UNKNOWN"
            raise
        else:
            status = context.code()
            if status is not None:
                code = _code_name(status)
        finally:
            self._metrics.rpc_in_flight.dec(self._listener)
            self._metrics.rpc_handled.inc(self._listener, method, code)
            if method not in self._streaming:
                self._metrics.rpc_seconds.observe(
                    time.perf_counter() - started, self._listener, method, code
                )

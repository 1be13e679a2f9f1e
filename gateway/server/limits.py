"""Per-partner limits on the partner listener: concurrent calls and request rate.

Enforced by :class:`PartnerLimitInterceptor`, which must run *inside* the identity interceptor
(it reads the authenticated partner from :func:`gateway.server.identity.current_partner`), so
limits are keyed by proven identity, never by a claimed one, and the number of buckets is
bounded by the number of pinned partners.

- Concurrent calls: every call is an HTTP/2 stream (a Subscribe holds one for its lifetime);
  a partner may hold at most ``limits.max_streams_per_partner`` at once, across all its
  connections. One more is refused with RESOURCE_EXHAUSTED.
- Request rate: a token bucket per partner, refilled at ``limits.requests_per_second`` up to
  ``limits.request_burst``; each call start takes one token, none left -> RESOURCE_EXHAUSTED.
  A call refused for concurrency takes no token (it did not start).
- Message size is not here: ``grpc.max_receive_message_length`` / ``max_send_message_length``
  (see :func:`gateway.server.tls.server_options`) make gRPC refuse oversized messages with
  RESOURCE_EXHAUSTED before they are parsed.

A refusal happens before the servicer runs, so it changes no state; it is counted in
``mragw_grpc_rejected_total`` and logged. Local callers on the admin listener are trusted
operators' tools and are not limited here (message size still applies).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from gateway.config import LimitsSection
from gateway.server.guard import GuardInterceptor
from gateway.server.identity import PARTNER_LISTENER, current_partner
from gateway.server.metrics import GatewayMetrics

log = logging.getLogger(__name__)

TOO_MANY_STREAMS = "too_many_streams"
RATE_LIMITED = "rate_limited"


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked; starts full."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    stamp: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class PartnerLimiter:
    """Counts open calls and rate per partner. Event-loop only: no locking needed."""

    def __init__(self, limits: LimitsSection, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_streams = limits.max_streams_per_partner
        self.rate = limits.requests_per_second
        self.burst = float(limits.request_burst)
        self._clock = clock
        self._open: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}

    def open_calls(self, partner: str) -> int:
        return self._open.get(partner, 0)

    def admit(self, partner: str) -> str | None:
        """Start a call for ``partner``: None when admitted, else the refusal reason."""
        if self._open.get(partner, 0) >= self.max_streams:
            return TOO_MANY_STREAMS
        bucket = self._buckets.get(partner)
        if bucket is None:
            bucket = self._buckets[partner] = TokenBucket(self.rate, self.burst)
            bucket.stamp = self._clock()
        if not bucket.take(self._clock()):
            return RATE_LIMITED
        self._open[partner] = self._open.get(partner, 0) + 1
        return None

    def release(self, partner: str) -> None:
        left = self._open.get(partner, 0) - 1
        if left > 0:
            self._open[partner] = left
        else:
            self._open.pop(partner, None)

    def forget(self, keep: set[str]) -> None:
        """Drop idle buckets of partners no longer pinned (open calls keep theirs)."""
        for code in list(self._buckets):
            if code not in keep and code not in self._open:
                del self._buckets[code]


_MESSAGES = {
    TOO_MANY_STREAMS: "too many concurrent calls from partner {partner} (limit {limit})",
    RATE_LIMITED: "request rate of partner {partner} exceeds {rate:g}/s (burst {burst:g})",
}


class PartnerLimitInterceptor(GuardInterceptor):
    """Applies :class:`PartnerLimiter` to every call on the partner listener."""

    def __init__(self, limiter: PartnerLimiter, metrics: GatewayMetrics) -> None:
        self.limiter = limiter
        self._metrics = metrics

    @asynccontextmanager
    async def guard(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        partner = current_partner().code
        refused = self.limiter.admit(partner)
        if refused is not None:
            self._metrics.rpc_rejected.inc(PARTNER_LISTENER, refused, partner)
            message = _MESSAGES[refused].format(
                partner=partner,
                limit=self.limiter.max_streams,
                rate=self.limiter.rate,
                burst=self.limiter.burst,
            )
            log.warning("refused %s: %s", method, message)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        self._metrics.partner_streams.set(self.limiter.open_calls(partner), partner)
        try:
            yield
        finally:
            self.limiter.release(partner)
            self._metrics.partner_streams.set(self.limiter.open_calls(partner), partner)

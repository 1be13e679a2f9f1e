"""Log context per gRPC call: ``rpc``, ``trace_id`` and the authenticated ``peer``.

:class:`CallLogContextInterceptor` takes the place of a listener's identity interceptor and
runs that interceptor's guard inside its own, so one wrapper per call does both:

1. bind ``rpc`` (the full method) and ``trace_id`` before identity runs, so a refused call's
   log line carries them too (and no peer: a refused caller is not authenticated);
2. run the identity guard (which may abort the call);
3. bind ``peer`` (the actor the TLS certificate proved, e.g. ``partner:JP``) and, on the
   partner listener, ``partner``, for everything the call logs afterwards;
4. at DEBUG, log one line when the call ends (outcome and duration): an access log.

The trace id is the caller's ``x-trace-id`` metadata value only when it matches
:data:`gateway.logs.TRACE_ID_PATTERN` (8-64 characters of ``[A-Za-z0-9._-]``): it is caller
input copied into log lines, so anything longer or stranger is dropped and a fresh random id
is used instead (never an error: a trace id is a convenience, not part of the protocol).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc.aio

from gateway import logs
from gateway.server.guard import GuardInterceptor
from gateway.server.identity import PartnerPeer, current_peer_or_none

log = logging.getLogger(__name__)


class CallLogContextInterceptor(GuardInterceptor):
    """Binds the call's log context around ``identity``'s guard (see the module doc)."""

    def __init__(self, identity: GuardInterceptor) -> None:
        self.identity = identity

    @asynccontextmanager
    async def guard(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        call = logs.bind(rpc=method, trace_id=logs.trace_id_from(context.invocation_metadata()))
        started = time.perf_counter()
        outcome = "ok"
        try:
            async with self.identity.guard(method, context):
                peer = current_peer_or_none()
                if peer is not None:
                    logs.bind(
                        peer=peer.actor,
                        partner=peer.code if isinstance(peer, PartnerPeer) else None,
                    )
                # Undone with ``call`` below: both were set in this call's context.
                yield
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except BaseException as error:
            # An abort raises too; the status it set names the outcome better than its type.
            code = context.code()
            outcome = getattr(code, "name", None) or type(error).__name__
            raise
        finally:
            # The access log: one DEBUG line per call (a disabled level costs one check).
            if log.isEnabledFor(logging.DEBUG):
                elapsed_ms = (time.perf_counter() - started) * 1000
                log.debug("call ended: %s after %.1f ms", outcome, elapsed_ms)
            logs.unbind(call)

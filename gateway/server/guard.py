"""Per-call guards: run code around every gRPC call of a listener, with the call's context.

A grpc.aio server interceptor sees only the method name and metadata, not the TLS peer; to
authenticate, limit or measure a call we must run inside the call. :class:`GuardInterceptor`
therefore replaces each method handler's behaviour with a wrapper that enters an async context
manager (the *guard*) with the call's :class:`grpc.aio.ServicerContext`, then runs the real
behaviour inside it. A guard rejects a call by ``await context.abort(...)`` before yielding.

Invariants:
- The wrapper has the same shape as the behaviour it wraps (coroutine for unary responses and
  for the reader/writer streaming API, async generator for generator streaming), because
  grpc.aio picks how to drive a handler by inspecting it.
- The guard is exited exactly when the call ends: returned, raised, aborted or cancelled by the
  client (cancellation is thrown into the wrapper), so slots it holds are released.
- Each call runs in its own task, so a :class:`contextvars.ContextVar` set by a guard is seen by
  the servicer and by inner guards of that call only.
- Servicers should be ``async``; a synchronous behaviour (such as the generated base class's
  "not implemented" default) is called inline, and ``NotImplementedError`` becomes UNIMPLEMENTED.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

if TYPE_CHECKING:
    # grpc's classes are generic only in the stubs, so these aliases exist for typing only.
    Guard = Callable[[str, grpc.aio.ServicerContext[Any, Any]], AbstractAsyncContextManager[None]]
    Continuation = Callable[
        [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
    ]


def service_of(method: str) -> str:
    """``/pkg.Service/Method`` -> ``pkg.Service``."""
    return method.lstrip("/").split("/", 1)[0]


async def _not_implemented(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not implemented")


def _wrap_unary_response(behavior: Any, method: str, guard: Guard) -> Any:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async with guard(method, context):
            result: Any = None
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
            except NotImplementedError:
                await _not_implemented(context)
            return result

    return call


def _wrap_stream_response(behavior: Any, method: str, guard: Guard) -> Any:
    if inspect.iscoroutinefunction(behavior):
        # Reader/writer API: the behaviour writes through context.write and returns None.
        async def write_through(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            async with guard(method, context):
                await behavior(request, context)

        return write_through

    async def stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async with guard(method, context):
            try:
                responses = behavior(request, context)
            except NotImplementedError:
                await _not_implemented(context)
                return
            if hasattr(responses, "__aiter__"):
                async for response in responses:
                    yield response
            else:
                for response in responses:
                    yield response

    return stream


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, guard: Guard
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with each call run inside ``guard(method, context)``."""
    h: Any = handler
    deserializer, serializer = h.request_deserializer, h.response_serializer
    if h.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary_response(h.unary_unary, method, guard), deserializer, serializer
        )
    if h.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_unary_response(h.stream_unary, method, guard), deserializer, serializer
        )
    if h.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream_response(h.unary_stream, method, guard), deserializer, serializer
        )
    if h.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream_response(h.stream_stream, method, guard), deserializer, serializer
        )
    raise TypeError(f"{method}: a method handler with no behaviour")  # pragma: no cover


class GuardInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """A server interceptor that runs :meth:`guard` around every call it can route."""

    def guard(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AbstractAsyncContextManager[None]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def intercept_service(  # type: ignore[override]  # None = unknown method, as gRPC does
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        # gRPC asks on every call; the wrapped handler depends only on the method (every guard
        # decides inside the call), so it is built once per method. Only registered methods
        # get here with a handler, so the memo stays as small as the service.
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                # Unknown method: gRPC answers UNIMPLEMENTED; nothing to guard.
                return None
            wrapped = self._wrapped[method] = self.wrap(handler, method)
        return wrapped

    @functools.cached_property
    def _wrapped(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        return {}

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """The handler with :meth:`guard` around its behaviour."""
        return wrap_handler(handler, method, self.guard)


class _Malformed:
    """What a request deserialiser returns instead of raising on bytes that do not parse."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


MalformedHandler = Callable[[str, "grpc.aio.ServicerContext[Any, Any]", Exception], Awaitable[None]]


def reject_malformed(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, on_malformed: MalformedHandler
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with undecodable request messages refused through ``on_malformed``.

    gRPC Python answers a deserialiser exception with INTERNAL, before our code can see it; a
    peer's bad bytes are its fault, not ours, so they must be INVALID_ARGUMENT, logged and
    counted. The deserialiser therefore returns a :class:`_Malformed` marker, and the wrapped
    behaviour hands it to ``on_malformed`` (which aborts) before the servicer sees it. Applied
    innermost, so identity and limits have run first. A servicer reading a request stream with
    ``context.read()`` instead of iterating it must check for the marker itself.
    """
    h: Any = handler
    decode = h.request_deserializer
    if decode is None:
        return handler

    def tolerant(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as error:
            return _Malformed(error)

    async def check(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Malformed):
            await on_malformed(method, context, request.error)
        return request

    def checked_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async def iterate() -> AsyncIterator[Any]:
            async for request in requests:
                yield await check(request, context)

        return iterate()

    def unary_guarded(behavior: Any) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await _finish(behavior(await check(request, context), context))

        return call

    def streaming_guarded(behavior: Any, streaming_requests: bool) -> Any:
        if inspect.iscoroutinefunction(behavior):

            async def write_through(request: Any, context: Any) -> None:
                arg = (
                    checked_stream(request, context)
                    if streaming_requests
                    else await check(request, context)
                )
                await behavior(arg, context)

            return write_through

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            arg = (
                checked_stream(request, context)
                if streaming_requests
                else await check(request, context)
            )
            responses = behavior(arg, context)
            if hasattr(responses, "__aiter__"):
                async for response in responses:
                    yield response
            else:
                for response in responses:
                    yield response

        return stream

    serializer = h.response_serializer
    if h.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary_guarded(h.unary_unary), tolerant, serializer
        )
    if h.stream_unary is not None:
        behavior = h.stream_unary

        async def client_stream(requests: Any, context: Any) -> Any:
            return await _finish(behavior(checked_stream(requests, context), context))

        return grpc.stream_unary_rpc_method_handler(client_stream, tolerant, serializer)
    if h.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            streaming_guarded(h.unary_stream, False), tolerant, serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        streaming_guarded(h.stream_stream, True), tolerant, serializer
    )


async def _finish(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


class MalformedRequestInterceptor(GuardInterceptor):
    """Applies :func:`reject_malformed` to every routed method; put it last (innermost)."""

    def __init__(self, on_malformed: MalformedHandler) -> None:
        self._on_malformed = on_malformed

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return reject_malformed(handler, method, self._on_malformed)

"""One table from our errors to gRPC status codes, shared by every servicer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from crypto.errors import CryptoError, VerificationError
from gateway.errors import CheckFailedError, GatewayError, InputError, UnreachableError
from gateway.exchange import AccessEndedError, OutOfRangeError
from gateway.query import UnknownSequenceError
from registry.errors import RegistryError

# First match wins: subclasses before their roots.
STATUS_FOR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (VerificationError, grpc.StatusCode.FAILED_PRECONDITION),
    (CheckFailedError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnreachableError, grpc.StatusCode.UNAVAILABLE),
    (OutOfRangeError, grpc.StatusCode.OUT_OF_RANGE),
    (UnknownSequenceError, grpc.StatusCode.OUT_OF_RANGE),
    (AccessEndedError, grpc.StatusCode.PERMISSION_DENIED),
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (CryptoError, grpc.StatusCode.INVALID_ARGUMENT),
    (RegistryError, grpc.StatusCode.INVALID_ARGUMENT),
    (GatewayError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_for(error: BaseException) -> grpc.StatusCode | None:
    for kind, code in STATUS_FOR:
        if isinstance(error, kind):
            return code
    return None


async def abort_for(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> NoReturn:
    code = status_for(error)
    if code is None:
        raise error
    await context.abort(code, str(error))
    raise AssertionError("unreachable")  # pragma: no cover - abort always raises


T = TypeVar("T")


async def guarded(
    context: grpc.aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[T]]
) -> T:
    """Run a handler call; our errors become their gRPC status, anything else propagates."""
    try:
        return await call()
    except (GatewayError, CryptoError, RegistryError) as error:
        await abort_for(context, error)


async def guarded_stream(
    context: grpc.aio.ServicerContext[Any, Any], stream: AsyncIterator[T]
) -> AsyncIterator[T]:
    try:
        async for item in stream:
            yield item
    except (GatewayError, CryptoError, RegistryError) as error:
        await abort_for(context, error)

"""Requests whose bytes are not the method's protobuf message end with INVALID_ARGUMENT.

grpcio calls a method's request deserializer before any of our code runs, and a
``DecodeError`` there leaves the call with ``UNKNOWN: Unexpected <class DecodeError>`` and a
logged traceback, as if the gateway had a bug. This interceptor makes the deserializer return
a marker instead of raising, and the method refuses the marker with INVALID_ARGUMENT naming
the message type, before the servicer sees anything. (gRPC's own status table says INTERNAL
for an unparsable request; the mesh's contract answers bad input with INVALID_ARGUMENT, which
also tells a client that retrying the same bytes is pointless.)
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.message import DecodeError

__all__ = ["MalformedRequestInterceptor"]

_Deserializer = Callable[[bytes], Any]
_Context = grpc.aio.ServicerContext[Any, Any]
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class _Malformed:
    """What the lenient deserializer returns for bytes that are not the expected message."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _lenient(deserializer: _Deserializer, method: str) -> _Deserializer:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            # protobuf's message names the expected type ("Error parsing message with type ...").
            return _Malformed(
                f"{method}: a request of {len(data)} bytes does not parse: {exc}; "
                "send a message serialized from the meshgate.v1 protos"
            )

    return deserialize


async def _refuse(request: object, context: _Context) -> None:
    if isinstance(request, _Malformed):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


class _MalformedRequestError(Exception):
    """Raised into a streaming servicer where it reads a request that did not parse; str() is the message."""


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    # Raises rather than aborts: a servicer may read its requests in another task (PublishStream
    # does) and an abort from there, racing the handler's own writes, wedges the call.
    async for request in requests:
        if isinstance(request, _Malformed):
            raise _MalformedRequestError(request.message)
        yield request


def _wrap(handler: Any, method: str) -> Any:
    """``handler`` with the lenient deserializer and a behaviour that refuses what did not parse.

    aio behaviours are async generators or coroutines (which write with ``context.write``);
    grpcio tells them apart by inspection, so each wrapper keeps the kind of what it wraps.
    """
    deserializer = handler.request_deserializer
    if deserializer is None:
        return handler  # raw bytes in: nothing can fail to parse
    options = {
        "request_deserializer": _lenient(deserializer, method),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_unary_coro(handler.unary_unary), **options)
    if handler.unary_stream is not None:
        us = handler.unary_stream
        return grpc.unary_stream_rpc_method_handler(
            _unary_gen(us) if inspect.isasyncgenfunction(us) else _unary_coro(us), **options
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_stream_coro(handler.stream_unary), **options)
    ss = handler.stream_stream
    if ss is None:
        return handler
    return grpc.stream_stream_rpc_method_handler(
        _stream_gen(ss) if inspect.isasyncgenfunction(ss) else _stream_coro(ss), **options
    )


# One wrapper per kind of behaviour: a request in or a stream of them, a coroutine or an async generator.


def _unary_coro(behaviour: Any) -> Any:
    async def call(request: Any, context: _Context) -> Any:
        await _refuse(request, context)
        return await behaviour(request, context)

    return call


def _unary_gen(behaviour: Any) -> Any:
    async def call(request: Any, context: _Context) -> AsyncIterator[Any]:
        await _refuse(request, context)
        async for response in behaviour(request, context):
            yield response

    return call


def _stream_coro(behaviour: Any) -> Any:
    async def call(requests: AsyncIterator[Any], context: _Context) -> Any:
        try:
            return await behaviour(_checked(requests), context)
        except _MalformedRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    return call


def _stream_gen(behaviour: Any) -> Any:
    async def call(requests: AsyncIterator[Any], context: _Context) -> AsyncIterator[Any]:
        try:
            async for response in behaviour(_checked(requests), context):
                yield response
        except _MalformedRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    return call


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Turns undecodable request bytes into INVALID_ARGUMENT for every method of the server."""

    def __init__(self) -> None:
        # Method -> (its handler, the wrapped one): wrapped once, not on every call.
        self._wrapped: dict[str, tuple[object, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # an unknown method: gRPC answers UNIMPLEMENTED
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cast("grpc.RpcMethodHandler[_Req, _Resp]", cached[1])
        wrapped = _wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return cast("grpc.RpcMethodHandler[_Req, _Resp]", wrapped)

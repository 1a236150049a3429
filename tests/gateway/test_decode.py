"""Request bytes that are not the method's message end the call INVALID_ARGUMENT, naming method and size."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from meshgate.gateway import Gateway

# A length-delimited field 1 that claims 5 bytes and has none: no protobuf message parses it.
_TRUNCATED = b"\x0a\x05"


def _identity(data: bytes) -> bytes:
    return data


async def test_a_unary_request_that_does_not_parse(gateway: Gateway, channel: grpc.aio.Channel) -> None:
    publish = channel.unary_unary(
        "/meshgate.v1.Gateway/Publish", request_serializer=_identity, response_deserializer=_identity
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await publish(_TRUNCATED, timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert details.startswith("/meshgate.v1.Gateway/Publish: a request of 2 bytes does not parse: "), details
    assert details.endswith("send a message serialized from the meshgate.v1 protos"), details


async def test_a_stream_request_that_does_not_parse_ends_the_stream(
    gateway: Gateway, channel: grpc.aio.Channel
) -> None:
    stream = channel.stream_stream(
        "/meshgate.v1.Gateway/PublishStream", request_serializer=_identity, response_deserializer=_identity
    )
    call = stream(iter([_TRUNCATED]), timeout=10)
    assert [raw async for raw in _read(call)] == []
    assert await call.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = await call.details()
    assert details.startswith("/meshgate.v1.Gateway/PublishStream: a request of 2 bytes does not parse: "), details


async def _read(call: grpc.aio.StreamStreamCall[bytes, bytes]) -> AsyncIterator[bytes]:
    try:
        async for raw in call:
            yield raw
    except grpc.aio.AioRpcError:
        return

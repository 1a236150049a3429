"""Small helpers the gateway tests share."""

from __future__ import annotations

import asyncio
from typing import Any

from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc


def ev(topic: str = "orders/created", data: bytes = b"{}", **fields: Any) -> event_pb2.Event:
    fields.setdefault("source", "/tests")
    fields.setdefault("type", "test.event")
    return event_pb2.Event(topic=topic, data=data, **fields)


async def read_all(
    stub: gateway_pb2_grpc.GatewayStub,
    pattern: str = ">",
    *,
    expect: int | None = None,
    idle: float = 0.5,
    max_batch: int = 0,
) -> list[event_pb2.Event]:
    """Every stored event of a pattern, from the earliest; stops when `expect` arrived or the
    log stays quiet for `idle` seconds (the stream itself never ends)."""
    call = stub.Subscribe(
        gateway_pb2.SubscribeRequest(pattern=pattern, position=gateway_pb2.START_POSITION_EARLIEST, max_batch=max_batch)
    )
    out: list[event_pb2.Event] = []
    it = call.__aiter__()
    try:
        while expect is None or len(out) < expect:
            try:
                resp = await asyncio.wait_for(it.__anext__(), idle)
            except (TimeoutError, StopAsyncIteration):
                break
            out.extend(resp.events)
    finally:
        call.cancel()
    return out

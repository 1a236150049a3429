"""Every bad input gets the right status and a message a person can act on, and stores nothing."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests.gateway._helpers import ev, read_all

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _bad_time() -> Timestamp:
    ts = Timestamp(seconds=1)
    ts.nanos = -5
    return ts


# (case id, the event's fields, words the message must contain). Limits: see conftest.mesh_for.
CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("missing topic", {"topic": ""}, ["topic is required"]),
    ("empty level", {"topic": "orders//created"}, ["level 2 is empty"]),
    ("bad character", {"topic": "orders/cré"}, ["orders/cré", "A-Z a-z 0-9 - _"]),
    ("wildcard in topic", {"topic": "orders/*"}, ["orders/*"]),
    ("too many levels", {"topic": "/".join(["a"] * 17)}, ["17 levels", "16"]),
    ("level too long", {"topic": "orders/" + "x" * 65}, ["65", "64"]),
    ("missing source", {"source": ""}, ["source is required"]),
    ("missing type", {"type": ""}, ["type is required"]),
    ("bad specversion", {"specversion": "0.3"}, ["specversion", "1.0"]),
    ("data too large", {"data": b"x" * 5000}, ["5000 bytes", "max_data_bytes of 4096 bytes"]),
    ("bad extension name", {"extensions": {"Bad-Name": "v"}}, ["extension name", "a-z 0-9"]),
    ("reserved extension", {"extensions": {"source": "v"}}, ["CloudEvents attribute"]),
    ("control chars in id", {"id": "a\nb"}, ["id", "control characters"]),
    ("origin set by client", {"origin": "there"}, ["set by the gateway"]),
    ("attributes too large", {"extensions": {"big": "v" * 9000}}, ["max_attributes_bytes of 8192 bytes"]),
    ("id too long", {"id": "i" * 300}, ["id has 300 characters", "256"]),
    ("bad time", {"time": _bad_time()}, ["nanos"]),
    ("bad content type", {"datacontenttype": "json please"}, ["not a media type", "application/json"]),
]


@pytest.mark.parametrize(("fields", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_event_refused_with_message_and_nothing_stored(
    stub: gateway_pb2_grpc.GatewayStub, fields: dict[str, Any], words: list[str]
) -> None:
    topic = fields.pop("topic", "orders/created")
    bad = ev(topic, **fields)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Publish(gateway_pb2.PublishRequest(events=[bad]))
    assert info.value.code() == INVALID
    for word in words:
        assert word in info.value.details(), info.value.details()
    assert await read_all(stub, ">", idle=0.3) == []


async def test_one_bad_event_fails_the_whole_unary_batch(stub: gateway_pb2_grpc.GatewayStub) -> None:
    batch = [ev(id="a"), ev("bad topic", id="b"), ev(id="c", source="")]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Publish(gateway_pb2.PublishRequest(events=batch))
    assert info.value.code() == INVALID
    details = info.value.details()
    assert "2 of 3 events refused, nothing stored" in details
    assert "events[1]" in details and "events[2]" in details
    assert await read_all(stub, ">", idle=0.3) == []


async def test_empty_and_oversized_batches(stub: gateway_pb2_grpc.GatewayStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Publish(gateway_pb2.PublishRequest())
    assert info.value.code() == INVALID and "no events" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id=str(i)) for i in range(101)]))
    assert info.value.code() == INVALID
    assert "batch of 101 events exceeds max_batch_events of 100" in info.value.details()
    assert await read_all(stub, ">", idle=0.3) == []


async def test_unknown_fields_refused(channel: grpc.aio.Channel) -> None:
    # A newer client's field (number 101) this gateway cannot store: refused, not dropped.
    raw = ev().SerializeToString() + b"\xa8\x06\x01"
    request = gateway_pb2.PublishRequest.FromString(b"\x0a" + bytes([len(raw)]) + raw)
    stub = gateway_pb2_grpc.GatewayStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Publish(request)
    assert info.value.code() == INVALID
    assert "fields [101]" in info.value.details()
    assert await read_all(stub, ">", idle=0.3) == []


async def test_route_and_sequence_cannot_be_forged(stub: gateway_pb2_grpc.GatewayStub) -> None:
    for forged in ({"route": ["there"]}, {"sequence": 7}):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Publish(
                gateway_pb2.PublishRequest(events=[event_pb2.Event(topic="orders/x", source="s", type="t", **forged)])
            )
        assert info.value.code() == INVALID

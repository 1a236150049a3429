"""Every bad input gets the right status and a message a person can act on, and stores nothing."""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.cli._client import channel as cli_channel
from meshgate.config import ClientToken, Limits
from meshgate.gateway._admission import Admission
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests._replication import SECURITY
from tests.gateway._helpers import ev, read_all
from tests.gateway.conftest import mesh_for

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
    ("dataschema not a URI", {"dataschema": "order schema"}, ["dataschema 'order schema'", "absolute URI"]),
    ("dataschema relative", {"dataschema": "/schemas/order.json"}, ["absolute URI", "scheme"]),
    ("dataschema fragment", {"dataschema": "https://example.com/s.json#v1"}, ["absolute URI", "no fragment"]),
    ("data and text_data", {"text_data": "x"}, ["data and text_data are both set"]),
    ("text_data too large", {"data": b"", "text_data": "é" * 2500}, ["5000 bytes", "max_data_bytes of 4096"]),
]


@pytest.mark.parametrize(("fields", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_event_refused_with_message_and_nothing_stored(
    stub: gateway_pb2_grpc.GatewayAsyncStub, fields: dict[str, Any], words: list[str]
) -> None:
    fields = dict(fields)  # the case's own stays as it is for the other tests of CASES
    topic = fields.pop("topic", "orders/created")
    bad = ev(topic, **fields)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Publish(gateway_pb2.PublishRequest(events=[bad]))
    assert info.value.code() == INVALID
    for word in words:
        assert word in (info.value.details() or ""), info.value.details()
    assert await read_all(stub, ">", idle=0.3) == []


async def test_one_bad_event_fails_the_whole_unary_batch(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    batch = [ev(id="a"), ev("bad topic", id="b"), ev(id="c", source="")]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Publish(gateway_pb2.PublishRequest(events=batch))
    assert info.value.code() == INVALID
    details = info.value.details() or ""
    assert "2 of 3 events refused, nothing stored" in details
    assert "events[1]" in details and "events[2]" in details
    assert await read_all(stub, ">", idle=0.3) == []


async def test_empty_and_oversized_batches(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Publish(gateway_pb2.PublishRequest())
    assert info.value.code() == INVALID and "no events" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id=str(i)) for i in range(101)]))
    assert info.value.code() == INVALID
    assert "batch of 101 events exceeds max_batch_events of 100" in (info.value.details() or "")
    assert await read_all(stub, ">", idle=0.3) == []


async def test_unknown_fields_refused(channel: grpc.aio.Channel) -> None:
    # A newer client's field (number 101) this gateway cannot store: refused, not dropped.
    raw = ev().SerializeToString() + b"\xa8\x06\x01"
    request = gateway_pb2.PublishRequest.FromString(b"\x0a" + bytes([len(raw)]) + raw)
    stub = gateway_pb2_grpc.GatewayStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Publish(request)
    assert info.value.code() == INVALID
    assert "fields [101]" in (info.value.details() or "")
    assert await read_all(stub, ">", idle=0.3) == []


async def test_json_client_sends_text_and_dataschema(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    # What grpcurl sends: protobuf's JSON mapping, where bytes are base64 and text goes in text_data.
    request = json_format.Parse(
        '{"events": [{"topic": "orders/created", "source": "/t", "type": "t", "text_data": "test", '
        '"dataschema": "urn:example:order:v1", "datacontenttype": "text/plain"},'
        '{"topic": "orders/created", "source": "/t", "type": "t", "data": "dGVzdA=="}]}',
        gateway_pb2.PublishRequest(),
    )
    resp = await stub.Publish(request)
    assert [r.outcome for r in resp.results] == [event_pb2.OUTCOME_ACCEPTED] * 2
    text, binary = await read_all(stub, ">", expect=2)
    assert text.data == b"test" and text.text_data == "" and text.dataschema == "urn:example:order:v1"
    assert binary.data == b"test" and binary.dataschema == ""


async def test_route_and_sequence_cannot_be_forged(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    for forged in ({"route": ["there"]}, {"sequence": 7}):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Publish(
                gateway_pb2.PublishRequest(events=[event_pb2.Event(topic="orders/x", source="s", type="t", **forged)])
            )
        assert info.value.code() == INVALID


# --- output-only fields and reserved topics ------------------------------------------------

# event.proto numbers the client's fields 1 to 15 and the output-only ones from 16 up: every
# field there, today's and any added later, must be refused when a client sets it.
_OUTPUT_ONLY = [f for f in event_pb2.Event.DESCRIPTOR.fields if f.number >= 16]
_FORGED: dict[str, Any] = {"origin": "there", "route": ["there"], "origin_stream": "orders.x/0", "stream": "s"}


def _forged(name: str) -> dict[str, Any]:
    return {name: _FORGED.get(name, 7)}


def test_output_only_fields_are_known() -> None:
    from meshgate.gateway._admission import OUTPUT_ONLY_FIELDS

    assert {f.name for f in _OUTPUT_ONLY} == set(OUTPUT_ONLY_FIELDS)
    assert "origin_sequence" in OUTPUT_ONLY_FIELDS


@pytest.mark.parametrize("name", [f.name for f in _OUTPUT_ONLY])
async def test_every_output_only_field_is_refused_on_publish(
    stub: gateway_pb2_grpc.GatewayAsyncStub, name: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id=f"forged-{name}", **_forged(name))]))
    assert info.value.code() == INVALID
    assert f"{name} is set by the gateway" in (info.value.details() or ""), info.value.details()
    assert await read_all(stub, ">", idle=0.3) == []


async def test_output_only_fields_are_refused_per_event_on_publish_stream(
    stub: gateway_pb2_grpc.GatewayAsyncStub,
) -> None:
    names = [f.name for f in _OUTPUT_ONLY]
    batch = [ev(id="good-1"), *(ev(id=f"forged-{n}", **_forged(n)) for n in names), ev(id="good-2")]
    call = stub.PublishStream()
    await call.write(gateway_pb2.PublishRequest(batch_id=1, events=batch))
    await call.done_writing()
    [resp] = [r async for r in call]
    by_id = {r.id: r for r in resp.results}
    assert by_id["good-1"].outcome == by_id["good-2"].outcome == event_pb2.OUTCOME_ACCEPTED
    for name in names:
        result = by_id[f"forged-{name}"]
        assert result.outcome == event_pb2.OUTCOME_REJECTED, (name, result)
        assert result.code == INVALID.value[0]
        assert f"{name} is set by the gateway" in result.message, result.message
    stored = await read_all(stub, ">", expect=2, idle=0.5)
    assert sorted(e.id for e in stored) == ["good-1", "good-2"]
    assert all(e.origin_sequence == 0 for e in stored)


async def test_two_output_only_fields_are_both_named(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Publish(gateway_pb2.PublishRequest(events=[ev(origin_sequence=3, origin_stream="x")]))
    assert info.value.code() == INVALID
    assert "origin_sequence, origin_stream are set by the gateway" in (info.value.details() or ""), info.value.details()


DENIED = grpc.StatusCode.PERMISSION_DENIED


async def test_reserved_topics_are_refused_to_anonymous_clients(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    # Without tokens every client may publish anywhere, except into the gateway's own topics.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Publish(gateway_pb2.PublishRequest(events=[ev("meshgate/dlq/there", id="fake-dlq")]))
    assert info.value.code() == DENIED
    assert "reserved for the gateway" in (info.value.details() or ""), info.value.details()
    call = stub.PublishStream()
    await call.write(gateway_pb2.PublishRequest(batch_id=1, events=[ev("meshgate/x", id="s-1"), ev(id="s-2")]))
    await call.done_writing()
    [resp] = [r async for r in call]
    assert [r.outcome for r in resp.results] == [event_pb2.OUTCOME_REJECTED, event_pb2.OUTCOME_ACCEPTED]
    assert resp.results[0].code == DENIED.value[0] and "'meshgate/'" in resp.results[0].message
    assert [e.id for e in await read_all(stub, ">", expect=1, idle=0.5)] == ["s-2"]


async def test_reserved_topics_only_for_a_token_that_names_them(make_gateway: Any, nats_server: EmbeddedNats) -> None:
    everything = "everything-0123456789abcdef"
    dlq_writer = "dlq-writer-0123456789abcdef"
    config = dataclasses.replace(
        mesh_for(nats_server),
        security=dataclasses.replace(
            SECURITY,
            tokens=(
                ClientToken(name="everything", token=everything, publish=(">",), subscribe=(">",)),
                ClientToken(name="dlq-writer", token=dlq_writer, publish=("meshgate/dlq/>",)),
            ),
        ),
    )
    gw = await make_gateway(config=config)

    async def publish(token: str, topic: str, id: str) -> gateway_pb2.PublishResponse:
        async with cli_channel(gw.address, token=token) as ch:
            response: gateway_pb2.PublishResponse = await gateway_pb2_grpc.GatewayStub(ch).Publish(
                gateway_pb2.PublishRequest(events=[ev(topic, id=id)])
            )
            return response

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await publish(everything, "meshgate/dlq/there", "by-wildcard")
    assert info.value.code() == DENIED
    assert "client 'everything'" in (info.value.details() or "") and "'>' does not count" in (
        info.value.details() or ""
    )
    ok = await publish(dlq_writer, "meshgate/dlq/there", "by-name")
    assert [r.outcome for r in ok.results] == [event_pb2.OUTCOME_ACCEPTED]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await publish(dlq_writer, "meshgate/other", "outside-its-pattern")
    assert info.value.code() == DENIED
    async with cli_channel(gw.address, token=everything) as ch:
        stored = await read_all(gateway_pb2_grpc.GatewayStub(ch), ">", expect=1, idle=0.5)
    assert [e.id for e in stored] == ["by-name"]


def _admission() -> Admission:
    limits = Limits(max_data_bytes=4096, max_batch_events=100)
    return Admission(region="here", limits=limits, route=lambda topic, origin: (origin, "there"))


@pytest.mark.parametrize(("fields", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_admit_refuses_as_check_does_and_leaves_the_event_as_it_came(fields: dict[str, Any], words: list[str]) -> None:
    # admit is check and stamp in one pass over the fields: it must refuse what check refuses,
    # with the same message, and stamp nothing on a refused event.
    admission, event = _admission(), ev(**fields)
    before = event.SerializeToString()
    refusal = admission.check(event)
    assert refusal is not None
    admitted = admission.admit(event, Timestamp(seconds=1_700_000_000))
    assert admitted == refusal
    assert event.SerializeToString() == before


def test_admit_stamps_what_the_client_left_out() -> None:
    admission, event = _admission(), ev(text_data="hello", data=b"")
    now = Timestamp(seconds=1_700_000_000, nanos=5)
    assert admission.check(event) is None
    assert admission.admit(event, now) == ("here", "there")
    assert event.id and event.specversion == "1.0" and event.time == now
    assert (event.origin, list(event.route)) == ("here", ["here", "there"])
    assert (event.data, event.text_data) == (b"hello", "")
    # A time the client set is kept.
    timed = ev(time=Timestamp(seconds=5))
    assert admission.admit(timed, now) == ("here", "there")
    assert timed.time == Timestamp(seconds=5)


@pytest.mark.parametrize("text", ["a\u200bb", "\u00e9t\u00e9", "a\u2028b"])
def test_printable_text_that_str_isprintable_refuses_is_admitted(text: str) -> None:
    # The rule is "no control characters" (\x00-\x1f, \x7f); str.isprintable is only the cheap
    # first look and also says no to format and separator characters, which the rule allows.
    admission = _admission()
    for field in ("id", "source", "type", "key"):
        fields: dict[str, Any] = {field: text}
        event = ev(**fields)
        assert admission.check(event) is None, field
        assert isinstance(admission.admit(event, Timestamp(seconds=1)), tuple), field


def test_admission_says_when_an_event_carried_extensions() -> None:
    # Tracing decides a batch as a whole when no event carries extensions (so no traceparent
    # of its own); the flag must be set by any event that does, and by none that does not.
    admission, now = _admission(), Timestamp(seconds=1)
    for event in (ev(id="plain"), ev(id="keyed", key="k")):
        assert isinstance(admission.admit(event, now), tuple)
    assert admission.extended is False
    assert isinstance(
        admission.admit(ev(id="own", extensions={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}), now), tuple
    )
    assert isinstance(admission.admit(ev(id="after"), now), tuple)
    assert admission.extended is True  # until the caller clears it for the next batch

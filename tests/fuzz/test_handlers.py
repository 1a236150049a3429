"""The gRPC handlers fed raw bytes over a raw channel: every call ends with a status we chose.

A gateway runs on a real nats-server (in this process, on its own thread). Each example sends
bytes (random, mutated valid messages, fields of the wrong wire type, lying lengths, groups
nested hundreds deep, or well-formed messages with wild values) to one method through a
channel with no serializer, then checks:

* the call ends with OK or a status the contract names (INVALID_ARGUMENT, PERMISSION_DENIED,
  RESOURCE_EXHAUSTED...), never UNKNOWN or INTERNAL (an exception in our code or a request
  grpcio could not hand to us), and nothing was logged at ERROR by grpc or meshgate;
* an OK answer has one result per event, each accepted with a position or refused with a code
  and a reason;
* the health service still says SERVING;
* a control event published between fuzz calls is acked; at the end of each test every event
  acked so far (control or fuzzed) is still in the JetStream stream at its sequence, read back
  with nats-py rather than through the gateway.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import example, given
from hypothesis import strategies as st

from meshgate.v1 import admin_pb2, event_pb2, gateway_pb2, replication_pb2

from ._budget import fuzz_settings
from ._gateway import LIMITS, PEER, REGION, ThreadGateway
from ._wire import group_nest, len_nest, request_bytes, tag, varint
from .test_topics import ref_pattern

# What a call may end with. UNKNOWN (an exception escaped a servicer) and INTERNAL never.
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# A live subscription has nothing to end it but us.
SUBSCRIBE_ALLOWED = ALLOWED | {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
CALL_TIMEOUT = 20.0
# protobuf Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_TIME, MAX_TIME = -62_135_596_800, 253_402_300_799
# How long a Subscribe may run before it counts as a live (accepted) subscription.
SUBSCRIBE_WAIT = 0.1

# --- the gateway, the channel, the ledger of acked events --------------------------------------


class Ledger:
    """Every event acked so far: its stream sequence and id."""

    def __init__(self) -> None:
        self.acked: dict[int, str] = {}
        self._control = itertools.count()

    def record(self, results: list[event_pb2.EventResult]) -> None:
        for r in results:
            if r.outcome in (event_pb2.OUTCOME_ACCEPTED, event_pb2.OUTCOME_DUPLICATE) and r.sequence:
                known = self.acked.setdefault(r.sequence, r.id)
                assert known == r.id, f"sequence {r.sequence} acked as {known!r} and as {r.id!r}"

    def control(self, channel: grpc.Channel) -> None:
        """A well-formed event between fuzz calls: it must still be acked."""
        ev = event_pb2.Event(
            id=f"control-{uuid.uuid4()}-{next(self._control)}", topic="orders/control", source="/fuzz", type="control"
        )
        publish: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/meshgate.v1.Gateway/Publish")
        raw = publish(gateway_pb2.PublishRequest(events=[ev]).SerializeToString(), timeout=CALL_TIMEOUT)
        resp = gateway_pb2.PublishResponse.FromString(raw)
        assert [r.outcome for r in resp.results] == [event_pb2.OUTCOME_ACCEPTED], resp
        self.record(list(resp.results))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadGateway]:
    gw = ThreadGateway(Path(tmp_path_factory.mktemp("fuzz-gateway")))
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def channel(gateway: ThreadGateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


def settle(gateway: ThreadGateway, channel: grpc.Channel, ledger: Ledger) -> None:
    """After a test's fuzz calls: still serving, nothing logged, every acked event still stored."""
    assert set(gateway.health(channel).values()) == {"SERVING"}
    assert not gateway.errors.records, [r.getMessage() for r in gateway.errors.records[:5]]
    ledger.control(channel)
    stored = gateway.stored_ids(sorted(ledger.acked))
    lost = {seq: event_id for seq, event_id in ledger.acked.items() if stored[seq] != event_id}
    assert not lost, f"{len(lost)} of {len(ledger.acked)} acked events not found at their sequence: {lost}"


def after_call(gateway: ThreadGateway, channel: grpc.Channel, ledger: Ledger, method: str) -> None:
    errors = [r.getMessage()[:300] for r in gateway.errors.records[:3]]
    gateway.errors.records.clear()  # each example answers for its own call only
    assert not errors, f"{method} logged: {errors}"
    ledger.control(channel)


def status_of(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    assert isinstance(exc, grpc.Call)
    return exc.code(), exc.details() or ""


def check_status(method: str, code: grpc.StatusCode, details: str, allowed: set[grpc.StatusCode]) -> None:
    assert code in allowed, f"{method} ended with {code.name}: {details[:500]}"
    if code is not grpc.StatusCode.OK and code in ALLOWED:
        assert details.strip(), f"{method}: {code.name} without a message a person can act on"


def parse(cls: type[Message], data: bytes) -> Message | None:
    try:
        return cls.FromString(data)
    except DecodeError:
        return None


def check_results(method: str, results: list[event_pb2.EventResult], sent: int | None) -> None:
    if sent is not None:
        assert len(results) == sent, f"{method}: {len(results)} results for {sent} events"
    for r in results:
        if r.outcome == event_pb2.OUTCOME_REJECTED:
            assert r.code != 0 and r.message.strip(), f"{method}: a refusal without code or reason: {r}"
        else:
            assert r.outcome in (event_pb2.OUTCOME_ACCEPTED, event_pb2.OUTCOME_DUPLICATE), r


# --- valid-ish messages with wild values --------------------------------------------------------

# Each field's wild values. A message is mostly valid with one to three fields made wild, so
# inputs get past the first check and reach the later ones (and the broker).
wide_int64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([-62135596801, 253402300800, 2**62]))
wide_int32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([-1, 1_000_000_000]))
wide_uint64 = st.one_of(st.integers(0, 1000), st.integers(0, 2**64 - 1))
short_text = st.text(max_size=30)
topic_text = st.one_of(
    st.sampled_from(["orders", "", "a//b", "orders/*", "a.b"]), st.text(alphabet="ab/*>.- \n", max_size=12)
)
VALID_TOPICS = ["orders/created", "orders/x", "inventory/eu/sku-1", "audit/a"]
VALID_PATTERNS = [">", "orders/*", "inventory/>", "nope/>", "*"]
# Log names within a region (a Kafka topic/partition); they end up in broker keys and subjects.
stream_text = st.one_of(
    st.sampled_from(["", "mesh.orders/0", "a b", "*", ">", ".", "a.b.c", "x/1", "..", "k" * 300]), short_text
)
ext_names = st.one_of(
    st.text(alphabet="abz09-_A\n", max_size=22), st.sampled_from(["id", "time", "data", "dataschema"])
)


def _wild_time(draw: st.DrawFn, ts: Timestamp) -> None:
    ts.seconds = draw(st.one_of(st.integers(0, 2**34), wide_int64))
    ts.nanos = draw(st.one_of(st.integers(0, 999_999_999), wide_int32))


def _wild_scalars() -> dict[str, st.SearchStrategy[Any]]:
    """The wild value of each scalar field, by field name."""
    return {
        "topic": topic_text,
        "id": st.one_of(st.just(""), st.text(max_size=300)),
        "source": st.one_of(st.just(""), short_text, st.text(min_size=2000, max_size=2100)),
        "type": st.one_of(st.just(""), short_text),
        "specversion": st.sampled_from(["0.3", "1.0\x00", "2"]),
        "datacontenttype": st.one_of(st.sampled_from(["application/json", "text/plain; a=b", "x"]), short_text),
        "data": st.one_of(st.binary(max_size=64), st.just(b"x" * (LIMITS.max_data_bytes + 1))),
        "text_data": st.one_of(short_text, st.just("x" * (LIMITS.max_data_bytes + 1))),
        "dataschema": st.one_of(st.sampled_from(["https://e.x/s", "urn:a", "/rel", "a b:c", "h:#f"]), short_text),
        "key": short_text,
        "origin": short_text,
        "sequence": wide_uint64,
        "origin_sequence": wide_uint64,
        "stream": stream_text,
        "origin_stream": stream_text,
    }


WILD_SCALARS = _wild_scalars()


def _wild_event_field(draw: st.DrawFn, ev: event_pb2.Event, name: str) -> None:
    if name in WILD_SCALARS:
        setattr(ev, name, draw(WILD_SCALARS[name]))
    elif name == "time":
        _wild_time(draw, ev.time)
    elif name == "extensions":
        ev.extensions.update(draw(st.dictionaries(ext_names, short_text, min_size=1, max_size=10)))
    elif name == "route":
        ev.route.extend(draw(st.lists(short_text, max_size=3)))
    else:
        raise AssertionError(f"no wild value for field {name!r}")


EVENT_FIELDS = [
    "topic", "id", "source", "type", "specversion", "time", "time", "datacontenttype", "data", "extensions", "key",
    "origin", "route", "sequence", "origin_sequence", "stream", "origin_stream", "origin_stream", "text_data",
    "dataschema",
]  # fmt: skip


@st.composite
def events(draw: st.DrawFn, *, replicated: bool = False) -> event_pb2.Event:
    """A valid event (as a producer, or as a peer region, sends it) with a few fields made wild."""
    ev = event_pb2.Event(
        id=str(draw(st.uuids())), topic=draw(st.sampled_from(VALID_TOPICS)), source="/fuzz", type="fuzz.event"
    )
    ev.data = draw(st.binary(max_size=32))
    if replicated:
        ev.origin, ev.sequence = PEER, draw(st.integers(1, 2**40))
        ev.route.extend([REGION, PEER])
    if draw(st.booleans()):
        # Drawn, not the clock: the same draws must give the same bytes for Hypothesis to replay.
        ev.time.seconds = draw(st.integers(1_600_000_000, 1_900_000_000))
    # Mostly one wild field: an event with several is refused for the first, and a unary batch
    # for its first bad event, so later checks and the broker would rarely be reached.
    wild = draw(st.sampled_from([0, 1, 1, 1, 1, 2, 3]))
    for name in draw(st.lists(st.sampled_from(EVENT_FIELDS), min_size=wild, max_size=wild)):
        _wild_event_field(draw, ev, name)
    return ev


@st.composite
def publish_requests(draw: st.DrawFn) -> gateway_pb2.PublishRequest:
    req = gateway_pb2.PublishRequest(batch_id=draw(wide_uint64))
    req.events.extend(draw(st.lists(events(), max_size=4)))
    if req.events and draw(st.integers(0, 9)) == 0:
        req.events.extend([req.events[0]] * LIMITS.max_batch_events)  # a batch over max_batch_events
    return req


@st.composite
def subscribe_requests(draw: st.DrawFn) -> gateway_pb2.SubscribeRequest:
    req = gateway_pb2.SubscribeRequest(pattern=draw(st.sampled_from(VALID_PATTERNS)))
    if draw(st.integers(0, 3)) == 0:
        req.pattern = draw(st.one_of(topic_text, short_text))
    if draw(st.integers(0, 3)) == 0:
        req.max_batch = draw(st.integers(0, 2**32 - 1))
    start = draw(st.sampled_from(["none", "position", "time", "sequence"]))
    if start == "position":
        # proto3 enums are open: unknown values parse.
        req.position = gateway_pb2.StartPosition.ValueType(
            draw(st.one_of(st.integers(0, 2), st.integers(-(2**31), 2**31 - 1)))
        )
    elif start == "time":
        _wild_time(draw, req.start_time)
    elif start == "sequence":
        req.start_sequence = draw(wide_uint64)
    return req


@st.composite
def replicate_requests(draw: st.DrawFn) -> replication_pb2.ReplicateRequest:
    req = replication_pb2.ReplicateRequest(source_region=PEER, batch_id=draw(wide_uint64))
    if draw(st.integers(0, 4)) == 0:
        req.source_region = draw(st.one_of(st.sampled_from([REGION, "", "nowhere"]), short_text))
    if draw(st.booleans()):
        req.raw.CopyFrom(draw(raw_events()))
        if draw(st.integers(0, 9)) == 0:
            req.events.extend(draw(st.lists(events(replicated=True), min_size=1, max_size=2)))  # both: refused
    else:
        req.events.extend(draw(st.lists(events(replicated=True), max_size=4)))
    return req


# Header lines a peer could send in a raw batch: the broker's own control headers, position
# headers only the destination sets, lines that are not "name: value", stray CR/LF, bytes that
# are not UTF-8, times that do not parse.
WILD_LINES = [
    b"Nats-Rollup: all\r\n", b"nats-msg-id: other\r\n", b"NATS-TTL: 1s\r\n", b"Nats-Expected-Stream: X\r\n",
    b"mg-origin-seq: 5\r\n", b"MG-Origin-Stream: s\r\n", b"no colon here\r\n", b": no name\r\n",
    b"a b: c\r\n", b"NATS/1.0 503\r\n", b"x: \xff\xfe\x00\r\n", b"\xff: y\r\n", b"ce-time: garbage\r\n",
    b"ce-time: 2025-13-45T99:99:99.123456789Z\r\n", b"ce-time: 99999-01-01T00:00:00Z\r\n",
    b"ce-time: 0000-01-01T00:00:00.000000000Z\r\n", b"ce-time: 2025-01-01T00:00:00.12345678xZ\r\n",
    b"ce-time: \xff\xff\xff\xff-01-01T00:00:00.000000000Z\r\n", b"lone: cr\r", b"lone: lf\n", b"\r\n",
    b"mg-route: nowhere\r\n", b"mg-origin: here\r\n", b"ce-id: someone-else\r\n", b"k: " + b"v" * 5000 + b"\r\n",
]  # fmt: skip


@st.composite
def raw_events(draw: st.DrawFn) -> replication_pb2.RawEvents:
    """Events as a peer's broker stored them (column by column), a few made wild."""
    raw = replication_pb2.RawEvents()
    n = draw(st.integers(0, 4))
    with_streams = draw(st.integers(0, 3)) == 0
    for _ in range(n):
        eid = str(draw(st.uuids()))
        lines = [
            f"ce-id: {eid}\r\n".encode(),
            b"ce-source: /fuzz\r\n",
            b"ce-type: fuzz.event\r\n",
            b"ce-specversion: 1.0\r\n",
            f"mg-origin: {PEER}\r\n".encode(),
            f"mg-route: {REGION},{PEER}\r\n".encode(),
        ]
        if draw(st.booleans()):
            lines.append(b"ce-time: 2026-01-02T03:04:05.123456789Z\r\n")
        for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
            lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(WILD_LINES)))
        block = b"".join(lines)
        if draw(st.integers(0, 9)) == 0:
            block = block[: draw(st.integers(0, len(block)))]  # cut anywhere
        raw.ids.append(eid if draw(st.integers(0, 9)) else draw(st.sampled_from(["", "other", "\u00e9 x"])))
        raw.topics.append(draw(st.sampled_from(VALID_TOPICS)) if draw(st.integers(0, 5)) else draw(topic_text))
        raw.sequences.append(draw(st.one_of(st.integers(1, 2**40), st.just(0), wide_uint64)))
        raw.headers.append(block)
        raw.data.append(draw(st.binary(max_size=32)))
        if with_streams:
            raw.streams.append(draw(stream_text))
    if n and draw(st.integers(0, 9)) == 0:
        column = draw(st.sampled_from(["ids", "topics", "sequences", "headers", "data", "streams"]))
        del getattr(raw, column)[:1]  # columns of different lengths
    return raw


explain_requests = st.builds(
    admin_pb2.ExplainRequest,
    topic=st.one_of(st.sampled_from(VALID_TOPICS), topic_text),
    from_region=st.sampled_from(["", REGION, PEER, "x"]),
)


@st.composite
def locate_requests(draw: st.DrawFn) -> admin_pb2.LocateRequest:
    req = admin_pb2.LocateRequest(id=draw(st.one_of(st.just(""), short_text)), all_regions=draw(st.booleans()))
    if draw(st.booleans()):
        _wild_time(draw, req.since)
    return req


ADMIN: dict[str, tuple[type[Message], st.SearchStrategy[Message]]] = {
    "Explain": (admin_pb2.ExplainResponse, explain_requests),
    "Status": (admin_pb2.StatusResponse, st.just(admin_pb2.StatusRequest())),
    "Reload": (admin_pb2.ReloadResponse, st.just(admin_pb2.ReloadRequest())),
    "Locate": (admin_pb2.LocateResponse, locate_requests()),
}

# --- calls ---------------------------------------------------------------------------------------


def unary(channel: grpc.Channel, method: str, data: bytes) -> tuple[grpc.StatusCode, str, bytes | None]:
    try:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        return grpc.StatusCode.OK, "", call(data, timeout=CALL_TIMEOUT)
    except grpc.RpcError as exc:
        code, details = status_of(exc)
        return code, details, None


def streaming(channel: grpc.Channel, method: str, messages: list[bytes]) -> tuple[grpc.StatusCode, str, list[bytes]]:
    out: list[bytes] = []
    try:
        call: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(method)
        out.extend(call(iter(messages), timeout=CALL_TIMEOUT))
    except grpc.RpcError as exc:
        code, details = status_of(exc)
        return code, details, out
    return grpc.StatusCode.OK, "", out


def messages_of(strategy: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes]]:
    return st.lists(strategy, min_size=1, max_size=3)


# --- the tests -------------------------------------------------------------------------------------

publish_bytes = request_bytes(publish_requests())


def publish_of_time(seconds: int, nanos: int = 0) -> bytes:
    ev = event_pb2.Event(id=f"time-{seconds}", topic="orders/t", source="/fuzz", type="fuzz.event")
    ev.time.seconds, ev.time.nanos = seconds, nanos
    return gateway_pb2.PublishRequest(events=[ev]).SerializeToString()


def test_publish(gateway: ThreadGateway, channel: grpc.Channel, ledger: Ledger) -> None:
    method = "/meshgate.v1.Gateway/Publish"

    @fuzz_settings(250)
    @given(data=publish_bytes)
    @example(data=b"\xff\xff\xff")  # was UNKNOWN: DecodeError raised in grpcio's deserializer
    @example(data=tag(1, 0) + varint(5))  # events sent as a varint: an unknown field, no events
    @example(data=tag(1, 2) + varint(2**63))  # a length far beyond the message
    @example(data=group_nest(99, 400))
    @example(data=len_nest(1, 150))
    @example(data=publish_of_time(10**12))  # each was UNKNOWN: OverflowError writing the ce-time header
    @example(data=publish_of_time(-62135596801))
    @example(data=publish_of_time(2**62))
    def run(data: bytes) -> None:
        code, details, raw = unary(channel, method, data)
        check_status(method, code, details, ALLOWED)
        if raw is not None:
            request = parse(gateway_pb2.PublishRequest, data)
            assert isinstance(request, gateway_pb2.PublishRequest), "an unparsable request was answered OK"
            resp = gateway_pb2.PublishResponse.FromString(raw)
            check_results(method, list(resp.results), len(request.events))
            assert all(r.outcome != event_pb2.OUTCOME_REJECTED for r in resp.results), "unary is all or nothing"
            ledger.record(list(resp.results))
        after_call(gateway, channel, ledger, method)

    run()
    settle(gateway, channel, ledger)


def test_publish_stream(gateway: ThreadGateway, channel: grpc.Channel, ledger: Ledger) -> None:
    method = "/meshgate.v1.Gateway/PublishStream"

    @fuzz_settings(120)
    @given(messages=messages_of(publish_bytes))
    @example(messages=[gateway_pb2.PublishRequest().SerializeToString(), b"\x0a"])
    def run(messages: list[bytes]) -> None:
        code, details, raws = streaming(channel, method, messages)
        check_status(method, code, details, ALLOWED)
        requests = [parse(gateway_pb2.PublishRequest, m) for m in messages]
        # Responses answer requests in order, up to the first that did not parse (it ends the call).
        for raw, request in zip(raws, requests, strict=False):
            assert isinstance(request, gateway_pb2.PublishRequest)
            resp = gateway_pb2.PublishResponse.FromString(raw)
            assert resp.batch_id == request.batch_id
            check_results(method, list(resp.results), len(request.events))
            ledger.record(list(resp.results))
        if code is grpc.StatusCode.OK:
            assert len(raws) == len(messages)
        after_call(gateway, channel, ledger, method)

    run()
    settle(gateway, channel, ledger)


def timestamp_request(request: Message, field: str, seconds: int, nanos: int = 0) -> bytes:
    ts = getattr(request, field)
    ts.seconds, ts.nanos = seconds, nanos
    return request.SerializeToString()


def must_refuse(data: bytes) -> bool:
    """Whether the contract alone says this Subscribe request is refused (without reading our code's limits)."""
    request = parse(gateway_pb2.SubscribeRequest, data)
    if request is None:
        return True
    assert isinstance(request, gateway_pb2.SubscribeRequest)
    if not ref_pattern(request.pattern):
        return True
    start = request.WhichOneof("start")
    if start == "start_sequence":
        return request.start_sequence == 0  # positions start at 1
    if start == "start_time":
        ts = request.start_time
        return not (MIN_TIME <= ts.seconds <= MAX_TIME and 0 <= ts.nanos < 1_000_000_000)
    return False


def test_subscribe(gateway: ThreadGateway, channel: grpc.Channel, ledger: Ledger) -> None:
    method = "/meshgate.v1.Gateway/Subscribe"

    @fuzz_settings(100)
    @given(data=request_bytes(subscribe_requests()))
    @example(data=b"\xff")
    @example(data=timestamp_request(gateway_pb2.SubscribeRequest(pattern=">"), "start_time", 10**12))  # was UNKNOWN
    @example(data=timestamp_request(gateway_pb2.SubscribeRequest(pattern=">"), "start_time", 0, 10**9))
    def run(data: bytes) -> None:
        subscribe: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(method)
        call = subscribe(data, timeout=CALL_TIMEOUT)
        if must_refuse(data):
            # The call has to end by itself, with a refusal: waited for, however busy the machine.
            code, details = call.code(), call.details() or ""
            check_status(method, code, details, ALLOWED)
            assert code is not grpc.StatusCode.OK, f"{method}: a subscription the contract refuses ended OK"
        else:
            # A valid subscription stays open until we cancel it.
            # The call object of a response-streaming call is a Future too (grpc's rendezvous).
            if not _ends_within(cast("grpc.Future[Any]", call), SUBSCRIBE_WAIT):
                call.cancel()
            code, details = call.code(), call.details() or ""
            check_status(method, code, details, SUBSCRIBE_ALLOWED)
        after_call(gateway, channel, ledger, method)

    run()
    settle(gateway, channel, ledger)


def _ends_within(call: grpc.Future[Any], seconds: float) -> bool:
    """Whether the call ends within ``seconds``."""
    done = threading.Event()
    call.add_done_callback(lambda _: done.set())
    return done.wait(seconds)


def replicate_of_time(seconds: int, nanos: int = 0) -> bytes:
    ev = event_pb2.Event(id=f"rtime-{seconds}-{nanos}", topic="orders/t", source="/fuzz", type="fuzz.event")
    ev.origin, ev.sequence = PEER, 10**9 + abs(seconds) % 10**6 + nanos % 1000
    ev.route.extend([REGION, PEER])
    ev.time.seconds, ev.time.nanos = seconds, nanos
    return replication_pb2.ReplicateRequest(source_region=PEER, batch_id=1, events=[ev]).SerializeToString()


def test_replicate(gateway: ThreadGateway, channel: grpc.Channel, ledger: Ledger) -> None:
    method = "/meshgate.v1.Replication/Replicate"

    @fuzz_settings(120)
    @given(messages=messages_of(request_bytes(replicate_requests(), nest_field=3)))
    @example(messages=[b"\xff\xff"])
    @example(messages=[replicate_of_time(10**12)])  # was UNKNOWN: OverflowError writing the ce-time header
    @example(messages=[replicate_of_time(0, -1)])  # was stored with an unreadable ce-time "...00.-00000001Z"
    # Hung to the deadline: the pipelined reader died on the bad second request, unseen.
    @example(messages=[replication_pb2.ReplicateRequest(source_region=PEER).SerializeToString(), b"\x00"])
    def run(messages: list[bytes]) -> None:
        code, details, raws = streaming(channel, method, messages)
        check_status(method, code, details, ALLOWED)
        for raw, message in zip(raws, messages, strict=False):
            request = parse(replication_pb2.ReplicateRequest, message)
            assert isinstance(request, replication_pb2.ReplicateRequest)
            resp = replication_pb2.ReplicateResponse.FromString(raw)
            assert resp.batch_id == request.batch_id
            if request.HasField("raw"):
                # A raw batch is answered by counts: they add up to the batch, refusals say why.
                n = len(request.raw.ids)
                assert resp.accepted + resp.duplicates + len(resp.refused) == n, resp
                assert len({r.index for r in resp.refused}) == len(resp.refused) and all(
                    r.index < n for r in resp.refused
                )
                assert all(r.code and r.message.strip() for r in resp.refused), resp
            else:
                check_results(method, list(resp.results), len(request.events))
                ledger.record(list(resp.results))
        after_call(gateway, channel, ledger, method)

    run()
    settle(gateway, channel, ledger)


admin_cases = st.sampled_from(sorted(ADMIN)).flatmap(
    lambda name: st.tuples(st.just(name), request_bytes(ADMIN[name][1]))
)


def test_admin(gateway: ThreadGateway, channel: grpc.Channel, ledger: Ledger) -> None:
    @fuzz_settings(150)
    @given(case=admin_cases)
    @example(case=("Locate", timestamp_request(admin_pb2.LocateRequest(id="x"), "since", 10**12)))  # was UNKNOWN
    @example(case=("Locate", timestamp_request(admin_pb2.LocateRequest(id="x"), "since", 0, -1)))
    # Since 1634: hung until the deadline (nats-server cannot seek to a time before 1678).
    @example(case=("Locate", timestamp_request(admin_pb2.LocateRequest(id="x"), "since", -10_595_989_162)))
    def run(case: tuple[str, bytes]) -> None:
        name, raw_request = case
        response_type, _ = ADMIN[name]
        method = f"/meshgate.v1.Admin/{name}"
        code, details, raw = unary(channel, method, raw_request)
        check_status(method, code, details, ALLOWED)
        if raw is not None:
            response_type.FromString(raw)
        after_call(gateway, channel, ledger, method)

    run()
    settle(gateway, channel, ledger)


def test_a_request_over_the_size_limit_is_refused(
    gateway: ThreadGateway, channel: grpc.Channel, ledger: Ledger
) -> None:
    # Above settings.limits.max_message_bytes (the server's receive limit): gRPC refuses it before any parsing.
    method = "/meshgate.v1.Gateway/Publish"
    size = LIMITS.max_message_bytes
    code, details, _ = unary(channel, method, b"\x0a" + varint(size) + bytes(size))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    settle(gateway, channel, ledger)


def test_the_base_of_the_fuzzed_messages_is_valid(
    gateway: ThreadGateway, channel: grpc.Channel, ledger: Ledger
) -> None:
    # The strategies make up to three fields of a valid message wild; were their base refused,
    # the fuzz would only ever test refusals. An events batch and a raw batch built like the
    # strategies' bases, with no wild field, are stored.
    # An origin stream of its own: the fuzzed calls before it (same gateway, same origin) may
    # have stored events of the origin's one stream at any sequence, which would make these resends.
    stream = f"base-{uuid.uuid4().hex}"
    base = event_pb2.Event(
        id=str(uuid.uuid4()), topic="orders/base", source="/fuzz", type="fuzz.event", origin=PEER, stream=stream
    )
    base.sequence = 2**41 + 1
    base.route.extend([REGION, PEER])
    raw_id = str(uuid.uuid4())
    raw = replication_pb2.RawEvents(
        ids=[raw_id], topics=["orders/base"], sequences=[2**41 + 2], streams=[stream], data=[b"{}"]
    )
    raw.headers.append(
        f"ce-id: {raw_id}\r\nce-source: /fuzz\r\nce-type: fuzz.event\r\nce-specversion: 1.0\r\n"
        f"mg-origin: {PEER}\r\nmg-route: {REGION},{PEER}\r\n".encode()
    )
    requests = [
        replication_pb2.ReplicateRequest(source_region=PEER, batch_id=1, events=[base]).SerializeToString(),
        replication_pb2.ReplicateRequest(source_region=PEER, batch_id=2, raw=raw).SerializeToString(),
    ]
    code, details, raws = streaming(channel, "/meshgate.v1.Replication/Replicate", requests)
    assert code is grpc.StatusCode.OK, details
    first, second = (replication_pb2.ReplicateResponse.FromString(r) for r in raws)
    assert [r.outcome for r in first.results] == [event_pb2.OUTCOME_ACCEPTED], first
    ledger.record(list(first.results))
    assert (second.accepted, second.duplicates, list(second.refused)) == (1, 0, []), second
    settle(gateway, channel, ledger)

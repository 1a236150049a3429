"""The gRPC exporter's encoding (``observability/_encode.py``) is the SDK's ``encode_spans``, field for field.

Spans of every shape the gateway makes (light publish spans, SDK send and process spans) and
some it does not (events, links, trace state, attribute values of every type, a cached key
with a bool and an int of equal value), from two providers with equal but distinct resources.
The end-to-end proof, a real OTLP/gRPC receiver, is ``test_tracing.test_one_trace_across_two_regions``.
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from meshgate.brokers import AppendResult, RawBatch
from meshgate.brokers._codec import header_lines
from meshgate.observability import Tracing, _tracing
from meshgate.observability._encode import CachingOTLPSpanExporter, EncodedSpan, encode_spans
from meshgate.observability._tracing import DecisionIds, _make_exporter
from tests._wait import eventually
from tests.gateway._helpers import ev


def _spans(region: str) -> tuple[ReadableSpan, ...]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"cloud.region": "a"}), id_generator=DecisionIds())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(region=region, provider=provider)
    tracing.set_broker_address("127.0.0.1:4222")
    assert tracing.sink is not None  # publish spans go the light way
    trace = tracing.batch(None)
    trace.start([ev(id=f"p-{i}", route=["a", "b"]) for i in range(3)])
    trace.end([AppendResult(sequence=1, duplicate=False), AppendResult(sequence=2, duplicate=True), OSError("x")])
    raw = RawBatch(
        ids=["s-1"], topics=["orders/created"], sequences=[7], headers=[header_lines(ev(id="s-1"))], data=[b"{}"]
    )
    tracing.end_send(tracing.start_send(raw, "b", address="10.0.0.2:7443"), {}, duplicates=0)
    tracer = provider.get_tracer("other", "1.2", schema_url="https://example.com/s")
    linked = SpanContext(0xAB, 0xCD, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("k", "v")]))
    with tracer.start_as_current_span(
        "odd",
        kind=SpanKind.INTERNAL,
        links=[Link(linked, {"why": "because"})],
        attributes={
            "meshgate.outcome": True,  # a cached key with a bool (an int of equal value follows)
            "meshgate.dedup": 1,
            "f": 1.5,
            "b": b"\x00",
            "seq": ("x", "y"),
            "ints": [1, 2],
        },
    ) as span:
        span.add_event("e", {"n": 3})
        span.set_status(Status(StatusCode.ERROR, "broken"))
    # Written byte by byte: values at the edges of the wire format, a remote parent with a state.
    parent = set_span_in_context(NonRecordingSpan(linked))
    edges = tracer.start_span("größe ✓", context=parent, kind=SpanKind.CONSUMER)
    edges.set_attributes(
        {
            "neg": -5,
            "big": (1 << 63) - 1,
            "zero": 0,
            "empty": "",
            "uni": "größe ✓",
            "meshgate.route": "",
            "meshgate.outcome": False,
            "f": -0.0,
            "t": ("a",),
            "long": "x" * 300,  # a length over one varint byte
        }
    )
    edges.set_status(Status(StatusCode.ERROR, "ünicode"))
    edges.end()
    tracer.start_span("", kind=SpanKind.INTERNAL).end()  # no name, no attributes, UNSET
    # An int equal to the bool cached above under the same key: written as an int.
    tracer.start_span("", kind=SpanKind.INTERNAL, attributes={"meshgate.outcome": 0}).end()
    tracing.shutdown()
    return exporter.get_finished_spans()


def test_the_request_is_the_sdks() -> None:
    spans = [*_spans("a"), *_spans("a")]  # two providers: equal resources, distinct objects
    assert len(spans) == 16
    ours, theirs = encode_spans(spans), sdk_encode_spans(spans)
    assert ours == theirs
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    assert len(ours.resource_spans) == 1 and len(ours.resource_spans[0].scope_spans) == 2
    # Twice: the second time from the cache of repeated values.
    assert encode_spans(spans) == theirs
    assert encode_spans([]) == sdk_encode_spans([])


def test_otlp_grpc_exports_with_the_cheaper_encoding() -> None:
    exporter = _make_exporter("otlp", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    try:
        assert isinstance(exporter, CachingOTLPSpanExporter)
    finally:
        if exporter is not None:
            exporter.shutdown()


# --- publish spans encoded as they end (EncodedSpan) ---------------------------------------------


class _Taking(InMemorySpanExporter):
    """Keeps what it is handed, and says it takes ``EncodedSpan``s as the OTLP/gRPC exporter does."""

    takes_encoded = True


def _publish_run(*, encoded: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Tracing, list[Any]]:
    """The same publishes through a tracing on the encoded path or the ``ReadableSpan`` one:
    the same ids (one seed) and times (a counter), so the two can be compared byte for byte."""
    clock = itertools.count(1_700_000_000_000_000_000, 1_234_567)
    monkeypatch.setattr(time, "time_ns", lambda: next(clock))  # the spans' times, read by _tracing
    # The span ids: the SDK's RandomIdGenerator draws them from the random module's own source.
    monkeypatch.setattr(random, "getrandbits", random.Random(11).getrandbits)
    exporter = _Taking()
    provider = TracerProvider(
        resource=Resource.create({"cloud.region": "a"}), id_generator=DecisionIds(rng=random.Random(7))
    )
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=60_000)
    provider.add_span_processor(processor)
    tracing = Tracing(region="a", provider=provider)
    assert tracing.encoding is not None
    if not encoded:
        tracing.encoding = None
    tracing.set_broker_address("127.0.0.1:4222")
    own = ev(id="own", extensions={"traceparent": "00-" + "0e" * 16 + "-" + "06" * 8 + "-01", "tracestate": "k=v"})
    trace = tracing.batch(None)
    trace.start([ev(id="root", route=["a", "b"]), own, ev(id="failed", topic="größe/✓"), ev(id="dup")])
    trace.end(
        [
            AppendResult(sequence=1, duplicate=False),
            AppendResult(sequence=(1 << 63) - 1, duplicate=False),
            OSError("disk full"),
            AppendResult(sequence=2, duplicate=True),
        ]
    )
    child = ev(id="child")
    trace = tracing.batch(tracing.call_context((("traceparent", "00-" + "ca" * 16 + "-" + "05" * 8 + "-01"),)))
    trace.start([child])
    trace.abandon("the call ended before the broker answered")
    processor.force_flush()
    spans = list(exporter.get_finished_spans())
    return tracing, spans


def test_encoded_publish_spans_are_the_sdks_request_byte_for_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    tracing, encoded = _publish_run(encoded=True, monkeypatch=monkeypatch)
    other, readable = _publish_run(encoded=False, monkeypatch=monkeypatch)
    assert len(encoded) == len(readable) == 5
    assert all(isinstance(s, EncodedSpan) for s in encoded)
    assert all(isinstance(s, ReadableSpan) for s in readable)
    # The SDK's own encoder of the SDK's spans is the reference.
    want = sdk_encode_spans(readable)
    got = encode_spans(encoded)
    assert got == want
    assert got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)
    # What the batch processor reads of a span: its sampled flag.
    assert all(s.context.trace_flags.sampled for s in encoded)
    # Mixed with the SDK's spans in one export (a provider's send and process spans are those).
    mixed = encode_spans([*encoded, *readable])
    assert mixed == sdk_encode_spans([*readable, *readable])
    tracing.shutdown()
    other.shutdown()


def test_the_encoded_path_only_where_every_exporter_takes_it() -> None:
    def tracing_with(*processors: SpanProcessor) -> Tracing:
        provider = TracerProvider(id_generator=DecisionIds())
        for p in processors:
            provider.add_span_processor(p)
        return Tracing(region="a", provider=provider)

    taken = tracing_with(BatchSpanProcessor(_Taking()))
    assert taken.encoding is not None
    # A second exporter that reads the SDK's spans (the console's, a test's): all get those.
    both = tracing_with(BatchSpanProcessor(_Taking()), BatchSpanProcessor(InMemorySpanExporter()))
    assert both.encoding is None and both.sink is not None
    # Not a batch processor: it would hand the encoded span to its exporter at once, unchecked.
    simple = tracing_with(SimpleSpanProcessor(_Taking()))
    assert simple.encoding is None
    for t in (taken, both, simple):
        t.shutdown()
    # A gateway's own: OTLP over gRPC takes the encoded path; with the console beside it, not.
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    grpc_only = Tracing.from_env("a", endpoint)
    with_console = Tracing.from_env("a", endpoint | {"OTEL_TRACES_EXPORTER": "otlp,console"})
    over_http = Tracing.from_env("a", endpoint | {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    try:
        assert grpc_only.encoding is not None
        assert with_console.enabled and with_console.encoding is None
        assert over_http.enabled and over_http.encoding is None
    finally:
        for t in (grpc_only, with_console, over_http):
            t.shutdown()


async def test_ended_publish_spans_are_encoded_together_and_none_is_kept_back() -> None:
    exporter = _Taking()
    provider = TracerProvider(id_generator=DecisionIds())
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=60_000)
    provider.add_span_processor(processor)
    tracing = Tracing(region="a", provider=provider)

    def handed_on() -> int:
        processor.force_flush()
        return len(exporter.get_finished_spans())

    def publish(n: int) -> None:
        trace = tracing.batch(None)
        trace.start([ev(id=f"e-{i}") for i in range(n)])
        trace.end([AppendResult(sequence=i + 1, duplicate=False) for i in range(n)])

    # Ended on a running loop: kept until the next ones or a half second later, never longer.
    publish(3)
    assert handed_on() == 0
    assert await eventually(lambda: handed_on() == 3 or None, 5, what="the kept spans handed on") is True
    # A full set goes at once, the rest waits for its time.
    publish(_tracing._PENDING_SPANS + 5)
    assert handed_on() == 3 + _tracing._PENDING_SPANS
    # A stop hands on what is still kept, before the exporter's last flush.
    await tracing.aclose(10)
    assert len(exporter.get_finished_spans()) == 3 + _tracing._PENDING_SPANS + 5
    assert all(isinstance(s, EncodedSpan) for s in exporter.get_finished_spans())

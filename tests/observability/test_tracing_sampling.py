"""The sampling decision before any span work (issue 17): unsampled events cost only the decision.

Unit tests of ``meshgate.observability._tracing``: the fast decision must equal the SDK sampler's
own for the samplers it shortcuts, and an unsampled event must get no span (``start_span`` is
counted) and keep the traceparent it carries, on all three paths (publish, send, process).
"""

from __future__ import annotations

import itertools
import random
import secrets
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meshgate.brokers import AppendResult, RawBatch
from meshgate.brokers._codec import header_lines, parse_header_lines
from meshgate.gateway._classify import ProcessedBatch
from meshgate.observability import Tracing
from meshgate.observability._tracing import DecisionIds, fast_decision, parse_traceparent, root_bound
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc, replication_pb2
from tests._wait import eventually
from tests.gateway._helpers import ev, read_all
from tests.observability._otlp import Receiver
from tests.observability.test_tracing import (  # noqa: F401 - otlp_receiver: the fixture
    _attrs,
    otlp_receiver,
    traced_regions,
)

_LOW64 = (1 << 64) - 1


class CountingTracer:
    """Counts ``start_span`` calls of the tracer it wraps (the per-event span work)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.started = 0

    def start_span(self, *args: Any, **kwargs: Any) -> Span:
        self.started += 1
        span: Span = self.inner.start_span(*args, **kwargs)
        return span


def _traced(
    sampler: Sampler, *, rng: random.Random | None = None
) -> tuple[Tracing, CountingTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, id_generator=DecisionIds(rng=rng))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(region="a", provider=provider)
    counting = CountingTracer(tracing.tracer)
    tracing.tracer = counting  # type: ignore[assignment]
    return tracing, counting, exporter


def _tp(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def _parent(trace_id: int, sampled: bool | None) -> Context | None:
    if sampled is None:
        return None
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    sc = SpanContext(trace_id, 0x1234, is_remote=True, trace_flags=flags)
    return set_span_in_context(NonRecordingSpan(sc))


class _Custom(Sampler):
    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE)

    def get_description(self) -> str:
        return "custom"


# --- the decision equals the SDK's ----------------------------------------------------------------


@pytest.mark.parametrize(
    "sampler",
    [
        ALWAYS_ON,
        ALWAYS_OFF,
        DEFAULT_ON,
        DEFAULT_OFF,
        *(TraceIdRatioBased(r) for r in (0.0, 0.01, 0.25, 0.5, 0.999, 1.0)),
        *(ParentBasedTraceIdRatio(r) for r in (0.0, 0.01, 0.5, 1.0)),
        ParentBased(
            root=TraceIdRatioBased(0.3),
            remote_parent_sampled=TraceIdRatioBased(0.5),
            remote_parent_not_sampled=ParentBasedTraceIdRatio(0.7),
        ),
    ],
    ids=lambda s: s.get_description(),
)
def test_fast_decision_equals_the_sdk_sampler(sampler: Sampler) -> None:
    decide = fast_decision(sampler)
    assert decide is not None
    rng = random.Random(17)
    ids = [rng.getrandbits(128) or 1 for _ in range(3000)]
    if isinstance(sampler, TraceIdRatioBased):  # the bound's edges, with high bits set
        ids += [(0xABC << 64) | max(sampler.bound + d, 1) & _LOW64 for d in (-1, 0, 1)]
    for trace_id in ids:
        for parent_sampled in (None, True, False):
            decision = sampler.should_sample(_parent(trace_id, parent_sampled), trace_id, "t").decision
            expected = decision is Decision.RECORD_AND_SAMPLE
            assert decide(trace_id, parent_sampled) is expected, (hex(trace_id), parent_sampled)
    # A root's decision as one comparison of the trace id's low 64 bits: the same again.
    bound = root_bound(sampler)
    assert bound is not None
    for trace_id in ids:
        expected = sampler.should_sample(None, trace_id, "t").decision is Decision.RECORD_AND_SAMPLE
        assert (trace_id & _LOW64 < bound) is expected, hex(trace_id)


def test_other_samplers_keep_the_sdk_path() -> None:
    assert fast_decision(_Custom()) is None
    assert root_bound(_Custom()) is None and root_bound(ParentBased(root=_Custom())) is None
    assert fast_decision(StaticSampler(Decision.RECORD_ONLY)) is None
    assert fast_decision(ParentBased(root=_Custom())) is None
    tracing, counting, _ = _traced(_Custom())
    assert tracing.decide is None
    trace = tracing.batch(None)
    trace.start([ev(id="x")])
    assert counting.started == 1


@pytest.mark.parametrize(
    "value",
    [
        _tp(0xAB, 0xCD, 1),
        _tp(0xAB, 0xCD, 0),
        _tp(0xAB, 0xCD, 3),
        " \t" + _tp(0xAB, 0xCD, 1) + " ",
        _tp(0xAB, 0xCD, 1).upper(),
        _tp(0, 0xCD, 1),
        _tp(0xAB, 0, 1),
        _tp(0xAB, 0xCD, 1) + "-extra",
        "01" + _tp(0xAB, 0xCD, 1)[2:] + "-future",
        "ff" + _tp(0xAB, 0xCD, 1)[2:],
        "00-ab-cd-01",
        "",
        "x" * 600,
    ],
)
def test_parse_traceparent_accepts_what_the_propagator_accepts(value: str) -> None:
    ctx = TraceContextTextMapPropagator().extract({"traceparent": value})
    parsed = parse_traceparent(value)
    if not ctx:
        assert parsed is None
        return
    span = next(iter(ctx.values()))
    assert isinstance(span, Span)
    sc = span.get_span_context()
    assert parsed == (sc.trace_id, int(sc.trace_flags))


# --- unsampled: no span, headers unchanged -------------------------------------------------------


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, TraceIdRatioBased(0.0), ParentBasedTraceIdRatio(0.0)])
def test_unsampled_events_start_no_span_and_keep_their_traceparent(sampler: Sampler) -> None:
    tracing, counting, exporter = _traced(sampler)
    not_sampled, sampled_parent = _tp(0xAA, 0x11, 0), _tp(0xBB, 0x22, 1)
    # publish
    own = ev(id="own", extensions={"traceparent": not_sampled})
    bare = ev(id="bare")
    trace = tracing.batch(None)
    trace.start([own, bare])
    trace.end([AppendResult(sequence=1, duplicate=False)] * 2)
    assert own.extensions["traceparent"] == not_sampled
    assert "traceparent" not in bare.extensions
    # send
    lines = [header_lines(ev(id=f"s-{i}", origin="a", extensions={"traceparent": not_sampled})) for i in range(3)]
    lines.append(header_lines(ev(id="s-bare", origin="a")))
    raw = RawBatch(
        ids=["s-0", "s-1", "s-2", "s-bare"],
        topics=["t"] * 4,
        sequences=[1, 2, 3, 4],
        headers=list(lines),
        data=[b"{}"] * 4,
    )
    assert tracing.start_send(raw, "b") == []
    assert raw.headers == lines
    # process
    request = replication_pb2.ReplicateRequest(
        source_region="a",
        batch_id=1,
        raw=replication_pb2.RawEvents(
            ids=raw.ids, topics=raw.topics, sequences=raw.sequences, headers=lines, data=raw.data
        ),
    )
    batch = ProcessedBatch(request)
    batch.w_index, batch.w_headers = [0, 1, 2, 3], list(lines)
    spans = tracing.start_process("a", batch, time.time_ns())
    assert spans == []
    assert batch.w_headers == lines
    batch.written = [AppendResult(sequence=i, duplicate=False) for i in range(4)]
    tracing.end_process(spans, batch)
    assert counting.started == 0
    assert exporter.get_finished_spans() == ()
    if not isinstance(sampler, ParentBased):  # a sampled parent does not matter to these
        trace = tracing.batch(None)
        trace.start([ev(id="p", extensions={"traceparent": sampled_parent})])
        assert counting.started == 0
    tracing.shutdown()


def test_parent_based_respects_the_incoming_sampled_flag() -> None:
    tracing, counting, exporter = _traced(ParentBasedTraceIdRatio(0.0))
    tid = 0xC0FFEE
    yes, no = (
        ev(id="yes", extensions={"traceparent": _tp(tid, 0x1, 1)}),
        ev(id="no", extensions={"traceparent": _tp(tid, 0x2, 0)}),
    )
    trace = tracing.batch(None)
    trace.start([yes, no])
    trace.end([AppendResult(sequence=1, duplicate=False)] * 2)
    assert counting.started == 0  # the publish span is recorded without an SDK Span
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["messaging.message.id"] == "yes"
    assert span.context.trace_id == tid
    assert span.parent is not None
    assert span.parent.span_id == 0x1
    assert yes.extensions["traceparent"] == _tp(tid, span.context.span_id, span.context.trace_flags)
    assert no.extensions["traceparent"] == _tp(tid, 0x2, 0)
    # The same on the replication path: the not-sampled line is left as it is.
    lines = [
        header_lines(ev(id=i, origin="a", extensions={"traceparent": _tp(tid, 0x3, f)}))
        for i, f in (("y", 1), ("n", 0))
    ]
    raw = RawBatch(ids=["y", "n"], topics=["t"] * 2, sequences=[1, 2], headers=list(lines), data=[b"{}"] * 2)
    spans = tracing.start_send(raw, "b")
    assert spans[1] is None
    assert raw.headers[1] == lines[1]
    assert parse_header_lines(raw.headers[0])["ce-traceparent"] != _tp(tid, 0x3, 1)
    assert counting.started == 1
    tracing.end_send(spans, {}, duplicates=0)
    tracing.shutdown()


def test_root_ratio_decides_on_the_trace_id_the_event_carries() -> None:
    tracing, counting, exporter = _traced(ParentBasedTraceIdRatio(0.5))
    bound = TraceIdRatioBased(0.5).bound
    events = [ev(id=f"r-{i}") for i in range(400)]
    trace = tracing.batch(None)
    trace.start(events)
    trace.end([AppendResult(sequence=i, duplicate=False) for i in range(len(events))])
    spans = {s.attributes["messaging.message.id"]: s for s in exporter.get_finished_spans()}  # type: ignore[index]
    assert counting.started == 0  # the publish spans are recorded without an SDK Span
    assert 120 < len(spans) < 280
    for e in events:
        if e.id not in spans:  # not sampled: no span, not stamped
            assert "traceparent" not in e.extensions
            continue
        parsed = parse_traceparent(e.extensions["traceparent"])
        assert parsed is not None
        trace_id, flags = parsed
        # The span's trace id is the one decided on, so every region after decides alike.
        assert trace_id & _LOW64 < bound
        assert flags & 1
        assert spans[e.id].context.trace_id == trace_id
    tracing.shutdown()


@pytest.mark.parametrize(
    "sampler", [TraceIdRatioBased(0.3), ParentBasedTraceIdRatio(0.3)], ids=lambda s: s.get_description()
)
def test_a_root_is_decided_alike_on_the_publish_and_the_send_path(sampler: Sampler) -> None:
    # The same random draws give the same roots sampled, with the same trace ids, whichever
    # path decides: one decision for a parentless event (root_bound), equal to the SDK's;
    # on the publish path alike whether the batch is decided at once (no event carries
    # extensions) or event by event.
    def sampled_trace_ids(path: str) -> list[int | None]:
        tracing, _, _ = _traced(sampler, rng=random.Random(17))
        events = [ev(id=f"r-{i}", origin="a") for i in range(300)]
        if path.startswith("publish"):
            # In batches of several sizes: the gap left by one batch carries to the next.
            for lo, hi in ((0, 7), (7, 8), (8, 150), (150, 300)):
                trace = tracing.batch(None)
                trace.start(events[lo:hi], own_traceparents=path == "publish, each")
                trace.abandon("test")
            stamped = [e.extensions.get("traceparent") for e in events]
        else:
            raw = RawBatch(
                ids=[e.id for e in events],
                topics=["t"] * len(events),
                sequences=list(range(len(events))),
                headers=[header_lines(e) for e in events],
                data=[b"{}"] * len(events),
            )
            spans = tracing.start_send(raw, "b")
            tracing.abandon(spans, "test")
            stamped = [parse_header_lines(h).get("ce-traceparent") for h in raw.headers]
        tracing.shutdown()
        parsed = [None if t is None else parse_traceparent(t) for t in stamped]
        return [None if p is None else p[0] for p in parsed]

    whole, each, send = (sampled_trace_ids(p) for p in ("publish, whole", "publish, each", "send"))
    assert whole == each == send
    assert 40 < sum(t is not None for t in whole) < 140
    for trace_id in whole:
        if trace_id is not None:
            assert sampler.should_sample(None, trace_id, "t").decision is Decision.RECORD_AND_SAMPLE


@pytest.mark.parametrize("call_flags", [1, 0])
def test_a_batch_decided_at_once_follows_the_calls_sampled_flag(call_flags: int) -> None:
    # Without extensions in the batch (own_traceparents=False) every event is the call's child:
    # all sampled with a sampled call, none with an unsampled one, as event by event.
    def publish(own_traceparents: bool) -> tuple[list[int | None], int]:
        tracing, _, exporter = _traced(ParentBasedTraceIdRatio(0.0))
        events = [ev(id=f"c-{i}") for i in range(5)]
        trace = tracing.batch(tracing.call_context((("traceparent", _tp(0xCA11, 0x5, call_flags)),)))
        trace.start(events, own_traceparents=own_traceparents)
        trace.end([AppendResult(sequence=i, duplicate=False) for i in range(len(events))])
        parsed = [parse_traceparent(e.extensions.get("traceparent", "")) for e in events]
        spans = len(exporter.get_finished_spans())
        tracing.shutdown()
        return [None if p is None else p[0] for p in parsed], spans

    whole, each = publish(False), publish(True)
    assert whole == each
    assert whole == ([0xCA11] * 5, 5) if call_flags else ([None] * 5, 0)


@pytest.mark.parametrize("ratio", [0.01, 0.3])
def test_roots_are_sampled_each_on_its_own_at_the_ratio(ratio: float) -> None:
    # The gaps between sampled roots are drawn, not each root: the result must still be
    # independent draws at the ratio. Checked on the rate and on pairs of neighbours (a
    # sampler that took every 1/ratio-th root would have the rate but no sampled pairs).
    bound = TraceIdRatioBased(ratio).bound
    ids = DecisionIds(rng=random.Random(3))
    n = 200_000
    sampled = [ids.draw_root(bound) for _ in range(n)]
    count = sum(sampled)
    sd = (n * ratio * (1 - ratio)) ** 0.5
    assert abs(count - n * ratio) < 5 * sd
    pairs = sum(a and b for a, b in itertools.pairwise(sampled))
    expected_pairs = (n - 1) * ratio * ratio
    assert abs(pairs - expected_pairs) < 5 * (expected_pairs**0.5) + 5
    # The batched decisions are the same draws: the same roots, the same trace ids.
    one, batched = DecisionIds(rng=random.Random(11)), DecisionIds(rng=random.Random(11))
    each: list[int] = []
    for _ in range(5000):
        if one.draw_root(bound):
            each.append(one.generate_trace_id())
        else:
            each.append(0)
    at_once = [0] * 5000
    start = 0
    for size in (1, 999, 0, 3000, 1000):
        for i, trace_id in batched.roots(size, bound):
            at_once[start + i] = trace_id
        start += size
    assert at_once == each
    assert all(t & _LOW64 < bound and t for t in each if t)


def test_roots_at_ratios_one_and_zero() -> None:
    ids = DecisionIds(rng=random.Random(1))
    every, none = TraceIdRatioBased(1.0).bound, TraceIdRatioBased(0.0).bound
    assert [i for i, _ in ids.roots(50, every)] == list(range(50))
    assert all(ids.draw_root(every) for _ in range(50))
    assert ids.roots(10_000, none) == []
    assert not any(ids.draw_root(none) for _ in range(10_000))
    # A changed bound is decided on at once (a reload's new sampler): not after the old gap.
    assert ids.draw_root(every)


# --- a sampled publish span without the SDK's Span: the same span -------------------------------


def _publish_spans(tracing: Tracing, exporter: InMemorySpanExporter) -> dict[str, Any]:
    """Publishes roots, an event with its own traceparent (and tracestate), a failed one and a
    child of the call's context; the finished spans by message id, and the stamped events."""
    tracing.set_broker_address("127.0.0.1:4222")
    root, failed = ev(id="root"), ev(id="failed")
    own = ev(id="own", extensions={"traceparent": _tp(0x0E, 0x6, 3), "tracestate": "k=v"})
    child = ev(id="child")
    trace = tracing.batch(None)
    trace.start([root, own, failed])
    trace.end([AppendResult(sequence=1, duplicate=False), AppendResult(sequence=2, duplicate=True), OSError("down")])
    trace = tracing.batch(tracing.call_context((("traceparent", _tp(0xCA11, 0x5, 1)),)))
    trace.start([child])
    trace.abandon("the call ended before the broker answered")
    stamped = {e.id: e.extensions["traceparent"] for e in (root, own, failed, child)}
    return {
        "spans": {s.attributes["messaging.message.id"]: s for s in exporter.get_finished_spans()},  # type: ignore[index]
        "stamped": stamped,
    }


def test_sampled_publish_spans_are_the_sdks_without_its_span_work() -> None:
    light, light_count, light_exporter = _traced(ParentBasedTraceIdRatio(1.0))
    sdk, sdk_count, sdk_exporter = _traced(ParentBasedTraceIdRatio(1.0))
    assert light.sink is not None
    sdk.sink = None  # the SDK's path: a Span per sampled event
    got, want = _publish_spans(light, light_exporter), _publish_spans(sdk, sdk_exporter)
    assert light_count.started == 0 and sdk_count.started == 4
    assert set(got["spans"]) == set(want["spans"]) == {"root", "own", "failed", "child"}
    for mid, w in want["spans"].items():
        g = got["spans"][mid]
        assert (g.name, g.kind, g.resource, g.instrumentation_scope) == (
            w.name,
            w.kind,
            w.resource,
            w.instrumentation_scope,
        )
        assert (g.status.status_code, g.status.description) == (w.status.status_code, w.status.description)
        assert g.events == w.events == ()
        assert (g.context.trace_flags, g.context.trace_state, g.context.is_remote) == (
            w.context.trace_flags,
            w.context.trace_state,
            w.context.is_remote,
        )
        assert (g.parent is None) == (w.parent is None)
        if w.parent is not None:  # roots draw their ids at random
            assert g.context.trace_id == w.context.trace_id
            assert (g.parent.span_id, g.parent.is_remote) == (w.parent.span_id, w.parent.is_remote)
        ga, wa = dict(g.attributes), dict(w.attributes)
        assert isinstance(ga.pop("meshgate.admission_us"), int) and isinstance(wa.pop("meshgate.admission_us"), int)
        assert ga == wa
        # What the messaging conventions ask of a producer span, and the stamped context.
        assert g.kind is SpanKind.PRODUCER and g.name == "publish orders/created"
        assert ga["messaging.system"] == "nats" and ga["messaging.destination.name"] == "orders/created"
        assert (ga["messaging.operation.type"], ga["messaging.operation.name"]) == ("send", "publish")
        assert ga["messaging.message.id"] == mid
        assert got["stamped"][mid] == _tp(g.context.trace_id, g.context.span_id, g.context.trace_flags)
        assert g.start_time <= g.end_time
    assert got["spans"]["failed"].status.status_code is StatusCode.ERROR
    assert got["spans"]["own"].context.trace_state.to_header() == "k=v"
    assert got["spans"]["own"].attributes["meshgate.outcome"] == "duplicate"
    light.shutdown()
    sdk.shutdown()


def test_tighter_span_limits_keep_the_sdks_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=DecisionIds(), span_limits=SpanLimits(max_span_attribute_length=4))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(region="a", provider=provider)
    assert tracing.sink is None
    trace = tracing.batch(None)
    trace.start([ev(id="long-id")])
    trace.end([AppendResult(sequence=1, duplicate=False)])
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["messaging.message.id"] == "long"
    tracing.shutdown()


# --- through two real gateways: a sampled event keeps its one trace, the others cost no span -------


async def test_ratio_zero_traces_only_sampled_parents_across_regions(
    tmp_path: Path,
    otlp_receiver: tuple[Receiver, int],  # noqa: F811 - the fixture
) -> None:
    receiver, otlp_port = otlp_receiver
    async with traced_regions(
        tmp_path, otlp_port, {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    ) as procs:
        trace_id = secrets.randbits(128) or 1
        sampled, unsampled = _tp(trace_id, 0x5A, 1), _tp(trace_id, 0x5B, 0)
        events = [
            ev(id="sampled", extensions={"traceparent": sampled}),
            ev(id="unsampled", extensions={"traceparent": unsampled}),
            *(ev(id=f"plain-{i}") for i in range(10)),
        ]
        async with grpc.aio.insecure_channel(procs["a"].address) as channel:
            resp = await gateway_pb2_grpc.GatewayStub(channel).Publish(gateway_pb2.PublishRequest(events=events))
        assert [r.outcome for r in resp.results] == [event_pb2.OUTCOME_ACCEPTED] * len(events)

        def chain() -> set[tuple[str, str]] | None:
            names = {
                (str(s.region), s.span.name)
                for s in receiver.spans()
                if _attrs(s.span).get("messaging.message.id") == "sampled"
            }
            # The send span ends (and is exported) when b's ack is back: after b's process span;
            # the publish span is encoded with the next ones, or half a second later.
            want = {("a", "publish orders/created"), ("a", "send orders/created"), ("b", "process orders/created")}
            return names if want <= names else None

        assert await eventually(chain, 60, what="the sampled event's spans from both regions") == {
            ("a", "publish orders/created"),
            ("a", "send orders/created"),
            ("b", "process orders/created"),
        }
        for region in ("a", "b"):
            async with grpc.aio.insecure_channel(procs[region].address) as channel:
                stored = {e.id: e for e in await read_all(gateway_pb2_grpc.GatewayStub(channel), "orders/>", expect=12)}
            assert len(stored) == 12
            # Unsampled: the producer's traceparent travels as it was set, none is added.
            assert stored["unsampled"].extensions["traceparent"] == unsampled
            assert all("traceparent" not in stored[f"plain-{i}"].extensions for i in range(10))
            assert stored["sampled"].extensions["traceparent"] != sampled  # a span of this region's
        # Every span the receiver got is the sampled event's: the others started none.
        assert {_attrs(s.span).get("messaging.message.id") for s in receiver.spans()} == {"sampled"}
        assert {s.span.trace_id for s in receiver.spans()} == {trace_id.to_bytes(16, "big")}

"""Traced delivery: one trace per event, from the producer's span to the write in the last region.

The end-to-end test runs an in-process OTLP receiver and two ``meshgate serve`` processes
(regions ``a`` and ``b``, each with its own embedded nats-server) exporting to it through the
standard ``OTEL_*`` variables, once per OTLP protocol: over gRPC (opentelemetry-proto's
collector service) and over HTTP (``tests/observability/_otlp.py``: an HTTP server that takes
``POST /v1/traces`` and decodes the protobuf ``ExportTraceServiceRequest`` with
opentelemetry-proto, as a collector's OTLP/HTTP receiver does; no OTLP/HTTP receiver
installs from the registries here without a large server of its own). One event
published in ``a`` with a producer's ``traceparent`` in the gRPC metadata, routed to ``b``,
must give one trace with spans of both regions, parented producer -> publish -> send -> process.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from meshgate.brokers import AppendResult, RawBatch
from meshgate.brokers._codec import header_lines, parse_header_lines
from meshgate.brokers.embedded import EmbeddedNats
from meshgate.gateway import Gateway
from meshgate.gateway._classify import ProcessedBatch
from meshgate.observability import BatchTrace, Tracing, tracing_configured
from meshgate.testing import ServeProcess
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc, replication_pb2
from tests._replication import VARIABLE
from tests._wait import eventually
from tests.e2e._mesh import free_port
from tests.gateway._helpers import ev, read_all
from tests.gateway.conftest import mesh_for
from tests.observability._otlp import HttpReceiver, ReceivedSpan, Receiver, _value

_OTEL_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SDK_DISABLED",
)


# --- an in-process OTLP/gRPC receiver ----------------------------------------------------------


@pytest.fixture
async def otlp_receiver() -> AsyncIterator[tuple[Receiver, int]]:
    receiver = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield receiver, port
    finally:
        await server.stop(0)


@pytest.fixture
def otlp_http_receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver


# --- one event, two regions, one trace -----------------------------------------------------------


def _attrs(span: trace_pb2.Span) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in span.attributes}


def _assert_one_trace(spans: list[ReceivedSpan], trace_id: int) -> None:
    """One trace, the producer's, over both regions; each span with the messaging attributes."""
    assert {s.span.trace_id for s in spans} == {trace_id.to_bytes(16, "big")}
    assert {s.region for s in spans} == {"a", "b"}
    expected_service = os.environ.get("OTEL_SERVICE_NAME") or "meshgate"
    for s in spans:
        assert s.resource.get("service.name") == expected_service
        attrs = _attrs(s.span)
        assert attrs["messaging.system"] == "nats"  # embedded regions run nats-server
        assert attrs["messaging.destination.name"] == "orders/created"
        assert attrs["messaging.message.body.size"] == len(b'{"n": 1}')
        assert attrs["messaging.operation.type"] in ("send", "process")
        assert attrs["cloud.region"] == s.region
        # The server each span talks to: the region's broker (publish, process) or the peer (send).
        assert attrs["server.address"] == "127.0.0.1"
        assert isinstance(attrs["server.port"], int) and attrs["server.port"] > 0


def _chain(spans: list[ReceivedSpan], last: ReceivedSpan) -> tuple[list[tuple[str, str]], int]:
    """The (region, name) of each ancestor of ``last`` among ``spans``, and the parent id of the first."""
    by_id = {s.span.span_id: s for s in spans}
    chain, at = [], last
    while at.parent in by_id:
        at = by_id[at.parent]
        chain.append((at.region, at.span.name))
    return chain, int.from_bytes(at.parent, "big")


@contextlib.asynccontextmanager
async def traced_regions(
    tmp_path: Path, otlp_port: int, sampler: dict[str, str], *, protocol: str = "grpc", headers: str = ""
) -> AsyncIterator[dict[str, ServeProcess]]:
    """Regions a and b as `meshgate serve` processes, exporting to the receiver with ``sampler``'s
    OTEL_TRACES_SAMPLER(_ARG) by OTLP ``protocol`` (OTEL_EXPORTER_OTLP_PROTOCOL) with ``headers``
    (OTEL_EXPORTER_OTLP_HEADERS); stopped (SIGTERM, then closed) at the end."""
    ports = {"a": free_port(), "b": free_port()}
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        yaml.safe_dump(
            {
                "event_mesh": {
                    "regions": [{"name": r, "kind": "embedded", "gateway": f"127.0.0.1:{p}"} for r, p in ports.items()],
                    "routing": [{"topic": "orders/*", "regions": ["a", "b"]}],
                    "settings": {"shutdown_grace": "5s"},
                    "security": {"replication_secret": "${" + VARIABLE + "}"},
                }
            },
            sort_keys=False,
        )
    )
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        **sampler,
    }
    if headers:
        env["OTEL_EXPORTER_OTLP_HEADERS"] = headers
    procs = {
        r: ServeProcess(config=mesh, region=r, data_dir=tmp_path / r, extra=("--listen", f"127.0.0.1:{p}"), env=env)
        for r, p in ports.items()
    }
    try:
        for proc in procs.values():
            await proc.start(timeout=60)
        yield procs
    finally:
        for proc in procs.values():
            if proc.proc is not None and proc.proc.returncode is None:
                proc.signal(signal.SIGTERM)
                try:
                    await proc.wait(timeout=20)
                finally:
                    await proc.close()


async def test_one_trace_across_two_regions(tmp_path: Path, otlp_receiver: tuple[Receiver, int]) -> None:
    receiver, otlp_port = otlp_receiver
    await one_trace_across_two_regions(tmp_path, receiver, otlp_port, "grpc")


async def test_one_trace_across_two_regions_over_otlp_http(tmp_path: Path, otlp_http_receiver: HttpReceiver) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf: the spans go to <endpoint>/v1/traces as protobuf,
    with the OTEL_EXPORTER_OTLP_HEADERS (main exported by OTLP/gRPC whatever the protocol, so
    every export to an OTLP/HTTP receiver failed)."""
    receiver = otlp_http_receiver
    await one_trace_across_two_regions(tmp_path, receiver, receiver.port, "http/protobuf")
    assert receiver.paths == {"/v1/traces"}
    assert receiver.content_types == {"application/x-protobuf"}
    assert receiver.header_values("authorization") == {"Bearer s3cret token"}


async def one_trace_across_two_regions(
    tmp_path: Path, receiver: Receiver | HttpReceiver, otlp_port: int, protocol: str
) -> None:
    async with traced_regions(
        tmp_path,
        otlp_port,
        {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
        protocol=protocol,
        headers="Authorization=Bearer%20s3cret%20token",
    ) as procs:
        # The producer's own span: a root the test makes up, sampled.
        trace_id, producer_span = secrets.randbits(128) or 1, secrets.randbits(64) or 1
        traceparent = f"00-{trace_id:032x}-{producer_span:016x}-01"
        async with grpc.aio.insecure_channel(procs["a"].address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            resp = await stub.Publish(
                gateway_pb2.PublishRequest(events=[ev("orders/created", b'{"n": 1}', id="traced-1")]),
                metadata=(("traceparent", traceparent),),
            )
        assert resp.results[0].outcome == event_pb2.OUTCOME_ACCEPTED
        assert list(resp.results[0].route) == ["a", "b"]

        def of_event() -> list[ReceivedSpan]:
            return [s for s in receiver.spans() if _attrs(s.span).get("messaging.message.id") == "traced-1"]

        def complete() -> list[ReceivedSpan] | None:
            spans = of_event()
            names = {(s.region, s.span.name) for s in spans}
            wanted = {("a", "publish orders/created"), ("a", "send orders/created"), ("b", "process orders/created")}
            return spans if wanted <= names else None

        spans = await eventually(complete, 60, what="spans of the event from both regions")

        _assert_one_trace(spans, trace_id)

        by_name = {(s.region, s.span.name): s for s in spans}
        publish = by_name["a", "publish orders/created"]
        send = by_name["a", "send orders/created"]
        process = by_name["b", "process orders/created"]
        # The gateway's publish span is the child of the producer's span.
        assert publish.parent == producer_span.to_bytes(8, "big")
        assert publish.span.kind == trace_pb2.Span.SPAN_KIND_PRODUCER
        publish_attrs = _attrs(publish.span)
        assert publish_attrs["meshgate.outcome"] == "accepted"
        assert publish_attrs["messaging.operation.type"] == "send"
        assert publish_attrs["messaging.operation.name"] == "publish"
        assert publish_attrs["meshgate.route"] == "a,b"
        # Admission and routing, then the write: meshgate.admission_us splits them (an attribute,
        # not a span event: an event per sampled span cost as much again to record and encode).
        assert not publish.span.events
        took_us = (publish.span.end_time_unix_nano - publish.span.start_time_unix_nano) / 1000
        assert 0 <= publish_attrs["meshgate.admission_us"] <= took_us
        # The replicator's forward, then b's dedup and write: b's chain leads back to a's spans.
        assert send.parent == publish.span.span_id
        assert send.span.kind == trace_pb2.Span.SPAN_KIND_PRODUCER
        assert _attrs(send.span)["meshgate.destination"] == "b"
        assert process.parent == send.span.span_id
        assert process.span.kind == trace_pb2.Span.SPAN_KIND_CONSUMER
        assert _attrs(process.span)["meshgate.dedup"] == "stored"
        assert _chain(spans, process) == (
            [("a", "send orders/created"), ("a", "publish orders/created")],
            producer_span,
        )
        # Spans nest in time: the send covers b's processing, the publish starts first.
        assert publish.span.start_time_unix_nano <= send.span.start_time_unix_nano
        assert send.span.start_time_unix_nano <= process.span.start_time_unix_nano
        assert process.span.end_time_unix_nano <= send.span.end_time_unix_nano

        # The stored copies carry the trace in their traceparent extension (the ce-traceparent
        # header): in a the publish span, in b the process span that wrote it there.
        for region, span in (("a", publish), ("b", process)):
            async with grpc.aio.insecure_channel(procs[region].address) as channel:
                stored = await read_all(gateway_pb2_grpc.GatewayStub(channel), "orders/>", expect=1)
            assert [e.id for e in stored] == ["traced-1"]
            tp = stored[0].extensions["traceparent"]
            assert tp == f"00-{trace_id:032x}-{span.span.span_id.hex()}-01"


# --- unit level ----------------------------------------------------------------------------------


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


def test_env_switch() -> None:
    assert not tracing_configured({})
    assert not tracing_configured({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"})
    assert tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert tracing_configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"})
    assert tracing_configured({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing_configured({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"})
    assert not tracing_configured({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"})
    off = Tracing.from_env("a", {})
    assert not off.enabled
    assert off.provider is None


def test_provider_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.01")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    on = Tracing.from_env("eu-central", env)
    try:
        assert on.enabled
        assert on.provider is not None
        assert on.provider.resource.attributes["service.name"] == "meshgate"
        assert on.provider.resource.attributes["cloud.region"] == "eu-central"
        assert "TraceIdRatioBased{0.01}" in on.provider.sampler.get_description()
    finally:
        on.shutdown()
    assert not on.enabled


def _in_memory(region: str = "a") -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(region=region, provider=provider), exporter


def test_per_event_traceparent_wins_over_metadata() -> None:
    tracing, exporter = _in_memory()
    call_tid, call_sid = 0x1234, 0x99
    event_tid, event_sid = 0xABCDEF, 0x42
    call_ctx = tracing.call_context((("traceparent", f"00-{call_tid:032x}-{call_sid:016x}-01"),))
    own = ev(id="own", extensions={"traceparent": f"00-{event_tid:032x}-{event_sid:016x}-01"})
    plain = ev(id="plain")
    trace = tracing.batch(call_ctx)
    trace.start([own, plain])
    trace.end([Exception("broker down"), Exception("broker down")])
    spans = {s.attributes["messaging.message.id"]: s for s in exporter.get_finished_spans()}  # type: ignore[index]
    assert spans["own"].context.trace_id == event_tid
    assert spans["own"].parent.span_id == event_sid  # type: ignore[union-attr]
    assert spans["plain"].context.trace_id == call_tid
    assert spans["plain"].parent.span_id == call_sid  # type: ignore[union-attr]
    assert spans["plain"].kind is SpanKind.PRODUCER
    assert spans["plain"].name == "publish orders/created"
    assert not spans["plain"].status.is_ok
    # The events now carry the publish span's context.
    assert own.extensions["traceparent"] == f"00-{event_tid:032x}-{spans['own'].context.span_id:016x}-01"
    tracing.shutdown()


async def test_off_without_otel_env_does_no_span_work(
    no_otel_env: None, nats_server: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("span work while tracing is off")

    monkeypatch.setattr(Tracing, "batch", forbidden)
    monkeypatch.setattr(Tracing, "start_send", forbidden)
    monkeypatch.setattr(Tracing, "start_process", forbidden)
    monkeypatch.setattr(BatchTrace, "start", forbidden)
    gw = Gateway(config=mesh_for(nats_server), region="here", data_dir=tmp_path, replicate=False)
    assert not gw.tracing.enabled
    assert gw.tracing.provider is None
    await gw.start()
    try:
        async with grpc.aio.insecure_channel(gw.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            tp = "00-0000000000000000000000000000abcd-00000000000000ef-01"
            resp = await stub.Publish(
                gateway_pb2.PublishRequest(events=[ev(id="untraced"), ev(id="own", extensions={"traceparent": tp})]),
                metadata=(("traceparent", tp),),
            )
            assert [r.outcome for r in resp.results] == [event_pb2.OUTCOME_ACCEPTED] * 2
            stored = {e.id: e for e in await read_all(stub, "orders/>", expect=2)}
        # Nothing stamped; a producer's own traceparent travels untouched.
        assert "traceparent" not in stored["untraced"].extensions
        assert stored["own"].extensions["traceparent"] == tp
    finally:
        await gw.stop(grace=1.0)


# --- the one replication path: spans from, and contexts into, raw header lines ---------------------


def test_send_spans_rewrite_the_traceparent_line_of_raw_events() -> None:
    tracing, exporter = _in_memory()
    tid, publish_sid = 0xFEED, 0x51
    stored = header_lines(ev(id="t-1", origin="a", route=["a", "b"], extensions={"traceparent": _tp(tid, publish_sid)}))
    bare = header_lines(ev(id="t-2", origin="a", route=["a", "b"]))
    raw = RawBatch(
        ids=["t-1", "t-2"], topics=["orders/created"] * 2, sequences=[7, 8], headers=[stored, bare], data=[b"{}"] * 2
    )
    spans = tracing.start_send(raw, "b")
    tracing.end_send(spans, {1: "too large"}, duplicates=0)
    finished = {s.attributes["messaging.message.id"]: s for s in exporter.get_finished_spans()}  # type: ignore[index]
    send = finished["t-1"]
    assert send.name == "send orders/created"
    assert send.parent.span_id == publish_sid  # type: ignore[union-attr]
    assert send.context.trace_id == tid
    assert send.attributes["meshgate.outcome"] == "accepted"  # type: ignore[index]
    assert not finished["t-2"].status.is_ok
    # The forwarded lines carry the send span's context: the line replaced in place, or added.
    assert raw.headers[0] == stored.replace(_tp(tid, publish_sid).encode(), _tp(tid, send.context.span_id).encode())
    assert raw.headers[0].count(b"ce-traceparent:") == 1
    new = parse_header_lines(raw.headers[1])["ce-traceparent"]
    root = finished["t-2"].context
    assert new == f"00-{root.trace_id:032x}-{root.span_id:016x}-{root.trace_flags:02x}"
    tracing.shutdown()


@pytest.mark.parametrize(
    ("duplicates", "outcome"),
    [(0, "accepted"), (2, "duplicate"), (1, None)],
    ids=["none", "all", "some"],
)
def test_send_spans_say_the_outcome_only_when_the_answer_tells_it(duplicates: int, outcome: str | None) -> None:
    tracing, exporter = _in_memory()
    lines = [header_lines(ev(id=f"o-{i}", origin="a", route=["a", "b"])) for i in range(2)]
    raw = RawBatch(ids=["o-0", "o-1"], topics=["orders/created"] * 2, sequences=[1, 2], headers=lines, data=[b"{}"] * 2)
    tracing.end_send(tracing.start_send(raw, "b"), {}, duplicates=duplicates)
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    assert [(s.attributes or {}).get("meshgate.outcome") for s in spans] == [outcome] * 2
    tracing.shutdown()


def test_process_spans_stamp_the_lines_written_here() -> None:
    tracing, exporter = _in_memory("b")
    tid, send_sid = 0xBEEF, 0x77
    lines = [
        header_lines(ev(id=f"p-{i}", origin="a", route=["a", "b"], extensions={"traceparent": _tp(tid, send_sid)}))
        for i in range(2)
    ]
    request = replication_pb2.ReplicateRequest(
        source_region="a",
        batch_id=1,
        raw=replication_pb2.RawEvents(
            ids=["p-0", "p-1"], topics=["orders/created"] * 2, sequences=[1, 2], headers=lines, data=[b"{}"] * 2
        ),
    )
    batch = ProcessedBatch(request)
    batch.w_index, batch.w_headers = [1], [lines[1]]  # p-0 a resend, p-1 to be written
    spans = tracing.start_process("a", batch, time.time_ns())
    batch.written = [AppendResult(sequence=42, duplicate=False)]
    tracing.end_process(spans, batch)
    finished = {s.attributes["messaging.message.id"]: s for s in exporter.get_finished_spans()}  # type: ignore[index]
    assert {s.parent.span_id for s in finished.values()} == {send_sid}  # type: ignore[union-attr]
    assert finished["p-0"].attributes["meshgate.dedup"] == "duplicate"  # type: ignore[index]
    assert finished["p-1"].attributes["meshgate.dedup"] == "stored"  # type: ignore[index]
    assert finished["p-1"].kind is SpanKind.CONSUMER
    # The copy written here names the process span that wrote it; the request's lines are unchanged.
    assert parse_header_lines(batch.w_headers[0])["ce-traceparent"] == _tp(tid, finished["p-1"].context.span_id)
    assert request.raw.headers[1] == lines[1]
    tracing.shutdown()


def _tp(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"

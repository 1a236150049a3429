"""OpenTelemetry traces of an event's path: one trace per event, across every region it reaches.

Configured only by the standard ``OTEL_*`` environment variables, per gateway (several
gateways may share a process, as in ``meshgate up``, so nothing is set globally):

* on when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``) is set; off when none is, when
  ``OTEL_TRACES_EXPORTER=none`` or when ``OTEL_SDK_DISABLED=true``. Off means no provider, no
  exporter and no per-event work: the event path checks one flag per batch.
* the OTLP/gRPC exporter reads its endpoint, headers, TLS and timeout from the environment
  itself, the ``BatchSpanProcessor`` its queue and delays (``OTEL_BSP_*``; it never blocks the
  event path, a full queue drops spans), the SDK its sampler (``OTEL_TRACES_SAMPLER`` and
  ``_ARG``, default ``parentbased_always_on``) and resource (``OTEL_SERVICE_NAME``,
  ``OTEL_RESOURCE_ATTRIBUTES``). ``service.name`` defaults to ``meshgate``; ``cloud.region``
  is always the gateway's region.

The span model (messaging semantic conventions, ``messaging.system = nats``):

``{topic} publish`` (PRODUCER, origin region)
    One per admitted event, from the batch's arrival to the broker's ack. Parent: the event's
    ``traceparent`` extension when the producer set one, else the W3C ``traceparent`` of the
    gRPC call's metadata, else none (a new trace). Its context is written into the event's
    ``traceparent`` (and ``tracestate``) extension before the broker write, so it travels in
    the ``ce-traceparent`` broker header: it is the event's creation context.
``{topic} send`` (PRODUCER, origin region, replicator)
    One per event a link forwards, from the forward to the destination's ack of its batch.
    Parent: the stored event's ``traceparent`` (the publish span). The forwarded copy carries
    this span's context: links send events as their broker stored them (raw header lines), and
    the ``ce-traceparent`` line of those bytes is replaced, or added (the origin's stored event
    is never changed).
``{topic} process`` (CONSUMER, destination region)
    One per event of a replicated batch, covering dedup and the write. Parent: the incoming
    event's ``ce-traceparent`` header line (the send span); the copy written here carries this
    span's context in that line. ``meshgate.dedup`` says what happened:
    ``stored``, ``duplicate`` (a resend, or the broker's id window) or ``refused``.

So every region's copy of an event names, in its ``traceparent``, the span that wrote it
there (publish in the origin, process in a destination), and a consumer anywhere continues
the event's one trace: producer -> publish -> send -> process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import NoOpTracer, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meshgate.brokers import AppendResult, BrokerError, RawBatch
from meshgate.brokers._codec import CE_PREFIX, escape_header_value, unescape_header_value
from meshgate.brokers._headers import header_value, set_header
from meshgate.v1 import event_pb2, replication_pb2


class ProcessedBatch(Protocol):
    """What the process spans read of a replicated request once the ingress sorted it
    (``gateway._classify.ProcessedBatch``; a Protocol, as observability sits below gateway)."""

    request: replication_pb2.ReplicateRequest
    refused: list[replication_pb2.RawRefusal]
    w_index: list[int]
    w_headers: list[bytes]
    written: list[AppendResult | BrokerError]


__all__ = ["BatchTrace", "Tracing", "tracing_configured"]

log = logging.getLogger("meshgate.tracing")

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_TRACEPARENT = "traceparent"
_TRACESTATE = "tracestate"
# The extensions as header names (CloudEvents' binary mode, as _codec writes them).
_TRACEPARENT_HEADER = (CE_PREFIX + _TRACEPARENT).encode()
_TRACESTATE_HEADER = (CE_PREFIX + _TRACESTATE).encode()
_PROPAGATOR = TraceContextTextMapPropagator()
_ACCEPTED = event_pb2.OUTCOME_ACCEPTED
_DUPLICATE = event_pb2.OUTCOME_DUPLICATE
_REJECTED = event_pb2.OUTCOME_REJECTED
_PRODUCER = SpanKind.PRODUCER
_CONSUMER = SpanKind.CONSUMER


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and any(environ.get(v) for v in _ENDPOINT_VARS):
        names = ["otlp"]
    return names


def tracing_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces (see the module's docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = _exporter_names(environ)
    return bool(names) and "none" not in names


def _make_exporter(name: str, environ: Mapping[str, str]) -> SpanExporter | None:
    if name == "otlp":
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol and protocol != "grpc":
            log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; traces are exported by OTLP/gRPC", protocol)
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        return OTLPSpanExporter()  # endpoint, headers, TLS, timeout, compression: OTEL_EXPORTER_OTLP_*
    if name == "console":
        return ConsoleSpanExporter()
    log.warning("OTEL_TRACES_EXPORTER=%s is not supported (use otlp, console or none); ignored", name)
    return None


_NAMES: dict[tuple[str, str], str] = {}


def _name(topic: str, operation: str) -> str:
    """``"{topic} {operation}"``, cached: producers reuse a small set of topics."""
    key = (topic, operation)
    name = _NAMES.get(key)
    if name is None:
        if len(_NAMES) >= 16_384:
            _NAMES.clear()
        name = _NAMES[key] = topic + operation
    return name


def _parent_of(ev: event_pb2.Event, default: Context | None) -> Context | None:
    """The context in the event's ``traceparent`` extension, or ``default`` when it has none valid."""
    extensions = ev.extensions
    if _TRACEPARENT not in extensions:
        return default
    carrier = {_TRACEPARENT: extensions[_TRACEPARENT]}
    if _TRACESTATE in extensions:
        carrier[_TRACESTATE] = extensions[_TRACESTATE]
    ctx = _PROPAGATOR.extract(carrier)
    return ctx if ctx else default


def _parent_of_lines(lines: bytes) -> Context | None:
    """The context in raw header lines' ``ce-traceparent`` (and ``ce-tracestate``), if valid."""
    traceparent = header_value(lines, _TRACEPARENT_HEADER)
    if traceparent is None:
        return None
    carrier = {_TRACEPARENT: unescape_header_value(traceparent.decode(errors="replace"))}
    tracestate = header_value(lines, _TRACESTATE_HEADER)
    if tracestate is not None:
        carrier[_TRACESTATE] = unescape_header_value(tracestate.decode(errors="replace"))
    ctx = _PROPAGATOR.extract(carrier)
    return ctx if ctx else None


def _stamp_lines(lines: bytes, span: Span) -> bytes:
    """``_stamp`` on raw header lines: the ``ce-traceparent`` line replaced or added."""
    sc = span.get_span_context()
    lines = set_header(lines, _TRACEPARENT_HEADER, b"00-%032x-%016x-%02x" % (sc.trace_id, sc.span_id, sc.trace_flags))
    if sc.trace_state:
        lines = set_header(lines, _TRACESTATE_HEADER, escape_header_value(sc.trace_state.to_header()).encode())
    return lines


def _stamp(ev: event_pb2.Event, span: Span) -> None:
    """Writes the span's context into the event's ``traceparent`` (and ``tracestate``) extension."""
    sc = span.get_span_context()
    extensions = ev.extensions
    extensions[_TRACEPARENT] = f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"
    if sc.trace_state:
        extensions[_TRACESTATE] = sc.trace_state.to_header()


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail(span: Span, message: str) -> None:
    span.set_status(Status(StatusCode.ERROR, message))
    span.end()


class BatchTrace:
    """The trace side of one published batch: its arrival time and the call's context."""

    __slots__ = ("_tracing", "parent", "spans", "start_ns")

    def __init__(self, tracing: Tracing, parent: Context | None) -> None:
        self._tracing = tracing
        self.parent = parent
        self.start_ns = time.time_ns()
        self.spans: list[Span] = []

    def start(self, events: Sequence[event_pb2.Event]) -> None:
        """Starts a publish span per admitted event and stamps its context on the event."""
        tr = self._tracing
        tracer, region, parent, start = tr.tracer, tr.region, self.parent, self.start_ns
        # The span runs from the batch's arrival: admission and routing, then the broker write;
        # an "admitted" event marks the boundary (child spans per step would double the cost).
        admitted_ns = time.time_ns()
        spans = self.spans
        for ev in events:
            topic = ev.topic
            span = tracer.start_span(
                _name(topic, " publish"), context=_parent_of(ev, parent), kind=_PRODUCER, start_time=start
            )
            if span.is_recording():  # attributes only for sampled spans: the others cost the least
                span.set_attributes(
                    {
                        "messaging.system": "nats",
                        "messaging.operation.type": "send",
                        "messaging.operation.name": "publish",
                        "messaging.destination.name": topic,
                        "messaging.message.id": ev.id,
                        "cloud.region": region,
                        "meshgate.route": ",".join(ev.route),
                    }
                )
                span.add_event("admitted", {"meshgate.route": ",".join(ev.route)}, timestamp=admitted_ns)
            _stamp(ev, span)
            spans.append(span)

    def end(self, outcomes: Sequence[AppendResult | Exception]) -> None:
        """Ends the spans with the broker's answer per event (same order as ``start``)."""
        for span, res in zip(self.spans, outcomes, strict=False):
            if isinstance(res, AppendResult):
                if span.is_recording():
                    span.set_attribute("meshgate.outcome", "duplicate" if res.duplicate else "accepted")
                    span.set_attribute("meshgate.sequence", res.sequence)
                span.end()
            else:
                _fail(span, f"not stored: {res}")
        self.spans = []

    def abandon(self, message: str) -> None:
        """Ends every span still open as failed (the batch ended before the broker answered)."""
        for span in self.spans:
            _fail(span, message)
        self.spans = []


class Tracing:
    """One gateway's tracer; ``enabled`` is False (and everything a no-op) without ``OTEL_*``."""

    def __init__(self, *, region: str, provider: TracerProvider | None = None) -> None:
        self.region = region
        self.provider = provider
        self.enabled = provider is not None
        self.tracer: Tracer = (
            provider.get_tracer("meshgate", schema_url="https://opentelemetry.io/schemas/1.26.0")
            if provider is not None
            else NoOpTracer()
        )

    @classmethod
    def from_env(cls, region: str, environ: Mapping[str, str] | None = None) -> Tracing:
        env = os.environ if environ is None else environ
        if not tracing_configured(env):
            return cls(region=region)
        exporters = [e for e in (_make_exporter(n, env) for n in _exporter_names(env)) if e is not None]
        if not exporters:
            return cls(region=region)
        resource = Resource.create({"cloud.region": region})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "meshgate"}))
        # The sampler comes from OTEL_TRACES_SAMPLER(_ARG); the provider is shut down by the gateway.
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info(
            "region %s: traces on (%s), sampler %s",
            region,
            ", ".join(_exporter_names(env)),
            provider.sampler.get_description(),
        )
        return cls(region=region, provider=provider)

    # --- origin: Publish / PublishStream ---------------------------------------------------

    def call_context(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Context | None:
        """The producer's context from a gRPC call's metadata (W3C ``traceparent``), if any."""
        if not metadata:
            return None
        carrier = {k: v for k, v in metadata if k in (_TRACEPARENT, _TRACESTATE) and isinstance(v, str)}
        if _TRACEPARENT not in carrier:
            return None
        ctx = _PROPAGATOR.extract(carrier)
        return ctx if ctx else None

    def batch(self, parent: Context | None) -> BatchTrace:
        return BatchTrace(self, parent)

    # --- source: a link forwarding a batch -------------------------------------------------

    def start_send(self, raw: RawBatch, destination: str) -> list[Span]:
        """A send span per forwarded event; its header lines then carry the span's context.

        ``raw.headers`` is rewritten in place (the ``ce-traceparent`` line replaced or added):
        the forwarded copy, and a dead letter made of it, carry the send span's context; the
        origin's stored event is never changed.
        """
        tracer, region = self.tracer, self.region
        spans = []
        headers = raw.headers
        for i, lines in enumerate(headers):
            topic = raw.topics[i]
            span = tracer.start_span(_name(topic, " send"), context=_parent_of_lines(lines), kind=_PRODUCER)
            if span.is_recording():
                span.set_attributes(
                    {
                        "messaging.system": "nats",
                        "messaging.operation.type": "send",
                        "messaging.operation.name": "send",
                        "messaging.destination.name": topic,
                        "messaging.message.id": raw.ids[i],
                        "cloud.region": region,
                        "meshgate.destination": destination,
                        "meshgate.origin.sequence": raw.sequences[i],
                    }
                )
            headers[i] = _stamp_lines(lines, span)
            spans.append(span)
        return spans

    @staticmethod
    def end_send(spans: Sequence[Span], refused: Mapping[int, str], *, duplicates: int) -> None:
        """Ends the send spans of an acked batch: ``refused`` by index, ``duplicates`` of the rest.

        The destination counts duplicates per batch, not per event: the outcome attribute says
        ``duplicate`` or ``accepted`` when the whole rest of the batch was one or the other.
        """
        kept = len(spans) - len(refused)
        outcome = "duplicate" if duplicates and duplicates == kept else "accepted" if not duplicates else None
        for i, span in enumerate(spans):
            message = refused.get(i)
            if message is not None:
                _fail(span, f"refused by the destination, dead-lettered: {message}")
                continue
            if outcome is not None and span.is_recording():
                span.set_attribute("meshgate.outcome", outcome)
            span.end()

    @staticmethod
    def abandon(spans: Sequence[Span], message: str) -> None:
        for span in spans:
            _fail(span, message)

    # --- destination: the Replicate handler ------------------------------------------------

    def start_process(self, origin: str, batch: ProcessedBatch, start_ns: int) -> list[Span]:
        """A process span per event of a replicated batch, after dedup classified it.

        Each event to be written has its header lines (``batch.w_headers``) rewritten to carry
        its span's context: the copy stored here names the span that wrote it.
        """
        tracer, region = self.tracer, self.region
        raw = batch.request.raw
        headers, topics, ids, seqs = raw.headers, raw.topics, raw.ids, raw.sequences
        refused = {r.index for r in batch.refused}
        slot_of = {i: k for k, i in enumerate(batch.w_index)}
        w_headers = batch.w_headers
        spans = []
        for i, lines in enumerate(headers):
            topic = topics[i]
            attributes: dict[str, Any] = {
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": topic,
                "messaging.message.id": ids[i],
                "cloud.region": region,
                "meshgate.origin": origin,
                "meshgate.origin.sequence": seqs[i],
            }
            slot = slot_of.get(i)
            if slot is None:
                attributes["meshgate.dedup"] = "refused" if i in refused else "duplicate"
            span = tracer.start_span(
                _name(topic, " process"), context=_parent_of_lines(lines), kind=_CONSUMER, start_time=start_ns
            )
            if span.is_recording():
                span.set_attributes(attributes)
            if slot is not None:
                w_headers[slot] = _stamp_lines(w_headers[slot], span)
            spans.append(span)
        return spans

    @staticmethod
    def end_process(spans: Sequence[Span], batch: ProcessedBatch) -> None:
        """Ends the spans once the batch is applied (its refusals final)."""
        outcome = dict(zip(batch.w_index, batch.written, strict=False))
        refused = {r.index: r.message for r in batch.refused}
        for i, span in enumerate(spans):
            res = outcome.get(i)
            message = refused.get(i)
            if i not in outcome:
                if message is not None:
                    span.set_status(Status(StatusCode.ERROR, message))
                span.end()
            elif isinstance(res, AppendResult):
                if span.is_recording():
                    span.set_attribute("meshgate.dedup", "duplicate" if res.duplicate else "stored")
                    span.set_attribute("meshgate.sequence", res.sequence)
                span.end()
            elif message is not None:  # refused for good by this region's broker
                if span.is_recording():
                    span.set_attribute("meshgate.dedup", "refused")
                _fail(span, message)
            else:
                _fail(span, f"not stored, the source resends it: {res}")

    # --- lifecycle -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Flushes the spans still queued and stops the exporter (blocking)."""
        provider, self.provider = self.provider, None
        self.enabled = False
        if provider is not None:
            provider.shutdown()

    async def aclose(self, timeout: float) -> None:
        """``shutdown`` in a daemon thread, awaited at most ``timeout`` s (a dead collector never holds a stop)."""
        if self.provider is None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def run() -> None:
            try:
                self.shutdown()
            except Exception:
                log.exception("region %s: flushing traces failed", self.region)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                    loop.call_soon_threadsafe(_settle, done)

        threading.Thread(target=run, name=f"otel-shutdown-{self.region}", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            log.warning("region %s: traces not flushed within %.1f s; the rest is dropped", self.region, timeout)

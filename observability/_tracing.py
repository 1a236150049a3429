"""OpenTelemetry traces of an event's path: one trace per event, across every region it reaches.

Configured only by the standard ``OTEL_*`` environment variables, per gateway (several
gateways may share a process, as in ``meshgate up``, so nothing is set globally):

* on when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``) is set; off when none is, when
  ``OTEL_TRACES_EXPORTER=none`` or when ``OTEL_SDK_DISABLED=true``. Off means no provider, no
  exporter and no per-event work: the event path checks one flag per batch.
* ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``, picks the
  transport: ``grpc`` (the default) or ``http/protobuf`` (``http/json`` is sent as
  ``http/protobuf``, the Python SDK has no JSON encoder). The exporter reads its endpoint,
  headers, TLS, timeout and compression from the environment itself, per the OTel
  specification: ``OTEL_EXPORTER_OTLP_ENDPOINT`` is the base URL (HTTP appends
  ``/v1/traces``), ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` the full one, and
  ``OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`` ``key=value`` pairs. The ``BatchSpanProcessor``
  reads its queue and delays (``OTEL_BSP_*``; it never blocks the
  event path, a full queue drops spans; OTLP/gRPC encodes with ``_encode.py``, the SDK's
  encoding with less work per span), the SDK its sampler (``OTEL_TRACES_SAMPLER`` and
  ``_ARG``, default ``parentbased_always_on``) and resource (``OTEL_SERVICE_NAME``,
  ``OTEL_RESOURCE_ATTRIBUTES``). ``service.name`` defaults to ``meshgate``; ``cloud.region``
  is always the gateway's region.

Sampling is decided first, per event and before any span work, from the trace id and the
sampled flag of the event's parent (its ``traceparent``, else the call's, else a new random
trace id): for the SDK's own samplers (``always_on``, ``always_off``, ``traceidratio`` and the
``parentbased_*`` forms) that decision is made here, equal to the SDK's (``fast_decision``);
any other sampler is asked per span by the SDK as before. Only a sampled event gets a span and
has its ``traceparent`` rewritten; an unsampled one costs the decision and is left as it came
(a ``traceparent`` it carries travels unchanged, so later regions with a parent-based sampler
decide alike; one that carries none gets none).

The span model follows the messaging semantic conventions (schema 1.27): names are
``{messaging.operation.name} {destination}``; every span has ``messaging.system`` (``nats``
for NATS and embedded regions, ``kafka`` for Kafka ones: the broker of the span's region),
``messaging.operation.type``, ``messaging.destination.name`` (the topic),
``messaging.message.id``, ``messaging.message.body.size`` (the payload's bytes),
``server.address``/``server.port`` (the broker written to; for ``send`` the destination's
gateway) and ``cloud.region``:

``publish {topic}`` (PRODUCER, origin region)
    One per admitted event that is sampled, from the batch's arrival to the broker's ack. Parent: the event's
    ``traceparent`` extension when the producer set one, else the W3C ``traceparent`` of the
    gRPC call's metadata, else none (a new trace). Its context is written into the event's
    ``traceparent`` (and ``tracestate``) extension before the broker write, so it travels in
    the ``ce-traceparent`` broker header: it is the event's creation context. Also
    ``meshgate.route``, ``meshgate.admission_us`` (from the batch's arrival to the end of
    admission and routing; the broker write takes the rest), ``meshgate.outcome`` and
    ``meshgate.sequence``. Recorded without the SDK's ``Span`` object where the decision is
    made here (``BatchTrace``): the same span, handed to the span processors when it ends.
``send {topic}`` (PRODUCER, origin region, replicator)
    One per sampled event a link forwards, from the forward to the destination's ack of its batch.
    Parent: the stored event's ``traceparent`` (the publish span). The forwarded copy carries
    this span's context: links send events as their broker stored them (raw header lines), and
    the ``ce-traceparent`` line of those bytes is replaced, or added (the origin's stored event
    is never changed).
``process {topic}`` (CONSUMER, destination region)
    One per sampled event of a replicated batch, covering dedup and the write. Parent: the incoming
    event's ``ce-traceparent`` header line (the send span); the copy written here carries this
    span's context in that line. ``meshgate.dedup`` says what happened:
    ``stored``, ``duplicate`` (a resend, or the broker's id window) or ``refused``.

So every region's copy of a sampled event names, in its ``traceparent``, the span that wrote it
there (publish in the origin, process in a destination), and a consumer anywhere continues
the event's one trace: producer -> publish -> send -> process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, StaticSampler, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NoOpTracer,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    get_current_span,
)
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


# OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL values (the OTel specification's); the signal's own wins.
_PROTOCOL_VARS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
OTLP_PROTOCOLS = ("grpc", "http/protobuf", "http/json")


def otlp_protocol(environ: Mapping[str, str]) -> str:
    """The OTLP transport the variables ask for: the traces variable first, then the general
    one; ``grpc`` when neither is set (the default of Python's OTel distribution, and what
    meshgate always used: an endpoint on port 4317 keeps working)."""
    for var in _PROTOCOL_VARS:
        value = environ.get(var, "").strip().lower()
        if value:
            return value
    return "grpc"


def _make_exporter(name: str, environ: Mapping[str, str]) -> SpanExporter | None:
    if name == "otlp":
        protocol = otlp_protocol(environ)
        # Both exporters read their endpoint, headers, TLS, timeout and compression from the
        # OTEL_EXPORTER_OTLP_(TRACES_)* variables themselves; the HTTP one appends /v1/traces to
        # OTEL_EXPORTER_OTLP_ENDPOINT and takes OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as the full URL.
        if protocol == "grpc":
            # The SDK's exporter with a cheaper encoding (_encode.py): it runs in the batch
            # processor's thread, holding the GIL the event loop needs.
            try:
                from meshgate.observability._encode import CachingOTLPSpanExporter  # noqa: PLC0415 - only when exporting
            except ImportError:
                # _encode uses the OTLP exporter's private encoders: where another version moved
                # them, the SDK's own exporter (its own encoding) does the same job.
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
                    OTLPSpanExporter,
                )

                return OTLPSpanExporter()
            return CachingOTLPSpanExporter()
        if protocol in ("http/protobuf", "http/json"):
            if protocol == "http/json":
                # The Python SDK has no JSON encoder; every OTLP/HTTP receiver also takes protobuf.
                log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=http/json is not supported; traces go by http/protobuf")
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415 - only when exporting
                OTLPSpanExporter as HttpExporter,
            )

            return HttpExporter()
        log.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s is not one of %s; no traces are exported",
            protocol,
            ", ".join(OTLP_PROTOCOLS),
        )
        return None
    if name == "console":
        return ConsoleSpanExporter()
    log.warning("OTEL_TRACES_EXPORTER=%s is not supported (use otlp, console or none); ignored", name)
    return None


# The semantic conventions' version whose messaging names the spans follow.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.27.0"


def server_attributes(address: str | None) -> dict[str, Any]:
    """``server.address`` and ``server.port`` of ``host:port``, ``[v6]:port`` or a URL; {} for none."""
    if not address:
        return {}
    parts = urlsplit(address if "://" in address else "//" + address)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number: the address only
        host, port = parts.hostname, None
    if not host:
        return {}
    return {"server.address": host, "server.port": port} if port else {"server.address": host}


# Entries of each per-topic cache (span names, a publish span's topic attributes and their
# bytes): producers reuse a small set of topics; past this many the cache starts over.
_PER_TOPIC_MAX = 16_384
_NAMES: dict[tuple[str, str], str] = {}


def _name(operation: str, topic: str) -> str:
    """``"{operation} {topic}"`` (the messaging conventions' ``{messaging.operation.name}
    {destination}``), cached: producers reuse a small set of topics."""
    key = (operation, topic)
    name = _NAMES.get(key)
    if name is None:
        if len(_NAMES) >= _PER_TOPIC_MAX:
            _NAMES.clear()
        name = _NAMES[key] = operation + topic
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


def _stamp(ev: event_pb2.Event, sc: SpanContext) -> None:
    """Writes a span's context into the event's ``traceparent`` (and ``tracestate``) extension."""
    extensions = ev.extensions
    extensions[_TRACEPARENT] = f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"
    if sc.trace_state:
        extensions[_TRACESTATE] = sc.trace_state.to_header()


# --- the sampling decision, made before any span work ---------------------------------------
#
# At 1 % sampling, ``tracer.start_span`` for every event (context extraction, ids, the sampler,
# a span object) and the header rewrite cost a quarter of ingest. For the SDK's own samplers the
# decision is a pure function of the trace id and the parent's sampled flag, so it is made here
# first, on the traceparent's text; only sampled events then take the SDK's path (which decides
# the same again). Unsampled events get no span and keep the traceparent they carry.

# (trace id, parent sampled: True/False for a remote parent, None for a root) -> sampled
Decide = Callable[[int, bool | None], bool]

# The propagator's own pattern and checks (TraceContextTextMapPropagator.extract): a value it
# rejects is no parent here either.
_TRACEPARENT_RE = re.compile("^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$")
_TRACEPARENT_MAX = 512
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16
_LOW64 = TraceIdRatioBased.TRACE_ID_LIMIT
_SAMPLED = 0x01
_RANDOM_TRACE_ID = 0x02  # W3C level 2's flag, as the SDK sets it


def parse_traceparent(value: str) -> tuple[int, int] | None:
    """The trace id and flags of a W3C ``traceparent`` the propagator would accept, else None."""
    if len(value) > _TRACEPARENT_MAX:
        return None
    m = _TRACEPARENT_RE.match(value)
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID or version == "ff" or (version == "00" and rest):
        return None
    return int(trace_id, 16), int(flags, 16)


_EVERY_ROOT = 1 << 64  # above every 64-bit value
_NEVER = 1 << 62  # a gap no gateway reaches: roots at a ratio of 0


def root_bound(sampler: Sampler) -> int | None:
    """``sampler``'s decision for a root (no parent) as ``low 64 bits of the trace id < bound``.

    The one place a root's decision is made: ``fast_decision`` applies it to parentless
    events, and a root event is decided on it with one comparison (``DecisionIds.draw_root``).
    Only for the SDK's own ``StaticSampler`` (always_on/off), ``TraceIdRatioBased`` and
    ``ParentBased`` of those, unsubclassed in behaviour: their ``should_sample`` reads nothing
    else (not the name, kind or attributes). The first two ignore any parent, so for them this
    is the decision for every trace. None for any other sampler, or one that only records
    (RECORD_ONLY): those keep the SDK's path for every event.
    """
    kind = type(sampler)
    if isinstance(sampler, StaticSampler) and kind.should_sample is StaticSampler.should_sample:
        decision = getattr(sampler, "_decision", None)
        return _EVERY_ROOT if decision is Decision.RECORD_AND_SAMPLE else 0 if decision is Decision.DROP else None
    if isinstance(sampler, TraceIdRatioBased) and kind.should_sample is TraceIdRatioBased.should_sample:
        return int(sampler.bound)
    if isinstance(sampler, ParentBased) and kind.should_sample is ParentBased.should_sample:
        return root_bound(getattr(sampler, "_root", None))  # type: ignore[arg-type]
    return None


def fast_decision(sampler: Sampler) -> Decide | None:
    """``sampler``'s decision as a function of the trace id and a remote parent's sampled flag,
    for the samplers ``root_bound`` knows (and a ``ParentBased`` whose delegates it knows)."""
    if isinstance(sampler, ParentBased) and type(sampler).should_sample is ParentBased.should_sample:
        # Every parent here is remote (extracted from a traceparent): the local delegates never apply.
        root = root_bound(sampler)
        if_sampled = fast_decision(getattr(sampler, "_remote_parent_sampled", None))  # type: ignore[arg-type]
        if_not = fast_decision(getattr(sampler, "_remote_parent_not_sampled", None))  # type: ignore[arg-type]
        if root is None or if_sampled is None or if_not is None:
            return None

        def parent_based(trace_id: int, parent_sampled: bool | None) -> bool:
            if parent_sampled is None:
                return trace_id & _LOW64 < root
            return (if_sampled if parent_sampled else if_not)(trace_id, parent_sampled)

        return parent_based
    bound = root_bound(sampler)
    if bound is None:
        return None

    def below(trace_id: int, parent_sampled: bool | None) -> bool:
        return trace_id & _LOW64 < bound  # exactly TraceIdRatioBased.should_sample (always_on/off: 2**64, 0)

    return below


class DecisionIds(RandomIdGenerator):
    """The provider's id generator: a root span gets the trace id its decision was made on.

    ``Tracing`` decides a root event itself; for a sampled one it hands the trace id over in
    ``pending`` just before ``start_span``, which asks for a trace id only for a root. One
    gateway's tracer runs on one event loop, and nothing awaits between the two.

    A root is sampled with probability ``bound / 2**64`` (``root_bound``), each independently of
    the others. Rather than draw per root, the number of roots until the next sampled one is
    drawn once (geometric: the gaps between independent draws), so an unsampled root costs one
    decrement, and a batch of roots that falls in a gap costs one subtraction (``roots``). A
    sampled root's trace id is drawn below the bound: what ``TraceIdRatioBased`` decides on, so
    every region after this one, deciding on the trace id, decides alike.

    ``rng``: the random source of the decisions (a seeded one in tests); trace and span ids
    otherwise come from the SDK's generator.
    """

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self.pending = 0
        self._rng = rng if rng is not None else random.Random()
        self._bound = -1  # the bound the gap was drawn for
        self._gap = 0  # roots to pass over before the next sampled one

    def _next_gap(self, bound: int) -> int:
        """Roots before the next sampled one: P(k) = (1 - p)**k * p, p = bound / 2**64."""
        if bound <= 0:
            return _NEVER
        p = bound / _EVERY_ROOT
        if p >= 1.0:
            return 0
        # Inverse transform of the geometric law; 1 - random() is in (0, 1], so the log is finite.
        return int(math.log(1.0 - self._rng.random()) / math.log1p(-p))

    def _root_trace_id(self, bound: int) -> int:
        """A trace id whose low 64 bits (all a ratio reads) are below ``bound``: never the invalid 0."""
        rng = self._rng
        low = rng.randrange(min(bound, _EVERY_ROOT))
        return (rng.getrandbits(64) << 64) | low or 1 << 64

    def _gap_for(self, bound: int) -> int:
        """The roots still to pass over at ``bound`` (a new bound, a reload's sampler, draws anew)."""
        if bound != self._bound:
            self._bound, self._gap = bound, self._next_gap(bound)
        return self._gap

    def draw_root(self, bound: int) -> bool:
        """The decision for one new root event (``root_bound``); when sampled, the next root
        span gets the trace id it was decided on (``pending``)."""
        gap = self._gap_for(bound)
        if gap:
            self._gap = gap - 1
            return False
        self.pending = self._root_trace_id(bound)
        self._gap = self._next_gap(bound)
        return True

    def roots(self, n: int, bound: int) -> list[tuple[int, int]]:
        """The decisions for ``n`` new root events at once: (index, trace id) of each sampled one.

        The same decisions, from the same random draws in the same order, as ``n`` calls of
        ``draw_root``; the caller sets ``pending`` to a sampled root's trace id before its span.
        """
        gap = self._gap_for(bound)
        if gap >= n:
            self._gap = gap - n
            return []
        sampled: list[tuple[int, int]] = []
        i = gap
        while i < n:
            sampled.append((i, self._root_trace_id(bound)))
            i += 1 + self._next_gap(bound)
        self._gap = i - n
        return sampled

    def generate_trace_id(self) -> int:
        trace_id = self.pending
        if trace_id:
            self.pending = 0
            return trace_id
        return super().generate_trace_id()


# Span limits a light span keeps without checking (a publish span has 14 attributes, short
# values of its own): the SDK's defaults. A provider with tighter ones keeps the SDK's Span.
_LIGHT_MIN_ATTRIBUTES = 16


def _light_sink(provider: TracerProvider | None) -> SpanProcessor | None:
    """The provider's span processors, for spans ended without an SDK ``Span``; None when it
    has no such attribute (another SDK version: the SDK's path then) or limits spans more
    tightly than a publish span needs."""
    sink = getattr(provider, "_active_span_processor", None)
    limits = getattr(provider, "_span_limits", None)
    if not isinstance(sink, SpanProcessor) or not isinstance(limits, SpanLimits):
        return None
    if limits.max_span_attribute_length is not None:
        return None
    if limits.max_span_attributes is not None and limits.max_span_attributes < _LIGHT_MIN_ATTRIBUTES:
        return None
    return sink


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail(span: Span, message: str) -> None:
    span.set_status(Status(StatusCode.ERROR, message))
    span.end()


class _Publish:
    """A sampled publish span recorded without the SDK's ``Span`` (see ``BatchTrace``): the values
    its attributes are made of, then, as it ends, the broker's answer, its status and times.
    Written as a ``ReadableSpan`` when it ends, or (``Tracing.encoding``) in OTLP bytes with the
    spans ended around it (``Tracing._defer``)."""

    __slots__ = ("context", "end_ns", "index", "name", "parent", "result", "start_ns", "status", "values")

    def __init__(
        self, index: int, name: str, context: SpanContext, parent: SpanContext | None, values: _PublishValues
    ) -> None:
        self.index = index
        self.name = name
        self.context = context
        self.parent = parent
        self.values = values
        self.result: tuple[str, int] | None = None  # (outcome, sequence) of a stored event
        self.status = _UNSET
        self.start_ns = self.end_ns = 0


# (messaging.destination.name, messaging.message.id, messaging.message.body.size, meshgate.route,
# meshgate.admission_us) of a publish span on the encoded path.
_PublishValues = tuple[str, str, int, str, int]


def _publish_pairs(values: _PublishValues, result: tuple[str, int] | None) -> list[tuple[str, Any]]:
    """A publish span's attributes beyond the topic's own (``Tracing.publish_attributes``), in order."""
    _, event_id, size, route, admission_us = values
    pairs: list[tuple[str, Any]] = [
        ("messaging.message.id", event_id),
        ("messaging.message.body.size", size),
        ("meshgate.route", route),
        ("meshgate.admission_us", admission_us),
    ]
    if result is not None:
        pairs += (("meshgate.outcome", result[0]), ("meshgate.sequence", result[1]))
    return pairs


# Ended publish spans wait, on the encoded path, until this many are there or this long has
# passed since the first: encoded together, while the code and data they need are in the CPU's
# caches (one at a time, 1 in 100 events apart, each found them cold: 2-9 times the cost).
_PENDING_SPANS = 64
_PENDING_SECONDS = 0.5

_UNSET = Status(StatusCode.UNSET)


@dataclasses.dataclass(frozen=True, slots=True)
class _Encoding:
    """The publish spans' encoded path (``observability._encode``): ended spans encoded on the
    loop, a few dozen at a time (``Tracing._defer``), and handed to the batch processors as
    ``EncodedSpan``s."""

    span: Callable[..., bytes]  # span_bytes
    attribute: Callable[[str, Any], bytes]
    attributes: Callable[[Mapping[str, Any]], bytes]
    encoded: Callable[[SpanContext, bytes, Resource, InstrumentationScope | None], Any]
    producer: int  # the OTLP value of SpanKind.PRODUCER


def _encoding(sink: SpanProcessor | None) -> _Encoding | None:
    """The encoded path when every processor of ``sink`` is a batch processor whose exporter
    takes ``EncodedSpan``s (``CachingOTLPSpanExporter``); None otherwise (another exporter, as
    the console's or a test's, reads the SDK's spans)."""
    processors = getattr(sink, "_span_processors", None)
    if not isinstance(processors, tuple) or not processors:
        return None
    for processor in processors:
        exporter = getattr(getattr(processor, "_batch_processor", None), "_exporter", None)
        if not isinstance(processor, BatchSpanProcessor) or getattr(exporter, "takes_encoded", False) is not True:
            return None
    # Imported here, as _make_exporter does: an exporter that takes EncodedSpans is _encode's own,
    # so the module has loaded by now (where it cannot, no exporter is it and this is not reached).
    from meshgate.observability._encode import (  # noqa: PLC0415 - only when exporting over OTLP/gRPC
        SPAN_KIND_PRODUCER,
        EncodedSpan,
        attribute_bytes,
        attributes_bytes,
        span_bytes,
    )

    return _Encoding(span_bytes, attribute_bytes, attributes_bytes, EncodedSpan, SPAN_KIND_PRODUCER)


class BatchTrace:
    """The trace side of one published batch: its arrival time and the call's context.

    A sampled event's publish span is, when the decision was made here (``fast_decision``)
    and the provider is one ``Tracing`` can hand spans to (``Tracing.sink``), not an SDK
    ``Span``: its context, attributes and times are kept in a ``_Publish`` and handed to the
    provider's span processors as one finished ``ReadableSpan`` when the broker answers. The
    SDK's ``Span`` takes ~25 us per sampled event on the event loop (the sampler again, locks,
    attribute validation per key, bounded lists) for what is known up front here: the same
    span, with the same ids, flags, parent, resource and scope, for a fifth of that. Not
    called for it: the processors' ``on_start`` and ``_on_ending`` (the batch processor's do
    nothing) and the SDK's own span metrics (off unless a meter provider is given to it).

    Where every exporter takes them (the OTLP/gRPC one, ``Tracing.encoding``), a sampled
    span keeps only the values its attributes are made of, and ended spans are written in OTLP
    bytes on the loop, up to 64 at a time (``Tracing._defer``), and handed on as
    ``observability._encode.EncodedSpan``s: no ``ReadableSpan`` is built, and the batch
    processor's thread, which holds the GIL the loop needs while it encodes, only joins them.
    """

    __slots__ = ("_call", "_call_sc", "_tracing", "light", "parent", "spans", "start_ns")

    def __init__(self, tracing: Tracing, parent: Context | None) -> None:
        self._tracing = tracing
        self.parent = parent
        self.start_ns = time.time_ns()
        # A publish span per sampled event, by its index in the batch: SDK spans, or light ones.
        self.spans: list[tuple[int, Span]] = []
        self.light: list[_Publish] = []
        # The call's parent, read once per batch: as (trace id, flags) for the decision.
        self._call: tuple[int, int] | None = None
        self._call_sc: SpanContext | None = None
        if parent is not None:
            sc = get_current_span(parent).get_span_context()
            if sc.is_valid:
                self._call = (sc.trace_id, int(sc.trace_flags))
                self._call_sc = sc

    def start(self, events: Sequence[event_pb2.Event], *, own_traceparents: bool = True) -> None:
        """Starts a publish span per admitted event that is sampled and stamps its context on it.

        The decision comes first (see ``fast_decision``): an unsampled event gets no span and is
        not changed, a ``traceparent`` of its own travels as the producer set it.
        ``own_traceparents``: False when no event of the batch carries extensions (admission
        knows), so none has a traceparent of its own: the batch is then decided as a whole.
        """
        tr = self._tracing
        decide, ids = tr.decide, tr.ids
        # The span runs from the batch's arrival: admission and routing, then the broker write;
        # ``meshgate.admission_us`` says where the boundary was (an event or child spans per
        # step would cost as much again per sampled event).
        admitted_ns = time.time_ns()
        if decide is None:
            for i, ev in enumerate(events):
                self._open(i, ev, admitted_ns)
            return
        light = tr.sink is not None
        # An event without a valid traceparent of its own is the call's child: one decision per batch.
        call = self._call
        call_sampled = None if call is None else decide(call[0], bool(call[1] & _SAMPLED))
        bound = tr.root_bound
        if not own_traceparents:
            # No event has a traceparent of its own: each is the call's child, or a root.
            if call_sampled is not None:
                if call_sampled:
                    for i, ev in enumerate(events):
                        self._span(i, ev, admitted_ns, light=light, own=False)
                return
            if ids is not None:
                # Only the sampled roots are visited: an unsampled one costs nothing here.
                for i, trace_id in ids.roots(len(events), bound):
                    ids.pending = trace_id
                    self._span(i, events[i], admitted_ns, light=light, own=False)
                return
        for i, ev in enumerate(events):
            extensions = ev.extensions
            own = parse_traceparent(extensions[_TRACEPARENT]) if _TRACEPARENT in extensions else None
            if own is not None:
                sampled = decide(own[0], bool(own[1] & _SAMPLED))
            elif call_sampled is not None:
                sampled = call_sampled
            else:  # a root; without DecisionIds the SDK draws its trace id, so it decides in start_span
                sampled = ids is None or ids.draw_root(bound)
            if sampled:
                self._span(i, ev, admitted_ns, light=light, own=own is not None)

    def _span(self, i: int, ev: event_pb2.Event, admitted_ns: int, *, light: bool, own: bool) -> None:
        if light:  # (a sink implies DecisionIds: a root's trace id is the one decided on)
            self._record(i, ev, admitted_ns, own)
        else:
            self._open(i, ev, admitted_ns)

    def _values(self, ev: event_pb2.Event, admitted_ns: int) -> _PublishValues:
        return (ev.topic, ev.id, len(ev.data), ",".join(ev.route), (admitted_ns - self.start_ns) // 1000)

    def _attributes(self, ev: event_pb2.Event, admitted_ns: int) -> dict[str, Any]:
        values = self._values(ev, admitted_ns)
        return {**self._tracing.publish_attributes(values[0]), **dict(_publish_pairs(values, None))}

    def _open(self, i: int, ev: event_pb2.Event, admitted_ns: int) -> None:
        """The SDK's path: a ``Span`` (its sampler decides, for a sampler ``fast_decision`` does not know)."""
        span = self._tracing.tracer.start_span(
            _name("publish ", ev.topic), context=_parent_of(ev, self.parent), kind=_PRODUCER, start_time=self.start_ns
        )
        if span.is_recording():  # attributes only for sampled spans: the others cost the least
            span.set_attributes(self._attributes(ev, admitted_ns))
        _stamp(ev, span.get_span_context())
        self.spans.append((i, span))

    def _record(self, i: int, ev: event_pb2.Event, admitted_ns: int, own: bool) -> None:
        """A sampled event's span as the SDK would start it (``Tracer.start_span``), kept light."""
        tr = self._tracing
        parent = self._call_sc
        if own:  # the event's own traceparent, valid (parsed above), with its tracestate
            parent = get_current_span(_parent_of(ev, None)).get_span_context()
        if parent is None:  # a root: the trace id the decision was made on (DecisionIds.pending)
            trace_id = tr.id_generator.generate_trace_id()
            flags, state = tr.root_flags, None
        else:
            trace_id, state = parent.trace_id, parent.trace_state
            flags = _SAMPLED | (int(parent.trace_flags) & tr.random_flag)
        context = SpanContext(
            trace_id,
            tr.id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=state,
        )
        values = self._values(ev, admitted_ns)
        self.light.append(_Publish(i, _name("publish ", values[0]), context, parent, values))
        _stamp(ev, context)

    def _finish(self, p: _Publish, status: Status) -> None:
        tr = self._tracing
        sink = tr.sink
        if sink is None:  # shut down meanwhile
            return
        p.status, p.start_ns, p.end_ns = status, self.start_ns, time.time_ns()
        if tr.encoding is not None:
            tr._defer(p)
            return
        sink.on_end(
            ReadableSpan(
                name=p.name,
                context=p.context,
                parent=p.parent,
                resource=tr.resource,
                attributes={**tr.publish_attributes(p.values[0]), **dict(_publish_pairs(p.values, p.result))},
                kind=_PRODUCER,
                status=status,
                start_time=p.start_ns,
                end_time=p.end_ns,
                instrumentation_scope=tr.scope,
            )
        )

    def end(self, outcomes: Sequence[AppendResult | Exception]) -> None:
        """Ends the spans with the broker's answer per event (same order as ``start``)."""
        n = len(outcomes)
        for p in self.light:
            if p.index >= n:
                continue
            res = outcomes[p.index]
            if isinstance(res, AppendResult):
                p.result = ("duplicate" if res.duplicate else "accepted", res.sequence)
                self._finish(p, _UNSET)
            else:
                self._finish(p, Status(StatusCode.ERROR, f"not stored: {res}"))
        self.light = []
        for i, span in self.spans:
            if i >= n:
                continue
            res = outcomes[i]
            if isinstance(res, AppendResult):
                if span.is_recording():  # a custom sampler's unsampled spans: no attributes to build
                    span.set_attributes(
                        {
                            "meshgate.outcome": "duplicate" if res.duplicate else "accepted",
                            "meshgate.sequence": res.sequence,
                        }
                    )
                span.end()
            else:
                _fail(span, f"not stored: {res}")
        self.spans = []

    def abandon(self, message: str) -> None:
        """Ends every span still open as failed (the batch ended before the broker answered)."""
        for p in self.light:
            self._finish(p, Status(StatusCode.ERROR, message))
        self.light = []
        for _, span in self.spans:
            _fail(span, message)
        self.spans = []


class Tracing:
    """One gateway's tracer; ``enabled`` is False (and everything a no-op) without ``OTEL_*``."""

    def __init__(self, *, region: str, provider: TracerProvider | None = None, system: str = "nats") -> None:
        self.region = region
        self.system = system
        # On every span: the messaging system of this region's broker and the region; with the
        # broker's address (``set_broker_address``) on the spans that write to it.
        self.base_attributes: dict[str, Any] = {"messaging.system": system, "cloud.region": region}
        self.broker_attributes: dict[str, Any] = dict(self.base_attributes)
        self.provider = provider
        self.enabled = provider is not None
        # The decision before any span work (None: an unknown sampler, the SDK decides per span);
        # root events need the provider's DecisionIds for it (else the SDK decides those).
        self.decide: Decide | None = fast_decision(provider.sampler) if provider is not None else None
        ids = provider.id_generator if provider is not None else None
        self.ids: DecisionIds | None = ids if isinstance(ids, DecisionIds) else None
        # A root event's decision (read only where ``decide`` is set, which implies a bound).
        self.root_bound = (root_bound(provider.sampler) if provider is not None else None) or 0
        self.tracer: Tracer = (
            provider.get_tracer("meshgate", schema_url=SCHEMA_URL) if provider is not None else NoOpTracer()
        )
        # Where sampled publish spans go without an SDK Span (BatchTrace): the provider's span
        # processors, when the decision is made here and spans need nothing the SDK adds.
        light = self.decide is not None and self.ids is not None
        self.sink: SpanProcessor | None = _light_sink(provider) if light else None
        self.resource = provider.resource if provider is not None else Resource.get_empty()
        self.scope: InstrumentationScope | None = getattr(self.tracer, "_instrumentation_scope", None)
        if self.scope is None:  # another SDK version: its spans would lose their scope, keep its Span
            self.sink = None
        # Publish spans encoded as they end, where every exporter takes them so (``_Encoding``).
        self.encoding: _Encoding | None = _encoding(self.sink) if self.sink is not None else None
        self.id_generator: IdGenerator = self.ids or RandomIdGenerator()
        # A root span's flags, as Tracer.start_span sets them: sampled, and W3C level 2's
        # random-trace-id flag when the id generator says its ids are random.
        # The flag came with opentelemetry-sdk 1.42; before, a span's flags are its sampled bit alone.
        is_random = getattr(self.id_generator, "is_trace_id_random", None)
        self.random_flag = _RANDOM_TRACE_ID if callable(is_random) else 0
        self.root_flags = _SAMPLED | (_RANDOM_TRACE_ID if callable(is_random) and is_random() else 0)
        # The publish spans' attributes that depend on the topic only, built once per topic
        # (and encoded, for the encoded path).
        self._publish_attributes: dict[str, dict[str, Any]] = {}
        self._publish_attribute_bytes: dict[str, bytes] = {}
        # Ended publish spans of the encoded path not yet encoded (``_defer``).
        self._pending: list[_Publish] = []
        self._pending_timer: asyncio.TimerHandle | None = None

    def set_broker_address(self, address: str | None) -> None:
        """``server.address``/``server.port`` of the publish and process spans: the broker they
        write to (``host:port`` or a URL; the first of the region's brokers, the embedded
        server's once it runs)."""
        self.broker_attributes = {**self.base_attributes, **server_attributes(address)}
        self._publish_attributes = {}
        self._publish_attribute_bytes = {}

    def publish_attributes(self, topic: str) -> dict[str, Any]:
        """A publish span's attributes that are the same for every event of ``topic`` (not to be changed)."""
        attributes = self._publish_attributes.get(topic)
        if attributes is None:
            if len(self._publish_attributes) >= _PER_TOPIC_MAX:
                self._publish_attributes.clear()
            attributes = self._publish_attributes[topic] = {
                **self.broker_attributes,
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": topic,
            }
        return attributes

    def publish_attribute_bytes(self, topic: str) -> bytes:
        """``publish_attributes(topic)`` encoded (the encoded path only)."""
        data = self._publish_attribute_bytes.get(topic)
        if data is None:
            assert self.encoding is not None  # called on the encoded path only
            if len(self._publish_attribute_bytes) >= _PER_TOPIC_MAX:
                self._publish_attribute_bytes.clear()
            data = self._publish_attribute_bytes[topic] = self.encoding.attributes(self.publish_attributes(topic))
        return data

    def _defer(self, p: _Publish) -> None:
        """Keeps an ended publish span of the encoded path to encode with the ones that follow
        (``_PENDING_SPANS``, ``_PENDING_SECONDS``); at once where no event loop runs here."""
        pending = self._pending
        pending.append(p)
        if len(pending) >= _PENDING_SPANS:
            self._encode_pending()
        elif len(pending) == 1:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._encode_pending()
                return
            self._pending_timer = loop.call_later(_PENDING_SECONDS, self._pending_due)

    def _pending_due(self) -> None:
        self._pending_timer = None
        self._encode_pending()

    def _encode_pending(self) -> None:
        """Encodes the publish spans kept by ``_defer`` and hands them to the span processors."""
        timer, self._pending_timer = self._pending_timer, None
        if timer is not None:
            timer.cancel()
        pending, self._pending = self._pending, []
        enc, sink = self.encoding, self.sink
        if not pending or enc is None or sink is None:
            return
        attribute, span, encoded, producer = enc.attribute, enc.span, enc.encoded, enc.producer
        resource, scope = self.resource, self.scope
        for p in pending:
            attributes = self.publish_attribute_bytes(p.values[0]) + b"".join(
                [attribute(key, value) for key, value in _publish_pairs(p.values, p.result)]
            )
            data = span(p.context, p.parent, p.name, producer, p.start_ns, p.end_ns, attributes, p.status)
            sink.on_end(encoded(p.context, data, resource, scope))

    @classmethod
    def from_env(cls, region: str, environ: Mapping[str, str] | None = None, *, system: str = "nats") -> Tracing:
        """``system``: ``messaging.system`` of the region's broker (``nats``, ``kafka``)."""
        env = os.environ if environ is None else environ
        if not tracing_configured(env):
            return cls(region=region, system=system)
        exporters = [e for e in (_make_exporter(n, env) for n in _exporter_names(env)) if e is not None]
        if not exporters:
            return cls(region=region, system=system)
        resource = Resource.create({"cloud.region": region})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "meshgate"}))
        # The sampler comes from OTEL_TRACES_SAMPLER(_ARG); the provider is shut down by the gateway.
        provider = TracerProvider(resource=resource, shutdown_on_exit=False, id_generator=DecisionIds())
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info(
            "region %s: traces on (%s, OTLP over %s), sampler %s",
            region,
            ", ".join(_exporter_names(env)),
            otlp_protocol(env),
            provider.sampler.get_description(),
        )
        return cls(region=region, provider=provider, system=system)

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

    def _lines_sampled(self, lines: bytes, decide: Decide) -> bool:
        """The decision for an event as raw header lines, before any span work."""
        traceparent = header_value(lines, _TRACEPARENT_HEADER)
        if traceparent is not None:
            parsed = parse_traceparent(unescape_header_value(traceparent.decode(errors="replace")))
            if parsed is not None:
                return decide(parsed[0], bool(parsed[1] & _SAMPLED))
        # A root; without DecisionIds the SDK draws its trace id, so it decides in start_span.
        return self.ids is None or self.ids.draw_root(self.root_bound)

    def start_send(self, raw: RawBatch, destination: str, *, address: str | None = None) -> list[Span | None]:
        """A send span per forwarded event that is sampled; its header lines then carry the span's context.

        ``raw.headers`` is rewritten in place (the ``ce-traceparent`` line replaced or added):
        the forwarded copy, and a dead letter made of it, carry the send span's context; the
        origin's stored event is never changed. An unsampled event (None in the list) keeps
        its lines; the list is empty when no event is sampled. ``address``: the destination
        gateway's (``server.address``/``server.port``: the server the send talks to).
        """
        tracer, decide = self.tracer, self.decide
        spans: list[Span | None] = []
        sampled = 0
        headers = raw.headers
        for i, lines in enumerate(headers):
            if decide is not None and not self._lines_sampled(lines, decide):
                spans.append(None)
                continue
            sampled += 1
            topic = raw.topics[i]
            span = tracer.start_span(_name("send ", topic), context=_parent_of_lines(lines), kind=_PRODUCER)
            if span.is_recording():
                span.set_attributes(
                    {
                        **self.base_attributes,
                        **server_attributes(address),
                        "messaging.operation.type": "send",
                        "messaging.operation.name": "send",
                        "messaging.destination.name": topic,
                        "messaging.message.id": raw.ids[i],
                        "messaging.message.body.size": len(raw.data[i]),
                        "meshgate.destination": destination,
                        "meshgate.origin.sequence": raw.sequences[i],
                    }
                )
            headers[i] = _stamp_lines(lines, span)
            spans.append(span)
        return spans if sampled else []

    @staticmethod
    def end_send(spans: Sequence[Span | None], refused: Mapping[int, str], *, duplicates: int) -> None:
        """Ends the send spans of an acked batch: ``refused`` by index, ``duplicates`` of the rest.

        The destination counts duplicates per batch, not per event: the outcome attribute says
        ``duplicate`` or ``accepted`` when the whole rest of the batch was one or the other.
        """
        kept = len(spans) - len(refused)
        outcome: str | None = None  # some of each
        if duplicates == 0:
            outcome = "accepted"
        elif duplicates == kept:
            outcome = "duplicate"
        for i, span in enumerate(spans):
            if span is None:
                continue
            message = refused.get(i)
            if message is not None:
                _fail(span, f"refused by the destination, dead-lettered: {message}")
                continue
            if outcome is not None and span.is_recording():
                span.set_attribute("meshgate.outcome", outcome)
            span.end()

    @staticmethod
    def abandon(spans: Sequence[Span | None], message: str) -> None:
        for span in spans:
            if span is not None:
                _fail(span, message)

    # --- destination: the Replicate handler ------------------------------------------------

    def start_process(self, origin: str, batch: ProcessedBatch, start_ns: int) -> list[Span | None]:
        """A process span per sampled event of a replicated batch, after dedup classified it.

        Each sampled event to be written has its header lines (``batch.w_headers``) rewritten to
        carry its span's context: the copy stored here names the span that wrote it. An
        unsampled event (None in the list) keeps its lines; the list is empty when none is sampled.
        """
        tracer, decide = self.tracer, self.decide
        raw = batch.request.raw
        headers, topics, ids, seqs, datas = raw.headers, raw.topics, raw.ids, raw.sequences, raw.data
        refused = {r.index for r in batch.refused}
        slot_of = {i: k for k, i in enumerate(batch.w_index)}
        w_headers = batch.w_headers
        spans: list[Span | None] = []
        sampled = 0
        for i, lines in enumerate(headers):
            if decide is not None and not self._lines_sampled(lines, decide):
                spans.append(None)
                continue
            sampled += 1
            topic = topics[i]
            attributes: dict[str, Any] = {
                **self.broker_attributes,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": topic,
                "messaging.message.id": ids[i],
                "messaging.message.body.size": len(datas[i]),
                "meshgate.origin": origin,
                "meshgate.origin.sequence": seqs[i],
            }
            slot = slot_of.get(i)
            if slot is None:
                attributes["meshgate.dedup"] = "refused" if i in refused else "duplicate"
            span = tracer.start_span(
                _name("process ", topic), context=_parent_of_lines(lines), kind=_CONSUMER, start_time=start_ns
            )
            if span.is_recording():
                span.set_attributes(attributes)
            if slot is not None:
                w_headers[slot] = _stamp_lines(w_headers[slot], span)
            spans.append(span)
        return spans if sampled else []

    @staticmethod
    def end_process(spans: Sequence[Span | None], batch: ProcessedBatch) -> None:
        """Ends the spans once the batch is applied (its refusals final)."""
        outcome = dict(zip(batch.w_index, batch.written, strict=False))
        refused = {r.index: r.message for r in batch.refused}
        for i, span in enumerate(spans):
            if span is None:
                continue
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
        self._encode_pending()
        provider, self.provider = self.provider, None
        self.enabled = False
        self.sink = None
        if provider is not None:
            provider.shutdown()

    async def aclose(self, timeout: float) -> None:
        """``shutdown`` in a daemon thread, awaited at most ``timeout`` s (a dead collector never holds a stop)."""
        if self.provider is None:
            return
        self._encode_pending()  # here, on the loop that kept them
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

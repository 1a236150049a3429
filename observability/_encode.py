"""OTLP encoding of spans for the gRPC exporter: the SDK's ``encode_spans``, with less work per span.

The exporter encodes in the ``BatchSpanProcessor``'s thread, which holds the GIL meanwhile: at
1 % sampling that thread took about as much of the gateway's CPU as the sampled spans themselves
(~30 us per publish span, most of it building a ``Span``, and a ``KeyValue`` and an ``AnyValue``
for each of its 14 attributes, as Python protobuf objects). Here a span is written straight in
the protobuf wire format: its fixed fields with a few byte joins, and each attribute as bytes,
kept per value for the attributes that repeat from span to span (``messaging.system``,
``cloud.region``, ``server.address``, the operation, the destination, the route, the outcome).
The batch's bytes are parsed once, in C, into the ``ExportTraceServiceRequest`` the exporter
sends. It is the request ``encode_spans`` builds, field for field (a test compares them); a span
with events or links (none of the gateway's have any) is encoded by protobuf objects as there.

The gateway's publish spans do not wait for that thread: where every exporter of the provider
is this one, they are written by ``span_bytes`` on the event loop, a few dozen at a time as they
end, and handed to the batch processor as ``EncodedSpan``s (``_tracing.Tracing._defer``). With the spans' times and ids
fixed, that request is the SDK's own encoding of the SDK's spans, byte for byte (a test).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_instrumentation_scope,
    _encode_key_value,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import (
    _SPAN_KIND_MAP,
    _encode_events,
    _encode_links,
    _encode_parent_id,
    _encode_status,
    _encode_trace_state,
    _span_flags,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind
from opentelemetry.trace.status import Status

__all__ = [
    "SPAN_KIND_PRODUCER",
    "CachingOTLPSpanExporter",
    "EncodedSpan",
    "attribute_bytes",
    "attributes_bytes",
    "encode_spans",
    "span_bytes",
]

# Attributes whose values repeat from span to span: their bytes are kept per value.
_REPEATED = frozenset(
    {
        "messaging.system",
        "messaging.operation.type",
        "messaging.operation.name",
        "messaging.destination.name",
        "server.address",
        "server.port",
        "cloud.region",
        "meshgate.route",
        "meshgate.outcome",
        "meshgate.dedup",
        "meshgate.destination",
        "meshgate.origin",
    }
)
# The OTLP value of a producer span's kind (the gateway's publish spans).
SPAN_KIND_PRODUCER: int = _SPAN_KIND_MAP[SpanKind.PRODUCER]
_CACHE_MAX = 4096  # a bound for many topics or routes; cleared when reached
_cache: dict[tuple[str, type, Any], bytes] = {}

_U64 = (1 << 64) - 1
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
# Tags (field number << 3 | wire type) of the fields written here.
_TRACE_ID = b"\x0a\x10"  # Span.trace_id, 16 bytes
_SPAN_ID = b"\x12\x08"  # Span.span_id, 8 bytes
_TRACE_STATE = b"\x1a"
_PARENT_SPAN_ID = b"\x22\x08"
_NAME = b"\x2a"
_KIND = b"\x30"
_START = b"\x39"  # fixed64
_END = b"\x41"  # fixed64
_ATTRIBUTE = b"\x4a"
_STATUS = b"\x7a"
_FLAGS = b"\x85\x01"  # field 16, fixed32
_STATUS_MESSAGE = b"\x12"
_STATUS_CODE = b"\x18"
_KV_KEY = b"\x0a"
_KV_VALUE = b"\x12"
_ANY_STRING = b"\x0a"
_ANY_BOOL = b"\x10"
_ANY_INT = b"\x18"
_SPANS = b"\x12"  # ScopeSpans.spans
_SCOPE_SPANS = b"\x12"  # ResourceSpans.scope_spans
_RESOURCE_SPANS = b"\x0a"  # ExportTraceServiceRequest.resource_spans
_EMPTY_STATUS = _STATUS + b"\x00"
# Span.flags, as the SDK's _span_flags sets them: of a span with a remote parent, and of any other.
_FLAGS_REMOTE = _FLAGS + _FIXED32(_span_flags(SpanContext(1, 1, is_remote=True)))
_FLAGS_LOCAL = _FLAGS + _FIXED32(_span_flags(None))


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes | None:
    """An ``AnyValue`` of a str, bool or int (a oneof member: written even when zero or empty)."""
    kind = type(value)
    if kind is str:
        data: bytes = value.encode()
        return _ANY_STRING + _varint(len(data)) + data
    if kind is bool:
        return _ANY_BOOL + (b"\x01" if value else b"\x00")
    if kind is int:
        return _ANY_INT + _varint(value & _U64)  # int64: a negative one as its two's complement
    return None


# Each attribute key's own field (``KeyValue.key``), made once per key.
_KEYS: dict[str, bytes] = {}


def _attribute(key: str, value: Any) -> bytes:
    """A ``Span.attributes`` field: the ``KeyValue`` of ``key`` and ``value``."""
    any_value = _any_value(value)
    if any_value is None:  # every other type: the SDK's encoding
        kv = _encode_key_value(key, value).SerializeToString()
    else:
        key_field = _KEYS.get(key)
        if key_field is None:
            if len(_KEYS) >= _CACHE_MAX:
                _KEYS.clear()
            key_field = _KEYS[key] = _field(_KV_KEY, key.encode())
        kv = b"%b%b%b%b" % (key_field, _KV_VALUE, _varint(len(any_value)), any_value)
    return b"%b%b%b" % (_ATTRIBUTE, _varint(len(kv)), kv)


def attribute_bytes(key: str, value: Any) -> bytes:
    """A ``Span.attributes`` field, its bytes kept per value for the attributes that repeat."""
    if key not in _REPEATED:
        return _attribute(key, value)
    # The type is part of the key: True == 1, and they encode differently.
    entry = (key, type(value), value)
    data = _cache.get(entry)
    if data is None:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        data = _cache[entry] = _attribute(key, value)
    return data


def attributes_bytes(attributes: Mapping[str, Any]) -> bytes:
    """``Span.attributes`` fields of every attribute of ``attributes``, in its order."""
    return b"".join([attribute_bytes(key, value) for key, value in attributes.items()])


def _span(span: ReadableSpan) -> bytes:
    """A ``Span`` as ``trace_encoder._encode_span`` builds it, serialized."""
    if span.events or span.links or span.dropped_attributes or span.dropped_events or span.dropped_links:
        return _pb_span(span).SerializeToString()
    sc = span.get_span_context()
    assert sc is not None  # every span the SDK ends has its context
    return span_bytes(
        sc,
        span.parent,
        span.name,
        _SPAN_KIND_MAP[span.kind],
        span.start_time or 0,
        span.end_time or 0,
        attributes_bytes(span.attributes) if span.attributes else b"",
        span.status,
    )


def span_bytes(  # noqa: PLR0917  # a span's fields, each as its own value
    sc: SpanContext,
    parent: SpanContext | None,
    name: str,
    kind: int,
    start_ns: int,
    end_ns: int,
    attributes: bytes,
    status: Status,
) -> bytes:
    """A ``Span`` message's bytes from its fields (``attributes``: its encoded attributes,
    ``attribute_bytes``): for a ``ReadableSpan`` (``_span``) and for a span the gateway
    never made one of (``EncodedSpan``)."""
    parts = [_TRACE_ID, sc.trace_id.to_bytes(16, "big"), _SPAN_ID, sc.span_id.to_bytes(8, "big")]
    if sc.trace_state:
        state = _encode_trace_state(sc.trace_state)
        if state:
            parts.append(_field(_TRACE_STATE, state.encode()))
    if parent is not None:
        parts += (_PARENT_SPAN_ID, parent.span_id.to_bytes(8, "big"))
    if name:
        parts.append(_field(_NAME, name.encode()))
    if kind:
        parts += (_KIND, _varint(kind))
    if start_ns:
        parts += (_START, _FIXED64(start_ns))
    if end_ns:
        parts += (_END, _FIXED64(end_ns))
    parts.append(attributes)
    # The SDK always sets a status, so the field is there even when empty (UNSET, no message).
    code = status.status_code.value
    if code or status.description:
        status_bytes = _field(_STATUS_MESSAGE, status.description.encode()) if status.description else b""
        if code:
            status_bytes += _STATUS_CODE + _varint(code)
        parts.append(_field(_STATUS, status_bytes))
    else:
        parts.append(_EMPTY_STATUS)
    parts.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
    return b"".join(parts)


class EncodedSpan:
    """A finished span already in OTLP's wire form (``span_bytes``), with what the batch
    processor (its sampled flag) and ``encode_spans`` (its resource and scope) read of it.

    The gateway's publish spans are handed on so when every exporter of the provider is a
    ``CachingOTLPSpanExporter`` (``takes_encoded``): encoding ended spans together on the event
    loop, from values the gateway has at hand, costs a fraction of building a ``ReadableSpan``
    per span there and encoding it from that in the batch processor's thread, where each
    export held the GIL the loop needed.
    """

    __slots__ = ("context", "data", "instrumentation_scope", "resource")

    def __init__(
        self, context: SpanContext, data: bytes, resource: Resource, instrumentation_scope: InstrumentationScope | None
    ) -> None:
        self.context = context
        self.data = data
        self.resource = resource
        self.instrumentation_scope = instrumentation_scope


def _pb_span(span: ReadableSpan) -> PbSpan:
    """``trace_encoder._encode_span`` (None leaves a field unset, as there)."""
    sc = span.get_span_context()
    assert sc is not None
    return PbSpan(
        trace_id=sc.trace_id.to_bytes(16, "big"),
        span_id=sc.span_id.to_bytes(8, "big"),
        trace_state=_encode_trace_state(sc.trace_state),  # type: ignore[arg-type]
        parent_span_id=_encode_parent_id(span.parent),  # type: ignore[arg-type]
        name=span.name,
        kind=_SPAN_KIND_MAP[span.kind],
        start_time_unix_nano=span.start_time,  # type: ignore[arg-type]
        end_time_unix_nano=span.end_time,  # type: ignore[arg-type]
        attributes=[_encode_key_value(k, v) for k, v in (span.attributes or {}).items()],
        events=_encode_events(span.events),
        links=_encode_links(span.links),
        status=_encode_status(span.status),
        dropped_attributes_count=span.dropped_attributes,
        dropped_events_count=span.dropped_events,
        dropped_links_count=span.dropped_links,
        flags=_span_flags(span.parent),
    )


def encode_spans(spans: Sequence[ReadableSpan | EncodedSpan]) -> ExportTraceServiceRequest:
    """The ``ExportTraceServiceRequest`` of ``spans``: spans grouped by resource, then scope.

    Each group's own fields (resource, scope, schema URLs) are serialized by protobuf, its
    spans appended as further occurrences of the repeated field (the wire format allows any
    order); the whole is parsed once.
    """
    grouped: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
    # A Resource hashes by dumping its attributes as JSON: looked up only when the object
    # changes from one span to the next (the spans of one provider share one).
    resource: Resource | None = None
    scopes: dict[InstrumentationScope | None, list[bytes]] = {}
    for span in spans:
        if span.resource is not resource:
            resource = span.resource
            scopes = grouped.setdefault(resource, {})
        data = span.data if isinstance(span, EncodedSpan) else _span(span)
        scopes.setdefault(span.instrumentation_scope or None, []).append(data)
    request = []
    for res, by_scope in grouped.items():
        resource_spans = [ResourceSpans(resource=_encode_resource(res), schema_url=res.schema_url).SerializeToString()]
        for scope, encoded in by_scope.items():
            scope_spans = [
                ScopeSpans(
                    scope=_encode_instrumentation_scope(scope),  # type: ignore[arg-type]
                    schema_url=scope.schema_url if scope else None,  # type: ignore[arg-type]
                ).SerializeToString()
            ]
            scope_spans += (_field(_SPANS, data) for data in encoded)
            resource_spans.append(_field(_SCOPE_SPANS, b"".join(scope_spans)))
        request.append(_field(_RESOURCE_SPANS, b"".join(resource_spans)))
    return ExportTraceServiceRequest.FromString(b"".join(request))


class CachingOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/gRPC span exporter (endpoint, headers, TLS, retries from ``OTEL_*``),
    encoding with ``encode_spans`` above: it takes ``EncodedSpan``s as well as the SDK's spans."""

    takes_encoded = True

    def _translate_data(self, data: Sequence[ReadableSpan | EncodedSpan]) -> ExportTraceServiceRequest:
        return encode_spans(data)

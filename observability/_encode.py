"""OTLP encoding of spans for the gRPC exporter: the SDK's ``encode_spans``, with less work per span.

The exporter encodes in the ``BatchSpanProcessor``'s thread, which holds the GIL meanwhile: at
1 % sampling that thread took about as much of the gateway's CPU as the sampled spans themselves
(~35 us per publish span, most of it building a ``KeyValue`` and an ``AnyValue`` in Python for
each of its 14 attributes). Most of a span's attributes are the same for every span of a topic
(``messaging.system``, ``cloud.region``, ``server.address``, the operation, the destination, the
route, the outcome): their encoded ``KeyValue`` is kept and copied (in C) into each span; the
others are built inline without the SDK's per-value type dispatch. The request is the one
``encode_spans`` builds, field for field (a test compares them).
"""

from __future__ import annotations

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
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = ["CachingOTLPSpanExporter", "encode_spans"]

# Attributes whose values repeat from span to span: their KeyValue is built once per value.
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
_CACHE_MAX = 4096  # a bound for many topics or routes; cleared when reached

_cache: dict[tuple[str, type, Any], KeyValue] = {}


def _key_value(key: str, value: Any) -> KeyValue:
    kind = type(value)
    if key in _REPEATED:
        # The type is part of the key: True == 1, and they encode differently.
        entry = (key, kind, value)
        kv = _cache.get(entry)
        if kv is None:
            if len(_cache) >= _CACHE_MAX:
                _cache.clear()
            kv = _cache[entry] = _encode_key_value(key, value)
        return kv
    if kind is str:
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if kind is int:
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return _encode_key_value(key, value)  # the SDK's dispatch for every other type


def _attributes(attributes: Mapping[str, Any] | None) -> list[KeyValue]:
    if not attributes:
        return []
    return [_key_value(k, v) for k, v in attributes.items()]


def _span(span: ReadableSpan) -> PbSpan:
    """``trace_encoder._encode_span``, with the attributes as above (None leaves a field unset, as there)."""
    sc = span.get_span_context()
    assert sc is not None  # every span the SDK ends has its context
    parent = span.parent
    return PbSpan(
        trace_id=sc.trace_id.to_bytes(16, "big"),
        span_id=sc.span_id.to_bytes(8, "big"),
        trace_state=_encode_trace_state(sc.trace_state),  # type: ignore[arg-type]
        parent_span_id=_encode_parent_id(parent),  # type: ignore[arg-type]
        name=span.name,
        kind=_SPAN_KIND_MAP[span.kind],
        start_time_unix_nano=span.start_time,  # type: ignore[arg-type]
        end_time_unix_nano=span.end_time,  # type: ignore[arg-type]
        attributes=_attributes(span.attributes),
        events=_encode_events(span.events),
        links=_encode_links(span.links),
        status=_encode_status(span.status),
        dropped_attributes_count=span.dropped_attributes,
        dropped_events_count=span.dropped_events,
        dropped_links_count=span.dropped_links,
        flags=_span_flags(parent),
    )


def encode_spans(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """The ``ExportTraceServiceRequest`` of ``spans``: spans grouped by resource, then scope."""
    grouped: dict[Resource, dict[InstrumentationScope | None, list[PbSpan]]] = {}
    # A Resource hashes by dumping its attributes as JSON: looked up only when the object
    # changes from one span to the next (the spans of one provider share one).
    resource: Resource | None = None
    scopes: dict[InstrumentationScope | None, list[PbSpan]] = {}
    for span in spans:
        if span.resource is not resource:
            resource = span.resource
            scopes = grouped.setdefault(resource, {})
        scopes.setdefault(span.instrumentation_scope or None, []).append(_span(span))
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=_encode_resource(resource),
                scope_spans=[
                    ScopeSpans(
                        scope=_encode_instrumentation_scope(scope),  # type: ignore[arg-type]
                        spans=pb_spans,
                        schema_url=scope.schema_url if scope else None,  # type: ignore[arg-type]
                    )
                    for scope, pb_spans in scopes.items()
                ],
                schema_url=resource.schema_url,
            )
            for resource, scopes in grouped.items()
        ]
    )


class CachingOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/gRPC span exporter (endpoint, headers, TLS, retries from ``OTEL_*``),
    encoding with ``encode_spans`` above."""

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        return encode_spans(data)

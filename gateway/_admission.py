"""Admission: the checks every event passes before anything is stored, and the route stamp.

A refused event gets a message that names the field, the value or size found and what is
allowed, so a person can fix the producer without reading our code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from google.protobuf import unknown_fields
from google.protobuf.timestamp_pb2 import Timestamp

from meshgate.config import Limits
from meshgate.gateway._ids import uuid7
from meshgate.router import validate_topic
from meshgate.v1 import event_pb2

__all__ = ["OUTPUT_ONLY_FIELDS", "RESERVED_TOPIC_PREFIX", "Admission", "Refusal", "output_only_refusal"]

# The Event fields event.proto marks "output only": the gateway sets them at admission or on
# storing, and replication carries them between regions. A client's value would be stored as
# if the gateway had set it (an origin_sequence set by a client made every destination refuse
# the event as a resend from nowhere, after the client was told ACCEPTED): refused, not ignored.
OUTPUT_ONLY_FIELDS = ("origin", "route", "sequence", "origin_sequence", "stream", "origin_stream")
# Topics under this prefix belong to the gateway: the dead letters of a link are written to
# meshgate/dlq/<destination> by the replicator itself, past admission. Clients may publish
# there only when their token's publish list names the prefix (see gateway/_auth.py).
RESERVED_TOPIC_PREFIX = "meshgate/"

# CloudEvents: extension names are lower-case letters and digits; these are its attributes.
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
_RESERVED = frozenset({"id", "source", "type", "specversion", "time", "datacontenttype", "data", "dataschema"})
# id, source, type, key: printable, no control characters (they travel in broker headers).
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]+")
# RFC 2045 media type: type "/" subtype, optional parameters.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*(\s*;.*)?")
# CloudEvents' URI type: RFC 3986's absolute-URI (a scheme, no fragment), in URI characters
# only (others percent-encoded).
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?:[A-Za-z0-9._~:/?@!$&'()*+,;=\[\]-]|%[0-9A-Fa-f]{2})*")
_MAX_ID_CHARS = 256
# protobuf's Timestamp range (0001-01-01 to 9999-12-31): the CloudEvents time is RFC 3339.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
_MAX_KEY_CHARS = 1024
_MAX_CHECKED = 16_384


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why admission refused an event: the message for the producer, and whether it is over a size limit."""

    message: str
    # Over a size or count limit (data, attributes, extensions, a field's length): counted as
    # too_large, not invalid.
    too_large: bool = False


def output_only_refusal(event: event_pb2.Event) -> str:
    """The message for an event that carries output-only fields: names every one that is set."""
    names = [name for name in OUTPUT_ONLY_FIELDS if getattr(event, name)]
    if len(names) == 1:
        return f"{names[0]} is set by the gateway (output only); leave it empty when publishing"
    return f"{', '.join(names)} are set by the gateway (output only); leave them empty when publishing"


def _text_field(name: str, value: str, *, max_chars: int, required: bool) -> Refusal | None:
    if not value:
        return Refusal(f"{name} is required") if required else None
    if len(value) > max_chars:
        return Refusal(f"{name} has {len(value)} characters; at most {max_chars}", too_large=True)
    # isprintable() is the cheap test; it also refuses what the rule allows (a zero-width space).
    if not value.isprintable() and _PRINTABLE.fullmatch(value) is None:
        return Refusal(f"{name} {value[:40]!r} contains control characters; use printable text")
    return None


def _attributes_refusal(
    event: event_pb2.Event, extensions: Mapping[str, str], n_ext: int, limits: Limits, attr_chars: int
) -> Refusal | None:
    """Extensions (count, names, text) and the attributes' total size against the limits.

    ``attr_chars``: the characters of id, source, type, datacontenttype, key and dataschema,
    which the caller has read already (each read of a protobuf field makes a new string), as
    it has the extensions and their count.
    """
    if n_ext > limits.max_extensions:
        return Refusal(f"{n_ext} extensions exceed max_extensions of {limits.max_extensions}", too_large=True)
    attr_bytes = attr_chars
    # Guarded: iterating even an empty protobuf map costs more than the rest of the checks.
    for ext_name, ext_value in extensions.items() if n_ext else ():
        if _EXTENSION_NAME.fullmatch(ext_name) is None:
            return Refusal(f"extension name {ext_name[:40]!r} is invalid; use 1 to 20 of a-z 0-9 (CloudEvents)")
        if ext_name in _RESERVED:
            return Refusal(f"extension name {ext_name!r} is a CloudEvents attribute; set the field instead")
        if _PRINTABLE.fullmatch(ext_value) is None and ext_value:
            return Refusal(f"extension {ext_name!r} contains control characters; use printable text")
        attr_bytes += len(ext_name) + len(ext_value)
    if attr_bytes * 4 > limits.max_attributes_bytes:
        # Counted in characters above (cheap); only a near miss pays for exact UTF-8 sizes.
        attr_bytes = sum(
            len(s.encode())
            for s in (event.id, event.source, event.type, event.datacontenttype, event.key, event.dataschema)
        ) + sum(len(k.encode()) + len(v.encode()) for k, v in event.extensions.items())
    if attr_bytes > limits.max_attributes_bytes:
        return Refusal(
            f"attributes and extensions of {attr_bytes} bytes exceed "
            f"max_attributes_bytes of {limits.max_attributes_bytes} bytes",
            too_large=True,
        )
    return None


def _time_refusal(time: Timestamp) -> Refusal | None:
    if not 0 <= time.nanos < 1_000_000_000:
        return Refusal(f"time has {time.nanos} nanos; must be 0 to 999999999")
    if not _MIN_SECONDS <= time.seconds <= _MAX_SECONDS:
        return Refusal(
            f"time of {time.seconds} seconds since 1970 is outside years 1 to 9999"
            " (RFC 3339); send the event's real time, or none for the admission time"
        )
    return None


class Admission:
    """Checks and stamps events for one region; the route comes from the current router."""

    def __init__(self, *, region: str, limits: Limits, route: Callable[[str, str], tuple[str, ...]]) -> None:
        self._region = region
        self._limits = limits
        self._route = route
        # Sources, types and keys that passed their checks under these limits.
        self._sources: set[str] = set()
        self._types: set[str] = set()
        self._keys: set[str] = set()
        self._valid_topics: set[str] = set()
        # Set when an event checked carries extensions (so perhaps a traceparent of its own);
        # the caller clears it before a batch and reads it after: when still False, tracing
        # decides the batch as a whole, without reading any event's extensions again.
        self.extended = False

    def check(self, event: event_pb2.Event) -> Refusal | None:
        """Why the event is refused, or None. Never mutates the event."""
        refusal = self._refusal(event, event.topic, event.id, event.specversion, event.text_data)
        if refusal is None and event.HasField("time"):
            return _time_refusal(event.time)
        return refusal

    def admit(self, event: event_pb2.Event, now: Timestamp) -> tuple[str, ...] | Refusal:
        """``check``, then, if the event passes, the stamp: its route, or why it is refused.

        One read of each field for both (this runs once per published event, and every read
        of a protobuf field costs about as much as the check made with it).
        """
        topic, event_id, spec, text = event.topic, event.id, event.specversion, event.text_data
        refusal = self._refusal(event, topic, event_id, spec, text)
        if refusal is not None:
            return refusal
        if event.HasField("time"):
            refusal = _time_refusal(event.time)
            if refusal is not None:
                return refusal
        else:
            event.time.CopyFrom(now)
        return self._stamp(event, topic, event_id, spec, text)

    def _stamp(self, event: event_pb2.Event, topic: str, event_id: str, spec: str, text: str) -> tuple[str, ...]:
        """Fills what the client may leave out and records origin and route, decided once here.

        Returns the route (reading it back off the event costs more than keeping it).
        """
        if not event_id:
            event.id = uuid7()
        if text:
            # Stored, replicated and served as data: text_data only exists on the way in.
            event.data = text.encode()
            event.text_data = ""
        if not spec:
            event.specversion = "1.0"
        event.origin = self._region
        route = self._route(topic, self._region)
        # Extended, not replaced: check refused any event that carries a route.
        event.route.extend(route)
        return route

    def _refusal(self, event: event_pb2.Event, topic: str, event_id: str, spec: str, text: str) -> Refusal | None:
        """``check`` but for the time, given the fields the caller has read."""
        source, type_, key = event.source, event.type, event.key
        refusal = self._check_names(topic, event_id, source, type_, key)
        if refusal is not None:
            return refusal
        if spec not in ("", "1.0"):
            return Refusal(f"specversion {spec[:20]!r} is not supported; use '1.0' (or leave it empty)")
        content_type = event.datacontenttype
        if content_type and _MEDIA_TYPE.fullmatch(content_type) is None:
            return Refusal(
                f"datacontenttype {content_type[:60]!r} is not a media type; use type/subtype, e.g. 'application/json'"
            )
        schema = event.dataschema
        if schema and _ABSOLUTE_URI.fullmatch(schema) is None:
            return Refusal(
                f"dataschema {schema[:60]!r} is not an absolute URI (CloudEvents); use a scheme and no "
                "fragment, e.g. 'https://example.com/schemas/order.json', other characters percent-encoded"
            )
        unknown = unknown_fields.UnknownFieldSet(event)
        if len(unknown):
            numbers = sorted({unknown[i].field_number for i in range(len(unknown))})
            # Storing the event without them would lose what the producer sent.
            return Refusal(
                f"event carries fields {numbers} that this gateway does not know; "
                "upgrade the gateway or publish without them"
            )
        if (
            event.origin
            or event.route
            or event.sequence
            or event.origin_sequence
            or event.stream
            or event.origin_stream
        ):
            return Refusal(output_only_refusal(event))
        size = len(event.data)
        if text:
            if size:
                return Refusal(
                    "data and text_data are both set; send the payload once: text_data for text, "
                    "data for bytes (base64 in JSON)"
                )
            size = len(text.encode())
        if size > self._limits.max_data_bytes:
            return Refusal(
                f"data of {size} bytes exceeds max_data_bytes of {self._limits.max_data_bytes} bytes", too_large=True
            )
        attr_chars = len(event_id) + len(source) + len(type_) + len(content_type) + len(key) + len(schema)
        extensions = event.extensions
        n_ext = len(extensions)
        if n_ext:
            self.extended = True
        return _attributes_refusal(event, extensions, n_ext, self._limits, attr_chars)

    def _check_names(self, topic: str, event_id: str, source: str, type_: str, key: str) -> Refusal | None:
        """Topic, id, source, type and key; a topic, source, type or key that passed is remembered."""
        if not topic:
            return Refusal("topic is required, e.g. 'orders/created'")
        if topic not in self._valid_topics:
            problem = validate_topic(topic)
            if problem is not None:
                return Refusal(problem)
            if len(self._valid_topics) >= _MAX_CHECKED:
                self._valid_topics.clear()
            self._valid_topics.add(topic)
        # Inline first: every event has its own id.
        if event_id and (len(event_id) > _MAX_ID_CHARS or not event_id.isprintable()):
            refusal = _text_field("id", event_id, max_chars=_MAX_ID_CHARS, required=False)
            if refusal is not None:
                return refusal
        # source, type and key repeat across events: each distinct value is checked once (no
        # triple of them made per event: each tuple is an object for the garbage collector).
        if source in self._sources and type_ in self._types and key in self._keys:
            return None
        limits = self._limits
        for name, value, passed, cap, required in (
            ("source", source, self._sources, limits.max_attributes_bytes, True),
            ("type", type_, self._types, limits.max_attributes_bytes, True),
            ("key", key, self._keys, _MAX_KEY_CHARS, False),
        ):
            if value in passed:
                continue
            refusal = _text_field(name, value, max_chars=cap, required=required)
            if refusal is not None:
                return refusal
            if len(passed) >= _MAX_CHECKED:
                passed.clear()
            passed.add(value)
        return None

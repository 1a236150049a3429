"""The broker-neutral mapping between mesh events and broker messages.

Topics become Kafka topic names by swapping ``/`` for ``.`` behind a prefix
(``meshgate.topics``, re-exported here); the mapping is one-to-one because a topic level never
contains a dot. NATS subjects put the origin and a partition between the prefix and the
topic's levels (``nats._subjects.SubjectLayout``).

Events travel in the CloudEvents *binary content mode*: the message payload is ``event.data``
byte for byte (a native consumer reads exactly what the producer sent) and every other
attribute is a header. Each broker kind follows its own protocol binding exactly, so the
CloudEvents SDKs read a stored event as the event that was published:

======================  ========================  ===========================================
NATS binding            Kafka binding             attribute
======================  ========================  ===========================================
``ce-id``               ``ce_id``                 ``id``
``ce-source``           ``ce_source``             ``source``
``ce-type``             ``ce_type``               ``type``
``ce-specversion``      ``ce_specversion``        ``specversion`` (empty is written as ``1.0``)
``ce-time``             ``ce_time``               ``time``, RFC 3339 in UTC with nanoseconds
``ce-datacontenttype``  ``content-type``          ``datacontenttype`` (absent when empty)
``ce-dataschema``       ``ce_dataschema``         ``dataschema`` (absent when empty)
``ce-<name>``           ``ce_<name>``             extension ``<name>``
``mg-key``              the record key            ``key`` (absent when empty)
``mg-origin``           ``mg-origin``             ``origin``
``mg-route``            ``mg-route``              ``route``, the region names joined by commas
``mg-origin-seq``       ``mg-origin-seq``         ``origin_sequence`` (replicated events)
``mg-origin-stream``    ``mg-origin-stream``      ``origin_stream`` (absent when empty)
======================  ========================  ===========================================

NATS (binding section 3.1.3): every attribute, ``datacontenttype`` included, is a ``ce-``
header, and its value is percent-encoded (the UTF-8 bytes of space, ``"``, ``%`` and anything
outside printable ASCII), so values with spaces, line breaks or non-ASCII text survive a
header transport that trims or rejects them; plain values, the overwhelming majority, are
written as they are. Kafka (binding section 3.2): attributes are ``ce_`` headers and
``datacontenttype`` is ``content-type``, every value plain UTF-8 (the binding encodes nothing,
and its readers decode nothing); the event's ``key`` is the record key.

The NATS form is also the replication wire form (``header_lines``): a Kafka region translates
between the two straight from one form to the other (``lines_from_kafka_record`` as a source,
``kafka_record_from_lines`` as a destination), and through the event
(``decode_kafka_record``, ``kafka_record_headers``) where a record or a line set is not in
the shape those render exactly.
Records written before the bindings were followed (Kafka ``ce-`` headers, percent-encoded; a
NATS ``content-type``) still decode.

Encoding runs once per event on the write path, so the hot functions avoid intermediate
containers and cache what repeats (subjects per topic, time strings per second).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import cast
from urllib.parse import quote, unquote

from google.protobuf import timestamp_pb2

from meshgate.topics import SubjectMapper, pattern_to_filter, subject_to_topic, topic_to_subject
from meshgate.v1 import event_pb2

__all__ = [
    "CE_PREFIX",
    "HEADER_CONTENT_TYPE",
    "HEADER_DATACONTENTTYPE",
    "HEADER_DATASCHEMA",
    "HEADER_ID",
    "HEADER_KEY",
    "HEADER_ORIGIN",
    "HEADER_ORIGIN_SEQ",
    "HEADER_ORIGIN_STREAM",
    "HEADER_ROUTE",
    "HEADER_SOURCE",
    "HEADER_SPECVERSION",
    "HEADER_TIME",
    "HEADER_TYPE",
    "KAFKA_CE_PREFIX",
    "KAFKA_HEADER_ID",
    "POSITION_HEADERS",
    "RESERVED_EXTENSION_NAMES",
    "SubjectMapper",
    "check_header_lines",
    "decode_event",
    "decode_kafka_record",
    "encode_headers",
    "encode_kafka_headers",
    "escape_header_value",
    "escape_repeated_value",
    "escaped_repeated",
    "format_time",
    "format_time_repeated",
    "header_lines",
    "kafka_record_from_lines",
    "kafka_record_headers",
    "kafka_record_id",
    "lines_from_kafka_record",
    "parse_header_lines",
    "parse_time",
    "pattern_to_filter",
    "plain_header_blocks",
    "plain_values",
    "subject_to_topic",
    "topic_to_subject",
    "unescape_header_value",
]

CE_PREFIX = "ce-"
HEADER_ID = "ce-id"
HEADER_SOURCE = "ce-source"
HEADER_TYPE = "ce-type"
HEADER_SPECVERSION = "ce-specversion"
HEADER_TIME = "ce-time"
HEADER_DATACONTENTTYPE = "ce-datacontenttype"
HEADER_DATASCHEMA = "ce-dataschema"
# datacontenttype in the Kafka binding (and the HTTP one); on NATS read only from foreign or
# older records.
HEADER_CONTENT_TYPE = "content-type"
HEADER_KEY = "mg-key"
HEADER_ORIGIN = "mg-origin"
HEADER_ROUTE = "mg-route"
HEADER_ORIGIN_SEQ = "mg-origin-seq"
HEADER_ORIGIN_STREAM = "mg-origin-stream"

DEFAULT_SPECVERSION = "1.0"

KAFKA_CE_PREFIX = "ce_"
KAFKA_HEADER_ID = "ce_id"

# Extension names that would land on the header of a context attribute.
RESERVED_EXTENSION_NAMES = frozenset({"id", "source", "type", "specversion", "time", "datacontenttype", "dataschema"})


# Printable ASCII (0x21-0x7E) except '"' and '%': what a header value may carry unescaped.
_UNSAFE_RE = re.compile(r"[^!#$&-~]")
_QUOTE_SAFE = "!#$&'()*+,/:;<=>?@[\\]^`{|}"


# -- header values ----------------------------------------------------------------------------


def escape_header_value(value: str) -> str:
    """Percent-encodes a value only when it holds a character a header may not carry as is."""
    # What _UNSAFE_RE finds, in string methods that cost half of its search: not ASCII,
    # control characters and DEL (not printable), space, '"', '%'.
    if value.isascii() and value.isprintable() and " " not in value and '"' not in value and "%" not in value:
        return value
    if _UNSAFE_RE.search(value) is None:
        return value
    return quote(value, safe=_QUOTE_SAFE)


class _EscapeCache(dict[str, str]):
    """Escaped forms of values that repeat across events (source, type, origin, route).

    Subscripting a dict whose misses go to ``__missing__`` costs a fraction of a function call
    plus a scan of the value, and this runs for most headers of every event.
    """

    __slots__ = ()

    def __missing__(self, value: str) -> str:
        if len(self) >= 16_384:
            self.clear()
        escaped = self[value] = escape_header_value(value)
        return escaped


escaped_repeated = _EscapeCache()


def escape_repeated_value(value: str) -> str:
    """``escape_header_value`` memoized; for values that repeat across events."""
    return escaped_repeated[value]


def unescape_header_value(value: str) -> str:
    if "%" not in value:
        return value
    # What Meshgate escapes is valid UTF-8; a foreign producer's stray bytes become U+FFFD
    # rather than an error that would stop every reader of the log at that message.
    return unquote(value, errors="replace")


# -- time -------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=1024)
def _format_seconds(seconds: int) -> str:
    d = _EPOCH + timedelta(seconds=seconds)
    # Explicit widths: strftime's %Y does not pad years before 1000 on every platform.
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"


@functools.lru_cache(maxsize=1024)
def _parse_seconds(text: str) -> int:
    d = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return (d - _EPOCH) // timedelta(seconds=1)


# protobuf's Timestamp range, 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z: RFC 3339's years.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


# The last time formatted (seconds, nanos, text, Kafka record header): a gateway stamps every
# event of a request with the same admission time, so consecutive events mostly share it. One
# tuple, replaced whole: safe from the links' thread too.
_last_time: tuple[int, int, str, tuple[str, bytes]] = (0, -1, "", ("ce_time", b""))


def _repeated_time(ts: timestamp_pb2.Timestamp) -> tuple[int, int, str, tuple[str, bytes]]:
    global _last_time  # noqa: PLW0603  # a one-entry cache, replaced whole
    seconds, nanos = ts.seconds, ts.nanos
    last = _last_time
    if last[0] == seconds and last[1] == nanos:
        return last
    text = format_time(ts)
    last = _last_time = (seconds, nanos, text, ("ce_time", text.encode()))
    return last


def format_time_repeated(ts: timestamp_pb2.Timestamp) -> str:
    """``format_time``, remembering the last time formatted (consecutive events mostly share it)."""
    return _repeated_time(ts)[2]


def format_time(ts: timestamp_pb2.Timestamp) -> str:
    """RFC 3339 in UTC with nine fraction digits: ``2025-01-02T03:04:05.123456789Z``.

    Raises ``ValueError`` for a time outside years 1 to 9999 or nanos outside 0 to 999999999
    (a peer region's event is not checked by admission here; the write refuses it for good).
    """
    seconds, nanos = ts.seconds, ts.nanos
    if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
        raise ValueError(
            f"time of {seconds} s and {nanos} ns is not a valid timestamp (years 1 to 9999, nanos 0 to 999999999)"
        )
    # zfill: a format spec like :09d costs twice as much on this path.
    return f"{_format_seconds(seconds)}.{str(nanos).zfill(9)}Z"


_RFC3339_RE = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))")


def parse_time(text: str) -> timestamp_pb2.Timestamp:
    """Any RFC 3339 timestamp (what Meshgate writes, or a native producer's) -> Timestamp."""
    # Fast path: exactly the shape format_time writes.
    if len(text) == 30 and text[19] == "." and text[29] == "Z":
        return timestamp_pb2.Timestamp(seconds=_parse_seconds(text[:19]), nanos=int(text[20:29]))
    m = _RFC3339_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"invalid RFC 3339 time {text!r}")
    seconds = _parse_seconds(f"{m.group(1)}T{m.group(2)}")
    nanos = int((m.group(3) or "0").ljust(9, "0"))
    if m.group(5):
        offset = int(m.group(6)) * 3600 + int(m.group(7)) * 60
        seconds -= offset if m.group(5) == "+" else -offset
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


# -- events -----------------------------------------------------------------------------------


def encode_headers(event: event_pb2.Event) -> list[tuple[str, str]]:
    """The event's attributes as (name, value) header pairs, values already escaped.

    Raises ``ValueError`` for an extension named like a context attribute (``ce-id`` would be
    ambiguous); admission refuses those first, this is the last line of defence.
    """
    esc = escaped_repeated.__getitem__
    spec = event.specversion
    headers = [
        (HEADER_ID, escape_header_value(event.id)),
        (HEADER_SOURCE, esc(event.source)),
        (HEADER_TYPE, esc(event.type)),
        (HEADER_SPECVERSION, esc(spec) if spec else DEFAULT_SPECVERSION),
    ]
    if event.HasField("time"):
        headers.append((HEADER_TIME, format_time(event.time)))
    if event.datacontenttype:
        headers.append((HEADER_DATACONTENTTYPE, esc(event.datacontenttype)))
    if event.dataschema:
        headers.append((HEADER_DATASCHEMA, esc(event.dataschema)))
    if event.extensions:
        for name, value in event.extensions.items():
            if name in RESERVED_EXTENSION_NAMES:
                raise ValueError(f"extension {name!r} collides with the CloudEvents attribute of that name")
            headers.append((CE_PREFIX + esc(name), escape_header_value(value)))
    if event.key:
        headers.append((HEADER_KEY, escape_header_value(event.key)))
    headers.append((HEADER_ORIGIN, esc(event.origin)))
    # Slicing first: iterating a protobuf repeated field item by item is slow.
    headers.append((HEADER_ROUTE, esc(",".join(event.route[:]))))
    if event.origin_sequence:
        headers.append((HEADER_ORIGIN_SEQ, str(event.origin_sequence)))
    if event.origin_stream:
        # Only from a region with several streams: a one-stream origin's events keep the
        # headers they always had.
        headers.append((HEADER_ORIGIN_STREAM, escape_header_value(event.origin_stream)))
    return headers


def decode_event(
    headers: Mapping[str, str] | None, payload: bytes, *, topic: str, sequence: int = 0, stream: str = ""
) -> event_pb2.Event:
    """Rebuilds the event that ``encode_headers`` and the payload came from.

    ``topic`` comes from the subject (or topic name), ``sequence`` and ``stream`` from where
    it sits in the log.
    Headers Meshgate does not own (``Nats-Msg-Id``, a native producer's own) are ignored, so a
    message published natively into the mesh subjects still decodes, with empty attributes;
    malformed values never raise.
    """
    event = event_pb2.Event(topic=topic, data=payload, sequence=sequence, stream=stream)
    if not headers:
        return event
    unesc = unescape_header_value
    for name, value in headers.items():
        if name.startswith(CE_PREFIX):
            _decode_ce_header(event, name, value)
        elif name == HEADER_CONTENT_TYPE:
            # An HTTP-style producer's, or Meshgate's before it followed the NATS binding
            # (escaped then): ce-datacontenttype wins wherever it is.
            if HEADER_DATACONTENTTYPE not in headers:
                event.datacontenttype = unesc(value)
        elif name == HEADER_KEY:
            event.key = unesc(value)
        elif name == HEADER_ORIGIN:
            event.origin = unesc(value)
        elif name == HEADER_ROUTE:
            route = unesc(value)
            if route:
                event.route.extend(route.split(","))
        elif name == HEADER_ORIGIN_SEQ and value.isdigit():
            event.origin_sequence = int(value)
        elif name == HEADER_ORIGIN_STREAM:
            event.origin_stream = unesc(value)
    return event


def _decode_ce_header(event: event_pb2.Event, name: str, value: str) -> None:
    """Sets the CloudEvents attribute (or extension) that the ``ce-`` header ``name`` carries."""
    unesc = unescape_header_value
    if name == HEADER_ID:
        event.id = unesc(value)
    elif name == HEADER_SOURCE:
        event.source = unesc(value)
    elif name == HEADER_TYPE:
        event.type = unesc(value)
    elif name == HEADER_SPECVERSION:
        event.specversion = unesc(value)
    elif name == HEADER_TIME:
        # A native producer's unreadable time leaves the attribute unset, not the
        # reader stuck at this message.
        with contextlib.suppress(ValueError, OverflowError):
            event.time.CopyFrom(parse_time(value))
    else:
        _set_attribute(event, unesc(name[3:]), unesc(value))


def _set_attribute(event: event_pb2.Event, name: str, value: str) -> None:
    """Sets attribute ``name`` (decoded, without its prefix) to ``value`` (decoded)."""
    if not name:
        return
    if name == "id":
        event.id = value
    elif name == "source":
        event.source = value
    elif name == "type":
        event.type = value
    elif name == "specversion":
        event.specversion = value
    elif name == "time":
        with contextlib.suppress(ValueError, OverflowError):
            event.time.CopyFrom(parse_time(value))
    elif name == "datacontenttype":
        event.datacontenttype = value
    elif name == "dataschema":
        event.dataschema = value
    else:
        event.extensions[name] = value


# -- the Kafka binding ------------------------------------------------------------------------


def encode_kafka_headers(event: event_pb2.Event) -> list[tuple[str, str]]:
    """The event's headers in the CloudEvents Kafka binding: ``ce_`` names, plain values.

    The key is not among them: it is the record key. Raises ``ValueError`` as
    ``encode_headers`` does. (``kafka_record_headers`` gives them as a record carries them.)
    """
    return [(name, value.decode()) for name, value in kafka_record_headers(event)[0]]


# Bytes of the header names every record carries (ce_id, ce_source, ce_type, ce_specversion,
# mg-origin, mg-route).
_FIXED_NAMES_BYTES = sum(
    map(len, (KAFKA_HEADER_ID, "ce_source", "ce_type", "ce_specversion", HEADER_ORIGIN, HEADER_ROUTE))
)
# Distinct values kept per header name before its table starts afresh.
_MAX_SHARED_VALUES = 1024


class _SharedHeaders(dict[str, tuple[str, bytes]]):
    """A header's (name, encoded value) pairs by value, made at the first use of each value.

    Most of a record's header values repeat from event to event (source, type, origin, route,
    the admission time): their pairs are shared, and a record's headers are a new list with a
    new pair for its id and those. Every tuple made is an object the garbage collector tracks,
    and with thousands of records in flight the collections that eight new pairs per record
    caused cost more than making them. A dict's own look-up (``__missing__`` on a miss only),
    so safe from the links' thread too.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __missing__(self, value: str) -> tuple[str, bytes]:
        if len(self) >= _MAX_SHARED_VALUES:
            self.clear()
        pair = self[value] = (self.name, value.encode())
        return pair


_SOURCES = _SharedHeaders("ce_source")
_TYPES = _SharedHeaders("ce_type")
_SPECVERSIONS = _SharedHeaders("ce_specversion")
_SPEC_DEFAULT = ("ce_specversion", DEFAULT_SPECVERSION.encode())
_CONTENT_TYPES = _SharedHeaders(HEADER_CONTENT_TYPE)
_SCHEMAS = _SharedHeaders("ce_dataschema")
_ORIGINS = _SharedHeaders(HEADER_ORIGIN)
_ROUTES = _SharedHeaders(HEADER_ROUTE)
_ORIGIN_STREAMS = _SharedHeaders(HEADER_ORIGIN_STREAM)


def kafka_record_headers(event: event_pb2.Event) -> tuple[list[tuple[str, bytes]], int]:
    """``encode_kafka_headers`` with the values encoded (UTF-8), as a record carries them, and
    the bytes of all names and values: the Kafka adapter's write path, in one pass per event.

    The pairs of repeating values are shared between records (``_SharedHeaders``): the list
    is the caller's, its pairs are not to be changed.
    """
    route = event.route
    return _record_headers(
        event.id.encode(),
        event.source,
        event.type,
        event.specversion,
        _repeated_time(event.time)[3] if event.HasField("time") else None,
        event.datacontenttype,
        event.dataschema,
        event.extensions.items() if event.extensions else (),
        event.origin,
        route[0] if len(route) == 1 else ",".join(route),
        event.origin_sequence,
        event.origin_stream,
    )


def _record_headers(  # noqa: PLR0917  # a record's attributes, each as its own value
    event_id: bytes,
    source: str,
    type_: str,
    spec: str,
    time_header: tuple[str, bytes] | None,
    content_type: str,
    schema: str,
    extensions: Iterable[tuple[str, str]],
    origin: str,
    route: str,
    origin_sequence: int,
    origin_stream: str,
) -> tuple[list[tuple[str, bytes]], int]:
    """A record's headers and their bytes from its attributes: for an event
    (``kafka_record_headers``) and for a replicated event's lines (``kafka_record_from_lines``)."""
    source_header = _SOURCES[source]
    type_header = _TYPES[type_]
    spec_header = _SPEC_DEFAULT if not spec or spec == DEFAULT_SPECVERSION else _SPECVERSIONS[spec]
    origin_header = _ORIGINS[origin]
    route_header = _ROUTES[route]
    headers = [(KAFKA_HEADER_ID, event_id), source_header, type_header, spec_header]
    size = _FIXED_NAMES_BYTES + len(event_id) + len(source_header[1]) + len(type_header[1]) + len(spec_header[1])
    size += len(origin_header[1]) + len(route_header[1])
    if time_header is not None:
        headers.append(time_header)
        size += 7 + len(time_header[1])
    if content_type:
        header = _CONTENT_TYPES[content_type]
        headers.append(header)
        size += len(HEADER_CONTENT_TYPE) + len(header[1])
    if schema:
        header = _SCHEMAS[schema]
        headers.append(header)
        size += 13 + len(header[1])
    for name, text in extensions:
        if name in RESERVED_EXTENSION_NAMES:
            raise ValueError(f"extension {name!r} collides with the CloudEvents attribute of that name")
        header = (KAFKA_CE_PREFIX + name, text.encode())
        headers.append(header)
        size += len(header[0]) + len(header[1])
    headers.append(origin_header)
    headers.append(route_header)
    if origin_sequence:
        value = str(origin_sequence).encode()
        headers.append((HEADER_ORIGIN_SEQ, value))
        size += len(HEADER_ORIGIN_SEQ) + len(value)
    if origin_stream:
        header = _ORIGIN_STREAMS[origin_stream]
        headers.append(header)
        size += len(HEADER_ORIGIN_STREAM) + len(header[1])
    return headers, size


def decode_kafka_record(
    headers: Sequence[tuple[str, bytes | None]],
    key: bytes | None,
    value: bytes | None,
    *,
    topic: str,
    sequence: int = 0,
    stream: str = "",
) -> event_pb2.Event:
    """A Kafka record (headers as the client gives them, key, value) -> the event it holds.

    Reads the Kafka binding (what ``encode_kafka_headers`` writes, or a CloudEvents SDK's
    ``to_binary``), and records Meshgate wrote before it followed the binding (``ce-`` names,
    values percent-encoded). A foreign producer's other headers are ignored; malformed values
    never raise, bytes that are not UTF-8 become U+FFFD.
    """
    event = event_pb2.Event(topic=topic, data=value or b"", sequence=sequence, stream=stream)
    if key:
        event.key = key.decode("utf-8", "replace")
    content_type: str | None = None
    legacy = False
    for name, raw in headers:
        if raw is None:
            continue
        text = raw.decode("utf-8", "replace")
        if name.startswith(KAFKA_CE_PREFIX):
            _set_attribute(event, name[3:], text)
        elif name == HEADER_ORIGIN:
            event.origin = text
        elif name == HEADER_ROUTE:
            if text:
                event.route.extend(text.split(","))
        elif name == HEADER_ORIGIN_SEQ:
            if text.isdigit():
                event.origin_sequence = int(text)
        elif name == HEADER_ORIGIN_STREAM:
            event.origin_stream = text
        elif name.lower() == HEADER_CONTENT_TYPE:
            content_type = text
        elif name.startswith(CE_PREFIX):
            legacy = True
            _decode_ce_header(event, name, text)
        elif name[:3].lower() == KAFKA_CE_PREFIX:
            # Header names are case-sensitive in Kafka; the SDKs match them in any case.
            _set_attribute(event, name[3:].lower(), text)
    if content_type is not None:
        event.datacontenttype = unescape_header_value(content_type) if legacy else content_type
    return event


def kafka_record_id(headers: Sequence[tuple[str, bytes | None]]) -> str | None:
    """The event id of a Kafka record's headers (``ce_id``, or an older record's ``ce-id``)."""
    for name, raw in headers:
        if raw is not None:
            if name == KAFKA_HEADER_ID:
                return raw.decode("utf-8", "replace")
            if name == HEADER_ID:
                return unescape_header_value(raw.decode("utf-8", "replace"))
    return None


# -- raw header lines -------------------------------------------------------------------------
#
# Replication forwards an event's headers as the broker stored them: one ``name: value\r\n``
# line per header of the table above (values already escaped), without the position headers
# a destination sets itself. Neither side decodes or encodes the event on that path.

# Headers a destination sets on a replicated event; never taken from the lines it is sent.
POSITION_HEADERS = (HEADER_ORIGIN_SEQ, HEADER_ORIGIN_STREAM)
# Every byte but ':', CR and LF: deleted from header lines, they leave each line's colons and CRLF.
_NOT_SKELETON = bytes(b for b in range(256) if b not in b":\r\n")
# At a line's start (after LF), lowered: an empty name, a broker control header or a position header.
_BAD_LINE_START = re.compile(
    rb"\n(?::|nats-|" + b"|".join(re.escape(name.lower().encode()) + b":" for name in POSITION_HEADERS) + rb")"
)


def _plain_lines(lines: bytes) -> bool:
    """Whether ``lines`` pass every test of ``check_header_lines`` the strict way: each line a
    name without CR, LF or ':' that is not Nats-* or a position header (any case), then ':',
    a value without CR or LF, and CRLF. False also when ``lines`` is empty.

    Scans in C that cost about half of one regular expression matching every byte, on every
    event a destination is sent: the lines' skeleton (their colons and CRLFs alone) says
    where a CR or LF stands alone and which line has no colon; one search of the lowered
    lines finds a line starting with ':', Nats- or a position header.
    """
    if not lines.endswith(b"\r\n"):
        return False
    lined = b"\n" + lines
    skeleton = lined.translate(None, _NOT_SKELETON)
    crlf = skeleton.count(b"\r\n")
    return (
        skeleton.count(b"\r") == crlf
        and skeleton.count(b"\n") == crlf + 1
        # A line without a colon (an empty one too) leaves its CR right after the LF before it.
        and b"\n\r" not in skeleton
        and _BAD_LINE_START.search(lined.lower()) is None
    )


def header_lines(event: event_pb2.Event) -> bytes:
    """The event's headers as raw header lines, position headers left out."""
    return "".join(
        f"{name}: {value}\r\n" for name, value in encode_headers(event) if name not in POSITION_HEADERS
    ).encode()


def parse_header_lines(lines: bytes) -> dict[str, str]:
    """Raw header lines -> {name: value} (values still escaped, as ``decode_event`` takes them)."""
    out: dict[str, str] = {}
    for line in lines.decode("utf-8", "replace").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip()] = value.strip()
    return out


# The ce- names decode_event reads as context attributes: every other ce- name is an extension.
_CE_ATTRIBUTE_NAMES = frozenset(
    {HEADER_ID, HEADER_SOURCE, HEADER_TYPE, HEADER_SPECVERSION, HEADER_TIME, HEADER_DATACONTENTTYPE, HEADER_DATASCHEMA}
)
# The names of a replicated event without extensions (a set compared with its names in C).
_PLAIN_NAMES = _CE_ATTRIBUTE_NAMES | {HEADER_KEY, HEADER_ORIGIN, HEADER_ROUTE, *POSITION_HEADERS}
_TIME_DIGITS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")
# A canonical time's Kafka header by its text (consecutive events mostly share their admission time).
_TIMES = _SharedHeaders("ce_time")


@functools.lru_cache(maxsize=1024)
def _canonical_time(text: str) -> bool:
    """Whether ``text`` is what ``format_time`` writes for the time ``parse_time`` reads from it.

    The pattern fixes every digit's place; what ``strptime`` then takes is a date whose
    fields are those digits, which ``format_time`` writes back as they were.
    """
    if _TIME_DIGITS.fullmatch(text) is None:
        return False
    try:
        _parse_seconds(text[:19])
    except ValueError:  # not a date (a 13th month, a 30th of February): decode_event leaves it out
        return False
    return True


def kafka_record_from_lines(
    lines: bytes, event_id: str, origin_sequence: int, origin_stream: str
) -> tuple[bytes | None, list[tuple[str, bytes]], int] | None:
    """A replicated event's record key, headers and their bytes, straight from its raw header
    lines: what ``kafka_record_headers`` gives for the event ``decode_raw`` makes of the same
    columns, without making it. None where that shortcut does not apply, and the caller
    decodes the event: a value escaped (a ``%``), bytes that are not ASCII, a ``content-type``
    header, a time not in the shape ``format_time`` writes.

    A Kafka destination's replication ingress: decoding each event only to encode it again
    took a third of its CPU. The lines are read as ``parse_header_lines`` reads them, so the
    same header wins where one repeats; extensions come in the order of their lines (the
    event's map has an order of its own, which Kafka readers do not depend on).
    """
    if b"%" in lines or not lines.isascii():
        return None
    fields = parse_header_lines(lines)
    if HEADER_CONTENT_TYPE in fields:
        return None
    get = fields.get
    time_text = get(HEADER_TIME)
    if time_text is not None and not _canonical_time(time_text):
        return None
    extensions = (
        ()
        if fields.keys() <= _PLAIN_NAMES
        else [
            (name[3:], text)
            for name, text in fields.items()
            if name.startswith(CE_PREFIX) and len(name) > 3 and name not in _CE_ATTRIBUTE_NAMES
        ]
    )
    headers, size = _record_headers(
        event_id.encode(),
        get(HEADER_SOURCE, ""),
        get(HEADER_TYPE, ""),
        get(HEADER_SPECVERSION, ""),
        None if time_text is None else _TIMES[time_text],
        get(HEADER_DATACONTENTTYPE, ""),
        get(HEADER_DATASCHEMA, ""),
        extensions,
        get(HEADER_ORIGIN, ""),
        get(HEADER_ROUTE, ""),
        origin_sequence,
        origin_stream,
    )
    key = get(HEADER_KEY)
    return key.encode() if key else None, headers, size


# A byte a header value may not carry unescaped (``_UNSAFE_RE`` on bytes).
_UNSAFE_BYTES = re.compile(rb"[^!#$&-~]")
# The Kafka header names of a record Meshgate writes, extensions aside.
_KAFKA_NAMES = frozenset(
    {
        KAFKA_HEADER_ID,
        "ce_source",
        "ce_type",
        "ce_specversion",
        "ce_time",
        HEADER_CONTENT_TYPE,
        "ce_dataschema",
        HEADER_ORIGIN,
        HEADER_ROUTE,
        *POSITION_HEADERS,
    }
)


# header_lines' order: the context attributes, time, content type, schema, extensions, key, origin, route.
_KAFKA_LINES = (
    b"ce-id: %b\r\nce-source: %b\r\nce-type: %b\r\nce-specversion: %b\r\n%b%b%b%b%bmg-origin: %b\r\nmg-route: %b\r\n"
)


def lines_from_kafka_record(headers: Sequence[tuple[str, bytes | None]], key: bytes | None) -> tuple[str, bytes] | None:
    """A Kafka record's event id and raw header lines, straight from its headers: what
    ``header_lines`` gives for the event ``decode_kafka_record`` makes of the record, without
    making it. None where that shortcut does not apply, and the caller decodes the record: a
    header repeated or without a value, a value or the key that would need escaping, a name
    outside the Kafka binding as Meshgate writes it (an older record's ``ce-`` names, a
    foreign producer's own headers, ``ce_datacontenttype``), no id, a time not in the shape
    ``format_time`` writes.

    A Kafka region's links: decoding each record only to encode its lines again took two
    fifths of the source gateway's CPU. Extensions come in the order of the record's headers
    (the event's map has an order of its own).
    """
    with_none = dict(headers)
    if len(with_none) != len(headers) or None in with_none.values():
        return None
    fields = cast("dict[str, bytes]", with_none)
    if _UNSAFE_BYTES.search(b"".join(fields.values()) + (key or b"")) is not None:
        return None
    get = fields.get
    event_id = get(KAFKA_HEADER_ID)
    if not event_id:
        return None
    extensions = b""
    if not fields.keys() <= _KAFKA_NAMES:
        for name, value in fields.items():
            if name in _KAFKA_NAMES:
                continue
            attribute = name[3:]
            if (
                not name.startswith(KAFKA_CE_PREFIX)
                or not attribute
                or attribute in RESERVED_EXTENSION_NAMES
                or _UNSAFE_RE.search(attribute) is not None
            ):
                return None
            extensions += b"ce-%b: %b\r\n" % (attribute.encode(), value)
    time_value = get("ce_time")
    time_line = b""
    if time_value is not None:
        if not _canonical_time(time_value.decode()):
            return None
        time_line = b"ce-time: %b\r\n" % time_value
    content_type = get(HEADER_CONTENT_TYPE)
    schema = get("ce_dataschema")
    lines = _KAFKA_LINES % (
        event_id,
        get("ce_source") or b"",
        get("ce_type") or b"",
        get("ce_specversion") or b"1.0",
        time_line,
        b"ce-datacontenttype: %b\r\n" % content_type if content_type else b"",
        b"ce-dataschema: %b\r\n" % schema if schema else b"",
        extensions,
        b"mg-key: %b\r\n" % key if key else b"",
        get(HEADER_ORIGIN) or b"",
        get(HEADER_ROUTE) or b"",
    )
    return event_id.decode(), lines


def check_header_lines(lines: bytes) -> str | None:
    """Why ``lines`` may not be written as an event's headers, or None when they may.

    A peer's bytes go into the broker's wire protocol as they are: each line must be
    ``name: value`` ending in CRLF, with no line break of its own, and none may be a header
    the broker acts on (``Nats-*``: a rollup or a TTL would change the stream) or a position
    header the destination sets itself.
    """
    if not lines or _plain_lines(lines):
        return None
    return _header_lines_problem(lines)


def plain_header_blocks(blocks: Sequence[bytes]) -> bool:
    """Whether ``check_header_lines`` finds no problem in any of ``blocks``, in one scan of them all.

    False also when one of them is empty or does not end with CRLF (the caller then checks
    each): each then holds whole lines only, so no line runs from one into the next, and
    their concatenation passes ``_plain_lines`` exactly when each of them does.
    """
    if not blocks or not all(map(bytes.endswith, blocks, repeat(b"\r\n"))):
        return False
    return _plain_lines(b"".join(blocks))


def plain_values(values: Sequence[str]) -> bool:
    """Whether no value of ``values`` needs escaping (``escape_header_value`` returns each as it is)."""
    text = "".join(values)
    # The characters _UNSAFE_RE finds: not ASCII, control characters and DEL (not printable), space, '"', '%'.
    return text.isascii() and text.isprintable() and " " not in text and '"' not in text and "%" not in text


def _header_lines_problem(lines: bytes) -> str | None:
    """``check_header_lines`` test by test: the first problem found, or None."""
    if not lines:
        return None
    if not lines.endswith(b"\r\n"):
        return "header lines do not end with CRLF"
    crlf = lines.count(b"\r\n")
    if lines.count(b"\r") != crlf or lines.count(b"\n") != crlf:
        return "header lines hold a line break outside CRLF"
    if b"\r\n\r\n" in lines:
        return "header lines hold an empty line"
    # The case-insensitive look runs only when a cheap one finds a candidate: every spelling
    # of "nats-" holds "s-" or "S-", every spelling of "mg-origin-seq" and "mg-origin-stream"
    # holds "n-s", "n-S", "N-s" or "N-S".
    if b"s-" in lines or b"S-" in lines or b"n-s" in lines or b"n-S" in lines or b"N-s" in lines or b"N-S" in lines:
        lowered = b"\n" + lines.lower()
        if b"\nnats-" in lowered:
            return "header lines hold a broker control header (Nats-*)"
        for name in POSITION_HEADERS:
            if b"\n" + name.encode() + b":" in lowered:
                return f"header lines hold {name}, which only the destination sets"
    if lines.count(b":") < crlf:
        return "a header line is not 'name: value'"
    return None

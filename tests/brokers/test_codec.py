"""The broker-neutral codec and the NATS wire details, without a server."""

from __future__ import annotations

import functools
import random
import string

import pytest
from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from meshgate.brokers import AppendResult, decode_event, encode_headers, pattern_to_filter
from meshgate.brokers._base import decode_raw
from meshgate.brokers._codec import (
    _UNSAFE_RE,
    RESERVED_EXTENSION_NAMES,
    SubjectMapper,
    decode_kafka_record,
    encode_kafka_headers,
    escape_header_value,
    format_time,
    header_lines,
    kafka_record_from_lines,
    kafka_record_headers,
    kafka_record_id,
    lines_from_kafka_record,
    parse_time,
    subject_to_topic,
    topic_to_subject,
    unescape_header_value,
)
from meshgate.brokers.nats import JetStreamRejectedError, JetStreamUnavailableError
from meshgate.brokers.nats._wire import PubAckParser, header_block, parse_ack_subject, parse_puback
from meshgate.topics import validate_topic
from meshgate.v1 import event_pb2

LEVEL_CHARS = string.ascii_letters + string.digits + "-_"
levels = st.text(LEVEL_CHARS, min_size=1, max_size=64)
topics = st.lists(levels, min_size=1, max_size=16).map("/".join)
region_names = st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=20)
extension_names = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=20).filter(
    lambda n: n not in RESERVED_EXTENSION_NAMES
)
# Any text a client may send, including spaces, line breaks, '%', quotes and non-ASCII.
texts = st.text(st.characters(codec="utf-8"), max_size=40)
timestamps = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.integers(min_value=-62_135_596_800, max_value=253_402_300_799),  # years 1 to 9999
    nanos=st.integers(min_value=0, max_value=999_999_999),
)


SPEC_1_0 = st.just("1.0")


@st.composite
def events(
    draw: st.DrawFn,
    values: st.SearchStrategy[str] = texts,
    specversions: st.SearchStrategy[str] = SPEC_1_0,
    *,
    positions: bool = True,
) -> event_pb2.Event:
    """Events with any text as their values (``values``), and their origin position unless
    ``positions`` is False."""
    event = event_pb2.Event(
        id=draw(values.filter(bool)),
        source=draw(values),
        type=draw(values),
        specversion=draw(specversions),
        datacontenttype=draw(values),
        dataschema=draw(values),
        data=draw(st.binary(max_size=64)),
        topic=draw(topics),
        key=draw(values),
        origin=draw(region_names),
        route=draw(st.lists(region_names, max_size=4)),
        extensions=draw(st.dictionaries(extension_names, values, max_size=4)),
    )
    if positions:
        event.origin_sequence = draw(st.integers(min_value=0, max_value=2**64 - 1))
        event.origin_stream = draw(st.one_of(st.just(""), st.just("orders.created/3"), values))
    if draw(st.booleans()):
        event.time.CopyFrom(draw(timestamps))
    return event


def parse_block(block: str) -> dict[str, str]:
    """A NATS header block read the way nats-py reads what a server delivers."""
    assert block.startswith("NATS/1.0\r\n") and block.endswith("\r\n\r\n")
    return Client._parse_header_lines(block[len("NATS/1.0\r\n") :].encode())


# -- topics -----------------------------------------------------------------------------------


@given(topics)
def test_topic_subject_mapping_is_one_to_one(topic: str) -> None:
    assert validate_topic(topic) is None
    subject = topic_to_subject(topic, "mesh.")
    assert subject == "mesh." + topic.replace("/", ".")
    assert subject_to_topic(subject, "mesh.") == topic
    assert SubjectMapper("mesh.").subject(topic) == subject


@pytest.mark.parametrize(
    "topic",
    ["", "orders/", "/orders", "orders//x", "orders.created", "orders/cre ated", "a" * 65, "/".join(["a"] * 17), "ü"],
)
def test_invalid_topics(topic: str) -> None:
    reason = validate_topic(topic)  # e.g. "topic 'orders//x': level 2 is empty; ..."
    assert reason is not None
    assert reason.startswith("topic")
    with pytest.raises(ValueError, match="topic") as refused:
        SubjectMapper("mesh.").subject(topic)
    assert str(refused.value) == reason


def test_subject_outside_prefix() -> None:
    with pytest.raises(ValueError, match="not a mesh subject"):
        subject_to_topic("other.orders", "mesh.")


@pytest.mark.parametrize(
    ("pattern", "subject"),
    [
        ("orders/*", "mesh.orders.*"),
        ("orders/>", "mesh.orders.>"),
        (">", "mesh.>"),
        ("*/eu/>", "mesh.*.eu.>"),
        ("orders/created", "mesh.orders.created"),
    ],
)
def test_pattern_to_filter(pattern: str, subject: str) -> None:
    assert pattern_to_filter(pattern, "mesh.") == subject


@pytest.mark.parametrize("pattern", ["", "orders/>/x", "orders/*x", "orders/a>", "orders//*", "or ders/*"])
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        pattern_to_filter(pattern, "mesh.")


# -- header values and time -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("plain-value_1.0", "plain-value_1.0"),
        ("https://x.example/a?b=1&c=[2]", "https://x.example/a?b=1&c=[2]"),
        ("two words", "two%20words"),
        ("100%", "100%25"),
        ('say "hi"', "say%20%22hi%22"),
        ("line\r\nbreak", "line%0D%0Abreak"),
        ("ünï", "%C3%BCn%C3%AF"),
        ("", ""),
    ],
)
def test_header_value_escaping(value: str, escaped: str) -> None:
    assert escape_header_value(value) == escaped
    assert unescape_header_value(escaped) == value


@given(texts)
def test_header_value_escaping_round_trips(value: str) -> None:
    escaped = escape_header_value(value)
    assert escaped.isascii() and escaped.isprintable() and " " not in escaped
    assert unescape_header_value(escaped) == value


@pytest.mark.parametrize(
    ("seconds", "nanos", "text"),
    [
        (0, 0, "1970-01-01T00:00:00.000000000Z"),
        (1_735_689_600, 123_456_789, "2025-01-01T00:00:00.123456789Z"),
        (-1, 999_999_999, "1969-12-31T23:59:59.999999999Z"),
        (-62_135_596_800, 0, "0001-01-01T00:00:00.000000000Z"),
        (253_402_300_799, 1, "9999-12-31T23:59:59.000000001Z"),
    ],
)
def test_time_format(seconds: int, nanos: int, text: str) -> None:
    ts = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    assert format_time(ts) == text
    assert parse_time(text) == ts


@pytest.mark.parametrize(
    ("text", "seconds", "nanos"),
    [
        ("2025-01-01T00:00:00Z", 1_735_689_600, 0),
        ("2025-01-01T00:00:00.5Z", 1_735_689_600, 500_000_000),
        ("2025-01-01T02:00:00.123+02:00", 1_735_689_600, 123_000_000),
        ("2024-12-31T23:30:00-00:30", 1_735_689_600, 0),
        ("2025-01-01t00:00:00z", 1_735_689_600, 0),
    ],
)
def test_time_parse_other_rfc3339_forms(text: str, seconds: int, nanos: int) -> None:
    assert parse_time(text) == timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def test_time_parse_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("yesterday")


# -- events -----------------------------------------------------------------------------------


@given(events(), st.integers(min_value=1, max_value=2**63))
def test_event_round_trip(event: event_pb2.Event, sequence: int) -> None:
    headers = dict(encode_headers(event))
    decoded = decode_event(headers, event.data, topic=event.topic, sequence=sequence)
    expected = event_pb2.Event()
    expected.CopyFrom(event)
    expected.sequence = sequence
    assert decoded == expected


@given(events())
def test_nats_header_block_matches_the_neutral_headers(event: event_pb2.Event) -> None:
    block = header_block(event)
    assert block.isascii()
    parsed = parse_block(block)
    assert parsed.pop("Nats-Msg-Id") == parsed["ce-id"]
    assert parsed == dict(encode_headers(event))
    # And what nats-py hands a reader decodes back to the event.
    decoded = decode_event(parse_block(block), event.data, topic=event.topic, sequence=7)
    event.sequence = 7
    assert decoded == event


def test_headers_of_a_typical_event() -> None:
    event = event_pb2.Event(
        id="01J0ABC",
        source="/checkout",
        type="com.example.order.created",
        datacontenttype="application/json; charset=utf-8",
        dataschema="https://example.com/order.json",
        topic="orders/created",
        key="cust-1",
        origin="us-west",
        route=["us-west", "eu-central"],
        extensions={"traceparent": "00-abc-def-01"},
    )
    event.time.FromNanoseconds(1_735_689_600_000_000_001)
    # The NATS binding: every attribute a ce- header, values percent-encoded.
    assert encode_headers(event) == [
        ("ce-id", "01J0ABC"),
        ("ce-source", "/checkout"),
        ("ce-type", "com.example.order.created"),
        ("ce-specversion", "1.0"),  # empty means 1.0
        ("ce-time", "2025-01-01T00:00:00.000000001Z"),
        ("ce-datacontenttype", "application/json;%20charset=utf-8"),
        ("ce-dataschema", "https://example.com/order.json"),
        ("ce-traceparent", "00-abc-def-01"),
        ("mg-key", "cust-1"),
        ("mg-origin", "us-west"),
        ("mg-route", "us-west,eu-central"),
    ]
    # The Kafka binding: ce_ names, datacontenttype as content-type, nothing encoded, the key
    # in the record key.
    assert encode_kafka_headers(event) == [
        ("ce_id", "01J0ABC"),
        ("ce_source", "/checkout"),
        ("ce_type", "com.example.order.created"),
        ("ce_specversion", "1.0"),
        ("ce_time", "2025-01-01T00:00:00.000000001Z"),
        ("content-type", "application/json; charset=utf-8"),
        ("ce_dataschema", "https://example.com/order.json"),
        ("ce_traceparent", "00-abc-def-01"),
        ("mg-origin", "us-west"),
        ("mg-route", "us-west,eu-central"),
    ]


@given(events(), st.integers(min_value=1, max_value=2**63))
def test_kafka_record_round_trip(event: event_pb2.Event, sequence: int) -> None:
    headers = [(name, value.encode()) for name, value in encode_kafka_headers(event)]
    key = event.key.encode() or None
    decoded = decode_kafka_record(headers, key, event.data, topic=event.topic, sequence=sequence, stream="t/0")
    event.sequence, event.stream = sequence, "t/0"
    assert decoded == event
    assert kafka_record_id(headers) == event.id


def test_kafka_records_of_older_versions_still_decode() -> None:
    # Before the Kafka binding was followed: ce- names, percent-encoded values, mg-key.
    headers: list[tuple[str, bytes | None]] = [
        ("ce-id", b"old%20one"),
        ("ce-source", b"/s"),
        ("ce-type", b"t"),
        ("ce-specversion", b"1.0"),
        ("content-type", b"text/plain;%20charset=utf-8"),
        ("ce-note", b"na%C3%AFve"),
        ("mg-key", b"k"),
        ("mg-origin", b"eu"),
        ("mg-route", b"eu,us"),
    ]
    event = decode_kafka_record(headers, b"k", b"x", topic="a")
    assert (event.id, event.source, event.type, event.key) == ("old one", "/s", "t", "k")
    assert event.datacontenttype == "text/plain; charset=utf-8"
    assert dict(event.extensions) == {"note": "na\u00efve"}
    assert kafka_record_id(headers) == "old one"


def test_kafka_decode_takes_a_foreign_producers_headers() -> None:
    headers: list[tuple[str, bytes | None]] = [
        ("CE_ID", b"1"),
        ("ce_time", b"2025-01-01T00:00:00+01:00"),
        ("Content-Type", b"application/json"),
        ("ce_partitionkey", b"p"),
        ("ce_", b"nameless"),
        ("x-other", b"\xff"),
        ("ce_source", None),
    ]
    event = decode_kafka_record(headers, None, None, topic="a")
    assert event.id == "1" and event.datacontenttype == "application/json" and event.data == b""
    assert event.time.ToSeconds() == 1_735_686_000
    assert dict(event.extensions) == {"partitionkey": "p"}


def test_nats_content_type_of_older_versions_still_decodes() -> None:
    event = decode_event({"ce-id": "1", "content-type": "text/plain;%20charset=utf-8"}, b"", topic="a")
    assert event.datacontenttype == "text/plain; charset=utf-8"
    # The binding's header wins over an HTTP-style one, whichever comes first.
    both = {"content-type": "a/b", "ce-datacontenttype": "c/d"}
    assert decode_event(both, b"", topic="a").datacontenttype == "c/d"


def test_origin_stream_header_only_when_set() -> None:
    event = event_pb2.Event(id="x", source="s", type="t", topic="a", origin="o", origin_sequence=5)
    assert [name for name, _ in encode_headers(event)][-1] == "mg-origin-seq"
    event.origin_stream = "mesh.orders.created/7"
    assert encode_headers(event)[-1] == ("mg-origin-stream", "mesh.orders.created/7")
    assert "mg-origin-stream: mesh.orders.created/7\r\n" in header_block(event)
    decoded = decode_event(dict(encode_headers(event)), b"", topic="a", sequence=9, stream="mesh.a/0")
    assert (decoded.origin_sequence, decoded.origin_stream) == (5, "mesh.orders.created/7")
    assert (decoded.sequence, decoded.stream) == (9, "mesh.a/0")


def test_optional_attributes_are_left_out() -> None:
    event = event_pb2.Event(id="x", source="s", type="t", topic="a", origin="o")
    names = [name for name, _ in encode_headers(event)]
    assert names == ["ce-id", "ce-source", "ce-type", "ce-specversion", "mg-origin", "mg-route"]
    decoded = decode_event(dict(encode_headers(event)), b"", topic="a")
    assert not decoded.HasField("time") and decoded.route == [] and decoded.key == ""


@pytest.mark.parametrize("name", sorted(RESERVED_EXTENSION_NAMES))
def test_extension_named_like_an_attribute_is_refused(name: str) -> None:
    event = event_pb2.Event(id="x", topic="a", extensions={name: "v"})
    with pytest.raises(ValueError, match="collides"):
        encode_headers(event)
    with pytest.raises(ValueError, match="collides"):
        header_block(event)
    with pytest.raises(ValueError, match="collides"):
        encode_kafka_headers(event)


def test_decode_native_message_without_headers() -> None:
    event = decode_event(None, b"raw", topic="orders/created", sequence=3)
    assert event == event_pb2.Event(topic="orders/created", data=b"raw", sequence=3)


def test_decode_never_fails_on_foreign_headers() -> None:
    headers = {"ce-id": "a%FFb", "ce-time": "last tuesday", "ce-source": "100%", "mg-route": "", "x-other": "1"}
    event = decode_event(headers, b"", topic="t", sequence=1)
    assert event.id == "a\ufffdb" and event.source == "100%"
    assert not event.HasField("time") and list(event.route) == []
    assert decode_event({"ce-time": "2025-13-45T99:00:00Z"}, b"", topic="t").HasField("time") is False


# -- PubAcks and ack subjects -----------------------------------------------------------------


def test_puback_parsing() -> None:
    parse = PubAckParser("MESHGATE")
    assert parse(b'{"stream":"MESHGATE","seq":42}', None, subject="a", size=1) == AppendResult(42, False)
    assert parse(b'{"stream":"MESHGATE","seq":42,"duplicate": true}', None, subject="a", size=1) == AppendResult(
        42, True
    )
    assert parse(b'{"stream":"MESHGATE","domain":"hub","seq":9}', None, subject="a", size=1) == AppendResult(9, False)


def test_puback_errors() -> None:
    too_big = parse_puback(
        b'{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}',
        None,
        subject="orders/created",
        size=2_000_000,
    )
    assert isinstance(too_big, JetStreamRejectedError) and not too_big.retriable
    assert too_big.err_code == 10054
    assert "event of 2000000 bytes refused" in str(too_big)
    unavailable = parse_puback(
        b'{"error":{"code":503,"err_code":10077,"description":"insufficient resources"}}',
        None,
        subject="orders/created",
        size=10,
    )
    assert isinstance(unavailable, JetStreamUnavailableError) and unavailable.retriable
    no_stream = parse_puback(b"", "503", subject="orders/created", size=10)
    assert isinstance(no_stream, JetStreamUnavailableError) and no_stream.code == 503
    assert "no JetStream stream answered" in str(no_stream)


def test_ack_subjects() -> None:
    v1 = parse_ack_subject("$JS.ACK.MESHGATE.link.2.17.5.1795820448689104042.3")
    assert (v1.delivered, v1.stream_sequence, v1.consumer_sequence, v1.pending) == (2, 17, 5, 3)
    v2 = parse_ack_subject("$JS.ACK.hub.ACCHASH.MESHGATE.link.1.18.6.1795820448689104042.0.abc")
    assert (v2.delivered, v2.stream_sequence, v2.consumer_sequence, v2.pending) == (1, 18, 6, 0)
    with pytest.raises(ValueError, match="ack subject"):
        parse_ack_subject("_INBOX.abc")


def test_escape_header_value_leaves_exactly_what_the_rule_allows() -> None:
    # The string-method look first must never let through what _UNSAFE_RE finds (or escape what
    # it does not): random values over the edge characters of both give the same answer.
    alphabet = [
        "a",
        "Z",
        "0",
        "-",
        "!",
        "#",
        "$",
        "&",
        "~",
        " ",
        '"',
        "%",
        "\x00",
        "\x1f",
        "\x7f",
        "\x80",
        "é",
        "\u200b",
        "\u2028",
    ]
    rng = random.Random(11)
    for _ in range(20_000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        plain = _UNSAFE_RE.search(value) is None
        assert (escape_header_value(value) == value) is plain, repr(value)
        assert unescape_header_value(escape_header_value(value)) == value, repr(value)


# -- a replicated event's Kafka record, straight from its header lines -------------------------

# Values that need no escaping: the lines of most replicated events.
PLAIN_CHARS = string.ascii_letters + string.digits + "-_./:;=+!#$&'()*,<>?@[]^`{|}~"
plain_texts = st.text(st.sampled_from(PLAIN_CHARS), max_size=30)


# Events whose values need no escaping, with every specversion a peer may send.
plain_events = functools.partial(events, plain_texts, st.sampled_from(["", "1.0", "0.3"]), positions=False)


_KafkaRecord = tuple[bytes | None, list[tuple[str, bytes]], int]


def _decoded_record(lines: bytes, event_id: str, seq: int, stream: str) -> _KafkaRecord:
    """What the Kafka adapter wrote for a raw event before the shortcut: decode, then encode."""
    [event] = decode_raw([event_id], ["orders/created"], [lines], [b"x"], [seq], [stream])
    headers, size = kafka_record_headers(event)
    return (event.key.encode() if event.key else None), headers, size


def _same_record(fast: _KafkaRecord, slow: _KafkaRecord) -> None:
    # Extensions come in the lines' order on the shortcut, in the event map's on the decoded path.
    assert fast[0] == slow[0]
    assert fast[2] == slow[2] == sum(len(name) + len(value) for name, value in slow[1])
    assert sorted(fast[1]) == sorted(slow[1])
    fixed = [name for name, _ in slow[1] if not name.startswith("ce_") or name in _CE_FIXED]
    assert [name for name, _ in fast[1] if not name.startswith("ce_") or name in _CE_FIXED] == fixed


_CE_FIXED = {"ce_id", "ce_source", "ce_type", "ce_specversion", "ce_time", "ce_dataschema"}


@given(plain_events(), st.integers(min_value=0, max_value=2**64 - 1), st.sampled_from(["", "orders.created/3"]))
def test_a_kafka_record_made_from_plain_lines_is_the_one_the_decoded_event_makes(
    event: event_pb2.Event, seq: int, stream: str
) -> None:
    lines = header_lines(event)
    fast = kafka_record_from_lines(lines, event.id, seq, stream)
    assert fast is not None  # every value plain, the time as format_time writes it: the shortcut applies
    _same_record(fast, _decoded_record(lines, event.id, seq, stream))


@given(events(), st.integers(min_value=0, max_value=2**64 - 1))
def test_a_kafka_record_made_from_any_lines_is_the_one_the_decoded_event_makes_or_none(
    event: event_pb2.Event, seq: int
) -> None:
    lines = header_lines(event)
    fast = kafka_record_from_lines(lines, event.id, seq, "")
    if fast is None:
        assert b"%" in lines or not lines.isascii()  # escaped values: the event is decoded
    else:
        _same_record(fast, _decoded_record(lines, event.id, seq, ""))


_BASE = b"ce-source: /p\r\nce-type: t\r\nce-specversion: 1.0\r\nmg-origin: a\r\nmg-route: a,b\r\n"


@pytest.mark.parametrize(
    ("extra", "shortcut"),
    [
        # A peer's lines as Meshgate would never write them, read as parse_header_lines reads them.
        (b"ce-time: 2026-12-07T01:02:03.123456789Z\r\n", True),
        (b"ce-time:2026-12-07T01:02:03.000000000Z  \r\n", True),  # no space, trailing blanks
        (b"ce-type: other\r\nce-type: again\r\n", True),  # a repeated header: the last wins
        (b"x-foreign: 1\r\nCE-Upper: 2\r\nce-: 3\r\n", True),  # not the binding's: left out
        (b"mg-key: k-1\r\nce-tenant: t\r\nce-traceparent: 00-ab-cd-01\r\n", True),
        (b"ce-specversion: \r\nce-datacontenttype: \r\nce-dataschema: s\r\n", True),
        (b"mg-route: \r\nmg-origin: \r\n", True),
        # Where the decoded event differs from the lines' text: the event is decoded.
        (b"ce-time: 2026-12-07T01:02:03Z\r\n", False),  # no fraction: format_time writes nine digits
        (b"ce-time: 2026-12- 7T01:02:03.000000000Z\r\n", False),  # strptime reads the space
        (b"ce-time: 2026-02-30T01:02:03.000000000Z\r\n", False),  # no such day: the time is dropped
        (b"ce-time: 0000-01-01T00:00:00.000000000Z\r\n", False),
        (b"ce-time: 2026-12-07T01:02:60.000000000Z\r\n", False),  # a leap second: no datetime
        (b"ce-time: 2026-12-07t01:02:03.000000000z\r\n", False),
        (b"content-type: text/plain\r\n", False),
        (b"ce-tenant: na%C3%AFve\r\n", False),
        ("ce-tenant: naïve\r\n".encode(), False),
    ],
)
def test_a_kafka_record_from_a_peers_lines_is_the_decoded_events_or_the_event_is_decoded(
    extra: bytes, shortcut: bool
) -> None:
    lines = _BASE + extra
    fast = kafka_record_from_lines(lines, "id-1", 7, "")
    assert (fast is not None) is shortcut
    if fast is not None:
        _same_record(fast, _decoded_record(lines, "id-1", 7, ""))


# -- a Kafka record's raw header lines, straight from its headers -----------------------------


def _decoded_lines(headers: list[tuple[str, bytes | None]], key: bytes | None) -> tuple[str, bytes]:
    """What a Kafka region's link sent for a record before the shortcut: decode, then encode."""
    event = decode_kafka_record(headers, key, b"x", topic="orders/created")
    return event.id, header_lines(event)


def _same_lines(fast: tuple[str, bytes], slow: tuple[str, bytes]) -> None:
    # Extensions come in the headers' order on the shortcut, in the event map's on the decoded path.
    assert fast[0] == slow[0]
    fast_lines, slow_lines = fast[1].split(b"\r\n"), slow[1].split(b"\r\n")
    assert sorted(fast_lines) == sorted(slow_lines)
    fixed = [line for line in slow_lines if not line.startswith(b"ce-") or line.split(b":")[0] in _CE_LINE_NAMES]
    assert [
        line for line in fast_lines if not line.startswith(b"ce-") or line.split(b":")[0] in _CE_LINE_NAMES
    ] == fixed


_CE_LINE_NAMES = {
    b"ce-id",
    b"ce-source",
    b"ce-type",
    b"ce-specversion",
    b"ce-time",
    b"ce-datacontenttype",
    b"ce-dataschema",
}


@given(plain_events(), st.integers(min_value=0, max_value=2**64 - 1), st.sampled_from(["", "orders.created/3"]))
def test_lines_made_from_a_kafka_record_meshgate_wrote_are_those_of_its_decoded_event(
    event: event_pb2.Event, seq: int, stream: str
) -> None:
    event.origin_sequence, event.origin_stream = seq, stream
    headers, _ = kafka_record_headers(event)
    key = event.key.encode() if event.key else None
    fast = lines_from_kafka_record(headers, key)
    assert fast is not None  # every value plain, the time as format_time writes it: the shortcut applies
    _same_lines(fast, _decoded_lines(list(headers), key))


@given(events())
def test_lines_made_from_any_kafka_record_meshgate_wrote_are_its_decoded_events_or_none(
    event: event_pb2.Event,
) -> None:
    headers, _ = kafka_record_headers(event)
    key = event.key.encode() if event.key else None
    fast = lines_from_kafka_record(headers, key)
    if fast is None:
        # A value that needs escaping on NATS, or no id: the record is decoded.
        assert any(_UNSAFE_RE.search(v.decode()) for _, v in headers) or _UNSAFE_RE.search(event.key) or not event.id
    else:
        _same_lines(fast, _decoded_lines(list(headers), key))


_RECORD = [("ce_id", b"r-1"), ("ce_source", b"/p"), ("ce_type", b"t"), ("mg-origin", b"k"), ("mg-route", b"k,n")]


@pytest.mark.parametrize(
    ("extra", "key", "shortcut"),
    [
        # Records as a foreign producer or a CloudEvents SDK may write them.
        ([], None, True),  # no specversion: 1.0
        ([("ce_specversion", b"0.3"), ("ce_time", b"2026-12-07T01:02:03.123456789Z")], b"k-1", True),
        ([("content-type", b"application/json"), ("ce_dataschema", b"s"), ("ce_Tenant", b"t")], None, True),
        ([("ce_specversion", b""), ("content-type", b""), ("mg-origin-seq", b"x")], b"", True),
        # Where the decoded event differs from the headers' text: the record is decoded.
        ([("ce_type", b"again")], None, False),  # repeated: the last wins
        ([("ce_tenant", None)], None, False),
        ([("ce_time", b"2026-12-07T01:02:03Z")], None, False),
        ([("ce_time", b"2026-02-30T01:02:03.000000000Z")], None, False),
        ([("ce_datacontenttype", b"text/plain"), ("content-type", b"application/json")], None, False),
        ([("Content-Type", b"application/json")], None, False),
        ([("ce-tenant", b"t")], None, False),  # an older record's name
        ([("x-foreign", b"1")], None, False),
        ([("ce_", b"1")], None, False),
        ([("ce_tenant", b"a b")], None, False),  # escaped on NATS
        ([("ce_tenant", "naïve".encode())], None, False),
        ([("ce_t%x", b"1")], None, False),
        ([], b"a key", False),
    ],
)
def test_lines_from_a_foreign_kafka_record_are_its_decoded_events_or_the_record_is_decoded(
    extra: list[tuple[str, bytes | None]], key: bytes | None, shortcut: bool
) -> None:
    headers = _RECORD + extra
    fast = lines_from_kafka_record(headers, key)
    assert (fast is not None) is shortcut
    if fast is not None:
        _same_lines(fast, _decoded_lines(headers, key))
    assert lines_from_kafka_record([h for h in headers if h[0] != "ce_id"], key) is None  # no id

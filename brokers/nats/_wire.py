"""NATS wire details of the adapter: the header block, PubAcks and JetStream ack subjects.

The header block is rendered straight into the ``NATS/1.0`` text form instead of going
through a headers dict: nats-py validates and re-encodes a dict key by key on every publish,
which halves the publish rate with the ten headers of an event. ``tests/brokers`` checks that
this renderer and the broker-neutral ``encode_headers`` agree.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import repeat

from meshgate.brokers._base import AppendResult, BrokerError
from meshgate.brokers._codec import (
    RESERVED_EXTENSION_NAMES,
    escape_header_value,
    escaped_repeated,
    format_time_repeated,
    unescape_header_value,
)
from meshgate.brokers.nats._errors import JetStreamUnavailableError, jetstream_error
from meshgate.v1 import event_pb2

__all__ = [
    "AckMetadata",
    "PubAckParser",
    "header_block",
    "parse_ack_subject",
    "parse_header_block",
    "parse_puback",
    "split_header_block",
    "split_header_blocks",
]

_HEAD = "NATS/1.0\r\nNats-Msg-Id: "


def header_block(event: event_pb2.Event) -> str:
    """The HPUB header section (``NATS/1.0`` line to the blank line) of an event.

    ``Nats-Msg-Id`` carries the event id: JetStream drops a second message with the same id
    within the stream's duplicate window and answers with the original's sequence.
    Raises ``ValueError`` for an extension named like a context attribute.
    """
    esc = escaped_repeated
    eid = escape_header_value(event.id)
    spec = event.specversion
    block = (
        f"{_HEAD}{eid}\r\nce-id: {eid}\r\nce-source: {esc[event.source]}\r\nce-type: {esc[event.type]}"
        f"\r\nce-specversion: {esc[spec] if spec else '1.0'}\r\n"
    )
    if event.HasField("time"):
        block += f"ce-time: {format_time_repeated(event.time)}\r\n"
    ctype = event.datacontenttype
    if ctype:
        block += f"ce-datacontenttype: {esc[ctype]}\r\n"
    if event.dataschema:
        block += f"ce-dataschema: {esc[event.dataschema]}\r\n"
    if event.extensions:
        for name, value in event.extensions.items():
            if name in RESERVED_EXTENSION_NAMES:
                raise ValueError(f"extension {name!r} collides with the CloudEvents attribute of that name")
            block += f"ce-{esc[name]}: {escape_header_value(value)}\r\n"
    key = event.key
    if key:
        block += f"mg-key: {escape_header_value(key)}\r\n"
    if event.origin_sequence:
        block += f"mg-origin-seq: {event.origin_sequence}\r\n"
    if event.origin_stream:
        block += f"mg-origin-stream: {escape_header_value(event.origin_stream)}\r\n"
    # Slicing first: iterating a protobuf repeated field item by item is slow.
    return f"{block}mg-origin: {esc[event.origin]}\r\nmg-route: {esc[','.join(event.route[:])]}\r\n\r\n"


class PubAckParser:
    """PubAck payload -> append result, with a fast path for the common ack of one stream.

    A plain ack is ``{"stream":"<name>","seq":<n>}``: matching that exact byte shape and
    reading the number is several times cheaper than ``json.loads``, and it runs per event.
    Anything else (duplicates, domains, errors, a sequence of 0, a future field) goes through
    the JSON path, where an ``error`` always wins over whatever else the reply carries.
    """

    __slots__ = ("head", "head_len")

    def __init__(self, stream: str) -> None:
        self.head = b'{"stream":' + json.dumps(stream).encode() + b',"seq":'
        self.head_len = len(self.head)

    def __call__(self, data: bytes, status: str | None, *, subject: str, size: int) -> AppendResult | BrokerError:
        if data.startswith(self.head) and data.endswith(b"}"):
            digits = data[self.head_len : -1]
            # A stored event's sequence starts at 1: "0" (or a leading zero) is no ack.
            if digits.isdigit() and digits[0] != _ZERO:
                return AppendResult(int(digits), False)
        return parse_puback(data, status, subject=subject, size=size)


# The byte value of b"0": a fast-path sequence must not start with it.
_ZERO = 0x30


def parse_puback(data: bytes, status: str | None, *, subject: str, size: int) -> AppendResult | BrokerError:
    """A PubAck payload -> the append result, or the broker error it reports.

    ``status`` is the NATS status header of a payload-less reply (503: nobody answers the
    subject, e.g. the stream is missing or JetStream is still recovering after a restart).
    An ``error`` wins over every other field: JetStream answers a write it could not store
    (e.g. ``{"error": {"code": 503, "err_code": 10023, ...}, "stream": "S", "seq": 0}`` when
    out of room) with the same fields as an ack. A reply without a sequence of 1 or more is
    never an ack either.
    """
    if not data:
        code = int(status) if status and status.isdigit() else 503
        return JetStreamUnavailableError(
            f"no JetStream stream answered {subject!r} (status {code}): the stream may be missing "
            "or JetStream may be recovering; retry later",
            code=code,
            err_code=0,
            description="no responders",
        )
    try:
        resp = json.loads(data)
    except ValueError as exc:
        return _unreadable(data, subject, f"not JSON: {exc}")
    if not isinstance(resp, dict):
        return _unreadable(data, subject, "not a JSON object")
    err = resp.get("error")
    if err is not None:
        if not isinstance(err, dict):
            err = {"description": str(err)}
        return jetstream_error(
            code=_int(err.get("code"), 500),
            err_code=_int(err.get("err_code"), 0),
            description=str(err.get("description") or data[:200].decode(errors="replace")),
            subject=subject,
            size=size,
        )
    seq = resp.get("seq")
    # bool is an int to Python, never a sequence to JetStream.
    if type(seq) is not int or seq < 1:
        return _unreadable(data, subject, f"no stored sequence (seq {seq!r})")
    return AppendResult(seq, resp.get("duplicate", False) is True)


def _int(value: object, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return default


def _unreadable(data: bytes, subject: str, why: str) -> BrokerError:
    # Not known to be stored, not known to be refused: the writer retries with the same id and
    # the duplicate window absorbs a write that did land.
    return JetStreamUnavailableError(
        f"JetStream's reply to a write on {subject!r} is no ack ({why}): {data[:200]!r}; "
        "the event is not counted as stored",
        code=500,
        err_code=0,
        description=why,
    )


@dataclass(frozen=True, slots=True)
class AckMetadata:
    stream_sequence: int
    consumer_sequence: int
    delivered: int
    # Messages on the consumer's filter after this one when it was delivered.
    pending: int
    # When the stream stored it, in Unix nanoseconds.
    timestamp_ns: int = 0


def parse_ack_subject(reply: str) -> AckMetadata:
    """Reads a JetStream delivery's ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` or, with a domain,
    ``$JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>.<token>``.
    """
    tokens = reply.split(".")
    n = len(tokens)
    if n == 9:
        base = 4
    elif n >= 11:
        base = 6
    else:
        raise ValueError(f"not a JetStream ack subject: {reply!r}")
    return AckMetadata(
        stream_sequence=int(tokens[base + 1]),
        consumer_sequence=int(tokens[base + 2]),
        delivered=int(tokens[base]),
        pending=int(tokens[base + 4]),
        timestamp_ns=int(tokens[base + 3]),
    )


_HEADER_LINE = b"NATS/1.0"
_MSG_ID_HEAD = b"NATS/1.0\r\nNats-Msg-Id: "
_MSG_ID_HEAD_LEN = len(_MSG_ID_HEAD)


def parse_header_block(block: bytes | None) -> dict[str, str] | None:
    """A stored message's header block -> {name: value}, as ``decode_event`` takes them."""
    if not block:
        return None
    out: dict[str, str] = {}
    lines = block.decode("utf-8", "replace").split("\r\n")
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip()] = value.strip()
    return out


_ID_LINE_RE = re.compile(rb"NATS/1\.0\r\nNats-Msg-Id: ([^\r\n]*)\r\n")


def split_header_blocks(blocks: list[bytes | None]) -> tuple[list[str], list[bytes]] | None:
    """``split_header_block`` of every block, in a few scans of them all when each is in Meshgate's
    own form (``Nats-Msg-Id`` first and the only ``Nats-`` line, an id with nothing escaped);
    None otherwise (the caller then splits each)."""
    if None in blocks:
        return None
    whole: list[bytes] = blocks  # type: ignore[assignment]  # no None in it
    n = len(whole)
    if not all(map(bytes.startswith, whole, repeat(_MSG_ID_HEAD))):
        return None
    joined = b"".join(whole)
    # Each block holds one "\nNats-" (its id line's): no other control header is in its lines.
    if joined.count(b"\nNats-") != n:
        return None
    raw_ids = _ID_LINE_RE.findall(joined)
    if len(raw_ids) != n or b"%" in b"".join(raw_ids):
        return None
    try:
        ids = b"\n".join(raw_ids).decode().split("\n")
    except UnicodeDecodeError:
        return None
    skip = _MSG_ID_HEAD_LEN + 2
    return ids, [block[skip + len(raw) : -2] for block, raw in zip(whole, raw_ids, strict=True)]


def split_header_block(block: bytes | None) -> tuple[str, bytes]:
    """A stored event's header block -> (its id, its raw header lines without ``Nats-*``).

    Meshgate writes ``Nats-Msg-Id`` first, right after the version line, so the common case
    is two slices; a block written otherwise (a native producer) is parsed line by line and
    the id taken from ``ce-id``.
    """
    if not block:
        return "", b""
    if block.startswith(_MSG_ID_HEAD):
        eol = block.find(b"\r\n", _MSG_ID_HEAD_LEN)
        rest = block[eol + 2 : -2]
        if eol > 0 and b"\nNats-" not in rest and not rest.startswith(b"Nats-"):
            return unescape_header_value(block[_MSG_ID_HEAD_LEN:eol].decode()), rest
    eid = ""
    kept = []
    for line in block.split(b"\r\n")[1:]:
        if not line or line[:5].lower() == b"nats-":
            continue
        if line.lower().startswith(b"ce-id:"):
            eid = unescape_header_value(line[6:].strip().decode(errors="replace"))
        kept.append(line + b"\r\n")
    return eid, b"".join(kept)

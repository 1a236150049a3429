"""A faster reader of the NATS protocol for the adapter's connection, with raw subscriptions.

nats-py handles every incoming message the same way: two regular expressions over its
buffer, a parsed header dict, a ``Msg`` object, a queue hop and an awaited callback in the
subscription's own task. For the adapter's busiest subscriptions (the PubAck inbox, several
per event published; the pull inboxes of readers and durable consumers) that is most of the
cost of a message. This parser replaces nats-py's on the adapter's ``Client``: it walks its
buffer by offsets and hands a message of a *raw* subscription straight to a plain callback
as ``(subject, reply, header block, payload)`` bytes, in the reader task, without a ``Msg``
or a header dict. Every other message and protocol operation goes to nats-py's own handlers
exactly as its parser would.

It relies on nats-py internals (the client's ``_ps`` parser and its ``_process_*``
methods); ``install`` returns None when they are missing, and ``RawSubscriber`` then falls
back to an ordinary subscription that renders the header block back from nats-py's dict.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import nats.errors

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = [
    "AckRunHandler",
    "FastParser",
    "RawHandler",
    "RawRunHandler",
    "install",
    "subscribe_acks",
    "subscribe_raw",
]

log = logging.getLogger(__name__)

# (subject, reply, header block or None, payload); called in the connection's reader task.
RawHandler = Callable[[bytes, bytes, bytes | None, bytes], None]
# A run of a raw subscription's messages read back to back, each (subject, reply, header block,
# payload), in order; called in the connection's reader task.
RawRunHandler = Callable[[list[tuple[bytes, bytes, bytes | None, bytes]]], None]
# A run of plain PubAcks read in one scan: (the token after the inbox prefix, the sequence)
# of each, in order; called in the connection's reader task.
AckRunHandler = Callable[[list[tuple[bytes, bytes]]], None]

_MAX_CONTROL_LINE = 4096
# First bytes of HMSG and MSG.
_MSG_START = frozenset(b"HM")


class _AckRun:
    """The PubAck inbox of the adapter's writes, read a run of plain acks at a time.

    JetStream answers each write with its own message; a writer with thousands in flight gets
    them back to back: ``MSG <inbox>.<token> <sid> <size>``, CRLF, ``{"stream":"S","seq":N}``,
    CRLF. A match of one pattern per frame (in C, each where the last ended) and one call of
    the handler per run cost under half of a frame-by-frame parse and a call per ack. A frame
    of any other shape (a duplicate, a domain, an error, a status) ends the run and is read by
    the frame parser as before.
    """

    __slots__ = ("fixed", "handler", "pattern", "start")

    def __init__(self, prefix: bytes, sid: int, head: bytes, handler: AckRunHandler) -> None:
        self.start = b"MSG " + prefix
        self.pattern = re.compile(
            re.escape(self.start)
            + rb"(\d+) "
            + str(sid).encode()
            + rb" (\d+)\r\n"
            + re.escape(head)
            + rb"([1-9]\d*)\}\r\n"
        )
        # The payload's size but for its sequence's digits (checked against the frame's size).
        self.fixed = len(head) + 1
        self.handler = handler

    def scan(self, buf: bytes, pos: int) -> tuple[list[tuple[bytes, bytes]], int]:
        """The plain acks from ``pos`` on, and where the first frame after them starts."""
        acks: list[tuple[bytes, bytes]] = []
        fixed = self.fixed
        match = self.pattern.match
        while (m := match(buf, pos)) is not None:
            token, size, seq = m.groups()
            if int(size) != fixed + len(seq):
                break  # not the payload it looks like: the frame parser reads it
            acks.append((token, seq))
            pos = m.end()
        return acks, pos


class FastParser:
    """Drop-in for ``nats.protocol.parser.Parser`` (``reset`` and ``parse``)."""

    __slots__ = ("acks", "buf", "nc", "raw", "runs")

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        # sid -> handler of the raw subscriptions.
        self.raw: dict[int, RawHandler] = {}
        # sid -> run handler of the raw subscriptions that take their messages in runs.
        self.runs: dict[int, RawRunHandler] = {}
        # The PubAck inbox read in runs (subscribe_acks), if any.
        self.acks: _AckRun | None = None
        self.buf = b""

    def reset(self) -> None:
        self.buf = b""

    # The per-message hot loop: a frame is parsed inline, without a function call per message.
    async def parse(self, data: bytes = b"") -> None:  # noqa: C901, PLR0912, PLR0915 - one framing state machine
        buf = self.buf + data if self.buf else bytes(data)
        pos = 0
        end = len(buf)
        raw = self.raw
        runs = self.runs
        nc: Any = self.nc
        received = 0
        ack_start = self.acks.start if self.acks is not None else None
        try:
            while pos < end:
                if ack_start is not None and buf.startswith(ack_start, pos):
                    after = self._take_acks(buf, pos)
                    if after > pos:
                        pos = after
                        continue
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > _MAX_CONTROL_LINE:
                        raise nats.errors.ProtocolError
                    break
                c = buf[pos]
                if c in _MSG_START:
                    args = buf[pos:eol].split()
                    n = len(args)
                    if args[0] == b"HMSG":
                        if n == 6:
                            reply = args[3]
                        elif n == 5:
                            reply = b""
                        else:
                            raise nats.errors.ProtocolError
                        hlen = int(args[-2])
                    elif args[0] == b"MSG":
                        if n == 5:
                            reply = args[3]
                        elif n == 4:
                            reply = b""
                        else:
                            raise nats.errors.ProtocolError
                        hlen = 0
                    else:
                        raise nats.errors.ProtocolError
                    size = int(args[-1])
                    start = eol + 2
                    stop = start + size
                    if stop + 2 > end:
                        break  # the payload is not all here yet
                    hdr = buf[start : start + hlen] if hlen else None
                    payload = buf[start + hlen : stop]
                    pos = stop + 2
                    sid = int(args[2])
                    handler = raw.get(sid)
                    if handler is not None:
                        on_run = runs.get(sid) if reply else None
                        if on_run is not None:
                            run = [(args[1], reply, hdr, payload)]
                            pos = _extend_run(run, buf, pos, end, args[2])
                            received += len(run)
                            try:
                                on_run(run)
                            except Exception:
                                # One bad run must not stop the connection's reader.
                                log.exception("NATS raw subscription %d failed on a run of %d messages", sid, len(run))
                            continue
                        received += 1
                        try:
                            handler(args[1], reply, hdr, payload)
                        except Exception:
                            # One bad message must not stop the connection's reader.
                            log.exception("NATS raw subscription %d failed on a message of %r", sid, args[1])
                    else:
                        await nc._process_msg(sid, args[1], reply, payload, hdr)
                    continue
                line = buf[pos:eol]
                pos = eol + 2
                await _control(nc, line)
        except ValueError as exc:
            # A size that is not a number: nats-py reconnects on a protocol error (any other
            # exception would stop its reader and leave the connection silent).
            raise nats.errors.ProtocolError from exc
        finally:
            self.buf = buf[pos:] if pos < end else b""
            if received:  # nats-py counts the others itself
                nc.stats["in_msgs"] += received

    def _take_acks(self, buf: bytes, pos: int) -> int:
        """Hands the run of plain acks at ``pos`` to the inbox's handler; where the next frame starts."""
        acks = self.acks
        if acks is None:
            return pos
        run, after = acks.scan(buf, pos)
        if run:
            self.nc.stats["in_msgs"] += len(run)
            try:
                acks.handler(run)
            except Exception:
                # One bad run must not stop the connection's reader.
                log.exception("NATS PubAck inbox failed on a run of %d acks", len(run))
        return after


def _extend_run(run: list[tuple[bytes, bytes, bytes | None, bytes]], buf: bytes, pos: int, end: int, sid: bytes) -> int:
    """Appends to ``run`` the whole ``HMSG`` frames with a reply of subscription ``sid`` from ``pos``
    on, back to back; returns where the first other frame (or an incomplete one) starts.

    A pull's deliveries come so, hundreds in a read: one loop here, without a handler call
    and its wake-up per message, costs about a fifth less than the frame parser's. A status
    (no reply), another subscription's frame or anything else ends the run and is read by
    the frame parser as before.
    """
    append = run.append
    find = buf.find
    startswith = buf.startswith
    while startswith(b"HMSG ", pos):
        eol = find(b"\r\n", pos)
        if eol < 0:
            break
        # subject, sid, reply, header size, total size
        args = buf[pos + 5 : eol].split(b" ")
        if len(args) != 5 or args[1] != sid:
            break
        start = eol + 2
        stop = start + int(args[4])
        if stop + 2 > end:
            break  # the payload is not all here yet
        head = start + int(args[3])
        append((args[0], args[2], buf[start:head] if head > start else None, buf[head:stop]))
        pos = stop + 2
    return pos


async def _control(nc: Any, line: bytes) -> None:
    """Hands a protocol operation other than a message to nats-py's own handler."""
    if line == b"PING":
        await nc._process_ping()
    elif line == b"PONG":
        await nc._process_pong()
    elif line == b"+OK":
        pass
    elif line.startswith(b"-ERR"):
        await nc._process_err(line[4:].strip().decode(errors="replace").lower())
    elif line.startswith(b"INFO "):
        await nc._process_info(json.loads(line[5:]))
    else:
        raise nats.errors.ProtocolError


def install(nc: Client) -> FastParser | None:
    """Puts a FastParser in place of nats-py's on ``nc`` (before connecting); None if it cannot."""
    if not all(callable(getattr(nc, name, None)) for name in ("_process_msg", "_process_ping", "_process_pong")):
        return None
    if not callable(getattr(getattr(nc, "_ps", None), "parse", None)):
        return None
    parser = FastParser(nc)
    client: Any = nc
    client._ps = parser
    return parser


def _render_headers(msg: Msg) -> bytes | None:
    """The header block of a message nats-py already parsed (the fallback path only)."""
    headers = msg.headers
    if not headers:
        return None
    status = headers.get("Status")
    if status is not None:
        desc = headers.get("Description", "")
        return f"NATS/1.0 {status} {desc}".rstrip().encode() + b"\r\n\r\n"
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"NATS/1.0\r\n{lines}\r\n".encode()


async def subscribe_raw(
    nc: Client, subject: str, handler: RawHandler, *, pending_msgs_limit: int, on_run: RawRunHandler | None = None
) -> Subscription:
    """Subscribes ``handler`` to ``subject`` as a raw subscription (or its fallback).

    ``on_run``: takes the messages with a reply that come back to back, a run at a time, in
    place of ``handler`` (which still takes those without a reply, as a status comes).
    """
    ps = getattr(nc, "_ps", None)
    parser = ps if isinstance(ps, FastParser) else None

    async def fallback(msg: Msg) -> None:
        handler(msg.subject.encode(), msg.reply.encode(), _render_headers(msg), msg.data)

    async def unused(msg: Msg) -> None:  # pragma: no cover - raw messages never reach it
        return None

    cb = unused if parser is not None else fallback
    sub = await nc.subscribe(subject, cb=cb, pending_msgs_limit=pending_msgs_limit)
    if parser is not None:
        parser.raw[sub._id] = handler
        if on_run is not None:
            parser.runs[sub._id] = on_run
    return sub


async def subscribe_acks(
    nc: Client, prefix: str, head: bytes, handler: RawHandler, on_run: AckRunHandler, *, pending_msgs_limit: int
) -> Subscription:
    """Subscribes the PubAck inbox ``prefix``*: plain acks (payload ``head`` + sequence + ``}``)
    go to ``on_run`` a run at a time, every other message to ``handler`` as a raw subscription's."""
    sub = await subscribe_raw(nc, f"{prefix}*", handler, pending_msgs_limit=pending_msgs_limit)
    parser = getattr(nc, "_ps", None)
    if isinstance(parser, FastParser):
        parser.acks = _AckRun(prefix.encode(), sub._id, head, on_run)
    return sub


def unsubscribe_raw(nc: Client, sub: Subscription) -> None:
    parser = getattr(nc, "_ps", None)
    if isinstance(parser, FastParser):
        with contextlib.suppress(AttributeError):
            parser.raw.pop(sub._id, None)
            parser.runs.pop(sub._id, None)

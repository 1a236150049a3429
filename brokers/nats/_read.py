"""The NATS adapter's reads: Subscribe's ordered ephemeral readers on the reader connection, and log positions."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    ReplayPolicy,
)

from meshgate.brokers._base import (
    BrokerUnavailableError,
    StartAt,
    sequence_position,
)
from meshgate.brokers._codec import (
    HEADER_ORIGIN_SEQ,
    HEADER_ORIGIN_STREAM,
    decode_event,
    unescape_header_value,
)
from meshgate.brokers._headers import header_value
from meshgate.brokers.nats._errors import (
    NATS_FAILURES,
    broker_error,
)
from meshgate.brokers.nats._names import reader_name
from meshgate.brokers.nats._pull import (
    BYTES,
    CLOSED,
    CONSUMER_LOST,
    FULL,
    NO_MESSAGES,
    PULL_BYTES_SLACK,
    PULL_GRACE_SECONDS,
    TIMEOUT,
    PullSubscription,
)
from meshgate.brokers.nats._state import NatsState
from meshgate.brokers.nats._wire import (
    parse_ack_subject,
    parse_header_block,
)
from meshgate.v1 import event_pb2

__all__ = ["NatsRead"]

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The last time nats-server's int64 nanosecond clock can hold (Go's UnixNano ends in 2262).
_LAST_SERVER_TIME = datetime(2262, 1, 1, tzinfo=UTC)

# How long a caught-up reader's pull for the next event lingers on the server.
_IDLE_PULL_SECONDS = 5.0
# Ephemeral reader consumers the server removes when their reader has gone (crash, cancel).
_READER_INACTIVE_SECONDS = 60.0
# What one pull of a reader may bring when its caller sets no max_bytes: far below nats-server's
# max_pending (64 MiB by default), past which the server drops the connection as a slow consumer.
_READ_PULL_BYTES = 4 * 1024 * 1024

_ORIGIN_SEQ_NAME = HEADER_ORIGIN_SEQ.encode()
_ORIGIN_STREAM_NAME = HEADER_ORIGIN_STREAM.encode()

_T = TypeVar("_T")
# What a reader makes of a delivery: (subject, header block, payload, stream sequence) -> an item.
_Make = Callable[[bytes, "bytes | None", bytes, int], _T]


class _StartMode(enum.Enum):
    LATEST = "latest"
    EARLIEST = "earliest"
    TIME = "time"
    SEQUENCE = "sequence"


def _start_mode(start: StartAt) -> _StartMode:
    chosen = [
        mode
        for mode, on in (
            (_StartMode.EARLIEST, start.earliest),
            (_StartMode.TIME, start.time is not None),
            (_StartMode.SEQUENCE, start.sequence is not None),
        )
        if on
    ]
    if len(chosen) > 1:
        raise ValueError(
            f"StartAt sets {len(chosen)} positions ({', '.join(m.value for m in chosen)}); set at most one"
        )
    return chosen[0] if chosen else _StartMode.LATEST


@dataclass(slots=True)
class _Cursor:
    """Where one reader is (see ``NatsRead.read``) and what it asked the server for."""

    puller: PullSubscription | None = None
    # Stream sequence of the last event handed out (or just before the start), once known.
    last: int | None = None
    # The consumer sequence the next delivery must have: another one means a gap (reset).
    expected: int = 1
    # Whether a pull is out already (a prefetch) for the next step to wait on.
    requested: bool = False
    caught_up: bool = False
    # max_bytes of the pulls for one event larger than max_bytes (0: pulls of max_bytes).
    alone: int = 0
    # Whether the last event handed out was larger than max_bytes.
    big: bool = False


class NatsRead(NatsState):
    """The reads of ``NatsBroker``: ``read`` (Subscribe, catch-up), the pull subscriptions, log positions."""

    async def _open_puller(self, config: ConsumerConfig) -> tuple[PullSubscription, int]:
        """Creates (or updates) a consumer and its pull inbox; returns the last stream sequence before it."""
        nc = self._require_nc()
        jsm = self._jsm
        assert jsm is not None and config.name is not None
        info = await jsm.add_consumer(self.settings.stream, config)
        puller = PullSubscription(nc, stream=self.settings.stream, consumer=config.name)
        await puller.open()
        self._pullers.add(puller)
        delivered = info.delivered.stream_seq if info.delivered is not None else 0
        return puller, delivered

    async def _close_puller(self, puller: PullSubscription, *, delete: bool) -> None:
        self._pullers.discard(puller)
        await puller.close()
        jsm = self._jsm
        if delete and jsm is not None and self._nc is not None and self._nc.is_connected:
            with contextlib.suppress(*NATS_FAILURES):
                await asyncio.wait_for(jsm.delete_consumer(self.settings.stream, puller.consumer), 1.0)

    def _reader_config(self, filter_subject: str, start: StartAt, resume_after: int | None) -> ConsumerConfig:
        config = ConsumerConfig(
            name=reader_name(),
            ack_policy=AckPolicy.NONE,
            filter_subject=filter_subject,
            replay_policy=ReplayPolicy.INSTANT,
            inactive_threshold=_READER_INACTIVE_SECONDS,
            mem_storage=True,
            num_replicas=1,
            max_deliver=1,
        )
        if resume_after is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = resume_after + 1
            return config
        mode = _start_mode(start)
        if mode is _StartMode.EARLIEST:
            config.deliver_policy = DeliverPolicy.ALL
        elif mode is _StartMode.TIME:
            assert start.time is not None
            at = (start.time if start.time.tzinfo is not None else start.time.replace(tzinfo=UTC)).astimezone(UTC)
            if at <= _EPOCH:
                # Nothing is stored before 1970, and the server's nanosecond clock cannot say a
                # time before 1678: such a start found nothing and waited, silently, forever.
                config.deliver_policy = DeliverPolicy.ALL
            else:
                config.deliver_policy = DeliverPolicy.BY_START_TIME
                config.opt_start_time = min(at, _LAST_SERVER_TIME)
        elif mode is _StartMode.SEQUENCE:
            assert start.sequence is not None
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(1, start.sequence)
        else:
            config.deliver_policy = DeliverPolicy.NEW
        return config

    async def read(
        self, pattern: str, *, start: StartAt, max_batch: int, max_bytes: int | None = None
    ) -> AsyncGenerator[list[event_pb2.Event]]:
        """Batches of the pattern's events from ``start`` on, in log order, until cancelled.

        Catch-up is pulled in batches of ``max_batch`` events and at most ``max_bytes`` bytes
        (4 MiB when None, 32 MiB at most; an event larger than that comes alone), with the next
        batch requested before the current one is handed out; once caught up, a pull lingers
        on the server for the next event. So a reader holds at most two batches. Pulls go over
        the broker's reader connection (opened at the first read), never the one appends use,
        and all readers' pulls together ask for at most 32 MiB at a time there. If the
        consumer disappears (server restart, inactivity, a gap in its sequence, a dropped
        reader connection), the reader recreates it right after the last event it delivered,
        so nothing is skipped or repeated. Ends when the broker stops.
        """
        filter_subject = self._layout.pattern_filter(pattern)
        _start_mode(start)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self._require_nc()
        reader = await self._reading_broker()
        batches = reader._read(pattern, filter_subject, start, max_batch, max_bytes or _READ_PULL_BYTES)
        # Closed with this generator, so its consumer is deleted now, not when it is collected.
        async with contextlib.aclosing(batches):
            async for batch in batches:
                yield batch

    async def _reading_broker(self) -> NatsRead:
        """The reader connection's broker, started at the first call."""
        if self._is_reader:
            return self
        async with self._reader_lock:
            reader = self._reader
            if reader is None:
                reader = self._sibling(f"{self.name}-readers")
                reader._is_reader = True
                # Its reader_resets count as this broker's.
                reader.stats = self.stats
                await reader.start()
                if self._nc is None or self._stopping:
                    await reader.stop()
                    raise BrokerUnavailableError(f"NATS broker {self.name!r} is stopping")
                self._reader = reader
            return reader

    async def _read(
        self, pattern: str, filter_subject: str, start: StartAt, max_batch: int, max_bytes: int
    ) -> AsyncGenerator[list[event_pb2.Event]]:
        # One pull stays well below the server's max_pending, whatever the caller asked for.
        max_bytes = min(max_bytes, self._pull_bytes.limit)
        cursor = _Cursor()
        backoff = 0.05
        try:
            while not self._stopping and self._nc is not None:
                reset = False
                # Filled in place: events taken before a failure are still handed out.
                events: list[event_pb2.Event] = []
                try:
                    status, reset = await self._read_step(
                        cursor,
                        events,
                        filter_subject=filter_subject,
                        start=start,
                        max_batch=max_batch,
                        max_bytes=max_bytes,
                        make=self._decode,
                    )
                    if status == CLOSED:
                        return
                except NATS_FAILURES as exc:
                    logger.warning("reader of %s: %s; resuming after sequence %s", pattern, exc, cursor.last)
                    reset = True
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                if reset and cursor.puller is not None:
                    await self._reset_reader(cursor, pattern)
                if events:
                    backoff = 0.05
                    yield events
        finally:
            if cursor.puller is not None:
                await self._close_puller(cursor.puller, delete=True)

    def _decode(self, subject: bytes, hdr: bytes | None, data: bytes, sequence: int) -> event_pb2.Event:
        return decode_event(
            parse_header_block(hdr), data, topic=self._layout.topic(subject.decode()), sequence=sequence
        )

    async def _read_step(
        self,
        cursor: _Cursor,
        events: list[_T],
        *,
        filter_subject: str,
        start: StartAt,
        max_batch: int,
        max_bytes: int,
        make: _Make[_T],
    ) -> tuple[str, bool]:
        """One pull of a reader, its events appended to ``events``: the pull's status, and whether to reset."""
        if cursor.puller is None:
            cursor.puller, cursor.last = await self._open_puller(
                self._reader_config(filter_subject, start, cursor.last)
            )
            cursor.expected = 1
            cursor.requested = False
            cursor.caught_up = False
            cursor.alone = 0
        puller = cursor.puller
        if cursor.caught_up and not puller.buffer:
            await puller.request(1, expires=_IDLE_PULL_SECONDS)
            status = await puller.wait(_IDLE_PULL_SECONDS + PULL_GRACE_SECONDS)
            cursor.caught_up = status != FULL
        else:
            if not cursor.requested:
                await self._request_pull(puller, max_batch, max_bytes)
            cursor.requested = False
            status = await puller.wait(self._ack_timeout)
            cursor.caught_up = status in NO_MESSAGES
        if status == CLOSED:
            return status, False
        reset = self._take(cursor, puller, events, max_batch, max_bytes, make)
        if status in CONSUMER_LOST or status == TIMEOUT:
            # Gone (restart, inactivity) or silent (connection lost): start over
            # right after the last event handed out.
            reset = True
        else:
            await self._next_pull(
                cursor, puller, status, taken=bool(events), reset=reset, max_batch=max_batch, max_bytes=max_bytes
            )
        return status, reset

    @staticmethod
    def _take(  # noqa: PLR0917 - a reader's step, its state and what it makes of a delivery
        cursor: _Cursor, puller: PullSubscription, events: list[_T], max_batch: int, max_bytes: int, make: _Make[_T]
    ) -> bool:
        """Moves the puller's buffered events to ``events`` (each as ``make`` makes it); True on a
        gap in the consumer's sequence."""
        for subject, reply, hdr, data in puller.take(max_batch):
            meta = parse_ack_subject(reply.decode())
            if meta.consumer_sequence != cursor.expected:
                return True
            cursor.expected += 1
            cursor.last = meta.stream_sequence
            cursor.big = len(data) + len(hdr or b"") + PULL_BYTES_SLACK > max_bytes
            events.append(make(subject, hdr, data, meta.stream_sequence))
        return False

    async def _next_pull(
        self,
        cursor: _Cursor,
        puller: PullSubscription,
        status: str,
        *,
        taken: bool,
        reset: bool,
        max_batch: int,
        max_bytes: int,
    ) -> None:
        """Requests the next pull ahead of the caller, when the last one says there is more."""
        if status == BYTES and not taken and not reset:
            # The next event alone is larger than max_bytes: it comes by itself
            # (the server's max_payload bounds it; doubled if that changed).
            cursor.alone = max(cursor.alone * 2, self._max_payload + PULL_BYTES_SLACK)
            await self._request_pull(puller, 1, cursor.alone)
            cursor.requested = True
        elif status in (FULL, BYTES) and not cursor.caught_up and not reset and not puller.buffer:
            # Prefetch: the next batch travels while the caller handles this one
            # (after a large event, the next is asked for alone straight away).
            if cursor.alone and cursor.big:
                await self._request_pull(puller, 1, cursor.alone)
            else:
                cursor.alone = 0
                await self._request_pull(puller, max_batch, max_bytes)
            cursor.requested = True

    async def _request_pull(self, puller: PullSubscription, batch: int, size: int) -> None:
        pull_bytes = self._pull_bytes
        # An event larger than the connection's whole share still comes (alone).
        taken = await pull_bytes.take(size)
        # Given back when the request ends (its events arrived) or its puller closes.
        await puller.request(batch, no_wait=True, max_bytes=size, on_end=lambda: pull_bytes.release(taken))

    async def _reset_reader(self, cursor: _Cursor, pattern: str) -> None:
        """Drops a reader's consumer: the next step recreates it right after the last event handed out."""
        puller = cursor.puller
        assert puller is not None
        self.stats.reader_resets += 1
        logger.debug("reader of %s: consumer %s lost (%s); recreating", pattern, puller.consumer, cursor.last)
        await self._close_puller(puller, delete=True)
        cursor.puller = None
        if self._nc is not None and not self._nc.is_connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), _IDLE_PULL_SECONDS)

    async def origin_sequences_after(self, origin: str, position: str) -> tuple[dict[str, set[int]], str]:
        """``Log.origin_sequences_after``, reading the origin's subjects only, and of each event
        only its two position headers (nothing decoded): a destination's recovery scan.

        The scan ends at the stream's last sequence read first, or once a pull finds nothing
        more of the origin (every event of it stored before then has been delivered).
        """
        start = sequence_position(position)
        end = await self.last_sequence()
        found: dict[str, set[int]] = {}
        if end <= start:
            return found, str(start)
        reader = await self._reading_broker()
        filter_subject = self._layout.origin_filter(origin)
        max_bytes = min(_READ_PULL_BYTES, reader._pull_bytes.limit)
        cursor = _Cursor()
        try:
            while cursor.last is None or cursor.last < end:
                positions: list[tuple[bytes, bytes] | None] = []
                try:
                    status, reset = await reader._read_step(
                        cursor,
                        positions,
                        filter_subject=filter_subject,
                        start=StartAt(sequence=start + 1),
                        max_batch=1000,
                        max_bytes=max_bytes,
                        make=_origin_position,
                    )
                except NATS_FAILURES as exc:
                    raise broker_error(exc, f"scan of {origin}'s events in {self.settings.stream}") from exc
                for position_ in positions:
                    if position_ is not None:
                        found.setdefault(unescape_header_value(position_[1].decode()), set()).add(int(position_[0]))
                if status == CLOSED:
                    raise BrokerUnavailableError(f"NATS broker {self.name!r} stopped during a scan of its log")
                if reset and cursor.puller is not None:
                    await reader._reset_reader(cursor, filter_subject)
                elif cursor.caught_up:
                    break
        finally:
            if cursor.puller is not None:
                await reader._close_puller(cursor.puller, delete=True)
        return found, str(end)

    async def last_sequence(self) -> int:
        jsm = self._require_jsm()
        try:
            info = await jsm.stream_info(self.settings.stream)
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"stream info of {self.settings.stream}") from exc
        return int(info.state.last_seq or 0)

    async def stored_time(self, sequence: int, *, stream: str = "") -> datetime | None:
        if stream:
            return None  # JetStream numbers one stream: a named one is not in this log
        jsm = self._require_jsm()
        try:
            msg = await jsm.get_msg(self.settings.stream, seq=sequence)
        except nats.js.errors.NotFoundError:
            return None
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"stored time of event {sequence}") from exc
        return msg.time


def _origin_position(subject: bytes, hdr: bytes | None, data: bytes, sequence: int) -> tuple[bytes, bytes] | None:
    """A delivery's origin sequence and (still escaped) origin stream, None without a sequence."""
    if hdr is None:
        return None
    seq = header_value(hdr, _ORIGIN_SEQ_NAME)
    if seq is None or not seq.isdigit() or int(seq) < 1:
        return None
    return seq, header_value(hdr, _ORIGIN_STREAM_NAME) or b""

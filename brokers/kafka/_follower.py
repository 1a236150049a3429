"""The id follower: reads the ids of every event written to the region into the id window.

Each gateway replica writes to the same topics, and a client's retry may land on any of
them. The follower reads the ``ce_id`` header of every record of every mesh topic (one
assign-only consumer, no group: every replica needs all of them) so that a replica knows the
ids the others stored. On start it reads the last idempotency window of every partition
before the broker takes writes (the restart case); afterwards it runs in the background and
picks up new topics as they appear.

Its own gateway's writes it does not read back: their ids are in the window from the ack
(``KafkaAppend._remember``), so the broker hands the follower each acked offset range
(``skip_own``) and the follower, before each look at what it fetched, seeks past the ranges
it stands at or in (what was fetched of them is dropped by aiokafka on the seek, undecoded).
Reading them back was a fifth of a Kafka gateway's CPU on ingest. Other replicas' writes
between or after them are read as before: a range is skipped only once the follower stands
at or inside it (a fetch may end inside one), so nothing in front of it is passed over.

The limit: a retry that reaches another replica before that replica's follower has read the
first write (typically a fetch round trip, up to ``fetch_max_wait`` plus the metadata refresh
for a brand-new topic) is written twice. NATS JetStream checks ids in the server and has no
such gap.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import ConsumerStoppedError
from aiokafka.structs import ConsumerRecord, TopicPartition

from meshgate.brokers._codec import kafka_record_id, unescape_header_value
from meshgate.brokers.kafka._clients import start_consumer, stop_consumer
from meshgate.brokers.kafka._errors import KAFKA_FAILURES
from meshgate.brokers.kafka._ids import IdWindow
from meshgate.brokers.kafka._names import stream_of
from meshgate.brokers.kafka._offsets import OffsetProbe

__all__ = ["IdFollower", "header_value"]

logger = logging.getLogger(__name__)

# Records taken (and so decoded: key, value, headers) per fetch call: a few hundred KB of
# objects at a time, where 5000 made several MB at each step of a restart's catch-up.
_MAX_RECORDS = 1000
# Own acked ranges waiting for the follower to reach them (another replica's records in front),
# at most; the oldest are forgotten first (those records are then read back, no harm done).
_MAX_OWN_RANGES = 10_000


def header_value(record: ConsumerRecord[bytes, bytes], name: str) -> str | None:
    """The record's first value of header ``name``, unescaped (None without one)."""
    for key, value in record.headers:
        if key == name and value is not None:
            return unescape_header_value(value.decode("utf-8", "replace"))
    return None


class IdFollower:
    def __init__(
        self,
        *,
        make_consumer: Callable[[], AIOKafkaConsumer],
        list_partitions: Callable[[], Awaitable[list[TopicPartition]]],
        window: IdWindow,
        probe: OffsetProbe,
        refresh_seconds: float,
        timeout: float,
        pace: float = 0.05,
        on_start_read: Callable[[dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]], None] | None = None,
    ) -> None:
        self._make_consumer = make_consumer
        self._list_partitions = list_partitions
        self._window = window
        self._probe = probe
        self._refresh = refresh_seconds
        self._timeout = timeout
        # The pause between looks at what was fetched (the broker's fetch_max_wait).
        self._pace = pace
        # Also given each response of the start's read (replication dedup's ``StartRead``).
        self._on_start_read = on_start_read
        # Where the start's read began in each partition.
        self.start_offsets: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._refresh_now = False
        # Per partition: this gateway's acked offset ranges (first, end) not yet passed, in order.
        self._own: dict[TopicPartition, collections.deque[tuple[int, int]]] = {}
        self._own_count = 0
        # Records read, and own records passed over unread (for tests and metrics).
        self.records_read = 0
        self.records_skipped = 0

    async def start(self) -> None:
        """Reads the last window of every partition, then follows in the background."""
        self._stopping = False
        consumer = self._make_consumer()
        await start_consumer(consumer)
        self._consumer = consumer
        try:
            tps = await self._list_partitions()
            ends = await self._probe.end_offsets(tps)
            starts = await self._probe.offsets_for_time(tps, int((time.time() - self._window.window) * 1000))
            self._positions = {tp: starts[tp] for tp in tps}
            self.start_offsets = dict(self._positions)
            self._assign()
            await self._catch_up(ends)
        except BaseException:
            self._consumer = None
            await stop_consumer(consumer)
            raise
        self._task = asyncio.create_task(self._follow(consumer), name="meshgate-kafka-id-follower")

    def _assign(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        consumer.assign(list(self._positions))
        for tp, offset in self._positions.items():
            consumer.seek(tp, offset)

    def skip_own(self, tp: TopicPartition, first: int, end: int) -> None:
        """Offsets ``first`` to ``end`` - 1 of ``tp`` are this gateway's acked writes (in the window)."""
        if self._consumer is None:
            return
        position = self._positions.get(tp)
        if position is not None and end <= position:
            return  # already read
        # Kept in order of their first offset (acks of one partition mostly come in order);
        # skipped once the follower stands at or inside one. A topic not followed yet is read
        # from its start, past what is here by then.
        own = self._own.get(tp)
        if own is None:
            own = self._own[tp] = collections.deque()
        if own and own[-1][1] == first:
            # Right after the last one (one writer's batches, one after the other): one range,
            # however long the follower takes to get there (a topic it finds seconds later).
            own[-1] = (own[-1][0], end)
            return
        own.append((first, end))
        if len(own) > 1 and own[-2][0] > first:
            self._own[tp] = collections.deque(sorted(own))
        self._own_count += 1
        if self._own_count > _MAX_OWN_RANGES:
            self._forget_own()

    def _pass_own(self) -> None:
        """Seeks past the own ranges each partition's follower stands at or in, before a read.

        Once per look rather than at each ack: a fetch returns whole record batches, so a seek
        into the middle of one (an ack of one call's part of a shared batch) made the next
        fetch decode that batch up to the new position all the same. By the time of the look
        the batch's other parts are acked too, and the seek lands at its end.
        """
        for tp in list(self._own):
            position = self._positions.get(tp)
            if position is not None:
                self._skip_to(tp, position)

    def _skip_to(self, tp: TopicPartition, position: int, *, seek: bool = True) -> None:
        """Moves the follower of ``tp`` from ``position`` past the own ranges it stands at or in."""
        own = self._own.get(tp)
        while own and own[0][0] <= position:
            _first, end = own.popleft()
            self._own_count -= 1
            position = max(position, end)
        if own is not None and not own:
            del self._own[tp]
        skipped = position - self._positions[tp]
        if skipped <= 0:
            return
        self._positions[tp] = position
        self.records_skipped += skipped
        consumer = self._consumer
        if seek and consumer is not None:
            consumer.seek(tp, position)

    def _forget_own(self) -> None:
        """Far behind its own writes: forgets the newest half of the ranges (read back instead)."""
        keep = _MAX_OWN_RANGES // 2
        while self._own_count > keep:
            tp = max(self._own, key=lambda t: len(self._own[t]))
            own = self._own[tp]
            for _ in range(min(len(own), self._own_count - keep)):
                own.pop()
                self._own_count -= 1
            if not own:
                del self._own[tp]

    def _take(self, got: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        add = self._window.add
        for tp, records in got.items():
            if not records:
                continue
            stream = stream_of(tp.topic, tp.partition)
            for record in records:
                event_id = kafka_record_id(record.headers)
                if event_id:
                    add(event_id, stream, record.offset + 1, record.timestamp / 1000)
            self._positions[tp] = records[-1].offset + 1
            self.records_read += len(records)

    async def _catch_up(self, ends: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        assert consumer is not None
        behind = {tp for tp, end in ends.items() if self._positions.get(tp, 0) < end}
        last_progress = time.monotonic()
        while behind:
            got = await consumer.getmany(timeout_ms=500, max_records=_MAX_RECORDS)
            if self._on_start_read is not None:
                self._on_start_read(got)
            self._take(got)
            if got:
                last_progress = time.monotonic()
            for tp in list(behind):
                if self._positions[tp] >= ends[tp] or (not got.get(tp) and await consumer.position(tp) >= ends[tp]):
                    behind.discard(tp)
            if behind and time.monotonic() - last_progress > self._timeout:
                raise TimeoutError(
                    f"reading the idempotency window of {len(behind)} partitions made no progress "
                    f"for {self._timeout:g} s"
                )
        self._window.prune()

    @property
    def positions(self) -> dict[TopicPartition, int]:
        """Per partition, the offset after the last record read (a copy)."""
        return dict(self._positions)

    async def caught_up(self, ends: dict[TopicPartition, int], *, timeout: float) -> bool:
        """Waits until the follower has read each partition up to its offset in ``ends``.

        False when it has not within ``timeout`` seconds (the broker is slow or away).
        """
        deadline = time.monotonic() + timeout
        while True:
            behind = [tp for tp, end in ends.items() if self._positions.get(tp, -1) < end]
            if not behind or self._task is None:
                return not behind
            if any(tp not in self._positions for tp in behind):
                self._refresh_now = True  # a topic newer than the last look
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        next_refresh = time.monotonic() + self._refresh
        backoff = 0.1
        while not self._stopping:
            try:
                # Only what is fetched already, then a pause: the acks of this gateway's own
                # records in a response arrive meanwhile and drop them (seek) before they are
                # decoded. Taking a response the moment it came raced those acks, and lost
                # often at 40k events/s (a tenth of the gateway's CPU went to reading them).
                self._pass_own()
                got = await consumer.getmany(timeout_ms=0, max_records=_MAX_RECORDS)
                self._take(got)
                if sum(map(len, got.values())) < _MAX_RECORDS:
                    await asyncio.sleep(self._pace)
                if self._refresh_now or time.monotonic() >= next_refresh:
                    self._refresh_now = False
                    next_refresh = time.monotonic() + self._refresh
                    await self._add_new_partitions()
                    self._window.prune()
                backoff = 0.1
            except ConsumerStoppedError:
                return
            except KAFKA_FAILURES as exc:
                logger.warning("Kafka id follower: %s: %s; retrying in %.1f s", type(exc).__name__, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _add_new_partitions(self) -> None:
        tps = await self._list_partitions()
        new = [tp for tp in tps if tp not in self._positions]
        if not new:
            return
        # A topic that appeared since the last look: everything in it is recent.
        begins = await self._probe.beginning_offsets(new)
        for tp in new:
            self._positions[tp] = begins[tp]
            if tp in self._own:
                self._skip_to(tp, begins[tp], seek=False)  # _assign seeks
        self._assign()

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_consumer(consumer)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

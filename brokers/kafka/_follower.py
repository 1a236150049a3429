"""The id follower: reads the ids of every event written to the region into the id window.

Each gateway replica writes to the same topics, and a client's retry may land on any of
them. The follower reads the ``ce_id`` header of every record of every mesh topic (one
assign-only consumer, no group: every replica needs all of them) so that a replica knows the
ids the others stored. On start it reads the last idempotency window of every partition
before the broker takes writes (the restart case); afterwards it runs in the background and
picks up new topics as they appear.

Its own gateway's writes it does not read back: their ids are in the window from the ack
(``KafkaAppend._remember``), so the broker hands the follower each acked offset range
(``skip_own``) and the follower seeks past it when its position reaches the range's start, before
a fetch brings the records back (a fetch already under way is dropped by aiokafka on the seek,
undecoded). Reading them back was a fifth of a Kafka gateway's CPU on ingest. Other replicas'
writes between or after them are read as before: a range is skipped only when the follower
stands at its first offset, so nothing in front of it is passed over.

The limit: a retry that reaches another replica before that replica's follower has read the
first write (typically a fetch round trip, up to ``fetch_max_wait`` plus the metadata refresh
for a brand-new topic) is written twice. NATS JetStream checks ids in the server and has no
such gap.
"""

from __future__ import annotations

import asyncio
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
    ) -> None:
        self._make_consumer = make_consumer
        self._list_partitions = list_partitions
        self._window = window
        self._probe = probe
        self._refresh = refresh_seconds
        self._timeout = timeout
        self._consumer: AIOKafkaConsumer | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._refresh_now = False
        # Per partition: first offset of an own acked range -> the offset after it.
        self._own: dict[TopicPartition, dict[int, int]] = {}
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
        if position is None or first > position:
            # Someone else's records come first, or a topic not followed yet (it will be read
            # from its start): skip this range once the follower reaches it.
            own = self._own.setdefault(tp, {})
            if first not in own:
                own[first] = end
                self._own_count += 1
                if self._own_count > _MAX_OWN_RANGES:
                    self._forget_own()
            return
        self._skip_to(tp, end)

    def _skip_to(self, tp: TopicPartition, position: int, *, seek: bool = True) -> None:
        """Moves the follower of ``tp`` to ``position``, and on over own ranges that follow it."""
        own = self._own.get(tp)
        if own:
            while position in own:
                position = own.pop(position)
                self._own_count -= 1
        skipped = position - self._positions[tp]
        if skipped <= 0:
            return
        self._positions[tp] = position
        self.records_skipped += skipped
        consumer = self._consumer
        if seek and consumer is not None:
            consumer.seek(tp, position)

    def _forget_own(self) -> None:
        for tp, own in self._own.items():
            position = self._positions.get(tp, 0)
            for first in [f for f in own if f < position]:
                del own[first]
        self._own_count = sum(map(len, self._own.values()))
        while self._own_count > _MAX_OWN_RANGES:
            own = max(self._own.values(), key=len)
            del own[min(own)]
            self._own_count -= 1

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
            self._positions[tp] = position = records[-1].offset + 1
            self.records_read += len(records)
            if self._own_count and tp in self._own:
                self._skip_to(tp, position)

    async def _catch_up(self, ends: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        assert consumer is not None
        behind = {tp for tp, end in ends.items() if self._positions.get(tp, 0) < end}
        last_progress = time.monotonic()
        while behind:
            got = await consumer.getmany(timeout_ms=500, max_records=_MAX_RECORDS)
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
                got = await consumer.getmany(timeout_ms=250, max_records=_MAX_RECORDS)
                self._take(got)
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

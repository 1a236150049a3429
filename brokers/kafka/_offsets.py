"""Offsets looked up with care: end offsets, offsets by time, single records, bounded scans.

Kafka answers most of these directly (ListOffsets). Brokers that speak the protocol are not
all equal, though, and the adapter checks the answers it depends on instead of trusting them:

* the end of a partition comes from a fetch's high watermark, read at the last offset that
  ListOffsets reports: a broker that reports the last *batch*'s base offset + 1 as the end
  (tansu does) would otherwise make "latest" readers replay the tail of the last batch and
  the lag look smaller than it is. Against Kafka it costs one fetch per partition.
* an ``offsets_for_times`` answer is checked against the records at and before it (two
  fetches); a wrong one (tansu answers "none" or offset 0 for any time after its first
  record) is replaced by a binary search over record timestamps, a fetch per step (about 20
  for a million records).

All of it goes through one assign-only consumer per broker (no group), one call at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import ConsumerRecord, TopicPartition

__all__ = ["OffsetProbe", "scan", "scan_to_end"]


class OffsetProbe:
    """Lookups through ``consumer`` (started, no group); ``timeout`` bounds each one."""

    def __init__(self, consumer: AIOKafkaConsumer, *, timeout: float) -> None:
        self._consumer = consumer
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._assigned: frozenset[TopicPartition] = frozenset()

    def _assign(self, tps: Sequence[TopicPartition]) -> None:
        # Reassigning drops every fetch position; skip it when nothing changes.
        wanted = frozenset(tps)
        if wanted != self._assigned or wanted != self._consumer.assignment():
            self._consumer.assign(list(wanted))
            self._assigned = wanted

    async def _know(self, tps: Sequence[TopicPartition]) -> None:
        """Brings the topics of ``tps`` into the consumer's metadata in one update.

        aiokafka keeps metadata only for the topics last assigned, and a ListOffsets for a
        partition of another topic adds that one topic and retries after its backoff (100 ms):
        0.7 s for 8 topics, each time the lookups turned from one partition (a time lookup,
        the checkpoints) to all of them (the region's log position).
        """
        # aiokafka's client internals: where another version lacks them, the lookups work as
        # before (a retry per topic), only slower.
        client = getattr(self._consumer, "_client", None)
        cluster = getattr(client, "cluster", None)
        add_topic = getattr(client, "add_topic", None)
        if cluster is None or not callable(add_topic):
            return
        missing = {tp.topic for tp in tps if cluster.leader_for_partition(tp) is None}
        if not missing:
            return
        # Each add asks for the same pending update, which reads every topic added by then.
        await asyncio.gather(*(add_topic(topic) for topic in missing))

    async def beginning_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        async with self._lock:
            await self._know(tps)
            got: dict[TopicPartition, int] = await self._consumer.beginning_offsets(list(tps))
            return got

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset after the last record of each partition (0 for an empty one)."""
        if not tps:
            return {}
        async with self._lock:
            return await self._end_offsets(tps)

    async def _end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        consumer = self._consumer
        await self._know(tps)
        ends: dict[TopicPartition, int] = dict(await consumer.end_offsets(list(tps)))
        begins: dict[TopicPartition, int] = await consumer.beginning_offsets(list(tps))
        check = [tp for tp in tps if ends[tp] > begins[tp]]
        if not check:
            return ends
        self._consumer.assign(check)
        self._assigned = frozenset(check)
        for tp in check:
            consumer.seek(tp, ends[tp] - 1)
        deadline = time.monotonic() + self._timeout
        waiting = set(check)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KafkaTimeoutError(f"no fetch answer for {len(waiting)} partitions within {self._timeout:g} s")
            await consumer.getmany(*waiting, timeout_ms=int(min(left, 0.5) * 1000), max_records=1)
            for tp in list(waiting):
                high = consumer.highwater(tp)
                if high is not None:
                    ends[tp] = max(ends[tp], high)
                    waiting.discard(tp)
        return ends

    async def record_at(self, tp: TopicPartition, offset: int) -> ConsumerRecord[bytes, bytes] | None:
        """The first record at or after ``offset`` (before the end), or None."""
        async with self._lock:
            return await self._record_at(tp, offset, await self._end_offsets([tp]))

    async def _record_at(
        self, tp: TopicPartition, offset: int, ends: Mapping[TopicPartition, int]
    ) -> ConsumerRecord[bytes, bytes] | None:
        if offset < 0 or offset >= ends[tp]:
            return None
        consumer = self._consumer
        self._assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + self._timeout
        while True:
            got = await consumer.getmany(tp, timeout_ms=500, max_records=1)
            for record in got.get(tp, ()):
                return record
            if await consumer.position(tp) >= ends[tp]:
                return None  # only gaps (compacted away, transaction markers) up to the end
            if time.monotonic() > deadline:
                raise KafkaTimeoutError(
                    f"no record of {tp.topic}/{tp.partition} at {offset} within {self._timeout:g} s"
                )

    async def offsets_for_time(self, tps: Sequence[TopicPartition], timestamp_ms: int) -> dict[TopicPartition, int]:
        """Per partition, the first offset whose record is stored at or after ``timestamp_ms``.

        The end offset where none is (a reader starting there waits for new records).
        """
        if not tps:
            return {}
        # Kafka's timestamps start at 1970 and a negative one is refused (ValueError from
        # aiokafka; in the protocol -1 and -2 mean latest and earliest): before 1970 is from 0.
        timestamp_ms = max(0, timestamp_ms)
        async with self._lock:
            consumer = self._consumer
            await self._know(tps)
            answers = await consumer.offsets_for_times(dict.fromkeys(tps, timestamp_ms))
            result: dict[TopicPartition, int] = {}
            ends = await self._end_offsets(tps)
            begins = await consumer.beginning_offsets(list(tps))
            for tp in tps:
                answer = answers.get(tp)
                if answer is not None and answer.timestamp >= 0:
                    offset = answer.offset
                    if await self._is_first_at(tp, offset, begins[tp], ends, timestamp_ms):
                        result[tp] = offset
                        continue
                result[tp] = await self._search(tp, begins[tp], ends, timestamp_ms)
            return result

    async def _is_first_at(
        self, tp: TopicPartition, offset: int, begin: int, ends: Mapping[TopicPartition, int], target: int
    ) -> bool:
        """Whether ``offset`` holds the first record stored at or after ``target`` (two fetches)."""
        record = await self._record_at(tp, offset, ends)
        if record is None or record.timestamp < target:
            return False
        if offset <= begin:
            return True
        before = await self._record_at(tp, offset - 1, ends)
        return before is None or before.offset >= offset or before.timestamp < target

    async def _search(self, tp: TopicPartition, begin: int, ends: Mapping[TopicPartition, int], target: int) -> int:
        end = ends[tp]
        if begin >= end:
            return end
        last = await self._record_at(tp, end - 1, ends)
        if last is None or last.timestamp < target:
            return end
        # Lower bound over [begin, last]: P(o) = "the first record at or after o is stored at or
        # after the target". Offsets without a record (gaps) take their next record's answer.
        lo, hi, best = begin, int(last.offset), int(last.offset)
        while lo < hi:
            mid = (lo + hi) // 2
            record = await self._record_at(tp, mid, ends)
            if record is None:  # cannot happen below the last record; stay on the safe side
                break
            if record.timestamp >= target:
                hi, best = mid, int(record.offset)
            else:
                lo = record.offset + 1
        return best


async def scan(
    consumer: AIOKafkaConsumer,
    ranges: Mapping[TopicPartition, tuple[int, int]],
    *,
    max_records: int = 1000,
    timeout: float,
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """The records of each partition in ``[start, end)``, in batches, through ``consumer``.

    ``consumer`` is assign-only and used by nothing else meanwhile; a partition that makes no
    progress for ``timeout`` seconds ends the scan with ``KafkaTimeoutError``.
    """
    todo = {tp: (start, end) for tp, (start, end) in ranges.items() if start < end}
    if not todo:
        return
    consumer.assign(list(todo))
    for tp, (start, _) in todo.items():
        consumer.seek(tp, start)
    last_progress = time.monotonic()
    while todo:
        got = await consumer.getmany(*todo, timeout_ms=500, max_records=max_records)
        out: list[ConsumerRecord[bytes, bytes]] = []
        for tp, records in got.items():
            if tp not in todo or not records:
                continue
            end = todo[tp][1]
            out.extend(r for r in records if r.offset < end)
            if records[-1].offset >= end - 1:
                del todo[tp]
                consumer.pause(tp)
        if out:
            last_progress = time.monotonic()
            yield out
            continue
        for tp in list(todo):
            if await consumer.position(tp) >= todo[tp][1]:
                del todo[tp]  # the rest up to the end were gaps
        if todo and time.monotonic() - last_progress > timeout:
            raise KafkaTimeoutError(f"scan of {len(todo)} partitions made no progress for {timeout:g} s")


async def scan_to_end(
    consumer: AIOKafkaConsumer,
    starts: Mapping[TopicPartition, int],
    *,
    reached: dict[TopicPartition, int],
    max_records: int = 1000,
    poll_ms: int = 20,
    timeout: float,
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """The records of each partition from its start up to its end, in batches, through ``consumer``.

    The end is the high watermark of the scan's own fetches, each sent after the call began: it
    is at or past every record stored before the call. ``reached`` gets the offset each
    partition was read up to. Unlike ``end_offsets``, no fetch at the last record's offset is
    needed (which brings that record's whole batch back, for every partition), and a partition
    with nothing after its start costs an empty answer. ``consumer`` is new (no high watermark
    known yet), assign-only and used by nothing else meanwhile; a partition that makes no
    progress for ``timeout`` seconds ends the scan with ``KafkaTimeoutError``.
    """
    todo = set(starts)
    if not todo:
        return
    consumer.assign(list(todo))
    for tp, start in starts.items():
        consumer.seek(tp, start)
    last_progress = time.monotonic()
    while todo:
        # Short waits: an answer without records (the partition is at its end) does not end
        # a getmany, only its timeout does.
        got = await consumer.getmany(*todo, timeout_ms=poll_ms, max_records=max_records)
        out: list[ConsumerRecord[bytes, bytes]] = []
        for tp, records in got.items():
            if tp in todo and records:
                out.extend(records)
        for tp in list(todo):
            high = consumer.highwater(tp)
            if high is None:
                continue  # no answer for it yet
            position = await consumer.position(tp)
            if position >= high:
                reached[tp] = position
                todo.discard(tp)
                consumer.pause(tp)
        if out:
            last_progress = time.monotonic()
            yield out
        elif todo and time.monotonic() - last_progress > timeout:
            raise KafkaTimeoutError(f"scan of {len(todo)} partitions made no progress for {timeout:g} s")

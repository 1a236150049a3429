"""The Kafka adapter's reads: Subscribe's readers (assigned partitions, no group) and the region's log positions."""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import ConsumerStoppedError
from aiokafka.structs import ConsumerRecord, TopicPartition

from meshgate.brokers._base import (
    BrokerError,
    StartAt,
)
from meshgate.brokers._codec import (
    HEADER_ID,
    HEADER_ORIGIN,
    HEADER_ORIGIN_SEQ,
    HEADER_ORIGIN_STREAM,
    KAFKA_HEADER_ID,
    decode_kafka_record,
    escape_header_value,
    unescape_header_value,
)
from meshgate.brokers.kafka._clients import start_consumer, stop_consumer
from meshgate.brokers.kafka._errors import (
    KAFKA_FAILURES,
    kafka_error,
)
from meshgate.brokers.kafka._names import parse_stream, stream_of
from meshgate.brokers.kafka._state import KafkaState
from meshgate.v1 import event_pb2

__all__ = ["KafkaRead"]

logger = logging.getLogger(__name__)

# How long a caught-up reader waits in one fetch before it looks at its stop flag again.
_IDLE_FETCH_MS = 1000


def _encode_position(ends: dict[str, int]) -> str:
    kept = {stream: offset for stream, offset in sorted(ends.items()) if offset > 0}
    return json.dumps(kept, separators=(",", ":")) if kept else ""


def _decode_position(position: str) -> dict[str, int]:
    """A Kafka region's log position: stream -> the offset after what it covers ("" = beginning)."""
    if not position:
        return {}
    try:
        raw = json.loads(position)
    except ValueError:
        raw = None
    if not isinstance(raw, dict) or not all(type(v) is int and v >= 0 for v in raw.values()):
        raise ValueError(
            f"log position {position[:200]!r} is not a Kafka region's position "
            "(a JSON object of <topic>/<partition> to offset)"
        )
    return {str(k): int(v) for k, v in raw.items()}


def _advance(
    positions: dict[TopicPartition, int], got: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
) -> None:
    """Moves each partition's read position past the records just taken from it."""
    for tp, records in got.items():
        if records:
            positions[tp] = records[-1].offset + 1


def _origin_sequences(records: list[ConsumerRecord[bytes, bytes]], origin: bytes, found: dict[str, set[int]]) -> None:
    """Adds the origin stream and sequence of each record of ``origin`` (its escaped header value)."""
    for record in records:
        if not any(k == HEADER_ORIGIN and v == origin for k, v in record.headers):
            continue
        seq = stream = None
        for k, v in record.headers:
            if k == HEADER_ORIGIN_SEQ and v is not None and v.isdigit():
                seq = int(v)
            elif k == HEADER_ORIGIN_STREAM and v is not None:
                stream = unescape_header_value(v.decode("utf-8", "replace"))
        if seq:
            found.setdefault(stream or "", set()).add(seq)


class KafkaRead(KafkaState):
    """The reads of ``KafkaBroker``: ``read`` (Subscribe, catch-up) and the positions of the region's log."""

    def _decode(self, record: ConsumerRecord[bytes, bytes]) -> event_pb2.Event:
        return decode_kafka_record(
            record.headers,
            record.key,
            record.value,
            topic=self._names.mesh_topic(record.topic),
            sequence=record.offset + 1,
            stream=stream_of(record.topic, record.partition),
        )

    async def _start_offsets(self, tps: list[TopicPartition], start: StartAt) -> dict[TopicPartition, int]:
        probe = self._require_probe()
        if start.earliest:
            return await probe.beginning_offsets(tps)
        if start.time is not None:
            at = start.time if start.time.tzinfo is not None else start.time.replace(tzinfo=UTC)
            return await probe.offsets_for_time(tps, int(at.timestamp() * 1000))
        return await probe.end_offsets(tps)

    async def read(
        self, pattern: str, *, start: StartAt, max_batch: int, max_bytes: int | None = None
    ) -> AsyncGenerator[list[event_pb2.Event]]:
        """Batches of the pattern's events from ``start`` on, until cancelled or the broker stops.

        Every partition of every matching topic is read (no consumer group); topics created
        later join at the next metadata refresh, from their beginning. Within a partition
        events come in log order; across partitions a batch is merged by stored time.
        ``max_bytes`` lowers the reader's fetch bounds (``fetch_max_bytes`` and
        ``partition_fetch_bytes``): what its consumer buffers ahead of the caller. Kafka still
        returns a record larger than them, alone.
        """
        self._names.regex(pattern)  # validates
        chosen = sum((start.earliest, start.time is not None, start.sequence is not None))
        if chosen > 1:
            raise ValueError(f"StartAt sets {chosen} positions; set at most one")
        if start.sequence is not None:
            raise BrokerError(
                "a Kafka region has no single sequence (every topic-partition counts its own); "
                "start from earliest, latest or a time",
                retriable=False,
            )
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self._require_producer()
        fetch_bytes, partition_bytes = self._read_fetch_bytes(max_bytes)
        consumer = self._consumer(fetch_max_bytes=fetch_bytes, max_partition_fetch_bytes=partition_bytes)
        await start_consumer(consumer)
        self._readers.add(consumer)
        positions: dict[TopicPartition, int] = {}
        try:
            tps = await self._mesh_partitions(pattern)
            positions.update(await self._start_offsets(tps, start))
            self._assign(consumer, positions)
            next_refresh = time.monotonic() + self._metadata_max_age
            backoff = 0.05
            while not self._stopping and self._producer is not None:
                try:
                    got = await consumer.getmany(timeout_ms=_IDLE_FETCH_MS, max_records=max_batch)
                    if time.monotonic() >= next_refresh:
                        next_refresh = time.monotonic() + self._metadata_max_age
                        await self._add_topics(consumer, pattern, positions, got)
                    backoff = 0.05
                except ConsumerStoppedError:
                    return
                except KAFKA_FAILURES as exc:
                    logger.warning("reader of %s: %s: %s; retrying", pattern, type(exc).__name__, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                if not got:
                    continue
                lists = [records for records in got.values() if records]
                _advance(positions, got)
                merged = lists[0] if len(lists) == 1 else list(heapq.merge(*lists, key=lambda r: r.timestamp))
                yield [self._decode(r) for r in merged]
        finally:
            self._readers.discard(consumer)
            await stop_consumer(consumer)

    def _read_fetch_bytes(self, max_bytes: int | None) -> tuple[int, int]:
        """A reader consumer's fetch bounds (all partitions, one partition): the broker's, lowered to ``max_bytes``."""
        total = self.fetch_max_bytes if max_bytes is None else min(self.fetch_max_bytes, max_bytes)
        return total, min(self.partition_fetch_bytes, total)

    @staticmethod
    def _assign(consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int]) -> None:
        # assign() forgets every position, so each partition is sought again.
        consumer.assign(list(positions))
        for tp, offset in positions.items():
            consumer.seek(tp, offset)

    async def _add_topics(
        self,
        consumer: AIOKafkaConsumer,
        pattern: str,
        positions: dict[TopicPartition, int],
        got: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        new = [tp for tp in await self._mesh_partitions(pattern) if tp not in positions]
        if not new:
            return
        # Records already taken count as read before the reassignment forgets positions.
        _advance(positions, got)
        positions.update(await self._require_probe().beginning_offsets(new))
        self._assign(consumer, positions)

    async def log_position(self) -> str:
        probe = self._require_probe()
        try:
            tps = await self._mesh_partitions()
            ends = await probe.end_offsets(tps)
        except KAFKA_FAILURES as exc:
            raise kafka_error(exc, "end of the region's log") from exc
        return _encode_position({stream_of(tp.topic, tp.partition): end for tp, end in ends.items()})

    def earliest_position(self, positions: Sequence[str]) -> str:
        if not positions or "" in positions:
            return ""
        decoded = [_decode_position(p) for p in positions]
        # A partition missing from a position had no events when it was read: offset 0.
        streams = set().union(*decoded)
        return _encode_position({s: min(d.get(s, 0) for d in decoded) for s in streams})

    async def origin_sequences_after(self, origin: str, position: str) -> tuple[dict[str, set[int]], str]:
        """The origin's events stored after ``position``: what the start read of them, the rest scanned.

        The ranges the id follower read whole at start (``StartRead``) are not read again: their
        replicated events were noted then (a restarted gateway's first recovery read again all
        that the start had just read). Each partition is scanned from ``position`` up to the
        start of its range and from the range's end (or ``position``, if later) to the end of
        the partition: the high watermark of the scan's own fetches, which costs no fetch of
        each partition's last record batch (``end_offsets`` does, as tansu's ends need it:
        0.9 s for 48 partitions in the bench, before a single record was scanned).
        """
        after = _decode_position(position)
        self._require_probe()
        escaped = escape_header_value(origin).encode()
        start_read = self._start_read
        # Taken before any await: a recovery of the same origin running meanwhile may drop them.
        known, found = start_read.offer(escaped) if start_read is not None else ({}, {})
        ended: dict[TopicPartition, int] = {}
        try:
            tps = await self._mesh_partitions()
            before: dict[TopicPartition, tuple[int, int]] = {}
            rest: dict[TopicPartition, int] = {}
            for tp in tps:
                # Below the log's start (records past their retention), the scan's consumer
                # starts from the earliest record.
                start = after.get(stream_of(tp.topic, tp.partition), 0)
                span = known.get(tp)
                if span is not None:
                    if start < span[0]:
                        before[tp] = (start, span[0])
                    start = max(start, span[1])
                rest[tp] = start
            async for records in self._scan(before):
                _origin_sequences(records, escaped, found)
            async for records in self._scan_to_end(rest, ended):
                _origin_sequences(records, escaped, found)
        except KAFKA_FAILURES as exc:
            raise kafka_error(exc, f"scan for {origin}'s events") from exc
        if known and start_read is not None:
            start_read.used(escaped)
        reached = dict(after)
        for tp, end in ended.items():
            stream = stream_of(tp.topic, tp.partition)
            reached[stream] = max(end, after.get(stream, 0))
        return found, _encode_position(reached)

    async def find_event(self, event_id: str, *, since: datetime) -> event_pb2.Event | None:
        probe = self._require_probe()
        at = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
        wanted = event_id.encode()
        # Records written before the Kafka binding was followed: ce-id, percent-encoded.
        legacy = escape_header_value(event_id).encode()
        try:
            tps = await self._mesh_partitions()
            starts = await probe.offsets_for_time(tps, int(at.timestamp() * 1000))
            ends = await probe.end_offsets(tps)
            async for records in self._scan({tp: (starts[tp], ends[tp]) for tp in tps}):
                for record in records:
                    if any(
                        (k == KAFKA_HEADER_ID and v == wanted) or (k == HEADER_ID and v == legacy)
                        for k, v in record.headers
                    ):
                        return self._decode(record)
        except KAFKA_FAILURES as exc:
            raise kafka_error(exc, f"search for event {event_id!r}") from exc
        return None

    async def stored_time(self, sequence: int, *, stream: str = "") -> datetime | None:
        if not stream:
            raise BrokerError(
                "a Kafka region's positions name their stream (<topic>/<partition>); none was given",
                retriable=False,
            )
        try:
            tp = parse_stream(stream)
        except ValueError as exc:
            raise BrokerError(str(exc), retriable=False) from exc
        probe = self._require_probe()
        try:
            # All topics' metadata: asking for one by name would create it where the cluster
            # creates topics on first mention.
            if tp not in await self._mesh_partitions():
                return None
            record = await probe.record_at(tp, sequence - 1)
        except KAFKA_FAILURES as exc:
            raise kafka_error(exc, f"stored time of {stream} #{sequence}") from exc
        if record is None or record.offset != sequence - 1:
            return None
        return datetime.fromtimestamp(record.timestamp / 1000, UTC)

"""The Kafka adapter's writes: one record batch per topic-partition, ids checked against the window."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import UnknownTopicOrPartitionError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata, TopicPartition

from meshgate.brokers._base import (
    AppendResult,
    BrokerError,
    BrokerUnavailableError,
    EventRejectedError,
    StorageFullError,
    check_raw_columns,
    decode_raw,
)
from meshgate.brokers._codec import kafka_record_from_lines, kafka_record_headers
from meshgate.brokers.kafka._errors import (
    KAFKA_FAILURES,
    KafkaMessageTooLargeError,
    KafkaUnavailableError,
    kafka_error,
)
from meshgate.brokers.kafka._names import CHECKPOINT_TOPIC, stream_of
from meshgate.brokers.kafka._state import KafkaState
from meshgate.v1 import event_pb2

__all__ = ["KafkaAppend"]

logger = logging.getLogger(__name__)

RECORD_OVERHEAD = 128


# Ids of writes in doubt remembered at most (the oldest are forgotten first).
_MAX_UNCERTAIN = 100_000


# One record to write: its key (None without one), its headers, encoded, and its value.
_Record = tuple[bytes | None, list[tuple[str, bytes]], bytes]

# One event of an append as ``_plan`` reads it: id, topic, key, the record's headers and their
# bytes (or why the event cannot be written), value.
_Row = tuple[str, str, bytes | None, list[tuple[str, bytes]] | str, int, bytes]


def _event_row(event: event_pb2.Event) -> _Row:
    try:
        headers, size = kafka_record_headers(event)
    except ValueError as exc:
        return (event.id, event.topic, None, str(exc), 0, b"")
    key = event.key
    # Read once: each read of a bytes field of a protobuf message is a copy.
    return (event.id, event.topic, key.encode() if key else None, headers, size, event.data)


def _raw_rows(  # noqa: PLR0917  # the columns of a raw batch
    ids: Sequence[str],
    topics: Sequence[str],
    headers: Sequence[bytes],
    data: Sequence[bytes],
    origin_sequences: Sequence[int],
    origin_streams: Sequence[str],
) -> list[_Row]:
    """The rows of a raw batch: records made from the header lines as they are, an event
    decoded only where that shortcut does not apply (``kafka_record_from_lines``)."""
    rows: list[_Row] = []
    for i, (event_id, topic, lines, value, seq) in enumerate(
        zip(ids, topics, headers, data, origin_sequences, strict=True)
    ):
        stream = origin_streams[i] if origin_streams else ""
        record = kafka_record_from_lines(lines, event_id, seq, stream)
        if record is None:
            rows.append(_event_row(decode_raw((event_id,), (topic,), (lines,), (value,), (seq,), (stream,))[0]))
        else:
            key, record_headers, size = record
            rows.append((event_id, topic, key, record_headers, size, value))
    return rows


@dataclass(slots=True)
class _Batch:
    """A record batch of one partition, filled by append calls until the producer takes it."""

    builder: BatchBuilder
    # The batch's ack: its first offset (RecordMetadata), or the failure.
    acked: asyncio.Future[RecordMetadata]
    count: int = 0
    # Full, or handed to the producer: no record joins it any more.
    closed: bool = False


# A call's share of one batch: the batch's ack, its partition, the call's event indexes and
# the position of the first of them in the batch.
_Part = tuple[asyncio.Future[RecordMetadata], TopicPartition, list[int], int]


# A key's murmur2, remembered for the last 65,536 keys: aiokafka's murmur2 is pure Python, and
# keys repeat.
_key_hash = functools.lru_cache(maxsize=65_536)(murmur2)


def _retrieved(future: asyncio.Future[RecordMetadata]) -> None:
    if not future.cancelled():
        future.exception()


def _deliver(acked: asyncio.Future[RecordMetadata], delivery: asyncio.Future[RecordMetadata]) -> None:
    """The producer's answer for a batch, passed on to the calls that share it."""
    if acked.done():
        return
    if delivery.cancelled():
        acked.set_exception(KafkaUnavailableError("the producer gave up on the batch before an answer"))
    elif (exc := delivery.exception()) is not None:
        acked.set_exception(exc)
    else:
        acked.set_result(delivery.result())


# What an append call leaves for concurrent calls of the same ids: its results by index (None
# where it ended before one), or the error that ended it (the broker stopped).
CallResults = list[AppendResult | BrokerError | None] | BrokerError


def _as_duplicate(result: AppendResult | BrokerError | None) -> AppendResult | BrokerError | None:
    """Another write's result, for an event of the same id: a duplicate of what it stored."""
    return AppendResult(result.sequence, True, result.stream) if isinstance(result, AppendResult) else result


class KafkaAppend(KafkaState):
    """The write path of ``KafkaBroker``: ``append``, its id window checks and the record batches."""

    async def append(self, events: Sequence[event_pb2.Event]) -> list[AppendResult | BrokerError]:
        if not events:
            return []
        return await self._append_held(len(events), lambda: list(map(_event_row, events)))

    async def append_raw(
        self,
        *,
        ids: Sequence[str],
        topics: Sequence[str],
        headers: Sequence[bytes],
        data: Sequence[bytes],
        origin_sequences: Sequence[int],
        origin_streams: Sequence[str] = (),
        origin: str = "",  # the lines' own origin header goes into the record as it is
    ) -> list[AppendResult | BrokerError]:
        # Checked before the call waits for its share: a malformed batch is refused at once.
        check_raw_columns(ids, topics, headers, data, origin_sequences, origin_streams)
        if not ids:
            return []
        # Made only once the call has its share of max_append_events: a call waiting for it
        # holds the raw columns its request holds anyway, not a record per event.
        rows = functools.partial(_raw_rows, ids, topics, headers, data, origin_sequences, origin_streams)
        return await self._append_held(len(ids), rows)

    async def _append_held(self, n: int, rows: Callable[[], list[_Row]]) -> list[AppendResult | BrokerError]:
        """An append within the bound on events held by appends (``max_append_events``).

        An event being appended costs a few KB until its ack (its encoded headers and record,
        its share of the record batch and the produce request, its result): a destination
        region's replication ingress (a call per origin partition, several batches of each
        being written) took a gateway from ~115 MB to over 180 MB without this bound. Calls
        take their share first come, first served, so concurrent calls still reach the
        producer in the order they were made.
        """
        producer = self._require_producer()
        refused = self._refused_while_stopping(n)
        if refused is not None:
            return refused
        self._appending += 1
        self._idle.clear()
        try:
            await self._held.acquire(n)
            try:
                # stop() may have begun while this call waited for room.
                refused = self._refused_while_stopping(n)
                if refused is not None:
                    return refused
                return await self._append(producer, rows())
            finally:
                self._held.release(n)
        finally:
            self._appending -= 1
            if not self._appending:
                self._idle.set()

    def _refused_while_stopping(self, n: int) -> list[AppendResult | BrokerError] | None:
        if not self._stopping:
            return None
        return [BrokerUnavailableError(f"Kafka broker {self.name!r} is stopping")] * n

    async def _append(self, producer: AIOKafkaProducer, rows: list[_Row]) -> list[AppendResult | BrokerError]:
        results: list[AppendResult | BrokerError | None] = [None] * len(rows)
        # Index -> the id of each event written.
        ids: list[str] = [""] * len(rows)
        # Kafka topic -> indexes of the events to write there, in order.
        plan: dict[str, list[int]] = {}
        # Index -> the record's key (encoded once: size check, partitioner, batch) and headers.
        records: dict[int, _Record] = {}
        first: dict[str, int] = {}
        twins: dict[int, int] = {}
        waits: dict[int, tuple[asyncio.Future[CallResults], int]] = {}
        mine: list[str] = []
        call: asyncio.Future[CallResults] = asyncio.get_running_loop().create_future()
        batches: list[_Part] = []
        try:
            # One call at a time up to the hand-over to the producer: concurrent calls are
            # written in the order they were made (the replication ingress pipelines on it).
            async with self._order:
                unsure = await self._settle_uncertain(rows)
                self._plan(rows, results, unsure, plan, records, ids, first, twins, waits, mine, call)
                if plan:
                    batches = await self._enqueue(producer, plan, records, results)
                # In the record batches now: their headers and keys need not wait for the ack here.
                records.clear()
            if batches:
                await self._collect(batches, ids, results)
        finally:
            inflight = self._inflight
            for event_id in mine:
                entry = inflight.get(event_id)
                if entry is not None and entry[0] is call:
                    del inflight[event_id]
            if not call.done():
                call.set_result(results)
        return await self._finish(results, twins, waits)

    def _plan(  # noqa: PLR0917  # the state of one append, filled in place
        self,
        rows: list[_Row],
        results: list[AppendResult | BrokerError | None],
        unsure: dict[str, BrokerError],
        plan: dict[str, list[int]],
        records: dict[int, _Record],
        ids: list[str],
        first: dict[str, int],
        twins: dict[int, int],
        waits: dict[int, tuple[asyncio.Future[CallResults], int]],
        mine: list[str],
        call: asyncio.Future[CallResults],
    ) -> None:
        """Sorts the events: refused, known duplicates, twins, waiting on another call, to write."""
        kafka_topic_of = self._names.kafka_topic
        known = self._ids.get
        uncertain, inflight = self._uncertain, self._inflight
        max_bytes = self.max_message_bytes
        now = time.time()
        # The topics of this call, mapped once (a batch mostly has one).
        topics: dict[str, str] = {}
        for i, (event_id, topic, key, headers, headers_size, data) in enumerate(rows):
            if not event_id:
                results[i] = EventRejectedError(f"event {i} of the batch has no id (the gateway assigns one)")
                continue
            if topic == CHECKPOINT_TOPIC:
                results[i] = EventRejectedError(
                    f"event {i} of the batch cannot be written: topic {CHECKPOINT_TOPIC} is reserved in Kafka "
                    "regions (it holds the gateway's checkpoints)"
                )
                continue
            try:
                kafka_topic = topics.get(topic) or kafka_topic_of(topic)
            except ValueError as exc:
                results[i] = EventRejectedError(f"event {i} of the batch cannot be written: {exc}")
                continue
            topics[topic] = kafka_topic
            if isinstance(headers, str):
                results[i] = EventRejectedError(f"event {i} of the batch cannot be written: {headers}")
                continue
            seen = known(event_id, now=now)
            if seen is not None:
                results[i] = AppendResult(seen[1], True, seen[0])
                uncertain.pop(event_id, None)
                continue
            if event_id in unsure:
                results[i] = unsure[event_id]
                continue
            if event_id in first:
                twins[i] = first[event_id]
                continue
            other = inflight.get(event_id)
            if other is not None:
                waits[i] = other
                continue
            data_size = len(data)
            size = data_size + (len(key) if key else 0) + headers_size + RECORD_OVERHEAD
            if size > max_bytes:
                results[i] = KafkaMessageTooLargeError(size=size, data_size=data_size, max_message_bytes=max_bytes)
                continue
            records[i] = (key, headers, data)
            ids[i] = event_id
            first[event_id] = i
            inflight[event_id] = (call, i)
            mine.append(event_id)
            members = plan.get(kafka_topic)
            if members is None:
                members = plan[kafka_topic] = []  # (setdefault would make a list per event)
            members.append(i)

    async def _finish(
        self,
        results: list[AppendResult | BrokerError | None],
        twins: dict[int, int],
        waits: dict[int, tuple[asyncio.Future[CallResults], int]],
    ) -> list[AppendResult | BrokerError]:
        for i, j in twins.items():
            results[i] = _as_duplicate(results[j])
        for i, (future, j) in waits.items():
            other_result: AppendResult | BrokerError | None
            try:
                other = await asyncio.wait_for(asyncio.shield(future), self._request_timeout + 1.0)
            except TimeoutError:
                other_result = KafkaUnavailableError(
                    "an earlier append of the same id is still waiting for its ack; retry with the same id"
                )
            else:
                other_result = other if isinstance(other, BrokerError) else other[j]
                if other_result is None:
                    other_result = KafkaUnavailableError(
                        "an earlier append of the same id was cancelled before its ack; retry with the same id"
                    )
            results[i] = _as_duplicate(other_result)
        stats = self.stats
        out: list[AppendResult | BrokerError] = []
        for maybe in results:
            result = maybe if maybe is not None else BrokerError("internal error: no result for the event")
            if isinstance(result, AppendResult):
                if result.duplicate:
                    stats.duplicates += 1
            else:
                stats.failed += 1
            out.append(result)
        return out

    @staticmethod
    def _partition(parts: list[int], key: bytes | None, sticky: int) -> int:
        if key:
            # Kafka's default partitioner (murmur2, as the Java client): a native producer of
            # the same key writes to the same partition.
            index: int = (_key_hash(key) & 0x7FFFFFFF) % len(parts)
            return parts[index]
        return parts[sticky % len(parts)]

    async def _enqueue(
        self,
        producer: AIOKafkaProducer,
        plan: dict[str, list[int]],
        records: dict[int, _Record],
        results: list[AppendResult | BrokerError | None],
    ) -> list[_Part]:
        """Adds the events to their partitions' open record batches; the parts to wait for."""
        topics = list(plan)
        known = [self._topics[t] for t in topics if t in self._topics]
        created: Sequence[list[int] | BaseException] = known
        if len(known) < len(topics):
            # A task per topic only when one is not known yet (a gather per call cost a loop turn each).
            created = await asyncio.gather(*(self._ensure_topic(t) for t in topics), return_exceptions=True)
        parts: list[_Part] = []
        for topic, partitions in zip(topics, created, strict=True):
            if isinstance(partitions, BaseException):
                if not isinstance(partitions, (*KAFKA_FAILURES, BrokerError)):
                    raise partitions
                error = kafka_error(partitions, f"topic {topic}")
                self._note(not isinstance(error, BrokerUnavailableError))
                for i in plan[topic]:
                    results[i] = error
                continue
            # Rotating from a random start: replicas (and restarts) do not all begin with partition 0.
            last = self._sticky.get(topic)
            sticky = random.randrange(len(partitions)) if last is None else last + 1  # spread, not secrecy
            self._sticky[topic] = sticky
            groups: dict[int, list[int]] = {}
            partition_of = self._partition
            for i in plan[topic]:
                partition = partition_of(partitions, records[i][0], sticky)
                members = groups.get(partition)
                if members is None:
                    members = groups[partition] = []  # (setdefault would make a list per event)
                members.append(i)
            for partition, members in groups.items():
                self._fill(producer, TopicPartition(topic, partition), members, records=records, parts=parts)
        return parts

    def _fill(
        self,
        producer: AIOKafkaProducer,
        tp: TopicPartition,
        members: list[int],
        *,
        records: dict[int, _Record],
        parts: list[_Part],
    ) -> None:
        """Appends one partition's events, in order, to its open batch (a new one when full or none)."""
        outbox = self._outbox.get(tp)
        if outbox is None:
            outbox = self._outbox[tp] = collections.deque()
        batch = outbox[-1] if outbox and not outbox[-1].closed else None
        part: _Part | None = None
        for i in members:
            key, headers, value = records[i]
            if batch is None or batch.builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                if batch is not None:
                    batch.closed = True  # full: the producer takes it as it is
                batch = self._open_batch(producer, tp, outbox)
                # An empty batch takes any record up to max_batch_size (= max_message_bytes,
                # which _plan checked), so this append cannot fail.
                batch.builder.append(key=key, value=value, timestamp=None, headers=headers)
            if part is None or part[0] is not batch.acked:
                part = (batch.acked, tp, [], batch.count)
                parts.append(part)
            part[2].append(i)
            batch.count += 1

    def _open_batch(self, producer: AIOKafkaProducer, tp: TopicPartition, outbox: collections.deque[_Batch]) -> _Batch:
        batch = _Batch(producer.create_batch(), asyncio.get_running_loop().create_future())
        # Every call whose part of it failed reads the error; this reads it too for the rare
        # batch all of whose calls ended first (no "exception never retrieved" then).
        batch.acked.add_done_callback(_retrieved)
        outbox.append(batch)
        if tp not in self._senders:
            self._senders[tp] = asyncio.create_task(self._send_outbox(producer, tp, outbox), name=f"kafka-send-{tp}")
        return batch

    async def _send_outbox(
        self, producer: AIOKafkaProducer, tp: TopicPartition, outbox: collections.deque[_Batch]
    ) -> None:
        """Hands a partition's batches to the producer, in order, while there are any.

        The producer queues one batch per partition until its request is sent: while it
        waits, the open batch keeps taking the records of later append calls, so concurrent
        calls share record batches and produce requests (one request per call was a round
        trip per 100 events).
        """
        try:
            while outbox:
                batch = outbox[0]
                try:
                    delivery = await producer.send_batch(batch.builder, tp.topic, partition=tp.partition)
                except KAFKA_FAILURES as exc:
                    if isinstance(exc, UnknownTopicOrPartitionError):
                        self._topics.pop(tp.topic, None)
                    # Every batch behind it holds later events of this partition (later calls,
                    # often the same keys): sent now, they would be stored before the resend
                    # of this one. They fail with it.
                    for waiting in outbox:
                        waiting.closed = True
                        if not waiting.acked.done():
                            waiting.acked.set_exception(exc)
                    outbox.clear()
                    break
                # In the producer's queue now (no await since): no record may join it any more.
                outbox.popleft()
                batch.closed = True
                self.stats.published += batch.count
                delivery.add_done_callback(functools.partial(_deliver, batch.acked))
        except BaseException as exc:
            # Cancelled (the broker stops): no batch left here can be sent any more.
            for batch in outbox:
                batch.closed = True
                if not batch.acked.done():
                    batch.acked.set_exception(KafkaUnavailableError(f"write to {tp.topic}/{tp.partition}: {exc!r}"))
            outbox.clear()
            raise
        finally:
            self._senders.pop(tp, None)
            if not outbox:
                self._outbox.pop(tp, None)

    async def _collect(
        self,
        parts: list[_Part],
        ids: Sequence[str],
        results: list[AppendResult | BrokerError | None],
    ) -> None:
        """Waits for the acks of the batches (bounded) and fills in the results."""
        try:
            _done, waiting = await asyncio.wait({p[0] for p in parts}, timeout=self._request_timeout + 1.0)
        except asyncio.CancelledError:
            # The batches are on their way regardless: their ids still reach the window.
            for future, tp, members, first in parts:
                if not future.done():
                    future.add_done_callback(functools.partial(self._late, tp, members, ids, first))
                    self._mark_uncertain(tp, members, ids)
                elif not future.cancelled():
                    self._late(tp, members, ids, first, future)
            raise
        for part in parts:
            future, tp, members, first = part
            if future in waiting:
                for i in members:
                    results[i] = KafkaUnavailableError(
                        f"Kafka did not acknowledge the write to {tp.topic}/{tp.partition} within "
                        f"{self._request_timeout:g} s; retry with the same id, duplicates are absorbed",
                        cause="timeout",
                    )
                future.add_done_callback(functools.partial(self._late, tp, members, ids, first))
                self._note(False)
                self._mark_uncertain(tp, members, ids)
            else:
                self._settle(part, ids, results)

    def _settle(self, part: _Part, ids: Sequence[str], results: list[AppendResult | BrokerError | None]) -> None:
        """Fills in the results of a call's part of an answered batch."""
        future, tp, members, first = part
        exc = future.exception()
        if exc is not None:
            error = kafka_error(exc, f"write to {tp.topic}/{tp.partition}")
            if isinstance(exc, UnknownTopicOrPartitionError):
                self._topics.pop(tp.topic, None)
            self._note(not isinstance(error, BrokerUnavailableError))
            if isinstance(error, StorageFullError):
                self.storage.refused(str(error))
            for i in members:
                results[i] = error
            if isinstance(error, BrokerUnavailableError):
                self._mark_uncertain(tp, members, ids)
            return
        base = future.result().offset
        if base < 0:
            # No offset means no stored record (an answer of acks=0, or a broken one): never an ack.
            error = KafkaUnavailableError(
                f"write to {tp.topic}/{tp.partition}: Kafka answered without an offset ({base}); "
                "the events are not counted as stored, retry with the same id",
                cause="no offset",
            )
            for i in members:
                results[i] = error
            self._mark_uncertain(tp, members, ids)
            return
        self._note(True)
        if self.storage.problem is not None:
            self.storage.stored()
        base += first
        stream = self._remember(tp, members, ids, base)
        for sequence, i in enumerate(members, base + 1):
            results[i] = AppendResult(sequence, False, stream)
        self.stats.acked += len(members)

    def _remember(self, tp: TopicPartition, members: list[int], ids: Sequence[str], base: int) -> str:
        """Puts an acked batch (first offset ``base``) into the id window, out of doubt; its stream."""
        stream = stream_of(tp.topic, tp.partition)
        written = [ids[i] for i in members]
        self._ids.add_run(written, stream, base + 1, time.time())
        follower = self._follower
        if follower is not None:
            # Known from the ack: the follower need not read these back.
            follower.skip_own(tp, base, base + len(members))
        uncertain = self._uncertain
        if uncertain:
            for event_id in written:
                uncertain.pop(event_id, None)
        return stream

    def _mark_uncertain(self, tp: TopicPartition, members: list[int], ids: Sequence[str]) -> None:
        """Sent, never acked: a retry of these ids first makes sure the log does not hold them."""
        uncertain = self._uncertain
        for i in members:
            uncertain[ids[i]] = tp
        while len(uncertain) > _MAX_UNCERTAIN:
            del uncertain[next(iter(uncertain))]

    async def _settle_uncertain(self, rows: list[_Row]) -> dict[str, BrokerError]:
        """Brings the id window up to the end of the partitions of ids whose last write is in doubt.

        A write that timed out may still have been stored (the broker took it and the answer
        was lost), so a retry of its id waits until the id follower has read that partition
        up to its current end: the window then knows whether it is there. The ids that cannot
        be settled now (the broker is still away) get an error to retry with.
        """
        uncertain = self._uncertain
        if not uncertain:
            return {}
        doubtful = {row[0]: uncertain[row[0]] for row in rows if row[0] in uncertain and self._ids.get(row[0]) is None}
        if not doubtful:
            return {}
        follower, probe = self._follower, self._probe
        if follower is None or probe is None:
            return {}  # no follower: nothing to settle with; the retry is written
        try:
            ends = await probe.end_offsets(sorted(set(doubtful.values())))
            settled = await follower.caught_up(ends, timeout=self._request_timeout)
        except KAFKA_FAILURES:
            settled = False
        if settled:
            for event_id in doubtful:
                uncertain.pop(event_id, None)
            return {}
        error = KafkaUnavailableError(
            "an earlier write of this id got no answer from Kafka, and whether it was stored cannot be "
            "read back yet; retry with the same id",
            cause="uncertain",
        )
        return dict.fromkeys(doubtful, error)

    def _late(
        self,
        tp: TopicPartition,
        members: list[int],
        ids: Sequence[str],
        first: int,
        future: asyncio.Future[RecordMetadata],
    ) -> None:
        """A batch acked after its append gave up: its ids go into the window all the same."""
        if future.cancelled() or future.exception() is not None or future.result().offset < 0:
            return
        self.stats.late_acks += 1
        self._remember(tp, members, ids, future.result().offset + first)

"""Durable consumers of a Kafka region: a consumer group per name, offsets committed on ack.

Every gateway replica that opens consumer ``name`` joins consumer group ``<prefix><name>``
subscribed to the region's topics of the pattern (a regex, so topics created later join in
at the next metadata refresh); Kafka splits the partitions between the replicas and moves
them when one comes or goes.

Offsets are committed by ``ack`` only, never automatically: per partition, the offset after
the highest *contiguous* acked record, so an event is never skipped because a later one was
acked first. Events the consumer filters out (another origin, a route without the
destination) count as acked in their place in the log.

A rebalance (a replica joined or left, a new topic matched) fails the next ``fetch`` once,
and the acks of deliveries handed out before it, with a retriable ``BrokerUnavailableError``
(tokens carry the assignment they came from): the caller resets, and each partition's new
owner starts at its last committed offset, so what was sent and not committed is sent again,
in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.structs import ConsumerRecord, TopicPartition

from meshgate.brokers._base import BrokerError, Delivery, DurableConsumer, RawBatch
from meshgate.brokers._codec import HEADER_ORIGIN, HEADER_ROUTE, header_lines, lines_from_kafka_record
from meshgate.brokers.kafka._clients import start_consumer, stop_consumer
from meshgate.brokers.kafka._errors import KAFKA_FAILURES, KafkaUnavailableError, kafka_error
from meshgate.brokers.kafka._follower import header_value
from meshgate.brokers.kafka._names import stream_of

if TYPE_CHECKING:
    from meshgate.brokers.kafka._offsets import OffsetProbe
    from meshgate.v1 import event_pb2

__all__ = ["KafkaConsumerHost", "KafkaDurableConsumer", "KafkaToken"]

logger = logging.getLogger(__name__)

# A high watermark from the consumer's own fetches younger than this is current enough for
# the lag; an older one (the caller stopped fetching) is looked up afresh.
_FRESH_HIGHWATER_MS = 2000


@dataclass(frozen=True, slots=True)
class KafkaToken:
    """Where a delivery came from, and under which assignment of its partition."""

    tp: TopicPartition
    offset: int
    epoch: int


# A record a consumer keeps, its token and how many records follow it in its partition.
_Fetched = tuple[ConsumerRecord[bytes, bytes], KafkaToken, int]


def _stored_ns(record: ConsumerRecord[bytes, bytes]) -> int:
    return max(0, int(record.timestamp)) * 1_000_000


class _Track:
    """One assigned partition: offsets handed out in order, which of them are acked."""

    __slots__ = ("acked", "committed", "epoch", "fetched")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.fetched: deque[int] = deque()
        self.acked: set[int] = set()
        # The group's committed offset as last known (None: not looked up yet).
        self.committed: int | None = None

    def advance(self) -> int | None:
        """Drops the acked prefix; the offset to commit when it moved, else None."""
        fetched, acked = self.fetched, self.acked
        floor = None
        while fetched and fetched[0] in acked:
            offset = fetched.popleft()
            acked.discard(offset)
            floor = offset + 1
        return floor


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, owner: KafkaDurableConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self._owner._forget(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self._owner._forget(assigned)
        self._owner._rebalanced()


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaConsumerHost:
    """What a durable consumer uses of its broker, handed over explicitly by the broker."""

    # A record as an event.
    decode: Callable[[ConsumerRecord[bytes, bytes]], event_pb2.Event]
    # A Kafka topic's mesh topic.
    mesh_topic: Callable[[str], str]
    # The broker's offset probe (raises "not started" while it has none).
    probe: Callable[[], OffsetProbe]
    # The consumer closed: the broker no longer closes it on stop.
    closed: Callable[[KafkaDurableConsumer], None]


class KafkaDurableConsumer(DurableConsumer):
    def __init__(
        self,
        host: KafkaConsumerHost,
        *,
        name: str,
        group_id: str,
        pattern: str,
        origin: str | None,
        routed_to: str | None,
    ) -> None:
        self._host = host
        self.name = name
        self.group_id = group_id
        self.pattern = pattern
        self._origin = origin
        self._routed_to = routed_to
        self._consumer: AIOKafkaConsumer | None = None
        self._tracks: dict[TopicPartition, _Track] = {}
        self._epoch = 0
        self._oldest_cache: dict[tuple[TopicPartition, int], float] = {}
        self._joined = asyncio.Event()
        # The group changed this member's share since the last reset: the next fetch fails once.
        self._share_changed = False
        self._closed = False

    async def open(self, consumer: AIOKafkaConsumer, regex: str, *, join_timeout: float) -> None:
        """Joins the group; returns once the first assignment is in (or after ``join_timeout``).

        Waiting for it means that whatever the caller starts next (a Replicate call whose
        destination recovers its dedup state at its start) begins after the group has handed
        this member its share; every later change of share fails one fetch.
        """
        consumer.subscribe(pattern=regex, listener=_Listener(self))
        await start_consumer(consumer)
        self._consumer = consumer
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._joined.wait(), join_timeout)

    @property
    def assignment(self) -> frozenset[str]:
        """The streams (``<topic>/<partition>``) the group gives this member now."""
        consumer = self._consumer
        if consumer is None:
            return frozenset()
        return frozenset(stream_of(tp.topic, tp.partition) for tp in consumer.assignment())

    def _rebalanced(self) -> None:
        if self._joined.is_set():
            self._share_changed = True
        self._joined.set()

    def _forget(self, tps: Sequence[TopicPartition]) -> None:
        # Assignment changed: deliveries handed out under the old one can no longer be acked.
        self._epoch += 1
        for tp in tps:
            self._tracks.pop(tp, None)

    def _track(self, tp: TopicPartition) -> _Track:
        track = self._tracks.get(tp)
        if track is None:
            track = self._tracks[tp] = _Track(self._epoch)
        return track

    def _require(self) -> AIOKafkaConsumer:
        consumer = self._consumer
        if self._closed or consumer is None:
            raise BrokerError(f"durable consumer {self.name!r} is closed", retriable=False)
        return consumer

    def _keep(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        origin, routed_to = self._origin, self._routed_to
        if origin is not None and header_value(record, HEADER_ORIGIN) != origin:
            return False
        if routed_to is not None:
            route = header_value(record, HEADER_ROUTE)
            if route is None or routed_to not in route.split(","):
                return False
        return True

    async def _fetch_records(self, max_events: int, timeout: float) -> list[_Fetched]:
        """Up to ``max_events`` records this consumer keeps (those it skips count as acked), each
        with its token and the records after it in its partition; none when none came in time."""
        consumer = self._require()
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            self._check_share()
            left = max(0.0, deadline - loop.time())
            try:
                got = await consumer.getmany(timeout_ms=int(left * 1000), max_records=max_events)
            except KAFKA_FAILURES as exc:
                raise kafka_error(exc, f"fetch of durable consumer {self.name!r}") from exc
            self._check_share()
            kept: list[_Fetched] = []
            commits: dict[TopicPartition, int] = {}
            for tp, records in got.items():
                if not records:
                    continue
                track = self._track(tp)
                high = consumer.highwater(tp)
                skipped = False
                for record in records:
                    track.fetched.append(record.offset)
                    if not self._keep(record):
                        track.acked.add(record.offset)
                        skipped = True
                        continue
                    pending = max(0, high - record.offset - 1) if high is not None else 0
                    kept.append((record, KafkaToken(tp, record.offset, track.epoch), pending))
                if skipped:
                    floor = track.advance()
                    if floor is not None:
                        commits[tp] = floor
            if commits:
                await self._commit(consumer, commits)
            if kept or loop.time() >= deadline:
                return kept

    async def fetch(self, max_events: int, *, timeout: float) -> list[Delivery]:
        decode = self._host.decode
        return [
            # CreateTime set at produce (the adapter appends without one), or the broker's
            # LogAppendTime when the topic is configured so.
            Delivery(event=decode(record), token=token, pending=pending, stored_ns=_stored_ns(record))
            for record, token, pending in await self._fetch_records(max_events, timeout)
        ]

    async def fetch_raw(self, max_events: int, *, timeout: float) -> RawBatch:
        """``fetch`` without an event per record: each record's lines made from its headers as
        they are (``lines_from_kafka_record``), the record decoded only where that does not apply."""
        batch = RawBatch()
        decode, mesh_topic = self._host.decode, self._host.mesh_topic
        for record, token, pending in await self._fetch_records(max_events, timeout):
            made = lines_from_kafka_record(record.headers, record.key)
            if made is None:
                event = decode(record)
                event_id, lines = event.id, header_lines(event)
            else:
                event_id, lines = made
            batch.ids.append(event_id)
            batch.topics.append(mesh_topic(record.topic))
            batch.sequences.append(record.offset + 1)
            batch.streams.append(stream_of(record.topic, record.partition))
            batch.headers.append(lines)
            batch.data.append(record.value or b"")
            batch.stored_ns.append(_stored_ns(record))
            batch.tokens.append(token)
            batch.pending = pending
        if not all(batch.stored_ns):
            batch.stored_ns.clear()
        return batch

    async def _commit(self, consumer: AIOKafkaConsumer, commits: dict[TopicPartition, int]) -> None:
        epoch = self._epoch
        try:
            await consumer.commit(commits)
        except KAFKA_FAILURES as exc:
            raise kafka_error(
                exc,
                f"commit of consumer group {self.group_id!r} ({len(commits)} partitions; a rebalance may have "
                "moved them to another replica: reset and fetch again)",
            ) from exc
        for tp, offset in commits.items():
            track = self._tracks.get(tp)
            if track is not None and self._epoch == epoch:
                track.committed = offset

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        await self._ack_tokens([delivery.token for delivery in deliveries])

    async def ack_raw(self, batch: RawBatch) -> None:
        await self._ack_tokens(batch.tokens)

    async def _ack_tokens(self, tokens: Sequence[object]) -> None:
        if not tokens:
            return
        consumer = self._require()
        touched: dict[TopicPartition, _Track] = {}
        for token in tokens:
            if not isinstance(token, KafkaToken):
                raise BrokerError(f"not a delivery of a Kafka consumer: {token!r}", retriable=False)
            track = self._tracks.get(token.tp)
            if track is None or track.epoch != token.epoch:
                raise KafkaUnavailableError(
                    f"partition {token.tp.topic}/{token.tp.partition} of consumer group {self.group_id!r} was "
                    "reassigned since the delivery (a replica joined or left): reset and fetch again",
                    cause="rebalance",
                )
            track.acked.add(token.offset)
            touched[token.tp] = track
        commits = {tp: floor for tp, track in touched.items() if (floor := track.advance()) is not None}
        if commits:
            await self._commit(consumer, commits)

    def _check_share(self) -> None:
        if self._share_changed:
            self._share_changed = False
            raise KafkaUnavailableError(
                f"consumer group {self.group_id!r} moved partitions (a replica joined or left): reset and fetch again",
                cause="rebalance",
            )

    async def reset(self) -> None:
        consumer = self._require()
        self._epoch += 1
        self._tracks.clear()
        self._share_changed = False
        try:
            for tp in consumer.assignment():
                committed = await consumer.committed(tp)
                if committed is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)
                self._track(tp).committed = committed
        except KAFKA_FAILURES as exc:
            raise kafka_error(exc, f"reset of consumer group {self.group_id!r}") from exc

    async def _floors(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, tuple[int, int]]:
        """Per assigned partition: (committed offset or the log start, end offset)."""
        tps = sorted(consumer.assignment())
        if not tps:
            return {}
        probe = self._host.probe()
        now_ms = time.time() * 1000
        ends: dict[TopicPartition, int] = {}
        stale = []
        for tp in tps:
            high = consumer.highwater(tp)
            polled = consumer.last_poll_timestamp(tp)
            if high is not None and polled is not None and now_ms - polled < _FRESH_HIGHWATER_MS:
                ends[tp] = high
            else:
                stale.append(tp)
        ends.update(await probe.end_offsets(stale))
        floors: dict[TopicPartition, int] = {}
        unknown = []
        epoch = self._epoch
        for tp in tps:
            track = self._tracks.get(tp)
            if track is not None and track.committed is not None:
                floors[tp] = track.committed
                continue
            committed = await consumer.committed(tp)
            if committed is None:
                unknown.append(tp)
            else:
                floors[tp] = committed
                if self._epoch == epoch and tp in consumer.assignment():
                    self._track(tp).committed = committed
        floors.update(await probe.beginning_offsets(unknown))
        return {tp: (floors[tp], ends[tp]) for tp in tps}

    async def pending(self) -> int:
        consumer = self._require()
        try:
            floors = await self._floors(consumer)
        except KAFKA_FAILURES as exc:
            raise kafka_error(exc, f"lag of consumer group {self.group_id!r}") from exc
        return sum(max(0, end - floor) for floor, end in floors.values())

    async def oldest_pending_time(self) -> float | None:
        consumer = self._require()
        probe = self._host.probe()
        oldest: float | None = None
        try:
            floors = await self._floors(consumer)
            cache: dict[tuple[TopicPartition, int], float] = {}
            for tp, (floor, end) in floors.items():
                if floor >= end:
                    continue
                stored = self._oldest_cache.get((tp, floor))
                if stored is None:
                    record = await probe.record_at(tp, floor)
                    if record is None:
                        continue
                    stored = record.timestamp / 1000
                cache[(tp, floor)] = stored
                oldest = stored if oldest is None else min(oldest, stored)
        except KAFKA_FAILURES as exc:
            raise kafka_error(exc, f"oldest pending event of consumer group {self.group_id!r}") from exc
        # Only the current floors: the cache never outgrows the assignment.
        self._oldest_cache = cache
        return oldest

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._host.closed(self)
        consumer, self._consumer = self._consumer, None
        self._tracks.clear()
        if consumer is not None:
            # Leaves the group: the partitions move to the other replicas at once.
            await stop_consumer(consumer)

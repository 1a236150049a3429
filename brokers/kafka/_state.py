"""The Kafka adapter's broker state: what ``KafkaBroker`` holds, its clients and its topics.

``KafkaBroker`` is composed of one mixin per concern (``_append``, ``_read``, ``_checkpoints``),
all on this state: the attributes ``KafkaBroker.__init__`` sets, declared here so each
concern's module is type-checked on its own, and the helpers they share (clients, topics, scans).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError, for_code
from aiokafka.structs import ConsumerRecord, TopicPartition

from meshgate._quota import FifoQuota
from meshgate.brokers._base import (
    AppendStats,
    BrokerError,
    BrokerState,
)
from meshgate.brokers._storage import StorageHealth
from meshgate.brokers.kafka._clients import start_consumer, stop_consumer
from meshgate.brokers.kafka._consumer import KafkaDurableConsumer
from meshgate.brokers.kafka._follower import IdFollower
from meshgate.brokers.kafka._ids import IdWindow
from meshgate.brokers.kafka._names import KafkaNames
from meshgate.brokers.kafka._offsets import OffsetProbe, scan, scan_to_end
from meshgate.brokers.kafka._origins import StartRead
from meshgate.config import KafkaSettings

if TYPE_CHECKING:
    from meshgate.brokers.kafka._append import CallResults, _Batch
    from meshgate.brokers.kafka._consumer import KafkaDurableConsumer

__all__ = ["KafkaBrokerStats", "KafkaState"]

logger = logging.getLogger(__name__)

_TOPIC_EXISTS = TopicAlreadyExistsError.errno


@dataclass(slots=True, kw_only=True)
class KafkaBrokerStats(AppendStats):
    """Counters of one KafkaBroker (``late_acks``: batches acked after their append had given up
    on them, recorded in the id window all the same)."""

    topics_created: int = 0


class KafkaState:
    """The state of a ``KafkaBroker`` (set in its ``__init__``) and the helpers its concerns share."""

    bootstrap_servers: tuple[str, ...]
    settings: KafkaSettings
    name: str
    state: BrokerState
    stats: KafkaBrokerStats
    storage: StorageHealth
    max_message_bytes: int
    fetch_max_bytes: int
    partition_fetch_bytes: int
    fetch_max_wait: float
    _window_seconds: float
    _connect_timeout: float
    _request_timeout: float
    _metadata_max_age: float
    _session_timeout: float
    _heartbeat_interval: float
    _follow_ids: bool
    _names: KafkaNames
    _ids: IdWindow
    _admin: AIOKafkaAdminClient | None
    _producer: AIOKafkaProducer | None
    _probe_consumer: AIOKafkaConsumer | None
    _probe: OffsetProbe | None
    _follower: IdFollower | None
    _start_read: StartRead | None
    # Kafka topic -> its partitions, for topics known to exist.
    _topics: dict[str, list[int]]
    _creating: dict[str, asyncio.Future[list[int]]]
    _sticky: dict[str, int]
    # Event ids being written by an append of this broker -> that call's results and the
    # id's index in them: one future per call, not per event (a future and a done callback
    # per event cost a loop turn each).
    _inflight: dict[str, tuple[asyncio.Future[CallResults], int]]
    # Event ids whose write may or may not have been stored (no ack came) -> its partition.
    _uncertain: dict[str, TopicPartition]
    # Per partition: the record batches not yet handed to the producer (the last one open to
    # more records), and the task handing them over.
    _outbox: dict[TopicPartition, collections.deque[_Batch]]
    _senders: dict[TopicPartition, asyncio.Task[None]]
    _appending: int
    # Events held by append calls, from their start to their results (max_append_events).
    _held: FifoQuota
    max_append_events: int
    _idle: asyncio.Event
    _checkpoints: dict[str, bytes]
    _checkpoint_next: int
    _checkpoint_lock: asyncio.Lock
    _order: asyncio.Lock
    _readers: set[AIOKafkaConsumer]
    _consumers: set[KafkaDurableConsumer]
    _lock: asyncio.Lock
    _stopping: bool

    def _consumer(self, *, group_id: str | None = None, **options: Any) -> AIOKafkaConsumer:
        timeout = self._request_timeout
        if group_id is not None:
            # A JoinGroup is answered only once the rebalance completes, up to the rebalance
            # timeout (the session timeout here): give it that long, as the Java client does.
            timeout = max(timeout, self._session_timeout + 5.0)
        options.setdefault("fetch_max_bytes", self.fetch_max_bytes)
        options.setdefault("max_partition_fetch_bytes", self.partition_fetch_bytes)
        return AIOKafkaConsumer(
            bootstrap_servers=list(self.bootstrap_servers),
            client_id=self.name,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=int(timeout * 1000),
            metadata_max_age_ms=int(self._metadata_max_age * 1000),
            session_timeout_ms=int(self._session_timeout * 1000),
            heartbeat_interval_ms=int(self._heartbeat_interval * 1000),
            fetch_max_wait_ms=int(self.fetch_max_wait * 1000),
            **options,
        )

    def _require_producer(self) -> AIOKafkaProducer:
        producer = self._producer
        if producer is None:
            raise BrokerError(f"Kafka broker {self.name!r} is not started", retriable=False)
        return producer

    def _require_probe(self) -> OffsetProbe:
        probe = self._probe
        if probe is None:
            raise BrokerError(f"Kafka broker {self.name!r} is not started", retriable=False)
        return probe

    def _note(self, ok: bool) -> None:
        """Follows the cluster's reachability from the outcome of requests (aiokafka has no callbacks)."""
        if self._producer is None or self._stopping:
            return
        self.state = BrokerState.CONNECTED if ok else BrokerState.RECONNECTING

    async def _ensure_topic(self, topic: str, *, partitions: int | None = None, compact: bool = False) -> list[int]:
        known = self._topics.get(topic)
        if known is not None:
            return known
        future = self._creating.get(topic)
        if future is None:
            future = asyncio.ensure_future(self._create_topic(topic, partitions or self.settings.partitions, compact))
            self._creating[topic] = future
            future.add_done_callback(functools.partial(self._created, topic))
        return await asyncio.shield(future)

    def _created(self, topic: str, _future: asyncio.Future[list[int]]) -> None:
        self._creating.pop(topic, None)

    async def _create_topic(self, topic: str, partitions: int, compact: bool) -> list[int]:
        admin, producer = self._admin, self._require_producer()
        if admin is None:
            raise BrokerError(f"Kafka broker {self.name!r} is not started", retriable=False)
        configs = {"cleanup.policy": "compact"} if compact else {}
        new = NewTopic(topic, partitions, self.settings.replication_factor, topic_configs=configs)
        response = await asyncio.wait_for(
            admin.create_topics([new], timeout_ms=int(self._request_timeout * 1000)), self._request_timeout
        )
        for entry in response.topic_errors:
            code = entry[1]
            if code == 0:
                self.stats.topics_created += 1
                logger.info("created Kafka topic %s (%d partitions)", topic, partitions)
            elif code != _TOPIC_EXISTS:
                message = entry[2] if len(entry) > 2 and entry[2] else ""
                raise for_code(code)(f"cannot create topic {topic}: {message}")
        found = await asyncio.wait_for(producer.partitions_for(topic), self._request_timeout)
        parts = sorted(found)
        if not parts:
            raise UnknownTopicOrPartitionError(f"topic {topic} has no partitions in the metadata yet")
        self._topics[topic] = parts
        return parts

    async def _mesh_partitions(self, pattern: str = ">") -> list[TopicPartition]:
        """The partitions of the region's topics of ``pattern``, fresh from the cluster."""
        admin = self._admin
        if admin is None:
            raise BrokerError(f"Kafka broker {self.name!r} is not started", retriable=False)
        match = self._names.regex(pattern).match
        described = await asyncio.wait_for(admin.describe_topics(), self._request_timeout)
        out: list[TopicPartition] = []
        for entry in described:
            topic = entry["topic"]
            if entry["error_code"] == 0 and match(topic):
                out.extend(TopicPartition(topic, p["partition"]) for p in entry["partitions"])
        out.sort()
        return out

    async def _scan(
        self, ranges: dict[TopicPartition, tuple[int, int]]
    ) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
        ranges = {tp: (start, end) for tp, (start, end) in ranges.items() if start < end}
        if not ranges:
            return
        consumer = self._consumer()
        await start_consumer(consumer)
        try:
            async for records in scan(consumer, ranges, timeout=self._request_timeout):
                yield records
        finally:
            await stop_consumer(consumer)

    async def _scan_to_end(
        self, starts: dict[TopicPartition, int], reached: dict[TopicPartition, int]
    ) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
        """``scan_to_end`` through a consumer of its own; ``reached`` gets where each partition ended."""
        if not starts:
            return
        consumer = self._consumer()
        await start_consumer(consumer)
        try:
            async for records in scan_to_end(consumer, starts, reached=reached, timeout=self._request_timeout):
                yield records
        finally:
            await stop_consumer(consumer)

"""The Kafka adapter: a region's log in Kafka topics, one per mesh topic.

Mesh topic ``a/b`` is Kafka topic ``<prefix>a.b``, created on first use with the region's
``partitions`` and ``replication_factor``. Each topic-partition is a log of its own, so an
event's position is its ``stream`` (``<topic>/<partition>``) and ``sequence`` (offset + 1).

Writes go out as one record batch per topic-partition with ``acks=all``; the idempotent
producer stays off (brokers that do not implement it refuse it, and it would not cover a
client's retry of the same event anyway). The event's key is the record key, placed with
Kafka's own partitioner (murmur2, as the Java client), so events of one key keep their order
and native producers of the same key land in the same partition. Events without a key go
to one partition per topic per ``append`` call, rotating between calls.

Headers are the CloudEvents binary-mode headers of the codec (``ce-*``, ``mg-*``,
``ce-traceparent``), the value is ``event.data`` byte for byte: a plain Kafka consumer reads
the same event.

Client retries of an id within the idempotency window are absorbed by the adapter's id window
(``_ids``/``_follower``): Kafka has no duplicate detection by id of its own.

Reads: ``read`` assigns every partition of the matching topics to a consumer of its own (no
group); ``durable_consumer`` is a consumer group (``_consumer``). Checkpoints live in a
compacted topic ``<prefix>__meshgate_checkpoints`` (key = name, the last value wins). Leases
do not exist: Kafka splits a durable consumer's work between replicas itself (``shares_work``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import ConsumerStoppedError, TopicAlreadyExistsError, UnknownTopicOrPartitionError, for_code
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import ConsumerRecord, RecordMetadata, TopicPartition

from meshgate.brokers._base import (
    AppendResult,
    AppendStats,
    Broker,
    BrokerError,
    BrokerState,
    BrokerUnavailableError,
    EventRejectedError,
    StartAt,
    StorageFullError,
)
from meshgate.brokers._codec import (
    HEADER_ID,
    HEADER_ORIGIN,
    HEADER_ORIGIN_SEQ,
    HEADER_ORIGIN_STREAM,
    decode_event,
    encode_headers,
    escape_header_value,
    unescape_header_value,
)
from meshgate.brokers._storage import PROBE_KEY, StorageHealth
from meshgate.brokers.kafka._clients import start_consumer, stop_consumer
from meshgate.brokers.kafka._consumer import KafkaDurableConsumer
from meshgate.brokers.kafka._errors import (
    KAFKA_FAILURES,
    KafkaMessageTooLargeError,
    KafkaUnavailableError,
    kafka_error,
)
from meshgate.brokers.kafka._follower import IdFollower
from meshgate.brokers.kafka._ids import IdWindow
from meshgate.brokers.kafka._names import CHECKPOINT_TOPIC, KafkaNames, parse_stream, stream_of
from meshgate.brokers.kafka._offsets import OffsetProbe, scan
from meshgate.config import KafkaSettings
from meshgate.v1 import event_pb2

__all__ = [
    "DEFAULT_FETCH_MAX_BYTES",
    "DEFAULT_FETCH_MAX_WAIT",
    "DEFAULT_MAX_WINDOW_IDS",
    "DEFAULT_PARTITION_FETCH_BYTES",
    "KafkaBroker",
    "KafkaBrokerStats",
]

logger = logging.getLogger(__name__)

# While no broker can store, a checkpoint write under this key (not an event) tells when one can
# again; first after this long, doubling up to the maximum.

# Bytes a record adds to its key, value and headers inside a batch, counted generously
# (varints, attributes, the batch header of a batch of one): the size check stays on the
# safe side of the brokers' message.max.bytes.
_RECORD_OVERHEAD = 128
_TOPIC_EXISTS = TopicAlreadyExistsError.errno
# How long a caught-up reader waits in one fetch before it looks at its stop flag again.
_IDLE_FETCH_MS = 1000
# Kafka's own default message.max.bytes: a record the brokers take out of the box.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
# Ids of writes in doubt remembered at most (the oldest are forgotten first).
_MAX_UNCERTAIN = 100_000
# Event ids the idempotency window holds at most by default (the mesh file's
# kafka.max_window_ids): about 34 MB (ENTRY_BYTES each), the largest share of a busy Kafka
# gateway's memory. At 12k events/s it covers ~16 s of retries; a gateway with memory to
# spare raises it.
DEFAULT_MAX_WINDOW_IDS = KafkaSettings().max_window_ids
# What one fetch of the adapter's consumers (id follower, readers, durable consumers, scans)
# may bring back: aiokafka's defaults are 50 MB per fetch and 1 MB per partition, which a
# follower of 36 partitions catching up after a restart fills. A record larger than the
# per-partition figure still comes whole (brokers return the first batch of a partition
# regardless since Kafka 0.10.1, KIP-74; tansu does too), so these bound memory, not sizes.
DEFAULT_FETCH_MAX_BYTES = 2 * 1024 * 1024
DEFAULT_PARTITION_FETCH_BYTES = 256 * 1024
# How long a fetch waits at the broker for new records. Kafka answers a waiting fetch as soon
# as a record arrives, so there this only paces idle polls; tansu answers at the end of the
# wait whatever arrives, so a record waits for it: 200 ms made Kafka -> NATS replication
# ~80 ms at p50 (a plain consumer on tansu: 54 ms p50 at 200, 3.5 ms at 20).
DEFAULT_FETCH_MAX_WAIT = 0.05


@dataclass(slots=True, kw_only=True)
class KafkaBrokerStats(AppendStats):
    """Counters of one KafkaBroker (``late_acks``: batches acked after their append had given up
    on them, recorded in the id window all the same)."""

    topics_created: int = 0


# One record to write: its key (None without one) and its headers, encoded.
_Record = tuple[bytes | None, list[tuple[str, bytes]]]
# What an append call leaves for concurrent calls of the same ids: its results by index (None
# where it ended before one), or the error that ended it (the broker stopped).
_CallResults = list[AppendResult | BrokerError | None] | BrokerError


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


def _as_duplicate(result: AppendResult | BrokerError | None) -> AppendResult | BrokerError | None:
    """Another write's result, for an event of the same id: a duplicate of what it stored."""
    return AppendResult(result.sequence, True, result.stream) if isinstance(result, AppendResult) else result


def _record_headers(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    # Meshgate's values are ASCII (escaped); a native producer's stray bytes become U+FFFD.
    return {k: v.decode("utf-8", "replace") for k, v in record.headers if v is not None}


class KafkaBroker(Broker):
    """A region's log in Kafka (``bootstrap_servers``: ``host:port`` entries).

    ``idempotency_window_seconds`` is how long an event id is remembered; ``settings.max_window_ids``
    bounds how many are (about ``ENTRY_BYTES`` each: the oldest are forgotten first).
    ``max_message_bytes`` is the largest record (data, key, headers) written: keep it at or
    below the brokers' ``message.max.bytes``. ``fetch_max_bytes`` and
    ``partition_fetch_bytes`` bound what each fetch of the adapter's consumers buffers (all
    partitions, one partition); ``fetch_max_wait`` is how long a fetch waits at the broker.
    """

    shares_work: ClassVar[bool] = True

    def __init__(
        self,
        *,
        bootstrap_servers: Sequence[str],
        settings: KafkaSettings,
        idempotency_window_seconds: float,
        name: str = "meshgate",
        connect_timeout: float = 5.0,
        request_timeout: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        metadata_max_age: float = 5.0,
        session_timeout: float = 10.0,
        heartbeat_interval: float = 1.0,
        follow_ids: bool = True,
        fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES,
        partition_fetch_bytes: int = DEFAULT_PARTITION_FETCH_BYTES,
        fetch_max_wait: float = DEFAULT_FETCH_MAX_WAIT,
    ) -> None:
        if idempotency_window_seconds <= 0:
            raise ValueError(f"idempotency_window_seconds must be > 0, got {idempotency_window_seconds}")
        if settings.partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {settings.partitions}")
        if settings.replication_factor < 1:
            raise ValueError(f"replication_factor must be >= 1, got {settings.replication_factor}")
        if max_message_bytes <= _RECORD_OVERHEAD:
            raise ValueError(f"max_message_bytes must be > {_RECORD_OVERHEAD}, got {max_message_bytes}")
        if not 0 < fetch_max_wait <= 5.0:
            raise ValueError(f"fetch_max_wait must be > 0 and <= 5 seconds, got {fetch_max_wait}")
        if partition_fetch_bytes < 1 or fetch_max_bytes < partition_fetch_bytes:
            raise ValueError(
                f"need 1 <= partition_fetch_bytes <= fetch_max_bytes, got {partition_fetch_bytes} and {fetch_max_bytes}"
            )
        self.state = BrokerState.NEW
        self.bootstrap_servers: tuple[str, ...] = tuple(bootstrap_servers)
        self.settings = settings
        self.name = name
        self.max_message_bytes = max_message_bytes
        self._window_seconds = idempotency_window_seconds
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._metadata_max_age = metadata_max_age
        self._session_timeout = session_timeout
        self._heartbeat_interval = heartbeat_interval
        self._follow_ids = follow_ids
        self.fetch_max_bytes = fetch_max_bytes
        self.partition_fetch_bytes = partition_fetch_bytes
        self.fetch_max_wait = fetch_max_wait
        self._names = KafkaNames(settings.topic_prefix)
        self._ids = IdWindow(window=idempotency_window_seconds, max_ids=settings.max_window_ids)
        self._admin: AIOKafkaAdminClient | None = None
        self._producer: AIOKafkaProducer | None = None
        self._probe_consumer: AIOKafkaConsumer | None = None
        self._probe: OffsetProbe | None = None
        self._follower: IdFollower | None = None
        # Kafka topic -> its partitions, for topics known to exist.
        self._topics: dict[str, list[int]] = {}
        self._creating: dict[str, asyncio.Future[list[int]]] = {}
        self._sticky: dict[str, int] = {}
        # Event ids being written by an append of this broker -> that call's results and the
        # id's index in them: one future per call, not per event (a future and a done callback
        # per event cost a loop turn each).
        self._inflight: dict[str, tuple[asyncio.Future[_CallResults], int]] = {}
        # Event ids whose write may or may not have been stored (no ack came) -> its partition.
        self._uncertain: dict[str, TopicPartition] = {}
        self._appending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._checkpoints: dict[str, bytes] = {}
        self._checkpoint_next = 0
        self._checkpoint_lock = asyncio.Lock()
        self._order = asyncio.Lock()
        self._readers: set[AIOKafkaConsumer] = set()
        self._consumers: set[KafkaDurableConsumer] = set()
        self._lock = asyncio.Lock()
        self._stopping = False
        self.stats = KafkaBrokerStats()
        self.storage = StorageHealth(name=name, on_problem=self._start_storage_probe)

    # -- lifecycle ----------------------------------------------------------------------------

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

    def sibling(self) -> KafkaBroker:
        """A KafkaBroker on the same cluster and topics, for the replication links' own loop.

        It has no id follower: the links write only dead letters, whose ids their own retries
        repeat through this same sibling (its own window absorbs them); reading every topic a
        second time in the same process would buy nothing more.
        """
        return KafkaBroker(
            bootstrap_servers=self.bootstrap_servers,
            settings=self.settings,
            idempotency_window_seconds=self._window_seconds,
            name=f"{self.name}-links",
            connect_timeout=self._connect_timeout,
            request_timeout=self._request_timeout,
            max_message_bytes=self.max_message_bytes,
            metadata_max_age=self._metadata_max_age,
            session_timeout=self._session_timeout,
            heartbeat_interval=self._heartbeat_interval,
            follow_ids=False,
            fetch_max_bytes=self.fetch_max_bytes,
            partition_fetch_bytes=self.partition_fetch_bytes,
            fetch_max_wait=self.fetch_max_wait,
        )

    async def start(self) -> None:
        async with self._lock:
            if self._producer is not None:
                return
            await self._start_locked()

    async def _start_locked(self) -> None:
        if not self.bootstrap_servers:
            raise BrokerError(f"Kafka broker {self.name!r} has no bootstrap servers", retriable=False)
        self.state = BrokerState.CONNECTING
        self._stopping = False
        servers = ", ".join(self.bootstrap_servers)
        try:
            self._admin = AIOKafkaAdminClient(
                bootstrap_servers=list(self.bootstrap_servers),
                client_id=self.name,
                request_timeout_ms=int(self._request_timeout * 1000),
            )
            await asyncio.wait_for(self._admin.start(), self._connect_timeout)
            self._producer = AIOKafkaProducer(
                bootstrap_servers=list(self.bootstrap_servers),
                client_id=self.name,
                acks="all",
                enable_idempotence=False,
                linger_ms=0,
                max_batch_size=self.max_message_bytes,
                max_request_size=self.max_message_bytes + _RECORD_OVERHEAD,
                request_timeout_ms=int(self._request_timeout * 1000),
                metadata_max_age_ms=int(self._metadata_max_age * 1000),
            )
            await asyncio.wait_for(self._producer.start(), self._connect_timeout)
            self._probe_consumer = self._consumer()
            await asyncio.wait_for(start_consumer(self._probe_consumer), self._connect_timeout)
            self._probe = OffsetProbe(self._probe_consumer, timeout=self._request_timeout)
            await self._ensure_topic(self._names.checkpoints, partitions=1, compact=True)
            await self._refresh_checkpoints()
            if self._follow_ids:
                self._follower = IdFollower(
                    make_consumer=self._consumer,
                    list_partitions=self._mesh_partitions,
                    window=self._ids,
                    probe=self._probe,
                    refresh_seconds=self._metadata_max_age,
                    timeout=self._request_timeout,
                )
                await self._follower.start()
        except BaseException as exc:
            await self._close_clients()
            self.state = BrokerState.CLOSED
            if isinstance(exc, (*KAFKA_FAILURES, BrokerError)):
                raise KafkaUnavailableError(
                    f"could not start on Kafka at {servers} within {self._connect_timeout:g} s "
                    f"({type(exc).__name__}: {exc})",
                    cause=type(exc).__name__,
                ) from exc
            raise
        self.state = BrokerState.CONNECTED
        if self.storage.problem is not None:
            # Left from before a stop: the probe tells when it is over, writes or not.
            self._start_storage_probe()
        logger.info(
            "connected to Kafka %s (topics %s*, %d partitions, replication factor %d, %d ids in the window)",
            servers,
            self._names.prefix,
            self.settings.partitions,
            self.settings.replication_factor,
            len(self._ids),
        )

    async def _close_clients(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            await follower.stop()
        if self._probe_consumer is not None:
            await stop_consumer(self._probe_consumer)
        if self._producer is not None:
            with contextlib.suppress(*KAFKA_FAILURES):
                await self._producer.stop()
        if self._admin is not None:
            with contextlib.suppress(*KAFKA_FAILURES):
                await self._admin.close()
        self._producer = None
        self._probe_consumer = None
        self._probe = None
        self._admin = None
        self._topics.clear()

    async def stop(self) -> None:
        async with self._lock:
            if self._producer is None:
                if self.state is not BrokerState.NEW:
                    self.state = BrokerState.CLOSED
                return
            self._stopping = True
            await self.storage.stop_probe()
            if self._appending:
                # In-flight appends settle by ack or by the producer's request timeout.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), self._request_timeout + 1.0)
            for consumer in list(self._consumers):
                await consumer.close()
            for reader in list(self._readers):
                await stop_consumer(reader)
            self._readers.clear()
            await self._close_clients()
            for future, _ in self._inflight.values():
                if not future.done():
                    future.set_result(KafkaUnavailableError(f"broker {self.name!r} stopped before the ack"))
            self._inflight.clear()
            self.state = BrokerState.CLOSED
            self._stopping = False

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

    # -- storage health -----------------------------------------------------------------------

    def storage_problem(self) -> str | None:
        return self.storage.problem

    def _start_storage_probe(self) -> None:
        """Writes a checkpoint (not an event) until the broker stores again, or a write of an event does."""
        self.storage.start_probe(
            lambda: self.put_checkpoint(PROBE_KEY, b"%d" % self.stats.acked),
            running=lambda: not self._stopping and self._producer is not None,
        )

    def _note(self, ok: bool) -> None:
        """Follows the cluster's reachability from the outcome of requests (aiokafka has no callbacks)."""
        if self._producer is None or self._stopping:
            return
        self.state = BrokerState.CONNECTED if ok else BrokerState.RECONNECTING

    # -- topics -------------------------------------------------------------------------------

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

    # -- append -------------------------------------------------------------------------------

    async def append(self, events: Sequence[event_pb2.Event]) -> list[AppendResult | BrokerError]:
        if not events:
            return []
        producer = self._require_producer()
        if self._stopping:
            return [BrokerUnavailableError(f"Kafka broker {self.name!r} is stopping")] * len(events)
        self._appending += 1
        self._idle.clear()
        try:
            return await self._append(producer, events)
        finally:
            self._appending -= 1
            if not self._appending:
                self._idle.set()

    async def _append(
        self, producer: AIOKafkaProducer, events: Sequence[event_pb2.Event]
    ) -> list[AppendResult | BrokerError]:
        results: list[AppendResult | BrokerError | None] = [None] * len(events)
        # Kafka topic -> indexes of the events to write there, in order.
        plan: dict[str, list[int]] = {}
        # Index -> the record's key (encoded once: size check, partitioner, batch) and headers.
        records: dict[int, _Record] = {}
        first: dict[str, int] = {}
        twins: dict[int, int] = {}
        waits: dict[int, tuple[asyncio.Future[_CallResults], int]] = {}
        mine: list[str] = []
        call: asyncio.Future[_CallResults] = asyncio.get_running_loop().create_future()
        batches: list[tuple[asyncio.Future[RecordMetadata], TopicPartition, list[int]]] = []
        try:
            # One call at a time up to the hand-over to the producer: concurrent calls are
            # written in the order they were made (the replication ingress pipelines on it).
            async with self._order:
                unsure = await self._settle_uncertain(events)
                self._plan(events, results, unsure, plan, records, first, twins, waits, mine, call)
                if plan:
                    batches = await self._enqueue(producer, events, plan, records, results)
            if batches:
                await self._collect(batches, events, results)
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
        events: Sequence[event_pb2.Event],
        results: list[AppendResult | BrokerError | None],
        unsure: dict[str, BrokerError],
        plan: dict[str, list[int]],
        records: dict[int, _Record],
        first: dict[str, int],
        twins: dict[int, int],
        waits: dict[int, tuple[asyncio.Future[_CallResults], int]],
        mine: list[str],
        call: asyncio.Future[_CallResults],
    ) -> None:
        """Sorts the events: refused, known duplicates, twins, waiting on another call, to write."""
        names = self._names
        now = time.time()
        for i, event in enumerate(events):
            event_id = event.id
            if not event_id:
                results[i] = EventRejectedError(f"event {i} of the batch has no id (the gateway assigns one)")
                continue
            if event.topic == CHECKPOINT_TOPIC:
                results[i] = EventRejectedError(
                    f"event {i} of the batch cannot be written: topic {CHECKPOINT_TOPIC} is reserved in Kafka "
                    "regions (it holds the gateway's checkpoints)"
                )
                continue
            try:
                kafka_topic = names.kafka_topic(event.topic)
                pairs = encode_headers(event)
            except ValueError as exc:
                results[i] = EventRejectedError(f"event {i} of the batch cannot be written: {exc}")
                continue
            seen = self._ids.get(event_id, now=now)
            if seen is not None:
                results[i] = AppendResult(seen[1], True, seen[0])
                self._uncertain.pop(event_id, None)
                continue
            if event_id in unsure:
                results[i] = unsure[event_id]
                continue
            if event_id in first:
                twins[i] = first[event_id]
                continue
            other = self._inflight.get(event_id)
            if other is not None:
                waits[i] = other
                continue
            encoded = [(k, v.encode()) for k, v in pairs]
            key = event.key.encode() if event.key else None
            data_size = len(event.data)
            size = data_size + (len(key) if key else 0) + sum(len(k) + len(v) for k, v in encoded) + _RECORD_OVERHEAD
            if size > self.max_message_bytes:
                results[i] = KafkaMessageTooLargeError(
                    size=size, data_size=data_size, max_message_bytes=self.max_message_bytes
                )
                continue
            records[i] = (key, encoded)
            first[event_id] = i
            self._inflight[event_id] = (call, i)
            mine.append(event_id)
            plan.setdefault(kafka_topic, []).append(i)

    async def _finish(
        self,
        results: list[AppendResult | BrokerError | None],
        twins: dict[int, int],
        waits: dict[int, tuple[asyncio.Future[_CallResults], int]],
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
            index: int = (murmur2(key) & 0x7FFFFFFF) % len(parts)
            return parts[index]
        return parts[sticky % len(parts)]

    async def _enqueue(
        self,
        producer: AIOKafkaProducer,
        events: Sequence[event_pb2.Event],
        plan: dict[str, list[int]],
        records: dict[int, _Record],
        results: list[AppendResult | BrokerError | None],
    ) -> list[tuple[asyncio.Future[RecordMetadata], TopicPartition, list[int]]]:
        """Hands the events to the producer, one record batch per partition; the futures of the acks."""
        topics = list(plan)
        created = await asyncio.gather(*(self._ensure_topic(t) for t in topics), return_exceptions=True)
        groups: dict[TopicPartition, list[int]] = {}
        for topic, parts in zip(topics, created, strict=True):
            if isinstance(parts, BaseException):
                if not isinstance(parts, (*KAFKA_FAILURES, BrokerError)):
                    raise parts
                error = kafka_error(parts, f"topic {topic}")
                self._note(not isinstance(error, BrokerUnavailableError))
                for i in plan[topic]:
                    results[i] = error
                continue
            # Rotating from a random start: replicas (and restarts) do not all begin with partition 0.
            last = self._sticky.get(topic)
            sticky = random.randrange(len(parts)) if last is None else last + 1  # spread, not secrecy
            self._sticky[topic] = sticky
            for i in plan[topic]:
                partition = self._partition(parts, records[i][0], sticky)
                groups.setdefault(TopicPartition(topic, partition), []).append(i)
        if not groups:
            return []
        sent = await asyncio.gather(
            *(
                self._send_group(producer, tp, members=members, events=events, records=records, results=results)
                for tp, members in groups.items()
            )
        )
        return [batch for group in sent for batch in group]

    async def _collect(
        self,
        batches: list[tuple[asyncio.Future[RecordMetadata], TopicPartition, list[int]]],
        events: Sequence[event_pb2.Event],
        results: list[AppendResult | BrokerError | None],
    ) -> None:
        """Waits for the acks of the batches (bounded) and fills in the results."""
        try:
            _done, waiting = await asyncio.wait([f for f, _, _ in batches], timeout=self._request_timeout + 1.0)
        except asyncio.CancelledError:
            # The batches are on their way regardless: their ids still reach the window.
            for future, tp, members in batches:
                if not future.done():
                    future.add_done_callback(functools.partial(self._late, tp, members, events))
                    self._mark_uncertain(tp, members, events)
                elif not future.cancelled():
                    self._late(tp, members, events, future)
            raise
        for future, tp, members in batches:
            if future in waiting:
                for i in members:
                    results[i] = KafkaUnavailableError(
                        f"Kafka did not acknowledge the write to {tp.topic}/{tp.partition} within "
                        f"{self._request_timeout:g} s; retry with the same id, duplicates are absorbed",
                        cause="timeout",
                    )
                future.add_done_callback(functools.partial(self._late, tp, members, events))
                self._note(False)
                self._mark_uncertain(tp, members, events)
            else:
                self._settle(future, tp, members, events, results)

    async def _send_group(
        self,
        producer: AIOKafkaProducer,
        tp: TopicPartition,
        *,
        members: list[int],
        events: Sequence[event_pb2.Event],
        records: dict[int, _Record],
        results: list[AppendResult | BrokerError | None],
    ) -> list[tuple[asyncio.Future[RecordMetadata], TopicPartition, list[int]]]:
        """Sends one partition's events as record batches; the futures of their acks."""
        out: list[tuple[asyncio.Future[RecordMetadata], TopicPartition, list[int]]] = []
        batch: BatchBuilder = producer.create_batch()
        in_batch: list[int] = []
        for n, i in enumerate(members):
            key, headers = records[i]
            value = events[i].data
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                # Full: send it, and start the next batch with this event. An empty batch
                # takes any record up to max_batch_size (= max_message_bytes, which _plan
                # checked), so the second append cannot fail.
                error = await self._send_batch(producer, batch, tp, in_batch, out)
                if error is not None:
                    for j in members[n:]:
                        results[j] = error
                    return out
                batch, in_batch = producer.create_batch(), []
                batch.append(key=key, value=value, timestamp=None, headers=headers)
            in_batch.append(i)
        if in_batch:
            await self._send_batch(producer, batch, tp, in_batch, out)
        return out

    async def _send_batch(
        self,
        producer: AIOKafkaProducer,
        batch: BatchBuilder,
        tp: TopicPartition,
        members: list[int],
        out: list[tuple[asyncio.Future[RecordMetadata], TopicPartition, list[int]]],
    ) -> BrokerError | None:
        """Queues one record batch; its ack future goes to ``out``, a failure to queue is returned."""
        try:
            future = await producer.send_batch(batch, tp.topic, partition=tp.partition)
        except KAFKA_FAILURES as exc:
            if isinstance(exc, UnknownTopicOrPartitionError):
                self._topics.pop(tp.topic, None)
            error = kafka_error(exc, f"write to {tp.topic}/{tp.partition}")
            self._note(not isinstance(error, BrokerUnavailableError))
            if isinstance(error, StorageFullError):
                self.storage.refused(str(error))
            return error
        out.append((future, tp, members))
        self.stats.published += len(members)
        return None

    def _settle(
        self,
        future: asyncio.Future[RecordMetadata],
        tp: TopicPartition,
        members: list[int],
        events: Sequence[event_pb2.Event],
        results: list[AppendResult | BrokerError | None],
    ) -> None:
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
                self._mark_uncertain(tp, members, events)
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
            self._mark_uncertain(tp, members, events)
            return
        self._note(True)
        if self.storage.problem is not None:
            self.storage.stored()
        stream = self._remember(tp, members, events, base)
        for sequence, i in enumerate(members, base + 1):
            results[i] = AppendResult(sequence, False, stream)
        self.stats.acked += len(members)

    def _remember(self, tp: TopicPartition, members: list[int], events: Sequence[event_pb2.Event], base: int) -> str:
        """Puts an acked batch (first offset ``base``) into the id window, out of doubt; its stream."""
        stream = stream_of(tp.topic, tp.partition)
        ids = [events[i].id for i in members]
        self._ids.add_run(ids, stream, base + 1, time.time())
        uncertain = self._uncertain
        if uncertain:
            for event_id in ids:
                uncertain.pop(event_id, None)
        return stream

    def _mark_uncertain(self, tp: TopicPartition, members: list[int], events: Sequence[event_pb2.Event]) -> None:
        """Sent, never acked: a retry of these ids first makes sure the log does not hold them."""
        uncertain = self._uncertain
        for i in members:
            uncertain[events[i].id] = tp
        while len(uncertain) > _MAX_UNCERTAIN:
            del uncertain[next(iter(uncertain))]

    async def _settle_uncertain(self, events: Sequence[event_pb2.Event]) -> dict[str, BrokerError]:
        """Brings the id window up to the end of the partitions of ids whose last write is in doubt.

        A write that timed out may still have been stored (the broker took it and the answer
        was lost), so a retry of its id waits until the id follower has read that partition
        up to its current end: the window then knows whether it is there. The ids that cannot
        be settled now (the broker is still away) get an error to retry with.
        """
        uncertain = self._uncertain
        if not uncertain:
            return {}
        doubtful = {e.id: uncertain[e.id] for e in events if e.id in uncertain and self._ids.get(e.id) is None}
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
        events: Sequence[event_pb2.Event],
        future: asyncio.Future[RecordMetadata],
    ) -> None:
        """A batch acked after its append gave up: its ids go into the window all the same."""
        if future.cancelled() or future.exception() is not None:
            return
        self.stats.late_acks += 1
        self._remember(tp, members, events, future.result().offset)

    # -- reads --------------------------------------------------------------------------------

    def _decode(self, record: ConsumerRecord[bytes, bytes]) -> event_pb2.Event:
        return decode_event(
            _record_headers(record),
            record.value or b"",
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

    async def durable_consumer(
        self, name: str, *, pattern: str = ">", origin: str | None = None, routed_to: str | None = None
    ) -> KafkaDurableConsumer:
        regex = self._names.regex(pattern)
        self._require_producer()
        group_id = f"{self._names.prefix}{name}"
        consumer = KafkaDurableConsumer(
            self, name=name, group_id=group_id, pattern=pattern, origin=origin, routed_to=routed_to
        )
        client = self._consumer(group_id=group_id)
        try:
            await consumer.open(client, regex.pattern, join_timeout=self._session_timeout + 5.0)
        except KAFKA_FAILURES as exc:
            await stop_consumer(client)
            raise kafka_error(exc, f"cannot join consumer group {group_id!r}") from exc
        self._consumers.add(consumer)
        return consumer

    # -- positions ----------------------------------------------------------------------------

    async def last_sequence(self) -> int:
        raise BrokerError(
            "a Kafka region has no single last sequence (every topic-partition counts its own); use log_position()",
            retriable=False,
        )

    async def log_position(self) -> str:
        probe = self._require_probe()
        try:
            tps = await self._mesh_partitions()
            ends = await probe.end_offsets(tps)
        except KAFKA_FAILURES as exc:
            raise kafka_error(exc, "end of the region's log") from exc
        return _encode_position({stream_of(tp.topic, tp.partition): end for tp, end in ends.items()})

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

    def earliest_position(self, positions: Sequence[str]) -> str:
        if not positions or "" in positions:
            return ""
        decoded = [_decode_position(p) for p in positions]
        # A partition missing from a position had no events when it was read: offset 0.
        streams = set().union(*decoded)
        return _encode_position({s: min(d.get(s, 0) for d in decoded) for s in streams})

    async def origin_sequences_after(self, origin: str, position: str) -> tuple[dict[str, set[int]], str]:
        after = _decode_position(position)
        probe = self._require_probe()
        found: dict[str, set[int]] = {}
        try:
            tps = await self._mesh_partitions()
            ends = await probe.end_offsets(tps)
            begins = await probe.beginning_offsets(tps)
            ranges = {tp: (max(begins[tp], after.get(stream_of(tp.topic, tp.partition), 0)), ends[tp]) for tp in tps}
            escaped = escape_header_value(origin).encode()
            async for records in self._scan(ranges):
                for record in records:
                    if not any(k == HEADER_ORIGIN and v == escaped for k, v in record.headers):
                        continue
                    seq = stream = None
                    for k, v in record.headers:
                        if k == HEADER_ORIGIN_SEQ and v is not None and v.isdigit():
                            seq = int(v)
                        elif k == HEADER_ORIGIN_STREAM and v is not None:
                            stream = unescape_header_value(v.decode("utf-8", "replace"))
                    if seq:
                        found.setdefault(stream or "", set()).add(seq)
        except KAFKA_FAILURES as exc:
            raise kafka_error(exc, f"scan for {origin}'s events") from exc
        reached = dict(after)
        for tp, end in ends.items():
            stream = stream_of(tp.topic, tp.partition)
            reached[stream] = max(end, after.get(stream, 0))
        return found, _encode_position(reached)

    async def find_event(self, event_id: str, *, since: datetime) -> event_pb2.Event | None:
        probe = self._require_probe()
        at = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
        wanted = escape_header_value(event_id).encode()
        try:
            tps = await self._mesh_partitions()
            starts = await probe.offsets_for_time(tps, int(at.timestamp() * 1000))
            ends = await probe.end_offsets(tps)
            async for records in self._scan({tp: (starts[tp], ends[tp]) for tp in tps}):
                for record in records:
                    if any(k == HEADER_ID and v == wanted for k, v in record.headers):
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

    # -- checkpoints and leases ---------------------------------------------------------------

    async def _refresh_checkpoints(self) -> None:
        """Reads the checkpoint topic from where the last read ended (all of it the first time)."""
        probe = self._require_probe()
        tp = TopicPartition(self._names.checkpoints, 0)
        async with self._checkpoint_lock:
            end = (await probe.end_offsets([tp]))[tp]
            begin = (await probe.beginning_offsets([tp]))[tp]
            start = max(begin, self._checkpoint_next)
            async for records in self._scan({tp: (start, end)}):
                for record in records:
                    if record.key is None:
                        continue
                    name = record.key.decode("utf-8", "replace")
                    if record.value is None:
                        self._checkpoints.pop(name, None)
                    else:
                        self._checkpoints[name] = record.value
            self._checkpoint_next = max(self._checkpoint_next, end)

    async def get_checkpoint(self, name: str) -> bytes | None:
        try:
            # Read up to the end first: another replica may have written since.
            await self._refresh_checkpoints()
        except KAFKA_FAILURES as exc:
            raise kafka_error(exc, f"read checkpoint {name!r}") from exc
        return self._checkpoints.get(name)

    async def put_checkpoint(self, name: str, value: bytes) -> None:
        producer = self._require_producer()
        try:
            future = await producer.send(self._names.checkpoints, value, key=name.encode(), partition=0)
            await asyncio.wait_for(future, self._request_timeout + 1.0)
        except KAFKA_FAILURES as exc:
            error = kafka_error(exc, f"write checkpoint {name!r}")
            if isinstance(error, StorageFullError):
                self.storage.refused(str(error))
            raise error from exc
        async with self._checkpoint_lock:
            self._checkpoints[name] = value

    async def checkpoints(self, prefix: str) -> dict[str, bytes]:
        try:
            await self._refresh_checkpoints()
        except KAFKA_FAILURES as exc:
            raise kafka_error(exc, f"list checkpoints {prefix!r}") from exc
        return {name: value for name, value in self._checkpoints.items() if name.startswith(prefix)}

    async def hold_lease(self, name: str, owner: str, *, ttl: float) -> bool:
        raise BrokerError(
            f"lease {name!r}: a Kafka region does not use leases; its consumer groups split the work "
            "between replicas (shares_work)",
            retriable=False,
        )

    async def release_lease(self, name: str, owner: str) -> None:
        raise BrokerError(
            f"lease {name!r}: a Kafka region does not use leases; its consumer groups split the work "
            "between replicas (shares_work)",
            retriable=False,
        )

    # -- helpers for tests and the gateway ----------------------------------------------------

    async def topic_partitions(self, topic: str) -> list[int]:
        """The partitions of mesh topic ``topic`` (created if missing)."""
        kafka_topic = self._names.kafka_topic(topic)  # ValueError for an invalid topic
        try:
            return list(await self._ensure_topic(kafka_topic))
        except KAFKA_FAILURES as exc:
            raise kafka_error(exc, f"topic {topic}") from exc

    @property
    def window_size(self) -> int:
        """Event ids currently remembered for duplicate detection."""
        return len(self._ids)

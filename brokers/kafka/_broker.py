"""The Kafka adapter: a region's log in Kafka topics, one per mesh topic.

Mesh topic ``a/b`` is Kafka topic ``<prefix>a.b``, created on first use with the region's
``partitions`` and ``replication_factor``. Each topic-partition is a log of its own, so an
event's position is its ``stream`` (``<topic>/<partition>``) and ``sequence`` (offset + 1).

Writes go out as record batches per topic-partition with ``acks=all``: concurrent appends
share the batch of a partition that waits for the producer (in call order), so one produce
request carries many calls' events; the idempotent
producer stays off (brokers that do not implement it refuse it, and it would not cover a
client's retry of the same event anyway). The event's key is the record key, placed with
Kafka's own partitioner (murmur2, as the Java client), so events of one key keep their order
and native producers of the same key land in the same partition. Events without a key go
to one partition per topic per ``append`` call, rotating between calls.

Headers are the CloudEvents Kafka binding's binary-mode headers (``ce_*``, ``content-type``,
``ce_traceparent``) and Meshgate's ``mg-*``, the value is ``event.data`` byte for byte: a plain
Kafka consumer or a CloudEvents SDK reads the same event.

Client retries of an id within the idempotency window are absorbed by the adapter's id window
(``_ids``/``_follower``): Kafka has no duplicate detection by id of its own.

Reads: ``read`` assigns every partition of the matching topics to a consumer of its own (no
group); ``durable_consumer`` is a consumer group (``_consumer``). Checkpoints live in a
compacted topic ``<prefix>__meshgate_checkpoints`` (key = name, the last value wins). Leases
do not exist: Kafka splits a durable consumer's work between replicas itself (``WorkSharing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from meshgate._quota import FifoQuota
from meshgate.brokers._base import (
    Broker,
    BrokerError,
    BrokerState,
    WorkSharing,
)
from meshgate.brokers._storage import StorageHealth
from meshgate.brokers.kafka._append import RECORD_OVERHEAD, KafkaAppend
from meshgate.brokers.kafka._checkpoints import KafkaCheckpoints
from meshgate.brokers.kafka._clients import start_consumer, stop_consumer
from meshgate.brokers.kafka._consumer import KafkaConsumerHost, KafkaDurableConsumer
from meshgate.brokers.kafka._errors import (
    KAFKA_FAILURES,
    KafkaUnavailableError,
    kafka_error,
)
from meshgate.brokers.kafka._follower import IdFollower
from meshgate.brokers.kafka._ids import IdWindow
from meshgate.brokers.kafka._names import KafkaNames
from meshgate.brokers.kafka._offsets import OffsetProbe
from meshgate.brokers.kafka._origins import StartRead
from meshgate.brokers.kafka._read import KafkaRead
from meshgate.brokers.kafka._state import KafkaBrokerStats
from meshgate.config import KAFKA_MAX_APPEND_EVENTS, KafkaSettings

__all__ = [
    "DEFAULT_FETCH_MAX_BYTES",
    "DEFAULT_FETCH_MAX_WAIT",
    "DEFAULT_MAX_APPEND_EVENTS",
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
# Kafka's own default message.max.bytes: a record the brokers take out of the box.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
# Event ids the idempotency window holds at most by default (the mesh file's
# kafka.max_window_ids): about 9 MB (ENTRY_BYTES each; 28 MB while it kept an int per id and
# per record). At 12k events/s it covers ~16 s of retries; a gateway with memory to spare
# raises it.
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
# The id follower's fetches wait at the broker for this much (or fetch_max_wait): on a busy
# gateway most of what it would fetch is its own writes, which it skips (seeking past them
# drops a fetched response unread and fetches again); answered at once, that was a fetch
# round trip per ack, 8 % of a gateway's CPU on ingest. Paced by fetch_max_wait instead. At
# most partition_fetch_bytes: asking for more than that, the follower got nothing back from
# tansu (a test's 16 KiB bounds).
FOLLOWER_FETCH_MIN_BYTES = 1024 * 1024
# Events all append calls together hold at most (see KAFKA_MAX_APPEND_EVENTS): config's constant,
# from which the default of a Kafka region's replication ingress is derived.
DEFAULT_MAX_APPEND_EVENTS = KAFKA_MAX_APPEND_EVENTS


class KafkaBroker(KafkaAppend, KafkaRead, KafkaCheckpoints, Broker, WorkSharing):
    """A region's log in Kafka (``bootstrap_servers``: ``host:port`` entries).

    ``idempotency_window_seconds`` is how long an event id is remembered; ``settings.max_window_ids``
    bounds how many are (about ``ENTRY_BYTES`` each: the oldest are forgotten first).
    ``max_message_bytes`` is the largest record (data, key, headers) written: keep it at or
    below the brokers' ``message.max.bytes``. ``fetch_max_bytes`` and
    ``partition_fetch_bytes`` bound what each fetch of the adapter's consumers buffers (all
    partitions, one partition); ``fetch_max_wait`` is how long a fetch waits at the broker.
    ``max_append_events`` bounds the events all ``append`` calls hold together until their
    results (the rest wait, first come, first served): a bound on memory, not on a call's size
    (a larger call is written alone).
    """

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
        max_append_events: int = DEFAULT_MAX_APPEND_EVENTS,
    ) -> None:
        if idempotency_window_seconds <= 0:
            raise ValueError(f"idempotency_window_seconds must be > 0, got {idempotency_window_seconds}")
        if settings.partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {settings.partitions}")
        if settings.replication_factor < 1:
            raise ValueError(f"replication_factor must be >= 1, got {settings.replication_factor}")
        if max_message_bytes <= RECORD_OVERHEAD:
            raise ValueError(f"max_message_bytes must be > {RECORD_OVERHEAD}, got {max_message_bytes}")
        if not 0 < fetch_max_wait <= 5.0:
            raise ValueError(f"fetch_max_wait must be > 0 and <= 5 seconds, got {fetch_max_wait}")
        if max_append_events < 1:
            raise ValueError(f"max_append_events must be >= 1, got {max_append_events}")
        if partition_fetch_bytes < 1 or fetch_max_bytes < partition_fetch_bytes:
            raise ValueError(
                f"need 1 <= partition_fetch_bytes <= fetch_max_bytes, got {partition_fetch_bytes} and {fetch_max_bytes}"
            )
        self.state = BrokerState.NEW
        self.bootstrap_servers = tuple(bootstrap_servers)
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
        self._admin = None
        self._producer = None
        self._probe_consumer = None
        self._probe = None
        self._follower = None
        # What the follower's read at start found of replicated events (dedup's first recoveries).
        self._start_read = None
        # Kafka topic -> its partitions, for topics known to exist.
        self._topics = {}
        self._creating = {}
        self._sticky = {}
        # Event ids being written by an append of this broker -> that call's results and the
        # id's index in them: one future per call, not per event (a future and a done callback
        # per event cost a loop turn each).
        self._inflight = {}
        # Event ids whose write may or may not have been stored (no ack came) -> its partition.
        self._uncertain = {}
        # Per partition: the record batches not yet handed to the producer (the last one open
        # to more records), and the task handing them over.
        self._outbox = {}
        self._senders = {}
        self._appending = 0
        self.max_append_events = max_append_events
        self._held = FifoQuota(max_append_events)
        self._idle = asyncio.Event()
        self._idle.set()
        self._checkpoints = {}
        self._checkpoint_next = 0
        self._checkpoint_lock = asyncio.Lock()
        self._order = asyncio.Lock()
        self._readers = set()
        self._consumers = set()
        self._lock = asyncio.Lock()
        self._stopping = False
        self.stats = KafkaBrokerStats()
        self.storage = StorageHealth(name=name, on_problem=self._start_storage_probe)
        # All a durable consumer uses of this broker (see KafkaDurableConsumer).
        self._consumer_host = KafkaConsumerHost(
            decode=self._decode,
            mesh_topic=self._names.mesh_topic,
            probe=self._require_probe,
            closed=self._consumers.discard,
        )

    # -- lifecycle ----------------------------------------------------------------------------

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
            max_append_events=self.max_append_events,
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
                max_request_size=self.max_message_bytes + RECORD_OVERHEAD,
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
                start_read = StartRead(max_sequences=self.settings.max_window_ids)
                self._follower = IdFollower(
                    make_consumer=functools.partial(
                        self._consumer, fetch_min_bytes=min(FOLLOWER_FETCH_MIN_BYTES, self.partition_fetch_bytes)
                    ),
                    list_partitions=self._mesh_partitions,
                    window=self._ids,
                    probe=self._probe,
                    refresh_seconds=self._metadata_max_age,
                    timeout=self._request_timeout,
                    pace=self.fetch_max_wait,
                    on_start_read=start_read.add,
                )
                await self._follower.start()
                # No await since the read ended: the follower has read nothing more yet.
                start_read.seal(self._follower.start_offsets, self._follower.positions)
                self._start_read = start_read
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
        self._start_read = None
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
            senders = list(self._senders.values())
            for task in senders:
                task.cancel()  # each fails the batches it still held
            await asyncio.gather(*senders, return_exceptions=True)
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

    async def durable_consumer(
        self, name: str, *, pattern: str = ">", origin: str | None = None, routed_to: str | None = None
    ) -> KafkaDurableConsumer:
        regex = self._names.regex(pattern)
        self._require_producer()
        group_id = f"{self._names.prefix}{name}"
        consumer = KafkaDurableConsumer(
            self._consumer_host, name=name, group_id=group_id, pattern=pattern, origin=origin, routed_to=routed_to
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

    # -- helpers for tests and the gateway ----------------------------------------------------

    async def topic_partitions(self, topic: str) -> list[int]:
        """The partitions of mesh topic ``topic`` (created if missing)."""
        kafka_topic = self._names.kafka_topic(topic)  # ValueError for an invalid topic
        try:
            return list(await self._ensure_topic(kafka_topic))
        except KAFKA_FAILURES as exc:
            raise kafka_error(exc, f"topic {topic}") from exc

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.bootstrap_servers

    @property
    def window_size(self) -> int:
        """Event ids currently remembered for duplicate detection."""
        return len(self._ids)

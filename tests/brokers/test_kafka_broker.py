"""KafkaBroker against a real Kafka-protocol broker (tansu): the broker contract, then what is Kafka-specific.

tansu keeps everything in memory, so a restart of it is a new, empty cluster: data surviving a
broker kill, and leases (a Kafka region has none), are DurableLeasesContract's, which only the
NATS tests inherit. The cases that assume
one log with one sequence (NATS JetStream: one stream) are replaced by their Kafka meaning:
order and uniqueness per stream (topic-partition), and a read across partitions compared per
stream.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import aiokafka.consumer.fetcher
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition

from meshgate.brokers import (
    AppendResult,
    Broker,
    BrokerError,
    BrokerState,
    BrokerUnavailableError,
    Delivery,
    DurableConsumer,
    EventRejectedError,
    KafkaBroker,
    KafkaDurableConsumer,
    KafkaUnavailableError,
    Leases,
    RawBatch,
    SequencedLog,
    StartAt,
    WorkSharing,
)
from meshgate.brokers._base import decode_raw
from meshgate.brokers._codec import header_lines, kafka_record_headers
from meshgate.config import KafkaSettings
from meshgate.testing import Tansu
from meshgate.v1 import event_pb2
from tests._servers import TEST_ACK_TIMEOUT, TEST_KAFKA_MAX_MESSAGE_BYTES, make_kafka_broker
from tests._wait import eventually
from tests.brokers._contract import (
    BOUND,
    BrokerContract,
    BrokerFactory,
    collect,
    fetch_as_a_link,
    make_event,
    read_events,
    results_of,
    sequences,
    state_of,
)


class _KafkaBackend:
    """The contract's backend: the test's tansu, with the size limit the adapter enforces."""

    def __init__(self, server: Tansu) -> None:
        self.server = server
        # tansu has no message size limit of its own; the adapter's max_message_bytes is the one.
        self.max_message_bytes = TEST_KAFKA_MAX_MESSAGE_BYTES

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def kill(self) -> None:
        await self.server.kill()


def by_stream(results: list[AppendResult]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for r in results:
        out[r.stream].append(r.sequence)
    return dict(out)


def per_stream(events: list[event_pb2.Event]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for e in events:
        out[e.stream].append(e.id)
    return dict(out)


def partition_of(key: str, partitions: int) -> int:
    """Kafka's default partition of a key (murmur2, as the Java client)."""
    index: int = (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
    return index


def keys_for_each_partition(partitions: int) -> list[str]:
    """One key per partition of a topic of ``partitions`` partitions."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions:
        found.setdefault(partition_of(f"key-{n}", partitions), f"key-{n}")
        n += 1
    return [found[p] for p in range(partitions)]


async def fetch_until(consumer: KafkaDurableConsumer, count: int, *, ack: bool = True) -> list[Delivery]:
    got: list[Delivery] = []
    async with asyncio.timeout(BOUND):
        while len(got) < count:
            deliveries = await fetch_as_a_link(consumer, count - len(got), timeout=0.5)
            got.extend(deliveries)
            if ack:
                await consumer.ack(deliveries)
    return got


async def wait_for_assignment(*consumers: KafkaDurableConsumer, streams: int) -> None:
    """Until the group has given out ``streams`` streams, each to exactly one of ``consumers``."""

    def assigned() -> bool:
        owned = [c.assignment for c in consumers]
        union = frozenset().union(*owned)
        return all(owned) and len(union) == streams and sum(len(o) for o in owned) == streams

    await eventually(
        assigned,
        BOUND * 2,
        interval=0.05,
        what=f"{streams} streams each given to one of {len(consumers)} consumers",
        status=lambda: [sorted(c.assignment) for c in consumers],
    )


class TestKafkaBroker(BrokerContract):
    @pytest.fixture
    def new_broker(self, tansu: Tansu) -> BrokerFactory:
        return lambda: make_kafka_broker(tansu)

    @pytest.fixture
    def backend(self, tansu: Tansu) -> _KafkaBackend:
        return _KafkaBackend(tansu)

    # -- one log vs one log per topic-partition -----------------------------------------------

    async def test_batch_results_in_order_with_increasing_sequences(self, broker: Broker) -> None:
        # Kafka: one sequence per stream. Keyless events of one append share one partition.
        events = [make_event("orders/created", f"batch-{i}") for i in range(50)]
        stored = results_of(await broker.append(events))
        [(stream, seqs)] = by_stream(stored).items()
        assert seqs == list(range(seqs[0], seqs[0] + 50))
        keyed = results_of(await broker.append([make_event("orders/created", f"k-{i}", key="one") for i in range(5)]))
        [(stream, seqs)] = by_stream(keyed).items()
        more = results_of(await broker.append([make_event("orders/created", "after", key="one")]))
        assert more[0].stream == stream and more[0].sequence == seqs[-1] + 1

    async def test_concurrent_appends_all_acked(self, broker: Broker) -> None:
        batches = [[make_event("orders/created", f"c{b}-{i}") for i in range(100)] for b in range(8)]
        results = await asyncio.gather(*(broker.append(batch) for batch in batches))
        positions = [(r.stream, r.sequence) for batch in results for r in results_of(batch)]
        assert len(set(positions)) == 800

    async def test_read_earliest_with_patterns(self, broker: Broker) -> None:
        # Across topics (each its own log) there is no global order: compared per stream.
        events = [
            make_event("orders/created", "o1", key="k"),
            make_event("orders/eu/created", "o2", key="k"),
            make_event("inventory/sku-1", "i1", key="k"),
            make_event("orders/created", "o3", key="k"),
        ]
        stored = results_of(await broker.append(events))
        one_level = await read_events(broker, "orders/*", 2, start=StartAt(earliest=True))
        assert [(e.id, e.stream, e.sequence) for e in one_level] == [
            ("o1", stored[0].stream, stored[0].sequence),
            ("o3", stored[3].stream, stored[3].sequence),
        ]
        deep = await read_events(broker, "orders/>", 3, start=StartAt(earliest=True), max_batch=2)
        assert sorted(e.id for e in deep) == ["o1", "o2", "o3"]
        everything = await read_events(broker, ">", 4, start=StartAt(earliest=True), max_batch=1000)
        assert per_stream(everything) == {
            stored[0].stream: ["o1", "o3"],
            stored[1].stream: ["o2"],
            stored[2].stream: ["i1"],
        }

    async def test_read_many_in_batches(self, broker: Broker) -> None:
        n = 2500
        appended: list[AppendResult] = []
        for start in range(0, n, 500):
            appended += results_of(
                await broker.append([make_event("orders/created", f"m{i}") for i in range(start, start + 500)])
            )
        reader = broker.read("orders/*", start=StartAt(earliest=True), max_batch=400)
        got = await collect(reader, n)
        await reader.aclose()
        assert len(got) == n
        expected: dict[str, list[str]] = defaultdict(list)
        for i, r in enumerate(appended):
            expected[r.stream].append(f"m{i}")
        assert per_stream(got) == expected
        for stream in expected:
            seqs = [e.sequence for e in got if e.stream == stream]
            assert seqs == sorted(seqs)

    async def test_read_from_time(self, broker: Broker) -> None:
        [before] = results_of(await broker.append([make_event("orders/created", "before", key="k")]))
        stored = await broker.stored_time(before.sequence, stream=before.stream)
        assert stored is not None
        # Kafka stores milliseconds: start 1 ms after "before", and write the rest after that.
        at = stored + timedelta(milliseconds=1)
        await eventually(
            lambda: datetime.now(UTC) > at + timedelta(milliseconds=1), 1, interval=0.001, what="the next millisecond"
        )
        results_of(
            await broker.append(
                [make_event("orders/created", "after-1", key="k"), make_event("orders/created", "after-2", key="k")]
            )
        )
        got = await read_events(broker, "orders/*", 2, start=StartAt(time=at))
        assert [e.id for e in got] == ["after-1", "after-2"]

    async def test_read_from_sequence(self, broker: Broker) -> None:
        sequences(await broker.append([make_event("orders/created", f"s{i}") for i in range(5)]))
        with pytest.raises(BrokerError, match="no single sequence") as info:
            await read_events(broker, "orders/*", 3, start=StartAt(sequence=2))
        assert info.value.retriable is False
        assert "earliest, latest or a time" in str(info.value)

    # The contract's round trip and more: a Kafka event also comes back with its stream
    # (<topic>/<partition>), and the origin's sequence and stream go through headers.
    async def test_event_round_trip_is_identical(self, broker: Broker) -> None:
        event = make_event(
            "orders/eu/created",
            "round-trip id with spaces & ünïcode %",
            data=bytes(range(256)),
            datacontenttype="application/json; charset=utf-8",
            key="customer-42",
        )
        event.source = 'https://shop.example/checkout?x=1&y="2"'
        event.type = "com.example.order.created"
        event.time.FromNanoseconds(1_700_000_000_987_654_321)
        event.extensions["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        event.dataschema = "https://schemas.example/order/v1"
        event.extensions["tenant"] = " padded, multi\nline "
        event.origin = "us-west"
        event.origin_sequence = 77
        event.origin_stream = "mesh.orders.eu.created/4"
        event.route[:] = ["us-west", "eu-central", "ap-south"]
        [stored] = results_of(await broker.append([event]))
        [got] = await read_events(broker, "orders/>", 1, start=StartAt(earliest=True))
        expected = event_pb2.Event()
        expected.CopyFrom(event)
        expected.sequence = stored.sequence
        expected.stream = stored.stream
        assert got == expected

    async def test_durable_consumer_splits_work_between_replicas(
        self, broker: Broker, new_broker: BrokerFactory
    ) -> None:
        # Kafka splits by partition: join both members first, then spread events over all three.
        async with new_broker() as replica:
            a = await broker.durable_consumer("shared", pattern="orders/>")
            b = await replica.durable_consumer("shared", pattern="orders/>")
            assert isinstance(a, KafkaDurableConsumer) and isinstance(b, KafkaDurableConsumer)
            keys = keys_for_each_partition(3)
            results_of(await broker.append([make_event("orders/created", f"w{i}", key=keys[i % 3]) for i in range(21)]))
            await wait_for_assignment(a, b, streams=3)
            got_a: list[Delivery] = []
            got_b: list[Delivery] = []
            async with asyncio.timeout(BOUND):
                while len(got_a) + len(got_b) < 21:
                    got_a += await fetch_as_a_link(a, 21, timeout=0.2)
                    got_b += await fetch_as_a_link(b, 21, timeout=0.2)
            ids_a = {d.event.id for d in got_a}
            ids_b = {d.event.id for d in got_b}
            assert ids_a and ids_b and not ids_a & ids_b
            assert ids_a | ids_b == {f"w{i}" for i in range(21)}
            assert {d.event.stream for d in got_a} <= a.assignment
            assert {d.event.stream for d in got_b} <= b.assignment
            await a.ack(got_a)
            await b.ack(got_b)
            assert await a.pending() == 0 and await b.pending() == 0
            await a.close()
            await b.close()

    # -- leases: none in Kafka regions --------------------------------------------------------

    async def test_a_kafka_region_shares_work_and_keeps_no_leases(self, broker: Broker) -> None:
        # No lease calls to refuse: the contract runs its lease tests only for brokers with Leases.
        assert isinstance(broker, WorkSharing)
        assert not isinstance(broker, Leases) and not hasattr(broker, "hold_lease")
        # Several streams: no one last sequence either.
        assert not isinstance(broker, SequencedLog) and not hasattr(broker, "last_sequence")


# -- topics ---------------------------------------------------------------------------------


async def _describe(server: Tansu, topic: str) -> dict[str, object]:
    admin = AIOKafkaAdminClient(bootstrap_servers=server.bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        return dict(described)
    finally:
        await admin.close()


async def test_topics_named_by_prefix_with_configured_partitions(tansu: Tansu) -> None:
    settings = KafkaSettings(topic_prefix="region-a.", partitions=5)
    async with make_kafka_broker(tansu, settings=settings) as broker:
        [stored] = results_of(await broker.append([make_event("orders/eu/created", "named", key="k")]))
        assert stored.stream == f"region-a.orders.eu.created/{partition_of('k', 5)}"
        assert stored.sequence == 1  # offset 0: sequences start at 1 as on every broker
        described = await _describe(tansu, "region-a.orders.eu.created")
        assert described["error_code"] == 0
        assert len(described["partitions"]) == 5  # type: ignore[arg-type]
        assert await broker.topic_partitions("orders/eu/created") == [0, 1, 2, 3, 4]


async def test_checkpoint_topic_is_compacted_and_reserved(tansu: Tansu, kafka_broker: KafkaBroker) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=tansu.bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, "mesh.__meshgate_checkpoints")]
        )
    finally:
        await admin.close()
    [resource] = response.resources
    assert ("cleanup.policy", "compact") in [(entry[0], entry[1]) for entry in resource[4]]
    [refused] = await kafka_broker.append([make_event("__meshgate_checkpoints", "sneaky")])
    assert isinstance(refused, EventRejectedError) and "reserved" in str(refused)
    # Readers never see it as a mesh topic.
    await kafka_broker.put_checkpoint("replication.there", b"state")
    sequences(await kafka_broker.append([make_event("orders/a", "visible")]))
    got = await read_events(kafka_broker, ">", 1, start=StartAt(earliest=True))
    assert [e.id for e in got] == ["visible"]
    assert "__meshgate" not in await kafka_broker.log_position()


# -- order per key, native consumers ----------------------------------------------------------


async def test_events_of_a_key_keep_their_order_in_one_partition(kafka_broker: KafkaBroker) -> None:
    keys = keys_for_each_partition(3)
    events = [make_event("orders/created", f"o{i}", key=keys[i % 3]) for i in range(30)]
    # Several appends, concurrently: per key, order follows the order of the calls.
    results = await asyncio.gather(*(kafka_broker.append(events[i : i + 5]) for i in range(0, 30, 5)))
    stored = [r for batch in results for r in results_of(batch)]
    for key_index, key in enumerate(keys):
        streams = {stored[i].stream for i in range(key_index, 30, 3)}
        assert streams == {f"mesh.orders.created/{partition_of(key, 3)}"}
    got = await read_events(kafka_broker, "orders/created", 30, start=StartAt(earliest=True))
    for key in keys:
        ids = [e.id for e in got if e.key == key]
        assert ids == [e.id for e in events if e.key == key]


async def test_plain_kafka_consumer_reads_data_key_and_cloudevents_headers(
    tansu: Tansu, kafka_broker: KafkaBroker
) -> None:
    event = make_event("orders/created", "native-1", data=b'{"total": 42}', datacontenttype="application/json")
    event.key = "customer-7"
    event.extensions["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    [stored] = results_of(await kafka_broker.append([event]))
    tp = TopicPartition("mesh.orders.created", int(stored.stream.rsplit("/", 1)[1]))
    consumer = AIOKafkaConsumer(bootstrap_servers=tansu.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        record = await asyncio.wait_for(consumer.getone(tp), BOUND)
    finally:
        await consumer.stop()
    assert record.offset == stored.sequence - 1
    assert record.key == b"customer-7"
    assert record.value == b'{"total": 42}'
    headers = {k: v.decode() for k, v in record.headers}
    # The CloudEvents Kafka binding: ce_ names, datacontenttype as content-type; the key is the
    # record key only.
    assert headers["ce_id"] == "native-1"
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_time"] == "2025-01-01T00:00:00.123456789Z"
    assert headers["content-type"] == "application/json"
    assert headers["ce_traceparent"] == event.extensions["traceparent"]
    assert "mg-key" not in headers
    assert headers["mg-origin"] == "here"
    assert headers["mg-route"] == "here,there"


def shortcut_cases(prefix: str) -> list[event_pb2.Event]:
    """Events whose crossing between the NATS and Kafka header forms takes the shortcut (plain
    values, an extension, no key) and one that is decoded (a value escaped on NATS)."""
    events = [
        make_event("orders/created", f"{prefix}plain", key="customer-7", datacontenttype="application/json"),
        make_event("orders/created", f"{prefix}ext", key="customer-7"),
        make_event("orders/created", f"{prefix}escaped", key="customer-7", datacontenttype="text/plain; charset=utf-8"),
        make_event("orders/created", f"{prefix}nokey", dataschema="https://example.com/s"),
    ]
    events[1].extensions["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    return events


async def test_a_raw_batch_is_stored_as_the_records_its_decoded_events_make(
    tansu: Tansu, kafka_broker: KafkaBroker
) -> None:
    # A replicated batch is written from its header lines, without an event per record, except
    # where a line needs decoding (an escaped value, a time in another shape): the records are
    # those the decoded events would make, and the events read back are the decoded ones.
    events = shortcut_cases("raw-")
    events[1].extensions["tenant"] = "t-1"
    lines = [header_lines(e) for e in events]
    lines.append(lines[0].replace(b"ce-time: 2025-01-01T00:00:00.123456789Z", b"ce-time: 2025-01-01T00:00:00Z"))
    ids = [e.id for e in events] + ["raw-time"]
    columns = {
        "ids": ids,
        "topics": ["orders/created"] * 5,
        "headers": lines,
        "data": [b"payload-%d" % i for i in range(5)],
        "origin_sequences": [11, 12, 13, 14, 15],
        "origin_streams": ["", "orders.created/1", "", "", ""],
    }
    expected = decode_raw(**columns)  # type: ignore[arg-type]
    stored = results_of(await kafka_broker.append_raw(**columns))  # type: ignore[arg-type]
    consumer = AIOKafkaConsumer(bootstrap_servers=tansu.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        records = []
        for result in stored:
            tp = TopicPartition("mesh.orders.created", int(result.stream.rsplit("/", 1)[1]))
            consumer.assign([tp])
            consumer.seek(tp, result.sequence - 1)
            records.append(await asyncio.wait_for(consumer.getone(tp), BOUND))
    finally:
        await consumer.stop()
    for record, event in zip(records, expected, strict=True):
        headers, _ = kafka_record_headers(event)
        assert sorted(record.headers) == sorted(headers), event.id
        assert record.key == (event.key.encode() if event.key else None)
        assert record.value == event.data
    by_id = {e.id: e for e in await read_events(kafka_broker, "orders/>", 5, start=StartAt(earliest=True))}
    for event, result in zip(expected, stored, strict=True):
        event.stream, event.sequence = result.stream, result.sequence
        assert by_id[event.id] == event


async def test_records_of_the_older_header_form_are_read_and_new_ones_follow_the_kafka_binding(
    tansu: Tansu, kafka_broker: KafkaBroker
) -> None:
    # A record as Meshgate wrote it before it followed the Kafka binding: ce- names, values
    # percent-encoded (content-type too), the key in mg-key as well as in the record key.
    old_headers = [
        ("ce-id", b"old%20one"),
        ("ce-source", b"/tests/producer"),
        ("ce-type", b"com.example.test"),
        ("ce-specversion", b"1.0"),
        ("ce-time", b"2025-01-01T00:00:00.123456789Z"),
        ("content-type", b"application/json;%20charset=utf-8"),
        ("ce-tenant", b"na%C3%AFve"),
        ("mg-key", b"customer-7"),
        ("mg-origin", b"here"),
        ("mg-route", b"here,there"),
    ]
    await kafka_broker.topic_partitions("orders/created")
    producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait("mesh.orders.created", b"{}", key=b"customer-7", headers=old_headers)
    finally:
        await producer.stop()
    [old] = await read_events(kafka_broker, "orders/>", 1, start=StartAt(earliest=True))
    assert (old.id, old.key, old.origin, list(old.route)) == ("old one", "customer-7", "here", ["here", "there"])
    assert old.datacontenttype == "application/json; charset=utf-8" and dict(old.extensions) == {"tenant": "naïve"}
    # Its id is in the window: a retry of it is a duplicate.
    retry = make_event("orders/created", "old one", key="customer-7")
    await eventually(lambda: kafka_broker.window_size >= 1, BOUND, what="the older record's id in the window")
    [again] = results_of(await kafka_broker.append([retry]))
    assert again.duplicate
    # A new write is in the Kafka binding.
    event = make_event("orders/created", "new one", datacontenttype="application/json; charset=utf-8")
    [stored] = results_of(await kafka_broker.append([event]))
    consumer = AIOKafkaConsumer(bootstrap_servers=tansu.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition("mesh.orders.created", int(stored.stream.rsplit("/", 1)[1]))
        consumer.assign([tp])
        consumer.seek(tp, stored.sequence - 1)
        record = await asyncio.wait_for(consumer.getone(tp), BOUND)
    finally:
        await consumer.stop()
    headers = dict(record.headers)
    assert headers["ce_id"] == b"new one" and headers["content-type"] == b"application/json; charset=utf-8"


# -- positions that tansu reports wrongly -----------------------------------------------------


async def test_latest_and_log_position_count_whole_batches(kafka_broker: KafkaBroker) -> None:
    # tansu's ListOffsets says "last batch's base offset + 1"; the adapter checks the high watermark.
    stored = results_of(await kafka_broker.append([make_event("orders/a", f"b{i}", key="k") for i in range(5)]))
    [stream] = {r.stream for r in stored}
    assert await kafka_broker.log_position() == f'{{"{stream}":5}}'
    reader = kafka_broker.read("orders/a", start=StartAt(), max_batch=10)
    first = asyncio.ensure_future(anext(reader))
    done: set[asyncio.Future[list[event_pb2.Event]]] = set()
    for attempt in range(int(BOUND / 0.05)):
        sequences(await kafka_broker.append([make_event("orders/a", f"new-{attempt}", key="k")]))
        done, _ = await asyncio.wait({first}, timeout=0.05)
        if done:
            break
    batch = await asyncio.wait_for(first, BOUND)
    assert batch and all(e.id.startswith("new-") for e in batch)
    await reader.aclose()


async def test_read_from_a_time_inside_a_partition(kafka_broker: KafkaBroker) -> None:
    # tansu's offsets_for_times only ever finds the first record: a time in the middle of a
    # partition is found by a binary search over record timestamps.
    first = results_of(await kafka_broker.append([make_event("orders/a", f"early-{i}", key="k") for i in range(20)]))
    stored = await kafka_broker.stored_time(first[-1].sequence, stream=first[-1].stream)
    assert stored is not None
    at = stored + timedelta(milliseconds=1)
    await eventually(
        lambda: datetime.now(UTC) > at + timedelta(milliseconds=1), 1, interval=0.001, what="the next millisecond"
    )
    for i in range(3):
        results_of(await kafka_broker.append([make_event("orders/a", f"late-{i}-{j}", key="k") for j in range(7)]))
    got = await read_events(kafka_broker, "orders/a", 21, start=StartAt(time=at))
    assert [e.id for e in got] == [f"late-{i}-{j}" for i in range(3) for j in range(7)]
    assert await kafka_broker.find_event("early-3", since=at) is None
    found = await kafka_broker.find_event("late-1-2", since=at)
    assert found is not None and found.sequence == 20 + 7 + 3


async def test_concurrent_appends_share_record_batches_in_call_order(
    kafka_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiokafka queues one batch per partition until its request goes out: calls that each sent
    # their own batch waited for each other's round trips. Concurrent calls now fill the batch
    # the producer has not taken yet, and still land in the order they were made.
    results_of(await kafka_broker.append([make_event("orders/shared", "warm", key="k")]))
    producer = kafka_broker._producer
    assert producer is not None
    sent: list[int] = []
    send_batch = producer.send_batch

    async def counting(batch: Any, topic: str, *, partition: int) -> Any:
        delivery = await send_batch(batch, topic, partition=partition)
        sent.append(batch.record_count())  # what the producer took (records joined until then)
        return delivery

    monkeypatch.setattr(producer, "send_batch", counting)
    calls = [[make_event("orders/shared", f"c{c}-{i}", key="k") for i in range(10)] for c in range(32)]
    stored = await asyncio.gather(*(kafka_broker.append(events) for events in calls))
    # While one request is out and the next batch waits in the producer, every later call
    # joins a third: main sent one batch per call.
    assert sum(sent) == 320 and len(sent) < len(calls), sent
    # One partition (one key): the calls' events follow each other in call order, without gaps.
    flat = [r for call in stored for r in results_of(call)]
    assert len({r.stream for r in flat}) == 1
    assert [r.sequence for r in flat] == list(range(flat[0].sequence, flat[0].sequence + 320))


# -- the id window ----------------------------------------------------------------------------


async def test_retry_on_another_live_replica_is_a_duplicate(tansu: Tansu) -> None:
    async with make_kafka_broker(tansu) as one, make_kafka_broker(tansu) as two:
        # Both replicas run before the write: the second learns the id from its follower.
        known = two.window_size
        [stored] = results_of(await one.append([make_event("orders/created", "retried")]))
        await eventually(lambda: two.window_size != known, BOUND, interval=0.02, what="the id window to grow")
        assert await two.append([make_event("orders/created", "retried")]) == [
            AppendResult(stored.sequence, True, stored.stream)
        ]


async def test_the_id_follower_skips_its_own_writes_and_reads_the_others(tansu: Tansu) -> None:
    # One partition written by two replicas in turn: "one"'s follower reads only what "two"
    # wrote (its own writes are in its window from the ack), and still learns all of those.
    async with make_kafka_broker(tansu) as one, make_kafka_broker(tansu) as two:
        follower = one._follower
        assert follower is not None
        # The topic first, followed by "one" (a topic it finds later it reads from its start, in
        # fetches that bring back what was written meanwhile, its own records too).
        [warm] = results_of(await two.append([make_event("orders/own", "two-warm", key="k")]))
        topic, partition = warm.stream.rsplit("/", 1)
        tp = TopicPartition(topic, int(partition))
        await eventually(lambda: follower._positions.get(tp) == 1, BOUND, interval=0.02, what="one to follow the topic")
        read_before = follower.records_read
        own, mine = 0, 1
        for turn in range(4):
            results_of(await one.append([make_event("orders/own", f"one-{turn}-{i}", key="k") for i in range(100)]))
            results_of(await two.append([make_event("orders/own", f"two-{turn}-{i}", key="k") for i in range(3)]))
            own, mine = own + 100, mine + 3
            # Following, as a busy gateway's follower does (a fetch that finds records of both
            # replicas already stored brings them all back).
            assert await follower.caught_up({tp: own + mine}, timeout=BOUND)
        results_of(await one.append([make_event("orders/own", "one-last", key="k")]))
        own += 1
        assert await follower.caught_up({tp: own + mine}, timeout=BOUND)
        # "one"'s records are skipped, "two"'s read. A fetch that raced an ack may bring a few of
        # "one"'s back: never most of them (main read back all 401).
        assert mine - 1 <= follower.records_read - read_before <= mine + own // 4
        assert follower.records_skipped >= own - own // 4
        duplicates = await one.append(
            [make_event("orders/own", f"two-{t}-{i}", key="k") for t in range(4) for i in range(3)]
        )
        assert all(isinstance(r, AppendResult) and r.duplicate for r in duplicates), duplicates


async def test_ids_older_than_the_window_are_written_again(tansu: Tansu) -> None:
    async with make_kafka_broker(tansu, idempotency_window_seconds=0.5) as broker:
        [first] = results_of(await broker.append([make_event("orders/created", "old-id", key="k")]))
        deadline = time.monotonic() + BOUND
        while True:
            [again] = results_of(await broker.append([make_event("orders/created", "old-id", key="k")]))
            if not again.duplicate:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert again.sequence > first.sequence


async def test_stalled_broker_fails_retriably_then_absorbs_the_retry(tansu: Tansu, kafka_broker: KafkaBroker) -> None:
    sequences(await kafka_broker.append([make_event("orders/created", "warm-up", key="k")]))
    await tansu.pause()
    try:
        started = time.monotonic()
        results = await kafka_broker.append([make_event("orders/created", f"stall-{i}", key="k") for i in range(3)])
        elapsed = time.monotonic() - started
    finally:
        tansu.resume()
    assert all(isinstance(r, BrokerUnavailableError) and r.retriable for r in results), results
    assert elapsed < TEST_ACK_TIMEOUT + 3.0
    # The writes may still land once tansu resumes; a retry of the same ids is absorbed either way.
    deadline = time.monotonic() + BOUND
    while True:
        retry = await kafka_broker.append([make_event("orders/created", f"stall-{i}", key="k") for i in range(3)])
        if all(isinstance(r, AppendResult) for r in retry):
            break
        assert time.monotonic() < deadline, retry
    got = await read_events(kafka_broker, "orders/created", 4, start=StartAt(earliest=True))
    assert [e.id for e in got] == ["warm-up", "stall-0", "stall-1", "stall-2"]


async def test_start_fails_when_no_broker_answers(tansu: Tansu) -> None:
    address = tansu.bootstrap
    await tansu.stop()
    broker = KafkaBroker(
        bootstrap_servers=[address], settings=KafkaSettings(), idempotency_window_seconds=60, connect_timeout=1.0
    )
    started = time.monotonic()
    with pytest.raises(KafkaUnavailableError, match="could not start on Kafka") as info:
        await broker.start()
    assert info.value.retriable
    assert time.monotonic() - started < 1.0 + 3.0
    assert state_of(broker) is BrokerState.CLOSED


# -- consumer groups --------------------------------------------------------------------------


async def test_commits_survive_a_restart_of_every_replica(tansu: Tansu) -> None:
    keys = keys_for_each_partition(3)
    events = [make_event("orders/created", f"g{i}", key=keys[i % 3]) for i in range(12)]
    async with make_kafka_broker(tansu) as one, make_kafka_broker(tansu) as two:
        results_of(await one.append(events))
        a = await one.durable_consumer("link-x", pattern="orders/*")
        b = await two.durable_consumer("link-x", pattern="orders/*")
        await wait_for_assignment(a, b, streams=3)
        # Each acks the first of each of its partitions, then both go away.
        for consumer in (a, b):
            got = await fetch_until(consumer, 4 * len(consumer.assignment), ack=False)
            firsts: dict[str, Delivery] = {}
            for d in got:
                firsts.setdefault(d.event.stream, d)
            await consumer.ack(list(firsts.values()))
            assert await consumer.pending() == 3 * len(consumer.assignment)
        await a.close()
        await b.close()
    async with make_kafka_broker(tansu) as restarted:
        c = await restarted.durable_consumer("link-x", pattern="orders/*")
        rest = await fetch_until(c, 9)
        assert sorted(d.event.id for d in rest) == sorted(f"g{i}" for i in range(3, 12))
        assert await c.fetch(10, timeout=0.3) == []
        assert await c.pending() == 0
        await c.close()


async def _fetch_raw_until(consumer: KafkaDurableConsumer, count: int, *, decoded: bool) -> RawBatch:
    """``count`` events of ``fetch_raw``: the consumer's own, or the base class's (decode, encode)."""
    fetch_raw = DurableConsumer.fetch_raw if decoded else KafkaDurableConsumer.fetch_raw
    got = RawBatch()
    async with asyncio.timeout(BOUND):
        while len(got) < count:
            part = await fetch_raw(consumer, count - len(got), timeout=0.5)
            for name in ("ids", "topics", "sequences", "streams", "headers", "data", "stored_ns", "tokens"):
                getattr(got, name).extend(getattr(part, name))
    return got


async def test_a_links_raw_fetch_is_the_decoded_one_and_its_ack_commits(tansu: Tansu) -> None:
    # A Kafka region's link reads records as header lines made from their headers, and decodes
    # a record only where that does not apply (a value escaped on NATS, a foreign header): the
    # batch is the one the base class's decode-and-encode makes, and acking it commits.
    events = shortcut_cases("")
    async with make_kafka_broker(tansu, settings=KafkaSettings(partitions=1)) as broker:
        results_of(await broker.append(events))
        producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap)
        await producer.start()
        try:
            foreign = [("ce_id", b"foreign"), ("ce_source", b"/f"), ("ce_type", b"t"), ("Content-Type", b"text/csv")]
            await producer.send_and_wait("mesh.orders.created", b"a,b", key=b"customer-7", headers=foreign)
        finally:
            await producer.stop()
        ours, decoded = await asyncio.gather(
            broker.durable_consumer("raw-link", pattern="orders/*"),
            broker.durable_consumer("decoded-link", pattern="orders/*"),
        )
        raw = await _fetch_raw_until(ours, 5, decoded=False)
        expected = await _fetch_raw_until(decoded, 5, decoded=True)
        assert raw.ids == expected.ids == ["plain", "ext", "escaped", "nokey", "foreign"]
        assert (raw.topics, raw.sequences, raw.streams, raw.data, raw.stored_ns) == (
            expected.topics,
            expected.sequences,
            expected.streams,
            expected.data,
            expected.stored_ns,
        )
        assert raw.headers == expected.headers  # one extension at most: the same order too
        assert b"mg-key: customer-7\r\n" in raw.headers[0] and b"ce-datacontenttype: text/csv\r\n" in raw.headers[4]
        await ours.ack_raw(raw)
        assert await ours.pending() == 0
        await ours.close()
        await decoded.close()
    # The group's committed offset, as Kafka holds it: past all five.
    reader = AIOKafkaConsumer(bootstrap_servers=tansu.bootstrap, group_id=ours.group_id, enable_auto_commit=False)
    await reader.start()
    try:
        assert await reader.committed(TopicPartition("mesh.orders.created", 0)) == 5
    finally:
        await reader.stop()


async def test_acks_after_a_rebalance_fail_retriably_and_reset_recovers(tansu: Tansu) -> None:
    keys = keys_for_each_partition(3)
    async with make_kafka_broker(tansu) as one, make_kafka_broker(tansu) as two:
        results_of(await one.append([make_event("orders/created", f"r{i}", key=keys[i % 3]) for i in range(9)]))
        a = await one.durable_consumer("link-y", pattern="orders/*")
        held = await fetch_until(a, 9, ack=False)
        assert len({d.event.stream for d in held}) == 3
        b = await two.durable_consumer("link-y", pattern="orders/*")
        await wait_for_assignment(a, b, streams=3)
        with pytest.raises(BrokerUnavailableError, match="reassigned"):
            await a.ack(held)
        await a.reset()
        mine = await fetch_until(a, 3 * len(a.assignment))
        theirs = await fetch_until(b, 3 * len(b.assignment))
        assert sorted(d.event.id for d in mine + theirs) == sorted(f"r{i}" for i in range(9))
        assert await a.pending() == 0 and await b.pending() == 0
        await a.close()
        await b.close()


async def test_checkpoint_written_by_one_replica_is_read_by_another(tansu: Tansu) -> None:
    async with make_kafka_broker(tansu) as one, make_kafka_broker(tansu) as two:
        assert await two.get_checkpoint("replication.eu") is None
        await one.put_checkpoint("replication.eu", b"v1")
        assert await two.get_checkpoint("replication.eu") == b"v1"
        await two.put_checkpoint("replication.eu", b"v2")
        assert await one.get_checkpoint("replication.eu") == b"v2"
    async with make_kafka_broker(tansu) as later:
        assert await later.get_checkpoint("replication.eu") == b"v2"


async def test_stats_and_state(kafka_broker: KafkaBroker) -> None:
    assert kafka_broker.state is BrokerState.CONNECTED
    results_of(await kafka_broker.append([make_event("orders/a", "s1"), make_event("orders/a", "s1")]))
    stats = kafka_broker.stats
    assert (stats.published, stats.acked, stats.duplicates, stats.failed) == (1, 1, 1, 0)
    assert stats.topics_created >= 2  # the checkpoint topic and orders/a


async def test_a_change_of_share_fails_one_fetch(tansu: Tansu) -> None:
    keys = keys_for_each_partition(3)
    async with make_kafka_broker(tansu) as one, make_kafka_broker(tansu) as two:
        results_of(await one.append([make_event("orders/created", f"s{i}", key=keys[i % 3]) for i in range(6)]))
        a = await one.durable_consumer("link-z", pattern="orders/*")
        assert a.assignment == {f"mesh.orders.created/{p}" for p in range(3)}  # joined before it returned
        assert len(await a.fetch(6, timeout=BOUND)) > 0
        b = await two.durable_consumer("link-z", pattern="orders/*")
        await wait_for_assignment(a, b, streams=3)
        with pytest.raises(BrokerUnavailableError, match="moved partitions") as info:
            await a.fetch(6, timeout=BOUND)
        assert info.value.retriable
        await a.reset()
        # Once reset, a's share is read from its committed offsets (nothing acked: the start).
        again = await a.fetch(6, timeout=BOUND)
        assert again and {d.event.stream for d in again} <= a.assignment
        await a.close()
        await b.close()


async def test_sibling_is_a_broker_on_the_same_topics(kafka_broker: KafkaBroker) -> None:
    sibling = kafka_broker.sibling()
    assert sibling.state is BrokerState.NEW and sibling.bootstrap_servers == kafka_broker.bootstrap_servers
    async with sibling:
        [stored] = results_of(await sibling.append([make_event("orders/a", "from-the-sibling", key="k")]))
        [got] = await read_events(kafka_broker, "orders/a", 1, start=StartAt(earliest=True))
        assert (got.id, got.stream, got.sequence) == ("from-the-sibling", stored.stream, stored.sequence)
        # Its own retries are absorbed without an id follower (the links' broker reads no ids).
        assert sibling._follower is None
        assert await sibling.append([make_event("orders/a", "from-the-sibling", key="k")]) == [
            AppendResult(stored.sequence, True, stored.stream)
        ]


# -- bounded memory ---------------------------------------------------------------------------


async def test_concurrent_appends_of_the_same_ids_store_each_once(kafka_broker: KafkaBroker) -> None:
    # Calls overlapping on ids wait for the call that writes them (one future per call).
    batch = [make_event("orders/a", f"same-{i}", key=f"k{i}") for i in range(5)]
    twins = [*batch, batch[0]]  # an id twice within one call, too
    first, second, third = await asyncio.gather(
        kafka_broker.append(batch), kafka_broker.append(twins), kafka_broker.append(list(reversed(batch)))
    )
    stored = results_of(first)
    assert not any(r.duplicate for r in stored)
    assert results_of(second) == [AppendResult(r.sequence, True, r.stream) for r in [*stored, stored[0]]]
    assert results_of(third) == [AppendResult(r.sequence, True, r.stream) for r in reversed(stored)]
    assert kafka_broker._inflight == {}  # nothing left behind for later calls
    got = await read_events(kafka_broker, "orders/a", 5, start=StartAt(earliest=True))
    assert sorted(e.id for e in got) == sorted(e.id for e in batch)


async def test_appends_hold_at_most_max_append_events_and_keep_call_order(
    tansu: Tansu, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every event of an append holds a few KB until its ack: calls past the bound wait (first
    # come, first served) instead of all encoding their records at once. Main let a
    # destination's replication ingress hold 16,000 events (over 180 MB of gateway).
    broker = make_kafka_broker(tansu, settings=KafkaSettings(partitions=1), max_append_events=30)
    async with broker:
        results_of(await broker.append([make_event("orders/held", "warm", key="k")]))
        producer = broker._producer
        assert producer is not None
        held = 0  # records handed to the producer, not yet answered
        most = 0
        send_batch = producer.send_batch

        def answered(count: int, _delivery: asyncio.Future[Any]) -> None:
            nonlocal held
            held -= count

        async def counting(batch: Any, topic: str, *, partition: int) -> Any:
            nonlocal held, most
            delivery = await send_batch(batch, topic, partition=partition)
            count = batch.record_count()
            held += count
            most = max(most, held)
            delivery.add_done_callback(functools.partial(answered, count))
            return delivery

        monkeypatch.setattr(producer, "send_batch", counting)
        calls = [[make_event("orders/held", f"c{c}-{i}", key="k") for i in range(10)] for c in range(20)]
        raw = [make_event("orders/held", f"raw-{i}", key="k") for i in range(10)]
        stored = await asyncio.gather(
            *(broker.append(events) for events in calls[:10]),
            broker.append_raw(
                ids=[e.id for e in raw],
                topics=[e.topic for e in raw],
                headers=[header_lines(e) for e in raw],
                data=[e.data for e in raw],
                origin_sequences=list(range(1, 11)),
            ),
            *(broker.append(events) for events in calls[10:]),
        )
        assert 0 < most <= 30, most
        # Waiting for room kept the order of the calls: one partition, no gaps.
        flat = [r for call in stored for r in results_of(call)]
        assert [r.sequence for r in flat] == list(range(flat[0].sequence, flat[0].sequence + 210))
        # A call larger than the bound is written, alone.
        large = [make_event("orders/held", f"large-{i}", key="k") for i in range(45)]
        assert len(results_of(await broker.append(large))) == 45
        assert broker._held.used == 0


def _fetch_limits(consumer: AIOKafkaConsumer) -> tuple[int, int, int]:
    # aiokafka keeps what it was given on its fetcher; the fetch requests it builds use these.
    fetcher = consumer._fetcher
    return fetcher._fetch_max_bytes, fetcher._max_partition_fetch_bytes, fetcher._fetch_max_wait_ms


async def test_consumers_fetch_within_the_bounds_and_still_read_larger_records(tansu: Tansu) -> None:
    # Fetch bounds far below the record size: tansu (as Kafka since 0.10.1) still returns a
    # partition's first record whole, so the bounds cap memory without capping record sizes.
    def broker() -> KafkaBroker:
        return make_kafka_broker(
            tansu,
            settings=KafkaSettings(partitions=1),
            fetch_max_bytes=48 * 1024,
            partition_fetch_bytes=16 * 1024,
            fetch_max_wait=0.03,
        )

    big = make_event("orders/big", "big-1", data=bytes(range(256)) * 800)  # 200 KiB
    small = [make_event("orders/big", f"small-{i}") for i in range(3)]
    async with broker() as one:
        assert one._probe_consumer is not None and one._follower is not None
        assert _fetch_limits(one._probe_consumer) == (48 * 1024, 16 * 1024, 30)
        assert one._follower._consumer is not None
        assert _fetch_limits(one._follower._consumer) == (48 * 1024, 16 * 1024, 30)
        stored = results_of(await one.append([small[0], big, *small[1:]]))
        got = await read_events(one, "orders/big", 4, start=StartAt(earliest=True))
        assert [e.id for e in got] == ["small-0", "big-1", "small-1", "small-2"]
        assert got[1].data == big.data
        consumer = await one.durable_consumer("bounded", pattern="orders/*")
        try:
            assert consumer._consumer is not None and _fetch_limits(consumer._consumer) == (48 * 1024, 16 * 1024, 30)
            deliveries = await fetch_until(consumer, 4)
            assert [d.event.id for d in deliveries] == ["small-0", "big-1", "small-1", "small-2"]
        finally:
            await consumer.close()
    # A new replica's follower reads the window (the large record too) before taking writes.
    async with broker() as two:
        assert await two.append([big]) == [AppendResult(stored[1].sequence, True, stored[1].stream)]


def test_fetch_bounds_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="partition_fetch_bytes"):
        KafkaBroker(
            bootstrap_servers=["k:9092"],
            settings=KafkaSettings(),
            idempotency_window_seconds=60,
            fetch_max_bytes=1024,
            partition_fetch_bytes=2048,
        )
    with pytest.raises(ValueError, match="max_append_events"):
        KafkaBroker(
            bootstrap_servers=["k:9092"], settings=KafkaSettings(), idempotency_window_seconds=60, max_append_events=0
        )
    with pytest.raises(ValueError, match="fetch_max_wait"):
        KafkaBroker(
            bootstrap_servers=["k:9092"], settings=KafkaSettings(), idempotency_window_seconds=60, fetch_max_wait=0
        )


async def test_a_lookup_over_every_topic_after_one_of_one_partition_needs_no_metadata_retry(
    kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # The lookup consumer keeps metadata for the topics it was last assigned only. A lookup of
    # every topic after one of one partition (a checkpoint, a stored time) learnt one topic per
    # retry, 100 ms apart: 0.7 s for 8 topics before a restarted gateway's first recovery.
    stored = [results_of(await kafka_broker.append([make_event(f"lookup/t{i}", f"e{i}")]))[0] for i in range(4)]
    assert await kafka_broker.stored_time(stored[0].sequence, stream=stored[0].stream) is not None
    caplog.set_level(logging.DEBUG, logger="aiokafka.consumer.fetcher")

    position = await kafka_broker.log_position()

    assert all(result.stream in position for result in stored)
    # The message counted is aiokafka's: reworded, this test would count nothing and pass.
    assert "unknown for fetching offset" in inspect.getsource(aiokafka.consumer.fetcher)
    retries = [r for r in caplog.records if "unknown for fetching offset" in r.getMessage()]
    assert not retries, f"{len(retries)} ListOffsets retries waiting for metadata (main: one per unknown topic)"


async def test_a_failed_send_fails_the_partitions_later_batches_too(
    tansu: Tansu, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Calls to one partition share record batches queued behind each other. When one cannot be
    # handed to the producer, the batches behind it (later events, the same keys) must fail
    # with it: sent, they would be stored before the failed events' resend (key order).
    broker = make_kafka_broker(tansu, settings=KafkaSettings(partitions=1))
    async with broker:
        results_of(await broker.append([make_event("order/one", "warm", key="k")]))
        producer = broker._require_producer()
        real = producer.send_batch
        sends = 0

        async def failing_first(*args: Any, **kwargs: Any) -> Any:
            nonlocal sends
            sends += 1
            if sends == 1:
                # Every call's events queued in batches behind this one (its own included).
                await eventually(
                    lambda: sum(b.count for o in broker._outbox.values() for b in o) == 60,
                    10,
                    what="the six calls' 60 events queued behind the first batch",
                )
                raise KafkaConnectionError("injected: the first batch cannot be sent")
            return await real(*args, **kwargs)

        monkeypatch.setattr(producer, "send_batch", failing_first)
        # A batch holds up to max_message_bytes: 8 of these fill one, later calls open their own.
        data = b"x" * (TEST_KAFKA_MAX_MESSAGE_BYTES // 8)
        calls = [
            broker.append([make_event("order/one", f"c{c}-{i}", key="k", data=data) for i in range(10)])
            for c in range(6)
        ]
        outcomes = [r for call in await asyncio.gather(*calls) for r in call]
    stored = [isinstance(r, AppendResult) for r in outcomes]
    assert not stored[0], "the injected failure did not hit the first batch"
    # In call order: once an event failed, no later event of the key was stored.
    assert sends == 1, f"{sends} batches sent after the failed one"
    assert True not in stored[stored.index(False) :], stored

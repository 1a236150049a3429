"""The broker contract: what every adapter of ``meshgate.brokers.Broker`` must do.

A broker's test module subclasses ``BrokerContract`` and provides two fixtures:

* ``new_broker``: a factory of NOT started brokers on one shared backend (one log); two of
  them are two gateway replicas of a region, a later one is a restarted gateway;
* ``backend``: the broker server(s) behind it, with ``stop()``, ``kill()`` (as a crash)
  and ``start()`` (again, same address and data), and ``max_message_bytes``.

``TestNatsBroker`` runs it against a real nats-server, ``TestKafkaBroker`` against tansu (a
Kafka-protocol broker in memory), replacing the cases that assume one log with their per-stream
meaning and skipping what a memory-only broker cannot show.
Positions are compared as (``stream``, ``sequence``) pairs, so a broker whose log has several
streams (Kafka topic-partitions) passes the same tests as one with a single stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

import pytest

from meshgate.brokers import (
    AppendResult,
    Broker,
    BrokerError,
    BrokerState,
    BrokerUnavailableError,
    Delivery,
    DurableConsumer,
    EventRejectedError,
    Leases,
    StartAt,
    WorkSharing,
)
from meshgate.brokers._codec import header_lines
from meshgate.v1 import event_pb2
from tests._wait import eventually

# Every wait in these tests is bounded by this (seconds); nothing sleeps for a fixed time.
BOUND = 10.0


class Backend(Protocol):
    max_message_bytes: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def kill(self) -> None: ...


BrokerFactory = Callable[[], Broker]


def make_event(topic: str, ident: str, *, data: bytes | None = None, **fields: object) -> event_pb2.Event:
    fields.setdefault("origin", "here")
    fields.setdefault("route", ["here", "there"])
    event = event_pb2.Event(
        id=ident,
        source="/tests/producer",
        type="com.example.test",
        specversion="1.0",
        topic=topic,
        data=data if data is not None else f"data of {ident}".encode(),
        **fields,  # type: ignore[arg-type]
    )
    if not event.HasField("time"):
        event.time.FromNanoseconds(1_735_689_600_123_456_789)
    return event


def state_of(broker: Broker) -> BrokerState:
    # A call, not an attribute read: type checkers would keep a narrowed state across awaits.
    return broker.state


def results_of(results: Sequence[AppendResult | BrokerError]) -> list[AppendResult]:
    out = []
    for r in results:
        assert isinstance(r, AppendResult), f"expected an AppendResult, got {r!r}"
        out.append(r)
    return out


def as_duplicate(result: AppendResult) -> AppendResult:
    """What appending the same id again yields: the original's position."""
    return AppendResult(result.sequence, True, result.stream)


def sequences(results: Sequence[AppendResult | BrokerError]) -> list[int]:
    out = []
    for r in results:
        assert isinstance(r, AppendResult), f"expected an AppendResult, got {r!r}"
        out.append(r.sequence)
    return out


async def collect(
    stream: AsyncIterator[list[event_pb2.Event]], count: int, *, within: float = BOUND
) -> list[event_pb2.Event]:
    """The next ``count`` events of a reader (fails if they do not come within ``within`` s).

    The reader stays open, so a test can go on reading from where it stopped.
    """
    got: list[event_pb2.Event] = []
    async with asyncio.timeout(within):
        async for batch in stream:
            got.extend(batch)
            if len(got) >= count:
                break
    return got


async def read_events(
    broker: Broker, pattern: str, count: int, *, start: StartAt, max_batch: int = 100
) -> list[event_pb2.Event]:
    """The first ``count`` events of a new reader, which is closed afterwards."""
    reader = broker.read(pattern, start=start, max_batch=max_batch)
    try:
        return await collect(reader, count)
    finally:
        await reader.aclose()


async def fetch_as_a_link(consumer: DurableConsumer, max_events: int, *, timeout: float) -> list[Delivery]:
    """A fetch as a replication link makes it: a retriable failure resets the consumer and fetches again.

    A broker that shares work (Kafka) fails one fetch when the consumer's share of the log
    changes, e.g. when a topic created after the consumer joins it.
    """
    deadline = time.monotonic() + BOUND
    while True:
        try:
            return await consumer.fetch(max_events, timeout=max(0.0, min(timeout, deadline - time.monotonic())))
        except BrokerUnavailableError:
            if time.monotonic() > deadline:
                raise
            await consumer.reset()


async def append_until_accepted(broker: Broker, event: event_pb2.Event, *, within: float = BOUND) -> AppendResult:
    """Appends (retrying the same id) until the broker takes it: bounded polling after a fault."""
    deadline = time.monotonic() + within
    while True:
        [result] = await broker.append([event])
        if isinstance(result, AppendResult):
            return result
        assert isinstance(result, BrokerUnavailableError), f"non-retriable failure: {result!r}"
        if time.monotonic() > deadline:
            raise AssertionError(f"the broker did not take the event within {within} s: {result!r}")


class BrokerContract:
    @pytest.fixture
    def new_broker(self) -> BrokerFactory:
        raise NotImplementedError("a broker test module provides new_broker")

    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError("a broker test module provides backend")

    @pytest.fixture
    async def broker(self, new_broker: BrokerFactory) -> AsyncIterator[Broker]:
        broker = new_broker()
        await broker.start()
        try:
            yield broker
        finally:
            await broker.stop()

    # -- lifecycle ----------------------------------------------------------------------------

    async def test_start_and_stop_are_safe_twice(self, new_broker: BrokerFactory) -> None:
        broker = new_broker()
        assert state_of(broker) is BrokerState.NEW
        await broker.start()
        await broker.start()
        assert state_of(broker) is BrokerState.CONNECTED
        await broker.stop()
        await broker.stop()
        assert state_of(broker) is BrokerState.CLOSED
        async with new_broker() as again:
            assert state_of(again) is BrokerState.CONNECTED
        assert state_of(again) is BrokerState.CLOSED

    # -- append -------------------------------------------------------------------------------

    async def test_append_one(self, broker: Broker) -> None:
        [result] = await broker.append([make_event("orders/created", "one")])
        assert isinstance(result, AppendResult)
        assert result.sequence >= 1
        assert result.duplicate is False

    async def test_append_empty_batch(self, broker: Broker) -> None:
        assert await broker.append([]) == []

    async def test_batch_results_in_order_with_increasing_sequences(self, broker: Broker) -> None:
        events = [make_event("orders/created", f"batch-{i}") for i in range(50)]
        seqs = sequences(await broker.append(events))
        assert len(seqs) == 50
        assert seqs == sorted(seqs) and len(set(seqs)) == 50
        more = sequences(await broker.append([make_event("orders/created", "after")]))
        assert more[0] > seqs[-1]

    async def test_concurrent_appends_all_acked(self, broker: Broker) -> None:
        batches = [[make_event("orders/created", f"c{b}-{i}") for i in range(100)] for b in range(8)]
        results = await asyncio.gather(*(broker.append(batch) for batch in batches))
        seqs = [s for r in results for s in sequences(r)]
        assert len(set(seqs)) == 800

    async def test_duplicate_id_returns_original_sequence(self, broker: Broker) -> None:
        [first] = results_of(await broker.append([make_event("orders/created", "dup")]))
        [again] = await broker.append([make_event("orders/created", "dup", data=b"a retry")])
        assert again == as_duplicate(first)
        # Within one batch too: the second copy is the duplicate of the first.
        a, b = await broker.append([make_event("orders/created", "twin"), make_event("orders/created", "twin")])
        assert isinstance(a, AppendResult) and not a.duplicate
        assert b == as_duplicate(a)

    async def test_duplicate_detected_after_restart_and_across_replicas(self, new_broker: BrokerFactory) -> None:
        async with new_broker() as first:
            [stored] = results_of(await first.append([make_event("orders/created", "idem")]))
            async with new_broker() as replica:
                # A second gateway replica of the region, alive at the same time.
                assert await replica.append([make_event("orders/created", "idem")]) == [as_duplicate(stored)]
        async with new_broker() as restarted:
            assert await restarted.append([make_event("orders/created", "idem")]) == [as_duplicate(stored)]

    async def test_too_large_event_rejected_and_not_stored(self, broker: Broker, backend: Backend) -> None:
        big = make_event("orders/created", "big", data=b"x" * (backend.max_message_bytes + 1))
        ok1, refused, ok2 = await broker.append(
            [make_event("orders/created", "small-1"), big, make_event("orders/created", "small-2")]
        )
        assert isinstance(ok1, AppendResult) and isinstance(ok2, AppendResult)
        assert isinstance(refused, EventRejectedError)
        assert refused.retriable is False
        assert str(backend.max_message_bytes) in str(refused)
        stored = await read_events(broker, ">", 2, start=StartAt(earliest=True))
        assert [e.id for e in stored] == ["small-1", "small-2"]

    async def test_invalid_event_rejected(self, broker: Broker) -> None:
        bad_topic, no_id = await broker.append(
            [make_event("orders/not a topic", "bad-topic"), make_event("orders/created", "")]
        )
        assert isinstance(bad_topic, EventRejectedError) and not bad_topic.retriable
        assert isinstance(no_id, EventRejectedError) and not no_id.retriable

    async def test_raw_batch_with_a_short_column_is_refused_by_name(self, broker: Broker) -> None:
        events = [make_event("orders/created", f"raw-{i}") for i in range(3)]
        columns = {
            "ids": [e.id for e in events],
            "topics": [e.topic for e in events],
            "headers": [header_lines(e) for e in events],
            "data": [e.data for e in events][:2],  # one payload short
            "origin_sequences": [1, 2, 3],
            "origin_streams": ["p0"],  # one stream for three ids
        }
        with pytest.raises(ValueError, match=r"raw batch of 3 ids .*data 2, origin_streams 1") as info:
            await broker.append_raw(**columns)  # type: ignore[arg-type]
        assert "topics" not in str(info.value)
        await broker.append([make_event("orders/created", "after")])
        stored = await read_events(broker, ">", 1, start=StartAt(earliest=True))
        assert [e.id for e in stored] == ["after"]  # nothing of the refused batch before it

    # -- read ---------------------------------------------------------------------------------

    async def test_read_earliest_with_patterns(self, broker: Broker) -> None:
        events = [
            make_event("orders/created", "o1"),
            make_event("orders/eu/created", "o2"),
            make_event("inventory/sku-1", "i1"),
            make_event("orders/shipped", "o3"),
        ]
        seqs = sequences(await broker.append(events))
        one_level = await read_events(broker, "orders/*", 2, start=StartAt(earliest=True))
        assert [e.id for e in one_level] == ["o1", "o3"]
        assert [e.sequence for e in one_level] == [seqs[0], seqs[3]]
        deep = await read_events(broker, "orders/>", 3, start=StartAt(earliest=True), max_batch=2)
        assert [e.id for e in deep] == ["o1", "o2", "o3"]
        everything = await read_events(broker, ">", 4, start=StartAt(earliest=True), max_batch=1000)
        assert [e.id for e in everything] == ["o1", "o2", "i1", "o3"]

    async def test_read_many_in_batches(self, broker: Broker) -> None:
        n = 2500
        for start in range(0, n, 500):
            sequences(await broker.append([make_event("orders/created", f"m{i}") for i in range(start, start + 500)]))
        reader = broker.read("orders/*", start=StartAt(earliest=True), max_batch=400)
        sizes: list[int] = []
        got: list[event_pb2.Event] = []
        async with asyncio.timeout(BOUND):
            async for batch in reader:
                assert 0 < len(batch) <= 400
                sizes.append(len(batch))
                got.extend(batch)
                if len(got) >= n:
                    break
        await reader.aclose()
        assert [e.id for e in got] == [f"m{i}" for i in range(n)]
        assert [e.sequence for e in got] == sorted(e.sequence for e in got)

    async def test_read_latest_skips_stored_events(self, broker: Broker) -> None:
        sequences(await broker.append([make_event("orders/created", "old")]))
        reader = broker.read("orders/*", start=StartAt(), max_batch=10)
        first = asyncio.ensure_future(anext(reader))
        # The reader takes its position when it first runs: publish until it sees something.
        for attempt in range(int(BOUND / 0.05)):
            sequences(await broker.append([make_event("orders/created", f"new-{attempt}")]))
            done, _ = await asyncio.wait({first}, timeout=0.05)
            if done:
                break
        batch = await asyncio.wait_for(first, BOUND)
        assert batch and all(e.id.startswith("new-") for e in batch)
        await reader.aclose()

    async def test_read_from_time(self, broker: Broker) -> None:
        sequences(await broker.append([make_event("orders/created", "before")]))
        at = datetime.now(UTC)
        sequences(
            await broker.append([make_event("orders/created", "after-1"), make_event("orders/created", "after-2")])
        )
        got = await read_events(broker, "orders/*", 2, start=StartAt(time=at))
        assert [e.id for e in got] == ["after-1", "after-2"]

    @pytest.mark.parametrize("year", [1969, 1600, 1])
    async def test_read_from_a_time_before_1970_reads_everything(self, broker: Broker, year: int) -> None:
        # Found by tests/fuzz (Admin.Locate since 1634 hung): nats-server's nanosecond clock ends
        # before 1678, and a start there found nothing and waited for ever.
        sequences(await broker.append([make_event("orders/created", "old-1"), make_event("orders/created", "old-2")]))
        got = await read_events(broker, "orders/*", 2, start=StartAt(time=datetime(year, 6, 1, tzinfo=UTC)))
        assert [e.id for e in got] == ["old-1", "old-2"]

    async def test_read_from_sequence(self, broker: Broker) -> None:
        seqs = sequences(await broker.append([make_event("orders/created", f"s{i}") for i in range(5)]))
        got = await read_events(broker, "orders/*", 3, start=StartAt(sequence=seqs[2]))
        assert [e.id for e in got] == ["s2", "s3", "s4"]
        assert [e.sequence for e in got] == seqs[2:]

    async def test_read_rejects_bad_arguments(self, broker: Broker) -> None:
        with pytest.raises(ValueError, match="pattern"):
            await anext(broker.read("orders/>/x", start=StartAt(earliest=True), max_batch=10))
        with pytest.raises(ValueError, match="at most one"):
            await anext(broker.read("orders/*", start=StartAt(earliest=True, sequence=3), max_batch=10))

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
        event.extensions["tenant"] = " padded, multi\nline "
        event.dataschema = "https://schemas.example/order/v1"
        event.origin = "us-west"
        event.route[:] = ["us-west", "eu-central", "ap-south"]
        [seq] = sequences(await broker.append([event]))
        [got] = await read_events(broker, "orders/>", 1, start=StartAt(earliest=True))
        expected = event_pb2.Event()
        expected.CopyFrom(event)
        expected.sequence = seq
        assert got == expected

    # -- durable consumers --------------------------------------------------------------------

    async def test_durable_consumer_resumes_without_redelivering_acked(
        self, broker: Broker, new_broker: BrokerFactory
    ) -> None:
        sequences(await broker.append([make_event("orders/created", f"d{i}") for i in range(10)]))
        sequences(await broker.append([make_event("inventory/sku-1", "not-mine")]))
        consumer = await broker.durable_consumer("link-there", pattern="orders/*")
        assert await consumer.pending() == 10
        first = await consumer.fetch(4, timeout=BOUND)
        assert [d.event.id for d in first] == ["d0", "d1", "d2", "d3"]
        assert first[0].pending == 9 and first[-1].pending == 6
        await consumer.ack(first[:2])
        assert await consumer.pending() == 8
        await consumer.close()
        await consumer.close()

        # Another gateway (replica, or this one restarted) picks up where the name left off.
        async with new_broker() as other:
            resumed = await other.durable_consumer("link-there", pattern="orders/*")
            got: list[str] = []
            async with asyncio.timeout(BOUND):
                while len(got) < 8:
                    deliveries = await resumed.fetch(100, timeout=1.0)
                    got.extend(d.event.id for d in deliveries)
                    await resumed.ack(deliveries)
            assert sorted(got) == sorted(["d2", "d3", "d4", "d5", "d6", "d7", "d8", "d9"])
            assert await resumed.fetch(10, timeout=0.2) == []
            assert await resumed.pending() == 0
            await resumed.close()

    async def test_durable_consumer_splits_work_between_replicas(
        self, broker: Broker, new_broker: BrokerFactory
    ) -> None:
        # A broker that shares work (Kafka: partitions) overrides this with how it splits it.
        assert not isinstance(broker, WorkSharing), f"{type(broker).__name__} shares work: override this test"
        sequences(await broker.append([make_event("orders/created", f"w{i}") for i in range(20)]))
        # A link runs in one replica: a second open fences the first, and continues after what it acked.
        async with new_broker() as replica:
            a = await broker.durable_consumer("shared", pattern="orders/>")
            got_a = await a.fetch(10, timeout=BOUND)
            await a.ack(got_a[:4])
            b = await replica.durable_consumer("shared", pattern="orders/>")
            with pytest.raises(BrokerUnavailableError):
                await a.fetch(10, timeout=BOUND)
            got_b = await b.fetch(20, timeout=BOUND)
            assert [d.event.id for d in got_b] == [f"w{i}" for i in range(4, 20)]
            await b.ack(got_b)
            assert await b.pending() == 0
            await a.close()
            await b.close()

    async def test_durable_fetch_returns_empty_after_timeout(self, broker: Broker) -> None:
        consumer = await broker.durable_consumer("idle", pattern="orders/*")
        started = time.monotonic()
        assert await consumer.fetch(10, timeout=0.3) == []
        assert time.monotonic() - started < 0.3 + 2.0
        # An event that lands while a fetch waits is returned at once.
        waiting = asyncio.ensure_future(fetch_as_a_link(consumer, 10, timeout=BOUND))
        sequences(await broker.append([make_event("orders/created", "late")]))
        deliveries = await asyncio.wait_for(waiting, BOUND)
        assert [d.event.id for d in deliveries] == ["late"]
        await consumer.ack(deliveries)
        await consumer.close()

    # -- faults -------------------------------------------------------------------------------

    async def test_broker_down_fails_retriably_within_bounded_time(self, broker: Broker, backend: Backend) -> None:
        sequences(await broker.append([make_event("orders/created", "before-outage")]))
        await backend.stop()
        started = time.monotonic()
        results = await broker.append([make_event("orders/created", f"during-{i}") for i in range(3)])
        elapsed = time.monotonic() - started
        assert all(isinstance(r, BrokerUnavailableError) and r.retriable for r in results), results
        assert elapsed < BOUND
        await backend.start()
        result = await append_until_accepted(broker, make_event("orders/created", "during-0"))
        assert result.duplicate is False
        assert broker.state is BrokerState.CONNECTED

    async def test_reader_resumes_across_server_restart(self, broker: Broker, backend: Backend) -> None:
        sequences(await broker.append([make_event("orders/created", f"r{i}") for i in range(5)]))
        reader = broker.read("orders/*", start=StartAt(earliest=True), max_batch=100)
        before = await collect(reader, 5)
        await backend.kill()
        await backend.start()
        await append_until_accepted(broker, make_event("orders/created", "r5"))
        sequences(await broker.append([make_event("orders/created", f"r{i}") for i in range(6, 9)]))
        after = await collect(reader, 4)
        await reader.aclose()
        assert [e.id for e in before + after] == [f"r{i}" for i in range(9)]

    # -- what replication keeps in the broker ----------------------------------------------

    async def test_events_read_back_carry_their_position(self, broker: Broker) -> None:
        stored = results_of(await broker.append([make_event("orders/a", f"pos-{i}") for i in range(3)]))
        got = await read_events(broker, "orders/a", 3, start=StartAt(earliest=True))
        assert [(e.id, e.stream, e.sequence) for e in got] == [
            (f"pos-{i}", r.stream, r.sequence) for i, r in enumerate(stored)
        ]
        consumer = await broker.durable_consumer("position-probe", pattern="orders/a")
        try:
            deliveries = await consumer.fetch(3, timeout=BOUND)
            assert [(d.event.stream, d.event.sequence) for d in deliveries] == [(r.stream, r.sequence) for r in stored]
        finally:
            await consumer.close()

    async def test_checkpoints_survive_a_restart(self, new_broker: BrokerFactory) -> None:
        first = new_broker()
        async with first:
            assert await first.get_checkpoint("replication.there") is None
            await first.put_checkpoint("replication.there", b"one")
            await first.put_checkpoint("replication.there", b"two")
            await first.put_checkpoint("replication.else", b"other")
        async with new_broker() as second:
            assert await second.get_checkpoint("replication.there") == b"two"
            assert await second.get_checkpoint("replication.else") == b"other"

    async def test_checkpoints_listed_by_prefix(self, new_broker: BrokerFactory) -> None:
        first = new_broker()
        async with first:
            assert await first.checkpoints("replication.there.") == {}
            await first.put_checkpoint("replication.there.=", b"one")
            await first.put_checkpoint("replication.there.=", b"two")
            await first.put_checkpoint("replication.there.mesh=2Eorders/0", b"a")
            await first.put_checkpoint("replication.there", b"the origin's own value, not under the prefix")
            await first.put_checkpoint("replication.therefore.=", b"another origin")
            await first.put_checkpoint("link.there", b"something else")
            expected = {"replication.there.=": b"two", "replication.there.mesh=2Eorders/0": b"a"}
            assert await first.checkpoints("replication.there.") == expected
            # A prefix that does not end a name's token is matched on the characters.
            assert set(await first.checkpoints("replication.there")) == {
                *expected,
                "replication.there",
                "replication.therefore.=",
            }
            assert await first.checkpoints("replication.yonder.") == {}
        async with new_broker() as second:
            assert await second.checkpoints("replication.there.") == expected

    async def test_earliest_position_scans_from_the_oldest(self, broker: Broker) -> None:
        assert broker.earliest_position([]) == ""
        first = await broker.log_position()
        sequences(await broker.append([make_event("orders/a", "e-1", origin="there", origin_sequence=1)]))
        second = await broker.log_position()
        sequences(await broker.append([make_event("orders/b", "e-2", origin="there", origin_sequence=2)]))
        third = await broker.log_position()
        sequences(await broker.append([make_event("orders/a", "e-3", origin="there", origin_sequence=3)]))
        assert broker.earliest_position([second]) == second
        # Whatever the order, a scan from the earliest finds what came after the oldest one.
        for positions in ([third, second], [second, third], [third, second, third]):
            found, _ = await broker.origin_sequences_after("there", broker.earliest_position(positions))
            assert found == {"": {2, 3}}
        found, _ = await broker.origin_sequences_after("there", broker.earliest_position([third, first]))
        assert found == {"": {1, 2, 3}}
        assert broker.earliest_position([third, ""]) == ""
        with pytest.raises(ValueError, match="position"):
            broker.earliest_position([second, "not a position of this broker"])

    async def test_origin_sequences_after_a_position(self, broker: Broker) -> None:
        empty = await broker.log_position()
        assert await broker.origin_sequences_after("there", empty) == ({}, empty)
        sequences(await broker.append([make_event("orders/a", "o-1", origin="there", origin_sequence=10)]))
        middle = await broker.log_position()
        events = [
            make_event("orders/b", "o-2", origin="here"),
            make_event("orders/a", "o-3", origin="there", origin_sequence=11),
            make_event("orders/c", "o-4", origin="yonder", origin_sequence=12),
            make_event("orders/a", "o-5", origin="there", origin_sequence=14),
            # From an origin whose log has several streams: counted per origin stream.
            make_event("orders/b", "o-6", origin="there", origin_sequence=3, origin_stream="mesh.orders.b/1"),
            make_event("orders/a", "o-7", origin="there", origin_sequence=11, origin_stream="mesh.orders.a/0"),
        ]
        sequences(await broker.append(events))
        everything = {"": {10, 11, 14}, "mesh.orders.b/1": {3}, "mesh.orders.a/0": {11}}
        found, end = await broker.origin_sequences_after("there", "")  # "" is the beginning
        assert found == everything
        assert end == await broker.log_position()
        assert (await broker.origin_sequences_after("there", empty))[0] == everything
        found, _ = await broker.origin_sequences_after("there", middle)
        assert found == {"": {11, 14}, "mesh.orders.b/1": {3}, "mesh.orders.a/0": {11}}
        assert await broker.origin_sequences_after("there", end) == ({}, end)
        # What comes later is found from the end of the last scan.
        sequences(await broker.append([make_event("orders/a", "o-8", origin="there", origin_sequence=15)]))
        found, later = await broker.origin_sequences_after("there", end)
        assert found == {"": {15}} and later == await broker.log_position()

    async def test_oldest_pending_time_follows_the_ack_floor(self, broker: Broker) -> None:
        consumer = await broker.durable_consumer("lag-probe")
        try:
            assert await consumer.oldest_pending_time() is None
            before = time.time()
            await broker.append([make_event("orders/a", f"lag-{i}") for i in range(3)])
            # The consumer's pending count follows the stream a moment after the writes.
            deadline = time.monotonic() + BOUND
            while (oldest := await consumer.oldest_pending_time()) is None:
                assert time.monotonic() < deadline, "the appended events never showed as pending"
                await asyncio.sleep(0.02)
            assert before - 1 <= oldest <= time.time() + 1
            deliveries = await fetch_as_a_link(consumer, 3, timeout=BOUND)
            assert len(deliveries) == 3
            # Fetched but not acked: still pending, still as old.
            assert await consumer.oldest_pending_time() == oldest
            await consumer.ack(deliveries)
            assert await consumer.oldest_pending_time() is None
        finally:
            await consumer.close()

    async def test_durable_consumer_filters_by_origin_and_route(self, broker: Broker) -> None:
        events = [
            make_event("orders/a", "f-1", origin="here", route=["here", "there"]),
            make_event("orders/a", "f-2", origin="there", route=["here", "there"]),
            make_event("orders/a", "f-3", origin="here", route=["here"]),
            make_event("orders/a", "f-4", origin="here", route=["here", "yonder", "there"]),
        ]
        await broker.append(events)
        consumer = await broker.durable_consumer("link-probe", origin="here", routed_to="there")
        try:
            got = await consumer.fetch(10, timeout=BOUND)
            assert [d.event.id for d in got] == ["f-1", "f-4"]
            await consumer.ack(got)
            # The skipped ones were acked by the consumer itself: nothing is left pending.
            assert await consumer.pending() == 0
        finally:
            await consumer.close()

    async def test_reset_restarts_at_the_oldest_unacked_in_order(self, broker: Broker) -> None:
        await broker.append([make_event("orders/a", f"r-{i}") for i in range(6)])
        consumer = await broker.durable_consumer("reset-probe")
        try:
            first = await consumer.fetch(2, timeout=BOUND)
            await consumer.ack(first)
            taken = await consumer.fetch(2, timeout=BOUND)  # taken, never acked (a crashed process)
            assert [d.event.id for d in taken] == ["r-2", "r-3"]
            await consumer.reset()
            again = await consumer.fetch(10, timeout=BOUND)
            # Not r-4 first with r-2 later: everything after the ack floor, in log order.
            assert [d.event.id for d in again] == ["r-2", "r-3", "r-4", "r-5"]
        finally:
            await consumer.close()

    async def test_reset_keeps_the_position_across_reopening(self, broker: Broker) -> None:
        await broker.append([make_event("orders/a", f"p-{i}") for i in range(4)])
        consumer = await broker.durable_consumer("reopen-probe")
        await consumer.ack(await consumer.fetch(3, timeout=BOUND))
        await consumer.reset()
        await consumer.close()
        reopened = await broker.durable_consumer("reopen-probe")
        try:
            await reopened.reset()
            assert [d.event.id for d in await reopened.fetch(10, timeout=BOUND)] == ["p-3"]
        finally:
            await reopened.close()

    async def test_find_event_by_id_and_its_stored_time(self, broker: Broker) -> None:
        before = datetime.now(UTC)
        positions = sequences(await broker.append([make_event("orders/a", f"fe-{i}") for i in range(5)]))
        found = await broker.find_event("fe-3", since=before - timedelta(seconds=5))
        assert found is not None and found.id == "fe-3" and found.sequence == positions[3]
        stored = await broker.stored_time(found.sequence, stream=found.stream)
        assert stored is not None and before - timedelta(seconds=5) <= stored <= datetime.now(UTC) + timedelta(
            seconds=5
        )
        assert await broker.find_event("nope", since=before - timedelta(seconds=5)) is None
        # Looking only after the last write finds nothing, and does not wait for new events.
        assert await broker.find_event("fe-3", since=datetime.now(UTC) + timedelta(seconds=60)) is None
        assert await broker.stored_time(positions[-1] + 100, stream=found.stream) is None


class DurableContract:
    """What a broker that keeps its log on disk must show (a NATS region): not part of
    BrokerContract, as the Kafka tests' broker (tansu) keeps its data in memory only."""

    async def test_acked_events_survive_server_kill(self, broker: Broker, backend: Backend) -> None:
        events = [make_event("orders/created", f"k{i}") for i in range(200)]
        stored = results_of(await broker.append(events))
        await backend.kill()
        await backend.start()
        # Still there, and still remembered as duplicates.
        await append_until_accepted(broker, make_event("orders/created", "k0"))
        assert await broker.append(events[:3]) == [as_duplicate(r) for r in stored[:3]]
        got = await read_events(broker, "orders/*", 200, start=StartAt(earliest=True), max_batch=1000)
        assert [e.id for e in got] == [e.id for e in events]


class LeasesContract:
    """The contract of a broker with the ``Leases`` capability (run with ``BrokerContract``)."""

    @pytest.fixture
    def new_broker(self) -> BrokerFactory:
        raise NotImplementedError("a broker test module provides new_broker")

    async def test_one_owner_per_lease_and_takeover(self, new_broker: BrokerFactory) -> None:
        async with new_broker() as one, new_broker() as two:
            assert isinstance(one, Leases) and isinstance(two, Leases)
            assert await one.hold_lease("link.there", "replica-1", ttl=30)
            assert not await two.hold_lease("link.there", "replica-2", ttl=30)
            assert await one.hold_lease("link.there", "replica-1", ttl=30)  # renewed
            assert await two.hold_lease("link.else", "replica-2", ttl=30)  # leases are independent
            await one.release_lease("link.there", "replica-1")
            assert await two.hold_lease("link.there", "replica-2", ttl=30)
            assert not await one.hold_lease("link.there", "replica-1", ttl=30)
            await one.release_lease("link.there", "replica-1")  # not its lease: nothing happens
            assert await two.hold_lease("link.there", "replica-2", ttl=30)

    async def test_lease_lapses_when_not_renewed(self, new_broker: BrokerFactory) -> None:
        async with new_broker() as one, new_broker() as two:
            assert isinstance(one, Leases) and isinstance(two, Leases)
            assert await one.hold_lease("link.there", "replica-1", ttl=1.0)
            assert not await two.hold_lease("link.there", "replica-2", ttl=1.0)
            # replica-1 has died (stops renewing): replica-2 gets it once the TTL ran out.
            await eventually(
                lambda: two.hold_lease("link.there", "replica-2", ttl=1.0),
                BOUND,
                interval=0.2,
                what="the lease of replica-1 to lapse",
            )
            assert not await one.hold_lease("link.there", "replica-1", ttl=1.0)

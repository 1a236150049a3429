"""A NATS link's durable consumer over the partitions one process holds (``NatsDurableConsumer``).

One consumer reads a set of partitions; each partition keeps its own position across consumers
of other sets (a rebalance), an open fences only the consumers that read one of its partitions,
and the per-partition consumers of an older Meshgate hand their positions over. Against a real
nats-server.
"""

from __future__ import annotations

from typing import Any

import nats
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from meshgate.brokers import BrokerUnavailableError, RawBatch
from meshgate.brokers.embedded import EmbeddedNats
from meshgate.brokers.nats import NatsBroker
from meshgate.brokers.nats import _consumer as nats_consumer
from meshgate.brokers.nats._consumer import NatsDurableConsumer
from meshgate.brokers.nats._subjects import partition_of
from meshgate.config import NatsSettings
from tests._servers import make_nats_broker
from tests.brokers._contract import make_event

PARTITIONS = 4
STREAM = "READERS"
SETTINGS = NatsSettings(stream=STREAM, subject_prefix="mesh.", partitions=PARTITIONS)


def _partition(event_id: str) -> int:
    return partition_of(f"key-{int(event_id.split('-')[1]) % 16}", PARTITIONS)


async def _append(broker: NatsBroker, first: int, n: int) -> list[str]:
    events = [make_event("orders/created", f"e-{i}", key=f"key-{i % 16}") for i in range(first, first + n)]
    assert all(not isinstance(r, Exception) for r in await broker.append(events))
    return [e.id for e in events]


async def _open(broker: NatsBroker, *partitions: int) -> NatsDurableConsumer:
    return await broker.durable_consumer("link-t", origin="here", routed_to="there", partitions=partitions)


async def _drain(consumer: NatsDurableConsumer) -> RawBatch:
    """Everything the consumer delivers now, in one batch (not acked)."""
    out = RawBatch()
    while True:
        raw = await consumer.fetch_raw(1000, timeout=0.5)
        if not raw.ids:
            return out
        out.ids.extend(raw.ids)
        out.streams.extend(raw.streams)
        out.sequences.extend(raw.sequences)
        out.tokens.extend(raw.tokens)


def _check_order(raw: RawBatch) -> None:
    assert len(raw.streams) == len(raw.ids)
    for stream in set(raw.streams):
        seqs = [s for st, s in zip(raw.streams, raw.sequences, strict=True) if st == stream]
        assert seqs == sorted(seqs)


def _first(raw: RawBatch, n: int) -> RawBatch:
    part = RawBatch()
    part.ids.extend(raw.ids[:n])
    part.tokens.extend(raw.tokens[:n])
    return part


async def test_each_partition_starts_where_its_last_reader_stopped_across_sets(nats_server: EmbeddedNats) -> None:
    async with make_nats_broker(nats_server, settings=SETTINGS) as broker:
        ids = await _append(broker, 0, 200)
        done: set[str] = set()

        # One process reads all four partitions and finishes the first 60 events.
        whole = await _open(broker, 0, 1, 2, 3)
        raw = await _drain(whole)
        assert raw.ids == ids and set(raw.streams) == {f"p{p}" for p in range(PARTITIONS)}
        _check_order(raw)
        assert [s for s in raw.streams] == [f"p{_partition(i)}" for i in raw.ids]
        await whole.ack_raw(_first(raw, 60))
        done |= set(raw.ids[:60])
        await whole.close()
        ids += await _append(broker, 200, 40)

        # A second replica joins: the partitions split in two. Each reader gets exactly what is
        # not done of its partitions, in order.
        upper = await _open(broker, 2, 3)
        got = await _drain(upper)
        assert got.ids == [i for i in ids if _partition(i) in (2, 3) and i not in done]
        _check_order(got)
        assert set(got.streams) <= {"p2", "p3"}
        # It finishes only some of them: its partitions now stand at different places.
        await upper.ack_raw(_first(got, 25))
        done |= set(got.ids[:25])
        await upper.close()

        # The first reader was deleted by the open over 2 and 3; partitions 0 and 1 still start
        # where it stopped (the positions the new consumer recorded).
        lower = await _open(broker, 0, 1)
        got = await _drain(lower)
        assert got.ids == [i for i in ids if _partition(i) in (0, 1) and i not in done]
        await lower.ack_raw(got)
        done |= set(got.ids)
        await lower.close()

        # One reader of all four again: it starts after the lowest of the positions and skips
        # what was done of the partitions that stood higher.
        ids += await _append(broker, 240, 20)
        again = await _open(broker, 0, 1, 2, 3)
        got = await _drain(again)
        assert got.ids == [i for i in ids if i not in done]
        _check_order(got)
        await again.ack_raw(got)
        await again.close()
        # And the acks of skipped deliveries moved its floor to the end: nothing is left.
        last = await _open(broker, 0, 1, 2, 3)
        assert (await _drain(last)).ids == []
        assert await last.pending() == 0
        await last.close()


async def test_an_open_fences_the_readers_of_its_partitions_and_only_those(nats_server: EmbeddedNats) -> None:
    async with make_nats_broker(nats_server, settings=SETTINGS) as broker:
        ids = await _append(broker, 0, 80)
        lower = await _open(broker, 0, 1)
        upper = await _open(broker, 2, 3)
        # Disjoint: both read and ack.
        for consumer, parts in ((lower, (0, 1)), (upper, (2, 3))):
            got = await _drain(consumer)
            assert got.ids == [i for i in ids if _partition(i) in parts]
            await consumer.ack_raw(_first(got, 5))
        # Another process takes partition 1: the reader of 0 and 1 is fenced, the other is not.
        taker = await _open(broker, 1)
        await _append(broker, 80, 40)
        with pytest.raises(BrokerUnavailableError, match="gone"):
            await _drain(lower)
        got = await _drain(upper)
        assert got.ids and {_partition(i) for i in got.ids} <= {2, 3}
        await upper.ack_raw(got)
        for consumer in (lower, upper, taker):
            await consumer.close()


async def test_an_older_meshgates_per_partition_consumer_hands_its_position_over(nats_server: EmbeddedNats) -> None:
    async with make_nats_broker(nats_server, settings=SETTINGS) as broker:
        ids = await _append(broker, 0, 100)
        # An older Meshgate read partition 1 through link-t-p1@<n> and finished its first 10 events.
        async with await nats.connect(nats_server.url) as nc:
            jsm = nc.jetstream()
            sub = await jsm.pull_subscribe("mesh.here.1.>", stream=STREAM)
            first_ten = await sub.fetch(10, timeout=5.0)
            await sub.unsubscribe()
            floor = first_ten[-1].metadata.sequence.stream
            await jsm.add_consumer(
                STREAM,
                ConsumerConfig(
                    durable_name="link-t-p1@7",
                    filter_subject="mesh.here.1.>",
                    ack_policy=AckPolicy.ALL,
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=floor + 1,
                ),
            )
            info = await jsm.consumer_info(STREAM, "link-t-p1@7")
            # A consumer that starts after a sequence has its ack floor just below it.
            assert info.ack_floor is not None and info.ack_floor.stream_seq == floor
            done = {m.headers["ce-id"] for m in first_ten if m.headers}
            assert len(done) == 10

            reader = await _open(broker, 0, 1)
            got = await _drain(reader)
            assert got.ids == [i for i in ids if _partition(i) in (0, 1) and i not in done]
            # The older consumer read a partition the new one reads: fenced.
            with pytest.raises(nats.js.errors.NotFoundError):
                await jsm.consumer_info(STREAM, "link-t-p1@7")
            await reader.close()


async def test_a_batch_of_more_new_subjects_than_the_cache_holds_is_read_whole(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The subject -> topic and subject -> stream caches start over when full; never midway
    # through a batch, whose every subject is looked up right after.
    monkeypatch.setattr(nats_consumer, "_SUBJECT_CACHE_MAX", 3)
    async with make_nats_broker(nats_server, settings=SETTINGS) as broker:
        events = [make_event(f"orders/t{i}", f"c-{i}", key=f"key-{i}") for i in range(10)]
        assert all(not isinstance(r, Exception) for r in await broker.append(events))
        reader = await _open(broker, 0, 1, 2, 3)
        got = await _drain(reader)
        assert got.ids == [e.id for e in events]
        by_id = dict(zip(got.ids, got.streams, strict=True))
        assert by_id == {e.id: f"p{partition_of(e.key, PARTITIONS)}" for e in events}
        await reader.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"origin": "here", "partitions": []}, "needs at least one partition"),
        ({"origin": "here", "partitions": [1, 4]}, "partition 4 is outside 0..3"),
        ({"partitions": [1]}, "partitions are read only with their origin"),
        ({"origin": "here", "partitions": [1], "pattern": "orders/*"}, "reads every topic of its partitions"),
    ],
)
async def test_a_partition_reader_asked_for_wrongly_is_refused_with_why(
    nats_server: EmbeddedNats, options: dict[str, Any], message: str
) -> None:
    async with make_nats_broker(nats_server, settings=SETTINGS) as broker:
        with pytest.raises(ValueError, match=message):
            await broker.durable_consumer("link-t", **options)

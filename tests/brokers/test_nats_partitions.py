"""The NATS subject layout: origin and partition in the subject, as native consumers read it.

``<prefix><origin>.<partition>.<topic levels>``; the partition is crc32 of the key (else of the
id) modulo the region's partitions; replicated events keep their origin's subject; the log's
partition count is fixed in the stream's metadata.
"""

from __future__ import annotations

import nats
import pytest
from nats.js.api import StreamConfig

from meshgate.brokers import BrokerError, StartAt, header_lines
from meshgate.brokers.embedded import EmbeddedNats
from meshgate.brokers.nats._subjects import partition_of
from meshgate.config import NatsSettings
from tests._servers import make_nats_broker
from tests.brokers._contract import make_event, read_events

BOUND = 10.0


async def _subjects(server: EmbeddedNats, stream: str, filter_subject: str) -> dict[str, str]:
    """Id -> subject of every event a plain nats-py consumer reads from ``stream`` with ``filter_subject``."""
    got: dict[str, str] = {}
    async with await nats.connect(server.url) as nc:
        js = nc.jetstream()
        sub = await js.pull_subscribe(filter_subject, stream=stream)
        while True:
            try:
                msgs = await sub.fetch(100, timeout=1.0)
            except TimeoutError:  # nats-py raises its own or asyncio's: both are TimeoutError
                break
            for msg in msgs:
                assert msg.headers is not None
                got[msg.headers["ce-id"]] = msg.subject
                await msg.ack()
        await sub.unsubscribe()
    return got


async def test_native_consumer_reads_every_origin_of_a_topic_with_the_documented_filter(
    nats_server: EmbeddedNats,
) -> None:
    settings = NatsSettings(stream="LAYOUT", subject_prefix="mesh.", partitions=8)
    async with make_nats_broker(nats_server, settings=settings) as broker:
        # This region's own events, with and without a key, and one of another topic.
        own = [make_event("orders/created", f"own-{i}", key=f"k{i % 3}") for i in range(6)]
        own.append(make_event("orders/created", "own-nokey"))
        own.append(make_event("orders/cancelled", "own-other-topic", key="k0"))
        assert all(not isinstance(r, Exception) for r in await broker.append(own))
        # Replicated in from region "there", partition 5 of its log: stored under its subject.
        remote = [make_event("orders/created", f"far-{i}", origin="there", key="kx") for i in range(3)]
        lines = [header_lines(e) for e in remote]
        results = await broker.append_raw(
            ids=[e.id for e in remote],
            topics=[e.topic for e in remote],
            headers=lines,
            data=[e.data for e in remote],
            origin_sequences=[10, 11, 12],
            origin_streams=["p5"] * 3,
        )
        assert all(not isinstance(r, Exception) for r in results)

        every_origin = await _subjects(nats_server, "LAYOUT", "mesh.*.*.orders.created")
        want = {f"own-{i}": f"mesh.here.{partition_of(f'k{i % 3}', 8)}.orders.created" for i in range(6)}
        want["own-nokey"] = f"mesh.here.{partition_of('own-nokey', 8)}.orders.created"
        want.update({f"far-{i}": "mesh.there.5.orders.created" for i in range(3)})
        assert every_origin == want
        # One region's own events, all topics; one partition of it.
        assert set(await _subjects(nats_server, "LAYOUT", "mesh.here.>")) == {e.id for e in own}
        p = partition_of("k0", 8)
        assert set(await _subjects(nats_server, "LAYOUT", f"mesh.here.{p}.>")) == {
            e.id for e in own if partition_of(e.key or e.id, 8) == p
        }
        # Subscribe's pattern reads every origin and gives the topic back without the tokens.
        read = await read_events(broker, "orders/created", 9, start=StartAt(earliest=True))
        assert sorted(e.id for e in read) == sorted(want)
        assert {e.topic for e in read} == {"orders/created"}


async def test_a_partition_consumer_reads_only_its_origin_and_partition_in_log_order(
    nats_server: EmbeddedNats,
) -> None:
    settings = NatsSettings(stream="PARTS", subject_prefix="mesh.", partitions=4)
    async with make_nats_broker(nats_server, settings=settings) as broker:
        keys = [f"key-{k}" for k in range(12)]
        events = [make_event("orders/created", f"e-{i}", key=keys[i % 12]) for i in range(120)]
        assert all(not isinstance(r, Exception) for r in await broker.append(events))
        # Another origin's events in the same log: never delivered to this region's links.
        await broker.append([make_event("orders/created", f"x-{i}", origin="there", key="key-0") for i in range(50)])
        seen: list[str] = []
        for p in range(4):
            consumer = await broker.durable_consumer("link-t", origin="here", routed_to="there", partitions=[p])
            try:
                raw = await consumer.fetch_raw(1000, timeout=1.0)
                assert set(raw.streams) <= {f"p{p}"} and len(raw.streams) == len(raw.ids)
                assert raw.sequences == sorted(raw.sequences)
                assert all(partition_of(keys[int(i.split("-")[1]) % 12], 4) == p for i in raw.ids)
                seen.extend(raw.ids)
                # Only this origin's events of this partition were ever delivered (nothing skipped).
                info = await broker._require_jsm().consumer_info("PARTS", consumer.name)
                assert info.delivered.consumer_seq == len(raw.ids)
            finally:
                await consumer.close()
        assert sorted(seen) == sorted(e.id for e in events)


async def test_a_stream_of_another_partition_count_or_layout_is_refused(nats_server: EmbeddedNats) -> None:
    async with make_nats_broker(nats_server, settings=NatsSettings(stream="FIXED", partitions=8)):
        pass
    with pytest.raises(BrokerError, match=r"created with 8 partitions .* nats.partitions: 4") as info:
        async with make_nats_broker(nats_server, settings=NatsSettings(stream="FIXED", partitions=4)):
            pass
    assert not info.value.retriable
    # A stream of Meshgate 0.1's layout (<prefix><topic>, no metadata): refused, not migrated.
    async with await nats.connect(nats_server.url) as nc:
        await nc.jetstream().add_stream(StreamConfig(name="OLD", subjects=["old.>"]))
    with pytest.raises(BrokerError, match=r"stream OLD holds subjects of another layout .*nats stream rm OLD"):
        async with make_nats_broker(nats_server, settings=NatsSettings(stream="OLD", subject_prefix="old.")):
            pass

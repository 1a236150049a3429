"""Readers cannot hurt writers: Subscribe pulls and buffers are bounded in bytes, and read over a connection of
their own, against a real nats-server (and tansu for Kafka) and in-process gateways.

Before this, one Subscribe of a backlog of 1 MiB events pulled 256 of them at once on the gateway's only NATS
connection: nats-server dropped it as a slow consumer (past its 64 MiB max_pending), failing the acks of other
clients' publishes, again at every retry of the reader; and each slow subscriber held 256 events of any size.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest

from meshgate.brokers import StartAt
from meshgate.brokers.embedded import EmbeddedNats
from meshgate.brokers.kafka import KafkaBroker
from meshgate.brokers.nats import NatsBroker
from meshgate.config import ConfigError, Limits, MeshConfig, RouteRule, load_config_text
from meshgate.gateway import Gateway
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests.brokers._contract import collect, make_event
from tests.e2e._mesh import wait_until
from tests.gateway._helpers import ev, nats_region, started_gateways

MiB = 1024 * 1024
_ACCEPTED = event_pb2.OUTCOME_ACCEPTED


@pytest.fixture
async def make_gateway(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Any]:
    async with started_gateways() as start:

        async def make(limits: Limits | None = None) -> Gateway:
            config = MeshConfig(
                regions=(nats_region("here", nats_server, "127.0.0.1:0"),),
                routing=(RouteRule(index=0, topic="orders/>", regions=("here",)),),
            )
            if limits is not None:
                config = replace(config, settings=replace(config.settings, limits=limits))
            return await start(config=config, region="here", data_dir=tmp_path, replicate=False)

        yield make


async def _publish_backlog(stub: gateway_pb2_grpc.GatewayStub, n: int, size: int, *, per_request: int) -> list[str]:
    ids = [f"big-{i:04d}" for i in range(n)]
    payload = b"b" * size
    for start in range(0, n, per_request):
        resp = await stub.Publish(
            gateway_pb2.PublishRequest(
                events=[ev("orders/big", data=payload, id=i) for i in ids[start : start + per_request]]
            )
        )
        assert [r.outcome for r in resp.results] == [_ACCEPTED] * len(resp.results)
    return ids


async def _reader_consumers(server: EmbeddedNats, stream: str) -> list[Any]:
    nc = await nats.connect(server.url)
    try:
        infos = await nc.jetstream().consumers_info(stream)
    finally:
        await nc.close()
    return [i for i in infos if i.name.startswith("mg-read-")]


def _slow_consumer_lines(server: EmbeddedNats) -> list[str]:
    return [line for line in server.log_tail(200) if "Slow Consumer" in line]


async def test_a_reader_of_big_events_that_does_not_read_fails_no_publish(
    make_gateway: Any, nats_server: EmbeddedNats
) -> None:
    gw: Gateway = await make_gateway()  # default limits: events up to 1 MiB of data
    assert isinstance(gw.broker, NatsBroker)
    write_nc = gw.broker._nc
    assert write_nc is not None
    async with grpc.aio.insecure_channel(gw.address) as ch, grpc.aio.insecure_channel(gw.address) as ch2:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        # 256 MiB waiting: four times what nats-server lets one connection have unread (max_pending, 64 MiB).
        backlog = await _publish_backlog(stub, 256, MiB, per_request=1)
        reconnects = write_nc.stats["reconnects"]

        # Another client publishes all along, four small events in flight at any time.
        writer = gateway_pb2_grpc.GatewayStub(ch2)
        failures: list[str] = []
        published = 0
        stop = asyncio.Event()

        async def publish(worker: int) -> None:
            nonlocal published
            n = 0
            while not stop.is_set():
                event_id = f"small-{worker}-{n:05d}"
                n += 1
                try:
                    resp = await writer.Publish(
                        gateway_pb2.PublishRequest(events=[ev("orders/small", id=event_id)]), timeout=30
                    )
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{event_id}: {exc.code().name} {exc.details()}")
                    continue
                if resp.results[0].outcome != _ACCEPTED:
                    failures.append(f"{event_id}: {resp.results[0]}")
                published += 1

        publishers = [asyncio.create_task(publish(w)) for w in range(4)]
        try:
            await wait_until(lambda: published >= 100, 30, what="the writer to be publishing")
            # A reader that takes the first response and then reads nothing.
            call = stub.Subscribe(
                gateway_pb2.SubscribeRequest(pattern="orders/big", position=gateway_pb2.START_POSITION_EARLIEST)
            )
            first = await asyncio.wait_for(call.read(), 60)
            assert isinstance(first, gateway_pb2.SubscribeResponse) and first.events
            mark = published
            await wait_until(lambda: published >= mark + 400, 60, what="400 more publishes")
        finally:
            stop.set()
            await asyncio.gather(*publishers)
        assert failures == []
        # The connection writes use was never dropped: no reconnect, no slow consumer in the server's log.
        assert gw.broker._nc is write_nc and write_nc.stats["reconnects"] == reconnects
        assert not [line for line in _slow_consumer_lines(nats_server) if ':meshgate-here"' in line]

        # The reader, reading again, gets everything once and in order, the 1 MiB events one by one.
        got = [e.id for e in first.events]
        while len(got) < len(backlog):
            resp = await asyncio.wait_for(call.read(), 30)
            assert isinstance(resp, gateway_pb2.SubscribeResponse)
            got.extend(e.id for e in resp.events)
        call.cancel()
        assert got == backlog


async def test_subscribe_pulls_carry_max_bytes(make_gateway: Any, nats_server: EmbeddedNats) -> None:
    gw: Gateway = await make_gateway(Limits(subscribe_buffer_bytes=MiB))
    # Every pull request to the stream's consumers, as the server receives it.
    watcher = await nats.connect(nats_server.url)
    pulls: list[dict[str, Any]] = []

    async def on_pull(msg: Any) -> None:
        pulls.append(json.loads(msg.data))

    await watcher.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{gw.broker.settings.stream}.*", cb=on_pull)
    await watcher.flush()
    try:
        async with grpc.aio.insecure_channel(gw.address) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            await _publish_backlog(stub, 10, 100_000, per_request=10)
            call = stub.Subscribe(
                gateway_pb2.SubscribeRequest(pattern="orders/>", position=gateway_pb2.START_POSITION_EARLIEST)
            )
            got: list[str] = []
            while len(got) < 10:
                resp = await asyncio.wait_for(call.read(), 30)
                assert isinstance(resp, gateway_pb2.SubscribeResponse)
                got.extend(e.id for e in resp.events)
            call.cancel()
        await wait_until(lambda: len(pulls) >= 2, 10, what="the reader's pull requests")
    finally:
        await watcher.close()
    batches = [p for p in pulls if p.get("no_wait")]
    assert batches, pulls
    # A quarter of subscribe_buffer_bytes: the batch being sent (with its copies in gRPC) and the
    # one prefetched fit in it.
    assert all(p.get("max_bytes") == MiB // 4 for p in batches), batches
    assert got == [f"big-{i:04d}" for i in range(10)]


async def test_slow_subscribers_hold_at_most_their_bytes(make_gateway: Any, nats_server: EmbeddedNats) -> None:
    buffer_bytes = MiB
    subscribers = 15
    gw: Gateway = await make_gateway(
        Limits(subscribe_buffer_bytes=buffer_bytes, subscribe_buffer_total_bytes=subscribers * buffer_bytes)
    )
    size = 128 * 1024
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        backlog = await _publish_backlog(stub, 120, size, per_request=20)
        # Each on its own channel, as separate clients would be; none of them reads.
        channels = [grpc.aio.insecure_channel(gw.address) for _ in range(subscribers)]
        calls = [
            gateway_pb2_grpc.GatewayStub(c).Subscribe(
                gateway_pb2.SubscribeRequest(pattern="orders/>", position=gateway_pb2.START_POSITION_EARLIEST)
            )
            for c in channels
        ]
        try:
            await wait_until(lambda: len(gw.subscriptions.live) == subscribers, 30, what="every Subscribe call")
            seen: list[tuple[int, ...]] = []

            def stalled() -> bool:
                bufs = sorted(gw.subscriptions.live, key=id)
                seen.append(tuple(b.sent for b in bufs))
                return all(b.waiting for b in bufs) and len(seen) >= 4 and len(set(seen[-4:])) == 1

            await wait_until(stalled, 60, interval=0.25, what="every Subscribe call to wait on its client")
            readers = await _reader_consumers(nats_server, gw.broker.settings.stream)
            sent = sum(b.sent for b in gw.subscriptions.live)
            # What the broker handed the gateway and gRPC has not taken, from JetStream's own books.
            delivered = sum(r.delivered.consumer_seq for r in readers)
            assert (delivered - sent) * size <= subscribers * buffer_bytes, (delivered, sent)
            assert len(readers) == subscribers
            # Held, not yet taken by gRPC: at most the batch being sent, a quarter of the bytes, per call.
            for buf in gw.subscriptions.live:
                assert 0 < buf.high_water_bytes <= buffer_bytes // 4, buf.high_water_bytes
            held = gw.subscriptions.held_bytes
            assert 0 < held <= subscribers * buffer_bytes // 4
            metric = gw.metrics.registry.get_sample_value("meshgate_subscribe_buffered_bytes", {"region": "here"})
            assert metric == held
            # What nobody read stayed in the broker.
            assert all(r.num_pending > 0 for r in readers)
            # One of them reads on: everything, once, in order.
            got: list[str] = []
            while len(got) < len(backlog):
                resp = await asyncio.wait_for(calls[0].read(), 30)
                assert isinstance(resp, gateway_pb2.SubscribeResponse)
                got.extend(e.id for e in resp.events)
            assert got == backlog
        finally:
            for call in calls:
                call.cancel()
            for c in channels:
                await c.close()


_BUDGET = re.compile(
    r"gateway of region here: 3 Subscribe calls hold up to 3145728 bytes \(3 MiB\) of subscribe_buffer_total_bytes"
    r" 3145728 \(3 MiB\), and another needs subscribe_buffer_bytes 1048576 \(1 MiB\): retry later or on another"
    r" replica, or read from the broker directly"
)


async def test_a_subscribe_beyond_the_gateway_budget_is_refused(make_gateway: Any) -> None:
    gw: Gateway = await make_gateway(Limits(subscribe_buffer_bytes=MiB, subscribe_buffer_total_bytes=3 * MiB))
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        request = gateway_pb2.SubscribeRequest(pattern="orders/>")
        calls = [stub.Subscribe(request) for _ in range(3)]
        await wait_until(lambda: len(gw.subscriptions.live) == 3, 30, what="three Subscribe calls")
        refused = stub.Subscribe(request)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(refused.read(), 10)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _BUDGET.fullmatch(info.value.details() or ""), info.value.details()
        assert len(gw.subscriptions.live) == 3 and gw.subscriptions.reserved_bytes == 3 * MiB
        # A call that ends gives its share back.
        calls.pop().cancel()
        await wait_until(lambda: gw.subscriptions.reserved_bytes == 2 * MiB, 30, what="the share given back")
        calls.append(stub.Subscribe(request))
        await wait_until(lambda: len(gw.subscriptions.live) == 3, 30, what="a new call admitted")
        for call in calls:
            call.cancel()
        await wait_until(lambda: gw.subscriptions.reserved_bytes == 0, 30, what="every share given back")


# --- the broker read path -------------------------------------------------------------------------


def test_the_pull_request_carries_max_bytes() -> None:
    from meshgate.brokers.nats._pull import next_request

    assert json.loads(next_request(100, no_wait=True, max_bytes=2 * MiB)) == {
        "batch": 100,
        "no_wait": True,
        "max_bytes": 2 * MiB,
    }
    assert json.loads(next_request(1, expires=5.0)) == {"batch": 1, "expires": 5_000_000_000}
    with pytest.raises(ValueError, match="max_bytes must be >= 1"):
        next_request(1, max_bytes=0)


async def test_nats_read_batches_stay_within_max_bytes(nats_broker: NatsBroker) -> None:
    events = [make_event("orders/a", f"e{i:02d}", data=bytes([i]) * 100_000) for i in range(12)]
    # Two larger than a pull's max_bytes: each comes alone, not never.
    events[7] = make_event("orders/a", "e07", data=b"L" * 400_000)
    events[8] = make_event("orders/a", "e08", data=b"L" * 300_000)
    await nats_broker.append(events)
    reader = nats_broker.read("orders/>", start=StartAt(earliest=True), max_batch=100, max_bytes=250_000)
    batches: list[list[str]] = []
    try:
        async with asyncio.timeout(30):
            async for batch in reader:
                batches.append([e.id for e in batch])
                if sum(map(len, batches)) >= len(events):
                    break
    finally:
        await reader.aclose()
    assert [i for b in batches for i in b] == [e.id for e in events]
    # 100 kB events, 250 kB a pull: two at a time; the large ones alone.
    assert ["e07"] in batches and ["e08"] in batches and all(len(b) <= 2 for b in batches), batches


async def test_many_readers_do_not_get_their_connection_dropped(
    nats_broker: NatsBroker, nats_server: EmbeddedNats
) -> None:
    for start in range(0, 24, 3):
        await nats_broker.append(
            [make_event("orders/a", f"m{i:02d}", data=b"m" * MiB) for i in range(start, start + 3)]
        )
    # 40 readers asking for 3 MiB each at once: 120 MiB, past nats-server's max_pending for one
    # connection (64 MiB), unless their pulls wait for room on it.
    readers = [
        nats_broker.read("orders/>", start=StartAt(earliest=True), max_batch=100, max_bytes=3 * MiB) for _ in range(40)
    ]
    try:
        firsts = await asyncio.wait_for(asyncio.gather(*(anext(r) for r in readers)), 60)
        assert all([e.id for e in batch] == ["m00", "m01"] for batch in firsts)
        own = nats_broker._reader
        assert own is not None and own._nc is not None
        assert own._nc.stats["reconnects"] == 0 and nats_broker.stats.reader_resets == 0
        assert _slow_consumer_lines(nats_server) == []
    finally:
        for reader in readers:
            await reader.aclose()
    # Every pull gave its bytes back once it ended or its reader closed.
    assert own._pull_bytes.used == 0


async def test_nats_reads_go_over_a_connection_of_their_own(nats_broker: NatsBroker, nats_server: EmbeddedNats) -> None:
    await nats_broker.append([make_event("orders/a", "one")])
    reader = nats_broker.read("orders/>", start=StartAt(earliest=True), max_batch=10)
    try:
        [got] = await collect(reader, 1)
        assert got.id == "one"
        own = nats_broker._reader
        assert own is not None and own._nc is not None and own._nc is not nats_broker._nc
        assert own.name == f"{nats_broker.name}-readers"
        # Its pulls land on that connection: the write connection has no pull inbox.
        assert not nats_broker._pullers and own._pullers
    finally:
        await reader.aclose()
    # Stopping the broker closes the reader connection too.
    await nats_broker.stop()
    assert nats_broker._reader is None and own._nc is None


async def test_kafka_read_fetches_within_max_bytes(kafka_broker: KafkaBroker) -> None:
    assert kafka_broker._read_fetch_bytes(300_000) == (300_000, min(kafka_broker.partition_fetch_bytes, 300_000))
    assert kafka_broker._read_fetch_bytes(None) == (kafka_broker.fetch_max_bytes, kafka_broker.partition_fetch_bytes)
    events = [make_event("orders/a", f"k{i:02d}", key="k", data=b"x" * 50_000) for i in range(8)]
    # Larger than the fetch: Kafka still returns it, alone.
    events[5] = make_event("orders/a", "k05", key="k", data=b"L" * 200_000)
    await kafka_broker.append(events)
    reader = kafka_broker.read("orders/>", start=StartAt(earliest=True), max_batch=100, max_bytes=120_000)
    try:
        got = await collect(reader, len(events))
    finally:
        with contextlib.suppress(RuntimeError):
            await reader.aclose()
    assert [e.id for e in got] == [e.id for e in events]


async def test_pull_bytes_wait_in_order_and_come_back() -> None:
    from meshgate.brokers.nats._pull import PullBytes

    budget = PullBytes(10)
    assert await budget.take(6) == 6
    # Larger than the whole budget: it takes all of it, once there is room.
    big = asyncio.create_task(budget.take(50))
    small = asyncio.create_task(budget.take(1))
    await asyncio.sleep(0)
    assert not big.done() and not small.done() and budget.used == 6
    budget.release(6)
    assert await big == 10 and not small.done()
    budget.release(10)
    assert await small == 1
    # A waiter that gives up takes nothing.
    gone = asyncio.create_task(budget.take(10))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    budget.release(1)
    assert budget.used == 0


_MESH = """\
event_mesh:
  regions:
    - name: here
      brokers: ["127.0.0.1:4222"]
  settings:
    limits:
{limits}
"""


def test_the_byte_bounds_are_settings() -> None:
    limits = load_config_text(_MESH.format(limits="      subscribe_buffer_bytes: 2MiB"), "mesh.yaml").settings.limits
    assert (limits.subscribe_buffer_bytes, limits.subscribe_buffer_total_bytes) == (2 * MiB, 256 * MiB)
    text = _MESH.format(limits="      subscribe_buffer_bytes: 1MiB\n      subscribe_buffer_total_bytes: 64MiB")
    limits = load_config_text(text, "mesh.yaml").settings.limits
    assert (limits.subscribe_buffer_bytes, limits.subscribe_buffer_total_bytes) == (MiB, 64 * MiB)
    # A total below one call's bytes would refuse every Subscribe.
    with pytest.raises(ConfigError) as info:
        load_config_text(_MESH.format(limits="      subscribe_buffer_total_bytes: 1MiB"), "mesh.yaml")
    assert info.value.lines == (
        "mesh.yaml:7:37: event_mesh.settings.limits.subscribe_buffer_total_bytes: subscribe_buffer_total_bytes"
        " (1048576) is below subscribe_buffer_bytes (4194304): every Subscribe would be refused; raise the total"
        " or lower the per-call bytes",
    )

"""Publish, PublishStream and Subscribe against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from meshgate.config import Limits
from meshgate.gateway import Gateway
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests.gateway._helpers import ev, read_all
from tests.gateway.conftest import GatewayFactory

ACCEPTED = event_pb2.OUTCOME_ACCEPTED
DUPLICATE = event_pb2.OUTCOME_DUPLICATE
REJECTED = event_pb2.OUTCOME_REJECTED


async def test_publish_then_subscribe_round_trip(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    sent = ev(
        "orders/created",
        b'{"n": 1}',
        id="evt-1",
        key="customer-7",
        datacontenttype="application/json",
        extensions={"tenant": "acme"},
    )
    resp = await stub.Publish(gateway_pb2.PublishRequest(events=[sent]))
    (result,) = resp.results
    assert result.outcome == ACCEPTED
    assert result.id == "evt-1"
    assert result.sequence >= 1
    assert list(result.route) == ["here", "there"]

    (got,) = await read_all(stub, "orders/>", expect=1)
    assert got.id == "evt-1"
    assert got.topic == "orders/created"
    assert got.data == b'{"n": 1}'
    assert got.key == "customer-7"
    assert got.source == "/tests"
    assert got.type == "test.event"
    assert got.specversion == "1.0"
    assert got.datacontenttype == "application/json"
    assert dict(got.extensions) == {"tenant": "acme"}
    assert got.origin == "here"
    assert list(got.route) == ["here", "there"]
    assert got.sequence == result.sequence
    assert got.HasField("time")


async def test_gateway_assigns_id_and_time(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    resp = await stub.Publish(gateway_pb2.PublishRequest(events=[ev("inventory/eu/sku-1")]))
    (result,) = resp.results
    assert result.outcome == ACCEPTED
    assert len(result.id) == 36 and result.id[14] == "7"  # a UUIDv7
    (got,) = await read_all(stub, "inventory/>", expect=1)
    assert got.id == result.id
    assert got.time.seconds > 0
    # Matches no rule naming another region: the event stays in its origin.
    assert list(got.route) == ["here"]


async def test_unmatched_topic_stays_in_origin(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    resp = await stub.Publish(gateway_pb2.PublishRequest(events=[ev("billing/paid")]))
    assert list(resp.results[0].route) == ["here"]


async def test_same_id_twice_is_absorbed(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    first = await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id="dup-1", data=b"a")]))
    second = await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id="dup-1", data=b"a")]))
    assert first.results[0].outcome == ACCEPTED
    assert second.results[0].outcome == DUPLICATE
    assert second.results[0].sequence == first.results[0].sequence
    stored = await read_all(stub, "orders/>")
    assert [e.id for e in stored] == ["dup-1"]


async def test_duplicates_absorbed_across_restart_and_replicas(make_gateway: GatewayFactory) -> None:
    factory = make_gateway
    gw1: Gateway = await factory()
    async with grpc.aio.insecure_channel(gw1.address) as ch:
        r = await gateway_pb2_grpc.GatewayStub(ch).Publish(gateway_pb2.PublishRequest(events=[ev(id="r-1")]))
        assert r.results[0].outcome == ACCEPTED
    # A second replica of the same region, running beside the first.
    gw2: Gateway = await factory()
    async with grpc.aio.insecure_channel(gw2.address) as ch:
        r2 = await gateway_pb2_grpc.GatewayStub(ch).Publish(gateway_pb2.PublishRequest(events=[ev(id="r-1")]))
        assert r2.results[0].outcome == DUPLICATE
    # Both stopped, then a fresh gateway process state: the memory is the broker's.
    await gw1.stop()
    await gw2.stop()
    gw3: Gateway = await factory()
    async with grpc.aio.insecure_channel(gw3.address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        r3 = await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id="r-1")]))
        assert r3.results[0].outcome == DUPLICATE
        assert [e.id for e in await read_all(stub, "orders/>")] == ["r-1"]


async def test_publish_batch_one_outcome_per_event(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    events = [ev(id=f"b-{i}", key="k", data=str(i).encode()) for i in range(50)]
    resp = await stub.Publish(gateway_pb2.PublishRequest(events=events, batch_id=9))
    assert resp.batch_id == 9
    assert [r.id for r in resp.results] == [f"b-{i}" for i in range(50)]
    seqs = [r.sequence for r in resp.results]
    assert all(r.outcome == ACCEPTED for r in resp.results)
    assert seqs == sorted(seqs) and len(set(seqs)) == 50


async def test_publish_stream_batches_acks_in_order(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    n_batches, per_batch = 40, 50

    async def requests() -> AsyncIterator[gateway_pb2.PublishRequest]:
        for b in range(n_batches):
            yield gateway_pb2.PublishRequest(
                batch_id=b,
                events=[ev(id=f"s-{b}-{i}", key=f"k{i % 3}", data=f"{b}:{i}".encode()) for i in range(per_batch)],
            )

    responses = [r async for r in stub.PublishStream(requests())]
    assert [r.batch_id for r in responses] == list(range(n_batches))
    assert all(res.outcome == ACCEPTED for r in responses for res in r.results)
    stored = await read_all(stub, "orders/>", expect=n_batches * per_batch)
    assert len(stored) == n_batches * per_batch
    # Per key, the log holds events in the order they were sent.
    for k in ("k0", "k1", "k2"):
        order = [e.data.decode() for e in stored if e.key == k]
        sent = [f"{b}:{i}" for b in range(n_batches) for i in range(per_batch) if f"k{i % 3}" == k]
        assert order == sent


async def test_publish_stream_rejects_bad_event_and_keeps_the_rest(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    async def requests() -> AsyncIterator[gateway_pb2.PublishRequest]:
        yield gateway_pb2.PublishRequest(
            batch_id=1, events=[ev(id="ok-1"), ev("bad//topic", id="bad-1"), ev(id="ok-2")]
        )

    (resp,) = [r async for r in stub.PublishStream(requests())]
    outcomes = [(r.id, r.outcome) for r in resp.results]
    assert outcomes == [("ok-1", ACCEPTED), ("bad-1", REJECTED), ("ok-2", ACCEPTED)]
    bad = resp.results[1]
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "level 2 is empty" in bad.message
    assert sorted(e.id for e in await read_all(stub, "orders/>")) == ["ok-1", "ok-2"]


async def test_publish_stream_backpressure_bounds_inflight(make_gateway: GatewayFactory) -> None:
    factory = make_gateway
    # A tiny per-stream bound: the gateway must never hold more than it, yet all events land.
    limits = Limits(max_inflight_events_per_stream=20, max_batch_events=10)
    gw: Gateway = await factory(limits=limits)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, gw.budget.used)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)

        async def requests() -> AsyncIterator[gateway_pb2.PublishRequest]:
            for b in range(100):
                yield gateway_pb2.PublishRequest(batch_id=b, events=[ev(id=f"bp-{b}-{i}") for i in range(10)])

        acked = sum([len(r.results) async for r in stub.PublishStream(requests())])
        watcher.cancel()
        assert acked == 1000
        assert 0 < peak <= 20
        assert len(await read_all(stub, "orders/>", expect=1000)) == 1000


async def test_subscribe_positions(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    resp = await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id=f"p-{i}") for i in range(5)]))
    seqs = [r.sequence for r in resp.results]

    async def first_batch(req: gateway_pb2.SubscribeRequest, n: int) -> list[str]:
        call = stub.Subscribe(req)
        got: list[str] = []
        async for r in call:
            got.extend(e.id for e in r.events)
            if len(got) >= n:
                break
        call.cancel()
        return got

    by_seq = gateway_pb2.SubscribeRequest(pattern="orders/*", start_sequence=seqs[3])
    assert await first_batch(by_seq, 2) == ["p-3", "p-4"]
    earliest = gateway_pb2.SubscribeRequest(pattern="orders/*", position=gateway_pb2.START_POSITION_EARLIEST)
    assert await first_batch(earliest, 5) == [f"p-{i}" for i in range(5)]
    # By time: everything stored from a minute ago.
    ts = Timestamp()
    ts.GetCurrentTime()
    ts.seconds -= 60
    assert await first_batch(gateway_pb2.SubscribeRequest(pattern="orders/*", start_time=ts), 5) == [
        f"p-{i}" for i in range(5)
    ]
    # Latest: only what comes after the subscription started.
    call = stub.Subscribe(gateway_pb2.SubscribeRequest(pattern="orders/*", position=gateway_pb2.START_POSITION_LATEST))
    it = call.__aiter__()
    nxt = asyncio.ensure_future(it.__anext__())
    await asyncio.sleep(0.3)  # let the subscription reach the broker before publishing
    await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id="late")]))
    got = await asyncio.wait_for(nxt, 10)
    assert [e.id for e in got.events] == ["late"]
    call.cancel()


async def test_subscribe_pattern_levels(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    topics = ["orders/created", "orders/a/b", "orders", "inventory/x"]
    await stub.Publish(gateway_pb2.PublishRequest(events=[ev(t, id=t) for t in topics]))
    one_level = await read_all(stub, "orders/*")
    deep = await read_all(stub, "orders/>")
    assert [e.topic for e in one_level] == ["orders/created"]
    assert sorted(e.topic for e in deep) == ["orders/a/b", "orders/created"]


@pytest.mark.parametrize("pattern", ["", "orders//x", "a/>/b", "x" * 65])
async def test_subscribe_bad_pattern(stub: gateway_pb2_grpc.GatewayAsyncStub, pattern: str) -> None:
    call = stub.Subscribe(gateway_pb2.SubscribeRequest(pattern=pattern))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details()


async def test_subscribe_responses_fit_a_default_grpc_client(make_gateway: GatewayFactory) -> None:
    # 12 events of 900 kB: one batch of them is ~10 MB, over the 4 MiB a default gRPC client takes.
    gw: Gateway = await make_gateway(limits=Limits(max_data_bytes=1024 * 1024, max_batch_events=100))
    async with grpc.aio.insecure_channel(gw.address) as ch:
        await _subscribe_big_events(gateway_pb2_grpc.GatewayStub(ch))


async def _subscribe_big_events(stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
    for part in range(4):
        resp = await stub.Publish(
            gateway_pb2.PublishRequest(events=[ev(id=f"big-{part}-{i}", data=b"x" * 900_000) for i in range(3)])
        )
        assert all(r.outcome == ACCEPTED for r in resp.results)
    call = stub.Subscribe(
        gateway_pb2.SubscribeRequest(pattern="orders/>", position=gateway_pb2.START_POSITION_EARLIEST, max_batch=100)
    )
    got: list[str] = []
    async for r in call:
        assert r.ByteSize() < 4 * 1024 * 1024
        got.extend(e.id for e in r.events)
        if len(got) >= 12:
            break
    call.cancel()
    assert got == [f"big-{p}-{i}" for p in range(4) for i in range(3)]

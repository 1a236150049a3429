"""Limits: sizes, streams and rate per client, each refused RESOURCE_EXHAUSTED naming the limit; bounded Subscribe."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest

from meshgate.brokers import RawBatch
from meshgate.brokers.embedded import EmbeddedNats
from meshgate.brokers.nats import NatsBroker
from meshgate.config import Limits, MeshConfig, RouteRule
from meshgate.gateway import Gateway
from meshgate.gateway._limits import ClientRates, ClientStreams
from meshgate.v1 import admin_pb2, admin_pb2_grpc, event_pb2, gateway_pb2, gateway_pb2_grpc
from tests._wait import eventually
from tests.e2e._mesh import free_port
from tests.gateway._helpers import (
    nats_region,
    rpc_error,
    running_gateway,
    started_gateways,
    stored,
    stream_error,
    two_region_mesh,
)
from tests.security._tokens import AUDIT_TOKEN, ORDERS_TOKEN, connect, ev, token_env, write_mesh

__all__ = ["token_env", "write_mesh"]  # fixtures used by name below

_ACCEPTED = event_pb2.OUTCOME_ACCEPTED
_REJECTED = event_pb2.OUTCOME_REJECTED
_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


# --- sizes: enforced by gRPC itself from settings.limits ---------------------------------------

_SMALL = "      max_data_bytes: 16KiB\n      max_message_bytes: 64KiB\n      max_metadata_bytes: 8KiB\n"


def _nats_stream(gw: Gateway) -> str:
    """The JetStream stream of a NATS region's gateway."""
    assert isinstance(gw.broker, NatsBroker), gw.broker
    return gw.broker.settings.stream


async def test_message_and_metadata_sizes(write_mesh: Any, tmp_path: Path) -> None:
    async with running_gateway(write_mesh(limits=_SMALL), tmp_path) as gw:
        before = await stored(gw)
        async with connect(gw, ORDERS_TOKEN) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            big = [ev(data=b"x" * 10_000, id=f"big-{i}") for i in range(8)]
            err = await rpc_error(stub.Publish(gateway_pb2.PublishRequest(events=big)))
            assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert re.fullmatch(r".*[Rr]eceived message larger than max \(\d+ vs\. 65536\)", err.details() or ""), err
            # Half of it fits.
            ok = await stub.Publish(gateway_pb2.PublishRequest(events=big[:4]))
            assert [r.outcome for r in ok.results] == [_ACCEPTED] * 4
            # Metadata: refused every time past the limit (soft and hard limits alike), not at random.
            for _ in range(5):
                err = await rpc_error(
                    stub.Publish(gateway_pb2.PublishRequest(events=[ev()]), metadata=(("x-pad", "p" * 9000),))
                )
                assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert re.search(r"metadata size exceeds hard limit \(.*\b\d+ vs\. 8192\)", err.details() or ""), err
            ok = await stub.Publish(
                gateway_pb2.PublishRequest(events=[ev(id="small-md")]), metadata=(("x-pad", "p" * 2000),)
            )
            assert ok.results[0].outcome == _ACCEPTED
        assert await stored(gw) == before + 5

        # The command a person runs names the setting behind gRPC's words.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshgate", "publish", "-g", gw.address, "orders/big", "y" * 100_000,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"MESHGATE_TOKEN": ORDERS_TOKEN, "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        out, errtext = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 1, (out, errtext)
        line = errtext.decode().strip().splitlines()[-1]
        assert line.startswith("error: RESOURCE_EXHAUSTED: ") and line.endswith(
            "vs. 65536) (the gateway's settings.limits.max_message_bytes; send smaller batches)"
        ), line
        assert ORDERS_TOKEN not in (out + errtext).decode()


# --- streams per client ------------------------------------------------------------------------


async def test_streams_per_client(write_mesh: Any, tmp_path: Path) -> None:
    path = write_mesh(limits="      max_streams_per_client: 2\n")
    async with running_gateway(path, tmp_path) as gw:
        orders, auditor = connect(gw, ORDERS_TOKEN), connect(gw, AUDIT_TOKEN)
        try:
            stub = gateway_pb2_grpc.GatewayStub(orders)
            subs = [stub.Subscribe(gateway_pb2.SubscribeRequest(pattern="orders/>")) for _ in range(2)]
            await eventually(lambda: gw.client_streams.count("orders-service") == 2, 10, what="two streams open")
            message = (
                "client 'orders-service' already has 2 streams open (PublishStream and Subscribe calls);"
                " max_streams_per_client is 2: close one, or send more batches on one stream"
            )
            err = await stream_error(stub.Subscribe(gateway_pb2.SubscribeRequest(pattern="orders/>")))
            assert (err.code(), err.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, message)
            # Refused as it opens; nothing written on it (see test_auth: grpc/grpc#36066).
            err = await stream_error(stub.PublishStream())
            assert (err.code(), err.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, message)
            # Unary calls are not streams; another client has its own count.
            ok = await stub.Publish(gateway_pb2.PublishRequest(events=[ev()]))
            assert ok.results[0].outcome == _ACCEPTED
            other = gateway_pb2_grpc.GatewayStub(auditor).Subscribe(gateway_pb2.SubscribeRequest(pattern="audit/>"))
            await eventually(lambda: gw.client_streams.count("auditor") == 1, 10, what="the auditor's stream")
            # A closed stream gives its slot back.
            subs[0].cancel()
            await eventually(lambda: gw.client_streams.count("orders-service") == 1, 10, what="a slot given back")
            answers = [r async for r in stub.PublishStream(_one_batch())]
            assert answers[0].results[0].outcome == _ACCEPTED
            other.cancel()
            subs[1].cancel()
            await eventually(lambda: not gw.client_streams.count("orders-service"), 10, what="all slots back")
        finally:
            await orders.close()
            await auditor.close()


async def _one_batch() -> AsyncIterator[gateway_pb2.PublishRequest]:
    yield gateway_pb2.PublishRequest(events=[ev()], batch_id=1)


async def test_without_tokens_streams_are_counted_per_ip_address(make_limits_gateway: Any) -> None:
    gw: Gateway = await make_limits_gateway(Limits(max_streams_per_client=1))
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        sub = stub.Subscribe(gateway_pb2.SubscribeRequest(pattern="orders/>"))
        await eventually(lambda: gw.client_streams.count("127.0.0.1") == 1, 10, what="one stream open")
        # Another connection from the same address is the same client.
        async with grpc.aio.insecure_channel(gw.address) as ch2:
            err = await stream_error(gateway_pb2_grpc.GatewayStub(ch2).PublishStream())
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (err.details() or "").startswith("client at 127.0.0.1 already has 1 streams open")
        sub.cancel()


@pytest.fixture
async def make_limits_gateway(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Any]:
    async with started_gateways() as start:

        async def make(limits: Limits) -> Gateway:
            config = MeshConfig(
                regions=(nats_region("here", nats_server, "127.0.0.1:0"),),
                routing=(RouteRule(index=0, topic="orders/>", regions=("here",)),),
            )
            from dataclasses import replace

            config = replace(config, settings=replace(config.settings, limits=limits))
            return await start(config=config, region="here", data_dir=tmp_path, replicate=False)

        yield make


# --- rate per client ---------------------------------------------------------------------------

_RATE = re.compile(
    r"client 'orders-service' is over client_rate of 5 events/s \(client_burst 10\): a batch of (\d+) events needs"
    r" (\d+) available, (\d+) are; retry in (\d+\.\d\d) s, or send less"
)


async def test_client_rate(write_mesh: Any, tmp_path: Path) -> None:
    path = write_mesh(limits="      client_rate: 5\n      client_burst: 10\n")
    async with running_gateway(path, tmp_path) as gw:
        async with connect(gw, ORDERS_TOKEN) as ch, connect(gw, AUDIT_TOKEN) as ch2:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            ok = await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id=f"r-{i}") for i in range(10)]))
            assert [r.outcome for r in ok.results] == [_ACCEPTED] * 10
            before = await stored(gw)
            err = await rpc_error(
                stub.Publish(gateway_pb2.PublishRequest(events=[ev(id=f"over-{i}") for i in range(8)]))
            )
            assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            m = _RATE.fullmatch(err.details() or "")
            assert m is not None, err.details()
            assert m.group(1) == "8" and m.group(2) == "8" and int(m.group(3)) < 8 and 0 < float(m.group(4)) <= 1.6
            # A stream's batch over the rate is answered per event, RESOURCE_EXHAUSTED.
            answers = [r async for r in stub.PublishStream(_batches([[ev(id=f"so-{i}") for i in range(9)]]))]
            assert {(r.outcome, r.code) for r in answers[0].results} == {(_REJECTED, _RESOURCE_EXHAUSTED)}
            assert _RATE.fullmatch(answers[0].results[0].message), answers[0].results[0].message
            assert await stored(gw) == before
            # Another client has its own bucket.
            ok = await gateway_pb2_grpc.GatewayStub(ch2).Publish(
                gateway_pb2.PublishRequest(events=[ev("audit/x", id=f"a-{i}") for i in range(10)])
            )
            assert [r.outcome for r in ok.results] == [_ACCEPTED] * 10
        rate_limited = gw.metrics.registry.get_sample_value(
            "meshgate_events_refused_total", {"region": "here", "reason": "rate_limited"}
        )
        assert rate_limited == 8 + 9


async def _batches(batches: list[list[event_pb2.Event]]) -> AsyncIterator[gateway_pb2.PublishRequest]:
    for i, events in enumerate(batches, start=1):
        yield gateway_pb2.PublishRequest(events=events, batch_id=i)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_arithmetic() -> None:
    clock = _Clock()
    limits = Limits(client_rate=10.0)
    rates = ClientRates(lambda: limits, clock=clock)
    assert rates.take("a", "client 'a'", 10) is None  # the bucket starts full: one second of the rate
    refusal = rates.take("a", "client 'a'", 1)
    assert refusal == (
        "client 'a' is over client_rate of 10 events/s (client_burst 10): a batch of 1 events needs 1 available,"
        " 0 are; retry in 0.10 s, or send less"
    )
    assert rates.take("b", "client 'b'", 10) is None  # a bucket per client
    clock.now += 0.15
    assert rates.take("a", "client 'a'", 1) is None
    clock.now += 100
    assert rates.take("a", "client 'a'", 10) is None and rates.take("a", "client 'a'", 1) is not None  # capped
    # A batch larger than the bucket goes through when it is full, and is paid back before the next.
    clock.now += 100
    assert rates.take("a", "client 'a'", 25) is None
    clock.now += 1.5
    assert rates.take("a", "client 'a'", 1) is not None  # level 0 after 1.5 s
    clock.now += 0.15
    assert rates.take("a", "client 'a'", 1) is None
    # The limits are read at each call: a reload that turns the rate off lets everything through.
    limits = Limits()
    assert all(rates.take("a", "client 'a'", 1000) is None for _ in range(10))


def test_client_streams_count_and_release() -> None:
    streams = ClientStreams(lambda: Limits(max_streams_per_client=2))
    assert streams.open("a", "client 'a'") is None and streams.open("a", "client 'a'") is None
    assert streams.open("a", "client 'a'") is not None
    assert streams.count("a") == 2 and streams.open("b", "client 'b'") is None
    streams.close("a")
    assert streams.open("a", "client 'a'") is None
    for _ in range(3):
        streams.close("a")
    assert streams.count("a") == 0


# --- Subscribe: a slow reader pauses the broker read ------------------------------------------


async def test_a_subscriber_that_does_not_read_keeps_the_gateway_buffer_bounded(
    make_limits_gateway: Any, nats_server: EmbeddedNats
) -> None:
    buffer_events = 200
    gw: Gateway = await make_limits_gateway(Limits(max_data_bytes=8192, subscribe_buffer_events=buffer_events))
    backlog = 4000
    payload = b"p" * 4000
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        for start in range(0, backlog, 100):
            resp = await stub.Publish(
                gateway_pb2.PublishRequest(
                    events=[ev(f"orders/n{i % 7}", data=payload, id=f"bk-{i:05d}") for i in range(start, start + 100)]
                )
            )
            assert all(r.outcome == _ACCEPTED for r in resp.results)
        # Asks for batches of 5000: a batch is at most half of subscribe_buffer_events.
        call = stub.Subscribe(
            gateway_pb2.SubscribeRequest(
                pattern="orders/>", position=gateway_pb2.START_POSITION_EARLIEST, max_batch=5000
            )
        )
        first = await asyncio.wait_for(call.read(), 30)
        assert isinstance(first, gateway_pb2.SubscribeResponse) and len(first.events) == buffer_events // 2
        buf = next(iter(gw.subscriptions.live))
        # The client reads nothing more: the gateway ends up waiting on gRPC with the same count sent.
        seen: list[int] = []

        def stalled() -> bool:
            seen.append(buf.sent)
            return buf.waiting and len(seen) >= 4 and len(set(seen[-4:])) == 1

        await eventually(stalled, 60, interval=0.25, what="the Subscribe call to wait on its client")
        # What the broker has handed this call, from JetStream's own books.
        nc = await nats.connect(nats_server.url)
        try:
            infos = await nc.jetstream().consumers_info(_nats_stream(gw))
        finally:
            await nc.close()
        readers = [i for i in infos if i.name.startswith("mg-read-")]
        assert len(readers) == 1, [i.name for i in readers]
        assert readers[0].delivered is not None
        delivered = readers[0].delivered.consumer_seq
        # Held in the gateway (read from the broker, not taken by gRPC), its prefetch included:
        assert delivered - buf.sent <= buffer_events, (delivered, buf.sent)
        assert buf.high_water <= buffer_events // 2 and buf.held <= buffer_events // 2
        assert gw.metrics.registry.get_sample_value("meshgate_subscribe_buffered_events", {"region": "here"}) == (
            buf.held
        )
        # The broker still holds the rest for this reader: it was not read ahead into memory.
        pending = readers[0].num_pending
        assert pending is not None and pending >= backlog - buf.sent - buffer_events > 0, (pending, buf.sent)

        # Reading again delivers everything, once, in order.
        ids = [e.id for e in first.events]
        while len(ids) < backlog:
            more = await asyncio.wait_for(call.read(), 30)
            assert isinstance(more, gateway_pb2.SubscribeResponse)
            ids.extend(e.id for e in more.events)
        call.cancel()
        assert ids == [f"bk-{i:05d}" for i in range(backlog)]
        assert buf.high_water <= buffer_events // 2


# --- replication requests fit the destination's max_message_bytes ------------------------------


def test_split_by_bytes() -> None:
    # What a link sends is a RawBatch; each request of it fits the destination's max_message_bytes.
    sizes = [30_000] * 5 + [200_000, 10]
    batch = RawBatch(
        ids=[f"x{i}" for i in range(len(sizes))],
        topics=["orders/x"] * len(sizes),
        sequences=list(range(1, len(sizes) + 1)),
        headers=[b"ce-id: x\r\n"] * len(sizes),
        data=[b"d" * n for n in sizes],
    )
    parts = batch.split(100_000)
    assert [len(p) for p in parts] == [3, 2, 1, 1]
    assert [s for p in parts for s in p.sequences] == batch.sequences


async def test_a_link_splits_batches_to_fit_the_destinations_max_message_bytes(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    limits = Limits(max_data_bytes=16 * 1024, max_message_bytes=64 * 1024)
    there_address = f"127.0.0.1:{free_port()}"
    rules = (RouteRule(index=0, topic="orders/>", regions=("here", "there")),)
    async with EmbeddedNats(data_dir=tmp_path / "there-nats") as there_server:

        def mesh() -> MeshConfig:
            from dataclasses import replace

            config = two_region_mesh(nats_server, there_server, there_gateway=there_address, routing=rules)
            return replace(config, settings=replace(config.settings, limits=limits))

        here = Gateway(config=mesh(), region="here", data_dir=tmp_path / "here")
        await here.start()
        there: Gateway | None = None
        try:
            # Published while `there` is down: the link then finds all of them at once (60 x 12 KiB,
            # one fetch of up to 500 events, far over 64 KiB).
            async with grpc.aio.insecure_channel(here.address) as ch:
                stub = gateway_pb2_grpc.GatewayStub(ch)
                for start in range(0, 60, 4):
                    await stub.Publish(
                        gateway_pb2.PublishRequest(
                            events=[
                                # One key: one partition of here's log, so one link sends them in order.
                                ev(data=b"z" * 12_000, id=f"split-{i:03d}", key="one")
                                for i in range(start, start + 4)
                            ]
                        )
                    )
            there = Gateway(config=mesh(), region="there", data_dir=tmp_path / "there", replicate=False)
            await there.start()
            async with grpc.aio.insecure_channel(here.address) as ch:
                admin = admin_pb2_grpc.AdminStub(ch)

                async def forwarded() -> admin_pb2.LinkStatus | None:
                    resp = await admin.Status(admin_pb2.StatusRequest())
                    link = resp.links[0]
                    assert "larger than max" not in link.last_error, link.last_error
                    return link if link.forwarded == 60 else None

                link = await eventually(forwarded, 60, what="60 events forwarded")
                assert link.dead_lettered == 0
            async with grpc.aio.insecure_channel(there.address) as ch:
                call = gateway_pb2_grpc.GatewayStub(ch).Subscribe(
                    gateway_pb2.SubscribeRequest(pattern="orders/>", position=gateway_pb2.START_POSITION_EARLIEST)
                )
                ids: list[str] = []
                while len(ids) < 60:
                    resp = await asyncio.wait_for(call.read(), 30)
                    assert isinstance(resp, gateway_pb2.SubscribeResponse)
                    ids.extend(e.id for e in resp.events)
                call.cancel()
            assert ids == [f"split-{i:03d}" for i in range(60)]
        finally:
            await here.stop(grace=1.0)
            if there is not None:
                await there.stop(grace=1.0)

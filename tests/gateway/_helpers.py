"""Small helpers the gateway tests share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import pytest

from meshgate.brokers import SequencedLog, header_lines
from meshgate.brokers.embedded import EmbeddedNats
from meshgate.config import BrokerKind, MeshConfig, RegionConfig, load_config
from meshgate.gateway import Gateway
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc, replication_pb2
from tests._replication import SECURITY


def ev(topic: str = "orders/created", data: bytes = b"{}", **fields: Any) -> event_pb2.Event:
    fields.setdefault("source", "/tests")
    fields.setdefault("type", "test.event")
    return event_pb2.Event(topic=topic, data=data, **fields)


async def read_all(
    stub: gateway_pb2_grpc.GatewayAsyncStub,
    pattern: str = ">",
    *,
    expect: int | None = None,
    idle: float = 0.5,
    max_batch: int = 0,
) -> list[event_pb2.Event]:
    """Every stored event of a pattern, from the earliest; stops when `expect` arrived or the
    log stays quiet for `idle` seconds (the stream itself never ends)."""
    call = stub.Subscribe(
        gateway_pb2.SubscribeRequest(pattern=pattern, position=gateway_pb2.START_POSITION_EARLIEST, max_batch=max_batch)
    )
    out: list[event_pb2.Event] = []
    it = call.__aiter__()
    try:
        while expect is None or len(out) < expect:
            try:
                resp = await asyncio.wait_for(it.__anext__(), idle)
            except (TimeoutError, StopAsyncIteration):
                break
            out.extend(resp.events)
    finally:
        call.cancel()
    return out


def as_raw(events: Sequence[event_pb2.Event]) -> replication_pb2.RawEvents:
    """Events a source forwards (``sequence``: the place in its log) as its broker stored them:
    the ``raw`` form a link sends."""
    return replication_pb2.RawEvents(
        ids=[e.id for e in events],
        topics=[e.topic for e in events],
        sequences=[e.sequence for e in events],
        headers=[header_lines(e) for e in events],
        data=[e.data for e in events],
    )


def nats_region(name: str, server: EmbeddedNats, gateway: str) -> RegionConfig:
    """Region ``name`` keeping its log on the test's nats-server, its gateway at ``gateway``."""
    url = urlparse(server.url)
    return RegionConfig(name=name, kind=BrokerKind.NATS, brokers=(f"{url.hostname}:{url.port}",), gateway=gateway)


def two_region_mesh(
    here: EmbeddedNats, there: EmbeddedNats, *, there_gateway: str = "127.0.0.1:0", **mesh: Any
) -> MeshConfig:
    """Regions `here` and `there`, each on its own nats-server; `there`'s gateway at ``there_gateway``.
    Replication is authenticated by the suite's secret unless ``security`` says otherwise."""
    mesh.setdefault("security", SECURITY)
    return MeshConfig(
        regions=(nats_region("here", here, "127.0.0.1:0"), nats_region("there", there, there_gateway)), **mesh
    )


async def rpc_error(awaitable: Any) -> grpc.aio.AioRpcError:
    """The error a unary call ends with (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await awaitable
    return err.value


async def stream_error(call: Any) -> grpc.aio.AioRpcError:
    """The error a streaming call ends with, read to its end (the test fails if it ends well)."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    return err.value


@contextlib.asynccontextmanager
async def started_gateways() -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    """``await start(**gateway_kwargs)``: a started Gateway; every one started is stopped at the end."""
    started: list[Gateway] = []

    async def start(**kwargs: Any) -> Gateway:
        gw = Gateway(**kwargs)
        await gw.start()
        started.append(gw)
        return gw

    try:
        yield start
    finally:
        for gw in started:
            await gw.stop(grace=1.0)


@contextlib.asynccontextmanager
async def running_gateway(path: Path, data_dir: Path, **kwargs: Any) -> AsyncIterator[Gateway]:
    """Region `here` of the mesh file ``path``, started; reloads happen only when a test asks."""
    gw = Gateway(
        config=load_config(path),
        region="here",
        data_dir=data_dir,
        listen="127.0.0.1:0",
        config_path=path,
        watch_config=False,
        **kwargs,
    )
    try:
        await gw.start()
        yield gw
    finally:
        await gw.stop(grace=1.0)


async def stored(gw: Gateway) -> int:
    """How many events the region's log holds (a NATS region: one stream numbered from 1)."""
    broker = gw.broker
    assert isinstance(broker, SequencedLog)
    return await broker.last_sequence()

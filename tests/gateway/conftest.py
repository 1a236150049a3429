"""Gateways in this process on a real nats-server (the root `nats_server` fixture)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import pytest

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.config import BrokerKind, Limits, MeshConfig, RegionConfig, RouteRule, Settings
from meshgate.gateway import Gateway
from meshgate.v1 import admin_pb2_grpc, gateway_pb2_grpc
from tests._replication import SECURITY
from tests.gateway._helpers import started_gateways


def mesh_for(server: EmbeddedNats, *, limits: Limits | None = None, stream: str = "MESHGATE") -> MeshConfig:
    """Two regions; `here` keeps its log on the test's nats-server."""
    from meshgate.config import NatsSettings

    url = urlparse(server.url)
    return MeshConfig(
        regions=(
            RegionConfig(
                name="here",
                kind=BrokerKind.NATS,
                brokers=(f"{url.hostname}:{url.port}",),
                gateway="127.0.0.1:0",
                nats=NatsSettings(stream=stream),
            ),
            RegionConfig(name="there", kind=BrokerKind.NATS, brokers=("127.0.0.1:1",), gateway="127.0.0.1:0"),
        ),
        routing=(
            RouteRule(index=0, topic="orders/*", regions=("here", "there")),
            RouteRule(index=1, topic="inventory/>", regions=("here",)),
        ),
        settings=Settings(limits=limits or Limits(max_data_bytes=4096, max_batch_events=100)),
        security=SECURITY,
    )


GatewayFactory = Callable[..., Any]


@pytest.fixture
async def make_gateway(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    async with started_gateways() as start:

        async def factory(*, limits: Limits | None = None, **kwargs: Any) -> Gateway:
            config = kwargs.pop("config", None) or mesh_for(nats_server, limits=limits)
            return await start(config=config, region="here", data_dir=tmp_path, **kwargs)

        yield factory


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    gw: Gateway = await make_gateway()
    return gw


@pytest.fixture
async def channel(gateway: Gateway) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(gateway.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> gateway_pb2_grpc.GatewayAsyncStub:
    return gateway_pb2_grpc.GatewayStub(channel)


@pytest.fixture
def admin(channel: grpc.aio.Channel) -> admin_pb2_grpc.AdminAsyncStub:
    return admin_pb2_grpc.AdminStub(channel)

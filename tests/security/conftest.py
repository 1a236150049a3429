"""Security test fixtures: one PKI per test session (made with ``meshgate.tls``), TLS gateways in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.config import (
    BrokerKind,
    MeshConfig,
    NatsSettings,
    RegionConfig,
    RegionTls,
    RouteRule,
    SecuritySettings,
)
from meshgate.gateway import Gateway
from tests.gateway._helpers import started_gateways
from tests.security._pki import Pki

# Regions of the in-process mesh; "elsewhere" has a certificate of the CA but is not in the mesh.
HERE, THERE, THIRD, ELSEWHERE = "here", "there", "third", "elsewhere"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The mesh CA, a certificate per region (and for one region outside the mesh), a client's."""
    pki = Pki(tmp_path_factory.mktemp("pki"))
    pki.regions([HERE, THERE, THIRD, ELSEWHERE])
    pki.client()
    return pki


@pytest.fixture(scope="session")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA, with a certificate that names region `there` as well."""
    rogue = Pki(tmp_path_factory.mktemp("rogue"))
    rogue.regions([THERE])
    return rogue


def tls_mesh(server: EmbeddedNats, pki: Pki, *, gateways: dict[str, str] | None = None) -> MeshConfig:
    """Three regions with TLS; `here` keeps its log on the test's nats-server."""
    url = urlparse(server.url)
    addresses = {HERE: "127.0.0.1:0", THERE: "127.0.0.1:1", THIRD: "127.0.0.1:2", **(gateways or {})}

    def region(name: str, **kwargs: Any) -> RegionConfig:
        return RegionConfig(
            name=name,
            kind=BrokerKind.NATS,
            gateway=addresses[name],
            tls=RegionTls(cert=pki.cert(name), key=pki.key(name)),
            **kwargs,
        )

    return MeshConfig(
        regions=(
            region(HERE, brokers=(f"{url.hostname}:{url.port}",), nats=NatsSettings()),
            region(THERE, brokers=("127.0.0.1:1",)),
            region(THIRD, brokers=("127.0.0.1:1",)),
        ),
        routing=(RouteRule(index=0, topic="orders/*", regions=(HERE, THERE, THIRD)),),
        security=SecuritySettings(ca=pki.ca_path),
    )


TlsGatewayFactory = Callable[..., Any]


@pytest.fixture
async def make_tls_gateway(nats_server: EmbeddedNats, pki: Pki, tmp_path: Path) -> AsyncIterator[TlsGatewayFactory]:
    """``await make_tls_gateway(**gateway_kwargs)``: region `here` with TLS on, started; stopped after the test."""
    async with started_gateways() as start:

        async def factory(*, gateways: dict[str, str] | None = None, **kwargs: Any) -> Gateway:
            config = kwargs.pop("config", None) or tls_mesh(nats_server, pki, gateways=gateways)
            return await start(config=config, region=HERE, data_dir=tmp_path, **kwargs)

        yield factory


# The e2e hook that records a failed test, so a failed mesh test prints its regions' logs.
from tests.e2e.conftest import clusters_of, pytest_runtest_makereport  # noqa: E402, F401
from tests.security._mesh import TlsMeshCluster  # noqa: E402


@pytest.fixture
async def make_tls_mesh(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Any]]:
    """``await make_tls_mesh(regions, routing, **options)``: a started ``TlsMeshCluster``."""
    async for factory in clusters_of(TlsMeshCluster, tmp_path, request):
        yield factory

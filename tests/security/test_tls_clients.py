"""Clients of a gateway with TLS on, with client tokens too: the CLI's channel, and a peer that
replicates with its region certificate and no token."""

from __future__ import annotations

import argparse
import dataclasses

import grpc
import pytest

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.cli._client import channel
from meshgate.config import ClientToken
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests.gateway._helpers import ev
from tests.security._pki import Pki
from tests.security.conftest import HERE, THERE, TlsGatewayFactory, tls_mesh
from tests.security.test_replicate_ingress import events, replicate

TOKEN = "t0ken-for-the-orders-service-0123456789"


def cli_args(pki: Pki, *, cert: bool = True) -> argparse.Namespace:
    return argparse.Namespace(
        ca=str(pki.ca_path),
        cert=str(pki.cert("client")) if cert else None,
        cert_key=str(pki.key("client")) if cert else None,
        server_name=None,
    )


@pytest.fixture
def clear_tls_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MESHGATE_CA", "MESHGATE_CERT", "MESHGATE_KEY", "MESHGATE_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clear_tls_env")
async def test_tokens_and_tls_together(
    make_tls_gateway: TlsGatewayFactory, nats_server: EmbeddedNats, pki: Pki
) -> None:
    base = tls_mesh(nats_server, pki)
    security = dataclasses.replace(
        base.security, tokens=(ClientToken(name="orders", token=TOKEN, publish=("orders/>",), subscribe=(">",)),)
    )
    gw = await make_tls_gateway(config=dataclasses.replace(base, security=security), replicate=False)
    request = gateway_pb2.PublishRequest(events=[ev("orders/created", id="c-1")])

    # The CLI's channel: TLS files from its options, the token on every call.
    async with channel(gw.address, cli_args(pki), token=TOKEN) as ch:
        resp = await gateway_pb2_grpc.GatewayStub(ch).Publish(request)
    assert resp.results[0].outcome == event_pb2.OUTCOME_ACCEPTED
    # TLS but no token: the token check refuses; no client certificate: the handshake does.
    async with channel(gw.address, cli_args(pki)) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await gateway_pb2_grpc.GatewayStub(ch).Publish(request)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    async with channel(gw.address, cli_args(pki, cert=False), token=TOKEN) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await gateway_pb2_grpc.GatewayStub(ch).Publish(request)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE

    # A peer needs no token: its region certificate is its credential.
    async with pki.channel(gw.address, THERE, server_name=HERE) as ch:
        assert await replicate(ch, THERE, events(THERE, [1])) == [[event_pb2.OUTCOME_ACCEPTED]]


async def test_the_cli_channel_takes_its_tls_files_from_the_environment(
    make_tls_gateway: TlsGatewayFactory, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = await make_tls_gateway(replicate=False)
    monkeypatch.setenv("MESHGATE_CA", str(pki.ca_path))
    monkeypatch.setenv("MESHGATE_CERT", str(pki.cert("client")))
    monkeypatch.setenv("MESHGATE_KEY", str(pki.key("client")))
    # Dialled as localhost, verified against the name the certificate carries for it.
    async with channel(gw.address.replace("127.0.0.1", "localhost"), None) as ch:
        resp = await gateway_pb2_grpc.GatewayStub(ch).Publish(
            gateway_pb2.PublishRequest(events=[ev("orders/created", id="c-2")])
        )
    assert resp.results[0].outcome == event_pb2.OUTCOME_ACCEPTED
    monkeypatch.setenv("MESHGATE_KEY", str(pki.key(THERE)))
    with pytest.raises(SystemExit, match="is not the key of the certificate"):
        channel(gw.address, None)

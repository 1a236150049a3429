"""With TLS on, the gRPC port wants a client certificate; the HTTP probes on the metrics address do not."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2

from meshgate.gateway import HEALTHZ_PATH, READYZ_PATH, Gateway
from tests._health import async_health_stub
from tests.gateway.test_probes import get
from tests.security._pki import Pki
from tests.security.conftest import TlsGatewayFactory


async def test_probes_answer_without_a_client_certificate(make_tls_gateway: TlsGatewayFactory, pki: Pki) -> None:
    gw: Gateway = await make_tls_gateway(metrics_listen="127.0.0.1:0")
    assert gw.server_tls is not None
    # What a Kubernetes grpc probe (plaintext) or the old Docker HEALTHCHECK would do: no answer.
    async with grpc.aio.insecure_channel(gw.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await async_health_stub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    # The same health, with a client certificate of the mesh CA, says SERVING: /readyz agrees.
    async with pki.channel(gw.address, "client", server_name="here") as channel:
        reply = await async_health_stub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    for path in (READYZ_PATH, HEALTHZ_PATH):
        status, _, body = await get(gw, path)
        assert (status, body) == (200, b"ok\n"), path

"""The mesh console with TLS on: its API follows Admin's rules on a port that has no TLS of its own.

A mesh with ``security.ca`` and no client tokens lets Admin callers in by a client certificate of
the mesh CA. The console's plain-HTTP port cannot check one, so its API refuses every call and
says what to add; with an admin token in the file, the token lets a caller in as it does on gRPC.
"""

from __future__ import annotations

import dataclasses

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.config import ClientToken
from meshgate.gateway import Gateway
from tests.console.test_console_api import call
from tests.security._pki import Pki
from tests.security.conftest import TlsGatewayFactory, tls_mesh

ADMIN = "console-admin-6f1e2d3c4b5a69788796a5b4"


async def test_with_certificates_only_the_console_refuses_and_says_what_to_add(
    make_tls_gateway: TlsGatewayFactory,
) -> None:
    gw: Gateway = await make_tls_gateway(metrics_listen="127.0.0.1:0")
    assert gw.server_tls is not None
    for path in ("mesh", "explain?topic=orders/a", "deadletters", "locate?id=x"):
        status, body = await call(gw, f"/console/api/{path}")
        assert status == 403, (path, body)
        assert "add an admin client to security.tokens" in body["error"], body
    status, body = await call(gw, "/console/api/diff", method="POST", body=b"event_mesh: {}")
    assert status == 403, body


async def test_with_certificates_and_tokens_an_admin_token_lets_the_console_in(
    make_tls_gateway: TlsGatewayFactory, nats_server: EmbeddedNats, pki: Pki
) -> None:
    base = tls_mesh(nats_server, pki)
    token = ClientToken(name="ops", token=ADMIN, variable="OPS_TOKEN", admin=True)
    config = dataclasses.replace(base, security=dataclasses.replace(base.security, tokens=(token,)))
    gw: Gateway = await make_tls_gateway(config=config, metrics_listen="127.0.0.1:0")
    status, body = await call(gw, "/console/api/mesh")
    assert status == 401, body
    status, mesh = await call(gw, "/console/api/mesh", token=ADMIN)
    assert status == 200, mesh
    regions = {r["name"]: r for r in mesh["regions"]}
    assert regions["here"]["reachable"]
    # The other regions' gateways do not run: asked over mTLS, they show as not answering.
    assert not regions["there"]["reachable"] and "UNAVAILABLE" in regions["there"]["error"], regions

"""/healthz and /readyz on the metrics address: what Kubernetes and Docker probe, with TLS on or off.

Real gateways on a real nats-server; the HTTP endpoint binds port 0 (a free port) and reports it.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client import start_http_server

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.gateway import HEALTHZ_PATH, READYZ_PATH, Gateway, GatewayState
from tests.gateway.conftest import GatewayFactory

Response = tuple[int, dict[str, str], bytes]


def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Response:
    """Status, headers and body; an HTTP error status is an answer, not an exception."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


async def get(gw: Gateway, path: str, **kwargs: object) -> Response:
    # In a thread: the endpoint's /healthz needs this event loop free to answer.
    return await asyncio.to_thread(fetch, f"http://127.0.0.1:{gw.http_port}{path}", **kwargs)  # type: ignore[arg-type]


async def wait_for(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_healthz_and_readyz_while_serving(make_gateway: GatewayFactory) -> None:
    gw: Gateway = await make_gateway(metrics_listen="127.0.0.1:0")
    assert gw.http_port > 0
    for path in (HEALTHZ_PATH, READYZ_PATH):
        status, headers, body = await get(gw, path)
        assert (status, body) == (200, b"ok\n"), path
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        assert headers["Cache-Control"] == "no-store"
    status, _, body = await get(gw, READYZ_PATH, method="HEAD")
    assert (status, body) == (200, b"")


async def test_draining_is_alive_but_not_ready_then_the_endpoint_closes(make_gateway: GatewayFactory) -> None:
    gw: Gateway = await make_gateway(metrics_listen="127.0.0.1:0")
    port = gw.http_port
    # An admitted batch that never finishes keeps the gateway draining until the grace period ends.
    await gw.budget.acquire(1)
    stopping = asyncio.create_task(gw.stop(grace=30.0))
    await wait_for(lambda: gw.state is GatewayState.DRAINING, "the drain to start")
    status, _, body = await get(gw, READYZ_PATH)
    assert (status, body) == (503, b"gateway is draining\n")
    # Liveness stays up: the kubelet must not restart a pod that is finishing its work.
    assert (await get(gw, HEALTHZ_PATH))[:3:2] == (200, b"ok\n")
    gw.budget.release(1)
    await asyncio.wait_for(stopping, 30.0)
    assert gw.state is GatewayState.STOPPED
    assert gw.http_port == 0
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}{HEALTHZ_PATH}")


async def test_readyz_follows_the_broker_connection(make_gateway: GatewayFactory, nats_server: EmbeddedNats) -> None:
    gw: Gateway = await make_gateway(metrics_listen="127.0.0.1:0")
    await nats_server.stop()
    await wait_for(lambda: gw.ready() is not None, "the broker client to notice the server is gone")
    status, _, body = await get(gw, READYZ_PATH)
    assert status == 503
    assert body.startswith(b"broker client is reconnecting: reconnecting to nats://"), body
    assert (await get(gw, HEALTHZ_PATH))[0] == 200  # alive: a restart would not bring the broker back
    await nats_server.start()  # same port: the client reconnects by itself
    await wait_for(lambda: gw.ready() is None, "the broker client to reconnect")
    assert (await get(gw, READYZ_PATH))[:3:2] == (200, b"ok\n")


async def test_healthz_fails_while_the_event_loop_is_blocked(make_gateway: GatewayFactory) -> None:
    gw: Gateway = await make_gateway(metrics_listen="127.0.0.1:0")
    answered = threading.Event()
    result: list[Response] = []

    def probe() -> None:
        result.append(fetch(f"http://127.0.0.1:{gw.http_port}{HEALTHZ_PATH}"))
        answered.set()

    thread = threading.Thread(target=probe)
    thread.start()
    # Block the loop (as a stuck handler would) until the probe has its answer: no timing guess.
    assert answered.wait(30.0), "the probe got no answer while the loop was blocked"
    thread.join()
    status, _, body = result[0]
    assert status == 503
    assert body == b"the gateway's event loop did not run a callback within 1 s (blocked?)\n"
    assert (await get(gw, HEALTHZ_PATH))[0] == 200  # the loop runs again


async def test_metrics_are_served_as_prometheus_client_serves_them(make_gateway: GatewayFactory) -> None:
    """Any path but the two probes answers what start_http_server answered, byte for byte."""
    gw: Gateway = await make_gateway(metrics_listen="127.0.0.1:0")
    reference, thread = start_http_server(0, addr="127.0.0.1", registry=gw.metrics.registry)
    try:
        reference_port = reference.server_address[1]
        cases: list[tuple[str, dict[str, str]]] = [
            ("/metrics", {}),
            ("/", {}),
            ("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}),
            ("/metrics?name[]=meshgate_config_reloads_total", {}),
            ("/metrics", {"Accept-Encoding": "gzip"}),
        ]
        for path, headers in cases:
            ours = await get(gw, path, headers=headers)
            theirs = await asyncio.to_thread(fetch, f"http://127.0.0.1:{reference_port}{path}", headers)
            assert ours[0] == theirs[0] == 200, path
            for header in ("Content-Type", "Content-Encoding"):
                assert ours[1].get(header) == theirs[1].get(header), (path, headers, header)
            body, reference_body = ours[2], theirs[2]
            if ours[1].get("Content-Encoding") == "gzip":
                body, reference_body = gzip.decompress(body), gzip.decompress(reference_body)
            # Same series and help text; a value may move between the two scrapes (the links run).
            assert _without_values(body) == _without_values(reference_body), (path, headers)
        text = (await get(gw, "/metrics"))[2].decode()
        assert "meshgate_broker_connected" in text
    finally:
        reference.shutdown()
        reference.server_close()
        thread.join(5.0)


def _without_values(body: bytes) -> list[bytes]:
    """The exposition's lines with each sample's value (and timestamp) cut off."""
    return [
        line if line.startswith(b"#") else line.rsplit(b"} ", 1)[0] if b"} " in line else line.split(b" ")[0]
        for line in body.splitlines()
    ]

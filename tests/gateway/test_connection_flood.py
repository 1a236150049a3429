"""A flood of idle sockets neither takes the gateway's descriptors nor stops its publishes and probes.

The flood comes from 127.0.0.2 (Linux routes all of 127.0.0.0/8 to the loopback), the real
client from 127.0.0.1, so the per-address cap can tell them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlparse

import grpc
import pytest

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.config import Limits
from meshgate.testing import ChildProcess
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests._wait import eventually
from tests.e2e._mesh import free_port
from tests.gateway._helpers import ev
from tests.gateway.conftest import GatewayFactory

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux (/proc, 127.0.0.2 on the loopback)")

FLOOD_FROM = "127.0.0.2"
# The open-file limit of the flooded gateway (soft and hard): below the flood, so that without
# bounds the gateway runs out of descriptors.
OPEN_FILES = 600
FLOOD = 900
PER_ADDRESS = 32


def _open(host: str, port: int, n: int) -> list[socket.socket]:
    """``n`` TCP connections from FLOOD_FROM that never send a byte (non-blocking connects)."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((FLOOD_FROM, 0))
        err = s.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise OSError(err, os.strerror(err))
        socks.append(s)
    return socks


def _closed_by_server(s: socket.socket) -> bool:
    """The server ended the connection: what it sent (its HTTP/2 SETTINGS, a GOAWAY) is read, then EOF."""
    try:
        while s.recv(65536, socket.MSG_DONTWAIT):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset, or the connect itself was refused
    return True


@contextlib.contextmanager
def _flood(host: str, port: int, n: int) -> Iterator[list[socket.socket]]:
    socks = _open(host, port, n)
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def _readyz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
        return int(resp.status)


# `python -m meshgate` with the limit set by the child itself. Not a preexec_fn: that forces
# fork() in this test process, whose gRPC threads (other tests' channels) make gRPC skip its fork
# handlers, and the child could hang before exec ("meshgate serve" never serving).
_LOWERED_MESHGATE = (
    "import resource, runpy; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({OPEN_FILES}, {OPEN_FILES})); "
    "runpy.run_module('meshgate', run_name='__main__', alter_sys=True)"
)


def _serve(config: Path, data_dir: Path) -> ChildProcess:
    """``meshgate serve`` as a child whose open-file limit is OPEN_FILES (soft and hard)."""
    args = ("-c", _LOWERED_MESHGATE, "serve", "-c", str(config), "--region", "here", "--data-dir", str(data_dir))
    return ChildProcess(args=args)


@pytest.fixture
async def flooded(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[tuple[ChildProcess, int, int]]:
    """A gateway process with a low open-file limit: (the process, its gRPC port, its metrics port)."""
    url = urlparse(nats_server.url)
    port, metrics = free_port(), free_port()
    config = tmp_path / "mesh.yaml"
    config.write_text(
        f"""\
event_mesh:
  regions:
    - name: here
      kind: nats
      brokers: ["{url.hostname}:{url.port}"]
      gateway: 127.0.0.1:{port}
      metrics: 127.0.0.1:{metrics}
  settings:
    limits:
      max_connections_per_address: {PER_ADDRESS}
"""
    )
    serve = _serve(config, tmp_path / "data")
    try:
        await serve.launch(ready=re.compile(rb"gateway serving on"))
        yield serve, port, metrics
    finally:
        await serve.close(grace=15)


async def test_a_socket_flood_leaves_publishes_and_probes_working(flooded: tuple[ChildProcess, int, int]) -> None:
    serve, port, metrics = flooded
    assert await asyncio.to_thread(_readyz, metrics) == 200
    with _flood("127.0.0.1", port, FLOOD) as socks:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)

            async def published() -> bool:
                resp = await stub.Publish(
                    gateway_pb2.PublishRequest(events=[ev(id="through-the-flood")]), timeout=2, wait_for_ready=True
                )
                return [r.outcome for r in resp.results] == [event_pb2.OUTCOME_ACCEPTED]

            await eventually(published, 30, interval=0.5, what="a publish during the flood")
        assert await eventually(lambda: asyncio.to_thread(_readyz, metrics), 30, what="/readyz during the flood") == 200
        # The flood's sockets are closed by the gateway (per-address cap, handshake timeout, cap at accept).
        await eventually(
            lambda: sum(_closed_by_server(s) for s in socks) == len(socks),
            40,
            interval=0.5,
            what=f"the gateway closing all {FLOOD} idle sockets",
        )
    text = serve.text()
    cap = OPEN_FILES - 256
    assert f"max_connections 4096 lowered to {cap}" in text, text[-3000:]
    assert f"limits.max_connections is {cap}: connections beyond it are closed" in text, text[-3000:]
    assert f"from {FLOOD_FROM}" in text and f"max_connections_per_address is {PER_ADDRESS}" in text, text[-3000:]
    assert f"open-file limit {OPEN_FILES}" in text, text[-3000:]


async def test_idle_connections_are_reaped(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(limits=Limits(idle_connection_timeout_seconds=1.0))
    host, _, port = gw.address.rpartition(":")
    async with grpc.aio.insecure_channel(gw.address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id="before-idle")]))
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        with _flood(host, int(port), 20) as socks:
            # Raw sockets that never speak HTTP/2: closed at the end of the handshake timeout.
            await eventually(
                lambda: all(_closed_by_server(s) for s in socks), 20, interval=0.2, what="raw idle sockets closed"
            )
        # The client's HTTP/2 connection without a call: GOAWAY, and the channel goes idle.
        await eventually(
            lambda: channel.get_state() is not grpc.ChannelConnectivity.READY, 20, what="the idle channel closed"
        )
        resp = await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id="after-idle")]))
        assert [r.outcome for r in resp.results] == [event_pb2.OUTCOME_ACCEPTED]


async def test_idle_sockets_on_the_probe_port_are_closed(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(metrics_listen="127.0.0.1:0")
    with _flood("127.0.0.1", gw.http_port, 50) as socks:
        assert await asyncio.to_thread(_readyz, gw.http_port) == 200
        # Each held a thread and a descriptor until the peer went away.
        await eventually(
            lambda: all(_closed_by_server(s) for s in socks), 30, interval=0.5, what="idle probe sockets closed"
        )


def test_peer_addresses_read_from_proc() -> None:
    from meshgate.gateway._connections import _address

    # /proc/net/tcp prints each 32-bit word of an address in the host's (little-endian) order.
    assert _address("0200007F") == "127.0.0.2"
    assert _address("0000000000000000FFFF00000200007F") == "127.0.0.2"  # v4-mapped, as gRPC's dual-stack sockets show
    assert _address("00000000000000000000000001000000") == "::1"
    assert _address("B80D0120000000000000000001000000") == "2001:db8::1"

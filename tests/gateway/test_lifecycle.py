"""The process lifecycle: kill -9 loses no acked event, SIGTERM drains, a second signal exits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

import grpc
import pytest
from grpc_health.v1 import health_pb2

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.gateway import Gateway, GatewayState
from meshgate.testing import ServeProcess, freeze
from meshgate.v1 import admin_pb2, admin_pb2_grpc, event_pb2, gateway_pb2, gateway_pb2_grpc
from tests._health import async_health_stub
from tests._wait import eventually
from tests.gateway._helpers import ev, read_all
from tests.gateway.conftest import GatewayFactory


def write_mesh(path: Path, server: EmbeddedNats, *, grace: str = "10s") -> Path:
    url = urlparse(server.url)
    path.write_text(
        f"""\
event_mesh:
  security:
    replication_secret: ${{MESH_REPLICATION_SECRET}}
  regions:
    - name: here
      kind: nats
      brokers: ["{url.hostname}:{url.port}"]
    - name: there
      brokers: ["127.0.0.1:4222"]
  routing:
    - topic: "orders/*"
      regions: ["here", "there"]
  settings:
    shutdown_grace: {grace}
"""
    )
    return path


@pytest.fixture
async def serve(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[ServeProcess]:
    proc = ServeProcess(config=write_mesh(tmp_path / "mesh.yaml", nats_server), region="here", data_dir=tmp_path)
    try:
        yield proc
    finally:
        await proc.close()


async def test_start_and_stop_are_safe_twice(make_gateway: GatewayFactory) -> None:
    gw: Gateway = await make_gateway()
    await gw.start()
    assert gw.state is GatewayState.SERVING
    await gw.stop()
    await gw.stop()
    assert gw.state is GatewayState.STOPPED


async def test_health_serving_then_not_serving(make_gateway: GatewayFactory) -> None:
    gw: Gateway = await make_gateway()
    async with grpc.aio.insecure_channel(gw.address) as ch:
        health = async_health_stub(ch)
        resp = await health.Check(health_pb2.HealthCheckRequest(service="meshgate.v1.Gateway"))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        it = watch.__aiter__()
        assert (await it.__anext__()).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(gw.stop())
        assert (await asyncio.wait_for(it.__anext__(), 10)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping


async def _publish_until_broken(address: str, acked: list[str], sent: list[list[str]]) -> None:
    """Streams batches of unique ids, recording each batch sent and each id acked."""
    async with grpc.aio.insecure_channel(address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)

        async def requests() -> AsyncIterator[gateway_pb2.PublishRequest]:
            b = 0
            while True:
                ids = [f"k9-{b}-{i}" for i in range(50)]
                sent.append(ids)
                yield gateway_pb2.PublishRequest(batch_id=b, events=[ev(id=i, key=f"k{b % 4}") for i in ids])
                b += 1
                await asyncio.sleep(0)

        with contextlib.suppress(grpc.aio.AioRpcError):
            async for resp in stub.PublishStream(requests()):
                acked.extend(r.id for r in resp.results if r.outcome == event_pb2.OUTCOME_ACCEPTED)


@pytest.mark.slow
async def test_kill_9_loses_no_acked_event(serve: ServeProcess, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    address = await serve.start()
    acked: list[str] = []
    sent: list[list[str]] = []
    publisher = asyncio.create_task(_publish_until_broken(address, acked, sent))
    await eventually(lambda: len(acked) >= 3000, 60, interval=0.01, what="3,000 events acked")
    serve.signal(signal.SIGKILL)  # mid-stream: batches are in flight at this moment
    await serve.wait()
    await asyncio.wait_for(publisher, 30)
    acked_at_kill = set(acked)

    again = ServeProcess(config=serve.config, region="here", data_dir=tmp_path)
    try:
        address = await again.start()
        async with grpc.aio.insecure_channel(address) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            stored = await read_all(stub, "orders/>", idle=1.0)
            ids = [e.id for e in stored]
            assert acked_at_kill <= set(ids), f"{len(acked_at_kill - set(ids))} acked events lost"
            assert len(ids) == len(set(ids)), "an event is stored twice"
            # The producer retries what it never saw acked, with the same ids: no duplicates.
            unacked = [i for batch in sent for i in batch if i not in acked_at_kill]
            for start in range(0, len(unacked), 100):
                chunk = unacked[start : start + 100]
                await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id=i) for i in chunk]))
            stored = await read_all(stub, "orders/>", idle=1.0)
            ids = [e.id for e in stored]
            assert len(ids) == len(set(ids))
            assert set(ids) == {i for batch in sent for i in batch}
    finally:
        await again.close()


async def test_sigterm_drains_and_exits_zero(serve: ServeProcess) -> None:
    address = await serve.start()
    async with grpc.aio.insecure_channel(address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        resp = await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id="before-term")]))
        assert resp.results[0].outcome == event_pb2.OUTCOME_ACCEPTED
    serve.signal(signal.SIGTERM)
    assert await serve.wait() == 0
    log = serve.text()
    assert "draining" in log and "gateway stopped" in log


async def test_second_signal_forces_exit(serve: ServeProcess, nats_server: EmbeddedNats) -> None:
    address = await serve.start()
    assert nats_server.pid is not None
    # Freeze the broker: the next publish stays in flight, so the drain must wait for it.
    await freeze(nats_server.pid)
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            pending = asyncio.ensure_future(stub.Publish(gateway_pb2.PublishRequest(events=[ev(id="stuck")])))
            admin = admin_pb2_grpc.AdminStub(ch)

            async def in_flight() -> int:
                return (await admin.Status(admin_pb2.StatusRequest())).inflight_events

            await eventually(in_flight, 10, interval=0.05, what="the stuck event in flight")
            serve.signal(signal.SIGTERM)
            await eventually(lambda: "draining" in serve.text(), 10, interval=0.05, what="the gateway draining")
            serve.signal(signal.SIGTERM)
            assert await serve.wait(timeout=10) == 1
            assert "exiting without draining" in serve.text()
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await pending
    finally:
        os.kill(nats_server.pid, signal.SIGCONT)


async def test_serve_that_cannot_start_says_why_and_exits_1(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    config = write_mesh(tmp_path / "mesh.yaml", nats_server)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshgate", "serve", "-c", str(config), "--region", "here",
        "--data-dir", str(tmp_path), "--listen", "not-an-address",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert b"cannot listen on 'not-an-address'" in out
    assert b"Traceback" not in out

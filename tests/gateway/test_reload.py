"""The mesh file in a running gateway: Explain, reload under load, refusals, SIGHUP."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

import grpc
import pytest

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.cli import main as cli_main
from meshgate.config import load_config
from meshgate.gateway import Gateway
from meshgate.testing import ServeProcess
from meshgate.v1 import admin_pb2, admin_pb2_grpc, event_pb2, gateway_pb2, gateway_pb2_grpc
from tests._wait import eventually
from tests.gateway._helpers import ev, read_all, running_gateway


def mesh_text(server: EmbeddedNats, *, orders_to: str, extra_rule: str = "") -> str:
    url = urlparse(server.url)
    return f"""\
event_mesh:
  security:
    replication_secret: ${{MESH_REPLICATION_SECRET}}
  regions:
    - name: here
      kind: nats
      brokers: ["{url.hostname}:{url.port}"]
    - name: there
      brokers: ["127.0.0.1:4222"]
    - name: yonder
      brokers: ["127.0.0.1:4223"]
  routing:
    - topic: "orders/*"
      regions: {orders_to}
    - topic: "inventory/>"
      regions: ["yonder"]
{extra_rule}"""


@pytest.fixture
def mesh_file(tmp_path: Path, nats_server: EmbeddedNats) -> Path:
    path = tmp_path / "mesh.yaml"
    path.write_text(mesh_text(nats_server, orders_to='["here", "there"]'))
    return path


@pytest.fixture
async def gw(mesh_file: Path, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(mesh_file, tmp_path) as gateway:
        yield gateway


def reloads(gw: Gateway, result: str) -> float:
    value = gw.metrics.registry.get_sample_value(
        "meshgate_config_reloads_total", {"region": gw.region, "result": result}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("topic", "origin"),
    [("orders/created", "here"), ("inventory/eu/sku-1", "there"), ("billing/paid", "yonder"), ("orders", "here")],
)
async def test_explain_answers_like_meshgate_route(
    gw: Gateway, mesh_file: Path, capsys: pytest.CaptureFixture[str], topic: str, origin: str
) -> None:
    async with grpc.aio.insecure_channel(gw.address) as ch:
        resp = await admin_pb2_grpc.AdminStub(ch).Explain(admin_pb2.ExplainRequest(topic=topic, from_region=origin))
    assert cli_main(["route", "-c", str(mesh_file), topic, "--from", origin, "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["destinations"] == list(resp.destinations)
    assert [r["index"] for r in cli["rules"]] == [r.index for r in resp.rules]
    assert [r["pattern"] for r in cli["rules"]] == [r.pattern for r in resp.rules]
    assert origin in resp.destinations


async def test_explain_refuses_bad_topic_and_unknown_region(gw: Gateway) -> None:
    async with grpc.aio.insecure_channel(gw.address) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.Explain(admin_pb2.ExplainRequest(topic="orders/*"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.Explain(admin_pb2.ExplainRequest(topic="orders/x", from_region="mars"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "here, there, yonder" in (info.value.details() or "")


async def test_reload_under_load_swaps_routes_atomically(
    gw: Gateway, mesh_file: Path, nats_server: EmbeddedNats
) -> None:
    old_route, new_route = ["here", "there"], ["here", "yonder"]
    acked: list[event_pb2.EventResult] = []
    swapped = asyncio.Event()
    after_swap: set[str] = set()

    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)

        async def requests() -> AsyncIterator[gateway_pb2.PublishRequest]:
            for b in range(120):
                ids = [f"rl-{b}-{i}" for i in range(20)]
                if swapped.is_set():
                    after_swap.update(ids)
                yield gateway_pb2.PublishRequest(batch_id=b, events=[ev(id=i, key="k") for i in ids])
                if b == 40:
                    # gRPC sends ahead of what the gateway admitted: the swap must come after some
                    # events were admitted under the old file, or every event gets the new route.
                    await eventually(lambda: len(acked) >= 200, 30, what="200 events acked before the reload")
                    await asyncio.to_thread(mesh_file.write_text, mesh_text(nats_server, orders_to='["yonder"]'))
                    result = await gw.reload()
                    assert result.applied, result.errors
                    swapped.set()
                await asyncio.sleep(0)

        async for resp in stub.PublishStream(requests()):
            acked.extend(resp.results)

        assert len(acked) == 2400 and all(r.outcome == event_pb2.OUTCOME_ACCEPTED for r in acked)
        stored = await read_all(stub, "orders/>", expect=2400)
    assert sorted(e.id for e in stored) == sorted(r.id for r in acked)  # nothing lost or doubled
    routes = [list(e.route) for e in sorted(stored, key=lambda e: e.sequence)]
    assert set(map(tuple, routes)) == {tuple(old_route), tuple(new_route)}
    # One swap: every event stored after the first new-route event has the new route.
    first_new = routes.index(new_route)
    assert all(r == old_route for r in routes[:first_new])
    assert all(r == new_route for r in routes[first_new:])
    # Batches sent after the reload returned were all routed by the new file.
    assert all(list(e.route) == new_route for e in stored if e.id in after_swap)
    assert reloads(gw, "applied") == 1


async def test_invalid_file_refused_and_running_config_stays(gw: Gateway, mesh_file: Path) -> None:
    before = gw.routing[0].sha256
    text = await asyncio.to_thread(mesh_file.read_text)
    await asyncio.to_thread(mesh_file.write_text, text.replace('regions: ["yonder"]', 'regions: ["yondr"]'))
    async with grpc.aio.insecure_channel(gw.address) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        resp = await admin.Reload(admin_pb2.ReloadRequest())
        assert not resp.applied
        (error,) = resp.errors
        assert error.startswith(f"{mesh_file}:")
        assert "yondr" in error and "yonder" in error  # names the typo and suggests the region
        status = await admin.Status(admin_pb2.StatusRequest())
        assert status.config_sha256 == before
        # Routing still follows the running file.
        pub = await gateway_pb2_grpc.GatewayStub(ch).Publish(gateway_pb2.PublishRequest(events=[ev("inventory/a")]))
        assert list(pub.results[0].route) == ["here", "yonder"]
    assert reloads(gw, "refused") == 1


async def test_change_needing_restart_is_refused(gw: Gateway, mesh_file: Path) -> None:
    text = await asyncio.to_thread(mesh_file.read_text)
    await asyncio.to_thread(
        mesh_file.write_text,
        text.replace('kind: nats\n      brokers: ["', 'kind: nats\n      brokers: ["10.0.0.9:4222", "', 1),
    )
    result = await gw.reload()
    assert not result.applied
    assert "restart needed" in result.errors[0]
    assert reloads(gw, "refused") == 1


async def test_sighup_reloads_a_serving_gateway(mesh_file: Path, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    proc = ServeProcess(config=mesh_file, region="here", data_dir=tmp_path, extra=("--no-watch",))
    try:
        address = await proc.start()
        async with grpc.aio.insecure_channel(address) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)
            before = (await admin.Status(admin_pb2.StatusRequest())).config_sha256
            await asyncio.to_thread(mesh_file.write_text, mesh_text(nats_server, orders_to='["yonder"]'))
            proc.signal(signal.SIGHUP)

            async def reloaded() -> bool:
                return (await admin.Status(admin_pb2.StatusRequest())).config_sha256 != before

            await eventually(reloaded, 15, interval=0.05, what="the new config's sha256 in Admin.Status")
            explain = await admin.Explain(admin_pb2.ExplainRequest(topic="orders/x"))
            assert list(explain.destinations) == ["here", "yonder"]
    finally:
        await proc.close()


async def test_file_change_is_picked_up_without_a_signal(
    mesh_file: Path, tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    gateway = Gateway(
        config=load_config(mesh_file), region="here", data_dir=tmp_path, listen="127.0.0.1:0", config_path=mesh_file
    )
    async with gateway:
        await asyncio.to_thread(mesh_file.write_text, mesh_text(nats_server, orders_to='["yonder"]'))
        await eventually(
            lambda: gateway.routing[1].route("orders/x", "here") == ("here", "yonder"),
            15,
            interval=0.05,
            what="orders/x routed to yonder",
        )
        # Counted once the whole reload is applied, which goes on a little after the routes swap.
        await eventually(lambda: reloads(gateway, "applied") == 1, 15, interval=0.05, what="the reload counted")
        assert reloads(gateway, "applied") == 1


async def test_a_mesh_file_written_in_place_in_two_halves_is_never_half_applied(
    mesh_file: Path, tmp_path: Path, nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    # The new file's first half is a valid mesh file too (its last rule missing), whose routes
    # events admitted meanwhile would keep for good.
    full = mesh_text(
        nats_server, orders_to='["yonder"]', extra_rule='    - topic: "orders/*"\n      regions: ["there"]\n'
    )
    half = mesh_text(nats_server, orders_to='["yonder"]')
    assert full.startswith(half)
    caplog.set_level(logging.INFO, logger="meshgate.config")
    gateway = Gateway(
        config=load_config(mesh_file), region="here", data_dir=tmp_path, listen="127.0.0.1:0", config_path=mesh_file
    )
    routes: set[tuple[str, ...]] = set()

    def route() -> tuple[str, ...]:
        routes.add(gateway.routing[1].route("orders/x", "here"))
        return gateway.routing[1].route("orders/x", "here")

    async with gateway:
        assert route() == ("here", "there")
        with mesh_file.open("w") as f:
            f.write(half)
            f.flush()
            # A slow writer's pause: until the gateway's watcher has seen the half-written file.
            await eventually(
                lambda: (
                    route() != ("here", "there") or any("changed in place" in r.getMessage() for r in caplog.records)
                ),
                15,
                interval=0.01,
                what="the watcher to see the half-written file",
            )
            f.write(full[len(half) :])
        # The route is swapped in before the reload is counted.
        await eventually(
            lambda: route() == ("here", "there", "yonder") and reloads(gateway, "applied"),
            15,
            interval=0.01,
            what="the whole file applied and counted",
        )
        assert reloads(gateway, "applied") == 1
    assert ("here", "yonder") not in routes

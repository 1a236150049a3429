"""Several gateway replicas of one region: each link runs in exactly one, and fails over."""

from __future__ import annotations

from pathlib import Path

import grpc

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.config import RouteRule
from meshgate.gateway import Gateway
from meshgate.v1 import admin_pb2, gateway_pb2, gateway_pb2_grpc
from tests._wait import eventually
from tests.gateway._helpers import ev, read_all, two_region_mesh

LEASE_TTL = 1.5


async def _states(gw: Gateway) -> dict[str, int]:
    return {s.destination: s.state for s in gw.link_statuses()}


async def test_links_run_in_one_replica_and_fail_over(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with EmbeddedNats(data_dir=tmp_path / "there-nats") as there_server:
        # "there" first, on a port of its own, so the mesh of "here" can name its gateway.
        probe = two_region_mesh(nats_server, there_server)
        there = Gateway(config=probe, region="there", data_dir=tmp_path, replicate=False)
        await there.start()
        try:
            config = two_region_mesh(
                nats_server,
                there_server,
                there_gateway=there.address,
                routing=(RouteRule(index=0, topic="orders/*", regions=("here", "there")),),
            )
            replicas = [Gateway(config=config, region="here", data_dir=tmp_path, lease_ttl=LEASE_TTL) for _ in range(2)]
            for gw in replicas:
                await gw.start()
            states = [await _states(gw) for gw in replicas]
            running = [s["there"] for s in states]
            assert sorted(running) == sorted([admin_pb2.LINK_STATE_STANDBY, running[0]])
            owner = next(
                gw for gw, s in zip(replicas, states, strict=True) if s["there"] != admin_pb2.LINK_STATE_STANDBY
            )
            other = next(gw for gw in replicas if gw is not owner)

            async with grpc.aio.insecure_channel(other.address) as ch:
                stub = gateway_pb2_grpc.GatewayStub(ch)
                await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id=f"a-{i}") for i in range(50)]))
            # The owner stops (a clean stop hands its lease back): the other replica takes over.
            await owner.stop()
            async with grpc.aio.insecure_channel(other.address) as ch:
                stub = gateway_pb2_grpc.GatewayStub(ch)
                await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id=f"b-{i}") for i in range(50)]))

            async def replicating() -> bool:
                return (await _states(other))["there"] == admin_pb2.LINK_STATE_REPLICATING

            await eventually(replicating, 20, what="the other replica's link to there REPLICATING")
            async with grpc.aio.insecure_channel(there.address) as ch:
                got = await read_all(gateway_pb2_grpc.GatewayStub(ch), "orders/>", expect=100, idle=10)
            ids = [e.id for e in got]
            assert sorted(ids) == sorted([f"a-{i}" for i in range(50)] + [f"b-{i}" for i in range(50)])
            assert len(ids) == len(set(ids))
            await other.stop()
        finally:
            await there.stop()

"""The delivery ledger: which regions hold an event, and when (Admin.Locate, meshgate trace)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import grpc

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.config import RouteRule
from meshgate.gateway import Gateway
from meshgate.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from tests.gateway._helpers import ev, read_all, two_region_mesh


async def test_locate_in_every_region_and_meshgate_trace(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with EmbeddedNats(data_dir=tmp_path / "there-nats") as there_server:
        rules = (RouteRule(index=0, topic="orders/*", regions=("here", "there")),)
        there = Gateway(
            config=two_region_mesh(nats_server, there_server, routing=rules),
            region="there",
            data_dir=tmp_path,
            replicate=False,
        )
        await there.start()
        config = two_region_mesh(nats_server, there_server, there_gateway=there.address, routing=rules)
        here = Gateway(config=config, region="here", data_dir=tmp_path)
        await here.start()
        try:
            async with grpc.aio.insecure_channel(here.address) as ch:
                pub = await gateway_pb2_grpc.GatewayStub(ch).Publish(
                    gateway_pb2.PublishRequest(events=[ev(id="traced-1"), ev("billing/x", id="local-1")])
                )
                async with grpc.aio.insecure_channel(there.address) as ch2:
                    await read_all(gateway_pb2_grpc.GatewayStub(ch2), "orders/>", expect=1, idle=10)
                admin = admin_pb2_grpc.AdminStub(ch)
                resp = await admin.Locate(admin_pb2.LocateRequest(id="traced-1", all_regions=True))
                where = {w.region: w for w in resp.locations}
                assert where["here"].found and where["here"].sequence == pub.results[0].sequence
                assert where["there"].found and where["there"].origin == "here"
                assert where["there"].stored_time.ToNanoseconds() >= where["here"].stored_time.ToNanoseconds()
                local = await admin.Locate(admin_pb2.LocateRequest(id="local-1", all_regions=True))
                assert [w.region for w in local.locations if w.found] == ["here"]

            # The command a person runs, as a process.
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshgate", "trace", "-g", here.address, "traced-1", "--json",
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0
            report = json.loads(out)
            assert report["origin"] == "here" and report["missing"] == []
            assert {r["region"] for r in report["regions"] if r["found"]} == {"here", "there"}
            # An id nobody holds: exit 1.
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshgate", "trace", "-g", here.address, "no-such-id",
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 1 and b"not found in any region" in out
        finally:
            await here.stop()
            await there.stop()

"""Several gateway replicas of one region: a destination's partitions spread over them, and move.

On NATS each partition of the region's log has its own lease per destination, and a replica
sends the partitions it holds through one link; the replicas alive share them fairly
(ceil(partitions / replicas) each) and take a departed replica's share. Each partition has one
sender at a time, so key order holds through it all.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
from pathlib import Path

import grpc
from nats.aio.client import Client

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.brokers.nats._subjects import partition_of
from meshgate.config import MeshConfig, RouteRule
from meshgate.gateway import Gateway
from meshgate.v1 import admin_pb2, admin_pb2_grpc, event_pb2, gateway_pb2, gateway_pb2_grpc
from tests._replication import SECURITY
from tests._servers import free_ports
from tests._wait import eventually
from tests.gateway._helpers import ev, nats_region, read_all, two_region_mesh

LEASE_TTL = 1.5
PARTITIONS = 8
ROUTING = (RouteRule(index=0, topic="orders/*", regions=("here", "there")),)
KEYS = [f"customer-{k}" for k in range(200)]


def _parts(gw: Gateway) -> int:
    assert gw.replicator is not None
    return gw.replicator.links["there"].running_parts


def _forwarded(gw: Gateway) -> int:
    assert gw.replicator is not None
    return gw.replicator.links["there"].counters.forwarded


async def _publish_rounds(gw: Gateway, rounds: range) -> None:
    """Event n of every key, for each n of ``rounds``: a key's events are acked in order."""
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        for n in rounds:
            events = [ev(id=f"{key}-{n}", key=key, data=f"{key}:{n}".encode()) for key in KEYS]
            resp = await stub.Publish(gateway_pb2.PublishRequest(events=events))
            assert all(r.outcome == event_pb2.OUTCOME_ACCEPTED for r in resp.results)


async def _check_there(there: Gateway, rounds: int, *, extra: int = 0) -> None:
    """Every event once at the destination (and ``extra`` of its own), each key's in the order published."""
    async with grpc.aio.insecure_channel(there.address) as ch:
        got = await read_all(gateway_pb2_grpc.GatewayStub(ch), "orders/>", expect=len(KEYS) * rounds + extra, idle=10)
    got = [e for e in got if e.origin == "here"]
    ids = [e.id for e in got]
    assert len(ids) == len(set(ids)) == len(KEYS) * rounds
    per_key: dict[str, list[int]] = collections.defaultdict(list)
    for e in got:
        per_key[e.key].append(int(e.data.decode().rpartition(":")[2]))
    assert all(seen == list(range(rounds)) for seen in per_key.values()), "a key's events came out of order"


def _mesh(here: EmbeddedNats, there: EmbeddedNats, there_gateway: str) -> MeshConfig:
    return two_region_mesh(here, there, there_gateway=there_gateway, routing=ROUTING)


async def test_partitions_balance_over_two_replicas_and_move_when_one_goes(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with EmbeddedNats(data_dir=tmp_path / "there-nats") as there_server:
        # "there" first, on a port of its own, so the mesh of "here" can name its gateway.
        there = Gateway(config=_mesh(nats_server, there_server, "127.0.0.1:0"), region="there", replicate=False)
        await there.start()
        config = _mesh(nats_server, there_server, there.address)
        replicas = [Gateway(config=config, region="here", data_dir=tmp_path, lease_ttl=LEASE_TTL) for _ in range(2)]
        try:
            for gw in replicas:
                await gw.start()
            # Each replica's fair share: ceil(8 / 2) partitions of the destination.
            await eventually(
                lambda: [_parts(gw) for gw in replicas] == [PARTITIONS // 2] * 2,
                30,
                interval=0.05,
                what="the partitions to be split 4/4 between the replicas",
            )
            states = {s.state for gw in replicas for s in gw.link_statuses()}
            assert admin_pb2.LINK_STATE_STANDBY not in states

            await _publish_rounds(replicas[0], range(4))
            await _check_there(there, 4)
            # The events each replica sent (counted once the destination's ack is back): its
            # partitions' share, within 20 % of half.
            await eventually(
                lambda: sum(_forwarded(gw) for gw in replicas) == len(KEYS) * 4,
                30,
                interval=0.05,
                what="the acks of every event to be counted",
            )
            forwarded = [_forwarded(gw) for gw in replicas]
            half = len(KEYS) * 2
            assert all(abs(f - half) <= half * 0.2 for f in forwarded), forwarded
            # The keys spread over every partition (what makes the split above hold).
            assert len({partition_of(key, PARTITIONS) for key in KEYS}) == PARTITIONS

            # One replica goes: the other takes all of the destination's partitions.
            gone, left = replicas
            await gone.stop()
            await eventually(
                lambda: _parts(left) == PARTITIONS, 30, interval=0.05, what="the left replica to run every partition"
            )
            await _publish_rounds(left, range(4, 8))
            await _check_there(there, 8)
        finally:
            for gw in replicas:
                await gw.stop()
            await there.stop()


async def _cli_partitions(address: str) -> list[int]:
    """The partitions ``meshgate status --json`` shows for the link to "there" of the gateway at ``address``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshgate", "status", "-g", address, "--json", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out
    (link,) = [x for x in json.loads(out)["links"] if x["destination"] == "there"]
    return list(link["partitions"])


async def test_each_replica_s_status_lists_the_partitions_it_runs(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with EmbeddedNats(data_dir=tmp_path / "there-nats") as there_server:
        there = Gateway(config=_mesh(nats_server, there_server, "127.0.0.1:0"), region="there", replicate=False)
        await there.start()
        config = _mesh(nats_server, there_server, there.address)
        replicas = [Gateway(config=config, region="here", data_dir=tmp_path, lease_ttl=LEASE_TTL) for _ in range(2)]
        try:
            for gw in replicas:
                await gw.start()
            await eventually(
                lambda: [_parts(gw) for gw in replicas] == [PARTITIONS // 2] * 2,
                30,
                interval=0.05,
                what="the partitions to be split 4/4 between the replicas",
            )
            shown: list[list[int]] = []
            for gw in replicas:
                async with grpc.aio.insecure_channel(gw.address) as ch:
                    resp = await admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=10)
                (link,) = [s for s in resp.links if s.destination == "there"]
                shown.append(list(link.partitions))
            # Each its own four, ascending; together every partition once.
            assert [len(p) for p in shown] == [PARTITIONS // 2] * 2, shown
            assert all(p == sorted(p) for p in shown), shown
            assert sorted(shown[0] + shown[1]) == list(range(PARTITIONS)), shown
            # What `meshgate status --json` prints is the same.
            assert [await _cli_partitions(gw.address) for gw in replicas] == shown
            # A gateway that runs no link shows none.
            assert all(not s.partitions for s in there.link_statuses())
        finally:
            for gw in replicas:
                await gw.stop()
            await there.stop()


async def test_a_destination_s_links_never_read_the_events_replicated_into_it(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with EmbeddedNats(data_dir=tmp_path / "there-nats") as there_server:
        # Both gateways at known addresses: there's links to here connect and read.
        here_address, there_address = (f"127.0.0.1:{port}" for port in free_ports(2))
        config = MeshConfig(
            regions=(nats_region("here", nats_server, here_address), nats_region("there", there_server, there_address)),
            routing=ROUTING,
            security=SECURITY,
        )
        there = Gateway(config=config, region="there", data_dir=tmp_path)
        await there.start()
        here = Gateway(config=config, region="here", data_dir=tmp_path)
        try:
            await here.start()
            # There's own events, routed to here: its links do read and send these.
            async with grpc.aio.insecure_channel(there.address) as ch:
                own = [ev(id=f"there-{i}", key=f"k{i}") for i in range(16)]
                await gateway_pb2_grpc.GatewayStub(ch).Publish(gateway_pb2.PublishRequest(events=own))
            await _publish_rounds(here, range(2))
            await _check_there(there, 2, extra=16)
            # There's own links (to "here") filter on its own origin: the 400 events replicated
            # into its log were never delivered to them, not even to be skipped.
            async with grpc.aio.insecure_channel(here.address) as ch:
                got = await read_all(gateway_pb2_grpc.GatewayStub(ch), "orders/>", expect=len(KEYS) * 2 + 16, idle=10)
            assert {e.id for e in got} >= {e.id for e in own}
            nc = Client()
            await nc.connect(there_server.url)
            try:
                jsm = nc.jsm()
                names = [c.name for c in await jsm.consumers_info("MESHGATE")]
                links = [n for n in names if n.startswith("mg-link-here")]
                assert links, names
                delivered = [(await jsm.consumer_info("MESHGATE", n)).delivered.consumer_seq for n in links]
            finally:
                await nc.close()
            # Delivered: there's own 16 events only (they reached here).
            assert sum(delivered) == 16, delivered
        finally:
            await here.stop()
            await there.stop()

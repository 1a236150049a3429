"""A Kafka region in a mesh: gateways on tansu replicate to and from a NATS region, and serve Subscribe."""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import grpc

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.config import BrokerKind, KafkaSettings, MeshConfig, RegionConfig, RouteRule
from meshgate.gateway import Gateway
from meshgate.testing import Tansu
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests._replication import SECURITY
from tests._servers import make_kafka_broker
from tests.gateway._helpers import ev, read_all

BOUND = 60.0


def _free_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def _publish(gw: Gateway, events: list[event_pb2.Event]) -> list[event_pb2.EventResult]:
    async with grpc.aio.insecure_channel(gw.address) as ch:
        resp = await gateway_pb2_grpc.GatewayStub(ch).Publish(gateway_pb2.PublishRequest(events=events))
    return list(resp.results)


async def _read(gw: Gateway, expect: int) -> list[event_pb2.Event]:
    async with grpc.aio.insecure_channel(gw.address) as ch:
        return await read_all(gateway_pb2_grpc.GatewayStub(ch), "orders/>", expect=expect, idle=BOUND)


async def test_kafka_region_replicates_both_ways_with_two_replicas(
    tansu: Tansu, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    url = urlparse(nats_server.url)
    kf_addresses = [_free_address(), _free_address()]
    config = MeshConfig(
        regions=(
            RegionConfig(
                name="kf",
                kind=BrokerKind.KAFKA,
                brokers=(tansu.bootstrap,),
                gateway=kf_addresses[0],
                kafka=KafkaSettings(partitions=4),
            ),
            RegionConfig(
                name="nt", kind=BrokerKind.NATS, brokers=(f"{url.hostname}:{url.port}",), gateway=_free_address()
            ),
        ),
        routing=(RouteRule(index=0, topic="orders/*", regions=("kf", "nt")),),
        security=SECURITY,
    )
    nt = Gateway(config=config, region="nt", data_dir=tmp_path / "nt")
    kf = [
        Gateway(
            config=config, region="kf", data_dir=tmp_path / f"kf{n}", listen=address, broker=make_kafka_broker(tansu)
        )
        for n, address in enumerate(kf_addresses)
    ]
    await nt.start()
    for gw in kf:
        await gw.start()
    try:
        # Both Kafka replicas run the link: the consumer group splits the partitions.
        for gw in kf:
            assert gw.replicator is not None and gw.replicator.links["nt"].running
        keys = [f"customer-{k}" for k in range(8)]
        from_kf = [ev(id=f"kf-{i}", key=keys[i % 8], data=f"{i}".encode()) for i in range(80)]
        results = await _publish(kf[0], from_kf[:40]) + await _publish(kf[1], from_kf[40:])
        assert all(r.outcome == event_pb2.OUTCOME_ACCEPTED for r in results), results
        from_nt = [ev(topic="orders/shipped", id=f"nt-{i}") for i in range(30)]
        assert all(r.outcome == event_pb2.OUTCOME_ACCEPTED for r in await _publish(nt, from_nt))

        # Subscribe on a Kafka region: local and replicated events, each once.
        at_kf = await _read(kf[1], 110)
        assert Counter(e.id for e in at_kf) == Counter([e.id for e in from_kf] + [e.id for e in from_nt])
        # Per key, the order of publication (each key lives in one partition).
        for key in keys:
            assert [e.id for e in at_kf if e.key == key] == [e.id for e in from_kf if e.key == key]
        replicated = [e for e in at_kf if e.origin == "nt"]
        # A NATS origin's stream is a partition of its log (p0..p7).
        assert {e.origin_stream for e in replicated} <= {f"p{p}" for p in range(8)}
        assert all(e.origin_sequence for e in replicated)

        # Replicated from Kafka to NATS: each once, per key in order, with its Kafka origin stream.
        at_nt = await _read(nt, 110)
        assert Counter(e.id for e in at_nt) == Counter([e.id for e in from_kf] + [e.id for e in from_nt])
        for key in keys:
            assert [e.id for e in at_nt if e.key == key] == [e.id for e in from_kf if e.key == key]
        assert all(e.origin_stream.startswith("mesh.orders.created/") for e in at_nt if e.origin == "kf")

        # A client's retry through the other Kafka replica is absorbed.
        [again] = await _publish(kf[1], [from_kf[0]])
        assert again.outcome == event_pb2.OUTCOME_DUPLICATE
        assert again.sequence == results[0].sequence
    finally:
        for gw in kf:
            await gw.stop(grace=1.0)
        await nt.stop(grace=1.0)

"""A mixed mesh: one region on embedded NATS, one on Kafka (tansu, memory storage), each a
``meshgate serve`` process. Events go both ways, each acked one arrives exactly once and in key
order; the Kafka region's topics are plain Kafka topics a native consumer reads; the CLI works
on the Kafka region.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from meshgate.v1 import event_pb2, gateway_pb2
from tests._cli import run_cli
from tests._wait import eventually
from tests.e2e._ledger import Ledger, Producer, make_event
from tests.e2e._mesh import MeshCluster
from tests.e2e.conftest import MeshFactory

NT, KF = "us-west", "eu-kafka"
PREFIX = "eu."
ROUTING = [("orders/*", [NT, KF]), ("inventory/>", [NT, KF])]  # billing/* stays home

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def workload(origin: str, n: int, *, keys: int = 8) -> list[event_pb2.Event]:
    topics = ["orders/created", "inventory/eu/sku-1", "orders/paid", "billing/invoice"]
    return [
        make_event(
            f"{origin}-{i:05d}",
            topics[i % len(topics)],
            key=f"{origin}-key{i % keys}",
            extensions={"seq": str(i)},
        )
        for i in range(n)
    ]


async def _native_read(bootstrap: str, topic: str, expect: int, timeout: float = 30.0) -> list[object]:
    """Every record of ``topic`` with a plain aiokafka consumer (no group, from the beginning)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = await eventually(
            lambda: consumer.partitions_for_topic(topic), 15, what=f"topic {topic} in the metadata"
        )
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        records: list[object] = []
        async with asyncio.timeout(timeout):
            while len(records) < expect:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def test_nats_and_kafka_regions_replicate_both_ways_exactly_once(make_mesh: MeshFactory) -> None:
    cluster: MeshCluster = await make_mesh([NT, KF], ROUTING, kafka={KF: {"partitions": 4, "topic_prefix": PREFIX}})
    ledger = Ledger()
    producers = [
        Producer(cluster, ledger, NT, workload(NT, 1200), batch_size=50),
        Producer(cluster, ledger, KF, workload(KF, 1200), batch_size=50),
    ]
    await asyncio.wait_for(asyncio.gather(*(p.run() for p in producers)), 60)
    assert len(ledger.acked) == 2400 and not ledger.rejected, list(ledger.rejected.items())[:3]

    # Acks of the Kafka region name their partition; the NATS region has one stream.
    resp = await cluster.stub(KF).Publish(
        gateway_pb2.PublishRequest(events=[make_event("kf-stream-check", "billing/invoice", key="k")]), timeout=10
    )
    [ack] = resp.results
    assert ack.outcome == event_pb2.OUTCOME_ACCEPTED and ack.stream.startswith(f"{PREFIX}billing.invoice/"), ack
    ledger.record(KF, [make_event("kf-stream-check", "billing/invoice", key="k")], resp.results)
    resp = await cluster.stub(NT).Publish(
        gateway_pb2.PublishRequest(events=[make_event("nt-stream-check", "billing/invoice")]), timeout=10
    )
    assert resp.results[0].stream == "", resp
    ledger.record(NT, [make_event("nt-stream-check", "billing/invoice")], resp.results)

    # Every acked event in every region of its route, once, per key in the origin's order.
    observed = await ledger.verify(cluster, timeout=60, regions=[NT, KF])
    assert len(observed[NT]) == 1200 + 900 + 1  # its own (and the stream check), and Kafka's orders and inventory
    assert len(observed[KF]) == 1200 + 900 + 1
    at_nt = [e for e in observed[NT] if e.origin == KF]
    assert at_nt and all(e.origin_stream.startswith(PREFIX) and e.origin_sequence for e in at_nt)

    # A plain Kafka consumer reads the region's topic: the data as published, the attributes in headers.
    created = {i: rec for i, rec in ledger.acked.items() if rec.topic == "orders/created"}
    assert len(created) == 600
    records = await _native_read(cluster.tansu(KF).bootstrap, f"{PREFIX}orders.created", expect=len(created))
    assert len(records) == len(created)
    for record in records:
        headers = {k: v.decode() for k, v in record.headers}  # type: ignore[attr-defined]
        event_id = headers["ce_id"]
        origin, sent = ledger.sent[event_id]
        assert record.value == sent.data, event_id  # type: ignore[attr-defined]
        assert record.key == sent.key.encode(), event_id  # type: ignore[attr-defined]
        assert headers["ce_source"] == sent.source and headers["ce_type"] == sent.type
        assert headers["ce_specversion"] == "1.0" and headers["content-type"] == sent.datacontenttype
        assert headers["ce_seq"] == sent.extensions["seq"]
        assert "mg-key" not in headers and headers["mg-origin"] == origin
        assert headers["mg-route"] == ",".join(sorted([NT, KF]))
        if origin == NT:
            assert int(headers["mg-origin-seq"]) == ledger.acked[event_id].sequence
    # Per key, records come in the order they were acked (a key lives in one partition).
    by_key: dict[bytes, list[str]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):  # type: ignore[attr-defined]
        by_key.setdefault(record.key, []).append(dict(record.headers)["ce_id"].decode())  # type: ignore[attr-defined]
    for key, ids in by_key.items():
        origin = ledger.sent[ids[0]][0]
        want = [
            r.id
            for r in sorted(ledger.acked.values(), key=lambda r: r.sequence)
            if r.key == key.decode() and r.topic == "orders/created" and r.origin == origin
        ]
        assert ids == want, key

    # meshgate tail on the Kafka region: its own and replicated events.
    rc, out, err = await run_cli(
        "tail", "-g", cluster.address(KF), "orders/created", "--from", "earliest", "--limit", "600", "--json"
    )
    assert rc == 0, err
    tailed = [json.loads(line) for line in out.splitlines()]
    assert sorted(x["id"] for x in tailed) == sorted(created)
    assert {x["origin"] for x in tailed} == {NT, KF}

    # Subscribe from a sequence means nothing across partitions: the request is refused as invalid.
    call = cluster.stub(KF).Subscribe(gateway_pb2.SubscribeRequest(pattern="orders/>", start_sequence=5))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert "sequence" in (info.value.details() or ""), info.value.details()

    # meshgate publish names the partition its seq counts in, on a Kafka region only.
    rc, out, err = await run_cli(
        "publish", "-g", cluster.address(KF), "billing/invoice", "x", "--id", "cli-1", "--key", "a"
    )
    assert rc == 0, err
    assert out.startswith("accepted id=cli-1 seq=") and f" stream={PREFIX}billing.invoice/" in out, out
    rc, out, err = await run_cli("publish", "-g", cluster.address(NT), "billing/invoice", "y", "--id", "cli-2")
    assert rc == 0, err
    assert out.startswith("accepted id=cli-2 seq=") and "stream=" not in out, out

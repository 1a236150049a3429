"""Stored events are CloudEvents to the CloudEvents SDK, in the binding of each broker kind.

A Kafka region writes the Kafka protocol binding (``ce_`` headers, ``content-type``, plain
values, the key as the record key); a NATS region writes the NATS binding (``ce-`` headers,
``ce-datacontenttype``, percent-encoded values). Events published through a gateway are read
natively (aiokafka, nats-py) and parsed with the SDK (``cloudevents`` from PyPI), in the origin
region and in the other kind's region after replication; and events the SDK produces natively
are read by Subscribe.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import cloudevents.v1.kafka as v1_kafka
import grpc
import nats
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from nats.aio.msg import Msg

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.config import BrokerKind, KafkaSettings, MeshConfig, RegionConfig, RouteRule
from meshgate.gateway import Gateway
from meshgate.replicator import LinkGroup, LinkState
from meshgate.testing import Tansu
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests._replication import SECURITY
from tests._servers import make_kafka_broker
from tests._wait import eventually
from tests.gateway._helpers import read_all

BOUND = 60.0
TOPIC = "mesh.orders.created"
# The NATS subject of orders/created: <prefix><origin>.<partition>.<topic> (docs/SUBJECTS.md); a
# native writer picks the origin and partition tokens (here region nt's partition 0).
NATS_SUBJECT = "mesh.nt.0.orders.created"
CONTENT_TYPE = "application/json; charset=utf-8"
SCHEMA = "https://example.com/schemas/order.json"
WHEN = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def _free_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _event(event_id: str) -> event_pb2.Event:
    """An event with every attribute set; values with a space and non-ASCII text."""
    event = event_pb2.Event(
        id=event_id,
        source="/checkout service",
        type="com.example.order.created",
        datacontenttype=CONTENT_TYPE,
        dataschema=SCHEMA,
        data=b'{"total": 42}',
        topic="orders/created",
        key=f"customer {event_id}",
        extensions={"tenant": "acme café", "region": "eu"},
    )
    event.time.FromDatetime(WHEN)
    return event


def _expected_attributes(event: event_pb2.Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "specversion": "1.0",
        "time": WHEN,
        "datacontenttype": CONTENT_TYPE,
        "dataschema": SCHEMA,
        **event.extensions,
    }


@dataclass
class Mesh:
    kf: Gateway
    nt: Gateway
    tansu: Tansu
    nats_url: str


@contextlib.asynccontextmanager
async def _mesh(tansu: Tansu, nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Mesh]:
    """A Kafka region (tansu) and a NATS region; orders/* goes to both."""
    url = urlparse(nats_server.url)
    config = MeshConfig(
        regions=(
            RegionConfig(
                name="kf",
                kind=BrokerKind.KAFKA,
                brokers=(tansu.bootstrap,),
                gateway=_free_address(),
                kafka=KafkaSettings(partitions=2),
            ),
            RegionConfig(
                name="nt", kind=BrokerKind.NATS, brokers=(f"{url.hostname}:{url.port}",), gateway=_free_address()
            ),
        ),
        routing=(RouteRule(index=0, topic="orders/*", regions=("kf", "nt")),),
        security=SECURITY,
    )
    nt = Gateway(config=config, region="nt", data_dir=tmp_path / "nt")
    kf = Gateway(config=config, region="kf", data_dir=tmp_path / "kf", broker=make_kafka_broker(tansu))
    await nt.start()
    try:
        await kf.start()
        try:
            # Both links replicating (the Kafka one has joined its consumer group) before a test
            # stops the gateways: aiokafka leaves a group join cut short with open connections.
            for source, destination in ((kf, "nt"), (nt, "kf")):
                assert source.replicator is not None
                link = source.replicator.links[destination]
                await eventually(functools.partial(_replicating, link), BOUND, what=f"link to {destination}")
            yield Mesh(kf=kf, nt=nt, tansu=tansu, nats_url=nats_server.url)
        finally:
            await kf.stop(grace=1.0)
    finally:
        await nt.stop(grace=1.0)


def _replicating(link: LinkGroup) -> bool:
    return link.state is LinkState.REPLICATING


async def _publish(gw: Gateway, event: event_pb2.Event) -> None:
    async with grpc.aio.insecure_channel(gw.address) as ch:
        resp = await gateway_pb2_grpc.GatewayStub(ch).Publish(gateway_pb2.PublishRequest(events=[event]))
    assert [r.outcome for r in resp.results] == [event_pb2.OUTCOME_ACCEPTED], resp


async def _kafka_records(bootstrap: str, ids: set[str]) -> dict[str, Any]:
    """The records of the Kafka topic that carry ``ids`` (by their ``ce_id`` header), read natively."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: dict[str, Any] = {}
    try:
        parts = await eventually(lambda: consumer.partitions_for_topic(TOPIC), BOUND, what=f"topic {TOPIC}")
        tps = [TopicPartition(TOPIC, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)

        async def all_found() -> bool:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    headers = dict(record.headers)
                    record_id = (headers.get("ce_id") or headers.get("ce-id") or b"").decode()
                    found[record_id] = record
            return ids <= found.keys()

        await eventually(all_found, BOUND, what=f"records {sorted(ids)} in Kafka (found {sorted(found)})")
    finally:
        await consumer.stop()
    return {i: found[i] for i in ids}


def _assert_kafka_binding(record: Any, event: event_pb2.Event) -> None:
    names = [name for name, _ in record.headers]
    assert not [n for n in names if n.startswith("ce-")], names
    headers = dict(record.headers)
    # content-type as it is: the Kafka binding encodes no value.
    assert headers["content-type"] == CONTENT_TYPE.encode()
    assert headers["ce_tenant"] == "acme café".encode()
    assert record.key == event.key.encode()
    message = ce_kafka.KafkaMessage(headers=headers, key=record.key, value=record.value)
    parsed = ce_kafka.from_binary(message, JSONFormat())
    # The SDK reads the record key as the Partitioning extension's partitionkey.
    assert parsed.get_attributes() == {**_expected_attributes(event), "partitionkey": event.key}
    assert parsed.get_data() == {"total": 42}
    assert ce_kafka.from_kafka(message, JSONFormat()).get_id() == event.id
    # The 1.x API of the SDK (cloudevents.kafka there) reads it too.
    legacy = v1_kafka.from_binary(v1_kafka.KafkaMessage(headers=headers, key=record.key, value=record.value))
    assert (legacy["id"], legacy["source"], legacy["dataschema"]) == (event.id, event.source, SCHEMA)
    assert legacy["datacontenttype"] == CONTENT_TYPE


def _assert_nats_binding(msg: Msg, event: event_pb2.Event) -> None:
    headers = dict(msg.headers or {})
    assert msg.data == event.data
    # NATS binding 3.1.3: every attribute a ce- header, datacontenttype included, and every
    # value percent-encoded (space, '"', '%' and non-ASCII).
    assert "content-type" not in {n.lower() for n in headers}
    assert headers["ce-datacontenttype"] == "application/json;%20charset=utf-8"
    assert headers["ce-dataschema"] == SCHEMA
    assert headers["ce-source"] == "/checkout%20service"
    assert headers["ce-tenant"] == "acme%20caf%C3%A9"
    assert not [n for n in headers if n.startswith("ce_")]
    parsed = ce_http.from_binary(ce_http.HTTPMessage(headers=headers, body=msg.data), JSONFormat())
    assert parsed.get_attributes() == _expected_attributes(event)
    assert parsed.get_data() == {"total": 42}


async def test_published_events_are_kafka_binding_records_in_a_kafka_region(
    tansu: Tansu, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with _mesh(tansu, nats_server, tmp_path) as mesh:
        here, there = _event("kf-1"), _event("nt-1")
        await _publish(mesh.kf, here)
        # Written by the NATS region, replicated NATS -> Kafka.
        await _publish(mesh.nt, there)
        records = await _kafka_records(tansu.bootstrap, {"kf-1", "nt-1"})
        _assert_kafka_binding(records["kf-1"], here)
        _assert_kafka_binding(records["nt-1"], there)
        # Subscribe on the Kafka region gives back every attribute, dataschema included.
        async with grpc.aio.insecure_channel(mesh.kf.address) as ch:
            got = {e.id: e for e in await read_all(gateway_pb2_grpc.GatewayStub(ch), "orders/>", expect=2, idle=BOUND)}
        for sent in (here, there):
            event = got[sent.id]
            assert (event.dataschema, event.datacontenttype, event.key) == (SCHEMA, CONTENT_TYPE, sent.key)
            assert dict(event.extensions) == dict(sent.extensions) and event.source == sent.source


async def test_published_events_are_nats_binding_messages_in_a_nats_region(
    tansu: Tansu, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with _mesh(tansu, nats_server, tmp_path) as mesh:
        got: dict[str, Msg] = {}

        async def on_msg(msg: Msg) -> None:
            got[(msg.headers or {}).get("ce-id", "")] = msg

        async with await nats.connect(mesh.nats_url) as nc:
            await nc.subscribe("mesh.>", cb=on_msg)
            await nc.flush()
            here, there = _event("nt-1"), _event("kf-1")
            await _publish(mesh.nt, here)
            # Written by the Kafka region, replicated Kafka -> NATS.
            await _publish(mesh.kf, there)
            await eventually(lambda: {"nt-1", "kf-1"} <= got.keys(), BOUND, what=f"both events on NATS (got {got})")
        _assert_nats_binding(got["nt-1"], here)
        _assert_nats_binding(got["kf-1"], there)
        async with grpc.aio.insecure_channel(mesh.nt.address) as ch:
            events = {
                e.id: e for e in await read_all(gateway_pb2_grpc.GatewayStub(ch), "orders/>", expect=2, idle=BOUND)
            }
        assert {e.dataschema for e in events.values()} == {SCHEMA}
        assert {e.datacontenttype for e in events.values()} == {CONTENT_TYPE}


def _sdk_event() -> CloudEvent:
    return CloudEvent(
        attributes={
            "id": "sdk-1",
            "source": "/sdk producer",
            "type": "com.example.sdk",
            "time": WHEN,
            "datacontenttype": CONTENT_TYPE,
            "dataschema": SCHEMA,
            "tenant": "acme café",
            "partitionkey": "customer-9",
        },
        data={"total": 7},
    )


def _assert_read_back(event: event_pb2.Event) -> None:
    assert (event.id, event.source, event.type, event.specversion) == (
        "sdk-1",
        "/sdk producer",
        "com.example.sdk",
        "1.0",
    )
    assert event.time.ToDatetime(tzinfo=UTC) == WHEN
    assert (event.datacontenttype, event.dataschema) == (CONTENT_TYPE, SCHEMA)
    assert event.extensions["tenant"] == "acme café"
    assert event.data == b'{"total": 7}'


@pytest.mark.parametrize("kind", ["kafka", "nats"])
async def test_events_the_sdk_produces_natively_are_read_by_subscribe(
    tansu: Tansu, nats_server: EmbeddedNats, tmp_path: Path, kind: str
) -> None:
    async with _mesh(tansu, nats_server, tmp_path) as mesh:
        if kind == "kafka":
            message = ce_kafka.to_binary(_sdk_event(), JSONFormat())
            producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap)
            await producer.start()
            try:
                key = message.key.encode() if isinstance(message.key, str) else message.key
                await producer.send_and_wait(TOPIC, message.value, key=key, headers=list(message.headers.items()))
            finally:
                await producer.stop()
            gw = mesh.kf
        else:
            http_message = ce_http.to_binary(_sdk_event(), JSONFormat())
            async with await nats.connect(mesh.nats_url) as nc:
                await nc.jetstream().publish(NATS_SUBJECT, http_message.body, headers=http_message.headers)
            gw = mesh.nt
        async with grpc.aio.insecure_channel(gw.address) as ch:
            [event] = await read_all(gateway_pb2_grpc.GatewayStub(ch), "orders/>", expect=1, idle=BOUND)
        _assert_read_back(event)
        # The Kafka binding's key mapping: partitionkey is the record key, read as the event's key.
        assert event.key == ("customer-9" if kind == "kafka" else "")
        assert event.extensions["partitionkey"] == "customer-9"

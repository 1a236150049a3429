"""OTLP over HTTP from an in-process gateway, per the OTel specification's variables, to an
OTLP/HTTP receiver (``_otlp.HttpReceiver``), with the messaging conventions of each broker kind.

The two-region trace over OTLP/HTTP is in test_tracing.py; here: the traces-only variables win
over the general ones (protocol, and an endpoint taken as the full URL), headers go along, and a
Kafka region's spans say ``kafka`` and name its broker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import pytest

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.config import BrokerKind, MeshConfig, RegionConfig, RouteRule
from meshgate.gateway import Gateway
from meshgate.observability._tracing import Tracing, otlp_protocol, server_attributes
from meshgate.testing import Tansu
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests._replication import SECURITY
from tests._servers import make_kafka_broker
from tests._wait import eventually
from tests.gateway._helpers import ev
from tests.gateway.conftest import mesh_for
from tests.observability._otlp import HttpReceiver, ReceivedSpan, _value

_OTEL = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpReceiver]:
    for name in _OTEL:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    with HttpReceiver() as r:
        yield r


def _attrs(span: ReceivedSpan) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in span.span.attributes}


async def _publish_and_receive(gw: Gateway, receiver: HttpReceiver, event_id: str) -> ReceivedSpan:
    await gw.start()
    try:
        async with grpc.aio.insecure_channel(gw.address) as channel:
            resp = await gateway_pb2_grpc.GatewayStub(channel).Publish(
                gateway_pb2.PublishRequest(events=[ev("orders/created", b"0123456789", id=event_id)])
            )
        assert resp.results[0].outcome == event_pb2.OUTCOME_ACCEPTED, resp
    finally:
        await gw.stop(grace=1.0)  # flushes the spans still queued

    def got() -> ReceivedSpan | None:
        return next((s for s in receiver.spans() if _attrs(s).get("messaging.message.id") == event_id), None)

    return await eventually(got, 20, what=f"the publish span of {event_id} at the OTLP/HTTP receiver")


async def test_traces_variables_win_and_the_traces_endpoint_is_the_full_url(
    receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    # The general variables say gRPC elsewhere; the traces-only ones say HTTP here, at this path.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{receiver.port}/collector/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=eu,api-key=k%3Dv")
    gw = Gateway(config=mesh_for(nats_server), region="here", data_dir=tmp_path, replicate=False)
    span = await _publish_and_receive(gw, receiver, "nats-http")
    assert receiver.paths == {"/collector/traces"}
    assert receiver.content_types == {"application/x-protobuf"}
    assert receiver.header_values("x-tenant") == {"eu"}
    assert receiver.header_values("api-key") == {"k=v"}
    assert not receiver.refused
    url = urlparse(nats_server.url)
    assert span.span.name == "publish orders/created"
    attrs = _attrs(span)
    assert isinstance(attrs.pop("meshgate.admission_us"), int)  # admission and routing took that long
    assert attrs == {
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "orders/created",
        "messaging.message.id": "nats-http",
        "messaging.message.body.size": 10,
        "server.address": url.hostname,
        "server.port": url.port,
        "cloud.region": "here",
        "meshgate.route": "here,there",
        "meshgate.outcome": "accepted",
        "meshgate.sequence": 1,
    }


async def test_a_kafka_region_traces_as_kafka_over_otlp_http(
    receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch, tansu: Tansu, tmp_path: Path
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
    config = MeshConfig(
        regions=(RegionConfig(name="kf", kind=BrokerKind.KAFKA, brokers=(tansu.bootstrap,), gateway="127.0.0.1:0"),),
        routing=(RouteRule(index=0, topic="orders/*", regions=("kf",)),),
        security=SECURITY,
    )
    gw = Gateway(config=config, region="kf", data_dir=tmp_path, broker=make_kafka_broker(tansu), replicate=False)
    span = await _publish_and_receive(gw, receiver, "kafka-http")
    assert receiver.paths == {"/v1/traces"}  # the base endpoint plus the signal's path
    attrs = _attrs(span)
    assert span.span.name == "publish orders/created"
    assert attrs["messaging.system"] == "kafka"  # main said nats for every region
    assert (attrs["server.address"], attrs["server.port"]) == ("127.0.0.1", tansu.port)
    assert attrs["messaging.message.body.size"] == 10


def test_protocol_choice(caplog: pytest.LogCaptureFixture) -> None:
    assert otlp_protocol({}) == "grpc"
    assert otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}) == "http/protobuf"
    assert (
        otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"})
        == "grpc"
    )
    # An unknown protocol exports nothing, and says so: not a gRPC exporter failing every export.
    with caplog.at_level(logging.WARNING, "meshgate.tracing"):
        off = Tracing.from_env(
            "a", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}
        )
    assert not off.enabled
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=thrift is not one of grpc, http/protobuf, http/json" in caplog.text


def test_server_attributes() -> None:
    assert server_attributes("nats://10.0.0.1:4222") == {"server.address": "10.0.0.1", "server.port": 4222}
    assert server_attributes("kafka-0.kafka:9092") == {"server.address": "kafka-0.kafka", "server.port": 9092}
    assert server_attributes("[::1]:7400") == {"server.address": "::1", "server.port": 7400}
    assert server_attributes("broker") == {"server.address": "broker"}
    assert server_attributes(None) == {}

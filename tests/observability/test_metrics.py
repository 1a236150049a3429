"""The Prometheus metrics of live gateways: counters move with the right labels, /metrics lints.

`promtool check metrics` runs on the live output when promtool is installed (Debian's
`prometheus` package; CI installs it); without it only that check is skipped.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import platform
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlparse

import aiokafka.errors as ke
import grpc
import nats
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshgate.brokers import (
    BrokerUnavailableError,
    EventRejectedError,
    KafkaMessageTooLargeError,
    MessageTooLargeError,
)
from meshgate.brokers.embedded import EmbeddedNats
from meshgate.brokers.kafka._errors import kafka_error
from meshgate.brokers.nats._errors import jetstream_error
from meshgate.config import BrokerKind, Limits, MeshConfig, RegionConfig, RouteRule, Settings
from meshgate.gateway import Gateway
from meshgate.gateway._admission import Admission
from meshgate.gateway._metrics import REFUSAL_REASONS, broker_reason
from meshgate.replicator._metrics import LINK_STATES
from meshgate.testing import Tansu
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc, replication_pb2, replication_pb2_grpc
from tests._full_store import SmallStoreNats, fill_with_filler
from tests._replication import METADATA, SECURITY
from tests._servers import free_port, make_kafka_broker
from tests._wait import eventually
from tests.gateway._helpers import ev, read_all, two_region_mesh
from tests.gateway.conftest import mesh_for
from tests.observability.test_rules import METRICS

PROMTOOL = shutil.which("promtool")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> str:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body: bytes = resp.read()
            return body.decode()

    return await asyncio.to_thread(get)


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(got: Samples, name: str, **labels: str) -> float:
    return got.get((name, frozenset(labels.items())), 0.0)


def series(got: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for n, labels in got if n == name]


def promtool_check_metrics(text: str) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool not installed (apt-get install -y prometheus); `promtool check metrics` not run")
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"promtool check metrics:\n{proc.stdout}{proc.stderr}"


@pytest.fixture
async def gateway(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[tuple[Gateway, str]]:
    config = mesh_for(nats_server, limits=Limits(max_data_bytes=4096, max_batch_events=100))
    port = free_port()
    gw = Gateway(config=config, region="here", data_dir=tmp_path, metrics_listen=f"127.0.0.1:{port}")
    await gw.start()
    try:
        yield gw, f"http://127.0.0.1:{port}/metrics"
    finally:
        await gw.stop(grace=1.0)


def test_admission_says_which_refusals_are_over_a_size_limit() -> None:
    limits = Limits(max_data_bytes=8, max_extensions=1, max_attributes_bytes=1024)
    admission = Admission(region="here", limits=limits, route=lambda topic, region: ())
    too_large = [
        ev(data=b"x" * 9),
        ev(id="i" * 300),
        ev(extensions={"a": "1", "b": "2"}),
        ev(source="s" * 2000),
        ev(extensions={"a": "v" * 1100}),
    ]
    invalid = [ev(topic=""), ev(topic="bad//topic"), ev(id="bad\x01id"), ev(specversion="0.3"), ev(origin="x")]
    for event in too_large:
        refusal = admission.check(event)
        assert refusal is not None and refusal.too_large, (event, refusal)
    for event in invalid:
        refusal = admission.check(event)
        assert refusal is not None and not refusal.too_large, (event, refusal)
    assert admission.check(ev()) is None


def test_broker_refusals_are_labelled_by_their_class_not_their_message() -> None:
    assert broker_reason(BrokerUnavailableError("timeout")) == "unavailable"
    assert broker_reason(BrokerUnavailableError("too large, no room")) == "unavailable"
    assert broker_reason(EventRejectedError("no")) == "invalid"
    assert broker_reason(EventRejectedError("event too large: exceeds max_data_bytes")) == "invalid"
    # Too large, whichever adapter said so, by its own check or the broker's answer.
    assert broker_reason(MessageTooLargeError(size=10, data_size=5, max_payload=8)) == "too_large"
    assert broker_reason(KafkaMessageTooLargeError(size=10, data_size=5, max_message_bytes=8)) == "too_large"
    assert broker_reason(kafka_error(ke.MessageSizeTooLargeError(), "write")) == "too_large"
    assert broker_reason(kafka_error(ke.RecordListTooLargeError(), "write")) == "too_large"
    too_big = jetstream_error(code=400, err_code=10054, description="message size exceeds maximum allowed", subject="s")
    assert broker_reason(too_big) == "too_large"
    assert broker_reason(kafka_error(ke.InvalidTopicError(), "write")) == "invalid"
    # Out of room: its own label, not unavailable.
    assert broker_reason(kafka_error(ke.KafkaStorageError(), "write")) == "storage_full"
    full = jetstream_error(code=500, err_code=10023, description="insufficient resources", subject="s")
    assert broker_reason(full) == "storage_full"


async def test_publish_counters_and_live_metrics(gateway: tuple[Gateway, str]) -> None:
    gw, url = gateway
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id=f"ok-{i}") for i in range(3)]))
        await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id="ok-0")]))  # duplicate
        bad_cases = [
            ([ev(topic="bad//topic")], grpc.StatusCode.INVALID_ARGUMENT),
            ([ev(id="big", data=b"x" * 5000), ev(id="good-in-bad-batch")], grpc.StatusCode.INVALID_ARGUMENT),
            ([ev(id=f"many-{i}") for i in range(101)], grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for events, code in bad_cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Publish(gateway_pb2.PublishRequest(events=events))
            assert err.value.code() == code
        # A stream answers per event: one good, one invalid.
        call = stub.PublishStream()
        await call.write(gateway_pb2.PublishRequest(events=[ev(id="s-ok"), ev(topic="")]))
        resp = await call.read()
        await call.done_writing()
        assert isinstance(resp, gateway_pb2.PublishResponse)
        assert [r.outcome for r in resp.results] == [event_pb2.OUTCOME_ACCEPTED, event_pb2.OUTCOME_REJECTED]

    text = await scrape(url)
    got = samples(text)
    assert value(got, "meshgate_events_total", region="here", outcome="accepted") == 4
    assert value(got, "meshgate_events_total", region="here", outcome="duplicate") == 1
    refused = {r: value(got, "meshgate_events_refused_total", region="here", reason=r) for r in REFUSAL_REASONS}
    # bad topic + the stream's missing topic; the oversize event and its batch-mate; 101 events.
    assert refused == {
        "invalid": 2,
        "too_large": 2 + 101,
        "unavailable": 0,
        "storage_full": 0,
        "backpressure": 0,
        "shutting_down": 0,
        "permission": 0,
        "unauthenticated": 0,
        "rate_limited": 0,
    }
    assert value(got, "meshgate_publish_duration_seconds_count", region="here") >= 3
    assert value(got, "meshgate_broker_connected", region="here") == 1
    # The link to `there` (no gateway listening at 127.0.0.1:0) exists: one state at 1.
    states = {s: value(got, "meshgate_link_state", region="here", destination="there", state=s) for s in LINK_STATES}
    assert sorted(states.values()) == [0.0] * (len(LINK_STATES) - 1) + [1.0]
    assert not series(got, "meshgate_config_reloads_total")  # no file path
    # No label carries a topic or an event id.
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("meshgate_") and s.name != "meshgate_build_info":
                assert set(s.labels) <= {"region", "destination", "outcome", "reason", "state", "result", "le"}, s
    # Every metric the dashboard and the alerts use is exposed (reloads need a mesh file path).
    exposed = {n.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for n, _ in got}
    assert METRICS - {"meshgate_config_reloads_total"} <= exposed
    # The live output and the registry agree, and promtool finds nothing to lint.
    assert samples(generate_latest(gw.metrics.registry).decode()).keys() == got.keys()
    promtool_check_metrics(text)


async def test_exposition_runtime_build_info_region_on_every_family_and_no_created_series(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """process_*/python_* collectors and meshgate_build_info are there; every meshgate_* family has
    the region (the config reloads too); no _created series (main: one per counter and histogram
    child, a third of the exposition); promtool lints nothing."""
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("# the watcher is given the running config; this file only has to exist\n")
    port = free_port()
    gw = Gateway(
        config=mesh_for(nats_server),
        region="here",
        data_dir=tmp_path,
        metrics_listen=f"127.0.0.1:{port}",
        config_path=mesh,
        watch_config=False,
    )
    await gw.start()
    try:
        text = await scrape(f"http://127.0.0.1:{port}/metrics")
        got = samples(text)
        names = {n for n, _ in got}
        assert {
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
            "python_info",
            "python_gc_objects_collected_total",
        } <= names
        (build,) = series(got, "meshgate_build_info")
        assert build == {
            "version": importlib.metadata.version("meshgate"),
            "python": platform.python_version(),
            "region": "here",
        }
        assert value(got, "meshgate_build_info", **build) == 1
        assert value(got, "meshgate_ready", region="here") == 1
        assert value(got, "meshgate_config_reloads_total", region="here", result="refused") == 0
        assert ("meshgate_config_reloads_total", frozenset({"region": "here", "result": "applied"}.items())) in got
        for name, labels in got:
            if name.startswith("meshgate_"):
                assert dict(labels).get("region") == "here", (name, dict(labels))
        assert not [n for n in names if n.endswith("_created")]
        assert "_created" not in text
        promtool_check_metrics(text)
    finally:
        await gw.stop(grace=1.0)
    # Stopped: not ready (what /readyz would answer), read at scrape time.
    assert gw.metrics.registry.get_sample_value("meshgate_ready", {"region": "here"}) == 0


async def _scrape_until(url: str, check: Callable[[Samples], bool], *, what: str) -> Samples:
    """Scrapes ``url`` until ``check`` holds for its samples, which are returned."""

    async def scraped() -> Samples | None:
        got = samples(await scrape(url))
        return got if check(got) else None

    return await eventually(scraped, 15, what=what)


async def test_link_and_ingress_metrics_across_two_regions(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with EmbeddedNats(data_dir=tmp_path / "there-nats") as there_server:
        probe = two_region_mesh(nats_server, there_server)
        there_port, here_port = free_port(), free_port()
        there = Gateway(
            config=probe,
            region="there",
            data_dir=tmp_path,
            replicate=False,
            metrics_listen=f"127.0.0.1:{there_port}",
        )
        await there.start()
        there_url = f"http://127.0.0.1:{there_port}/metrics"
        here_url = f"http://127.0.0.1:{here_port}/metrics"
        config = two_region_mesh(
            nats_server,
            there_server,
            there_gateway=there.address,
            routing=(RouteRule(index=0, topic="orders/*", regions=("here", "there")),),
        )
        here = Gateway(config=config, region="here", data_dir=tmp_path, metrics_listen=f"127.0.0.1:{here_port}")
        try:
            await here.start()
            async with grpc.aio.insecure_channel(here.address) as ch:
                stub = gateway_pb2_grpc.GatewayStub(ch)
                await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id=f"a-{i}") for i in range(20)]))
                # Routed to `here` only: not forwarded, not counted on the link.
                await stub.Publish(gateway_pb2.PublishRequest(events=[ev("inventory/x", id="local")]))
                log = await read_all(stub, "orders/>", expect=20)
            link = {"region": "here", "destination": "there"}
            got = await _scrape_until(
                here_url,
                lambda s: (
                    value(s, "meshgate_forwarded_total", **link) == 20
                    and value(s, "meshgate_link_lag_events", **link) == 0
                ),
                what="20 forwarded and lag 0 on here's link",
            )
            assert value(got, "meshgate_link_state", **link, state="replicating") == 1
            assert value(got, "meshgate_link_state", **link, state="backing_off") == 0
            assert value(got, "meshgate_link_lag_seconds", **link) == 0
            assert value(got, "meshgate_dead_lettered_total", **link) == 0
            assert {"region": "here", "destination": "there"} in series(got, "meshgate_link_retries_total")

            got = samples(await scrape(there_url))
            assert value(got, "meshgate_replicated_events_total", region="there", outcome="stored") == 20
            assert value(got, "meshgate_replication_latency_seconds_count", region="there") == 20
            assert value(got, "meshgate_replication_latency_seconds_bucket", region="there", le="60.0") == 20

            # The same events sent again, as a source resends after a failure: dedup hits.
            async def resend() -> AsyncIterator[replication_pb2.ReplicateRequest]:
                yield replication_pb2.ReplicateRequest(source_region="here", batch_id=1, events=log)

            # A region outside the mesh may not replicate: refused for permission.
            async def intruder() -> AsyncIterator[replication_pb2.ReplicateRequest]:
                yield replication_pb2.ReplicateRequest(source_region="elsewhere", batch_id=1, events=log[:2])

            async with grpc.aio.insecure_channel(there.address) as ch:
                repl = replication_pb2_grpc.ReplicationStub(ch)
                answers = [r async for r in repl.Replicate(resend(), metadata=METADATA)]
                assert {r.outcome for r in answers[0].results} == {event_pb2.OUTCOME_DUPLICATE}
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    _ = [r async for r in repl.Replicate(intruder(), metadata=METADATA)]
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            text = await scrape(there_url)
            got = samples(text)
            assert value(got, "meshgate_replicated_events_total", region="there", outcome="duplicate") == 20
            assert value(got, "meshgate_replicated_events_total", region="there", outcome="stored") == 20
            assert value(got, "meshgate_events_refused_total", region="there", reason="permission") == 2
            promtool_check_metrics(text)

            # The destination goes away: the link's lag in seconds grows while it is stuck.
            await there.stop(grace=1.0)
            async with grpc.aio.insecure_channel(here.address) as ch:
                stub = gateway_pb2_grpc.GatewayStub(ch)
                await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id=f"b-{i}") for i in range(5)]))
            first = await _scrape_until(
                here_url,
                lambda s: (
                    value(s, "meshgate_link_lag_events", **link) == 5
                    and value(s, "meshgate_link_lag_seconds", **link) > 0
                ),
                what="a lag of 5 events and some seconds on here's link",
            )
            await asyncio.sleep(1.0)
            later = samples(await scrape(here_url))
            assert (
                value(later, "meshgate_link_lag_seconds", **link)
                >= value(first, "meshgate_link_lag_seconds", **link) + 0.9
            )
            assert value(later, "meshgate_link_state", **link, state="replicating") == 0
            assert value(later, "meshgate_link_retries_total", **link) >= 1
            promtool_check_metrics(await scrape(here_url))
        finally:
            await here.stop(grace=1.0)
            await there.stop(grace=1.0)


# -- refusals by real brokers: the label comes from the kind of refusal ---------------------------


def refused_by_reason(gw: Gateway) -> dict[str, float]:
    got = samples(generate_latest(gw.metrics.registry).decode())
    counts = {r: value(got, "meshgate_events_refused_total", region=gw.region, reason=r) for r in REFUSAL_REASONS}
    return {r: n for r, n in counts.items() if n}


async def publish_one(gw: Gateway, event: event_pb2.Event) -> event_pb2.EventResult:
    """Publishes one event on a stream (answered per event, not as a status)."""
    async with grpc.aio.insecure_channel(gw.address) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).PublishStream()
        await call.write(gateway_pb2.PublishRequest(events=[event]))
        resp = await call.read()
        await call.done_writing()
    assert isinstance(resp, gateway_pb2.PublishResponse)
    (result,) = resp.results
    return result


async def test_a_record_too_large_for_kafka_is_counted_too_large(tansu: Tansu, tmp_path: Path) -> None:
    config = MeshConfig(
        regions=(
            RegionConfig(name="kf", kind=BrokerKind.KAFKA, brokers=(tansu.bootstrap,), gateway="127.0.0.1:0"),
            RegionConfig(name="there", kind=BrokerKind.NATS, brokers=("127.0.0.1:1",), gateway="127.0.0.1:0"),
        ),
        routing=(RouteRule(index=0, topic="orders/*", regions=("kf",)),),
        # Admission lets 4 KiB of data through; the region's Kafka records hold at most 2 KiB.
        settings=Settings(limits=Limits(max_data_bytes=4096)),
        security=SECURITY,
    )
    gw = Gateway(
        config=config,
        region="kf",
        data_dir=tmp_path,
        listen="127.0.0.1:0",
        broker=make_kafka_broker(tansu, max_message_bytes=2048),
        replicate=False,
    )
    await gw.start()
    try:
        result = await publish_one(gw, ev(id="big", data=b"x" * 3000))
        assert result.outcome == event_pb2.OUTCOME_REJECTED and "max_message_bytes" in result.message, result
        assert (await publish_one(gw, ev(id="small"))).outcome == event_pb2.OUTCOME_ACCEPTED
        assert refused_by_reason(gw) == {"too_large": 1}
    finally:
        await gw.stop(grace=1.0)


async def test_an_event_over_the_streams_max_msg_size_is_counted_too_large(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    gw = Gateway(config=mesh_for(nats_server), region="here", data_dir=tmp_path, listen="127.0.0.1:0", replicate=False)
    await gw.start()
    try:
        # An operator caps the stream's messages below the server's max_payload: JetStream
        # itself refuses the event (err_code 10054), not the adapter's max_payload check.
        async with await nats.connect(nats_server.url) as nc:
            jsm = nc.jetstream()
            info = await jsm.stream_info("MESHGATE")
            info.config.max_msg_size = 1024
            await jsm.update_stream(info.config)
        result = await publish_one(gw, ev(id="big", data=b"x" * 2000))
        assert result.outcome == event_pb2.OUTCOME_REJECTED and "10054" in result.message, result
        assert refused_by_reason(gw) == {"too_large": 1}
    finally:
        await gw.stop(grace=1.0)


async def test_a_full_jetstream_is_counted_storage_full(tmp_path: Path) -> None:
    server = SmallStoreNats(max_file_store=512 * 1024, data_dir=tmp_path / "small", server_name="meshgate-small")
    await server.start()
    gw = Gateway(config=mesh_for(server), region="here", data_dir=tmp_path, listen="127.0.0.1:0", replicate=False)
    try:
        await gw.start()
        assert (await publish_one(gw, ev(id="before"))).outcome == event_pb2.OUTCOME_ACCEPTED
        await fill_with_filler(server.url)
        result = await publish_one(gw, ev(id="full", data=b"x" * 2048))
        assert result.outcome == event_pb2.OUTCOME_REJECTED, result
        assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], result
        assert refused_by_reason(gw) == {"storage_full": 1}
    finally:
        await gw.stop(grace=1.0)
        await server.stop()


# -- replication latency: from the origin broker's stored time, both broker kinds -----------------


async def test_replication_latency_runs_from_the_stored_time_for_kafka_and_nats_origins(
    tansu: Tansu, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """Events whose producer set a CloudEvents time a year ago, replicated both ways between a
    Kafka and a NATS region by real links: each destination measures from when the origin's
    broker stored the event (Kafka's record timestamp, JetStream's stored time), so every
    latency is seconds, not a year (main: a year per event)."""
    url = urlparse(nats_server.url)
    config = MeshConfig(
        regions=(
            RegionConfig(
                name="kf", kind=BrokerKind.KAFKA, brokers=(tansu.bootstrap,), gateway=f"127.0.0.1:{free_port()}"
            ),
            RegionConfig(
                name="nt",
                kind=BrokerKind.NATS,
                brokers=(f"{url.hostname}:{url.port}",),
                gateway=f"127.0.0.1:{free_port()}",
            ),
        ),
        routing=(RouteRule(index=0, topic="orders/*", regions=("kf", "nt")),),
        security=SECURITY,
    )
    gws = {
        "kf": Gateway(config=config, region="kf", data_dir=tmp_path / "kf", broker=make_kafka_broker(tansu)),
        "nt": Gateway(config=config, region="nt", data_dir=tmp_path / "nt"),
    }
    for gw in gws.values():
        await gw.start()
    try:
        for name, gw in gws.items():
            events = [ev(id=f"{name}-{i}") for i in range(5)]
            for e in events:
                e.time.GetCurrentTime()
                e.time.seconds -= 365 * 24 * 3600
            async with grpc.aio.insecure_channel(gw.address) as ch:
                resp = await gateway_pb2_grpc.GatewayStub(ch).Publish(gateway_pb2.PublishRequest(events=events))
            assert all(r.outcome == event_pb2.OUTCOME_ACCEPTED for r in resp.results), resp
        for name, gw in gws.items():
            registry = gw.metrics.registry

            def count(registry: CollectorRegistry = registry, name: str = name) -> bool:
                return registry.get_sample_value("meshgate_replication_latency_seconds_count", {"region": name}) == 5

            await eventually(count, 60, what=f"5 replicated events measured in {name}")
            total = registry.get_sample_value("meshgate_replication_latency_seconds_sum", {"region": name})
            assert total is not None and 0 <= total < 5 * 60, (name, total)
            assert (
                registry.get_sample_value("meshgate_replication_latency_seconds_bucket", {"region": name, "le": "60.0"})
                == 5
            )
    finally:
        for gw in gws.values():
            await gw.stop(grace=1.0)

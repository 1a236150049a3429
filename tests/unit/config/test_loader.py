"""Loading valid mesh files: the brief's example, the examples, defaults, values and positions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import jsonschema
import pytest

from meshgate.config import (
    EXAMPLES_DIR,
    QUICKSTART_PATH,
    BrokerKind,
    Limits,
    MeshConfig,
    NatsSettings,
    Settings,
    load_config,
    load_config_text,
    mesh_schema,
    parse_duration,
    parse_size,
    split_host_port,
)
from meshgate.router import Router

BRIEF = """\
event_mesh:
  regions:
    - name: us-west
      brokers: ["broker1.us-west", "broker2.us-west"]
    - name: eu-central
      brokers: ["broker1.eu", "broker2.eu"]
  routing:
    - topic: "orders/*"
      regions: ["us-west", "eu-central"]
    - topic: "inventory/*"
      regions: ["us-west"]
"""


def test_brief_example_loads_as_written() -> None:
    config = load_config_text(BRIEF, "brief.yaml")
    assert config.region_names == ("us-west", "eu-central")
    us_west = config.region("us-west")
    assert us_west.kind is BrokerKind.NATS
    assert us_west.brokers == ("broker1.us-west", "broker2.us-west")
    assert us_west.gateway is None
    assert us_west.line == 3
    assert [(r.index, r.topic, r.regions, r.line, r.column) for r in config.routing] == [
        (0, "orders/*", ("us-west", "eu-central"), 8, 7),
        (1, "inventory/*", ("us-west",), 10, 7),
    ]
    assert config.settings == Settings()
    assert config.source == "brief.yaml"
    assert config.sha256 == hashlib.sha256(BRIEF.encode()).hexdigest()


def test_brief_example_file_is_the_contract_example() -> None:
    path = EXAMPLES_DIR / "brief.yaml"
    assert path.read_text() == BRIEF
    config = load_config(path)
    assert config.source == str(path)
    assert config.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    router = Router.from_config(config)
    assert router.route("orders/created", "us-west") == ("eu-central", "us-west")
    assert router.route("inventory/x", "eu-central") == ("eu-central", "us-west")
    assert router.route("shipping/x", "us-west") == ("us-west",)


def test_quickstart() -> None:
    assert QUICKSTART_PATH.is_file()
    config = load_config(QUICKSTART_PATH)
    assert config.region_names == ("us-west", "eu-central", "ap-south")
    assert {r.kind for r in config.regions} == {BrokerKind.EMBEDDED}
    assert [r.gateway for r in config.regions] == ["127.0.0.1:7401", "127.0.0.1:7402", "127.0.0.1:7403"]
    assert [r.metrics for r in config.regions] == ["127.0.0.1:9401", "127.0.0.1:9402", "127.0.0.1:9403"]
    router = Router.from_config(config)
    assert router.route("orders/created", "ap-south") == ("ap-south", "eu-central", "us-west")
    assert router.route("inventory/sku-1", "eu-central") == ("eu-central", "us-west")
    assert router.route("audit/a/b/c", "ap-south") == ("ap-south", "us-west")
    assert any(r.topic.endswith(">") for r in config.routing)


def test_region_lookup_errors_name_the_regions() -> None:
    config = load_config_text(BRIEF, "brief.yaml")
    with pytest.raises(KeyError, match="regions: us-west, eu-central"):
        config.region("mars")


def test_schema_is_valid_draft_2020_12() -> None:
    schema = mesh_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False


def test_every_option() -> None:
    text = """\
event_mesh:
  regions:
    - name: n
      kind: nats
      brokers: [n1.example:4222, n2.example]
      gateway: 0.0.0.0:7401
      metrics: 0.0.0.0:9401
      nats:
        subject_prefix: "acme.mesh."
        stream: ACME
        replicas: 3
        max_age: 30d
        max_bytes: 10GiB
        max_msgs: 1000000
    - name: k
      kind: kafka
      brokers: ["k1:9092"]
      gateway: "[::1]:7402"
      kafka: {topic_prefix: "", partitions: 12, replication_factor: 3, max_window_ids: 50000}
    - name: e
      kind: embedded
      nats: {sync_always: true, max_age: 1h30m}
  routing:
  settings:
    idempotency_window: 1h
    shutdown_grace: 2.5
    limits:
      max_data_bytes: 4MiB
      max_attributes_bytes: 16384
      max_extensions: 8
      max_batch_events: 500
      max_inflight_events_per_stream: 5000
      max_inflight_events: 50000
      max_message_bytes: 8MiB
      max_metadata_bytes: 32KiB
      max_streams_per_client: 4
      client_rate: 250.5
      client_burst: 1000
      subscribe_buffer_events: 500
"""
    config = load_config_text(text)
    n, k, e = config.regions
    assert n.nats == NatsSettings(
        subject_prefix="acme.mesh.",
        stream="ACME",
        replicas=3,
        max_age_seconds=30 * 86400.0,
        max_bytes=10 * 1024**3,
        max_msgs=1_000_000,
    )
    assert (n.gateway, n.metrics) == ("0.0.0.0:7401", "0.0.0.0:9401")
    assert k.kind is BrokerKind.KAFKA
    assert (k.kafka.topic_prefix, k.kafka.partitions, k.kafka.replication_factor) == ("", 12, 3)
    assert k.kafka.max_window_ids == 50_000
    assert e.nats.sync_always is True
    assert e.nats.max_age_seconds == 5400.0
    assert config.routing == ()
    assert config.settings == Settings(
        idempotency_window_seconds=3600.0,
        shutdown_grace_seconds=2.5,
        limits=Limits(
            max_data_bytes=4 * 1024 * 1024,
            max_attributes_bytes=16384,
            max_extensions=8,
            max_batch_events=500,
            max_inflight_events_per_stream=5000,
            max_inflight_events=50000,
            max_message_bytes=8 * 1024 * 1024,
            max_metadata_bytes=32 * 1024,
            max_streams_per_client=4,
            client_rate=250.5,
            client_burst=1000,
            subscribe_buffer_events=500,
        ),
    )


def test_anchors_and_merge_keys() -> None:
    text = """\
event_mesh:
  regions:
    - &base
      name: a
      kind: embedded
      nats: {max_age: 2d}
    - <<: *base
      name: b
  routing:
    - {topic: "x/>", regions: [a, b]}
"""
    config = load_config_text(text)
    assert config.region_names == ("a", "b")
    assert config.region("b").nats.max_age_seconds == 2 * 86400.0
    assert config.region("b").kind is BrokerKind.EMBEDDED
    assert config.routing[0].line == 10


def test_utf8_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + BRIEF.replace("\n", "\r\n").encode())
    config = load_config(path)
    assert config.routing[1].line == 10
    assert config.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_model_is_frozen() -> None:
    config = load_config_text(BRIEF)
    with pytest.raises(AttributeError):
        config.routing = ()  # type: ignore[misc]
    assert isinstance(config, MeshConfig)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (10, 10.0),
        (2.5, 2.5),
        ("500ms", 0.5),
        ("10s", 10.0),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("0", None),
        ("-1s", None),
        ("10", None),
        ("1w", None),
        ("", None),
        (True, None),
        (-3, None),
        ([1], None),
    ],
)
def test_parse_duration(value: object, seconds: float | None) -> None:
    if seconds is None:
        with pytest.raises((TypeError, ValueError)):
            parse_duration(value)
    else:
        assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1024, 1024),
        ("512KiB", 512 * 1024),
        ("1MiB", 1024**2),
        ("10GB", 10 * 1000**3),
        ("2kB", 2000),
        ("100", 100),
        ("100B", 100),
        ("1.5KiB", 1536),
        (4.0, 4),
        ("1 MiBs", None),
        (-1, None),
        (False, None),
    ],
)
def test_parse_size(value: object, size: int | None) -> None:
    if size is None:
        with pytest.raises((TypeError, ValueError)):
            parse_size(value)
    else:
        assert parse_size(value) == size


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:7401") == ("127.0.0.1", 7401)
    assert split_host_port("[::1]:7401") == ("::1", 7401)
    assert split_host_port("broker1.us-west", port_required=False) == ("broker1.us-west", None)
    assert split_host_port("[::1]", port_required=False) == ("::1", None)
    with pytest.raises(ValueError, match="the port is missing"):
        split_host_port("broker1")
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        split_host_port("")

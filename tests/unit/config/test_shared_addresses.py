"""Two regions on one address: gateways and metrics spelled apart, and regions sharing a broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshgate.config import ConfigError, load_config_text
from tests._cli import run_cli

FILE = "mesh.yaml"
LOOPBACK = "localhost, 127.0.0.1, [::1], 0.0.0.0 and [::] all reach this machine"


def mesh(second_gateway: str = "127.0.0.1:7402", *, first: str = "", second: str = "") -> str:
    """Two regions at lines 3 and 5 + len(first lines); ``first`` and ``second`` are more lines of each."""

    def more(lines: str) -> str:
        return "".join(f"      {line}\n" for line in lines.splitlines())

    return (
        "event_mesh:\n  regions:\n    - name: us-west\n      gateway: 127.0.0.1:7401\n"
        + more(first)
        + f"    - name: eu-central\n      gateway: {second_gateway}\n"
        + more(second)
    )


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, FILE, env={})
    return list(info.value.lines)


EMBEDDED = "kind: embedded"


@pytest.mark.parametrize(
    ("address", "column"),
    [
        ("localhost:7401", 16),
        ("LOCALHOST:7401", 16),
        ("localhost.:7401", 16),
        ("[::1]:7401", 16),
        ("0.0.0.0:7401", 16),
        ("[::ffff:127.0.0.1]:7401", 16),
    ],
)
def test_a_gateway_spelled_apart_is_the_same_address(address: str, column: int) -> None:
    text = mesh(f'"{address}"' if address.startswith("[") else address, first=EMBEDDED, second=EMBEDDED)
    assert errors(text) == [
        f"mesh.yaml:7:{column}: event_mesh.regions[1].gateway: address {address} is the same as 127.0.0.1:7401,"
        f" which is already the gateway of region us-west (line 3) ({LOOPBACK}); every gateway and metrics"
        " endpoint needs its own HOST:PORT"
    ]


def test_metrics_spelled_apart_collide_with_a_gateway_or_metrics() -> None:
    text = mesh(first=f"{EMBEDDED}\nmetrics: localhost:9401", second=f'{EMBEDDED}\nmetrics: "[::1]:9401"')
    assert errors(text) == [
        "mesh.yaml:10:16: event_mesh.regions[1].metrics: address [::1]:9401 is the same as localhost:9401,"
        f" which is already the metrics of region us-west (line 3) ({LOOPBACK}); every gateway and metrics"
        " endpoint needs its own HOST:PORT"
    ]
    text = mesh(first=EMBEDDED, second=f"{EMBEDDED}\nmetrics: LOCALHOST:7401")
    assert "is the same as 127.0.0.1:7401, which is already the gateway of region us-west" in errors(text)[0]


def test_two_embedded_regions_on_one_broker_address() -> None:
    text = mesh(
        first='kind: embedded\nbrokers: ["127.0.0.1:4250"]', second='kind: embedded\nbrokers: ["localhost:4250"]'
    )
    assert errors(text) == [
        "mesh.yaml:10:17: event_mesh.regions[1].brokers[0]: broker localhost:4250 is the same as 127.0.0.1:4250,"
        f" a broker of region us-west (line 3) (both regions' gateways run on this machine, so it is one place for"
        f" both; {LOOPBACK}); both are embedded regions, so both would run a"
        " broker listening there and the second would fail to start; give this one another port, or no brokers"
        " (a free port of 127.0.0.1)"
    ]
    # Without a port an embedded broker listens on 4222, like a NATS client dials.
    text = mesh(first='kind: embedded\nbrokers: ["127.0.0.1"]', second='kind: embedded\nbrokers: ["127.0.0.1:4222"]')
    assert (
        "broker 127.0.0.1:4222 is the same as 127.0.0.1, a broker of region us-west (line 3) (both regions'"
        " gateways run on this machine, so it is one place for both; without a port, a broker is at port 4222;"
        in (errors(text)[0])
    )
    # Without brokers each embedded region takes a free port of its own; other addresses are other places.
    for other in ("127.0.0.2:7401", "10.0.0.1:7401", "127.0.0.1:7402", "gw2.example.com:7401"):
        assert load_config_text(mesh(other, first=EMBEDDED, second=EMBEDDED), env={})


def test_two_nats_regions_on_one_stream() -> None:
    text = mesh(first='brokers: ["nats1.example.com", nats2.example.com]', second='brokers: ["NATS2.example.com:4222"]')
    assert errors(text) == [
        "mesh.yaml:8:17: event_mesh.regions[1].brokers[0]: broker NATS2.example.com:4222 is the same as"
        " nats2.example.com, a broker of region us-west (line 3) (without a port, a broker is at port 4222);"
        " both use JetStream stream MESHGATE, so they would share one stream (each reading the other's events as"
        " its own); give this region its own nats.stream and nats.subject_prefix (e.g. stream: MESHGATE_EU,"
        " subject_prefix: 'eu.'), or other brokers"
    ]


def test_two_nats_regions_with_overlapping_subjects() -> None:
    text = mesh(
        first='brokers: ["nats1.example.com:4222"]\nnats: {stream: US, subject_prefix: "mesh."}',
        second='brokers: ["nats1.example.com:4222"]\nnats: {stream: EU, subject_prefix: "mesh.eu."}',
    )
    assert errors(text) == [
        "mesh.yaml:9:17: event_mesh.regions[1].brokers[0]: broker nats1.example.com:4222 is also a broker of region"
        " us-west (line 3); its stream EU would hold subjects mesh.eu.> and that region's stream US holds mesh.>, which"
        " overlap, and JetStream refuses a second stream over the same subjects; give this region a"
        " nats.subject_prefix that neither starts nor is started by the other's (e.g. 'eu.'), or other brokers"
    ]


def test_nats_regions_on_one_server_with_their_own_stream_and_subjects_pass() -> None:
    # Decided: one JetStream server may hold several regions, each in a stream and subjects of its own.
    text = mesh(
        first='brokers: ["nats1.example.com:4222"]\nnats: {stream: US, subject_prefix: "us."}',
        second='brokers: ["nats1.example.com:4222"]\nnats: {stream: EU, subject_prefix: "eu."}',
    )
    assert load_config_text(text, env={}).region("eu-central").nats.stream == "EU"
    # An embedded region's own server, reached as a nats region: the same rule.
    text = mesh(
        first='kind: embedded\nbrokers: ["127.0.0.1:4250"]',
        second='brokers: ["localhost:4250"]\nnats: {stream: EU, subject_prefix: "eu."}',
    )
    assert load_config_text(text, env={})
    assert (
        "both use JetStream stream MESHGATE" in errors(text.replace('nats: {stream: EU, subject_prefix: "eu."}', ""))[0]
    )


@pytest.mark.parametrize(
    "broker",
    ["127.0.0.1:4222", "localhost", "nats", "nats-0.nats.nats.svc.cluster.local:4222", "nats.nats.svc", "10.0.0.5"],
)
def test_a_local_network_name_is_one_place_only_for_gateways_on_one_host(broker: str) -> None:
    # A region's broker is dialed by that region's gateway: on two hosts (two Kubernetes clusters,
    # a NATS sidecar in each pod) a loopback or cluster-local name is two places.
    first = f'brokers: ["{broker}"]'
    apart = mesh("gw.eu.example.com:7401", first=first, second=first).replace(
        "127.0.0.1:7401", "gw.us.example.com:7401"
    )
    assert load_config_text(apart, env={}).region_names == ("us-west", "eu-central")
    together = mesh("gw.example.com:7402", first=first, second=first).replace("127.0.0.1:7401", "GW.example.com:7401")
    assert errors(together) == [
        f"mesh.yaml:8:17: event_mesh.regions[1].brokers[0]: broker {broker} is also a broker of region us-west"
        " (line 3) (both regions' gateways run on host gw.example.com, so it is one place for both); both use"
        " JetStream stream MESHGATE, so they would share one stream (each reading the other's events as its own);"
        " give this region its own nats.stream and nats.subject_prefix (e.g. stream: MESHGATE_EU,"
        " subject_prefix: 'eu.'), or other brokers"
    ]


def test_two_kafka_regions_on_one_cluster() -> None:
    first = 'kind: kafka\nbrokers: ["kafka1.example.com:9092", "kafka2.example.com:9092"]'
    text = mesh(first=first, second='kind: kafka\nbrokers: ["Kafka2.example.com"]')
    assert errors(text) == [
        "mesh.yaml:10:17: event_mesh.regions[1].brokers[0]: broker Kafka2.example.com is the same as"
        " kafka2.example.com:9092, a broker of"
        " region us-west (line 3) (without a port, a broker is at port 9092); both use kafka.topic_prefix 'mesh.',"
        " so they would share their topics, consumer groups and checkpoints (each reading the other's events as"
        " its own); give this region its own kafka.topic_prefix (e.g. 'eu.') that neither starts nor is started"
        " by the other's, or other brokers"
    ]
    text = mesh(
        first=first, second='kind: kafka\nbrokers: ["kafka1.example.com:9092"]\nkafka: {topic_prefix: "mesh.eu."}'
    )
    assert "its kafka.topic_prefix 'mesh.eu.' and that region's 'mesh.' overlap" in errors(text)[0]
    # Decided: prefixes apart keep the regions apart on one cluster.
    text = mesh(first=first, second='kind: kafka\nbrokers: ["kafka1.example.com:9092"]\nkafka: {topic_prefix: "eu."}')
    assert load_config_text(text, env={}).region("eu-central").kafka.topic_prefix == "eu."
    # A NATS server and a Kafka broker are never one broker, whatever their addresses.
    text = mesh(first=first, second='brokers: ["kafka1.example.com:9092"]')
    assert load_config_text(text, env={})


async def test_config_validate_refuses_shared_addresses(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        mesh(
            "localhost:7401",
            first='kind: embedded\nbrokers: ["127.0.0.1:4250"]',
            second='kind: embedded\nbrokers: ["[::1]:4250"]',
        )
    )
    rc, out, err = await run_cli("config", "validate", str(path))
    assert (rc, out) == (1, "")
    lines = err.splitlines()
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [f"{path}:8:16", "event_mesh.regions[1].gateway"],
        [f"{path}:10:17", "event_mesh.regions[1].brokers[0]"],
    ]
    assert "is the same as 127.0.0.1:7401, which is already the gateway of region us-west (line 3)" in lines[0]
    assert "both are embedded regions" in lines[1]

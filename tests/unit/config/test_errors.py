"""Every refusal of the loader, each at its exact FILE:LINE:COL with a message that says what to change."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from meshgate.config import ConfigError, ConfigIssue, load_config, load_config_bytes, load_config_text, mesh_schema

FILE = "mesh.yaml"


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text), FILE, env=env or {})
    # The exception's text is the same lines, so logging it shows them all.
    assert str(info.value) == "\n".join(info.value.lines)
    return list(info.value.lines)


def one_error(text: str, env: dict[str, str] | None = None) -> str:
    found = errors(text, env)
    assert len(found) == 1, found
    return found[0]


def region_file(region_body: str, routing: str = "") -> str:
    """A file whose first region is ``region_body`` (lines indented under '- '), at line 3."""
    body = textwrap.indent(textwrap.dedent(region_body), "      ").lstrip()
    text = f"event_mesh:\n  regions:\n    - {body}"
    if routing:
        text += "  routing:\n" + textwrap.indent(textwrap.dedent(routing), "    ")
    return text


def test_issue_format() -> None:
    assert str(ConfigIssue(file="f.yaml", line=3, column=7, message="m")) == "f.yaml:3:7: m"
    assert str(ConfigIssue(file="f.yaml", line=0, column=0, message="m")) == "f.yaml: m"


# ---- YAML itself ---------------------------------------------------------------------------


def test_bad_indentation() -> None:
    text = """\
        event_mesh:
          regions:
            - name: a
              kind: embedded
             gateway: 1.2.3.4:5
        """
    assert one_error(text) == (
        "mesh.yaml:5:6: invalid YAML: expected <block end>, but found '<block mapping start>'"
        " (while parsing a block collection at line 3, column 5);"
        " check the indentation: keys of one mapping start in the same column"
    )


def test_tab_indentation() -> None:
    assert one_error("event_mesh:\n\tregions: []\n") == (
        "mesh.yaml:2:1: invalid YAML: found character '\\t' that cannot start any token;"
        " YAML indents with spaces only; replace the tab with spaces"
    )


def test_mapping_value_in_plain_scalar() -> None:
    assert one_error("event_mesh:\n  regions: a: b\n") == (
        "mesh.yaml:2:13: invalid YAML: mapping values are not allowed here;"
        " check the indentation, or quote a value that contains ': '"
    )


def test_unclosed_flow_sequence() -> None:
    message = one_error("event_mesh:\n  regions: [a, b\n")
    assert message.startswith("mesh.yaml:3:1: invalid YAML: expected ',' or ']'")
    assert "while parsing a flow sequence at line 2, column 12" in message


def test_second_document() -> None:
    assert one_error("event_mesh: {}\n---\nx: 1\n") == (
        "mesh.yaml:2:1: invalid YAML: a second document starts here ('---'); a mesh file is one document"
    )


def test_control_character() -> None:
    assert one_error("event_mesh:\n  regions: \x07\n") == (
        "mesh.yaml:2:12: invalid character '\\x07' (U+0007) in YAML; remove it or write it escaped in a quoted string"
    )


def test_not_utf8() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_bytes(b"event_mesh:\n  regions: [caf\xe9]\n", FILE)  # codespell:ignore caf
    assert info.value.lines == ("mesh.yaml:2:16: byte 0xe9 is not UTF-8; save the file as UTF-8",)


def test_empty_file() -> None:
    assert one_error("# nothing yet\n") == (
        "mesh.yaml:1:1: the file has no content; a mesh file is a mapping with the root key event_mesh"
        " (see config/examples/quickstart.yaml)"
    )


def test_root_is_not_a_mapping() -> None:
    assert one_error("- event_mesh\n") == "mesh.yaml:1:1: expected a mapping with the root key event_mesh, got a list"


def test_duplicate_key() -> None:
    text = """\
        event_mesh:
          regions:
            - name: a
              kind: embedded
              name: b
        """
    assert one_error(text) == (
        "mesh.yaml:5:7: event_mesh.regions[0].name: duplicate key 'name' (first at line 3); keep one"
    )


def test_unknown_tag() -> None:
    message = one_error("event_mesh:\n  regions:\n    - name: !secret a\n      kind: embedded\n")
    assert message.startswith("mesh.yaml:3:13: event_mesh.regions[0].name: could not determine a constructor")
    assert message.endswith("; remove the tag")


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.lines == (f"{missing}: cannot read the file: No such file or directory",)


# ---- the JSON Schema ----------------------------------------------------------------------


def test_root_key_typo() -> None:
    assert errors("event_mseh:\n  regions: []\n") == [
        "mesh.yaml:1:1: event_mseh: unknown key 'event_mseh'; did you mean 'event_mesh'? (allowed here: event_mesh)",
        "mesh.yaml:1:1: missing the required root key 'event_mesh'",
    ]


def test_unknown_region_key_with_suggestion() -> None:
    text = region_file("""\
        name: a
        kind: embedded
        gatway: 127.0.0.1:7401  # codespell:ignore gatway
        """)
    assert one_error(text) == (
        "mesh.yaml:5:7: event_mesh.regions[0].gatway: "  # codespell:ignore gatway
        "unknown key 'gatway'; did you mean 'gateway'?"  # codespell:ignore gatway
        " (allowed here: name, kind, brokers, gateway, metrics, nats, kafka, tls)"
    )


def test_unknown_key_without_suggestion() -> None:
    text = region_file("name: a\nkind: embedded\nzzz: 1\n")
    assert one_error(text).startswith("mesh.yaml:5:7: event_mesh.regions[0].zzz: unknown key 'zzz' (allowed here:")


def test_brokers_must_be_a_list() -> None:
    text = """\
        event_mesh:
          regions:
            - name: us-west
              brokers: ["broker1.us-west"]
            - name: eu-central
              brokers: "broker1.eu"
        """
    assert one_error(text) == (
        "mesh.yaml:6:16: event_mesh.regions[1].brokers: expected a list of host[:port] strings, got a string"
    )


def test_missing_region_name() -> None:
    text = region_file("kind: embedded\n")
    assert one_error(text) == "mesh.yaml:3:7: event_mesh.regions[0]: missing the required key 'name'"


def test_bad_kind() -> None:
    text = region_file("name: a\nkind: natz\nbrokers: [n1]\n")
    assert one_error(text) == (
        "mesh.yaml:4:13: event_mesh.regions[0].kind: 'natz' is not one of nats, kafka, embedded; did you mean 'nats'?"
    )


def test_bad_region_name() -> None:
    text = region_file("name: us west\nkind: embedded\n")
    assert one_error(text) == (
        "mesh.yaml:3:13: event_mesh.regions[0].name: expected a region name of 1 to 63 characters of"
        " A-Z a-z 0-9 - _ starting with a letter or digit, got the string 'us west'"
    )


def test_no_regions() -> None:
    assert one_error("event_mesh:\n  regions: []\n") == (
        "mesh.yaml:2:12: event_mesh.regions: expected a list of at least one region, got an empty list"
    )


def test_region_is_not_a_mapping() -> None:
    assert one_error("event_mesh:\n  regions:\n    - us-west\n") == (
        "mesh.yaml:3:7: event_mesh.regions[0]: expected a region mapping"
        " (name, brokers, kind, gateway, metrics, nats, kafka, tls), got a string"
    )


def test_rule_without_regions_and_with_a_typo() -> None:
    text = region_file("name: a\nkind: embedded\n", routing="- topic: a\n  regoins: [a]\n")
    assert errors(text) == [
        "mesh.yaml:6:7: event_mesh.routing[0]: missing the required key 'regions'",
        "mesh.yaml:7:7: event_mesh.routing[0].regoins: unknown key 'regoins'; did you mean 'regions'?"
        " (allowed here: topic, regions)",
    ]


def test_rule_with_empty_regions() -> None:
    text = region_file("name: a\nkind: embedded\n", routing="- topic: a\n  regions: []\n")
    assert one_error(text) == (
        "mesh.yaml:7:16: event_mesh.routing[0].regions: expected a non-empty list of region names, got an empty list"
    )


def test_rule_region_listed_twice() -> None:
    text = region_file("name: a\nkind: embedded\n", routing="- topic: a\n  regions: [a, a]\n")
    assert (
        one_error(text)
        == "mesh.yaml:7:20: event_mesh.routing[0].regions[1]: 'a' is listed twice (first as item 1); keep one"
    )


def test_rule_topic_must_be_a_string() -> None:
    text = region_file("name: a\nkind: embedded\n", routing="- topic: [a]\n  regions: [a]\n")
    assert one_error(text) == (
        "mesh.yaml:6:14: event_mesh.routing[0].topic: expected a topic pattern string such as 'orders/*'"
        " or 'inventory/>', got a list"
    )


def test_bad_duration() -> None:
    text = region_file("name: a\nkind: embedded\n") + "  settings:\n    idempotency_window: 15 minutes\n"
    assert one_error(text) == (
        "mesh.yaml:6:25: event_mesh.settings.idempotency_window: expected a duration: seconds as a number,"
        " or a string like 500ms, 10s, 15m, 2h, 7d or 1h30m, got the string '15 minutes'"
    )


def test_bad_size() -> None:
    text = region_file("name: a\nkind: embedded\n") + "  settings:\n    limits:\n      max_data_bytes: 1 MiBs\n"
    assert one_error(text) == (
        "mesh.yaml:7:23: event_mesh.settings.limits.max_data_bytes: expected a size: bytes as an integer 1 or more,"
        " or a string like 512KiB, 1MiB, got the string '1 MiBs'"
    )


def test_numbers_out_of_range() -> None:
    text = region_file("""\
        name: a
        kind: kafka
        brokers: [k1:9092]
        kafka: {partitions: 0, replication_factor: 3}
        """)
    assert one_error(text) == (
        "mesh.yaml:6:27: event_mesh.regions[0].kafka.partitions: expected a partition count of 1 or more,"
        " got the number 0"
    )
    text = region_file("name: a\nbrokers: [n1]\nnats: {replicas: 7, sync_always: yes please}\n")
    assert errors(text) == [
        "mesh.yaml:5:24: event_mesh.regions[0].nats.replicas: expected a JetStream replica count from 1 to 5,"
        " got the number 7",
        "mesh.yaml:5:40: event_mesh.regions[0].nats.sync_always: expected true or false, got a string",
    ]


# Where each $defs section that has integer settings sits in a file: the text before the key, the
# indentation of the key, and the dotted path the message names. The limits give a client_rate, without
# which a client_burst is refused for itself.
_INTEGER_SECTIONS = {
    "nats": (region_file("name: a\nbrokers: [n1]\nnats:\n"), 8, "event_mesh.regions[0].nats"),
    "kafka": (region_file("name: a\nkind: kafka\nbrokers: [k1:9092]\nkafka:\n"), 8, "event_mesh.regions[0].kafka"),
    "settings": (region_file("name: a\nkind: embedded\n") + "  settings:\n", 4, "event_mesh.settings"),
    "limits": (
        region_file("name: a\nkind: embedded\n") + "  settings:\n    limits:\n      client_rate: 10\n",
        6,
        "event_mesh.settings.limits",
    ),
}


def _integer_settings() -> list[tuple[str, str, str]]:
    """(section, key, x-expected) of every integer-typed property in the shipped schema."""
    found = []
    for section, definition in mesh_schema()["$defs"].items():
        for key, prop in definition.get("properties", {}).items():
            if isinstance(prop, dict) and prop.get("type") == "integer":
                found.append((section, key, str(prop["x-expected"])))
    return found


@pytest.mark.parametrize(("section", "key", "expected"), _integer_settings())
def test_fraction_for_an_integer_setting_is_named(section: str, key: str, expected: str) -> None:
    # A new section with integer settings fails here (KeyError) until it is added to _INTEGER_SECTIONS.
    head, indent, dotted = _INTEGER_SECTIONS[section]
    text = head + " " * indent + f"{key}: 4.5\n"
    line = text.count("\n")
    column = indent + len(key) + 3
    assert one_error(text) == f"mesh.yaml:{line}:{column}: {dotted}.{key}: expected an integer ({expected}), got 4.5"


def test_bad_subject_prefix_and_stream() -> None:
    text = region_file("name: a\nbrokers: [n1]\nnats:\n  subject_prefix: mesh\n  stream: my.stream\n")
    assert errors(text) == [
        "mesh.yaml:6:25: event_mesh.regions[0].nats.subject_prefix: expected a subject prefix such as 'mesh.'"
        " (tokens of A-Z a-z 0-9 - _ each followed by '.'), or '', got the string 'mesh'",
        "mesh.yaml:7:17: event_mesh.regions[0].nats.stream: expected a JetStream stream name of 1 to 64 characters"
        " of A-Z a-z 0-9 - _, got the string 'my.stream'",
    ]


# ---- cross-checks ---------------------------------------------------------------------------


TWO_REGIONS = """\
event_mesh:
  regions:
    - name: us-west
      kind: embedded
      gateway: 127.0.0.1:7401
      metrics: 127.0.0.1:9401
    - name: eu-central
      kind: embedded
      gateway: 127.0.0.1:7402
      metrics: 127.0.0.1:9402
  routing:
    - topic: "orders/*"
      regions: [us-west, eu-central]
"""


def test_the_base_file_is_valid() -> None:
    assert load_config_text(TWO_REGIONS).region_names == ("us-west", "eu-central")


def test_unknown_routing_region_suggests_close_names() -> None:
    text = TWO_REGIONS.replace("regions: [us-west, eu-central]", "regions: [us-west, eu-centrl, mars]")
    assert errors(text) == [
        "mesh.yaml:13:26: event_mesh.routing[0].regions[1]: unknown region 'eu-centrl'; did you mean 'eu-central'?"
        " (regions: us-west, eu-central)",
        "mesh.yaml:13:37: event_mesh.routing[0].regions[2]: unknown region 'mars' (regions: us-west, eu-central)",
    ]


def test_duplicate_region_name() -> None:
    text = TWO_REGIONS.replace("name: eu-central", "name: us-west")
    assert errors(text) == [
        "mesh.yaml:7:13: event_mesh.regions[1].name: region 'us-west' is declared twice (first at line 3); rename one",
        "mesh.yaml:13:26: event_mesh.routing[0].regions[1]: unknown region 'eu-central' (regions: us-west)",
    ]


def test_duplicate_addresses() -> None:
    text = TWO_REGIONS.replace("gateway: 127.0.0.1:7402", "gateway: 127.0.0.1:7401").replace(
        "metrics: 127.0.0.1:9402", "metrics: 127.0.0.1:9401"
    )
    assert errors(text) == [
        "mesh.yaml:9:16: event_mesh.regions[1].gateway: address 127.0.0.1:7401 is already the gateway of region"
        " us-west (line 3); every gateway and metrics endpoint needs its own HOST:PORT",
        "mesh.yaml:10:16: event_mesh.regions[1].metrics: address 127.0.0.1:9401 is already the metrics of region"
        " us-west (line 3); every gateway and metrics endpoint needs its own HOST:PORT",
    ]
    # A metrics endpoint on another region's gateway address collides too.
    text = TWO_REGIONS.replace("metrics: 127.0.0.1:9402", "metrics: 127.0.0.1:7401")
    assert "is already the gateway of region us-west" in one_error(text)


@pytest.mark.parametrize(
    ("pattern", "column", "message"),
    [
        ("orders/>/x", 14, "pattern 'orders/>/x': '>' is level 2 of 3; '>' (one or more levels) may only be the last"),
        ("ord*", 14, "pattern 'ord*': level 1 'ord*' mixes a wildcard with other characters"),
        ("orders//x", 14, "pattern 'orders//x': level 2 is empty; a level is 1 to 64 characters of A-Z a-z 0-9 - _"),
        ("a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q", 14, "has 17 levels; at most 16"),
        ("orders.created", 14, "pattern 'orders.created': level 1 has '.' at position 7"),
    ],
)
def test_invalid_patterns(pattern: str, column: int, message: str) -> None:
    text = TWO_REGIONS.replace('"orders/*"', f'"{pattern}"')
    found = one_error(text)
    assert found.startswith(f"mesh.yaml:12:{column}: event_mesh.routing[0].topic: ")
    assert message in found


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1", "'127.0.0.1': the port is missing; expected HOST:PORT, e.g. 127.0.0.1:7401"),
        ("127.0.0.1:99999", "'127.0.0.1:99999': port 99999 is out of range; use 1 to 65535"),
        ("127.0.0.1:http", "'127.0.0.1:http': port 'http' is not a number; use 1 to 65535"),
        ("::1:7402", "'::1:7402': write an IPv6 host in brackets, e.g. [::1]:7401"),
        ("[::1", "'[::1': '[' opens an IPv6 address but no ']' closes it"),
        ("[zz]:1", "'[zz]:1': 'zz' is not an IPv6 address"),
        (":7402", "':7402': the host before ':' is missing"),
        ("bad host:7402", "'bad host:7402': 'bad host' is not a host name or IP address"),
        ("http://gw:7402", "'http://gw:7402': expected host:port without a scheme or path"),
    ],
)
def test_invalid_gateway_address(address: str, message: str) -> None:
    text = TWO_REGIONS.replace("gateway: 127.0.0.1:7402", f'gateway: "{address}"')
    found = one_error(text)
    assert found.startswith("mesh.yaml:9:16: event_mesh.regions[1].gateway: ")
    assert message in found


def test_valid_addresses() -> None:
    text = TWO_REGIONS.replace("gateway: 127.0.0.1:7402", 'gateway: "[::1]:7402"').replace(
        "metrics: 127.0.0.1:9402", "metrics: gw.eu-central.example.com:9402"
    )
    assert load_config_text(text).region("eu-central").gateway == "[::1]:7402"


def test_broker_address() -> None:
    text = region_file("name: a\nbrokers: [n1.example:4222, 'nats://n2:4222', n3]\n")
    assert one_error(text) == (
        "mesh.yaml:4:34: event_mesh.regions[0].brokers[1]: 'nats://n2:4222': expected host:port without a scheme"
        " or path, e.g. nats1.example.com:4222"
    )


def test_settings_block_that_does_not_fit_the_kind() -> None:
    text = region_file("name: a\nbrokers: [n1]\nkafka: {partitions: 3}\n")
    assert one_error(text) == (
        "mesh.yaml:5:7: event_mesh.regions[0].kafka: kafka settings do not apply to a nats region;"
        " remove the block or set kind: kafka"
    )
    text = region_file("name: a\nkind: kafka\nbrokers: [k1:9092]\nnats: {stream: S}\n")
    assert one_error(text) == (
        "mesh.yaml:6:7: event_mesh.regions[0].nats: nats settings do not apply to a kafka region;"
        " remove the block or set kind: nats or embedded"
    )


def test_brokers_required_by_kind() -> None:
    assert one_error(region_file("name: a\nkind: kafka\n")) == (
        "mesh.yaml:3:7: event_mesh.regions[0]: a kafka region needs brokers: a list of at least one host[:port]"
        " (or kind: embedded to run a broker on this machine)"
    )
    assert one_error(region_file("name: a\n")) == (
        "mesh.yaml:3:7: event_mesh.regions[0]: a nats region needs brokers: a list of at least one host[:port]"
        " (or kind: embedded to run a broker on this machine)"
    )
    assert one_error(region_file("name: a\nbrokers: []\n")) == (
        "mesh.yaml:4:16: event_mesh.regions[0].brokers: a nats region needs at least one broker host[:port]"
    )
    # An embedded region runs its own broker: no brokers needed.
    assert load_config_text(region_file("name: a\nkind: embedded\n")).regions[0].brokers == ()


def test_sync_always_is_for_embedded_regions() -> None:
    assert one_error(region_file("name: a\nbrokers: [n1]\nnats:\n  sync_always: true\n")) == (
        "mesh.yaml:6:9: event_mesh.regions[0].nats.sync_always: sync_always applies only to embedded regions;"
        " a nats region's server sets its own sync policy (jetstream sync_interval)"
    )


def test_cpus_is_for_embedded_regions_and_counts_cores() -> None:
    """nats.cpus is the embedded nats-server's GOMAXPROCS; a nats region's server sets its own."""
    region = load_config_text(region_file("name: a\nkind: embedded\nnats: {cpus: 3}\n")).regions[0]
    assert region.nats.cpus == 3
    assert load_config_text(region_file("name: a\nkind: embedded\n")).regions[0].nats.cpus == 0
    assert one_error(region_file("name: a\nbrokers: [n1]\nnats: {cpus: 2}\n")) == (
        "mesh.yaml:5:14: event_mesh.regions[0].nats.cpus: cpus applies only to embedded regions;"
        " a nats region's server sets its own (GOMAXPROCS)"
    )
    assert one_error(region_file("name: a\nkind: embedded\nnats: {cpus: -1}\n")) == (
        "mesh.yaml:5:20: event_mesh.regions[0].nats.cpus: expected a count of cores, 1 or more (0 for the default),"
        " got the number -1"
    )


def test_a_broker_monitoring_port_is_for_embedded_regions() -> None:
    """nats.monitor pins the embedded nats-server's HTTP monitoring; a nats region's server has its own."""
    assert load_config_text(region_file("name: a\nkind: embedded\nnats: {monitor: '127.0.0.1:8222'}\n")).regions[
        0
    ].nats.monitor == ("127.0.0.1:8222")
    assert load_config_text(region_file("name: a\nkind: embedded\n")).regions[0].nats.monitor is None
    assert one_error(region_file("name: a\nbrokers: [n1]\nnats: {monitor: '127.0.0.1:8222'}\n")) == (
        "mesh.yaml:5:14: event_mesh.regions[0].nats.monitor: monitor applies only to embedded regions;"
        " a nats region's server sets its own monitoring port (http_port)"
    )
    assert one_error(region_file("name: a\nkind: embedded\nnats: {monitor: '127.0.0.1'}\n")) == (
        "mesh.yaml:5:23: event_mesh.regions[0].nats.monitor: '127.0.0.1': the port is missing;"
        " expected HOST:PORT, e.g. 127.0.0.1:7401"
    )
    # Its address may not be another endpoint's.
    taken = region_file("name: a\nkind: embedded\nmetrics: 127.0.0.1:8222\nnats: {monitor: 'localhost:8222'}\n")
    assert "event_mesh.regions[0].nats.monitor: address localhost:8222 is the same as 127.0.0.1:8222, which is" in (
        one_error(taken)
    )


def test_embedded_has_one_replica() -> None:
    assert one_error(region_file("name: a\nkind: embedded\nnats: {replicas: 3}\n")) == (
        "mesh.yaml:5:24: event_mesh.regions[0].nats.replicas: an embedded region runs one nats-server, so replicas"
        " must be 1, got 3; use kind: nats for a JetStream cluster"
    )


def test_settings_cross_checks() -> None:
    settings = """\
          settings:
            idempotency_window: 0
            limits:
              max_batch_events: 50000
              max_inflight_events_per_stream: 200000
        """
    text = region_file("name: a\nkind: embedded\n") + textwrap.indent(textwrap.dedent(settings), "  ")
    assert errors(text) == [
        "mesh.yaml:6:25: event_mesh.settings.idempotency_window: the idempotency window must be longer than 0;"
        " retries of an event id would be stored twice",
        "mesh.yaml:9:39: event_mesh.settings.limits.max_inflight_events_per_stream:"
        " max_inflight_events_per_stream (200000) is above max_inflight_events (100000)",
    ]
    text = region_file("name: a\nkind: embedded\n") + "  settings:\n    limits: {max_batch_events: 30000}\n"
    assert one_error(text) == (
        "mesh.yaml:6:32: event_mesh.settings.limits.max_batch_events: max_batch_events (30000) is above"
        " max_inflight_events_per_stream (20000); a full batch could never be admitted"
    )


def test_retention_shorter_than_idempotency_window() -> None:
    text = region_file("name: a\nkind: embedded\nnats: {max_age: 10m}\n")
    assert one_error(text) == (
        "mesh.yaml:5:23: event_mesh.regions[0].nats.max_age: max_age 10m is shorter than settings.idempotency_window"
        " 15m; JetStream keeps duplicate ids no longer than events, so raise max_age (0 keeps events without age"
        " limit) or lower the window"
    )
    assert (
        load_config_text(region_file("name: a\nkind: embedded\nnats: {max_age: 0}\n")).regions[0].nats.max_age_seconds
        == 0
    )


def test_all_errors_at_once_in_file_order() -> None:
    text = """\
        event_mesh:
          regions:
            - name: us-west
              brokers: "b1"
            - name: us-west
              kind: embedded
              gateway: 10.0.0.1
          routing:
            - topic: "a/>/b"
              regions: [us-wset]
          settings:
            shutdown_grace: soon
        """
    found = errors(text)
    assert [line.split(": ", 1)[0] for line in found] == [
        "mesh.yaml:4:16",
        "mesh.yaml:5:13",
        "mesh.yaml:7:16",
        "mesh.yaml:9:14",
        "mesh.yaml:10:17",
        "mesh.yaml:12:21",
    ]


def test_load_config_reports_the_path(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text("event_mesh:\n  regions: []\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.lines == (
        f"{path}:2:12: event_mesh.regions: expected a list of at least one region, got an empty list",
    )


def test_kafka_window_cap_below_one() -> None:
    text = region_file("name: a\nkind: kafka\nbrokers: [k1:9092]\nkafka: {max_window_ids: 0}\n")
    assert one_error(text).endswith(
        "event_mesh.regions[0].kafka.max_window_ids: expected an id count of 1 or more, got the number 0"
    )

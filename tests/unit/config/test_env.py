"""``${VAR}`` substitution: values only, after parsing, so no variable can inject YAML structure."""

from __future__ import annotations

import textwrap

import pytest

from meshgate.config import ConfigError, MeshConfig, load_config_text
from meshgate.config._yaml import parse_yaml

TEMPLATE = """\
event_mesh:
  regions:
    - name: {name}
      kind: embedded
      gateway: {gateway}
  routing:
    - topic: "orders/*"
      regions: [{region}]
"""


def load(
    env: dict[str, str], *, name: str = "us-west", gateway: str = "127.0.0.1:7401", region: str = "us-west"
) -> MeshConfig:
    return load_config_text(TEMPLATE.format(name=name, gateway=gateway, region=region), "mesh.yaml", env=env)


def lines(env: dict[str, str], **fields: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load(env, **fields)
    return info.value.lines


def test_variable_and_default() -> None:
    config = load({"GW_HOST": "10.1.2.3"}, gateway="${GW_HOST}:${GW_PORT:-7401}")
    assert config.regions[0].gateway == "10.1.2.3:7401"
    config = load({"GW_HOST": "10.1.2.3", "GW_PORT": "7500"}, gateway="${GW_HOST}:${GW_PORT:-7401}")
    assert config.regions[0].gateway == "10.1.2.3:7500"


def test_empty_variable_takes_the_default_but_plain_reference_keeps_it() -> None:
    config = load({"GW": ""}, gateway='"${GW:-127.0.0.9:7401}"')
    assert config.regions[0].gateway == "127.0.0.9:7401"
    config = load({"SUFFIX": ""}, name="us-west${SUFFIX}")
    assert config.regions[0].name == "us-west"


def test_unset_variable_is_an_error_at_its_column() -> None:
    assert lines({}, gateway="127.0.0.1:${GW_PORT}") == (
        "mesh.yaml:5:26: event_mesh.regions[0].gateway: environment variable GW_PORT is not set;"
        " set it, or give a default: ${GW_PORT:-value}",
    )
    # Quoted: the column still points at the reference, past the quote.
    assert lines({}, gateway='"x:${A}${B}"')[1].startswith("mesh.yaml:5:23: ")


def test_every_unset_variable_is_reported() -> None:
    found = lines({}, name="${REGION}", gateway="${GW}")
    assert [line.split(": ")[0] for line in found] == ["mesh.yaml:3:13", "mesh.yaml:5:16"]
    # The broken value is not reported again by the later checks (no "unknown region" for '${REGION}').
    assert len(found) == 2


def test_escape() -> None:
    text = TEMPLATE.format(name="us-west", gateway="127.0.0.1:7401", region="us-west")
    doc, issues = parse_yaml(text + "x: 'cost $${AMOUNT} and $5'\n", source="m", env={})
    assert issues == []
    assert doc is not None and isinstance(doc.data, dict)
    assert doc.data["x"] == "cost ${AMOUNT} and $5"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${GW", "'${' is not closed by '}'; write ${NAME}, or $${ for a literal ${"),
        ("${1GW}", "'${1GW}' is not a variable reference; write ${NAME} or ${NAME:-default}"),
        ("${GW:-${OTHER}}", "a default cannot hold another ${...}; use a plain default"),
        ("${GW:?required}", "'${GW:?required}' is not a variable reference"),
    ],
)
def test_malformed_references(value: str, message: str) -> None:
    found = lines({"GW": "x"}, gateway=f'"{value}"')
    assert len(found) == 1
    assert found[0].startswith("mesh.yaml:5:17: event_mesh.regions[0].gateway: ")
    assert message in found[0]


@pytest.mark.parametrize("injected", ["a\nb: c", "{x: 1}", "[1, 2]", "- a", "&a x", "!!python/object:os.system ls"])
def test_a_variable_never_becomes_structure(injected: str) -> None:
    text = 'event_mesh:\n  plain: ${V}\n  quoted: "${V}"\n  inside: pre-${V}-post\n'
    doc, issues = parse_yaml(text, source="m", env={"V": injected})
    assert issues == []
    assert doc is not None
    assert doc.data == {"event_mesh": {"plain": injected, "quoted": injected, "inside": f"pre-{injected}-post"}}


def test_injection_reaches_validation_as_one_string() -> None:
    found = lines({"NAME": "us-west\n      brokers: [evil]"}, name="${NAME}")
    assert found[0] == (
        "mesh.yaml:3:13: event_mesh.regions[0].name: expected a region name of 1 to 63 characters of"
        " A-Z a-z 0-9 - _ starting with a letter or digit, got the string 'us-west\\n      brokers: [evil]'"
    )


def test_unquoted_substitution_is_typed_like_yaml_quoted_stays_a_string() -> None:
    # Block style: in a flow mapping ({...}) YAML itself reads the braces of ${...} as structure.
    text = textwrap.dedent("""\
        event_mesh:
          regions:
            - name: k
              kind: kafka
              brokers: ["k1:9092"]
              kafka:
                partitions: ${PARTITIONS}
                replication_factor: "${RF}"
        """)
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "mesh.yaml", env={"PARTITIONS": "12", "RF": "3"})
    assert info.value.lines == (
        "mesh.yaml:8:29: event_mesh.regions[0].kafka.replication_factor: expected a replication factor from 1"
        " to 32767, got a string",
    )
    config = load_config_text(text.replace('"${RF}"', "${RF}"), env={"PARTITIONS": "12", "RF": "3"})
    assert (config.regions[0].kafka.partitions, config.regions[0].kafka.replication_factor) == (12, 3)


def test_keys_are_not_substituted() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("event_mesh:\n  ${KEY}: []\n", "mesh.yaml", env={"KEY": "regions"})
    assert "unknown key '${KEY}'" in str(info.value)


def test_os_environ_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHGATE_TEST_GW", "127.0.0.1:7555")
    config = load_config_text(TEMPLATE.format(name="a", gateway="${MESHGATE_TEST_GW}", region="a"))
    assert config.regions[0].gateway == "127.0.0.1:7555"

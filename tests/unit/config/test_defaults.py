"""One set of defaults: the schema's "default"s, the model's and what the loader fills in agree.

The model (``config/_model.py``) is where a default is decided. The schema repeats it for
editors and ``meshgate config`` readers, so each "default" there must equal the model's; the
loader writes none of its own, so a key a file leaves out gets whatever the model says, even
when the model's default changes.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import pytest

from meshgate.brokers.kafka import KafkaBroker
from meshgate.config import (
    KAFKA_REPLICATION_INFLIGHT_EVENTS,
    NATS_REPLICATION_INFLIGHT_EVENTS,
    BrokerKind,
    ClientToken,
    KafkaSettings,
    Limits,
    MeshConfig,
    NatsSettings,
    RegionConfig,
    SecuritySettings,
    Settings,
    load_config_text,
    mesh_schema,
    parse_duration,
    parse_size,
)

# The schema's object definitions and the model class each becomes.
MODELS: dict[str, type[Any]] = {
    "region": RegionConfig,
    "nats": NatsSettings,
    "kafka": KafkaSettings,
    "settings": Settings,
    "limits": Limits,
    "security": SecuritySettings,
    "client_token": ClientToken,
}
# A file that leaves every key with a default out (one token, so that its defaults apply too).
MINIMAL = """\
event_mesh:
  regions:
    - name: a
      brokers: ["127.0.0.1:4222"]
  security:
    tokens:
      - name: c
        token: ${CLIENT_TOKEN}
"""
ENV = {"CLIENT_TOKEN": "t" * 32}


@dataclasses.dataclass(frozen=True)
class Default:
    section: str
    key: str
    schema: dict[str, Any]

    @property
    def model(self) -> type[Any]:
        return MODELS[self.section]

    @property
    def field(self) -> str:
        """The model's field of the key: durations carry their unit in the model's name."""
        names = {f.name for f in dataclasses.fields(self.model)}
        return self.key if self.key in names else f"{self.key}_seconds"

    def parsed(self) -> object:
        """The schema's default as the loader reads a value written in the file."""
        raw = self.schema["default"]
        ref = self.schema.get("$ref", "")
        if ref == "#/$defs/duration":
            return parse_duration(raw)
        if ref in ("#/$defs/bytes", "#/$defs/positive_bytes"):
            return parse_size(raw)
        return raw

    def of(self, config: MeshConfig) -> object:
        """The loaded value of the key."""
        holder: object = {
            "region": config.regions[0],
            "nats": config.regions[0].nats,
            "kafka": config.regions[0].kafka,
            "settings": config.settings,
            "limits": config.settings.limits,
            "security": config.security,
            "client_token": config.security.tokens[0],
        }[self.section]
        return getattr(holder, self.field)


def schema_defaults() -> list[Default]:
    found = []
    for section, definition in mesh_schema()["$defs"].items():
        for key, prop in definition.get("properties", {}).items():
            if "default" in prop:
                assert section in MODELS, f"$defs.{section}.{key} has a default, and {section} no model class here"
                found.append(Default(section, key, prop))
    return found


DEFAULTS = schema_defaults()


def model_default(model: type[Any], name: str) -> object:
    (f,) = [f for f in dataclasses.fields(model) if f.name == name]
    assert f.default is not dataclasses.MISSING, f"{model.__name__}.{name} has no plain default"
    return f.default


def other_value(value: object) -> object:
    """A valid value other than ``value``, of its type."""
    if isinstance(value, enum.Enum):
        return next(m for m in type(value) if m is not value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 1.5
    if isinstance(value, str):
        return f"x{value}"
    raise TypeError(f"no other value for {value!r}")


def test_every_schema_default_is_known() -> None:
    # The defaults of every section, so a new section with defaults is not skipped silently.
    assert {d.section for d in DEFAULTS} == set(MODELS)


@pytest.mark.parametrize("default", DEFAULTS, ids=lambda d: f"{d.section}.{d.key}")
def test_the_schema_default_is_the_models(default: Default) -> None:
    model = model_default(default.model, default.field)
    if isinstance(model, enum.Enum):
        model = model.value
    assert model == default.parsed(), (
        f"$defs.{default.section}.{default.key} says {default.schema['default']!r},"
        f" {default.model.__name__}.{default.field} {model!r}"
    )


@pytest.mark.parametrize("default", DEFAULTS, ids=lambda d: f"{d.section}.{d.key}")
def test_the_loader_fills_in_the_models_default(default: Default, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default.of(load_config_text(MINIMAL, env=ENV)) == model_default(default.model, default.field)
    # Changed in the model alone (as dataclasses see it, and as an instance does): the loader follows.
    changed = other_value(model_default(default.model, default.field))
    (f,) = [f for f in dataclasses.fields(default.model) if f.name == default.field]
    monkeypatch.setattr(f, "default", changed)
    monkeypatch.setitem(default.model.__init__.__kwdefaults__, default.field, changed)
    assert default.of(load_config_text(MINIMAL, env=ENV)) == changed


def test_replication_inflight_events_default_by_broker() -> None:
    # 0 (the default) is the region's broker's own: a Kafka region's appends hold 2,000 events
    # at a time, so its ingress holds 6,000; a NATS region writes more the more it is given.
    assert Limits().max_replication_inflight_events == 0
    assert Limits().replication_inflight_events(BrokerKind.KAFKA) == 6000
    assert Limits().replication_inflight_events(BrokerKind.NATS) == 32_000
    assert Limits().replication_inflight_events(BrokerKind.EMBEDDED) == 32_000
    assert Limits(max_replication_inflight_events=500).replication_inflight_events(BrokerKind.KAFKA) == 500


def test_kafka_replication_ingress_follows_the_append_bound() -> None:
    # The ingress holds what a Kafka broker's appends hold and twice that waiting behind them:
    # a change of the adapter's bound moves it (both come from config's KAFKA_MAX_APPEND_EVENTS).
    broker = KafkaBroker(bootstrap_servers=["k:9092"], settings=KafkaSettings(), idempotency_window_seconds=60)
    assert Limits().replication_inflight_events(BrokerKind.KAFKA) == 3 * broker.max_append_events


def test_schema_states_the_replication_ingress_defaults() -> None:
    description = mesh_schema()["$defs"]["limits"]["properties"]["max_replication_inflight_events"]["description"]
    kafka, nats = KAFKA_REPLICATION_INFLIGHT_EVENTS, NATS_REPLICATION_INFLIGHT_EVENTS
    assert f"0: {kafka} in a Kafka region, {nats} in a NATS one." in description

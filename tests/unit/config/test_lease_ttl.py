"""settings.lease_ttl: how long a replica holds a replication link's lease without renewing it."""

from __future__ import annotations

import dataclasses

import pytest

from meshgate.config import ConfigError, Settings, check_compatible, load_config_text
from meshgate.replicator import DEFAULT_LEASE_TTL
from tests.unit._meshes import with_settings


def test_lease_ttl_defaults_to_ten_seconds() -> None:
    config = load_config_text(with_settings())
    assert config.settings.lease_ttl_seconds == 10.0 == Settings().lease_ttl_seconds == DEFAULT_LEASE_TTL


@pytest.mark.parametrize(("text", "seconds"), [("3s", 3.0), ("1500ms", 1.5), ("1m", 60.0), ("2.5", 2.5)])
def test_lease_ttl_is_read_from_the_mesh_file(text: str, seconds: float) -> None:
    config = load_config_text(with_settings(f"    lease_ttl: {text}"))
    assert config.settings.lease_ttl_seconds == seconds


@pytest.mark.parametrize("text", ["500ms", "0s", "0.9"])
def test_lease_ttl_below_a_second_is_refused(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(with_settings(f"    lease_ttl: {text}"))
    message = str(info.value)
    assert "lease_ttl" in message and "below 1s" in message, message


def test_lease_ttl_that_is_not_a_duration_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(with_settings("    lease_ttl: soon"))
    assert "event_mesh.settings.lease_ttl: expected a duration" in str(info.value)


def test_a_changed_lease_ttl_needs_a_restart() -> None:
    old = load_config_text(with_settings("    lease_ttl: 10s"))
    new = dataclasses.replace(old, settings=dataclasses.replace(old.settings, lease_ttl_seconds=3.0))
    assert check_compatible(old, new, "us-west") == "restart needed: region us-west's settings.lease_ttl 10s -> 3s"
    assert check_compatible(old, old, "us-west") is None

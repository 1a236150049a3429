"""settings.replication_ack_timeout: how long a link waits for a destination's answer to a batch."""

from __future__ import annotations

import dataclasses

import pytest

from meshgate.config import ConfigError, Settings, check_compatible, load_config_text
from meshgate.gateway._auth import ReplicationGuard
from meshgate.gateway._server import replication_options
from meshgate.replicator import LinkOptions
from tests.unit._meshes import with_settings


def test_ack_timeout_defaults_to_thirty_seconds() -> None:
    config = load_config_text(with_settings())
    assert config.settings.replication_ack_timeout_seconds == 30.0 == Settings().replication_ack_timeout_seconds
    assert LinkOptions().ack_timeout_seconds == 30.0


@pytest.mark.parametrize(("text", "seconds"), [("5s", 5.0), ("1500ms", 1.5), ("2m", 120.0)])
def test_the_links_wait_as_long_as_the_mesh_file_says(text: str, seconds: float) -> None:
    config = load_config_text(with_settings(f"    replication_ack_timeout: {text}"))
    assert config.settings.replication_ack_timeout_seconds == seconds
    guard = ReplicationGuard(config.security)
    options, _, _ = replication_options(config, "us-west", base=None, guard=guard)
    assert options.ack_timeout_seconds == seconds


@pytest.mark.parametrize("text", ["500ms", "0s"])
def test_an_ack_timeout_below_a_second_is_refused(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(with_settings(f"    replication_ack_timeout: {text}"))
    message = str(info.value)
    assert "replication_ack_timeout" in message and "below 1s" in message, message


def test_a_changed_ack_timeout_needs_a_restart() -> None:
    old = load_config_text(with_settings())
    new = dataclasses.replace(old, settings=dataclasses.replace(old.settings, replication_ack_timeout_seconds=5.0))
    assert (
        check_compatible(old, new, "us-west")
        == "restart needed: region us-west's settings.replication_ack_timeout 30s -> 5s"
    )

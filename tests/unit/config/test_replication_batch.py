"""settings.replication_batch_events: how many events a link sends in one batch at most."""

from __future__ import annotations

import dataclasses

import pytest

from meshgate.config import ConfigError, Settings, check_compatible, load_config_text
from meshgate.gateway._auth import ReplicationGuard
from meshgate.gateway._server import replication_options
from meshgate.replicator import LinkOptions
from tests.unit._meshes import with_settings


def _options(config_text: str) -> LinkOptions:
    config = load_config_text(config_text)
    options, _, _ = replication_options(config, "us-west", base=None, guard=ReplicationGuard(config.security))
    return options


def test_batches_default_to_500_events() -> None:
    assert load_config_text(with_settings()).settings.replication_batch_events == 500
    assert Settings().replication_batch_events == 500 == LinkOptions().max_batch_events
    assert _options(with_settings()).max_batch_events == 500


@pytest.mark.parametrize("events", [1, 1000, 10_000])
def test_the_links_get_the_batch_size_the_mesh_file_says(events: int) -> None:
    options = _options(with_settings(f"    replication_batch_events: {events}"))
    assert options.max_batch_events == events
    assert options.window == 8  # the window stays its own setting


@pytest.mark.parametrize("value", ["0", "10001", "2.5", '"many"'])
def test_a_batch_size_out_of_range_is_refused_with_its_place(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(with_settings(f"    replication_batch_events: {value}"))
    message = str(info.value)
    assert "replication_batch_events" in message and "a number of events from 1 to 10000" in message, message


def test_a_changed_batch_size_needs_a_restart() -> None:
    old = load_config_text(with_settings())
    new = dataclasses.replace(old, settings=dataclasses.replace(old.settings, replication_batch_events=1000))
    expected = "restart needed: region us-west's settings.replication_batch_events 500 -> 1000"
    assert check_compatible(old, new, "us-west") == expected

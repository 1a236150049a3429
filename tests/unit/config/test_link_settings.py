"""A link's batches: ``settings.replication_window`` (how many batches it has in flight before it
waits for an answer) and ``settings.replication_batch_events`` (how many events a batch holds
at most)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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


def test_the_window_defaults_to_eight_batches_of_500_events() -> None:
    settings = load_config_text(with_settings()).settings
    assert settings.replication_window == 8 == Settings().replication_window == LinkOptions().window
    assert settings.replication_batch_events == 500 == Settings().replication_batch_events
    assert LinkOptions().max_batch_events == 500
    options = _options(with_settings())
    assert (options.window, options.max_batch_events) == (8, 500)


@pytest.mark.parametrize("window", [1, 16, 64])
def test_the_links_get_the_window_the_mesh_file_says(window: int) -> None:
    options = _options(with_settings(f"    replication_window: {window}"))
    assert (options.window, options.max_batch_events) == (window, 500)


@pytest.mark.parametrize("events", [1, 1000, 10_000])
def test_the_links_get_the_batch_size_the_mesh_file_says(events: int) -> None:
    options = _options(with_settings(f"    replication_batch_events: {events}"))
    assert (options.window, options.max_batch_events) == (8, events)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        *(("replication_window", v, "a number of batches from 1 to 64") for v in ["0", "65", "2.5", '"four"']),
        *(
            ("replication_batch_events", v, "a number of events from 1 to 10000")
            for v in ["0", "10001", "2.5", '"many"']
        ),
    ],
)
def test_a_value_out_of_range_is_refused_with_its_place(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(with_settings(f"    {key}: {value}"))
    message = str(info.value)
    assert f"event_mesh.settings.{key}" in message and expected in message, message


def _window(s: Settings) -> Settings:
    return dataclasses.replace(s, replication_window=16)


def _batches(s: Settings) -> Settings:
    return dataclasses.replace(s, replication_batch_events=1000)


@pytest.mark.parametrize(
    ("change", "shown"),
    [(_window, "replication_window 8 -> 16"), (_batches, "replication_batch_events 500 -> 1000")],
)
def test_a_change_needs_a_restart(change: Callable[[Settings], Settings], shown: str) -> None:
    old = load_config_text(with_settings())
    assert check_compatible(old, old, "us-west") is None
    new = dataclasses.replace(old, settings=change(old.settings))
    assert check_compatible(old, new, "us-west") == f"restart needed: region us-west's settings.{shown}"

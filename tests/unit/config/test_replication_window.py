"""settings.replication_window: how many batches a link has in flight before it waits for an answer."""

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


def test_the_window_defaults_to_eight_batches() -> None:
    assert load_config_text(with_settings()).settings.replication_window == 8 == Settings().replication_window
    assert LinkOptions().window == 8
    assert _options(with_settings()).window == 8


@pytest.mark.parametrize("window", [1, 16, 64])
def test_the_links_get_the_window_the_mesh_file_says(window: int) -> None:
    assert _options(with_settings(f"    replication_window: {window}")).window == window


@pytest.mark.parametrize("value", ["0", "65", "2.5", '"four"'])
def test_a_window_out_of_range_is_refused_with_its_place(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(with_settings(f"    replication_window: {value}"))
    message = str(info.value)
    assert "replication_window" in message and "a number of batches from 1 to 64" in message, message


def test_a_changed_window_needs_a_restart() -> None:
    old = load_config_text(with_settings())
    assert check_compatible(old, old, "us-west") is None
    new = dataclasses.replace(old, settings=dataclasses.replace(old.settings, replication_window=16))
    expected = "restart needed: region us-west's settings.replication_window 8 -> 16"
    assert check_compatible(old, new, "us-west") == expected

"""Which nats-server versions are too old for Meshgate (``brokers.nats._version``), one module."""

from __future__ import annotations

import pytest

from meshgate.brokers.nats import ServerTooOldError
from meshgate.brokers.nats._version import MINIMUM_SERVER_VERSION, older_than, version_key


@pytest.mark.parametrize(
    ("version", "old"),
    [
        ("2.9.22", True),
        ("2.9.0", True),
        ("v2.9.0", True),
        ("1.4.1", True),
        ("0.0.1", True),
        # A pre-release comes before its release (semver): 2.10.0's betas are not 2.10.0.
        ("2.10.0-beta.1", True),
        ("2.10.0-RC.7", True),
        ("2.10.0", False),
        ("2.10.0+build.5", False),
        ("2.10.1", False),
        ("2.11.3", False),
        ("2.11.0-beta.2", False),
        ("v2.15.1", False),
        (" 2.15.1\n", False),
        # Numbers, not text: 2.100 is after 2.10, 10.0 after 2.x.
        ("2.100.0", False),
        ("10.0.0", False),
        # What cannot be read is not refused: the layout check still guards the stream.
        ("", False),
        ("2.10", False),
        ("unknown", False),
        ("2.9.x", False),
    ],
)
def test_older_than_the_minimum(version: str, old: bool) -> None:
    assert older_than(version) is old
    assert older_than(version, MINIMUM_SERVER_VERSION) is old


def test_version_keys_and_a_bad_minimum() -> None:
    assert MINIMUM_SERVER_VERSION == "2.10.0"
    assert version_key("v2.15.1") == (2, 15, 1, 1)
    assert version_key("2.10.0-beta.1+abc") == (2, 10, 0, 0)
    assert version_key("2.10.0.1") is None
    assert older_than("2.11.0", "2.11.1") and not older_than("2.11.1", "2.11.1")
    with pytest.raises(ValueError, match=r"minimum version '2\.10' is not major\.minor\.patch"):
        older_than("2.9.0", "2.10")


def test_the_refusal_names_both_versions_and_what_needs_it() -> None:
    exc = ServerTooOldError(version="2.9.22", minimum="2.10.0", where="nats://h:4222")
    assert str(exc).startswith("nats-server 2.9.22 at nats://h:4222: Meshgate needs 2.10.0 or newer (")
    assert "subject layout and partition count in stream metadata" in str(exc)
    assert not exc.retriable
    assert (exc.version, exc.minimum, exc.where) == ("2.9.22", "2.10.0", "nats://h:4222")

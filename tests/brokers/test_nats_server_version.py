"""A nats-server older than 2.10 is refused at start, with both versions named, before the stream is touched.

No nats-server older than 2.10 can be run here (none is installed and none can be downloaded): the
refusal is proven on a real 2.15 server whose INFO's version nats-py is made to read as 2.9.0, the
one thing the check reads; ``tests/unit/test_nats_server_version.py`` holds the comparison.
"""

from __future__ import annotations

from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client

from meshgate.brokers import BrokerError, BrokerState
from meshgate.brokers.embedded import EmbeddedNats
from meshgate.brokers.nats import ServerTooOldError
from meshgate.brokers.nats._version import older_than
from meshgate.config import NatsSettings
from tests._servers import make_nats_broker


async def test_a_current_server_is_taken(nats_server: EmbeddedNats) -> None:
    async with await nats.connect(nats_server.url) as nc:
        version = str(nc._server_info["version"])
    assert version and not older_than(version), version
    async with make_nats_broker(nats_server) as broker:
        assert broker.state is BrokerState.CONNECTED


async def test_a_server_older_than_2_10_is_refused_before_the_stream_is_made(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Client._process_info

    async def old_server(self: Client, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection:
            info["version"] = "2.9.0"  # the dict nats-py keeps as the server's INFO
        await real(self, info, initial_connection)

    monkeypatch.setattr(Client, "_process_info", old_server)
    broker = make_nats_broker(nats_server, settings=NatsSettings(stream="TOO_OLD"))
    with pytest.raises(ServerTooOldError) as info:
        await broker.start()
    assert str(info.value).startswith(f"nats-server 2.9.0 at {nats_server.url}: Meshgate needs 2.10.0 or newer (")
    assert isinstance(info.value, BrokerError) and not info.value.retriable
    assert broker.state is BrokerState.CLOSED
    monkeypatch.undo()
    async with await nats.connect(nats_server.url) as nc:
        with pytest.raises(nats.js.errors.NotFoundError):
            await nc.jsm().stream_info("TOO_OLD")
    # Refused is not broken: on a server that is new enough the same broker starts.
    await broker.start()
    try:
        assert broker.state is BrokerState.CONNECTED
    finally:
        await broker.stop()

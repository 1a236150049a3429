"""A nats-server older than 2.10 is refused at start, with both versions named, before the stream is touched;
one the client reconnects to takes no append until a later reconnect reaches one new enough.

No nats-server older than 2.10 can be run here (none is installed and none can be downloaded): the
refusal is proven on a real 2.15 server whose INFO's version nats-py is made to read as 2.9.0, the
one thing the check reads (at a reconnect too); ``tests/unit/test_nats_server_version.py`` holds the comparison.
"""

from __future__ import annotations

from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client

from meshgate.brokers import BrokerError, BrokerState
from meshgate.brokers.embedded import EmbeddedNats
from meshgate.brokers.nats import NatsBroker, ServerTooOldError
from meshgate.brokers.nats._version import older_than
from meshgate.config import NatsSettings
from tests._servers import make_nats_broker
from tests._wait import eventually
from tests.brokers._contract import BOUND, make_event, sequences


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


async def reconnect(server: EmbeddedNats, broker: NatsBroker) -> None:
    """A restart of the server (same port and data), and the client's own reconnect to it."""
    await server.stop()
    await eventually(lambda: broker.state is BrokerState.RECONNECTING, BOUND, interval=0.01, what="RECONNECTING")
    await server.start()
    await eventually(lambda: broker.state is BrokerState.CONNECTED, BOUND, interval=0.01, what="CONNECTED")


async def test_a_reconnect_to_a_server_older_than_2_10_refuses_appends_until_one_new_enough(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """nats-py reconnects by itself, maybe to another server of a cluster: one too old takes no append."""
    reports = {"version": ""}  # what the next server's INFO says ("": its own)
    real = Client._process_info

    async def server_info(self: Client, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection and reports["version"]:  # a reconnect's INFO too
            info["version"] = reports["version"]
        await real(self, info, initial_connection)

    monkeypatch.setattr(Client, "_process_info", server_info)
    settings = NatsSettings(stream="RECONNECTED", partitions=1)
    async with make_nats_broker(nats_server, settings=settings) as broker:
        assert sequences(await broker.append([make_event("orders/created", "before")])) == [1]
        reports["version"] = "2.9.0"
        await reconnect(nats_server, broker)
        for _ in range(2):
            [refused] = await broker.append([make_event("orders/created", "on-old")])
            assert isinstance(refused, ServerTooOldError) and refused.retriable
            assert str(refused).startswith(f"nats-server 2.9.0 at {nats_server.url}: Meshgate needs 2.10.0 or newer (")
            assert "appends are refused until it reconnects to one of 2.10.0 or newer" in str(refused)
        # Connected, but not to a server to write to: readiness says why.
        assert broker.state is BrokerState.CONNECTED and broker.storage_problem() == str(refused)
        async with await nats.connect(nats_server.url) as nc:
            stored = await nc.jsm().stream_info("RECONNECTED")
        assert stored.state.last_seq == 1  # nothing written to the old server
        # A later reconnect to a server new enough takes appends again.
        reports["version"] = ""
        await reconnect(nats_server, broker)
        assert broker.storage_problem() is None
        assert sequences(await broker.append([make_event("orders/created", "after")])) == [2]
    refusals = [r for r in caplog.records if r.levelname == "WARNING" and "nats-server 2.9.0" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]  # logged once, not per append
    assert any("appends are taken again" in r.getMessage() for r in caplog.records)

"""A link's pulls stay within its connection's byte budget.

nats-server queues a pull's events for the connection at once, and drops a connection whose
unread bytes pass its ``max_pending`` as a slow consumer, failing every request on it. A
link's pull asked for two batches whatever their size: a backlog of large events was queued
whole, the connection dropped, and again after every reconnect, so the backlog never drained.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from meshgate.brokers import NatsBroker
from meshgate.brokers.nats import _broker as nats_broker_module
from meshgate.brokers.nats._pull import PULL_BYTES_SLACK, PullSubscription
from tests._servers import ConfiguredNats, make_nats_broker
from tests.brokers._contract import make_event, sequences

BOUND = 20.0


async def _drain(consumer: Any, count: int) -> list[str]:
    got: list[str] = []
    async with asyncio.timeout(BOUND):
        while len(got) < count:
            raw = await consumer.fetch_raw(100, timeout=0.5)
            got += raw.ids
            await consumer.ack_raw(raw)
    return got


def _requests(monkeypatch: pytest.MonkeyPatch, *, stall_first: float = 0.0) -> list[int | None]:
    """Records each pull's max_bytes; with ``stall_first``, the first pull is followed by that
    long of a loop that reads nothing (a link's thread busy elsewhere)."""
    sizes: list[int | None] = []
    request = PullSubscription.request

    async def recorded(self: PullSubscription, batch: int, **options: Any) -> None:
        sizes.append(options.get("max_bytes"))
        await request(self, batch, **options)
        if stall_first and len(sizes) == 1:
            time.sleep(stall_first)  # noqa: ASYNC251 - on purpose: the server queues what the pull asked for

    monkeypatch.setattr(PullSubscription, "request", recorded)
    return sizes


async def test_a_backlog_of_large_events_reaches_a_busy_link_and_its_connection_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The budget and the server's max_pending scaled down together (32 MiB against 64 MiB by
    # default): 27 MB of backlog is then more than three times what the server lets wait.
    monkeypatch.setattr(nats_broker_module, "_CONNECTION_PULL_BYTES", 2 * 1024 * 1024)
    # A server that lets a client leave at most max_pending bytes unread.
    server = ConfiguredNats(
        server=f"max_pending: {8 * 1024 * 1024}\n", data_dir=tmp_path / "nats", max_payload=1024 * 1024
    )
    await server.start()
    try:
        broker: NatsBroker
        async with make_nats_broker(server) as broker:
            events = [
                make_event("orders/created", f"big{i}", origin="here", route=["here", "there"], data=b"x" * 900_000)
                for i in range(30)
            ]
            for ev in events:
                sequences(await broker.append([ev]))
            consumer = await broker.durable_consumer("link-there", origin="here", routed_to="there")
            sizes = _requests(monkeypatch, stall_first=0.5)
            assert await _drain(consumer, len(events)) == [e.id for e in events]
            assert sizes and all(size == 2 * 1024 * 1024 for size in sizes), sizes
            nc = broker._nc
            assert nc is not None and nc.stats["reconnects"] == 0
            assert not [line for line in server.log_tail(200) if "Slow Consumer" in line]
            assert await consumer.pending() == 0
            await consumer.close()
    finally:
        await server.stop()


async def test_a_pulls_share_is_split_among_the_consumers_of_a_connection(
    nats_broker: NatsBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = nats_broker_module._CONNECTION_PULL_BYTES
    host = nats_broker._consumer_host
    first = await nats_broker.durable_consumer("link-one", origin="here", routed_to="one")
    assert host.pull_bytes() == budget
    second = await nats_broker.durable_consumer("link-two", origin="here", routed_to="two")
    assert host.pull_bytes() == budget // 2
    await first.close()
    assert host.pull_bytes() == budget
    # Never less than the largest event the server takes, with room for its subject and reply.
    monkeypatch.setattr(nats_broker_module, "_CONNECTION_PULL_BYTES", 1024)
    assert host.pull_bytes() == nats_broker.max_payload + PULL_BYTES_SLACK
    await second.close()


async def test_an_event_larger_than_a_pull_comes_with_room_enough_then_pulls_shrink_again(
    nats_broker: NatsBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = 64 * 1024
    consumer = await nats_broker.durable_consumer("link-there", origin="here", routed_to="there")
    # A share below the next event's size (as after a reconnect to a server of a smaller
    # max_payload than the one that stored it).
    consumer._host = dataclasses.replace(consumer._host, pull_bytes=lambda: small)
    events = [
        make_event(
            "orders/created",
            f"e{i}",
            origin="here",
            route=["here", "there"],
            data=b"y" * (300_000 if i == 3 else 100 if i < 3 else 40_000),
        )
        for i in range(14)
    ]
    sequences(await nats_broker.append(events))
    sizes = _requests(monkeypatch)
    assert await _drain(consumer, len(events)) == [e.id for e in events]
    # Doubled until the large event fit (a pull after small ones ended at it), then back to the
    # share for the events after it, one pull each.
    assert max(s or 0 for s in sizes) == 8 * small and sizes[-1] == small, sizes
    assert await consumer.pending() == 0
    await consumer.close()

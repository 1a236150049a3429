"""A link restarted (a rebalance restarts it over another set of partitions) while a batch it sent
was never answered: the new run sends it again and accounts for its own batches only. And a
run that outlived ``stop()``'s bound: the next start waits for it to end.

A real nats-server as the source's log; a gRPC destination that takes the first call's batches
and never answers them, then answers every later call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshgate.brokers import DurableConsumer, RawBatch
from meshgate.brokers.nats import NatsBroker
from meshgate.replicator import Link, LinkOptions
from tests._servers import AcceptsAll, serve_destination
from tests._wait import eventually
from tests.brokers._contract import make_event


def _link(broker: NatsBroker, port: int) -> Link:
    """A link of all the log's partitions to the destination on ``port``."""
    return Link(
        source="here",
        destination="there",
        address=f"127.0.0.1:{port}",
        broker=broker,
        options=LinkOptions(connect_timeout_seconds=2.0),
        partitions=range(broker.partitions),
    )


async def test_a_link_restarted_with_a_batch_unanswered_sends_it_again_and_acks_it(nats_broker: NatsBroker) -> None:
    sink = AcceptsAll(silent_calls=1)
    server, port = await serve_destination(sink)
    ids = [f"r-{i}" for i in range(5)]
    events = [make_event("orders/created", i, origin="here", route=["here", "there"], key=i) for i in ids]
    assert all(not isinstance(r, Exception) for r in await nats_broker.append(events))
    link = _link(nats_broker, port)
    try:
        await link.start()
        await eventually(
            lambda: sink.calls and sorted(sink.calls[0]) == ids, 20, what="the events taken by the destination"
        )
        # Stopped before the answer comes (it never does on this call): its batch is still in flight.
        await link.stop(0.2)
        link.set_partitions(range(nats_broker.partitions))
        await link.start()
        await eventually(lambda: link.counters.forwarded == len(ids), 20, what="the events forwarded again")
        assert len(sink.calls) == 2 and sorted(sink.calls[1]) == ids
        # Its own batch was acked in its consumer: nothing is left in the log for the link.
        await eventually(lambda: link.counters.lag_events == 0, 20, what="the lag read as none")
        assert link.counters.last_error == "" and link.counters.forwarded == len(ids)
    finally:
        await link.stop(1.0)
        await server.stop(0)


# How long the first consumer's close holds out against cancellation: past stop()'s 2 s bound.
_STUCK_CLOSE_SECONDS = 3.0


async def test_a_start_waits_for_a_run_that_outlived_stop(
    nats_broker: NatsBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nats-py can swallow a cancellation that lands inside one of its requests: here the first
    # consumer's close (a JetStream request) does, for longer than stop() waits. That run still
    # holds its consumer; the next run must not open one until it is gone.
    sink = AcceptsAll(silent_calls=1)
    server, port = await serve_destination(sink)
    ids = [f"s-{i}" for i in range(3)]
    events = [make_event("orders/created", i, origin="here", route=["here", "there"], key=i) for i in ids]
    assert all(not isinstance(r, Exception) for r in await nats_broker.append(events))
    steps: list[str] = []
    closing: set[int] = set()  # the consumers whose close began
    late: list[int] = []  # reads through a consumer whose close began: two runs on one consumer
    real_open = nats_broker.durable_consumer

    async def durable_consumer(name: str, **kwargs: Any) -> DurableConsumer:
        consumer = await real_open(name, **kwargs)
        opened = len([s for s in steps if s.startswith("open")]) + 1
        steps.append(f"open {opened}")
        real_fetch = consumer.fetch_raw

        async def fetch_raw(max_events: int, *, timeout: float) -> RawBatch:
            if opened in closing:
                late.append(opened)
            return await real_fetch(max_events, timeout=timeout)

        monkeypatch.setattr(consumer, "fetch_raw", fetch_raw)
        if opened == 1:
            real_close = consumer.close

            async def stuck_close() -> None:
                steps.append("close 1 begins")
                closing.add(1)
                loop = asyncio.get_running_loop()
                end = loop.time() + _STUCK_CLOSE_SECONDS
                while (left := end - loop.time()) > 0:
                    try:
                        await asyncio.sleep(left)
                    except asyncio.CancelledError:
                        continue  # swallowed, as nats-py can
                await real_close()
                steps.append("close 1 ends")

            monkeypatch.setattr(consumer, "close", stuck_close)
        return consumer

    monkeypatch.setattr(nats_broker, "durable_consumer", durable_consumer)
    link = _link(nats_broker, port)
    try:
        await link.start()
        await eventually(lambda: sink.calls and sorted(sink.calls[0]) == ids, 20, what="the first run's batch")
        await link.stop(0.2)
        assert steps == ["open 1", "close 1 begins"], steps  # stop() gave up on the run: it lives on
        await link.start()
        await eventually(lambda: link.counters.forwarded == len(ids), 20, what="the events forwarded by the new run")
        assert steps == ["open 1", "close 1 begins", "close 1 ends", "open 2"], steps
        # The new run read through its own consumer only, and never failed on the old one's.
        assert late == [] and link.counters.retries == 0, (late, link.counters.retries)
        assert sorted(sink.calls[-1]) == ids
    finally:
        await link.stop(1.0)
        await server.stop(0)

"""A destination's replication in one process shown as one line, and its partitions run by one
link (``replicator._group.LinkGroup``), one module.

The link has nothing behind it: a link with no destination address pauses before it reads its
log, so one can run here without a broker.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

import pytest

from meshgate.brokers import Broker
from meshgate.replicator import Link, LinkGroup, LinkOptions, LinkState
from meshgate.v1 import admin_pb2
from tests._wait import eventually


def _group(partitions: int | None = 3) -> LinkGroup:
    return LinkGroup(
        source="a",
        destination="b",
        address=None,
        broker=cast(Broker, None),
        options=LinkOptions(),
        partitions=partitions,
    )


async def test_the_line_shows_the_link_the_partitions_it_sends_the_worst_state_and_the_latest_error() -> None:
    group = _group()
    counters = group.reader.counters
    counters.forwarded, counters.dead_lettered, counters.lag_events = 17, 2, 5
    counters.oldest_unacked = time.time() - 3.0
    idle, running, standby = group.parts[0], group.parts[1], group.parts[2]
    assert not isinstance(idle, Link)
    idle.record_error("lease of the link cannot be read")
    idle.counters.last_error_time = 100.0
    standby.state = LinkState.STANDBY
    await running.start()
    try:
        await eventually(lambda: running.state is LinkState.PAUSED, 10.0, what="the link without an address paused")
        assert group.reader.partitions == (1,)
        status = group.status()
        assert status.destination == "b"
        # Having no address to send to needs the engineer more than a partition standing by.
        assert status.state == admin_pb2.LINK_STATE_PAUSED
        assert (status.forwarded, status.dead_lettered, status.lag_events) == (17, 2, 5)
        assert status.lag_seconds >= 3.0
        assert list(status.partitions) == [1]
        # The link's error is newer than the idle partition's.
        assert status.last_error == "region b has no gateway address in the mesh file"
        assert status.last_error_time.ToNanoseconds() > 100 * 10**9
    finally:
        await running.stop()
    assert not group.reader.running
    status = group.status()
    assert (LinkState(status.state), list(status.partitions), status.lag_events) == (LinkState.STANDBY, [], 0)
    # The error the link stopped on is still the latest.
    assert status.last_error == "region b has no gateway address in the mesh file"


async def test_partitions_taken_together_start_the_link_once_and_one_given_back_restarts_it_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = _group(4)
    starts: list[tuple[int, ...] | None] = []
    start = Link.start

    async def counted(link: Link) -> None:
        starts.append(link.partitions)
        await start(link)

    monkeypatch.setattr(Link, "start", counted)
    # A lease round takes its partitions one after another without yielding.
    for p in (0, 2, 3):
        await group.parts[p].start()
    await eventually(lambda: group.reader.running, 10.0, what="the link started")
    assert starts == [(0, 2, 3)]
    await group.parts[2].stop(1.0)
    # Once stop returns, the link no longer sends the partition.
    assert group.reader.running and group.reader.partitions == (0, 3)
    assert starts == [(0, 2, 3), (0, 3)]
    assert group.running_parts == 2
    # Given back together (a hand-over): the link stops, with no start over what is left meanwhile.
    await asyncio.gather(*(group.parts[p].stop(1.0) for p in (0, 3)))
    assert not group.reader.running and starts == [(0, 2, 3), (0, 3)]


def test_a_whole_log_link_names_no_partition() -> None:
    group = _group(None)
    assert list(group.parts.values()) == [group.reader]
    status = group.status()
    assert (LinkState(status.state), list(status.partitions), status.last_error) == (LinkState.STOPPED, [], "")

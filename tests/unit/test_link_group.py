"""A destination's partition links shown as one line (``replicator._group.LinkGroup``), one module.

The links have nothing behind them: a link with no destination address pauses before it reads
its log, so one can run here without a broker.
"""

from __future__ import annotations

import time
from typing import cast

from meshgate.brokers import Broker
from meshgate.replicator import LinkGroup, LinkOptions, LinkState
from meshgate.v1 import admin_pb2
from tests._wait import eventually


async def test_the_line_sums_the_partitions_and_shows_the_worst_state_the_running_ones_and_the_latest_error() -> None:
    group = LinkGroup(
        source="a", destination="b", address=None, broker=cast(Broker, None), options=LinkOptions(), partitions=3
    )
    replicating, paused, standby = group.parts[0], group.parts[1], group.parts[2]
    replicating.state = LinkState.REPLICATING
    replicating.counters.forwarded, replicating.counters.lag_events = 10, 5
    replicating.counters.oldest_unacked = time.time() - 3.0
    replicating.counters.last_error, replicating.counters.last_error_time = "old", 100.0
    standby.state = LinkState.STANDBY
    standby.counters.forwarded, standby.counters.dead_lettered = 7, 2
    await paused.start()
    try:
        await eventually(lambda: paused.state is LinkState.PAUSED, 10.0, what="the link without an address paused")
        status = group.status()
        assert status.destination == "b"
        # Having no address to send to needs the engineer more than a partition replicating.
        assert status.state == admin_pb2.LINK_STATE_PAUSED
        assert (status.forwarded, status.dead_lettered, status.lag_events) == (17, 2, 5)
        assert status.lag_seconds >= 3.0
        assert list(status.partitions) == [1]
        assert status.last_error == "region b has no gateway address in the mesh file"
        assert status.last_error_time.ToNanoseconds() > 100 * 10**9
    finally:
        await paused.stop()
    status = group.status()
    assert (LinkState(status.state), list(status.partitions)) == (LinkState.REPLICATING, [])
    # The error the stopped partition stopped on is still the latest.
    assert status.last_error == "region b has no gateway address in the mesh file"


def test_a_whole_log_link_names_no_partition() -> None:
    group = LinkGroup(
        source="a", destination="b", address="x:1", broker=cast(Broker, None), options=LinkOptions(), partitions=None
    )
    status = group.status()
    assert (LinkState(status.state), list(status.partitions), status.last_error) == (LinkState.STOPPED, [], "")

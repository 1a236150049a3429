"""A link sends its log in batches of at most ``max_batch_events`` (the mesh file's
``settings.replication_batch_events``), in order, whatever the backlog.

A real nats-server as the source's log; a gRPC destination that answers every batch accepted
and keeps each request's events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from meshgate.brokers.nats import NatsBroker
from meshgate.replicator import Link, LinkOptions
from meshgate.v1 import replication_pb2
from tests._servers import AcceptsAll, serve_destination
from tests._wait import eventually
from tests.brokers._contract import make_event


class _Batches(AcceptsAll):
    """``AcceptsAll`` that also keeps the events of each request, as they came."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[list[str]] = []

    async def Replicate(
        self,
        request_iterator: AsyncIterator[replication_pb2.ReplicateRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[replication_pb2.ReplicateResponse]:
        async def kept() -> AsyncIterator[replication_pb2.ReplicateRequest]:
            async for req in request_iterator:
                self.requests.append(list(req.raw.ids))
                yield req

        async for resp in super().Replicate(kept(), context):
            yield resp


async def test_a_backlog_goes_in_batches_of_the_configured_size_in_order(nats_broker: NatsBroker) -> None:
    sink = _Batches()
    server, port = await serve_destination(sink)
    # One key: one partition, so the log's order is the order every batch must keep.
    ids = [f"b-{i}" for i in range(23)]
    events = [make_event("orders/created", i, origin="here", route=["here", "there"], key="k") for i in ids]
    assert all(not isinstance(r, Exception) for r in await nats_broker.append(events))
    link = Link(
        source="here",
        destination="there",
        address=f"127.0.0.1:{port}",
        broker=nats_broker,
        options=LinkOptions(connect_timeout_seconds=2.0, max_batch_events=5),
        partitions=range(nats_broker.partitions),
    )
    try:
        await link.start()
        await eventually(lambda: link.counters.forwarded == len(ids), 20, what="the backlog forwarded")
        sizes = [len(r) for r in sink.requests]
        assert all(1 <= n <= 5 for n in sizes), sizes
        assert [i for r in sink.requests for i in r] == ids
        # Full batches while the backlog lasts (the last takes what is left).
        assert sizes[:4] == [5, 5, 5, 5], sizes
    finally:
        await link.stop(1.0)
        await server.stop(0)

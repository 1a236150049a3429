"""A link restarted (a rebalance restarts it over another set of partitions) while a batch it sent
was never answered: the new run sends it again and accounts for its own batches only.

A real nats-server as the source's log; a gRPC destination that takes the first call's batches
and never answers them, then answers every later call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from meshgate.brokers.nats import NatsBroker
from meshgate.replicator import Link, LinkOptions
from meshgate.v1 import replication_pb2, replication_pb2_grpc
from tests._servers import serve_destination
from tests._wait import eventually
from tests.brokers._contract import make_event


class HangsOnFirstCall(replication_pb2_grpc.ReplicationServicer):
    def __init__(self) -> None:
        self.calls = 0
        self.ids: list[list[str]] = []

    async def Replicate(
        self,
        request_iterator: AsyncIterator[replication_pb2.ReplicateRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[replication_pb2.ReplicateResponse]:
        self.calls += 1
        call = self.calls
        self.ids.append([])
        async for req in request_iterator:
            self.ids[call - 1].extend(req.raw.ids)
            if call > 1:
                yield replication_pb2.ReplicateResponse(batch_id=req.batch_id, accepted=len(req.raw.ids))


async def test_a_link_restarted_with_a_batch_unanswered_sends_it_again_and_acks_it(nats_broker: NatsBroker) -> None:
    sink = HangsOnFirstCall()
    server, port = await serve_destination(sink)
    ids = [f"r-{i}" for i in range(5)]
    events = [make_event("orders/created", i, origin="here", route=["here", "there"], key=i) for i in ids]
    assert all(not isinstance(r, Exception) for r in await nats_broker.append(events))
    link = Link(
        source="here",
        destination="there",
        address=f"127.0.0.1:{port}",
        broker=nats_broker,
        options=LinkOptions(connect_timeout_seconds=2.0),
        partitions=range(nats_broker.partitions),
    )
    try:
        await link.start()
        await eventually(
            lambda: sink.ids and sorted(sink.ids[0]) == ids, 20, what="the events taken by the destination"
        )
        # Stopped before the answer comes (it never does on this call): its batch is still in flight.
        await link.stop(0.2)
        link.set_partitions(range(nats_broker.partitions))
        await link.start()
        await eventually(lambda: link.counters.forwarded == len(ids), 20, what="the events forwarded again")
        assert sink.calls == 2 and sorted(sink.ids[1]) == ids
        # Its own batch was acked in its consumer: nothing is left in the log for the link.
        await eventually(lambda: link.counters.lag_events == 0, 20, what="the lag read as none")
        assert link.counters.last_error == "" and link.counters.forwarded == len(ids)
    finally:
        await link.stop(1.0)
        await server.stop(0)

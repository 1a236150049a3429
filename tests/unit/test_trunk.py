"""A destination's partition links on one call (``replicator._trunk``), one module.

The destination is a real gRPC server that records what it gets; the links read fake
consumers (their own partition each, stream ``p<n>``). The end-to-end ledger tests run the
same links against real gateways and brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from meshgate.brokers import RawBatch
from meshgate.brokers._codec import header_lines
from meshgate.replicator import Link, LinkOptions
from meshgate.replicator._trunk import LinkError, Member, Trunk, _groups, _Merged, _Part, split_answer
from meshgate.v1 import replication_pb2, replication_pb2_grpc
from tests._wait import eventually
from tests.gateway._helpers import ev

BOUND = 10.0


class _Destination(replication_pb2_grpc.ReplicationServicer):
    """Answers every request at once (all accepted); records calls and requests; can end a call."""

    def __init__(self) -> None:
        self.calls = 0
        self.requests: list[replication_pb2.ReplicateRequest] = []
        self.abort_after: int | None = None  # requests, counted over all calls

    async def Replicate(
        self,
        request_iterator: AsyncIterator[replication_pb2.ReplicateRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[replication_pb2.ReplicateResponse]:
        self.calls += 1
        async for request in request_iterator:
            self.requests.append(request)
            if self.abort_after is not None and len(self.requests) >= self.abort_after:
                self.abort_after = None
                await context.abort(grpc.StatusCode.UNAVAILABLE, "cut")
            yield replication_pb2.ReplicateResponse(batch_id=request.batch_id, accepted=len(request.raw.ids))


class _Partition:
    """A partition's consumer: ``batches`` small batches, then nothing; acks and resets as the log does."""

    def __init__(self, partition: int, batches: int, size: int = 2, delay: float = 0.0) -> None:
        self.stream = f"p{partition}"
        self.delay = delay
        self.events = [f"{self.stream}-e{i}" for i in range(batches * size)]
        self.size = size
        self.next = 0  # index of the next event to hand out
        self.acked = 0  # events acked, in order

    async def fetch_raw(self, max_events: int, *, timeout: float) -> RawBatch:
        if self.next >= len(self.events):
            await asyncio.sleep(min(timeout, 0.05))
            return RawBatch()
        if self.delay:
            await asyncio.sleep(self.delay)
        ids = self.events[self.next : self.next + min(self.size, max_events)]
        seqs = list(range(self.next + 1, self.next + 1 + len(ids)))
        self.next += len(ids)
        events = [ev(id=i, origin="here", route=["here", "there"]) for i in ids]
        return RawBatch(
            ids=ids,
            topics=[e.topic for e in events],
            sequences=seqs,
            streams=[self.stream] * len(ids),
            headers=[header_lines(e) for e in events],
            data=[e.data for e in events],
        )

    async def ack_raw(self, batch: RawBatch) -> None:
        assert batch.sequences[0] == self.acked + 1, (self.stream, batch.sequences, self.acked)
        self.acked = batch.sequences[-1]

    async def reset(self) -> None:
        self.next = self.acked  # what was not acked comes again, in order

    async def pending(self) -> int:
        return len(self.events) - self.acked

    async def oldest_pending_time(self) -> float | None:
        return None

    async def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def _destination() -> AsyncIterator[tuple[_Destination, str]]:
    server = grpc.aio.server()
    destination = _Destination()
    replication_pb2_grpc.add_ReplicationServicer_to_server(destination, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield destination, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def _links(address: str, partitions: list[_Partition]) -> list[Link]:
    options = LinkOptions(backoff_initial_seconds=0.05, backoff_max_seconds=0.2)
    trunk = Trunk(destination="there", options=options)
    links = []
    for p, consumer in enumerate(partitions):
        link = Link(
            source="here",
            destination="there",
            address=address,
            broker=None,  # type: ignore[arg-type]
            options=options,
            partition=p,
            trunk=trunk,
        )
        link._consumer = consumer  # type: ignore[assignment]
        links.append(link)
    return links


async def _run_until_acked(address: str, partitions: list[_Partition]) -> list[Link]:
    """Runs a link per partition on one trunk until every partition's events are acked."""
    links = _links(address, partitions)
    for link in links:
        await link.start()
    try:
        await eventually(lambda: all(p.acked == len(p.events) for p in partitions), BOUND, what="every partition acked")
    finally:
        for link in links:
            await link.stop()
    return links


async def test_partition_links_share_one_call_and_their_small_batches_go_together() -> None:
    partitions = [_Partition(p, batches=5) for p in range(4)]
    async with _destination() as (destination, address):
        links = await _run_until_acked(address, partitions)
    assert destination.calls == 1
    # Each partition's events reached the destination once and in its own order.
    got = [i for r in destination.requests for i in r.raw.ids]
    assert sorted(got) == sorted(i for p in partitions for i in p.events)
    for p in partitions:
        assert [i for i in got if i.startswith(p.stream + "-")] == p.events
    # Batches ready together went as one request: fewer requests than batches, and one with
    # events of several partitions, each partition's stream and sequences carried along.
    assert len(destination.requests) < 4 * 5
    assert any(len(set(r.raw.streams)) > 1 for r in destination.requests)
    for r in destination.requests:
        assert len(r.raw.streams) == len(r.raw.ids) == len(r.raw.sequences)
    assert [link.counters.forwarded for link in links] == [10] * 4


async def test_a_call_that_fails_ends_for_every_link_on_it_and_each_resends_on_a_new_one() -> None:
    partitions = [_Partition(p, batches=6) for p in range(3)]
    async with _destination() as (destination, address):
        destination.abort_after = 2
        links = await _run_until_acked(address, partitions)
    assert destination.calls >= 2
    # Every link on the cut call went through a retry; nothing was lost, and what was resent
    # came again in each partition's order (the destination drops the copies by id).
    assert all(link.counters.retries >= 1 for link in links)
    got = [i for r in destination.requests for i in r.raw.ids]
    for p in partitions:
        mine = [i for i in got if i.startswith(p.stream + "-")]
        assert set(mine) == set(p.events)
        assert [i for i in dict.fromkeys(mine)] == p.events


async def test_a_link_that_stops_leaves_the_call_to_the_others() -> None:
    first, second = _Partition(0, batches=2), _Partition(1, batches=40, delay=0.02)
    async with _destination() as (destination, address):
        links = _links(address, [first, second])
        for link in links:
            await link.start()
        try:
            await eventually(lambda: first.acked == len(first.events), BOUND, what="partition 0 acked")
            await links[0].stop()  # its lease went elsewhere, say
            assert second.acked < len(second.events)  # the other is still at work
            await eventually(lambda: second.acked == len(second.events), BOUND, what="partition 1 acked")
        finally:
            for link in links:
                await link.stop()
    # The stop ended nothing for the other link: one call throughout, no retry.
    assert destination.calls == 1
    assert links[1].counters.retries == 0


def _merged(*sizes: int) -> _Merged:
    member = Member.__new__(Member)
    return _Merged(batch_id=7, parts=[_Part(member, batch_id=10 + i, size=n) for i, n in enumerate(sizes)])


def test_a_merged_answer_is_split_back_refusals_by_index_and_duplicates_where_known() -> None:
    merged = _merged(2, 3)
    refusal = replication_pb2.RawRefusal(index=3, code=3, message="too large")
    resp = replication_pb2.ReplicateResponse(batch_id=7, accepted=4, refused=[refusal])
    (first, first_known), (second, second_known) = split_answer(resp, merged, "there")
    assert (first.batch_id, first.accepted, first.duplicates, list(first.refused)) == (10, 2, 0, [])
    assert (second.batch_id, second.accepted, second.duplicates) == (11, 2, 0)
    assert [(r.index, r.message) for r in second.refused] == [(1, "too large")]
    assert first_known and second_known
    # All kept were duplicates: each part's are its kept.
    answers = split_answer(replication_pb2.ReplicateResponse(batch_id=7, duplicates=5), merged, "there")
    assert [(a.accepted, a.duplicates, known) for a, known in answers] == [(0, 2, True), (0, 3, True)]
    # Some were: which part's is not known; each counts what it kept as accepted.
    answers = split_answer(replication_pb2.ReplicateResponse(batch_id=7, accepted=3, duplicates=2), merged, "there")
    assert [(a.accepted, a.duplicates, known) for a, known in answers] == [(2, 0, False), (3, 0, False)]
    # Not merged: the answer is the part's own, whatever it counts.
    (alone, known) = split_answer(
        replication_pb2.ReplicateResponse(batch_id=7, accepted=1, duplicates=1), _merged(2), "there"
    )[0]
    assert (alone.batch_id, alone.accepted, alone.duplicates, known) == (10, 1, 1, True)
    with pytest.raises(LinkError, match="answered raw batch 7 with 4 accepted, 0 duplicates and 0 refused; it has 5"):
        split_answer(replication_pb2.ReplicateResponse(batch_id=7, accepted=4), merged, "there")


def test_only_batches_smaller_than_a_links_own_are_merged() -> None:
    member = Member.__new__(Member)
    member._ended = False

    def request(n: int) -> replication_pb2.ReplicateRequest:
        return replication_pb2.ReplicateRequest(raw=replication_pb2.RawEvents(ids=[f"e{i}" for i in range(n)]))

    waiting = [(member, request(n)) for n in (3, 4, 500, 2, 498, 1)]
    groups = _groups(waiting, max_bytes=1 << 20, max_events=500)
    assert [[len(r.raw.ids) for _, r in g] for g in groups] == [[3, 4], [500], [2, 498], [1]]
    # By bytes too: each request stays within what the destination takes.
    groups = _groups([(member, request(100)) for _ in range(3)], max_bytes=request(100).ByteSize() * 2, max_events=500)
    assert [len(g) for g in groups] == [2, 1]

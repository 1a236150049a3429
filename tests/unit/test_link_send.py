"""A link sends what its log stored, raw, whether traces are on or off: one send path.

With traces on, each event's ``ce-traceparent`` header line names its send span (replaced
when the stored event had one, added when not); the rest of the bytes go as stored. A unit
test with a fake consumer and call: the end-to-end trace test covers the destination's side.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from meshgate.brokers import RawBatch
from meshgate.brokers._codec import header_lines, parse_header_lines
from meshgate.observability import Tracing
from meshgate.replicator import Link, LinkOptions, _link
from meshgate.v1 import replication_pb2, replication_pb2_grpc
from tests._servers import free_port, serve_destination
from tests._wait import eventually
from tests.gateway._helpers import ev

_STORED_TP = f"00-{0xABC:032x}-{0x42:016x}-01"


def _stored() -> RawBatch:
    events = [
        ev(id="e-1", origin="here", route=["here", "there"], extensions={"traceparent": _STORED_TP}),
        ev(id="e-2", origin="here", route=["here", "there"]),
    ]
    return RawBatch(
        ids=[e.id for e in events],
        topics=[e.topic for e in events],
        sequences=[1, 2],
        headers=[header_lines(e) for e in events],
        data=[e.data for e in events],
    )


class _Consumer:
    """Hands out one batch, then nothing."""

    def __init__(self) -> None:
        self.batches = [_stored()]

    async def fetch_raw(self, max_events: int, *, timeout: float) -> RawBatch:
        await asyncio.sleep(0.001)
        return self.batches.pop() if self.batches else RawBatch()


class _Call:
    def __init__(self) -> None:
        self.requests: list[replication_pb2.ReplicateRequest] = []

    async def write(self, request: replication_pb2.ReplicateRequest) -> None:
        self.requests.append(request)


@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
async def test_a_link_sends_raw_with_traces_on_or_off(traced: bool) -> None:
    tracing = Tracing(region="here", provider=TracerProvider()) if traced else None
    link = Link(
        source="here",
        destination="there",
        address="127.0.0.1:1",
        broker=None,  # type: ignore[arg-type]
        options=LinkOptions(tracing=tracing),
    )
    call = _Call()
    task = asyncio.create_task(link._send_loop(_Consumer(), call, asyncio.Semaphore(8)))  # type: ignore[arg-type]
    try:
        await eventually(lambda: call.requests, 5, interval=0.01, what="the link to send a request")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    (request,) = call.requests
    assert not request.events
    assert request.HasField("raw")
    assert list(request.raw.ids) == ["e-1", "e-2"]
    stored = _stored()
    if tracing is None:
        assert list(request.raw.headers) == stored.headers
        return
    (sent,) = link._inflight
    assert sent.spans is not None
    for i, span in enumerate(sent.spans):
        assert span is not None  # always_on: every event is sampled
        ctx = span.get_span_context()
        lines = request.raw.headers[i]
        assert lines.count(b"ce-traceparent:") == 1
        assert parse_header_lines(lines)["ce-traceparent"] == (
            f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
        )
        # Everything but that line is the stored bytes.
        without = [ln for ln in lines.split(b"\r\n") if not ln.startswith(b"ce-traceparent:")]
        assert without == [ln for ln in stored.headers[i].split(b"\r\n") if not ln.startswith(b"ce-traceparent:")]
    # The first event's send span continues the trace its stored traceparent named.
    first = sent.spans[0]
    assert first is not None
    assert first.get_span_context().trace_id == 0xABC
    tracing.abandon(sent.spans, "test over")
    tracing.shutdown()


def test_requests_of_tiny_events_with_stored_times_fit_the_limit() -> None:
    """The link's room per event covers the stored time each event now carries: every part of
    a split batch of tiny events, encoded as the request the link writes, fits the limit."""
    n = 5000
    batch = RawBatch(
        ids=[f"e{i}" for i in range(n)],
        topics=["t"] * n,
        sequences=list(range(2**40, 2**40 + n)),
        headers=[b""] * n,
        data=[b""] * n,
        stored_ns=[1_800_000_000_000_000_000 + i for i in range(n)],
        tokens=list(range(n)),
    )
    limit = 16 * 1024
    parts = batch.split(limit, per_event=_link._EVENT_OVERHEAD_BYTES)
    assert len(parts) > 1
    for part in parts:
        request = replication_pb2.ReplicateRequest(
            source_region="a-region-name",
            batch_id=2**40,
            raw=replication_pb2.RawEvents(
                ids=part.ids,
                topics=part.topics,
                sequences=part.sequences,
                streams=part.streams,
                headers=part.headers,
                data=part.data,
                stored_unix_nanos=part.stored_ns,
            ),
        )
        assert request.ByteSize() <= limit


async def test_a_link_retries_a_down_destination_within_half_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    # gRPC's own reconnect backoff (1 s growing to 120 s) would leave a restarted destination
    # unseen for up to that long while the link waits for its channel: the link's channels
    # retry within 0.1 s growing to 0.5 s. Checked on the channel a session really opens.
    opened: list[dict[str, object]] = []
    real = grpc.aio.insecure_channel

    def spy(target: str, options: Any = None, **kwargs: Any) -> grpc.aio.Channel:
        opened.append(dict(options or ()))
        return real(target, options=options, **kwargs)

    monkeypatch.setattr(grpc.aio, "insecure_channel", spy)
    link = Link(
        source="here",
        destination="there",
        address=f"127.0.0.1:{free_port()}",  # nothing listens: the session fails to connect
        broker=None,  # type: ignore[arg-type]
        options=LinkOptions(connect_timeout_seconds=0.2),
    )
    with pytest.raises(TimeoutError):
        await link._session(_Consumer(), link.address or "")  # type: ignore[arg-type]
    (options,) = opened
    initial = options["grpc.initial_reconnect_backoff_ms"]
    most = options["grpc.max_reconnect_backoff_ms"]
    assert isinstance(initial, int) and isinstance(most, int)
    assert initial <= 100 and most <= 500
    # The connection attempt's own deadline stays gRPC's (20 s): a slow handshake still completes.
    assert "grpc.min_reconnect_backoff_ms" not in options


class _Answering(replication_pb2_grpc.ReplicationServicer):
    """A destination that answers a batch only when the test lets it (``permits``)."""

    def __init__(self) -> None:
        self.batch_ids: list[int] = []
        self.permits: asyncio.Queue[None] = asyncio.Queue()

    async def Replicate(
        self,
        request_iterator: AsyncIterator[replication_pb2.ReplicateRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[replication_pb2.ReplicateResponse]:
        async def read() -> None:
            async for request in request_iterator:
                self.batch_ids.append(request.batch_id)

        reader = asyncio.create_task(read())
        try:
            answered = 0
            while True:
                await self.permits.get()
                yield replication_pb2.ReplicateResponse(batch_id=self.batch_ids[answered], accepted=2)
                answered += 1
        finally:
            reader.cancel()


class _Endless:
    """Always has another batch of two: only the window holds the link back."""

    def __init__(self) -> None:
        self.fetched = 0

    async def fetch_raw(self, max_events: int, *, timeout: float) -> RawBatch:
        self.fetched += 1
        batch = _stored()
        return RawBatch(
            ids=[f"{i}-{self.fetched}" for i in batch.ids],
            topics=batch.topics,
            sequences=[2 * self.fetched - 1, 2 * self.fetched],
            headers=batch.headers,
            data=batch.data,
        )

    async def ack_raw(self, batch: RawBatch) -> None:
        pass


@pytest.mark.parametrize("window", [1, 3])
async def test_a_link_keeps_at_most_its_window_of_batches_unanswered(window: int) -> None:
    destination = _Answering()
    server, port = await serve_destination(destination)
    link = Link(
        source="here",
        destination="there",
        address=f"127.0.0.1:{port}",
        broker=None,  # type: ignore[arg-type]
        options=LinkOptions(window=window, ack_timeout_seconds=60.0),
    )
    consumer = _Endless()
    session = asyncio.create_task(link._session(consumer, f"127.0.0.1:{port}"))  # type: ignore[arg-type]
    sent = destination.batch_ids
    try:
        await eventually(lambda: len(sent) >= window, 10, interval=0.01, what=f"{window} batches sent")
        # One answer frees one place: exactly one more batch goes (a larger window sends on at once).
        destination.permits.put_nowait(None)
        await eventually(lambda: len(sent) >= window + 1, 10, interval=0.01, what="one more batch after an answer")
        assert len(sent) == window + 1, sent
        assert consumer.fetched == window + 1
    finally:
        session.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await session
        await server.stop(None)


class _Refuses(replication_pb2_grpc.ReplicationServicer):
    """Reads the first batch, then ends the call with an error status, unanswered."""

    async def Replicate(self, request_iterator: Any, context: Any) -> Any:
        await anext(aiter(request_iterator))
        await context.abort(grpc.StatusCode.UNAVAILABLE, "no room: insufficient resources")
        yield replication_pb2.ReplicateResponse()  # pragma: no cover - never reached


async def test_a_write_into_a_call_the_destination_ended_says_why_it_ended() -> None:
    # The send loop can write while the destination ends the call: the link's error must be the
    # destination's status (what Status shows the operator), not grpc's "RPC already finished".
    server, port = await serve_destination(_Refuses())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = replication_pb2_grpc.ReplicationStub(channel).Replicate()
            request = replication_pb2.ReplicateRequest(source_region="here", batch_id=1)
            await _link._write(call, request)
            with pytest.raises(grpc.aio.AioRpcError):
                await call.read()
            with pytest.raises(asyncio.InvalidStateError):
                await call.write(request)  # what grpc says itself
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _link._write(call, request)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
            assert caught.value.details() == "no room: insufficient resources"
    finally:
        await server.stop(None)

"""``meshgate.v1.Replication``: a destination storing a source region's batches exactly once.

The call's peer checks are ``_replication_peer``'s, the sorting of a batch's events and the
recording of its write ``_classify``'s, the dedup state's saving ``_checkpoint``'s; this
module runs the call: requests in, up to ``_PIPELINE`` writes at once, answers out in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from meshgate._quota import FifoQuota
from meshgate.brokers import Broker, BrokerError, StorageFullError
from meshgate.gateway._auth import ReplicationGuard
from meshgate.gateway._checkpoint import Checkpointer
from meshgate.gateway._classify import Classifier, ProcessedBatch, as_raw, event_results
from meshgate.gateway._dedup import OriginDedup, OriginState
from meshgate.gateway._metrics import GatewayMetrics
from meshgate.gateway._replication_peer import CallFailed, PeerCheck
from meshgate.observability import Tracing
from meshgate.v1 import event_pb2, replication_pb2, replication_pb2_grpc

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from meshgate.gateway._server import Gateway

__all__ = ["ReplicationService"]

# Batches of one call being written at once: the next batch is on its way to the broker
# while the acks of the one before come back. Answers still go out in order, one per batch.
_PIPELINE = 4

_Queue = asyncio.Queue["_InFlight | BaseException | None"]


class _InFlight:
    """A batch handed to the broker, waiting to be applied and answered."""

    __slots__ = ("events", "request", "spans", "write")

    def __init__(
        self,
        request: replication_pb2.ReplicateRequest,
        write: asyncio.Future[ProcessedBatch],
        spans: list[Span | None] | None,
        events: list[event_pb2.Event] | None,
    ) -> None:
        self.request = request
        self.write = write
        self.spans = spans
        # The request's decoded events when it came as such: answered per event.
        self.events = events


def _give_back(ingress: FifoQuota, n: int, _write: asyncio.Future[ProcessedBatch]) -> None:
    ingress.release(n)


def _sequence_span(raw: replication_pb2.RawEvents) -> tuple[dict[str, int], dict[str, int]]:
    """The lowest and the highest origin sequence of each stream in a raw batch."""
    lows: dict[str, int] = {}
    highs: dict[str, int] = {}
    seqs = raw.sequences
    if not seqs:
        return lows, highs
    streams = list(raw.streams)
    if not streams:
        return {"": min(seqs)}, {"": max(seqs)}
    first = streams[0]
    if streams.count(first) == len(streams):
        # A NATS origin's call carries one partition: no loop over the events.
        return {first: min(seqs)}, {first: max(seqs)}
    for name, seq in zip(streams, seqs, strict=False):
        if seq < lows.get(name, seq + 1):
            lows[name] = seq
        if seq > highs.get(name, 0):
            highs[name] = seq
    return lows, highs


def _failure_code(exc: BrokerError) -> grpc.StatusCode:
    return grpc.StatusCode.RESOURCE_EXHAUSTED if isinstance(exc, StorageFullError) else grpc.StatusCode.UNAVAILABLE


class ReplicationService(replication_pb2_grpc.ReplicationServicer):
    """The Replicate handler of one region; ``region_names``, ``draining`` read the gateway's state in force."""

    def __init__(
        self,
        *,
        region: str,
        broker: Broker,
        metrics: GatewayMetrics,
        tracing: Tracing,
        guard: ReplicationGuard,
        peer_tls: bool,
        region_names: Callable[[], Sequence[str]],
        draining: Callable[[], bool],
        ingress: FifoQuota,
    ) -> None:
        self._region = region
        # Events held by all calls, from before a batch is sorted until its write is done
        # (limits.max_replication_inflight_events): a destination with
        # many origin partitions holds the bound, not calls x _PIPELINE batches (8 partitions of
        # a NATS origin: 16,000 events). First come, first served: a call's batches keep their order.
        self._ingress = ingress
        self._broker = broker
        self._tracing = tracing
        self._guard = guard
        # With TLS on, the peer is the region its verified certificate names.
        self._peer_tls = peer_tls
        self._draining = draining
        self._dedup = OriginDedup(broker)
        self._peers = PeerCheck(region=region, metrics=metrics, region_names=region_names)
        self._classifier = Classifier(region=region, metrics=metrics, peers=self._peers)

    @classmethod
    def for_gateway(cls, gateway: Gateway) -> ReplicationService:
        return cls(
            region=gateway.region,
            broker=gateway.broker,
            metrics=gateway.metrics,
            tracing=gateway.tracing,
            guard=gateway.replication_guard,
            peer_tls=gateway.peer_tls is not None,
            region_names=lambda: gateway.routing[0].region_names,
            draining=lambda: gateway.draining,
            ingress=gateway.replication_ingress,
        )

    async def _open(
        self, requests: AsyncIterator[replication_pb2.ReplicateRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[replication_pb2.ReplicateRequest, OriginState] | None:
        """The call's checks before anything of it is stored: its first request and its origin's
        recovered state, None for a call without requests; the call is aborted otherwise."""
        region = self._region
        # With TLS on, the peer is the region its verified certificate names, before anything is read.
        peer = await self._peers.peer_region(context) if self._peer_tls else None
        # With a replication secret, the call carries it, or it ends here: nothing of it is read,
        # no origin's state is recovered, no checkpoint written.
        refused = self._guard.check(context.invocation_metadata(), region=region)
        if refused is not None:
            await context.abort(refused.code, refused.message)
        if self._draining():
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"gateway of region {region} is shutting down")
        first = await anext(requests, None)
        if first is None:
            return None
        source = self._peers.source_refusal(first, peer)
        if source is not None:
            await context.abort(source.code, source.message)
        try:
            state = await self._dedup.recover(first.source_region)
        except BrokerError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"region {region} cannot read its log: {exc}")
        return first, state

    async def Replicate(
        self,
        request_iterator: AsyncIterator[replication_pb2.ReplicateRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[replication_pb2.ReplicateResponse]:
        requests = request_iterator.__aiter__()
        opened = await self._open(requests, context)
        if opened is None:
            return
        first, state = opened
        checkpointer = Checkpointer(self._dedup, state)
        # Each request is classified and handed to the broker in order, up to _PIPELINE at a
        # time; each is applied and answered in order once its writes are acked. The call
        # ends at the first batch that cannot be stored: later batches already written are
        # not answered, and the source's resend finds them in the log (dedup).
        queue: _Queue = asyncio.Queue()
        slots = asyncio.Semaphore(_PIPELINE)
        reader = asyncio.create_task(
            self._read(first, requests=requests, state=state, queue=queue, slots=slots, checkpointer=checkpointer)
        )
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, CallFailed):
                    await context.abort(item.code, item.message)
                if isinstance(item, BaseException):
                    raise item
                yield await self._answer(item, state, checkpointer, slots=slots, context=context)
        finally:
            await self._end(reader, queue, checkpointer)

    async def _answer(
        self,
        item: _InFlight,
        state: OriginState,
        checkpointer: Checkpointer,
        *,
        slots: asyncio.Semaphore,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> replication_pb2.ReplicateResponse:
        """Applies a written batch to the state once its write is done, and answers it."""
        done = await item.write
        failure = self._classifier.apply(state, done)
        if item.spans is not None:
            self._tracing.end_process(item.spans, done)
        # Not reached for a write the call ended before: what it stored is not in the
        # state, so no checkpoint is saved after it (the next recovery scans it).
        checkpointer.written(done.last)
        slots.release()
        if failure is not None:
            # The source resends from this batch; the log tells what is already here.
            await context.abort(_failure_code(failure), f"region {self._region} could not store a batch: {failure}")
        results = event_results(done, item.events)
        if results is not None:
            return replication_pb2.ReplicateResponse(batch_id=item.request.batch_id, results=results)
        return replication_pb2.ReplicateResponse(
            batch_id=item.request.batch_id,
            accepted=len(done.ids) - done.duplicates - len(done.refused),
            duplicates=done.duplicates,
            refused=done.refused,
        )

    @staticmethod
    async def _end(reader: asyncio.Task[None], queue: _Queue, checkpointer: Checkpointer) -> None:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        elif not reader.cancelled():
            reader.exception()  # raised from the queue; retrieved so asyncio does not log it again
        # Writes already handed to the broker finish on their own (bounded by its ack
        # timeout); their outcome is not answered, only found again by the next recovery.
        # (Each gives its share of the ingress bound back when it is done.)
        while not queue.empty():
            rest = queue.get_nowait()
            if isinstance(rest, _InFlight) and not rest.write.done():
                with contextlib.suppress(Exception):
                    await asyncio.shield(rest.write)
        await checkpointer.close()

    async def _read(
        self,
        first: replication_pb2.ReplicateRequest,
        *,
        requests: AsyncIterator[replication_pb2.ReplicateRequest],
        state: OriginState,
        queue: _Queue,
        slots: asyncio.Semaphore,
        checkpointer: Checkpointer,
    ) -> None:
        """Takes the call's requests in order, classifies each and starts its write."""
        request: replication_pb2.ReplicateRequest | None = first
        # Highest origin sequence per stream sent in this call so far.
        seen: dict[str, int] = {}
        try:
            while request is not None:
                request, events, invalid = self._as_raw(request, state.origin)
                lows, highs = _sequence_span(request.raw)
                # A batch is classified against the state before the batches still in flight
                # are applied to it. That is right for what a source sends in order; a resend
                # within the call (at or below what came before) waits until all of them are.
                drain = any(low <= seen.get(name, 0) for name, low in lows.items())
                # No free slot: this stops reading, and gRPC flow control holds the source.
                for _ in range(_PIPELINE if drain else 1):
                    await slots.acquire()
                # Room in the gateway's bound before the batch is sorted (its columns copied);
                # waiting here stops reading, like a full pipeline.
                size = len(request.raw.ids)
                ingress = self._ingress
                await ingress.acquire(size)
                try:
                    item = await self._start(request, state, events, invalid)
                except BaseException:
                    ingress.release(size)
                    raise
                # Given back once the write is done (a done callback runs once, also when the
                # call ends first): a call whose source stops reading answers keeps only its
                # own pipeline, never the room the other calls share.
                item.write.add_done_callback(functools.partial(_give_back, ingress, size))
                # Queued with no await after the write started: every write started is awaited.
                checkpointer.writing()
                queue.put_nowait(item)
                if drain:
                    for _ in range(_PIPELINE - 1):
                        slots.release()
                for name, high in highs.items():
                    if high > seen.get(name, 0):
                        seen[name] = high
                request = await anext(requests, None)
        except (CallFailed, grpc.RpcError) as exc:
            queue.put_nowait(exc)
            return
        except BaseException as exc:
            # Whatever else ends the reading (a request that does not parse, a bug) ends the
            # call too: the answering loop would otherwise wait for the next item for ever.
            queue.put_nowait(exc)
            raise
        queue.put_nowait(None)

    def _as_raw(
        self, request: replication_pb2.ReplicateRequest, origin: str
    ) -> tuple[replication_pb2.ReplicateRequest, list[event_pb2.Event] | None, dict[int, str] | None]:
        """The request as raw events (links send raw; a request of decoded ``events`` is encoded),
        its decoded events if it had them, and those that cannot be encoded."""
        if request.source_region != origin:
            raise CallFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"source_region changed from {origin!r} to {request.source_region!r} within one call",
            )
        if self._peer_tls:
            # The call's origin is the peer's certificate region (checked when it opened).
            self._peers.check_event_origins(origin, request)
        if request.HasField("raw"):
            if request.events:
                if self._peer_tls:
                    self._peers.check_raw_origins(origin, request)
                raise CallFailed(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"batch {request.batch_id} sets both events and raw; send one of them",
                )
            return request, None, None
        if not request.events:
            return request, None, None
        events = list(request.events)
        raw, invalid = as_raw(request)
        return raw, events, invalid

    async def _start(
        self,
        request: replication_pb2.ReplicateRequest,
        state: OriginState,
        events: list[event_pb2.Event] | None,
        invalid: dict[int, str] | None,
    ) -> _InFlight:
        """Classifies a raw request and starts its write (the write runs on in its own task)."""
        tracing = self._tracing
        started = time.time_ns() if tracing.enabled else 0
        batch = self._classifier.classify(state.origin, state, request, peer_checked=self._peer_tls, invalid=invalid)
        # A "{topic} process" span per event, child of its traceparent, over dedup and write.
        spans = tracing.start_process(state.origin, batch, started) if started else None
        if not state.registered.issuperset(batch.last):
            # A stream's first event this call stores: its entry is written before it.
            try:
                await self._dedup.register(state, batch.last)
            except BrokerError as exc:
                if spans is not None:
                    tracing.abandon(spans, f"not stored: {exc}")
                raise CallFailed(
                    _failure_code(exc), f"region {self._region} cannot record a new stream: {exc}"
                ) from exc
        return _InFlight(request, asyncio.ensure_future(self._write(batch, state.origin)), spans, events)

    async def _write(self, batch: ProcessedBatch, origin: str) -> ProcessedBatch:
        if batch.w_ids:
            try:
                batch.written = await self._broker.append_raw(
                    ids=batch.w_ids,
                    topics=batch.w_topics,
                    headers=batch.w_headers,
                    data=batch.w_data,
                    origin_sequences=batch.w_seqs,
                    origin_streams=batch.w_streams,
                    # The sorting let through only events carrying exactly the call's origin.
                    origin=origin,
                )
            except BrokerError as exc:
                batch.written = [exc] * len(batch.w_ids)
        return batch

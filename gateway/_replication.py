"""``meshgate.v1.Replication``: a destination storing a source region's batches exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from meshgate.brokers import AppendResult, BrokerError
from meshgate.gateway._dedup import OriginDedup, OriginState
from meshgate.router import validate_topic
from meshgate.v1 import event_pb2, replication_pb2, replication_pb2_grpc

if TYPE_CHECKING:
    from meshgate.gateway._server import Gateway

__all__ = ["ReplicationService"]

log = logging.getLogger("meshgate.gateway.replication")

_ACCEPTED = event_pb2.OUTCOME_ACCEPTED
_DUPLICATE = event_pb2.OUTCOME_DUPLICATE
_REJECTED = event_pb2.OUTCOME_REJECTED
_INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_CHECKPOINT_EVERY = 0.2


class _Batch:
    """One request: each event is a resend, refused before, invalid, or to be written."""

    __slots__ = ("events", "last", "request", "results", "to_write", "write_index", "written")

    def __init__(self, request: replication_pb2.ReplicateRequest) -> None:
        self.request = request
        self.results: list[event_pb2.EventResult | None] = []
        self.to_write: list[event_pb2.Event] = []
        self.write_index: list[int] = []
        self.written: list[AppendResult | BrokerError] = []
        # Highest origin sequence of each origin stream in the request.
        self.last: dict[str, int] = {}


class _Checkpointer:
    """Saves the streams of an origin the call changed, in the background, at most every ``_CHECKPOINT_EVERY`` s.

    The log position is read first, then the changed streams are snapshotted once every
    write started before that read has been applied to the state (``started``/``applied``,
    counted by the call): what landed at or below the position is then in the snapshot. Each
    stream's entry is written with that position; a stream whose write failed is saved again
    the next time.

    Stopped by a flag, not by cancelling: nats-py swallows a cancellation that lands inside
    one of its requests, and a cancelled saver could then wait forever.
    """

    def __init__(self, dedup: OriginDedup, state: OriginState) -> None:
        self._dedup = dedup
        self._state = state
        # Streams changed since their last save.
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.started = 0
        self.applied = 0
        self._applied = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    def writing(self) -> None:
        self.started += 1

    def written(self, streams: Iterable[str]) -> None:
        """The write counted by ``writing`` is applied to the state; ``streams`` may have changed."""
        self.applied += 1
        self._dirty.update(streams)
        self._applied.set()
        self._wake.set()

    async def _applied_up_to(self, mark: int) -> bool:
        while self.applied < mark:
            if self._stop.is_set():
                return False  # the call ended before that write was applied: its outcome is unknown
            self._applied.clear()
            await self._applied.wait()
        return True

    async def _save(self) -> None:
        state = self._state
        try:
            position = await self._dedup.position()
            if not await self._applied_up_to(self.started):
                return
            # Taken at once: no write is applied between the snapshot and the dirty set's reset.
            snapshot = state.snapshot(self._dirty)
            self._dirty = set()
            failed = await self._dedup.save(state, snapshot, position)
        except BrokerError as exc:
            log.warning("replication checkpoint of %s not saved: %s", state.origin, exc)
            return
        if failed:
            # Only the scan after the next recovery gets longer; retried on the next save.
            self._dirty.update(failed)
            log.warning(
                "replication checkpoint of %s not saved for %d stream(s): %s",
                state.origin,
                len(failed),
                next(iter(failed.values())),
            )

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            await self._save()
            # Rate limit: touches meanwhile only set the flag; close() ends the pause at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), _CHECKPOINT_EVERY)

    async def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._applied.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5.0)
        except TimeoutError:
            self._task.cancel()
        if self._dirty:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._save(), 2.0)


class ReplicationService(replication_pb2_grpc.ReplicationServicer):
    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self._dedup = OriginDedup(gateway.broker)

    def _classify(self, origin: str, state: OriginState, request: replication_pb2.ReplicateRequest) -> _Batch:
        here = self._gw.region
        replicated = self._gw.metrics.replicated
        batch = _Batch(request)
        last = batch.last
        streams = state.streams
        for ev in request.events:
            seq = ev.sequence
            name = ev.stream
            problem = None
            if ev.origin != origin:
                problem = f"event origin {ev.origin!r} is not the sending region {origin!r}"
            elif seq < 1:
                problem = "event carries no position in its origin's log (sequence)"
            elif here not in ev.route:
                problem = f"event's route {list(ev.route)} does not name region {here}"
            else:
                problem = validate_topic(ev.topic)
            if problem is not None:
                replicated["refused"].inc()
                batch.results.append(event_pb2.EventResult(id=ev.id, outcome=_REJECTED, code=_INVALID, message=problem))
                if ev.origin != origin or seq < 1:
                    continue  # no place in any of the origin's streams to count as handled
            else:
                stream = streams.get(name) or state.stream(name)
                if seq in stream.refused:
                    replicated["refused"].inc()
                    batch.results.append(
                        event_pb2.EventResult(id=ev.id, outcome=_REJECTED, code=_INVALID, message=stream.refused[seq])
                    )
                elif stream.is_resend(seq):
                    replicated["duplicate"].inc()
                    batch.results.append(event_pb2.EventResult(id=ev.id, outcome=_DUPLICATE, route=ev.route))
                else:
                    # Stored with where it sits in the origin's log; its place here is the broker's.
                    ev.origin_sequence = seq
                    ev.origin_stream = name
                    ev.sequence = 0
                    ev.stream = ""
                    batch.write_index.append(len(batch.results))
                    batch.results.append(None)
                    batch.to_write.append(ev)
            if seq > last.get(name, 0):
                last[name] = seq
        return batch

    async def _write(self, batch: _Batch) -> _Batch:
        if batch.to_write:
            try:
                batch.written = await self._gw.broker.append(batch.to_write)
            except BrokerError as exc:
                batch.written = [exc] * len(batch.to_write)
        return batch

    def _apply(self, state: OriginState, batch: _Batch) -> BrokerError | None:
        """Records the batch's outcome in the state; the retriable error that stops the call, if any."""
        failure: BrokerError | None = None
        metrics = self._gw.metrics
        now = time.time()
        stored = duplicate = 0  # added once per batch: a counter update takes a lock
        for ev, slot, res in zip(batch.to_write, batch.write_index, batch.written, strict=True):
            seq = ev.origin_sequence
            if isinstance(res, AppendResult):
                state.stream(ev.origin_stream).above.add(seq)
                outcome = _DUPLICATE if res.duplicate else _ACCEPTED
                if res.duplicate:
                    duplicate += 1
                else:
                    stored += 1
                    metrics.observe_replication_latency(ev, now)
                batch.results[slot] = event_pb2.EventResult(
                    id=ev.id, outcome=outcome, sequence=res.sequence, route=ev.route
                )
            elif not res.retriable:
                message = f"region {self._gw.region} refused it for good: {res}"
                state.stream(ev.origin_stream).refuse(seq, message)
                metrics.replicated["refused"].inc()
                batch.results[slot] = event_pb2.EventResult(id=ev.id, outcome=_REJECTED, code=_INVALID, message=message)
            elif failure is None:
                failure = res
        if stored:
            metrics.replicated["stored"].inc(stored)
        if duplicate:
            metrics.replicated["duplicate"].inc(duplicate)
        if failure is None:
            # Every slot is filled now: the response keeps one result per event, in order.
            # Each stream came in its own order after everything acked before: all of it up to
            # the batch's highest sequence of that stream is handled.
            for name, seq in batch.last.items():
                state.stream(name).advance(seq)
        return failure

    async def Replicate(
        self,
        request_iterator: AsyncIterator[replication_pb2.ReplicateRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[replication_pb2.ReplicateResponse]:
        gw = self._gw
        if gw.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"gateway of region {gw.region} is shutting down")
        requests = request_iterator.__aiter__()
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        origin = first.source_region
        config, _ = gw.routing
        if origin not in config.region_names or origin == gw.region:
            gw.metrics.refuse("permission", len(first.events))
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"region {origin!r} may not replicate to {gw.region} (mesh regions: {', '.join(config.region_names)})",
            )
        try:
            state = await self._dedup.recover(origin)
        except BrokerError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"region {gw.region} cannot read its log: {exc}")
        checkpointer = _Checkpointer(self._dedup, state)
        try:
            request: replication_pb2.ReplicateRequest | None = first
            # One batch at a time, in the call's own task: a batch is applied only after the one
            # before it, and the call ends at the first batch that cannot be stored.
            while request is not None:
                if request.source_region != origin:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"source_region changed from {origin!r} to {request.source_region!r} within one call",
                    )
                tracing = gw.tracing
                started = time.time_ns() if tracing.enabled else 0
                batch = self._classify(origin, state, request)
                if not state.registered.issuperset(batch.last):
                    # A stream's first event this call stores: its entry is written before it.
                    try:
                        await self._dedup.register(state, batch.last)
                    except BrokerError as exc:
                        await context.abort(
                            grpc.StatusCode.UNAVAILABLE, f"region {gw.region} cannot record a new stream: {exc}"
                        )
                # A "{topic} process" span per event, child of its traceparent, over dedup and write.
                spans = tracing.start_process(origin, request.events, batch.results, started) if started else None
                checkpointer.writing()
                batch = await self._write(batch)
                failure = self._apply(state, batch)
                # Not reached when the call is cancelled mid-write: what that write stored is not
                # in the state, so no checkpoint is saved after it (the next recovery scans it).
                checkpointer.written(batch.last)
                if spans is not None:
                    tracing.end_process(spans, batch.written, batch.write_index, batch.results)
                if failure is not None:
                    # The source resends from this batch; the log tells what is already here.
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE, f"region {gw.region} could not store a batch: {failure}"
                    )
                yield replication_pb2.ReplicateResponse(
                    batch_id=request.batch_id, results=[r for r in batch.results if r is not None]
                )
                request = await anext(requests, None)
        finally:
            await checkpointer.close()

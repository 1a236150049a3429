"""``meshgate.v1.Replication``: a destination storing a source region's batches exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from meshgate.brokers import AppendResult, BrokerError, StorageFullError
from meshgate.brokers._codec import HEADER_ORIGIN, HEADER_ROUTE, check_header_lines, escape_header_value, parse_time
from meshgate.gateway._dedup import OriginDedup, OriginState
from meshgate.router import validate_topic
from meshgate.tls import peer_identity
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
# How often an open call moves up the entries of the streams it has not changed: a recovery
# scans this region's log from the oldest entry's position, so an entry left where its
# stream went quiet would have it scan all the local traffic since (see _dedup).
_REFRESH_EVERY = 10.0
# Batches of one call being written at once: the next batch is on its way to the broker
# while the acks of the one before come back. Answers still go out in order, one per batch.
_PIPELINE = 4
_TIME_LINE = b"\r\nce-time: "
_ROUTE_LINE = f"\r\n{HEADER_ROUTE}: ".encode()
# With TLS on, a raw batch's header lines must carry exactly this header once, naming the peer.
_ORIGIN_NAME = HEADER_ORIGIN.encode()


def _escaped(region: str) -> bytes:
    return escape_header_value(region).encode()


class _CallFailed(Exception):
    """A request the call cannot go on after; ends it with ``code``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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


class _RawBatch:
    """One ``raw`` request: its events' indices to write and the refusals found on the way."""

    __slots__ = (
        "duplicates",
        "ids",
        "last",
        "refused",
        "request",
        "seqs",
        "w_data",
        "w_headers",
        "w_ids",
        "w_index",
        "w_seqs",
        "w_streams",
        "w_topics",
        "written",
    )

    def __init__(self, request: replication_pb2.ReplicateRequest) -> None:
        self.request = request
        self.ids: list[str] = []
        self.seqs: list[int] = []
        self.refused: list[replication_pb2.RawRefusal] = []
        self.duplicates = 0
        self.w_index: list[int] = []
        self.w_ids: list[str] = []
        self.w_topics: list[str] = []
        self.w_headers: list[bytes] = []
        self.w_data: list[bytes] = []
        self.w_seqs: list[int] = []
        self.w_streams: list[str] = []
        self.written: list[AppendResult | BrokerError] = []
        # Highest origin sequence of each origin stream in the request.
        self.last: dict[str, int] = {}


class _InFlight:
    """A batch handed to the broker, waiting to be applied and answered."""

    __slots__ = ("request", "spans", "write")

    def __init__(
        self, request: replication_pb2.ReplicateRequest, write: asyncio.Future[Any], spans: list[Any] | None
    ) -> None:
        self.request = request
        self.write = write
        self.spans = spans


class _Checkpointer:
    """Saves the streams of an origin the call changed, in the background, at most every ``_CHECKPOINT_EVERY`` s.

    The log position is read first, then the changed streams are snapshotted once every
    write started before that read has been applied to the state (``started``/``applied``,
    counted by the call): what landed at or below the position is then in the snapshot. Each
    stream's entry is written with that position; a stream whose write failed is saved again
    the next time. Every ``_REFRESH_EVERY`` s the unchanged streams are saved too, so their
    entries follow the log while their streams are quiet (``OriginDedup.save(refresh=...)``).

    Stopped by a flag, not by cancelling: nats-py swallows a cancellation that lands inside
    one of its requests, and a cancelled saver could then wait forever.
    """

    def __init__(self, dedup: OriginDedup, state: OriginState) -> None:
        self._dedup = dedup
        self._state = state
        # Streams changed since their last save.
        self._dirty: set[str] = set()
        # The log position the unchanged streams' entries were last moved up to (recovery did).
        self._refreshed = state.position
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

    async def _save(self, *, refresh: bool = False) -> None:
        """Saves the changed streams; with ``refresh``, also moves the others up to the log's position."""
        state = self._state
        try:
            position = await self._dedup.position()
            if not await self._applied_up_to(self.started):
                return
            # Taken at once: no write is applied between the snapshot and the dirty set's reset.
            quiet: frozenset[str] = frozenset()
            if refresh and position != self._refreshed:
                quiet = frozenset(state.registered - self._dirty)
                self._refreshed = position
            snapshot = state.snapshot(self._dirty | quiet)
            self._dirty = set()
            if not snapshot:
                return
            failed = await self._dedup.save(state, snapshot, position, refresh=quiet)
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
        loop = asyncio.get_running_loop()
        refresh_at = loop.time() + _REFRESH_EVERY
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, refresh_at - loop.time()))
            self._wake.clear()
            if self._stop.is_set():
                return
            refresh = loop.time() >= refresh_at
            if refresh:
                refresh_at = loop.time() + _REFRESH_EVERY
            await self._save(refresh=refresh)
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


def _sequence_span(request: replication_pb2.ReplicateRequest) -> tuple[dict[str, int], dict[str, int]]:
    """The lowest and the highest origin sequence of each stream in a request."""
    lows: dict[str, int] = {}
    highs: dict[str, int] = {}
    if request.HasField("raw"):
        raw = request.raw
        seqs = raw.sequences
        if not seqs:
            return lows, highs
        if not raw.streams:
            return {"": min(seqs)}, {"": max(seqs)}
        pairs = zip(raw.streams, seqs, strict=False)
    else:
        pairs = ((ev.stream, ev.sequence) for ev in request.events)  # type: ignore[assignment]
    for name, seq in pairs:
        if seq < lows.get(name, seq + 1):
            lows[name] = seq
        if seq > highs.get(name, 0):
            highs[name] = seq
    return lows, highs


class ReplicationService(replication_pb2_grpc.ReplicationServicer):
    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self._dedup = OriginDedup(gateway.broker)
        # What repeats across raw events, decided once: a topic's problem, whether a route
        # header names this region, the epoch second of a time's "YYYY-MM-DDTHH:MM:SS".
        self._topic_problems: dict[str, str | None] = {}
        self._routes_here: dict[bytes, bool] = {}
        self._seconds: dict[bytes, int] = {}

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

    def _topic_problem(self, topic: str) -> str | None:
        cache = self._topic_problems
        if topic in cache:
            return cache[topic]
        if len(cache) > 65_536:
            cache.clear()
        problem = cache[topic] = validate_topic(topic)
        return problem

    def _route_names_here(self, lines: bytes) -> bool:
        # The route header is one line; routes repeat, so each distinct one is split once.
        start = lines.find(_ROUTE_LINE[2:])
        if start != 0:
            start = lines.find(_ROUTE_LINE)
            if start < 0:
                return False
            start += 2
        start += len(_ROUTE_LINE) - 2
        route = lines[start : lines.find(b"\r\n", start)]
        here = self._routes_here.get(route)
        if here is None:
            if len(self._routes_here) > 4096:
                self._routes_here.clear()
            here = self._routes_here[route] = self._gw.region in route.decode(errors="replace").split(",")
        return here

    def _classify_raw(
        self, origin: str, state: OriginState, request: replication_pb2.ReplicateRequest, *, peer_checked: bool
    ) -> _RawBatch:
        """Sorts a raw batch's events; ``peer_checked`` (TLS on: ``origin`` is the peer's certificate
        region) makes an event carrying any origin header but exactly the peer's end the call."""
        raw = request.raw
        batch = _RawBatch(request)
        ids = batch.ids = list(raw.ids)
        seqs = batch.seqs = list(raw.sequences)
        topics = list(raw.topics)
        headers = list(raw.headers)
        datas = list(raw.data)
        names = list(raw.streams)
        n = len(ids)
        if not (len(seqs) == len(topics) == len(headers) == len(datas) == n) or len(names) not in (0, n):
            if peer_checked:
                self._check_raw_origins(origin, request)  # a foreign origin is refused as such first
            raise _CallFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"raw batch {request.batch_id} has {n} ids, {len(seqs)} sequences, {len(topics)} topics, "
                f"{len(headers)} header lines, {len(datas)} payloads and {len(names)} streams; it needs one of "
                "each per event (streams: none when the source's log is one stream)",
            )
        origin_value = _escaped(origin)
        origin_line = _ORIGIN_NAME + b": " + origin_value + b"\r\n"
        origin_mid = b"\r\n" + origin_line
        refused = batch.refused
        streams = state.streams
        last = batch.last
        topic_problem = self._topic_problem
        route_here = self._route_names_here
        w_index, w_ids, w_topics, w_headers, w_data, w_seqs, w_streams = (
            batch.w_index,
            batch.w_ids,
            batch.w_topics,
            batch.w_headers,
            batch.w_data,
            batch.w_seqs,
            batch.w_streams,
        )
        duplicates = 0
        for i in range(n):
            seq = seqs[i]
            lines = headers[i]
            name = names[i] if names else ""
            problem = None
            # The one origin check of an event. The decoder keeps the last of repeated headers:
            # exactly one mg-origin (in any case), the sender's, and that one its own exact line.
            # Fast: the text mg-origin once, and that is the sender's line.
            exact = lines.startswith(origin_line) or origin_mid in lines
            if not (exact and lines.lower().count(_ORIGIN_NAME) == 1):
                origins = _origin_values(lines)
                if origins != [origin_value]:
                    if peer_checked:
                        raise self._foreign_origin(origin, request, ids[i], origins)
                    if exact:
                        # A second one would relabel the event.
                        problem = f"event carries more than one origin header; it must carry exactly one, {origin!r}"
            if seq < 1:
                problem = "event carries no position in its origin's log (sequence)"
            elif not exact:
                problem = f"event origin is not the sending region {origin!r}"
            if problem is not None:
                # No place in any of the origin's streams to count as handled.
                refused.append(replication_pb2.RawRefusal(index=i, code=_INVALID, message=problem))
                continue
            eid = ids[i]
            if not eid:
                problem = "event has no id"
            elif not (
                lines.startswith(id_line := b"ce-id: %b\r\n" % escape_header_value(eid).encode())
                or (b"\r\n" + id_line in lines)
            ):
                problem = "event id is not the one in its ce-id header"
            elif not route_here(lines):
                problem = f"event's route does not name region {self._gw.region}"
            else:
                problem = topic_problem(topics[i]) or check_header_lines(lines)
            stream = streams.get(name) or state.stream(name)
            if problem is not None:
                refused.append(replication_pb2.RawRefusal(index=i, code=_INVALID, message=problem))
            elif seq in stream.refused:
                refused.append(replication_pb2.RawRefusal(index=i, code=_INVALID, message=stream.refused[seq]))
            elif stream.is_resend(seq):
                duplicates += 1
            else:
                w_index.append(i)
                w_ids.append(ids[i])
                w_topics.append(topics[i])
                w_headers.append(lines)
                w_data.append(datas[i])
                w_seqs.append(seq)
                w_streams.append(name)
            if seq > last.get(name, 0):
                last[name] = seq
        batch.duplicates = duplicates
        return batch

    async def _write_raw(self, batch: _RawBatch) -> _RawBatch:
        if batch.w_ids:
            try:
                batch.written = await self._gw.broker.append_raw(
                    ids=batch.w_ids,
                    topics=batch.w_topics,
                    headers=batch.w_headers,
                    data=batch.w_data,
                    origin_sequences=batch.w_seqs,
                    origin_streams=batch.w_streams,
                )
            except BrokerError as exc:
                batch.written = [exc] * len(batch.w_ids)
        return batch

    def _origin_time(self, lines: bytes) -> float | None:
        """The event's CloudEvents time (Unix seconds) read off its header lines."""
        at = lines.find(_TIME_LINE)
        if at < 0:
            if not lines.startswith(_TIME_LINE[2:]):
                return None
            at = -2
        value = lines[at + 11 : lines.find(b"\r\n", at + 11)]
        # Meshgate writes 2025-01-02T03:04:05.123456789Z; anything else takes the full parser.
        if len(value) == 30 and value[19:20] == b"." and value[29:30] == b"Z" and value[20:29].isdigit():
            seconds = self._seconds.get(value[:19])
            if seconds is None:
                try:
                    seconds = parse_time(value.decode()).seconds
                except ValueError:
                    return None
                if len(self._seconds) > 4096:
                    self._seconds.clear()
                self._seconds[value[:19]] = seconds
            return seconds + int(value[20:29]) / 1e9
        try:
            ts = parse_time(value.decode(errors="replace"))
        except (ValueError, OverflowError):
            return None
        return ts.seconds + ts.nanos / 1e9

    def _apply_raw(self, state: OriginState, batch: _RawBatch) -> BrokerError | None:
        """``_apply`` of a raw batch: the state, the metrics and the refusals of its answer."""
        failure: BrokerError | None = None
        stored = duplicate = 0
        metrics = self._gw.metrics
        refused = batch.refused
        for slot, name, res in zip(batch.w_index, batch.w_streams, batch.written, strict=True):
            if type(res) is AppendResult:
                if res.duplicate:
                    duplicate += 1
                else:
                    stored += 1
            elif isinstance(res, BrokerError):
                if not res.retriable:
                    message = f"region {self._gw.region} refused it for good: {res}"
                    state.stream(name).refuse(batch.seqs[slot], message)
                    refused.append(replication_pb2.RawRefusal(index=slot, code=_INVALID, message=message))
                elif failure is None:
                    failure = res
        if failure is not None:
            # What did get stored is remembered for the resend that follows.
            for seq, name, res in zip(batch.w_seqs, batch.w_streams, batch.written, strict=True):
                if type(res) is AppendResult:
                    state.stream(name).above.add(seq)
        else:
            # Each stream came in its own order after everything acked before: all of it up to
            # the batch's highest sequence of that stream is handled.
            for name, seq in batch.last.items():
                state.stream(name).advance(seq)
        if stored:
            metrics.replicated["stored"].inc(stored)
            now = time.time()
            origin_time = self._origin_time
            latencies = []
            for lines, res in zip(batch.w_headers, batch.written, strict=True):
                if type(res) is AppendResult and not res.duplicate:
                    at = origin_time(lines)
                    if at is not None:
                        # Clocks of two regions differ a little: a negative latency is a zero.
                        latencies.append(max(0.0, now - at))
            metrics.observe_replication_latencies(latencies)
        duplicate += batch.duplicates
        if duplicate:
            metrics.replicated["duplicate"].inc(duplicate)
        if refused:
            metrics.replicated["refused"].inc(len(refused))
        batch.duplicates = duplicate
        return failure

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
        latencies: list[float] = []  # observed once per batch, as the raw path does
        for ev, slot, res in zip(batch.to_write, batch.write_index, batch.written, strict=True):
            seq = ev.origin_sequence
            if isinstance(res, AppendResult):
                state.stream(ev.origin_stream).above.add(seq)
                outcome = _DUPLICATE if res.duplicate else _ACCEPTED
                if res.duplicate:
                    duplicate += 1
                else:
                    stored += 1
                    if ev.HasField("time"):
                        # Clocks of two regions differ a little: a negative latency is a zero.
                        latencies.append(max(0.0, now - (ev.time.seconds + ev.time.nanos / 1e9)))
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
            metrics.observe_replication_latencies(latencies)
        if duplicate:
            metrics.replicated["duplicate"].inc(duplicate)
        if failure is None:
            # Every slot is filled now: the response keeps one result per event, in order.
            # Each stream came in its own order after everything acked before: all of it up to
            # the batch's highest sequence of that stream is handled.
            for name, seq in batch.last.items():
                state.stream(name).advance(seq)
        return failure

    async def _peer_region(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The region of the caller's verified certificate; the call is aborted otherwise."""
        gw = self._gw
        identity = peer_identity(context.auth_context())
        if not identity.verified:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"region {gw.region} takes Replicate only from a peer showing its region's certificate of the mesh CA",
            )
        config, _ = gw.routing
        known = [r for r in identity.regions if r in config.region_names and r != gw.region]
        if len(identity.regions) != 1 or not known:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"region {gw.region} takes Replicate only from another region of the mesh; the caller showed"
                f" {identity.describe()} (regions: {', '.join(config.region_names)})",
            )
        return known[0]

    def _refuse_foreign(self, peer: str, request: replication_pb2.ReplicateRequest, claimed: str) -> _CallFailed:
        """What ends a call whose batch holds an event of another origin than the peer's (TLS on)."""
        self._gw.metrics.refuse("permission", len(request.events) or len(request.raw.ids))
        return _CallFailed(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{claimed}; the certificate of region {peer} may forward only events of region {peer}",
        )

    def _foreign_origin(
        self, peer: str, request: replication_pb2.ReplicateRequest, eid: str, origins: list[bytes]
    ) -> _CallFailed:
        shown = b", ".join(origins).decode("utf-8", "replace") or "none"
        return self._refuse_foreign(peer, request, f"event {eid} carries the origin header(s) {shown}")

    def _check_event_origins(self, peer: str, request: replication_pb2.ReplicateRequest) -> None:
        """A peer forwards only its own events: one of another origin ends the call (_CallFailed)
        before anything of its batch is stored. Raw events are checked as ``_classify_raw`` sorts them."""
        for ev in request.events:
            if ev.origin != peer:
                raise self._refuse_foreign(peer, request, f"event {ev.id} claims origin {ev.origin!r}")

    def _check_raw_origins(self, peer: str, request: replication_pb2.ReplicateRequest) -> None:
        """``_classify_raw``'s origin refusal for a raw batch it does not sort (a malformed one), so
        that another origin in it is still refused as such. Slow, and only on that error path."""
        raw = request.raw
        own = _escaped(peer)
        for i, lines in enumerate(raw.headers[:]):
            origins = _origin_values(lines)
            if origins != [own]:
                raise self._foreign_origin(peer, request, raw.ids[i] if i < len(raw.ids) else f"#{i}", origins)

    async def Replicate(
        self,
        request_iterator: AsyncIterator[replication_pb2.ReplicateRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[replication_pb2.ReplicateResponse]:
        gw = self._gw
        # With TLS on, the peer is the region its verified certificate names, before anything is read.
        peer = await self._peer_region(context) if gw.server_tls is not None else None
        # With a replication secret, the call carries it, or it ends here: nothing of it is read,
        # no origin's state is recovered, no checkpoint written.
        refused = gw.replication_guard.check(context.invocation_metadata(), region=gw.region)
        if refused is not None:
            await context.abort(refused.code, refused.message)
        if gw.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"gateway of region {gw.region} is shutting down")
        requests = request_iterator.__aiter__()
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        origin = first.source_region
        config, _ = gw.routing
        if peer is not None and origin != peer:
            gw.metrics.refuse("permission", len(first.events) or len(first.raw.ids))
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate of region {peer} cannot replicate as region {origin!r}",
            )
        if origin not in config.region_names or origin == gw.region:
            gw.metrics.refuse("permission", len(first.events) or len(first.raw.ids))
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"region {origin!r} may not replicate to {gw.region} (mesh regions: {', '.join(config.region_names)})",
            )
        try:
            state = await self._dedup.recover(origin)
        except BrokerError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"region {gw.region} cannot read its log: {exc}")
        checkpointer = _Checkpointer(self._dedup, state)
        # Each request is classified and handed to the broker in order, up to _PIPELINE at a
        # time; each is applied and answered in order once its writes are acked. The call
        # ends at the first batch that cannot be stored: later batches already written are
        # not answered, and the source's resend finds them in the log (dedup).
        queue: asyncio.Queue[_InFlight | BaseException | None] = asyncio.Queue()
        slots = asyncio.Semaphore(_PIPELINE)
        reader = asyncio.create_task(
            self._read(
                first,
                requests=requests,
                origin=origin,
                state=state,
                queue=queue,
                slots=slots,
                checkpointer=checkpointer,
            )
        )
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, _CallFailed):
                    await context.abort(item.code, item.message)
                if isinstance(item, BaseException):
                    raise item
                request, spans = item.request, item.spans
                done = await item.write
                if isinstance(done, _RawBatch):
                    failure = self._apply_raw(state, done)
                else:
                    failure = self._apply(state, done)
                    if spans is not None:
                        gw.tracing.end_process(spans, done.written, done.write_index, done.results)
                # Not reached for a write the call ended before: what it stored is not in the
                # state, so no checkpoint is saved after it (the next recovery scans it).
                checkpointer.written(done.last)
                slots.release()
                if failure is not None:
                    # The source resends from this batch; the log tells what is already here.
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED
                        if isinstance(failure, StorageFullError)
                        else grpc.StatusCode.UNAVAILABLE,
                        f"region {gw.region} could not store a batch: {failure}",
                    )
                if isinstance(done, _RawBatch):
                    yield replication_pb2.ReplicateResponse(
                        batch_id=request.batch_id,
                        accepted=len(done.ids) - done.duplicates - len(done.refused),
                        duplicates=done.duplicates,
                        refused=done.refused,
                    )
                else:
                    yield replication_pb2.ReplicateResponse(
                        batch_id=request.batch_id, results=[r for r in done.results if r is not None]
                    )
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            elif not reader.cancelled():
                reader.exception()  # raised above from the queue; retrieved so asyncio does not log it again
            # Writes already handed to the broker finish on their own (bounded by its ack
            # timeout); their outcome is not answered, only found again by the next recovery.
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
        origin: str,
        state: OriginState,
        queue: asyncio.Queue[_InFlight | BaseException | None],
        slots: asyncio.Semaphore,
        checkpointer: _Checkpointer,
    ) -> None:
        """Takes the call's requests in order, classifies each and starts its write."""
        request: replication_pb2.ReplicateRequest | None = first
        # Highest origin sequence per stream sent in this call so far.
        seen: dict[str, int] = {}
        try:
            while request is not None:
                lows, highs = _sequence_span(request)
                # A batch is classified against the state before the batches still in flight
                # are applied to it. That is right for what a source sends in order; a resend
                # within the call (at or below what came before) waits until all of them are.
                drain = any(low <= seen.get(name, 0) for name, low in lows.items())
                # No free slot: this stops reading, and gRPC flow control holds the source.
                for _ in range(_PIPELINE if drain else 1):
                    await slots.acquire()
                # Queued with no await after the write started: every write started is awaited.
                item = await self._start(request, origin, state)
                checkpointer.writing()
                queue.put_nowait(item)
                if drain:
                    for _ in range(_PIPELINE - 1):
                        slots.release()
                for name, high in highs.items():
                    if high > seen.get(name, 0):
                        seen[name] = high
                request = await anext(requests, None)
        except (_CallFailed, grpc.RpcError) as exc:
            queue.put_nowait(exc)
            return
        except BaseException as exc:
            # Whatever else ends the reading (a request that does not parse, a bug) ends the
            # call too: the answering loop would otherwise wait for the next item for ever.
            queue.put_nowait(exc)
            raise
        queue.put_nowait(None)

    async def _start(self, request: replication_pb2.ReplicateRequest, origin: str, state: OriginState) -> _InFlight:
        """Classifies a request and starts its write (the write runs on in its own task)."""
        if request.source_region != origin:
            raise _CallFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"source_region changed from {origin!r} to {request.source_region!r} within one call",
            )
        # With TLS on, the call's origin is the peer's certificate region (checked when it opened).
        peer_checked = self._gw.server_tls is not None
        if peer_checked:
            self._check_event_origins(origin, request)
        spans = None
        batch: _Batch | _RawBatch
        if request.HasField("raw"):
            if request.events:
                if peer_checked:
                    self._check_raw_origins(origin, request)
                raise _CallFailed(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"batch {request.batch_id} sets both events and raw; send one of them",
                )
            batch = self._classify_raw(origin, state, request, peer_checked=peer_checked)
        else:
            tracing = self._gw.tracing
            started = time.time_ns() if tracing.enabled else 0
            batch = self._classify(origin, state, request)
            # A "{topic} process" span per event, child of its traceparent, over dedup and write.
            spans = tracing.start_process(origin, request.events, batch.results, started) if started else None
        if not state.registered.issuperset(batch.last):
            # A stream's first event this call stores: its entry is written before it.
            try:
                await self._dedup.register(state, batch.last)
            except BrokerError as exc:
                raise _CallFailed(
                    grpc.StatusCode.RESOURCE_EXHAUSTED
                    if isinstance(exc, StorageFullError)
                    else grpc.StatusCode.UNAVAILABLE,
                    f"region {self._gw.region} cannot record a new stream: {exc}",
                ) from exc
        write = self._write_raw(batch) if isinstance(batch, _RawBatch) else self._write(batch)
        return _InFlight(request, asyncio.ensure_future(write), spans)


def _origin_values(lines: bytes) -> list[bytes]:
    """The values of every mg-origin header of a raw event's header lines (slow path)."""
    return [
        value.strip()
        for name, _, value in (part.partition(b":") for part in lines.split(b"\r\n"))
        if name.strip().lower() == _ORIGIN_NAME
    ]

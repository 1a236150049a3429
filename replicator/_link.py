"""One replication link: this region's log -> one destination region's gateway."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from meshgate.brokers import (
    Broker,
    BrokerError,
    DurableConsumer,
    PartitionedLog,
    RawBatch,
    decode_event,
    parse_header_lines,
)
from meshgate.config import Settings
from meshgate.replicator._channel import (
    TLS_POLL_SECONDS,
    LinkError,
    TlsRotated,
    open_channel,
    tls_changed,
)
from meshgate.tls import ClientTls, TlsMaterial
from meshgate.v1 import admin_pb2, event_pb2, replication_pb2, replication_pb2_grpc

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from meshgate.observability import Tracing

__all__ = ["DLQ_TOPIC_PREFIX", "FenceGuard", "Link", "LinkOptions", "LinkState", "dead_letter_event"]

log = logging.getLogger("meshgate.replicator")

# Refused events of a link go to topic meshgate/dlq/<destination> in the source region.
DLQ_TOPIC_PREFIX = "meshgate/dlq/"
_MAX_REASON = 500
_LAG_POLL_SECONDS = 0.5
# How long an idle link's fetch waits for the next event.
_IDLE_WAIT_SECONDS = 0.5
# Room per event in a request for its fields' tags and lengths, and its stored time (a 9-byte
# varint of Unix nanoseconds, stored_unix_nanos); with traces on, also for the ce-traceparent
# line the send span adds to an event stored without one.
_EVENT_OVERHEAD_BYTES = 16 + 10
_TRACED_EVENT_OVERHEAD_BYTES = _EVENT_OVERHEAD_BYTES + 80
# A session this old with nothing to send has shown the link works (a destination refuses a
# call at once): an idle link's last_error is cleared then, a busy one's at its first ack.
_SETTLED_SECONDS = 1.0


# Why a link may not open a new generation of its consumer (which fences the older ones), or
# None when it may: the replicator's check that this process still holds the link's leases. A
# replica that stalled (SIGSTOP, a long GC pause) and lost them wakes to a consumer fenced by
# its successor; reopening would fence the successor in turn until its next lease round.
FenceGuard = Callable[["Link"], Awaitable[str | None]]


class LinkState(enum.Enum):
    CONNECTING = admin_pb2.LINK_STATE_CONNECTING
    REPLICATING = admin_pb2.LINK_STATE_REPLICATING
    BACKING_OFF = admin_pb2.LINK_STATE_BACKING_OFF
    PAUSED = admin_pb2.LINK_STATE_PAUSED
    STANDBY = admin_pb2.LINK_STATE_STANDBY
    STOPPED = admin_pb2.LINK_STATE_UNSPECIFIED


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkOptions:
    # A batch closes at this many events, or when the log has nothing more within `linger`.
    # The mesh file's settings.replication_batch_events (its default: see Settings).
    max_batch_events: int = Settings().replication_batch_events
    # A batch larger than this (encoded) goes as several requests: the destination's max_message_bytes.
    max_request_bytes: int = 4 * 1024 * 1024
    linger_seconds: float = 0.02
    # Batches sent and not yet acked; the destination applies them in order. The mesh file's
    # settings.replication_window (its default: docs/PERFORMANCE.md, "The link's window").
    window: int = Settings().replication_window
    # No ack for the oldest batch in flight within this time: the link is broken.
    ack_timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 5.0
    backoff_initial_seconds: float = 0.1
    backoff_max_seconds: float = 10.0
    # The gateway's tracer when traces are on: a "{topic} send" span per forwarded event.
    tracing: Tracing | None = field(default=None, compare=False)
    # TLS to the destinations (security.ca set): this region's certificate as the client's, and
    # the destination must present its own region's certificate.
    tls: ClientTls | None = field(default=None, compare=False)
    # Sent with every Replicate call: the mesh's replication secret (security.replication_secret).
    # Never in repr or logs.
    metadata: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)


ReplicateCall = grpc.aio.StreamStreamCall[replication_pb2.ReplicateRequest, replication_pb2.ReplicateResponse]


async def _write(call: ReplicateCall, request: replication_pb2.ReplicateRequest) -> None:
    """``call.write``; once the destination ended the call, raises the call's status (why it
    ended: a refusal, a full store) rather than grpc's "RPC already finished"."""
    try:
        await call.write(request)
    except asyncio.InvalidStateError:
        raise grpc.aio.AioRpcError(
            await call.code(),
            await call.initial_metadata(),
            await call.trailing_metadata(),
            details=await call.details(),
        ) from None


def _redelivered(stream: str, seq: int, last: int) -> LinkError:
    where = f"{stream} " if stream else ""
    return LinkError(
        f"event at log position {where}{seq} redelivered after {last}; restarting from the oldest unacked event"
    )


@dataclass(slots=True)
class _Sent:
    batch_id: int
    # The events as their broker stored them (traces on: each carrying its send span's context).
    raw: RawBatch
    spans: list[Span | None] | None = None

    def __len__(self) -> int:
        return len(self.raw)


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancels ``task`` until it has ended.

    Once is not enough: nats-py can swallow a cancellation that lands inside one of its
    requests, and a send loop that lived on would spin (waiting out a TLS rotation that never
    ends for it) while the session waited for it forever: its link would stop.
    """
    while not task.done():
        task.cancel()
        try:
            await asyncio.wait({task}, timeout=0.5)
        except asyncio.CancelledError:
            task.cancel()
            raise
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


def _raw_event(raw: RawBatch, i: int) -> event_pb2.Event:
    """Event ``i`` of a raw batch, decoded (only for the rare one the destination refused)."""
    ev = decode_event(
        parse_header_lines(raw.headers[i]),
        raw.data[i],
        topic=raw.topics[i],
        sequence=raw.sequences[i],
        stream=raw.streams[i] if raw.streams else "",
    )
    ev.id = raw.ids[i]
    return ev


def dead_letter_event(ev: event_pb2.Event, *, destination: str, reason: str) -> event_pb2.Event:
    """The copy of a refused event kept in the source region, with why and where it was going."""
    dlq = event_pb2.Event()
    dlq.CopyFrom(ev)
    dlq.id = f"{ev.id}@dlq/{destination}"
    dlq.topic = f"{DLQ_TOPIC_PREFIX}{destination}"
    dlq.sequence = 0
    dlq.stream = ""
    dlq.origin_sequence = 0
    dlq.origin_stream = ""
    # Stays where it is: a dead letter is never replicated.
    dlq.route[:] = [ev.origin]
    dlq.extensions.update(
        {
            "dlqreason": reason[:_MAX_REASON],
            "dlqtopic": ev.topic,
            "dlqid": ev.id,
            "dlqdestination": destination,
        }
    )
    return dlq


@dataclass(slots=True)
class LinkCounters:
    forwarded: int = 0
    dead_lettered: int = 0
    retries: int = 0
    lag_events: int = 0
    oldest_unacked: float | None = None
    last_error: str = ""
    last_error_time: float | None = None

    def record_error(self, message: str) -> None:
        self.last_error = message
        self.last_error_time = time.time()

    def clear_error(self) -> None:
        self.last_error = ""
        self.last_error_time = None


def lag_seconds_of(counters: LinkCounters) -> float:
    """The age of the oldest event not yet acked by the destination (0 when none waits)."""
    oldest = counters.oldest_unacked
    return max(0.0, time.time() - oldest) if oldest is not None else 0.0


def status_of(destination: str, state: LinkState, counters: LinkCounters) -> admin_pb2.LinkStatus:
    """What Admin.Status says of a link."""
    status = admin_pb2.LinkStatus(
        destination=destination,
        state=state.value,
        lag_events=counters.lag_events,
        lag_seconds=lag_seconds_of(counters),
        last_error=counters.last_error,
        forwarded=counters.forwarded,
        dead_lettered=counters.dead_lettered,
    )
    if counters.last_error_time is not None:
        status.last_error_time.FromNanoseconds(int(counters.last_error_time * 1e9))
    return status


class Link:
    """Reads this region's log through a durable consumer and forwards to one destination.

    The consumer's position lives in the broker, so a link resumes where it stopped after any
    crash. Only this region's own events whose route names the destination are sent; the rest
    are acked and skipped. A batch's deliveries are acked only after the destination acked
    the batch, batches in the order they were sent (a NATS consumer acks once per batch,
    everything up to a delivery: ``NatsDurableConsumer``); on any failure the unacked ones are
    handed back and sent again after a backoff.
    """

    def __init__(
        self,
        *,
        source: str,
        destination: str,
        address: str | None,
        broker: Broker,
        options: LinkOptions | None = None,
        partitions: Sequence[int] | None = None,
    ) -> None:
        self.source = source
        self.destination = destination
        # The partitions of this region's log the link sends (a PartitionedLog's, read through
        # one consumer), None: all of it.
        self.partitions: tuple[int, ...] | None = tuple(sorted(partitions)) if partitions is not None else None
        self.address = address
        self.options = options or LinkOptions()
        self.state = LinkState.STOPPED
        self.counters = LinkCounters()
        self._broker = broker
        # One durable consumer per link, whichever partitions it reads: each generation records
        # its own, and each partition's position lives on across them (NatsDurableConsumer).
        self._consumer_name = f"mg-link-{destination}"
        self._task: asyncio.Task[None] | None = None
        # A run stopped but not yet ended (see stop): the next start waits for it.
        self._ending: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._inflight: deque[_Sent] = deque()
        self._consumer: DurableConsumer | None = None
        # Log position (per stream of the log) of the last delivery taken in this session;
        # anything at or below it is a redelivery out of order.
        self._last_seq: dict[str, int] = {}
        # When this replica last renewed the link's lease (monotonic), None when it holds none.
        self.lease_renewed: float | None = None
        # Asked before each new generation of the consumer (an open, a reset), which fences the
        # older ones: why this process may not (its leases are another replica's now), or None.
        self._fence_guard: FenceGuard | None = None
        # Set while nothing is in flight: stop() waits for it within its timeout.
        self._idle = asyncio.Event()
        self._idle.set()
        # Its opposite: set while a batch is in flight, so that an answer awaited while idle
        # gets the ack timeout from the moment a batch is sent.
        self._busy = asyncio.Event()
        # Set when the TLS files changed: no new batch goes out on this connection.
        self._rotating = False
        # When the current session started replicating (monotonic).
        self._session_started = 0.0
        # True while a Replicate call to the destination is open.
        self._session_open = False

    # --- control ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None

    @property
    def partition(self) -> None:
        """A link is no one partition's (``LinkGroup``'s slots are): its lease is the destination's."""
        return None

    def guard_fences(self, guard: FenceGuard | None) -> None:
        """Asks ``guard`` before each new generation of the link's consumer (see ``FenceGuard``)."""
        self._fence_guard = guard

    def set_partitions(self, partitions: Sequence[int]) -> None:
        """The partitions to send from the next start (the link is stopped)."""
        if self._task is not None:
            raise RuntimeError(f"link {self.source} -> {self.destination} is running; stop it first")
        self.partitions = tuple(sorted(partitions))

    async def start(self) -> None:
        if self._task is not None:
            return
        ending, self._ending = self._ending, None
        if ending is not None:
            # The last run did not end within stop()'s bound: it still holds the consumer (of
            # the partitions it read), which this run must not take over.
            await _cancelled(ending)
        self._stopping = False
        # A new run reads through a new consumer (on NATS, maybe of other partitions): what the
        # last one sent and did not see acked within stop()'s bound comes again.
        self._forget_sent()
        # Restarted after a failure (a rebalance restarts it too): backing_off until it works again.
        self.state = LinkState.BACKING_OFF if self.counters.last_error else LinkState.CONNECTING
        self._task = asyncio.create_task(self._run(), name=f"link {self.source}->{self.destination}")

    async def stop(self, timeout: float = 5.0) -> None:
        """Lets the batches in flight be acked (bounded by ``timeout``), then stops."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), timeout)
        task.cancel()
        # Bounded: nats-py can swallow a cancellation that lands inside one of its requests.
        done, _ = await asyncio.wait({task}, timeout=2.0)
        if not done:
            log.warning("link %s -> %s did not stop within 2 s of cancelling", self.source, self.destination)
            self._ending = task  # the next start waits for it
        self.state = LinkState.STOPPED

    async def _drained(self) -> None:
        await self._idle.wait()

    def use_broker(self, broker: Broker) -> None:
        """The broker to read and dead-letter through from the next start (the link is stopped)."""
        if self._task is not None:
            raise RuntimeError(f"link {self.source} -> {self.destination} is running; stop it first")
        self._broker = broker

    def set_address(self, address: str | None) -> None:
        if address != self.address:
            self.address = address
            self._wake.set()  # a paused link resumes; a connected one reconnects on its next error

    # --- status ----------------------------------------------------------------------------

    @property
    def lag_seconds(self) -> float:
        return lag_seconds_of(self.counters)

    def status(self) -> admin_pb2.LinkStatus:
        return status_of(self.destination, self.state, self.counters)

    def record_error(self, message: str) -> None:
        """Sets ``last_error`` (shown by Status until the link replicates again)."""
        self.counters.record_error(message)

    def clear_error(self) -> None:
        """Forgets ``last_error``: the link works again (Status shows only what is wrong now)."""
        self.counters.clear_error()
        if self.state is LinkState.BACKING_OFF and self._session_open:
            self.state = LinkState.REPLICATING

    # --- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        opts = self.options
        backoff = opts.backoff_initial_seconds
        monitor = asyncio.create_task(self._monitor_lag())
        try:
            while not self._stopping:
                if self.address is None:
                    self.state = LinkState.PAUSED
                    self.record_error(f"region {self.destination} has no gateway address in the mesh file")
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                progress = self.counters.forwarded + self.counters.dead_lettered
                try:
                    if self._consumer is None:
                        await self._check_fence()
                        self._consumer = await self._open_consumer()
                    # After a failure the link shows backing_off until it works again (an ack,
                    # or a quiet call that outlived the ack timeout): a retry that opens a call
                    # and fails again seconds later is not "replicating" meanwhile.
                    if not self.counters.last_error:
                        self.state = LinkState.CONNECTING
                    await self._session(self._consumer, self.address)
                except TlsRotated:
                    log.info("link %s -> %s: TLS files changed; reconnecting with them", self.source, self.destination)
                    await self._hand_back()
                    backoff = opts.backoff_initial_seconds
                    continue
                except Exception as exc:  # noqa: BLE001 - whatever ends a session, the link retries
                    if isinstance(exc, grpc.aio.AioRpcError):
                        code, message = exc.code().name, exc.details() or ""
                    else:
                        code, message = type(exc).__name__, str(exc) or "timed out"
                    self.record_error(f"{code}: {message}")
                    log.warning("link %s -> %s: %s: %s", self.source, self.destination, code, message)
                if self._is_stopping():
                    break
                if self.counters.forwarded + self.counters.dead_lettered > progress:
                    backoff = opts.backoff_initial_seconds
                await self._hand_back()
                self.state = LinkState.BACKING_OFF
                self.counters.retries += 1
                delay = backoff * random.uniform(0.5, 1.0)  # jitter, not security
                backoff = min(backoff * 2, opts.backoff_max_seconds)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            if self._consumer is not None:
                with contextlib.suppress(BrokerError):
                    await self._consumer.close()
                self._consumer = None

    async def _check_fence(self) -> None:
        """Raises LinkError when the guard says this process may not fence the link's readers."""
        guard = self._fence_guard
        if guard is None:
            return
        reason = await guard(self)
        if reason:
            raise LinkError(f"not reading the log: {reason}")

    async def _open_consumer(self) -> DurableConsumer:
        # Only this region's own events routed to the destination come out of it; the broker
        # adapter skips the rest before decoding them. On NATS each open (and each reset) is a
        # new generation of the consumer that fences the replicas that ran the link before.
        broker = self._broker
        if self.partitions is not None:
            if not isinstance(broker, PartitionedLog):
                raise TypeError(f"{type(broker).__name__} has no partitions; link to {self.destination} has some")
            return await broker.durable_consumer(
                self._consumer_name, origin=self.source, routed_to=self.destination, partitions=self.partitions
            )
        return await broker.durable_consumer(self._consumer_name, origin=self.source, routed_to=self.destination)

    def _is_stopping(self) -> bool:
        # A method, not the attribute: stop() flips it while this task awaits.
        return self._stopping

    async def _hand_back(self) -> None:
        """Returns what was sent and not acked to the log: it is delivered again, in order.

        The destination recognises resends by their position in this log, which needs them in
        log order: a reset (not a plain redelivery, which can come late behind newer events)
        restarts the consumer at the oldest unacked event.
        """
        self._forget_sent()
        consumer = self._consumer
        if consumer is None:
            return
        try:
            await self._check_fence()
        except LinkError as exc:
            # Not this process's to read any more: its consumer is left as it is (not fenced
            # from here), and the next open asks again.
            self.record_error(str(exc))
            with contextlib.suppress(BrokerError):
                await consumer.close()
            self._consumer = None
            return
        try:
            await consumer.reset()
        except BrokerError as exc:
            self.record_error(f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(BrokerError):
                await consumer.close()
            self._consumer = None

    def _forget_sent(self) -> None:
        """Forgets the batches in flight and the log positions taken: they come again."""
        tracing = self.options.tracing
        if tracing is not None:
            for sent in self._inflight:
                if sent.spans:
                    tracing.abandon(sent.spans, "not acked by the destination; sent again")
        self._inflight.clear()
        self._idle.set()
        self._busy.clear()
        self._last_seq = {}

    async def _monitor_lag(self) -> None:
        # Read from the broker, not from what this link sent: the consumer's pending events
        # (not yet acked by the destination, or not yet looked at) and when the oldest of them
        # was stored, so the lag grows while the link is stuck even if it never fetched them.
        # Polled here rather than on every Status call.
        while True:
            consumer = self._consumer
            if consumer is not None:
                with contextlib.suppress(BrokerError):
                    self.counters.lag_events = await consumer.pending()
                    self.counters.oldest_unacked = await consumer.oldest_pending_time()
            await asyncio.sleep(_LAG_POLL_SECONDS)

    async def _session(self, consumer: DurableConsumer, address: str) -> None:
        """One connection to the destination; returns only by raising why it ended."""
        opts = self.options
        tls = opts.tls
        channel, material = open_channel(address, destination=self.destination, tls=tls)
        async with channel:
            await self._connect(channel)
            call = replication_pb2_grpc.ReplicationStub(channel).Replicate(metadata=opts.metadata or None)
            watch = self._watch_tls(tls, material) if tls is not None and material is not None else None
            try:
                await self._serve(consumer, call, watch)
            finally:
                call.cancel()

    async def _serve(
        self, consumer: DurableConsumer, call: ReplicateCall, watch: Coroutine[Any, Any, None] | None
    ) -> None:
        """Sends and acks on ``call`` until it fails; raises why."""
        opts = self.options
        if not self.counters.last_error:
            self.state = LinkState.REPLICATING
        self._session_started = time.monotonic()
        self._session_open = True
        self._rotating = False
        window = asyncio.Semaphore(opts.window)
        tasks = [
            asyncio.create_task(self._send_loop(consumer, call, window)),
            asyncio.create_task(self._ack_loop(consumer, call, window)),
        ]
        if watch is not None:
            tasks.append(asyncio.create_task(watch))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raises the failure that ended the session
            raise LinkError("replication session ended")
        finally:
            self._session_open = False
            for task in tasks:
                task.cancel()
            for task in tasks:
                await _cancelled(task)

    async def _connect(self, channel: grpc.aio.Channel) -> None:
        try:
            await asyncio.wait_for(channel.channel_ready(), self.options.connect_timeout_seconds)
        except TimeoutError:
            if self.options.tls is None:
                raise
            # A refused TLS handshake looks like a peer that never answers; a call says why
            # (e.g. the destination's certificate does not name its region).
            call = replication_pb2_grpc.ReplicationStub(channel).Replicate(
                timeout=self.options.connect_timeout_seconds, metadata=self.options.metadata or None
            )
            try:
                await call.read()
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNAVAILABLE:
                    raise LinkError(
                        f"cannot connect over TLS (region {self.destination}'s gateway must present a certificate"
                        f" of the mesh CA naming {self.destination}, and take this region's): {exc.details()}"
                    ) from None
            finally:
                call.cancel()
            raise

    async def _watch_tls(self, tls: ClientTls, material: TlsMaterial) -> None:
        """Ends the session once the TLS files changed into usable ones and the batches in flight were acked."""
        await tls_changed(tls, material, who=f"link {self.source} -> {self.destination}")
        self._rotating = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.options.ack_timeout_seconds)
        raise TlsRotated

    async def _open_slot(self, window: asyncio.Semaphore) -> None:
        """A place in the window for the next fetched batch, never while the TLS files rotate."""
        await window.acquire()
        while self._rotating:
            # New TLS files: nothing more on this connection; _watch_tls ends it once acked.
            window.release()
            await asyncio.sleep(TLS_POLL_SECONDS)
            await window.acquire()

    async def _send_loop(
        self,
        consumer: DurableConsumer,
        call: ReplicateCall,
        window: asyncio.Semaphore,
    ) -> None:
        """Sends the events as the log stored them, never decoded here; with traces on, each
        event's header lines carry its send span's context."""
        opts = self.options
        source = self.source
        tracing = opts.tracing if opts.tracing is not None and opts.tracing.enabled else None
        per_event = _EVENT_OVERHEAD_BYTES if tracing is None else _TRACED_EVENT_OVERHEAD_BYTES
        batch_id = 0
        wait = opts.linger_seconds
        while True:
            await self._open_slot(window)
            raw = await consumer.fetch_raw(opts.max_batch_events, timeout=wait)
            if not raw.ids:
                window.release()
                self._settled()
                # Idle: wait longer for the next event (it still comes at once, and the rest
                # behind it with it) instead of asking the broker 50 times a second.
                wait = max(opts.linger_seconds, _IDLE_WAIT_SECONDS)
                continue
            wait = opts.linger_seconds
            # The destination tells resends by (stream, sequence): each stream must come in its
            # own order (streams may interleave).
            self._check_order(raw)
            for n, part in enumerate(raw.split(opts.max_request_bytes, per_event=per_event)):
                if n:
                    await window.acquire()  # each request is one batch in flight
                batch_id += 1
                spans = (
                    tracing.start_send(part, self.destination, address=self.address) if tracing is not None else None
                )
                self._inflight.append(_Sent(batch_id, part, spans))
                self._idle.clear()
                self._busy.set()
                await _write(
                    call,
                    replication_pb2.ReplicateRequest(
                        source_region=source,
                        batch_id=batch_id,
                        raw=replication_pb2.RawEvents(
                            ids=part.ids,
                            topics=part.topics,
                            sequences=part.sequences,
                            streams=part.streams,
                            headers=part.headers,
                            data=part.data,
                            stored_unix_nanos=part.stored_ns,
                        ),
                    ),
                )

    def _settled(self) -> None:
        """Nothing to send: an old error is past once the session has lasted and nothing is in flight."""
        if (
            self.counters.last_error
            and not self._inflight
            and time.monotonic() - self._session_started >= _SETTLED_SECONDS
        ):
            self.clear_error()

    def _check_order(self, raw: RawBatch) -> None:
        """Each stream's events come in its own order; a redelivery out of order ends the session."""
        last_seq = self._last_seq
        if not raw.streams:
            last = last_seq.get("", 0)
            for seq in raw.sequences:
                if seq <= last:
                    raise _redelivered("", seq, last)
                last = seq
            last_seq[""] = last
            return
        self._check_pairs(zip(raw.streams, raw.sequences, strict=True))

    def _check_pairs(self, pairs: Iterable[tuple[str, int]]) -> None:
        """``_check_order`` of (stream, sequence) pairs, remembering each stream's last."""
        last_seq = self._last_seq
        for stream, seq in pairs:
            last = last_seq.get(stream, 0)
            if seq <= last:
                raise _redelivered(stream, seq, last)
            last_seq[stream] = seq

    def _refusals(self, sent: _Sent, resp: replication_pb2.ReplicateResponse) -> list[tuple[event_pb2.Event, str]]:
        """The events of a sent batch the destination refused for good, with why."""
        n = len(sent)
        refused = resp.refused
        # A destination that did not read the raw events (one older than them) answers none.
        if resp.accepted + resp.duplicates + len(refused) != n or any(r.index >= n for r in refused):
            raise LinkError(
                f"region {self.destination} answered raw batch {resp.batch_id} with {resp.accepted} accepted, "
                f"{resp.duplicates} duplicates and {len(refused)} refused; it has {n} events"
            )
        return [(_raw_event(sent.raw, r.index), r.message) for r in refused]

    async def _read_from_idle(
        self,
        call: ReplicateCall,
        timeout: float,
    ) -> object:
        """The next answer, awaited with nothing in flight: no limit until a batch is sent, then ``timeout``.

        A read started while idle would otherwise wait for the first batch's answer with no
        limit at all, and a destination that hangs after a quiet spell (a frozen broker, a
        stalled gateway) would never be noticed.
        """
        read = asyncio.ensure_future(call.read())
        busy = asyncio.ensure_future(self._busy.wait())
        try:
            while not (await asyncio.wait({read, busy}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED))[0]:
                # A call open and quiet for a whole ack timeout works: whatever failed before is past.
                if self.counters.last_error:
                    self.clear_error()
            if not read.done():
                done, _ = await asyncio.wait({read}, timeout=timeout)
                if not done:
                    raise LinkError(f"region {self.destination} did not answer a batch within {timeout:g} s")
            return read.result()
        finally:
            busy.cancel()
            if not read.done():
                read.cancel()

    async def _ack_loop(
        self,
        consumer: DurableConsumer,
        call: ReplicateCall,
        window: asyncio.Semaphore,
    ) -> None:
        opts = self.options
        while True:
            if self._inflight:
                resp = await asyncio.wait_for(call.read(), opts.ack_timeout_seconds)
            else:
                resp = await self._read_from_idle(call, opts.ack_timeout_seconds)
            if not isinstance(resp, replication_pb2.ReplicateResponse):  # grpc.aio.EOF
                raise LinkError(f"region {self.destination} ended the replication call")
            if not self._inflight:
                raise LinkError(f"region {self.destination} acked batch {resp.batch_id} that was not sent")
            sent = self._inflight[0]
            if resp.batch_id != sent.batch_id:
                raise LinkError(f"region {self.destination} acked batch {resp.batch_id}; expected {sent.batch_id}")
            refused = self._refusals(sent, resp)
            if refused:
                await self._dead_letter(refused)
            await consumer.ack_raw(sent.raw)
            self._inflight.popleft()
            if sent.spans and opts.tracing is not None:
                opts.tracing.end_send(
                    sent.spans, {r.index: r.message for r in resp.refused}, duplicates=resp.duplicates
                )
            if not self._inflight:
                self._idle.set()
                self._busy.clear()
            self.counters.forwarded += len(sent) - len(refused)
            self.counters.dead_lettered += len(refused)
            if self.counters.last_error:
                self.clear_error()  # the destination stores again: what went wrong before is past
            window.release()

    async def _dead_letter(self, refused: Sequence[tuple[event_pb2.Event, str]]) -> None:
        """Stores the refused events in this region's DLQ topic; retries until they are stored."""
        pending = [dead_letter_event(ev, destination=self.destination, reason=reason) for ev, reason in refused]
        for ev, reason in refused:
            log.warning(
                "link %s -> %s: event %s (%s) refused for good, dead-lettered: %s",
                self.source,
                self.destination,
                ev.id,
                ev.topic,
                reason,
            )
        delay = self.options.backoff_initial_seconds
        while pending:
            results = await self._broker.append(pending)
            retry = []
            for ev, res in zip(pending, results, strict=True):
                if not isinstance(res, BrokerError):
                    continue
                if not res.retriable and "dlqdataomitted" in ev.extensions:
                    # Refused even without its data: nothing left to shed, and dropping it would lose
                    # the event, so it is retried with backoff and says why each time.
                    log.error(
                        "link %s -> %s: dead letter of event %s refused by this region's broker even without"
                        " its data, retrying: %s",
                        self.source,
                        self.destination,
                        ev.extensions.get("dlqid", ev.id),
                        res,
                    )
                elif not res.retriable:
                    # Too large even here with the DLQ attributes: keep the why, not the data.
                    ev.extensions["dlqdataomitted"] = str(len(ev.data))
                    ev.data = b""
                retry.append(ev)
            pending = retry
            if pending:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.options.backoff_max_seconds)

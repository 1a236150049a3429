"""The broker adapter interface shared by the gateway (writes) and the replicator (reads).

Every adapter (NATS JetStream, Kafka; the embedded broker is a NATS one) has the same shape:
``start()``/``stop()`` safe to call twice and ``async with``; batched appends with one result
per event; ephemeral readers from a position; durable consumers whose position survives a
restart and is shared by every gateway replica of the region.

A region's log may be one stream (NATS JetStream: ``stream`` is empty everywhere) or several
(Kafka: one per topic-partition, ``<topic>/<partition>``), each numbering its events on its
own: an event's position is (``stream``, ``sequence``). Whatever spans the whole log (where
replication dedup resumes a scan) is an opaque position string that only the adapter reads.

The interface is split into capabilities, tested with ``isinstance`` rather than flags:
``Log`` (appends, reads, durable consumers, positions) and ``Checkpoints``, which every
adapter has (``Broker`` is both); ``SequencedLog`` (one stream numbered from 1: NATS);
``Leases`` (NATS: one replica runs a link); ``WorkSharing`` (Kafka: consumer groups split a
link's work between the replicas, which then take no leases).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncGenerator, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from meshgate._lifecycle import StartStop
from meshgate.brokers._codec import decode_event, header_lines, parse_header_lines
from meshgate.v1 import event_pb2

__all__ = [
    "AppendResult",
    "AppendStats",
    "Broker",
    "BrokerError",
    "BrokerState",
    "BrokerUnavailableError",
    "Checkpoints",
    "Delivery",
    "DurableConsumer",
    "EventRejectedError",
    "EventTooLargeError",
    "Leases",
    "Log",
    "PartitionedLog",
    "RawBatch",
    "SequencedLog",
    "StartAt",
    "StorageFullError",
    "WorkSharing",
    "check_raw_columns",
    "decode_raw",
    "sequence_position",
]


def check_raw_columns(  # noqa: PLR0917  # the columns of a raw batch
    ids: Sequence[str],
    topics: Sequence[str],
    headers: Sequence[bytes],
    data: Sequence[bytes],
    origin_sequences: Sequence[int],
    origin_streams: Sequence[str] = (),
) -> None:
    """Raises ValueError unless every column of a raw batch has one entry per id (origin
    streams: one per id, or none), naming the columns that do not."""
    n = len(ids)
    wrong = [
        f"{name} {len(column)}"
        for name, column in (
            ("topics", topics),
            ("headers", headers),
            ("data", data),
            ("origin_sequences", origin_sequences),
        )
        if len(column) != n
    ]
    if origin_streams and len(origin_streams) != n:
        wrong.append(f"origin_streams {len(origin_streams)} (or none)")
    if wrong:
        raise ValueError(f"a raw batch of {n} ids needs one entry per id in each column; got " + ", ".join(wrong))


def decode_raw(  # noqa: PLR0917  # the columns of a raw batch
    ids: Sequence[str],
    topics: Sequence[str],
    headers: Sequence[bytes],
    data: Sequence[bytes],
    origin_sequences: Sequence[int],
    origin_streams: Sequence[str] = (),
) -> list[event_pb2.Event]:
    """The events of a raw batch (``Log.append_raw``'s columns), decoded."""
    check_raw_columns(ids, topics, headers, data, origin_sequences, origin_streams)
    events = []
    for i, (eid, topic, lines, payload, seq) in enumerate(
        zip(ids, topics, headers, data, origin_sequences, strict=True)
    ):
        ev = decode_event(parse_header_lines(lines), payload, topic=topic)
        ev.id = eid
        ev.origin_sequence = seq
        ev.origin_stream = origin_streams[i] if origin_streams else ""
        events.append(ev)
    return events


class BrokerState(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"
    # Gave up for good (the client closed by itself, an embedded server that cannot be
    # restarted): only a restart of the process brings it back, so liveness fails.
    FAILED = "failed"


class BrokerError(Exception):
    """A broker failure. ``retriable`` says whether the same request may succeed later."""

    retriable: bool = True

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class BrokerUnavailableError(BrokerError):
    """The broker cannot be reached or did not answer in time; retry."""

    retriable = True


class StorageFullError(BrokerUnavailableError):
    """The broker is up but has no room to store the event (disk, storage limit or resources full).

    Retriable: the same write succeeds once room is made (events expire or are purged, the
    limit is raised, the disk is freed). The gateway answers RESOURCE_EXHAUSTED with the reason
    and reports itself not ready until the broker stores again (``Broker.storage_problem``).
    """

    retriable = True


class EventRejectedError(BrokerError):
    """The broker refused this event for good (too large, invalid there)."""

    retriable = False


class EventTooLargeError(EventRejectedError):
    """The event is larger than the broker takes (by the adapter's own check or the broker's answer).

    Final: only a smaller event, or a broker configured for larger ones, is stored.
    """


# Not frozen, though nothing changes one once made: one is made per stored event, and a frozen
# dataclass's __init__ (object.__setattr__ per field) took 260 ns of it against 80.
@dataclass(slots=True)
class AppendResult:
    # Position of the event in the region's log (for a duplicate: of the stored original):
    # ``sequence`` within the log's ``stream`` ("" for a broker with one stream).
    sequence: int
    duplicate: bool
    stream: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StartAt:
    """Where a reader starts; exactly one of the fields applies (``latest`` when none does)."""

    earliest: bool = False
    time: datetime | None = None
    sequence: int | None = None


@dataclass(slots=True, kw_only=True)
class AppendStats:
    """What an adapter's appends came to, counted per event (each adapter adds its own counters).

    Kept for tests, benchmarks and debugging; the gateway's metrics count at admission instead.
    """

    published: int = 0
    acked: int = 0
    duplicates: int = 0
    failed: int = 0
    # Acks that came back after their event had already timed out or been failed.
    late_acks: int = 0


@dataclass(slots=True)
class Delivery:
    """An event read by a durable consumer; ack it through the consumer that read it.

    ``event.stream`` and ``event.sequence`` say where it sits in the log.
    """

    event: event_pb2.Event
    # Opaque handle the adapter needs to ack (a JetStream message, a Kafka offset).
    token: object
    # Events stored after this one on the consumer's filter (the consumer's lag).
    pending: int = 0
    # When the broker stored it, in Unix nanoseconds (0: unknown).
    stored_ns: int = 0


@dataclass(slots=True, kw_only=True)
class RawBatch:
    """Events as their broker stored them, column by column: entry i of each list is event i.

    ``headers`` holds an event's headers as raw header lines (``name: value\\r\\n``, values
    escaped: ``_codec.header_lines``) without the position headers a destination sets, and
    ``data`` its payload byte for byte. Replication forwards these as they are: no ``Event``
    is built on either side, and the destination's broker writes the same bytes.
    """

    ids: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    # Each event's position in this log: ``sequences[i]`` within ``streams[i]`` (``streams``
    # stays empty for a log of one stream).
    sequences: list[int] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    headers: list[bytes] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    # When the broker stored each event, in Unix nanoseconds (JetStream's stored time, Kafka's
    # record timestamp); empty when the adapter does not know.
    stored_ns: list[int] = field(default_factory=list)
    # What the consumer needs to ack them (``DurableConsumer.ack_raw``).
    tokens: list[object] = field(default_factory=list)
    # Events stored after the last one on the consumer's filter.
    pending: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def part(self, start: int, stop: int) -> RawBatch:
        """Events ``start`` to ``stop`` (exclusive) as a batch of their own."""
        return RawBatch(
            ids=self.ids[start:stop],
            topics=self.topics[start:stop],
            sequences=self.sequences[start:stop],
            streams=self.streams[start:stop],
            headers=self.headers[start:stop],
            data=self.data[start:stop],
            stored_ns=self.stored_ns[start:stop],
            tokens=self.tokens[start:stop],
            pending=self.pending,
        )

    def split(self, max_bytes: int, *, overhead: int = 1024, per_event: int = 16) -> list[RawBatch]:
        """Consecutive parts whose encoded size stays within ``max_bytes`` (one event at least)."""
        total = sum(map(len, self.headers)) + sum(map(len, self.data)) + sum(map(len, self.ids))
        total += sum(map(len, self.topics)) + per_event * len(self.ids) + overhead
        if total <= max_bytes:  # the common case, counted without a loop in Python
            return [self]
        sizes = [
            len(h) + len(d) + len(i) + len(t) + per_event
            for h, d, i, t in zip(self.headers, self.data, self.ids, self.topics, strict=True)
        ]
        parts = []
        start, size = 0, overhead
        for i, n in enumerate(sizes):
            if i > start and size + n > max_bytes:
                parts.append(self.part(start, i))
                start, size = i, overhead
            size += n
        parts.append(self.part(start, len(sizes)))
        return parts


class DurableConsumer(abc.ABC):
    @abc.abstractmethod
    async def fetch(self, max_events: int, *, timeout: float) -> list[Delivery]:
        """Up to ``max_events`` deliveries; an empty list when none came within ``timeout``."""

    @abc.abstractmethod
    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Marks the deliveries done; they are not delivered again to any replica.

        The broker may be told a little later (NATS: at most ``ACK_INTERVAL_SECONDS``, the next
        ack covering this one); ``pending``, ``reset`` and ``close`` count it first. Only a
        crash meanwhile delivers them again, to be answered as duplicates where they go.
        """

    async def fetch_raw(self, max_events: int, *, timeout: float) -> RawBatch:
        """``fetch`` without decoding: the events as the broker stored them.

        The default encodes what ``fetch`` decoded; an adapter overrides it to skip both.
        """
        batch = RawBatch()
        for d in await self.fetch(max_events, timeout=timeout):
            ev = d.event
            batch.ids.append(ev.id)
            batch.topics.append(ev.topic)
            batch.sequences.append(ev.sequence)
            batch.streams.append(ev.stream)
            batch.headers.append(header_lines(ev))
            batch.data.append(ev.data)
            batch.stored_ns.append(d.stored_ns)
            batch.tokens.append(d)
            batch.pending = d.pending
        if not any(batch.streams):
            batch.streams.clear()
        if not all(batch.stored_ns):
            batch.stored_ns.clear()
        return batch

    async def ack_raw(self, batch: RawBatch) -> None:
        """Marks the events of a ``fetch_raw`` batch done (as ``ack`` does)."""
        await self.ack([t for t in batch.tokens if isinstance(t, Delivery)])

    @abc.abstractmethod
    async def pending(self) -> int:
        """Events stored on the consumer's filter and not yet acked."""

    @abc.abstractmethod
    async def reset(self) -> None:
        """Forgets every delivery not acked: the next fetch starts at the oldest unacked event.

        After it, events come strictly in log order again; no delivery handed out before the
        reset is delivered late behind newer ones (a plain redelivery could be).
        """

    @abc.abstractmethod
    async def oldest_pending_time(self) -> float | None:
        """When the oldest event not yet acked through this consumer was stored (Unix seconds).

        None when nothing is pending. Lag in seconds is read from it, so it grows while a
        consumer is stuck whether or not its events were ever fetched.
        """

    @abc.abstractmethod
    async def close(self) -> None: ...


class Log(StartStop):
    """One region's log: writes, reads, durable consumers and positions (every adapter is one)."""

    state: BrokerState
    # Why ``state`` is not CONNECTED, as the client last heard it ("" while connected).
    state_reason: str = ""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connects and creates the log (stream, topics) if missing. Safe to call twice."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Waits for in-flight appends, then closes. Safe to call twice."""

    @abc.abstractmethod
    async def append(self, events: Sequence[event_pb2.Event]) -> list[AppendResult | BrokerError]:
        """Writes a batch; one result per event, in order, each known only once the broker acked.

        Events must carry id, topic, origin and route. A duplicate id within the idempotency
        window yields ``AppendResult(duplicate=True)`` with the original's sequence. Concurrent
        calls are written in the order they were made: a later call's events never land before
        an earlier call's (the replication ingress pipelines batches on this).
        """

    async def append_raw(
        self,
        *,
        ids: Sequence[str],
        topics: Sequence[str],
        headers: Sequence[bytes],
        data: Sequence[bytes],
        origin_sequences: Sequence[int],
        origin_streams: Sequence[str] = (),
        origin: str = "",
    ) -> list[AppendResult | BrokerError]:
        """``append`` of events given as raw header lines and payloads (see ``RawBatch``).

        Each is written with ``origin_sequences[i]`` as its origin sequence, in origin stream
        ``origin_streams[i]`` (none: all in the origin's one stream). The lines must have
        passed ``_codec.check_header_lines``. ``origin``: the caller checked that every
        event's lines carry exactly this origin (an adapter may then skip reading it from
        each); "" when it did not. The default decodes them and calls ``append``; an adapter
        overrides it to write the bytes as they are.
        """
        return await self.append(decode_raw(ids, topics, headers, data, origin_sequences, origin_streams))

    @abc.abstractmethod
    def read(
        self, pattern: str, *, start: StartAt, max_batch: int, max_bytes: int | None = None
    ) -> AsyncGenerator[list[event_pb2.Event]]:
        """Batches of the events of a topic pattern from ``start`` on, until cancelled.

        Events carry their ``stream`` and ``sequence``; ``StartAt.sequence`` applies to a
        broker with one stream. A batch holds at most ``max_batch`` events and about
        ``max_bytes`` bytes (the adapter's own bound when None), or one larger event; what the
        adapter reads ahead of the caller is bounded the same way.
        """

    @abc.abstractmethod
    async def durable_consumer(
        self, name: str, *, pattern: str = ">", origin: str | None = None, routed_to: str | None = None
    ) -> DurableConsumer:
        """A consumer whose position is kept in the broker under ``name``, created if missing.

        ``origin`` and ``routed_to`` keep only events admitted in that region and whose route
        names that region: the others are acked by the consumer itself, before decoding, in
        log order with the rest (a replication link reads only what it forwards).
        """

    def storage_problem(self) -> str | None:
        """Why the broker cannot store events now (its last storage refusal), else None. Any thread.

        Readiness reads it: a gateway whose broker refuses writes for want of room should get
        no traffic. Set by a storage refusal, cleared by the next stored write or a probe the
        adapter runs meanwhile; never costs I/O on the write path. Default: never a problem.
        """
        return None

    def sibling(self) -> Broker | None:
        """A new, unstarted broker on the same log, for another event loop; None if unsupported.

        Clients of a broker are bound to the event loop they run in; the replicator runs its
        links in a thread of their own (so ingest cannot starve them) with a sibling.
        """
        return None

    @abc.abstractmethod
    def earliest_position(self, positions: Sequence[str]) -> str:
        """A position at or before each of ``positions`` (from ``log_position`` of this kind of broker).

        Replication dedup keeps one position per origin stream and scans the log once, from
        this, with ``origin_sequences_after``: everything stored after any of ``positions``
        must be after the answer. "" (the beginning) when ``positions`` is empty or holds "".
        Raises ValueError for a position this kind of broker cannot read. A ``SequencedLog``
        answers the lowest sequence. A broker with several streams (Kafka: one offset per
        partition) takes the lowest offset of each partition, a partition missing from a
        position counting as offset 0 (its beginning: the position was read before that
        partition had events).
        """

    @abc.abstractmethod
    async def log_position(self) -> str:
        """The current end of the whole log as an opaque position ("" is the beginning).

        Only ``origin_sequences_after`` of the same kind of broker reads it. A
        ``SequencedLog``'s is its last sequence as decimal text.
        """

    @abc.abstractmethod
    async def stored_time(self, sequence: int, *, stream: str = "") -> datetime | None:
        """When the broker stored the event at ``sequence`` of ``stream`` (None if it is gone)."""

    @abc.abstractmethod
    async def find_event(self, event_id: str, *, since: datetime) -> event_pb2.Event | None:
        """The event with ``event_id`` stored at or after ``since``, or None.

        A scan of the log from ``since``: an operator's lookup (``meshgate trace``), not a
        hot path; its cost is the number of events stored since then.
        """

    @abc.abstractmethod
    async def origin_sequences_after(self, origin: str, position: str) -> tuple[dict[str, set[int]], str]:
        """What of ``origin``'s events is stored after ``position`` (from ``log_position``).

        Returns origin stream -> the origin sequences found in it (``event.origin_stream`` ->
        ``event.origin_sequence``, events without an origin sequence left out), and the
        position of the end of what was scanned: at least every event stored before the call
        is looked at. Replication dedup uses it to rebuild, from the log itself, what a
        checkpoint had not recorded yet.
        """


class Checkpoints(abc.ABC):
    """Small values a gateway keeps in its region's broker (not in its memory)."""

    @abc.abstractmethod
    async def get_checkpoint(self, name: str) -> bytes | None:
        """A small value the gateway keeps in the broker (not in its memory), or None."""

    @abc.abstractmethod
    async def put_checkpoint(self, name: str, value: bytes) -> None:
        """Stores ``value`` under ``name``, replacing the previous one."""

    @abc.abstractmethod
    async def checkpoints(self, prefix: str) -> dict[str, bytes]:
        """Every checkpoint whose name starts with ``prefix``: name -> its latest value ({} if none).

        Names are those given to ``put_checkpoint``; replication dedup keeps one per origin
        stream (``replication.<origin>.<stream>``, characters outside ``[-/_a-zA-Z0-9]``
        escaped, so each name is valid for NATS KV) and lists an origin's with the prefix
        ``replication.<origin>.``. A value written before the call starts is in the answer;
        one written while it runs may or may not be. Cost: one read of the names under the
        prefix (an origin has one per stream it ever sent).
        """


class Broker(Log, Checkpoints):
    """What every adapter is: a region's log and its checkpoints.

    Further capabilities an adapter may have, tested with ``isinstance``: ``SequencedLog``
    (one stream numbered from 1: NATS), ``Leases`` (NATS), ``Board`` (NATS), ``WorkSharing`` (Kafka).
    """

    @property
    def addresses(self) -> tuple[str, ...]:
        """Where the broker is, for operators (``meshgate status``, the ``up`` banner); () if unknown."""
        return ()

    @property
    def monitor_url(self) -> str:
        """The HTTP monitoring endpoint of a broker Meshgate runs itself ("" for any other)."""
        return ""


class SequencedLog(Log):
    """A log of one stream whose events are numbered 1, 2, ... (NATS JetStream).

    Its positions are sequences, so ``log_position``, ``earliest_position``, ``find_event``
    and ``origin_sequences_after`` are given here, on ``last_sequence``.
    """

    @abc.abstractmethod
    async def last_sequence(self) -> int:
        """The sequence of the newest event of a one-stream log (0 when empty).

        Only meaningful for a broker with one stream; Meshgate's own callers outside the
        adapters use ``log_position``. The default ``log_position``, ``origin_sequences_after``
        and ``find_event`` build on it, so a broker with several streams overrides those.
        """

    def earliest_position(self, positions: Sequence[str]) -> str:
        """The lowest sequence of ``positions`` ("" when empty or holding "")."""
        if not positions or "" in positions:
            return ""
        return str(min(sequence_position(p) for p in positions))

    async def log_position(self) -> str:
        """The last sequence as decimal text."""
        return str(await self.last_sequence())

    async def find_event(self, event_id: str, *, since: datetime) -> event_pb2.Event | None:
        """A read of the one stream from ``since`` (see ``Log.find_event``)."""
        end = await self.last_sequence()
        last_time = await self.stored_time(end) if end else None
        if last_time is None or last_time < since:
            return None  # nothing stored since then: a read from there would wait for new events
        async for batch in self.read(">", start=StartAt(time=since), max_batch=1000):
            for event in batch:
                if event.id == event_id:
                    return event
            if batch and batch[-1].sequence >= end:
                return None
        return None

    async def origin_sequences_after(self, origin: str, position: str) -> tuple[dict[str, set[int]], str]:
        """A read of the one stream after sequence ``position`` (see ``Log.origin_sequences_after``)."""
        start = sequence_position(position)
        end = await self.last_sequence()
        found: dict[str, set[int]] = {}
        if end <= start:
            return found, str(start)
        async for batch in self.read(">", start=StartAt(sequence=start + 1), max_batch=1000):
            for event in batch:
                if event.origin == origin and event.origin_sequence:
                    found.setdefault(event.origin_stream, set()).add(event.origin_sequence)
            if batch and batch[-1].sequence >= end:
                break
        return found, str(end)


class Leases(abc.ABC):
    """Leases kept in the broker: one owner per name at a time (NATS regions).

    The replicator of a broker without ``WorkSharing`` runs each link in the one replica
    that holds the link's lease.
    """

    @abc.abstractmethod
    async def hold_lease(self, name: str, owner: str, *, ttl: float) -> bool:
        """Takes lease ``name`` for ``owner``, or renews it; True while ``owner`` holds it.

        A lease its owner does not renew within ``ttl`` seconds lapses and another owner can
        take it: the gateway replicas of a region use one per replication link, so that one
        replica runs each link and another takes over when it dies.
        """

    @abc.abstractmethod
    async def release_lease(self, name: str, owner: str) -> None:
        """Gives lease ``name`` up at once if ``owner`` holds it (a clean shutdown)."""

    @abc.abstractmethod
    async def lease_holders(self, prefix: str, *, ttl: float) -> dict[str, str]:
        """The live leases whose names start with ``prefix``: name -> owner.

        A replica's membership is a lease it renews (``member.<owner>``): the replicas alive
        are the holders of those, and each takes its fair share of the other leases.
        """


class PartitionedLog(abc.ABC):
    """A log split into partitions by event key (NATS).

    Each partition of a destination's replication has its own lease, so the work spreads over
    the replicas; a process reads the partitions it holds through one durable consumer, and a
    key's events share a partition, which one process sends at a time in log order.
    """

    @property
    @abc.abstractmethod
    def partitions(self) -> int:
        """The number of partitions (fixed for the life of the log)."""

    @abc.abstractmethod
    async def durable_consumer(
        self,
        name: str,
        *,
        pattern: str = ">",
        origin: str | None = None,
        routed_to: str | None = None,
        partitions: Collection[int] | None = None,
    ) -> DurableConsumer:
        """``Log.durable_consumer`` of only ``origin``'s events of ``partitions`` (given with an origin).

        Its deliveries carry their partition as their stream (``p<n>``), so the destination
        keeps its dedup state per partition. Each partition's position is its own: a consumer
        opened over another set of partitions (a rebalance) starts each partition where the
        last reader of it stopped.
        """


class Board(abc.ABC):
    """Short notes kept in the broker that lapse unless their writer rewrites them in time (NATS).

    The processes of a region that run replication links post what their links do here, so that
    a gateway running none of them can still show every link (``replicator._board``). A broker
    without it keeps the notes as checkpoints, which never lapse: the reader then judges their age.
    """

    @abc.abstractmethod
    async def post_note(self, name: str, value: bytes, *, ttl: float) -> None:
        """Writes note ``name``; it lapses ``ttl`` seconds after its last write."""

    @abc.abstractmethod
    async def notes(self, prefix: str, *, ttl: float) -> dict[str, bytes]:
        """Every note not lapsed whose name starts with ``prefix`` (a prefix ending in '.')."""

    @abc.abstractmethod
    async def remove_note(self, name: str) -> None:
        """Removes note ``name`` at once (a clean shutdown); nothing if it is not there."""


class WorkSharing(abc.ABC):  # noqa: B024  # a capability without methods: isinstance says it
    """The broker itself splits a durable consumer's work across the replicas that open it (Kafka).

    Replicas opening a durable consumer under one name (Kafka consumer groups) each get some
    of the log's streams: the replicator then runs every link in every replica instead of one
    replica per link under a lease. Such a consumer should fail one fetch (a retriable
    BrokerError) when its share changes, so that the link resends from its acked positions on
    a new Replicate call, whose dedup state the destination recovers afresh.
    """


def sequence_position(position: str) -> int:
    """A one-stream broker's position: the decimal sequence, "" for the beginning."""
    if not position:
        return 0
    try:
        value = int(position)
    except ValueError:
        raise ValueError(f"log position {position!r} is not a sequence of a one-stream log") from None
    if value < 0:
        raise ValueError(f"log position {position!r} is negative")
    return value

"""The NATS adapter's durable consumer: one reader, position kept by JetStream, fenced by generations.

``NatsDurableConsumer`` talks to its broker through a ``ConsumerHost`` the broker hands it: the
JetStream consumer API of the stream (``ConsumerApi``), the connection to wait for, where pull
subscriptions are tracked and closed, and the ack without a reply. Nothing else of the broker.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import json
import math
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, ReplayPolicy

from meshgate.brokers._base import (
    BrokerError,
    BrokerUnavailableError,
    Delivery,
    DurableConsumer,
    RawBatch,
)
from meshgate.brokers._codec import HEADER_ORIGIN, decode_event, escape_header_value
from meshgate.brokers._headers import RouteMatcher, each_contains
from meshgate.brokers.nats._errors import NATS_FAILURES, NotConnectedError, broker_error
from meshgate.brokers.nats._names import GENERATION_SEP, check_durable_name, generation_name, generation_of
from meshgate.brokers.nats._pull import (
    BYTES,
    CONSUMER_LOST,
    TIMEOUT,
    PullSubscription,
    RawMsg,
)
from meshgate.brokers.nats._subjects import partition_stream
from meshgate.brokers.nats._wire import (
    parse_ack_subject,
    parse_header_block,
    split_header_block,
    split_header_blocks,
)

if TYPE_CHECKING:
    from nats.js.manager import JetStreamManager

__all__ = ["ConsumerApi", "ConsumerHost", "NatsDurableConsumer", "PartitionSet", "durable_template"]

DURABLE_MAX_ACK_PENDING = 50_000
# JetStream's answer to a create-only request for a name that exists.
_CONSUMER_EXISTS = 10148
# The tokens of a delivery's ack subject without a domain:
# $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
_ACK_TOKENS = 9
# A partition reader's consumer records in its metadata the partitions it reads ("0,3,5") and every
# partition's position known when it was created ("0:1200,3:998"): see _open_set_generation.
METADATA_READS = "meshgate_partitions"
METADATA_POSITIONS = "meshgate_positions"
# Subjects whose topic and origin stream a consumer keeps at most (past it, it starts over).
_SUBJECT_CACHE_MAX = 4096
# Opens racing for generation numbers: each "exists" moves to the next number.
_GENERATION_TRIES = 64
# How long a link's standing pull request lasts on the server (see _gather): a request that
# vanished without a word (nothing else ends one) is given up after this, plus a grace.
STANDING_EXPIRES_SECONDS = 5.0
# A consumer sends an ack at most this often. A link at moderate load finishes a batch of a few
# dozen events every few ms in each partition, and each confirmed ack cost the gateway ~100 us
# of CPU on the Intel machine (docs/PERFORMANCE.md, "Acks at most every 50 ms"). An ack held
# back meanwhile covers every batch finished before it is sent (AckPolicy.ALL); it goes when the
# interval is up, and at once before pending(), oldest_pending_time(), reset() and close() read
# or move the position. What a kill -9 loses of it is at most this long of batches, sent again
# by the next reader and answered as duplicates by the destination.
ACK_INTERVAL_SECONDS = 0.05


def durable_template(name: str, *, pattern: str, filter_subject: str, ack_wait: float) -> ConsumerConfig:
    """The config every generation of durable consumer ``name`` starts from (name and start left out)."""
    check_durable_name(name)
    return ConsumerConfig(
        description=f"Meshgate durable consumer of {pattern}",
        deliver_policy=DeliverPolicy.ALL,
        # One ack per batch: it acks every delivery of the generation up to it. Safe only
        # because a generation has one reader (the fence) that acks a delivery only once
        # everything before it is done.
        ack_policy=AckPolicy.ALL,
        ack_wait=ack_wait,
        max_deliver=-1,
        filter_subject=filter_subject,
        replay_policy=ReplayPolicy.INSTANT,
        max_ack_pending=DURABLE_MAX_ACK_PENDING,
    )


class ConsumerApi:
    """The JetStream consumer calls of one stream, on the broker's current connection."""

    __slots__ = ("_connection", "_manager", "stream", "timeout")

    def __init__(
        self,
        *,
        connection: Callable[[], Client],
        manager: Callable[[], JetStreamManager],
        stream: str,
        timeout: float,
    ) -> None:
        # Both raise "not started" while the broker has no connection.
        self._connection = connection
        self._manager = manager
        self.stream = stream
        self.timeout = timeout

    def connection(self) -> Client:
        return self._connection()

    def manager(self) -> JetStreamManager:
        return self._manager()

    async def request(self, subject: str, request: dict[str, object] | None = None) -> dict[str, Any]:
        """A JetStream API request nats-py has no call for (or not with these fields)."""
        self._manager()
        body = json.dumps(request).encode() if request is not None else b""
        try:
            msg = await self._connection().request(f"$JS.API.{subject}", body, timeout=self.timeout)
        except nats.errors.NoRespondersError:
            raise nats.js.errors.ServiceUnavailableError from None  # JetStream is not enabled or not up
        try:
            resp = json.loads(msg.data)
        except ValueError:
            resp = None
        if not isinstance(resp, dict):
            raise nats.js.errors.APIError(code=500, description=f"unreadable reply to {subject}: {msg.data[:200]!r}")
        err = resp.get("error")
        if err is not None:
            if not isinstance(err, dict) or not isinstance(err.get("code"), int):
                raise nats.js.errors.APIError(code=500, description=f"error reply to {subject}: {err!r}")
            # nats-py's error classes, as its own calls raise them (NotFoundError for 404, ...).
            nats.js.errors.APIError.from_error(err)
        return resp

    async def names(self) -> list[str]:
        """The names of the stream's consumers."""
        stream = self.stream
        found: list[str] = []
        offset = 0
        while True:
            resp = await self.request(f"CONSUMER.NAMES.{stream}", {"offset": offset})
            names = resp.get("consumers") or []
            found.extend(str(name) for name in names)
            offset += len(names)
            if not names or offset >= int(resp.get("total") or 0):
                return found

    async def generations(self, base: str) -> dict[str, int]:
        """The stream's consumers that are generations of ``base``: name -> generation."""
        found: dict[str, int] = {}
        for name in await self.names():
            generation = generation_of(name, base)
            if generation is not None:
                found[name] = generation
        return found

    async def create(self, config: ConsumerConfig) -> None:
        """Creates a consumer, create-only: an APIError with err_code 10148 if the name is taken.

        JetStream's plain create is "create or update"; with action "create" it refuses a name
        that exists, unless the existing consumer's config is identical (then it answers as if
        it had created it): callers make each config unique.
        """
        stream = self.stream
        subject = f"CONSUMER.CREATE.{stream}.{config.name}"
        if config.filter_subject and config.filter_subject != ">" and not config.filter_subjects:
            subject += f".{config.filter_subject}"
        await self.request(subject, {"stream_name": stream, "config": config.as_dict(), "action": "create"})

    async def delete(self, name: str) -> None:
        await self.request(f"CONSUMER.DELETE.{self.stream}.{name}")

    async def info(self, name: str) -> ConsumerInfo:
        info: ConsumerInfo = await self._manager().consumer_info(self.stream, name)
        return info


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionSet:
    """The partitions of one origin a link's consumer reads, and how its subjects name them."""

    # Sorted, at least one.
    read: tuple[int, ...]
    # The partitions of the log.
    count: int
    # ``<prefix><origin>.``: every subject read is ``<head><partition>.<topic levels>``.
    head: str

    @property
    def whole(self) -> bool:
        return len(self.read) == self.count

    def filters(self) -> list[str]:
        """The consumer's subject filters: one per partition, or the origin's when it reads them all."""
        if self.whole:
            return [f"{self.head}*.>"]
        return [f"{self.head}{p}.>" for p in self.read]

    def partition(self, subject: bytes) -> int:
        """The partition a subject read by this set is stored under."""
        start = len(self.head)
        return int(subject[start : subject.index(b".", start)])


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerHost:
    """What a durable consumer uses of its broker, handed over explicitly by the broker."""

    api: ConsumerApi
    # The ack timeout: how long a pull status or an ack reply is waited for.
    ack_timeout: float
    # Subject -> topic.
    topic_of: Callable[[str], str]
    # The connection to use, waiting through a reconnect up to the given seconds (None: ack_timeout).
    ready: Callable[[float | None], Awaitable[Client]]
    # The bytes one pull may ask for (its max_bytes): nats-server drops a connection whose
    # unread bytes pass its max_pending as a slow consumer, with every request on it.
    pull_bytes: Callable[[], int]
    # A pull subscription opened: the broker closes it on stop.
    track: Callable[[PullSubscription], None]
    # Closes a tracked pull subscription; the consumer stays (it holds the position).
    close_puller: Callable[[PullSubscription], Awaitable[None]]
    # An ack that wants no reply (the next ack covers it if it is lost).
    ack_without_reply: Callable[[Client, bytes], Awaitable[None]]
    # The consumer closed: the broker no longer closes it on stop.
    closed: Callable[[NatsDurableConsumer], None]


class NatsDurableConsumer(DurableConsumer):
    """A durable pull consumer of one reader: position kept by JetStream, one ack per batch.

    **Generations (the fence).** Every open and every ``reset`` creates a new JetStream
    consumer ``<name>@<n>``, one number above the highest generation of ``name`` on the
    stream, starting right after the highest ack floor among them, and then deletes the older
    ones. Taking the highest floor is safe because a floor only moves once everything up to
    it is done: the reader of a generation acks a delivery only after the destination acked
    it and everything delivered before it. The create is create-only, so two replicas racing
    on a lease hand-over never share a generation (the loser of a number takes the next).

    **One ack per batch.** Acks are ``AckPolicy.ALL``: acking a delivery acks every earlier
    delivery of the generation, forwarded or skipped by the origin/route filter. That is safe
    only with one reader per generation, which the fence gives: an instance that lost its
    lease acks into a deleted consumer (nothing happens; its ack request fails with no
    responders, which ends its session), and what it forwarded after the floor the next
    generation started at comes again and is answered as duplicates by the destination.

    **At most one ack per ``ACK_INTERVAL_SECONDS``.** An ack within the interval of the last is
    held back and sent when it is up (or first thing in ``pending``, ``oldest_pending_time``,
    ``reset`` and ``close``), covering every batch done meanwhile. A held-back ack that fails
    (a fenced generation) is raised by the next ``ack``, which ends the reader's session as
    before, a batch later.
    """

    def __init__(
        self,
        host: ConsumerHost,
        base: str,
        template: ConsumerConfig,
        *,
        origin: str | None = None,
        routed_to: str | None = None,
        partitions: PartitionSet | None = None,
    ) -> None:
        self._host = host
        # The partitions read (None: the whole log, as one stream ""). A delivery's origin
        # stream is its partition's (``p3``): the destination's dedup keeps its state per
        # (origin, stream), each sent in log order.
        self._set = partitions
        # Subject -> its partition's stream name.
        self._streams: dict[bytes, str] = {}
        # Partition -> the stream sequence up to which its events are known done (by a reader
        # of this link, in any generation): where each partition starts (see _open_set_generation).
        self._positions: dict[int, int] = {}
        # Stream name -> position, for the partitions read whose position lies above where
        # this generation starts: their deliveries up to it are skipped (done before). Emptied
        # once the deliveries pass the highest (_skip_until).
        self._skip: dict[str, int] = {}
        self._skip_until = 0
        self._base = base
        self._template = template
        self._config = template
        self._origin = origin
        self._puller: PullSubscription | None = None
        # The current generation's consumer name (set by _open_generation).
        self.name = base
        # The exact header line of the wanted origin, matched in the raw header block.
        self._origin_line = (
            f"\r\n{HEADER_ORIGIN}: {escape_header_value(origin)}\r\n".encode() if origin is not None else None
        )
        # Whether a route header names `routed_to` (routes repeat: a few per mesh).
        self._routes = RouteMatcher(routed_to) if routed_to is not None else None
        # Subject -> topic of the deliveries.
        self._topics: dict[bytes, str] = {}
        # Ack subject -> delivery sequence of the deliveries handed out and not acked yet, in
        # delivery order (insertion order): the first entry is the oldest still outstanding.
        self._unacked: dict[bytes, int] = {}
        # Deliveries an ack may be sent on once everything handed out before them is acked:
        # the last delivery of a fetch (so skipped ones after the last forwarded one are
        # covered) and acked ones that wait for earlier ones. Sorted by delivery sequence.
        self._marks: list[tuple[int, bytes]] = []
        # The highest ack floor seen of this consumer's generations: where a new generation
        # starts when the current one is gone (deleted under us) by the time it is reopened.
        self._floor = 0
        self._closed = False
        # The max_bytes of the last pull, and what the next must ask for at least: twice it, once a
        # pull ended by bytes before its first event (an event larger than the pulls' share).
        self._pull_bytes = 0
        self._pull_floor = 0
        # Acks held back (ACK_INTERVAL_SECONDS): when the last one went (loop time), the timer
        # of the next, the task sending it, and what a held-back ack's failure was (raised by
        # the next ack: a fenced generation ends the reader's session then).
        self._acked_at = -math.inf
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_task: asyncio.Task[None] | None = None
        self._ack_error: BrokerError | None = None

    async def open(self) -> None:
        """Opens the first generation (the broker's ``durable_consumer`` does, once)."""
        await self._open_generation()

    # -- generations ------------------------------------------------------------------------

    async def _open_generation(self) -> None:
        """Creates the next generation after the highest ack floor and deletes the older ones."""
        if self._set is not None:
            await self._open_set_generation(self._set)
            return
        host = self._host
        generations = await host.api.generations(self._base)
        floor = self._floor
        for name in generations:
            try:
                info = await host.api.info(name)
            except nats.js.errors.NotFoundError:
                continue  # deleted meanwhile, by whoever opened a newer generation
            # Everything at or below any generation's floor was done by its (one) reader.
            floor = max(floor, _floor_of(info))
        number, config = await self._create(max(generations.values(), default=0) + 1, after=floor)
        await self._start_reading(config)
        self._floor = floor
        # Listed again: a racing opener's generation created after the first listing is older
        # than this one and must go too. Its late acks then land nowhere, and its reader
        # learns it was fenced. Safety does not hang on the deletes (an old generation's acks
        # only ever ack that generation, and its floor stays true), so a failed one only
        # leaves an old generation for the next open to delete.
        with contextlib.suppress(*NATS_FAILURES):
            for old, n in (await host.api.generations(self._base)).items():
                if n < number:
                    with contextlib.suppress(nats.js.errors.NotFoundError):
                        await host.api.delete(old)

    async def _open_set_generation(self, scope: PartitionSet) -> None:
        """``_open_generation`` of a partition reader: each partition starts at its own position.

        A partition's position is the highest any consumer of this link says of it: the ack
        floor of one that read it (its reader acked nothing before everything up to it was
        done), or the positions another recorded when it was created (``METADATA_POSITIONS``:
        every partition's, so one deleted still tells where its partitions stood). The
        generation starts after the lowest position of the partitions it reads and skips each
        partition's deliveries up to its own. It records its partitions and every position
        known, then deletes every older consumer of the link that reads any of its partitions
        (the fence): a process that lost a partition's lease acks into a deleted consumer.
        Consumers of other partitions (another replica's) stay.
        """
        host = self._host
        mine, legacy = self._kin(await host.api.names())
        positions = dict(self._positions)
        reads: dict[str, frozenset[int]] = {}
        for name in [*mine, *legacy]:
            try:
                info = await host.api.info(name)
            except nats.js.errors.NotFoundError:
                continue  # deleted meanwhile, by whoever opened a newer generation
            read = _reads_of(info, legacy.get(name))
            if read is not None:
                reads[name] = read
                _merge_positions(positions, read, info)
        start = min(positions.get(p, 0) for p in scope.read)
        metadata = {
            METADATA_READS: ",".join(map(str, scope.read)),
            METADATA_POSITIONS: ",".join(f"{p}:{seq}" for p, seq in sorted(positions.items()) if seq),
        }
        filters = scope.filters()
        number, config = await self._create(
            max(mine.values(), default=0) + 1,
            after=start,
            detail=f", partitions {metadata[METADATA_READS]}",
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
            metadata=metadata,
        )
        await self._start_reading(config)
        self._positions = positions
        self._skip = {partition_stream(p): positions[p] for p in scope.read if positions.get(p, 0) > start}
        self._skip_until = max(self._skip.values(), default=0)
        # Listed again, as in _open_generation: a racing opener's older generation goes too. Safety
        # does not hang on the deletes (an old generation's acks only ever ack that generation).
        with contextlib.suppress(*NATS_FAILURES):
            mine, legacy = self._kin(await host.api.names())
            for old in [*mine, *legacy]:
                if mine.get(old, 0) >= number:
                    continue
                read = reads.get(old)
                if read is None:
                    try:
                        read = _reads_of(await host.api.info(old), legacy.get(old))
                    except nats.js.errors.NotFoundError:
                        continue
                if read is not None and not read.isdisjoint(scope.read):
                    with contextlib.suppress(nats.js.errors.NotFoundError):
                        await host.api.delete(old)

    async def _create(self, number: int, *, after: int, detail: str = "", **fields: Any) -> tuple[int, ConsumerConfig]:
        """Creates generation ``number`` (or the next one free) of the consumer, create-only,
        delivering from stream sequence ``after`` + 1 (0: from the start), the template's config
        with ``fields``; returns its number and config."""
        # Unique per open: JetStream answers a create-only request for an existing consumer
        # with an identical config as if it had created it, so racing opens would share one.
        opener = secrets.token_hex(6)
        for _ in range(_GENERATION_TRIES):
            name = generation_name(self._base, number)
            config = dataclasses.replace(
                self._template,
                name=name,
                durable_name=name,
                description=f"{self._template.description}{detail} (generation {number}, opener {opener})",
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after else DeliverPolicy.ALL,
                opt_start_seq=after + 1 if after else None,
                **fields,
            )
            try:
                await self._host.api.create(config)
                return number, config
            except nats.js.errors.APIError as exc:
                if exc.err_code != _CONSUMER_EXISTS:
                    raise
                number += 1  # another opener took this number first
        raise BrokerUnavailableError(
            f"durable consumer {self._base!r}: generation numbers {number - _GENERATION_TRIES} to {number - 1}"
            " were all taken by other openers; open it again"
        )

    async def _start_reading(self, config: ConsumerConfig) -> None:
        """Reads the generation just created from now on."""
        host = self._host
        name = config.name or ""
        puller = PullSubscription(host.api.connection(), stream=host.api.stream, consumer=name)
        await puller.open()
        host.track(puller)
        self._puller = puller
        self._config = config
        self.name = name

    def _kin(self, names: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
        """Of consumer ``names``: this link's generations (name -> number), and the per-partition
        consumers an older Meshgate read its partitions with, ``<base>-p<n>@<g>`` (name -> n)."""
        base = self._base
        legacy_head = f"{base}-p"
        mine: dict[str, int] = {}
        legacy: dict[str, int] = {}
        for name in names:
            number = generation_of(name, base)
            if number is not None:
                mine[name] = number
                continue
            head, sep, tail = name.rpartition(GENERATION_SEP)
            partition = head[len(legacy_head) :]
            if sep and head.startswith(legacy_head) and partition.isascii() and partition.isdigit() and tail.isdigit():
                legacy[name] = int(partition)
        return mine, legacy

    def _forget(self) -> None:
        """Drops every delivery handed out or buffered: they are not acked through this generation."""
        self._unacked.clear()
        self._marks.clear()
        # Nor is anything held back for it, nor its failure the next generation's.
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._ack_error = None
        if self._puller is not None:
            self._puller.buffer.clear()

    def _note_floor(self, info: ConsumerInfo) -> None:
        floor = _floor_of(info)
        self._floor = max(self._floor, floor)
        if self._set is not None:
            _raise_positions(self._positions, self._set.read, floor)

    def _topic_of(self, subject: bytes) -> str:
        return self._host.topic_of(subject.decode())

    def _stream_of(self, subject: bytes) -> str:
        """The origin stream of a delivery's subject: its partition's (``p3``), or "" for the whole log."""
        scope = self._set
        return partition_stream(scope.partition(subject)) if scope is not None else ""

    def _cached_stream(self, subject: bytes) -> str:
        return _cached(self._streams, subject, self._stream_of)

    def _passed(self, last: bytes) -> None:
        """Forgets the skips once the deliveries passed the highest position skipped up to."""
        if self._skip_until and parse_ack_subject(last.decode()).stream_sequence >= self._skip_until:
            self._skip.clear()
            self._skip_until = 0

    # -- reading ----------------------------------------------------------------------------

    async def fetch(self, max_events: int, *, timeout: float) -> list[Delivery]:
        puller, nc = await self._pull(max_events, timeout)
        deliveries = []
        topic_of = self._host.topic_of
        unacked = self._unacked
        msgs = puller.take(max_events)
        skip = self._skip
        for subject, reply, hdr, data in msgs:
            if not self._wanted(hdr):
                continue
            meta = parse_ack_subject(reply.decode())
            stream = self._cached_stream(subject)
            if skip and meta.stream_sequence <= skip.get(stream, 0):
                continue  # done by an earlier reader of its partition
            event = decode_event(
                parse_header_block(hdr),
                data,
                topic=topic_of(subject.decode()),
                sequence=meta.stream_sequence,
                stream=stream,
            )
            unacked[reply] = meta.consumer_sequence
            deliveries.append(Delivery(event=event, token=reply, pending=meta.pending, stored_ns=meta.timestamp_ns))
        if msgs:
            self._passed(msgs[-1][1])
            await self._after_take(nc, msgs[-1][1])
        return deliveries

    async def _pull(self, max_events: int, timeout: float) -> tuple[PullSubscription, Client]:
        """Fills the puller's buffer with what the consumer has (lingering up to ``timeout``)."""
        if self._closed:
            raise BrokerError(f"durable consumer {self.name!r} is closed", retriable=False)
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        host = self._host
        puller = self._puller
        if puller is None:
            raise BrokerUnavailableError(f"durable consumer {self._base!r} has no open generation; reset() it")
        # Waiting (bounded) rather than failing at once: a caller that retries in a loop
        # must not spin while the client reconnects.
        nc = await host.ready(max(timeout, 0.05))
        try:
            status: str | None = None
            if timeout > 0:
                status = await self._gather(puller, max_events, timeout)
            elif not puller.buffer and not puller.standing:
                await self._request(puller, max_events, no_wait=True)
                status = await puller.wait(host.ack_timeout)
            if status in CONSUMER_LOST:
                await self._on_lost(puller, status)
            elif status == TIMEOUT and not puller.buffer and not nc.is_connected:
                raise NotConnectedError(f"connection to NATS lost while consumer {self.name!r} fetched")
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"fetch from durable consumer {self.name!r}") from exc
        return puller, nc

    async def _gather(self, puller: PullSubscription, max_events: int, timeout: float) -> str | None:
        """Waits, up to ``timeout``, for a batch in the puller's buffer, through a standing request.

        A batch is ready with ``max_events`` in the buffer, or some and none more stored (the
        last delivery's pending count is 0: what one write stored lands at once, and the
        fetch hands it out without waiting for more). The request (``STANDING_EXPIRES_SECONDS``,
        for two batches) stays open across fetches while it can deliver; once it ended, the
        next fetch makes a new one before it hands anything out, so that in a backlog the next
        batch lands while the caller sends this one. The buffer holds at most three batches.
        Returns how the last request ended if it ended in a way the caller acts on, or
        ``TIMEOUT`` when the time was up with nothing.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        buffer = puller.buffer
        while True:
            if not puller.standing:
                ended = puller.ended
                if ended in CONSUMER_LOST:
                    return ended
                if not buffer and loop.time() >= deadline:
                    return TIMEOUT
                # For two batches, made before this one is handed out: the next lands while the
                # caller sends this one.
                await self._request(puller, 2 * max_events, expires=STANDING_EXPIRES_SECONDS)
            if len(buffer) >= max_events or (buffer and _pending_after(buffer[-1][1]) == 0):
                return None
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None if buffer else TIMEOUT
            puller.arrived.clear()
            try:
                await asyncio.wait_for(puller.arrived.wait(), min(remaining, STANDING_EXPIRES_SECONDS))
            except TimeoutError:
                if loop.time() >= deadline:
                    return None if buffer else TIMEOUT

    async def _request(
        self, puller: PullSubscription, batch: int, *, expires: float | None = None, no_wait: bool = False
    ) -> None:
        """A pull of up to ``batch`` events within the host's ``pull_bytes``: a backlog of large
        events then lands as fast as it is read, not all at once (which got the connection
        dropped, again at every retry)."""
        if puller.ended == BYTES and not puller.received:
            # The next event alone did not fit: it is asked for with room enough.
            self._pull_floor = 2 * self._pull_bytes
        elif puller.received:
            self._pull_floor = 0
        self._pull_bytes = max(self._host.pull_bytes(), self._pull_floor)
        await puller.request(batch, expires=expires, no_wait=no_wait, max_bytes=self._pull_bytes)

    async def _on_lost(self, puller: PullSubscription, status: str) -> None:
        """A pull answered 503/409: the generation is unavailable for now, or gone."""
        host = self._host
        try:
            self._note_floor(await host.api.info(self.name))
        except nats.js.errors.NotFoundError:
            # Deleted: fenced by a newer generation (another replica opened it), or by an
            # operator. Never recreated under the same name: a fenced reader must not come
            # back into a generation; reset() opens the next one (and fences the other).
            self._forget()
            self._puller = None
            await host.close_puller(puller)
            raise BrokerUnavailableError(
                f"durable consumer {self.name!r} is gone (a newer generation of {self._base!r} fenced it, or it was"
                " deleted); reset() opens the next generation from the ack floor"
            ) from None
        if not puller.buffer:
            raise BrokerUnavailableError(
                f"durable consumer {self.name!r} was unavailable ({status} {puller.last_description}); fetch again"
            )

    def _wanted(self, hdr: bytes | None) -> bool:
        """Whether a delivery passes the origin and destination filter, read on its raw headers."""
        origin_line = self._origin_line
        if origin_line is not None and (hdr is None or origin_line not in hdr):
            return False
        routes = self._routes
        if routes is None:
            return True
        return hdr is not None and routes(hdr)

    async def _after_take(self, nc: Client, last: bytes) -> None:
        """Marks the last delivery taken; when it was skipped and nothing is outstanding, acks it now.

        A skipped delivery is acked by the next ack at or above it: at once when nothing
        handed out before it waits (a batch of only skipped events is acked here, without a
        reply: the next ack covers it if this one is lost), else with the batch that precedes
        it, once the destination acked that.
        """
        if last in self._unacked:
            return  # a forwarded delivery: its own ack covers the fetch
        self._marks.append((parse_ack_subject(last.decode()).consumer_sequence, last))
        if not self._unacked:
            try:
                await self._advance(nc, confirm=False)
            except NATS_FAILURES as exc:
                raise broker_error(exc, f"ack of skipped deliveries of {self.name!r}") from exc

    async def fetch_raw(self, max_events: int, *, timeout: float) -> RawBatch:
        puller, nc = await self._pull(max_events, timeout)
        batch = RawBatch()
        ids, topics, sequences, headers, datas, stored, tokens, streams = (
            batch.ids,
            batch.topics,
            batch.sequences,
            batch.headers,
            batch.data,
            batch.stored_ns,
            batch.tokens,
            batch.streams,
        )
        topic_cache = self._topics
        unacked = self._unacked
        pending = 0
        skip = self._skip
        partitioned = self._set is not None
        msgs = puller.take(max_events)
        if msgs and self._take_plain(msgs, batch):
            self._passed(msgs[-1][1])
            await self._after_take(nc, msgs[-1][1])
            return batch
        for subject, reply, hdr, data in msgs:
            if not self._wanted(hdr):
                continue
            # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>] (domains: 2 more)
            tokens_ = reply.split(b".")
            base = 4 if len(tokens_) == _ACK_TOKENS else 6
            sequence = int(tokens_[base + 1])
            stream = self._cached_stream(subject)
            if skip and sequence <= skip.get(stream, 0):
                continue  # done by an earlier reader of its partition
            sequences.append(sequence)
            if partitioned:
                streams.append(stream)
            delivery = int(tokens_[base + 2])
            stored.append(int(tokens_[base + 3]))
            pending = int(tokens_[base + 4])
            topic = _cached(topic_cache, subject, self._topic_of)
            eid, lines = split_header_block(hdr)
            ids.append(eid)
            topics.append(topic)
            headers.append(lines)
            datas.append(data)
            tokens.append(reply)
            unacked[reply] = delivery
        batch.pending = pending
        if msgs:
            self._passed(msgs[-1][1])
            await self._after_take(nc, msgs[-1][1])
        return batch

    def _take_plain(self, msgs: list[RawMsg], batch: RawBatch) -> bool:
        """``fetch_raw``'s loop over ``msgs``, in scans of them all that iterate in C, when every
        delivery is wanted, in Meshgate's own header form, with a plain ack subject (no
        domain); False, with nothing done, otherwise (``fetch_raw`` then takes each alone)."""
        subjects, replies, hdrs, datas = zip(*msgs, strict=True)
        n = len(msgs)
        split = split_header_blocks(list(hdrs))
        if split is None:
            return False
        blocks: list[bytes] = hdrs  # type: ignore[assignment]  # split_header_blocks: no None
        joined = b"".join(blocks)
        origin_line = self._origin_line
        if origin_line is not None and (
            joined.count(origin_line) != n or not each_contains(blocks, repeat(origin_line))
        ):
            return False
        routes = self._routes
        if routes is not None and not routes.names_all(blocks, joined):
            return False
        acks = _plain_acks(replies)
        if acks is None:
            return False
        sseqs, cseqs, stored_ns, pending = acks
        if self._skip_until and sseqs[0] <= self._skip_until:
            return False  # some may have been done by an earlier reader of their partition
        topic_cache = self._topics
        _cache_batch(topic_cache, subjects, self._topic_of)
        ids, lines = split
        batch.ids.extend(ids)
        batch.topics.extend(map(topic_cache.__getitem__, subjects))
        batch.sequences.extend(sseqs)
        batch.stored_ns.extend(stored_ns)
        batch.headers.extend(lines)
        batch.data.extend(datas)
        batch.tokens.extend(replies)
        batch.pending = pending
        self._unacked.update(zip(replies, cseqs, strict=True))
        if self._set is not None:
            stream_cache = self._streams
            _cache_batch(stream_cache, subjects, self._stream_of)
            batch.streams.extend(map(stream_cache.__getitem__, subjects))
        return True

    # -- acking -----------------------------------------------------------------------------

    async def ack_raw(self, batch: RawBatch) -> None:
        await self._ack_tokens(batch.tokens)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        await self._ack_tokens([d.token for d in deliveries])

    async def _ack_tokens(self, tokens: Sequence[object]) -> None:
        unacked = self._unacked
        top, top_reply = 0, b""
        for token in tokens:
            reply = token.token if isinstance(token, Delivery) else token  # Delivery: the default fetch_raw's
            if not isinstance(reply, bytes):
                continue
            # Unknown: of a generation before the last reset, or acked already. Never sent:
            # this instance no longer reads that generation.
            delivery = unacked.pop(reply, None)
            if delivery is not None and delivery > top:
                top, top_reply = delivery, reply
        if not top:
            return
        bisect.insort(self._marks, (top, top_reply))
        error, self._ack_error = self._ack_error, None
        if error is not None:
            raise error
        loop = asyncio.get_running_loop()
        wait = self._acked_at + ACK_INTERVAL_SECONDS - loop.time()
        if wait > 0:
            if self._ack_timer is None:
                self._ack_timer = loop.call_later(wait, self._ack_later)
            return
        await self._send_ack()

    async def _send_ack(self) -> None:
        """The ack of everything done so far, sent now and confirmed."""
        nc = await self._host.ready(None)
        try:
            if await self._advance(nc, confirm=True):
                self._acked_at = asyncio.get_running_loop().time()
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"ack of the deliveries of {self.name!r}") from exc

    def _ack_later(self) -> None:
        """The interval is up: the ack held back goes (its failure is kept for the next ack)."""
        self._ack_timer = None
        if self._closed:
            return
        if self._ack_task is not None and not self._ack_task.done():
            # The ack still on its way took the marks of its time, not those held back since:
            # look again an interval later rather than leave them until the next read.
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_INTERVAL_SECONDS, self._ack_later)
            return
        self._ack_task = asyncio.ensure_future(self._ack_quietly())

    async def _ack_quietly(self) -> None:
        try:
            await self._send_ack()
        except BrokerError as exc:
            self._ack_error = exc

    async def _flush(self) -> None:
        """Sends the ack held back now (if any) and waits for it; its failure is kept, not raised."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        task = self._ack_task
        if task is not None and not task.done():
            await asyncio.shield(task)
        if self._ackable():
            await self._ack_quietly()

    def _ackable(self) -> int:
        """How many marks lie below the oldest delivery still handed out: the ack goes on the last."""
        oldest = next(iter(self._unacked.values()), math.inf)
        marks = self._marks
        n = 0
        while n < len(marks) and marks[n][0] < oldest:
            n += 1
        return n

    async def _advance(self, nc: Client, *, confirm: bool) -> bool:
        """Sends one ack on the highest mark below the oldest delivery still handed out (if any).

        True when an ack was sent.
        """
        n = self._ackable()
        if not n:
            return False
        marks = self._marks
        reply = marks[n - 1][1]
        # Every mark left is above the one acked now, and later marks (a fetch's last delivery,
        # an acked one) come later in delivery order: no ack is ever sent twice.
        del marks[:n]
        if confirm:
            # The reply means the ack is applied: nothing up to it is delivered again, and
            # pending() already counts it out. No responders: the generation is gone (fenced).
            await nc.request(reply.decode(), b"+ACK", timeout=self._host.ack_timeout)
        else:
            await self._host.ack_without_reply(nc, reply)
        return True

    # -- position ---------------------------------------------------------------------------

    async def pending(self) -> int:
        await self._flush()  # what is done is not pending
        try:
            info = await self._host.api.info(self.name)
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"consumer info of {self.name!r}") from exc
        self._note_floor(info)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def reset(self) -> None:
        """Opens the next generation at the ack floor; the current one is deleted (see the class)."""
        if self._closed:
            raise BrokerError(f"durable consumer {self.name!r} is closed", retriable=False)
        host = self._host
        host.api.manager()  # not started: refused before anything is dropped
        # What is done stays done: the next generation starts at the floor this ack moves.
        await self._flush()
        self._forget()
        puller, self._puller = self._puller, None
        if puller is not None:
            await host.close_puller(puller)
        try:
            await self._open_generation()
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"reset of durable consumer {self._base!r}") from exc

    async def oldest_pending_time(self) -> float | None:
        await self._flush()  # what is done is not pending
        api = self._host.api
        jsm = api.manager()
        try:
            info = await api.info(self.name)
            self._note_floor(info)
            if not (info.num_pending or info.num_ack_pending):
                return None
            # The first message after the ack floor on each of the consumer's subjects (next=True
            # skips deleted ones): the oldest this consumer has not finished with.
            subjects = self._set.filters() if self._set is not None else [self._config.filter_subject]
            oldest: float | None = None
            for subject in subjects:
                try:
                    msg = await jsm.get_msg(api.stream, seq=_floor_of(info) + 1, subject=subject, next=True)
                except nats.js.errors.NotFoundError:
                    continue
                # nats-py parses the stored time into a datetime.
                if msg.time is not None and (oldest is None or msg.time.timestamp() < oldest):
                    oldest = msg.time.timestamp()
        except nats.js.errors.NotFoundError:
            return None
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"oldest pending of {self.name!r}") from exc
        return oldest

    async def close(self) -> None:
        """Stops reading; the generation stays (it holds the position) until the next open deletes it.

        Nothing is handed back: no reader ever pulls from this generation again, the next one
        starts at its ack floor.
        """
        if self._closed:
            return
        # The ack held back, if any: the next reader then starts after what was done here. A
        # fenced generation refuses it, which changes nothing (the next one starts elsewhere).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flush(), self._host.ack_timeout)
        self._closed = True
        host = self._host
        host.closed(self)
        self._forget()
        puller, self._puller = self._puller, None
        if puller is not None:
            await host.close_puller(puller)


def _pending_after(reply: bytes) -> int:
    """The consumer's pending count when a delivery was made, from its ack subject (-1: not read)."""
    try:
        return parse_ack_subject(reply.decode()).pending
    except ValueError:
        return -1


def _floor_of(info: ConsumerInfo) -> int:
    """The stream sequence of a consumer's ack floor (0: nothing acked, from the stream's start)."""
    return int(info.ack_floor.stream_seq or 0) if info.ack_floor is not None else 0


def _reads_of(info: ConsumerInfo, legacy: int | None) -> frozenset[int] | None:
    """The partitions a consumer of a link reads, from its metadata (``legacy``: the partition an
    older Meshgate's ``<base>-p<n>@<g>`` read); None for a consumer that is not a partition reader."""
    metadata = info.config.metadata or {}
    reads = metadata.get(METADATA_READS)
    if reads is None:
        return frozenset((legacy,)) if legacy is not None else None
    if legacy is not None:
        return None  # a reader of another link (a destination named <destination>-p<n>)
    try:
        return frozenset(int(p) for p in reads.split(",") if p)
    except ValueError:
        return None


def _merge_positions(positions: dict[int, int], read: frozenset[int], info: ConsumerInfo) -> None:
    """Raises ``positions`` to what a consumer of the link knows: its ack floor for the partitions it
    reads, and the positions it recorded when created."""
    _raise_positions(positions, read, _floor_of(info))
    recorded = (info.config.metadata or {}).get(METADATA_POSITIONS, "")
    for item in recorded.split(","):
        name, sep, seq = item.partition(":")
        if sep and name.isdigit() and seq.isdigit() and int(seq) > positions.get(int(name), 0):
            positions[int(name)] = int(seq)


def _raise_positions(positions: dict[int, int], read: Iterable[int], floor: int) -> None:
    """Raises the positions of partitions ``read`` to a consumer's ack floor that covers them."""
    for p in read:
        if floor > positions.get(p, 0):
            positions[p] = floor


def _plain_acks(replies: Sequence[bytes]) -> tuple[list[int], list[int], list[int], int] | None:
    """Each delivery's stream sequence, consumer sequence and stored time, and the last one's
    pending count, read off ack subjects without a domain; None when any is otherwise.

    One split of them all, its tokens taken in strides: a sixth less than one regular
    expression over them and the numbers' conversions, on every delivery replicated.
    """
    n = len(replies)
    tokens = b".".join(replies).split(b".")
    if (
        not n
        or len(tokens) != _ACK_TOKENS * n
        or tokens[0::_ACK_TOKENS].count(b"$JS") != n
        or tokens[1::_ACK_TOKENS].count(b"ACK") != n
    ):
        return None
    columns = sseqs, cseqs, stored = tokens[5::_ACK_TOKENS], tokens[6::_ACK_TOKENS], tokens[7::_ACK_TOKENS]
    # Digits only: int() alone would take signs, spaces and underscores (and refuses b"").
    if not all(b"".join(column).isdigit() for column in columns) or not tokens[-1].isdigit():
        return None
    try:
        return list(map(int, sseqs)), list(map(int, cseqs)), list(map(int, stored)), int(tokens[-1])
    except ValueError:
        return None  # an empty one


def _cached(cache: dict[bytes, str], subject: bytes, make: Callable[[bytes], str]) -> str:
    """``make(subject)``, kept in ``cache``, which is emptied when it outgrows ``_SUBJECT_CACHE_MAX``."""
    value = cache.get(subject)
    if value is None:
        if len(cache) >= _SUBJECT_CACHE_MAX:
            cache.clear()
        value = cache[subject] = make(subject)
    return value


def _cache_batch(cache: dict[bytes, str], subjects: Iterable[bytes], make: Callable[[bytes], str]) -> None:
    """Caches ``make(subject)`` for the subjects of a batch not cached yet. A cache that would grow
    past ``_SUBJECT_CACHE_MAX`` is emptied first, never midway: the batch's own entries all stay."""
    missing = set(subjects).difference(cache)
    if not missing:
        return
    if len(cache) + len(missing) > _SUBJECT_CACHE_MAX:
        cache.clear()
        missing = set(subjects)
    for subject in missing:
        cache[subject] = make(subject)

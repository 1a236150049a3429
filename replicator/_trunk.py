"""One ``Replicate`` call to a destination that carries the batches of several links.

A destination's partition links in one process each read their own partition; on their own
calls, a batch of a moderately loaded region holds a few events (a publish of 100 events puts
~12 in each of 8 partitions), and every batch pays a pull, a gRPC message through both
gateways' poller threads, a broker write and its answer. On one call the links' batches that
are ready together go as one request (``docs/PERFORMANCE.md``, "Partitions at moderate load").

The destination already takes several streams of one origin interleaved in a call, each in its
own order (each partition is a stream, ``p<n>``), so only this side changes. A link joins the
trunk's current call (``Trunk.join``) and uses the ``Member`` it gets as it would use a call of
its own: ``write`` hands a request to the trunk's sender, which merges what is waiting into one
request; ``read`` returns the link's own answer, split out of the merged one (refusals by
index, re-based; its own batch id). A link leaves when its session ends: stopped, it only
leaves; on an error (a timeout, a protocol error) the call fails for every link on it, since
a stalled or broken call is the destination's, and each link reconnects after its backoff, to
a new call. A rotation of the TLS files ends the call once every batch on it was answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from meshgate.tls import ClientTls, TlsError, TlsMaterial
from meshgate.v1 import replication_pb2, replication_pb2_grpc

if TYPE_CHECKING:
    from meshgate.replicator._link import LinkOptions

__all__ = [
    "CHANNEL_OPTIONS",
    "TLS_POLL_SECONDS",
    "LinkError",
    "Member",
    "TlsRotated",
    "Trunk",
    "check_answer",
    "open_channel",
    "tls_changed",
]

log = logging.getLogger("meshgate.replicator")

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # While the destination is down, gRPC retries the connection within 0.1 s doubling to 0.5 s
    # (its defaults: 1 s to 120 s) for as long as a session waits to connect: a gateway
    # restarted meanwhile is found at once (between sessions, the link's backoff).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
# How often a connected link or trunk looks at its TLS files for a rotation.
TLS_POLL_SECONDS = 1.0

Call = grpc.aio.StreamStreamCall[replication_pb2.ReplicateRequest, replication_pb2.ReplicateResponse]


class LinkError(Exception):
    """The destination broke the protocol or the call ended; reconnect and resend."""


class TlsRotated(Exception):
    """The TLS files changed: the batches in flight were acked; reconnect with the new files at once."""


class Member:
    """A link's place on a trunk's call: ``write`` and ``read`` as on a call of its own."""

    __slots__ = ("_answers", "_call", "_ended", "duplicates_known")

    def __init__(self, call: _TrunkCall) -> None:
        self._call = call
        self._answers: asyncio.Queue[tuple[replication_pb2.ReplicateResponse, bool] | BaseException] = asyncio.Queue()
        self._ended = False
        # Whether the last answer read tells the link's own duplicates (see ``split_answer``).
        self.duplicates_known = True

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def rotating(self) -> bool:
        """The TLS files changed: the link sends nothing more on this call."""
        return self._call.rotating

    async def write(self, request: replication_pb2.ReplicateRequest) -> None:
        """Queues ``request`` for the trunk's next merged request (its answer comes by ``read``)."""
        if self._ended:
            raise LinkError("the link left its replication call")
        self._call.submit(self, request)

    async def read(self) -> replication_pb2.ReplicateResponse:
        """The answer to this link's oldest batch on the call; raises why the call ended."""
        item = await self._answers.get()
        if isinstance(item, BaseException):
            self._answers.put_nowait(item)  # every later read raises it too
            raise item
        answer, self.duplicates_known = item
        return answer

    def answer(self, item: tuple[replication_pb2.ReplicateResponse, bool] | BaseException) -> None:
        if not self._ended:
            self._answers.put_nowait(item)

    def leave(self, error: BaseException | None = None) -> None:
        """Takes the link off the call; ``error`` (not a stop) ends the call for every link on it."""
        if self._ended:
            return
        self._ended = True
        self._call.leave(self, error)


@dataclass(slots=True)
class _Part:
    member: Member
    batch_id: int  # the link's own
    size: int


@dataclass(slots=True)
class _Merged:
    batch_id: int  # the call's
    parts: list[_Part]
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = sum(p.size for p in self.parts)


class _TrunkCall:
    """One open ``Replicate`` call and the links on it."""

    def __init__(
        self,
        *,
        destination: str,
        address: str,
        options: LinkOptions,
        channel: grpc.aio.Channel,
        call: Call,
        material: TlsMaterial | None,
        closing: set[asyncio.Task[None]],
    ) -> None:
        self.destination = destination
        self._closing = closing
        self.address = address
        self._options = options
        self._channel = channel
        self._call = call
        self._members: set[Member] = set()
        self._waiting: list[tuple[Member, replication_pb2.ReplicateRequest]] = []
        self._ready = asyncio.Event()
        self._inflight: deque[_Merged] = deque()
        self._idle = asyncio.Event()
        self._idle.set()
        self._batch_id = 0
        self.failed: BaseException | None = None
        self.rotating = False
        self._tasks = [
            asyncio.create_task(self._send_loop(), name=f"trunk send -> {destination}"),
            asyncio.create_task(self._read_loop(), name=f"trunk read -> {destination}"),
        ]
        tls = options.tls
        if tls is not None and material is not None:
            self._tasks.append(asyncio.create_task(self._watch_tls(tls, material), name=f"trunk tls -> {destination}"))

    @property
    def usable(self) -> bool:
        return self.failed is None and not self.rotating

    def join(self) -> Member:
        member = Member(self)
        self._members.add(member)
        return member

    def submit(self, member: Member, request: replication_pb2.ReplicateRequest) -> None:
        self._waiting.append((member, request))
        self._ready.set()

    def leave(self, member: Member, error: BaseException | None) -> None:
        self._members.discard(member)
        # Its batches not yet sent are not sent (it resends what it reads again); its answers
        # still to come are dropped when they arrive.
        self._waiting = [(m, r) for m, r in self._waiting if m is not member]
        if error is not None and not isinstance(error, (asyncio.CancelledError, TlsRotated)):
            self.fail(error)
        elif not self._members:
            self.fail(LinkError("no link on the call"))  # the last one stopped: closed until one starts

    def fail(self, error: BaseException) -> None:
        """Ends the call for every link on it, with ``error``."""
        if self.failed is not None:
            return
        self.failed = error
        for member in self._members:
            member.answer(error)
        self._members.clear()
        self._waiting.clear()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._call.cancel()
        # The channel closes in a task of its own (close() waits for the calls on it); the links
        # leaving the call wait for it (``Trunk.closed``).
        task = asyncio.ensure_future(self._channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # --- the call's two directions -----------------------------------------------------------

    async def _send_loop(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                waiting, self._waiting = self._waiting, []
                opts = self._options
                for group in _groups(waiting, max_bytes=opts.max_request_bytes, max_events=opts.max_batch_events):
                    self._batch_id += 1
                    parts = [_Part(m, r.batch_id, len(r.raw.ids)) for m, r in group]
                    if len(group) == 1:
                        request = group[0][1]
                    else:
                        request = replication_pb2.ReplicateRequest()
                        for _, r in group:
                            request.MergeFrom(r)
                    request.batch_id = self._batch_id
                    self._inflight.append(_Merged(self._batch_id, parts))
                    self._idle.clear()
                    await self._call.write(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever ends the writing ends the call
            self.fail(exc)

    async def _read_loop(self) -> None:
        try:
            while True:
                self._take(await self._call.read())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever ends the reading ends the call
            self.fail(exc)

    def _take(self, resp: object) -> None:
        """Hands each link its part of the answer to the oldest request in flight."""
        if not isinstance(resp, replication_pb2.ReplicateResponse):  # grpc.aio.EOF
            raise LinkError(f"region {self.destination} ended the replication call")
        if not self._inflight:
            raise LinkError(f"region {self.destination} acked batch {resp.batch_id} that was not sent")
        merged = self._inflight.popleft()
        if resp.batch_id != merged.batch_id:
            raise LinkError(f"region {self.destination} acked batch {resp.batch_id}; expected {merged.batch_id}")
        for part, answer in zip(merged.parts, split_answer(resp, merged, self.destination), strict=True):
            part.member.answer(answer)
        if not self._inflight:
            self._idle.set()

    async def _watch_tls(self, tls: ClientTls, material: TlsMaterial) -> None:
        """Ends the call once the TLS files changed into usable ones and every batch on it was answered."""
        await tls_changed(tls, material, who=f"replication to {self.destination}")
        self.rotating = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self._options.ack_timeout_seconds)
        self.fail(TlsRotated())


def open_channel(
    address: str, *, destination: str, tls: ClientTls | None
) -> tuple[grpc.aio.Channel, TlsMaterial | None]:
    """A channel to a destination's gateway, with TLS when ``tls`` is set, and the TLS material
    it was made with (read now, so a rotated certificate is used from the next connection on)."""
    material = tls.material() if tls is not None else None
    if tls is not None:
        return tls.channel(address, target_name=destination, options=CHANNEL_OPTIONS, material=material), material
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS), None


async def tls_changed(tls: ClientTls, material: TlsMaterial, *, who: str) -> None:
    """Returns once the TLS files changed from ``material`` into usable ones (``who``: for the log)."""
    refused = ""
    while True:
        await asyncio.sleep(TLS_POLL_SECONDS)
        if not tls.changed(material):
            continue
        try:
            tls.material()
        except TlsError as exc:
            # Halfway through a rotation (a new certificate, the old key) or broken: the
            # connection made with the previous files stays up meanwhile.
            if str(exc) != refused:
                refused = str(exc)
                log.warning("%s: new TLS files not usable yet: %s", who, exc)
            continue
        return


def _groups(
    waiting: Sequence[tuple[Member, replication_pb2.ReplicateRequest]], *, max_bytes: int, max_events: int
) -> list[list[tuple[Member, replication_pb2.ReplicateRequest]]]:
    """The waiting requests in order, as runs that each fit one request: merged, they hold no
    more than a link's own batch may (``max_events``, ``max_bytes``), so a full batch (a link
    catching up) goes alone, as it was, and only small ones are copied into a larger one."""
    if len(waiting) == 1:
        return [list(waiting)] if not waiting[0][0].ended else []
    groups: list[list[tuple[Member, replication_pb2.ReplicateRequest]]] = []
    current: list[tuple[Member, replication_pb2.ReplicateRequest]] = []
    size = events = 0
    for member, request in waiting:
        if member.ended:
            continue
        n, b = len(request.raw.ids), request.ByteSize()
        if current and (size + b > max_bytes or events + n > max_events):
            groups.append(current)
            current, size, events = [], 0, 0
        current.append((member, request))
        size, events = size + b, events + n
    if current:
        groups.append(current)
    return groups


def check_answer(resp: replication_pb2.ReplicateResponse, n: int, destination: str) -> None:
    """Raises ``LinkError`` unless the answer accounts for each of the batch's ``n`` events once.

    A destination that did not read the raw events (one older than them) answers none.
    """
    refused = resp.refused
    if resp.accepted + resp.duplicates + len(refused) != n or any(r.index >= n for r in refused):
        raise LinkError(
            f"region {destination} answered raw batch {resp.batch_id} with {resp.accepted} accepted, "
            f"{resp.duplicates} duplicates and {len(refused)} refused; it has {n} events"
        )


def split_answer(
    resp: replication_pb2.ReplicateResponse, merged: _Merged, destination: str
) -> list[tuple[replication_pb2.ReplicateResponse, bool]]:
    """A merged request's answer as each part's own (its refusals re-based to its events, its
    batch id), and whether its duplicates are known.

    The destination counts duplicates per request, not per event: a part's are known when the
    request had none, or nothing but duplicates; otherwise its answer counts all it kept as
    accepted, and says the split is not known.
    """
    n = merged.size
    refused = resp.refused
    check_answer(resp, n, destination)
    if len(merged.parts) == 1:  # not merged: the answer is the link's own
        return [
            (
                replication_pb2.ReplicateResponse(
                    batch_id=merged.parts[0].batch_id,
                    accepted=resp.accepted,
                    duplicates=resp.duplicates,
                    refused=refused,
                ),
                True,
            )
        ]
    all_duplicates = resp.duplicates == n - len(refused)
    known = resp.duplicates == 0 or all_duplicates
    out = []
    start = 0
    for part in merged.parts:
        end = start + part.size
        mine = [
            replication_pb2.RawRefusal(index=r.index - start, code=r.code, message=r.message)
            for r in refused
            if start <= r.index < end
        ]
        kept = part.size - len(mine)
        duplicates = kept if all_duplicates and resp.duplicates else 0
        out.append(
            (
                replication_pb2.ReplicateResponse(
                    batch_id=part.batch_id, accepted=kept - duplicates, duplicates=duplicates, refused=mine
                ),
                known,
            )
        )
        start = end
    return out


class Trunk:
    """The call a destination's partition links in this process share (opened by the first to join)."""

    def __init__(self, *, destination: str, options: LinkOptions) -> None:
        self.destination = destination
        self.options = options
        self._current: _TrunkCall | None = None
        self._lock: asyncio.Lock | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def join(self, address: str, connect: Callable[[grpc.aio.Channel], Awaitable[None]]) -> Member:
        """A place on the current call to ``address``, opened (``connect``: the joining link's
        check that the channel is ready) when there is none that works."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            current = self._current
            if current is None or not current.usable or current.address != address:
                current = self._current = await self._open(address, connect)
            return current.join()

    async def _open(self, address: str, connect: Callable[[grpc.aio.Channel], Awaitable[None]]) -> _TrunkCall:
        opts = self.options
        channel, material = open_channel(address, destination=self.destination, tls=opts.tls)
        try:
            await connect(channel)
            call = replication_pb2_grpc.ReplicationStub(channel).Replicate(metadata=opts.metadata or None)
        except BaseException:
            await channel.close()
            raise
        return _TrunkCall(
            destination=self.destination,
            address=address,
            options=opts,
            channel=channel,
            call=call,
            material=material,
            closing=self._closing,
        )

    async def closed(self, timeout: float = 2.0) -> None:
        """Waits (up to ``timeout``) for the channels of ended calls to close."""
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=timeout)

"""The NATS adapter's writes: pipelined publishes whose PubAcks settle a batch's results.

Every event is a plain ``HPUB`` whose reply subject is ``<inbox>.<token>`` under ONE wildcard
subscription; the PubAcks resolve a batch's results as they come back, up to
``max_acks_in_flight`` acks are outstanding at once, and a batch is written with one flush.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence

from nats.aio.client import Client

from meshgate.brokers._base import (
    AppendResult,
    BrokerError,
    BrokerUnavailableError,
    EventRejectedError,
    StorageFullError,
    check_raw_columns,
)
from meshgate.brokers._codec import (
    HEADER_KEY,
    escape_header_value,
    plain_values,
)
from meshgate.brokers._headers import ORIGIN_NAME, header_value
from meshgate.brokers.nats._errors import (
    AckTimeoutError,
    MessageTooLargeError,
    NotConnectedError,
    ServerTooOldError,
)
from meshgate.brokers.nats._pull import (
    reraise_swallowed_cancel,
)
from meshgate.brokers.nats._state import NatsState
from meshgate.brokers.nats._subjects import partition_of, stream_partition
from meshgate.brokers.nats._wire import (
    header_block,
    parse_header_block,
)
from meshgate.v1 import event_pb2

__all__ = ["NatsAppend"]

logger = logging.getLogger(__name__)

_MSG_ID_HEAD = b"NATS/1.0\r\nNats-Msg-Id: "
_KEY_NAME = HEADER_KEY.encode()
# The byte value of b"0": an ack's sequence never starts with it.
_ZERO = 0x30


class AppendBatch:
    """One ``append`` call's results, filled in by the ack callback."""

    __slots__ = ("data", "done", "remaining", "results", "sealed", "tokens", "topics")

    def __init__(self, topics: Sequence[str], data: Sequence[bytes], done: asyncio.Future[None]) -> None:
        # Only read to describe a failed event.
        self.topics = topics
        self.data = data
        self.results: list[AppendResult | BrokerError | None] = [None] * len(topics)
        self.tokens: list[int] = []
        self.remaining = 0
        # No more events will be sent; until then a drained ``remaining`` does not end the batch.
        self.sealed = False
        self.done = done

    def settle(self, index: int, result: AppendResult | BrokerError) -> None:
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0 and self.sealed and not self.done.done():
            self.done.set_result(None)


class NatsAppend(NatsState):
    """The write path of ``NatsBroker``: ``append``, ``append_raw`` and the PubAck collection."""

    async def append(self, events: Sequence[event_pb2.Event]) -> list[AppendResult | BrokerError]:
        if not events:
            return []
        try:
            nc = await self._ready()
        except (BrokerUnavailableError, ServerTooOldError) as exc:
            return [exc] * len(events)
        batch = AppendBatch(
            [e.topic for e in events], [e.data for e in events], asyncio.get_running_loop().create_future()
        )

        def head_of(i: int) -> bytes:
            return header_block(events[i]).encode()

        layout = self._layout

        def subject_of(i: int) -> str:
            e = events[i]
            return layout.subject(e.topic, e.origin, layout.partition(e.key, e.id))

        return await self._append(batch, self._publish_batch(nc, batch, [e.id for e in events], head_of, subject_of))

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
        n = len(ids)
        check_raw_columns(ids, topics, headers, data, origin_sequences, origin_streams)
        if not n:
            return []
        try:
            nc = await self._ready()
        except (BrokerUnavailableError, ServerTooOldError) as exc:
            return [exc] * n
        batch = AppendBatch(topics, data, asyncio.get_running_loop().create_future())
        made = (
            self._raw_heads(
                origin, ids=ids, topics=topics, headers=headers, sequences=origin_sequences, streams=origin_streams
            )
            if origin
            else None
        )
        if made is not None:
            heads, subjects = made
            return await self._append(
                batch, self._publish_batch(nc, batch, ids, heads.__getitem__, subjects.__getitem__)
            )
        esc = escape_header_value

        def head_of(i: int) -> bytes:
            # The stored bytes of the source, plus the id and the origin position headers.
            if origin_streams and origin_streams[i]:
                seq_line = b"mg-origin-seq: %d\r\nmg-origin-stream: %b\r\n\r\n" % (
                    origin_sequences[i],
                    esc(origin_streams[i]).encode(),
                )
            else:
                seq_line = b"mg-origin-seq: %d\r\n\r\n" % origin_sequences[i]
            return b"".join((_MSG_ID_HEAD, esc(ids[i]).encode(), b"\r\n", headers[i], seq_line))

        layout = self._layout
        partitions = layout.partitions

        def subject_of(i: int) -> str:
            # Stored under the origin's subject, so this region's own links never read it.
            lines = headers[i]
            name = origin  # the caller's checked origin, else each event's own
            if not name:
                found = header_value(lines, ORIGIN_NAME)
                if found is None:
                    raise ValueError("a replicated event carries its origin (header mg-origin)")
                name = found.decode()
            partition = stream_partition(origin_streams[i]) if origin_streams else None
            if partition is None or partition >= partitions:
                # A Kafka origin's stream, or an origin with more partitions than this log.
                key = header_value(lines, _KEY_NAME)
                partition = partition_of(key or ids[i], partitions)
            return layout.subject(topics[i], name, partition)

        return await self._append(batch, self._publish_batch(nc, batch, ids, head_of, subject_of))

    def _raw_heads(
        self,
        origin: str,
        *,
        ids: Sequence[str],
        topics: Sequence[str],
        headers: Sequence[bytes],
        sequences: Sequence[int],
        streams: Sequence[str],
    ) -> tuple[list[bytes], list[str]] | None:
        """Every event's header block and subject, as ``append_raw``'s ``head_of`` and ``subject_of``
        make them, but a batch at a time: for events of one known origin, ids that need no
        escaping, in streams that are this log's partitions (``p<n>``, a NATS origin's). None
        otherwise, and for a topic or origin the layout refuses: each event is then made alone."""
        if not streams or not plain_values(ids):
            return None
        layout = self._layout
        esc = escape_header_value
        # Per stream: its subjects' head, and the header block's end after the origin sequence.
        starts: dict[str, str] = {}
        ends: dict[str, bytes] = {}
        try:
            for name in set(streams):
                partition = stream_partition(name)
                if partition is None or partition >= layout.partitions:
                    return None
                starts[name] = layout.head(origin, partition)
                ends[name] = b"\r\nmg-origin-stream: " + esc(name).encode() + b"\r\n\r\n"
            levels = {topic: layout.levels(topic) for topic in set(topics)}
        except ValueError:
            return None
        # "\x00" is escaped in an id: none holds it.
        raw_ids = "\x00".join(ids).encode().split(b"\x00")
        heads = [
            b"%b%b\r\n%bmg-origin-seq: %d%b" % (_MSG_ID_HEAD, eid, lines, seq, ends[name])
            for eid, lines, seq, name in zip(raw_ids, headers, sequences, streams, strict=True)
        ]
        subjects = [starts[name] + levels[topic] for name, topic in zip(streams, topics, strict=True)]
        return heads, subjects

    async def _append(
        self, batch: AppendBatch, publish: Coroutine[None, None, None]
    ) -> list[AppendResult | BrokerError]:
        loop = asyncio.get_running_loop()
        self._idle.clear()
        timer: asyncio.TimerHandle | None = None
        try:
            # One batch goes out at a time, in call order: a batch waiting for room among the
            # acks in flight is never overtaken by a later one (replication pipelines batches
            # and relies on their order).
            async with self._send_lock:
                await publish
        finally:
            # Also on cancellation: sealed and timed, the batch's entries cannot outlive it.
            batch.sealed = True
            if batch.remaining > 0:
                timer = loop.call_later(self._ack_timeout, self._expire, batch)
            if not self._pending:
                self._idle.set()
        if timer is not None:
            try:
                await batch.done
            finally:
                # Left running on cancellation: it settles this batch's acks that never come.
                if batch.done.done():
                    timer.cancel()
        if self.storage.problem is not None and any(type(r) is AppendResult and not r.duplicate for r in batch.results):
            self.storage.stored()
        return [r if r is not None else BrokerError("internal error: no result for the event") for r in batch.results]

    async def _publish_batch(
        self,
        nc: Client,
        batch: AppendBatch,
        ids: Sequence[str],
        head_of: Callable[[int], bytes],
        subject_of: Callable[[int], str],
    ) -> None:
        """Writes event ``i`` of the batch to ``subject_of(i)`` as the header block ``head_of(i)`` and its payload.

        One loop for events and raw header lines alike: what differs is only how the subject
        and the header block are made (they raise ValueError for an event that cannot be written).
        """
        datas = batch.data
        results = batch.results
        pending = self._pending
        reply_prefix = self._reply_prefix
        max_payload = self._max_payload
        max_inflight = self._max_inflight
        fast = self._fast_publish
        chunk: list[bytes] = []
        for i, eid in enumerate(ids):
            if len(pending) >= max_inflight:
                if chunk:
                    await self._send(nc, chunk, len(chunk) // 4)
                    chunk = []
                failure = await self._wait_capacity(nc)
                if failure is not None:
                    for j in range(i, len(ids)):
                        results[j] = failure
                    break
            if not eid:
                results[i] = EventRejectedError(f"event {i} of the batch has no id (the gateway assigns one)")
                continue
            try:
                subject = subject_of(i)
                head = head_of(i)
            except ValueError as exc:
                results[i] = EventRejectedError(f"event {i} of the batch cannot be written: {exc}")
                continue
            data = datas[i]
            head_len = len(head)
            size = head_len + len(data)
            if size > max_payload:
                results[i] = MessageTooLargeError(size=size, data_size=len(data), max_payload=max_payload)
                continue
            self._next_token += 1
            token = self._next_token
            pending[token] = (batch, i)
            batch.tokens.append(token)
            batch.remaining += 1
            if fast:
                chunk.append(f"HPUB {subject} {reply_prefix}{token} {head_len} {size}\r\n".encode())
                chunk.append(head)
                chunk.append(data)
                chunk.append(b"\r\n")
            else:
                await self._publish_public(nc, subject, f"{reply_prefix}{token}", head, data)
        if chunk:
            await self._send(nc, chunk, len(chunk) // 4)
        self.stats.published += len(batch.tokens)

    async def _send(self, nc: Client, chunk: list[bytes], messages: int) -> None:
        data = b"".join(chunk)
        nc.stats["out_msgs"] += messages
        nc.stats["out_bytes"] += len(data)
        # One buffered write and one flusher wake-up for the whole chunk; nats-py's own
        # publish() flushes per message and re-validates every header.
        await nc._send_command(data)
        await nc._flush_pending()
        reraise_swallowed_cancel()

    async def _publish_public(self, nc: Client, subject: str, reply: str, head: bytes, data: bytes) -> None:
        # nats-py's own publish writes the headers again from a dict (slow: without its internals).
        headers = parse_header_block(head) or {}
        await nc.publish(subject, data, reply=reply, headers=headers)
        reraise_swallowed_cancel()

    async def _wait_capacity(self, nc: Client) -> BrokerError | None:
        """Waits until fewer than ``max_acks_in_flight`` acks are outstanding (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ack_timeout
        while len(self._pending) >= self._max_inflight:
            self._capacity.clear()
            try:
                await asyncio.wait_for(self._capacity.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return AckTimeoutError(timeout=self._ack_timeout, in_flight=len(self._pending))
        if not self._live(nc):
            return NotConnectedError("the connection to NATS dropped; the event was not sent")
        # The connection may have come back meanwhile, to a server too old to write to.
        return self._too_old if nc._server_info is self._judged_info else self._judge_server(nc)

    def _release(self) -> None:
        pending = len(self._pending)
        if pending < self._max_inflight:
            self._capacity.set()
        if pending == 0:
            self._idle.set()

    def _on_ack(self, subject: bytes, reply: bytes, hdr: bytes | None, data: bytes) -> None:
        # A raw subscription (see _parser): runs in the connection's reader task, once per event.
        try:
            token = int(subject[self._reply_prefix_len :])
        except ValueError:
            token = 0
        entry = self._pending.pop(token, None)
        if entry is None:
            self.stats.late_acks += 1
            return
        batch, index = entry
        parse = self._parse_puback
        too_old = self._too_old
        if too_old is not None:
            # From a server the client reconnected to that is older than Meshgate needs (judged
            # as its INFO came, before any ack of it is read): not taken as stored.
            result: AppendResult | BrokerError = too_old
        # Inline fast path of PubAckParser: this runs once per event.
        # A sequence of 0 (or with a leading zero) is never an ack: it takes the full parser.
        elif (
            data.startswith(parse.head)
            and data.endswith(b"}")
            and (digits := data[parse.head_len : -1]).isdigit()
            and digits[0] != _ZERO
        ):
            result = AppendResult(int(digits), False)
        else:
            status = hdr[9:12].decode(errors="replace") if hdr and hdr.startswith(b"NATS/1.0 ") else None
            result = parse(data, status, subject=batch.topics[index], size=len(batch.data[index]))
        stats = self.stats
        if type(result) is AppendResult:
            stats.acked += 1
            if result.duplicate:
                stats.duplicates += 1
        else:
            stats.failed += 1
            if isinstance(result, StorageFullError):
                self.storage.refused(str(result))
        # AppendBatch.settle, inline: this runs once per event.
        batch.results[index] = result
        batch.remaining -= 1
        if batch.remaining == 0 and batch.sealed and not batch.done.done():
            batch.done.set_result(None)
        pending = len(self._pending)
        if pending < self._max_inflight:
            self._capacity.set()
            if pending == 0:
                self._idle.set()

    def _on_acks(self, run: list[tuple[bytes, bytes]]) -> None:
        """``_on_ack`` for a run of plain acks, (token, sequence) each (see ``_parser.subscribe_acks``)."""
        if self._too_old is not None:
            # Rare: each goes the way of any other ack (which turns it into the refusal).
            prefix, head = self._reply_prefix.encode(), self._parse_puback.head
            for token, seq in run:
                self._on_ack(prefix + token, b"", None, head + seq + b"}")
            return
        pending = self._pending
        late = 0
        for token, seq in run:
            entry = pending.pop(int(token), None)
            if entry is None:
                late += 1
                continue
            batch, index = entry
            batch.results[index] = AppendResult(int(seq), False)
            batch.remaining -= 1
            if batch.remaining == 0 and batch.sealed and not batch.done.done():
                batch.done.set_result(None)
        stats = self.stats
        stats.acked += len(run) - late
        stats.late_acks += late
        left = len(pending)
        if left < self._max_inflight:
            self._capacity.set()
            if left == 0:
                self._idle.set()

    def _expire(self, batch: AppendBatch) -> None:
        pending = self._pending
        error = AckTimeoutError(timeout=self._ack_timeout, in_flight=len(pending))
        expired = 0
        for token in batch.tokens:
            entry = pending.pop(token, None)
            if entry is not None:
                expired += 1
                batch.settle(entry[1], error)
        self.stats.failed += expired
        nc = self._nc
        if expired and nc is not None and nc.is_connected and not self._stopping:
            # Connected, yet JetStream stayed silent: a server whose store failed to write (a full
            # disk) answers no write until it is restarted.
            self.storage.refused(
                f"JetStream acknowledged none of {expired} writes within {self._ack_timeout:g} s while connected: "
                "the server is stalled or cannot write (a full disk? its log says 'no space left on device')"
            )
        if not batch.done.done():
            batch.done.set_result(None)
        self._release()

    def _fail_pending(self, error: BrokerError) -> None:
        # Emptied in place: an append in progress holds a reference to this dict.
        entries = list(self._pending.values())
        self._pending.clear()
        for batch, index in entries:
            batch.settle(index, error)
        self.stats.failed += len(entries)
        self._release()

    async def _ack_without_reply(self, nc: Client, reply: bytes) -> None:
        if self._fast_publish:
            await self._send(nc, [b"PUB " + reply + b" 4\r\n+ACK\r\n"], 1)
        else:
            await nc.publish(reply.decode(), b"+ACK")

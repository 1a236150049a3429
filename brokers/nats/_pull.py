"""Pull requests to a JetStream consumer through one inbox subscription.

nats-py's ``PullSubscription.fetch`` waits for a whole batch or the full expiry, and leaves
lingering requests behind when it gives up early. Readers here need "what is there now, and
otherwise the next event as soon as it lands", and a request they no longer want must not
live on at the server. So requests are made one at a time and always run to their end on
the server (a link's consumer leaves one standing on purpose, below):

* ``no_wait`` for up to N: the server sends what it has, then a 404/408 status when that was
  fewer than N (nothing when it was exactly N);
* ``no_wait`` with ``expires`` for up to N: the same when there are events; when there are
  none, the first ones to land within the expiry (then a 404 once it has sent what was
  pending), or a 408 at expiry;
* ``expires`` for 1: the next event, or a 408 status at expiry.

A request may carry ``max_bytes``: the server then stops once the next event would not fit
(a 409 "Message Size Exceeds MaxBytes", here the outcome ``bytes``; that event stays for the
next request). Without it a batch of large events lands on the connection at once, and
nats-server drops a client whose unread bytes pass its ``max_pending`` (64 MiB by default)
as a slow consumer.

Each request replies to its own subject under the inbox (``<inbox>.<n>``), so a late status
of an earlier request cannot end the current one. Deliveries keep their stream subject on the
wire, so they are matched to a request by count only.

A link's durable consumer has one reader per generation (its fence), and there a request may
also *stand*: ``expires`` for up to N, left open across fetches, its events taken as they
land (``arrived``), until N have come or it expires (a 408). One request then serves many
small batches at moderate load, where a request per batch cost a round trip and a status each
(``NatsDurableConsumer._gather``). ``standing`` says whether the current request may still
deliver: not ended, and not past its expiry (plus ``PULL_GRACE_SECONDS``) on this connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import nats.errors

from meshgate._quota import FifoQuota
from meshgate.brokers.nats._parser import subscribe_raw, unsubscribe_raw

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.subscription import Subscription

__all__ = [
    "BYTES",
    "CONSUMER_LOST",
    "FULL",
    "NO_MESSAGES",
    "PULL_BYTES_SLACK",
    "PULL_GRACE_SECONDS",
    "PullBytes",
    "PullSubscription",
    "RawMsg",
    "next_request",
    "reraise_swallowed_cancel",
]

# A pull's statuses: no messages now (404) or the request expired (408).
NO_MESSAGES = frozenset({"404", "408"})
# The consumer is gone (503: nobody serves its pull subject) or was reset under us (409).
CONSUMER_LOST = frozenset({"503", "409"})
# Slack on top of a pull's server-side expiry before the client gives up on its 408.
PULL_GRACE_SECONDS = 0.5

# Outcomes of a request besides the server's status codes ("404", "408", "409", "503").
FULL = "full"
# The request's max_bytes was used up (or the next event alone is larger).
BYTES = "bytes"
TIMEOUT = "timeout"
CLOSED = "closed"

_STATUS_LINE = b"NATS/1.0 "
_STATUS_LINE_LEN = len(_STATUS_LINE)
_HEARTBEAT = "100"
_MAX_BYTES_STATUS = "409"
_MAX_BYTES_DESCRIPTION = "Message Size Exceeds MaxBytes"
# What a delivery carries beyond its headers and data (its subject, reply and framing), for a
# pull's max_bytes: a request of max_payload + this always has room for the largest event.
PULL_BYTES_SLACK = 4096
# Deliveries are bounded by the requests made; the limit only guards against a runaway server.
_PENDING_LIMIT = 1_000_000

# A delivery as it came off the wire: (subject, ack reply subject, header block, payload).
RawMsg = tuple[bytes, bytes, bytes | None, bytes]


def reraise_swallowed_cancel() -> None:
    """Re-raises a cancellation that nats-py swallowed.

    nats-py's internal flush (run by every publish) catches ``CancelledError`` and carries on,
    so a task cancelled at that moment would keep running as if nothing happened.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def next_request(
    batch: int, *, expires: float | None = None, no_wait: bool = False, max_bytes: int | None = None
) -> bytes:
    """The body of a JetStream ``CONSUMER.MSG.NEXT`` request."""
    req: dict[str, object] = {"batch": batch}
    if expires is not None:
        req["expires"] = int(expires * 1e9)
    if no_wait:
        req["no_wait"] = True
    if max_bytes is not None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        req["max_bytes"] = max_bytes
    return json.dumps(req).encode()


class PullBytes(FifoQuota):
    """The bytes one connection's pulls have asked for and not yet all received.

    nats-server queues a pull's events for the connection at once; many readers, each within
    its own ``max_bytes``, could still pass its ``max_pending`` together. So a pull first waits
    here for room (first come, first served), and gives its bytes back when it ends: by then
    its events have arrived, whether or not its reader has taken them, so a reader that does
    not read holds none of it.
    """

    async def take(self, n: int) -> int:
        """Takes ``n`` bytes (at most the limit), waiting for room; returns what was taken."""
        n = min(n, self.limit)
        await self.acquire(n)
        return n


class PullSubscription:
    __slots__ = (
        "_done",
        "_expect",
        "_inbox",
        "_nc",
        "_next_subject",
        "_open_until",
        "_reconnects",
        "_reply",
        "_sub",
        "_token",
        "arrived",
        "buffer",
        "consumer",
        "last_description",
        "received",
    )

    def __init__(self, nc: Client, *, stream: str, consumer: str, api_prefix: str = "$JS.API") -> None:
        self._nc = nc
        self.consumer = consumer
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._token = 0
        self._reply = b""
        self._expect = 0
        self._done: asyncio.Future[str] | None = None
        # Deliveries not yet handed out; bounded by the size of the requests made.
        self.buffer: deque[RawMsg] = deque()
        self.last_description = ""
        # Deliveries the current request has brought so far.
        self.received = 0
        # Set at each delivery and at the end of a request (cleared by whoever waits on it).
        self.arrived = asyncio.Event()
        # The current request's expiry plus grace (loop time) and the connection's reconnects
        # when it was made: past the one or after another reconnect it delivers no more.
        self._open_until = 0.0
        self._reconnects = 0

    async def open(self) -> None:
        self._sub = await subscribe_raw(
            self._nc, f"{self._inbox}.*", self._on_msg, pending_msgs_limit=_PENDING_LIMIT, on_run=self._on_run
        )

    async def request(
        self,
        batch: int,
        *,
        expires: float | None = None,
        no_wait: bool = False,
        max_bytes: int | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        """Asks for ``batch`` events; ``on_end`` runs once the request has ended (or was dropped)."""
        self._token += 1
        reply = f"{self._inbox}.{self._token}"
        self._reply = reply.encode()
        self._expect = batch
        self.received = 0
        previous = self._done
        if previous is not None and not previous.done():
            # Replaced before it ended: its late events, if any, count for the new request.
            previous.set_result(CLOSED)
        loop = asyncio.get_running_loop()
        done = self._done = loop.create_future()
        if on_end is not None:
            done.add_done_callback(lambda _: on_end())
        self._open_until = loop.time() + expires + PULL_GRACE_SECONDS if expires is not None else math.inf
        self._reconnects = self._nc.stats["reconnects"]
        body = next_request(batch, expires=expires, no_wait=no_wait, max_bytes=max_bytes)
        await self._nc.publish(self._next_subject, body, reply=reply)
        reraise_swallowed_cancel()

    @property
    def standing(self) -> bool:
        """Whether the current request may still deliver (see the module's docstring)."""
        done = self._done
        return (
            done is not None
            and not done.done()
            and asyncio.get_running_loop().time() < self._open_until
            and self._nc.stats["reconnects"] == self._reconnects
        )

    @property
    def ended(self) -> str | None:
        """How the current request ended (as ``wait`` says), None while it has not."""
        done = self._done
        return done.result() if done is not None and done.done() else None

    async def wait(self, timeout: float) -> str:
        """How the current request ended: ``full``, a status code, ``timeout`` or ``closed``."""
        done = self._done
        if done is None:
            return CLOSED
        if not done.done():
            try:
                await asyncio.wait_for(asyncio.shield(done), timeout)
            except TimeoutError:
                return TIMEOUT
        return done.result()

    def _on_msg(self, subject: bytes, reply: bytes, hdr: bytes | None, data: bytes) -> None:
        # A raw subscription (see _parser): called in the connection's reader task, no Msg.
        if not reply and hdr is not None and hdr.startswith(_STATUS_LINE):
            line = hdr[_STATUS_LINE_LEN:].partition(b"\r\n")[0].decode(errors="replace")
            status, _, description = line.partition(" ")
            done = self._done
            if status != _HEARTBEAT and subject == self._reply and done is not None and not done.done():
                self.last_description = description.strip()
                if status == _MAX_BYTES_STATUS and self.last_description == _MAX_BYTES_DESCRIPTION:
                    # Not a reset of the consumer: the request is full by bytes.
                    status = BYTES
                done.set_result(status)
                self.arrived.set()
            return
        self.buffer.append((subject, reply, hdr, data))
        self._delivered(1)

    def _on_run(self, run: list[RawMsg]) -> None:
        # Deliveries read back to back (see _parser): _on_msg's, a run at a time.
        self.buffer.extend(run)
        self._delivered(len(run))

    def _delivered(self, n: int) -> None:
        """``n`` deliveries are in the buffer: wakes the waiter; the request is full once it got all it asked for."""
        self.arrived.set()
        self.received += n
        if self._expect > 0:
            self._expect = max(0, self._expect - n)
            done = self._done
            if self._expect == 0 and done is not None and not done.done():
                done.set_result(FULL)

    def take(self, max_items: int) -> list[RawMsg]:
        buffer = self.buffer
        if max_items >= len(buffer):
            taken = list(buffer)
            buffer.clear()
            return taken
        return [buffer.popleft() for _ in range(max_items)]

    async def close(self) -> None:
        done = self._done
        if done is not None and not done.done():
            done.set_result(CLOSED)
        self.arrived.set()
        sub, self._sub = self._sub, None
        if sub is not None:
            unsubscribe_raw(self._nc, sub)
            # The connection may already be closed or reconnecting; the interest dies with it.
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

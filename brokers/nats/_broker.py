"""The NATS JetStream adapter: one stream per region holds the region's log.

Writes (``append``) are the gateway's hot path. Awaiting ``js.publish`` per event tops out at a
few thousand events a second here, so the adapter pipelines instead: every event is a plain
``HPUB`` whose reply subject is ``<inbox>.<token>`` under ONE wildcard subscription, the
PubAcks resolve a batch's results as they come back, up to ``max_acks_in_flight`` acks are
outstanding at once, and a batch is written to the socket with one flush.

Reads come in two shapes: ``read`` is an ordered, ephemeral, no-ack pull consumer that resumes
by itself after reconnects and server restarts (the replicator's catch-up and the Subscribe
stream); ``durable_consumer`` is a durable pull consumer of one reader, acked once per batch
(``AckPolicy.ALL``), whose position lives in JetStream: each open makes a new generation of it
that fences the earlier ones (``NatsDurableConsumer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import secrets
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ReplayPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from meshgate.brokers._base import (
    AppendResult,
    AppendStats,
    Broker,
    BrokerError,
    BrokerState,
    BrokerUnavailableError,
    EventRejectedError,
    StartAt,
    StorageFullError,
)
from meshgate.brokers._codec import (
    SubjectMapper,
    decode_event,
    escape_header_value,
    pattern_to_filter,
)
from meshgate.brokers._storage import PROBE_KEY, StorageHealth
from meshgate.brokers.nats._consumer import ConsumerApi, ConsumerHost, NatsDurableConsumer, durable_template
from meshgate.brokers.nats._errors import (
    NATS_FAILURES,
    AckTimeoutError,
    MessageTooLargeError,
    NotConnectedError,
    broker_error,
)
from meshgate.brokers.nats._parser import install as install_parser
from meshgate.brokers.nats._parser import subscribe_raw
from meshgate.brokers.nats._pull import (
    BYTES,
    CLOSED,
    CONSUMER_LOST,
    FULL,
    NO_MESSAGES,
    PULL_GRACE_SECONDS,
    TIMEOUT,
    PullBytes,
    PullSubscription,
    reraise_swallowed_cancel,
)
from meshgate.brokers.nats._wire import (
    PubAckParser,
    header_block,
    parse_ack_subject,
    parse_header_block,
)
from meshgate.config import NatsSettings
from meshgate.v1 import event_pb2

if TYPE_CHECKING:
    from nats.js.manager import JetStreamManager

__all__ = ["NatsBroker", "NatsBrokerStats", "NatsDurableConsumer"]

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The last time nats-server's int64 nanosecond clock can hold (Go's UnixNano ends in 2262).
_LAST_SERVER_TIME = datetime(2262, 1, 1, tzinfo=UTC)

# How long a caught-up reader's pull for the next event lingers on the server.
_IDLE_PULL_SECONDS = 5.0
# Ephemeral reader consumers the server removes when their reader has gone (crash, cancel).
_READER_INACTIVE_SECONDS = 60.0
# What one pull of a reader may bring when its caller sets no max_bytes: far below nats-server's
# max_pending (64 MiB by default), past which the server drops the connection as a slow consumer.
_READ_PULL_BYTES = 4 * 1024 * 1024
# A pull's max_bytes counts an event's subject and ack reply besides its headers and payload.
_PULL_BYTES_SLACK = 4096
# What the readers' pulls on one connection may have asked for and not received, all together:
# half of nats-server's default max_pending, however many readers there are.
_CONNECTION_PULL_BYTES = 32 * 1024 * 1024
_MSG_ID_HEAD = b"NATS/1.0\r\nNats-Msg-Id: "
# The byte value of b"0": an ack's sequence never starts with it.
_ZERO = 0x30
# While the broker cannot store, a write of this key in the checkpoint bucket (not an event)
# tells when it can again; first after this long, doubling up to the maximum.


class _Batch:
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


class _StartMode(enum.Enum):
    LATEST = "latest"
    EARLIEST = "earliest"
    TIME = "time"
    SEQUENCE = "sequence"


def _start_mode(start: StartAt) -> _StartMode:
    chosen = [
        mode
        for mode, on in (
            (_StartMode.EARLIEST, start.earliest),
            (_StartMode.TIME, start.time is not None),
            (_StartMode.SEQUENCE, start.sequence is not None),
        )
        if on
    ]
    if len(chosen) > 1:
        raise ValueError(
            f"StartAt sets {len(chosen)} positions ({', '.join(m.value for m in chosen)}); set at most one"
        )
    return chosen[0] if chosen else _StartMode.LATEST


def _redact(url: str) -> str:
    """``url`` without a password or token (``nats://user:***@host:4222``)."""
    scheme, sep, rest = url.rpartition("://")
    userinfo, at, hostport = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user}:***@{hostport}" if colon else f"{scheme}{sep}***@{hostport}"


def _describe(exc: BaseException) -> str:
    """An error as a person reads it: nats-py's own text ("nats: stale connection") or type and text."""
    text = str(exc)
    if text.startswith("nats: "):
        return text.removeprefix("nats: ").strip("'")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True, kw_only=True)
class NatsBrokerStats(AppendStats):
    """Counters of one NatsBroker."""

    # Readers that recreated their consumer (server restart, inactivity, sequence gap).
    reader_resets: int = 0


class NatsBroker(Broker):
    """A region's log in a NATS JetStream stream (created or updated on ``start``).

    ``servers`` are NATS URLs (``nats://host:4222``). Once connected the client reconnects
    forever; ``state`` follows the connection. ``idempotency_window_seconds`` becomes the
    stream's duplicate window: an id seen within it is stored once, across restarts and across
    every gateway replica, because the window lives in the server.
    """

    def __init__(
        self,
        *,
        servers: Sequence[str],
        settings: NatsSettings,
        idempotency_window_seconds: float,
        max_acks_in_flight: int = 4096,
        connect_timeout: float = 5.0,
        ack_timeout: float = 5.0,
        reconnect_wait: float = 1.0,
        durable_ack_wait: float = 30.0,
        name: str = "meshgate",
    ) -> None:
        if not settings.subject_prefix or not settings.subject_prefix.endswith("."):
            raise ValueError(f"subject_prefix must be non-empty and end with '.', got {settings.subject_prefix!r}")
        if idempotency_window_seconds <= 0:
            raise ValueError(f"idempotency_window_seconds must be > 0, got {idempotency_window_seconds}")
        if 0 < settings.max_age_seconds < idempotency_window_seconds:
            raise ValueError(
                f"the idempotency window ({idempotency_window_seconds:g} s) is longer than the stream's "
                f"max_age ({settings.max_age_seconds:g} s); JetStream cannot remember ids longer than it keeps "
                "events: raise max_age_seconds or shorten the window"
            )
        if max_acks_in_flight < 1:
            raise ValueError(f"max_acks_in_flight must be >= 1, got {max_acks_in_flight}")
        self.state = BrokerState.NEW
        self.servers: tuple[str, ...] = tuple(servers)
        self.settings = settings
        self.name = name
        self._window = idempotency_window_seconds
        self._max_inflight = max_acks_in_flight
        self._connect_timeout = connect_timeout
        self._ack_timeout = ack_timeout
        self._reconnect_wait = reconnect_wait
        self._durable_ack_wait = durable_ack_wait
        self._mapper = SubjectMapper(settings.subject_prefix)
        self._parse_puback = PubAckParser(settings.stream)
        self._nc: Client | None = None
        self._jsm: JetStreamManager | None = None
        self._kv: KeyValue | None = None
        self._lease_kv: KeyValue | None = None
        # The fast publish path writes protocol commands into nats-py's outbound buffer.
        self._fast_publish = True
        self._max_payload = 1024 * 1024
        self._reply_prefix = ""
        self._reply_prefix_len = 0
        self._next_token = 0
        self._pending: dict[int, tuple[_Batch, int]] = {}
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._connected = asyncio.Event()
        self._stopping = False
        self._lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._pullers: set[PullSubscription] = set()
        self._consumers: set[NatsDurableConsumer] = set()
        self._reported_disconnect = False
        self._last_error: BaseException | None = None
        # Why the connection last dropped, for the log and for `state_reason`.
        self._drop_reason = ""
        self.stats = NatsBrokerStats()
        self.storage = StorageHealth(name=name, on_problem=self._start_storage_probe)
        # Readers (Subscribe) pull on a connection of their own, opened at the first read: a
        # reader's burst that gets that connection dropped as a slow consumer fails no write.
        self._reader: NatsBroker | None = None
        self._reader_lock = asyncio.Lock()
        self._is_reader = False
        self._pull_bytes = PullBytes(_CONNECTION_PULL_BYTES)
        # All a durable consumer uses of this broker (see NatsDurableConsumer).
        self._consumer_host = ConsumerHost(
            api=ConsumerApi(
                connection=self._require_nc, manager=self._require_jsm, stream=settings.stream, timeout=ack_timeout
            ),
            ack_timeout=ack_timeout,
            topic_of=self._mapper.topic,
            ready=self._ready,
            track=self._pullers.add,
            close_puller=self._close_durable_puller,
            ack_without_reply=self._ack_without_reply,
            closed=self._consumers.discard,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def max_payload(self) -> int:
        """The connected server's max_payload: the largest message (headers + data) it takes."""
        return self._max_payload

    @property
    def acks_in_flight(self) -> int:
        return len(self._pending)

    @property
    def connected_url(self) -> str | None:
        nc = self._nc
        url = nc.connected_url if nc is not None else None
        return url.geturl() if url is not None else None

    @property
    def _where(self) -> str:
        """The servers, for messages: credentials in a URL are not shown."""
        return ", ".join(_redact(url) for url in self.servers)

    async def start(self) -> None:
        async with self._lock:
            if self._nc is not None:
                return
            await self._start_locked()

    def sibling(self) -> NatsBroker | None:
        """A NatsBroker on the same servers and stream (once this one knows its servers)."""
        if not self.servers:
            return None
        return self._sibling(f"{self.name}-links")

    def _sibling(self, name: str) -> NatsBroker:
        return NatsBroker(
            servers=self.servers,
            settings=self.settings,
            idempotency_window_seconds=self._window,
            max_acks_in_flight=self._max_inflight,
            connect_timeout=self._connect_timeout,
            ack_timeout=self._ack_timeout,
            reconnect_wait=self._reconnect_wait,
            durable_ack_wait=self._durable_ack_wait,
            name=name,
        )

    async def _start_locked(self) -> None:
        if not self.servers:
            raise BrokerError(f"NATS broker {self.name!r} has no servers to connect to", retriable=False)
        self.state = BrokerState.CONNECTING
        self._stopping = False
        self._reported_disconnect = False
        self._last_error = None
        self._drop_reason = ""
        nc = Client()
        # Acks and pulled deliveries skip nats-py's per-message machinery (see _parser).
        install_parser(nc)
        self._capture_reasons(nc)
        per_attempt = max(0.1, min(self._connect_timeout, 2.0))
        try:
            await asyncio.wait_for(
                nc.connect(
                    servers=list(self.servers),
                    name=self.name,
                    connect_timeout=per_attempt,  # type: ignore[arg-type]  # nats-py annotates int, takes float
                    reconnect_time_wait=self._reconnect_wait,  # type: ignore[arg-type]
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_closed,
                ),
                timeout=self._connect_timeout,
            )
        except (TimeoutError, *NATS_FAILURES) as exc:
            self.state = BrokerState.CLOSED
            with contextlib.suppress(*NATS_FAILURES):
                await nc.close()
            cause = self._last_error or exc
            raise NotConnectedError(
                f"could not connect to NATS at {self._where} within {self._connect_timeout:g} s "
                f"(last error: {type(cause).__name__}: {cause})",
                waited=self._connect_timeout,
            ) from exc
        self._nc = nc
        self._jsm = nc.jsm(timeout=self._ack_timeout)
        self._max_payload = nc.max_payload
        self._fast_publish = callable(getattr(nc, "_send_command", None)) and callable(
            getattr(nc, "_flush_pending", None)
        )
        try:
            self._reply_prefix = f"{nc.new_inbox()}."
            self._reply_prefix_len = len(self._reply_prefix)
            await subscribe_raw(
                nc,
                f"{self._reply_prefix}*",
                self._on_ack,
                # Acks in flight are bounded; the limit only guards against a runaway server.
                pending_msgs_limit=max(65_536, self._max_inflight * 4),
            )
            await self._ensure_stream()
        except BaseException:
            self._nc = None
            with contextlib.suppress(*NATS_FAILURES):
                await nc.close()
            self.state = BrokerState.CLOSED
            raise
        self._connected.set()
        self.state = BrokerState.CONNECTED
        self.state_reason = ""
        if self.storage.problem is not None:
            # Left from before a stop: the probe tells when it is over, writes or not.
            self._start_storage_probe()
        logger.info(
            "connected to NATS %s (stream %s, max_payload %d bytes, duplicate window %g s)",
            self.connected_url,
            self.settings.stream,
            self._max_payload,
            self._window,
        )

    def _stream_config(self) -> StreamConfig:
        s = self.settings
        return StreamConfig(
            name=s.stream,
            description="Meshgate region log",
            subjects=[f"{s.subject_prefix}>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            duplicate_window=self._window,
            max_age=s.max_age_seconds,
            max_bytes=s.max_bytes or -1,
            max_msgs=s.max_msgs or -1,
            num_replicas=s.replicas,
            allow_direct=True,
        )

    async def _ensure_stream(self) -> None:
        jsm = self._jsm
        assert jsm is not None
        want = self._stream_config()
        try:
            try:
                info = await jsm.stream_info(want.name or "")
            except nats.js.errors.NotFoundError:
                await jsm.add_stream(want)
                logger.info("created JetStream stream %s on %s", want.name, want.subjects)
                return
            have = info.config
            drift = [
                f"{name} {getattr(have, name)!r} -> {getattr(want, name)!r}"
                for name in ("subjects", "max_bytes", "max_msgs", "num_replicas", "allow_direct", "discard")
                if getattr(have, name) != getattr(want, name)
            ]
            drift.extend(
                f"{name} {getattr(have, name)!r} -> {getattr(want, name)!r}"
                for name in ("duplicate_window", "max_age")
                if not math.isclose(getattr(have, name) or 0.0, getattr(want, name) or 0.0, abs_tol=1e-3)
            )
            if have.storage != want.storage:
                raise BrokerError(
                    f"stream {want.name} exists with {have.storage} storage; Meshgate needs file storage "
                    "(JetStream cannot change it in place: move the data or use another stream name)",
                    retriable=False,
                )
            if drift:
                await jsm.update_stream(want)
                logger.info("updated JetStream stream %s: %s", want.name, "; ".join(drift))
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"cannot create or update stream {want.name}") from exc

    async def stop(self) -> None:
        async with self._lock:
            nc = self._nc
            if nc is None:
                if self.state is not BrokerState.NEW:
                    self.state = BrokerState.CLOSED
                return
            self._stopping = True
            await self.storage.stop_probe()
            if self._pending:
                # In-flight appends settle by ack or by their own timeout, so this is bounded.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), self._ack_timeout + PULL_GRACE_SECONDS)
            for consumer in list(self._consumers):
                await consumer.close()
            for puller in list(self._pullers):
                await puller.close()
            self._pullers.clear()
            async with self._reader_lock:
                reader, self._reader = self._reader, None
            if reader is not None:
                await reader.stop()
            try:
                await asyncio.wait_for(nc.drain(), self._ack_timeout)
            except (TimeoutError, *NATS_FAILURES):
                with contextlib.suppress(*NATS_FAILURES):
                    await nc.close()
            self._fail_pending(BrokerUnavailableError(f"broker {self.name!r} stopped before the ack"))
            self._nc = None
            self._jsm = None
            self._kv = None
            self._lease_kv = None
            self._connected.clear()
            self.state = BrokerState.CLOSED
            self._stopping = False

    # -- connection callbacks -----------------------------------------------------------------

    def _capture_reasons(self, nc: Client) -> None:
        """Records why the connection drops, which nats-py does not hand to the callbacks.

        A server's ``-ERR`` ("stale connection", "authorization violation", "maximum
        connections exceeded") and a client-side failure (missed pings, a socket error) end
        the connection without ``error_cb`` being called, and nats-py forgets the error
        before ``disconnected_cb`` runs: both are wrapped so ``_on_disconnected`` can say why.
        """
        process_err = getattr(nc, "_process_err", None)
        process_op_err = getattr(nc, "_process_op_err", None)
        if not (callable(process_err) and callable(process_op_err)):
            return

        async def on_server_err(message: str) -> None:
            said = f"the server said: {message.strip(chr(39))}"
            logger.warning("NATS %s: %s", self.name, said)
            # A permissions violation refuses one operation; the connection stays.
            if "permissions violation" not in message.lower():
                self._drop_reason = said
            await process_err(message)

        async def on_op_err(exc: Exception) -> None:
            # The server's own words, when it gave some, win over the client's view of the drop.
            if not (nc.is_closed or nc.is_reconnecting or self._drop_reason):
                self._drop_reason = _describe(exc)
            await process_op_err(exc)

        nc._process_err = on_server_err  # type: ignore[method-assign,assignment]
        nc._process_op_err = on_op_err  # type: ignore[method-assign,assignment]

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = exc
        # nats-py reports every failed reconnect attempt; one line per outage is enough.
        if self.state is BrokerState.RECONNECTING and self._reported_disconnect:
            logger.debug("NATS %s: %s", self.name, exc)
            # Why the server cannot be reached now (refused, authorization violation) matters
            # more to an operator than how the connection first dropped.
            reason = self._drop_reason or "connection lost"
            self.state_reason = f"reconnecting to {self._where}: {reason}; last attempt: {_describe(exc)}"
            return
        logger.warning("NATS %s: %s: %s", self.name, type(exc).__name__, exc)

    async def _on_disconnected(self) -> None:
        self._connected.clear()
        if self._stopping or self.state in (BrokerState.CLOSED, BrokerState.FAILED):
            return
        self.state = BrokerState.RECONNECTING
        reason = self._drop_reason or "connection lost"
        self.state_reason = f"reconnecting to {self._where}: {reason}"
        if not self._reported_disconnect:
            self._reported_disconnect = True
            logger.warning("NATS %s: disconnected (%s); reconnecting to %s", self.name, reason, self._where)
        # Replies to the old connection are lost: fail now instead of at the ack timeout.
        self._fail_pending(
            NotConnectedError(
                "the connection to NATS dropped before the ack; the event may or may not be stored: "
                "retry with the same id, duplicates are absorbed"
            )
        )

    async def _on_reconnected(self) -> None:
        nc = self._nc
        if nc is not None:
            self._max_payload = nc.max_payload
        self._reported_disconnect = False
        if not self._stopping:
            self.state = BrokerState.CONNECTED
            self.state_reason = ""
        self._drop_reason = ""
        self._connected.set()
        logger.info("NATS %s: reconnected to %s", self.name, self.connected_url)

    async def _on_closed(self) -> None:
        self._connected.clear()
        if self._stopping or self._nc is None:
            self.state = BrokerState.CLOSED
            return
        # Closed while nobody asked: nats-py does not reconnect after a server's -ERR (e.g. an
        # authorization violation), so this client is done; liveness fails and says why.
        nc = self._nc
        cause = self._drop_reason or (_describe(nc.last_error) if nc.last_error is not None else "no reason given")
        self.state = BrokerState.FAILED
        self.state_reason = f"the NATS client closed for good: {cause}; restart the gateway"
        logger.error("NATS %s: %s", self.name, self.state_reason)

    # -- append -------------------------------------------------------------------------------

    async def _ready(self, wait: float | None = None) -> Client:
        """The connection to use, waiting through a reconnect for ``wait`` s (``ack_timeout``)."""
        nc = self._nc
        if nc is None:
            raise self._not_started()
        if self._stopping:
            raise BrokerUnavailableError(f"NATS broker {self.name!r} is stopping")
        if nc.is_connected:
            return nc
        wait = self._ack_timeout if wait is None else wait
        try:
            await asyncio.wait_for(self._connected.wait(), wait)
        except TimeoutError:
            raise NotConnectedError(
                f"not connected to NATS ({self._where}) for {wait:g} s; retry later",
                waited=wait,
            ) from None
        if not self._live(nc):
            raise NotConnectedError(f"NATS broker {self.name!r} lost its connection")
        return nc

    def _live(self, nc: Client) -> bool:
        return self._nc is nc and nc.is_connected

    async def append(self, events: Sequence[event_pb2.Event]) -> list[AppendResult | BrokerError]:
        if not events:
            return []
        try:
            nc = await self._ready()
        except BrokerUnavailableError as exc:
            return [exc] * len(events)
        batch = _Batch([e.topic for e in events], [e.data for e in events], asyncio.get_running_loop().create_future())

        def head_of(i: int) -> bytes:
            return header_block(events[i]).encode()

        return await self._append(batch, self._publish_batch(nc, batch, [e.id for e in events], head_of))

    async def append_raw(
        self,
        *,
        ids: Sequence[str],
        topics: Sequence[str],
        headers: Sequence[bytes],
        data: Sequence[bytes],
        origin_sequences: Sequence[int],
        origin_streams: Sequence[str] = (),
    ) -> list[AppendResult | BrokerError]:
        n = len(ids)
        if not (len(topics) == len(headers) == len(data) == len(origin_sequences) == n) or len(origin_streams) not in (
            0,
            n,
        ):
            raise ValueError("append_raw needs one topic, header lines, payload and origin sequence per id")
        if not n:
            return []
        try:
            nc = await self._ready()
        except BrokerUnavailableError as exc:
            return [exc] * n
        batch = _Batch(topics, data, asyncio.get_running_loop().create_future())
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

        return await self._append(batch, self._publish_batch(nc, batch, ids, head_of))

    async def _append(self, batch: _Batch, publish: Coroutine[None, None, None]) -> list[AppendResult | BrokerError]:
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
        self, nc: Client, batch: _Batch, ids: Sequence[str], head_of: Callable[[int], bytes]
    ) -> None:
        """Writes event ``i`` of the batch as the header block ``head_of(i)`` and its payload.

        One loop for events and raw header lines alike: what differs is only how the header
        block is made (it raises ValueError for an event that cannot be written).
        """
        topics = batch.topics
        datas = batch.data
        results = batch.results
        pending = self._pending
        subject_of = self._mapper.subject
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
                subject = subject_of(topics[i])
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
        return None

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
        # Inline fast path of PubAckParser: this runs once per event.
        # A sequence of 0 (or with a leading zero) is never an ack: it takes the full parser.
        if (
            data.startswith(parse.head)
            and data.endswith(b"}")
            and (digits := data[parse.head_len : -1]).isdigit()
            and digits[0] != _ZERO
        ):
            result: AppendResult | BrokerError = AppendResult(int(digits), False)
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
        batch.settle(index, result)
        pending = len(self._pending)
        if pending < self._max_inflight:
            self._capacity.set()
            if pending == 0:
                self._idle.set()

    def _expire(self, batch: _Batch) -> None:
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

    # -- storage health -----------------------------------------------------------------------

    def storage_problem(self) -> str | None:
        return self.storage.problem

    def _start_storage_probe(self) -> None:
        """Writes a probe (not an event) until the broker stores again, or a write of an event does."""
        self.storage.start_probe(self._probe_write, running=lambda: not self._stopping and self._nc is not None)

    async def _probe_write(self) -> None:
        try:
            await self._recover_storage()
            nc = await self._ready(wait=0.0)
            kv = await self._checkpoints()
            # Its own timeout: the probe must not wait out a reconnect longer than a write does.
            await asyncio.wait_for(kv.put(PROBE_KEY, b"%d" % nc.stats["out_msgs"]), self._ack_timeout)
        except BrokerError:
            raise
        except NATS_FAILURES as exc:
            raise broker_error(exc, "storage probe") from exc

    async def _recover_storage(self) -> None:
        """What the adapter can do itself, between probes, to make the broker store again.

        Nothing for a server run by others; ``EmbeddedNatsBroker`` restarts its own server
        once a store that failed to write (a full disk) has room again.
        """

    # -- reads --------------------------------------------------------------------------------

    def _not_started(self) -> BrokerError:
        return BrokerError(f"NATS broker {self.name!r} is not started", retriable=False)

    def _require_nc(self) -> Client:
        nc = self._nc
        if nc is None:
            raise self._not_started()
        return nc

    def _require_jsm(self) -> JetStreamManager:
        jsm = self._jsm
        if jsm is None:
            raise self._not_started()
        return jsm

    async def _open_puller(self, config: ConsumerConfig) -> tuple[PullSubscription, int]:
        """Creates (or updates) a consumer and its pull inbox; returns the last stream sequence before it."""
        nc = self._require_nc()
        jsm = self._jsm
        assert jsm is not None and config.name is not None
        info = await jsm.add_consumer(self.settings.stream, config)
        puller = PullSubscription(nc, stream=self.settings.stream, consumer=config.name)
        await puller.open()
        self._pullers.add(puller)
        delivered = info.delivered.stream_seq if info.delivered is not None else 0
        return puller, delivered

    async def _close_puller(self, puller: PullSubscription, *, delete: bool) -> None:
        self._pullers.discard(puller)
        await puller.close()
        jsm = self._jsm
        if delete and jsm is not None and self._nc is not None and self._nc.is_connected:
            with contextlib.suppress(*NATS_FAILURES):
                await asyncio.wait_for(jsm.delete_consumer(self.settings.stream, puller.consumer), 1.0)

    async def _close_durable_puller(self, puller: PullSubscription) -> None:
        await self._close_puller(puller, delete=False)

    def _reader_config(self, filter_subject: str, start: StartAt, resume_after: int | None) -> ConsumerConfig:
        config = ConsumerConfig(
            name=f"mg-read-{secrets.token_hex(8)}",
            ack_policy=AckPolicy.NONE,
            filter_subject=filter_subject,
            replay_policy=ReplayPolicy.INSTANT,
            inactive_threshold=_READER_INACTIVE_SECONDS,
            mem_storage=True,
            num_replicas=1,
            max_deliver=1,
        )
        if resume_after is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = resume_after + 1
            return config
        mode = _start_mode(start)
        if mode is _StartMode.EARLIEST:
            config.deliver_policy = DeliverPolicy.ALL
        elif mode is _StartMode.TIME:
            assert start.time is not None
            at = (start.time if start.time.tzinfo is not None else start.time.replace(tzinfo=UTC)).astimezone(UTC)
            if at <= _EPOCH:
                # Nothing is stored before 1970, and the server's nanosecond clock cannot say a
                # time before 1678: such a start found nothing and waited, silently, forever.
                config.deliver_policy = DeliverPolicy.ALL
            else:
                config.deliver_policy = DeliverPolicy.BY_START_TIME
                config.opt_start_time = min(at, _LAST_SERVER_TIME)
        elif mode is _StartMode.SEQUENCE:
            assert start.sequence is not None
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(1, start.sequence)
        else:
            config.deliver_policy = DeliverPolicy.NEW
        return config

    async def read(
        self, pattern: str, *, start: StartAt, max_batch: int, max_bytes: int | None = None
    ) -> AsyncGenerator[list[event_pb2.Event]]:
        """Batches of the pattern's events from ``start`` on, in log order, until cancelled.

        Catch-up is pulled in batches of ``max_batch`` events and at most ``max_bytes`` bytes
        (4 MiB when None, 32 MiB at most; an event larger than that comes alone), with the next
        batch requested before the current one is handed out; once caught up, a pull lingers
        on the server for the next event. So a reader holds at most two batches. Pulls go over
        the broker's reader connection (opened at the first read), never the one appends use,
        and all readers' pulls together ask for at most 32 MiB at a time there. If the
        consumer disappears (server restart, inactivity, a gap in its sequence, a dropped
        reader connection), the reader recreates it right after the last event it delivered,
        so nothing is skipped or repeated. Ends when the broker stops.
        """
        filter_subject = pattern_to_filter(pattern, self.settings.subject_prefix)
        _start_mode(start)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self._require_nc()
        reader = await self._reading_broker()
        batches = reader._read(pattern, filter_subject, start, max_batch, max_bytes or _READ_PULL_BYTES)
        # Closed with this generator, so its consumer is deleted now, not when it is collected.
        async with contextlib.aclosing(batches):
            async for batch in batches:
                yield batch

    async def _reading_broker(self) -> NatsBroker:
        """The reader connection's broker, started at the first call."""
        if self._is_reader:
            return self
        async with self._reader_lock:
            reader = self._reader
            if reader is None:
                reader = self._sibling(f"{self.name}-readers")
                reader._is_reader = True
                # Its reader_resets count as this broker's.
                reader.stats = self.stats
                await reader.start()
                if self._nc is None or self._stopping:
                    await reader.stop()
                    raise BrokerUnavailableError(f"NATS broker {self.name!r} is stopping")
                self._reader = reader
            return reader

    async def _read(
        self, pattern: str, filter_subject: str, start: StartAt, max_batch: int, max_bytes: int
    ) -> AsyncGenerator[list[event_pb2.Event]]:
        topic_of = self._mapper.topic
        pull_bytes = self._pull_bytes
        # One pull stays well below the server's max_pending, whatever the caller asked for.
        max_bytes = min(max_bytes, pull_bytes.limit)
        puller: PullSubscription | None = None
        # Stream sequence of the last event handed out (or just before the start), once known.
        last: int | None = None
        expected = 1
        requested = False
        caught_up = False
        backoff = 0.05
        # max_bytes of the pulls for one event larger than max_bytes (0: pulls of max_bytes).
        alone = 0
        # Whether the last event handed out was larger than max_bytes.
        big = False

        async def pull(puller: PullSubscription, batch: int, size: int) -> None:
            # An event larger than the connection's whole share still comes (alone).
            taken = await pull_bytes.take(size)
            # Given back when the request ends (its events arrived) or its puller closes.
            await puller.request(batch, no_wait=True, max_bytes=size, on_end=lambda: pull_bytes.release(taken))

        try:
            while not self._stopping and self._nc is not None:
                reset = False
                events: list[event_pb2.Event] = []
                try:
                    if puller is None:
                        puller, before = await self._open_puller(self._reader_config(filter_subject, start, last))
                        last = before
                        expected = 1
                        requested = False
                        caught_up = False
                        alone = 0
                    if caught_up and not puller.buffer:
                        await puller.request(1, expires=_IDLE_PULL_SECONDS)
                        status = await puller.wait(_IDLE_PULL_SECONDS + PULL_GRACE_SECONDS)
                        caught_up = status != FULL
                    else:
                        if not requested:
                            await pull(puller, max_batch, max_bytes)
                        requested = False
                        status = await puller.wait(self._ack_timeout)
                        caught_up = status in NO_MESSAGES
                    if status == CLOSED:
                        return
                    for subject, reply, hdr, data in puller.take(max_batch):
                        meta = parse_ack_subject(reply.decode())
                        if meta.consumer_sequence != expected:
                            reset = True
                            break
                        expected += 1
                        last = meta.stream_sequence
                        big = len(data) + len(hdr or b"") + _PULL_BYTES_SLACK > max_bytes
                        events.append(
                            decode_event(parse_header_block(hdr), data, topic=topic_of(subject.decode()), sequence=last)
                        )
                    if status in CONSUMER_LOST or status == TIMEOUT:
                        # Gone (restart, inactivity) or silent (connection lost): start over
                        # right after the last event handed out.
                        reset = True
                    elif status == BYTES and not events and not reset:
                        # The next event alone is larger than max_bytes: it comes by itself
                        # (the server's max_payload bounds it; doubled if that changed).
                        alone = max(alone * 2, self._max_payload + _PULL_BYTES_SLACK)
                        await pull(puller, 1, alone)
                        requested = True
                    elif status in (FULL, BYTES) and not caught_up and not reset and not puller.buffer:
                        # Prefetch: the next batch travels while the caller handles this one
                        # (after a large event, the next is asked for alone straight away).
                        if alone and big:
                            await pull(puller, 1, alone)
                        else:
                            alone = 0
                            await pull(puller, max_batch, max_bytes)
                        requested = True
                except NATS_FAILURES as exc:
                    logger.warning("reader of %s: %s; resuming after sequence %s", pattern, exc, last)
                    reset = True
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                if reset and puller is not None:
                    self.stats.reader_resets += 1
                    logger.debug("reader of %s: consumer %s lost (%s); recreating", pattern, puller.consumer, last)
                    await self._close_puller(puller, delete=True)
                    puller = None
                    if self._nc is not None and not self._nc.is_connected:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._connected.wait(), _IDLE_PULL_SECONDS)
                if events:
                    backoff = 0.05
                    yield events
        finally:
            if puller is not None:
                await self._close_puller(puller, delete=True)

    async def durable_consumer(
        self, name: str, *, pattern: str = ">", origin: str | None = None, routed_to: str | None = None
    ) -> NatsDurableConsumer:
        """A durable consumer, opened as the next generation of ``name`` (see ``NatsDurableConsumer``).

        The caller is the only reader of its generation: a NATS region runs a link in one replica
        at a time (a lease), and every open fences the instances opened before it.
        """
        filter_subject = pattern_to_filter(pattern, self.settings.subject_prefix)
        template = durable_template(
            name, pattern=pattern, filter_subject=filter_subject, ack_wait=self._durable_ack_wait
        )
        self._require_nc()
        consumer = NatsDurableConsumer(self._consumer_host, name, template, origin=origin, routed_to=routed_to)
        try:
            await consumer.open()
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"cannot open durable consumer {name!r}") from exc
        self._consumers.add(consumer)
        return consumer

    async def last_sequence(self) -> int:
        jsm = self._require_jsm()
        try:
            info = await jsm.stream_info(self.settings.stream)
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"stream info of {self.settings.stream}") from exc
        return int(info.state.last_seq or 0)

    async def stored_time(self, sequence: int, *, stream: str = "") -> datetime | None:
        if stream:
            return None  # JetStream numbers one stream: a named one is not in this log
        jsm = self._require_jsm()
        try:
            msg = await jsm.get_msg(self.settings.stream, seq=sequence)
        except nats.js.errors.NotFoundError:
            return None
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"stored time of event {sequence}") from exc
        return msg.time

    @property
    def _checkpoint_bucket(self) -> str:
        return f"{self.settings.stream}_CHECKPOINTS"

    async def _checkpoints(self) -> KeyValue:
        # A KV bucket beside the stream: a few small values, last one kept, on file storage.
        if self._kv is None:
            nc = self._require_nc()
            js = nc.jetstream(timeout=self._ack_timeout)
            bucket = self._checkpoint_bucket
            try:
                self._kv = await js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                self._kv = await js.create_key_value(
                    KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE, replicas=self.settings.replicas)
                )
        return self._kv

    async def _leases(self, ttl: float) -> KeyValue:
        # A KV bucket whose entries lapse after `ttl`: an owner renews (rewrites) its entry in time.
        if self._lease_kv is None:
            nc = self._require_nc()
            js = nc.jetstream(timeout=self._ack_timeout)
            bucket = f"{self.settings.stream}_LEASES"
            try:
                self._lease_kv = await js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                self._lease_kv = await js.create_key_value(
                    KeyValueConfig(
                        bucket=bucket, history=1, ttl=ttl, storage=StorageType.FILE, replicas=self.settings.replicas
                    )
                )
        return self._lease_kv

    async def hold_lease(self, name: str, owner: str, *, ttl: float) -> bool:
        mine = owner.encode()
        try:
            kv = await self._leases(ttl)
            try:
                entry = await kv.get(name)
            except nats.js.errors.KeyNotFoundError:  # also a deleted (released) one
                entry = None
            if entry is None or not entry.value:
                await kv.create(name, mine)
                return True
            if entry.value != mine:
                return False
            # Renewing is a conditional write: it fails if another owner took the lease meanwhile.
            await kv.update(name, mine, last=entry.revision)
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"lease {name!r}") from exc

    async def release_lease(self, name: str, owner: str) -> None:
        if self._lease_kv is None:
            return
        try:
            entry = await self._lease_kv.get(name)
            if entry.value == owner.encode():
                await self._lease_kv.delete(name, last=entry.revision)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyWrongLastSequenceError):
            return
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"release of lease {name!r}") from exc

    async def get_checkpoint(self, name: str) -> bytes | None:
        try:
            kv = await self._checkpoints()
            entry = await kv.get(name)
        except nats.js.errors.KeyNotFoundError:
            return None
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"read checkpoint {name!r}") from exc
        return entry.value

    async def put_checkpoint(self, name: str, value: bytes) -> None:
        try:
            kv = await self._checkpoints()
            await kv.put(name, value)
        except NATS_FAILURES as exc:
            error = broker_error(exc, f"write checkpoint {name!r}")
            if isinstance(error, StorageFullError):
                self.storage.refused(str(error))
            raise error from exc

    async def checkpoints(self, prefix: str) -> dict[str, bytes]:
        # The names are the subjects the bucket's stream holds, the values one direct get each.
        # Not a KV watch: nats-py's watch can signal "initial values done" while values already
        # sent are still on their way (nats-io/nats.py#842), and the listing came back short.
        bucket = self._checkpoint_bucket
        head = f"$KV.{bucket}."
        # A prefix that ends a token is a subject filter, any other is filtered here.
        pattern = f"{prefix}>" if prefix.endswith(".") and prefix.strip(".") else ">"
        try:
            kv = await self._checkpoints()
            info = await self._require_jsm().stream_info(f"KV_{bucket}", subjects_filter=head + pattern)
            names = [s[len(head) :] for s in info.state.subjects or {} if s[len(head) :].startswith(prefix)]
            values = await asyncio.gather(*(self._checkpoint_value(kv, name) for name in names))
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"list checkpoints {prefix!r}") from exc
        return {name: value for name, value in zip(names, values, strict=True) if value is not None}

    @staticmethod
    async def _checkpoint_value(kv: KeyValue, name: str) -> bytes | None:
        try:
            entry = await kv.get(name)
        except nats.js.errors.KeyNotFoundError:  # deleted (its marker keeps the subject) or purged since
            return None
        return entry.value

    async def _ack_without_reply(self, nc: Client, reply: bytes) -> None:
        if self._fast_publish:
            await self._send(nc, [b"PUB " + reply + b" 4\r\n+ACK\r\n"], 1)
        else:
            await nc.publish(reply.decode(), b"+ACK")

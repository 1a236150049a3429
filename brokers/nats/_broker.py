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

This module keeps the lifecycle: the connection, the stream, the state. Each other concern
is a module of its own, mixed into ``NatsBroker`` on the state of ``_state``: ``_append``
(writes, PubAcks), ``_read`` (Subscribe reads, the reader connection, log positions),
``_checkpoints`` (KV checkpoints, the storage probe), ``_leases``; ``_consumer`` holds the
durable consumer, which sees the broker only through the ``ConsumerHost`` it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Collection, Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from meshgate.brokers._base import (
    Board,
    Broker,
    BrokerError,
    BrokerState,
    BrokerUnavailableError,
    Leases,
    PartitionedLog,
    SequencedLog,
)
from meshgate.brokers._storage import StorageHealth
from meshgate.brokers.nats._append import NatsAppend
from meshgate.brokers.nats._board import NatsBoard
from meshgate.brokers.nats._checkpoints import NatsCheckpoints
from meshgate.brokers.nats._consumer import (
    ConsumerApi,
    ConsumerHost,
    NatsDurableConsumer,
    PartitionSet,
    durable_template,
)
from meshgate.brokers.nats._errors import (
    NATS_FAILURES,
    NotConnectedError,
    broker_error,
)
from meshgate.brokers.nats._leases import NatsLeases
from meshgate.brokers.nats._parser import install as install_parser
from meshgate.brokers.nats._parser import subscribe_acks
from meshgate.brokers.nats._pull import (
    PULL_BYTES_SLACK,
    PULL_GRACE_SECONDS,
    PullBytes,
    PullSubscription,
)
from meshgate.brokers.nats._read import NatsRead
from meshgate.brokers.nats._state import NatsBrokerStats, _redact, too_old
from meshgate.brokers.nats._subjects import (
    LAYOUT,
    METADATA_LAYOUT,
    METADATA_PARTITIONS,
    SubjectLayout,
)
from meshgate.brokers.nats._version import server_version
from meshgate.brokers.nats._wire import (
    PubAckParser,
)
from meshgate.config import NatsSettings

__all__ = ["NatsBroker", "NatsBrokerStats", "NatsDurableConsumer"]

logger = logging.getLogger(__name__)

# What the readers' pulls on one connection may have asked for and not received, all together:
# half of nats-server's default max_pending, however many readers there are.
_CONNECTION_PULL_BYTES = 32 * 1024 * 1024


def _describe(exc: BaseException) -> str:
    """An error as a person reads it: nats-py's own text ("nats: stale connection") or type and text."""
    text = str(exc)
    if text.startswith("nats: "):
        return text.removeprefix("nats: ").strip("'")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class NatsBroker(
    NatsAppend,
    NatsRead,
    NatsCheckpoints,
    NatsLeases,
    NatsBoard,
    SequencedLog,
    Leases,
    PartitionedLog,
    Board,
    Broker,
):
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
        self.servers = tuple(servers)
        self.settings = settings
        self.name = name
        self._window = idempotency_window_seconds
        self._max_inflight = max_acks_in_flight
        self._connect_timeout = connect_timeout
        self._ack_timeout = ack_timeout
        self._reconnect_wait = reconnect_wait
        self._durable_ack_wait = durable_ack_wait
        if settings.partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {settings.partitions}")
        self._layout = SubjectLayout(settings.subject_prefix, settings.partitions)
        self._parse_puback = PubAckParser(settings.stream)
        self._nc = None
        self._jsm = None
        self._kv = None
        self._lease_kv = None
        # The fast publish path writes protocol commands into nats-py's outbound buffer.
        self._fast_publish = True
        self._max_payload = 1024 * 1024
        self._reply_prefix = ""
        self._reply_prefix_len = 0
        self._next_token = 0
        self._pending = {}
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._connected = asyncio.Event()
        self._stopping = False
        self._lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._pullers = set()
        self._consumers = set()
        self._reported_disconnect = False
        self._last_error = None
        # Why the connection last dropped, for the log and for `state_reason`.
        self._drop_reason = ""
        self._judged_info = None
        self._too_old = None
        self.stats = NatsBrokerStats()
        self.storage = StorageHealth(name=name, on_problem=self._start_storage_probe)
        # Readers (Subscribe) pull on a connection of their own, opened at the first read: a
        # reader's burst that gets that connection dropped as a slow consumer fails no write.
        self._reader = None
        self._reader_lock = asyncio.Lock()
        self._is_reader = False
        self._pull_bytes = PullBytes(_CONNECTION_PULL_BYTES)
        # All a durable consumer uses of this broker (see NatsDurableConsumer).
        self._consumer_host = ConsumerHost(
            api=ConsumerApi(
                connection=self._require_nc, manager=self._require_jsm, stream=settings.stream, timeout=ack_timeout
            ),
            ack_timeout=ack_timeout,
            topic_of=self._layout.topic,
            ready=self._ready,
            pull_bytes=self._durable_pull_bytes,
            track=self._pullers.add,
            close_puller=self._close_durable_puller,
            ack_without_reply=self._ack_without_reply,
            closed=self._consumers.discard,
        )

    def _durable_pull_bytes(self) -> int:
        """What one durable consumer's pull may ask for: an even share of the connection's
        budget among the consumers open on it, and room for the largest event the server takes."""
        share = _CONNECTION_PULL_BYTES // max(1, len(self._consumers))
        return max(share, self._max_payload + PULL_BYTES_SLACK)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def max_payload(self) -> int:
        """The connected server's max_payload: the largest message (headers + data) it takes."""
        return self._max_payload

    @property
    def partitions(self) -> int:
        return self.settings.partitions

    @property
    def addresses(self) -> tuple[str, ...]:
        # Shown to operators (meshgate status): never a password or token of a server URL.
        return tuple(_redact(url) for url in self.servers)

    @property
    def acks_in_flight(self) -> int:
        return len(self._pending)

    @property
    def connected_url(self) -> str | None:
        nc = self._nc
        url = nc.connected_url if nc is not None else None
        return url.geturl() if url is not None else None

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
        self._judge_each_server(nc)
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
            self._check_server_version(nc)
            self._reply_prefix = f"{nc.new_inbox()}."
            self._reply_prefix_len = len(self._reply_prefix)
            await subscribe_acks(
                nc,
                self._reply_prefix,
                self._parse_puback.head,
                self._on_ack,
                self._on_acks,
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
            "connected to NATS %s (nats-server %s, stream %s, max_payload %d bytes, duplicate window %g s)",
            self.connected_url,
            server_version(nc) or "of unknown version",
            self.settings.stream,
            self._max_payload,
            self._window,
        )

    def _check_server_version(self, nc: Client) -> None:
        """Refuses a server that would drop the stream's metadata, before the stream is touched
        (for good: at start; a reconnect's server is judged by ``_judge_server``)."""
        refusal = too_old(nc, reconnected=False)
        if refusal is not None:
            raise refusal
        self._judged_info, self._too_old = nc._server_info, None

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
            metadata={METADATA_LAYOUT: LAYOUT, METADATA_PARTITIONS: str(s.partitions)},
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
            self._check_layout(have)
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

    def _check_layout(self, have: StreamConfig) -> None:
        """Refuses a stream of another subject layout or partition count: its events would be read wrongly."""
        name = self.settings.stream
        meta = have.metadata or {}
        layout = meta.get(METADATA_LAYOUT)
        if layout != LAYOUT:
            raise BrokerError(
                f"stream {name} holds subjects of another layout ({layout or 'Meshgate 0.1: <prefix><topic>'}); "
                f"this Meshgate stores <prefix><origin>.<partition>.<topic> and does not migrate: delete the stream "
                f"(nats stream rm {name}) or give the region another nats.stream",
                retriable=False,
            )
        partitions = meta.get(METADATA_PARTITIONS)
        if partitions != str(self.settings.partitions):
            raise BrokerError(
                f"stream {name} was created with {partitions} partitions and the mesh file says "
                f"nats.partitions: {self.settings.partitions}; a log's partition count is fixed (a key's events "
                f"must stay in one partition): set nats.partitions back to {partitions}, or start a new stream",
                retriable=False,
            )

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
                # Bounded too: nats-py's close waits for its reconnect task and flushes what is
                # pending to a server that may be gone; a stop must end whatever the server does.
                with contextlib.suppress(*NATS_FAILURES):
                    await asyncio.wait_for(nc.close(), self._ack_timeout)
            self._fail_pending(BrokerUnavailableError(f"broker {self.name!r} stopped before the ack"))
            self._nc = None
            self._jsm = None
            self._kv = None
            self._lease_kv = None
            self._connected.clear()
            self._judged_info, self._too_old = None, None
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

    def _judge_each_server(self, nc: Client) -> None:
        """Judges the server of each reconnect (``_judge_server``) as its INFO arrives: before
        nats-py sends what it buffered while disconnected and before it reads any ack from it
        (its reconnected callback comes after both). Without the hook (another nats-py
        version) the callback and ``_ready`` judge it, later."""
        process_info = getattr(nc, "_process_info", None)
        if not callable(process_info):
            return

        async def on_info(info: dict[str, Any], initial_connection: bool = False) -> None:
            await process_info(info, initial_connection)
            # The first connect's server is judged by start, which refuses it for good.
            if initial_connection and self._nc is nc:
                self._judge_server(nc)

        nc._process_info = on_info  # type: ignore[method-assign]

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
        if nc is not None and nc._server_info is not self._judged_info:
            self._judge_server(nc)  # seen at once (log, readiness), not only at the next append
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

    async def _close_durable_puller(self, puller: PullSubscription) -> None:
        await self._close_puller(puller, delete=False)

    async def durable_consumer(
        self,
        name: str,
        *,
        pattern: str = ">",
        origin: str | None = None,
        routed_to: str | None = None,
        partitions: Collection[int] | None = None,
    ) -> NatsDurableConsumer:
        """A durable consumer, opened as the next generation of ``name`` (see ``NatsDurableConsumer``).

        The caller is the only reader of its generation: a NATS region runs a link's partitions
        in one process at a time (a lease each), and every open fences the instances opened
        before it over any of them. With ``origin`` the consumer's filter is that origin's
        subjects (of ``partitions`` when given), so the server never delivers another region's
        events; its deliveries then carry their partition as their origin stream (``p3``), and
        each partition starts where its last reader stopped.
        """
        layout = self._layout
        scope: PartitionSet | None = None
        if partitions is not None:
            read = tuple(sorted(set(partitions)))
            if not read:
                raise ValueError("a partition reader needs at least one partition")
            outside = [p for p in read if not 0 <= p < layout.partitions]
            if outside:
                raise ValueError(f"partition {outside[0]} is outside 0..{layout.partitions - 1}")
            if origin is None:
                raise ValueError("partitions are read only with their origin")
            if pattern != ">":
                raise ValueError("a partition reader reads every topic of its partitions")
            layout.head(origin, 0)  # validates the origin
            scope = PartitionSet(read=read, count=layout.partitions, head=f"{layout.prefix}{origin}.")
            filter_subject = layout.origin_filter(origin)
        elif origin is not None:
            filter_subject = layout.origin_filter(origin, None, pattern)
        else:
            filter_subject = layout.pattern_filter(pattern)
        template = durable_template(
            name, pattern=pattern, filter_subject=filter_subject, ack_wait=self._durable_ack_wait
        )
        self._require_nc()
        consumer = NatsDurableConsumer(
            self._consumer_host,
            name,
            template,
            origin=origin,
            routed_to=routed_to,
            partitions=scope,
        )
        try:
            await consumer.open()
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"cannot open durable consumer {name!r}") from exc
        self._consumers.add(consumer)
        return consumer

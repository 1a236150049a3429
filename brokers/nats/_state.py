"""The NATS adapter's broker state: what ``NatsBroker`` holds, and the connection it writes and reads on.

``NatsBroker`` is composed of one mixin per concern (``_append``, ``_read``, ``_checkpoints``,
``_leases``), all on this state: the attributes ``NatsBroker.__init__`` sets, declared here so
each concern's module is type-checked on its own, and the connection helpers they share.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.aio.client import Client
from nats.js.kv import KeyValue

from meshgate.brokers._base import AppendStats, BrokerError, BrokerUnavailableError
from meshgate.brokers._storage import StorageHealth
from meshgate.brokers.nats._errors import NotConnectedError, ServerTooOldError
from meshgate.brokers.nats._pull import PullBytes, PullSubscription
from meshgate.brokers.nats._subjects import SubjectLayout
from meshgate.brokers.nats._version import MINIMUM_SERVER_VERSION, older_than, server_version
from meshgate.brokers.nats._wire import PubAckParser
from meshgate.config import NatsSettings

if TYPE_CHECKING:
    from nats.js.manager import JetStreamManager

    from meshgate.brokers.nats._append import AppendBatch
    from meshgate.brokers.nats._broker import NatsBroker
    from meshgate.brokers.nats._consumer import ConsumerHost, NatsDurableConsumer

__all__ = ["NatsBrokerStats", "NatsState", "too_old"]

logger = logging.getLogger(__name__)


def _redact(url: str) -> str:
    """``url`` without a password or token (``nats://user:***@host:4222``)."""
    scheme, sep, rest = url.rpartition("://")
    userinfo, at, hostport = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user}:***@{hostport}" if colon else f"{scheme}{sep}***@{hostport}"


def _server_url(nc: Client) -> str:
    """The URL of the server ``nc`` talks to, also while it connects (``connected_url`` is None
    until then, and a reconnect's server is judged as its INFO comes)."""
    url = nc.connected_url
    if url is None:
        server = getattr(nc, "_current_server", None)
        url = getattr(server, "uri", None)
    return _redact(url.geturl()) if url is not None else "?"


def too_old(nc: Client, *, reconnected: bool) -> ServerTooOldError | None:
    """The refusal of the server ``nc`` is connected to when it is older than Meshgate needs, else None."""
    version = server_version(nc)
    if not older_than(version, MINIMUM_SERVER_VERSION):
        return None
    return ServerTooOldError(
        version=version, minimum=MINIMUM_SERVER_VERSION, where=_server_url(nc), reconnected=reconnected
    )


@dataclass(slots=True, kw_only=True)
class NatsBrokerStats(AppendStats):
    """Counters of one NatsBroker."""

    # Readers that recreated their consumer (server restart, inactivity, sequence gap).
    reader_resets: int = 0


class NatsState:
    """The state of a ``NatsBroker`` (set in its ``__init__``) and its connection helpers."""

    servers: tuple[str, ...]
    settings: NatsSettings
    name: str
    stats: NatsBrokerStats
    storage: StorageHealth
    _window: float
    _max_inflight: int
    _connect_timeout: float
    _ack_timeout: float
    _reconnect_wait: float
    _durable_ack_wait: float
    # Topic, origin and partition <-> subject (`_subjects`).
    _layout: SubjectLayout
    _parse_puback: PubAckParser
    _nc: Client | None
    _jsm: JetStreamManager | None
    # The checkpoint bucket and the lease bucket, opened at first use.
    _kv: KeyValue | None
    _lease_kv: KeyValue | None
    # The fast publish path writes protocol commands into nats-py's outbound buffer.
    _fast_publish: bool
    _max_payload: int
    _reply_prefix: str
    _reply_prefix_len: int
    _next_token: int
    # Reply token -> (batch, index) of the appends waiting for their PubAck.
    _pending: dict[int, tuple[AppendBatch, int]]
    _capacity: asyncio.Event
    _idle: asyncio.Event
    _connected: asyncio.Event
    _stopping: bool
    _lock: asyncio.Lock
    _send_lock: asyncio.Lock
    _pullers: set[PullSubscription]
    _consumers: set[NatsDurableConsumer]
    _reported_disconnect: bool
    _last_error: BaseException | None
    # Why the connection last dropped, for the log and for `state_reason`.
    _drop_reason: str
    # Readers (Subscribe) pull on a connection of their own, opened at the first read: a
    # reader's burst that gets that connection dropped as a slow consumer fails no write.
    _reader: NatsBroker | None
    _reader_lock: asyncio.Lock
    _is_reader: bool
    _pull_bytes: PullBytes
    # All a durable consumer uses of this broker (see NatsDurableConsumer).
    _consumer_host: ConsumerHost
    # The INFO of the server the connection was last judged on (nats-py keeps a new one at each
    # connect), and while that server is older than Meshgate needs, the refusal of appends.
    _judged_info: object
    _too_old: ServerTooOldError | None

    if TYPE_CHECKING:
        # Of NatsBroker (lifecycle): a NatsBroker on the same servers and stream.
        def _sibling(self, name: str) -> NatsBroker: ...

    @property
    def _where(self) -> str:
        """The servers, for messages: credentials in a URL are not shown."""
        return ", ".join(_redact(url) for url in self.servers)

    async def _ready(self, wait: float | None = None) -> Client:
        """The connection to use, waiting through a reconnect for ``wait`` s (``ack_timeout``)."""
        nc = self._nc
        if nc is None:
            raise self._not_started()
        if self._stopping:
            raise BrokerUnavailableError(f"NATS broker {self.name!r} is stopping")
        if not nc.is_connected:
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
        refusal = self._too_old if nc._server_info is self._judged_info else self._judge_server(nc)
        if refusal is not None:
            raise refusal
        return nc

    def _judge_server(self, nc: Client) -> ServerTooOldError | None:
        """Whether the server the client is connected to now takes appends: after a reconnect
        (maybe to another server of a cluster) it may be older than Meshgate needs. Once per
        connect, from its reconnected callback or from the first ``_ready`` after it, whichever
        comes first: nats-py sends on a new connection before it calls the callback. Logged
        when appends stop being taken and when they are again."""
        self._judged_info = nc._server_info
        refusal = too_old(nc, reconnected=True)
        if refusal is not None and self._too_old is None:
            logger.warning("NATS %s: %s", self.name, refusal)
        elif refusal is None and self._too_old is not None:
            logger.warning(
                "NATS %s: reconnected to nats-server %s at %s: appends are taken again",
                self.name,
                server_version(nc),
                _server_url(nc),
            )
        self._too_old = refusal
        return refusal

    def _live(self, nc: Client) -> bool:
        return self._nc is nc and nc.is_connected

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

"""A NATS region whose server Meshgate runs itself: the default of a first run."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from meshgate.brokers._base import BrokerState
from meshgate.brokers.embedded._server import (
    DEFAULT_EMBEDDED_MAX_PAYLOAD,
    DEFAULT_RESTART,
    EmbeddedNats,
    EmbeddedNatsError,
    EmbeddedNatsState,
    RestartPolicy,
)
from meshgate.brokers.nats._broker import NatsBroker
from meshgate.config import NatsSettings

__all__ = ["EmbeddedNatsBroker"]

logger = logging.getLogger(__name__)

# nats-server's words when a stream's store failed to write: from then on that stream answers no
# write until the server restarts, whatever room is made meanwhile.
_STORE_FAILED = ("critical write error", "no space left on device")
# Room the data dir needs before such a server is restarted, and the least time between two restarts.
_MIN_FREE_BYTES = 8 * 1024 * 1024
_RESTART_INTERVAL_SECONDS = 10.0


class EmbeddedNatsBroker(NatsBroker):
    """A ``NatsBroker`` on an ``EmbeddedNats`` server with its data in ``data_dir/<region>``.

    ``start()`` starts the server, then connects; ``stop()`` disconnects (after in-flight
    appends), then stops the server. ``server`` is there for fault tests (``kill()``,
    ``start()`` again on the same port and data).

    The server is supervised (``restart``): one that exits by itself is started again on the
    same port and data, and the client reconnects. ``state`` is the client's, except that it
    is FAILED once the server cannot be brought back; ``state_reason`` names the server's
    trouble while it is being restarted.
    """

    def __init__(
        self,
        *,
        data_dir: Path | str,
        region: str,
        settings: NatsSettings,
        idempotency_window_seconds: float,
        host: str = "127.0.0.1",
        port: int = -1,
        max_payload: int = DEFAULT_EMBEDDED_MAX_PAYLOAD,
        max_acks_in_flight: int = 4096,
        connect_timeout: float = 5.0,
        ack_timeout: float = 5.0,
        reconnect_wait: float = 1.0,
        durable_ack_wait: float = 30.0,
        restart: RestartPolicy | None = DEFAULT_RESTART,
        monitor_host: str | None = None,
        monitor_port: int | None = -1,
    ) -> None:
        self._client_state = BrokerState.NEW
        self._client_reason = ""
        super().__init__(
            servers=(),
            settings=settings,
            idempotency_window_seconds=idempotency_window_seconds,
            max_acks_in_flight=max_acks_in_flight,
            connect_timeout=connect_timeout,
            ack_timeout=ack_timeout,
            reconnect_wait=reconnect_wait,
            durable_ack_wait=durable_ack_wait,
            name=f"meshgate-{region}",
        )
        self.region = region
        self.server = EmbeddedNats(
            data_dir=Path(data_dir) / region,
            host=host,
            port=port,
            sync_always=settings.sync_always,
            server_name=f"meshgate-{region}",
            max_payload=max_payload,
            restart=restart,
            monitor_host=monitor_host,
            monitor_port=monitor_port,
            cpus=settings.cpus or None,
        )
        self._storage_restarted = -_RESTART_INTERVAL_SECONDS

    async def _recover_storage(self) -> None:
        """Restarts the server once a store that failed to write (a full disk) has room again.

        nats-server keeps a stream whose file store hit a write error (ENOSPC) refusing every
        write, silently, until it restarts: freeing the disk is not enough. The restart is on
        the same port and data; the client reconnects by itself.
        """
        lines = self.server.log_tail(10_000)
        if not any(word in line.lower() for line in lines for word in _STORE_FAILED):
            return
        now = time.monotonic()
        if now - self._storage_restarted < _RESTART_INTERVAL_SECONDS:
            return
        try:
            free = shutil.disk_usage(self.server.data_dir).free
        except OSError:
            return
        if free < max(_MIN_FREE_BYTES, 2 * self.server.max_payload):
            return
        self._storage_restarted = now
        logger.warning(
            "embedded NATS %s: its store failed to write (%s) and %d bytes are free again; restarting it",
            self.server.server_name,
            next(line for line in reversed(lines) if any(w in line.lower() for w in _STORE_FAILED)),
            free,
        )
        try:
            await self.server.restart()
        except EmbeddedNatsError:
            logger.exception("embedded NATS %s did not come back after a restart for storage", self.region)
            raise

    @property
    def monitor_url(self) -> str:
        return self.server.monitor_url

    @property
    def state(self) -> BrokerState:
        if self.server.state is EmbeddedNatsState.FAILED and self._client_state is not BrokerState.CLOSED:
            return BrokerState.FAILED
        return self._client_state

    @state.setter
    def state(self, value: BrokerState) -> None:
        self._client_state = value

    @property
    def state_reason(self) -> str:
        server = self.server
        if server.state in (EmbeddedNatsState.RESTARTING, EmbeddedNatsState.FAILED) and server.failure:
            return f"embedded {server.state.value}: {server.failure}"
        return self._client_reason

    @state_reason.setter
    def state_reason(self, value: str) -> None:
        self._client_reason = value

    async def start(self) -> None:
        await self.server.start()
        self.servers = (self.server.url,)
        try:
            await super().start()
        except BaseException:
            await self.server.stop()
            raise

    async def stop(self) -> None:
        await super().stop()
        await self.server.stop()

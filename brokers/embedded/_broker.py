"""A NATS region whose server Meshgate runs itself: the default of a first run."""

from __future__ import annotations

from pathlib import Path

from meshgate.brokers._base import BrokerState
from meshgate.brokers.embedded._server import (
    DEFAULT_EMBEDDED_MAX_PAYLOAD,
    DEFAULT_RESTART,
    EmbeddedNats,
    EmbeddedNatsState,
    RestartPolicy,
)
from meshgate.brokers.nats._broker import NatsBroker
from meshgate.config import NatsSettings

__all__ = ["EmbeddedNatsBroker"]


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
        )

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

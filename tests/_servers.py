"""Test helpers around the real nats-server: brokers with test-friendly timeouts."""

from __future__ import annotations

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.brokers.nats import NatsBroker
from meshgate.config import NatsSettings

# Short enough that fault tests finish quickly, long enough for a loaded CI machine.
TEST_ACK_TIMEOUT = 2.0
TEST_RECONNECT_WAIT = 0.1


def make_nats_broker(
    server: EmbeddedNats,
    *,
    settings: NatsSettings | None = None,
    idempotency_window_seconds: float = 120.0,
    max_acks_in_flight: int = 4096,
    ack_timeout: float = TEST_ACK_TIMEOUT,
    durable_ack_wait: float = 5.0,
    name: str = "meshgate-test",
) -> NatsBroker:
    """A NatsBroker (not started) on ``server``."""
    return NatsBroker(
        servers=[server.url],
        settings=settings or NatsSettings(),
        idempotency_window_seconds=idempotency_window_seconds,
        max_acks_in_flight=max_acks_in_flight,
        connect_timeout=5.0,
        ack_timeout=ack_timeout,
        reconnect_wait=TEST_RECONNECT_WAIT,
        durable_ack_wait=durable_ack_wait,
        name=name,
    )

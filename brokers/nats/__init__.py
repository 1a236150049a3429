"""The NATS JetStream adapter: a region's log in one stream, written by pipelined publishes."""

from __future__ import annotations

from meshgate.brokers.nats._broker import NatsBroker, NatsBrokerStats
from meshgate.brokers.nats._consumer import NatsDurableConsumer
from meshgate.brokers.nats._errors import (
    AckTimeoutError,
    JetStreamRejectedError,
    JetStreamUnavailableError,
    MessageTooLargeError,
    NotConnectedError,
    ServerTooOldError,
)

__all__ = [
    "AckTimeoutError",
    "JetStreamRejectedError",
    "JetStreamUnavailableError",
    "MessageTooLargeError",
    "NatsBroker",
    "NatsBrokerStats",
    "NatsDurableConsumer",
    "NotConnectedError",
    "ServerTooOldError",
]

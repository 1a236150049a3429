"""The embedded broker: a real nats-server child process with JetStream, for first runs and tests."""

from __future__ import annotations

from meshgate.brokers.embedded._broker import EmbeddedNatsBroker
from meshgate.brokers.embedded._server import (
    DEFAULT_EMBEDDED_MAX_PAYLOAD,
    EmbeddedNats,
    EmbeddedNatsError,
    EmbeddedNatsState,
    RestartPolicy,
    default_cpus,
    find_nats_server,
    usable_cores,
)

__all__ = [
    "DEFAULT_EMBEDDED_MAX_PAYLOAD",
    "EmbeddedNats",
    "EmbeddedNatsBroker",
    "EmbeddedNatsError",
    "EmbeddedNatsState",
    "RestartPolicy",
    "default_cpus",
    "find_nats_server",
    "usable_cores",
]

"""Test helpers around the real brokers (nats-server, tansu): adapters with test-friendly timeouts."""

from __future__ import annotations

import socket
from typing import Any

import grpc

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.brokers.kafka import KafkaBroker
from meshgate.brokers.nats import NatsBroker
from meshgate.config import KafkaSettings, NatsSettings
from meshgate.testing import Tansu
from meshgate.v1 import replication_pb2_grpc

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


# Small enough that the contract's size test stays cheap; tansu itself has no limit.
TEST_KAFKA_MAX_MESSAGE_BYTES = 256 * 1024


def make_kafka_broker(
    server: Tansu,
    *,
    settings: KafkaSettings | None = None,
    idempotency_window_seconds: float = 120.0,
    request_timeout: float = TEST_ACK_TIMEOUT,
    max_message_bytes: int = TEST_KAFKA_MAX_MESSAGE_BYTES,
    metadata_max_age: float = 1.0,
    follow_ids: bool = True,
    name: str = "meshgate-test",
    **options: Any,
) -> KafkaBroker:
    """A KafkaBroker (not started) on ``server``, with 3 partitions per topic by default;
    ``options`` are further ``KafkaBroker`` options (bounds a test sets low)."""
    return KafkaBroker(
        bootstrap_servers=[server.bootstrap],
        settings=settings or KafkaSettings(partitions=3),
        idempotency_window_seconds=idempotency_window_seconds,
        name=name,
        connect_timeout=5.0,
        request_timeout=request_timeout,
        max_message_bytes=max_message_bytes,
        metadata_max_age=metadata_max_age,
        session_timeout=6.0,
        heartbeat_interval=0.5,
        follow_ids=follow_ids,
        **options,
    )


def free_port(*, besides: set[int] | None = None) -> int:
    """A port free on 127.0.0.1 right now (bound to port 0, read back, released), not in ``besides``.

    Released, so the kernel may hand the same number out again: ports that must differ are
    taken with one ``besides`` set (each port returned is added to it), or with ``free_ports``.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if besides is None or port not in besides:
            if besides is not None:
                besides.add(port)
            return port


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now."""
    taken: set[int] = set()
    return [free_port(besides=taken) for _ in range(n)]


async def serve_destination(servicer: replication_pb2_grpc.ReplicationServicer) -> tuple[grpc.aio.Server, int]:
    """A started gRPC server (plaintext, loopback, a free port) standing as a link's destination."""
    server = grpc.aio.server()
    replication_pb2_grpc.add_ReplicationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port

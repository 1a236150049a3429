"""Test helpers around the real brokers (nats-server, tansu): adapters with test-friendly timeouts."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.brokers.kafka import KafkaBroker
from meshgate.brokers.nats import NatsBroker
from meshgate.config import KafkaSettings, NatsSettings
from meshgate.testing import Tansu
from meshgate.v1 import replication_pb2, replication_pb2_grpc


class ConfiguredNats(EmbeddedNats):
    """An ``EmbeddedNats`` with lines of its own in the server's config: ``server`` at the top
    level (``max_pending: ...``), ``jetstream`` inside its jetstream block (``max_file_store: ...``)."""

    _JETSTREAM_BLOCK = "jetstream {\n"

    def __init__(self, *, server: str = "", jetstream: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server_lines = server
        self.jetstream_lines = jetstream

    def _config_text(self) -> str:
        text = super()._config_text()
        block = self._JETSTREAM_BLOCK
        assert block in text, "the embedded server's config has no jetstream block"
        return text.replace(block, f"{self.server_lines}{block}{self.jetstream_lines}", 1)


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


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out for port 0 and outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _worker_slice() -> range:
    """This test process's own ports: below the ephemeral range, one slice per xdist worker.

    A port the kernel picked for port 0 and that was then released is free for anyone's next
    port 0 - another worker's nats-server, tansu, gRPC server - before the process meant to
    get it binds it (CI saw a gateway's port taken that way). Ports below the ephemeral range
    are never handed out by the kernel, and the workers' slices do not overlap.
    """
    high = _ephemeral_low()
    low = max(1024, high - 12_000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    size = (high - low) // _SLICES
    start = low + (index % _SLICES) * size
    return range(start, start + size)


_SLICES = 16
_next_port: list[int] = []  # this process's cursor in its slice, set on first use


def free_port(*, besides: set[int] | None = None) -> int:
    """A port free on 127.0.0.1 right now, from this test process's own slice, not in ``besides``.

    Handed out in turn through the slice, so a port is not given twice while the slice lasts
    (hundreds of ports): a region restarted on its port, or a test's two servers, never meet.
    ``besides`` (each port returned is added to it) keeps the ports of one set apart even after
    the slice wraps around.
    """
    ports = _worker_slice()
    if not _next_port:
        # A random start: a run does not begin on the ports the last one used (a straggler may hold one).
        _next_port.append(random.randrange(len(ports)))
    for _ in range(len(ports)):
        port = ports[_next_port[0] % len(ports)]
        _next_port[0] += 1
        if besides is not None and port in besides:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or still in TIME_WAIT of an earlier test
        if besides is not None:
            besides.add(port)
        return port
    raise RuntimeError(f"no free port on 127.0.0.1 in {ports.start}-{ports.stop - 1}")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now."""
    taken: set[int] = set()
    return [free_port(besides=taken) for _ in range(n)]


class AcceptsAll(replication_pb2_grpc.ReplicationServicer):
    """A link's destination that answers every batch of raw events accepted, keeping their ids
    (``ids``, and ``calls``: each call's), after ``silent_calls`` calls it takes and never answers."""

    def __init__(self, *, silent_calls: int = 0) -> None:
        self.ids: list[str] = []
        self.calls: list[list[str]] = []
        self._silent_calls = silent_calls

    async def Replicate(
        self,
        request_iterator: AsyncIterator[replication_pb2.ReplicateRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[replication_pb2.ReplicateResponse]:
        taken: list[str] = []
        self.calls.append(taken)
        silent = len(self.calls) <= self._silent_calls
        async for req in request_iterator:
            self.ids.extend(req.raw.ids)
            taken.extend(req.raw.ids)
            if not silent:
                yield replication_pb2.ReplicateResponse(batch_id=req.batch_id, accepted=len(req.raw.ids))


async def serve_destination(servicer: replication_pb2_grpc.ReplicationServicer) -> tuple[grpc.aio.Server, int]:
    """A started gRPC server (plaintext, loopback, a free port) standing as a link's destination."""
    server = grpc.aio.server()
    replication_pb2_grpc.add_ReplicationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port

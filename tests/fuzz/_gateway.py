"""A gateway on a real nats-server, on an event loop of its own thread, for synchronous fuzz tests.

Hypothesis drives plain functions; the gateway runs in this process (so its errors land in our
log handler) but on another thread's loop, and the tests talk to it over a real gRPC channel
with raw bytes. A separate nats-py connection reads the stream back by sequence: the check that
acked events are still there does not go through the gateway's own read path.

The thread stays alive until ``stop()``: the embedded nats-server runs under a parent-death
signal, which Linux ties to the thread that started it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import grpc
import nats
from grpc_health.v1 import health_pb2

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.config import (
    BrokerKind,
    Limits,
    MeshConfig,
    NatsSettings,
    RegionConfig,
    ReplicationMode,
    RouteRule,
    SecuritySettings,
    Settings,
)
from meshgate.gateway import Gateway
from tests._health import health_stub

__all__ = ["HEALTH_SERVICES", "REGION", "STREAM", "ThreadGateway"]

T = TypeVar("T")

REGION = "here"
PEER = "there"
STREAM = "MESHGATE"
HEALTH_SERVICES = ("", "meshgate.v1.Gateway", "meshgate.v1.Replication", "meshgate.v1.Admin")
# Small enough that size limits are met by fuzzed input.
LIMITS = Limits(max_data_bytes=4096, max_attributes_bytes=2048, max_extensions=8, max_batch_events=50)


def mesh_for(server: EmbeddedNats) -> MeshConfig:
    url = urlparse(server.url)
    return MeshConfig(
        regions=(
            RegionConfig(
                name=REGION,
                kind=BrokerKind.NATS,
                brokers=(f"{url.hostname}:{url.port}",),
                gateway="127.0.0.1:0",
                nats=NatsSettings(stream=STREAM),
            ),
            # Its gateway is a port nothing listens on: Locate(all_regions) gets a quick refusal.
            RegionConfig(name=PEER, kind=BrokerKind.NATS, brokers=("127.0.0.1:1",), gateway="127.0.0.1:1"),
        ),
        routing=(
            RouteRule(index=0, topic="orders/*", regions=(REGION, PEER)),
            RouteRule(index=1, topic="inventory/>", regions=(REGION,)),
        ),
        settings=Settings(limits=LIMITS),
        # The fuzzer plays the peer region on Replicate too: what it tests is past authentication.
        security=SecuritySettings(replication=ReplicationMode.ANONYMOUS),
    )


class _Errors(logging.Handler):
    """Every ERROR record of grpc (an exception escaping a servicer) and of meshgate."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class ThreadGateway:
    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fuzz-gateway", daemon=True)
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._nc: Any = None
        self.gateway: Gateway | None = None
        self.address = ""
        self.errors = _Errors()
        self._loggers = [logging.getLogger("grpc"), logging.getLogger("meshgate")]

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        for logger in self._loggers:
            logger.addHandler(self.errors)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the fuzz gateway did not start within {timeout} s")
        if self._startup_error is not None:
            raise RuntimeError("the fuzz gateway did not start") from self._startup_error

    def stop(self, timeout: float = 60.0) -> None:
        try:
            if self._stop is not None and self._thread.is_alive():
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
        finally:
            for logger in self._loggers:
                logger.removeHandler(self.errors)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = EmbeddedNats(data_dir=self._data_dir / "nats", server_name="meshgate-fuzz")
        gateway: Gateway | None = None
        try:
            await server.start()
            gateway = Gateway(config=mesh_for(server), region=REGION, data_dir=self._data_dir, replicate=False)
            await gateway.start()
            self.gateway = gateway
            self.address = gateway.address
            self._nc = await nats.connect(server.url)
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            if gateway is not None:
                await gateway.stop(grace=1.0)
            await server.stop()
            raise
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._nc.close()
            await gateway.stop(grace=2.0)
            await server.stop()

    # --- checks ----------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Runs ``coro`` on the gateway's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stored_ids(self, sequences: list[int]) -> dict[int, str | None]:
        """The event id (``Nats-Msg-Id``) at each stream sequence, read from JetStream itself (None: not there)."""

        async def read() -> dict[int, str | None]:
            js = self._nc.jetstream()
            out: dict[int, str | None] = {}
            for seq in sequences:
                try:
                    msg = await js.get_msg(STREAM, seq)
                except nats.js.errors.NotFoundError:
                    out[seq] = None
                    continue
                stored = (msg.headers or {}).get("Nats-Msg-Id")
                # Header values are percent-encoded as the CloudEvents HTTP binding says.
                out[seq] = None if stored is None else unquote(stored)
            return out

        return self.run(read())

    def health(self, channel: grpc.Channel) -> dict[str, str]:
        stub = health_stub(channel)
        out: dict[str, str] = {}
        for service in HEALTH_SERVICES:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            out[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        return out

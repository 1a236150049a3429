"""A JetStream cluster of three real nats-server processes joined by routes, for the distributed case.

Each node listens on its own client and cluster ports (taken before the start: the routes name
them), keeps its JetStream store in its own directory, and is ready once its log says "Server
is ready"; the cluster is ready once JetStream answers (a metadata leader was elected). A node
can be killed (SIGKILL) and started again on its ports and store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Self

import nats
import nats.errors
from nats.aio.client import Client

from meshgate._process import die_with_parent
from meshgate.brokers.embedded import find_nats_server
from tests._servers import free_ports
from tests._wait import eventually

__all__ = ["NatsCluster", "NatsNode"]

_READY = b"Server is ready"
# A request to a cluster still electing its leaders: "not yet".
_NOT_YET = (nats.errors.TimeoutError, nats.errors.NoRespondersError, OSError)
_READY_TIMEOUT = 20.0


class NatsNode:
    """One nats-server of the cluster: ``name`` (its server_name), ``url``, ``kill()``, ``start()``."""

    def __init__(self, *, name: str, port: int, cluster_port: int, store: Path, routes: list[int]) -> None:
        self.name = name
        self.port = port
        self.cluster_port = cluster_port
        self.store = store
        self.routes = routes
        self.log: collections.deque[bytes] = collections.deque(maxlen=200)
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def _config(self) -> str:
        routes = ", ".join(json.dumps(f"nats-route://127.0.0.1:{p}") for p in self.routes)
        return (
            f"server_name: {json.dumps(self.name)}\n"
            f"listen: 127.0.0.1:{self.port}\n"
            f"jetstream {{ store_dir: {json.dumps(str(self.store))} }}\n"
            f"cluster {{ name: mgtest, listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}\n"
        )

    async def start(self) -> None:
        if self.running:
            return
        self.store.mkdir(parents=True, exist_ok=True)
        config = self.store.parent / f"{self.name}.conf"
        config.write_text(self._config())
        self.log.clear()
        ready = asyncio.Event()
        self._proc = await asyncio.create_subprocess_exec(
            *die_with_parent(),
            str(find_nats_server()),
            "-c",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._pump = asyncio.create_task(self._read_log(self._proc, ready))
        try:
            await asyncio.wait_for(ready.wait(), _READY_TIMEOUT)
        except TimeoutError:
            await self.kill()
            tail = b"\n".join(self.log).decode(errors="replace")
            raise RuntimeError(f"nats-server {self.name} was not ready within {_READY_TIMEOUT:g} s:\n{tail}") from None

    async def _read_log(self, proc: asyncio.subprocess.Process, ready: asyncio.Event) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            self.log.append(line.rstrip())
            if _READY in line:
                ready.set()

    async def kill(self) -> None:
        """SIGKILL: the node dies with whatever it had not written."""
        await self._end(signal.SIGKILL)

    async def stop(self) -> None:
        await self._end(signal.SIGTERM)

    async def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._pump is not None:
            await self._pump
            self._pump = None


class NatsCluster:
    """Three nodes n1..n3 under ``root``; ``async with`` starts them and waits for JetStream."""

    def __init__(self, root: Path, *, size: int = 3) -> None:
        ports = free_ports(2 * size)
        client, cluster = ports[:size], ports[size:]
        self.nodes = [
            NatsNode(
                name=f"n{i + 1}", port=client[i], cluster_port=cluster[i], store=root / f"n{i + 1}", routes=cluster
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == name)

    async def start(self) -> None:
        await asyncio.gather(*(n.start() for n in self.nodes))
        await self.wait_for_jetstream()
        await self._wait_for_peers()

    async def _wait_for_peers(self) -> None:
        """Until a stream can be placed on every node: JetStream answering is not yet all peers known."""
        nc = await nats.connect(self.urls[0], connect_timeout=2)
        config = json.dumps({"name": "READY", "subjects": ["_ready.>"], "num_replicas": len(self.nodes)}).encode()

        async def placed() -> bool:
            reply = json.loads((await nc.request("$JS.API.STREAM.CREATE.READY", config, timeout=2)).data)
            return "error" not in reply

        try:
            await eventually(placed, 30, what=f"a stream placed on all {len(self.nodes)} nodes", retry_on=_NOT_YET)
            await nc.request("$JS.API.STREAM.DELETE.READY", b"", timeout=5)
        finally:
            await nc.close()

    async def wait_for_jetstream(self) -> None:
        """Until JetStream answers through every running node (its metadata leader elected)."""
        for node in self.nodes:
            if node.running:
                nc = await nats.connect(node.url, connect_timeout=2, allow_reconnect=False)
                try:
                    await eventually(partial(_jetstream_answers, nc), 30, what=f"JetStream through {node.name}")
                finally:
                    await nc.close()

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes))

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def _jetstream_answers(nc: Client) -> bool:
    try:
        reply = await nc.request("$JS.API.INFO", b"", timeout=1)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return False
    return "error" not in json.loads(reply.data)

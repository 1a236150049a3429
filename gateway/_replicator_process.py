"""``meshgate serve --role replicator``: a region's replication links in a process apart from ingest.

Ingest and replication then use their own cores: the gateway processes (``--role gateway``)
take PublishStream, Replicate and Admin; one or more replicator processes run the links. A
replicator process is one more lease owner of its region (as a gateway replica is), so several
share a region's links through the broker, and with ``--replication-workers N`` it runs its
links in N child processes, each one more lease owner with its own broker connection. Every
process running links posts their status to the board (``replicator._board``), where the
gateways' Status and metrics read it. The process serves no gRPC; its /healthz, /readyz and
metrics are on ``--metrics HOST:PORT`` (a worker serves none: its parent does).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import threading
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry

from meshgate._lifecycle import StartStop
from meshgate.brokers import Broker, BrokerState, NatsBroker, make_broker, nats_server_urls
from meshgate.config import (
    BrokerKind,
    ConfigError,
    ConfigIssue,
    ConfigWatcher,
    MeshConfig,
    ReloadResult,
    replication_auth_issue,
)
from meshgate.gateway._auth import ReplicationGuard
from meshgate.gateway._http import HttpEndpoint
from meshgate.gateway._metrics import BrokerCollector, register_process_metrics
from meshgate.gateway._server import replication_options, stop_replication_and_below
from meshgate.gateway._workers import WorkerPool
from meshgate.replicator import BoardPoster, LinkBoard, LinkOptions, Replicator
from meshgate.replicator._metrics import BoardCollector, LinkCollector

__all__ = ["ReplicatorProcess", "ReplicatorProcessState"]

log = logging.getLogger("meshgate.replicator")

_LOOP_CHECK_SECONDS = 1.0


class ReplicatorProcessState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


def _split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def _links_broker(config: MeshConfig, region: str, *, data_dir: Path, broker_url: str | None, name: str) -> Broker:
    """The broker connection of a process that runs links only: never an embedded server of its own."""
    cfg = config.region(region)
    window = config.settings.idempotency_window_seconds
    if broker_url is not None or cfg.kind is BrokerKind.EMBEDDED:
        if broker_url is not None:
            servers = [broker_url]
        elif cfg.brokers:
            # An embedded server listening where its `brokers:` entry says: reachable from here.
            servers = nats_server_urls(cfg.brokers[:1])
        else:
            raise ConfigError(
                [
                    ConfigIssue(
                        file=str(config.source),
                        line=0,
                        column=0,
                        message=f"region {region} runs an embedded broker inside its gateway process,"
                        " which a replicator process cannot reach: give the region `kind: nats` (or"
                        " `brokers:` where the embedded server listens), or run the links in worker"
                        " processes of the gateway (--replication-workers N)",
                    )
                ]
            )
        return NatsBroker(servers=servers, settings=cfg.nats, idempotency_window_seconds=window, name=name)
    return make_broker(cfg, idempotency_window_seconds=window, data_dir=data_dir)


class ReplicatorProcess(StartStop):
    """The links of ``region`` without ingest. ``start()``/``stop()`` safe twice; ``async with`` works.

    With ``workers`` (N >= 1) the links run in N child processes it supervises and this one
    only watches them (board, metrics, health); else they run here. ``worker`` is the index
    this process has as such a child (its parent starts it with ``--worker I``).

    Shutdown order, under the one grace period: the links get the acks of batches they sent (or
    the workers drain theirs), the board note is removed, the broker client closes.
    """

    def __init__(
        self,
        *,
        config: MeshConfig,
        region: str,
        data_dir: Path = Path(".meshgate"),
        config_path: Path | None = None,
        watch_config: bool = True,
        metrics_listen: str | None = None,
        workers: int = 0,
        worker: int | None = None,
        broker: Broker | None = None,
        broker_url: str | None = None,
        registry: CollectorRegistry | None = None,
        link_options: LinkOptions | None = None,
        lease_ttl: float | None = None,
        replication_secret: str | None = None,
    ) -> None:
        config.region(region)  # raises KeyError naming the known regions
        refusal = replication_auth_issue(config, refuser=f"the replicator of region {region}")
        if refusal is not None and replication_secret is None:
            raise ConfigError([refusal])
        if workers < 0 or (workers and worker is not None):
            raise ValueError(f"a worker runs its links itself: workers must be 0 in worker {worker}, got {workers}")
        if workers and config_path is None:
            raise ValueError("replication workers read the mesh file themselves: give its path")
        self.region = region
        self.state = ReplicatorProcessState.NEW
        self._config = config
        self._config_path = config_path
        self._data_dir = data_dir
        self._watch_config = watch_config
        self._worker_count = workers
        self.worker = worker
        suffix = f"-w{worker}" if worker is not None else ""
        self.broker = broker or _links_broker(
            config, region, data_dir=data_dir, broker_url=broker_url, name=f"meshgate-{region}-replicator{suffix}"
        )
        self._broker_url = broker_url
        self.registry = registry or CollectorRegistry()
        register_process_metrics(self.registry, region=region)
        self.registry.register(BrokerCollector(region, self.broker))
        guard = ReplicationGuard(config.security, secret=replication_secret)
        options, self.tracing, _ = replication_options(config, region, base=link_options, guard=guard)
        self.replicator: Replicator | None = None
        self._poster: BoardPoster | None = None
        self.board: LinkBoard | None = None
        self.workers: WorkerPool | None = None
        if workers:
            self.board = LinkBoard(broker=self.broker, region=region, destinations=self._destinations)
            self.registry.register(BoardCollector(self.board, lambda: self.workers.pids if self.workers else []))
        else:
            self.replicator = Replicator(
                region=region,
                broker=self.broker,
                config=config,
                options=options,
                owner=f"{region}/{'w' + str(worker) + '-' if worker is not None else 'r-'}{uuid.uuid4().hex[:10]}",
                lease_ttl=lease_ttl if lease_ttl is not None else config.settings.lease_ttl_seconds,
                # This process is the links' own: no second thread and connection needed for them.
                own_thread=False,
            )
            self._poster = BoardPoster(broker=self.broker, replicator=self.replicator)
            self.registry.register(LinkCollector(self.replicator))
        self._watcher: ConfigWatcher | None = None
        if config_path is not None:
            self._watcher = ConfigWatcher(
                path=config_path,
                on_change=self._apply_config,
                poll_interval=1.0 if watch_config else 0.0,
                registry=self.registry,
                initial=config,
                region=region,
            )
        self._metrics_listen = metrics_listen
        self._http: HttpEndpoint | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_lock = asyncio.Lock()

    @property
    def owner(self) -> str | None:
        """This process's lease owner name (None when its workers own the leases)."""
        return self.replicator.owner if self.replicator is not None else None

    @property
    def http_port(self) -> int:
        return self._http.port if self._http is not None else 0

    def _destinations(self) -> list[str]:
        return [r.name for r in self._config.regions if r.name != self.region]

    def _worker_args(self) -> list[str]:
        args = ["serve", "-c", str(self._config_path), "--region", self.region, "--data-dir", str(self._data_dir)]
        args += ["--role", "replicator"]
        if self._broker_url is not None:
            args += ["--broker-url", self._broker_url]
        if not self._watch_config:
            args.append("--no-watch")
        return args

    # --- health --------------------------------------------------------------------------------

    def alive(self) -> str | None:
        """None while the process works (loop runs, broker client not given up, workers kept up)."""
        loop = self._loop
        if self.state is ReplicatorProcessState.STOPPED or loop is None:
            return f"replicator is {self.state.value}"
        ran = threading.Event()
        try:
            loop.call_soon_threadsafe(ran.set)
        except RuntimeError:
            return "the replicator's event loop is closed"
        if not ran.wait(_LOOP_CHECK_SECONDS):
            return f"the replicator's event loop did not run a callback within {_LOOP_CHECK_SECONDS:g} s (blocked?)"
        if self.broker.state is BrokerState.FAILED:
            return f"broker failed: {self.broker.state_reason or 'no reason given'}"
        return self.workers.problem() if self.workers is not None else None

    def ready(self) -> str | None:
        """None while running with the broker connected (links can read the log)."""
        if self.state is not ReplicatorProcessState.RUNNING:
            return f"replicator is {self.state.value}"
        if self.broker.state is not BrokerState.CONNECTED:
            reason = self.broker.state_reason
            return f"broker client is {self.broker.state.value}" + (f": {reason}" if reason else "")
        return None

    # --- config ----------------------------------------------------------------------------------

    async def _apply_config(self, new: MeshConfig) -> None:
        self._config = new
        if self.replicator is not None:
            await self.replicator.apply(new)
        log.info(
            "region %s: mesh config %s applied by the replicator (sha256 %s)", self.region, new.source, new.sha256[:12]
        )

    async def reload(self) -> ReloadResult:
        if self._watcher is None:
            return ReloadResult(
                applied=False, errors=("this replicator was started without a mesh file path",), sha256=""
            )
        return await self._watcher.reload()

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.state is not ReplicatorProcessState.NEW:
            return
        self.state = ReplicatorProcessState.STARTING
        self._loop = asyncio.get_running_loop()
        try:
            await self.broker.start()
            if self._metrics_listen:
                host, port = _split_hostport(self._metrics_listen)
                self._http = HttpEndpoint(
                    host=host, port=port, registry=self.registry, alive=self.alive, ready=self.ready
                )
                self._http.start()
            if self._watcher is not None:
                await self._watcher.start()
            if self.replicator is not None:
                await self.replicator.start()
            if self._poster is not None:
                await self._poster.start()
            if self._worker_count:
                self.workers = WorkerPool(count=self._worker_count, args=self._worker_args(), region=self.region)
                await self.workers.start()
            if self.board is not None:
                await self.board.start()
        except BaseException:
            await self._shutdown(grace=0.0)
            raise
        self.state = ReplicatorProcessState.RUNNING
        what = f"{self._worker_count} worker processes" if self._worker_count else f"owner {self.owner}"
        where = ""
        if self._http is not None and self._metrics_listen:
            where = f", metrics on {self._metrics_listen.rpartition(':')[0]}:{self.http_port}"
        log.info("region %s: replicator running (%s, pid %d%s)", self.region, what, os.getpid(), where)

    async def stop(self, grace: float | None = None) -> None:
        if grace is None:
            grace = self._config.settings.shutdown_grace_seconds
        await self._shutdown(grace=grace)

    async def _shutdown(self, *, grace: float) -> None:
        async with self._stop_lock:
            if self.state is ReplicatorProcessState.STOPPED:
                return
            deadline = time.monotonic() + grace
            self.state = ReplicatorProcessState.DRAINING
            http, self._http = self._http, None
            await stop_replication_and_below(
                deadline=deadline,
                replicator=self.replicator,
                workers=self.workers,
                boards=(self._poster, self.board),
                tracing=self.tracing,
                watcher=self._watcher,
                http=http,
                broker=self.broker,
            )
            self.state = ReplicatorProcessState.STOPPED
            log.info("region %s: replicator stopped", self.region)

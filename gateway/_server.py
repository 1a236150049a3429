"""A regional gateway: the gRPC servers in front of one region's broker, and their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import enum
import logging
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from meshgate._lifecycle import StartStop
from meshgate._quota import FifoQuota
from meshgate.brokers import Broker, BrokerState, make_broker
from meshgate.brokers.embedded import EmbeddedNatsBroker
from meshgate.config import (
    BrokerKind,
    ConfigError,
    ConfigWatcher,
    Limits,
    MeshConfig,
    ReloadResult,
    replication_auth_issue,
)
from meshgate.gateway._admin import AdminService
from meshgate.gateway._admission import Admission
from meshgate.gateway._auth import Authenticator, ReplicationGuard
from meshgate.gateway._budget import InflightBudget
from meshgate.gateway._connections import ConnectionGuard, plan_connections
from meshgate.gateway._console import CONSOLE_PATH, Console, latest_dead_letters
from meshgate.gateway._decode import MalformedRequestInterceptor
from meshgate.gateway._http import HttpEndpoint
from meshgate.gateway._limits import ClientRates, ClientStreams, SubscribeBuffers
from meshgate.gateway._metrics import GatewayMetrics
from meshgate.gateway._publish import GatewayService
from meshgate.gateway._replication import ReplicationService
from meshgate.gateway._workers import WorkerPool
from meshgate.observability import Tracing
from meshgate.replicator import BoardPoster, LinkBoard, LinkOptions, Replicator
from meshgate.router import Router
from meshgate.tls import ClientTls, ServerTls, TlsFiles, open_channel
from meshgate.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
)

__all__ = ["DEFAULT_LISTEN", "Gateway", "GatewayState", "replication_options", "stop_replication_and_below"]

log = logging.getLogger("meshgate.gateway")

# Where a region without `gateway:` in the mesh file listens.
DEFAULT_LISTEN = "0.0.0.0:7400"
_SERVICES = (
    gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name,
    replication_pb2.DESCRIPTOR.services_by_name["Replication"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)
# How long /healthz waits for the event loop to run a callback before calling the process stuck.
# Below the chart's probe timeouts (2 s and more), so a stuck loop fails the probe with a reason.
_LOOP_CHECK_SECONDS = 1.0
# How often the gRPC health status is brought in line with ready() (a broker that comes and goes).
_READINESS_POLL_SECONDS = 0.25
# Options that make a gateway a good network citizen: dead peers are noticed; request sizes are
# bounded by settings.limits (see _server_options).
_SERVER_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]


def _server_options(limits: Limits) -> list[tuple[str, int]]:
    """gRPC refuses larger requests and metadata itself, RESOURCE_EXHAUSTED, before anything is parsed."""
    return [
        *_SERVER_OPTIONS,
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        # Soft and hard limit alike: between the two, gRPC would refuse only some calls, at random.
        ("grpc.max_metadata_size", limits.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", limits.max_metadata_bytes),
    ]


def replication_options(
    config: MeshConfig, region: str, *, base: LinkOptions | None, guard: ReplicationGuard
) -> tuple[LinkOptions, Tracing, ClientTls | None]:
    """What a region's links send with, wherever they run: the link options, the tracer, the peer TLS.

    A replication request must fit the destination's max_message_bytes (the same mesh file);
    traces come from the OTEL_* variables; with security.ca this region's certificate is the
    client certificate to every peer; every call carries what ``guard`` sends (the secret).
    """
    # The mesh file's ack timeout, window and batch size unless the caller (a test) gives options of its own.
    options = base or LinkOptions(
        ack_timeout_seconds=config.settings.replication_ack_timeout_seconds,
        window=config.settings.replication_window,
        max_batch_events=config.settings.replication_batch_events,
    )
    options = dataclasses.replace(options, max_request_bytes=config.settings.limits.max_message_bytes)
    tracing = Tracing.from_env(region, system=_messaging_system(config.region(region).kind))
    if tracing.enabled:
        options = dataclasses.replace(options, tracing=tracing)
    peer_tls = _peer_tls(config, region)
    if peer_tls is not None:
        options = dataclasses.replace(options, tls=peer_tls)
    return dataclasses.replace(options, metadata=guard.metadata), tracing, peer_tls


async def stop_replication_and_below(
    *,
    deadline: float,
    replicator: Replicator | None,
    workers: WorkerPool | None,
    boards: tuple[BoardPoster | LinkBoard | None, ...],
    tracing: Tracing,
    watcher: ConfigWatcher | None,
    http: HttpEndpoint | None,
    broker: Broker,
) -> None:
    """The end of the fixed shutdown order, shared by a gateway and a replicator process.

    Links (here or in workers) get the acks of the batches they sent within what is left of
    the grace period (``deadline``, a ``time.monotonic()``), then the board stops, the spans of
    what just ended are flushed, and the watcher, the HTTP endpoint and the broker client close.
    """
    if replicator is not None:
        await replicator.stop(max(0.5, deadline - time.monotonic()))
    if workers is not None:
        # The workers drain their links (SIGTERM) within what is left of the grace period.
        await workers.stop(max(0.5, deadline - time.monotonic()))
    for board in boards:
        if board is not None:
            await board.stop()
    await tracing.aclose(max(1.0, deadline - time.monotonic()))
    if watcher is not None:
        await watcher.stop()
    if http is not None:
        await asyncio.to_thread(http.stop)
    await broker.stop()


def _peer_tls(config: MeshConfig, region: str) -> ClientTls | None:
    ca = config.security.ca
    if ca is None:
        return None
    tls = config.region(region).tls
    if tls is None:
        raise ValueError(
            f"region {region} has no tls: {{cert, key}} in {config.source}, and security.ca is set:"
            " every gateway serves TLS only"
        )
    return ClientTls(TlsFiles(ca=ca, cert=tls.cert, key=tls.key))


class GatewayState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


def _split_hostport(value: str) -> tuple[str, int]:
    # Not config.split_host_port: a listen address may use port 0 (any free port), which the
    # mesh file's addresses may not.
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class Gateway(StartStop):
    """One region's gateway. ``start()``/``stop()`` are safe to call twice; ``async with`` works.

    Shutdown order, under one grace period: health turns NOT_SERVING and new work is refused;
    batches already admitted finish (their broker acks arrive); the gRPC server closes the
    remaining calls; replication links get the acks of batches they sent; the broker client
    flushes and closes; an embedded broker stops last.
    """

    def __init__(
        self,
        *,
        config: MeshConfig,
        region: str,
        data_dir: Path = Path(".meshgate"),
        listen: str | None = None,
        broker: Broker | None = None,
        config_path: Path | None = None,
        watch_config: bool = True,
        metrics_listen: str | None = None,
        registry: CollectorRegistry | None = None,
        replicate: bool = True,
        link_options: LinkOptions | None = None,
        lease_ttl: float | None = None,
        replication_secret: str | None = None,
        replication_workers: int = 0,
        link_board: bool = False,
    ) -> None:
        """``replication_secret`` replaces the mesh file's security.replication_secret (``meshgate up``
        gives its own regions one per run). Raises ConfigError for a mesh of several regions whose
        replication nothing authenticates (no ca, no secret, not ``replication: anonymous``).

        ``replicate`` runs the region's links: in this process, or with ``replication_workers``
        in that many child processes (``meshgate serve --role replicator --worker I``, from the
        mesh file at ``config_path``). Without ``replicate`` they run elsewhere (``--role
        gateway``): with ``link_board``, Status and the link metrics show them from the board
        the processes running them post to (always so with workers)."""
        self._region_cfg = config.region(region)  # raises KeyError naming the known regions
        refusal = replication_auth_issue(config, refuser=f"the gateway of region {region}")
        if refusal is not None and replication_secret is None:
            raise ConfigError([refusal])
        # Who may call Replicate, and what this gateway's links send: fixed for the process.
        self.replication_guard = ReplicationGuard(config.security, secret=replication_secret)
        self.region = region
        self.state = GatewayState.NEW
        self._config = config
        self._router = Router.from_config(config)
        self.config_loaded_at = datetime.datetime.now(datetime.UTC)
        self.listen = listen or self._region_cfg.gateway or DEFAULT_LISTEN
        self._metrics_listen = metrics_listen if metrics_listen is not None else self._region_cfg.metrics
        self._data_dir = data_dir
        self.broker = broker or make_broker(
            self._region_cfg,
            idempotency_window_seconds=config.settings.idempotency_window_seconds,
            data_dir=data_dir,
        )
        self.budget = InflightBudget(config.settings.limits.max_inflight_events)
        # Events the Replicate calls hold together (see _replication.py); a reload sets its limit.
        self.replication_ingress = FifoQuota(config.settings.limits.replication_inflight_events(self._region_cfg.kind))
        self.metrics = GatewayMetrics(region=region, registry=registry or CollectorRegistry())
        self.admission = self._make_admission()
        # Client tokens (swapped whole by a reload) and the per-client limits, read from the config in force.
        self.auth = Authenticator(config.security)
        self.client_streams = ClientStreams(lambda: self.limits)
        self.client_rates = ClientRates(lambda: self.limits)
        self.subscriptions = SubscribeBuffers()
        self.metrics.subscribe_buffered.set_function(lambda: self.subscriptions.held)
        self.metrics.subscribe_buffered_bytes.set_function(lambda: self.subscriptions.held_bytes)
        self.metrics.inflight.set_function(lambda: self.budget.used)
        self.metrics.ready.set_function(lambda: 0.0 if self.ready() else 1.0)
        # Traces per gateway, from the OTEL_* variables; off (no per-event work) when none is set.
        # With security.ca: this region's certificate serves every client and, as the client
        # certificate, every peer this gateway calls (replication links, Locate).
        link_options, self.tracing, self.peer_tls = replication_options(
            config, region, base=link_options, guard=self.replication_guard
        )
        self.server_tls: ServerTls | None = None
        self.replicator: Replicator | None = None
        self._poster: BoardPoster | None = None
        self.workers: WorkerPool | None = None
        self.board: LinkBoard | None = None
        if replication_workers < 0:
            raise ValueError(f"replication_workers must be >= 0, got {replication_workers}")
        self._replication_workers = replication_workers if replicate else 0
        if self._replication_workers and (config_path is None or replication_secret is not None):
            raise ValueError(
                "replication workers read the mesh file themselves: give its path, and no replication_secret"
            )
        if replicate and not self._replication_workers:
            self.replicator = Replicator(
                region=region,
                broker=self.broker,
                config=config,
                options=link_options,
                # The mesh file's settings.lease_ttl unless the caller (a test) sets its own.
                lease_ttl=lease_ttl if lease_ttl is not None else config.settings.lease_ttl_seconds,
            )
            # What the links do is posted for the processes that run none (``--role gateway``).
            self._poster = BoardPoster(broker=self.broker, replicator=self.replicator)
        elif self._replication_workers or link_board:
            # The links run in other processes: Status and the link metrics come from the board.
            self.board = LinkBoard(broker=self.broker, region=region, destinations=self._destinations)
        # Broker connection and link figures are read from the live objects at scrape time.
        self.metrics.watch(
            broker=self.broker, replicator=self.replicator, board=self.board, board_pids=self._worker_pids
        )
        self._config_path = config_path
        self._watch_config = watch_config
        self._watcher: ConfigWatcher | None = None
        if config_path is not None:
            self._watcher = ConfigWatcher(
                path=config_path,
                on_change=self._apply_config,
                poll_interval=1.0 if watch_config else 0.0,
                registry=self.metrics.registry,
                initial=config,
                region=region,
            )
        self._server: grpc.aio.Server | None = None
        self._connections: ConnectionGuard | None = None
        self._health = health.aio.HealthServicer()
        self._http: HttpEndpoint | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readiness: asyncio.Task[None] | None = None
        self.port = 0
        self._stopped = asyncio.Event()
        self._stop_lock = asyncio.Lock()

    # --- state other parts read ------------------------------------------------------------

    @property
    def routing(self) -> tuple[MeshConfig, Router]:
        """The config and router in force, read together (a reload swaps both at once)."""
        return self._config, self._router

    @property
    def limits(self) -> Limits:
        return self._config.settings.limits

    @property
    def draining(self) -> bool:
        return self.state in (GatewayState.DRAINING, GatewayState.STOPPED)

    @property
    def http_port(self) -> int:
        """The bound port of the metrics, /healthz and /readyz endpoint (0 when it is not serving)."""
        return self._http.port if self._http is not None else 0

    def alive(self) -> str | None:
        """None while the process works (its event loop runs callbacks), else why not. /healthz; any thread.

        Draining is alive: a pod that is stopping must not be restarted for it."""
        loop = self._loop
        if self.state is GatewayState.STOPPED or loop is None:
            return f"gateway is {self.state.value}"
        ran = threading.Event()
        try:
            loop.call_soon_threadsafe(ran.set)
        except RuntimeError:
            return "the gateway's event loop is closed"
        if not ran.wait(_LOOP_CHECK_SECONDS):
            return f"the gateway's event loop did not run a callback within {_LOOP_CHECK_SECONDS:g} s (blocked?)"
        return self._broker_dead()

    def _broker_dead(self) -> str | None:
        # Workers that cannot be kept running come back only with a new process (a new pod).
        if self.workers is not None and (problem := self.workers.problem()) is not None:
            return problem
        # A broker client that gave up (an embedded server that cannot be restarted, a NATS
        # client closed by the server) comes back only with a new process.
        if self.broker.state is BrokerState.FAILED:
            return f"broker failed: {self.broker.state_reason or 'no reason given'}"
        return None

    def ready(self) -> str | None:
        """None while this gateway should get traffic, else why not. /readyz; any thread.

        Ready is what the gRPC health service reports as SERVING (started, not draining), and
        the broker client connected and able to store: a gateway whose broker is away, or out
        of room, can store nothing."""
        if self.state is not GatewayState.SERVING:
            return f"gateway is {self.state.value}"
        return self._broker_unready()

    def _broker_unready(self) -> str | None:
        broker = self.broker
        state = broker.state
        if state is not BrokerState.CONNECTED:
            reason = broker.state_reason
            return f"broker client is {state.value}: {reason}" if reason else f"broker client is {state.value}"
        # Connected is not enough: a broker out of room refuses every write until room is made.
        storage = broker.storage_problem()
        if storage is not None:
            return f"broker cannot store: {storage}"
        return None

    @property
    def address(self) -> str:
        host, _ = _split_hostport(self.listen)
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    def peer_channel(self, region: str, address: str) -> grpc.aio.Channel:
        """A channel to another region's gateway: with TLS on, it must present that region's certificate."""
        return open_channel(address, self.peer_tls, target_name=region)

    def link_statuses(self) -> list[admin_pb2.LinkStatus]:
        if self.replicator is not None:
            return self.replicator.statuses()
        return self.board.statuses() if self.board is not None else []

    def _worker_pids(self) -> list[int]:
        return self.workers.pids if self.workers is not None else []

    def _destinations(self) -> list[str]:
        return [r.name for r in self._config.regions if r.name != self.region]

    def _worker_args(self) -> list[str]:
        """The command line of a replication worker (``WorkerPool`` adds ``--worker I``)."""
        args = ["serve", "-c", str(self._config_path), "--region", self.region, "--data-dir", str(self._data_dir)]
        args += ["--role", "replicator"]
        if isinstance(self.broker, EmbeddedNatsBroker):
            # The embedded server runs in this process: the workers connect to it where it listens.
            args += ["--broker-url", self.broker.server.url]
        if self._watcher is not None and not self._watch_config:
            args.append("--no-watch")
        return args

    def _make_admission(self) -> Admission:
        # The router's own method: an admission is made again whenever the router is replaced.
        return Admission(region=self.region, limits=self.limits, route=self._router.route)

    # --- config ----------------------------------------------------------------------------

    async def _apply_config(self, new: MeshConfig) -> None:
        # The watcher has validated the file and refused changes that need a restart.
        router = Router.from_config(new)
        # One assignment each, no await between: a batch sees either the old pair or the new.
        self._config, self._router = new, router
        self.budget.set_limit(self.limits.max_inflight_events)
        self.replication_ingress.set_limit(self.limits.replication_inflight_events(self._region_cfg.kind))
        self.admission = self._make_admission()
        self.auth = Authenticator(new.security)
        self.config_loaded_at = datetime.datetime.now(datetime.UTC)
        if self.replicator is not None:
            await self.replicator.apply(new)
        log.info("region %s: mesh config %s applied (sha256 %s)", self.region, new.source, new.sha256[:12])

    async def reload(self) -> ReloadResult:
        if self._watcher is None:
            return ReloadResult(applied=False, errors=("this gateway was started without a mesh file path",), sha256="")
        return await self._watcher.reload()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self.state is not GatewayState.NEW:
            return
        self.state = GatewayState.STARTING
        self._loop = asyncio.get_running_loop()
        try:
            plan = plan_connections(self.limits, region=self.region)
            server = grpc.aio.server(
                options=[*_server_options(self.limits), *plan.server_options()],
                interceptors=[MalformedRequestInterceptor()],
            )
            gateway_pb2_grpc.add_GatewayServicer_to_server(GatewayService.for_gateway(self), server)
            admin = AdminService.for_gateway(self)
            admin_pb2_grpc.add_AdminServicer_to_server(admin, server)
            replication_pb2_grpc.add_ReplicationServicer_to_server(ReplicationService.for_gateway(self), server)
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
            reflection.enable_server_reflection((*_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
            # The ports are taken before the broker starts: a port in use is refused before any
            # broker is started or stream created. /readyz says "starting" until the end.
            self.port = self._bind(server)
            self._server = server
            if self._metrics_listen:
                host, port = _split_hostport(self._metrics_listen)
                console = Console(
                    region=self.region,
                    loop=self._loop,
                    auth=lambda: self.auth,
                    routing=lambda: self.routing,
                    link_statuses=self.link_statuses,
                    peer_channel=self.peer_channel,
                    locate=admin.locate,
                    dead_letters=lambda: latest_dead_letters(self.broker),
                )
                self._http = HttpEndpoint(
                    host=host,
                    port=port,
                    registry=self.metrics.registry,
                    alive=self.alive,
                    ready=self.ready,
                    mounts={CONSOLE_PATH: console.app},
                )
                try:
                    self._http.start()
                except OSError as exc:
                    raise OSError(
                        f"region {self.region}: cannot serve metrics on {self._metrics_listen}: {exc.strerror or exc}"
                    ) from None
                shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
                shown = f"[{shown}]" if ":" in shown else shown
                log.info(
                    "region %s: mesh console on http://%s:%d%s/", self.region, shown, self._http.port, CONSOLE_PATH
                )
            await self.broker.start()
            if self.tracing.enabled:  # an embedded broker's address is known once it runs
                self.tracing.set_broker_address(_broker_address(self.broker))
            await server.start()
            self._connections = ConnectionGuard(region=self.region, port=self.port, plan=plan)
            self._connections.start()
            log.info("region %s: %s", self.region, plan.describe())
            if self._watcher is not None:
                await self._watcher.start()
            if self.replicator is not None:
                await self.replicator.start()
            if self._poster is not None:
                await self._poster.start()
            if self._replication_workers:
                self.workers = WorkerPool(count=self._replication_workers, args=self._worker_args(), region=self.region)
                await self.workers.start()
            if self.board is not None:
                await self.board.start()
            for name in ("", *_SERVICES):
                await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        except BaseException:
            await self._shutdown(grace=0.0)
            raise
        self.state = GatewayState.SERVING
        self._readiness = asyncio.create_task(self._follow_readiness(), name=f"readiness of {self.region}")
        mode = " (TLS, client certificates of the mesh CA required)" if self.server_tls is not None else ""
        log.info("region %s: gateway serving on %s%s", self.region, self.address, mode)
        if self.replication_guard.anonymous and len(self._config.regions) > 1:
            log.warning(
                "region %s: replication is unauthenticated (security.replication: anonymous): anyone who reaches"
                " %s can write events as any region; set security.replication_secret or security.ca",
                self.region,
                self.address,
            )

    async def _follow_readiness(self) -> None:
        """Keeps the gRPC health status (and the log) in step with ready() while serving."""
        serving = True
        while self.state is GatewayState.SERVING:
            await asyncio.sleep(_READINESS_POLL_SECONDS)
            reason = self.ready()
            if (reason is None) == serving or self.state is not GatewayState.SERVING:
                continue
            serving = reason is None
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", *_SERVICES):
                await self._health.set(name, status)
            if serving:
                log.info("region %s: ready again", self.region)
            else:
                log.warning("region %s: not ready: %s", self.region, reason)

    def _bind(self, server: grpc.aio.Server) -> int:
        if self.peer_tls is not None:
            # Files read now (TlsError, an OSError, when unusable); re-read on change at handshakes.
            # Peers must show a certificate for Replicate, and gRPC Python can only require one
            # or not ask: it is required of every client.
            self.server_tls = ServerTls(self.peer_tls.files, require_client_auth=True)
        try:
            if self.server_tls is not None:
                port = server.add_secure_port(self.listen, self.server_tls.credentials())
            else:
                port = server.add_insecure_port(self.listen)
        except RuntimeError as exc:  # grpc's "Failed to bind to address ..."
            raise OSError(
                f"region {self.region}: cannot listen on {self.listen!r}: not a free HOST:PORT here ({exc})"
            ) from None
        if port == 0:
            raise OSError(f"region {self.region}: cannot listen on {self.listen} (address in use?)")
        return port

    async def stop(self, grace: float | None = None) -> None:
        if grace is None:
            grace = self._config.settings.shutdown_grace_seconds
        await self._shutdown(grace=grace)

    @property
    def shutdown_grace(self) -> float:
        """``settings.shutdown_grace`` of the config in force: the whole of a stop, in seconds."""
        return self._config.settings.shutdown_grace_seconds

    async def stop_links(self, grace: float | None = None) -> None:
        """Stops the replication links only (their sent batches acked within ``grace``); ``stop()`` then
        stops the rest. Gateways of one process (``meshgate up``) replicate to each other: stopping
        every link first, while each peer still serves, means no link sees its destination vanish."""
        if grace is None:
            grace = self._config.settings.shutdown_grace_seconds
        if self.replicator is not None and self.state is GatewayState.SERVING:
            await self.replicator.stop(max(0.5, grace))

    async def _shutdown(self, *, grace: float) -> None:
        async with self._stop_lock:
            if self.state is GatewayState.STOPPED:
                return
            deadline = time.monotonic() + grace
            self.state = GatewayState.DRAINING
            readiness, self._readiness = self._readiness, None
            if readiness is not None:
                readiness.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await readiness
            await self._health.enter_graceful_shutdown()
            # Admitted batches finish: their broker acks come back within the grace period.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.budget.wait_idle(), max(0.0, deadline - time.monotonic()))
            if self.budget.used:
                log.warning(
                    "region %s: %d events still in flight at the end of the grace period", self.region, self.budget.used
                )
            if self._server is not None:
                # Idle streams and subscriptions are cancelled; a little grace for the last acks.
                await self._server.stop(max(0.0, min(0.5, deadline - time.monotonic())))
            if self._connections is not None:
                await asyncio.to_thread(self._connections.stop)
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
            self.state = GatewayState.STOPPED
            self._stopped.set()
            log.info("region %s: gateway stopped", self.region)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def _messaging_system(kind: BrokerKind) -> str:
    """The OTel ``messaging.system`` of a region's broker kind (an embedded region runs nats-server)."""
    return "kafka" if kind is BrokerKind.KAFKA else "nats"


def _broker_address(broker: Broker) -> str | None:
    """The first address the broker client was given (NATS URLs or Kafka bootstrap servers)."""
    for attr in ("servers", "bootstrap_servers"):
        servers = getattr(broker, attr, None)
        if servers:
            return str(servers[0])
    return None

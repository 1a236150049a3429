"""A mesh of real regions on this machine: one ``meshgate serve`` process per region.

``MeshCluster`` writes a mesh file for the regions a test names (``kind: embedded`` by default,
so each gateway runs its own nats-server child with JetStream under ``<tmp>/<region>/``), with
``gateway: 127.0.0.1:<port>`` on free ports. A region named in ``kafka`` is ``kind: kafka`` on
a tansu broker (memory storage) the cluster starts on a free port. A region may run several
gateway replicas (``replicas``), each its own ``meshgate serve`` on its own port (the mesh file
names the first one's); a NATS region with replicas is ``kind: nats`` on one nats-server the
cluster starts for it (``EmbeddedNats``), which its replicas share (links under leases). A
region may sit behind a ``TcpProxy``: then the mesh file names the proxy's address (where its
peers replicate to) and the region's process listens on its real port (``--listen``), which
the test reaches directly.

No fixed ports (ports are picked by binding port 0), no sleeps for readiness (a gateway is
ready when its log says "gateway serving on"), bounded polling only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import yaml

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.testing import ServeProcess, Tansu
from meshgate.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2_grpc
from tests._replication import VARIABLE
from tests._servers import free_port, free_ports
from tests._wait import eventually
from tests.e2e._proxy import TcpProxy

__all__ = ["MeshCluster", "free_port", "free_ports", "wait_links_idle"]

T = TypeVar("T")

_PID_FILE = "nats-server.pid"
# Reconnect quickly after a restart: the default backoff grows to minutes.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def _pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a killed grandchild may wait to be reaped by init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _is_nats_server_of(pid: int, data_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"nats-server" in cmdline and str(data_dir.resolve()).encode() in cmdline


def _is_other_process(pid: int, data_dir: Path) -> bool:
    """A live pid that is not (or no longer) this data dir's nats-server: the pid was reused.

    An exiting process reads an empty cmdline before it turns zombie: that is still the
    server on its way out, not another process.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmdline != b"" and not _is_nats_server_of(pid, data_dir)


@dataclass
class Region:
    """One gateway process of a region (a region with replicas has one ``Region`` per replica)."""

    name: str
    data_dir: Path
    port: int  # where its gateway process really listens
    proxy: TcpProxy | None = None
    nats: dict[str, Any] = field(default_factory=dict)
    # Set for a Kafka region: its ``kafka:`` settings and the tansu it runs on.
    kafka: dict[str, Any] | None = None
    tansu: Tansu | None = None
    # Set for a NATS region with replicas: the nats-server they share (started by the cluster).
    shared_nats: EmbeddedNats | None = None
    replica: int = 0
    proc: ServeProcess | None = None
    # Logs of earlier incarnations (before a kill or stop), oldest first.
    history: list[str] = field(default_factory=list)
    channel: grpc.aio.Channel | None = None

    @property
    def listen(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def advertised(self) -> str:
        """The address in the mesh file: where peers replicate to (the proxy when there is one)."""
        return self.proxy.address if self.proxy is not None else self.listen


class MeshCluster:
    """N regions as separate ``meshgate serve`` processes, each with its own embedded broker.

    ``routing`` is a list of ``(pattern, [regions])``; ``proxied`` names the regions whose
    peers reach them through a ``TcpProxy`` (``cluster.proxy(name)``); ``nats`` gives extra
    per-region ``nats:`` settings (e.g. ``{"eu-central": {"max_payload": "64KiB"}}``);
    ``limits`` goes to ``settings.limits``. ``kafka`` names the regions that are ``kind: kafka``
    (each on its own tansu) with their ``kafka:`` settings (``{}`` for the defaults);
    ``replicas`` gives a region more than one gateway process (a NATS region's share one nats-server);
    ``lease_ttl`` is the mesh file's ``settings.lease_ttl`` (how soon a dead holder's links move).
    ``shared`` names further regions on a nats-server of their own (``kind: nats``), as a region with
    replicas is, so that other processes (``meshgate serve --role replicator``) reach its broker;
    ``serve_args`` adds ``meshgate serve`` options per region (e.g. ``("--role", "gateway")``).
    """

    def __init__(
        self,
        root: Path,
        regions: Sequence[str],
        routing: Sequence[tuple[str, Sequence[str]]],
        *,
        proxied: Sequence[str] = (),
        nats: Mapping[str, Mapping[str, Any]] | None = None,
        limits: Mapping[str, Any] | None = None,
        kafka: Mapping[str, Mapping[str, Any]] | None = None,
        replicas: Mapping[str, int] | None = None,
        shutdown_grace: str = "5s",
        lease_ttl: str = "3s",
        start_timeout: float = 60.0,
        shared: Sequence[str] = (),
        serve_args: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        kafka = kafka or {}
        replicas = replicas or {}
        self.serve_args = {name: tuple(a) for name, a in (serve_args or {}).items()}
        unknown = (
            set(proxied) | set(nats or {}) | set(kafka) | set(replicas) | set(shared) | set(self.serve_args)
        ) - set(regions)
        if unknown:
            raise ValueError(f"regions {sorted(unknown)} are not among {list(regions)}")
        both = set(kafka) & set(nats or {})
        if both:
            raise ValueError(f"regions {sorted(both)} are given both nats and kafka settings")
        # Replicas of an embedded region would each run their own nats-server on separate logs:
        # a NATS region with replicas runs on one nats-server of its own that they share.
        on_shared = ({name for name, n in replicas.items() if n > 1} | set(shared)) - set(kafka)
        self.root = root
        self.routing = [(pattern, list(dest)) for pattern, dest in routing]
        self.limits = dict(limits or {})
        self.shutdown_grace = shutdown_grace
        self.lease_ttl = lease_ttl
        self.start_timeout = start_timeout
        self.config_path = root / "mesh.yaml"
        self.regions: dict[str, Region] = {}
        # Replicas 1.. of a region (replica 0 is ``regions[name]``).
        self.more_replicas: dict[str, list[Region]] = {name: [] for name in regions}
        # Each gateway process its own port: free_port() alone may hand out one number twice.
        ports: set[int] = set()
        self.tansus: dict[str, Tansu] = {}
        self.shared_nats: dict[str, EmbeddedNats] = {}
        for name in regions:
            tansu = None
            shared_nats = None
            if name in kafka:
                tansu = self.tansus[name] = Tansu()
            elif name in on_shared:
                shared_nats = self.shared_nats[name] = EmbeddedNats(
                    data_dir=root / f"{name}-nats", server_name=f"{name}-shared"
                )
            for i in range(max(1, replicas.get(name, 1))):
                region = Region(
                    name=name,
                    data_dir=root / (name if i == 0 else f"{name}-r{i}"),
                    port=free_port(besides=ports),
                    nats=dict((nats or {}).get(name, {})),
                    kafka=dict(kafka[name]) if name in kafka else None,
                    tansu=tansu,
                    shared_nats=shared_nats,
                    replica=i,
                )
                if i == 0:
                    self.regions[name] = region
                else:
                    self.more_replicas[name].append(region)
        self._proxied = tuple(proxied)
        self._broker_pids: dict[str, set[int]] = {name: set() for name in regions}

    # --- the mesh file ----------------------------------------------------------------------

    def mesh_text(self) -> str:
        regions = []
        for r in self.regions.values():
            entry: dict[str, Any] = {"name": r.name, "kind": "embedded", "gateway": r.advertised}
            if r.tansu is not None:
                entry["kind"] = "kafka"
                entry["brokers"] = [r.tansu.bootstrap]
                if r.kafka:
                    entry["kafka"] = dict(r.kafka)
            elif r.shared_nats is not None:
                entry["kind"] = "nats"
                entry["brokers"] = [f"{r.shared_nats.host}:{r.shared_nats.port}"]
            if r.nats:
                entry["nats"] = dict(r.nats)
            regions.append(entry)
        # A short lease: a region restarted after a kill -9, or the surviving replica, takes the
        # dead process's links over within seconds instead of the default 10 s.
        settings: dict[str, Any] = {"shutdown_grace": self.shutdown_grace, "lease_ttl": self.lease_ttl}
        if self.limits:
            settings["limits"] = dict(self.limits)
        doc = {
            "event_mesh": {
                "regions": regions,
                "routing": [{"topic": p, "regions": d} for p, d in self.routing],
                "settings": settings,
                # Replication authenticated as in production, by the suite's secret (tests/_replication.py).
                "security": {"replication_secret": "${" + VARIABLE + "}"},
            }
        }
        return yaml.safe_dump(doc, sort_keys=False)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> Self:
        try:
            for tansu in self.tansus.values():
                await tansu.start()
            for server in self.shared_nats.values():
                await server.start()
            taken = {r.port for r in self.all_processes()}
            for name in self._proxied:
                region = self.regions[name]
                region.proxy = TcpProxy(region.listen)
                await region.proxy.start()
                # The gateways' ports are numbers nobody listens on yet: the kernel may give a
                # proxy one of them. Bind it again until it has a port of its own.
                while region.proxy.port in taken:
                    stale, region.proxy = region.proxy, TcpProxy(region.listen)
                    await region.proxy.start()
                    await stale.stop()
                taken.add(region.proxy.port)
            self.root.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(self.mesh_text())
            await asyncio.gather(*(self._spawn(r) for r in self.all_processes()))
        except BaseException:
            await self.close()
            raise
        return self

    async def _spawn(self, region: Region) -> None:
        region.data_dir.mkdir(parents=True, exist_ok=True)
        proc = ServeProcess(
            config=self.config_path,
            region=region.name,
            data_dir=region.data_dir,
            # The last --listen wins over ServeProcess's :0.
            extra=("--listen", region.listen, *self.serve_args.get(region.name, ())),
        )
        region.proc = proc
        try:
            address = await proc.start(timeout=self.start_timeout)
        except (RuntimeError, TimeoutError) as exc:
            text = proc.text()
            await proc.close()
            raise RuntimeError(f"region {region.name} did not start:\n{text[-4000:]}") from exc
        except BaseException:
            await proc.close()
            raise
        if address != region.listen:
            raise RuntimeError(f"region {region.name} serves on {address}, expected {region.listen}")
        if region.tansu is None and region.shared_nats is None:
            pid = self.broker_pid(region.name)
            if pid is not None:
                self._broker_pids[region.name].add(pid)

    def all_processes(self) -> list[Region]:
        """Every gateway process of every region (replicas included)."""
        return [r for name, first in self.regions.items() for r in (first, *self.more_replicas[name])]

    async def close(self) -> None:
        """Stops every region (SIGTERM, then SIGKILL after a bound), its broker, channels, proxies."""
        await asyncio.gather(*(self._terminate(r) for r in self.all_processes()), return_exceptions=True)
        for region in self.all_processes():
            if region.replica and region.channel is not None:
                await region.channel.close()
                region.channel = None
        for tansu in self.tansus.values():
            await tansu.stop()
        for server in self.shared_nats.values():
            await server.stop()
        for region in self.regions.values():
            for pid in list(self._broker_pids[region.name]):
                await self._reap_broker(region, pid, grace=5.0)
            if region.channel is not None:
                await region.channel.close()
                region.channel = None
            if region.proxy is not None:
                await region.proxy.stop()

    async def _terminate(self, region: Region, timeout: float = 15.0) -> None:
        proc = region.proc
        if proc is None or proc.proc is None:
            return
        if proc.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await proc.wait(timeout=timeout)
        await proc.close()

    async def _reap_broker(self, region: Region, pid: int, *, grace: float) -> None:
        """Waits for a broker pid to go; SIGKILLs it after ``grace`` (never a reused pid)."""
        deadline = time.monotonic() + grace
        while _pid_alive(pid) and not _is_other_process(pid, region.data_dir):
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
            await asyncio.sleep(0.05)
        self._broker_pids[region.name].discard(pid)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- per region ----------------------------------------------------------------------------

    def replica(self, name: str, replica: int = 0) -> Region:
        """The gateway process ``replica`` (0 = the one the mesh file names) of region ``name``."""
        if replica == 0:
            return self.regions[name]
        more = self.more_replicas[name]
        if not 0 < replica <= len(more):
            raise KeyError(f"region {name} has {len(more) + 1} replicas, no replica {replica}")
        return more[replica - 1]

    def tansu(self, name: str) -> Tansu:
        """The tansu broker of a Kafka region."""
        tansu = self.regions[name].tansu
        if tansu is None:
            raise KeyError(f"region {name} is not a Kafka region (pass kafka={{{name!r}: {{}}}})")
        return tansu

    def address(self, name: str, replica: int = 0) -> str:
        """Where the test reaches the region's gateway (directly, never through its proxy)."""
        return self.replica(name, replica).listen

    def advertised(self, name: str) -> str:
        return self.regions[name].advertised

    def proxy(self, name: str) -> TcpProxy:
        proxy = self.regions[name].proxy
        if proxy is None:
            raise KeyError(f"region {name} is not behind a proxy (pass proxied=[{name!r}])")
        return proxy

    def process(self, name: str, replica: int = 0) -> ServeProcess:
        proc = self.replica(name, replica).proc
        if proc is None:
            raise RuntimeError(f"region {name} (replica {replica}) is not started")
        return proc

    def channel(self, name: str, replica: int = 0) -> grpc.aio.Channel:
        region = self.replica(name, replica)
        if region.channel is None:
            region.channel = grpc.aio.insecure_channel(region.listen, options=_CHANNEL_OPTIONS)
        return region.channel

    def stub(self, name: str, replica: int = 0) -> gateway_pb2_grpc.GatewayAsyncStub:
        return gateway_pb2_grpc.GatewayStub(self.channel(name, replica))

    def admin(self, name: str, replica: int = 0) -> admin_pb2_grpc.AdminAsyncStub:
        return admin_pb2_grpc.AdminStub(self.channel(name, replica))

    async def status(self, name: str, timeout: float = 5.0, *, replica: int = 0) -> admin_pb2.StatusResponse:
        return await self.admin(name, replica).Status(admin_pb2.StatusRequest(), timeout=timeout)

    async def link(self, source: str, destination: str, *, replica: int = 0) -> admin_pb2.LinkStatus | None:
        """The source's link to ``destination`` from Admin.Status, None when it reports none."""
        for link in (await self.status(source, replica=replica)).links:
            if link.destination == destination:
                return link
        return None

    def pid_file(self, name: str) -> Path | None:
        """The embedded broker's pid file, found under the region's data dir."""
        found = sorted(self.regions[name].data_dir.rglob(_PID_FILE))
        if len(found) > 1:
            raise RuntimeError(f"region {name}: more than one {_PID_FILE}: {found}")
        return found[0] if found else None

    def broker_pid(self, name: str) -> int | None:
        """The pid of the region's running embedded nats-server (None when none runs)."""
        path = self.pid_file(name)
        if path is None:
            return None
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            return None
        region = self.regions[name]
        return pid if _pid_alive(pid) and _is_nats_server_of(pid, region.data_dir) else None

    async def kill9(self, name: str, *, broker_too: bool, replica: int = 0) -> None:
        """SIGKILL the region's gateway and, if asked, its embedded nats-server at the same moment.

        Without ``broker_too`` the broker is left to its own fate: it is told to stop (SIGTERM)
        by the kernel when its parent dies, and exits cleanly. Either way this returns once both
        processes are gone, so a restart never finds its data dir in use. A Kafka region's broker
        is a separate tansu process that keeps running (``broker_too`` is refused: tansu keeps
        its data in memory only, so killing it would lose every acked event, not test recovery).
        """
        region = self.replica(name, replica)
        proc = self.process(name, replica)
        if region.tansu is not None or region.shared_nats is not None:
            if broker_too:
                raise ValueError(f"region {name}'s broker is not its gateway's child (tansu, or shared by replicas)")
            proc.signal(signal.SIGKILL)
            await proc.wait(timeout=15)
            region.history.append(proc.text())
            await proc.close()
            region.proc = None
            return
        broker = self.broker_pid(name)
        if broker_too and broker is None:
            raise RuntimeError(f"region {name}: no running nats-server found under {region.data_dir}")
        if broker_too and broker is not None:
            os.kill(broker, signal.SIGKILL)
        proc.signal(signal.SIGKILL)
        await proc.wait(timeout=15)
        if broker is not None:
            await self._reap_broker(region, broker, grace=15.0)
        region.history.append(proc.text())
        await proc.close()
        region.proc = None

    async def stop(self, name: str, timeout: float = 20.0, *, replica: int = 0) -> int:
        """SIGTERM the region's gateway and wait for it (and its broker) to exit; its exit code."""
        region = self.replica(name, replica)
        proc = self.process(name, replica)
        broker = self.broker_pid(name) if region.tansu is None and region.shared_nats is None else None
        proc.signal(signal.SIGTERM)
        rc = await proc.wait(timeout=timeout)
        if broker is not None:
            await self._reap_broker(region, broker, grace=10.0)
        region.history.append(proc.text())
        await proc.close()
        region.proc = None
        return rc

    async def restart(self, name: str, *, replica: int = 0) -> None:
        """Starts the region again: same mesh file, data dir and listen port."""
        region = self.replica(name, replica)
        if region.proc is not None and region.proc.proc is not None and region.proc.proc.returncode is None:
            raise RuntimeError(f"region {name} (replica {replica}) is still running; kill9() or stop() it first")
        # The region's channel stays: it reconnects by itself (backoff capped at 0.5 s).
        await self._spawn(region)

    # --- diagnostics -----------------------------------------------------------------------------

    def logs(self, name: str) -> str:
        parts: list[str] = []
        for region in (self.regions[name], *self.more_replicas[name]):
            label = name if region.replica == 0 else f"{name} replica {region.replica}"
            parts.extend(f"--- {label}: incarnation {i + 1} ---\n{text}" for i, text in enumerate(region.history))
            if region.proc is not None:
                parts.append(f"--- {label}: current ---\n{region.proc.text()}")
        tansu = self.regions[name].tansu
        if tansu is not None:
            parts.append(f"--- {name}: tansu at {tansu.port} ({tansu.state.value}) ---\n" + "\n".join(tansu.log))
        return "\n".join(parts)

    def log_tails(self, lines: int = 40) -> str:
        out = []
        for name in self.regions:
            text = self.logs(name).splitlines()
            out.append(f"===== region {name} (last {lines} of {len(text)} log lines) =====")
            out.extend(text[-lines:])
        return "\n".join(out)


async def wait_links_idle(cluster: MeshCluster, sources: Sequence[str], timeout: float) -> None:
    """Waits until every link of every source is REPLICATING with no lag."""

    async def idle() -> bool:
        for source in sources:
            status = await cluster.status(source)
            if not status.links:
                return False
            for link in status.links:
                if link.state != admin_pb2.LINK_STATE_REPLICATING or link.lag_events != 0:
                    return False
        return True

    await eventually(idle, timeout, interval=0.2, what=f"links of {list(sources)} REPLICATING with lag 0")

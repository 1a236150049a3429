"""Replication worker processes: N children each running a replicator, supervised by their parent.

``meshgate serve --replication-workers N`` runs the region's links in N child processes, each
``meshgate serve --role replicator`` with its own broker connection, its own lease owner name
and its own cores (one Python process is one GIL). A child that exits by itself is started
again after a growing delay (``RestartPolicy``, as the embedded nats-server is); when the
restarts keep failing the pool gives up and turns FAILED, which fails the parent's /healthz so
that Kubernetes restarts the pod. The children get SIGTERM when their parent dies (setpriv's
parent-death signal), so none outlives it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from meshgate._process import die_with_parent
from meshgate.brokers.embedded import RestartPolicy

__all__ = ["DEFAULT_WORKER_RESTART", "WorkerPool", "WorkerPoolState"]

log = logging.getLogger("meshgate.workers")

# Workers come back quickly (a link's lease waits for them meanwhile) and the pool gives up only
# after many failed restarts in a short time.
DEFAULT_WORKER_RESTART = RestartPolicy(
    initial_backoff_seconds=0.2, max_backoff_seconds=10.0, max_restarts=10, window_seconds=60.0
)


class WorkerPoolState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    # A worker kept exiting: restarts did not bring it back (``failure`` says why).
    FAILED = "failed"


@dataclass(slots=True)
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    supervisor: asyncio.Task[None] | None = None
    # When this worker was (re)started, for the restart window.
    restarts: collections.deque[float] = field(default_factory=collections.deque)


class WorkerPool:
    """``count`` children ``python -m meshgate ARGS... --worker I``; ``start()``/``stop()`` safe twice.

    ``args`` is the ``meshgate`` command line of a worker without its index (the caller's
    ``serve --role replicator ...``). Their output goes where the parent's goes.
    """

    def __init__(
        self,
        *,
        count: int,
        args: Sequence[str],
        region: str,
        restart: RestartPolicy = DEFAULT_WORKER_RESTART,
    ) -> None:
        if count < 1:
            raise ValueError(f"a worker pool has at least 1 worker, got {count}")
        self.count = count
        self.args = tuple(args)
        self.region = region
        self.restart_policy = restart
        self.state = WorkerPoolState.NEW
        self.failure = ""
        # Restarts made since the start (successful or not), for the logs and tests.
        self.restarts = 0
        self._workers = [_Worker(i) for i in range(count)]

    @property
    def pids(self) -> list[int]:
        """The pids of the workers running now (by index; a worker between restarts is left out)."""
        return [w.proc.pid for w in self._workers if w.proc is not None and w.proc.returncode is None]

    def problem(self) -> str | None:
        """None while the pool works, else why not (the parent's liveness)."""
        if self.state is WorkerPoolState.FAILED:
            return f"replication workers failed: {self.failure}"
        return None

    async def start(self) -> None:
        if self.state is not WorkerPoolState.NEW:
            return
        self.state = WorkerPoolState.RUNNING
        for worker in self._workers:
            await self._spawn(worker)
            worker.supervisor = asyncio.create_task(self._supervise(worker), name=f"worker {worker.index}")

    async def _spawn(self, worker: _Worker) -> None:
        command = [*die_with_parent(), sys.executable, "-m", "meshgate", *self.args, "--worker", str(worker.index)]
        # A session of its own: a terminal's Ctrl-C reaches the parent only, which then stops the
        # workers itself (a worker given SIGINT and then the parent's SIGTERM would take the
        # second signal as "exit without draining").
        worker.proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
        )
        log.info("region %s: replication worker %d started (pid %d)", self.region, worker.index, worker.proc.pid)

    def _running(self) -> bool:
        # A method, not an inline test: the state changes across the awaits between the tests.
        return self.state is WorkerPoolState.RUNNING

    async def _supervise(self, worker: _Worker) -> None:
        while self._running():
            proc = worker.proc
            if proc is None:
                return
            code = await proc.wait()
            if not self._running():
                return
            now = time.monotonic()
            recent = worker.restarts
            while recent and now - recent[0] > self.restart_policy.window_seconds:
                recent.popleft()
            how = f"signal {-code}" if code < 0 else f"code {code}"
            if len(recent) >= self.restart_policy.max_restarts:
                self.failure = (
                    f"worker {worker.index} exited ({how}) after {len(recent)} restarts within "
                    f"{self.restart_policy.window_seconds:g} s; not restarted again"
                )
                log.error("region %s: %s", self.region, self.failure)
                self.state = WorkerPoolState.FAILED
                return
            delay = self.restart_policy.delay(len(recent))
            log.warning(
                "region %s: replication worker %d (pid %d) exited with %s; restarting in %.2f s",
                self.region,
                worker.index,
                proc.pid,
                how,
                delay,
            )
            await asyncio.sleep(delay)
            if not self._running():
                return
            recent.append(time.monotonic())
            self.restarts += 1
            try:
                await self._spawn(worker)
            except OSError as exc:
                self.failure = f"worker {worker.index} cannot be started: {exc}"
                log.exception("region %s: %s", self.region, self.failure)
                self.state = WorkerPoolState.FAILED
                return

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to every worker (each drains its links), SIGKILL to those still there after ``timeout``."""
        if self.state in (WorkerPoolState.NEW, WorkerPoolState.STOPPED, WorkerPoolState.STOPPING):
            self.state = WorkerPoolState.STOPPED if self.state is WorkerPoolState.NEW else self.state
            return
        self.state = WorkerPoolState.STOPPING
        for worker in self._workers:
            if worker.supervisor is not None:
                worker.supervisor.cancel()
        procs = [w.proc for w in self._workers if w.proc is not None and w.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(proc.wait()) for proc in procs]
        if waits:
            _, late = await asyncio.wait(waits, timeout=max(0.0, timeout))
            for proc in procs:
                if proc.returncode is None:
                    log.warning(
                        "region %s: replication worker pid %d did not stop in time; killed", self.region, proc.pid
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
            if late:
                await asyncio.wait(late, timeout=5.0)
        supervisors = [w.supervisor for w in self._workers if w.supervisor is not None]
        if supervisors:
            await asyncio.wait(supervisors, timeout=2.0)
        self.state = WorkerPoolState.STOPPED

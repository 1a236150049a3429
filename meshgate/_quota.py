"""A first-come, first-served quota of units (events, bytes) for asyncio tasks."""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["FifoQuota"]


class FifoQuota:
    """Counts units in use against a limit; waiters are served first come, first served.

    FIFO matters: a task waiting for room for a large request must not be starved by small
    ones, and the requests of one task must be granted in the order they arrived. A request
    larger than the whole limit is granted alone (when nothing else is in use), or it would
    wait forever. Granted means resumed in that order too: a request made while a granted
    waiter has not run yet queues behind it (the Kafka adapter's calls reach the producer in
    the order they took their share).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        # Waiters granted their share whose tasks have not resumed yet.
        self._granted = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def set_limit(self, limit: int) -> None:
        """A new limit (a reload); waiters that fit under a raised one are granted at once."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self._wake()

    async def wait_idle(self) -> None:
        """Returns once nothing is in use."""
        await self._idle.wait()

    def _fits(self, n: int) -> bool:
        return self.used + n <= self.limit or self.used == 0

    async def acquire(self, n: int) -> None:
        if not self._waiters and not self._granted and self._fits(n):
            self._take(n)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        # Granted at once if it fits; it still resumes after the waiters granted before it,
        # whose tasks are already scheduled (awaiting a done future would not yield).
        self._wake()
        try:
            if fut.done():
                await asyncio.sleep(0)
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._granted -= 1
                self.release(n)  # granted and cancelled in the same tick: give it back
            else:
                if entry in self._waiters:  # a release in between may have dropped it already
                    self._waiters.remove(entry)
                self._wake()
            raise
        self._granted -= 1

    def _take(self, n: int) -> None:
        self.used += n
        if n:
            self._idle.clear()

    def release(self, n: int) -> None:
        self.used -= n
        if self.used == 0:
            self._idle.set()
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if not self._fits(n):
                return
            self._waiters.popleft()
            self._take(n)
            self._granted += 1
            fut.set_result(None)

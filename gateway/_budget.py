"""A bound on events in flight: admitted, not yet acked by the broker."""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["InflightBudget"]


class InflightBudget:
    """Counts events in flight against a limit; waiters are served first come, first served.

    FIFO matters: a stream waiting for room for a large batch must not be starved by small
    ones, and batches of one stream must be admitted in the order they arrived.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Returns once nothing is in flight."""
        await self._idle.wait()

    def _fits(self, n: int) -> bool:
        # A batch larger than the whole limit still goes through alone, or it would wait forever.
        return self.used + n <= self.limit or self.used == 0

    async def acquire(self, n: int) -> None:
        if not self._waiters and self._fits(n):
            self._take(n)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted and cancelled in the same tick: give it back
            else:
                self._waiters.remove(entry)
                self._wake()
            raise

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
            fut.set_result(None)

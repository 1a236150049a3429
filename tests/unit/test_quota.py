"""FifoQuota: first come, first served, in the order its tasks resume as well as granted."""

from __future__ import annotations

import asyncio
import contextlib

from meshgate._quota import FifoQuota


async def test_a_request_made_while_a_granted_waiter_has_not_run_resumes_after_it() -> None:
    quota = FifoQuota(10)
    order: list[str] = []
    gate = asyncio.Event()
    await quota.acquire(10)  # a call holds it all

    async def take(name: str, n: int, after: asyncio.Event | None = None) -> None:
        if after is not None:
            await after.wait()
        await quota.acquire(n)
        order.append(name)  # what the Kafka adapter does next: take its turn to write

    earlier = asyncio.create_task(take("earlier", 5))
    later = asyncio.create_task(take("later", 1, gate))
    await asyncio.sleep(0)  # the earlier call waits for room, the later one for its gate
    assert len(quota._waiters) == 1
    gate.set()  # the later call runs first in the next round...
    quota.release(10)  # ...while the earlier one is granted but has not resumed
    await asyncio.wait_for(asyncio.gather(earlier, later), 5.0)
    assert order == ["earlier", "later"]
    assert quota.used == 6


async def test_a_granted_waiter_cancelled_before_it_runs_gives_its_share_back() -> None:
    quota = FifoQuota(4)
    await quota.acquire(4)
    waiter = asyncio.create_task(quota.acquire(4))
    await asyncio.sleep(0)
    quota.release(4)  # granted...
    waiter.cancel()  # ...and cancelled before it resumed
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    assert quota.used == 0 and quota._granted == 0
    await asyncio.wait_for(quota.acquire(4), 1.0)  # the fast path is open again
    assert quota.used == 4


async def test_a_raised_limit_grants_the_waiters_that_now_fit() -> None:
    quota = FifoQuota(4)
    await quota.acquire(4)
    waiter = asyncio.create_task(quota.acquire(4))
    await asyncio.sleep(0)
    assert not waiter.done()
    quota.set_limit(8)  # a reload: nothing is released, yet the waiter fits now
    await asyncio.wait_for(waiter, 5.0)
    assert quota.used == 8

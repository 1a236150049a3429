"""``meshgate up``'s one grace period: the gateways' links stop first, and each gateway then gets
what is left of its ``shutdown_grace``, not all of it again (``run_until_signalled``)."""

from __future__ import annotations

import asyncio
import os
import signal

from meshgate.cli._run import run_until_signalled
from meshgate.config import ReloadResult


class _Linked:
    """A gateway with nothing behind it whose links take ``links_take`` seconds to stop."""

    def __init__(
        self, region: str, *, shutdown_grace: float, links_take: float, steps: list[tuple[str, float]]
    ) -> None:
        self.region = region
        self.shutdown_grace = shutdown_grace
        self.links_take = links_take
        self.steps = steps
        self.grace: float | None = None

    async def start(self) -> None:
        pass

    async def stop_links(self, grace: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.steps.append((f"{self.region} links stopping", loop.time()))
        await asyncio.sleep(self.links_take)  # what its links' drain took
        self.steps.append((f"{self.region} links stopped", loop.time()))

    async def stop(self, grace: float | None = None) -> None:
        self.steps.append((f"{self.region} stopping", asyncio.get_running_loop().time()))
        self.grace = grace

    async def reload(self) -> ReloadResult:
        raise AssertionError("not reloaded in this test")


def _terminate() -> None:
    # The runner's own SIGTERM handler ends the run, as an operator's would.
    os.kill(os.getpid(), signal.SIGTERM)


async def test_each_gateway_gets_what_its_links_left_of_the_grace() -> None:
    steps: list[tuple[str, float]] = []
    a = _Linked("a", shutdown_grace=5.0, links_take=0.2, steps=steps)
    b = _Linked("b", shutdown_grace=3.0, links_take=0.3, steps=steps)
    assert await run_until_signalled([a, b], on_serving=_terminate) == 0
    names = [name for name, _ in steps]
    # Every link stops (together) before any gateway does.
    assert set(names[:2]) == {"a links stopping", "b links stopping"}
    assert set(names[2:4]) == {"a links stopped", "b links stopped"}
    assert set(names[4:]) == {"a stopping", "b stopping"}
    at = dict(steps)
    links_took = max(at["a links stopped"], at["b links stopped"]) - min(at["a links stopping"], at["b links stopping"])
    assert links_took >= 0.3
    for gw in (a, b):
        assert gw.grace is not None
        assert 0.0 <= gw.grace <= gw.shutdown_grace - links_took + 1e-6, (gw.region, gw.grace, links_took)


async def test_links_that_took_the_whole_grace_leave_none() -> None:
    steps: list[tuple[str, float]] = []
    a = _Linked("a", shutdown_grace=0.1, links_take=0.2, steps=steps)
    b = _Linked("b", shutdown_grace=0.1, links_take=0.0, steps=steps)
    assert await run_until_signalled([a, b], on_serving=_terminate) == 0
    assert (a.grace, b.grace) == (0.0, 0.0)

"""``meshgate up``'s one grace period: the gateways' links stop first, within half of it, and each
gateway then gets what is left of its ``shutdown_grace``, not all of it again (``run_until_signalled``)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Iterator

import pytest

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
        self.links_grace: float | None = None

    async def start(self) -> None:
        pass

    async def stop_links(self, grace: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.steps.append((f"{self.region} links stopping", loop.time()))
        self.links_grace = grace
        # What its links' drain took: a drain longer than its grace is cut at it, as a gateway's is.
        await asyncio.sleep(self.links_take if grace is None else min(self.links_take, grace))
        self.steps.append((f"{self.region} links stopped", loop.time()))

    async def stop(self, grace: float | None = None) -> None:
        self.steps.append((f"{self.region} stopping", asyncio.get_running_loop().time()))
        self.grace = grace

    async def reload(self) -> ReloadResult:
        raise AssertionError("not reloaded in this test")


SIGNALLED: list[float] = []


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    # run_until_signalled freezes the heap once serving; the test process's other tests keep theirs collectable.
    yield
    gc.unfreeze()


def _terminate() -> None:
    # The runner's own SIGTERM handler ends the run, as an operator's would.
    SIGNALLED.append(asyncio.get_running_loop().time())
    os.kill(os.getpid(), signal.SIGTERM)


def _check_grace(gw: _Linked, at: dict[str, float], links_took: float) -> None:
    """Each gateway gets its grace less what the links took: not all of it again, not less."""
    assert gw.links_grace == gw.shutdown_grace / 2, (gw.region, gw.links_grace)
    assert gw.grace is not None
    assert gw.grace <= gw.shutdown_grace - links_took + 1e-6, (gw.region, gw.grace, links_took)
    assert gw.grace >= gw.shutdown_grace - (at[f"{gw.region} stopping"] - SIGNALLED[-1]) - 1e-6, (gw.region, gw.grace)


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
        _check_grace(gw, at, links_took)


async def test_slow_links_leave_half_of_the_grace_to_the_gateways() -> None:
    steps: list[tuple[str, float]] = []
    a = _Linked("a", shutdown_grace=0.4, links_take=5.0, steps=steps)
    b = _Linked("b", shutdown_grace=0.4, links_take=0.0, steps=steps)
    assert await run_until_signalled([a, b], on_serving=_terminate) == 0
    at = dict(steps)
    links_took = at["a links stopped"] - at["a links stopping"]
    for gw in (a, b):
        _check_grace(gw, at, links_took)
        assert gw.grace is not None and gw.grace > 0.1, (gw.region, gw.grace)


async def test_the_start_heap_is_frozen_out_of_collections_once_every_gateway_serves() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    frozen: list[int] = []

    def serving() -> None:
        frozen.append(gc.get_freeze_count())
        _terminate()

    a = _Linked("a", shutdown_grace=1.0, links_take=0.0, steps=[])
    assert await run_until_signalled([a], on_serving=serving) == 0
    # Frozen before the gateways are said to serve: what the start made is out of full collections.
    assert frozen and frozen[0] > 0

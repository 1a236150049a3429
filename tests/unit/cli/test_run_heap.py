"""The foreground runner settles the heap once its gateways serve (``meshgate serve`` and ``up``)."""

from __future__ import annotations

import gc
import os
import signal

from meshgate.cli._run import YOUNG_GC_THRESHOLD, run_until_signalled
from meshgate.config import ReloadResult


class _Quiet:
    """A ``Served`` with nothing behind it: the runner's own steps are what is tested."""

    region = "a"

    def __init__(self) -> None:
        self.frozen_at_start: int | None = None
        self.stopped = False

    async def start(self) -> None:
        # What the gateway builds while it starts is still in the collector's view here.
        self.frozen_at_start = gc.get_freeze_count()

    async def stop(self, grace: float | None = None) -> None:
        self.stopped = True

    async def reload(self) -> ReloadResult:
        raise AssertionError("not reloaded in this test")


async def test_the_heap_is_frozen_and_young_collections_rarer_once_serving(restored_gc: None) -> None:
    served = _Quiet()
    seen: dict[str, object] = {}

    def on_serving() -> None:
        seen["frozen"] = gc.get_freeze_count()
        seen["threshold"] = gc.get_threshold()
        # The runner's own SIGTERM handler ends the run, as an operator's would.
        os.kill(os.getpid(), signal.SIGTERM)

    assert await run_until_signalled([served], on_serving=on_serving) == 0
    assert served.frozen_at_start == 0
    frozen = seen["frozen"]
    assert isinstance(frozen, int) and frozen > 1000, f"{frozen} objects frozen once serving"
    assert seen["threshold"] == (YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
    assert served.stopped

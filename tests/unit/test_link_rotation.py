"""A link holds new batches while its TLS files rotate, on both send paths.

While ``_rotating`` is set the link must not fetch (and so not send) another batch: the
connection ends once the batches in flight are acked, and anything sent meanwhile would be
cut and sent again. The raw path (tracing off, the default) once skipped that check.
A unit test with a fake consumer and call: the end-to-end rotation test finishes its load
before the rotation, so it cannot tell a held loop from one that kept sending.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshgate.brokers import RawBatch
from meshgate.replicator import Link
from tests._wait import eventually


class _Consumer:
    """Counts fetches; hands out empty batches (the loops then fetch again)."""

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch(self, max_events: int, *, timeout: float) -> list[Any]:
        self.fetches += 1
        await asyncio.sleep(0.001)
        return []

    async def fetch_raw(self, max_events: int, *, timeout: float) -> RawBatch:
        self.fetches += 1
        await asyncio.sleep(0.001)
        return RawBatch()


class _Call:
    async def write(self, request: object) -> None:  # pragma: no cover - nothing is fetched to write
        raise AssertionError("no batch should be written")


@pytest.mark.parametrize("loop", ["_send_loop", "_send_raw_loop"])
async def test_no_batch_is_fetched_while_the_tls_files_rotate(loop: str) -> None:
    link = Link(source="here", destination="there", address="127.0.0.1:1", broker=None)  # type: ignore[arg-type]
    consumer = _Consumer()
    window = asyncio.Semaphore(8)
    link._rotating = True
    task = asyncio.create_task(getattr(link, loop)(consumer, _Call(), window))
    try:
        await asyncio.sleep(0.3)
        assert consumer.fetches == 0, f"{loop} fetched {consumer.fetches} batches while the TLS files rotated"
        # The window is not held by the waiting loop: what is in flight can still be acked.
        assert window._value == 8
        link._rotating = False
        await eventually(lambda: consumer.fetches, 5, interval=0.01, what="a fetch after the rotation")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

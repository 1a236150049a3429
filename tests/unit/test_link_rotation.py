"""A link holds new batches while its TLS files rotate, with traces on or off.

While ``_rotating`` is set the link must not fetch (and so not send) another batch: the
connection ends once the batches in flight are acked, and anything sent meanwhile would be
cut and sent again. When traces chose between two send loops, one of them once skipped that
check; there is one loop now, and both settings run through it.
A unit test with a fake consumer and call: the end-to-end rotation test finishes its load
before the rotation, so it cannot tell a held loop from one that kept sending.
"""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider

from meshgate.brokers import RawBatch
from meshgate.observability import Tracing
from meshgate.replicator import Link, LinkOptions


class _Consumer:
    """Counts fetches; hands out empty batches (the loops then fetch again)."""

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch_raw(self, max_events: int, *, timeout: float) -> RawBatch:
        self.fetches += 1
        await asyncio.sleep(0.001)
        return RawBatch()


class _Call:
    async def write(self, request: object) -> None:  # pragma: no cover - nothing is fetched to write
        raise AssertionError("no batch should be written")


@pytest.mark.parametrize("traced", [False, True])
async def test_no_batch_is_fetched_while_the_tls_files_rotate(traced: bool) -> None:
    tracing = Tracing(region="here", provider=TracerProvider()) if traced else None
    options = LinkOptions(tracing=tracing)
    link = Link(
        source="here",
        destination="there",
        address="127.0.0.1:1",
        broker=None,  # type: ignore[arg-type]
        options=options,
    )
    consumer = _Consumer()
    window = asyncio.Semaphore(8)
    link._rotating = True
    task = asyncio.create_task(link._send_loop(consumer, _Call(), window))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.3)
        assert consumer.fetches == 0, f"the link fetched {consumer.fetches} batches while the TLS files rotated"
        # The window is not held by the waiting loop: what is in flight can still be acked.
        assert window._value == 8
        link._rotating = False
        async with asyncio.timeout(5):
            while consumer.fetches == 0:
                await asyncio.sleep(0.01)
    finally:
        if tracing is not None:
            tracing.shutdown()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

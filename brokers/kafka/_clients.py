"""Starting and stopping aiokafka consumers around two aiokafka 0.14 shutdown bugs.

Both show when a consumer stops at a bad moment and would raise ``CancelledError`` into a
caller that was never cancelled:

* ``stop()`` awaits a background task it has just cancelled; one cancelled before it ever ran
  raises. A consumer stopped right after its start (an empty scan) hit it, so ``start_consumer``
  lets the loop turn once after ``start()``.
* ``Fetcher.close()`` awaits its fetch tasks after cancelling them, and a fetch that was
  backing off after an error (the broker was away) re-raises the cancellation. ``stop()`` then
  returns early without closing the client's connections; ``stop_consumer`` finishes the job.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaConsumer

from meshgate.brokers.kafka._errors import KAFKA_FAILURES

__all__ = ["start_consumer", "stop_consumer"]


async def start_consumer(consumer: AIOKafkaConsumer) -> None:
    await consumer.start()
    await asyncio.sleep(0)


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stops ``consumer``; errors of an unreachable cluster are not reported (it is going away)."""
    try:
        with contextlib.suppress(*KAFKA_FAILURES):
            await consumer.stop()
        return
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    fetcher = getattr(consumer, "_fetcher", None)
    pending = [t for t in getattr(fetcher, "_pending_tasks", ()) if not t.done()]
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    client = getattr(consumer, "_client", None)
    if client is not None:
        with contextlib.suppress(*KAFKA_FAILURES):
            await client.close()

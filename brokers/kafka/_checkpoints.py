"""The Kafka adapter's checkpoints (a compacted topic, the last value per name) and its storage probe."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.structs import TopicPartition

from meshgate.brokers._base import (
    StorageFullError,
)
from meshgate.brokers._storage import PROBE_KEY
from meshgate.brokers.kafka._errors import (
    KAFKA_FAILURES,
    kafka_error,
)
from meshgate.brokers.kafka._state import KafkaState

__all__ = ["KafkaCheckpoints"]

logger = logging.getLogger(__name__)


class KafkaCheckpoints(KafkaState):
    """The checkpoints of ``KafkaBroker`` and its storage probe (a checkpoint write)."""

    def storage_problem(self) -> str | None:
        return self.storage.problem

    def _start_storage_probe(self) -> None:
        """Writes a checkpoint (not an event) until the broker stores again, or a write of an event does."""
        self.storage.start_probe(
            lambda: self.put_checkpoint(PROBE_KEY, b"%d" % self.stats.acked),
            running=lambda: not self._stopping and self._producer is not None,
        )

    async def _refresh_checkpoints(self) -> None:
        """Reads the checkpoint topic from where the last read ended (all of it the first time)."""
        probe = self._require_probe()
        tp = TopicPartition(self._names.checkpoints, 0)
        async with self._checkpoint_lock:
            end = (await probe.end_offsets([tp]))[tp]
            begin = (await probe.beginning_offsets([tp]))[tp]
            start = max(begin, self._checkpoint_next)
            async for records in self._scan({tp: (start, end)}):
                for record in records:
                    if record.key is None:
                        continue
                    name = record.key.decode("utf-8", "replace")
                    if record.value is None:
                        self._checkpoints.pop(name, None)
                    else:
                        self._checkpoints[name] = record.value
            self._checkpoint_next = max(self._checkpoint_next, end)

    async def get_checkpoint(self, name: str) -> bytes | None:
        try:
            # Read up to the end first: another replica may have written since.
            await self._refresh_checkpoints()
        except KAFKA_FAILURES as exc:
            raise kafka_error(exc, f"read checkpoint {name!r}") from exc
        return self._checkpoints.get(name)

    async def put_checkpoint(self, name: str, value: bytes) -> None:
        producer = self._require_producer()
        try:
            future = await producer.send(self._names.checkpoints, value, key=name.encode(), partition=0)
            await asyncio.wait_for(future, self._request_timeout + 1.0)
        except KAFKA_FAILURES as exc:
            error = kafka_error(exc, f"write checkpoint {name!r}")
            if isinstance(error, StorageFullError):
                self.storage.refused(str(error))
            raise error from exc
        async with self._checkpoint_lock:
            self._checkpoints[name] = value

    async def checkpoints(self, prefix: str) -> dict[str, bytes]:
        try:
            await self._refresh_checkpoints()
        except KAFKA_FAILURES as exc:
            raise kafka_error(exc, f"list checkpoints {prefix!r}") from exc
        return {name: value for name, value in self._checkpoints.items() if name.startswith(prefix)}

"""The NATS adapter's checkpoints (a KV bucket beside the stream) and the storage probe that writes there."""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import nats.js.errors
from nats.js.api import (
    KeyValueConfig,
    StorageType,
)
from nats.js.kv import KeyValue

from meshgate.brokers._base import (
    BrokerError,
    StorageFullError,
)
from meshgate.brokers._storage import PROBE_KEY
from meshgate.brokers.nats._errors import (
    NATS_FAILURES,
    broker_error,
)
from meshgate.brokers.nats._names import checkpoint_bucket, kv_stream, kv_subject_prefix
from meshgate.brokers.nats._state import NatsState

__all__ = ["NatsCheckpoints"]

logger = logging.getLogger(__name__)


class NatsCheckpoints(NatsState):
    """The checkpoints of ``NatsBroker`` and its storage probe (a write in the checkpoint bucket)."""

    @property
    def _checkpoint_bucket(self) -> str:
        return checkpoint_bucket(self.settings.stream)

    async def _checkpoints(self) -> KeyValue:
        # A KV bucket beside the stream: a few small values, last one kept, on file storage.
        if self._kv is None:
            nc = self._require_nc()
            js = nc.jetstream(timeout=self._ack_timeout)
            bucket = self._checkpoint_bucket
            try:
                self._kv = await js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                self._kv = await js.create_key_value(
                    KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE, replicas=self.settings.replicas)
                )
        return self._kv

    async def get_checkpoint(self, name: str) -> bytes | None:
        try:
            kv = await self._checkpoints()
            entry = await kv.get(name)
        except nats.js.errors.KeyNotFoundError:
            return None
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"read checkpoint {name!r}") from exc
        return entry.value

    async def put_checkpoint(self, name: str, value: bytes) -> None:
        try:
            kv = await self._checkpoints()
            await kv.put(name, value)
        except NATS_FAILURES as exc:
            error = broker_error(exc, f"write checkpoint {name!r}")
            if isinstance(error, StorageFullError):
                self.storage.refused(str(error))
            raise error from exc

    async def checkpoints(self, prefix: str) -> dict[str, bytes]:
        # The names are the subjects the bucket's stream holds, the values one direct get each.
        # Not a KV watch: nats-py's watch can signal "initial values done" while values already
        # sent are still on their way (nats-io/nats.py#842), and the listing came back short.
        bucket = self._checkpoint_bucket
        head = kv_subject_prefix(bucket)
        # A prefix that ends a token is a subject filter, any other is filtered here.
        pattern = f"{prefix}>" if prefix.endswith(".") and prefix.strip(".") else ">"
        try:
            kv = await self._checkpoints()
            info = await self._require_jsm().stream_info(kv_stream(bucket), subjects_filter=head + pattern)
            names = [s[len(head) :] for s in info.state.subjects or {} if s[len(head) :].startswith(prefix)]
            values = await asyncio.gather(*(self._checkpoint_value(kv, name) for name in names))
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"list checkpoints {prefix!r}") from exc
        return {name: value for name, value in zip(names, values, strict=True) if value is not None}

    @staticmethod
    async def _checkpoint_value(kv: KeyValue, name: str) -> bytes | None:
        try:
            entry = await kv.get(name)
        except nats.js.errors.KeyNotFoundError:  # deleted (its marker keeps the subject) or purged since
            return None
        return entry.value

    def storage_problem(self) -> str | None:
        # The server reconnected to is too old: it is not written to (readiness says why).
        too_old = self._too_old
        return self.storage.problem or (str(too_old) if too_old is not None else None)

    def _start_storage_probe(self) -> None:
        """Writes a probe (not an event) until the broker stores again, or a write of an event does."""
        self.storage.start_probe(self._probe_write, running=lambda: not self._stopping and self._nc is not None)

    async def _probe_write(self) -> None:
        try:
            await self._recover_storage()
            nc = await self._ready(wait=0.0)
            kv = await self._checkpoints()
            # Its own timeout: the probe must not wait out a reconnect longer than a write does.
            await asyncio.wait_for(kv.put(PROBE_KEY, b"%d" % nc.stats["out_msgs"]), self._ack_timeout)
        except BrokerError:
            raise
        except NATS_FAILURES as exc:
            raise broker_error(exc, "storage probe") from exc

    async def _recover_storage(self) -> None:
        """What the adapter can do itself, between probes, to make the broker store again.

        Nothing for a server run by others; ``EmbeddedNatsBroker`` restarts its own server
        once a store that failed to write (a full disk) has room again.
        """

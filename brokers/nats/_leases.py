"""The NATS adapter's leases: a KV bucket whose entries lapse unless their owner renews them."""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import nats.js.errors
from nats.js.api import (
    StorageType,
)
from nats.js.kv import KeyValue

from meshgate.brokers.nats._errors import (
    NATS_FAILURES,
    broker_error,
)
from meshgate.brokers.nats._names import kv_stream, kv_subject_prefix, lease_bucket
from meshgate.brokers.nats._state import NatsState
from meshgate.brokers.nats._ttl_bucket import ttl_bucket

__all__ = ["NatsLeases"]

logger = logging.getLogger(__name__)


class NatsLeases(NatsState):
    """The leases of ``NatsBroker``: one owner per name at a time."""

    async def _leases(self, ttl: float) -> KeyValue:
        # A KV bucket whose entries lapse after `ttl`: an owner renews (rewrites) its entry in time.
        if self._lease_kv is None:
            nc = self._require_nc()
            js = nc.jetstream(timeout=self._ack_timeout)
            self._lease_kv = await ttl_bucket(
                js,
                lease_bucket(self.settings.stream),
                ttl=ttl,
                storage=StorageType.FILE,
                replicas=self.settings.replicas,
            )
        return self._lease_kv

    async def hold_lease(self, name: str, owner: str, *, ttl: float) -> bool:
        mine = owner.encode()
        try:
            kv = await self._leases(ttl)
            try:
                entry = await kv.get(name)
            except nats.js.errors.KeyNotFoundError:  # also a deleted (released) one
                entry = None
            if entry is None or not entry.value:
                await kv.create(name, mine)
                return True
            if entry.value != mine:
                return False
            # Renewing is a conditional write: it fails if another owner took the lease meanwhile.
            await kv.update(name, mine, last=entry.revision)
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"lease {name!r}") from exc

    async def release_lease(self, name: str, owner: str) -> None:
        if self._lease_kv is None:
            return
        try:
            entry = await self._lease_kv.get(name)
            if entry.value == owner.encode():
                await self._lease_kv.delete(name, last=entry.revision)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyWrongLastSequenceError):
            return
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"release of lease {name!r}") from exc

    async def lease_holders(self, prefix: str, *, ttl: float) -> dict[str, str]:
        # The names are the subjects the bucket's stream holds (lapsed ones are gone with their
        # message), the owners one direct get each; a released lease is an empty marker.
        bucket = lease_bucket(self.settings.stream)
        head = kv_subject_prefix(bucket)
        pattern = f"{prefix}>" if prefix.endswith(".") and prefix.strip(".") else ">"
        try:
            kv = await self._leases(ttl)
            info = await self._require_jsm().stream_info(kv_stream(bucket), subjects_filter=head + pattern)
            names = [s[len(head) :] for s in info.state.subjects or {} if s[len(head) :].startswith(prefix)]
            owners = await asyncio.gather(*(_owner(kv, name) for name in names))
        except NATS_FAILURES as exc:
            raise broker_error(exc, f"list leases {prefix!r}") from exc
        return {name: owner for name, owner in zip(names, owners, strict=True) if owner}


async def _owner(kv: KeyValue, name: str) -> str:
    try:
        entry = await kv.get(name)
    except nats.js.errors.KeyNotFoundError:  # released (its marker keeps the subject) or lapsed since
        return ""
    return entry.value.decode() if entry.value else ""

"""Per-client limits: concurrent streams and a publish rate, each refusal naming its limit and numbers.

A client is its token's name, or its IP address when the mesh file has no tokens. The limits
are read from the config in force at each call, so a reload changes them for the next call.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from meshgate.config import Limits

__all__ = ["ClientRates", "ClientStreams", "SubscribeBuffer", "SubscribeBuffers"]

# Buckets of clients that have not published for a while are dropped past this many (a full bucket
# and a missing one behave the same).
_PRUNE_ABOVE = 10_000


class ClientStreams:
    """Counts each client's open PublishStream and Subscribe calls against ``max_streams_per_client``."""

    def __init__(self, limits: Callable[[], Limits]) -> None:
        self._limits = limits
        self._open: dict[str, int] = {}

    def open(self, key: str, label: str) -> str | None:
        """Takes a slot for ``key``; the refusal message when it has none left (nothing taken then)."""
        limit = self._limits().max_streams_per_client
        n = self._open.get(key, 0)
        if n >= limit:
            return (
                f"{label} already has {n} streams open (PublishStream and Subscribe calls);"
                f" max_streams_per_client is {limit}: close one, or send more batches on one stream"
            )
        self._open[key] = n + 1
        return None

    def close(self, key: str) -> None:
        n = self._open.get(key, 0) - 1
        if n > 0:
            self._open[key] = n
        else:
            self._open.pop(key, None)

    def count(self, key: str) -> int:
        return self._open.get(key, 0)


class _Bucket:
    __slots__ = ("level", "updated")

    def __init__(self, level: float, now: float) -> None:
        self.level = level
        self.updated = now


class ClientRates:
    """A token bucket per client: ``client_rate`` events/s, ``client_burst`` at once.

    A batch is let through when the bucket holds at least ``min(batch, bucket size)`` events and
    then takes the whole batch (the level may go below zero), so a batch larger than the bucket is
    not refused for ever while the average stays at the rate.
    """

    def __init__(self, limits: Callable[[], Limits], clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, label: str, n: int) -> str | None:
        """Takes ``n`` events from ``key``'s bucket; the refusal message when the rate is exceeded."""
        limits = self._limits()
        rate = limits.client_rate
        if rate <= 0 or n <= 0:
            return None
        size = limits.client_bucket
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _PRUNE_ABOVE:
                self._prune(now, rate, size)
            bucket = self._buckets[key] = _Bucket(float(size), now)
        else:
            bucket.level = min(float(size), bucket.level + (now - bucket.updated) * rate)
            bucket.updated = now
        need = min(n, size)
        if bucket.level >= need:
            bucket.level -= n
            return None
        wait = (need - bucket.level) / rate
        return (
            f"{label} is over client_rate of {rate:g} events/s (client_burst {size}): a batch of {n} events"
            f" needs {need} available, {max(0, int(bucket.level))} are; retry in {wait:.2f} s, or send less"
        )

    def _prune(self, now: float, rate: float, size: int) -> None:
        full = [k for k, b in self._buckets.items() if b.level + (now - b.updated) * rate >= size]
        for k in full:
            del self._buckets[k]


class SubscribeBuffer:
    """What one Subscribe call holds: events read from the broker and not yet taken by gRPC."""

    __slots__ = ("held", "high_water", "pattern", "sent", "waiting")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.held = 0
        self.high_water = 0
        self.sent = 0
        # True while the call waits for gRPC to take a batch (the client or the network is slow).
        self.waiting = False

    def add(self, n: int) -> None:
        self.held += n
        self.high_water = max(self.high_water, self.held)


class SubscribeBuffers:
    """The live Subscribe calls of a gateway, for ``meshgate_subscribe_buffered_events`` and tests."""

    def __init__(self) -> None:
        self.live: set[SubscribeBuffer] = set()

    def open(self, pattern: str) -> SubscribeBuffer:
        buf = SubscribeBuffer(pattern)
        self.live.add(buf)
        return buf

    def close(self, buf: SubscribeBuffer) -> None:
        self.live.discard(buf)

    @property
    def held(self) -> int:
        return sum(b.held for b in self.live)

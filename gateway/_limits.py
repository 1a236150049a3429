"""Per-client limits: concurrent streams and a publish rate, each refusal naming its limit and numbers.

A client is its token's name, or its IP address when the mesh file has no tokens. The limits
are read from the config in force at each call, so a reload changes them for the next call.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from meshgate.config import Limits

__all__ = ["ClientRates", "ClientStreams", "SubscribeBudgetError", "SubscribeBuffer", "SubscribeBuffers"]

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


class SubscribeBudgetError(Exception):
    """A Subscribe call refused: the calls open have reserved the gateway's subscribe_buffer_total_bytes."""

    retriable = True

    def __init__(self, *, calls: int, reserved: int, want: int, total: int) -> None:
        self.calls = calls
        self.reserved = reserved
        self.want = want
        self.total = total
        super().__init__(
            f"{calls} Subscribe calls hold up to {reserved} bytes ({_mib(reserved)}) of subscribe_buffer_total_bytes"
            f" {total} ({_mib(total)}), and another needs subscribe_buffer_bytes {want} ({_mib(want)}): retry later"
            " or on another replica, or read from the broker directly"
        )


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.4g} MiB"


class SubscribeBuffer:
    """What one Subscribe call holds: events read from the broker and not yet taken by gRPC."""

    __slots__ = ("held", "held_bytes", "high_water", "high_water_bytes", "pattern", "reserved_bytes", "sent", "waiting")

    def __init__(self, pattern: str, *, reserved_bytes: int = 0) -> None:
        self.pattern = pattern
        # Its share of subscribe_buffer_total_bytes, taken at open for the call's life.
        self.reserved_bytes = reserved_bytes
        self.held = 0
        self.held_bytes = 0
        self.high_water = 0
        self.high_water_bytes = 0
        self.sent = 0
        # True while the call waits for gRPC to take a batch (the client or the network is slow).
        self.waiting = False

    def add(self, n: int, size: int = 0) -> None:
        self.held += n
        self.held_bytes += size
        self.high_water = max(self.high_water, self.held)
        self.high_water_bytes = max(self.high_water_bytes, self.held_bytes)

    def drop(self, n: int, size: int = 0) -> None:
        """``n`` events of ``size`` bytes left the buffer (taken by gRPC, or the call ended)."""
        self.held -= n
        self.held_bytes -= size


class SubscribeBuffers:
    """The live Subscribe calls of a gateway, for ``meshgate_subscribe_buffered_*`` and tests.

    Each call reserves its byte bound (``subscribe_buffer_bytes``) when it opens; a call that
    would take the reservations past ``subscribe_buffer_total_bytes`` is refused, so what all
    readers of a gateway hold is bounded however many there are and however slowly they read.
    """

    def __init__(self) -> None:
        self.live: set[SubscribeBuffer] = set()
        self.reserved_bytes = 0

    def open(self, pattern: str, *, reserve_bytes: int = 0, total_bytes: int | None = None) -> SubscribeBuffer:
        """A new call's buffer; SubscribeBudgetError when ``reserve_bytes`` more would pass ``total_bytes``."""
        if total_bytes is not None and self.reserved_bytes + reserve_bytes > total_bytes:
            raise SubscribeBudgetError(
                calls=len(self.live), reserved=self.reserved_bytes, want=reserve_bytes, total=total_bytes
            )
        buf = SubscribeBuffer(pattern, reserved_bytes=reserve_bytes)
        self.live.add(buf)
        self.reserved_bytes += reserve_bytes
        return buf

    def close(self, buf: SubscribeBuffer) -> None:
        if buf in self.live:
            self.live.discard(buf)
            self.reserved_bytes -= buf.reserved_bytes

    @property
    def held(self) -> int:
        return sum(b.held for b in self.live)

    @property
    def held_bytes(self) -> int:
        return sum(b.held_bytes for b in self.live)

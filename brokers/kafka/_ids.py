"""The idempotency window of a Kafka region: event id -> where the event was stored.

Kafka has no duplicate detection by message id (its idempotent producer only covers one
producer session's own retries), so the adapter keeps the ids of the last
``idempotency_window`` seconds itself: its own writes as they are acked, and every other
replica's writes as its id follower reads them from the region's topics. A restarted gateway
rebuilds the window by reading the last window of every topic before it takes writes.

Bounded twice: entries older than the window are dropped, and past ``max_ids`` the oldest go
first, so memory stays flat under any rate (at the cost of forgetting ids early when more than
``max_ids`` events arrive within one window).
"""

from __future__ import annotations

import time

__all__ = ["IdWindow"]


class IdWindow:
    __slots__ = ("_entries", "max_ids", "window")

    def __init__(self, *, window: float, max_ids: int) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window}")
        if max_ids < 1:
            raise ValueError(f"max_ids must be >= 1, got {max_ids}")
        self.window = window
        self.max_ids = max_ids
        # id -> (stream, sequence, stored at in Unix seconds); insertion order ~ age order.
        self._entries: dict[str, tuple[str, int, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, event_id: str, *, now: float | None = None) -> tuple[str, int] | None:
        """The (stream, sequence) of ``event_id`` if it was stored within the window."""
        entry = self._entries.get(event_id)
        if entry is None:
            return None
        if entry[2] < (time.time() if now is None else now) - self.window:
            return None
        return entry[0], entry[1]

    def add(self, event_id: str, stream: str, sequence: int, stored_at: float) -> None:
        """Records where ``event_id`` was stored; the first record of an id is the one kept."""
        entries = self._entries
        if not event_id or event_id in entries:
            return
        entries[event_id] = (stream, sequence, stored_at)
        if len(entries) > self.max_ids:
            self._prune(time.time())

    def prune(self, now: float | None = None) -> None:
        self._prune(time.time() if now is None else now)

    def _prune(self, now: float) -> None:
        entries = self._entries
        horizon = now - self.window
        # Oldest first; entries from several partitions arrive slightly out of time order,
        # so this stops at the first fresh one rather than scanning everything.
        while entries:
            first = next(iter(entries))
            if entries[first][2] >= horizon and len(entries) <= self.max_ids:
                break
            del entries[first]

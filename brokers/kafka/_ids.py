"""The idempotency window of a Kafka region: event id -> where the event was stored.

Kafka has no duplicate detection by message id (its idempotent producer only covers one
producer session's own retries), so the adapter keeps the ids of the last
``idempotency_window`` seconds itself: its own writes as they are acked, and every other
replica's writes as its id follower reads them from the region's topics. A restarted gateway
rebuilds the window by reading the last window of every topic before it takes writes.

Bounded twice: entries older than the window are dropped, and past ``max_ids`` the oldest go
first (a tenth of the cap at a time, so the window holds 90-100 % of ``max_ids`` when full),
so memory stays flat under any rate (at the cost of forgetting ids early when more than
``max_ids`` events arrive within one window).

Memory: the window is the largest thing a busy Kafka gateway holds, so an entry is a
128-bit digest of the id (BLAKE2b, as an int) and one int that packs where and when the event
was stored (the stream as an index into a table of the region's streams, the sequence, the
time in milliseconds): about 135 bytes whatever the id's length, against about 180 with the
id string itself as the key (36 characters) and 245 for an id -> (stream, sequence, time) tuple.
``ENTRY_BYTES`` is that estimate, for sizing ``max_ids``.

A digest can collide, and a collision would call a new event a duplicate of another one and
drop it; at 128 bits the chance that any two of 10 million ids in a window share a digest is
about 1e-25, far below a disk's undetected error rate. A 64-bit digest would not do: a
window of 200,000 ids would meet a collision about once in 900 million windows, and that
is a lost event nobody sees.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

__all__ = ["ENTRY_BYTES", "IdWindow"]

# Approximate bytes one entry takes (the digest int, the packed int, its share of the dict),
# measured on CPython 3.11; the documentation's sizing uses it.
ENTRY_BYTES = 140

# Layout of a packed entry: sequence in the low 64 bits (a Kafka offset + 1 is below 2**63),
# the stream's index in the next 24, the stored time in milliseconds above them.
_SEQ_BITS = 64
_STREAM_BITS = 24
_TIME_SHIFT = _SEQ_BITS + _STREAM_BITS
_SEQ_MASK = (1 << _SEQ_BITS) - 1
_STREAM_MASK = (1 << _STREAM_BITS) - 1
# Past max_ids, 1/_PRUNE_SHARE of the cap is dropped at once (see _prune).
_PRUNE_SHARE = 10
_DIGEST_BYTES = 16
_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes
# Digests ``get`` computed for ids it did not know, kept for the ``add_run`` of their write (an
# append looks each id up, then adds it once acked: one digest per event, not two). Past this
# many (ids looked up and never written: refused, in doubt) the memo starts afresh.
_MAX_MEMO = 8192


def _key(event_id: str) -> int:
    """The id's window key: its 128-bit digest (see the module's note on collisions)."""
    return _from_bytes(_blake2b(event_id.encode(), digest_size=_DIGEST_BYTES).digest())


class IdWindow:
    __slots__ = ("_entries", "_memo", "_stream_index", "_streams", "max_ids", "window")

    def __init__(self, *, window: float, max_ids: int) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window}")
        if max_ids < 1:
            raise ValueError(f"max_ids must be >= 1, got {max_ids}")
        self.window = window
        self.max_ids = max_ids
        # id digest -> packed (stored at ms, stream index, sequence); insertion order ~ age order.
        self._entries: dict[int, int] = {}
        # The streams entries point at: few (one per topic-partition), shared by all entries.
        self._streams: list[str] = []
        self._stream_index: dict[str, int] = {}
        self._memo: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, event_id: str, *, now: float | None = None) -> tuple[str, int] | None:
        """The (stream, sequence) of ``event_id`` if it was stored within the window."""
        if not event_id:
            return None
        key = _key(event_id)
        packed = self._entries.get(key)
        if packed is None:
            memo = self._memo
            if len(memo) >= _MAX_MEMO:
                memo.clear()
            memo[event_id] = key
            return None
        if (packed >> _TIME_SHIFT) < ((time.time() if now is None else now) - self.window) * 1000:
            return None
        return self._streams[(packed >> _SEQ_BITS) & _STREAM_MASK], packed & _SEQ_MASK

    def add(self, event_id: str, stream: str, sequence: int, stored_at: float) -> None:
        """Records where ``event_id`` was stored; the first record of an id is the one kept."""
        entries = self._entries
        if not event_id:
            return
        key = _key(event_id)
        if key in entries:
            return
        index = self._stream_index.get(stream)
        if index is None:
            index = self._new_stream(stream)
        entries[key] = (max(0, int(stored_at * 1000)) << _TIME_SHIFT) | (index << _SEQ_BITS) | sequence
        if len(entries) > self.max_ids:
            self._prune(time.time())

    def add_run(self, event_ids: Sequence[str], stream: str, first_sequence: int, stored_at: float) -> None:
        """``add`` for ids stored one after another in ``stream`` (an acked record batch)."""
        entries = self._entries
        index = self._stream_index.get(stream)
        if index is None:
            index = self._new_stream(stream)
        head = (max(0, int(stored_at * 1000)) << _TIME_SHIFT) | (index << _SEQ_BITS)
        blake2b, from_bytes, size = _blake2b, _from_bytes, _DIGEST_BYTES
        memo = self._memo.pop
        for sequence, event_id in enumerate(event_ids, first_sequence):
            if event_id:
                key = memo(event_id, None)
                if key is None:
                    key = from_bytes(blake2b(event_id.encode(), digest_size=size).digest())
                if key not in entries:
                    entries[key] = head | sequence
        if len(entries) > self.max_ids:
            self._prune(time.time())

    def _new_stream(self, stream: str) -> int:
        if len(self._streams) > _STREAM_MASK:
            # 16.7 million topic-partitions seen by one process: start the table (and so the
            # window, whose entries point into it) afresh rather than grow without bound.
            self._entries.clear()
            self._streams.clear()
            self._stream_index.clear()
        index = self._stream_index[stream] = len(self._streams)
        self._streams.append(stream)
        return index

    def prune(self, now: float | None = None) -> None:
        self._prune(time.time() if now is None else now)

    def _prune(self, now: float) -> None:
        entries = self._entries
        horizon = (now - self.window) * 1000
        # Past the cap a tenth goes at once: the window then holds 90-100 % of max_ids. Deleting
        # one entry per add instead made each look for the oldest walk every slot deleted before
        # it (a dict keeps them until it is resized): a third of a busy Kafka gateway's CPU.
        over = 0
        if len(entries) > self.max_ids:
            over = len(entries) - (self.max_ids - self.max_ids // _PRUNE_SHARE)
        stale: list[int] = []
        # Oldest first; entries from several partitions arrive slightly out of time order,
        # so this stops at the first fresh one rather than scanning everything.
        for key, packed in entries.items():
            if len(stale) >= over and (packed >> _TIME_SHIFT) >= horizon:
                break
            stale.append(key)
        for key in stale:
            del entries[key]

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

Memory: the window is the largest thing a busy Kafka gateway holds, so it keeps no Python
object per id. An entry is a 33-byte record: a 128-bit digest of the id (BLAKE2b) and where
and when the event was stored (the sequence, the stream as an index into a table of the
region's streams, the time in milliseconds). The records live in buckets, one ``bytes`` each,
picked by the digest's hash; a look-up is one ``bytes.find`` of the digest in its bucket (the
search runs in C, over ~6-12 records when the window is full) and a check that the match
starts a record. A bucket's records are in the order they were added, and the window's age
order is an array of bucket numbers (2 bytes an entry), so the oldest entries are always at
the front of their buckets and go cheaply. A change replaces the bucket (a new ``bytes`` of
a few hundred bytes: no spare room kept). About 42 bytes an id in a full window of 200,000
(tracemalloc; ``ENTRY_BYTES``, for sizing ``max_ids``), against ~140 for a dict of the digest
as an int -> one packed int, ~180 with the id string itself as the key (36 characters) and
~245 for an id -> (stream, sequence, time) tuple. The cost is CPU: the look-up and add of an
appended event take ~0.4-0.5 us more than with that dict (1.15-1.3 us against 0.75-0.8 on a
full window, ~0.3 of it the BLAKE2b digest both compute), one add from the id follower ~0.2
us more: the bucket's list slot and object miss the cache, and an add makes a new ``bytes``
(a dropped entry too: +0.06 us an event at the cap) where the dict inserted in place.

A digest can collide, and a collision would call a new event a duplicate of another one and
drop it; at 128 bits the chance that any two of 10 million ids in a window share a digest is
about 1e-25, far below a disk's undetected error rate. A 64-bit digest would not do: a
window of 200,000 ids would meet a collision about once in 900 million windows, and that
is a lost event nobody sees.
"""

from __future__ import annotations

import hashlib
import struct
import time
from array import array
from collections.abc import Sequence
from itertools import islice

__all__ = ["ENTRY_BYTES", "IdWindow"]

# Bytes one entry takes in a full window (its record, its share of the buckets' objects and
# the list that holds them, its bucket number in the age order), measured with tracemalloc on
# CPython 3.11 at caps from 20,000 to 1,000,000; the documentation's sizing uses it.
ENTRY_BYTES = 45

# A record is the digest, then 17 bytes that read as one little-endian int: the sequence in
# the low 64 bits (a Kafka offset + 1 is at most 2**63), the stream's index in the next 24, the
# stored time in milliseconds in the top 48 (past the year 10,000; a later time is kept as
# that, so such an entry only leaves the window by the cap, as before).
_SEQ_BITS = 64
_STREAM_BITS = 24
_TIME_SHIFT = _SEQ_BITS + _STREAM_BITS
_SEQ_MASK = (1 << _SEQ_BITS) - 1
_STREAM_MASK = (1 << _STREAM_BITS) - 1
_DIGEST_BYTES = 16
_PACKED_BYTES = 17
_RECORD = _DIGEST_BYTES + _PACKED_BYTES
_TIME_AT = _DIGEST_BYTES + _TIME_SHIFT // 8
_MAX_MS = (1 << (8 * _PACKED_BYTES - _TIME_SHIFT)) - 1
# Buckets: a power of two with up to this many records each when the window is full. Fewer
# buckets search longer; more cost memory (a bucket's object, ~45 bytes, and its share of
# pymalloc's rounding) and CPU too (a larger list of buckets misses the cache more often):
# 6, 12 and 24 measured ~48, ~42 and ~39 bytes an id at 200,000 ids, 12 the fastest.
_RECORDS_PER_BUCKET = 12
# Up to 2**16 buckets the age order keeps 2-byte bucket numbers, 4-byte ones past it.
_SHORT_BUCKETS = 1 << 16
_MAX_BUCKETS = 1 << 22
# Past max_ids, 1/_PRUNE_SHARE of the cap is dropped at once (see _prune).
_PRUNE_SHARE = 10
_blake2b = hashlib.blake2b
# A record from its parts: the digest, the sequence, the stream's index and time (``_head``,
# the same for a whole run of adds).
_pack_record = struct.Struct(f"<{_DIGEST_BYTES}sQ{_PACKED_BYTES - 8}s").pack
_from_bytes = int.from_bytes
# Digests ``get`` computed for ids it did not know, kept for the ``add_run`` of their write (an
# append looks each id up, then adds it once acked: one digest per event, not two). Past this
# many (ids looked up and never written: refused, in doubt) the memo starts afresh.
_MAX_MEMO = 8192


def _bucket_count(max_ids: int) -> int:
    count = 1
    while count < _MAX_BUCKETS and count * _RECORDS_PER_BUCKET < max_ids:
        count *= 2
    return count


def _aligned(bucket: bytes, digest: bytes, at: int) -> int:
    """The first match of ``digest`` at or after ``at`` that starts a record, or -1.

    A digest's bytes can occur across two records (the end of one, the start of the next) or
    inside one; such a match is not an entry of that id, so the search goes on past it.
    """
    while at >= 0 and at % _RECORD:
        at = bucket.find(digest, at + 1)
    return at


class IdWindow:
    __slots__ = ("_buckets", "_mask", "_memo", "_order", "_stream_index", "_streams", "max_ids", "window")

    def __init__(self, *, window: float, max_ids: int) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window}")
        if max_ids < 1:
            raise ValueError(f"max_ids must be >= 1, got {max_ids}")
        self.window = window
        self.max_ids = max_ids
        count = _bucket_count(max_ids)
        self._mask = count - 1
        # Records, oldest first in each bucket; an empty bucket is the one shared b"", so a
        # window that stays empty (a links broker's) costs a pointer per bucket. Python's hash
        # of the digest picks the bucket: the window lives in one process, and it is the
        # cheapest spread of the digest's bits to a bucket number (cached in the digest).
        self._buckets: list[bytes] = [b""] * count
        # The bucket of every entry, oldest first: the window's age order.
        self._order = array("H" if count <= _SHORT_BUCKETS else "I")
        # The streams entries point at: few (one per topic-partition), shared by all entries.
        self._streams: list[str] = []
        self._stream_index: dict[str, int] = {}
        self._memo: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._order)

    def get(self, event_id: str, *, now: float | None = None) -> tuple[str, int] | None:
        """The (stream, sequence) of ``event_id`` if it was stored within the window."""
        if not event_id:
            return None
        digest = _blake2b(event_id.encode(), digest_size=_DIGEST_BYTES).digest()
        bucket = self._buckets[hash(digest) & self._mask]
        at = bucket.find(digest)
        if at > 0 and at % _RECORD:
            at = _aligned(bucket, digest, at)
        if at < 0:
            memo = self._memo
            if len(memo) >= _MAX_MEMO:
                memo.clear()
            memo[event_id] = digest
            return None
        packed = _from_bytes(bucket[at + _DIGEST_BYTES : at + _RECORD], "little")
        if (packed >> _TIME_SHIFT) < ((time.time() if now is None else now) - self.window) * 1000:
            return None
        return self._streams[(packed >> _SEQ_BITS) & _STREAM_MASK], packed & _SEQ_MASK

    def add(self, event_id: str, stream: str, sequence: int, stored_at: float) -> None:
        """Records where ``event_id`` was stored; the first record of an id is the one kept."""
        if not event_id:
            return
        # The stream first: a new one may start the window afresh (see _new_stream).
        index = self._stream_index.get(stream)
        if index is None:
            index = self._new_stream(stream)
        digest = _blake2b(event_id.encode(), digest_size=_DIGEST_BYTES).digest()
        buckets = self._buckets
        number = hash(digest) & self._mask
        bucket = buckets[number]
        at = bucket.find(digest)
        if at > 0 and at % _RECORD:
            at = _aligned(bucket, digest, at)
        if at >= 0 and not self._stale(bucket, at, stored_at):
            return
        # One add per record read by the id follower, each with its own time: packed inline.
        ms = int(stored_at * 1000)
        if not 0 <= ms <= _MAX_MS:
            ms = min(max(0, ms), _MAX_MS)
        packed = (ms << _TIME_SHIFT) | (index << _SEQ_BITS) | sequence
        record = digest + packed.to_bytes(_PACKED_BYTES, "little")
        if at >= 0:
            # Written again after its entry went stale (not yet pruned): the entry now says where.
            buckets[number] = bucket[:at] + record + bucket[at + _RECORD :]
            return
        buckets[number] = bucket + record
        order = self._order
        order.append(number)
        if len(order) > self.max_ids:
            self._prune(time.time())

    def add_run(self, event_ids: Sequence[str], stream: str, first_sequence: int, stored_at: float) -> None:
        """``add`` for ids stored one after another in ``stream`` (an acked record batch)."""
        index = self._stream_index.get(stream)
        if index is None:
            index = self._new_stream(stream)
        head = self._head(index, stored_at)
        buckets, mask, order = self._buckets, self._mask, self._order
        blake2b, size, pack, record = _blake2b, _DIGEST_BYTES, _pack_record, _RECORD
        memo = self._memo.pop
        for sequence, event_id in enumerate(event_ids, first_sequence):
            if event_id:
                digest = memo(event_id, None)
                if digest is None:
                    digest = blake2b(event_id.encode(), digest_size=size).digest()
                number = hash(digest) & mask
                bucket = buckets[number]
                at = bucket.find(digest)
                if at > 0 and at % record:
                    at = _aligned(bucket, digest, at)
                if at < 0:
                    buckets[number] = bucket + pack(digest, sequence, head)
                    order.append(number)
                elif self._stale(bucket, at, stored_at):
                    # Written again after its entry went stale (not yet pruned): it now says where.
                    buckets[number] = bucket[:at] + pack(digest, sequence, head) + bucket[at + record :]
        if len(order) > self.max_ids:
            self._prune(time.time())

    def _stale(self, bucket: bytes, at: int, stored_at: float) -> bool:
        """Whether the record at ``at`` lies more than the window before a write at ``stored_at``."""
        return _from_bytes(bucket[at + _TIME_AT : at + _RECORD], "little") < (stored_at - self.window) * 1000

    @staticmethod
    def _head(index: int, stored_at: float) -> bytes:
        """A record's stream index and time, as packed after its sequence."""
        packed = (min(max(0, int(stored_at * 1000)), _MAX_MS) << _STREAM_BITS) | index
        return packed.to_bytes(_PACKED_BYTES - 8, "little")

    def _new_stream(self, stream: str) -> int:
        if len(self._streams) > _STREAM_MASK:
            # 16.7 million topic-partitions seen by one process: start the table (and so the
            # window, whose entries point into it) afresh rather than grow without bound.
            self._buckets[:] = [b""] * len(self._buckets)
            del self._order[:]
            self._streams.clear()
            self._stream_index.clear()
        index = self._stream_index[stream] = len(self._streams)
        self._streams.append(stream)
        return index

    def prune(self, now: float | None = None) -> None:
        self._prune(time.time() if now is None else now)

    def _prune(self, now: float) -> None:
        buckets, order = self._buckets, self._order
        horizon = (now - self.window) * 1000
        # Past the cap a tenth goes at once: the window then holds 90-100 % of max_ids, and
        # the order array is shifted once per tenth, not once per add.
        over = 0
        if len(order) > self.max_ids:
            over = len(order) - (self.max_ids - self.max_ids // _PRUNE_SHARE)
        dropped = 0
        if over > 0:
            # The oldest ``over`` go whatever their time.
            for number in order[:over]:
                buckets[number] = buckets[number][_RECORD:]
            dropped = over
        # Then the stale ones, oldest first: each is the first record of its bucket. Entries
        # from several partitions arrive slightly out of time order, so this stops at the
        # first fresh one rather than scanning everything.
        for number in islice(order, dropped, None):
            bucket = buckets[number]
            if _from_bytes(bucket[_TIME_AT:_RECORD], "little") >= horizon:
                break
            buckets[number] = bucket[_RECORD:]
            dropped += 1
        del order[:dropped]

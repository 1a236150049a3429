"""The replicated events a Kafka gateway's start read, kept for the first dedup recoveries after it.

Replication dedup recovers an origin by scanning this region's log from the positions of the
origin's checkpoint entries for the origin's events (``KafkaRead.origin_sequences_after``). After
a restart that scan is mostly a second read of what the start just read: the id follower reads
the last idempotency window of every partition before the broker takes writes. A source that
had nothing to send while this region's own traffic grew the log (its entries stay where its
last call left them) made the first recovery read all that traffic again, only to find none of
its events: 50,000 records, 1.2 s before the first event of a catch-up was stored.

So while the follower reads that window, ``StartRead`` notes the origin, origin stream and
origin sequence of every record that has an origin sequence (a replicated event; a local one
has none, and costs only the look at its headers), and the range of offsets of each partition
it read whole. A recovery then takes what that range holds from here and scans only the rest
of its range: before the window (entries older than it) and after the end of the start's read.

Why that is the same answer: every record of a partition below the end of the range was in the
log when the follower fetched past it (Kafka gives an offset at the append, and a fetch returns
the records below the high watermark in order, skipping only offsets that hold no record), so
it went through ``add``; whatever is stored later, by this process or another replica, lands at
a higher offset and is scanned. What the range holds below an entry's position is a stored
event as well (a superset changes nothing: an entry accounts for its stream's events stored
below its position already). No position, no entry and no call state comes from here: only
facts read from the log.

Bounded: at most ``max_sequences`` origin sequences (8 bytes each); at that bound each
partition's range ends where the collection stopped and the rest is scanned as before. An
origin's share is dropped once a recovery used it (that recovery moves the origin's entries up
past the ranges, so the next one starts after them).
"""

from __future__ import annotations

import enum
from array import array
from collections.abc import Mapping

from aiokafka.structs import ConsumerRecord, TopicPartition

from meshgate.brokers._codec import HEADER_ORIGIN, HEADER_ORIGIN_SEQ, HEADER_ORIGIN_STREAM, unescape_header_value

__all__ = ["StartRead", "StartReadState"]

# What an array of signed 64-bit integers holds (every sequence Kafka or NATS gives).
_MAX_SEQUENCE = (1 << 63) - 1


class StartReadState(enum.Enum):
    COLLECTING = "collecting"
    # At max_sequences: each partition's range ends where collection stopped.
    FULL = "full"
    SEALED = "sealed"


class StartRead:
    """The replicated events among the records of the start's read, and the ranges it read whole."""

    __slots__ = ("_found", "_reached", "_used", "count", "covered", "max_sequences", "state")

    def __init__(self, *, max_sequences: int) -> None:
        if max_sequences < 0:
            raise ValueError(f"max_sequences must be >= 0, got {max_sequences}")
        self.max_sequences = max_sequences
        self.state = StartReadState.COLLECTING
        # Escaped origin header value -> raw origin stream header value -> origin sequences.
        self._found: dict[bytes, dict[bytes, array[int]]] = {}
        # Per partition, the offset after the last record collected.
        self._reached: dict[TopicPartition, int] = {}
        # Per partition, [first, end) offsets whose records all went through add (set by seal).
        self.covered: dict[TopicPartition, tuple[int, int]] = {}
        # Origins whose share a recovery used whole: their later recoveries scan as before.
        self._used: set[bytes] = set()
        self.count = 0

    def add(self, got: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Notes the replicated events of records read in order from each partition's first offset."""
        if self.state is not StartReadState.COLLECTING:
            return
        found = self._found
        for tp, records in got.items():
            for record in records:
                # One dict per record (C code) rather than a Python loop over its ~10 headers.
                headers = dict(record.headers)
                seq = headers.get(HEADER_ORIGIN_SEQ)
                origin = headers.get(HEADER_ORIGIN)
                if seq is None or origin is None or not seq.isdigit():
                    continue
                value = int(seq)
                if not value:
                    continue
                if self.count >= self.max_sequences or value > _MAX_SEQUENCE:
                    # This partition's range ends before this record (the scan reads it), the
                    # others' where they are.
                    self._reached[tp] = record.offset
                    self.state = StartReadState.FULL
                    return
                streams = found.get(origin)
                if streams is None:
                    streams = found[origin] = {}
                stream = headers.get(HEADER_ORIGIN_STREAM) or b""
                seqs = streams.get(stream)
                if seqs is None:
                    seqs = streams[stream] = array("q")
                seqs.append(value)
                self.count += 1
            if records:
                self._reached[tp] = records[-1].offset + 1

    def seal(self, first: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int]) -> None:
        """The read began at ``first`` of each partition and read every record up to ``ends``."""
        full = self.state is StartReadState.FULL
        for tp, begin in first.items():
            end = self._reached.get(tp, begin) if full else max(ends.get(tp, begin), begin)
            self.covered[tp] = (begin, end)
        self._reached = {}
        self.state = StartReadState.SEALED

    def offer(self, origin: bytes) -> tuple[dict[TopicPartition, tuple[int, int]], dict[str, set[int]]]:
        """For a recovery of ``origin`` (its escaped header value): the ranges read whole and the
        origin's events in them (origin stream -> origin sequences, a copy); nothing once used."""
        if self.state is not StartReadState.SEALED or origin in self._used:
            return {}, {}
        streams = self._found.get(origin, {})
        found = {unescape_header_value(name.decode("utf-8", "replace")): set(seqs) for name, seqs in streams.items()}
        return self.covered, found

    def used(self, origin: bytes) -> None:
        """A recovery of ``origin`` took its share: dropped, and not offered again."""
        self._used.add(origin)
        self._found.pop(origin, None)

"""The NATS subject layout: ``<prefix><origin>.<partition>.<topic levels>``.

Topic ``orders/created`` published in region ``us-west`` with a key that hashes to partition 3
is stored as subject ``mesh.us-west.3.orders.created`` (prefix ``mesh.``). The region's one
JetStream stream holds ``<prefix>>``, so Subscribe's sequences stay one numbering, while:

* a replication link reads only its own region's events of one partition,
  ``<prefix><region>.<partition>.>``: replicated events are stored at a destination under
  their origin's subject (origin and partition unchanged), so the destination's own links
  never read them;
* every origin of a topic is ``<prefix>*.*.orders.created`` (what Subscribe and a native
  consumer filter on); one region's own events ``<prefix>us-west.>``.

The partition is ``crc32(UTF-8 key) mod partitions`` (zlib's CRC-32, the one of gzip and
PNG), or of the event id for an event without a key: events with one key share a partition,
and each partition is sent by one replica at a time in log order, so a key keeps its order.
The partition count is a fixed property of a region's log, recorded in the stream's metadata.
"""

from __future__ import annotations

import re
import zlib

from meshgate.topics import validate_pattern, validate_topic

__all__ = [
    "LAYOUT",
    "METADATA_LAYOUT",
    "METADATA_PARTITIONS",
    "SubjectLayout",
    "partition_of",
    "partition_stream",
    "stream_partition",
]

# Recorded in the stream's metadata: a stream of another layout (or of none, Meshgate 0.1's
# `<prefix><topic>`) is refused at start instead of being read wrongly.
METADATA_LAYOUT = "meshgate_layout"
METADATA_PARTITIONS = "meshgate_partitions"
LAYOUT = "origin.partition.topic"

# A region name (the origin token): the mesh file's region names.
_ORIGIN_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_CACHE = 65_536


def partition_of(key: str | bytes, partitions: int) -> int:
    """The partition of an event key (or, for an event without one, of its id)."""
    data = key.encode() if isinstance(key, str) else key
    return zlib.crc32(data) % partitions


def partition_stream(partition: int) -> str:
    """The origin stream of a NATS region's partition, as dedup and ``EventResult`` name it: ``p3``."""
    return f"p{partition}"


def stream_partition(stream: str) -> int | None:
    """``p3`` -> 3; None for any other stream name (a Kafka region's ``<topic>/<partition>``, "")."""
    if len(stream) > 1 and stream[0] == "p" and stream[1:].isascii() and stream[1:].isdigit():
        return int(stream[1:])
    return None


class SubjectLayout:
    """Topic, origin and partition <-> subject for one region's stream, with caches.

    Validating here too (not only at admission) keeps a malformed topic or origin from ever
    reaching the wire protocol, where a space or a line break would corrupt the command: an
    invalid one raises ``ValueError`` with the reason.
    """

    __slots__ = ("_heads", "_levels", "_topics", "partitions", "prefix")

    def __init__(self, prefix: str, partitions: int) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.prefix = prefix
        self.partitions = partitions
        # topic -> its levels with dots; (origin, partition) -> "<prefix><origin>.<p>."
        self._levels: dict[str, str] = {}
        self._heads: dict[tuple[str, int], str] = {}
        # subject -> topic
        self._topics: dict[str, str] = {}

    def head(self, origin: str, partition: int) -> str:
        """``<prefix><origin>.<partition>.``: what every subject of that origin's partition starts with."""
        head = self._heads.get((origin, partition))
        if head is None:
            if _ORIGIN_RE.fullmatch(origin) is None:
                raise ValueError(f"origin {origin!r} is not a region name (1 to 64 of A-Z a-z 0-9 - _)")
            if not 0 <= partition < self.partitions:
                raise ValueError(f"partition {partition} is outside 0..{self.partitions - 1}")
            if len(self._heads) >= _MAX_CACHE:
                self._heads.clear()
            head = self._heads[(origin, partition)] = f"{self.prefix}{origin}.{partition}."
        return head

    def levels(self, topic: str) -> str:
        levels = self._levels.get(topic)
        if levels is None:
            problem = validate_topic(topic)
            if problem is not None:
                raise ValueError(problem)
            if len(self._levels) >= _MAX_CACHE:
                # Wholesale reset: cheaper than LRU bookkeeping on every hit, and rare.
                self._levels.clear()
            levels = self._levels[topic] = topic.replace("/", ".")
        return levels

    def subject(self, topic: str, origin: str, partition: int) -> str:
        return self.head(origin, partition) + self.levels(topic)

    def partition(self, key: str, event_id: str) -> int:
        """The partition of an event: of its key, else of its id."""
        return partition_of(key or event_id, self.partitions)

    def topic(self, subject: str) -> str:
        """Subject -> topic, cached: readers map every record they decode."""
        topic = self._topics.get(subject)
        if topic is None:
            prefix = self.prefix
            parts = subject[len(prefix) :].split(".", 2) if subject.startswith(prefix) else []
            if len(parts) != 3 or not parts[2]:
                raise ValueError(
                    f"subject {subject!r} is not a mesh subject"
                    f" (<prefix><origin>.<partition>.<topic>, prefix {prefix!r})"
                )
            topic = parts[2].replace(".", "/")
            if len(self._topics) >= _MAX_CACHE:
                self._topics.clear()
            self._topics[subject] = topic
        return topic

    def pattern_filter(self, pattern: str) -> str:
        """A topic pattern over every origin and partition: ``orders/*`` -> ``<prefix>*.*.orders.*``."""
        problem = validate_pattern(pattern)
        if problem is not None:
            raise ValueError(problem)
        return f"{self.prefix}*.*.{pattern.replace('/', '.')}"

    def origin_filter(self, origin: str, partition: int | None = None, pattern: str = ">") -> str:
        """One origin's events (of one partition when given) of a pattern: ``<prefix>us-west.3.>``."""
        problem = validate_pattern(pattern)
        if problem is not None:
            raise ValueError(problem)
        levels = pattern.replace("/", ".")
        if partition is None:
            self.head(origin, 0)  # validates the origin
            return f"{self.prefix}{origin}.*.{levels}"
        return self.head(origin, partition) + levels

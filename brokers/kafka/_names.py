"""Kafka names of mesh things: topics, topic patterns as regexes, streams, internal topics.

Mesh topic ``orders/created`` is Kafka topic ``<prefix>orders.created`` (the codec's mapping,
shared with NATS subjects). A Kafka topic is a mesh topic only if what follows the prefix is a
valid mesh topic: a natively created ``<prefix>x..y`` or a topic of another prefix is never
read as one.

Every topic-partition is a log of its own: its events' ``stream`` is ``<topic>/<partition>``
(``/`` never occurs in a Kafka topic name) and their ``sequence`` is the Kafka offset + 1, so
that sequences start at 1 as on every other broker: the mesh reads 0 as "none" (an event
without an origin sequence, a dedup state that has acked nothing).
"""

from __future__ import annotations

import functools
import re

from aiokafka.structs import TopicPartition

from meshgate.topics import SubjectMapper, pattern_regex, validate_pattern

__all__ = [
    "CHECKPOINT_TOPIC",
    "KafkaNames",
    "parse_stream",
    "stream_of",
]

# The mesh topic, under the prefix, that holds the gateway's checkpoints (compacted). A mesh
# topic of that name is refused in Kafka regions rather than mixed with them.
CHECKPOINT_TOPIC = "__meshgate_checkpoints"


def stream_of(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def parse_stream(stream: str) -> TopicPartition:
    """``<topic>/<partition>`` -> TopicPartition; ``ValueError`` for anything else."""
    topic, sep, partition = stream.rpartition("/")
    if not sep or not topic or not partition.isdigit():
        raise ValueError(f"{stream!r} is not a Kafka stream (<topic>/<partition>)")
    return TopicPartition(topic, int(partition))


class KafkaNames:
    """The names of one region's topics under ``prefix``."""

    __slots__ = ("_any", "_mapper", "checkpoints", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.checkpoints = prefix + CHECKPOINT_TOPIC
        self._any = self.regex(">")
        # The NATS adapter's topic -> subject mapping: Kafka topic names take the same form.
        self._mapper = SubjectMapper(prefix)

    def kafka_topic(self, topic: str) -> str:
        """Mesh topic -> Kafka topic, validated (ValueError with the router's reason) and cached."""
        return self._mapper.subject(topic)

    def mesh_topic(self, kafka_topic: str) -> str:
        """Kafka topic -> mesh topic (for topics that ``is_mesh`` accepts), cached."""
        return self._mapper.topic(kafka_topic)

    def is_mesh(self, kafka_topic: str) -> bool:
        return self._any.match(kafka_topic) is not None

    @functools.lru_cache(maxsize=256)  # noqa: B019  # one KafkaNames per broker, a few patterns
    def regex(self, pattern: str) -> re.Pattern[str]:
        """The Kafka topics of a mesh pattern (``orders/*``, ``orders/>``) as an anchored regex.

        ``*`` is exactly one level and a final ``>`` one or more, as in the router; the
        checkpoint topic never matches. Raises ``ValueError`` for an invalid pattern.
        """
        problem = validate_pattern(pattern)
        if problem is not None:
            raise ValueError(problem)
        # The router's regex of the pattern, with Kafka's level separator: "/" occurs in it
        # only between levels (a level's characters and re.escape never produce one).
        body = pattern_regex(pattern).pattern.replace("/", r"\.")
        return re.compile(rf"^(?!{re.escape(self.checkpoints)}$){re.escape(self.prefix)}{body}$")

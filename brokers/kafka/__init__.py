"""The Kafka adapter: a region's log in Kafka topics (one per mesh topic), read by consumer groups."""

from __future__ import annotations

from meshgate.brokers.kafka._broker import DEFAULT_MAX_MESSAGE_BYTES, KafkaBroker, KafkaBrokerStats
from meshgate.brokers.kafka._consumer import KafkaDurableConsumer, KafkaToken
from meshgate.brokers.kafka._errors import (
    KafkaMessageTooLargeError,
    KafkaRejectedError,
    KafkaUnavailableError,
    kafka_error,
)
from meshgate.brokers.kafka._names import CHECKPOINT_TOPIC, KafkaNames, parse_stream, stream_of

__all__ = [
    "CHECKPOINT_TOPIC",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "KafkaBroker",
    "KafkaBrokerStats",
    "KafkaDurableConsumer",
    "KafkaMessageTooLargeError",
    "KafkaNames",
    "KafkaRejectedError",
    "KafkaToken",
    "KafkaUnavailableError",
    "kafka_error",
    "parse_stream",
    "stream_of",
]

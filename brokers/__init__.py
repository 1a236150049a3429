"""Broker adapters: one interface (``Broker``) for the gateway's writes and the replicator's reads.

``make_broker(region, ...)`` builds the adapter a region's config asks for: NATS JetStream
(``NatsBroker``), Kafka (``KafkaBroker``), or the embedded NATS server that Meshgate runs
itself (``EmbeddedNatsBroker``).
The codec (event <-> headers + payload, topic <-> Kafka topic name) is shared by every adapter;
a NATS region's subjects also carry the origin and a partition (``nats._subjects.SubjectLayout``,
docs/SUBJECTS.md), so ``pattern_to_filter`` and ``topic_to_subject`` are Kafka's mapping only.
"""

from __future__ import annotations

from meshgate.brokers._base import (
    AppendResult,
    AppendStats,
    Board,
    Broker,
    BrokerError,
    BrokerState,
    BrokerUnavailableError,
    Checkpoints,
    Delivery,
    DurableConsumer,
    EventRejectedError,
    EventTooLargeError,
    Leases,
    Log,
    PartitionedLog,
    RawBatch,
    SequencedLog,
    StartAt,
    StorageFullError,
    WorkSharing,
)
from meshgate.brokers._codec import (
    decode_event,
    encode_headers,
    header_lines,
    parse_header_lines,
    pattern_to_filter,
    subject_to_topic,
    topic_to_subject,
)
from meshgate.brokers._factory import kafka_bootstrap_servers, make_broker, nats_server_urls
from meshgate.brokers.embedded import EmbeddedNats, EmbeddedNatsBroker, EmbeddedNatsError, EmbeddedNatsState
from meshgate.brokers.kafka import (
    KafkaBroker,
    KafkaDurableConsumer,
    KafkaMessageTooLargeError,
    KafkaRejectedError,
    KafkaUnavailableError,
)
from meshgate.brokers.nats import (
    AckTimeoutError,
    JetStreamRejectedError,
    JetStreamUnavailableError,
    MessageTooLargeError,
    NatsBroker,
    NatsDurableConsumer,
    NotConnectedError,
)

__all__ = [
    "AckTimeoutError",
    "AppendResult",
    "AppendStats",
    "Board",
    "Broker",
    "BrokerError",
    "BrokerState",
    "BrokerUnavailableError",
    "Checkpoints",
    "Delivery",
    "DurableConsumer",
    "EmbeddedNats",
    "EmbeddedNatsBroker",
    "EmbeddedNatsError",
    "EmbeddedNatsState",
    "EventRejectedError",
    "EventTooLargeError",
    "JetStreamRejectedError",
    "JetStreamUnavailableError",
    "KafkaBroker",
    "KafkaDurableConsumer",
    "KafkaMessageTooLargeError",
    "KafkaRejectedError",
    "KafkaUnavailableError",
    "Leases",
    "Log",
    "MessageTooLargeError",
    "NatsBroker",
    "NatsDurableConsumer",
    "NotConnectedError",
    "PartitionedLog",
    "RawBatch",
    "SequencedLog",
    "StartAt",
    "StorageFullError",
    "WorkSharing",
    "decode_event",
    "encode_headers",
    "header_lines",
    "kafka_bootstrap_servers",
    "make_broker",
    "nats_server_urls",
    "parse_header_lines",
    "pattern_to_filter",
    "subject_to_topic",
    "topic_to_subject",
]

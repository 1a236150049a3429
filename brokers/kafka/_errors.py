"""Errors of the Kafka adapter: the broker errors of ``_base`` with the data behind them."""

from __future__ import annotations

import aiokafka.errors as ke

from meshgate.brokers._base import (
    BrokerError,
    BrokerUnavailableError,
    EventRejectedError,
    EventTooLargeError,
    StorageFullError,
)

__all__ = [
    "KAFKA_FAILURES",
    "KafkaMessageTooLargeError",
    "KafkaRecordTooLargeError",
    "KafkaRejectedError",
    "KafkaStorageFullError",
    "KafkaUnavailableError",
    "kafka_error",
]


class KafkaUnavailableError(BrokerUnavailableError):
    """Kafka could not take or answer the request now (down, slow, leader moving); retry."""

    def __init__(self, message: str, *, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause


class KafkaStorageFullError(KafkaUnavailableError, StorageFullError):
    """A broker could not write the record to its log directory (KAFKA_STORAGE_ERROR: a full or
    failed disk); retriable once the broker's storage is back."""


class KafkaRejectedError(EventRejectedError):
    """Kafka refused the request for good (invalid topic, not authorized, a policy)."""

    def __init__(self, message: str, *, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause


class KafkaMessageTooLargeError(EventTooLargeError):
    """The event's record is larger than the region's ``max_message_bytes``."""

    def __init__(self, *, size: int, data_size: int, max_message_bytes: int) -> None:
        super().__init__(
            f"event of {size} bytes as a Kafka record ({data_size} bytes of data + {size - data_size} bytes "
            f"of key, headers and record overhead) exceeds the region's max_message_bytes of "
            f"{max_message_bytes} bytes; send less data, or raise max_message_bytes together with the "
            "brokers' message.max.bytes"
        )
        self.size = size
        self.data_size = data_size
        self.max_message_bytes = max_message_bytes


# The record, or the batch holding it, is larger than the brokers take (message.max.bytes).
_TOO_LARGE = (ke.MessageSizeTooLargeError, ke.RecordListTooLargeError)


class KafkaRecordTooLargeError(KafkaRejectedError, EventTooLargeError):
    """A Kafka broker refused the record for its size (MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE)."""


# Refusals that the same request meets again however often it is retried.
_FINAL = (
    ke.InvalidTopicError,
    ke.CorruptRecordException,
    ke.TopicAuthorizationFailedError,
    ke.GroupAuthorizationFailedError,
    ke.ClusterAuthorizationFailedError,
    ke.PolicyViolationError,
    ke.InvalidPartitionsError,
    ke.InvalidReplicationFactorError,
    ke.InvalidConfigurationError,
    ke.InvalidRequiredAcksError,
    ke.UnsupportedVersionError,
    ke.AuthenticationFailedError,
)
# Not flagged retriable by aiokafka, yet about the moment, not the request: the broker was
# slow or away, or the consumer group moved partitions under us.
_TRANSIENT = (
    ke.KafkaTimeoutError,
    ke.KafkaUnavailableError,
    ke.RequestTimedOutError,
    ke.BrokerNotAvailableError,
    ke.CommitFailedError,
    ke.RebalanceInProgressError,
    ke.IllegalGenerationError,
    ke.UnknownMemberIdError,
    ke.IllegalStateError,
    ke.ProducerClosed,
)

# The write cannot reach min.insync.replicas now (acks=all): never an ack, always a retry.
_TOO_FEW_REPLICAS = (ke.NotEnoughReplicasError, ke.NotEnoughReplicasAfterAppendError)

# What aiokafka raises when the cluster is away, slow or refusing; all become BrokerErrors.
KAFKA_FAILURES = (ke.KafkaError, OSError, TimeoutError)


def kafka_error(exc: BaseException, what: str) -> BrokerError:
    """An aiokafka failure as a broker error, retriable unless Kafka refused the request itself."""
    if isinstance(exc, BrokerError):
        return exc
    name = type(exc).__name__
    detail = f"{what}: {name}: {exc}" if str(exc) and str(exc) != name else f"{what}: {name}"
    if isinstance(exc, _TOO_LARGE):
        return KafkaRecordTooLargeError(
            f"{detail}: larger than the Kafka brokers take; keep the region's max_message_bytes at or below "
            "the brokers' message.max.bytes",
            cause=name,
        )
    if isinstance(exc, _FINAL):
        return KafkaRejectedError(detail, cause=name)
    if isinstance(exc, ke.KafkaStorageError):
        return KafkaStorageFullError(
            f"{detail}: a Kafka broker could not write to its log directory (full or failed disk); "
            "free or repair it, then retry",
            cause=name,
        )
    if isinstance(exc, _TOO_FEW_REPLICAS):
        return KafkaUnavailableError(
            f"{detail}: fewer replicas in sync than min.insync.replicas, so acks=all cannot be met; "
            "bring the brokers back, then retry",
            cause=name,
        )
    if isinstance(exc, _TRANSIENT) or not isinstance(exc, ke.KafkaError) or exc.retriable:
        return KafkaUnavailableError(f"{detail}; retry later", cause=name)
    return BrokerError(detail, retriable=False)

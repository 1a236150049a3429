"""Errors of the NATS adapter: the broker errors of ``_base`` with the data behind them."""

from __future__ import annotations

import nats.errors
import nats.js.errors

from meshgate.brokers._base import (
    BrokerError,
    BrokerUnavailableError,
    EventRejectedError,
    EventTooLargeError,
    StorageFullError,
)

__all__ = [
    "NATS_FAILURES",
    "AckTimeoutError",
    "JetStreamMessageTooLargeError",
    "JetStreamRejectedError",
    "JetStreamStorageFullError",
    "JetStreamUnavailableError",
    "MessageTooLargeError",
    "NotConnectedError",
    "ServerTooOldError",
    "broker_error",
    "jetstream_error",
]


class MessageTooLargeError(EventTooLargeError):
    """The event's message (headers + data) is larger than the server's ``max_payload``."""

    def __init__(self, *, size: int, data_size: int, max_payload: int) -> None:
        super().__init__(
            f"event of {size} bytes ({data_size} bytes of data + {size - data_size} bytes of headers) "
            f"exceeds the broker's max_payload of {max_payload} bytes; send less data "
            "or raise max_payload on the NATS servers"
        )
        self.size = size
        self.data_size = data_size
        self.max_payload = max_payload


class AckTimeoutError(BrokerUnavailableError):
    """No PubAck came back in time. The event may or may not be stored: retry with the same id."""

    def __init__(self, *, timeout: float, in_flight: int) -> None:
        super().__init__(
            f"JetStream did not acknowledge the event within {timeout:g} s "
            f"({in_flight} acks were outstanding); retry with the same id, duplicates are absorbed"
        )
        self.timeout = timeout
        self.in_flight = in_flight


class NotConnectedError(BrokerUnavailableError):
    """The connection to NATS is down (reconnecting) or was never made."""

    def __init__(self, message: str, *, waited: float = 0.0) -> None:
        super().__init__(message)
        self.waited = waited


class ServerTooOldError(BrokerError):
    """The NATS server is older than Meshgate needs.

    At start, final until the servers are upgraded. After a reconnect (``reconnected``: nats-py
    reconnects by itself, maybe to another server of a cluster), appends are refused while
    connected to it, and retriable: a later reconnect to a server new enough ends it.
    """

    retriable = False

    def __init__(self, *, version: str, minimum: str, where: str, reconnected: bool = False) -> None:
        message = (
            f"nats-server {version} at {where}: Meshgate needs {minimum} or newer (the region's stream keeps its "
            f"subject layout and partition count in stream metadata, which older servers drop); upgrade the "
            f"NATS servers"
        )
        if reconnected:
            message += (
                f"; the client reconnected to it: appends are refused until it reconnects to one of {minimum} or newer"
            )
        super().__init__(message, retriable=reconnected)
        self.version = version
        self.minimum = minimum
        self.where = where
        self.reconnected = reconnected


class JetStreamRejectedError(EventRejectedError):
    """JetStream refused the event for good (a 4xx API error)."""

    def __init__(self, message: str, *, code: int, err_code: int, description: str) -> None:
        super().__init__(message)
        self.code = code
        self.err_code = err_code
        self.description = description


class JetStreamMessageTooLargeError(JetStreamRejectedError, EventTooLargeError):
    """JetStream refused the event for its size: the stream's ``max_msg_size`` or the account's
    max payload is below the server's ``max_payload`` (err_code 10054)."""


class JetStreamUnavailableError(BrokerUnavailableError):
    """JetStream could not store the event now (a 5xx API error, no responders); retry."""

    def __init__(self, message: str, *, code: int, err_code: int, description: str) -> None:
        super().__init__(message)
        self.code = code
        self.err_code = err_code
        self.description = description


class JetStreamStorageFullError(JetStreamUnavailableError, StorageFullError):
    """JetStream has no room for the event: its storage limit, the account's or the disk is full.

    Retriable once room is made; JetStream answers such a write with an error and ``seq`` 0.
    """


# Status codes that describe the server's condition, not the request's.
_RETRIABLE_CODES = frozenset({408, 429})
# JSStreamMessageExceedsMaximumErr: the stream's max_msg_size or the account's max payload.
ERR_CODE_MESSAGE_TOO_LARGE = 10054
# Out of room: JSAccountResourcesExceededErr (a 400, yet about the moment, not the request),
# JSInsufficientResourcesErr, JSMemoryResourcesExceededErr, JSStorageResourcesExceededErr.
_STORAGE_FULL_ERR_CODES = frozenset({10002, 10023, 10028, 10047})
# JSStreamStoreFailedF and JSStreamGeneralErrorF carry the store's own error as their text:
# full only when that says so. Older servers send no err_code at all, only these texts.
_STORAGE_FULL_TEXTS = (
    "insufficient resources",
    "insufficient storage",
    "resource limits exceeded",
    "resources exceeded",
    "no space left on device",
    "disk quota exceeded",
    "maximum bytes exceeded",
    "maximum messages exceeded",
)


def is_storage_full(*, err_code: int, description: str) -> bool:
    """Whether a JetStream error says the server has no room (rather than a bad request)."""
    if err_code in _STORAGE_FULL_ERR_CODES:
        return True
    text = description.lower()
    return any(t in text for t in _STORAGE_FULL_TEXTS)


def jetstream_error(
    *, code: int, err_code: int, description: str, subject: str, size: int | None = None
) -> BrokerError:
    """Maps a JetStream API error (PubAck ``error``) to a retriable or a final broker error."""
    detail = f"JetStream error {code}/{err_code} on {subject!r}: {description}"
    if err_code != ERR_CODE_MESSAGE_TOO_LARGE and is_storage_full(err_code=err_code, description=description):
        return JetStreamStorageFullError(
            f"{detail}: the region's JetStream has no room to store it; free space (expire or purge "
            "events, raise max_file_store or the stream's limits, free the disk)",
            code=code,
            err_code=err_code,
            description=description,
        )
    if code >= 500 or code in _RETRIABLE_CODES:
        return JetStreamUnavailableError(
            f"{detail}; retry later", code=code, err_code=err_code, description=description
        )
    if err_code == ERR_CODE_MESSAGE_TOO_LARGE:
        if size is not None:
            detail = f"event of {size} bytes refused, {detail}"
        return JetStreamMessageTooLargeError(detail, code=code, err_code=err_code, description=description)
    return JetStreamRejectedError(detail, code=code, err_code=err_code, description=description)


# What nats-py raises when the server is away, slow or refusing; all become BrokerErrors.
NATS_FAILURES = (nats.errors.Error, OSError, TimeoutError)


def broker_error(exc: BaseException, what: str) -> BrokerError:
    """A nats-py failure as a broker error, retriable unless JetStream refused the request."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, nats.js.errors.APIError):
        code = exc.code or 0
        if is_storage_full(err_code=exc.err_code or 0, description=exc.description or ""):
            return jetstream_error(
                code=code, err_code=exc.err_code or 0, description=exc.description or "", subject=what
            )
        detail = f"{what}: JetStream error {code}/{exc.err_code}: {exc.description}"
        if code >= 500 or code in (408, 429) or isinstance(exc, nats.js.errors.ServiceUnavailableError):
            return BrokerUnavailableError(detail)
        return BrokerError(detail, retriable=False)
    return BrokerUnavailableError(f"{what}: {type(exc).__name__}: {exc}")

"""Broker replies read by the adapters: an error always wins, a sequence of 0 is never an ack.

Unit tests of the parsers (PubAck, JetStream API errors, Kafka errors); the same replies from a
real server that runs out of room are in ``test_full_storage.py``.
"""

from __future__ import annotations

import asyncio
import json

import aiokafka.errors as ke
import nats.js.errors
import pytest
from aiokafka.structs import RecordMetadata, TopicPartition

from meshgate.brokers import AppendResult, BrokerError, KafkaBroker, StorageFullError
from meshgate.brokers.kafka._errors import kafka_error
from meshgate.brokers.nats._errors import JetStreamRejectedError, JetStreamStorageFullError, jetstream_error
from meshgate.brokers.nats._errors import broker_error as _broker_error
from meshgate.brokers.nats._wire import PubAckParser, parse_puback
from meshgate.config import KafkaSettings

STREAM = "MESHGATE"
parser = PubAckParser(STREAM)


def err(code: int, description: str, err_code: int | None = None) -> dict[str, object]:
    out: dict[str, object] = {"code": code, "description": description}
    if err_code is not None:
        out["err_code"] = err_code
    return out


def parse(reply: object, status: str | None = None) -> AppendResult | BrokerError:
    data = reply if isinstance(reply, bytes) else json.dumps(reply, separators=(",", ":")).encode()
    return parser(data, status, subject="orders/created", size=10)


def test_plain_ack_takes_the_fast_path() -> None:
    assert parse(b'{"stream":"MESHGATE","seq":42}') == AppendResult(42, False)
    assert parse({"stream": STREAM, "seq": 7, "duplicate": True}) == AppendResult(7, True)


def test_out_of_room_reply_with_seq_0_is_a_storage_full_error() -> None:
    # What nats-server 2.x sends when its max_file_store is reached (captured from a real one).
    reply = (
        b'{"error":{"code":503,"err_code":10023,"description":"insufficient resources"},"stream":"MESHGATE","seq":0}'
    )
    res = parse(reply)
    assert isinstance(res, JetStreamStorageFullError) and isinstance(res, StorageFullError)
    assert res.retriable and res.code == 503 and res.err_code == 10023
    assert "insufficient resources" in str(res) and "no room" in str(res)


@pytest.mark.parametrize(
    "reply",
    [
        # The fields in any order, the error before or after the sequence.
        {"stream": STREAM, "seq": 5, "error": err(503, "insufficient resources", 10023)},
        {"seq": 5, "error": err(500, "insufficient storage resources available", 10047)},
        # A 400 that is about the moment, not the request: the account is full.
        {"error": {"code": 400, "err_code": 10002, "description": "resource limits exceeded for account"}, "seq": 9},
        # Servers before error codes: only the text says it.
        {"error": {"code": 400, "description": "resource limits exceeded for account"}, "stream": STREAM, "seq": 0},
        {"error": {"code": 503, "description": "write msgs/1.blk: no space left on device"}, "seq": 0},
        {"error": {"code": 503, "err_code": 10077, "description": "maximum bytes exceeded"}, "seq": 3},
    ],
)
def test_an_error_wins_over_any_sequence(reply: dict[str, object]) -> None:
    res = parse(reply)
    assert isinstance(res, StorageFullError), res
    assert res.retriable


@pytest.mark.parametrize(
    "reply",
    [
        b'{"stream":"MESHGATE","seq":0}',
        b'{"stream":"MESHGATE","seq":007}',
        {"stream": STREAM},
        {"stream": STREAM, "seq": None},
        {"stream": STREAM, "seq": -1},
        {"stream": STREAM, "seq": "12"},
        {"stream": STREAM, "seq": True},
        {"stream": STREAM, "seq": 1.5},
        {"error": None, "stream": STREAM, "seq": 0},
        [1, 2],
        b"not json",
        b'"just a string"',
    ],
)
def test_a_reply_without_a_stored_sequence_is_never_an_ack(reply: object) -> None:
    res = parse(reply)
    assert isinstance(res, BrokerError), res
    assert res.retriable  # not known refused for good: retried with the same id


def test_other_errors_keep_their_meaning() -> None:
    too_large = parse({"error": err(400, "message size exceeds maximum allowed", 10054)})
    assert isinstance(too_large, JetStreamRejectedError) and not too_large.retriable
    wrong_seq = parse({"error": err(400, "wrong last sequence: 3", 10071), "seq": 0})
    assert isinstance(wrong_seq, JetStreamRejectedError)
    unavailable = parse({"error": err(503, "JetStream system temporarily unavailable", 10008)})
    assert isinstance(unavailable, BrokerError)
    assert unavailable.retriable and not isinstance(unavailable, StorageFullError)
    # An error without its fields is still an error, never an ack.
    assert isinstance(parse({"error": "boom", "seq": 4}), BrokerError)
    assert isinstance(parse({"error": {}, "seq": 4}), BrokerError)


def test_no_responders_status_is_unavailable() -> None:
    res = parse_puback(b"", "503", subject="orders/created", size=1)
    assert isinstance(res, BrokerError) and res.retriable and not isinstance(res, StorageFullError)


def test_jetstream_api_errors_map_storage_full_to_a_retriable_error() -> None:
    full = _broker_error(
        nats.js.errors.ServiceUnavailableError(code=503, err_code=10023, description="insufficient resources"),
        "write checkpoint 'x'",
    )
    assert isinstance(full, StorageFullError) and full.retriable
    account = _broker_error(
        nats.js.errors.BadRequestError(code=400, err_code=10002, description="resource limits exceeded for account"),
        "lease 'x'",
    )
    assert isinstance(account, StorageFullError)
    bad = _broker_error(nats.js.errors.BadRequestError(code=400, err_code=10025, description="invalid JSON"), "x")
    assert not bad.retriable
    assert isinstance(
        jetstream_error(code=500, err_code=10051, description="write 1.blk: no space left on device", subject="s"),
        StorageFullError,
    )


@pytest.mark.parametrize(
    "exc",
    [ke.KafkaStorageError(), ke.NotEnoughReplicasError(), ke.NotEnoughReplicasAfterAppendError()],
)
def test_kafka_out_of_room_is_retriable(exc: BaseException) -> None:
    error = kafka_error(exc, "write to t/0")
    assert error.retriable
    if isinstance(exc, ke.KafkaStorageError):
        assert isinstance(error, StorageFullError)
    assert type(exc).__name__ in str(error)


def test_kafka_final_refusals_stay_final() -> None:
    assert not kafka_error(ke.MessageSizeTooLargeError(), "write").retriable
    assert not kafka_error(ke.TopicAuthorizationFailedError(), "write").retriable


def _settled(broker: KafkaBroker, outcome: BaseException | int) -> AppendResult | BrokerError | None:
    """One event's result after ``_settle`` of a produce future that failed or stored at ``outcome``."""
    future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
    tp = TopicPartition("mg.orders.created", 0)
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(RecordMetadata("mg.orders.created", 0, tp, outcome, -1, 0, -1))
    results: list[AppendResult | BrokerError | None] = [None]
    broker._settle((future, tp, [0], 0), [f"k-{outcome!r}"], results)
    return results[0]


async def test_kafka_produce_answers_storage_full_no_offset_and_recovery() -> None:
    # The produce future's outcome, as aiokafka hands it over (one module; tansu never runs out of room).
    broker = KafkaBroker(
        bootstrap_servers=["127.0.0.1:1"], settings=KafkaSettings(), idempotency_window_seconds=60, name="t"
    )
    full = _settled(broker, ke.KafkaStorageError())
    assert isinstance(full, StorageFullError) and full.retriable
    problem = broker.storage_problem()
    assert problem is not None and "KafkaStorageError" in problem
    # An answer without an offset is no ack either, and does not clear the problem.
    no_offset = _settled(broker, -1)
    assert isinstance(no_offset, BrokerError) and no_offset.retriable
    assert broker.storage_problem() is not None
    stored = _settled(broker, 41)
    assert stored == AppendResult(42, False, "mg.orders.created/0")
    assert broker.storage_problem() is None

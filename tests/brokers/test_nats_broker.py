"""NatsBroker against a real nats-server: the broker contract, then what is NATS-specific."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.msg import Msg

from meshgate.brokers import (
    AppendResult,
    BrokerState,
    BrokerUnavailableError,
    DurableConsumer,
    EmbeddedNats,
    MessageTooLargeError,
    NatsBroker,
    NotConnectedError,
    StartAt,
)
from meshgate.brokers.nats import AckTimeoutError
from meshgate.config import NatsSettings
from tests._servers import TEST_ACK_TIMEOUT, make_nats_broker
from tests.brokers._contract import (
    BOUND,
    BrokerContract,
    BrokerFactory,
    make_event,
    read_events,
    sequences,
    state_of,
)


class _NatsBackend:
    """The contract's backend: the test's nats-server, with the message size limit it enforces."""

    def __init__(self, server: EmbeddedNats) -> None:
        self.server = server
        self.max_message_bytes = server.max_payload

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def kill(self) -> None:
        await self.server.kill()


class TestNatsBroker(BrokerContract):
    @pytest.fixture
    def new_broker(self, nats_server: EmbeddedNats) -> BrokerFactory:
        return lambda: make_nats_broker(nats_server)

    @pytest.fixture
    def backend(self, nats_server: EmbeddedNats) -> _NatsBackend:
        return _NatsBackend(nats_server)


# -- the stream -------------------------------------------------------------------------------


async def test_stream_created_from_settings(nats_server: EmbeddedNats) -> None:
    settings = NatsSettings(stream="REGION", subject_prefix="mg.", max_age_seconds=3600, max_msgs=1000)
    async with (
        make_nats_broker(nats_server, settings=settings, idempotency_window_seconds=90),
        await nats.connect(nats_server.url) as nc,
    ):
        info = await nc.jetstream().stream_info("REGION")
    c = info.config
    assert c.subjects == ["mg.>"]
    assert c.duplicate_window == 90
    assert c.max_age == 3600
    assert c.max_msgs == 1000
    assert c.max_bytes == -1
    assert c.storage == "file"
    assert c.discard == "old"
    assert c.allow_direct is True


async def test_stream_updated_when_settings_change(nats_server: EmbeddedNats) -> None:
    async with make_nats_broker(nats_server, idempotency_window_seconds=60) as first:
        [seq] = sequences(await first.append([make_event("orders/created", "kept")]))
    async with make_nats_broker(nats_server, idempotency_window_seconds=300) as second:
        async with await nats.connect(nats_server.url) as nc:
            info = await nc.jetstream().stream_info(second.settings.stream)
        assert info.config.duplicate_window == 300
        # Updating the stream keeps its events and its duplicate memory.
        assert await second.append([make_event("orders/created", "kept")]) == [AppendResult(seq, True)]


def test_window_longer_than_retention_refused() -> None:
    with pytest.raises(ValueError, match="max_age"):
        NatsBroker(
            servers=["nats://127.0.0.1:4222"],
            settings=NatsSettings(max_age_seconds=60),
            idempotency_window_seconds=900,
        )


# -- what native consumers see ----------------------------------------------------------------


async def test_native_subscriber_reads_exact_data_and_cloudevents_headers(
    nats_server: EmbeddedNats, nats_broker: NatsBroker
) -> None:
    got: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await got.put(msg)

    async with await nats.connect(nats_server.url) as nc:
        await nc.subscribe("mesh.>", cb=on_msg)
        await nc.flush()
        event = make_event("orders/created", "native-1", data=b'{"total": 42}', datacontenttype="application/json")
        sequences(await nats_broker.append([event]))
        msg = await asyncio.wait_for(got.get(), BOUND)
    assert msg.subject == "mesh.orders.created"
    assert msg.data == b'{"total": 42}'
    assert msg.headers is not None
    assert msg.headers["ce-id"] == "native-1"
    assert msg.headers["ce-specversion"] == "1.0"
    assert msg.headers["ce-time"] == "2025-01-01T00:00:00.123456789Z"
    assert msg.headers["content-type"] == "application/json"
    assert msg.headers["mg-route"] == "here,there"
    assert msg.headers["Nats-Msg-Id"] == "native-1"


# -- the append pipeline ----------------------------------------------------------------------


async def test_batches_larger_than_the_ack_window(nats_server: EmbeddedNats) -> None:
    async with make_nats_broker(nats_server, max_acks_in_flight=16) as broker:
        results = await asyncio.gather(
            *(broker.append([make_event("orders/created", f"w{b}-{i}") for i in range(100)]) for b in range(3))
        )
        assert len({s for r in results for s in sequences(r)}) == 300
        assert broker.acks_in_flight == 0


async def test_cancelled_append_leaves_nothing_behind(nats_broker: NatsBroker) -> None:
    task = asyncio.ensure_future(nats_broker.append([make_event("orders/created", f"cancel-{i}") for i in range(5000)]))
    # Let it fill the ack window (5,000 events > 4,096 acks in flight), then cancel it.
    async with asyncio.timeout(BOUND):
        while not nats_broker.acks_in_flight:
            await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Its acks still settle (or time out): nothing stays in flight.
    async with asyncio.timeout(BOUND):
        while nats_broker.acks_in_flight:
            await asyncio.sleep(0.01)
    assert sequences(await nats_broker.append([make_event("orders/created", "after-cancel")]))


async def test_size_checked_before_publishing(nats_broker: NatsBroker) -> None:
    limit = nats_broker.max_payload
    [refused] = await nats_broker.append([make_event("orders/created", "huge", data=b"x" * limit)])
    assert isinstance(refused, MessageTooLargeError)
    assert refused.max_payload == limit and refused.data_size == limit and refused.size > limit
    assert f"exceeds the broker's max_payload of {limit} bytes" in str(refused)
    # Nothing went out: the connection is fine and the next event gets the first sequence.
    assert sequences(await nats_broker.append([make_event("orders/created", "fine")])) == [1]


async def test_one_stream_positions(nats_broker: NatsBroker) -> None:
    # JetStream is one stream: positions are its sequences, the stream name is empty.
    assert not NatsBroker.shares_work
    assert await nats_broker.last_sequence() == 0
    assert await nats_broker.log_position() == "0"
    results = await nats_broker.append([make_event("orders/a", f"ls-{i}") for i in range(3)])
    assert [r.stream for r in results if isinstance(r, AppendResult)] == ["", "", ""]
    assert await nats_broker.last_sequence() == sequences(results)[-1]
    assert await nats_broker.log_position() == str(sequences(results)[-1])
    assert await nats_broker.stored_time(1) is not None
    assert await nats_broker.stored_time(1, stream="mesh.orders.a/0") is None  # not a stream of this log
    with pytest.raises(ValueError, match="not a sequence"):
        await nats_broker.origin_sequences_after("there", '{"mesh.orders.a/0": 3}')


async def test_public_publish_path(nats_broker: NatsBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    # The pipeline falls back to nats-py's publish() when its buffer internals are missing.
    monkeypatch.setattr(nats_broker, "_fast_publish", False)
    event = make_event("orders/created", "via public api", key="k", datacontenttype="text/plain")
    event.extensions["tenant"] = "acme corp"
    [seq] = sequences(await nats_broker.append([event]))
    assert await nats_broker.append([event]) == [AppendResult(seq, True)]
    [got] = await read_events(nats_broker, "orders/*", 1, start=StartAt(earliest=True))
    event.sequence = seq
    assert got == event


async def test_ack_timeout_when_server_stalls(nats_server: EmbeddedNats, nats_broker: NatsBroker) -> None:
    assert nats_server.pid is not None
    os.kill(nats_server.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        results = await nats_broker.append([make_event("orders/created", f"stall-{i}") for i in range(5)])
        elapsed = time.monotonic() - started
    finally:
        os.kill(nats_server.pid, signal.SIGCONT)
    assert all(isinstance(r, AckTimeoutError) and r.retriable for r in results), results
    assert TEST_ACK_TIMEOUT * 0.9 <= elapsed < TEST_ACK_TIMEOUT + 2.0
    # The server stored them once it resumed; the retry is absorbed as a duplicate.
    retry = await nats_broker.append([make_event("orders/created", "stall-0")])
    assert isinstance(retry[0], AppendResult) and retry[0].duplicate


async def test_start_fails_when_no_server_answers(nats_server: EmbeddedNats) -> None:
    url = nats_server.url
    await nats_server.stop()
    broker = NatsBroker(
        servers=[url], settings=NatsSettings(), idempotency_window_seconds=60, connect_timeout=0.5, reconnect_wait=0.1
    )
    started = time.monotonic()
    with pytest.raises(NotConnectedError, match="could not connect") as info:
        await broker.start()
    assert info.value.retriable
    assert time.monotonic() - started < 0.5 + 2.0
    assert broker.state is BrokerState.CLOSED


async def test_state_follows_the_connection(nats_server: EmbeddedNats, nats_broker: NatsBroker) -> None:
    assert state_of(nats_broker) is BrokerState.CONNECTED
    await nats_server.stop()
    async with asyncio.timeout(BOUND):
        while state_of(nats_broker) is not BrokerState.RECONNECTING:
            await asyncio.sleep(0.01)
    [down] = await nats_broker.append([make_event("orders/created", "while-down")])
    assert isinstance(down, BrokerUnavailableError)
    await nats_server.start()
    async with asyncio.timeout(BOUND):
        while state_of(nats_broker) is not BrokerState.CONNECTED:
            await asyncio.sleep(0.01)
    await nats_broker.stop()
    assert state_of(nats_broker) is BrokerState.CLOSED


# -- durable consumers ------------------------------------------------------------------------


async def test_unacked_deliveries_come_back_after_ack_wait(nats_server: EmbeddedNats) -> None:
    """A replica that dies holding deliveries (no close, no NAK): another gets them after ack_wait."""
    async with make_nats_broker(nats_server, durable_ack_wait=1.0) as broker:
        sequences(await broker.append([make_event("orders/created", f"u{i}") for i in range(3)]))
        doomed = await broker.durable_consumer("crashy", pattern="orders/*")
        held = await doomed.fetch(3, timeout=BOUND)
        assert len(held) == 3
        survivor = await broker.durable_consumer("crashy", pattern="orders/*")
        started = time.monotonic()
        again: list[str] = []
        async with asyncio.timeout(BOUND):
            while len(again) < 3:
                deliveries = await survivor.fetch(3, timeout=2.0)
                again.extend(d.event.id for d in deliveries)
                await survivor.ack(deliveries)
        assert sorted(again) == ["u0", "u1", "u2"]
        assert time.monotonic() - started >= 0.5
        await survivor.close()


async def _fetch_ids(consumer: DurableConsumer, count: int) -> list[str]:
    ids: list[str] = []
    async with asyncio.timeout(BOUND):
        while len(ids) < count:
            try:
                deliveries = await consumer.fetch(10, timeout=1.0)
            except BrokerUnavailableError:
                continue  # reconnecting, or JetStream still recovering: retry
            ids.extend(d.event.id for d in deliveries)
            await consumer.ack(deliveries)
    return ids


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "kill-9"])
async def test_durable_consumer_survives_server_restart(
    nats_server: EmbeddedNats, nats_broker: NatsBroker, crash: bool
) -> None:
    sequences(await nats_broker.append([make_event("orders/created", f"p{i}") for i in range(4)]))
    consumer = await nats_broker.durable_consumer("persistent", pattern="orders/*")
    first = await consumer.fetch(2, timeout=BOUND)
    await consumer.ack(first)
    assert [d.event.id for d in first] == ["p0", "p1"]
    if crash:
        await nats_server.kill()
    else:
        await nats_server.stop()
    await nats_server.start()
    rest = await _fetch_ids(consumer, 2)
    if crash:
        # JetStream writes a consumer's ack floor to disk asynchronously: a kill -9 can lose the
        # newest acks, whose events then come again (at least once; destinations deduplicate).
        assert {"p2", "p3"} <= set(rest) <= {"p0", "p1", "p2", "p3"}
    else:
        assert sorted(rest) == ["p2", "p3"]
    await consumer.close()


@pytest.fixture
async def two_servers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[EmbeddedNats, EmbeddedNats]]:
    a = EmbeddedNats(data_dir=tmp_path_factory.mktemp("a"))
    b = EmbeddedNats(data_dir=tmp_path_factory.mktemp("b"))
    async with a, b:
        yield a, b


async def test_regions_are_independent_logs(two_servers: tuple[EmbeddedNats, EmbeddedNats]) -> None:
    a, b = two_servers
    async with make_nats_broker(a) as in_a, make_nats_broker(b) as in_b:
        assert sequences(await in_a.append([make_event("orders/created", "same-id")])) == [1]
        # Deduplication is per region: the same id is new in another region's log.
        assert sequences(await in_b.append([make_event("orders/created", "same-id")])) == [1]

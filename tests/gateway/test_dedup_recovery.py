"""Replication dedup's recovery on a real Kafka-protocol broker (tansu)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from meshgate.brokers.kafka import KafkaBroker
from meshgate.config import KafkaSettings
from meshgate.gateway._dedup import OriginDedup, StreamState, stream_key
from meshgate.testing import Tansu
from meshgate.v1 import event_pb2
from tests._servers import make_kafka_broker
from tests.brokers._contract import make_event, results_of


async def test_calls_opening_together_share_one_recovery_scan(
    kafka_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A NATS source's replicas each open a call at once after the destination restarts:
    # the log is scanned once for all of them, not once per call.
    scans: list[tuple[str, str]] = []
    real = kafka_broker.origin_sequences_after

    async def counted(origin: str, position: str) -> tuple[dict[str, set[int]], str]:
        scans.append((origin, position))
        return await real(origin, position)

    monkeypatch.setattr(kafka_broker, "origin_sequences_after", counted)
    for i in range(8):
        await kafka_broker.put_checkpoint(stream_key("n", f"p{i}"), StreamState(acked=10 + i).to_entry(""))
    dedup = OriginDedup(kafka_broker)

    states = await asyncio.gather(*(dedup.recover("n") for _ in range(8)))

    assert len(scans) == 1
    assert all(s.stream(f"p{i}").acked == 10 + i for s in states for i in range(8))
    # Each call has its own copy: one storing does not change what another knows.
    states[0].stream("p0").advance(99)
    states[0].registered.add("p9")
    assert [s.stream("p0").acked for s in states[1:]] == [10] * 7
    assert all("p9" not in s.registered for s in states[1:])
    # A call opening after that recovery ended recovers afresh.
    await dedup.recover("n")
    assert len(scans) == 2


def _count_scanned(broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records of the region's log each of the broker's scans reads (a list to be filled)."""
    counts: list[int] = []
    checkpoints = broker._names.checkpoints

    async def counting(records: AsyncIterator[list[ConsumerRecord[bytes, bytes]]]) -> AsyncIterator[list[Any]]:
        counts.append(0)
        async for batch in records:
            counts[-1] += sum(1 for r in batch if r.topic != checkpoints)
            yield batch

    for name in ("_scan", "_scan_to_end"):
        real = getattr(broker, name)  # renamed: this count must fail, not shrink
        monkeypatch.setattr(broker, name, lambda *args, real=real: counting(real(*args)))
    return counts


def _replicated(ident: str, seq: int, *, stream: str = "p0") -> event_pb2.Event:
    return make_event("t/rep", ident, origin="n", route=["n", "k"], origin_sequence=seq, origin_stream=stream)


async def test_recovery_after_a_restart_reads_again_nothing_the_start_read(
    tansu: Tansu, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NATS -> Kafka catch-up after the Kafka gateway restarted: origin n's entry is from before
    # this region's own traffic grew the log. The first recovery of n read all of it again
    # (1.2 s for 50,000 records), though the start had just read it for the id window.
    async with make_kafka_broker(tansu, name="k-first") as first:
        await first.put_checkpoint(stream_key("n", "p0"), StreamState(acked=5).to_entry(await first.log_position()))
        results_of(await first.append([make_event("t/local", f"a{i}", origin="k", route=["k"]) for i in range(150)]))
        # Stored, then the gateway killed before its checkpoint said so: resends of them are duplicates.
        results_of(await first.append([_replicated(f"n{seq}", seq) for seq in (6, 7, 8)]))
        results_of(await first.append([make_event("t/local", f"b{i}", origin="k", route=["k"]) for i in range(150)]))
    async with make_kafka_broker(tansu, name="k-again") as again, make_kafka_broker(tansu, name="k-other") as other:
        # Another replica of the region stores one of n's events after this one's start read.
        results_of(await other.append([_replicated("n9", 9)]))
        scanned = _count_scanned(again, monkeypatch)

        state = await OriginDedup(again).recover("n")

        assert state.stream("p0").acked == 5
        assert state.stream("p0").above == {6, 7, 8, 9}
        # Only the other replica's record is read (main: all 304).
        assert sum(scanned) == 1
        # Used once; the next recovery scans from the entries the first one moved up.
        assert (await OriginDedup(again).recover("n")).stream("p0").above == {6, 7, 8, 9}
        assert sum(scanned) == 1


async def test_recovery_scans_what_lies_before_the_start_read_and_what_came_after(
    tansu: Tansu, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An entry older than the idempotency window: the start read only the window, so a recovery
    # scans from the entry up to where that read began, takes the window from it, and scans on
    # from where it ended.
    async with make_kafka_broker(tansu, name="k-first") as first:
        await first.topic_partitions("t/rep")
        await first.put_checkpoint(stream_key("n", "p0"), StreamState(acked=5).to_entry(await first.log_position()))
        topic = first._names.kafka_topic("t/rep")
    producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all")
    await producer.start()
    try:
        old = int((time.time() - 3600) * 1000)

        async def send(ident: str, seq: int | None, timestamp_ms: int | None = None) -> None:
            headers = [("ce_id", ident.encode()), ("mg-origin", b"n" if seq else b"k")]
            if seq:
                headers += [("mg-origin-seq", b"%d" % seq), ("mg-origin-stream", b"p0")]
            await producer.send_and_wait(topic, b"x", partition=0, timestamp_ms=timestamp_ms, headers=headers)

        # An hour old: before the window the next start reads.
        await send("old-local", None, old)
        await send("n6", 6, old)
        for i in range(40):
            await send(f"local{i}", None)
        await send("n7", 7)
    finally:
        await producer.stop()
    async with make_kafka_broker(tansu, name="k-again", idempotency_window_seconds=600) as again:
        results_of(await again.append([_replicated("n8", 8)]))
        scanned = _count_scanned(again, monkeypatch)

        state = await OriginDedup(again).recover("n")

        assert state.stream("p0").above == {6, 7, 8}
        # The two records before the window and the one stored after the start (main: 44).
        assert sum(scanned) == 3


async def test_recovery_past_the_start_reads_bound_scans_the_rest(
    tansu: Tansu, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The start keeps at most max_window_ids origin sequences: past that its ranges end where it
    # stopped keeping them, and a recovery scans on from there.
    async with make_kafka_broker(tansu, name="k-first", settings=KafkaSettings(partitions=1)) as first:
        await first.put_checkpoint(stream_key("n", "p0"), StreamState(acked=5).to_entry(await first.log_position()))
        for seq in range(6, 26):
            results_of(await first.append([_replicated(f"n{seq}", seq)]))
    async with make_kafka_broker(
        tansu, name="k-again", settings=KafkaSettings(partitions=1, max_window_ids=4)
    ) as again:
        scanned = _count_scanned(again, monkeypatch)

        state = await OriginDedup(again).recover("n")

        assert state.stream("p0").above == set(range(6, 26))
        assert 0 < sum(scanned) < 20

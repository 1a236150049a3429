"""Replication dedup's recovery on a real Kafka-protocol broker (tansu)."""

from __future__ import annotations

import asyncio

import pytest

from meshgate.brokers.kafka import KafkaBroker
from meshgate.gateway._dedup import OriginDedup, StreamState, stream_key


async def test_calls_opening_together_share_one_recovery_scan(
    kafka_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A NATS source opens one call per partition link at once after the destination restarts:
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

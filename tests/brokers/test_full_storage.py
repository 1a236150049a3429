"""A NatsBroker on a real nats-server that runs out of room (JetStream's max_file_store).

JetStream answers a write it has no room for with ``{"error": {..., "err_code": 10023}, "seq": 0}``:
that is a retriable StorageFullError, never an ack; what was acked is all readable; the
broker's storage problem is set, and clears by itself (its probe) once room is made.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshgate.brokers import AppendResult, BrokerError, NatsBroker, StartAt, StorageFullError
from meshgate.v1 import event_pb2
from tests._full_store import SmallStoreNats, purge_stream
from tests._servers import make_nats_broker
from tests._wait import eventually

BOUND = 30.0
DATA = b"x" * 2048


@pytest.fixture
async def small_server(tmp_path: Path) -> AsyncIterator[SmallStoreNats]:
    server = SmallStoreNats(max_file_store=512 * 1024, data_dir=tmp_path / "small", server_name="meshgate-small")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def broker(small_server: SmallStoreNats) -> AsyncIterator[NatsBroker]:
    b = make_nats_broker(small_server)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


def events(first: int, n: int) -> list[event_pb2.Event]:
    return [
        event_pb2.Event(
            id=f"ev-{i}", topic="orders/created", source="/t", type="t", data=DATA, origin="here", route=["here"]
        )
        for i in range(first, first + n)
    ]


async def read_ids(broker: NatsBroker, expect: int) -> list[str]:
    ids: list[str] = []
    if not expect:
        return ids
    async with asyncio.timeout(BOUND):
        async for batch in broker.read(">", start=StartAt(earliest=True), max_batch=500):
            ids.extend(e.id for e in batch)
            if len(ids) >= expect:
                return ids
    return ids


async def fill(broker: NatsBroker) -> tuple[dict[str, AppendResult], list[BrokerError]]:
    """Appends batches until JetStream refuses, then three more; the acks and the refusals."""
    acked: dict[str, AppendResult] = {}
    refused: list[BrokerError] = []
    full_batches = 0
    n = 0
    while full_batches < 3:
        assert n < 5000, "JetStream never ran out of room"
        batch = events(n, 20)
        n += 20
        results = await broker.append(batch)
        for ev, res in zip(batch, results, strict=True):
            if isinstance(res, AppendResult):
                acked[ev.id] = res
            else:
                refused.append(res)
        if refused:
            full_batches += 1
    return acked, refused


async def test_full_jetstream_refuses_with_storage_full_and_never_acks_seq_0(
    broker: NatsBroker, small_server: SmallStoreNats
) -> None:
    acked, refused = await fill(broker)
    assert acked, "nothing fit before the limit"
    assert all(r.sequence >= 1 and not r.duplicate for r in acked.values()), "an ack without a stored sequence"
    assert sorted(r.sequence for r in acked.values()) == list(range(1, len(acked) + 1))
    assert all(isinstance(e, StorageFullError) and e.retriable for e in refused), {type(e) for e in refused}
    assert "insufficient resources" in str(refused[-1])
    # Every acked event is stored: an ack meant a write.
    assert sorted(await read_ids(broker, len(acked))) == sorted(acked)
    assert await broker.last_sequence() == len(acked)

    problem = broker.storage_problem()
    assert problem is not None and "no room" in problem
    # Checkpoints are writes too: refused for the same reason, never silently lost.
    with pytest.raises(StorageFullError):
        await broker.put_checkpoint("replication.there.x", b"{}")

    # Room is made (an operator purges the stream): the probe clears the problem by itself,
    # without any event written meanwhile.
    await purge_stream(small_server.url, broker.settings.stream)
    await eventually(
        lambda: broker.storage_problem() is None, BOUND, interval=0.05, what="the storage problem to clear"
    )
    results = await broker.append(events(100_000, 5))
    assert all(isinstance(r, AppendResult) and r.sequence > len(acked) for r in results), results
    await broker.put_checkpoint("replication.there.x", b"{}")

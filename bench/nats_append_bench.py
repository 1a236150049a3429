"""Append throughput of NatsBroker against the raw nats-py pipeline it is built on.

Runs an embedded nats-server (JetStream, file storage, default sync) on a temporary
directory, then measures, each for about ``--seconds``:

* raw: nats-py ``nc.publish(subject, 256 B, reply=<inbox>.<n>, headers={"Nats-Msg-Id": id})``
  with the PubAcks coming back to ONE wildcard inbox subscription, at most 4,000 in flight,
  each ack parsed (json) by the callback: the ceiling of the approach in Python;
* the same with the full CloudEvents header set of an event as a headers dict (what
  NatsBroker would cost through nats-py's public publish());
* NatsBroker.append with batches of 100 and of 1,000 events of 256 B of data (full
  CloudEvents headers, one caller awaiting each batch's acks before sending the next);
* NatsBroker.append with batches of 100 from 8 concurrent callers (gateway streams).

Prints one line per measurement and, last, one JSON object with every figure.

    python bench/nats_append_bench.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable

import nats
from nats.aio.msg import Msg

from meshgate.brokers import EmbeddedNats, NatsBroker, encode_headers
from meshgate.config import NatsSettings
from meshgate.v1 import event_pb2

DATA = b"x" * 256
MAX_IN_FLIGHT = 4000


def make_events(n: int, run: str) -> list[event_pb2.Event]:
    events = []
    for i in range(n):
        e = event_pb2.Event(
            id=f"{run}-{i}",
            source="/bench/producer",
            type="com.example.bench",
            specversion="1.0",
            datacontenttype="application/octet-stream",
            data=DATA,
            topic="bench/orders",
            origin="bench",
            route=["bench", "other"],
        )
        e.time.GetCurrentTime()
        events.append(e)
    return events


async def bench_raw(url: str, subject: str, seconds: float, *, full_headers: bool = False) -> float:
    nc = await nats.connect(url)
    prefix = nc.new_inbox() + "."
    cut = len(prefix)
    sem = asyncio.Semaphore(MAX_IN_FLIGHT)
    acked = 0
    pending: set[str] = set()
    all_acked = asyncio.Event()

    async def on_ack(msg: Msg) -> None:
        nonlocal acked
        token = msg.subject[cut:]
        if token in pending:
            pending.discard(token)
            json.loads(msg.data)
            acked += 1
            sem.release()
            if not pending:
                all_acked.set()

    await nc.subscribe(prefix + "*", cb=on_ack)
    base = dict(encode_headers(make_events(1, "raw")[0])) if full_headers else {}
    sent = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            await sem.acquire()
            token = str(sent)
            pending.add(token)
            all_acked.clear()
            headers = {**base, "Nats-Msg-Id": f"raw-{full_headers}-{sent}"}
            await nc.publish(subject, DATA, reply=prefix + token, headers=headers)
            sent += 1
    await asyncio.wait_for(all_acked.wait(), 30)
    elapsed = time.perf_counter() - start
    await nc.close()
    return acked / elapsed


async def bench_append(broker: NatsBroker, batch_size: int, seconds: float, *, callers: int = 1, label: str) -> float:
    templates = [make_events(batch_size, f"{label}-t{c}") for c in range(callers)]
    counter = 0

    def refresh(batch: list[event_pb2.Event]) -> None:
        # New ids per batch: reused ids would be absorbed as duplicates, not stored.
        nonlocal counter
        for e in batch:
            counter += 1
            e.id = f"{label}-{counter}"

    async def caller(batch: list[event_pb2.Event], deadline: float, done: Callable[[int], None]) -> None:
        while time.perf_counter() < deadline:
            refresh(batch)
            results = await broker.append(batch)
            bad = [r for r in results if not hasattr(r, "sequence") or getattr(r, "duplicate", True)]
            if bad:
                raise RuntimeError(f"append failed: {bad[0]!r}")
            done(len(batch))

    total = 0

    def add(n: int) -> None:
        nonlocal total
        total += n

    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(caller(t, deadline, add) for t in templates))
    return total / (time.perf_counter() - start)


async def main(seconds: float) -> dict[str, object]:
    settings = NatsSettings()
    with tempfile.TemporaryDirectory(prefix="meshgate-bench-") as data_dir:
        async with EmbeddedNats(data_dir=data_dir) as server:
            broker = NatsBroker(servers=[server.url], settings=settings, idempotency_window_seconds=120)
            async with broker:
                subject = settings.subject_prefix + "bench.raw"
                raw = await bench_raw(server.url, subject, seconds)
                print(f"raw nats-py publish, 1 inbox, {MAX_IN_FLIGHT} acks in flight: {raw:,.0f} events/s", flush=True)
                raw_ce = await bench_raw(server.url, subject, seconds, full_headers=True)
                print(f"  the same with all CloudEvents headers:   {raw_ce:,.0f} events/s", flush=True)
                a100 = await bench_append(broker, 100, seconds, label="b100")
                print(f"NatsBroker.append, batches of 100:   {a100:,.0f} events/s ({a100 / raw:.2f} x raw)", flush=True)
                a1000 = await bench_append(broker, 1000, seconds, label="b1000")
                print(
                    f"NatsBroker.append, batches of 1000:  {a1000:,.0f} events/s ({a1000 / raw:.2f} x raw)", flush=True
                )
                c100 = await bench_append(broker, 100, seconds, callers=8, label="c100")
                print(f"NatsBroker.append, 8 callers x 100:  {c100:,.0f} events/s ({c100 / raw:.2f} x raw)", flush=True)
    return {
        "event_data_bytes": len(DATA),
        "seconds_each": seconds,
        "raw_publish_events_per_s": round(raw),
        "raw_publish_full_headers_events_per_s": round(raw_ce),
        "append_batch_100_events_per_s": round(a100),
        "append_batch_1000_events_per_s": round(a1000),
        "append_8x100_concurrent_events_per_s": round(c100),
        "ratio_batch_100": round(a100 / raw, 3),
        "ratio_batch_1000": round(a1000 / raw, 3),
        "ratio_8x100_concurrent": round(c100 / raw, 3),
        "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement (default 3)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.seconds))))

"""Append throughput of KafkaBroker alone against raw aiokafka, on one tansu broker.

Splits the gap between a Kafka region's PublishStream and raw aiokafka: what the adapter
costs (id window, headers, partitioner, record batches, acks) apart from the gateway's gRPC
and admission. Measured in turn, each for about ``--seconds``:

* raw: aiokafka ``send`` of 256-byte records with a key, up to 4,000 in flight, ``acks=all``
  (``kafka_bench.raw_produce``);
* adapter: ``KafkaBroker.append`` of 100-event batches (full CloudEvents attributes, as a
  gateway stamps them) from 8 concurrent callers (a gateway's streams); ``--callers 4 --batch
  500`` is what a replication ingress writing a link's batches does;
* with ``--profile``, cProfile of the adapter run (the top functions by own time).

    python bench/kafka_append_bench.py [--seconds 3] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import time

from meshgate.bench.kafka_bench import raw_produce
from meshgate.bench.nats_append_bench import make_events
from meshgate.brokers import KafkaBroker
from meshgate.config import KafkaSettings
from meshgate.testing import Tansu

CALLERS = 8
BATCH = 100


async def adapter(
    bootstrap: str, seconds: float, *, profile: bool, callers: int = CALLERS, batch: int = BATCH
) -> tuple[float, float, str]:
    broker = KafkaBroker(
        bootstrap_servers=[bootstrap], settings=KafkaSettings(), idempotency_window_seconds=900, name="bench"
    )
    await broker.start()
    try:
        await broker.append(make_events(BATCH, "warm"))  # creates the topic
        done = 0
        deadline = time.perf_counter() + seconds

        async def caller(c: int) -> None:
            nonlocal done
            n = 0
            while time.perf_counter() < deadline:
                events = make_events(batch, f"c{c}-{n}")
                for i, e in enumerate(events):
                    e.key = f"k{i % 64}"
                results = await broker.append(events)
                done += sum(1 for r in results if not isinstance(r, Exception))
                n += 1

        prof = cProfile.Profile() if profile else None
        started, cpu0 = time.perf_counter(), time.process_time()
        if prof is not None:
            prof.enable()
        await asyncio.gather(*(caller(c) for c in range(callers)))
        if prof is not None:
            prof.disable()
        wall = time.perf_counter() - started
        rate = done / wall
        busy = (time.process_time() - cpu0) / wall
        text = ""
        if prof is not None:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
            text = out.getvalue()
        return rate, busy, text
    finally:
        await broker.stop()


async def main(
    seconds: float, *, profile: bool = False, callers: int = CALLERS, batch: int = BATCH
) -> dict[str, object]:
    async with Tansu() as server:
        raw = await raw_produce(server.bootstrap, "mesh.bench.raw", seconds)
        rate, busy, text = await adapter(server.bootstrap, seconds, profile=profile, callers=callers, batch=batch)
    if text:
        print(text)
    print(f"raw aiokafka produce, acks=all: {raw:,.0f} events/s")
    print(
        f"KafkaBroker.append, {callers} callers x {batch} events: {rate:,.0f} events/s ({rate / raw:.2f} of raw), "
        f"the bench's process {busy:.2f} cores busy ({busy / rate * 1e6:.1f} us per event)"
    )
    return {
        "raw_events_per_s": round(raw),
        "adapter_events_per_s": round(rate),
        "ratio": round(rate / raw, 3),
        "adapter_cpu_us_per_event": round(busy / rate * 1e6, 1) if rate else None,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement (default 3)")
    parser.add_argument("--profile", action="store_true", help="cProfile the adapter run")
    parser.add_argument("--callers", type=int, default=CALLERS, help=f"concurrent callers (default {CALLERS})")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"events per append (default {BATCH})")
    cli = parser.parse_args()
    print(json.dumps(asyncio.run(main(cli.seconds, profile=cli.profile, callers=cli.callers, batch=cli.batch))))

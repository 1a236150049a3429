"""The CPU a replication link's consumer costs, without the rest of the link: a probe.

A link reads its region's log through ``Broker.durable_consumer`` (``fetch_raw``), skips the
events of other origins or not routed to its destination, and acks once the destination
answered (``ack_raw``). This drains ``--events`` events of 256 B from an embedded nats-server
(JetStream, file storage) exactly so, with the destination's answer left out (a batch is acked
as soon as it was fetched, one batch at a time), and reports the nats-server's and this
process's CPU per event read (from ``/proc``), ``--rounds`` times.

``--skipped`` is the share of events the consumer skips (replicated into this region, say):
0.5 by default, 1.0 is a destination's own link reading nothing but replicated events.

Run it against two checkouts to compare them (the adapter comes from whichever ``meshgate``
is imported)::

    python bench/link_consumer_probe.py [--events 100000] [--batch 500] [--skipped 0.5]
    PYTHONPATH=/path/to/other/checkout python bench/link_consumer_probe.py

Prints one line per round and, last, one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from meshgate.bench import nats_append_bench
from meshgate.brokers import EmbeddedNats
from meshgate.brokers.nats import NatsBroker
from meshgate.config import NatsSettings
from meshgate.v1 import event_pb2

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _events(n: int, skipped: float, start: int) -> list[event_pb2.Event]:
    """Events ``start`` to ``start + n``; one in ``1 / skipped`` is of another origin (all with 1.0)."""
    events = nats_append_bench.make_events(n, f"probe-{start}")
    every = round(1 / skipped) if 0 < skipped < 1 else 0
    for i, ev in enumerate(events, start=start):
        skip = skipped >= 1 or (every and i % every == 0)
        ev.origin = "there" if skip else "here"
        ev.route[:] = ["here", "there"]
    return events


async def _round(tmp: Path, *, events: int, batch: int, skipped: float, index: int) -> dict[str, Any]:
    # A server of its own per round: the consumer reads exactly this round's events.
    async with EmbeddedNats(data_dir=tmp / f"nats{index}", server_name="link-probe") as server:
        return await _drain(server, events=events, batch=batch, skipped=skipped)


async def _drain(server: EmbeddedNats, *, events: int, batch: int, skipped: float) -> dict[str, Any]:
    broker = NatsBroker(servers=[server.url], settings=NatsSettings(), idempotency_window_seconds=120, name="probe")
    async with broker:
        consumer = await broker.durable_consumer("mg-link-there", origin="here", routed_to="there")
        chunk = 5000
        for start in range(0, events, chunk):
            results = await broker.append(_events(min(chunk, events - start), skipped, start))
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                raise RuntimeError(f"append failed: {failed[0]}")
        pid = server.pid
        assert pid is not None
        server_before, own_before, wall_before = _cpu_seconds(pid), time.process_time(), time.monotonic()
        forwarded = 0
        while True:
            raw = await consumer.fetch_raw(batch, timeout=0.2)
            if raw.ids:
                forwarded += len(raw.ids)
                await consumer.ack_raw(raw)
            elif await consumer.pending() == 0:
                break
        wall = time.monotonic() - wall_before
        server_cpu, own_cpu = _cpu_seconds(pid) - server_before, time.process_time() - own_before
        await consumer.close()
    return {
        "events": events,
        "forwarded": forwarded,
        "seconds": round(wall, 3),
        "events_per_s": round(events / wall),
        "nats_server_us_per_event": round(server_cpu / events * 1e6, 2),
        "reader_us_per_event": round(own_cpu / events * 1e6, 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--skipped", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="link-probe-") as tmp:
        for i in range(args.rounds):
            figures = await _round(Path(tmp), events=args.events, batch=args.batch, skipped=args.skipped, index=i)
            print(
                f"round {i + 1}: {figures['events_per_s']:,} events/s, nats-server "
                f"{figures['nats_server_us_per_event']} us/event, reader {figures['reader_us_per_event']} us/event"
                f" ({figures['forwarded']:,} of {figures['events']:,} forwarded)",
                flush=True,
            )
            rounds.append(figures)
    summary = {
        "nats_server_us_per_event_median": statistics.median(r["nats_server_us_per_event"] for r in rounds),
        "reader_us_per_event_median": statistics.median(r["reader_us_per_event"] for r in rounds),
        "loadavg": os.getloadavg()[0],
    }
    print(json.dumps({"args": vars(args), "rounds": rounds, **summary}))


if __name__ == "__main__":
    asyncio.run(main())

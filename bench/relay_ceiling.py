"""What Meshgate's NATS adapters could drain with no gateway between them: a probe.

Issue 9 asks Meshgate's catch-up for at least 0.5 of NATS-native sourcing's drain rate. This
measures how much of that gap is the adapters and how much the path between them: a **bare
relay**, one Python process holding Meshgate's two ``NatsBroker`` adapters, that does only what
a replicator on JetStream must do for the contract's guarantees, and nothing of the gateways'
work (no gRPC hop, no second process, no header checks, no dedup bookkeeping, no metrics):

* read the source stream through the link's durable consumer (``durable_consumer`` and
  ``fetch_raw``: one ack per batch, batches of ``--batch``);
* write each batch into the destination stream with ``append_raw`` (the event ids ride as
  ``Nats-Msg-Id``, so a resend is absorbed) and wait for its ``PubAck``s, so every event is
  stored there before the source is acked (``ack_raw``); ``--window`` batches in flight.

It runs on the anchor's pair (two nats-servers in JetStream domains ``A`` and ``B``, joined by
a leafnode), alternating with the anchor's own catch-up (stream ``DST`` on B sourcing ``SRC`` on
A), ``--rounds`` times on the same ``--backlog`` of 256-byte events. Only A's events exist:
unlike the two-way mesh of ``meshgate bench``, no link of B reads (and skips) the replicated
events. Per round it prints both drain rates, the ratio, the CPU per event of each process
(from ``/proc``) and the cores kept busy; last, one JSON object. docs/PERFORMANCE.md ("The
ceiling without the gateway hop") reads it.

    python bench/relay_ceiling.py [--backlog 200000] [--rounds 2] [--batch 500] [--window 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from meshgate.bench import _nats_anchor as anchor
from meshgate.bench import nats_append_bench
from meshgate.brokers import RawBatch
from meshgate.brokers.nats import NatsBroker
from meshgate.config import NatsSettings


class _Relay:
    """The bare relay: Meshgate's two NATS adapters in one process, no gateway between them.

    ``fetch_raw`` on A's link consumer, ``append_raw`` into B (ids kept: B's JetStream dedups a
    resend), ``ack_raw`` on A once B acked the batch, ``window`` batches in flight, acked in order.
    """

    def __init__(self, source: NatsBroker, destination: NatsBroker, *, batch: int, window: int) -> None:
        self.source, self.destination = source, destination
        self.batch, self.window = batch, window
        self.relayed = 0
        self.failed = 0

    async def run(self, backlog: int) -> None:
        consumer = await self.source.durable_consumer("mg-link-b", origin="a", routed_to="b")
        in_flight: asyncio.Queue[tuple[asyncio.Task[list[Any]], RawBatch] | None] = asyncio.Queue(self.window)

        async def acker() -> None:
            while (item := await in_flight.get()) is not None:
                written, raw = item
                self.failed += sum(isinstance(r, Exception) for r in await written)
                await consumer.ack_raw(raw)

        acking = asyncio.create_task(acker())
        try:
            while self.relayed < backlog:
                raw = await consumer.fetch_raw(self.batch, timeout=0.2)
                if not raw.ids:
                    continue
                write = self.destination.append_raw(
                    ids=raw.ids,
                    topics=raw.topics,
                    headers=raw.headers,
                    data=raw.data,
                    origin_sequences=raw.sequences,
                    origin_streams=raw.streams,
                )
                await in_flight.put((asyncio.create_task(write), raw))
                self.relayed += len(raw.ids)
            await in_flight.put(None)
            await acking
        finally:
            acking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acking
            await consumer.close()


async def relay_catchup(
    pair: anchor.AnchorPair, backlog: int, *, batch: int, window: int, index: int
) -> dict[str, Any]:
    """Fills stream RA<index> on A with ``backlog`` Meshgate events, then times the relay into B."""
    assert pair.a is not None and pair.b is not None
    # Other prefixes than the anchor's "mesh." and than each other's: the leafnode carries every
    # subject between A and B, and a stream on one must not capture what is written to the other.
    source = NatsBroker(
        servers=[pair.a.url],
        settings=NatsSettings(subject_prefix=f"ra{index}.", stream=f"RA{index}"),
        idempotency_window_seconds=120,
        name="relay-a",
    )
    destination = NatsBroker(
        servers=[pair.b.url],
        settings=NatsSettings(subject_prefix=f"rb{index}.", stream=f"RB{index}"),
        idempotency_window_seconds=120,
        name="relay-b",
    )
    async with source, destination:
        chunk = 5000
        for start in range(0, backlog, chunk):
            events = nats_append_bench.make_events(min(chunk, backlog - start), f"r{index}-{start}")
            for e in events:
                e.origin = "a"
                e.route[:] = ["a", "b"]
            failed = [r for r in await source.append(events) if isinstance(r, Exception)]
            if failed:
                raise RuntimeError(f"filling the source failed: {failed[0]}")
        pids = pair.pids
        cpu0 = {k: anchor.cpu_seconds(p) for k, p in pids.items()}
        own0 = time.process_time()
        start_t = time.perf_counter()
        relay = _Relay(source, destination, batch=batch, window=window)
        await relay.run(backlog)
        seconds = time.perf_counter() - start_t
        cpu = {f"nats-server {k}": anchor.cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
        cpu["relay"] = time.process_time() - own0
        stored = await destination.last_sequence()
    return {
        "rate": stored / seconds,
        "stored": stored,
        "failed": relay.failed,
        "cpu_us": {k: round(v / stored * 1e6, 1) for k, v in cpu.items()} if stored else {},
        "busy_cores": round(sum(cpu.values()) / seconds, 2),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="meshgate-relay-") as tmp:
        pair = anchor.AnchorPair(Path(tmp))
        await pair.start()
        try:
            for i in range(args.rounds):
                native = await anchor.anchor_catchup(pair, "mesh.orders", args.backlog, timeout=120)
                relay = await relay_catchup(pair, args.backlog, batch=args.batch, window=args.window, index=i)
                native_busy = sum(native.cpu_seconds.values()) / native.fill_seconds if native.fill_seconds else 0.0
                row = {
                    "anchor_rate": round(native.rate),
                    "anchor_cpu_us": native.cpu_us_per_event(),
                    "anchor_busy_cores": round(native_busy, 2),
                    "relay_rate": round(relay["rate"]),
                    "relay_cpu_us": relay["cpu_us"],
                    "relay_busy_cores": relay["busy_cores"],
                    "relay_stored": relay["stored"],
                    "relay_failed": relay["failed"],
                    "ratio": round(relay["rate"] / native.rate, 2) if native.rate else None,
                }
                rounds.append(row)
                print(
                    f"round {i + 1}: anchor {row['anchor_rate']:,} ev/s {row['anchor_cpu_us']} "
                    f"(busy {row['anchor_busy_cores']} cores); bare relay {row['relay_rate']:,} ev/s "
                    f"{row['relay_cpu_us']} (busy {row['relay_busy_cores']} cores); ratio {row['ratio']}",
                    flush=True,
                )
        finally:
            await pair.stop()
    ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]
    return {
        "backlog": args.backlog,
        "batch": args.batch,
        "window": args.window,
        "rounds": rounds,
        "ratio_mean": round(statistics.mean(ratios), 2) if ratios else None,
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=200_000, help="events drained per run (default 200000)")
    parser.add_argument("--rounds", type=int, default=2, help="anchor/relay pairs of runs (default 2)")
    parser.add_argument("--batch", type=int, default=500, help="events per pull (default 500)")
    parser.add_argument("--window", type=int, default=8, help="batches in flight (default 8)")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))


if __name__ == "__main__":
    cli()

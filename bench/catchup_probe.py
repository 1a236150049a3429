"""Meshgate's catch-up alone, several times in one run: the figure to compare two builds by.

``replication_bench.py`` measures the catch-up once, after three live phases, next to the
NATS-native anchor. To see what a change does to the catch-up's CPU per event, this runs only
Meshgate's two regions (``a`` -> ``b``, the same ``meshgate serve`` processes and mesh file),
one short live phase to warm them up, then ``--rounds`` catch-ups of ``--backlog`` events each
(b stopped, the backlog published into a, b started again, until b holds it all), and prints
each round's rate and every process's CPU per event, then one JSON line.

The CPU per event is the steadier figure: the rate follows whatever else the machine does. For
a before/after, run the two builds in turns (each from its own checkout and virtualenv).

    python bench/catchup_probe.py [--backlog 200000] [--rounds 3] [--batch-events N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from meshgate.bench.replication_bench import Meshgate, add_batch_events_option, two_regions

_WARM_SECONDS = 0.5
# Bounds of each wait: after the live phase, and for a catch-up (with a stall cut-off).
_DRAIN_SECONDS = 30.0
_CATCHUP_TIMEOUT_SECONDS = 90.0
_STALL_SECONDS = 15.0


async def main(backlog: int, rounds: int, batch_events: int | None = None) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="meshgate-catchup-") as d:
        mg = Meshgate(*two_regions(Path(d), batch_events=batch_events))
        try:
            await mg.start()
            await mg.live("bench/warm", _WARM_SECONDS, None, _DRAIN_SECONDS, _STALL_SECONDS)
            for i in range(rounds):
                cu, _ = await mg.catchup(f"bench/catchup{i}", backlog, _CATCHUP_TIMEOUT_SECONDS, _STALL_SECONDS)
                row: dict[str, object] = {
                    "events_per_s": round(cu.rate),
                    "reached": cu.reached,
                    "complete": cu.complete,
                    "cpu_us_per_event": cu.cpu_us_per_event(),
                }
                results.append(row)
                cpu = ", ".join(f"{k} {v}" for k, v in cu.cpu_us_per_event().items())
                print(f"round {i + 1}: {cu.rate:,.0f} events/s ({cu.reached}/{backlog}); CPU us an event: {cpu}")
        finally:
            await mg.close()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=200_000, help="events of each catch-up (default 200000)")
    parser.add_argument("--rounds", type=int, default=3, help="catch-ups in the run (default 3)")
    add_batch_events_option(parser)
    args = parser.parse_args()
    if args.backlog < 1 or args.rounds < 1 or (args.batch_events is not None and args.batch_events < 1):
        parser.error("--backlog, --rounds and --batch-events must be at least 1")
    try:
        out = asyncio.run(main(args.backlog, args.rounds, args.batch_events))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("catchup_probe: interrupted; every process it started is stopped", file=sys.stderr)
        sys.exit(130)
    print(json.dumps({"backlog": args.backlog, "rounds": out}))

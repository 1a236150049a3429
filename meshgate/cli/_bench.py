"""``meshgate bench [--quick] [--seconds S] [--backlog N] [--kafka-backlog N] [--skip PHASE]``: the
performance figures in one run.

Starts what it measures on loopback (embedded nats-servers, ``meshgate serve`` processes,
the NATS-native anchor; a tansu Kafka broker where there is one), measures ingest, live
replication, catch-up (NATS to NATS, and Kafka to NATS and back), the cost of tracing, the
share two replicas of a region carry and each gateway's peak RSS with 256-byte events, stops
everything, prints the tables and a summary against the targets (a figure it cannot measure
says why), and, as its last line, one JSON object with the figures and the ratios. Bounded:
each phase runs about ``--seconds`` and every wait has a limit; ``--quick`` is a short run. The harness is ``bench/``
(``meshgate.bench``); docs/PERFORMANCE.md reads it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

__all__ = ["PHASES", "add_arguments", "apply_quick", "register"]

PHASES = ("ingest", "replication", "kafka", "tracing", "replicas")
# What --quick sets for each option not given explicitly: (option, quick value).
_QUICK = (
    ("seconds", 2.0),
    ("backlog", 50_000),
    ("kafka_backlog", 20_000),
    ("drain", 15.0),
    ("catchup_timeout", 60.0),
    ("stall", 10.0),
)


def _harness() -> Any:
    # Imported when the command runs: it pulls in the benchmark's own clients, which no
    # other command needs.
    return importlib.import_module("meshgate.bench.mesh_bench")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "bench",
        help="measure ingest, replication, catch-up, Kafka, tracing and replicas against the targets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seconds", action=_Given, type=float, default=5.0, help="duration of each measured phase (default 5)"
    )
    p.add_argument(
        "--backlog", action=_Given, type=int, default=200_000, help="events of the catch-up backlog (default 200000)"
    )
    p.add_argument(
        "--kafka-backlog",
        action=_Given,
        type=int,
        default=50_000,
        help="events of each Kafka<->NATS catch-up backlog (default 50000)",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="PHASE",
        help=f"leave a phase out ({', '.join(PHASES)}); repeat it or separate phases with commas",
    )
    p.add_argument(
        "--drain", action=_Given, type=float, default=30.0, help="max wait after a live phase (default 30 s)"
    )
    p.add_argument(
        "--catchup-timeout", action=_Given, type=float, default=120.0, help="max catch-up wait (default 120 s)"
    )
    p.add_argument(
        "--stall", action=_Given, type=float, default=15.0, help="give up after this long without progress (15 s)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short run: 2 s phases, backlogs of 50000 and 20000 (options given explicitly still win)",
    )


class _Given(argparse.Action):
    """Stores the value and notes the option as given (``--quick`` leaves it alone even when it
    equals the default: ``--quick --seconds 5`` runs 5 s phases)."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        setattr(namespace, self.dest, values)
        given: set[str] = getattr(namespace, "given", set())
        namespace.given = given | {self.dest}


def apply_quick(args: argparse.Namespace) -> None:
    """With ``--quick``, the short run's values for every option not given explicitly."""
    if not getattr(args, "quick", False):
        return
    given: set[str] = getattr(args, "given", set())
    for name, quick in _QUICK:
        if name not in given:
            setattr(args, name, quick)


def skipped(args: argparse.Namespace) -> set[str]:
    """The phases ``--skip`` names; ValueError for a name that is not a phase."""
    out = {s.strip() for item in args.skip for s in item.split(",") if s.strip()}
    unknown = out - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phase(s) to skip: {', '.join(sorted(unknown))} (phases: {', '.join(PHASES)})")
    return out


def run(args: argparse.Namespace) -> int:
    try:
        skipped(args)
    except ValueError as exc:
        print(f"meshgate bench: {exc}", file=sys.stderr)
        return 2
    if args.seconds <= 0 or args.backlog < 1 or args.kafka_backlog < 1:
        print("meshgate bench: --seconds must be > 0, --backlog and --kafka-backlog >= 1", file=sys.stderr)
        return 2
    try:
        harness = _harness()
    except ImportError as exc:
        print(f"meshgate bench: the benchmark harness (bench/) is not installed here: {exc}", file=sys.stderr)
        return 1
    import asyncio

    try:
        result = asyncio.run(harness.run(args))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("meshgate bench: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    print(json.dumps(result), flush=True)
    return 0

"""``meshgate bench``: every figure of the performance targets in one bounded run.

On loopback, with 256-byte events, each phase starting what it needs and stopping it again:

* ingest (``ingest_bench``): PublishStream into a gateway in front of an embedded
  nats-server, against raw nats-py publishing to JetStream with 4,000 acks in flight;
* replication (``replication_bench``): live rate and latency from publish in region a to
  stored in region b, and the catch-up of a ``--backlog`` after an outage of b, against
  the NATS-native anchor (two JetStream domains joined by a leafnode, a stream on B
  sourcing A's);
* kafka (``kafka_bench``): ingest into a Kafka region, and Kafka->NATS and NATS->Kafka
  replication (live rate, catch-up of a ``--kafka-backlog``), where the Kafka adapter and a
  tansu broker are there; otherwise "kafka: skipped (reason)";
* peak RSS of every gateway.

Each phase prints its own table; then a summary against the targets, and, as the last line,
one JSON object with every figure and the ratios. Figures move with whatever else runs on the
machine: compare the ratios, which are measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import sys
import time
from typing import Any

from meshgate.bench import ingest_bench, kafka_bench, replication_bench
from meshgate.cli._bench import add_arguments, skipped

__all__ = ["run", "summarize"]

# The targets: (summary key, comparison, bound).
TARGETS: dict[str, tuple[str, float]] = {
    "ingest_ratio": (">=", 0.6),
    "live_replication_ratio": (">=", 0.9),
    "half_load_p99_ms": ("<", 50.0),
    "catchup_ratio": (">=", 0.5),
    "max_gateway_peak_rss_mb": ("<", 150.0),
}


def _num(x: Any) -> float:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else math.nan


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The figures the targets name, their ratios, and whether each target is met."""
    ing = result.get("ingest") or {}
    rep = result.get("replication") or {}
    s: dict[str, Any] = {
        "ingest_events_per_s": ing.get("stream_100_events_per_s"),
        "ingest_raw_events_per_s": ing.get("raw_events_per_s"),
        "ingest_ratio": ing.get("ratio_stream_100"),
        "live_replication_events_per_s": rep.get("meshgate_live_events_per_s"),
        "live_anchor_events_per_s": rep.get("anchor_live_events_per_s"),
        "live_replication_ratio": rep.get("ratio_live_rate"),
        "live_p50_ms": rep.get("meshgate_live_p50_ms"),
        "live_p99_ms": rep.get("meshgate_live_p99_ms"),
        "half_load_events_per_s": rep.get("anchor_half_publish_events_per_s"),
        "half_load_p50_ms": rep.get("meshgate_half_anchor_rate_p50_ms"),
        "half_load_p99_ms": rep.get("meshgate_half_anchor_rate_p99_ms"),
        "anchor_half_load_p99_ms": rep.get("anchor_half_p99_ms"),
        "catchup_events_per_s": rep.get("meshgate_catchup_events_per_s"),
        "catchup_anchor_events_per_s": rep.get("anchor_catchup_events_per_s"),
        "catchup_ratio": rep.get("ratio_catchup_rate"),
    }
    rss = {"ingest": ing.get("gateway_peak_rss_mb")}
    for region, mb in (rep.get("meshgate_gateway_peak_rss_mb") or {}).items():
        rss[f"replication {region}"] = mb
    kafka = result.get("kafka") or {}
    if "gateway_peak_rss_mb" in kafka:
        rss["kafka"] = kafka["gateway_peak_rss_mb"]
    if isinstance(kafka.get("replication"), dict):
        for region, mb in (kafka["replication"].get("gateway_peak_rss_mb") or {}).items():
            rss[f"kafka replication {region}"] = mb
    s["gateway_peak_rss_mb"] = rss
    measured = [v for v in map(_num, rss.values()) if not math.isnan(v)]
    s["max_gateway_peak_rss_mb"] = max(measured) if measured else None
    if "ratio_stream_100" in kafka:
        s["kafka_ingest_ratio"] = kafka["ratio_stream_100"]
    krep = kafka.get("replication")
    if isinstance(krep, dict):
        for way in ("kafka_to_nats", "nats_to_kafka"):
            live, cu = krep.get(f"{way}_live") or {}, krep.get(f"{way}_catchup") or {}
            s[f"{way}_live_events_per_s"] = live.get("window_events_per_s")
            s[f"{way}_catchup_events_per_s"] = cu.get("events_per_s")
    met: dict[str, bool | None] = {}
    for key, (op, bound) in TARGETS.items():
        v = _num(s.get(key))
        met[key] = None if math.isnan(v) else (v >= bound if op == ">=" else v < bound)
    s["targets"] = {k: f"{op} {bound:g}" for k, (op, bound) in TARGETS.items()}
    s["met"] = met
    return s


def print_summary(s: dict[str, Any]) -> None:
    def f(v: Any, unit: str = "") -> str:
        x = _num(v)
        if math.isnan(x):
            return "-"
        return f"{x:,.0f}{unit}" if abs(x) >= 100 else f"{x:,.2f}{unit}"

    rows = [
        ("ingest, PublishStream (events/s)", s["ingest_events_per_s"], s["ingest_raw_events_per_s"], "ingest_ratio"),
        (
            "live replication into b (events/s)",
            s["live_replication_events_per_s"],
            s["live_anchor_events_per_s"],
            "live_replication_ratio",
        ),
        ("latency p99 at half the anchor's rate (ms)", s["half_load_p99_ms"], s["anchor_half_load_p99_ms"], None),
        (
            "catch-up of the backlog (events/s)",
            s["catchup_events_per_s"],
            s["catchup_anchor_events_per_s"],
            "catchup_ratio",
        ),
    ]
    print()
    print(f"{'summary (256 B events)':<44} {'meshgate':>10} {'reference':>10} {'ratio':>6}  target")
    for name, mine, ref, ratio_key in rows:
        ratio = s.get(ratio_key) if ratio_key else None
        target_key = ratio_key or "half_load_p99_ms"
        op, bound = TARGETS[target_key]
        verdict = {True: "met", False: "NOT met", None: "not measured"}[s["met"][target_key]]
        what = "ratio" if ratio_key else "meshgate"
        print(f"{name:<44} {f(mine):>10} {f(ref):>10} {f(ratio):>6}  {what} {op} {bound:g}: {verdict}")
    rss = ", ".join(f"{k} {f(v)}" for k, v in s["gateway_peak_rss_mb"].items() if v is not None)
    verdict = {True: "met", False: "NOT met", None: "not measured"}[s["met"]["max_gateway_peak_rss_mb"]]
    print(f"{'gateway peak RSS (MB)':<44} {rss}  (< 150: {verdict})")
    if "kafka_ingest_ratio" in s:
        print(f"{'kafka ingest, PublishStream / raw produce':<44} {f(s['kafka_ingest_ratio']):>28}")
    for way in ("kafka_to_nats", "nats_to_kafka"):
        if f"{way}_live_events_per_s" in s:
            label = way.replace("_", " ")
            print(f"{label + ' live, catch-up (events/s)':<44} {f(s[f'{way}_live_events_per_s']):>10} "
                  f"{f(s[f'{way}_catchup_events_per_s']):>10}  (no native reference)")  # fmt: skip


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the phases not skipped; returns every figure plus ``summary``."""
    skip = skipped(args)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "event_data_bytes": 256,
        "seconds_each": args.seconds,
        "backlog": args.backlog,
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "loadavg_at_start": round(os.getloadavg()[0], 2),
        },
        "skipped": sorted(skip),
    }
    if "ingest" not in skip:
        print("== ingest", flush=True)
        result["ingest"] = await ingest_bench.main(args.seconds, 8, unary_loads=False)
    if "replication" not in skip:
        print("== replication", flush=True)
        rargs = argparse.Namespace(
            seconds=args.seconds,
            backlog=args.backlog,
            drain=args.drain,
            catchup_timeout=args.catchup_timeout,
            stall=args.stall,
        )
        result["replication"] = await replication_bench.main(rargs)
    if "kafka" not in skip:
        print("== kafka", flush=True)
        result["kafka"] = await kafka_bench.main(
            args.seconds,
            backlog=args.kafka_backlog,
            drain=args.drain,
            timeout=args.catchup_timeout,
            stall=args.stall,
        )
    else:
        result["kafka"] = {"skipped": "--skip kafka"}
    result["summary"] = summarize(result)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    print_summary(result["summary"])
    return result


def _main() -> None:  # pragma: no cover - `meshgate bench` is the entry point
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    _main()

"""The cost of tracing on ingest: the same gateway with traces off, on (every event) and on at 1 %.

Starts an embedded nats-server (JetStream, file storage) and a dummy OTLP/gRPC receiver (it
counts spans and answers at once), all on loopback, then for each mode runs a fresh
`meshgate serve` process whose environment says it all (the gateway reads only ``OTEL_*``):

* off: no ``OTEL_*`` variable (no provider, no per-event work);
* 1 %: ``OTEL_EXPORTER_OTLP_ENDPOINT`` = the receiver, ``parentbased_traceidratio`` and
  ``OTEL_TRACES_SAMPLER_ARG=0.01``;
* on: the same with ``OTEL_TRACES_SAMPLER=always_on``;

and measures, each for about ``--seconds``, with events of 256 bytes of data (no producer
``traceparent``: each event starts its own trace at the gateway):

* Publish of 100 events per call from ``--clients`` concurrent callers;
* one PublishStream with 100 events per request, many requests in flight.

Prints a table (events/s, ratio to off, spans the receiver got) and, last, one JSON line.

    python bench/tracing_cost.py [--seconds 3] [--clients 8] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from meshgate.bench._single import one_region_mesh
from meshgate.bench.ingest_bench import stream, unary  # the ingest bench's own loads
from meshgate.brokers import EmbeddedNats
from meshgate.testing import ServeProcess
from meshgate.v1 import gateway_pb2_grpc

# "on" last: its spans keep the receiver (in this process, beside the load) busy a while after.
MODES: dict[str, dict[str, str]] = {
    "off": {},
    "1%": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
    "on": {"OTEL_TRACES_SAMPLER": "always_on"},
}


class CountingReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that only counts (in its own threads, off the bench's loop)."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self._lock:
            self.spans += n
        return trace_service_pb2.ExportTraceServiceResponse()


async def run_mode(
    mode: str,
    *,
    mesh: Path,
    tmp: Path,
    otlp: str,
    receiver: CountingReceiver,
    seconds: float,
    clients: int,
    unary_loads: bool = True,
) -> dict[str, float]:
    env = dict(MODES[mode])
    if mode != "off":
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp
    before = receiver.spans
    gw = ServeProcess(config=mesh, region="bench", data_dir=tmp / f"gw-{mode}", env=env)
    try:
        address = await gw.start()
        async with grpc.aio.insecure_channel(address) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            # No "%" in the ids: an id with one takes the header escaping's slow path (a cost of its own).
            run = f"{mode.replace('%', 'pct')}-{time.monotonic_ns()}"
            u100 = await unary(stub, seconds, clients, 100, f"u-{run}") if unary_loads else float("nan")
            s100 = await stream(stub, seconds, f"s-{run}")
        gw.signal(signal.SIGTERM)  # a clean stop flushes the spans still queued
        await gw.wait(timeout=60)
    finally:
        await gw.close()
    return {"unary_100": u100, "stream_100": s100, "spans": receiver.spans - before}


async def main(
    seconds: float, clients: int, rounds: int = 1, *, modes: Sequence[str] = tuple(MODES), unary_loads: bool = True
) -> dict[str, object]:
    """Every mode of ``modes`` (``off`` always among them) in turn, ``rounds`` times; the figures.

    ``unary_loads=False`` measures PublishStream only (unary figures are then NaN).
    """
    modes = ["off", *(m for m in MODES if m in modes and m != "off")]
    receiver = CountingReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    otlp = f"http://127.0.0.1:{port}"
    results: dict[str, dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="meshgate-tracing-") as tmp:
            async with EmbeddedNats(data_dir=Path(tmp) / "nats") as nats:
                mesh = one_region_mesh(Path(tmp), region="bench", nats_url=nats.url)
                # Rounds of all modes in turn, the best of each kept: on a shared machine a
                # neighbour's burst then costs one round, not one mode.
                for n in range(rounds):
                    (Path(tmp) / f"round-{n}").mkdir()
                    for mode in modes:
                        r = await run_mode(
                            mode,
                            mesh=mesh,
                            tmp=Path(tmp) / f"round-{n}",
                            otlp=otlp,
                            receiver=receiver,
                            seconds=seconds,
                            clients=clients,
                            unary_loads=unary_loads,
                        )
                        best = results.setdefault(mode, r)
                        for key in ("unary_100", "stream_100"):
                            # NaN (not measured) stays NaN: max() keeps its first argument then.
                            best[key] = max(best[key], r[key])
    finally:
        server.stop(0)
    off = results["off"]
    print(f"{'mode':<6} {'Publish 100/call':>18} {'x off':>6} {'PublishStream 100':>18} {'x off':>6} {'spans':>10}")
    for mode, r in results.items():
        print(
            f"{mode:<6} {r['unary_100']:>18,.0f} {r['unary_100'] / off['unary_100']:>6.2f} "
            f"{r['stream_100']:>18,.0f} {r['stream_100'] / off['stream_100']:>6.2f} {r['spans']:>10,.0f}"
        )
    out: dict[str, object] = {"seconds_each": seconds, "clients": clients, "rounds": rounds}
    for mode, key in (("off", "off"), ("on", "on"), ("1%", "ratio_0_01")):
        if mode not in results:
            continue
        r = results[mode]
        out[f"{key}_unary_100_events_per_s"] = round(r["unary_100"]) if unary_loads else None
        out[f"{key}_stream_100_events_per_s"] = round(r["stream_100"])
        out[f"{key}_spans_received"] = int(r["spans"])
        if mode != "off":
            out[f"{key}_stream_ratio_to_off"] = round(r["stream_100"] / off["stream_100"], 3)
            out[f"{key}_unary_ratio_to_off"] = round(r["unary_100"] / off["unary_100"], 3) if unary_loads else None
    out["python"] = sys.version.split()[0]
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement (default 3)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent unary callers (default 8)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds of all modes in turn; the best of each is kept (default 1)"
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.seconds, args.clients, args.rounds))))

"""The cost of tracing on ingest: the same gateway with traces off, on (every event) and on at 1 %.

Starts an embedded nats-server (JetStream, file storage) and a dummy OTLP/gRPC receiver (it
counts spans per ``service.name`` and answers at once), all on loopback, and one
`meshgate serve` process per mode, all at once, whose environment says it all (the gateway
reads only ``OTEL_*``):

* off: no ``OTEL_*`` variable (no provider, no per-event work);
* 1 %: ``OTEL_EXPORTER_OTLP_ENDPOINT`` = the receiver, ``parentbased_traceidratio`` and
  ``OTEL_TRACES_SAMPLER_ARG=0.01``, ``OTEL_BSP_SCHEDULE_DELAY=100`` (exports within its own
  turns; see ``EXPORT_EVERY_MS``);
* on: the same with ``OTEL_TRACES_SAMPLER=always_on``;
* control (only when named): a second gateway like off (``OTEL_SDK_DISABLED=true``), in
  turns with the others like 1 %: its ratio to off is the bench's own reading between two
  processes doing the same work;

then measures, with events of 256 bytes of data (no producer ``traceparent``: each event
starts its own trace at the gateway):

* Publish of 100 events per call from ``--clients`` concurrent callers;
* one PublishStream with 100 events per request, many requests in flight.

Off and 1 % take turns in ``--rounds`` short rounds (off first in even rounds, 1 % first in
odd ones), each load for ``--seconds / --rounds`` per mode: a neighbour's burst on a shared
machine then weighs on both alike, and the figure is the mean of the rounds' ratios, with
their spread (largest less smallest). "on" runs after the rounds (its spans keep the
receiver busy a while), for ``--seconds / --rounds`` against the mean of off. The receiver
runs in a process of its own, as a collector would: the load's clients never share an
interpreter with it.

Prints a table (events/s, ratio to off, spans the receiver got, the gateway's CPU per
PublishStream event: a figure the machine's other load moves less than a rate) and, last,
one JSON line.

    python bench/tracing_cost.py [--seconds 3] [--clients 8] [--rounds 5] [--modes off,1%,on]
    python bench/tracing_cost.py --seconds 10 --rounds 10 --modes off,1%,control
    python bench/tracing_cost.py --in-process   # the per-event costs, in us of CPU, no servers
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from meshgate.bench._nats_anchor import cpu_seconds
from meshgate.bench._single import one_region_mesh
from meshgate.bench.ingest_bench import stream, unary  # the ingest bench's own loads
from meshgate.brokers import EmbeddedNats
from meshgate.testing import ServeProcess
from meshgate.v1 import gateway_pb2_grpc

MODES: dict[str, dict[str, str]] = {
    "off": {},
    "1%": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
    "on": {"OTEL_TRACES_SAMPLER": "always_on"},
    # A second untraced gateway in 1 %'s place: what the bench reads between two processes
    # that do the same work (one process against another differs by a few %, which a single
    # run of off against 1 % cannot tell from tracing's cost).
    "control": {"OTEL_SDK_DISABLED": "true"},
}
# What a run measures when no modes are named: the control only when asked for.
DEFAULT_MODES = ("off", "1%", "on")
# Loads of a measurement: key in the figures -> what the table calls it.
LOADS = {"unary_100": "Publish 100/call", "stream_100": "PublishStream 100"}
# Each gateway's first load runs this long unmeasured (the channel, the stream, the SDK's imports).
WARMUP_S = 0.3
# The traced gateways export every 100 ms rather than every 5 s (the SDK's default): with slices
# of a second or less, exports on the default schedule would fall in the other gateway's slices
# (charging tracing's encoding to "off"). The export's CPU per span is the same for batches of
# 32 to 2,048 spans (docs/PERFORMANCE.md), so this moves the work, not its cost.
EXPORT_EVERY_MS = 100


def service_name(mode: str) -> str:
    """``OTEL_SERVICE_NAME`` of a mode's gateway: the receiver counts spans per mode by it."""
    return "meshgate-bench-" + mode.replace("%", "pct")


class CountingReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that only counts, per ``service.name`` (in its own threads)."""

    def __init__(self) -> None:
        self.spans: Counter[str] = Counter()
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for rs in request.resource_spans:
            name = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
            n = sum(len(ss.spans) for ss in rs.scope_spans)
            with self._lock:
                self.spans[name] += n
        return trace_service_pb2.ExportTraceServiceResponse()


def _serve_receiver(conn: Connection) -> None:
    """A ``CountingReceiver`` on a free port (sent first), until "stop"; then its counts."""
    receiver = CountingReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        conn.send(port)
        conn.recv()
    finally:
        server.stop(0)
    conn.send(dict(receiver.spans))


@dataclass(slots=True)
class RatioStats:
    """A mode's ratio to off, round by round: the mean of the rounds' ratios and their spread."""

    rounds: list[float]
    mean: float
    spread: float  # largest less smallest

    @classmethod
    def of(cls, off: Sequence[float], mode: Sequence[float]) -> RatioStats:
        """Per round ``mode / off`` (rounds without a figure, NaN, are left out)."""
        rounds = [m / o for o, m in zip(off, mode, strict=True) if o > 0 and not math.isnan(m)]
        if not rounds:
            return cls([], math.nan, math.nan)
        return cls(rounds, sum(rounds) / len(rounds), max(rounds) - min(rounds))


@dataclass(slots=True)
class Gateway:
    """One mode's gateway and its channel, for every round."""

    mode: str
    proc: ServeProcess
    stub: gateway_pb2_grpc.GatewayStub | None = None
    rates: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in LOADS})
    # The gateway process's CPU (s) and the events it took over its PublishStream slices.
    stream_cpu_s: float = 0.0
    stream_events: float = 0.0

    async def measure(self, seconds: float, clients: int, *, tag: str, unary_loads: bool) -> None:
        assert self.stub is not None
        # No "%" in the ids: an id with one takes the header escaping's slow path (a cost of its own).
        run = f"{self.mode.replace('%', 'pct')}-{tag}-{time.monotonic_ns()}"
        u100 = await unary(self.stub, seconds, clients, 100, f"u-{run}") if unary_loads else math.nan
        cpu, start = cpu_seconds(self.proc.pid), time.perf_counter()
        s100 = await stream(self.stub, seconds, f"s-{run}")
        self.stream_cpu_s += cpu_seconds(self.proc.pid) - cpu
        self.stream_events += s100 * (time.perf_counter() - start)
        self.rates["unary_100"].append(u100)
        self.rates["stream_100"].append(s100)

    def cpu_us_per_event(self) -> float:
        return self.stream_cpu_s / self.stream_events * 1e6 if self.stream_events else math.nan


@contextlib.asynccontextmanager
async def _gateways(modes: Sequence[str], *, mesh: Path, tmp: Path, otlp: str) -> AsyncIterator[dict[str, Gateway]]:
    """A running gateway per mode; stopped with SIGTERM at the end (a clean stop flushes the spans)."""
    gws: dict[str, Gateway] = {}
    for mode in modes:
        env = dict(MODES[mode])
        if mode != "off":
            env |= {
                "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
                "OTEL_SERVICE_NAME": service_name(mode),
                "OTEL_BSP_SCHEDULE_DELAY": str(EXPORT_EVERY_MS),
            }
        proc = ServeProcess(config=mesh, region="bench", data_dir=tmp / f"gw-{service_name(mode)}", env=env)
        gws[mode] = Gateway(mode, proc)
    async with contextlib.AsyncExitStack() as stack:
        for gw in gws.values():
            stack.push_async_callback(gw.proc.close)
        addresses = await asyncio.gather(*(gw.proc.start() for gw in gws.values()))
        for gw, address in zip(gws.values(), addresses, strict=True):
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
            gw.stub = gateway_pb2_grpc.GatewayStub(channel)
        yield gws
        for gw in gws.values():
            gw.proc.signal(signal.SIGTERM)
        await asyncio.gather(*(gw.proc.wait(timeout=60) for gw in gws.values()))


async def main(
    seconds: float, clients: int, rounds: int = 5, *, modes: Sequence[str] = DEFAULT_MODES, unary_loads: bool = True
) -> dict[str, object]:
    """Off and 1 % in turn for ``rounds`` rounds of ``seconds / rounds`` each, then "on"; the figures.

    ``modes``: which of off (always measured), 1 %, on and control (untraced, in turns with
    off like 1 %). ``unary_loads=False`` measures
    PublishStream only (unary figures are then None).
    """
    rounds = max(1, rounds)
    modes = ["off", *(m for m in MODES if m in modes and m != "off")]
    alternating = [m for m in modes if m != "on"]
    slice_s = seconds / rounds
    # The receiver in a process of its own, as a collector is: the load's clients never share
    # an interpreter with its decoding (which would weigh on the traced gateway's turns only).
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    receiver_proc = ctx.Process(target=_serve_receiver, args=(child_conn,), daemon=True)
    receiver_proc.start()
    if not conn.poll(30):
        receiver_proc.kill()
        raise RuntimeError("the OTLP receiver process did not start within 30 s")
    port = conn.recv()
    spans: Counter[str] = Counter()
    try:
        with tempfile.TemporaryDirectory(prefix="meshgate-tracing-") as tmp:
            async with EmbeddedNats(data_dir=Path(tmp) / "nats") as nats:
                mesh = one_region_mesh(Path(tmp), region="bench", nats_url=nats.url)
                async with _gateways(modes, mesh=mesh, tmp=Path(tmp), otlp=f"http://127.0.0.1:{port}") as gws:
                    for mode in alternating:
                        await stream(gws[mode].stub, WARMUP_S, f"warmup-{service_name(mode)}")  # type: ignore[arg-type]
                    for r in range(rounds):
                        for mode in alternating if r % 2 == 0 else alternating[::-1]:
                            await gws[mode].measure(slice_s, clients, tag=f"r{r}", unary_loads=unary_loads)
                    if "on" in gws:
                        await stream(gws["on"].stub, WARMUP_S, "warmup-on")  # type: ignore[arg-type]
                        await gws["on"].measure(slice_s, clients, tag="r0", unary_loads=unary_loads)
    finally:
        # A receiver that died meanwhile: its counts are lost, not the figures of the gateways.
        with contextlib.suppress(OSError, EOFError):
            conn.send("stop")
            if conn.poll(30):
                spans.update(conn.recv())
        receiver_proc.join(10)
        if receiver_proc.is_alive():
            receiver_proc.kill()
    return report(gws, spans, seconds=seconds, clients=clients, rounds=rounds, unary_loads=unary_loads)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _round(x: float, digits: int = 3) -> float | None:
    return None if math.isnan(x) else round(x, digits)


def report(
    gws: dict[str, Gateway], received: Counter[str], *, seconds: float, clients: int, rounds: int, unary_loads: bool
) -> dict[str, object]:
    """Prints the table and returns the figures (the JSON keys ``meshgate bench`` reads)."""
    off = gws["off"].rates
    out: dict[str, object] = {"seconds_each": seconds, "clients": clients, "rounds": rounds}
    print(
        f"{'mode':<6} {'Publish 100/call':>18} {'x off':>6} {'PublishStream 100':>18} {'x off':>6} "
        f"{'spans':>10} {'CPU us/event':>12}"
    )
    for mode, gw in gws.items():
        key = {"off": "off", "on": "on", "1%": "ratio_0_01", "control": "control"}[mode]
        cells = []
        for load in LOADS:
            rate = _mean(gw.rates[load])
            # "on" runs once, after the rounds: against the mean of off.
            stats = (
                RatioStats.of([_mean(off[load])], gw.rates[load])
                if mode == "on"
                else RatioStats.of(off[load], gw.rates[load])
            )
            cells.append(f"{rate:>18,.0f} {stats.mean:>6.2f}")
            if load == "unary_100" and not unary_loads:
                out[f"{key}_{load}_events_per_s"] = None
                if mode != "off":
                    out[f"{key}_unary_ratio_to_off"] = None
                continue
            out[f"{key}_{load}_events_per_s"] = round(rate)
            if mode != "off":
                short = "stream" if load == "stream_100" else "unary"
                out[f"{key}_{short}_ratio_to_off"] = _round(stats.mean)
                out[f"{key}_{short}_ratio_rounds"] = [round(x, 3) for x in stats.rounds]
                out[f"{key}_{short}_ratio_spread"] = _round(stats.spread)
        spans = received[service_name(mode)] if mode not in ("off", "control") else 0
        out[f"{key}_spans_received"] = spans
        # The gateway's CPU per PublishStream event: less moved by neighbours than a rate.
        out[f"{key}_stream_cpu_us_per_event"] = _round(gw.cpu_us_per_event(), 2)
        print(f"{mode:<6} {' '.join(cells)} {spans:>10,} {gw.cpu_us_per_event():>12.2f}")
    for mode in gws:
        if mode in ("off", "on"):
            continue
        stats = RatioStats.of(off["stream_100"], gws[mode].rates["stream_100"])
        print(
            f"{mode} / off, PublishStream, round by round: {', '.join(f'{x:.3f}' for x in stats.rounds)} "
            f"(mean {stats.mean:.3f}, spread {stats.spread:.3f})"
        )
    out["python"] = sys.version.split()[0]
    return out


def in_process(repeat: int = 7) -> dict[str, float]:
    """The per-event costs of tracing at 1 %, in this process (no servers), in us of this thread's
    CPU (the best of ``repeat``): the decision for an unsampled event; a sampled publish span
    on the event loop, light, light and encoded there (the gateway's path over OTLP/gRPC), and
    through the SDK's ``Span``; the OTLP encoding of a ``ReadableSpan`` in the batch
    processor's thread, ours and the SDK's."""
    import gc

    from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
        encode_spans as sdk_encode,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBasedTraceIdRatio, Sampler

    from meshgate.bench.ingest_bench import _event
    from meshgate.brokers import AppendResult
    from meshgate.observability import Tracing
    from meshgate.observability._encode import encode_spans
    from meshgate.observability._tracing import DecisionIds

    class TakingExporter(InMemorySpanExporter):
        # Takes EncodedSpans as the gateway's OTLP/gRPC exporter does: the encoded path.
        takes_encoded = True

    def tracing(sampler: Sampler, *, encoded: bool = False) -> tuple[Tracing, BatchSpanProcessor, InMemorySpanExporter]:
        # The gateway's processor, exporting only when flushed (its encoding is measured apart).
        exporter = TakingExporter() if encoded else InMemorySpanExporter()
        processor = BatchSpanProcessor(
            exporter, max_queue_size=1 << 20, max_export_batch_size=1 << 20, schedule_delay_millis=1e9
        )
        resource = Resource.create({"cloud.region": "bench", "service.name": "meshgate"})
        provider = TracerProvider(sampler=sampler, id_generator=DecisionIds(), resource=resource)
        provider.add_span_processor(processor)
        t = Tracing(region="bench", provider=provider)
        t.set_broker_address("127.0.0.1:4222")
        return t, processor, exporter

    batches = [[_event(i, f"m{b}") for i in range(100)] for b in range(50)]
    for batch in batches:
        for e in batch:
            e.route.append("bench")
    acks = [AppendResult(sequence=i, duplicate=False) for i in range(100)]

    def per_event(t: Tracing) -> float:
        best = math.inf
        for _ in range(repeat):
            fresh = [[type(e)() for e in b] for b in batches]
            for b, src in zip(fresh, batches, strict=True):
                for e, s in zip(b, src, strict=True):
                    e.CopyFrom(s)
            # What the gateway's admission has read already (it says whether any event of a
            # batch carries extensions): not the decision's cost.
            own = [any(len(e.extensions) for e in b) for b in fresh]
            gc.collect()
            start = time.thread_time()
            for b, extended in zip(fresh, own, strict=True):
                trace = t.batch(None)
                trace.start(b, own_traceparents=extended)
                trace.end(acks)
            best = min(best, (time.thread_time() - start) / (len(fresh) * 100) * 1e6)
        return best

    out: dict[str, float] = {}
    t, _, _ = tracing(ParentBasedTraceIdRatio(0.0))  # nothing sampled: the decision alone
    out["decision_us_per_event"] = per_event(t)
    t, processor, exporter = tracing(ALWAYS_ON)
    out["sampled_light_us_per_span"] = per_event(t)
    processor.force_flush()
    spans = exporter.get_finished_spans()[-512:]
    t, _, _ = tracing(ALWAYS_ON, encoded=True)
    out["sampled_encoded_us_per_span"] = per_event(t)  # the gateway's over OTLP/gRPC: encoded on the loop
    t, _, _ = tracing(ALWAYS_ON)
    t.sink = None  # the SDK's Span for each sampled event
    out["sampled_sdk_span_us_per_span"] = per_event(t)
    for name, encode in (("encode_ours_us_per_span", encode_spans), ("encode_sdk_us_per_span", sdk_encode)):
        best = math.inf
        for _ in range(repeat):
            start = time.thread_time()
            data = encode(spans).SerializeToString()
            best = min(best, (time.thread_time() - start) / len(spans) * 1e6)
        out[name] = best
    out["encoded_bytes_per_span"] = len(data) / len(spans)
    for key, value in out.items():
        print(f"{key:<32} {value:>8.2f}")
    return {k: round(v, 2) for k, v in out.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time of each mode and load (default 3)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent unary callers (default 8)")
    parser.add_argument("--rounds", type=int, default=5, help="turns of off and 1 %% (default 5)")
    parser.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help="comma-separated modes among off, 1%%, on, control (a second untraced gateway; default off,1%%,on)",
    )
    parser.add_argument(
        "--in-process", action="store_true", help="only the per-event costs in this process (no servers)"
    )
    args = parser.parse_args()
    if args.in_process:
        print(json.dumps(in_process()))
    else:
        chosen = [m.strip() for m in args.modes.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in MODES]
        if unknown:
            parser.error(f"unknown mode(s) {', '.join(unknown)} in --modes; the modes are {', '.join(MODES)}")
        print(json.dumps(asyncio.run(main(args.seconds, args.clients, args.rounds, modes=chosen))))

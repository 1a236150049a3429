"""A bounded soak: a steady publish rate and a live subscriber for minutes, watching the gateway's memory.

Starts an embedded nats-server (JetStream, file storage) and one ``meshgate serve`` process in
front of it, all on loopback. One PublishStream publishes ``--rate`` events per second (256
bytes of data, batched every 20 ms) while one Subscribe stream (from the earliest event) reads
them back, for ``--seconds``. Every ``--sample`` seconds it records the gateway's RSS (from
/proc), the events acked and received, the reader's lag in events and the end-to-end latency
(producer's event time to the reader). When publishing stops, the reader is given a bounded
time to catch up, and every acked id must have been received exactly once.

Prints a table and, last, one JSON object: rate, duration, events published / acked /
received, lost, duplicates, RSS first / min / max / last, the least-squares slope of RSS over
the second half in MB per minute, lag and latency.

    python bench/soak.py [--seconds 180] [--rate 2000] [--sample 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from meshgate.bench._single import one_region_mesh
from meshgate.brokers import EmbeddedNats
from meshgate.testing import ServeProcess
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc

DATA = b"x" * 256
TICK = 0.02  # a batch every 20 ms: 40 events per request at 2,000/s
CATCH_UP = 60.0  # how long the reader may take to receive the last events after publishing stops


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 2:
        return math.nan
    xs = [t for t, _ in points]
    ys = [v for _, v in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return math.nan
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 60


@dataclass
class Sample:
    t: float
    acked: int
    received: int
    rss_mb: float
    nats_rss_mb: float
    latency_ms_max: float


@dataclass
class State:
    run: str
    sent: int = 0
    acked: int = 0
    rejected: int = 0
    # counts[n] = how many times event n was received; acked[n] = whether it was acked.
    counts: bytearray = field(default_factory=bytearray)
    acked_ids: bytearray = field(default_factory=bytearray)
    received: int = 0
    unexpected: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    interval_latency_max: float = 0.0
    publishing_done: bool = False
    # Why the subscription stopped before the end of the run (None: it did not).
    reader_ended: str | None = None
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)

    def check_caught_up(self) -> None:
        if self.publishing_done and self.received >= self.acked:
            self.caught_up.set()

    def grow(self, n: int) -> None:
        if n >= len(self.counts):
            extra = max(n + 1 - len(self.counts), 65_536)
            self.counts.extend(bytes(extra))
            self.acked_ids.extend(bytes(extra))


def make_event(run: str, n: int, now: Timestamp) -> event_pb2.Event:
    ev = event_pb2.Event(
        id=f"{run}-{n}", topic=f"soak/t{n % 8}", source="/soak", type="soak.event", key=f"k{n % 64}", data=DATA
    )
    ev.time.CopyFrom(now)
    return ev


async def publisher(stub: gateway_pb2_grpc.GatewayStub, state: State, rate: float, seconds: float) -> None:
    start = time.monotonic()
    deadline = start + seconds

    async def requests() -> AsyncIterator[gateway_pb2.PublishRequest]:
        batch_id = 0
        next_tick = start
        total = int(seconds * rate)
        while state.sent < total:
            # Due by now, and at the deadline whatever is left of the total.
            due = total if time.monotonic() >= deadline else min(total, int((time.monotonic() - start) * rate))
            n = due - state.sent
            if n > 0:
                now = Timestamp()
                now.GetCurrentTime()
                first = state.sent
                state.grow(first + n)
                state.sent += n
                batch_id += 1
                yield gateway_pb2.PublishRequest(
                    batch_id=batch_id, events=[make_event(state.run, first + i, now) for i in range(n)]
                )
            next_tick += TICK
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))

    async for resp in stub.PublishStream(requests()):
        for r in resp.results:
            if r.outcome == event_pb2.OUTCOME_ACCEPTED:
                state.acked += 1
                state.acked_ids[int(r.id.rsplit("-", 1)[1])] = 1
            else:
                state.rejected += 1
    state.publishing_done = True


async def reader(stub: gateway_pb2_grpc.GatewayStub, state: State, stop: asyncio.Event) -> None:
    """Reads the subscription until ``stop``; an end of the stream before that is recorded, not fatal."""
    call = stub.Subscribe(
        gateway_pb2.SubscribeRequest(pattern="soak/>", position=gateway_pb2.START_POSITION_EARLIEST, max_batch=1000)
    )
    prefix = state.run + "-"

    async def consume() -> None:
        # Plain iteration, stopped by cancelling the call: a timeout on a pending __anext__()
        # (asyncio.wait_for) would cancel the whole RPC at the first quiet half second.
        async for resp in call:
            now = time.time()
            for ev in resp.events:
                if not ev.id.startswith(prefix):
                    state.unexpected += 1
                    continue
                n = int(ev.id[len(prefix) :])
                state.grow(n)
                state.counts[n] = min(255, state.counts[n] + 1)
                state.received += 1
                latency = (now - (ev.time.seconds + ev.time.nanos / 1e9)) * 1000
                state.latencies_ms.append(latency)
                state.interval_latency_max = max(state.interval_latency_max, latency)
            state.check_caught_up()
        state.reader_ended = f"the stream ended ({await call.code()})"

    task = asyncio.create_task(consume())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        call.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass  # our cancel at the end of the run
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.CANCELLED or not stop.is_set():
            state.reader_ended = f"the stream failed: {exc.code()} {exc.details()}"
    state.caught_up.set()  # nothing more will arrive: the catch-up wait ends


async def sampler(
    state: State, *, gw_pid: int, nats_pid: int | None, every: float, stop: asyncio.Event, out: list[Sample]
) -> None:
    start = time.monotonic()
    print(f"{'t (s)':>6} {'acked':>9} {'received':>9} {'lag ev':>7} {'lat max ms':>10} {'gw RSS MB':>9} {'nats MB':>8}")
    while not stop.is_set():
        s = Sample(
            t=time.monotonic() - start,
            acked=state.acked,
            received=state.received,
            rss_mb=rss_mb(gw_pid),
            nats_rss_mb=rss_mb(nats_pid) if nats_pid else math.nan,
            latency_ms_max=state.interval_latency_max,
        )
        state.interval_latency_max = 0.0
        out.append(s)
        print(
            f"{s.t:>6.0f} {s.acked:>9,} {s.received:>9,} {s.acked - s.received:>7,} {s.latency_ms_max:>10.1f}"
            f" {s.rss_mb:>9.1f} {s.nats_rss_mb:>8.1f}",
            flush=True,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def main(seconds: float, rate: float, every: float) -> dict[str, object]:
    state = State(run=f"soak{uuid.uuid4().hex[:8]}")
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="meshgate-soak-") as tmp:
        async with EmbeddedNats(data_dir=Path(tmp) / "nats") as server:
            mesh = one_region_mesh(Path(tmp), region="soak", nats_url=server.url)
            gw = ServeProcess(config=mesh, region="soak", data_dir=Path(tmp))
            try:
                address = await gw.start()
                async with grpc.aio.insecure_channel(address) as ch:
                    stub = gateway_pb2_grpc.GatewayStub(ch)
                    stop_reader, stop_sampler = asyncio.Event(), asyncio.Event()
                    read_task = asyncio.create_task(reader(stub, state, stop_reader))
                    sample_task = asyncio.create_task(
                        sampler(state, gw_pid=gw.pid, nats_pid=server.pid, every=every, stop=stop_sampler, out=samples)
                    )
                    started = time.monotonic()
                    await publisher(stub, state, rate, seconds)
                    published_in = time.monotonic() - started
                    # Bounded catch-up: the reader gets the last events, or the figures say it did not.
                    state.check_caught_up()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(state.caught_up.wait(), CATCH_UP)
                    stop_sampler.set()
                    await sample_task
                    stop_reader.set()
                    await read_task
            finally:
                await gw.close()

    acked = [n for n in range(len(state.acked_ids)) if state.acked_ids[n]]
    lost = sum(1 for n in acked if state.counts[n] == 0)
    duplicates = sum(1 for n in range(len(state.counts)) if state.counts[n] > 1)
    never_acked = sum(1 for n in range(len(state.counts)) if state.counts[n] and not state.acked_ids[n])
    rss = [s.rss_mb for s in samples]
    half = samples[-1].t / 2 if samples else 0.0
    second_half = [(s.t, s.rss_mb) for s in samples if s.t >= half]
    lag = [s.acked - s.received for s in samples]
    lat = sorted(state.latencies_ms)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else math.nan

    result: dict[str, object] = {
        "rate_target_per_s": rate,
        "seconds": seconds,
        "publish_rate_per_s": round(state.sent / published_in, 1),
        "published": state.sent,
        "acked": state.acked,
        "rejected": state.rejected,
        "received": state.received,
        "lost": lost,
        "duplicates": duplicates,
        "received_not_acked": never_acked,
        "unexpected": state.unexpected,
        "reader_ended": state.reader_ended,
        "exactly_once": lost == 0 and duplicates == 0 and state.acked == state.sent and state.rejected == 0,
        "rss_mb_first": round(rss[0], 1),
        "rss_mb_min": round(min(rss), 1),
        "rss_mb_max": round(max(rss), 1),
        "rss_mb_last": round(rss[-1], 1),
        "rss_slope_mb_per_min_second_half": round(slope_per_minute(second_half), 2),
        "nats_rss_mb_last": round(samples[-1].nats_rss_mb, 1),
        "lag_events_max": max(lag),
        "latency_ms_p50": round(pct(0.5), 1),
        "latency_ms_p99": round(pct(0.99), 1),
        "latency_ms_max": round(lat[-1], 1) if lat else math.nan,
        "samples": len(samples),
        "python": sys.version.split()[0],
    }
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180.0, help="how long to publish (default 180)")
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second (default 2000)")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples (default 5)")
    args = parser.parse_args()
    if args.seconds <= 0 or args.rate <= 0 or args.sample <= 0:
        parser.error("--seconds, --rate and --sample must be above 0")
    print(json.dumps(asyncio.run(main(args.seconds, args.rate, args.sample))))

"""Ingest throughput of a gateway against the raw JetStream publish rate, in one run.

Starts an embedded nats-server (JetStream, file storage) and one `meshgate serve` process in
front of it, all on loopback, then measures, each for about ``--seconds``, with events of
256 bytes of data:

* raw: nats-py publishing straight to JetStream, one inbox, 4,000 acks in flight (the ceiling);
* unary: ``Publish`` of 1 event per call, from ``--clients`` concurrent callers;
* unary batch: ``Publish`` of 100 events per call, from ``--clients`` concurrent callers;
* stream: one ``PublishStream`` with 100 events per request, many requests in flight;
* the gateway's peak RSS (VmHWM).

Prints a table and, last, one JSON object with the figures and the ratios to raw.

    python bench/ingest_bench.py [--seconds 3] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from meshgate.bench._single import one_region_mesh
from meshgate.bench.nats_append_bench import bench_raw  # the raw baseline, shared with the adapter bench
from meshgate.brokers import EmbeddedNats
from meshgate.testing import ServeProcess
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc

DATA = b"x" * 256
STREAM_BATCH = 100


def _event(i: int, run: str) -> event_pb2.Event:
    return event_pb2.Event(
        id=f"{run}-{i}", topic="bench/orders", source="/bench", type="bench.event", key=f"k{i % 64}", data=DATA
    )


class Counter:
    def __init__(self) -> None:
        self.n = 0


async def unary(stub: gateway_pb2_grpc.GatewayStub, seconds: float, clients: int, per_call: int, run: str) -> float:
    count = Counter()
    deadline = time.perf_counter() + seconds

    async def client(c: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            events = [_event(i + j, f"{run}-{c}") for j in range(per_call)]
            i += per_call
            resp = await stub.Publish(gateway_pb2.PublishRequest(events=events))
            count.n += sum(r.outcome == event_pb2.OUTCOME_ACCEPTED for r in resp.results)

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return count.n / (time.perf_counter() - start)


async def stream(stub: gateway_pb2_grpc.GatewayStub, seconds: float, run: str) -> float:
    template = gateway_pb2.PublishRequest(events=[_event(i, run) for i in range(STREAM_BATCH)])
    deadline = time.perf_counter() + seconds

    async def requests() -> AsyncIterator[gateway_pb2.PublishRequest]:
        b = 0
        while time.perf_counter() < deadline:
            req = gateway_pb2.PublishRequest()
            req.CopyFrom(template)
            req.batch_id = b
            for i, e in enumerate(req.events):
                e.id = f"{run}-{b}-{i}"
            b += 1
            yield req

    start = time.perf_counter()
    acked = 0
    async for resp in stub.PublishStream(requests()):
        acked += sum(r.outcome == event_pb2.OUTCOME_ACCEPTED for r in resp.results)
    return acked / (time.perf_counter() - start)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main(seconds: float, clients: int, *, unary_loads: bool = True, rounds: int = 3) -> dict[str, object]:
    """Runs every load, prints the table, returns the figures (``unary_loads=False``: stream only).

    Raw and PublishStream take turns, ``rounds`` times each for ``seconds / rounds``: load
    from elsewhere on the machine then weighs on both alike, and the ratio is the mean of
    the rounds' ratios.
    """
    with tempfile.TemporaryDirectory(prefix="meshgate-ingest-") as tmp:
        async with EmbeddedNats(data_dir=Path(tmp) / "nats") as server:
            mesh = one_region_mesh(Path(tmp), region="bench", nats_url=server.url)
            gw = ServeProcess(config=mesh, region="bench", data_dir=Path(tmp))
            try:
                address = await gw.start()
                # After the gateway: it creates the stream the raw publisher writes to.
                slice_s = seconds / rounds
                raws: list[float] = []
                streams: list[float] = []
                async with grpc.aio.insecure_channel(address) as ch:
                    stub = gateway_pb2_grpc.GatewayStub(ch)
                    if unary_loads:
                        u1 = await unary(stub, seconds, clients, 1, "u1")
                        u100 = await unary(stub, seconds, clients, 100, "u100")
                    else:
                        u1 = u100 = float("nan")
                    for r in range(rounds):
                        raws.append(await bench_raw(server.url, "mesh.bench.raw", slice_s))
                        streams.append(await stream(stub, slice_s, f"s100-{r}"))
                    raw = sum(raws) / rounds
                    s100 = sum(streams) / rounds
                    stream_ratio = sum(s / r for s, r in zip(streams, raws, strict=True)) / rounds
                rss = peak_rss_mb(gw.pid)
            finally:
                await gw.close()
    rows = [
        ("raw JetStream publish (4,000 acks in flight)", raw, 1.0),
        (f"Publish, 1 event/call, {clients} callers", u1, u1 / raw),
        (f"Publish, 100 events/call, {clients} callers", u100, u100 / raw),
        (f"PublishStream, {STREAM_BATCH} events/request", s100, stream_ratio),
    ]
    print(f"{'measurement':<48} {'events/s':>10} {'x raw':>6}")
    for name, rate, ratio in rows:
        if math.isnan(rate):  # not measured
            continue
        print(f"{name:<48} {rate:>10,.0f} {ratio:>6.2f}")
    print(
        f"PublishStream / raw, round by round: {', '.join(f'{s / r:.2f}' for s, r in zip(streams, raws, strict=True))}"
    )
    print(f"gateway peak RSS: {rss:.0f} MB")
    return {
        "event_data_bytes": len(DATA),
        "seconds_each": seconds,
        "raw_events_per_s": round(raw),
        **(
            {
                "unary_1_events_per_s": round(u1),
                "unary_100_events_per_s": round(u100),
                "ratio_unary_1": round(u1 / raw, 3),
                "ratio_unary_100": round(u100 / raw, 3),
            }
            if unary_loads
            else {}
        ),
        "stream_100_events_per_s": round(s100),
        "ratio_stream_100_rounds": [round(s / r, 3) for s, r in zip(streams, raws, strict=True)],
        "ratio_stream_100": round(stream_ratio, 3),
        "gateway_peak_rss_mb": round(rss, 1),
        "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement (default 3)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent unary callers (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of raw and PublishStream (default 3)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.seconds, args.clients, rounds=max(1, args.rounds)))))

"""Where a Kafka region's gateway spends its CPU on ingest: py-spy of one ``PublishStream``.

Starts a tansu broker (``meshgate.testing.Tansu``) and one ``meshgate serve`` of a
``kind: kafka`` region on it, warms it up, then samples the gateway with py-spy (``pip install
py-spy``) while one PublishStream of 100-event requests runs; prints the top frames (self and
inclusive, as ``profile_paths.py`` does) and the rate, next to raw aiokafka's on the same broker.

    python bench/profile_kafka.py [--seconds 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

import grpc

from meshgate.bench.ingest_bench import stream
from meshgate.bench.kafka_bench import TOPIC, raw_produce
from meshgate.bench.profile_paths import record, summarize
from meshgate.testing import ServeProcess, Tansu
from meshgate.v1 import gateway_pb2_grpc


async def main(args: argparse.Namespace) -> None:
    if shutil.which("py-spy") is None:
        sys.exit("py-spy not found: pip install py-spy")
    out_dir = Path(args.out)
    os.makedirs(out_dir, exist_ok=True)
    report = [f"load average at start: {os.getloadavg()[0]:.2f}, cpus {os.cpu_count()}\n"]
    with tempfile.TemporaryDirectory(prefix="meshgate-kprof-") as tmp:
        async with Tansu() as server:
            mesh = Path(tmp) / "mesh.yaml"
            mesh.write_text(
                f'event_mesh:\n  regions:\n    - name: k\n      kind: kafka\n      brokers: ["{server.bootstrap}"]\n'
            )
            gw = ServeProcess(config=mesh, region="k", data_dir=Path(tmp))
            try:
                address = await gw.start()
                async with grpc.aio.insecure_channel(address) as ch:
                    stub = gateway_pb2_grpc.GatewayStub(ch)
                    await stream(stub, 1.0, "warm")
                    pub = asyncio.create_task(stream(stub, args.seconds + 1.0, "prof"))
                    await asyncio.sleep(0.5)
                    collapsed = await record(gw.pid, args.seconds, out_dir / "kafka-ingest.txt")
                    rate = await pub
            finally:
                await gw.close()
            raw = await raw_produce(server.bootstrap, "mesh." + TOPIC.replace("/", "."), min(args.seconds, 3.0))
    report.append(f"PublishStream {rate:,.0f} events/s (while sampled); raw aiokafka {raw:,.0f} events/s\n")
    report.append(summarize(collapsed, "kafka gateway, ingest (PublishStream)", top=30))
    text = "\n".join(report)
    (out_dir / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="sampling time (default 8)")
    parser.add_argument("--out", default="profile-out", help="folder for the raw stacks and summary.md")
    asyncio.run(main(parser.parse_args()))

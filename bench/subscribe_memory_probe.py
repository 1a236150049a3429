"""What do Subscribe calls that do not read cost a gateway? A probe.

Runs a nats-server (embedded) and one ``meshgate serve`` gateway on it as a process, publishes
``--backlog`` events of ``--size`` bytes, then opens ``--subscribers`` Subscribe calls from the
earliest event, each on its own channel, that never read. Samples the gateway's RSS from
``/proc`` until JetStream's books stop moving (every reader stalled) and at least ``--watch``
seconds have passed, and counts the server's "Slow Consumer" lines and the gateway's NATS
disconnects meanwhile. Prints one line and, last, one JSON object with the figures.

    python bench/subscribe_memory_probe.py [--subscribers 15] [--backlog 1200] [--size 131072]

Run it with another tree first on PYTHONPATH to compare two versions of the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import nats

from meshgate.brokers import EmbeddedNats
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc

_MESH = """\
event_mesh:
  regions:
    - name: here
      kind: nats
      brokers: ["127.0.0.1:{nats_port}"]
      gateway: 127.0.0.1:{port}
  routing:
    - topic: "orders/>"
      regions: ["here"]
  settings:
    limits:
      # All calls come from one address: one client.
      max_streams_per_client: {streams}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


async def _books(js: Any) -> tuple[int, int]:
    infos = [i for i in await js.consumers_info("MESHGATE") if i.name.startswith("mg-read-")]
    return len(infos), sum(i.delivered.consumer_seq for i in infos if i.delivered is not None)


async def probe(*, subscribers: int, backlog: int, size: int, watch: float) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="mg-submem-"))
    server = EmbeddedNats(data_dir=folder / "nats")
    await server.start()
    port = _free_port()
    mesh = folder / "mesh.yaml"
    mesh.write_text(_MESH.format(nats_port=server.port, port=port, streams=subscribers + 4))
    log = folder / "gateway.log"
    with log.open("w") as err:
        gateway = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "meshgate", "serve", "-c", str(mesh), "--region", "here"],
            *["--data-dir", str(folder / "gw")],
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )
    channels: list[grpc.aio.Channel] = []
    try:
        address = f"127.0.0.1:{port}"
        async with grpc.aio.insecure_channel(address) as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = gateway_pb2_grpc.GatewayStub(channel)
            data = b"p" * size
            for start in range(0, backlog, 20):
                events = [
                    event_pb2.Event(topic="orders/big", source="/probe", type="probe", data=data, id=f"e{i}")
                    for i in range(start, min(backlog, start + 20))
                ]
                await stub.Publish(gateway_pb2.PublishRequest(events=events))
            before = rss_mib(gateway.pid)
            channels = [grpc.aio.insecure_channel(address) for _ in range(subscribers)]
            calls = [
                gateway_pb2_grpc.GatewayStub(c).Subscribe(
                    gateway_pb2.SubscribeRequest(pattern="orders/>", position=gateway_pb2.START_POSITION_EARLIEST)
                )
                for c in channels
            ]
            nc = await nats.connect(server.url)
            try:
                js = nc.jetstream()
                began = time.monotonic()
                peak, last, stable = 0, (0, 0), 0
                # Until the books stayed the same for 4 s and at least `watch` s, at most 60 s.
                while time.monotonic() - began < 60 and (stable < 8 or time.monotonic() - began < watch):
                    for _ in range(5):
                        await asyncio.sleep(0.1)
                        peak = max(peak, rss_mib(gateway.pid))
                    books = await _books(js)
                    stable = stable + 1 if books == last else 0
                    last = books
                watched = time.monotonic() - began
            finally:
                await nc.close()
            after = rss_mib(gateway.pid)
            for call in calls:
                call.cancel()
    finally:
        for c in channels:
            await c.close()
        gateway.terminate()
        try:
            await asyncio.wait_for(gateway.wait(), 15)
        except TimeoutError:
            gateway.kill()
            await gateway.wait()
        slow = [line for line in server.log_tail(200) if "Slow Consumer" in line]
        await server.stop()
    disconnects = [line for line in log.read_text().splitlines() if "disconnected" in line]
    return {
        "subscribers": subscribers,
        "backlog": backlog,
        "size": size,
        "rss_before_mib": before,
        "rss_after_mib": after,
        "rss_peak_mib": peak,
        "reader_consumers": last[0],
        "delivered": last[1],
        "slow_consumer_lines": len(slow),
        "nats_disconnects": len(disconnects),
        "seconds": round(watched, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=15)
    parser.add_argument("--backlog", type=int, default=1200)
    parser.add_argument("--size", type=int, default=128 * 1024)
    parser.add_argument("--watch", type=float, default=20.0)
    args = parser.parse_args()
    figures = asyncio.run(probe(subscribers=args.subscribers, backlog=args.backlog, size=args.size, watch=args.watch))
    print(
        f"{figures['subscribers']} subscribers that do not read, {figures['backlog']} events of"
        f" {figures['size']} B: gateway RSS {figures['rss_before_mib']} MiB before, {figures['rss_after_mib']} MiB"
        f" after (peak {figures['rss_peak_mib']}); {figures['delivered']} events delivered to"
        f" {figures['reader_consumers']} reader consumers; {figures['slow_consumer_lines']} slow consumer lines,"
        f" {figures['nats_disconnects']} NATS disconnects in {figures['seconds']} s"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

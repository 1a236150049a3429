"""Would JetStream batch publishing (ADR-50) take acks off the destination's write path? A probe.

The destination writes each replicated event with ``Nats-Msg-Id`` and needs, per event,
whether it was stored or was a duplicate (its answer to the link counts both). nats-server
offers two kinds of batch with fewer acks than one PubAck per message:

* atomic (stream ``allow_atomic``): headers ``Nats-Batch-Id``, ``Nats-Batch-Sequence``,
  ``Nats-Batch-Commit: 1`` on the last; one PubAck for the batch (last sequence, count);
* fast (stream ``allow_batched``, nats-server 2.14+): the batch lives in the reply subject
  ``<inbox>.<batch>.<flow>.<gap>.<n>.<op>.$FI``; flow acks every ``flow`` messages and one
  final ack (last sequence, count).

Runs an embedded nats-server (JetStream, file storage) and reports:

* dedup: what each kind answers when one message of a batch repeats an id already stored
  (Meshgate's resends after a broken link, and the race in gateway/_dedup.py);
* cost: ``--events`` events of 256 B with ``Nats-Msg-Id`` and Meshgate-like headers, in
  batches of ``--batch``, (a) one PubAck each (what NatsBroker does), (b) atomic batches,
  with at most 8 batches in flight; events/s and the nats-server's CPU per event, from
  ``/proc``, each twice, alternating.

Prints the findings and, last, one JSON object with the figures.

    python bench/batch_publish_probe.py [--events 100000] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any

import nats

from meshgate.bench._nats_anchor import cpu_seconds
from meshgate.brokers import EmbeddedNats

DATA = b"x" * 256
_HEAD = "mg-origin: a\r\nmg-route: a,b\r\nce-type: bench\r\nce-source: probe\r\nce-specversion: 1.0\r\n"
_IN_FLIGHT_BATCHES = 8


def hpub(subject: str, reply: str, head: str) -> list[bytes]:
    block = f"NATS/1.0\r\n{head}\r\n".encode()
    line = f"HPUB {subject} {reply} {len(block)} {len(block) + len(DATA)}\r\n" if reply else None
    if line is None:
        line = f"HPUB {subject} {len(block)} {len(block) + len(DATA)}\r\n"
    return [line.encode(), block, DATA, b"\r\n"]


class Inbox:
    """Replies to ``<inbox>.*``, collected in arrival order."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self.replies: list[tuple[str, bytes]] = []
        self.arrived = asyncio.Event()

    async def open(self, pattern: str | None = None) -> None:
        async def on_msg(msg: Any) -> None:
            self.replies.append((msg.subject, msg.data))
            self.arrived.set()

        await self.nc.subscribe(pattern or f"{self.prefix}.>", cb=on_msg)

    async def until(self, done: Any, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done() and loop.time() < deadline:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                break

    async def send(self, chunk: list[bytes]) -> None:
        await self.nc._send_command(b"".join(chunk))
        await self.nc._flush_pending()


async def create_stream(nc: Any, name: str, subjects: str, **extra: object) -> None:
    config = {"name": name, "subjects": [subjects], "storage": "file", "duplicate_window": 120_000_000_000, **extra}
    reply = json.loads((await nc.request(f"$JS.API.STREAM.CREATE.{name}", json.dumps(config).encode())).data)
    if "error" in reply:
        raise RuntimeError(f"stream {name}: {reply['error']}")


async def stored(nc: Any, name: str) -> int:
    info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{name}", b"")).data)
    return int(info["state"]["messages"])


async def probe_dedup(nc: Any) -> dict[str, object]:
    """One batch of three whose middle message repeats a stored id, of each kind."""
    out: dict[str, object] = {}
    await create_stream(nc, "ATOMIC", "atomic.>", allow_atomic=True)
    await nc.request("atomic.x", DATA, headers={"Nats-Msg-Id": "seen"})
    box = Inbox(nc)
    await box.open()
    chunk: list[bytes] = []
    for n, mid in enumerate(("new-1", "seen", "new-2"), 1):
        head = f"Nats-Msg-Id: {mid}\r\n{_HEAD}Nats-Batch-Id: b1\r\nNats-Batch-Sequence: {n}\r\n"
        head += "Nats-Batch-Commit: 1\r\n" if n == 3 else ""
        chunk += hpub("atomic.x", f"{box.prefix}.{n}", head)
    await box.send(chunk)
    await box.until(lambda: any(s.endswith(".3") for s, _ in box.replies))
    final = next((d for s, d in box.replies if s.endswith(".3")), b"")
    out["atomic_answer"] = final.decode(errors="replace")
    out["atomic_stored_of_2_new"] = await stored(nc, "ATOMIC") - 1

    await create_stream(nc, "FAST", "fast.>", allow_batched=True)
    await nc.request("fast.x", DATA, headers={"Nats-Msg-Id": "seen"})
    fast = Inbox(nc)
    await fast.open("_PROBE.>")
    chunk = []
    for n, mid in enumerate(("new-1", "seen", "new-2"), 1):
        op = 0 if n == 1 else 2 if n == 3 else 1
        chunk += hpub("fast.x", f"_PROBE.b1.100.fail.{n}.{op}.$FI", f"Nats-Msg-Id: {mid}\r\n{_HEAD}")
    await fast.send(chunk)
    await fast.until(lambda: any(b'"count"' in d or b'"error"' in d for _, d in fast.replies))
    out["fast_answers"] = [d.decode(errors="replace") for _, d in fast.replies]
    out["fast_stored_of_2_new"] = await stored(nc, "FAST") - 1
    return out


async def publish_cost(nc: Any, pid: int, *, mode: str, events: int, batch: int, run: int) -> dict[str, float]:
    box = Inbox(nc)
    await box.open()
    replies_per_batch = batch if mode == "each" else 2
    batches = events // batch
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    for b in range(batches):
        chunk: list[bytes] = []
        for i in range(batch):
            head = f"Nats-Msg-Id: {mode}-{run}-{b}-{i}\r\n{_HEAD}"
            reply = f"{box.prefix}.{b}.{i}"
            if mode == "atomic":
                head += f"Nats-Batch-Id: {mode}{run}x{b}\r\nNats-Batch-Sequence: {i + 1}\r\n"
                if i == batch - 1:
                    head += "Nats-Batch-Commit: 1\r\n"
                elif i:
                    reply = ""  # only the first (a request, as ADR-50 asks) and the commit get an answer
            chunk += hpub("cost.x", reply, head)
        await box.send(chunk)
        floor = (b + 1 - _IN_FLIGHT_BATCHES) * replies_per_batch
        await box.until(lambda floor=floor: len(box.replies) >= floor)  # type: ignore[misc]
    await box.until(lambda: len(box.replies) >= batches * replies_per_batch, timeout=60.0)
    seconds = time.perf_counter() - t0
    errors = sum(1 for _, d in box.replies if b'"error"' in d)
    return {
        "events_per_s": round(events / seconds),
        "server_cpu_us_per_event": round((cpu_seconds(pid) - cpu0) / events * 1e6, 1),
        "errors": errors,
    }


async def main(events: int, batch: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="meshgate-probe-") as data_dir:
        async with EmbeddedNats(data_dir=data_dir) as server:
            pid = server.pid
            assert pid is not None
            nc = await nats.connect(server.url, pending_size=64 * 1024 * 1024)
            try:
                out: dict[str, object] = {"dedup": await probe_dedup(nc)}
                print(json.dumps(out["dedup"], indent=1), flush=True)
                await create_stream(nc, "COST", "cost.>", allow_atomic=True)
                cost: dict[str, list[dict[str, float]]] = {"each": [], "atomic": []}
                for run in range(2):
                    for mode in ("each", "atomic"):
                        figures = await publish_cost(nc, pid, mode=mode, events=events, batch=batch, run=run)
                        cost[mode].append(figures)
                        print(f"{mode:>6} run {run}: {figures}", flush=True)
                out["cost"] = cost
            finally:
                await nc.close()
    out.update({"events": events, "batch": batch, "python": sys.version.split()[0], "loadavg": os.getloadavg()[0]})
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events per cost measurement (default 100000)")
    parser.add_argument("--batch", type=int, default=500, help="events per batch (default 500; atomic allows 1000)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.events, args.batch))))

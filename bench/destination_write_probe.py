"""Where the destination nats-server's CPU per replicated event goes: its PubAck, its id window.

The destination gateway writes each replicated event as an ``HPUB`` with a reply subject (the
PubAck is the proof of storage) and a ``Nats-Msg-Id`` (the id window: the broker's own
duplicate check behind the destination's check by log position). Runs an embedded nats-server
(JetStream, file storage, Meshgate's 900 s duplicate window) and writes ``--events`` events of
256 B with Meshgate-like header lines into a new stream per run, pipelined in chunks of 500 with
at most ``--in-flight`` events unstored (after ``--held`` events with ids written into the same
stream first, unmeasured: what the stream and its id window already hold), three ways:

* ``ack+id``: a reply subject and a ``Nats-Msg-Id`` on each (what the destination does);
* ``ack``: a reply subject, the id header renamed so JetStream ignores it (same bytes);
* ``id``: a ``Nats-Msg-Id``, no reply subject (no PubAck; the run waits for the stream's count).

Each way runs ``--rounds`` times on a new server, the order turning each round. Prints, per way,
events/s, the nats-server's CPU per event (from ``/proc``), each round's and their mean, and
how much its resident memory grew (the stream's id window, against ``ack``: bytes per id); last,
one JSON object. Only ``ack+id`` keeps Meshgate's guarantees: the others say what each part costs.

    python bench/destination_write_probe.py [--events 200000] [--rounds 3] [--in-flight 4000] [--held 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

from meshgate.bench._nats_anchor import cpu_seconds
from meshgate.brokers import EmbeddedNats

DATA = b"x" * 256
CHUNK = 500
WAYS = ("ack+id", "ack", "id")
# Header lines like a replicated event's (its CloudEvents attributes and Meshgate's own).
_LINES = (
    b"ce-specversion: 1.0\r\nce-type: com.example.bench\r\nce-source: /bench/producer\r\n"
    b"ce-time: 2026-12-07T19:32:06.123456Z\r\nce-datacontenttype: application/octet-stream\r\n"
    b"mg-origin: a\r\nmg-route: a,b\r\n"
)


def _chunk(way: str, run: str, first: int, reply_prefix: bytes) -> bytes:
    id_name = b"Nats-Msg-Id" if way != "ack" else b"Xats-Msg-Id"  # same length: same bytes on the wire
    parts: list[bytes] = []
    for i in range(first, first + CHUNK):
        head = b"NATS/1.0\r\n%b: %b-%d\r\nmg-origin-seq: %d\r\n%b\r\n" % (id_name, run.encode(), i, i, _LINES)
        reply = b" %b.%d" % (reply_prefix, i) if way != "id" else b""
        parts += [b"HPUB mesh.a.%d.bench%b %d %d\r\n" % (i % 8, reply, len(head), len(head) + len(DATA)), head, DATA]
        parts.append(b"\r\n")
    return b"".join(parts)


def _rss_mb(pid: int | None) -> float:
    """The resident memory of a live process, in MB (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return kb / 1024


async def _stored(nc: Any, stream: str) -> int:
    info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)).data)
    return int(info["state"]["messages"])


async def one_run(
    server: EmbeddedNats, way: str, run: int, *, events: int, in_flight: int, held: int
) -> dict[str, float]:
    nc = await nats.connect(server.url)
    try:
        stream = f"PROBE{run}"
        config = {"name": stream, "subjects": ["mesh.>"], "storage": "file", "duplicate_window": 900_000_000_000}
        reply = json.loads((await nc.request(f"$JS.API.STREAM.CREATE.{stream}", json.dumps(config).encode())).data)
        if "error" in reply:
            raise RuntimeError(f"stream {stream}: {reply['error']}")
        acks = 0
        errors: list[bytes] = []
        acked = asyncio.Event()

        async def on_ack(msg: Any) -> None:
            nonlocal acks
            acks += 1
            acked.set()
            if b'"error"' in msg.data and len(errors) < 3:
                errors.append(msg.data)

        prefix = nc.new_inbox()
        await nc.subscribe(f"{prefix}.*", cb=on_ack)

        async def until(acked_way: bool, count: int) -> None:
            """Until ``count`` events are acked (or, written without replies, stored)."""
            if not acked_way:
                while await _stored(nc, stream) < count:  # noqa: ASYNC110 - no ack to wait for: the count is polled
                    await asyncio.sleep(0.001)
                return
            while acks < count:
                acked.clear()
                await acked.wait()

        async def write(way: str, tag: str, count: int, before: int) -> None:
            # ``before``: events already acked (or stored) in this stream.
            acked_way = way != "id"
            for first in range(0, count, CHUNK):
                await nc._send_command(_chunk(way, tag, first, prefix.encode()))
                await nc._flush_pending()
                await until(acked_way, before + first + CHUNK - in_flight)
            await until(acked_way, before + count)

        rss0 = _rss_mb(server.pid)
        # What the stream and its id window already hold, written the destination's way.
        await write("ack+id", f"h{run}", held, 0)
        cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
        await write(way, f"r{run}", events, held)
        seconds = time.perf_counter() - t0
        cpu = cpu_seconds(server.pid) - cpu0
        grown = _rss_mb(server.pid) - rss0
        if errors:
            raise RuntimeError(f"{way}: JetStream refused writes: {errors[0]!r}")
        if await _stored(nc, stream) != held + events:
            raise RuntimeError(f"{way}: {await _stored(nc, stream)} of {held + events} stored")
        await nc.request(f"$JS.API.STREAM.DELETE.{stream}", b"", timeout=10)
        return {"events_per_s": events / seconds, "server_us_per_event": cpu * 1e6 / events, "rss_growth_mb": grown}
    finally:
        await nc.close()


async def probe(events: int, rounds: int, in_flight: int, held: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    run = 0
    for r in range(rounds):
        order = WAYS[r % len(WAYS) :] + WAYS[: r % len(WAYS)]
        for way in order:
            run += 1
            # A new server each run: its memory grows only with this run's stream.
            with tempfile.TemporaryDirectory(prefix="meshgate-dest-probe-") as tmp:
                async with EmbeddedNats(data_dir=Path(tmp), server_name="dest-probe") as server:
                    res = await one_run(server, way, run, events=events, in_flight=in_flight, held=held)
            results[way].append(res)
            print(
                f"round {r + 1} {way:7s} {res['events_per_s']:9,.0f} events/s  "
                f"nats-server {res['server_us_per_event']:5.2f} us/event, "
                f"+{res['rss_growth_mb']:.0f} MB",
                file=sys.stderr,
                flush=True,
            )
    out: dict[str, Any] = {"events": events, "rounds": rounds, "in_flight": in_flight, "held": held}
    print(
        f"{'way':8s} {'events/s (mean)':>16s} {'nats-server us/event: rounds':>30s} {'mean':>6s} "
        f"{'RSS growth (MB, mean)':>22s}"
    )
    for way in WAYS:
        us = [r["server_us_per_event"] for r in results[way]]
        rate = statistics.mean(r["events_per_s"] for r in results[way])
        grown = statistics.mean(r["rss_growth_mb"] for r in results[way])
        print(
            f"{way:8s} {rate:16,.0f} {', '.join(f'{u:.2f}' for u in us):>30s} {statistics.mean(us):6.2f} {grown:22.0f}"
        )
        key = way.replace("+", "_")
        out[f"{key}_events_per_s"] = round(rate)
        out[f"{key}_server_us_per_event"] = [round(u, 2) for u in us]
        out[f"{key}_rss_growth_mb"] = round(grown, 1)
    full = statistics.mean(r["server_us_per_event"] for r in results["ack+id"])
    out["pub_ack_share"] = round(1 - statistics.mean(r["server_us_per_event"] for r in results["id"]) / full, 3)
    out["id_window_share"] = round(1 - statistics.mean(r["server_us_per_event"] for r in results["ack"]) / full, 3)
    grown_ids = statistics.mean(r["rss_growth_mb"] for r in results["ack+id"])
    grown_plain = statistics.mean(r["rss_growth_mb"] for r in results["ack"])
    out["id_window_bytes_per_id"] = round((grown_ids - grown_plain) * 2**20 / (held + events))
    print(
        f"of the destination server's CPU per event: the PubAck ~{out['pub_ack_share']:.0%}, "
        f"the id window ~{out['id_window_share']:.0%}; the id window holds "
        f"~{out['id_window_bytes_per_id']} bytes of the server's memory per id"
    )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=4000)
    parser.add_argument("--held", type=int, default=0, help="events (with ids) in each stream before it is measured")
    args = parser.parse_args(argv)
    if args.events < CHUNK or args.events % CHUNK or args.held % CHUNK:
        parser.error(f"--events and --held must be multiples of {CHUNK}")
    result = asyncio.run(probe(args.events, args.rounds, args.in_flight, args.held))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

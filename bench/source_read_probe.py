"""What does the SOURCE nats-server spend per event to hand a link its backlog? A probe.

A catch-up link A -> B reads its origin's partition through a durable pull consumer
(brokers/nats/_consumer.py: AckPolicy.ALL, pull requests of a batch with ``no_wait``, one
ack per batch on the batch's last delivery). On a 2-core machine the source nats-server
spends ~5.5 us of CPU per replicated event on that, against ~2 us for NATS-native stream
sourcing (an AckNone ordered push consumer with flow control). How much of it is the
consumer's ack tracking and delivery, and what would a cheaper read cost?

Runs an embedded nats-server (JetStream, file storage), fills one stream with ``--events``
events of 256 B with Meshgate-like headers under Meshgate's subject layout
(``mesh.<origin>.<partition>.<topic>``, brokers/nats/_subjects.py; ``--partitions`` of origin
``a``, 8 by default as a NATS region's log, interleaved as keys spread them), then drains the
whole backlog with each reader, each twice, alternating. As Meshgate runs one link per
partition, a drain runs one reader per partition at once (filter ``mesh.a.<p>.>``), all on one
plain nats-py connection (not Meshgate's adapter):

* ``pull_ack_all``: durable pull consumer, AckPolicy.ALL, requests of ``--batch`` with
  ``no_wait``, one ack (a request, as Meshgate confirms it) on the last delivery of each batch;
* ``pull_ack_none``: the same consumer with AckPolicy.NONE, no acks;
* ``direct_batch``: batched direct get (ADR-31; stream ``allow_direct``): ``{"seq": N,
  "batch": B, "next_by_subj": filter}`` to ``$JS.API.DIRECT.GET.<stream>``, answered by the
  messages and a ``204 EOB`` status (or ``404`` when nothing is left); no consumer at all;
* ``ordered_push``: nats-py's ordered push consumer (AckNone, flow control, idle heartbeat:
  what stream sourcing uses inside the server); nats-py answers the flow-control requests.

For each drain: events/s, the nats-server's CPU per event (``/proc``) and this client's CPU
per event (nats-py's own parsing included, so only a rough guide to a reader's cost).

Prints the findings and, last, one JSON object with the figures.

    python bench/source_read_probe.py [--events 200000] [--partitions 8] [--batch 1000] [--timeout 60]
        [--rounds 2] [--readers pull_ack_all,pull_ack_none,direct_batch,ordered_push]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from meshgate.bench._nats_anchor import cpu_seconds
from meshgate.brokers import EmbeddedNats
from meshgate.brokers.embedded import find_nats_server
from meshgate.brokers.nats._subjects import SubjectLayout

STREAM = "MESH"
_PREFIX = "mesh."
ORIGIN = "a"
DATA = b"x" * 256
TOPICS = ("orders/created", "orders/shipped", "payments/settled", "users/updated")
READERS = ("pull_ack_all", "pull_ack_none", "direct_batch", "ordered_push")
_FILL_CHUNK = 1000
_FILL_IN_FLIGHT = 8
_STATUS = "Status"
# Server log lines a drain reports: a slow consumer is logged at [INF].
_WORTH_NOTING = ("[WRN]", "[ERR]", "Slow Consumer")


def server_version() -> str:
    out = subprocess.run([str(find_nats_server()), "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip()


def event_hpub(n: int, layout: SubjectLayout, reply: str) -> tuple[int, bytes]:
    """One event as Meshgate stores it (``Nats-Msg-Id`` first, then CloudEvents and mesh headers,
    under the subject layout's subject for its key's partition): (its partition, its HPUB)."""
    key = f"key-{n % 997}"
    partition = layout.partition(key, "")
    subject = layout.subject(TOPICS[n % len(TOPICS)], ORIGIN, partition)
    head = (
        f"NATS/1.0\r\nNats-Msg-Id: ev-{n:09d}\r\nce-id: ev-{n:09d}\r\nce-source: probe\r\n"
        f"ce-type: bench.event\r\nce-specversion: 1.0\r\nmg-key: {key}\r\n"
        f"mg-origin: {ORIGIN}\r\nmg-route: {ORIGIN}\r\n\r\n"
    ).encode()
    line = f"HPUB {subject} {reply} {len(head)} {len(head) + len(DATA)}\r\n".encode()
    return partition, line + head + DATA + b"\r\n"


async def api(nc: Any, subject: str, body: dict[str, object] | None = None) -> dict[str, Any]:
    msg = await nc.request(f"$JS.API.{subject}", json.dumps(body).encode() if body is not None else b"", timeout=10)
    reply: dict[str, Any] = json.loads(msg.data)
    if "error" in reply:
        raise RuntimeError(f"{subject}: {reply['error']}")
    return reply


async def fill(nc: Any, *, events: int, layout: SubjectLayout) -> tuple[int, list[int]]:
    """Stores ``events`` events, each with a reply (at most 8 chunks in flight); returns the
    stream's count and how many events each partition holds."""
    await api(
        nc,
        f"STREAM.CREATE.{STREAM}",
        {"name": STREAM, "subjects": [f"{_PREFIX}>"], "storage": "file", "allow_direct": True},
    )
    acked = 0
    errors = 0
    arrived = asyncio.Event()

    async def on_ack(msg: Any) -> None:
        nonlocal acked, errors
        acked += 1
        errors += b'"error"' in msg.data
        arrived.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_ack)
    per_partition = [0] * layout.partitions
    for start in range(0, events, _FILL_CHUNK):
        frames = [event_hpub(n, layout, inbox) for n in range(start, min(events, start + _FILL_CHUNK))]
        for partition, _ in frames:
            per_partition[partition] += 1
        await nc._send_command(b"".join(frame for _, frame in frames))
        await nc._flush_pending()
        while acked < start - _FILL_IN_FLIGHT * _FILL_CHUNK:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 30)
    while acked < events:
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 30)
    await sub.unsubscribe()
    if errors:
        raise RuntimeError(f"{errors} of {events} publishes answered an error")
    info = await api(nc, f"STREAM.INFO.{STREAM}")
    return int(info["state"]["messages"]), per_partition


@dataclass(slots=True)
class Drain:
    """What one drain saw: deliveries, the sequences in arrival order (spot-checked), the requests made."""

    expect: int
    received: int = 0
    last_seq: int = 0
    out_of_order: int = 0
    requests: int = 0
    acks: int = 0
    largest_reply: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def status(self, code: str) -> None:
        self.statuses[code] = self.statuses.get(code, 0) + 1

    def seen(self, seq: int) -> None:
        """A delivery of stream sequence ``seq``: one at or below the last is a repeat or out of order."""
        if seq <= self.last_seq:
            self.out_of_order += 1
        else:
            self.last_seq = seq


def ack_sequence(reply: str) -> int:
    """The stream sequence in an ack subject ``$JS.ACK.<stream>.<consumer>.<n>.<sseq>.<cseq>.<ts>.<pending>``."""
    return int(reply.split(".")[5])


class Round:
    """One request's deliveries up to its end (``want`` messages or a status)."""

    def __init__(self) -> None:
        self.count = 0
        self.want = 0
        self.status = ""
        self.headers: dict[str, str] = {}
        self.last_reply = ""
        self.ended = asyncio.Event()

    def start(self, want: int) -> None:
        self.count, self.want, self.status, self.headers, self.last_reply = 0, want, "", {}, ""
        self.ended.clear()

    def message(self, msg: Any, drain: Drain) -> None:
        headers = msg.headers or {}
        status = headers.get(_STATUS)
        if status is not None:
            drain.status(status)
            if status != "100":
                self.status, self.headers = status, headers
                self.ended.set()
            return
        self.count += 1
        drain.received += 1
        self.last_reply = msg.reply
        drain.seen(ack_sequence(msg.reply) if msg.reply else int(headers["Nats-Sequence"]))
        if self.count >= self.want:
            self.ended.set()


async def create_consumer(nc: Any, name: str, filter_subject: str, ack_policy: str) -> None:
    # The shape of durable_template() (brokers/nats/_consumer.py), with the ack policy varied.
    config = {
        "durable_name": name,
        "deliver_policy": "all",
        "ack_policy": ack_policy,
        "ack_wait": 30_000_000_000,
        "max_deliver": -1,
        "filter_subject": filter_subject,
        "replay_policy": "instant",
        "max_ack_pending": 50_000,
    }
    body = {"stream_name": STREAM, "config": config, "action": "create"}
    await api(nc, f"CONSUMER.CREATE.{STREAM}.{name}.{filter_subject}", body)


async def read_pull(nc: Any, drain: Drain, *, name: str, filter_subject: str, batch: int, ack: bool) -> None:
    await create_consumer(nc, name, filter_subject, "all" if ack else "none")
    rnd = Round()

    async def on_msg(msg: Any) -> None:
        rnd.message(msg, drain)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=4 * batch)
    body = json.dumps({"batch": batch, "no_wait": True}).encode()
    try:
        while drain.received < drain.expect:
            rnd.start(batch)
            drain.requests += 1
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{name}", body, reply=inbox)
            await asyncio.wait_for(rnd.ended.wait(), 10)
            drain.largest_reply = max(drain.largest_reply, rnd.count)
            if ack and rnd.last_reply:
                # As Meshgate confirms an ack: a request, answered once the ack is applied.
                await nc.request(rnd.last_reply, b"+ACK", timeout=10)
                drain.acks += 1
            if rnd.count == 0 and rnd.status in ("404", "408"):
                break
    finally:
        await sub.unsubscribe()


async def read_direct(nc: Any, drain: Drain, *, filter_subject: str, batch: int) -> None:
    rnd = Round()

    async def on_msg(msg: Any) -> None:
        rnd.message(msg, drain)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=4 * batch)
    try:
        while drain.received < drain.expect:
            rnd.start(batch + 1)  # the messages, then the EOB status ends it
            drain.requests += 1
            # From just after the last sequence seen: the reader's own position, nothing in the server.
            body = json.dumps({"seq": drain.last_seq + 1, "batch": batch, "next_by_subj": filter_subject}).encode()
            await nc.publish(f"$JS.API.DIRECT.GET.{STREAM}", body, reply=inbox)
            await asyncio.wait_for(rnd.ended.wait(), 10)
            drain.largest_reply = max(drain.largest_reply, rnd.count)
            if not rnd.count or rnd.status != "204" or rnd.headers.get("Nats-Num-Pending") == "0":
                break
    finally:
        await sub.unsubscribe()


async def read_ordered(nc: Any, drain: Drain, *, filter_subject: str) -> None:
    js = nc.jetstream()

    async def on_msg(msg: Any) -> None:
        drain.received += 1
        drain.seen(ack_sequence(msg.reply))
        if drain.received >= drain.expect:
            drain.done.set()

    sub = await js.subscribe(
        filter_subject,
        stream=STREAM,
        cb=on_msg,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        pending_msgs_limit=1_000_000,
    )
    drain.requests = 1
    try:
        await drain.done.wait()
    finally:
        await sub.unsubscribe()


def reader_call(
    nc: Any, drain: Drain, *, reader: str, name: str, filter_subject: str, batch: int
) -> Callable[[], Awaitable[None]]:
    readers: dict[str, Callable[[], Awaitable[None]]] = {
        "pull_ack_all": lambda: read_pull(nc, drain, name=name, filter_subject=filter_subject, batch=batch, ack=True),
        "pull_ack_none": lambda: read_pull(nc, drain, name=name, filter_subject=filter_subject, batch=batch, ack=False),
        "direct_batch": lambda: read_direct(nc, drain, filter_subject=filter_subject, batch=batch),
        "ordered_push": lambda: read_ordered(nc, drain, filter_subject=filter_subject),
    }
    return readers[reader]


async def drain_once(
    server: EmbeddedNats,
    *,
    layout: SubjectLayout,
    reader: str,
    run: int,
    expect: list[int],
    batch: int,
    timeout: float,
) -> dict[str, object]:
    """One reader per partition (as Meshgate runs one link per partition), all on one connection."""
    pid = server.pid
    assert pid is not None
    troubles: list[str] = []

    async def on_disconnect() -> None:
        if not nc.is_closed:
            troubles.append("disconnected")

    async def on_error(exc: Exception) -> None:
        troubles.append(f"{type(exc).__name__}: {exc}")

    nc = await nats.connect(server.url, pending_size=64 * 1024 * 1024, disconnected_cb=on_disconnect, error_cb=on_error)
    log_mark = len(server.log_tail(10_000))
    drains = [Drain(expect=n) for n in expect]
    names = [f"probe-{reader.replace('_', '-')}-{run}-p{p}" for p in range(len(expect))]
    calls = [
        reader_call(nc, d, reader=reader, name=names[p], filter_subject=f"{layout.head(ORIGIN, p)}>", batch=batch)
        for p, d in enumerate(drains)
    ]
    error = ""
    load = os.getloadavg()[0]
    cpu0, client0, t0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(call() for call in calls)), timeout)
    except TimeoutError:
        error = f"timed out after {timeout} s"
    except (RuntimeError, nats.errors.Error) as exc:
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - t0
    server_cpu, client_cpu = cpu_seconds(pid) - cpu0, time.process_time() - client0
    if reader.startswith("pull"):
        for name in names:
            try:
                await api(nc, f"CONSUMER.DELETE.{STREAM}.{name}")
            except RuntimeError as exc:
                error = error or f"delete: {exc}"
    await nc.close()
    server_said = [line for line in server.log_tail(10_000)[log_mark:] if any(m in line for m in _WORTH_NOTING)]
    received = sum(d.received for d in drains)
    n = max(received, 1)
    statuses: dict[str, int] = {}
    for d in drains:
        for code, count in d.statuses.items():
            statuses[code] = statuses.get(code, 0) + count
    if received < sum(expect) and not error:
        error = f"drained {received} of {sum(expect)}"
    return {
        "events": received,
        "events_per_s": round(received / seconds),
        "server_cpu_us_per_event": round(server_cpu / n * 1e6, 2),
        "client_cpu_us_per_event": round(client_cpu / n * 1e6, 1),
        "seconds": round(seconds, 2),
        "loadavg_before": round(load, 2),
        "requests": sum(d.requests for d in drains),
        "acks": sum(d.acks for d in drains),
        "largest_reply": max(d.largest_reply for d in drains),
        "out_of_order": sum(d.out_of_order for d in drains),
        "statuses": statuses,
        "error": error,
        "client_troubles": troubles[:5],
        "server_warnings": [line[-160:] for line in server_said[:5]],
    }


async def direct_supported(nc: Any) -> str:
    """ "" when a batched direct get answers with messages and an EOB; else what it answered."""
    box: list[Any] = []
    ended = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        box.append(msg)
        if (msg.headers or {}).get(_STATUS):
            ended.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg)
    body = json.dumps({"seq": 1, "batch": 3, "next_by_subj": f"{_PREFIX}{ORIGIN}.*.>"}).encode()
    await nc.publish(f"$JS.API.DIRECT.GET.{STREAM}", body, reply=inbox)
    try:
        await asyncio.wait_for(ended.wait(), 5)
    except TimeoutError:
        return f"no end status within 5 s ({len(box)} replies)"
    finally:
        await sub.unsubscribe()
    last = box[-1].headers or {}
    if last.get(_STATUS) == "204" and len(box) == 4:
        return ""
    return f"answered {len(box)} replies ending in {last}"


async def main(
    *, events: int, partitions: int, batch: int, timeout: float, chosen: list[str], rounds: int
) -> dict[str, object]:
    out: dict[str, object] = {"server_version": server_version()}
    print(f"nats-server: {out['server_version']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="meshgate-probe-") as data_dir:
        async with EmbeddedNats(data_dir=data_dir, log_lines=100_000) as server:
            pid = server.pid
            assert pid is not None
            nc = await nats.connect(server.url, pending_size=64 * 1024 * 1024)
            try:
                t0 = time.perf_counter()
                layout = SubjectLayout(_PREFIX, partitions)
                stored, expect = await fill(nc, events=events, layout=layout)
                print(
                    f"filled {stored} events in {time.perf_counter() - t0:.1f} s, {partitions} partitions", flush=True
                )
                unsupported = await direct_supported(nc)
                out["direct_batch_unsupported"] = unsupported
            finally:
                await nc.close()
            readers = [r for r in chosen if not (r == "direct_batch" and unsupported)]
            if unsupported:
                print(f"direct_batch: not supported ({unsupported})", flush=True)
            results: dict[str, list[dict[str, object]]] = {r: [] for r in readers}
            for run in range(rounds):
                for reader in readers:
                    figures = await drain_once(
                        server, layout=layout, reader=reader, run=run, expect=expect, batch=batch, timeout=timeout
                    )
                    results[reader].append(figures)
                    print(f"{reader:>14} run {run}: {figures}", flush=True)
    out.update(summarize(results))
    out.update(
        {
            "events": events,
            "drained_per_partition": expect,
            "partitions": partitions,
            "batch": batch,
            "rounds": rounds,
            "python": sys.version.split()[0],
            "nats_py": importlib.metadata.version("nats-py"),
            "loadavg": os.getloadavg()[0],
            "runs": results,
        }
    )
    return out


def summarize(results: dict[str, list[dict[str, object]]]) -> dict[str, object]:
    """Mean and least server CPU per event of each reader, and what each saves against pull_ack_all.

    The least of the runs is the steadier figure on a shared machine: other load only adds.
    """
    mean: dict[str, float] = {}
    least: dict[str, float] = {}
    for reader, runs in results.items():
        values = [float(str(r["server_cpu_us_per_event"])) for r in runs]
        mean[reader] = round(sum(values) / len(values), 2)
        least[reader] = min(values)
    saves: dict[str, dict[str, float]] = {}
    if "pull_ack_all" in mean:
        for reader, value in mean.items():
            if reader != "pull_ack_all":
                saves[reader] = {
                    "mean": round(mean["pull_ack_all"] - value, 2),
                    "least": round(least["pull_ack_all"] - least[reader], 2),
                }
    print(f"server CPU us/event, mean of runs: {mean}; least: {least}", flush=True)
    print(f"saved per event against pull_ack_all: {saves}", flush=True)
    return {
        "server_cpu_us_per_event_mean": mean,
        "server_cpu_us_per_event_least": least,
        "saved_us_per_event_vs_pull_ack_all": saves,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events stored (default 200000)")
    parser.add_argument(
        "--partitions", type=int, default=8, help="partitions of origin a, one reader each (default 8, as NATS regions)"
    )
    parser.add_argument("--batch", type=int, default=1000, help="events per pull or direct get request (default 1000)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each drain may take (default 60)")
    parser.add_argument("--rounds", type=int, default=2, help="drains of each reader, alternating (default 2)")
    parser.add_argument(
        "--readers", default=",".join(READERS), help=f"readers to run, comma-separated (default {','.join(READERS)})"
    )
    args = parser.parse_args()
    chosen = [r for r in args.readers.split(",") if r]
    unknown = sorted(set(chosen) - set(READERS))
    if unknown:
        parser.error(f"unknown readers {unknown}; choose from {list(READERS)}")
    figures = asyncio.run(
        main(
            events=args.events,
            partitions=args.partitions,
            batch=args.batch,
            timeout=args.timeout,
            chosen=chosen,
            rounds=args.rounds,
        )
    )
    print(json.dumps(figures))

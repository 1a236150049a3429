"""Replication between two regions: Meshgate against NATS-native JetStream sourcing, in one run.

Everything on loopback, events of 256 bytes of data, each live phase about ``--seconds``:

Anchor (what a user would build with NATS alone): two nats-servers with JetStream in domains
``A`` and ``B``, B a leafnode of A; stream ``SRC`` on A (``mesh.>``, file storage), stream
``DST`` on B sourcing ``SRC`` through ``$JS.A.API``.

* live: ``nats_append_bench.bench_raw`` (raw nats-py, one inbox, 4,000 acks in flight)
  publishes to SRC; we watch DST fill (events/s) and sample the latency from publish (a
  ``Bench-Ts`` header) to the JetStream timestamp of the DST copy (p50/p99);
* half: the same publisher paced to half the live rate (latency below saturation);
* catch-up: ``--backlog`` events put into a new SRC with nothing sourcing it, then DST is
  created; time until DST holds them all.

Meshgate: regions ``a`` and ``b`` (``kind: embedded``), each its own ``meshgate serve``
process, routing ``bench/*`` -> [a, b]:

* live: one ``PublishStream`` to a's gateway, 100 events per request, keys varied, the
  CloudEvents ``time`` set by the publisher; we read b's store directly (nats-py on b's
  embedded nats-server, stream ``MESHGATE``): events/s arriving in b, and latency from the
  event's ``time`` to the JetStream timestamp of b's copy;
* half: paced to half the anchor's live rate (the brief's half load), and to half Meshgate's
  own live rate (below its saturation);
* catch-up: b's gateway stopped (SIGTERM; its embedded broker stops with it), ``--backlog``
  events published into a, b started again; time from b serving until it holds them all;
* peak RSS (VmHWM) of each gateway process and of each nats-server.

"Live rate" is the destination's events/s during the publish window; the drain figure is
all published events over the time until the destination held them all. Every wait is
bounded (``--drain``, ``--catchup-timeout``, and a stall cut-off); on a timeout the table
says what was reached. Prints a table and, last, one JSON object with every figure and the
ratios meshgate/anchor.

    python bench/replication_bench.py [--seconds 5] [--backlog 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats

from meshgate.bench import _nats_anchor as anchor
from meshgate.bench._nats_anchor import (
    CatchupResult,
    LiveResult,
    cpu_seconds,
    percentile,
    sample_since,
    subject_count,
    watch_fill,
)
from meshgate.bench.nats_append_bench import DATA
from meshgate.brokers._codec import parse_time
from meshgate.config import REPLICATION_SECRET_VARIABLE
from meshgate.testing import ServeProcess
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc

BATCH = 100
KEYS = 64
STREAM = "MESHGATE"
# "embedded NATS <name> ready at <url>[, monitoring <url>] (pid <n>, ...)"
_EMBEDDED_URL = re.compile(rb"embedded NATS .* ready at (nats://[^\s,]+)[^(\n]* \(pid (\d+)")


# -- helpers -----------------------------------------------------------------------------------


def peak_rss_mb(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: all bound at once, so no two picks are the same port
    (one bound and released, then the next, can be given the same number: a run once started
    two gateways on one port)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def _r(x: float, digits: int = 0) -> float | int | None:
    if math.isnan(x):
        return None
    return round(x, digits) if digits else round(x)


def _ratio(m: float, a: float) -> float | None:
    if math.isnan(m) or math.isnan(a) or not a:
        return None
    return round(m / a, 3)


# -- the Meshgate side -------------------------------------------------------------------------


@dataclass
class Region:
    name: str
    port: int
    data_dir: Path
    config: Path
    proc: ServeProcess | None = None
    nats_url: str = ""
    nats_pid: int | None = None
    peak_rss: float = 0.0
    nats_peak_rss: float = 0.0

    async def start(self) -> str:
        self.proc = ServeProcess(
            config=self.config,
            region=self.name,
            data_dir=self.data_dir,
            extra=("--listen", f"127.0.0.1:{self.port}", "--no-watch"),
        )
        address = await self.proc.start(timeout=60)
        m = _EMBEDDED_URL.search(b"".join(self.proc.log))
        if not m:
            raise RuntimeError(f"region {self.name}: no embedded NATS url in its log:\n{self.proc.text()}")
        self.nats_url, self.nats_pid = m.group(1).decode(), int(m.group(2))
        return address

    def note_rss(self) -> None:
        if self.proc is not None and self.proc.proc is not None and self.proc.proc.returncode is None:
            self.peak_rss = max(self.peak_rss, peak_rss_mb(self.proc.pid))
        self.nats_peak_rss = max(self.nats_peak_rss, peak_rss_mb(self.nats_pid) if self.nats_pid else 0.0)

    async def stop(self) -> None:
        """SIGTERM, as an operator would: the gateway drains, then its embedded broker stops."""
        if self.proc is None or self.proc.proc is None:
            return
        self.note_rss()
        await terminate(self.proc)

    async def close(self) -> None:
        if self.proc is not None:
            await self.proc.close()


async def terminate(proc: ServeProcess) -> None:
    """SIGTERM, up to 30 s to drain, then whatever is left is killed."""
    if proc.proc is not None and proc.proc.returncode is None:
        proc.signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await proc.wait(timeout=30)
    await proc.close()


def mesh_file(
    path: Path, a: Region, b: Region, *, partitions: int | None = None, batch_events: int | None = None
) -> None:
    # The region's nats.partitions and the links' settings.replication_batch_events when given;
    # the defaults otherwise.
    nats = f"      nats:\n        partitions: {partitions}\n" if partitions else ""
    settings = f"  settings:\n    replication_batch_events: {batch_events}\n" if batch_events is not None else ""
    path.write_text(
        "event_mesh:\n"
        "  regions:\n"
        f"    - name: {a.name}\n      kind: embedded\n      gateway: 127.0.0.1:{a.port}\n{nats}"
        f"    - name: {b.name}\n      kind: embedded\n      gateway: 127.0.0.1:{b.port}\n{nats}"
        "  routing:\n"
        '    - topic: "bench/*"\n'
        f'      regions: ["{a.name}", "{b.name}"]\n'
        # Replication between the two regions is authenticated, as a gateway requires.
        f"  security:\n    replication_secret: ${{{REPLICATION_SECRET_VARIABLE}}}\n"
        f"{settings}"
    )
    os.environ.setdefault(REPLICATION_SECRET_VARIABLE, secrets.token_hex(32))


def add_batch_events_option(parser: argparse.ArgumentParser) -> None:
    """``--batch-events N``: the links' ``settings.replication_batch_events`` in the bench's mesh file."""
    parser.add_argument(
        "--batch-events",
        type=int,
        default=None,
        help="settings.replication_batch_events of the mesh (default: the setting's default)",
    )


def two_regions(root: Path, *, partitions: int | None = None, batch_events: int | None = None) -> tuple[Region, Region]:
    """Regions a and b of one mesh file (``root/mesh.yaml``), each gateway on its own free port."""
    config = root / "mesh.yaml"
    port_a, port_b = free_ports(2)
    a = Region("a", port_a, root / "data-a", config)
    b = Region("b", port_b, root / "data-b", config)
    mesh_file(config, a, b, partitions=partitions, batch_events=batch_events)
    return a, b


@dataclass
class Published:
    accepted: int = 0
    refused: int = 0
    seconds: float = 0.0
    error: str = ""

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


async def publish_stream(
    stub: gateway_pb2_grpc.GatewayStub,
    topic: str,
    *,
    seconds: float,
    rate: float | None = None,
    limit: int | None = None,
) -> Published:
    """One PublishStream, 100 events per request, for ``seconds`` or ``limit`` events."""
    run = topic.replace("/", "-")
    template = gateway_pb2.PublishRequest(
        events=[
            event_pb2.Event(topic=topic, source="/bench", type="bench.event", key=f"k{i % KEYS}", data=DATA)
            for i in range(BATCH)
        ]
    )
    out = Published()
    start = time.perf_counter()
    deadline = start + seconds

    async def requests() -> AsyncIterator[gateway_pb2.PublishRequest]:
        b = 0
        while time.perf_counter() < deadline and (limit is None or b * BATCH < limit):
            if rate:
                wait = start + b * BATCH / rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            req = gateway_pb2.PublishRequest()
            req.CopyFrom(template)
            req.batch_id = b
            now = time.time_ns()
            for i, e in enumerate(req.events):
                e.id = f"{run}-{b}-{i}"
                e.key = f"k{(b * BATCH + i) % KEYS}"
                e.time.FromNanoseconds(now)
            b += 1
            yield req

    try:
        async for resp in stub.PublishStream(requests()):
            for r in resp.results:
                if r.outcome == event_pb2.OUTCOME_ACCEPTED:
                    out.accepted += 1
                else:
                    out.refused += 1
    except grpc.aio.AioRpcError as exc:
        out.error = f"{exc.code().name}: {exc.details()}"
    out.seconds = time.perf_counter() - start
    return out


def ce_time_ns(msg: Any) -> int | None:
    v = (msg.headers or {}).get("ce-time")
    if not v:
        return None
    ts = parse_time(v)
    return ts.seconds * 1_000_000_000 + ts.nanos


def origin_seq(msg: Any) -> int | None:
    v = (msg.headers or {}).get("mg-origin-seq")
    return int(v) if v and v.isdigit() else None


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


async def busy_during(pids: dict[str, int | None], seconds: float) -> dict[str, float]:
    """Cores each process kept busy over the next ``seconds``, and the machine's busy share."""
    cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
    busy0, total0 = machine_busy()
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - t0
    out = {k: round((cpu_seconds(pid) - cpu0[k]) / elapsed, 2) for k, pid in pids.items()}
    busy1, total1 = machine_busy()
    out["machine busy share"] = round((busy1 - busy0) / (total1 - total0), 2) if total1 > total0 else math.nan
    return out


@dataclass
class Meshgate:
    a: Region
    b: Region
    stub: gateway_pb2_grpc.GatewayStub | None = None
    channel: grpc.aio.Channel | None = None
    nb: Any = None
    notes: list[str] = field(default_factory=list)
    # Per live phase (topic): cores each process kept busy during the publish window, and
    # the share of the whole machine that was busy (everyone's load, not only ours).
    live_cpu: dict[str, dict[str, float]] = field(default_factory=dict)

    def _pids(self) -> dict[str, int | None]:
        return {
            "gateway a": self.a.proc.pid if self.a.proc else None,
            "gateway b": self.b.proc.pid if self.b.proc else None,
            "nats-server a": self.a.nats_pid,
            "nats-server b": self.b.nats_pid,
        }

    async def start(self) -> None:
        """Starts both regions, a client of b's broker and a channel to a's gateway."""
        address, _ = await asyncio.gather(self.a.start(), self.b.start())
        await self.connect_b()
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)

    async def close(self) -> None:
        """Closes the clients and stops both regions, their embedded servers with them."""
        if self.nb is not None:
            with contextlib.suppress(Exception):
                await self.nb.close()
        if self.channel is not None:
            await self.channel.close()
        await asyncio.gather(self.a.stop(), self.b.stop(), return_exceptions=True)
        await asyncio.gather(self.a.close(), self.b.close(), return_exceptions=True)

    async def connect_b(self) -> None:
        if self.nb is not None:
            with contextlib.suppress(Exception):
                await self.nb.close()
        self.nb = await nats.connect(self.b.nats_url, max_reconnect_attempts=2, allow_reconnect=False)

    async def live(self, topic: str, seconds: float, rate: float | None, drain: float, stall: float) -> LiveResult:
        assert self.stub is not None
        # Every origin and partition of the topic (docs/SUBJECTS.md).
        subject = "mesh.*.*." + topic.replace("/", ".")
        js = self.nb.jetstream()
        before = (await js.stream_info(STREAM)).state.last_seq
        start = time.perf_counter()
        pub = asyncio.create_task(publish_stream(self.stub, topic, seconds=seconds, rate=rate))
        cpu_task = asyncio.create_task(busy_during(self._pids(), seconds))

        def target() -> int | None:
            return pub.result().accepted if pub.done() else None

        fill = await watch_fill(
            lambda: subject_count(js, STREAM, subject), start, target, timeout=seconds + drain, stall=stall
        )
        p = await pub
        if p.error:
            self.notes.append(f"{topic}: PublishStream ended with {p.error}")
        self.live_cpu[topic] = await cpu_task  # done by now: the fill watch outlasts the publish window
        res = LiveResult(publish_rate=p.rate, published=p.accepted)
        res.take_fill(fill, seconds)
        res.complete = fill.reached >= p.accepted
        self.a.note_rss()
        self.b.note_rss()
        res.latency = await sample_since(
            js,
            STREAM,
            subject,
            before,
            sent_ns=ce_time_ns,
            source_url=self.a.nats_url,
            source_stream=STREAM,
            source_seq=origin_seq,
        )
        return res

    async def catchup(self, topic: str, backlog: int, timeout: float, stall: float) -> tuple[CatchupResult, dict]:
        assert self.stub is not None
        # Every origin and partition of the topic (docs/SUBJECTS.md).
        subject = "mesh.*.*." + topic.replace("/", ".")
        extra: dict[str, object] = {}
        with contextlib.suppress(Exception):
            await self.nb.close()
        self.nb = None
        await self.b.stop()
        t0 = time.perf_counter()
        p = await publish_stream(self.stub, topic, seconds=max(60.0, backlog / 2000), limit=backlog)
        extra["backlog_publish_events_per_s"] = round(p.rate)
        extra["backlog_published"] = p.accepted
        if p.error:
            self.notes.append(f"backlog: PublishStream ended with {p.error}")
        self.a.note_rss()
        t1 = time.perf_counter()
        await self.b.start()
        serving = time.perf_counter()
        extra["b_restart_seconds"] = round(serving - t1, 3)
        await self.connect_b()
        js = self.nb.jetstream()
        pids = {
            "gateway a": self.a.proc.pid if self.a.proc else None,
            "gateway b": self.b.proc.pid if self.b.proc else None,
            "nats-server a": self.a.nats_pid,
            "nats-server b": self.b.nats_pid,
        }
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        fill = await watch_fill(
            lambda: subject_count(js, STREAM, subject),
            serving,
            lambda: p.accepted,
            timeout=timeout,
            interval=0.05,
            stall=stall,
        )
        first = next((t for t, n in fill.samples if n > 0), None)
        extra["first_event_after_s"] = round(first, 3) if first is not None else None
        extra["b_down_seconds"] = round(serving - t0, 3)
        self.a.note_rss()
        self.b.note_rss()
        cpu = {k: cpu_seconds(pids[k]) - v for k, v in cpu0.items()}
        return CatchupResult(
            backlog=p.accepted, fill_seconds=fill.seconds, reached=fill.reached, complete=fill.complete, cpu_seconds=cpu
        ), extra


# -- the run -----------------------------------------------------------------------------------


async def run_anchor(pair: anchor.AnchorPair, args: argparse.Namespace) -> dict[str, object]:
    """The anchor's live, half-rate and catch-up phases; the pair stays up for one more later."""
    await pair.start()
    await anchor.setup_streams(pair)
    live = await anchor.anchor_live(pair, "mesh.bench.live", args.seconds, None, args.drain)
    print(f"anchor live: {live.window_rate:,.0f} events/s into DST", file=sys.stderr, flush=True)
    half = await anchor.anchor_live(pair, "mesh.bench.half", args.seconds, live.window_rate / 2, args.drain)
    cu = await anchor.anchor_catchup(pair, "mesh.bench.catchup", args.backlog, args.catchup_timeout)
    print(f"anchor catch-up: {cu.rate:,.0f} events/s", file=sys.stderr, flush=True)
    return {"live": live, "half": half, "catchup": cu}


async def run_meshgate(tmp: Path, args: argparse.Namespace, anchor_rate: float) -> dict[str, object]:
    seconds, backlog, drain, timeout, stall = args.seconds, args.backlog, args.drain, args.catchup_timeout, args.stall
    root = tmp / "meshgate"
    root.mkdir()
    a, b = two_regions(
        root, partitions=getattr(args, "partitions", None), batch_events=getattr(args, "batch_events", None)
    )
    mg = Meshgate(a, b)
    out: dict[str, object] = {"notes": mg.notes, "live_cpu": mg.live_cpu}
    try:
        await mg.start()
        live = await mg.live("bench/live", seconds, None, drain, stall)
        out["live"] = live
        print(
            f"meshgate live: {live.window_rate:,.0f} events/s into b ({live.delivered}/{live.published})",
            file=sys.stderr,
            flush=True,
        )
        if live.delivered == 0:
            mg.notes.append("no event reached region b: replication is not working; later phases skipped")
            return out
        out["half"] = await mg.live("bench/half", seconds, anchor_rate / 2, drain, stall)
        own = max(live.window_rate, 1.0)
        out["half_own"] = await mg.live("bench/halfown", seconds, own / 2, drain, stall)
        cu, extra = await mg.catchup("bench/catchup", backlog, timeout, stall)
        print(f"meshgate catch-up: {cu.rate:,.0f} events/s ({cu.reached}/{cu.backlog})", file=sys.stderr, flush=True)
        out["catchup"] = cu
        out["catchup_extra"] = extra
    except Exception as exc:  # noqa: BLE001 - report the anchor and what Meshgate reached
        mg.notes.append(f"meshgate phases stopped by {type(exc).__name__}: {exc}")
        for r in (a, b):
            if r.proc is not None:
                tail = r.proc.text().strip().splitlines()[-5:]
                mg.notes.append(f"last log lines of region {r.name}: " + " | ".join(tail))
    finally:
        a.note_rss()
        b.note_rss()
        out["rss"] = {"a": a.peak_rss, "b": b.peak_rss}
        out["nats_rss"] = {"a": a.nats_peak_rss, "b": b.nats_peak_rss}
        await mg.close()
    return out


def _lat(res: Any, p: float) -> float:
    return percentile(res.latencies_ms, p) if isinstance(res, LiveResult) else float("nan")


def _hop(res: Any, p: float) -> float:
    return percentile(res.hop_ms, p) if isinstance(res, LiveResult) else float("nan")


# The table printed and the JSON returned are one pass over the same results, line for line.
def report(an: dict[str, Any], mg: dict[str, Any], args: argparse.Namespace) -> dict[str, object]:  # noqa: PLR0915
    nan = float("nan")
    al: LiveResult = an["live"]
    ah: LiveResult = an["half"]
    am: LiveResult | None = an.get("half_mg")
    ac: CatchupResult = an["catchup"]
    ml: LiveResult | None = mg.get("live")
    mh: LiveResult | None = mg.get("half")
    mo: LiveResult | None = mg.get("half_own")
    mc: CatchupResult | None = mg.get("catchup")
    m_live = ml.window_rate if ml else nan
    m_cu = mc.rate if mc and mc.reached else (0.0 if mc else nan)
    rows: list[tuple[str, float, float]] = [
        ("live: publish rate at the source (events/s)", al.publish_rate, ml.publish_rate if ml else nan),
        ("live: rate into the destination (events/s)", al.window_rate, m_live),
        ("live: drain rate, all delivered (events/s)", al.drain_rate, ml.drain_rate if ml else nan),
        ("live: latency p50 (ms)", _lat(al, 50), _lat(ml, 50)),
        ("live: latency p99 (ms)", _lat(al, 99), _lat(ml, 99)),
        ("at half anchor rate: latency p50 (ms)", _lat(ah, 50), _lat(mh, 50)),
        ("at half anchor rate: latency p99 (ms)", _lat(ah, 99), _lat(mh, 99)),
        ("at half meshgate rate: latency p50 (ms)", _lat(am, 50), _lat(mo, 50)),
        ("at half meshgate rate: latency p99 (ms)", _lat(am, 99), _lat(mo, 99)),
        ("  of which the hop, src->dst stored p50 (ms)", _hop(am, 50), _hop(mo, 50)),
        ("  of which the hop, src->dst stored p99 (ms)", _hop(am, 99), _hop(mo, 99)),
        (f"catch-up of {args.backlog:,} (events/s)", ac.rate, m_cu),
    ]
    print(f"{'measurement (256 B events)':<48} {'NATS anchor':>12} {'meshgate':>12} {'m/anchor':>9}")
    for name, av, mv in rows:
        ratio = _ratio(mv, av)
        fmt = (lambda v: f"{v:>12,.0f}") if "events/s" in name else (lambda v: f"{v:>12,.2f}")
        print(f"{name:<48} {fmt(av)} {fmt(mv)} {'' if ratio is None else f'{ratio:>9.3f}'}")
    ar, mr, mnr = an.get("rss", {}), mg.get("rss", {}), mg.get("nats_rss", {})
    print(
        f"peak RSS (MB): anchor nats-server A {ar.get('A', nan):.0f}, B {ar.get('B', nan):.0f}; "
        f"meshgate gateway a {mr.get('a', nan):.0f}, b {mr.get('b', nan):.0f} "
        f"(their embedded nats-servers {mnr.get('a', nan):.0f}, {mnr.get('b', nan):.0f})"
    )
    for res, name in ((ml, "live"), (mh, "half anchor rate"), (mo, "half own rate")):
        if res is not None and not res.complete:
            print(f"meshgate {name}: only {res.delivered:,} of {res.published:,} events reached b in time")
    if mc is not None and not mc.complete:
        print(f"meshgate catch-up: only {mc.reached:,} of {mc.backlog:,} events reached b in time")
    if mh is not None:
        print(
            f"offered loads: half anchor rate {al.window_rate / 2:,.0f} events/s (published: anchor "
            f"{ah.publish_rate:,.0f}, meshgate {mh.publish_rate:,.0f}); half meshgate rate "
            f"{m_live / 2:,.0f} events/s (published: anchor {am.publish_rate if am else nan:,.0f}, "
            f"meshgate {mo.publish_rate if mo else nan:,.0f})"
        )

    def cpu_line(cu: CatchupResult) -> str:
        per = cu.cpu_us_per_event()
        cores = sum(cu.cpu_seconds.values()) / cu.fill_seconds if cu.fill_seconds else nan
        return ", ".join(f"{k} {v:,.1f}" for k, v in per.items()) + f" (busy cores {cores:.2f})"

    print(f"catch-up CPU per event (us): anchor: {cpu_line(ac)}")
    if mc is not None:
        print(f"                            meshgate: {cpu_line(mc)}")
    for topic, cores in mg.get("live_cpu", {}).items():
        shown = ", ".join(f"{k} {v}" for k, v in cores.items())
        print(f"meshgate {topic}: busy cores during the publish window: {shown}")
    for note in mg.get("notes", []):
        print(f"note: {note}")

    out: dict[str, object] = {
        "event_data_bytes": len(DATA),
        "seconds_each": args.seconds,
        "backlog": args.backlog,
        "latency_from": {
            "anchor": "publish time (Bench-Ts header) -> JetStream timestamp of the DST copy in domain B",
            "meshgate": "event time set by the publisher -> JetStream timestamp of the copy in region b's broker",
        },
    }
    out.update(al.as_dict("anchor_live"))
    out.update(ah.as_dict("anchor_half"))
    if am is not None:
        out.update(am.as_dict("anchor_half_meshgate_rate"))
    out["anchor_catchup_events_per_s"] = round(ac.rate)
    out["anchor_catchup_seconds"] = round(ac.fill_seconds, 3)
    out["anchor_catchup_complete"] = ac.complete
    out["anchor_catchup_cpu_us_per_event"] = ac.cpu_us_per_event()
    for key, res in (("live", ml), ("half_anchor_rate", mh), ("half_own_rate", mo)):
        if res is not None:
            out.update(res.as_dict(f"meshgate_{key}"))
    if mc is not None:
        out["meshgate_catchup_events_per_s"] = round(m_cu)
        out["meshgate_catchup_seconds"] = round(mc.fill_seconds, 3)
        out["meshgate_catchup_reached"] = mc.reached
        out["meshgate_catchup_complete"] = mc.complete
        out["meshgate_catchup_cpu_us_per_event"] = mc.cpu_us_per_event()
        out.update({f"meshgate_catchup_{k}": v for k, v in mg.get("catchup_extra", {}).items()})
    out["meshgate_replicating"] = bool(ml and ml.delivered)
    out["meshgate_live_busy_cores"] = mg.get("live_cpu", {})
    out["anchor_peak_rss_mb"] = {k: _r(v, 1) for k, v in ar.items()}
    out["meshgate_gateway_peak_rss_mb"] = {k: _r(v, 1) for k, v in mr.items()}
    out["meshgate_embedded_nats_peak_rss_mb"] = {k: _r(v, 1) for k, v in mnr.items()}
    out["ratio_live_rate"] = _ratio(m_live, al.window_rate)
    out["ratio_catchup_rate"] = _ratio(m_cu, ac.rate)
    out["ratio_live_p50"] = _ratio(_lat(ml, 50), _lat(al, 50))
    out["ratio_live_p99"] = _ratio(_lat(ml, 99), _lat(al, 99))
    out["ratio_half_p50"] = _ratio(_lat(mh, 50), _lat(ah, 50))
    out["ratio_half_p99"] = _ratio(_lat(mh, 99), _lat(ah, 99))
    out["ratio_half_meshgate_rate_p50"] = _ratio(_lat(mo, 50), _lat(am, 50))
    out["ratio_half_meshgate_rate_p99"] = _ratio(_lat(mo, 99), _lat(am, 99))
    out["ratio_half_meshgate_rate_hop_p50"] = _ratio(_hop(mo, 50), _hop(am, 50))
    out["ratio_half_meshgate_rate_hop_p99"] = _ratio(_hop(mo, 99), _hop(am, 99))
    out["notes"] = mg.get("notes", [])
    out["python"] = sys.version.split()[0]
    out["cpus"] = os.cpu_count()
    out["loadavg_at_start"] = args.loadavg
    return out


async def main(args: argparse.Namespace) -> dict[str, object]:
    # SIGTERM cancels the run like Ctrl-C does, so every child process is stopped on the way out.
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    started = time.perf_counter()
    # Everything here shares the machine's cores: other work running meanwhile skews the figures.
    args.loadavg = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="meshgate-repl-") as d:
        tmp = Path(d)
        (tmp / "anchor").mkdir()
        pair = anchor.AnchorPair(tmp / "anchor")
        try:
            an = await run_anchor(pair, args)
            al: LiveResult = an["live"]  # type: ignore[assignment]
            mg = await run_meshgate(tmp, args, al.window_rate)
            ml: LiveResult | None = mg.get("live")  # type: ignore[assignment]
            if ml is not None and ml.delivered:
                # The anchor at Meshgate's half load too (its servers sat idle meanwhile): both
                # systems' latency at one and the same offered load.
                an["half_mg"] = await anchor.anchor_live(
                    pair, "mesh.bench.halfmg", args.seconds, max(ml.window_rate, 1.0) / 2, args.drain
                )
            an["rss"] = {name: peak_rss_mb(pid) for name, pid in pair.pids.items()}
        finally:
            await pair.stop()
    out = report(an, mg, args)
    out["total_seconds"] = round(time.perf_counter() - started, 1)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each live phase (default 5)")
    parser.add_argument("--backlog", type=int, default=200_000, help="events of the catch-up backlog (default 200000)")
    parser.add_argument("--drain", type=float, default=30.0, help="max wait after a live phase (default 30 s)")
    parser.add_argument("--catchup-timeout", type=float, default=90.0, help="max catch-up wait (default 90 s)")
    parser.add_argument("--stall", type=float, default=15.0, help="give up after this long without progress (15 s)")
    parser.add_argument(
        "--partitions", type=int, default=None, help="nats.partitions of both regions (default: the region default)"
    )
    add_batch_events_option(parser)
    args = parser.parse_args()
    if any(n is not None and n < 1 for n in (args.partitions, args.batch_events)):
        parser.error("--partitions and --batch-events must be at least 1")
    try:
        result = asyncio.run(main(args))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("replication_bench: interrupted; every process it started is stopped", file=sys.stderr)
        sys.exit(130)
    print(json.dumps(result))

"""The NATS-native anchor of the replication bench: two JetStream domains joined by a leafnode.

Server A (JetStream domain ``A``) holds stream ``SRC`` (subjects ``mesh.>``, file storage) and
listens for leafnode connections; server B (domain ``B``) connects to it as a leafnode and
holds stream ``DST``, which sources ``SRC`` through A's domain API (``$JS.A.API``). This is
what a user would build with NATS alone to get events from one region to another: the bar
Meshgate's replication is compared with.

The publisher is ``nats_append_bench.bench_raw`` (raw nats-py, one inbox, 4,000 acks in
flight), imported, not copied: its client is wrapped only to stamp each message with its
publish time (header ``Bench-Ts``, ns since the epoch) and, for a paced run, to hold it to a
target rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
from nats.js.api import ExternalStream, StorageType, StreamConfig, StreamSource

from meshgate._process import die_with_parent
from meshgate.bench import nats_append_bench
from meshgate.brokers.embedded._server import find_nats_server

SRC = "SRC"
DST = "DST"
TS_HEADER = "Bench-Ts"
_CLIENT_RE = re.compile(r"Listening for client connections on (\S+):(\d+)")
_LEAF_RE = re.compile(r"Listening for leafnode connections on (\S+):(\d+)")


def nats_server_binary() -> str:
    return str(find_nats_server())


class NatsServerProcess:
    """One nats-server child process on a config text; ready when its log says so."""

    def __init__(self, name: str, config: str, workdir: Path) -> None:
        self.name = name
        self.conf = workdir / f"{name}.conf"
        self.conf.write_text(config)
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self.client_port = 0
        self.leaf_port = 0
        self._pump: asyncio.Task[None] | None = None
        self._waiters: list[tuple[str, asyncio.Future[None]]] = []

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    async def start(self, timeout: float = 15.0) -> None:
        # Linux SIGTERMs the server if the bench dies: no orphan.
        self.proc = await asyncio.create_subprocess_exec(
            *die_with_parent(),
            nats_server_binary(),
            "-c",
            str(self.conf),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        ready = self.wait_for("Server is ready")
        self._pump = asyncio.create_task(self._read_log())
        try:
            await asyncio.wait_for(ready, timeout)
        except TimeoutError:
            tail = "\n".join(self.log[-20:])
            raise RuntimeError(f"nats-server {self.name} not ready in {timeout} s:\n{tail}") from None

    def wait_for(self, text: str) -> Awaitable[None]:
        """A future done when a log line (already seen or to come) contains ``text``."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if any(text in line for line in self.log):
            fut.set_result(None)
        else:
            self._waiters.append((text, fut))
        return fut

    async def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            if m := _CLIENT_RE.search(line):
                self.client_port = int(m.group(2))
            if m := _LEAF_RE.search(line):
                self.leaf_port = int(m.group(2))
            for text, fut in list(self._waiters):
                if text in line and not fut.done():
                    fut.set_result(None)
                    self._waiters.remove((text, fut))

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._pump, 2)
        if proc is not None:
            transport = getattr(proc, "_transport", None)
            if transport is not None:
                transport.close()


def _server_conf(name: str, store: Path, leaf: str) -> str:
    return (
        f'server_name: "{name}"\n'
        'listen: "127.0.0.1:-1"\n'
        f'jetstream {{ store_dir: "{store}", domain: {name} }}\n'
        f"leafnodes {{ {leaf} }}\n"
    )


class AnchorPair:
    """Servers A and B, B a leafnode of A, both with JetStream in their own domain."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.a: NatsServerProcess | None = None
        self.b: NatsServerProcess | None = None

    async def start(self) -> None:
        self.a = NatsServerProcess("A", _server_conf("A", self.workdir / "a", 'listen: "127.0.0.1:-1"'), self.workdir)
        await self.a.start()
        remote = f'remotes: [ {{ url: "nats-leaf://127.0.0.1:{self.a.leaf_port}" }} ]'
        self.b = NatsServerProcess("B", _server_conf("B", self.workdir / "b", remote), self.workdir)
        connected = self.b.wait_for("Leafnode connection created")
        await self.b.start()
        await asyncio.wait_for(connected, 15)
        # Domain A's JetStream API must answer from B, through the leafnode.
        nc = await nats.connect(self.b.url)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    await nc.jetstream(domain="A").account_info()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
        finally:
            await nc.close()

    async def stop(self) -> None:
        for s in (self.b, self.a):
            if s is not None:
                await s.stop()

    @property
    def pids(self) -> dict[str, int]:
        return {s.name: s.proc.pid for s in (self.a, self.b) if s is not None and s.proc is not None}


# -- the publisher: bench_raw with a stamping (and optionally pacing) client -------------------


class _StampingClient:
    """Wraps a nats-py client: each publish carries its time; an optional rate paces them."""

    def __init__(self, nc: Any, rate: float | None, run: str) -> None:
        self._nc = nc
        self._run = run
        self._rate = rate
        self._n = 0
        self._start = 0.0
        self.published = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nc, name)

    async def publish(
        self, subject: str, payload: bytes, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        if self._rate:
            if self._n == 0:
                self._start = time.perf_counter()
            elif self._n % 50 == 0:
                wait = self._start + self._n / self._rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
        self._n += 1
        hdrs = headers if headers is not None else {}  # a fresh dict per call in bench_raw
        # bench_raw's ids restart at 0 each call: tag them with the run, or JetStream's
        # duplicate window would absorb a second run on the same stream.
        if "Nats-Msg-Id" in hdrs:
            hdrs["Nats-Msg-Id"] = f"{self._run}-{hdrs['Nats-Msg-Id']}"
        hdrs[TS_HEADER] = str(time.time_ns())
        await self._nc.publish(subject, payload, reply=reply, headers=hdrs)
        self.published += 1


async def stamped_bench_raw(url: str, subject: str, seconds: float, rate: float | None = None) -> tuple[float, int]:
    """``bench_raw`` with publish-time headers; returns (acked events/s, events published)."""
    clients: list[_StampingClient] = []

    async def connect(*args: Any, **kwargs: Any) -> _StampingClient:
        c = _StampingClient(await nats.connect(*args, **kwargs), rate, subject)
        clients.append(c)
        return c

    saved = nats_append_bench.nats
    nats_append_bench.nats = SimpleNamespace(connect=connect)  # type: ignore[assignment]
    try:
        acked_rate = await nats_append_bench.bench_raw(url, subject, seconds)
    finally:
        nats_append_bench.nats = saved
    return acked_rate, sum(c.published for c in clients)


# -- measuring a destination stream ------------------------------------------------------------


@dataclass
class Fill:
    """How a destination stream filled: samples of (seconds since start, count)."""

    target: int = 0
    reached: int = 0
    seconds: float = 0.0  # until reached == target, or the timeout
    samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.reached >= self.target

    def count_at(self, t: float) -> int:
        best = 0
        for ts, n in self.samples:
            if ts <= t:
                best = n
        return best


async def subject_count(js: Any, stream: str, subject: str) -> int:
    """Messages of ``stream`` on ``subject``, a filter (Meshgate's ``mesh.*.*.<topic>``: every origin and partition)."""
    info = await js.stream_info(stream, subjects_filter=subject)
    return int(sum((info.state.subjects or {}).values()))


async def watch_fill(
    count: Callable[[], Awaitable[int]],
    start: float,
    target: Callable[[], int | None],
    *,
    timeout: float,
    interval: float = 0.05,
    stall: float | None = None,
) -> Fill:
    """Polls ``count()`` until it reaches ``target()`` (None: not known yet), ``timeout``, or,
    with ``stall``, that many seconds without progress once the target is known."""
    fill = Fill()
    deadline = start + timeout
    progress_at = start
    while True:
        try:
            n = await count()
        except Exception:  # noqa: BLE001 - the destination may be restarting: not there yet
            n = fill.reached
        now = time.perf_counter()
        if n > fill.reached:
            progress_at = now
        fill.reached = n
        fill.samples.append((now - start, n))
        tgt = target()
        if tgt is not None and n >= tgt:
            fill.target = tgt
            fill.seconds = now - start
            return fill
        stalled = stall is not None and tgt is not None and now - progress_at > stall
        if now >= deadline or stalled:
            fill.target = tgt if tgt is not None else n
            fill.seconds = now - start
            return fill
        await asyncio.sleep(interval)


@dataclass
class Origin:
    """Where a destination copy's source copy lives: its stream and how to read its sequence."""

    js: Any
    stream: str
    seq: Callable[[Any], int | None]


@dataclass
class Latencies:
    total_ms: list[float] = field(default_factory=list)  # publish -> stored in the destination
    hop_ms: list[float] = field(default_factory=list)  # stored in the source -> stored in the destination


def _stored_ns(msg: Any) -> int:
    return int(msg.time.timestamp() * 1_000_000) * 1000


async def sample_latencies(
    js: Any,
    stream: str,
    subject: str,
    seqs: tuple[int, int],
    *,
    sent_ns: Callable[[Any], int | None],
    origin: Origin | None = None,
    samples: int = 1500,
    concurrency: int = 32,
) -> Latencies:
    """Latencies of up to ``samples`` messages of ``subject`` spread over the destination's
    [first, last] ``seqs``: its JetStream timestamp minus ``sent_ns(msg)`` and, with
    ``origin``, minus the JetStream timestamp of the source copy (the replication hop)."""
    first_seq, last_seq = seqs
    out = Latencies()
    if last_seq < first_seq:
        return out
    step = max(1, (last_seq - first_seq + 1) // samples)
    seen: set[int] = set()
    sem = asyncio.Semaphore(concurrency)

    async def one(seq: int) -> None:
        async with sem:
            try:
                msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
                src_seq = origin.seq(msg) if origin is not None and msg.seq not in seen else None
                src = await origin.js.get_msg(origin.stream, seq=src_seq) if origin and src_seq else None
            except Exception:  # noqa: BLE001 - a missing sample is not an error
                return
        if msg.seq in seen or msg.seq is None or msg.seq > last_seq or msg.time is None:
            return
        seen.add(msg.seq)
        sent = sent_ns(msg)
        if sent is not None:
            out.total_ms.append((_stored_ns(msg) - sent) / 1e6)
        if src is not None and src.time is not None:
            out.hop_ms.append((_stored_ns(msg) - _stored_ns(src)) / 1e6)

    await asyncio.gather(*(one(s) for s in range(first_seq, last_seq + 1, step)))
    return out


async def sample_since(
    js: Any,
    stream: str,
    subject: str,
    before: int,
    *,
    sent_ns: Callable[[Any], int | None],
    source_url: str,
    source_stream: str,
    source_seq: Callable[[Any], int | None],
) -> Latencies:
    """``sample_latencies`` of what ``stream`` took after sequence ``before``, each message's
    source copy read from ``source_stream`` of the server at ``source_url``."""
    after = (await js.stream_info(stream)).state.last_seq
    source = await nats.connect(source_url)
    try:
        origin = Origin(source.jetstream(), source_stream, source_seq)
        return await sample_latencies(js, stream, subject, (before + 1, after), sent_ns=sent_ns, origin=origin)
    finally:
        await source.close()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def header_ts(msg: Any) -> int | None:
    v = (msg.headers or {}).get(TS_HEADER)
    return int(v) if v else None


def sourced_seq(msg: Any) -> int | None:
    """The SRC sequence of a DST copy: ``Nats-Stream-Source: SRC:<hash> <seq> ...``."""
    v = (msg.headers or {}).get("Nats-Stream-Source", "").split()
    return int(v[1]) if len(v) > 1 and v[1].isdigit() else None


# -- the anchor's phases -----------------------------------------------------------------------


@dataclass
class LiveResult:
    publish_rate: float = 0.0  # acked events/s at the source
    published: int = 0
    window_rate: float = 0.0  # destination events/s during the publish window
    drain_rate: float = 0.0  # all published events / time until the destination held them all
    delivered: int = 0
    seconds_to_all: float = 0.0
    complete: bool = False
    latency: Latencies = field(default_factory=Latencies)

    @property
    def latencies_ms(self) -> list[float]:
        return self.latency.total_ms

    @property
    def hop_ms(self) -> list[float]:
        return self.latency.hop_ms

    def take_fill(self, fill: Fill, seconds: float) -> None:
        """The destination's side, from how its stream filled during a publish window of ``seconds``."""
        self.delivered = fill.reached
        self.seconds_to_all = fill.seconds
        self.window_rate = fill.count_at(seconds) / seconds
        self.drain_rate = fill.reached / fill.seconds if fill.seconds else 0.0

    def as_dict(self, prefix: str) -> dict[str, object]:
        return {
            f"{prefix}_publish_events_per_s": round(self.publish_rate),
            f"{prefix}_published": self.published,
            f"{prefix}_delivered": self.delivered,
            f"{prefix}_complete": self.complete,
            f"{prefix}_events_per_s": round(self.window_rate),
            f"{prefix}_drain_events_per_s": round(self.drain_rate),
            f"{prefix}_seconds_to_all": round(self.seconds_to_all, 3),
            f"{prefix}_p50_ms": round(percentile(self.latencies_ms, 50), 2),
            f"{prefix}_p99_ms": round(percentile(self.latencies_ms, 99), 2),
            f"{prefix}_latency_samples": len(self.latencies_ms),
            f"{prefix}_hop_p50_ms": round(percentile(self.hop_ms, 50), 2),
            f"{prefix}_hop_p99_ms": round(percentile(self.hop_ms, 99), 2),
        }


@dataclass
class CatchupResult:
    backlog: int = 0
    fill_seconds: float = 0.0
    reached: int = 0
    complete: bool = False
    # CPU seconds each process spent while the destination caught up.
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.reached / self.fill_seconds if self.fill_seconds > 0 else 0.0

    def cpu_us_per_event(self) -> dict[str, float]:
        return {k: round(v / self.reached * 1e6, 1) for k, v in self.cpu_seconds.items()} if self.reached else {}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a live process (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _src_config() -> StreamConfig:
    return StreamConfig(name=SRC, subjects=["mesh.>"], storage=StorageType.FILE)


def _dst_config() -> StreamConfig:
    return StreamConfig(
        name=DST,
        storage=StorageType.FILE,
        sources=[StreamSource(name=SRC, external=ExternalStream(api="$JS.A.API"))],
    )


async def anchor_live(pair: AnchorPair, subject: str, seconds: float, rate: float | None, drain: float) -> LiveResult:
    """Publish to SRC on A for ``seconds`` (optionally paced) while DST on B fills."""
    assert pair.a is not None and pair.b is not None
    nb = await nats.connect(pair.b.url)
    try:
        jsb = nb.jetstream()
        before = (await jsb.stream_info(DST)).state.last_seq
        result = LiveResult()

        async def count() -> int:
            return await subject_count(jsb, DST, subject)

        start = time.perf_counter()
        pub = asyncio.create_task(stamped_bench_raw(pair.a.url, subject, seconds, rate))
        fill = await watch_fill(count, start, lambda: _published(pub), timeout=seconds + drain)
        result.publish_rate, result.published = await pub
        result.take_fill(fill, seconds)
        result.complete = fill.complete and fill.target == result.published
        result.latency = await sample_since(
            jsb,
            DST,
            subject,
            before,
            sent_ns=header_ts,
            source_url=pair.a.url,
            source_stream=SRC,
            source_seq=sourced_seq,
        )
        return result
    finally:
        await nb.close()


def _published(task: asyncio.Task[tuple[float, int]]) -> int | None:
    """The publisher's count once it has finished (its error, if it failed)."""
    if not task.done():
        return None
    return task.result()[1]


async def anchor_catchup(pair: AnchorPair, subject: str, backlog: int, timeout: float) -> CatchupResult:
    """Fill SRC with ``backlog`` events while nothing sources it, then create DST and time it."""
    assert pair.a is not None and pair.b is not None
    na = await nats.connect(pair.a.url)
    nb = await nats.connect(pair.b.url)
    try:
        jsa, jsb = na.jetstream(), nb.jetstream()
        with contextlib.suppress(Exception):
            await jsb.delete_stream(DST)
        with contextlib.suppress(Exception):
            await jsa.delete_stream(SRC)
        await jsa.add_stream(_src_config())
        with contextlib.suppress(TimeoutError):  # then time the catch-up of what SRC holds
            await asyncio.wait_for(_fill_backlog(na, subject, backlog), timeout)
        held = (await jsa.stream_info(SRC)).state.messages
        pids = pair.pids
        cpu0 = {f"nats-server {k}": cpu_seconds(p) for k, p in pids.items()}
        start = time.perf_counter()
        await jsb.add_stream(_dst_config())
        fill = await watch_fill(lambda: _messages(jsb, DST), start, lambda: held, timeout=timeout, interval=0.02)
        cpu = {k: cpu_seconds(pids[k.split()[-1]]) - v for k, v in cpu0.items()}
        return CatchupResult(
            backlog=held, fill_seconds=fill.seconds, reached=fill.reached, complete=fill.complete, cpu_seconds=cpu
        )
    finally:
        await na.close()
        await nb.close()


async def _messages(js: Any, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)


async def _fill_backlog(nc: Any, subject: str, n: int, window: int = 4000) -> None:
    """Publishes ``n`` events with acks pipelined (``window`` in flight) and awaits them all."""
    prefix = nc.new_inbox() + "."
    sem = asyncio.Semaphore(window)
    done = asyncio.Event()
    acked = 0

    async def on_ack(_msg: Any) -> None:
        nonlocal acked
        acked += 1
        sem.release()
        if acked >= n:
            done.set()

    sub = await nc.subscribe(prefix + "*", cb=on_ack)
    data = nats_append_bench.DATA
    for i in range(n):
        await sem.acquire()
        await nc.publish(subject, data, reply=prefix + str(i), headers={TS_HEADER: str(time.time_ns())})
    await asyncio.wait_for(done.wait(), 60)
    await sub.unsubscribe()


async def setup_streams(pair: AnchorPair) -> None:
    assert pair.a is not None and pair.b is not None
    na = await nats.connect(pair.a.url)
    nb = await nats.connect(pair.b.url)
    try:
        await na.jetstream().add_stream(_src_config())
        await nb.jetstream().add_stream(_dst_config())
    finally:
        await na.close()
        await nb.close()

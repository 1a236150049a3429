"""Where the gateways spend their CPU: py-spy on the ingest, live replication and catch-up paths.

Starts regions ``a`` and ``b`` (``kind: embedded``, each its own ``meshgate serve`` process,
the same setup as ``replication_bench.py``) and samples them with py-spy (``pip install
py-spy``) while:

* ingest + live replication: one ``PublishStream`` into a for ``--seconds`` (a takes the
  events and forwards them, b stores them);
* catch-up: b stopped, ``--backlog`` events published into a, b started again; both sampled
  while b drains the backlog.

Prints, per process and phase, the functions with the most samples on CPU: "self" (the
frame itself) and "incl." (anywhere on the stack, Meshgate's and its libraries' frames).
Text, so a before/after can go into docs/PERFORMANCE.md.

    python bench/profile_paths.py [--seconds 8] [--backlog 100000] [--rate EVENTS_PER_S] [--out DIR]

``--rate`` offers the live phase that many events/s (half of Meshgate's own live rate is where
the p99 target is read); the live phase also reports the cores each thread of both gateways
kept busy, from ``/proc`` (py-spy's "on CPU" cannot tell a thread waiting for the GIL in a
system call from one working there).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc
import nats

from meshgate.bench.replication_bench import STREAM, publish_stream, two_regions
from meshgate.v1 import gateway_pb2_grpc


async def record(pid: int, seconds: float, out: Path) -> Path:
    """py-spy's collapsed stacks of ``pid`` for ``seconds`` (idle frames left out)."""
    proc = await asyncio.create_subprocess_exec(
        "py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", "250", "--format", "raw", "--nonblocking", "-o", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0 or not os.path.exists(out):  # noqa: ASYNC240 - once, after py-spy ended
        raise RuntimeError(f"py-spy failed on pid {pid}: {err.decode(errors='replace')[-500:]}")
    return out


def _frame_name(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:123)" -> "function (file.py)"
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid`` so far: the main thread, each other Python thread (by
    its id: Python 3.11 names none for the OS), and the others summed per name (gRPC's ``event_engine``)."""
    out: collections.Counter[str] = collections.Counter()
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        name = "main" if int(tid) == pid else f"{name}#{tid}" if name == "python" else name
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] += (int(fields[11]) + int(fields[12])) / tick
    return dict(out)


def busy_threads(pid: int, before: dict[str, float], seconds: float) -> str:
    """The cores each thread name of ``pid`` kept busy since ``before``, the busiest first."""
    now = thread_cpu(pid)
    busy = {name: (cpu - before.get(name, 0.0)) / seconds for name, cpu in now.items()}
    return ", ".join(f"{name} {b:.2f}" for name, b in sorted(busy.items(), key=lambda kv: -kv[1]) if b >= 0.005)


def summarize(collapsed: Path, title: str, top: int = 18) -> str:
    self_counts: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        # The event loop waiting in select/epoll is idle, not work.
        if frames and frames[-1].startswith(("select (", "poll (", "_run_once (", "run_forever (")):
            continue
        total += n
        if frames:
            self_counts[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [f"### {title}: {total} samples on CPU (250 Hz)", "", "self % | function", "---|---"]
    lines += [f"{100 * c / total:5.1f} | {f}" for f, c in self_counts.most_common(top)] if total else []
    lines += ["", "incl. % | function (Meshgate's frames and the libraries they call)", "---|---"]
    interesting = ("brokers/", "gateway/", "replicator/", "nats/", "grpc", "protobuf", "_codec", "_wire", "_pull")
    ranked = [(f, c) for f, c in incl.most_common() if any(k in f for k in interesting)]
    lines += [f"{100 * c / total:5.1f} | {f}" for f, c in ranked[:top]] if total else []
    return "\n".join(lines) + "\n"


async def main(args: argparse.Namespace) -> None:
    if shutil.which("py-spy") is None:
        sys.exit("py-spy not found: pip install py-spy")
    out_dir = Path(args.out)
    os.makedirs(out_dir, exist_ok=True)
    report: list[str] = [f"load average at start: {os.getloadavg()[0]:.2f}, cpus {os.cpu_count()}\n"]
    with tempfile.TemporaryDirectory(prefix="meshgate-prof-") as d:
        tmp = Path(d)
        a, b = two_regions(tmp)
        try:
            address, _ = await asyncio.gather(a.start(), b.start())
            async with grpc.aio.insecure_channel(address) as ch:
                stub = gateway_pb2_grpc.GatewayStub(ch)
                assert a.proc is not None and b.proc is not None
                # Warm up (imports, caches, consumers), then sample the steady state.
                await publish_stream(stub, "bench/warm", seconds=1.0)
                pub = asyncio.create_task(
                    publish_stream(stub, "bench/live", seconds=args.seconds + 1, rate=args.rate or None)
                )
                await asyncio.sleep(0.5)
                threads0 = {pid: thread_cpu(pid) for pid in (a.proc.pid, b.proc.pid)}
                t0 = time.perf_counter()
                ra, rb = await asyncio.gather(
                    record(a.proc.pid, args.seconds, out_dir / "live-a.txt"),
                    record(b.proc.pid, args.seconds, out_dir / "live-b.txt"),
                )
                busy = {pid: busy_threads(pid, threads0[pid], time.perf_counter() - t0) for pid in threads0}
                p = await pub
                report.append(f"live: PublishStream {p.rate:,.0f} events/s into a\n")
                report.append(
                    f"live, busy cores by thread: gateway a {busy[a.proc.pid]}; gateway b {busy[b.proc.pid]}\n"
                )
                report.append(summarize(ra, "gateway a, ingest + link (live)"))
                report.append(summarize(rb, "gateway b, replication ingress (live)"))
                await asyncio.sleep(3)  # let b catch up before the outage
                await b.stop()
                p = await publish_stream(stub, "bench/catchup", seconds=600, limit=args.backlog)
                report.append(f"catch-up backlog: {p.accepted:,} events\n")
                await b.start()
                nb = await nats.connect(b.nats_url)
                t0 = time.perf_counter()
                ra, rb = await asyncio.gather(
                    record(a.proc.pid, args.seconds, out_dir / "catchup-a.txt"),
                    record(b.proc.pid, args.seconds, out_dir / "catchup-b.txt"),
                )
                info = await nb.jetstream().stream_info(STREAM, subjects_filter="mesh.*.*.bench.catchup")
                done = sum((info.state.subjects or {}).values())
                await nb.close()
                elapsed = time.perf_counter() - t0
                report.append(f"catch-up: {done:,} events in b after {elapsed:.1f} s of sampling\n")
                report.append(summarize(ra, "gateway a, link (catch-up)"))
                report.append(summarize(rb, "gateway b, replication ingress (catch-up)"))
        finally:
            await asyncio.gather(a.stop(), b.stop(), return_exceptions=True)
            await asyncio.gather(a.close(), b.close(), return_exceptions=True)
    text = "\n".join(report)
    (out_dir / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="sampling time per phase (default 8)")
    parser.add_argument("--backlog", type=int, default=100_000, help="catch-up backlog (default 100000)")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="events/s offered in the live phase (default 0: as fast as it goes)"
    )
    parser.add_argument("--out", default="profile-out", help="folder for the raw stacks and summary.md")
    args = parser.parse_args()
    if args.rate < 0:
        parser.error(f"--rate is events per second, 0 or more (0: as fast as it goes); got {args.rate:g}")
    asyncio.run(main(args))

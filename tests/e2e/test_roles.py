"""Replication in processes apart from ingest: ``meshgate serve --role gateway`` and ``--role replicator``.

Region ``a`` runs on a nats-server of its own (``kind: nats``) with one ``--role gateway``
process (ingest, Admin, no links) and, started by the test, a ``--role replicator`` process
(links only). Region ``b`` is a whole gateway. The ledger checks every acked event reaches
``b`` once, in key order; Status of ``a``'s gateway shows the link the replicator runs, from
the link status board in ``a``'s broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshgate.brokers import NatsBroker
from meshgate.config import NatsSettings
from meshgate.replicator import LinkBoard
from meshgate.testing import ChildProcess
from meshgate.v1 import admin_pb2, event_pb2
from tests._cli import run_cli
from tests._wait import eventually
from tests.e2e._ledger import Ledger, Producer, make_event
from tests.e2e._mesh import MeshCluster
from tests.e2e.conftest import MeshFactory

A, B = "a", "b"
ROUTING = [("orders/*", [A, B])]
_RUNNING = re.compile(rb"replicator running \(([^)]*)\)")
_WORKER = re.compile(rb"replication worker (\d+) started \(pid (\d+)\)")
_METRICS = re.compile(rb"metrics on [^:]+:(\d+)")


def events(prefix: str, n: int, *, keys: int = 6) -> list[event_pb2.Event]:
    return [make_event(f"{prefix}-{i:05d}", "orders/created", key=f"k{i % keys}") for i in range(n)]


def alive(pid: int) -> bool:
    """Running, not a zombie (a worker whose parent is gone is reaped by init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


async def start_mesh(make_mesh: MeshFactory) -> MeshCluster:
    cluster: MeshCluster = await make_mesh([A, B], ROUTING, shared=[A], serve_args={A: ("--role", "gateway")})
    return cluster


async def start_replicator(cluster: MeshCluster, tmp: Path, *extra: str) -> ChildProcess:
    proc = ChildProcess(
        args=(
            "-m", "meshgate", "serve", "-c", str(cluster.config_path), "--region", A,
            "--data-dir", str(tmp / "replicator"), "--role", "replicator", "--metrics", "127.0.0.1:0", *extra,
        )
    )  # fmt: skip
    await proc.launch(ready=_RUNNING, timeout=60)
    return proc


def board_of(cluster: MeshCluster) -> LinkBoard:
    server = cluster.shared_nats[A]
    broker = NatsBroker(servers=[server.url], settings=NatsSettings(), idempotency_window_seconds=120, name="test")
    return LinkBoard(broker=broker, region=A, destinations=lambda: [B])


async def link_b(cluster: MeshCluster) -> admin_pb2.LinkStatus:
    status = await cluster.status(A)
    (link,) = [s for s in status.links if s.destination == B]
    return link


@pytest.mark.slow
async def test_gateway_and_replicator_processes_replicate_and_status_shows_the_links(
    make_mesh: MeshFactory, tmp_path: Path
) -> None:
    cluster = await start_mesh(make_mesh)
    board = board_of(cluster)
    await board._broker.start()
    replicator: ChildProcess | None = None
    try:
        # The gateway process alone runs no link: Status says nobody runs it, the board is empty.
        link = await link_b(cluster)
        assert link.state == admin_pb2.LINK_STATE_UNSPECIFIED
        assert "no replicator process of region a runs the link to b" in link.last_error
        await board.refresh()
        assert board.owners == ()
        rc, out, err = await run_cli("status", "-g", cluster.address(A))
        assert rc == 0, err
        assert "-> b" in out and "stopped" in out and "no replicator process of region a" in out, out
        ledger = Ledger()
        await asyncio.wait_for(Producer(cluster, ledger, A, events("one", 400)).run(), 60)
        assert len(ledger.acked) == 400

        replicator = await start_replicator(cluster, tmp_path)
        await ledger.verify(cluster, timeout=60)
        assert "runs in this replica" not in cluster.process(A).text()

        async def replicating() -> bool:
            s = await link_b(cluster)
            return s.state == admin_pb2.LINK_STATE_REPLICATING and s.lag_events == 0 and s.forwarded >= 400

        await eventually(replicating, 30, what="a's gateway shows the replicator's link replicating, no lag")
        await board.refresh()
        assert len(board.owners) == 1 and board.owners[0].startswith("a/r-")

        # The destination goes away: the gateway's Status shows the link's lag and error.
        await cluster.stop(B)
        await asyncio.wait_for(Producer(cluster, ledger, A, events("two", 200)).run(), 60)

        async def lagging() -> bool:
            s = await link_b(cluster)
            return s.lag_events >= 200 and s.lag_seconds > 0 and bool(s.last_error)

        await eventually(lagging, 30, what="a's gateway shows the link's lag in events and seconds, and its error")
        rc, out, err = await run_cli("status", "-g", cluster.address(A), "--json")
        assert rc == 0, err
        (shown,) = json.loads(out)["links"]
        assert shown["destination"] == B and int(shown["lag_events"]) >= 200 and shown["last_error"]
        await cluster.restart(B)
        await ledger.verify(cluster, timeout=60)
        await eventually(replicating, 30, what="the link caught up after b came back")
    finally:
        await board._broker.stop()
        if replicator is not None:
            await replicator.close(grace=10)


@pytest.mark.slow
async def test_replication_workers_are_lease_owners_and_a_killed_one_is_restarted(
    make_mesh: MeshFactory, tmp_path: Path
) -> None:
    cluster = await start_mesh(make_mesh)
    board = board_of(cluster)
    await board._broker.start()
    replicator = await start_replicator(cluster, tmp_path, "--replication-workers", "2")
    try:
        match = _METRICS.search(b"".join(replicator.log))
        assert match is not None, replicator.text()
        metrics_port = int(match.group(1))

        def worker_pids() -> dict[int, int]:
            return {int(m.group(1)): int(m.group(2)) for m in _WORKER.finditer(b"".join(replicator.log))}

        async def two_owners() -> bool:
            await board.refresh()
            pids = set(worker_pids().values())
            return len(board.owners) == 2 and {n.pid for n in board.notes} <= pids

        await eventually(two_owners, 30, what="both workers on the board as lease owners")
        assert all(owner.startswith("a/w") for owner in board.owners)

        async def scraped_two() -> bool:
            text = await asyncio.to_thread(scrape, metrics_port)
            return 'meshgate_replicator_processes{region="a"} 2.0' in text

        await eventually(scraped_two, 10, what="the replicator's metrics count its 2 worker processes")
        # A replicator process is a meshgate process like a gateway: build info, process figures,
        # its region on every meshgate_* family (the gateway-down alert counts it by build info).
        text = await asyncio.to_thread(scrape, metrics_port)
        families = list(text_string_to_metric_families(text))
        assert {"process_cpu_seconds", "python_info", "meshgate_build_info"} <= {f.name for f in families}
        for family in families:
            for sample in family.samples:
                if sample.name.startswith("meshgate_"):
                    assert sample.labels.get("region") == "a", sample

        ledger = Ledger()
        producer = asyncio.create_task(Producer(cluster, ledger, A, events("w", 3000), pace=0.02).run())

        async def runner() -> int | None:
            # The link's partitions are shared by the two workers (4 of 8 each): both run it.
            await board.refresh()
            running = [n.pid for n in board.notes if B in n.running()]
            return running[0] if len(running) == 2 else None

        async def forwarding() -> bool:
            return (await link_b(cluster)).forwarded > 100

        await eventually(forwarding, 30, what="the link forwards")
        victim = await eventually(runner, 30, what="both workers run a share of the link")
        assert victim is not None
        restarts_before = len(_WORKER.findall(b"".join(replicator.log)))
        os.kill(victim, signal.SIGKILL)

        async def restarted() -> bool:
            text = replicator.text()
            return (
                f"(pid {victim}) exited with signal 9" in text and len(_WORKER.findall(text.encode())) > restarts_before
            )

        await eventually(restarted, 30, what="the killed worker is restarted")
        await asyncio.wait_for(producer, 120)
        await ledger.verify(cluster, timeout=90)
        await eventually(two_owners, 30, what="two lease owners again, the new worker among them")
        assert victim not in {n.pid for n in board.notes}

        async def counted() -> bool:
            # The parent exports its own workers' counters (the killed one's count is gone with it).
            text = await asyncio.to_thread(scrape, metrics_port)
            values = [
                float(line.rpartition(" ")[2])
                for line in text.splitlines()
                if line.startswith("meshgate_forwarded_total{") and 'destination="b"' in line
            ]
            return len(values) == 1 and values[0] > 0

        await eventually(counted, 10, what="the replicator's metrics count what its workers forwarded")
    finally:
        await board._broker.stop()
        await replicator.close(grace=15)
    # Stopped in order: the workers went with their parent.
    assert not [pid for pid in worker_pids().values() if alive(pid)]


@pytest.mark.slow
async def test_a_whole_gateway_with_workers_runs_its_links_in_them(make_mesh: MeshFactory) -> None:
    # Embedded broker: the workers connect to the nats-server their parent runs.
    cluster: MeshCluster = await make_mesh([A, B], ROUTING, serve_args={A: ("--replication-workers", "2")})
    ledger = Ledger()
    await asyncio.wait_for(Producer(cluster, ledger, A, events("all", 500)).run(), 60)
    await ledger.verify(cluster, timeout=60)

    async def replicating() -> bool:
        s = await link_b(cluster)
        return s.state == admin_pb2.LINK_STATE_REPLICATING and s.lag_events == 0 and s.forwarded >= 500

    await eventually(replicating, 30, what="a's Status shows the link its workers run")
    log = cluster.process(A).text()
    assert len(_WORKER.findall(log.encode())) == 2, log
    assert "runs in this replica (a/w" in log  # a worker's owner took the lease, not the gateway
    assert await cluster.stop(A) == 0

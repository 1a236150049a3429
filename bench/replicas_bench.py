"""Two gateway replicas of one region: the share of a destination's replication each carries.

Region ``a`` is two ``meshgate serve`` processes (``kind: nats``) on one nats-server (an
``EmbeddedNats`` of the bench), region ``b`` one gateway (``kind: embedded``); ``bench/*`` is
routed to both. Once the replicas have split b's partitions as the leases balance them, none
holding more than its share (where Status reports them; up to 30 s), events are published
into a through both replicas in turn for ``--seconds``, then, once a's links report no lag,
each replica's ``Status`` says what its link to b forwarded during the run (the ``forwarded``
counter's growth) and, where the build reports them, how many partitions it holds
(``LinkStatus.partitions``, the partitions the answering process sends), at the end and when
publishing began.

* ``events_share``: each replica's part of the events forwarded to b;
* ``imbalance``: the largest share over the mean, less 1 (0 = even; the target is <= 0.2);
* ``partitions``: per replica, or None when this build does not report them;
  ``partitions_at_start`` the same when publishing began, ``settle_seconds`` how long the
  split took once the gateways were up (None: not reported, or not settled within 30 s).

Where replication of one destination is leased to one replica as a whole, one carries all of
it: ``imbalance`` 1.0, and the summary says so.

    python bench/replicas_bench.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc

from meshgate.bench.replication_bench import free_ports, publish_stream, terminate
from meshgate.brokers import EmbeddedNats
from meshgate.config import REPLICATION_SECRET_VARIABLE
from meshgate.testing import ServeProcess
from meshgate.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2_grpc

__all__ = ["main", "shares"]

REPLICAS = 2


def _mesh(path: Path, nats_url: str, a_port: int, b_port: int) -> None:
    url = urlparse(nats_url)
    path.write_text(
        "event_mesh:\n"
        "  regions:\n"
        f'    - name: a\n      kind: nats\n      brokers: ["{url.hostname}:{url.port}"]\n'
        f"      gateway: 127.0.0.1:{a_port}\n"
        f"    - name: b\n      kind: embedded\n      gateway: 127.0.0.1:{b_port}\n"
        "  routing:\n"
        '    - topic: "bench/*"\n'
        '      regions: ["a", "b"]\n'
        f"  security:\n    replication_secret: ${{{REPLICATION_SECRET_VARIABLE}}}\n"
    )
    os.environ.setdefault(REPLICATION_SECRET_VARIABLE, secrets.token_hex(32))


async def _link(address: str, destination: str) -> dict[str, Any]:
    """The replica's link to ``destination`` from its Status: forwarded, lag, partitions (if reported)."""
    async with grpc.aio.insecure_channel(address) as ch:
        resp = await admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=10)
    for link in resp.links:
        if link.destination == destination:
            fields = link.DESCRIPTOR.fields_by_name
            partitions = None
            if "partitions" in fields:
                value = link.partitions
                partitions = value if isinstance(value, int) else len(value)
            return {"forwarded": link.forwarded, "lag_events": link.lag_events, "partitions": partitions}
    return {"forwarded": 0, "lag_events": 0, "partitions": None}


async def _settled(addresses: list[str], *, timeout: float) -> float | None:
    """Seconds until the replicas hold b's partitions between them as the leases balance them:
    together all of them (the most seen at once), none more than its share (``ceil(all /
    replicas)``): the lease balancing's start-up. None when the build reports no partitions or
    it did not settle within ``timeout`` (then publishing starts anyway)."""
    started = time.perf_counter()
    most = 0
    while time.perf_counter() - started < timeout:
        held = [(await _link(address, "b"))["partitions"] for address in addresses]
        if any(p is None for p in held):
            return None
        counts = [int(p) for p in held if p is not None]
        most = max(most, sum(counts))
        if most and sum(counts) == most and max(counts) <= -(-most // len(counts)):
            return round(time.perf_counter() - started, 1)
        await asyncio.sleep(0.2)
    return None


def shares(counts: list[int]) -> tuple[list[float] | None, float | None]:
    """Each count's share of the total, and the largest share over the mean less 1 (None without any)."""
    total = sum(counts)
    if not counts or total <= 0:
        return None, None
    parts = [c / total for c in counts]
    return [round(p, 3) for p in parts], round(max(parts) * len(parts) - 1.0, 3)


async def main(seconds: float, *, drain: float = 60.0, settle_timeout: float = 30.0) -> dict[str, object]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="meshgate-replicas-") as d:
        tmp = Path(d)
        async with EmbeddedNats(data_dir=tmp / "nats-a") as nats:
            mesh = tmp / "mesh.yaml"
            _mesh(mesh, nats.url, *free_ports(2))
            replicas = [ServeProcess(config=mesh, region="a", data_dir=tmp / f"a{i}") for i in range(REPLICAS)]
            b = ServeProcess(config=mesh, region="b", data_dir=tmp / "b", extra=("--listen", _gateway_of(mesh, "b")))
            try:
                addresses = list(await asyncio.gather(*(r.start(timeout=60) for r in replicas)))
                await b.start(timeout=60)
                # Publishing before the split settles measures the start-up, not the balance.
                settle = await _settled(addresses, timeout=settle_timeout)
                before = [await _link(address, "b") for address in addresses]
                published = 0
                per = seconds / REPLICAS
                for address in addresses:
                    async with grpc.aio.insecure_channel(address) as ch:
                        p = await publish_stream(gateway_pb2_grpc.GatewayStub(ch), "bench/replicas", seconds=per)
                        published += p.accepted
                # Drained: every replica's link says no lag and together they forwarded it all.
                deadline = time.perf_counter() + drain
                while True:
                    after = [await _link(address, "b") for address in addresses]
                    forwarded = [x["forwarded"] - y["forwarded"] for x, y in zip(after, before, strict=True)]
                    if (sum(forwarded) >= published and not any(x["lag_events"] for x in after)) or (
                        time.perf_counter() > deadline
                    ):
                        break
                    await asyncio.sleep(0.2)
            finally:
                await asyncio.gather(*(terminate(r) for r in (*replicas, b)), return_exceptions=True)
    events_share, imbalance = shares(forwarded)
    partitions = [x["partitions"] for x in after]
    reported = all(p is not None for p in partitions)
    part_share, part_imbalance = shares([int(p) for p in partitions if p is not None]) if reported else (None, None)
    out: dict[str, object] = {
        "replicas": REPLICAS,
        "published": published,
        "forwarded": forwarded,
        "events_share": events_share,
        "events_imbalance": imbalance,
        "partitions": partitions if reported else None,
        # When publishing began: a split not yet settled then skews the events' shares.
        "partitions_at_start": [x["partitions"] for x in before] if reported else None,
        "partitions_share": part_share,
        "partitions_imbalance": part_imbalance,
        "settle_seconds": settle,
        "complete": sum(forwarded) >= published,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    if not reported:
        out["note"] = "this build's Status reports no partitions per link: the share of partitions is not measured"
    print(f"two replicas of a: published {published:,}, forwarded to b by each {forwarded} (shares {events_share})")
    print(
        f"  imbalance of events {imbalance} (target <= 0.2); partitions "
        + (
            f"{partitions} (imbalance {part_imbalance}; {[x['partitions'] for x in before]} when publishing began)"
            if reported
            else "not reported by this build"
        )
    )
    return out


def _gateway_of(mesh: Path, region: str) -> str:
    text = mesh.read_text()
    block = text.split(f"- name: {region}\n", 1)[1]
    return block.split("gateway: ", 1)[1].split("\n", 1)[0]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="publishing time, split over the replicas (3)")
    cli = parser.parse_args()
    result = asyncio.run(main(cli.seconds))
    print(json.dumps(result))
    sys.exit(0)

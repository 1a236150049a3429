"""A region whose broker runs out of room: refusals with a reason, never an ack; readiness off
until it stores again, and back by itself once room is made; a link into it waits and then
delivers every event once.

Real gateways (in this process) on real nats-servers: a server capped by ``max_file_store``
(``tests._full_store``), and, where the machine lets a test mount one, a tmpfs that really fills
up (nats-server then answers no write on its stream until it restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.config import BrokerKind, Limits, MeshConfig, RegionConfig, RouteRule, Settings
from meshgate.gateway import READYZ_PATH, Gateway
from meshgate.v1 import admin_pb2, event_pb2, gateway_pb2, gateway_pb2_grpc
from tests._full_store import SmallStoreNats, fill_with_filler, purge_stream
from tests._wait import eventually
from tests.e2e._ledger import Ledger
from tests.gateway._helpers import ev, read_all, rpc_error, two_region_mesh
from tests.gateway.conftest import mesh_for

ACCEPTED, REJECTED = event_pb2.OUTCOME_ACCEPTED, event_pb2.OUTCOME_REJECTED
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
BOUND = 60.0
DATA = b"x" * 2048


def readyz(gw: Gateway) -> tuple[int, str]:
    """/readyz of the gateway: status and body (an HTTP error status is an answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gw.http_port}{READYZ_PATH}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


@pytest.fixture
async def small_server(tmp_path: Path) -> AsyncIterator[SmallStoreNats]:
    server = SmallStoreNats(max_file_store=512 * 1024, data_dir=tmp_path / "small", server_name="meshgate-small")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def publish_stream(
    stub: gateway_pb2_grpc.GatewayAsyncStub, batches: list[list[event_pb2.Event]]
) -> list[gateway_pb2.PublishResponse]:
    async def requests() -> AsyncIterator[gateway_pb2.PublishRequest]:
        for i, events in enumerate(batches):
            yield gateway_pb2.PublishRequest(batch_id=i, events=events)

    return [resp async for resp in stub.PublishStream(requests())]


async def test_publish_into_a_full_region_is_refused_with_a_reason_and_recovers_by_itself(
    small_server: SmallStoreNats, tmp_path: Path
) -> None:
    config = mesh_for(small_server, limits=Limits(max_data_bytes=4096, max_batch_events=100))
    gw = Gateway(
        config=config, region="here", data_dir=tmp_path, listen="127.0.0.1:0", metrics_listen="127.0.0.1:0",
        replicate=False,
    )  # fmt: skip
    await gw.start()
    try:
        async with grpc.aio.insecure_channel(gw.address) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            assert (await asyncio.to_thread(readyz, gw))[0] == 200
            acked: dict[str, int] = {}
            refused: list[event_pb2.EventResult] = []
            n = 0
            while len(refused) < 30:
                assert n < 5000, "the region never ran out of room"
                batches = [[ev(data=DATA, id=f"e-{n + 10 * b + i}") for i in range(10)] for b in range(5)]
                n += 50
                for resp in await publish_stream(stub, batches):
                    for r in resp.results:
                        if r.outcome == ACCEPTED:
                            acked[r.id] = r.sequence
                        else:
                            refused.append(r)
            # Never ACCEPTED without a stored sequence; refused as out of room, with the reason.
            assert acked and min(acked.values()) >= 1
            assert {r.outcome for r in refused} == {REJECTED}
            assert {r.code for r in refused} == {RESOURCE_EXHAUSTED}, {r.message for r in refused}
            assert "no room" in refused[-1].message and "insufficient resources" in refused[-1].message
            assert "retry with the same id" in refused[-1].message
            # Every acked event is readable: an ack meant a write.
            stored = await read_all(stub, "orders/>", expect=len(acked), idle=2.0)
            assert sorted(e.id for e in stored) == sorted(acked)
            assert sorted(e.sequence for e in stored) == sorted(acked.values())

            # A unary Publish says it too, as a status.
            err = await rpc_error(stub.Publish(gateway_pb2.PublishRequest(events=[ev(data=DATA, id="unary-1")])))
            assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "no room" in (err.details() or "")

            # Not ready while the broker cannot store, and why.
            status, body = await asyncio.to_thread(readyz, gw)
            assert status == 503 and body.startswith("broker cannot store:") and "no room" in body, body

            # An operator makes room; no client writes meanwhile: readiness comes back by itself.
            await purge_stream(small_server.url, "MESHGATE")
            await eventually(lambda: gw.ready() is None, BOUND, what="readiness back after the purge")
            assert (await asyncio.to_thread(readyz, gw))[0] == 200
            resp = await stub.Publish(gateway_pb2.PublishRequest(events=[ev(data=DATA, id="after-1")]))
            assert resp.results[0].outcome == ACCEPTED and resp.results[0].sequence > max(acked.values())
    finally:
        await gw.stop(grace=1.0)


async def test_a_link_into_a_full_region_waits_with_lag_and_error_then_delivers_every_event_once(
    nats_server: EmbeddedNats, small_server: SmallStoreNats, tmp_path: Path
) -> None:
    rules = (RouteRule(index=0, topic="orders/*", regions=("here", "there")),)
    there = Gateway(
        config=two_region_mesh(nats_server, small_server, routing=rules),
        region="there", data_dir=tmp_path / "there", replicate=False,
    )  # fmt: skip
    await there.start()
    here: Gateway | None = None
    try:
        config = two_region_mesh(nats_server, small_server, there_gateway=there.address, routing=rules)
        here = Gateway(config=config, region="here", data_dir=tmp_path / "here")
        await here.start()
        ledger = Ledger()

        def link() -> admin_pb2.LinkStatus:
            assert here is not None
            return next(s for s in here.link_statuses() if s.destination == "there")

        async with (
            grpc.aio.insecure_channel(here.address) as ch,
            grpc.aio.insecure_channel(there.address) as there_ch,
        ):
            stub = gateway_pb2_grpc.GatewayStub(ch)
            there_stub = gateway_pb2_grpc.GatewayStub(there_ch)

            async def publish(first: int, n: int) -> None:
                batch = [
                    ev(data=b"d" * 256, id=f"r-{i}", key=f"k{i % 4}", topic="orders/created")
                    for i in range(first, first + n)
                ]
                resp = await stub.Publish(gateway_pb2.PublishRequest(events=batch))
                assert ledger.record("here", batch, resp.results) == []

            # The link runs (the destination knows this origin's stream), then "there" fills up.
            await publish(0, 20)
            assert len(await read_all(there_stub, "orders/>", expect=20, idle=BOUND)) == 20
            await fill_with_filler(small_server.url)

            await publish(20, 40)
            # The destination refuses for want of room: the link shows lag and why; the source
            # keeps the events (before: answered ACCEPTED with sequence 0, acked, gone, lag 0).
            await eventually(
                lambda: link().lag_events >= 40 and "no room" in link().last_error,
                BOUND,
                what="the link to show lag >= 40 and the destination's refusal",
                status=link,
            )
            first_lag = link().lag_events
            await publish(60, 20)
            await eventually(lambda: link().lag_events >= first_lag + 20, BOUND, what="growing lag", status=link)
            assert "insufficient resources" in link().last_error
            problem = there.ready()
            assert problem is not None and problem.startswith("broker cannot store:"), problem
            assert len(await read_all(there_stub, "orders/>", idle=0.5)) == 20

            # Room returns (the filler is purged): every event arrives once, in key order.
            await purge_stream(small_server.url, "FILLER")
            await publish(80, 20)
            async with asyncio.timeout(BOUND):
                while True:
                    # The whole log each time, until quiet for a second: a late duplicate shows.
                    got = await read_all(there_stub, "orders/>", idle=1.0)
                    if len({e.id for e in got}) >= 100:
                        break
            mine = await read_all(stub, "orders/>", expect=100, idle=5.0)
        problems = ledger.check({"here": mine, "there": got})
        assert not problems, "\n".join(problems)
        assert len(got) == 100
        await eventually(lambda: link().lag_events == 0, BOUND, what="link caught up")
        assert there.ready() is None
    finally:
        if here is not None:
            await here.stop(grace=1.0)
        await there.stop(grace=1.0)


# --- a disk that really fills up -------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path``; skips the test where this process may not mount one."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    done = subprocess.run(mount, check=False, capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_a_full_disk_turns_readiness_off_and_the_gateway_recovers_without_a_restart(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "24m") as disk:
        config = MeshConfig(
            regions=(RegionConfig(name="here", kind=BrokerKind.EMBEDDED, gateway="127.0.0.1:0"),),
            routing=(RouteRule(index=0, topic="orders/*", regions=("here",)),),
            settings=Settings(limits=Limits(max_data_bytes=4096)),
        )
        gw = Gateway(config=config, region="here", data_dir=disk, listen="127.0.0.1:0", replicate=False)
        await gw.start()
        try:
            async with grpc.aio.insecure_channel(gw.address) as ch:
                stub = gateway_pb2_grpc.GatewayStub(ch)
                before = await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id=f"b-{i}") for i in range(10)]))
                assert [r.outcome for r in before.results] == [ACCEPTED] * 10
                # Something else fills the disk.
                filler = disk / "filler"
                with filler.open("wb") as f, contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * (1 << 20))
                err = await rpc_error(stub.Publish(gateway_pb2.PublishRequest(events=[ev(data=DATA, id="full-1")])))
                assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
                problem = gw.ready()
                assert problem is not None and problem.startswith("broker cannot store:"), problem

                # Space is freed; nobody restarts anything and no client writes meanwhile.
                filler.unlink()
                await eventually(lambda: gw.ready() is None, BOUND, what="readiness back after the disk was freed")
                after = await stub.Publish(gateway_pb2.PublishRequest(events=[ev(id="full-1"), ev(id="a-1")]))
                assert [r.outcome for r in after.results] == [ACCEPTED, ACCEPTED]
                stored = await read_all(stub, "orders/>", expect=12, idle=5.0)
                assert [e.id for e in stored] == [*(f"b-{i}" for i in range(10)), "full-1", "a-1"]
        finally:
            await gw.stop(grace=1.0)

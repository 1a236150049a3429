"""A gateway whose broker dies: the embedded nats-server is brought back, probes and link states tell the truth.

Real gateways in this process on real nats-servers. The embedded server runs through a wrapper
script that execs the real nats-server while a flag file exists and fails to start otherwise,
so a test decides when a restart can succeed instead of racing the supervisor's backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from meshgate.brokers import BrokerState, NatsBroker
from meshgate.brokers.embedded import EmbeddedNats, EmbeddedNatsBroker, RestartPolicy, find_nats_server
from meshgate.config import BrokerKind, MeshConfig, NatsSettings, RegionConfig, RouteRule
from meshgate.gateway import HEALTHZ_PATH, READYZ_PATH, Gateway
from meshgate.replicator import Link, LinkOptions, LinkState
from meshgate.testing import freeze
from meshgate.v1 import admin_pb2, event_pb2, gateway_pb2, gateway_pb2_grpc
from tests._health import async_health_stub
from tests._replication import SECURITY
from tests._wait import eventually
from tests.gateway._helpers import ev, nats_region, read_all, started_gateways, two_region_mesh
from tests.gateway.test_probes import get


def switchable_nats_server(tmp_path: Path) -> tuple[Path, Path]:
    """A nats-server binary: the real one while ``flag`` exists, else one that fails at start."""
    flag = tmp_path / "may-start"
    flag.touch()
    binary = tmp_path / "nats-server-wrapper"
    binary.write_text(
        "#!/bin/sh\n"
        f'[ -e "{flag}" ] || {{ echo "[FTL] the store is broken (on purpose)"; exit 7; }}\n'
        f'exec "{find_nats_server()}" "$@"\n'
    )
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary, flag


def embedded_here(tmp_path: Path, policy: RestartPolicy) -> tuple[MeshConfig, EmbeddedNatsBroker]:
    config = MeshConfig(
        regions=(
            RegionConfig(name="here", kind=BrokerKind.EMBEDDED, gateway="127.0.0.1:0"),
            RegionConfig(name="there", kind=BrokerKind.NATS, brokers=("127.0.0.1:1",), gateway="127.0.0.1:0"),
        ),
        routing=(RouteRule(index=0, topic="orders/*", regions=("here",)),),
        security=SECURITY,
    )
    broker = EmbeddedNatsBroker(
        data_dir=tmp_path / "data",
        region="here",
        settings=NatsSettings(),
        idempotency_window_seconds=60,
        ack_timeout=1.0,
        reconnect_wait=0.1,
        restart=policy,
    )
    return config, broker


async def publish(gw: Gateway, ids: list[str]) -> gateway_pb2.PublishResponse:
    async with grpc.aio.insecure_channel(gw.address) as ch:
        resp: gateway_pb2.PublishResponse = await gateway_pb2_grpc.GatewayStub(ch).Publish(
            gateway_pb2.PublishRequest(events=[ev(id=i) for i in ids])
        )
        return resp


async def health(gw: Gateway) -> int:
    async with grpc.aio.insecure_channel(gw.address) as ch:
        resp = await async_health_stub(ch).Check(health_pb2.HealthCheckRequest(service=""))
        return int(resp.status)


async def test_killed_embedded_broker_is_restarted_on_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    binary, flag = switchable_nats_server(tmp_path)
    monkeypatch.setenv("MESHGATE_NATS_SERVER", str(binary))
    # Retries without end: this test says when the server may come back.
    policy = RestartPolicy(initial_backoff_seconds=0.05, max_backoff_seconds=0.2, max_restarts=1_000_000)
    config, broker = embedded_here(tmp_path, policy)
    async with started_gateways() as start:
        gw = await start(
            config=config,
            region="here",
            data_dir=tmp_path,
            broker=broker,
            metrics_listen="127.0.0.1:0",
            replicate=False,
        )
        server = broker.server
        port, pid, data_dir = server.port, server.pid, server.data_dir
        assert pid is not None
        before = [f"before-{i}" for i in range(50)]
        resp = await publish(gw, before)
        assert all(r.outcome == event_pb2.OUTCOME_ACCEPTED for r in resp.results)

        flag.unlink()
        os.kill(pid, signal.SIGKILL)  # as the OOM killer would
        await eventually(lambda: gw.ready() is not None, 60, interval=0.02, what="readiness to turn off")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await publish(gw, ["while-down"])
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        status, _, body = await get(gw, READYZ_PATH)
        assert status == 503
        await eventually(lambda: server.restarts >= 1, 60, interval=0.02, what="a first restart to fail")
        status, _, body = await get(gw, READYZ_PATH)
        assert status == 503
        assert body.startswith(b"broker client is reconnecting: embedded restarting: restart "), body
        assert b"the store is broken (on purpose)" in body
        await wait_for_health(gw, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert (await get(gw, HEALTHZ_PATH))[0] == 200  # restarting: alive

        flag.touch()
        await eventually(
            lambda: gw.ready() is None, 60, interval=0.02, what="the restarted server and the client's reconnect"
        )
        assert (await get(gw, READYZ_PATH))[:3:2] == (200, b"ok\n")
        assert server.port == port and server.data_dir == data_dir and server.pid not in (None, pid)
        after = [f"after-{i}" for i in range(10)]
        resp = await publish(gw, after)
        assert all(r.outcome == event_pb2.OUTCOME_ACCEPTED for r in resp.results)
        await wait_for_health(gw, health_pb2.HealthCheckResponse.SERVING)
        async with grpc.aio.insecure_channel(gw.address) as ch:
            got = await read_all(gateway_pb2_grpc.GatewayStub(ch), "orders/>", expect=60, idle=10)
        ids = [e.id for e in got]
        # Every event acked before the kill is still there, once, in order; "while-down" was refused.
        assert [i for i in ids if i.startswith("before-")] == before
        assert [i for i in ids if i.startswith("after-")] == after
        assert "while-down" not in ids
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"pid {pid} exited unexpectedly with signal 9 (SIGKILL); restarting it on" in m for m in warnings)
    assert any("region here: not ready: broker client is" in m for m in warnings)


async def wait_for_health(gw: Gateway, want: int) -> None:
    async def wanted() -> bool:
        return await health(gw) == want

    await eventually(wanted, 30, interval=0.05, what=f"gRPC health {want}", status=gw.ready)


async def test_liveness_fails_when_the_embedded_broker_cannot_be_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary, flag = switchable_nats_server(tmp_path)
    monkeypatch.setenv("MESHGATE_NATS_SERVER", str(binary))
    policy = RestartPolicy(initial_backoff_seconds=0.05, max_backoff_seconds=0.1, max_restarts=2)
    config, broker = embedded_here(tmp_path, policy)
    async with started_gateways() as start:
        gw = await start(
            config=config,
            region="here",
            data_dir=tmp_path,
            broker=broker,
            metrics_listen="127.0.0.1:0",
            replicate=False,
        )
        assert await asyncio.to_thread(gw.alive) is None
        pid = broker.server.pid
        assert pid is not None
        flag.unlink()
        os.kill(pid, signal.SIGKILL)
        await eventually(
            lambda: gw.broker.state is BrokerState.FAILED, 60, interval=0.02, what="the supervisor to give up"
        )
        reason = await asyncio.to_thread(gw.alive)
        assert reason is not None
        assert reason.startswith("broker failed: embedded failed: gave up restarting nats-server after 2 restarts")
        status, _, body = await get(gw, HEALTHZ_PATH)
        assert status == 503
        assert body.decode().strip() == reason
        assert (await get(gw, READYZ_PATH))[0] == 503


async def test_kind_nats_readiness_follows_the_connection(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A nats-server of its own (not the shared fixture): stopped, then started on the same port."""
    async with EmbeddedNats(data_dir=tmp_path / "nats", restart=None) as server, started_gateways() as start:
        config = MeshConfig(regions=(nats_region("here", server, "127.0.0.1:0"),))
        gw = await start(config=config, region="here", data_dir=tmp_path, metrics_listen="127.0.0.1:0")
        assert gw.ready() is None
        assert await health(gw) == health_pb2.HealthCheckResponse.SERVING
        await server.stop()
        await eventually(
            lambda: gw.ready() is not None, 60, interval=0.02, what="the client to notice the server is gone"
        )
        reason = gw.ready()
        # How the socket ended is the kernel's race: a FIN (EOF) or, with bytes still unread
        # at the server, a RST (reset by peer); either is the server gone, said as it was seen.
        gone = ("unexpected EOF", "ConnectionResetError: [Errno 104] Connection reset by peer")
        assert reason in [f"broker client is reconnecting: reconnecting to {server.url}: {why}" for why in gone], reason
        await wait_for_health(gw, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert (await get(gw, READYZ_PATH))[:3:2] == (503, f"{reason}\n".encode())
        assert (await get(gw, HEALTHZ_PATH))[0] == 200
        await server.start()
        await eventually(lambda: gw.ready() is None, 60, interval=0.02, what="the client to reconnect")
        await wait_for_health(gw, health_pb2.HealthCheckResponse.SERVING)
        assert (await get(gw, READYZ_PATH))[0] == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        m.startswith(f"NATS meshgate-here: disconnected ({why}); reconnecting to") for m in warnings for why in gone
    )


class PasswordNats(EmbeddedNats):
    """A nats-server that takes one user, ``mesh``, with ``password``."""

    password = "first"

    def _config_text(self) -> str:
        return super()._config_text() + f'authorization {{ user: "mesh", password: "{self.password}" }}\n'

    def change_password(self, password: str) -> None:
        """Rewrites the config and has the server reload it (SIGHUP): connected clients must log in again."""
        self.password = password
        self.config_path.write_text(self._config_text())
        assert self.pid is not None
        os.kill(self.pid, signal.SIGHUP)


# nats-py leaves the socket of a refused reconnect attempt for the garbage collector to close.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_kind_nats_readiness_says_why_the_server_refuses_the_reconnect(tmp_path: Path) -> None:
    """Credentials rotated on the server only: not ready, with the server's reason and no password shown."""
    async with PasswordNats(data_dir=tmp_path / "nats", restart=None) as server, started_gateways() as start:
        config = MeshConfig(regions=(nats_region("here", server, "127.0.0.1:0"),))
        broker = NatsBroker(
            servers=[f"nats://mesh:first@127.0.0.1:{server.port}"],
            settings=NatsSettings(),
            idempotency_window_seconds=60,
            reconnect_wait=0.1,
            name="meshgate-here",
        )
        gw = await start(config=config, region="here", data_dir=tmp_path, broker=broker, replicate=False)
        assert gw.ready() is None
        server.change_password("second")
        await eventually(lambda: "last attempt" in (gw.ready() or ""), 60, interval=0.02, what="a refused reconnect")
        reason = gw.ready()
        assert reason is not None
        assert reason.startswith(
            f"broker client is reconnecting: reconnecting to nats://mesh:***@127.0.0.1:{server.port}"
        )
        assert reason.endswith("; last attempt: Authorization Violation"), reason
        assert "first" not in reason
        await wait_for_health(gw, health_pb2.HealthCheckResponse.NOT_SERVING)
        server.change_password("first")
        await eventually(lambda: gw.ready() is None, 60, interval=0.02, what="the client to log in again")
        await wait_for_health(gw, health_pb2.HealthCheckResponse.SERVING)


ROUTING = (RouteRule(index=0, topic="orders/*", regions=("here", "there")),)


def _link(gw: Gateway) -> admin_pb2.LinkStatus:
    [status] = gw.link_statuses()
    return status


async def test_link_says_backing_off_not_standby_while_its_broker_is_down(tmp_path: Path) -> None:
    """No replica runs the link while the broker is away: not standby; the error clears once it replicates."""
    async with (
        EmbeddedNats(data_dir=tmp_path / "here-nats", restart=None) as here_server,
        EmbeddedNats(data_dir=tmp_path / "there-nats") as there_server,
        started_gateways() as start,
    ):

        def mesh(there_gateway: str) -> MeshConfig:
            return two_region_mesh(here_server, there_server, there_gateway=there_gateway, routing=ROUTING)

        there = await start(config=mesh("127.0.0.1:0"), region="there", data_dir=tmp_path, replicate=False)
        options = LinkOptions(backoff_initial_seconds=0.05, backoff_max_seconds=0.2)
        here = await start(
            config=mesh(there.address), region="here", data_dir=tmp_path, lease_ttl=1.0, link_options=options
        )
        assert here.replicator is not None
        link = here.replicator.links["there"]
        await publish(here, [f"a-{i}" for i in range(10)])
        await eventually(
            lambda: link.counters.forwarded == 10, 60, interval=0.02, what="the first events to reach there"
        )

        await here_server.stop()
        # Once its lease can no longer be renewed, the link stops here, and nobody runs it.
        await eventually(lambda: not link.running, 60, interval=0.02, what="the link to stop for want of its lease")
        await asyncio.sleep(0)
        status = _link(here)
        assert status.state == admin_pb2.LINK_STATE_BACKING_OFF, admin_pb2.LinkState.Name(status.state)
        assert "lease of the link cannot be read or taken, the broker is unreachable" in status.last_error
        assert status.HasField("last_error_time")

        await here_server.start()
        await eventually(lambda: here.ready() is None, 60, interval=0.02, what="the broker to be back")
        # Its lease taken again, the link runs with nothing to send: the broker's error is past
        # (not kept until an ack that no idle partition gets, or a whole ack timeout).
        await eventually(
            lambda: _link(here).state == admin_pb2.LINK_STATE_REPLICATING and _link(here).last_error == "",
            20,
            interval=0.02,
            what="the link to replicate again without the broker's old error",
        )
        await publish(here, [f"b-{i}" for i in range(10)])
        await eventually(
            lambda: link.counters.forwarded >= 20, 60, interval=0.02, what="the link to run again and forward"
        )
        status = _link(here)
        assert status.state == admin_pb2.LINK_STATE_REPLICATING
        assert status.last_error == "" and not status.HasField("last_error_time")
        async with grpc.aio.insecure_channel(there.address) as ch:
            got = await read_all(gateway_pb2_grpc.GatewayStub(ch), "orders/>", expect=20, idle=10)
        assert sorted(e.id for e in got) == sorted([f"a-{i}" for i in range(10)] + [f"b-{i}" for i in range(10)])


async def test_link_error_is_cleared_once_the_destination_is_back(tmp_path: Path) -> None:
    """The destination's gateway goes away and comes back on its address: the idle link's error goes too."""
    async with (
        EmbeddedNats(data_dir=tmp_path / "here-nats") as here_server,
        EmbeddedNats(data_dir=tmp_path / "there-nats") as there_server,
        started_gateways() as start,
    ):

        def mesh(there_gateway: str) -> MeshConfig:
            return two_region_mesh(here_server, there_server, there_gateway=there_gateway, routing=ROUTING)

        there = await start(config=mesh("127.0.0.1:0"), region="there", data_dir=tmp_path, replicate=False)
        address = there.address
        options = LinkOptions(backoff_initial_seconds=0.05, backoff_max_seconds=0.2, connect_timeout_seconds=0.5)
        here = await start(config=mesh(address), region="here", data_dir=tmp_path, link_options=options)
        assert here.replicator is not None
        link = here.replicator.links["there"]
        await publish(here, ["a-0"])
        await eventually(lambda: link.counters.forwarded == 1, 60, interval=0.02, what="the first event to reach there")

        await there.stop(grace=0.5)
        await eventually(
            lambda: _link(here).state == admin_pb2.LINK_STATE_BACKING_OFF and _link(here).last_error != "",
            60,
            interval=0.02,
            what="the link to report the lost destination",
        )

        # Back on the same address; nothing is waiting to be sent, so no ack will come.
        await start(config=mesh(address), region="there", data_dir=tmp_path, listen=address, replicate=False)
        await eventually(
            lambda: _link(here).last_error == "", 60, interval=0.02, what="the error to clear once the link works again"
        )
        status = _link(here)
        assert status.state == admin_pb2.LINK_STATE_REPLICATING
        assert not status.HasField("last_error_time")
        await publish(here, ["b-0"])
        await eventually(lambda: link.counters.forwarded == 2, 60, interval=0.02, what="the next event to reach there")
        assert _link(here).last_error == ""


class _RecordedState:
    """``Link.state`` with every value set recorded (a data descriptor: it sees each assignment)."""

    def __init__(self, changes: list[LinkState]) -> None:
        self.changes = changes

    def __get__(self, link: Link | None, owner: type[Link]) -> LinkState:
        assert link is not None
        state: LinkState = link.__dict__["state"]
        return state

    def __set__(self, link: Link, value: LinkState) -> None:
        link.__dict__["state"] = value
        self.changes.append(value)


async def test_a_destination_whose_broker_froze_shows_backing_off_until_it_stores_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry that opens a call and fails again is not `replicating`: the link shows backing_off throughout."""
    async with (
        EmbeddedNats(data_dir=tmp_path / "here-nats") as here_server,
        EmbeddedNats(data_dir=tmp_path / "there-nats") as there_server,
        started_gateways() as start,
    ):

        def mesh(there_gateway: str) -> MeshConfig:
            return two_region_mesh(here_server, there_server, there_gateway=there_gateway, routing=ROUTING)

        there = await start(config=mesh("127.0.0.1:0"), region="there", data_dir=tmp_path, replicate=False)
        options = LinkOptions(ack_timeout_seconds=2.0, backoff_initial_seconds=0.05, backoff_max_seconds=0.2)
        here = await start(config=mesh(there.address), region="here", data_dir=tmp_path, link_options=options)
        await publish(here, [f"a-{i}" for i in range(10)])
        await eventually(lambda: _link(here).forwarded == 10, 30, what="the first events to reach there")
        pid = there_server.pid
        assert pid is not None
        await freeze(pid)  # there's broker stops answering; its gateway still takes calls
        try:
            await publish(here, [f"b-{i}" for i in range(10)])
            await eventually(
                lambda: _link(here).state == admin_pb2.LINK_STATE_BACKING_OFF, 30, what="the link to back off"
            )
            # Retries keep opening calls that fail again (backoff at most 0.2 s): none shows
            # replicating, not even for a moment between two looks (every state set is recorded).
            changes: list[LinkState] = []
            monkeypatch.setattr(Link, "state", _RecordedState(changes), raising=False)
            seen = set()
            for _ in range(30):
                status = _link(here)
                seen.add(admin_pb2.LinkState.Name(status.state))
                assert status.lag_events >= 10 and status.last_error, status
                await asyncio.sleep(0.1)
            assert seen == {"LINK_STATE_BACKING_OFF"}, seen
            assert changes and set(changes) == {LinkState.BACKING_OFF}, changes
        finally:
            os.kill(pid, signal.SIGCONT)
        await eventually(lambda: _link(here).forwarded == 20, 60, what="the held events to reach there")
        status = _link(here)
        assert status.state == admin_pb2.LINK_STATE_REPLICATING and status.last_error == "", status

"""EmbeddedNats (the nats-server child process), EmbeddedNatsBroker and make_broker."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import stat
import time
import urllib.request
from pathlib import Path

import nats
import pytest

from meshgate.brokers import (
    AppendResult,
    BrokerError,
    BrokerState,
    EmbeddedNats,
    EmbeddedNatsBroker,
    EmbeddedNatsError,
    EmbeddedNatsState,
    NatsBroker,
    StartAt,
    WorkSharing,
    make_broker,
)
from meshgate.brokers.embedded import RestartPolicy, default_cpus, find_nats_server, usable_cores
from meshgate.brokers.kafka import KafkaBroker
from meshgate.config import BrokerKind, NatsSettings, RegionConfig
from tests._servers import free_port
from tests._wait import eventually
from tests.brokers._contract import make_event, read_events, sequences


def server_state(server: EmbeddedNats) -> EmbeddedNatsState:
    return server.state


def fake_server(tmp_path: Path, script: str) -> Path:
    """A stand-in for the nats-server binary: a shell script."""
    path = tmp_path / "fake-nats-server"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


async def test_ready_from_its_log_on_a_port_it_picked(nats_server: EmbeddedNats) -> None:
    assert nats_server.state is EmbeddedNatsState.RUNNING
    assert nats_server.port > 0
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert any("Server is ready" in line for line in nats_server.log_tail())
    async with await nats.connect(nats_server.url) as nc:
        info = await nc.jetstream().account_info()
    assert info.limits is not None
    assert nc.max_payload == nats_server.max_payload


def _varz(url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{url}/varz", timeout=10) as resp:
        data: dict[str, object] = json.loads(resp.read())
    return data


async def test_monitoring_on_a_port_it_picked_kept_across_restarts(nats_server: EmbeddedNats) -> None:
    """NATS tools (nats-top, `nats server check`, exporters) read /varz and /jsz from the URL shown."""
    port = nats_server.monitor_port
    assert port is not None and port > 0
    assert nats_server.monitor_url == f"http://127.0.0.1:{port}"
    varz = await asyncio.to_thread(_varz, nats_server.monitor_url)
    assert (varz["server_name"], varz["port"]) == ("meshgate-test", nats_server.port)
    await nats_server.kill()
    await nats_server.start()
    assert nats_server.monitor_port == port
    assert (await asyncio.to_thread(_varz, nats_server.monitor_url))["port"] == nats_server.port


async def test_a_picked_monitoring_port_taken_while_down_gives_way_to_a_new_one(nats_server: EmbeddedNats) -> None:
    """Monitoring never costs a restart: another process may take a port the server picked."""
    port = nats_server.monitor_port
    assert port is not None and port > 0
    await nats_server.kill()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        await nats_server.start()
        assert nats_server.monitor_port not in (None, -1, port)
        assert (await asyncio.to_thread(_varz, nats_server.monitor_url))["port"] == nats_server.port


async def test_monitoring_on_a_given_port_or_off(tmp_path: Path) -> None:
    port = free_port()
    async with EmbeddedNats(data_dir=tmp_path / "a", monitor_port=port) as pinned:
        assert pinned.monitor_url == f"http://127.0.0.1:{port}"
        assert (await asyncio.to_thread(_varz, pinned.monitor_url))["port"] == pinned.port
    off = EmbeddedNats(data_dir=tmp_path / "b", monitor_port=None)
    assert "http:" not in off._config_text()
    async with off:
        assert off.monitor_url == "" and off.monitor_port is None


def test_config_file(tmp_path: Path) -> None:
    default = EmbeddedNats(data_dir=tmp_path / "a")._config_text()
    assert "sync_interval" not in default.replace("# Default sync", "")
    assert 'listen: "127.0.0.1:-1"' in default
    synced = EmbeddedNats(data_dir=tmp_path / "b", sync_always=True, port=4333)._config_text()
    assert "sync_interval: always" in synced
    assert 'listen: "127.0.0.1:4333"' in synced
    assert 'http: "127.0.0.1:-1"' in default
    assert 'http: "[::1]:8222"' in EmbeddedNats(data_dir=tmp_path / "c", host="::1", monitor_port=8222)._config_text()


async def test_the_server_runs_on_the_cores_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # GOMAXPROCS as the server itself reports it (/varz): the mesh file's cpus, else the
    # environment's, else half of the usable cores (the gateway shares the machine with it).
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    for cpus, env, expected in ((1, None, 1), (3, "2", 3), (None, "2", 2), (None, None, default_cpus())):
        if env is not None:
            monkeypatch.setenv("GOMAXPROCS", env)
        async with EmbeddedNats(data_dir=tmp_path / f"c{cpus}-{env}", cpus=cpus) as server:
            assert server.monitor_url is not None
            varz = await asyncio.to_thread(_varz, server.monitor_url)
        assert varz["gomaxprocs"] == server.cpus == expected, (cpus, env)
        monkeypatch.delenv("GOMAXPROCS", raising=False)
    assert default_cpus() == max(1, usable_cores() // 2)
    # A $GOMAXPROCS that is no core count is said, not obeyed.
    monkeypatch.setenv("GOMAXPROCS", "two")
    with caplog.at_level(logging.WARNING, logger="meshgate.brokers.embedded._server"):
        assert EmbeddedNats(data_dir=tmp_path / "bad-env").cpus == default_cpus()
    assert "GOMAXPROCS='two' is not a core count" in caplog.text
    with pytest.raises(ValueError, match="cpus of 0 is not a core count"):
        EmbeddedNats(data_dir=tmp_path / "zero", cpus=0)


async def test_sync_always_server_runs(tmp_path: Path) -> None:
    async with EmbeddedNats(data_dir=tmp_path, sync_always=True) as server:
        assert "sync_interval: always" in server.config_path.read_text()
        async with NatsBroker(
            servers=[server.url], settings=NatsSettings(sync_always=True), idempotency_window_seconds=60
        ) as broker:
            assert sequences(await broker.append([make_event("orders/created", "synced")])) == [1]


async def test_restart_keeps_port_and_data(nats_server: EmbeddedNats) -> None:
    port = nats_server.port
    async with NatsBroker(servers=[nats_server.url], settings=NatsSettings(), idempotency_window_seconds=60) as b:
        sequences(await b.append([make_event("orders/created", "kept")]))
    await nats_server.stop()
    await nats_server.stop()
    assert nats_server.state is EmbeddedNatsState.STOPPED and nats_server.pid is None
    await nats_server.start()
    await nats_server.start()
    assert nats_server.port == port
    await nats_server.kill()
    await nats_server.start()
    assert nats_server.port == port
    async with NatsBroker(servers=[nats_server.url], settings=NatsSettings(), idempotency_window_seconds=60) as b:
        [got] = await read_events(b, ">", 1, start=StartAt(earliest=True))
    assert got.id == "kept"


async def test_early_exit_reports_the_log(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    taken = EmbeddedNats(data_dir=tmp_path / "other", port=nats_server.port)
    with pytest.raises(EmbeddedNatsError, match="exited with code") as info:
        await taken.start()
    assert info.value.returncode not in (None, 0)
    assert "address already in use" in str(info.value)
    assert info.value.log_tail
    assert taken.state is EmbeddedNatsState.FAILED
    await taken.stop()


async def test_early_exit_of_any_binary(tmp_path: Path) -> None:
    binary = fake_server(tmp_path, 'echo "starting"\necho "[FTL] cannot open the store" >&2\nexit 3\n')
    server = EmbeddedNats(data_dir=tmp_path / "data", binary=binary)
    with pytest.raises(EmbeddedNatsError, match="code 3") as info:
        await server.start()
    assert "[FTL] cannot open the store" in str(info.value)
    assert info.value.log_tail == ["starting", "[FTL] cannot open the store"]


async def test_not_ready_in_time(tmp_path: Path) -> None:
    binary = fake_server(tmp_path, 'echo "thinking"\nexec sleep 30\n')
    server = EmbeddedNats(data_dir=tmp_path / "data", binary=binary, ready_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(EmbeddedNatsError, match=r"not ready within 0\.3 s") as info:
        await server.start()
    assert time.monotonic() - started < 5
    assert info.value.log_tail == ["thinking"]
    assert server.pid is None


async def test_data_dir_in_use_is_refused(nats_server: EmbeddedNats) -> None:
    second = EmbeddedNats(data_dir=nats_server.data_dir)
    with pytest.raises(EmbeddedNatsError, match=f"in use by nats-server pid {nats_server.pid}"):
        await second.start()


def test_binary_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_nats_server().name.startswith("nats-server")
    monkeypatch.setenv("MESHGATE_NATS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(EmbeddedNatsError, match="MESHGATE_NATS_SERVER"):
        find_nats_server()
    binary = fake_server(tmp_path, "exit 0\n")
    monkeypatch.setenv("MESHGATE_NATS_SERVER", str(binary))
    assert find_nats_server() == binary


async def test_log_keeps_flowing_after_ready(nats_server: EmbeddedNats) -> None:
    """The pipe is drained in the background, so a chatty server never blocks on its log."""
    assert nats_server.pid is not None
    before = len(nats_server.log_tail(1000))
    os.kill(nats_server.pid, 1)  # SIGHUP: nats-server reloads its config and logs about it
    await eventually(lambda: len(nats_server.log_tail(1000)) != before, 10, interval=0.01, what="a new log line")


async def test_unexpected_exit_without_restarts_is_noticed_and_start_recovers(tmp_path: Path) -> None:
    async with EmbeddedNats(data_dir=tmp_path / "nats", restart=None) as server:
        port, pid = server.port, server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # not through kill(): as if the OOM killer did it
        await eventually(
            lambda: server_state(server) is EmbeddedNatsState.FAILED, 10, interval=0.01, what="the server FAILED"
        )
        assert server.pid is None
        assert server.failure == f"nats-server pid {pid} exited unexpectedly with signal 9 (SIGKILL)"
        await server.start()
        assert server_state(server) is EmbeddedNatsState.RUNNING
        assert server.port == port and server.pid != pid


def switchable_server(tmp_path: Path) -> tuple[Path, Path]:
    """A nats-server binary that runs the real one while ``flag`` exists and fails to start otherwise."""
    flag = tmp_path / "may-start"
    flag.touch()
    real = find_nats_server()
    binary = fake_server(
        tmp_path,
        f'[ -e "{flag}" ] || {{ echo "[FTL] the store is broken (on purpose)"; exit 7; }}\nexec "{real}" "$@"\n',
    )
    return binary, flag


async def test_killed_server_is_restarted_on_its_port_and_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """kill -9 of the child: restarted by itself, same port, every acked event still there."""
    async with EmbeddedNats(data_dir=tmp_path / "nats") as server:
        port, pid = server.port, server.pid
        assert pid is not None
        async with NatsBroker(servers=[server.url], settings=NatsSettings(), idempotency_window_seconds=60) as b:
            acked = sequences(await b.append([make_event("orders/created", f"e{i}") for i in range(20)]))
            assert acked == list(range(1, 21))
            os.kill(pid, signal.SIGKILL)
            await eventually(
                lambda: server.pid not in (None, pid) and server_state(server) is EmbeddedNatsState.RUNNING,
                30,
                interval=0.01,
                what="a new nats-server RUNNING",
            )
            assert server.port == port and server.restarts == 1
            # The client reconnects to the same URL by itself, and the log is whole.
            got = await read_events(b, ">", 20, start=StartAt(earliest=True))
            assert [e.id for e in got] == [f"e{i}" for i in range(20)]
            assert sequences(await b.append([make_event("orders/created", "after")])) == [21]
    warnings = [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "embedded NATS" in r.getMessage()
    ]
    assert any(f"pid {pid} exited unexpectedly with signal 9 (SIGKILL); restarting it on" in m for m in warnings)
    assert any("Server is ready" in m for m in warnings)  # the log tail of the dead server
    assert any("restarted (pid" in m for m in warnings)


async def test_supervisor_gives_up_when_restarts_keep_failing(tmp_path: Path) -> None:
    binary, flag = switchable_server(tmp_path)
    policy = RestartPolicy(initial_backoff_seconds=0.01, max_backoff_seconds=0.05, max_restarts=3)
    server = EmbeddedNats(data_dir=tmp_path / "nats", binary=binary, restart=policy)
    async with server:
        pid = server.pid
        assert pid is not None
        flag.unlink()
        os.kill(pid, signal.SIGKILL)
        await eventually(
            lambda: server_state(server) is EmbeddedNatsState.FAILED, 30, interval=0.01, what="the server FAILED"
        )
        assert server.restarts == 3
        assert server.failure.startswith("gave up restarting nats-server after 3 restarts within 60 s; last: restart 3")
        assert "exited with code 7" in server.failure and "the store is broken (on purpose)" in server.failure
    assert server_state(server) is EmbeddedNatsState.STOPPED


async def test_stop_and_kill_never_restart(tmp_path: Path) -> None:
    """Only an exit nobody asked for is restarted; a stop during a restart's backoff ends it."""
    binary, flag = switchable_server(tmp_path)
    policy = RestartPolicy(initial_backoff_seconds=0.01, max_backoff_seconds=0.02, max_restarts=1000)
    async with EmbeddedNats(data_dir=tmp_path / "nats", binary=binary, restart=policy) as server:
        await server.kill()
        assert server_state(server) is EmbeddedNatsState.STOPPED and server.restarts == 0
        await server.start()
        flag.unlink()  # restarts fail from now on, and the supervisor keeps trying
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: server.restarts >= 2, 30, interval=0.01, what="a second restart")
        assert server_state(server) is EmbeddedNatsState.RESTARTING
        await server.stop()
        restarts = server.restarts
        assert server_state(server) is EmbeddedNatsState.STOPPED and server.pid is None
        flag.touch()
        await asyncio.sleep(0.2)  # a restart after stop() would be due within 0.02 s
        assert server.restarts == restarts and server.pid is None


def test_restart_policy_backoff() -> None:
    policy = RestartPolicy(initial_backoff_seconds=0.1, max_backoff_seconds=3.0)
    assert 0.05 <= policy.delay(0) <= 0.1
    assert 0.2 <= policy.delay(2) <= 0.4
    assert 1.5 <= policy.delay(10) <= 3.0
    with pytest.raises(ValueError, match="restart backoff"):
        RestartPolicy(initial_backoff_seconds=0)
    with pytest.raises(ValueError, match="max_restarts"):
        RestartPolicy(max_restarts=0)


# -- EmbeddedNatsBroker and make_broker -------------------------------------------------------


async def test_embedded_broker(tmp_path: Path) -> None:
    region = RegionConfig(name="us-west", kind=BrokerKind.EMBEDDED)
    broker = make_broker(region, idempotency_window_seconds=60, data_dir=tmp_path)
    assert isinstance(broker, EmbeddedNatsBroker)
    async with broker:
        assert broker.server.data_dir == tmp_path / "us-west"
        assert broker.server.state is EmbeddedNatsState.RUNNING
        [result] = await broker.append([make_event("orders/created", "embedded")])
        assert result == AppendResult(1, False)
    assert broker.state is BrokerState.CLOSED
    assert server_state(broker.server) is EmbeddedNatsState.STOPPED
    # Started again: same data, same memory of ids.
    async with broker:
        assert await broker.append([make_event("orders/created", "embedded")]) == [AppendResult(1, True)]


def test_factory_for_nats_regions(tmp_path: Path) -> None:
    region = RegionConfig(name="eu", brokers=("broker1.eu", "broker2.eu:4333", "[::1]:4444"))
    broker = make_broker(region, idempotency_window_seconds=900, data_dir=tmp_path)
    assert isinstance(broker, NatsBroker) and not isinstance(broker, EmbeddedNatsBroker)
    assert broker.servers == ("nats://broker1.eu:4222", "nats://broker2.eu:4333", "nats://[::1]:4444")
    assert broker.name == "meshgate-eu"


def test_factory_listens_where_an_embedded_region_says(tmp_path: Path) -> None:
    region = RegionConfig(name="dev", kind=BrokerKind.EMBEDDED, brokers=("127.0.0.1:4999",))
    broker = make_broker(region, idempotency_window_seconds=60, data_dir=tmp_path)
    assert isinstance(broker, EmbeddedNatsBroker)
    assert broker.server.port == 4999 and broker.server.host == "127.0.0.1"
    # Its monitoring on a free port of the same host, unless nats.monitor names one.
    assert (broker.server.monitor_host, broker.server.monitor_port) == ("127.0.0.1", -1)
    pinned = RegionConfig(name="dev", kind=BrokerKind.EMBEDDED, nats=NatsSettings(monitor="127.0.0.2:8333"))
    broker = make_broker(pinned, idempotency_window_seconds=60, data_dir=tmp_path)
    assert isinstance(broker, EmbeddedNatsBroker)
    assert (broker.server.monitor_host, broker.server.monitor_port) == ("127.0.0.2", 8333)


async def test_brokers_say_where_they_are(tmp_path: Path) -> None:
    """What `meshgate status` and the `up` banner show: addresses, and an embedded broker's monitoring."""
    nats_region = RegionConfig(name="eu", brokers=("broker1.eu", "tls://mesh:s3cret@broker2.eu:4443"))
    assert make_broker(nats_region, idempotency_window_seconds=60, data_dir=tmp_path).addresses == (
        "nats://broker1.eu:4222",
        "tls://mesh:***@broker2.eu:4443",  # shown to operators: never a password
    )
    kafka_region = RegionConfig(name="k", kind=BrokerKind.KAFKA, brokers=("kafka1",))
    kafka = make_broker(kafka_region, idempotency_window_seconds=60, data_dir=tmp_path)
    assert (kafka.addresses, kafka.monitor_url) == (("kafka1:9092",), "")
    embedded = make_broker(
        RegionConfig(name="dev", kind=BrokerKind.EMBEDDED), idempotency_window_seconds=60, data_dir=tmp_path
    )
    async with embedded:
        assert isinstance(embedded, EmbeddedNatsBroker)
        assert embedded.addresses == (embedded.server.url,)
        assert embedded.monitor_url == embedded.server.monitor_url != ""


def test_factory_for_kafka_regions(tmp_path: Path) -> None:
    region = RegionConfig(name="k", kind=BrokerKind.KAFKA, brokers=("kafka1", "kafka2:9093", "[::1]:9094"))
    broker = make_broker(region, idempotency_window_seconds=60, data_dir=tmp_path)
    assert isinstance(broker, KafkaBroker)
    assert broker.bootstrap_servers == ("kafka1:9092", "kafka2:9093", "[::1]:9094")
    assert broker.name == "meshgate-k" and isinstance(broker, WorkSharing)
    with pytest.raises(BrokerError, match="lists no brokers") as info:
        make_broker(RegionConfig(name="k", kind=BrokerKind.KAFKA), idempotency_window_seconds=60, data_dir=tmp_path)
    assert info.value.retriable is False

"""A second ``meshgate up`` on the folder or the ports of a running one stops at once, names it, starts nothing."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshgate.testing import ChildProcess
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests._wait import eventually
from tests.e2e._mesh import _is_nats_server_of, _pid_alive, free_port

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to count nats-server processes")


def _nats_servers_of(data_dir: Path) -> list[int]:
    """The nats-server processes whose command line names ``data_dir`` (as tests/e2e/_mesh.py counts them)."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if _pid_alive(pid) and _is_nats_server_of(pid, data_dir)]


def _up(config: Path, data_dir: Path) -> ChildProcess:
    """``meshgate up`` as a child process, its output kept."""
    return ChildProcess(args=("-m", "meshgate", "up", "-c", str(config), "--data-dir", str(data_dir)))


def _mesh(tmp_path: Path) -> tuple[Path, list[int]]:
    ports = [free_port() for _ in range(4)]
    path = tmp_path / "two-regions.yaml"
    path.write_text(
        f"""\
event_mesh:
  regions:
    - name: east
      kind: embedded
      gateway: 127.0.0.1:{ports[0]}
      metrics: 127.0.0.1:{ports[1]}
    - name: west
      kind: embedded
      gateway: 127.0.0.1:{ports[2]}
      metrics: 127.0.0.1:{ports[3]}
  routing:
    - topic: "orders/>"
      regions: ["east", "west"]
"""
    )
    return path, ports


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[ChildProcess, Path, Path, list[int]]]:
    """A serving ``meshgate up`` of two embedded regions: (it, its config, its data dir, its ports)."""
    config, ports = _mesh(tmp_path)
    data_dir = tmp_path / "first"
    first = _up(config, data_dir)
    await first.launch()
    try:
        await eventually(
            lambda: first.text().count("gateway serving on") == 2, 60, what=f"two regions serving:\n{first.text()}"
        )
        assert len(_nats_servers_of(data_dir)) == 2
        yield first, config, data_dir, ports
    finally:
        await first.close(grace=30)  # SIGTERM: it drains and stops its brokers


async def _still_serves(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        resp = await gateway_pb2_grpc.GatewayStub(channel).Publish(
            gateway_pb2.PublishRequest(
                events=[event_pb2.Event(topic="orders/created", source="/tests", type="t", data=b"{}")]
            ),
            timeout=10,
        )
    assert [r.outcome for r in resp.results] == [event_pb2.OUTCOME_ACCEPTED]


async def test_a_second_up_in_the_same_folder_names_the_running_mesh(
    running: tuple[ChildProcess, Path, Path, list[int]],
) -> None:
    first, config, data_dir, ports = running
    second = _up(config, data_dir)
    await second.launch()
    rc = await second.wait(30)
    text = second.text()
    assert rc != 0, text
    assert f"data dir {data_dir} is in use by another mesh: meshgate up pid {first.pid}" in text, text
    assert f"config {config}" in text and f"kill {first.pid}" in text, text
    assert "another --data-dir" in text, text
    assert "gateway serving on" not in text and "embedded NATS" not in text, text
    # No broker of the second run: the first mesh's two nats-servers, and they still serve.
    assert len(_nats_servers_of(data_dir)) == 2
    assert first.proc is not None and first.proc.returncode is None
    await _still_serves(ports[0])


async def test_a_second_up_on_the_same_ports_names_the_running_mesh(
    running: tuple[ChildProcess, Path, Path, list[int]], tmp_path: Path
) -> None:
    first, config, data_dir, ports = running
    other_dir = tmp_path / "second"
    second = _up(config, other_dir)
    await second.launch()
    rc = await second.wait(30)
    text = second.text()
    assert rc != 0, text
    for port, what in zip(
        ports,
        ("gateway of region east", "metrics of region east", "gateway of region west", "metrics of region west"),
        strict=True,
    ):
        assert f"127.0.0.1:{port} ({what})" in text, text
    assert text.count(f"in use by the mesh of meshgate up pid {first.pid}") == 1, text
    assert f"config {config}, data dir {data_dir}" in text and f"kill {first.pid}" in text, text
    # Nothing of the second run started: no nats-server, no broker files in its data dir.
    assert _nats_servers_of(other_dir) == []
    assert sorted(p.name for p in other_dir.iterdir()) == ["meshgate-up.lock"], list(other_dir.rglob("*"))
    await _still_serves(ports[2])

"""A first run as a person at the CLI sees it: ``meshgate up``'s banner and ``status`` name each
embedded broker and its monitoring endpoint (which NATS tools can read), Ctrl-C stops the mesh
without a warning, ``tail`` says that it waits, and ``serve`` refuses a port in use before it
starts a broker or creates a stream."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js.errors import NotFoundError

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.testing import ChildProcess
from tests._cli import run_cli
from tests._servers import free_ports
from tests._wait import eventually

_BANNER = re.compile(rb"region (\S+) \(embedded\): gateway (\S+), broker (nats://\S+), monitoring (http://\S+)\n")


def _mesh(tmp_path: Path, ports: list[int]) -> Path:
    path = tmp_path / "two-regions.yaml"
    path.write_text(
        f"""\
event_mesh:
  regions:
    - name: east
      kind: embedded
      gateway: 127.0.0.1:{ports[0]}
    - name: west
      kind: embedded
      gateway: 127.0.0.1:{ports[1]}
  routing:
    - topic: "orders/>"
      regions: ["east", "west"]
"""
    )
    return path


class Up:
    def __init__(self, child: ChildProcess, ports: list[int]) -> None:
        self.child = child
        self.east, self.west = (f"127.0.0.1:{port}" for port in ports)


@pytest.fixture
async def up(tmp_path: Path) -> AsyncIterator[Up]:
    """``meshgate up`` of two embedded regions (east, west), once both serve."""
    ports = free_ports(2)
    config = _mesh(tmp_path, ports)
    child = ChildProcess(args=("-m", "meshgate", "up", "-c", str(config), "--data-dir", str(tmp_path / "data")))
    await child.launch()
    try:
        await eventually(
            lambda: child.text().count("gateway serving on") == 2, 60, what=f"two regions serving:\n{child.text()}"
        )
        yield Up(child, ports)
    finally:
        await child.close(grace=30)


def _banner(child: ChildProcess) -> dict[str, tuple[str, str, str]]:
    """region -> (gateway, broker URL, monitoring URL), from the banner lines."""
    return {
        m.group(1).decode(): (m.group(2).decode(), m.group(3).decode(), m.group(4).decode())
        for m in _BANNER.finditer(child.text().encode())
    }


def _varz(url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{url}/varz", timeout=10) as resp:
        data: dict[str, object] = json.loads(resp.read())
    return data


async def test_up_and_status_show_each_embedded_broker_and_its_monitoring(up: Up) -> None:
    await eventually(lambda: "2 regions serving" in up.child.text(), 10, what=f"the banner:\n{up.child.text()}")
    shown = _banner(up.child)
    assert set(shown) == {"east", "west"}, up.child.text()
    for region, (gateway, broker, monitoring) in shown.items():
        # The monitoring endpoint answers as NATS tools read it, and is the broker's own.
        varz = await asyncio.to_thread(_varz, monitoring)
        assert varz["server_name"] == f"meshgate-{region}"
        assert broker == f"nats://127.0.0.1:{varz['port']}"
        # A native client reaches the broker at the URL shown.
        nc = await nats.connect(broker)
        await nc.close()
        rc, out, err = await run_cli("status", "-g", gateway)
        assert rc == 0, err
        assert out.splitlines()[1] == f"broker {broker} (monitoring {monitoring})", out
        rc, out, err = await run_cli("status", "-g", gateway, "--json")
        assert rc == 0, err
        status = json.loads(out)
        assert (status["broker"], status["broker_monitor_url"]) == ([broker], monitoring)


async def test_ctrl_c_of_up_stops_the_mesh_without_a_warning(up: Up) -> None:
    gateway = up.east
    rc, _, err = await run_cli("publish", "-g", gateway, "orders/created", '{"order": 1}', "--id", "o-1")
    assert rc == 0, err

    async def replicating() -> bool:
        # The link east -> west is connected and has moved the event: a stop now ends a live call.
        _, east, _ = await run_cli("status", "-g", gateway, "--json")
        return [link["forwarded"] for link in json.loads(east)["links"]] == [1]

    await eventually(replicating, 30, what="east -> west forwarded the event")
    up.child.signal(signal.SIGINT)
    assert await up.child.wait(60) == 0, up.child.text()
    text = up.child.text()
    assert "gateway stopped" in text, text
    assert " WARNING " not in text and " ERROR " not in text, text


async def test_tail_says_on_stderr_that_it_waits_and_for_what(up: Up) -> None:
    gateway = up.west
    tail = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "meshgate", "tail", "-g", gateway, "orders/>", "--from", "earliest", "--limit", "1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert tail.stderr is not None and tail.stdout is not None
        said = (await asyncio.wait_for(tail.stderr.readline(), 10)).decode()
        assert said == f"meshgate tail: no events of 'orders/>' at {gateway} yet; waiting for new ones (Ctrl-C stops)\n"
        # It does wait: an event published now is printed, on stdout only.
        rc, _, err = await run_cli("publish", "-g", up.east, "orders/created", '{"order": 2}', "--id", "o-2")
        assert rc == 0, err
        out, rest = await asyncio.wait_for(tail.communicate(), 30)
        assert tail.returncode == 0
        assert "id=o-2" in out.decode() and rest == b""
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()


def _holding(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


@pytest.mark.parametrize("taken", ["gateway", "metrics"])
async def test_serve_refuses_a_port_in_use_before_it_creates_a_stream(
    nats_server: EmbeddedNats, tmp_path: Path, taken: str
) -> None:
    gateway, metrics = free_ports(2)  # distinct: the same number twice is refused for another reason
    ports = {"gateway": gateway, "metrics": metrics}
    config = tmp_path / "mesh.yaml"
    config.write_text(
        f"""\
event_mesh:
  regions:
    - name: east
      brokers: ["{nats_server.url.removeprefix("nats://")}"]
      gateway: 127.0.0.1:{ports["gateway"]}
      metrics: 127.0.0.1:{ports["metrics"]}
"""
    )
    with _holding(ports[taken]):
        rc, out, err = await run_cli("serve", "-c", str(config), "--region", "east", "--data-dir", str(tmp_path / "d"))
    assert rc == 1, out + err
    assert f"127.0.0.1:{ports[taken]}" in err, err
    # Refused before the broker was touched: no stream was created on it.
    nc = await nats.connect(nats_server.url)
    try:
        with pytest.raises(NotFoundError):
            await nc.jetstream().stream_info("MESHGATE")
    finally:
        await nc.close()

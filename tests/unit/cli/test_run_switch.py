"""`meshgate serve` and `up` run their gateways with a short GIL switch interval (links and ingest share a process)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshgate.cli import main
from meshgate.cli._run import SWITCH_INTERVAL_SECONDS

QUICKSTART = Path(__file__).parents[3] / "config" / "examples" / "quickstart.yaml"


@pytest.fixture
def intervals(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The switch interval in force when the command hands its gateways to the event loop."""
    seen: list[float] = []

    def run(coro: Coroutine[Any, Any, int], **_kw: object) -> int:
        seen.append(sys.getswitchinterval())
        coro.close()  # nothing is started: the command's own set-up is what is tested
        return 0

    monkeypatch.setattr(asyncio, "run", run)
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        yield seen
    finally:
        sys.setswitchinterval(before)


def test_serve(intervals: list[float], tmp_path: Path) -> None:
    # Nothing listens on the port: the command is stopped before its gateway starts.
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("event_mesh:\n  regions:\n    - name: a\n      kind: embedded\n      gateway: 127.0.0.1:7401\n")
    argv = ["serve", "-c", str(mesh), "--region", "a", "--data-dir", str(tmp_path)]
    assert main(argv) == 0
    assert intervals == [SWITCH_INTERVAL_SECONDS]


def test_up(intervals: list[float], tmp_path: Path) -> None:
    assert main(["up", "-c", str(QUICKSTART), "--data-dir", str(tmp_path)]) == 0
    assert intervals == [SWITCH_INTERVAL_SECONDS]

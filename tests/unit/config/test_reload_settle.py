"""A file written in place is applied only once it is whole and stable; a rename, SIGHUP or Admin.Reload at once.

A real ConfigWatcher polls a real file that the test writes as an operator's tools do: in place
in two halves (a slow copy, an editor without safe writes, ``cat > mesh.yaml``), or to a temporary
file renamed into place.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from meshgate.config import ConfigWatcher, MeshConfig, _reload, load_config, load_config_bytes
from tests._wait import eventually
from tests.unit._meshes import BASE

# Cut after its second rule, the new file is a valid mesh file too: it only lacks the last rule.
HALF = BASE + '    - topic: "inventory/>"\n      regions: [us-west]\n'
FULL = HALF + '    - topic: "billing/>"\n      regions: [eu-central]\n'
SETTLING = "changed in place"


def seen_settling(caplog: pytest.LogCaptureFixture) -> bool:
    return any(SETTLING in r.getMessage() for r in caplog.records)


@pytest.fixture
def mesh(tmp_path: Path) -> Path:
    path = tmp_path / "mesh.yaml"
    path.write_text(BASE)
    return path


def count(watcher: ConfigWatcher, result: str) -> float:
    value = watcher.registry.get_sample_value("meshgate_config_reloads_total", {"result": result})
    assert value is not None
    return value


async def test_a_file_written_in_place_in_two_halves_is_applied_only_whole(
    mesh: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(load_config_bytes(HALF.encode()).routing) == 2  # what a premature apply would run
    caplog.set_level(logging.INFO, logger="meshgate.config")
    # Counts the watcher's reads of the file (the real function does the reading).
    reads: list[bytes] = []

    def counted(path: Path) -> bytes:
        data = read(path)
        reads.append(data)
        return data

    read: Callable[[Path], bytes] = _reload.__dict__.get("read_config_file", Path.read_bytes)
    monkeypatch.setattr(_reload, "read_config_file", counted, raising=False)
    applied: list[MeshConfig] = []
    watcher = ConfigWatcher(path=mesh, on_change=applied.append, poll_interval=0.02, settle=3.0)
    async with watcher:
        with mesh.open("w") as f:
            f.write(HALF)
            f.flush()
            # The pause of a slow writer: the watcher reads the half-written file again and again.
            await eventually(
                lambda: bool(applied) or (seen_settling(caplog) and reads.count(HALF.encode()) >= 3),
                10,
                interval=0.01,
                what="the half-written file seen settling (or applied)",
            )
            assert applied == []
            assert watcher.state is _reload.WatcherState.SETTLING
            f.write(FULL[len(HALF) :])
        await eventually(lambda: bool(applied), 10, interval=0.01, what="the whole file applied")
        assert watcher.state is _reload.WatcherState.WATCHING
    assert [len(c.routing) for c in applied] == [3]
    assert watcher.config is applied[0]
    assert (count(watcher, "applied"), count(watcher, "refused")) == (1, 0)


async def test_a_file_renamed_into_place_is_applied_at_once(mesh: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshgate.config")
    applied: list[MeshConfig] = []
    # A settle period longer than the test: only a rename or a reload call can apply a change.
    watcher = ConfigWatcher(path=mesh, on_change=applied.append, poll_interval=0.02, settle=600)
    async with watcher:
        await asyncio.to_thread(mesh.write_text, HALF)
        await eventually(
            lambda: bool(applied) or seen_settling(caplog),
            10,
            interval=0.01,
            what="the file seen settling (or applied)",
        )
        assert applied == []
        # How operators should write it: a new file beside it, renamed over it.
        tmp = mesh.with_name(".mesh.yaml.tmp")
        await asyncio.to_thread(tmp.write_text, FULL)
        await asyncio.to_thread(os.replace, tmp, mesh)
        await eventually(lambda: bool(applied), 10, interval=0.01, what="the renamed file applied")
    assert [len(c.routing) for c in applied] == [3]


async def test_sighup_or_admin_reload_applies_a_settling_file_at_once(
    mesh: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshgate.config")
    applied: list[MeshConfig] = []
    watcher = ConfigWatcher(
        path=mesh, on_change=applied.append, poll_interval=0.02, settle=600, initial=load_config(mesh)
    )
    async with watcher:
        await asyncio.to_thread(mesh.write_text, FULL)
        await eventually(
            lambda: bool(applied) or seen_settling(caplog),
            10,
            interval=0.01,
            what="the file seen settling (or applied)",
        )
        assert applied == []
        # The operator says the file is ready.
        result = await watcher.reload()
        assert result.applied
        assert [len(c.routing) for c in applied] == [3]
        # Polls go on quietly: the bytes are the running config's.
        await asyncio.to_thread(mesh.write_text, FULL)
        assert (await watcher.reload(force=False)).outcome == "unchanged"
    assert count(watcher, "applied") == 1

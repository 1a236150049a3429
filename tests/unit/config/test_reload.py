"""Hot reload: valid changes are swapped in, invalid ones refused, logged and counted while the old config stays."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from meshgate.config import ConfigError, ConfigWatcher, MeshConfig, ReloadResult, check_compatible, load_config
from tests._wait import eventually
from tests.unit._meshes import BASE

CHANGED = (
    BASE
    + """\
    - topic: "inventory/>"
      regions: [us-west]
"""
)

INVALID = BASE.replace("regions: [us-west, eu-central]", "regions: [us-west, eu-centrl]")


async def write(path: Path, text: str) -> None:
    await asyncio.to_thread(path.write_text, text)


def count(registry: CollectorRegistry, result: str) -> float:
    value = registry.get_sample_value("meshgate_config_reloads_total", {"result": result})
    assert value is not None
    return value


@pytest.fixture
def mesh(tmp_path: Path) -> Path:
    path = tmp_path / "mesh.yaml"
    path.write_text(BASE)
    return path


async def test_valid_change_is_applied_by_polling(mesh: Path) -> None:
    applied: list[MeshConfig] = []
    watcher = ConfigWatcher(path=mesh, on_change=applied.append, poll_interval=0.01)
    await watcher.start()
    try:
        assert watcher.config.sha256 == hashlib.sha256(BASE.encode()).hexdigest()
        await write(mesh, CHANGED)
        await eventually(lambda: bool(applied), 5, interval=0.01, what="the changed file applied")
    finally:
        await watcher.stop()
    assert len(applied[0].routing) == 2
    assert watcher.config is applied[0]
    assert count(watcher.registry, "applied") == 1
    assert count(watcher.registry, "refused") == 0


async def test_invalid_change_is_refused_logged_and_counted(mesh: Path, caplog: pytest.LogCaptureFixture) -> None:
    applied: list[MeshConfig] = []
    refusals: list[ReloadResult] = []

    async def on_error(result: ReloadResult) -> None:
        refusals.append(result)

    registry = CollectorRegistry()
    initial = load_config(mesh)
    watcher = ConfigWatcher(
        path=mesh, on_change=applied.append, on_error=on_error, poll_interval=0.01, initial=initial, registry=registry
    )
    caplog.set_level(logging.ERROR, logger="meshgate.config")
    await watcher.start()
    try:
        await write(mesh, INVALID)
        await eventually(lambda: bool(refusals), 5, interval=0.01, what="the invalid file refused")
    finally:
        await watcher.stop()
    assert applied == []
    assert watcher.config is initial
    result = refusals[0]
    assert not result.applied
    assert result.outcome == "refused"
    assert result.sha256 == hashlib.sha256(INVALID.encode()).hexdigest()
    assert result.errors == (
        f"{mesh}:11:26: event_mesh.routing[0].regions[1]: unknown region 'eu-centrl'; did you mean 'eu-central'?"
        " (regions: us-west, eu-central)",
    )
    assert count(registry, "refused") == 1
    assert any("refused" in r.getMessage() and "eu-centrl" in r.getMessage() for r in caplog.records)


async def test_reload_call_sighup_style(mesh: Path) -> None:
    applied: list[MeshConfig] = []

    async def on_change(config: MeshConfig) -> None:
        applied.append(config)

    watcher = ConfigWatcher(path=mesh, on_change=on_change, initial=load_config(mesh))
    # No polling: reload() is what the SIGHUP handler and Admin.Reload call.
    unchanged = await watcher.reload()
    assert unchanged == ReloadResult(applied=False, sha256=hashlib.sha256(BASE.encode()).hexdigest())
    assert unchanged.outcome == "unchanged"
    await write(mesh, INVALID)
    refused = await watcher.reload()
    assert (refused.applied, refused.outcome, len(refused.errors)) == (False, "refused", 1)
    # A refused file is validated again on request (the operator may have fixed an env var).
    assert (await watcher.reload()).outcome == "refused"
    await write(mesh, CHANGED)
    result = await watcher.reload()
    assert result.applied and result.outcome == "applied" and result.errors == ()
    assert applied == [watcher.config]
    assert [count(watcher.registry, r) for r in ("applied", "refused", "unchanged")] == [1, 2, 1]


async def test_a_failing_on_change_keeps_the_running_config(mesh: Path, caplog: pytest.LogCaptureFixture) -> None:
    def on_change(config: MeshConfig) -> None:
        raise RuntimeError("listener busy")

    initial = load_config(mesh)
    watcher = ConfigWatcher(path=mesh, on_change=on_change, initial=initial)
    await write(mesh, CHANGED)
    caplog.set_level(logging.ERROR, logger="meshgate.config")
    result = await watcher.reload()
    assert result.outcome == "refused"
    assert result.errors == (f"{mesh}: applying the new config failed: listener busy",)
    assert watcher.config is initial


async def test_changes_needing_a_restart_are_refused(mesh: Path) -> None:
    watcher = ConfigWatcher(path=mesh, on_change=lambda c: None, initial=load_config(mesh), region="us-west")
    await write(mesh, BASE.replace("127.0.0.1:7401", "127.0.0.1:7501"))
    result = await watcher.reload()
    assert result.errors == (
        f"{mesh}: restart needed: region us-west's gateway address 127.0.0.1:7401 -> 127.0.0.1:7501",
    )
    # Another region's gateway may move: peers pick the new address up live.
    await write(mesh, BASE.replace("127.0.0.1:7402", "127.0.0.1:7502"))
    assert (await watcher.reload()).applied


async def test_start_loads_the_file_and_start_stop_are_idempotent(mesh: Path) -> None:
    watcher = ConfigWatcher(path=mesh, on_change=lambda c: None, poll_interval=0.01)
    with pytest.raises(RuntimeError, match="no config yet"):
        _ = watcher.config
    await watcher.start()
    await watcher.start()
    assert watcher.config.region_names == ("us-west", "eu-central")
    await watcher.stop()
    await watcher.stop()
    async with watcher:
        assert watcher.path == mesh


async def test_start_refuses_an_invalid_or_missing_file(mesh: Path) -> None:
    await write(mesh, INVALID)
    watcher = ConfigWatcher(path=mesh, on_change=lambda c: None)
    with pytest.raises(ConfigError):
        await watcher.start()
    missing = ConfigWatcher(path=mesh.with_name("missing.yaml"), on_change=lambda c: None)
    with pytest.raises(ConfigError, match="cannot read the file"):
        await missing.start()


async def test_missing_file_is_refused(mesh: Path) -> None:
    watcher = ConfigWatcher(path=mesh, on_change=lambda c: None, initial=load_config(mesh))
    await asyncio.to_thread(mesh.unlink)
    result = await watcher.reload()
    assert result.outcome == "refused"
    assert result.errors == (f"{mesh}: cannot read the file: No such file or directory",)


async def test_watchers_do_not_share_metrics(mesh: Path) -> None:
    # Two gateways in one process: each watcher registers on its own registry.
    a = ConfigWatcher(path=mesh, on_change=lambda c: None, initial=load_config(mesh))
    b = ConfigWatcher(path=mesh, on_change=lambda c: None, initial=load_config(mesh))
    await a.reload()
    assert count(a.registry, "unchanged") == 1
    assert count(b.registry, "unchanged") == 0
    with pytest.raises(ValueError, match="poll_interval"):
        ConfigWatcher(path=mesh, on_change=lambda c: None, poll_interval=-1)


async def test_poll_interval_zero_only_reloads_on_request(mesh: Path) -> None:
    applied: list[MeshConfig] = []
    watcher = ConfigWatcher(path=mesh, on_change=applied.append, poll_interval=0)
    async with watcher:
        await write(mesh, CHANGED)
        # Nothing polls: the change waits for reload() (SIGHUP, Admin.Reload).
        assert applied == []
        assert (await watcher.reload()).applied
    assert len(applied) == 1


def test_check_compatible(tmp_path: Path) -> None:
    old_path, new_path = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old_path.write_text(BASE)
    old = load_config(old_path)

    def new(text: str) -> MeshConfig:
        new_path.write_text(text)
        return load_config(new_path)

    assert check_compatible(old, new(CHANGED), "us-west") is None
    assert check_compatible(old, new(BASE.replace("127.0.0.1:7402", "127.0.0.1:7502")), "us-west") is None
    assert check_compatible(old, new(BASE.replace("127.0.0.1:7402", "127.0.0.1:7502")), "eu-central") == (
        "restart needed: region eu-central's gateway address 127.0.0.1:7402 -> 127.0.0.1:7502"
    )
    kafka = BASE.replace(
        "kind: embedded\n      gateway: 127.0.0.1:7401",
        'kind: kafka\n      brokers: ["k1:9092"]\n      gateway: 127.0.0.1:7401',
    )
    assert check_compatible(old, new(kafka), "us-west") == (
        "restart needed: region us-west's broker kind embedded -> kafka; brokers (none) -> k1:9092"
    )
    stream = BASE.replace("gateway: 127.0.0.1:7401", "gateway: 127.0.0.1:7401\n      nats: {stream: OTHER}")
    assert check_compatible(old, new(stream), "us-west") == (
        "restart needed: region us-west's nats.stream MESHGATE -> OTHER"
    )
    gone = BASE.replace("us-west", "us-east")
    assert check_compatible(old, new(gone), "us-west") == (
        "restart needed: region 'us-west' is not in the new file (regions: us-east, eu-central)"
    )

"""How large a mesh file may be: its bytes, its rules, its YAML nodes and what its aliases expand to.

Each refusal says what is too large, by how much, and where.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from meshgate.config import ConfigError, ConfigWatcher, load_config, load_config_text
from meshgate.config import _yaml as config_yaml
from tests._cli import run_cli

HEAD = """\
event_mesh:
  regions:
    - name: us-west
      kind: embedded
      gateway: 127.0.0.1:7401
    - name: eu-central
      kind: embedded
      gateway: 127.0.0.1:7402
  routing:
"""
LIMIT = 4 * 1024 * 1024


def rules(n: int) -> str:
    return "".join(f'    - topic: "orders/team-{i}/*"\n      regions: [us-west, eu-central]\n' for i in range(n))


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "mesh.yaml", env={})
    return list(info.value.lines)


def env_without_limit() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MESHGATE_CONFIG_MAX_BYTES"}


async def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    # 50 MB that would take half a minute to parse (or here: NUL bytes, which YAML refuses only
    # once it has read them all): refused by its size.
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(50_000_000)
    rc, out, err = await run_cli("config", "validate", str(big), env=env_without_limit())
    assert (rc, out) == (1, "")
    assert err == (
        f"{big}: the file is 50000000 bytes, more than the limit of {LIMIT} bytes (4 MiB) for a mesh file"
        " (20000 rules take about 1.5 MB); look for a generated or pasted block, or raise the limit with"
        " MESHGATE_CONFIG_MAX_BYTES where it is read\n"
    )


async def test_the_size_limit_is_set_by_an_environment_variable(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(HEAD + rules(100))
    size = mesh.stat().st_size
    env = env_without_limit()
    rc, out, err = await run_cli("config", "validate", str(mesh), env={**env, "MESHGATE_CONFIG_MAX_BYTES": "4KiB"})
    assert (rc, out) == (1, "")
    assert err.startswith(f"{mesh}: the file is {size} bytes, more than the limit of 4096 bytes (0.00390625 MiB)")
    rc, out, _ = await run_cli("config", "validate", str(mesh), env={**env, "MESHGATE_CONFIG_MAX_BYTES": "8KiB"})
    assert (rc, out) == (0, f"{mesh}: ok (2 regions, 100 rules)\n")
    rc, _, err = await run_cli("config", "validate", str(mesh), env={**env, "MESHGATE_CONFIG_MAX_BYTES": "lots"})
    assert rc == 1
    assert err == (
        f"{mesh}: MESHGATE_CONFIG_MAX_BYTES='lots' is not a size: expected a size like 512KiB, 64MiB or 10GB,"
        " got 'lots'\n"
    )


async def test_a_reload_of_a_file_over_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(HEAD + rules(1))
    monkeypatch.delenv("MESHGATE_CONFIG_MAX_BYTES", raising=False)
    watcher = ConfigWatcher(path=mesh, on_change=lambda c: None, initial=load_config(mesh))
    # Valid YAML all the way, only too large.
    mesh.write_text(HEAD + rules(1) + ("# padding\n" * (LIMIT // 10 + 1)))
    result = await watcher.reload()
    assert result.outcome == "refused"
    size = mesh.stat().st_size
    assert result.errors == (
        f"{mesh}: the file is {size} bytes, more than the limit of {LIMIT} bytes (4 MiB) for a mesh file"
        " (20000 rules take about 1.5 MB); look for a generated or pasted block, or raise the limit with"
        " MESHGATE_CONFIG_MAX_BYTES where it is read",
    )
    assert len(watcher.config.routing) == 1


async def test_too_many_rules_are_refused_as_rules_not_as_aliases(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(HEAD + rules(20_001))
    assert mesh.stat().st_size < LIMIT
    rc, out, err = await run_cli("config", "validate", str(mesh), env=env_without_limit())
    assert (rc, out) == (1, "")
    assert err == (
        f"{mesh}:9:3: event_mesh.routing: 20001 rules exceed the limit of 20000 rules; one rule with a wildcard"
        " (orders/*, orders/>) routes many topics\n"
    )
    # A big realistic mesh loads.
    assert len(load_config_text(HEAD + rules(5_000), env={}).routing) == 5_000


# The real limit (500,000) takes seconds to reach in the parser; a lower one shows the same checks.
SMALL_MAX_NODES = 50_000


def test_too_many_yaml_nodes_are_refused_where_the_limit_is_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_yaml, "MAX_NODES", SMALL_MAX_NODES)
    # 60,000 tiny values: more nodes than the limit, no alias in sight.
    text = HEAD + rules(1) + "  settings: {}\n  x: [" + "0," * 60_000 + "0]\n"
    found = errors(text)
    assert len(found) == 1
    place, message = found[0].split(": ", 1)
    file, line, column = place.split(":")
    assert (file, line) == ("mesh.yaml", "13")
    # The 50,001st node: the root, event_mesh, regions ... come first.
    assert 2 * 49_950 < int(column) < 2 * 50_000
    assert message == (
        "the file has more than 50000 YAML nodes (keys, values, lists and mappings) by here; a mesh file of 20000"
        " rules has about 150000: look for a generated or pasted block"
    )


def test_an_alias_bomb_is_blamed_on_its_anchor() -> None:
    levels = ["  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"]
    levels += (f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 8))
    text = "event_mesh:\n" + "".join(levels)
    assert errors(text) == [
        "mesh.yaml:6:7: aliases (*name) and merges (<<) expand the file to more than 500000 values: the anchored"
        ' collection here is used again and again, with aliases inside it multiplying ("billion laughs"); write'
        " the values out, or alias fewer levels"
    ]


async def test_a_poll_refuses_a_file_over_the_limit_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(HEAD + rules(1))
    monkeypatch.delenv("MESHGATE_CONFIG_MAX_BYTES", raising=False)
    from meshgate.config import _reload

    reads: list[str] = []
    read = _reload.__dict__.get("read_config_file", Path.read_bytes)

    def counted(path: Path) -> bytes:
        reads.append(str(path))
        return read(path)

    monkeypatch.setattr(_reload, "read_config_file", counted, raising=False)
    refusals: list[tuple[str, ...]] = []
    watcher = ConfigWatcher(
        path=mesh, on_change=lambda c: None, on_error=lambda r: refusals.append(r.errors), poll_interval=0.01
    )
    async with watcher:
        await asyncio.to_thread(mesh.write_text, HEAD + rules(1) + ("# padding\n" * (LIMIT // 10 + 1)))
        # Just written, the file is re-read at every poll (its mtime may hide the next write).
        async with asyncio.timeout(10):
            while len(reads) < 20 and watcher.config.sha256 == load_config_text(HEAD + rules(1), env={}).sha256:
                await asyncio.sleep(0.01)
        assert len(refusals) == 1
        assert "more than the limit of 4194304 bytes" in refusals[0][0]
        value = watcher.registry.get_sample_value("meshgate_config_reloads_total", {"result": "refused"})
        assert value == 1


def test_many_aliases_of_one_scalar_are_blamed_on_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_yaml, "MAX_NODES", SMALL_MAX_NODES)
    text = "event_mesh:\n  s: &s x\n  l: [" + ", ".join(["*s"] * 60_000) + "]\n"
    assert errors(text) == [
        "mesh.yaml:1:1: aliases (*name) and merges (<<) expand the file to more than 50000 values; write the"
        " values out, or use fewer aliases"
    ]

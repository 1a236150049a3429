"""End-to-end fixtures: meshes of real ``meshgate serve`` processes, stopped after each test.

When a test fails (or MESHGATE_E2E_LOGS is set), the tail of every region's gateway log (every
incarnation) is printed in the teardown section of the report.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e._mesh import MeshCluster

MeshFactory = Callable[..., Any]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
async def make_mesh(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[MeshFactory]:
    """``await make_mesh(regions, routing, **options)``: a started ``MeshCluster`` (see there)."""
    async for factory in clusters_of(MeshCluster, tmp_path, request):
        yield factory


async def clusters_of(
    cls: type[MeshCluster], tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[MeshFactory]:
    """The body of a mesh fixture for ``cls``: yields the factory, closes every cluster after the test."""
    clusters: list[MeshCluster] = []

    async def factory(regions: list[str], routing: list[tuple[str, list[str]]], **options: Any) -> MeshCluster:
        cluster = cls(tmp_path / f"mesh{len(clusters)}", regions, routing, **options)
        clusters.append(cluster)
        await cluster.start()
        return cluster

    try:
        yield factory
    finally:
        failed = request.node.stash.get(_FAILED, False)
        for cluster in clusters:
            if failed or os.environ.get("MESHGATE_E2E_LOGS"):
                print(cluster.log_tails(60), file=sys.stderr)
            await cluster.close()

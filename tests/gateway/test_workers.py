"""Replication worker processes (``WorkerPool``) and the refusals of ``meshgate serve``'s roles, with
real child processes: a worker that keeps dying is restarted with backoff, then given up on (the
pool FAILED, which the parent's liveness reports); options that cannot work are refused."""

from __future__ import annotations

from pathlib import Path

import yaml

from meshgate.brokers.embedded import RestartPolicy
from meshgate.gateway import WorkerPool, WorkerPoolState
from tests._cli import run_cli
from tests._wait import eventually


async def test_a_worker_that_keeps_dying_is_restarted_then_given_up_on(tmp_path: Path) -> None:
    # A worker command that exits at once (its mesh file does not exist).
    pool = WorkerPool(
        count=1,
        args=("serve", "-c", str(tmp_path / "missing.yaml"), "--region", "a", "--role", "replicator"),
        region="a",
        restart=RestartPolicy(initial_backoff_seconds=0.05, max_backoff_seconds=0.1, max_restarts=2, window_seconds=60),
    )
    await pool.start()
    try:
        await eventually(lambda: pool.state is WorkerPoolState.FAILED, 60, what="the pool gives up")
        assert pool.restarts == 2
        problem = pool.problem()
        assert problem is not None and "worker 0 exited (code 1) after 2 restarts within 60 s" in problem
    finally:
        await pool.stop(1.0)
    assert pool.state is WorkerPoolState.STOPPED
    await pool.stop(1.0)  # twice is fine


def mesh(tmp_path: Path) -> Path:
    doc = {
        "event_mesh": {
            "security": {"replication": "anonymous"},
            "regions": [
                {"name": "a", "kind": "embedded", "gateway": "127.0.0.1:7411"},
                {"name": "b", "kind": "embedded", "gateway": "127.0.0.1:7412"},
            ],
            "routing": [{"topic": "orders/*", "regions": ["a", "b"]}],
        }
    }
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_serve_refuses_roles_that_cannot_work(tmp_path: Path) -> None:
    path = str(mesh(tmp_path))
    base = ("serve", "-c", path, "--region", "a", "--data-dir", str(tmp_path / "d"))
    rc, _, err = await run_cli(*base, "--role", "gateway", "--replication-workers", "2")
    assert rc == 2 and "a --role gateway process runs none" in err
    rc, _, err = await run_cli(*base, "--role", "replicator", "--listen", "127.0.0.1:0")
    assert rc == 2 and "--role replicator serves no gRPC" in err
    rc, _, err = await run_cli(*base, "--replication-workers", "-1")
    assert rc == 2 and "--replication-workers must be >= 0" in err
    # An embedded broker lives in its gateway process: a replicator process cannot reach it.
    rc, _, err = await run_cli(*base, "--role", "replicator")
    assert rc == 1 and "region a runs an embedded broker inside its gateway process" in err
    rc, out, _ = await run_cli("serve", "--help")
    assert rc == 0 and "--role {all,gateway,replicator}" in out and "--replication-workers N" in out

"""Replication is authenticated by default: the regions' shared secret, the refusal of a mesh
without any credential, the loud anonymous opt-in, and ``meshgate up`` with no set-up.

Every gateway here is a real one on a real nats-server; the attacker is a plain gRPC client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.config import (
    ConfigError,
    ReplicationMode,
    RouteRule,
    SecuritySettings,
    load_config_text,
)
from meshgate.gateway import Gateway
from meshgate.gateway._auth import REPLICATION_SECRET_KEY
from meshgate.gateway._dedup import origin_prefix
from meshgate.testing import ChildProcess
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc, replication_pb2, replication_pb2_grpc
from tests._cli import run_cli
from tests._replication import METADATA, SECRET, VARIABLE
from tests._wait import eventually
from tests.e2e._mesh import free_port
from tests.gateway._helpers import ev, read_all, started_gateways, stream_error, two_region_mesh

RULES = (RouteRule(index=0, topic="orders/>", regions=("here", "there")),)
HUGE = 10**15


def _forged(seq: int, *, event_id: str = "forged") -> replication_pb2.ReplicateRequest:
    """What an attacker sends: an event claiming origin `there`, at a sequence far ahead of its log."""
    forged = ev(id=event_id, origin="there", route=["there", "here"], sequence=seq)
    return replication_pb2.ReplicateRequest(source_region="there", batch_id=1, events=[forged])


async def _replicate(
    address: str, request: replication_pb2.ReplicateRequest, metadata: tuple[tuple[str, str], ...] | None
) -> list[int]:
    async with grpc.aio.insecure_channel(address) as ch:
        call = replication_pb2_grpc.ReplicationStub(ch).Replicate(iter([request]), metadata=metadata)
        return [r.outcome for resp in [resp async for resp in call] for r in resp.results]


async def _refused(
    address: str, request: replication_pb2.ReplicateRequest, metadata: tuple[tuple[str, str], ...] | None
) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as ch:
        call = replication_pb2_grpc.ReplicationStub(ch).Replicate(metadata=metadata)
        # The gateway refuses the call when it opens, before reading a request: the write may
        # meet a call that has already ended (grpc's request-iterator form then reports its own
        # INTERNAL send failure instead of the server's status), so the status is read from the call.
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.write(request)
            await call.done_writing()
        err = await stream_error(call)
        if err.code() is grpc.StatusCode.INTERNAL and "execute_batch" in (err.debug_error_string() or ""):
            # The write met a call the server had already ended, and grpc kept its own send
            # failure as the call's status. The server ended it before reading anything, so a
            # call that only reads gets the server's answer.
            err = await stream_error(replication_pb2_grpc.ReplicationStub(ch).Replicate(metadata=metadata))
        return err


# --- the ingress ------------------------------------------------------------------------------


async def test_anonymous_replicate_with_a_huge_sequence_changes_nothing_and_the_origin_still_replicates(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with EmbeddedNats(data_dir=tmp_path / "there-nats") as there_server, started_gateways() as start:
        gw = await start(
            config=two_region_mesh(nats_server, there_server, routing=RULES),
            region="here",
            data_dir=tmp_path,
            replicate=False,
        )
        # No credential, then a wrong one, then a client-token-like header: all refused before a batch is read.
        for metadata in (None, ((REPLICATION_SECRET_KEY, "x" * 48),), (("authorization", f"Bearer {SECRET}"),)):
            err = await _refused(gw.address, _forged(HUGE), metadata)
            assert err.code() is grpc.StatusCode.UNAUTHENTICATED, err
            assert "replication secret" in (err.details() or ""), err.details()
            assert VARIABLE in (err.details() or "")
            assert SECRET not in (err.details() or "")
        # Nothing stored, no origin state, no checkpoint.
        async with grpc.aio.insecure_channel(gw.address) as ch:
            assert await read_all(gateway_pb2_grpc.GatewayStub(ch), idle=0.3) == []
        assert await gw.broker.checkpoints(origin_prefix("there")) == {}
        # The real origin's events, from the start of its log, are stored (not answered DUPLICATE).
        real = _forged(1, event_id="real-1")
        assert await _replicate(gw.address, real, METADATA) == [event_pb2.OUTCOME_ACCEPTED]
        async with grpc.aio.insecure_channel(gw.address) as ch:
            stored = await read_all(gateway_pb2_grpc.GatewayStub(ch), expect=1)
        assert [e.id for e in stored] == ["real-1"]
        # With the secret, the claimed source must still be another region of the mesh.
        for claimed in ("here", "mars"):
            request = replication_pb2.ReplicateRequest()
            request.CopyFrom(real)
            request.source_region = claimed
            err = await _refused(gw.address, request, METADATA)
            assert err.code() is grpc.StatusCode.PERMISSION_DENIED, (claimed, err)


async def test_two_regions_replicate_with_the_secret_and_not_with_a_wrong_one(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with EmbeddedNats(data_dir=tmp_path / "there-nats") as there_server, started_gateways() as start:
        there = await start(
            config=two_region_mesh(nats_server, there_server, routing=RULES),
            region="there",
            data_dir=tmp_path / "there",
            replicate=False,
        )
        config = two_region_mesh(nats_server, there_server, there_gateway=there.address, routing=RULES)
        # `here` holds another secret (a mistyped variable): its link is refused, nothing arrives.
        wrong = await start(config=config, region="here", data_dir=tmp_path / "here", replication_secret="w" * 40)
        async with grpc.aio.insecure_channel(wrong.address) as ch:
            await gateway_pb2_grpc.GatewayStub(ch).Publish(gateway_pb2.PublishRequest(events=[ev(id="e-1")]))
        replicator = wrong.replicator
        assert replicator is not None

        def link_error() -> str:
            (status,) = [s for s in replicator.statuses() if s.destination == "there"]
            return status.last_error

        def refused() -> str | None:
            error = link_error()
            return error if "UNAUTHENTICATED" in error else None

        error = await eventually(refused, 20, what="link refused")
        assert "replication secret" in error and "w" * 40 not in error
        async with grpc.aio.insecure_channel(there.address) as ch:
            assert await read_all(gateway_pb2_grpc.GatewayStub(ch), idle=0.3) == []
        await wrong.stop(grace=1.0)
        # The same region with the mesh's secret: the event waiting in its log arrives, once.
        await start(config=config, region="here", data_dir=tmp_path / "here")
        async with grpc.aio.insecure_channel(there.address) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)

            async def arrived() -> list[str]:
                return [e.id for e in await read_all(stub, idle=0.2)]

            assert await eventually(arrived, 30, what="event replicated") == ["e-1"]


# --- refusal of a mesh without a credential ---------------------------------------------------

_OPEN_MESH = """\
event_mesh:
  regions:
    - {{name: here, kind: nats, brokers: ["{broker}"]}}
    - {{name: there, brokers: ["127.0.0.1:1"]}}
  routing:
    - topic: "orders/>"
      regions: ["here", "there"]
{extra}"""


def _open_mesh(server: EmbeddedNats, extra: str = "") -> str:
    return _OPEN_MESH.format(broker=server.url.removeprefix("nats://"), extra=extra)


async def test_a_mesh_without_replication_credentials_is_refused_at_start_and_by_validate(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(_open_mesh(nats_server))
    with pytest.raises(ConfigError) as refused:
        Gateway(config=load_config_text(path.read_text(), str(path)), region="here", data_dir=tmp_path)
    (issue,) = refused.value.errors
    assert (issue.line, issue.column) == (1, 1)  # the event_mesh key: there is no security block
    assert "security.replication_secret: ${MESH_REPLICATION_SECRET}" in issue.message
    assert "security.ca" in issue.message and "replication: anonymous" in issue.message
    # `meshgate serve` exits at once, saying what to set; nothing is served.
    rc, _, err = await run_cli(
        "serve", "-c", str(path), "--region", "here", "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0",
        timeout=60,
    )  # fmt: skip
    assert rc == 1, err
    assert f"{path}:1:1: the gateway of region here refuses a mesh of 2 regions" in err
    assert "security.replication_secret" in err
    # `config validate --region` checks as serve does: an error. Without --region: a warning
    # (`meshgate up` runs such a file, giving its own regions a secret), exit 0.
    rc, out, err = await run_cli("config", "validate", "--region", "here", str(path))
    assert rc == 1 and out == "", (out, err)
    assert err.startswith(f"{path}:1:1: meshgate serve refuses a mesh of 2 regions"), err
    rc, out, err = await run_cli("config", "validate", str(path))
    assert rc == 0, err
    assert f"{path}: ok" in out
    assert f"{path}:1:1: warning: meshgate serve refuses" in err and "meshgate up" in err


async def test_anonymous_replication_is_accepted_only_when_chosen_and_said_loudly(
    nats_server: EmbeddedNats, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(_open_mesh(nats_server, "  security:\n    replication: anonymous\n"))
    config = load_config_text(path.read_text(), str(path))
    assert config.security.replication is ReplicationMode.ANONYMOUS
    rc, _, err = await run_cli("config", "validate", "--region", "here", str(path))
    assert rc == 0, err
    assert f"{path}:8:3: warning: replication is unauthenticated" in err, err
    caplog.set_level(logging.WARNING, logger="meshgate.gateway")
    async with started_gateways() as start:
        gw = await start(config=config, region="here", data_dir=tmp_path, replicate=False)
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(
            f"replication is unauthenticated (security.replication: anonymous): anyone who reaches {gw.address}"
            " can write events as any region" in m
            for m in warned
        ), warned
        assert await _replicate(gw.address, _forged(1), None) == [event_pb2.OUTCOME_ACCEPTED]


def test_anonymous_replication_beside_a_credential_is_refused(tmp_path: Path) -> None:
    text = f"""\
event_mesh:
  security:
    replication_secret: ${{{VARIABLE}}}
    replication: anonymous
  regions:
    - {{name: a, brokers: [x]}}
    - {{name: b, brokers: [y]}}
"""
    with pytest.raises(ConfigError) as refused:
        load_config_text(text, "mesh.yaml")
    assert refused.value.lines == (
        "mesh.yaml:4:18: event_mesh.security.replication: replication: anonymous contradicts"
        " security.replication_secret, which makes every Replicate caller show the shared secret; remove one of"
        " the two",
    )


@pytest.mark.parametrize(
    ("written", "env", "expected"),
    [
        ("hunter2hunter2hunter2", {}, "a replication secret written in the file is refused"),
        ("${S:-abcdefabcdefabcdef}", {"S": ""}, "a replication secret cannot have a default"),
        ("${S}", {"S": "short"}, "environment variable S holds a replication secret of 5 characters"),
        ("${S}", {}, "environment variable S is not set; set it where the gateway runs to the secret every region"),
    ],
)
def test_the_replication_secret_follows_the_rules_of_client_tokens(
    written: str, env: dict[str, str], expected: str
) -> None:
    text = f"event_mesh:\n  security:\n    replication_secret: {written}\n  regions:\n    - {{name: a, brokers: [x]}}\n"
    with pytest.raises(ConfigError) as refused:
        load_config_text(text, "mesh.yaml", env=env)
    (line,) = refused.value.lines
    assert line.startswith("mesh.yaml:3:25: event_mesh.security.replication_secret: "), line
    assert expected in line
    for value in ("hunter2", "abcdef"):
        assert value not in line


def test_the_secret_is_never_in_a_repr() -> None:
    text = (
        "event_mesh:\n  security:\n"
        f"    replication_secret: ${{{VARIABLE}}}\n"
        "  regions:\n    - {name: a, brokers: [b]}\n"
    )
    config = load_config_text(text, "mesh.yaml")
    assert config.security.replication_secret == SECRET
    assert config.security.replication_secret_variable == VARIABLE
    assert SECRET not in repr(config)
    assert SECRET not in repr(SecuritySettings(replication_secret=SECRET))


# --- meshgate certs and meshgate up ------------------------------------------------------------


async def test_certs_reads_the_regions_without_the_secrets_variables(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "event_mesh:\n"
        "  security:\n"
        "    replication_secret: ${UNSET_REPLICATION_SECRET}\n"
        "    tokens:\n"
        "      - {name: ops, token: '${UNSET_OPS_TOKEN}', admin: true}\n"
        "  regions:\n"
        "    - {name: us-west, brokers: [x]}\n"
        "    - {name: eu-central, brokers: [y]}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNSET_")}
    rc, _, err = await run_cli("certs", "--out", str(tmp_path / "certs"), "-c", str(path), env=env)
    assert rc == 0, err
    assert (tmp_path / "certs" / "us-west.crt").is_file() and (tmp_path / "certs" / "eu-central.crt").is_file()
    # A gateway still needs them.
    rc, _, err = await run_cli("config", "validate", str(path), env=env)
    assert rc == 1
    assert "UNSET_REPLICATION_SECRET is not set" in err and "UNSET_OPS_TOKEN is not set" in err


@contextlib.asynccontextmanager
async def _meshgate_up(path: Path, data_dir: Path, env: dict[str, str]) -> AsyncIterator[list[bytes]]:
    """``meshgate up`` with exactly ``env`` (not this process's), its output lines as they come."""
    up = ChildProcess(
        args=("-m", "meshgate", "up", "-c", str(path), "--data-dir", str(data_dir)), env=env, inherit_env=False
    )
    await up.launch()
    try:
        yield up.log
    finally:
        await up.close(grace=40)


async def test_meshgate_up_needs_no_setup_and_its_regions_refuse_anonymous_peers(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(2)]
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "event_mesh:\n"
        "  regions:\n"
        f"    - {{name: us-west, kind: embedded, gateway: '127.0.0.1:{ports[0]}'}}\n"
        f"    - {{name: eu-central, kind: embedded, gateway: '127.0.0.1:{ports[1]}'}}\n"
        "  routing:\n"
        "    - {topic: 'orders/*', regions: [us-west, eu-central]}\n"
    )
    # No variable, no certificate: nothing set up.
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    async with _meshgate_up(path, tmp_path / "data", env) as lines:

        def serving() -> bool:
            return b"".join(lines).count(b"gateway serving on") == 2

        await eventually(serving, 60, what="both regions serving")
        west, eu = (f"127.0.0.1:{p}" for p in ports)
        async with grpc.aio.insecure_channel(west) as ch:
            await gateway_pb2_grpc.GatewayStub(ch).Publish(gateway_pb2.PublishRequest(events=[ev(id="up-1")]))
        async with grpc.aio.insecure_channel(eu) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)

            async def arrived() -> list[str]:
                return [e.id for e in await read_all(stub, idle=0.2)]

            assert await eventually(arrived, 30, what="event replicated by up's regions") == ["up-1"]
        # The regions of `up` authenticate each other: an anonymous peer is refused.
        forged = ev(id="forged", origin="us-west", route=["us-west", "eu-central"], sequence=HUGE)
        request = replication_pb2.ReplicateRequest(source_region="us-west", batch_id=1, events=[forged])
        err = await _refused(eu, request, None)
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        assert b"replication is unauthenticated" not in b"".join(lines)

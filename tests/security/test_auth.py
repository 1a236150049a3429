"""Client tokens in a running gateway: refused calls store nothing, allow-lists per event, reload, no leaks."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.config import (
    ClientToken,
    RouteRule,
)
from meshgate.gateway import Gateway
from meshgate.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    event_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
)
from tests._cli import run_cli
from tests._health import async_health_stub
from tests._replication import METADATA, SECURITY
from tests._wait import eventually
from tests.gateway._helpers import rpc_error, running_gateway, stored, stream_error, two_region_mesh
from tests.security._tokens import (
    ADMIN_TOKEN,
    ALL_TOKENS,
    AUDIT_TOKEN,
    ORDERS_TOKEN,
    SPARE_TOKEN,
    TOKENS,
    WRONG_TOKEN,
    connect,
    ev,
    secure_gw,
    token_env,
    write_mesh,
)

__all__ = ["secure_gw", "token_env", "write_mesh"]  # fixtures used by name below

_REJECTED = event_pb2.OUTCOME_REJECTED
_ACCEPTED = event_pb2.OUTCOME_ACCEPTED
_PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]


def refused_count(gw: Gateway, reason: str) -> float:
    value = gw.metrics.registry.get_sample_value("meshgate_events_refused_total", {"region": "here", "reason": reason})
    return value or 0.0


# --- who may call ----------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, WRONG_TOKEN, "Basic-not-a-bearer"])
async def test_a_call_without_a_valid_token_is_refused_and_stores_nothing(
    secure_gw: Gateway, token: str | None
) -> None:
    gw = secure_gw
    before = await stored(gw)
    basic = token == "Basic-not-a-bearer"
    # Not 'Bearer <token>': sent by hand on a channel that adds no token.
    md: tuple[tuple[str, str], ...] = (("authorization", f"Basic {ORDERS_TOKEN}"),) if basic else ()
    async with connect(gw, None if basic else token) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        err = await rpc_error(stub.Publish(gateway_pb2.PublishRequest(events=[ev()]), metadata=md))
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED, err
        if token is None:
            assert err.details() == (
                "this gateway requires a client token: send gRPC metadata 'authorization: Bearer <token>'"
                " (meshgate CLI: --token or MESHGATE_TOKEN)"
            )
        elif token == WRONG_TOKEN:
            assert err.details() == (
                "the token sent is not valid for this gateway (unknown, mistyped or rotated away);"
                " check the client's token against security.tokens of the mesh file"
            )
        else:
            assert "is not 'Bearer <token>'" in (err.details() or "")
        for text in ALL_TOKENS:
            assert text not in (err.details() or "")

        # The stream is refused as it opens, before any batch is read. Nothing is written on it:
        # grpc.aio's client reports a write that meets the refusal as INTERNAL ("Failed
        # execute_batch"), not with the server's status (grpc/grpc#36066).
        err = await stream_error(stub.PublishStream(metadata=md))
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        sub = stub.Subscribe(
            gateway_pb2.SubscribeRequest(pattern="orders/>", position=gateway_pb2.START_POSITION_EARLIEST), metadata=md
        )
        assert (await stream_error(sub)).code() is grpc.StatusCode.UNAUTHENTICATED
        admin = admin_pb2_grpc.AdminStub(ch)
        err = await rpc_error(admin.Status(admin_pb2.StatusRequest(), metadata=md))
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert await stored(gw) == before
    assert refused_count(gw, "unauthenticated") == 1  # the unary call's one event


async def test_every_client_method_needs_a_token(secure_gw: Gateway) -> None:
    """Each method of Gateway and Admin, as listed by the service descriptors: none is forgotten."""
    methods: list[tuple[str, descriptor_pb2.MethodDescriptorProto]] = []
    for module, name in ((gateway_pb2, "Gateway"), (admin_pb2, "Admin")):
        service = module.DESCRIPTOR.services_by_name[name]
        proto = descriptor_pb2.ServiceDescriptorProto()
        service.CopyToProto(proto)
        methods.extend((service.full_name, m) for m in proto.method)
    assert len(methods) >= 7
    async with grpc.aio.insecure_channel(secure_gw.address) as ch:
        for service_name, m in methods:
            path = f"/{service_name}/{m.name}"
            ident = (lambda b: b, lambda b: b)
            # A client-streaming call is opened without writing on it: the refusal comes as it
            # opens, and a write meeting it would turn the status into INTERNAL (grpc/grpc#36066).
            if m.client_streaming and m.server_streaming:
                call: Any = ch.stream_stream(path, *ident)()
            elif m.server_streaming:
                call = ch.unary_stream(path, *ident)(b"")
            elif m.client_streaming:
                call = ch.stream_unary(path, *ident)()
            else:
                call = ch.unary_unary(path, *ident)(b"")
            try:  # a method that read before it checked would wait for a request that never comes
                err = await asyncio.wait_for(stream_error(call) if m.server_streaming else rpc_error(call), 15)
            except TimeoutError:
                pytest.fail(f"{path} was not refused as it opened: still open after 15 s")
            assert err.code() is grpc.StatusCode.UNAUTHENTICATED, (path, err)


async def test_health_and_replication_are_not_token_checked(secure_gw: Gateway) -> None:
    async with grpc.aio.insecure_channel(secure_gw.address) as ch:
        health = await async_health_stub(ch).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        # Replication is for peers, authenticated by the regions' secret (or mTLS), not by client
        # tokens: a token check would break every link.
        bad = event_pb2.Event(topic="orders/x", id="r-1", source="/s", type="t", origin="there", origin_sequence=1)

        def requests() -> Any:
            return iter([replication_pb2.ReplicateRequest(source_region="there", batch_id=1, events=[bad])])

        call = replication_pb2_grpc.ReplicationStub(ch).Replicate(requests(), metadata=METADATA)
        answers = [resp async for resp in call]
        assert [r.batch_id for r in answers] == [1]
        # And a client token, even an admin's, is no replication credential.
        admin = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        err = await stream_error(replication_pb2_grpc.ReplicationStub(ch).Replicate(metadata=admin))
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        assert ADMIN_TOKEN not in (err.details() or "")


# --- what a client may do --------------------------------------------------------------------


async def test_publish_outside_the_allow_list_is_refused_and_nothing_stored(secure_gw: Gateway) -> None:
    gw = secure_gw
    async with connect(gw, ORDERS_TOKEN) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        ok = await stub.Publish(gateway_pb2.PublishRequest(events=[ev("orders/eu/created", id="in-list")]))
        assert ok.results[0].outcome == _ACCEPTED
        before = await stored(gw)
        err = await rpc_error(stub.Publish(gateway_pb2.PublishRequest(events=[ev("audit/login", id="out-1")])))
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert err.details() == (
            "events[0]: client 'orders-service' may not publish to topic 'audit/login': no pattern of its publish"
            " list (orders/>) matches it; publish within it, or have the operator add a pattern to the client's"
            " publish list (security.tokens in the mesh file)"
        )
        # A unary batch is all or nothing: its allowed events are not stored either.
        batch = [ev("orders/a", id="b-1"), ev("inventory/x", id="b-2"), ev("orders/b", id="b-3")]
        err = await rpc_error(stub.Publish(gateway_pb2.PublishRequest(events=batch)))
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert (err.details() or "").startswith("1 of 3 events refused, nothing stored: events[1]: client")
        # Outside the list and invalid too: the allow-list answers first only for a well-formed topic.
        mixed = [ev("audit/x", id="m-1"), ev("orders/ok", id="m-2", source="")]
        err = await rpc_error(stub.Publish(gateway_pb2.PublishRequest(events=mixed)))
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "events[1]: source is required" in (err.details() or "")
        assert await stored(gw) == before

        # A stream answers per event: the allowed ones are stored, the others refused.
        async def requests() -> AsyncIterator[gateway_pb2.PublishRequest]:
            yield gateway_pb2.PublishRequest(events=batch, batch_id=7)

        answers = [resp async for resp in stub.PublishStream(requests())]
        results = answers[0].results
        assert [r.outcome for r in results] == [_ACCEPTED, _REJECTED, _ACCEPTED]
        assert results[1].code == _PERMISSION_DENIED and "'inventory/x'" in results[1].message
    assert await stored(gw) == before + 2
    found = [e async for e in _read(gw, ">")]
    assert "b-2" not in {e.id for e in found} and "out-1" not in {e.id for e in found}
    # One each; a whole unary batch under its first refusal's reason; the mixed batch's invalid one apart.
    assert refused_count(gw, "permission") == 1 + 3 + 1 + 1
    assert refused_count(gw, "invalid") == 1


async def _read(gw: Gateway, pattern: str) -> AsyncIterator[event_pb2.Event]:
    """The region's events of a pattern, from the broker itself (not through the API under test)."""
    from meshgate.brokers import StartAt

    last = await stored(gw)
    if not last:
        return
    async for batch in gw.broker.read(pattern, start=StartAt(earliest=True), max_batch=500):
        for e in batch:
            yield e
        if batch and batch[-1].sequence >= last:
            return


async def test_subscribe_outside_the_allow_list_is_refused(secure_gw: Gateway) -> None:
    async with connect(secure_gw, AUDIT_TOKEN) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        for pattern in ("orders/>", "orders/*", ">", "audit"):
            err = await stream_error(stub.Subscribe(gateway_pb2.SubscribeRequest(pattern=pattern)))
            assert err.code() is grpc.StatusCode.PERMISSION_DENIED, pattern
            assert err.details() == (
                f"client 'auditor' may not subscribe to {pattern!r}: it is not within its subscribe patterns"
                " (orders/eu/>, audit/>); subscribe to a pattern inside one of them, e.g. 'orders/eu/>', or have the"
                " operator extend the client's subscribe list (security.tokens in the mesh file)"
            )
    # Inside its patterns it reads, whoever published.
    async with connect(secure_gw, ORDERS_TOKEN) as ch:
        await gateway_pb2_grpc.GatewayStub(ch).Publish(
            gateway_pb2.PublishRequest(events=[ev("orders/eu/1", id="eu-1"), ev("orders/us/1", id="us-1")])
        )
    async with connect(secure_gw, AUDIT_TOKEN) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).Subscribe(
            gateway_pb2.SubscribeRequest(pattern="orders/eu/*", position=gateway_pb2.START_POSITION_EARLIEST)
        )
        first = await asyncio.wait_for(call.read(), 10)
        call.cancel()
        assert isinstance(first, gateway_pb2.SubscribeResponse)
        assert [e.id for e in first.events] == ["eu-1"]


async def test_admin_needs_an_admin_client(secure_gw: Gateway) -> None:
    requests = {
        "Status": admin_pb2.StatusRequest(),
        "Explain": admin_pb2.ExplainRequest(topic="orders/x"),
        "Reload": admin_pb2.ReloadRequest(),
        "Locate": admin_pb2.LocateRequest(id="nope"),
    }
    async with connect(secure_gw, ORDERS_TOKEN) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        for method, request in requests.items():
            err = await rpc_error(getattr(admin, method)(request))
            assert err.code() is grpc.StatusCode.PERMISSION_DENIED, method
            assert err.details() == (
                f"client 'orders-service' may not call Admin.{method}: it is not an admin client; use an admin"
                " client's token, or set admin: true for it in security.tokens of the mesh file"
            )
    async with connect(secure_gw, ADMIN_TOKEN) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        assert (await admin.Status(admin_pb2.StatusRequest())).region == "here"
        assert list((await admin.Explain(admin_pb2.ExplainRequest(topic="orders/x"))).destinations) == [
            "here",
            "there",
        ]
        # The admin client has no publish list: admin rights are not publish rights.
        err = await rpc_error(gateway_pb2_grpc.GatewayStub(ch).Publish(gateway_pb2.PublishRequest(events=[ev()])))
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED


# --- reload ------------------------------------------------------------------------------------


async def test_a_reload_swaps_tokens_and_allow_lists_even_for_open_streams(write_mesh: Any, tmp_path: Path) -> None:
    path = write_mesh()
    async with running_gateway(path, tmp_path) as gw:
        orders = connect(gw, ORDERS_TOKEN)
        auditor = connect(gw, AUDIT_TOKEN)
        spare = connect(gw, SPARE_TOKEN)
        try:
            pub = gateway_pb2_grpc.GatewayStub(orders)
            # An open stream and an open subscription of clients the reload changes.
            stream = pub.PublishStream()
            await stream.write(gateway_pb2.PublishRequest(events=[ev("orders/eu/1", id="before")], batch_id=1))
            first = await stream.read()
            assert isinstance(first, gateway_pb2.PublishResponse) and first.results[0].outcome == _ACCEPTED
            sub = gateway_pb2_grpc.GatewayStub(auditor).Subscribe(
                gateway_pb2.SubscribeRequest(pattern="audit/>", position=gateway_pb2.START_POSITION_EARLIEST)
            )
            audit_stream = gateway_pb2_grpc.GatewayStub(auditor).PublishStream()
            await audit_stream.write(gateway_pb2.PublishRequest(events=[ev("audit/a", id="audit-before")], batch_id=1))
            ack = await audit_stream.read()
            assert isinstance(ack, gateway_pb2.PublishResponse) and ack.results[0].outcome == _ACCEPTED
            await eventually(lambda: gw.client_streams.count("auditor") == 2, 10, what="the auditor's two streams")
            assert (await rpc_error(gateway_pb2_grpc.GatewayStub(spare).Publish(
                gateway_pb2.PublishRequest(events=[ev()])
            ))).code() is grpc.StatusCode.UNAUTHENTICATED  # fmt: skip

            # orders-service may now publish to orders/us/> only; the auditor's token is gone; a new client.
            new_tokens = TOKENS.replace('publish: ["orders/>"]', 'publish: ["orders/us/>"]').replace(
                "name: auditor\n        token: ${AUDIT_TOKEN}", "name: newcomer\n        token: ${SPARE_TOKEN}"
            )
            write_mesh(tokens=new_tokens)
            async with connect(gw, ADMIN_TOKEN) as ch:
                result = await admin_pb2_grpc.AdminStub(ch).Reload(admin_pb2.ReloadRequest())
            assert result.applied, result.errors

            # The open stream keeps only what the token still allows.
            await stream.write(
                gateway_pb2.PublishRequest(events=[ev("orders/eu/2", id="eu-after"), ev("orders/us/2")], batch_id=2)
            )
            second = await stream.read()
            assert isinstance(second, gateway_pb2.PublishResponse)
            assert [r.outcome for r in second.results] == [_REJECTED, _ACCEPTED]
            assert "(orders/us/>)" in second.results[0].message
            await stream.done_writing()
            # The removed client's subscription ends at its next batch.
            async with connect(gw, SPARE_TOKEN) as ch:
                newcomer = gateway_pb2_grpc.GatewayStub(ch)
                ok = await newcomer.Publish(gateway_pb2.PublishRequest(events=[ev("audit/login", id="wakes-sub")]))
                assert ok.results[0].outcome == _ACCEPTED
            err = await asyncio.wait_for(stream_error(sub), 10)
            assert err.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "was removed from the mesh file by a reload" in (err.details() or "")
            # Its publishing stream ends at its next batch, which is not stored.
            await audit_stream.write(gateway_pb2.PublishRequest(events=[ev("audit/b", id="audit-after")], batch_id=2))
            err = await asyncio.wait_for(stream_error(audit_stream), 10)
            assert err.code() is grpc.StatusCode.UNAUTHENTICATED
            assert err.details() == (
                "the token of client 'auditor' was removed from the mesh file by a reload;"
                " reconnect with a current token"
            )
            await eventually(lambda: gw.client_streams.count("auditor") == 0, 10, what="the auditor's slots back")
            assert "audit-after" not in {e.id async for e in _read(gw, "audit/>")}
            # New calls with the removed token are refused; the new client's are not.
            err = await rpc_error(
                gateway_pb2_grpc.GatewayStub(auditor).Publish(gateway_pb2.PublishRequest(events=[ev("audit/x")]))
            )
            assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        finally:
            for ch in (orders, auditor, spare):
                await ch.close()


# --- secrets stay secret ---------------------------------------------------------------------


async def test_tokens_never_reach_logs_or_messages(
    write_mesh: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = write_mesh()
    details: list[str] = []
    async with running_gateway(path, tmp_path) as gw:
        for token in (*ALL_TOKENS, None):
            async with connect(gw, token) as ch:
                stub = gateway_pb2_grpc.GatewayStub(ch)
                for call in (
                    stub.Publish(gateway_pb2.PublishRequest(events=[ev("audit/a")])),
                    stub.Publish(gateway_pb2.PublishRequest(events=[ev("orders/a")])),
                    admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest()),
                ):
                    try:
                        await call
                    except grpc.aio.AioRpcError as exc:
                        details.append(exc.details() or "")
        # A refused reload and an applied one log what they did.
        path.write_text(path.read_text().replace("${ORDERS_TOKEN}", "literal-in-the-file-0123456789"))
        refused = await gw.reload()
        assert not refused.applied
        details.extend(refused.errors)
        write_mesh(tokens=TOKENS.replace('subscribe: ["orders/>"]', 'subscribe: ["orders/eu/>"]'))
        assert (await gw.reload()).applied
    assert len(details) >= 10
    text = "\n".join(details) + "\n".join(r.getMessage() for r in caplog.records)
    assert "refused" in text and "applied" in text
    for token in (*ALL_TOKENS, "literal-in-the-file-0123456789"):
        assert token not in text, token


# --- Admin.Locate asks the peers with the caller's token ------------------------------------


async def test_locate_in_every_region_passes_the_callers_token(
    nats_server: EmbeddedNats, tmp_path: Path, token_env: dict[str, str]
) -> None:
    security = dataclasses.replace(
        SECURITY,
        tokens=(
            ClientToken(name="ops", token=ADMIN_TOKEN, admin=True),
            ClientToken(name="orders-service", token=ORDERS_TOKEN, publish=("orders/>",)),
        ),
    )
    rules = (RouteRule(index=0, topic="orders/*", regions=("here", "there")),)
    async with EmbeddedNats(data_dir=tmp_path / "there-nats") as there_server:
        there = Gateway(
            config=two_region_mesh(nats_server, there_server, routing=rules, security=security),
            region="there",
            data_dir=tmp_path,
            replicate=False,
        )
        await there.start()
        config = two_region_mesh(
            nats_server, there_server, there_gateway=there.address, routing=rules, security=security
        )
        here = Gateway(config=config, region="here", data_dir=tmp_path)
        await here.start()
        try:
            async with connect(here, ORDERS_TOKEN) as ch:
                await gateway_pb2_grpc.GatewayStub(ch).Publish(gateway_pb2.PublishRequest(events=[ev(id="loc-1")]))
            async with connect(here, ADMIN_TOKEN) as ch:
                admin = admin_pb2_grpc.AdminStub(ch)

                async def in_both() -> bool:
                    resp = await admin.Locate(admin_pb2.LocateRequest(id="loc-1", all_regions=True))
                    where = {w.region: w for w in resp.locations}
                    assert not where["there"].error, where["there"].error  # not UNAUTHENTICATED from the peer
                    return where["here"].found and where["there"].found

                await eventually(in_both, 30, what="loc-1 in both regions")
        finally:
            await here.stop()
            await there.stop()


# --- the CLI -----------------------------------------------------------------------------------


async def _cli(*args: str, token_env: str | None = None, stdin: bytes | None = None) -> tuple[int, str, str]:
    # Only PATH: no MESHGATE_TOKEN of the test's own environment reaches the CLI.
    env = {"PATH": "/usr/bin:/bin"}
    if token_env is not None:
        env["MESHGATE_TOKEN"] = token_env
    return await run_cli(*args, env=env, stdin=stdin)


async def test_cli_sends_the_token_from_the_flag_or_the_variable(secure_gw: Gateway) -> None:
    g = secure_gw.address
    rc, out, err = await _cli("status", "-g", g)
    assert rc == 1 and err.startswith("error: UNAUTHENTICATED: this gateway requires a client token"), err
    rc, out, err = await _cli("status", "-g", g, token_env=ADMIN_TOKEN)
    assert rc == 0 and out.startswith("region here"), (out, err)
    rc, out, err = await _cli("publish", "-g", g, "orders/cli", "hello", "--id", "cli-1", "--token", ORDERS_TOKEN)
    assert rc == 0 and out.startswith("accepted id=cli-1"), (out, err)
    # Stdin goes over a PublishStream: the token travels on streams too.
    rc, out, err = await _cli(
        "publish", "-g", g, "orders/cli", "--id", "cli-s", token_env=ORDERS_TOKEN, stdin=b"a\nb\n"
    )
    assert rc == 0 and out.count("accepted") == 2, (out, err)
    rc, out, err = await _cli("publish", "-g", g, "audit/cli", "x", token_env=ORDERS_TOKEN)
    assert rc == 1 and err.startswith("error: PERMISSION_DENIED: events[0]: client 'orders-service' may not"), err
    rc, out, err = await _cli("tail", "-g", g, "orders/>", "--from", "earliest", "--limit", "3", token_env=ORDERS_TOKEN)
    assert rc == 0 and len(out.splitlines()) == 3, (out, err)
    rc, out, err = await _cli("trace", "-g", g, "cli-1", "--json", "--token", WRONG_TOKEN)
    assert rc == 1 and "UNAUTHENTICATED" in err
    # `meshgate --help` of a command shows the option, never a value.
    rc, out, err = await _cli("tail", "--help", token_env=ORDERS_TOKEN)
    assert rc == 0 and "--token" in out and "MESHGATE_TOKEN" in out and ORDERS_TOKEN not in out

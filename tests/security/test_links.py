"""A replication link with TLS on: it shows its region's certificate and talks only to a
destination that presents the destination region's certificate of the mesh CA."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from meshgate.gateway import Gateway
from meshgate.replicator import LinkOptions
from meshgate.tls import peer_identity
from meshgate.v1 import admin_pb2, event_pb2, gateway_pb2, gateway_pb2_grpc, replication_pb2, replication_pb2_grpc
from tests._wait import eventually
from tests.gateway._helpers import ev
from tests.security._pki import Pki
from tests.security.conftest import HERE, THERE, THIRD, TlsGatewayFactory

FAST = LinkOptions(connect_timeout_seconds=1.0, backoff_max_seconds=0.5)


class Sink(replication_pb2_grpc.ReplicationServicer):
    """Stands at region `there`'s address and acks whatever it gets, noting who sent it."""

    def __init__(self) -> None:
        self.calls = 0
        self.callers: list[tuple[str, ...]] = []
        self.ids: list[str] = []

    async def Replicate(
        self,
        request_iterator: AsyncIterator[replication_pb2.ReplicateRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[replication_pb2.ReplicateResponse]:
        self.calls += 1
        self.callers.append(peer_identity(context.auth_context()).regions)
        async for req in request_iterator:
            if req.HasField("raw"):  # events as the source's broker stored them
                self.ids.extend(req.raw.ids)
                yield replication_pb2.ReplicateResponse(batch_id=req.batch_id, accepted=len(req.raw.ids))
                continue
            self.ids.extend(e.id for e in req.events)
            yield replication_pb2.ReplicateResponse(
                batch_id=req.batch_id,
                results=[event_pb2.EventResult(id=e.id, outcome=event_pb2.OUTCOME_ACCEPTED) for e in req.events],
            )


async def start_sink(pki: Pki, presenting: str, sink: Sink | None = None) -> tuple[grpc.aio.Server, Sink, int]:
    server = grpc.aio.server()
    sink = sink if sink is not None else Sink()
    replication_pb2_grpc.add_ReplicationServicer_to_server(sink, server)
    creds = grpc.ssl_server_credentials(
        [(pki.key(presenting).read_bytes(), pki.cert(presenting).read_bytes())],
        root_certificates=pki.ca_path.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    return server, sink, port


async def publish_one(gw: Gateway, pki: Pki) -> None:
    async with pki.channel(gw.address, "client") as ch:
        resp = await gateway_pb2_grpc.GatewayStub(ch).Publish(
            gateway_pb2.PublishRequest(events=[ev("orders/created", id="e-1")])
        )
    assert resp.results[0].outcome == event_pb2.OUTCOME_ACCEPTED
    assert set(resp.results[0].route) == {HERE, THERE, THIRD}


def link_to_there(gw: Gateway) -> admin_pb2.LinkStatus:
    return next(s for s in gw.link_statuses() if s.destination == THERE)


async def test_a_destination_presenting_another_region_certificate_gets_nothing(
    make_tls_gateway: TlsGatewayFactory, pki: Pki
) -> None:
    # Something at `there`'s address with a genuine certificate of the mesh CA, but of region `third`.
    server, impostor, port = await start_sink(pki, THIRD)
    try:
        gw = await make_tls_gateway(gateways={THERE: f"127.0.0.1:{port}"}, link_options=FAST)
        await publish_one(gw, pki)
        error = await eventually(
            lambda: link_to_there(gw).last_error, 20, what="the link to `there` to report why it cannot connect"
        )
        assert "cannot connect over TLS" in error, error
        assert link_to_there(gw).state != admin_pb2.LINK_STATE_REPLICATING
        assert link_to_there(gw).forwarded == 0
        assert impostor.calls == 0 and impostor.ids == []
    finally:
        await server.stop(0)


async def test_a_destination_with_its_region_certificate_receives_the_events(
    make_tls_gateway: TlsGatewayFactory, pki: Pki
) -> None:
    # The same setup with `there`'s own certificate: the link connects and forwards, showing `here`'s.
    server, sink, port = await start_sink(pki, THERE)
    try:
        gw = await make_tls_gateway(gateways={THERE: f"127.0.0.1:{port}"}, link_options=FAST)
        await publish_one(gw, pki)
        await eventually(lambda: link_to_there(gw).forwarded == 1, 20, what="the event forwarded to `there`")
        assert sink.ids == ["e-1"]
        assert sink.callers and all(c == (HERE,) for c in sink.callers)
    finally:
        await server.stop(0)


class HangsAfterFirst(Sink):
    """Acks the first batch it gets, then takes every later one and never answers (a destination that hangs)."""

    async def Replicate(
        self,
        request_iterator: AsyncIterator[replication_pb2.ReplicateRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[replication_pb2.ReplicateResponse]:
        self.calls += 1
        async for req in request_iterator:
            first = not self.ids
            self.ids.extend(req.raw.ids)
            if first:
                yield replication_pb2.ReplicateResponse(batch_id=req.batch_id, accepted=len(req.raw.ids))


async def test_a_destination_that_hangs_after_a_quiet_spell_is_noticed_within_the_ack_timeout(
    make_tls_gateway: TlsGatewayFactory, pki: Pki
) -> None:
    # The link's answer was awaited with no limit when nothing was in flight, so a batch sent
    # after a quiet spell waited forever on a destination that took it and never answered.
    server, sink, port = await start_sink(pki, THERE, HangsAfterFirst())
    try:
        options = LinkOptions(connect_timeout_seconds=1.0, backoff_max_seconds=0.5, ack_timeout_seconds=1.0)
        gw = await make_tls_gateway(gateways={THERE: f"127.0.0.1:{port}"}, link_options=options)
        await publish_one(gw, pki)
        await eventually(lambda: link_to_there(gw).forwarded == 1, 20, what="the first event acked by `there`")
        async with pki.channel(gw.address, "client") as ch:
            await gateway_pb2_grpc.GatewayStub(ch).Publish(
                gateway_pb2.PublishRequest(events=[ev("orders/created", id="e-2")])
            )
        await eventually(lambda: "e-2" in sink.ids, 20, what="the second event taken by `there`")
        error = await eventually(
            lambda: link_to_there(gw).last_error, 15, what="the link to report the unanswered batch"
        )
        assert "did not answer a batch within 1 s" in error, error
        assert link_to_there(gw).forwarded == 1
    finally:
        await server.stop(0)

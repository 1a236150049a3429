"""``Replicate`` at a gateway with TLS on: only a peer region, as itself, and nothing stored otherwise.

Every refused call is checked in the broker: the destination stores nothing from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence

import grpc
import pytest

from meshgate.gateway import Gateway
from meshgate.v1 import event_pb2, gateway_pb2_grpc, replication_pb2, replication_pb2_grpc
from tests.gateway._helpers import as_raw, ev, read_all
from tests.security._pki import Pki
from tests.security.conftest import ELSEWHERE, HERE, THERE, THIRD, TlsGatewayFactory

ACCEPTED = event_pb2.OUTCOME_ACCEPTED


def events(origin: str, seqs: Sequence[int]) -> list[event_pb2.Event]:
    """Events as region ``origin`` forwards them: its origin, a route naming `here`, its log positions."""
    return [ev(id=f"{origin}-{s}", origin=origin, route=[HERE, origin], sequence=s) for s in seqs]


async def replicate(
    channel: grpc.aio.Channel, source: str, *batches: list[event_pb2.Event], hold_open: bool = False
) -> list[list[int]]:
    """Sends the batches on one call; the outcomes of each. ``hold_open``: the client does not close
    its side after the batches, as a link does; the call ends when the destination ends it.

    A destination that ends a call while the client still writes can make gRPC Python report the
    client's failed write (INTERNAL) instead of the destination's status: tests that check a
    refusal's code hold the call open, and write nothing when the refusal comes before reading.
    """
    release = asyncio.Event()

    async def requests() -> AsyncIterator[replication_pb2.ReplicateRequest]:
        for i, batch in enumerate(batches, start=1):
            yield replication_pb2.ReplicateRequest(source_region=source, batch_id=i, events=batch)
        if hold_open:
            await release.wait()

    call = replication_pb2_grpc.ReplicationStub(channel).Replicate(requests())
    try:
        return [[r.outcome for r in resp.results] async for resp in call]
    finally:
        release.set()


async def stored(gw: Gateway, pki: Pki) -> list[event_pb2.Event]:
    """Every event in `here`'s log (read over TLS with the client's certificate)."""
    async with pki.channel(gw.address, "client") as ch:
        return await read_all(gateway_pb2_grpc.GatewayStub(ch), ">", idle=0.5)


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error that ends ``call``; a call still open after 15 s was not refused (a held-open one never ends)."""
    try:
        async with asyncio.timeout(15):
            result = await call
    except grpc.aio.AioRpcError as exc:
        return exc
    except TimeoutError:
        pytest.fail("the call was not refused: still open after 15 s")
    pytest.fail(f"the call was not refused: it returned {result!r}")


async def test_a_peer_with_its_region_certificate_replicates(make_tls_gateway: TlsGatewayFactory, pki: Pki) -> None:
    gw = await make_tls_gateway(replicate=False)
    async with pki.channel(gw.address, THERE, server_name=HERE) as ch:
        assert await replicate(ch, THERE, events(THERE, [1, 2]), events(THERE, [3])) == [[ACCEPTED] * 2, [ACCEPTED]]
    found = await stored(gw, pki)
    assert [(e.id, e.origin, e.origin_sequence) for e in found] == [
        ("there-1", THERE, 1),
        ("there-2", THERE, 2),
        ("there-3", THERE, 3),
    ]


async def test_without_a_certificate_the_handshake_is_refused(make_tls_gateway: TlsGatewayFactory, pki: Pki) -> None:
    gw = await make_tls_gateway(replicate=False)
    # TLS that trusts the CA, but no certificate of its own.
    async with pki.channel(gw.address, None) as ch:
        err = await refused(replicate(ch, THERE, events(THERE, [1])))
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    # Plaintext: the port speaks TLS only.
    async with grpc.aio.insecure_channel(gw.address) as ch:
        err = await refused(replicate(ch, THERE, events(THERE, [1])))
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert await stored(gw, pki) == []


async def test_a_certificate_of_another_ca_is_refused(
    make_tls_gateway: TlsGatewayFactory, pki: Pki, rogue: Pki
) -> None:
    gw = await make_tls_gateway(replicate=False)
    # Names region `there` too, and trusts the gateway's CA: only its signer differs.
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_path.read_bytes(),
        private_key=rogue.key(THERE).read_bytes(),
        certificate_chain=rogue.cert(THERE).read_bytes(),
    )
    async with grpc.aio.secure_channel(gw.address, creds) as ch:
        err = await refused(replicate(ch, THERE, events(THERE, [1])))
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert await stored(gw, pki) == []


@pytest.mark.parametrize("who", [ELSEWHERE, "client"])
async def test_a_certificate_naming_no_region_of_the_mesh_is_refused(
    make_tls_gateway: TlsGatewayFactory, pki: Pki, who: str
) -> None:
    gw = await make_tls_gateway(replicate=False)
    async with pki.channel(gw.address, who) as ch:
        # Refused when the call opens, before anything is read.
        err = await refused(replicate(ch, THERE, hold_open=True))
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED, err
        assert "takes Replicate only from another region of the mesh" in (err.details() or "")
        # Sending events anyway, as `there` or as the region its certificate names: refused too.
        for source in (THERE, ELSEWHERE):
            await refused(replicate(ch, source, events(source, [1]), hold_open=True))
    assert await stored(gw, pki) == []


async def test_the_destination_own_certificate_cannot_replicate_to_it(
    make_tls_gateway: TlsGatewayFactory, pki: Pki
) -> None:
    gw = await make_tls_gateway(replicate=False)
    async with pki.channel(gw.address, HERE) as ch:
        err = await refused(replicate(ch, HERE, hold_open=True))
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED, err
        await refused(replicate(ch, HERE, events(HERE, [1]), hold_open=True))
    assert await stored(gw, pki) == []


async def test_a_peer_cannot_claim_another_region_as_source(make_tls_gateway: TlsGatewayFactory, pki: Pki) -> None:
    gw = await make_tls_gateway(replicate=False)
    async with pki.channel(gw.address, THERE) as ch:
        err = await refused(replicate(ch, THIRD, events(THIRD, [1, 2]), hold_open=True))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED, err
    assert err.details() == "the certificate of region there cannot replicate as region 'third'"
    assert await stored(gw, pki) == []


async def test_a_peer_cannot_forward_events_of_another_origin(make_tls_gateway: TlsGatewayFactory, pki: Pki) -> None:
    gw = await make_tls_gateway(replicate=False)
    # Its own source_region, but one event of the batch claims region `third` as its origin:
    # the whole batch is refused, the valid event beside it included.
    mixed = [*events(THERE, [1]), *events(THIRD, [2])]
    async with pki.channel(gw.address, THERE) as ch:
        err = await refused(replicate(ch, THERE, mixed, hold_open=True))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED, err
    assert "claims origin 'third'" in (err.details() or "")
    assert await stored(gw, pki) == []
    # A later batch of the same call is checked too: the first is stored, the second ends the call.
    async with pki.channel(gw.address, THERE) as ch:
        err = await refused(replicate(ch, THERE, events(THERE, [1]), events(THIRD, [2]), hold_open=True))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED, err
    assert [e.id for e in await stored(gw, pki)] == ["there-1"]


async def test_clients_need_a_certificate_of_the_ca_too(make_tls_gateway: TlsGatewayFactory, pki: Pki) -> None:
    gw = await make_tls_gateway(replicate=False)
    async with pki.channel(gw.address, None) as ch:
        err = await refused(read_all(gateway_pb2_grpc.GatewayStub(ch), ">", idle=0.5))
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    # The gateway's certificate names its region, localhost and 127.0.0.1: dialled by address, it verifies.
    assert await stored(gw, pki) == []


def raw(origin: str, seqs: Sequence[int]) -> replication_pb2.RawEvents:
    """Events of ``origin`` as its broker stored them: the `raw` form a link sends."""
    return as_raw(events(origin, seqs))


async def replicate_raw(
    channel: grpc.aio.Channel, source: str, *batches: replication_pb2.RawEvents
) -> list[replication_pb2.ReplicateResponse]:
    release = asyncio.Event()

    async def requests() -> AsyncIterator[replication_pb2.ReplicateRequest]:
        for i, batch in enumerate(batches, start=1):
            yield replication_pb2.ReplicateRequest(source_region=source, batch_id=i, raw=batch)
        await release.wait()  # held open, as a link does: the destination ends the call

    call = replication_pb2_grpc.ReplicationStub(channel).Replicate(requests())
    answers: list[replication_pb2.ReplicateResponse] = []
    try:
        async for resp in call:
            answers.append(resp)
            if len(answers) == len(batches):
                break
    finally:
        release.set()
        call.cancel()
    return answers


async def test_raw_batches_of_a_peer_replicate_and_cannot_smuggle_another_origin(
    make_tls_gateway: TlsGatewayFactory, pki: Pki
) -> None:
    gw = await make_tls_gateway(replicate=False)
    async with pki.channel(gw.address, THERE) as ch:
        [answer] = await replicate_raw(ch, THERE, raw(THERE, [1, 2]))
    assert (answer.accepted, answer.duplicates, list(answer.refused)) == (2, 0, [])
    # A second origin header after the peer's own: the decoder would keep the last one, so
    # the event would be stored as region `third`'s. The whole batch is refused.
    smuggled = raw(THERE, [3, 4])
    smuggled.headers[1] += b"mg-origin: third\r\n"
    async with pki.channel(gw.address, THERE) as ch:
        err = await refused(replicate_raw(ch, THERE, smuggled))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED, err
    assert "event there-4 carries the origin header(s) there, third" in (err.details() or "")
    # Only another origin in the header, and no origin header at all: refused the same way.
    for header in (b"mg-origin: third", b"x-nothing: here"):
        other = raw(THERE, [5])
        other.headers[0] = other.headers[0].replace(b"mg-origin: there", header)
        async with pki.channel(gw.address, THERE) as ch:
            err = await refused(replicate_raw(ch, THERE, other))
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED, err
    found = await stored(gw, pki)
    assert [(e.id, e.origin) for e in found] == [("there-1", THERE), ("there-2", THERE)]


async def test_raw_origin_checks_keep_their_refusals_with_tls_on(make_tls_gateway: TlsGatewayFactory, pki: Pki) -> None:
    """The one origin check of a raw event: the peer's origin spelt other than the exact line the
    destination writes is refused per event; a foreign origin in a malformed batch still ends the
    call as a foreign origin, not as the malformed batch it also is."""
    gw = await make_tls_gateway(replicate=False)
    respelt = raw(THERE, [1, 2])
    respelt.headers[1] = respelt.headers[1].replace(b"mg-origin: there", b"MG-Origin: there")
    async with pki.channel(gw.address, THERE) as ch:
        [answer] = await replicate_raw(ch, THERE, respelt)
    assert answer.accepted == 1
    assert [(r.index, r.message) for r in answer.refused] == [(1, "event origin is not the sending region 'there'")]
    malformed = raw(THERE, [3, 4])
    malformed.headers[1] = malformed.headers[1].replace(b"mg-origin: there", b"mg-origin: third")
    del malformed.topics[0]
    async with pki.channel(gw.address, THERE) as ch:
        err = await refused(replicate_raw(ch, THERE, malformed))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED, err
    assert "event there-4 carries the origin header(s) third" in (err.details() or "")
    assert [e.id for e in await stored(gw, pki)] == ["there-1"]

"""``Replication.Replicate`` at a destination: stored once, recognised after any outage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.config import NatsSettings, Settings
from meshgate.gateway import Gateway
from meshgate.v1 import event_pb2, gateway_pb2_grpc, replication_pb2, replication_pb2_grpc
from tests.gateway._helpers import ev, read_all
from tests.gateway.conftest import mesh_for

ACCEPTED, DUPLICATE, REJECTED = event_pb2.OUTCOME_ACCEPTED, event_pb2.OUTCOME_DUPLICATE, event_pb2.OUTCOME_REJECTED


def from_there(seqs: Sequence[int], *, data: bytes = b"{}", topic: str = "orders/created") -> list[event_pb2.Event]:
    """Events as region `there` forwards them: its origin, its route, its log positions."""
    return [ev(topic, data, id=f"there-{s}", origin="there", route=["here", "there"], sequence=s) for s in seqs]


async def replicate(address: str, *batches: list[event_pb2.Event], source: str = "there") -> list[list[int]]:
    """Sends the batches on one call; the outcomes of each batch."""

    async def requests() -> AsyncIterator[replication_pb2.ReplicateRequest]:
        for i, events in enumerate(batches, start=1):
            yield replication_pb2.ReplicateRequest(source_region=source, batch_id=i, events=events)

    async with grpc.aio.insecure_channel(address) as ch:
        call = replication_pb2_grpc.ReplicationStub(ch).Replicate(requests())
        return [[r.outcome for r in resp.results] async for resp in call]


async def start_gateway(server: EmbeddedNats, tmp_path: Path, *, window: float = 900.0, **nats: object) -> Gateway:
    base = mesh_for(server)
    regions = tuple(
        r if r.name != "here" else type(r)(**{**{f: getattr(r, f) for f in r.__slots__}, "nats": NatsSettings(**nats)})
        for r in base.regions
    )
    config = type(base)(
        regions=regions,
        routing=base.routing,
        settings=Settings(idempotency_window_seconds=window, limits=base.settings.limits),
    )
    # No links out of this gateway: the test plays the source region itself.
    gw = Gateway(config=config, region="here", data_dir=tmp_path, replicate=False)
    await gw.start()
    return gw


async def stored(gw: Gateway) -> list[event_pb2.Event]:
    async with grpc.aio.insecure_channel(gw.address) as ch:
        return await read_all(gateway_pb2_grpc.GatewayStub(ch), "orders/>", idle=0.5)


async def test_batches_stored_with_origin_and_acked_in_order(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    gw = await start_gateway(nats_server, tmp_path)
    try:
        outcomes = await replicate(gw.address, from_there([1, 2, 3]), from_there([5, 8]))
        assert outcomes == [[ACCEPTED] * 3, [ACCEPTED] * 2]
        events = await stored(gw)
        assert [e.id for e in events] == ["there-1", "there-2", "there-3", "there-5", "there-8"]
        assert all(e.origin == "there" for e in events)
        assert [e.origin_sequence for e in events] == [1, 2, 3, 5, 8]
        assert list(events[0].route) == ["here", "there"]
    finally:
        await gw.stop()


async def test_resend_after_the_id_window_lapsed_is_still_recognised(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    # A 1 s id window: after it lapses only the dedup rebuilt from the log can tell a resend.
    gw = await start_gateway(nats_server, tmp_path, window=1.0, max_age_seconds=60.0)
    try:
        assert await replicate(gw.address, from_there([1, 2, 3])) == [[ACCEPTED] * 3]
    finally:
        await gw.stop()
    await asyncio.sleep(1.5)  # the broker's id window lapses: this waits on a TTL, not on readiness
    gw = await start_gateway(nats_server, tmp_path, window=1.0, max_age_seconds=60.0)
    try:
        # A source that crashed before acking its log resends 2..3, then goes on with 4.
        assert await replicate(gw.address, from_there([2, 3, 4])) == [[DUPLICATE, DUPLICATE, ACCEPTED]]
        assert [e.origin_sequence for e in await stored(gw)] == [1, 2, 3, 4]
    finally:
        await gw.stop()


async def test_recognised_without_a_checkpoint_from_the_log_alone(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    gw = await start_gateway(nats_server, tmp_path)
    try:
        assert await replicate(gw.address, from_there([1, 2])) == [[ACCEPTED] * 2]
        # The checkpoint is lost (or was never written): the scan of the log still knows.
        await gw.broker.put_checkpoint("replication.there", b"not json")
        assert await replicate(gw.address, from_there([1, 2, 3])) == [[DUPLICATE, DUPLICATE, ACCEPTED]]
        assert [e.origin_sequence for e in await stored(gw)] == [1, 2, 3]
    finally:
        await gw.stop()


async def test_poison_event_refused_for_good_and_again_when_resent(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    server = EmbeddedNats(data_dir=tmp_path / "small", max_payload=16 * 1024)
    async with server:
        gw = await start_gateway(server, tmp_path / "gw")
        try:
            big = from_there([2], data=b"x" * 20_000)
            batch = from_there([1]) + big + from_there([3])
            outcomes = await replicate(gw.address, batch)
            assert outcomes == [[ACCEPTED, REJECTED, ACCEPTED]]
            # The source crashed before writing its dead letter: the resend is refused again.
            assert await replicate(gw.address, from_there([2], data=b"x" * 20_000)) == [[REJECTED]]
            assert [e.origin_sequence for e in await stored(gw)] == [1, 3]
        finally:
            await gw.stop()


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("origin", "yonder", "is not the sending region"),
        ("sequence", 0, "no position"),
        ("route", ["there"], "does not name region here"),
        ("topic", "bad//topic", "level 2 is empty"),
    ],
)
async def test_invalid_replicated_event_refused(
    nats_server: EmbeddedNats, tmp_path: Path, field: str, value: object, words: str
) -> None:
    gw = await start_gateway(nats_server, tmp_path)
    try:
        bad = from_there([1])[0]
        if isinstance(value, list):
            bad.ClearField(field)  # type: ignore[arg-type]
            getattr(bad, field).extend(value)
        else:
            setattr(bad, field, value)
        async with grpc.aio.insecure_channel(gw.address) as ch:
            call = replication_pb2_grpc.ReplicationStub(ch).Replicate(
                iter([replication_pb2.ReplicateRequest(source_region="there", batch_id=1, events=[bad])])
            )
            (resp,) = [r async for r in call]
        (result,) = resp.results
        assert result.outcome == REJECTED and words in result.message
        assert await stored(gw) == []
    finally:
        await gw.stop()


async def test_unknown_source_region_refused(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    gw = await start_gateway(nats_server, tmp_path)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await replicate(gw.address, from_there([1]), source="mars")
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "mars" in (info.value.details() or "")
        assert await stored(gw) == []
    finally:
        await gw.stop()


# -- origins whose log has several streams (Kafka topic-partitions) ----------------------------


def from_stream(stream: str, seqs: Sequence[int], *, tag: str = "") -> list[event_pb2.Event]:
    """Events of one stream of `there`'s log; ``tag`` makes new ids for a resend the id window cannot catch."""
    return [
        ev(
            "orders/created",
            b"{}",
            id=f"there-{stream}-{s}{tag}",
            origin="there",
            route=["here", "there"],
            sequence=s,
            stream=stream,
        )
        for s in seqs
    ]


A, B = "mesh.orders.created/0", "mesh.orders.created/1"


def positions(events: Sequence[event_pb2.Event]) -> list[tuple[str, int]]:
    return [(e.origin_stream, e.origin_sequence) for e in events]


async def test_two_streams_interleaved_in_one_call(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    gw = await start_gateway(nats_server, tmp_path)
    try:
        # The same sequences in two streams are different events; streams interleave freely.
        first = [*from_stream(A, [1]), *from_stream(B, [1]), *from_stream(A, [2]), *from_stream(B, [2, 3])]
        # Then a resend in each stream (new ids: only the per-stream dedup can tell), mixed with news.
        second = [*from_stream(B, [3], tag="-again"), *from_stream(A, [3]), *from_stream(A, [2], tag="-again")]
        third = [*from_stream(B, [4]), *from_stream(A, [1], tag="-again")]
        outcomes = await replicate(gw.address, first, second, third)
        assert outcomes == [[ACCEPTED] * 5, [DUPLICATE, ACCEPTED, DUPLICATE], [ACCEPTED, DUPLICATE]]
        events = await stored(gw)
        assert positions(events) == [(A, 1), (B, 1), (A, 2), (B, 2), (B, 3), (A, 3), (B, 4)]
        # Stored under this region's own position: the origin's is in origin_sequence/origin_stream.
        assert all(e.stream == "" and e.sequence > 0 for e in events)
    finally:
        await gw.stop()


async def test_two_streams_recovered_from_checkpoint_and_scan(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    gw = await start_gateway(nats_server, tmp_path)
    try:
        assert await replicate(gw.address, from_stream(A, [1, 2, 3]) + from_stream(B, [1, 2])) == [[ACCEPTED] * 5]
        # The call's end saved the checkpoint: one value for the origin, a state per stream.
        raw = await gw.broker.get_checkpoint("replication.there")
        assert raw is not None
        saved = json.loads(raw)
        assert {name: s["acked"] for name, s in saved["streams"].items()} == {A: 3, B: 2}
        assert saved["position"] == await gw.broker.log_position()
        # Stored after that checkpoint and never recorded in it (a call that died before saving):
        # only the scan of the log after the checkpoint's position finds them.
        late = [*from_stream(A, [4]), *from_stream(B, [3])]
        for event in late:
            event.origin_sequence, event.origin_stream = event.sequence, event.stream
            event.sequence, event.stream = 0, ""
        assert all(not isinstance(r, Exception) for r in await gw.broker.append(late))
        resend = [
            *from_stream(A, [3], tag="-r"),  # known from the checkpoint
            *from_stream(B, [3], tag="-r"),  # found by the scan
            *from_stream(A, [4], tag="-r"),  # found by the scan
            *from_stream(B, [2], tag="-r"),  # known from the checkpoint
            *from_stream(A, [5]),
            *from_stream(B, [4]),
        ]
        assert await replicate(gw.address, resend) == [[DUPLICATE] * 4 + [ACCEPTED] * 2]
        assert sorted(positions(await stored(gw))) == sorted(
            [(A, 1), (A, 2), (A, 3), (A, 4), (A, 5), (B, 1), (B, 2), (B, 3), (B, 4)]
        )
    finally:
        await gw.stop()


async def test_checkpoint_of_the_one_stream_format_still_loads(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    gw = await start_gateway(nats_server, tmp_path)
    try:
        # Written by a gateway from before streams: it speaks for stream "" (a NATS origin).
        await gw.broker.put_checkpoint(
            "replication.there", json.dumps({"acked": 3, "position": 0, "refused": {"5": "too large"}}).encode()
        )
        outcomes = await replicate(gw.address, from_there([2, 3, 4, 5]) + from_stream(A, [2]))
        assert outcomes == [[DUPLICATE, DUPLICATE, ACCEPTED, REJECTED, ACCEPTED]]
        assert positions(await stored(gw)) == [("", 4), (A, 2)]
    finally:
        await gw.stop()

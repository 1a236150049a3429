"""The e2e harness itself: a ledger that would pass a broken mesh, or a proxy that does not cut,
would make every replication test worthless. Hand-made events and a local echo server prove
them; one small cluster proves the process harness (start, publish and read, kill -9, restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from meshgate.v1 import event_pb2, gateway_pb2
from tests._wait import eventually
from tests.e2e._ledger import Ledger, Producer, make_event, read_region
from tests.e2e._mesh import MeshCluster, _pid_alive
from tests.e2e._proxy import TcpProxy
from tests.e2e.conftest import MeshFactory

A, B, C = "us-west", "eu-central", "ap-south"
ACC, DUP, REJ = event_pb2.OUTCOME_ACCEPTED, event_pb2.OUTCOME_DUPLICATE, event_pb2.OUTCOME_REJECTED


# --- the ledger, by hand -----------------------------------------------------------------------


def _ack(
    ev: event_pb2.Event, seq: int, route: Sequence[str], outcome: event_pb2.Outcome.ValueType = ACC
) -> event_pb2.EventResult:
    return event_pb2.EventResult(id=ev.id, outcome=outcome, sequence=seq, route=sorted(route))


def _stored(ev: event_pb2.Event, origin: str, route: Sequence[str], seq: int = 0) -> event_pb2.Event:
    """The event as a region's Subscribe returns it."""
    out = event_pb2.Event()
    out.CopyFrom(ev)
    out.origin = origin
    out.route[:] = sorted(route)
    out.sequence = seq
    return out


def _ledger_with(
    events: Sequence[event_pb2.Event], origin: str = A, route: Sequence[str] = (A, B)
) -> tuple[Ledger, list[event_pb2.Event]]:
    ledger = Ledger()
    for ev in events:
        ledger.record_sent(origin, ev)
    ledger.record(origin, events, [_ack(ev, i + 1, route) for i, ev in enumerate(events)])
    return ledger, [_stored(ev, origin, route, i + 1) for i, ev in enumerate(events)]


def _events(n: int, key: str = "k1", topic: str = "orders/created") -> list[event_pb2.Event]:
    return [make_event(f"e{i}", topic, key=key) for i in range(n)]


def test_ledger_passes_a_faithful_mesh() -> None:
    ledger, stored = _ledger_with(_events(5))
    assert ledger.check({A: stored, B: list(stored)}) == []


def test_ledger_reports_a_missing_event_with_region_count_and_id() -> None:
    ledger, stored = _ledger_with(_events(5))
    problems = ledger.check({A: stored, B: stored[:2] + stored[3:]})
    assert len(problems) == 1
    assert "region eu-central" in problems[0] and "1 of 5" in problems[0] and "e2" in problems[0]


def test_ledger_reports_a_duplicate() -> None:
    ledger, stored = _ledger_with(_events(3))
    problems = ledger.check({A: stored, B: [*stored, stored[1]]})
    assert any("eu-central" in p and "more than once" in p and "e1 x2" in p for p in problems), problems


def test_ledger_reports_a_region_outside_the_route() -> None:
    ledger, stored = _ledger_with(_events(3), route=(A,))
    problems = ledger.check({A: stored, B: stored[:1]})
    assert any("eu-central" in p and "not routed here" in p and "e0" in p for p in problems), problems


def test_ledger_reports_the_origin_region_not_read() -> None:
    ledger, stored = _ledger_with(_events(3))
    problems = ledger.check({A: stored})
    assert any("eu-central" in p and "not read" in p for p in problems), problems


def test_ledger_reports_key_order() -> None:
    ledger, stored = _ledger_with(_events(4))
    swapped = [stored[0], stored[2], stored[1], stored[3]]
    problems = ledger.check({A: stored, B: swapped})
    assert len(problems) == 1, problems
    assert "eu-central" in problems[0] and "key k1" in problems[0] and "position 1" in problems[0]


def test_ledger_orders_per_key_not_across_keys() -> None:
    evs = [make_event("a0", "orders/x", key="a"), make_event("b0", "orders/x", key="b")]
    evs += [make_event("a1", "orders/x", key="a"), make_event("b1", "orders/x", key="b")]
    ledger, stored = _ledger_with(evs)
    interleaved = [stored[1], stored[3], stored[0], stored[2]]  # b0 b1 a0 a1: each key in order
    assert ledger.check({A: stored, B: interleaved}) == []


def test_ledger_keys_of_two_origins_are_separate() -> None:
    ledger = Ledger()
    from_a = [make_event("a0", "orders/x", key="k"), make_event("a1", "orders/x", key="k")]
    from_b = [make_event("b0", "orders/x", key="k"), make_event("b1", "orders/x", key="k")]
    ledger.record(A, from_a, [_ack(e, i + 1, (A, B)) for i, e in enumerate(from_a)])
    ledger.record(B, from_b, [_ack(e, i + 1, (A, B)) for i, e in enumerate(from_b)])
    in_a = [_stored(from_b[0], B, (A, B)), _stored(from_a[0], A, (A, B))]
    in_a += [_stored(from_b[1], B, (A, B)), _stored(from_a[1], A, (A, B))]
    assert ledger.check({A: in_a, B: list(in_a)}) == []
    wrong = [in_a[2], in_a[1], in_a[0], in_a[3]]  # b1 before b0
    assert any("key k from eu-central" in p for p in ledger.check({A: in_a, B: wrong}))


def test_ledger_reports_changed_content_and_origin() -> None:
    ledger, stored = _ledger_with([make_event("x", "orders/a", key="k", extensions={"tenant": "t1"})])
    changed = event_pb2.Event()
    changed.CopyFrom(stored[0])
    changed.data = b"other"
    changed.extensions["tenant"] = "t2"
    changed.origin = B
    (problem,) = ledger.check({A: stored, B: [changed]})
    assert "differ" in problem and "data" in problem and "extensions" in problem and "origin" in problem


def test_ledger_reports_an_event_never_sent() -> None:
    ledger, stored = _ledger_with(_events(1))
    stranger = _stored(make_event("stranger", "orders/a"), A, (A, B))
    problems = ledger.check({A: [*stored, stranger], B: stored})
    assert any("never sent" in p and "stranger" in p for p in problems), problems


def test_only_accepted_or_duplicate_acks_count() -> None:
    ledger = Ledger()
    evs = _events(3)
    rejected = event_pb2.EventResult(id="e1", outcome=REJ, code=14, message="broker down")
    retry = ledger.record(A, evs, [_ack(evs[0], 1, (A, B)), rejected, _ack(evs[2], 2, (A, B), DUP)])
    assert set(ledger.acked) == {"e0", "e2"}
    assert [e.id for e in retry] == ["e1"]  # UNAVAILABLE: to be resent with the same id
    # e1 was sent and never acked: it may be stored (ack lost) or not, but never twice.
    stored = [_stored(evs[0], A, (A, B), 1), _stored(evs[2], A, (A, B), 2)]
    assert ledger.check({A: stored, B: stored}) == []
    e1 = _stored(evs[1], A, (A, B), 3)
    assert ledger.check({A: [*stored, e1], B: stored}) == []
    assert any("more than once" in p for p in ledger.check({A: [*stored, e1, e1], B: stored}))
    # And the events it must hold are only the acked ones.
    assert ledger.expected_in(B) == {"e0", "e2"}


def test_ledger_flags_a_retry_that_was_not_deduplicated() -> None:
    ledger = Ledger()
    (ev,) = _events(1)
    ledger.record(A, [ev], [_ack(ev, 1, (A,))])
    ledger.record(A, [ev], [_ack(ev, 1, (A,), DUP)])
    assert ledger.problems == []
    ledger.record(A, [ev], [_ack(ev, 2, (A,))])
    assert any("ACCEPTED again" in p for p in ledger.problems)
    assert ledger.check({A: [_stored(ev, A, (A,), 1)]}) != []


def test_ledger_flags_acks_stored_out_of_order_at_the_origin() -> None:
    ledger = Ledger()
    evs = _events(2)
    ledger.record(A, evs, [_ack(evs[0], 5, (A,)), _ack(evs[1], 3, (A,))])
    problems = ledger.check({A: [_stored(evs[1], A, (A,), 3), _stored(evs[0], A, (A,), 5)]})
    assert any("acked after" in p for p in problems), problems


def test_ledger_accepts_a_retry_whose_first_write_was_stored() -> None:
    # e0's ack was lost in a crash, e1 (same key) acked before the retry of e0 came back
    # DUPLICATE with its original, earlier, sequence: the log order e0, e1 is right.
    ledger = Ledger()
    evs = _events(2)
    ledger.record_sent(A, evs[0])
    ledger.record(A, [evs[1]], [_ack(evs[1], 2, (A, B))])
    ledger.record(A, [evs[0]], [_ack(evs[0], 1, (A, B), DUP)])
    stored = [_stored(evs[0], A, (A, B), 1), _stored(evs[1], A, (A, B), 2)]
    assert ledger.check({A: stored, B: stored}) == []


def test_ledger_dead_letters_are_exempt_at_their_destination_only() -> None:
    ledger, stored = _ledger_with(_events(3))
    ledger.expect_dead_letter("e1", B)
    assert ledger.expected_in(B) == {"e0", "e2"} and ledger.expected_in(A) == {"e0", "e1", "e2"}
    assert ledger.check({A: stored, B: [stored[0], stored[2]]}) == []
    problems = ledger.check({A: stored, B: stored})
    assert any("eu-central" in p and "dead-lettered" in p and "e1" in p for p in problems), problems
    assert any("us-west" in p and "missing" in p for p in ledger.check({A: stored[:1], B: [stored[0], stored[2]]}))


def test_ledger_reports_wrong_result_count() -> None:
    ledger = Ledger()
    evs = _events(2)
    retry = ledger.record(A, evs, [_ack(evs[0], 1, (A,))])
    assert [e.id for e in retry] == ["e1"]
    assert any("got 1 results" in p for p in ledger.problems)


# --- the proxy -------------------------------------------------------------------------------


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    """A loopback echo server; its address."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def _roundtrip(address: str, payload: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 5)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_proxy_forwards_on_a_free_port(echo: str) -> None:
    async with TcpProxy(echo) as proxy:
        assert proxy.port > 0 and proxy.address != echo
        assert await _roundtrip(proxy.address, b"hello") == b"hello"
        big = os.urandom(1 << 20)
        assert await _roundtrip(proxy.address, big) == big
        assert proxy.accepted == 2


async def test_proxy_cut_closes_open_and_new_connections_until_restored(echo: str) -> None:
    async with TcpProxy(echo) as proxy:
        host, port = proxy.address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        proxy.cut()
        # The open connection ends (reset or EOF), within a bound.
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(10), 5) == b""
        writer.close()
        # A new one is closed at once, without a byte through.
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await _roundtrip(proxy.address, b"lost")
        assert proxy.refused >= 1
        proxy.restore()
        assert await _roundtrip(proxy.address, b"back") == b"back"


async def test_proxy_delay_is_added_each_way_and_settable_live(echo: str) -> None:
    async with TcpProxy(echo) as proxy:
        started = time.monotonic()
        await _roundtrip(proxy.address, b"x")
        fast = time.monotonic() - started
        proxy.delay = 0.2
        started = time.monotonic()
        await _roundtrip(proxy.address, b"y")
        slow = time.monotonic() - started
        assert slow >= 0.4 > fast  # once to the echo server, once back
        proxy.delay = 0.0
        started = time.monotonic()
        await _roundtrip(proxy.address, b"z")
        assert time.monotonic() - started < 0.4


async def test_proxy_start_and_stop_are_safe_twice(echo: str) -> None:
    proxy = TcpProxy(echo)
    first = await proxy.start()
    assert await proxy.start() == first
    await proxy.stop()
    await proxy.stop()
    with pytest.raises(OSError):
        await _roundtrip(first, b"closed")


def test_proxy_refuses_a_non_loopback_target() -> None:
    with pytest.raises(ValueError, match="loopback"):
        TcpProxy("10.1.2.3:80")


# --- the process harness -----------------------------------------------------------------------


@pytest.mark.slow
async def test_cluster_starts_publishes_reads_kills_and_restarts(make_mesh: MeshFactory) -> None:
    cluster: MeshCluster = await make_mesh([A, B], [("orders/*", [A, B])], proxied=[B])
    text = cluster.config_path.read_text()
    # Peers reach B through its proxy; B itself listens on its own port.
    assert cluster.advertised(B) == cluster.proxy(B).address in text
    assert cluster.address(B) not in text and cluster.address(A) in text
    assert "max_payload" not in text and "shutdown_grace: 5s" in text

    # Publishing and reading within one region, through the Producer and the ledger.
    ledger = Ledger()
    events = [make_event(f"h-{i}", "billing/x", key=f"k{i % 3}") for i in range(200)]
    await Producer(cluster, ledger, A, events, batch_size=40).run()
    assert len(ledger.acked) == 200
    assert all(rec.route == (A,) for rec in ledger.acked.values())
    await ledger.verify(cluster, timeout=20, settle=0.3)

    # kill -9 finds the broker by its pid file, and both processes are gone after it.
    gateway_pid = cluster.process(A).pid
    broker_pid = cluster.broker_pid(A)
    assert broker_pid is not None and cluster.pid_file(A) is not None
    await cluster.kill9(A, broker_too=True)
    assert not _pid_alive(gateway_pid) and not _pid_alive(broker_pid)
    # Without broker_too the broker still goes with its gateway (it is told by the kernel).
    b_broker = cluster.broker_pid(B)
    await cluster.kill9(B, broker_too=False)
    assert b_broker is not None and not _pid_alive(b_broker)

    await asyncio.gather(cluster.restart(A), cluster.restart(B))
    assert cluster.broker_pid(A) not in (None, broker_pid)
    # The data survived, and the channel of the test reconnected by itself.
    stored = await read_region(cluster, A, "billing/>", expect=200)
    assert [e.id for e in stored] == [e.id for e in events]
    resp = await cluster.stub(A).Publish(gateway_pb2.PublishRequest(events=[make_event("h-0", "billing/x")]))
    assert resp.results[0].outcome == DUP
    status = await cluster.status(A)
    assert status.region == A

    assert await cluster.stop(A) == 0
    assert "gateway stopped" in cluster.logs(A)
    await eventually(lambda: cluster.broker_pid(A) is None, 10, what="A's broker to exit")

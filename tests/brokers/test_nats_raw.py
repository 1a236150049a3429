"""The NATS adapter's raw paths: its protocol reader, fetch_raw/ack_raw and append_raw."""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client

from meshgate.brokers import Broker, DurableConsumer, EmbeddedNats, NatsBroker, RawBatch, StartAt, header_lines
from meshgate.brokers._base import AppendResult, SequencedLog
from meshgate.brokers._codec import _header_lines_problem, _plain_lines, check_header_lines
from meshgate.brokers.nats import _broker as nats_broker_module
from meshgate.brokers.nats import _consumer as nats_consumer
from meshgate.brokers.nats._parser import FastParser, _AckRun, install
from meshgate.brokers.nats._pull import FULL, PullSubscription
from meshgate.brokers.nats._wire import split_header_block
from meshgate.config import NatsSettings
from tests._servers import make_nats_broker
from tests.brokers._contract import make_event, read_events, sequences

BOUND = 10.0


class _FakeClient:
    """What FastParser calls on a nats-py client, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.stats = {"in_msgs": 0}

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, hdr: bytes | None) -> None:
        self.calls.append(("msg", sid, subject, reply, data, hdr))

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_err(self, err: str) -> None:
        self.calls.append(("err", err))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.calls.append(("info", info))


async def test_parser_splits_raw_and_ordinary_messages_across_reads() -> None:
    nc = _FakeClient()
    parser = FastParser(nc)  # type: ignore[arg-type]
    raw: list[tuple[bytes, bytes, bytes | None, bytes]] = []
    parser.raw[7] = lambda *m: raw.append(m)
    wire = (
        b'INFO {"max_payload":1048576}\r\n'
        b"PING\r\n"
        b"HMSG in.1 7 $JS.ACK.x 12 17\r\nNATS/1.0\r\n\r\nhello\r\n"
        b"MSG other 3 5\r\nworld\r\n"
        b"MSG in.2 7 reply.2 0\r\n\r\n"
        b"HMSG in.3 7 16 16\r\nNATS/1.0 404\r\n\r\n\r\n"
        b"+OK\r\nPONG\r\n-ERR 'Stale Connection'\r\n"
    )
    # Fed in pieces that cut control lines, headers and payloads anywhere.
    for i in range(0, len(wire), 7):
        await parser.parse(wire[i : i + 7])
    assert raw == [
        (b"in.1", b"$JS.ACK.x", b"NATS/1.0\r\n\r\n", b"hello"),
        (b"in.2", b"reply.2", None, b""),
        (b"in.3", b"", b"NATS/1.0 404\r\n\r\n", b""),
    ]
    assert nc.calls == [
        ("info", {"max_payload": 1048576}),
        ("ping",),
        ("msg", 3, b"other", b"", b"world", None),
        ("pong",),
        ("err", "'stale connection'"),
    ]
    assert nc.stats["in_msgs"] == 3
    assert parser.buf == b""


async def test_parser_reads_runs_of_a_subscriptions_deliveries_in_order_with_every_other_frame() -> None:
    # A subscription with a run handler (a pull's inbox) gets its deliveries with a reply a run
    # at a time; a status (no reply), a message without headers, another subscription's frame
    # and the protocol's own operations go their usual ways, in the order they came, whatever
    # the reads cut.
    nc = _FakeClient()
    parser = FastParser(nc)  # type: ignore[arg-type]
    order: list[tuple[Any, ...]] = []
    runs: list[int] = []
    parser.raw[7] = lambda *m: order.append(("one", *m))

    def on_run(run: list[tuple[bytes, bytes, bytes | None, bytes]]) -> None:
        runs.append(len(run))
        order.extend(("run", *m) for m in run)

    parser.runs[7] = on_run

    def delivery(n: int, sid: int = 7) -> bytes:
        hdr = b"NATS/1.0\r\nNats-Msg-Id: e%d\r\n\r\n" % n
        data = b"payload %d" % n
        return b"HMSG in.%d %d $JS.ACK.S.C.1.%d.%d.0.0 %d %d\r\n%s%s\r\n" % (
            n,
            sid,
            n,
            n,
            len(hdr),
            len(hdr) + len(data),
            hdr,
            data,
        )

    status = b"HMSG in.9 7 16 16\r\nNATS/1.0 408\r\n\r\n\r\n"
    wire = b"".join(
        [
            delivery(1),
            delivery(2),
            delivery(3),
            status,
            delivery(4),
            b"MSG in.5 7 reply.5 2\r\nhi\r\n",  # no headers: a run of one, started by the parser
            delivery(6, sid=3),  # another subscription's
            delivery(7),
            b"PING\r\n",
            delivery(8),
            delivery(9),
        ]
    )
    want = [
        ("run", b"in.1", b"$JS.ACK.S.C.1.1.1.0.0", b"NATS/1.0\r\nNats-Msg-Id: e1\r\n\r\n", b"payload 1"),
        ("run", b"in.2", b"$JS.ACK.S.C.1.2.2.0.0", b"NATS/1.0\r\nNats-Msg-Id: e2\r\n\r\n", b"payload 2"),
        ("run", b"in.3", b"$JS.ACK.S.C.1.3.3.0.0", b"NATS/1.0\r\nNats-Msg-Id: e3\r\n\r\n", b"payload 3"),
        ("one", b"in.9", b"", b"NATS/1.0 408\r\n\r\n", b""),
        ("run", b"in.4", b"$JS.ACK.S.C.1.4.4.0.0", b"NATS/1.0\r\nNats-Msg-Id: e4\r\n\r\n", b"payload 4"),
        ("run", b"in.5", b"reply.5", None, b"hi"),
        ("run", b"in.7", b"$JS.ACK.S.C.1.7.7.0.0", b"NATS/1.0\r\nNats-Msg-Id: e7\r\n\r\n", b"payload 7"),
        ("run", b"in.8", b"$JS.ACK.S.C.1.8.8.0.0", b"NATS/1.0\r\nNats-Msg-Id: e8\r\n\r\n", b"payload 8"),
        ("run", b"in.9", b"$JS.ACK.S.C.1.9.9.0.0", b"NATS/1.0\r\nNats-Msg-Id: e9\r\n\r\n", b"payload 9"),
    ]
    for step in (len(wire), 11, 1):
        order.clear()
        runs.clear()
        nc.calls.clear()
        nc.stats["in_msgs"] = 0
        for i in range(0, len(wire), step):
            await parser.parse(wire[i : i + step])
        assert order == want, step
        assert nc.calls == [
            ("msg", 3, b"in.6", b"$JS.ACK.S.C.1.6.6.0.0", b"payload 6", b"NATS/1.0\r\nNats-Msg-Id: e6\r\n\r\n"),
            ("ping",),
        ]
        assert nc.stats["in_msgs"] == 9
        assert parser.buf == b""
    # Read whole, the deliveries between other frames come as runs, not one by one.
    order.clear()
    runs.clear()
    await parser.parse(wire)
    assert runs == [3, 1, 1, 1, 2]


def test_plain_acks_reads_ack_subjects_without_a_domain_only() -> None:
    plain = [b"$JS.ACK.S.mg-link-b@1.1.%d.%d.17651422201234%d.%d" % (s, s - 10, s, 100 - s) for s in (11, 12, 13)]
    assert nats_consumer._plain_acks(plain) == (
        [11, 12, 13],
        [1, 2, 3],
        [1765142220123411, 1765142220123412, 1765142220123413],
        87,
    )
    domain = b"$JS.ACK.hub.ACCHASH.S.C.1.14.4.1765142220123414.86.token"
    for replies in (
        [],
        [*plain, domain],  # a domain: the per-delivery path reads it
        [plain[0], b"$JS.ACK.S.C.1.12.2.17651422201234"],  # a token short
        # One short and one a token long: the count of tokens alone would pass.
        [b"$JS.ACK.S.C.1.12.2.17651422201234", b"$JS.ACK.S.C.1.13.3.17651422201234.8.9", plain[2]],
        [plain[0], b"$JS.ACK.S.C.1.+12.2.17651422201234.8"],
        [plain[0], b"$JS.ACK.S.C.1.1_2.2.17651422201234.8"],
        [plain[0], b"$JS.ACK.S.C.1..2.17651422201234.8"],
        [plain[0], b"$JS.ACK.S.C.1.12.2.17651422201234. 8"],
        [plain[0], b"$JS.NAK.S.C.1.12.2.17651422201234.8"],
    ):
        assert nats_consumer._plain_acks(replies) is None, replies


async def test_parser_refuses_garbage_and_survives_a_failing_handler() -> None:
    parser = FastParser(_FakeClient())  # type: ignore[arg-type]

    def boom(*_m: object) -> None:
        raise RuntimeError("handler bug")

    parser.raw[1] = boom
    await parser.parse(b"MSG a 1 2\r\nok\r\n")  # logged, not raised: the reader goes on
    with pytest.raises(nats.errors.ProtocolError):
        await parser.parse(b"WHAT is this\r\n")
    # A size that is not a number, in a frame the parser reads and in a run's second frame.
    parser.runs[1] = lambda run: None
    for wire in (b"MSG a 1 x\r\nok\r\n", b"HMSG a 1 r 12 14\r\nNATS/1.0\r\n\r\nok\r\nHMSG a 1 r 12 x\r\n"):
        parser.reset()
        with pytest.raises(nats.errors.ProtocolError):
            await parser.parse(wire)


async def test_parser_reads_runs_of_plain_acks_in_order_with_every_other_frame() -> None:
    # The PubAck inbox's plain acks go to the run handler, a run at a time; every other frame of
    # the inbox (a duplicate, a domain, an error, a status, a size that does not fit) goes to
    # its raw handler, in the order the frames came, whatever the reads cut.
    nc = _FakeClient()
    parser = FastParser(nc)  # type: ignore[arg-type]
    head = b'{"stream":"S","seq":'
    order: list[tuple[str, bytes, bytes]] = []
    parser.raw[9] = lambda subject, reply, hdr, data: order.append(("raw", subject, data))
    parser.acks = _AckRun(b"_INBOX.ab.", 9, head, lambda run: order.extend(("ack", t, s) for t, s in run))

    def ack(token: int, payload: bytes) -> bytes:
        return b"MSG _INBOX.ab.%d 9 %d\r\n%s\r\n" % (token, len(payload), payload)

    duplicate = head + b'7,"duplicate":true}'
    status = b"NATS/1.0 503 No Responders\r\n\r\n"
    failed = b'{"error":{"code":503,"err_code":10077,"description":"maximum bytes exceeded"},"stream":"S","seq":0}'
    wire = b"".join(
        [
            ack(1, head + b"101}"),
            ack(2, head + b"102}"),
            ack(3, duplicate),
            ack(4, head + b"104}"),
            b"PING\r\n",
            ack(5, failed),
            ack(6, head + b"0}"),  # a sequence of 0 is no ack: the raw handler's parser says so
            ack(7, head + b"107}\r\nxyz"),  # a payload that only starts like a plain ack
            b"HMSG _INBOX.ab.8 9 %d %d\r\n%s\r\n" % (len(status), len(status), status),
            ack(9, head + b"109}"),
            ack(10, head + b"110}"),
            b"MSG other 3 5\r\nworld\r\n",
        ]
    )
    for step in (len(wire), 1, 7, 50):
        order.clear()
        nc.calls.clear()
        nc.stats["in_msgs"] = 0
        for i in range(0, len(wire), step):
            await parser.parse(wire[i : i + step])
        assert parser.buf == b""
        assert order == [
            ("ack", b"1", b"101"),
            ("ack", b"2", b"102"),
            ("raw", b"_INBOX.ab.3", duplicate),
            ("ack", b"4", b"104"),
            ("raw", b"_INBOX.ab.5", failed),
            ("raw", b"_INBOX.ab.6", head + b"0}"),
            ("raw", b"_INBOX.ab.7", head + b"107}\r\nxyz"),
            ("raw", b"_INBOX.ab.8", b""),  # (its header block: the status)
            ("ack", b"9", b"109"),
            ("ack", b"10", b"110"),
        ], step
        assert nc.calls == [("ping",), ("msg", 3, b"other", b"", b"world", None)], step
        assert nc.stats["in_msgs"] == 10, step


def test_split_header_block_takes_the_id_and_drops_nats_headers() -> None:
    ev = make_event("orders/created", "id with space")
    block = b"NATS/1.0\r\nNats-Msg-Id: id%20with%20space\r\n" + header_lines(ev) + b"\r\n"
    assert split_header_block(block) == ("id with space", header_lines(ev))
    # Written by someone else: the id comes from ce-id, Nats-* lines are left out.
    foreign = b"NATS/1.0\r\nX-Other: 1\r\nNats-Expected-Stream: S\r\nce-id: abc\r\n\r\n"
    assert split_header_block(foreign) == ("abc", b"X-Other: 1\r\nce-id: abc\r\n")


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (b"ce-id: a\r\n", None),
        (b"ce-id: a\r\nNats-Rollup: all\r\n", "Nats-"),
        (b"ce-id: a\r\nnATS-ttl: 1\r\n", "Nats-"),
        (b"MG-Origin-Seq: 5\r\n", "mg-origin-seq"),
        (b"mg-origin-stream: p/1\r\n", "mg-origin-stream"),
        (b"ce-id: a\r\n\r\nce-x: b\r\n", "empty line"),
        (b"ce-id: a\nce-x: b\r\n", "line break"),
        (b"ce-id: a", "CRLF"),
        (b"no colon\r\n", "name: value"),
    ],
)
def test_check_header_lines(lines: bytes, problem: str | None) -> None:
    got = check_header_lines(lines)
    assert (got is None) if problem is None else (got is not None and problem in got), got


def test_check_header_lines_fast_path_accepts_only_what_the_tests_accept() -> None:
    # The fast path must never pass what the tests one by one refuse (nor change a
    # reason): random blocks built from the pieces each test looks at give the same answer.
    pieces = [
        b"ce-id: a",
        b"x: 1",
        b"Nats-Rollup: all",
        b"nats-",
        b"NaTs-TTL: 1",
        b"mg-origin-seq: 5",
        b"MG-ORIGIN-STREAM: p",
        b"mg-origin-seq",
        b"mg-origin-sequel: 1",
        b"no colon",
        b": empty name",
        b"a: b: c",
        b"\r\n",
        b"\r",
        b"\n",
        b"",
    ]
    rng = random.Random(7)
    accepted = 0
    for _ in range(20_000):
        lines = b"".join(
            rng.choice(pieces) + (b"\r\n" if rng.random() < 0.8 else b"") for _ in range(rng.randint(1, 5))
        )
        got = check_header_lines(lines)
        assert got == _header_lines_problem(lines), lines
        accepted += got is None
    assert accepted > 1000
    # The fast path is exactly the strict rule, which one regular expression states (the fast
    # path's until it took a quarter of a destination's CPU per event in scans of its own).
    strict = re.compile(rb"(?:(?!(?i:nats-|mg-origin-seq:|mg-origin-stream:))[^\r\n:]+:[^\r\n]*\r\n)+")
    tricky = [
        *pieces,
        b":",
        b"::",
        b"NATS-x: 1",
        b"Mg-Origin-Seq: 1",
        b"mg-origin-stream:p1",
        b"mg-origin-seqs: 1",
        b"\r\r",
        b"\n\n",
    ]
    strict_passes = 0
    for _ in range(20_000):
        lines = b"".join(
            rng.choice(tricky) + (b"\r\n" if rng.random() < 0.8 else b"") for _ in range(rng.randint(1, 5))
        )
        assert _plain_lines(lines) == (strict.fullmatch(lines) is not None), lines
        strict_passes += _plain_lines(lines)
    assert strict_passes > 1000
    # Ordinary lines take the fast path; a control header never does.
    assert _plain_lines(b"ce-id: a\r\nmg-origin: x\r\nmg-route: x,y\r\n")
    assert not _plain_lines(b"ce-id: a\r\nnats-ttl: 1\r\n")
    # The fast path's pattern takes a CR inside a value; its count of CRs against LFs does not.
    assert not _plain_lines(b"ce-id: a\rb\r\n")
    assert not _plain_lines(b"ce-id: a\r\r\n")
    assert check_header_lines(b"a: b: c\r\nno colon\r\n") is None  # the count test's leniency is kept


async def _fetch_all(consumer: Any, count: int) -> RawBatch:
    got = RawBatch()
    async with asyncio.timeout(BOUND):
        while len(got) < count:
            part = await consumer.fetch_raw(100, timeout=0.5)
            for name in ("ids", "topics", "sequences", "headers", "data", "tokens"):
                getattr(got, name).extend(getattr(part, name))
    return got


async def test_raw_fetch_and_append_carry_the_stored_bytes(nats_server: EmbeddedNats, nats_broker: NatsBroker) -> None:
    events = [
        make_event("orders/created", f"r{i}", key=f"k{i}", origin="here", route=["here", "there"]) for i in range(5)
    ]
    events[1].extensions["tenant"] = "acme corp"
    other = make_event("orders/created", "elsewhere", origin="here", route=["here"])
    seqs = sequences(await nats_broker.append([*events[:3], other, *events[3:]]))
    consumer = await nats_broker.durable_consumer("link-there", origin="here", routed_to="there")
    raw = await _fetch_all(consumer, 5)
    assert raw.ids == [e.id for e in events]
    assert raw.sequences == [*seqs[:3], *seqs[4:]]
    assert raw.streams == []
    assert raw.headers == [header_lines(e) for e in events]
    assert raw.data == [e.data for e in events]
    await consumer.ack_raw(raw)
    assert await consumer.pending() == 0
    await consumer.close()

    # Written into another region's log (as a destination does): the same event, plus its
    # origin sequence; sent again, the same ids are duplicates.
    async with make_nats_broker(nats_server, settings=NatsSettings(stream="THERE", subject_prefix="there.")) as there:
        for duplicate in (False, True):
            results = await there.append_raw(
                ids=raw.ids, topics=raw.topics, headers=raw.headers, data=raw.data, origin_sequences=raw.sequences
            )
            assert [r.duplicate for r in sequences_of(results)] == [duplicate] * 5
        copies = await read_events(there, "orders/created", 5, start=StartAt(earliest=True))
    for ev, copy, seq in zip(events, copies, raw.sequences, strict=True):
        want = type(ev)()
        want.CopyFrom(ev)
        want.origin_sequence, want.sequence = seq, copy.sequence
        assert copy == want


async def test_a_pull_read_in_runs_is_full_once_its_deliveries_came_and_hands_them_out_in_order(
    nats_server: EmbeddedNats,
) -> None:
    # A real server's deliveries come in runs (FastParser.runs): the request ends FULL as soon
    # as they all came (not at its expiry), and take() hands them out in order, in parts too.
    nc = Client()
    parser = install(nc)
    assert parser is not None
    await nc.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="RUNS", subjects=["runs.>"])
        for i in range(40):
            await js.publish(f"runs.{i % 3}", b"%d" % i, headers={"Nats-Msg-Id": f"e{i}"})
        await js.add_consumer("RUNS", durable_name="C", ack_policy="all")
        puller = PullSubscription(nc, stream="RUNS", consumer="C")
        await puller.open()
        assert parser.runs, "the pull's inbox takes its deliveries in runs"
        await puller.request(40, expires=30.0)
        async with asyncio.timeout(BOUND):
            assert await puller.wait(BOUND) == FULL
        first = puller.take(15)
        rest = puller.take(100)
        assert [m[3] for m in first + rest] == [b"%d" % i for i in range(40)]
        assert puller.take(1) == []
        await puller.close()
        assert not parser.runs
    finally:
        await nc.close()


async def test_one_standing_pull_serves_the_fetches_each_taking_what_one_write_stored(
    nats_broker: NatsBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link's fetch: one pull request stands at the server across fetches (up to its batch or
    its expiry); each fetch hands out what landed, in order, as soon as nothing more is stored,
    without a request of its own."""
    consumer = await nats_broker.durable_consumer("link-there", origin="here", routed_to="there")
    host = nats_broker._consumer_host
    requests: list[dict[str, Any]] = []
    request = PullSubscription.request

    async def counted(self: PullSubscription, batch: int, **options: Any) -> None:
        requests.append({"batch": batch, **options})
        await request(self, batch, **options)

    monkeypatch.setattr(PullSubscription, "request", counted)
    started = asyncio.get_running_loop().time()
    assert len(await consumer.fetch_raw(100, timeout=0.3)) == 0
    assert asyncio.get_running_loop().time() - started >= 0.25  # it waited its time
    assert (await host.api.info(consumer.name)).num_waiting == 1  # the request stands
    got: list[str] = []
    for write in range(3):
        # Given far longer than the test waits for it: a fetch that waited for its batch, or for
        # its time, would fail here.
        waiting = asyncio.ensure_future(consumer.fetch_raw(100, timeout=10 * BOUND))
        events = [
            make_event("orders/created", f"w{write}-{i}", origin="here", route=["here", "there"]) for i in range(5)
        ]
        sequences(await nats_broker.append(events))
        raw = await asyncio.wait_for(waiting, BOUND)
        assert 1 <= len(raw) <= 5 and raw.ids == [e.id for e in events[: len(raw)]]
        got += raw.ids
        if len(raw) < 5:
            got += (await _fetch_all(consumer, 5 - len(raw))).ids
        await consumer.ack_raw(raw)
    assert got == [f"w{write}-{i}" for write in range(3) for i in range(5)]
    # For two batches: in a backlog the next lands while the link sends this one. Within the
    # connection's byte budget (the only consumer on it: all of it).
    assert requests == [
        {
            "batch": 200,
            "expires": nats_consumer.STANDING_EXPIRES_SECONDS,
            "no_wait": False,
            "max_bytes": nats_broker_module._CONNECTION_PULL_BYTES,
        }
    ]
    assert await consumer.pending() == 0
    await consumer.close()


async def test_a_standing_pull_is_made_again_once_it_ended(
    nats_broker: NatsBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full (its two batches delivered) or expired, the request is replaced at the next fetch,
    before that fetch hands out what the old one delivered."""
    consumer = await nats_broker.durable_consumer("link-full", origin="here", routed_to="there")
    events = [make_event("orders/created", f"f{i}", origin="here", route=["here", "there"]) for i in range(7)]
    sequences(await nats_broker.append(events))
    requests: list[int] = []
    request = PullSubscription.request

    async def counted(self: PullSubscription, batch: int, **options: Any) -> None:
        requests.append(batch)
        await request(self, batch, **options)

    monkeypatch.setattr(PullSubscription, "request", counted)
    first = await consumer.fetch_raw(3, timeout=BOUND)  # a request for 6: full at once
    assert first.ids == ["f0", "f1", "f2"]
    second = await consumer.fetch_raw(3, timeout=BOUND)
    # Its events were delivered already; the next request went out before they were handed out
    # (or, had the first request filled before the first fetch returned, then).
    assert second.ids == ["f3", "f4", "f5"] and requests == [6, 6]
    third = await consumer.fetch_raw(3, timeout=BOUND)
    assert third.ids == ["f6"]  # one stored, none more: handed out, the request left standing
    assert requests == [6, 6]
    for batch in (first, second, third):
        await consumer.ack_raw(batch)
    assert await consumer.pending() == 0
    await consumer.close()


def sequences_of(results: list[Any]) -> list[Any]:
    assert all(not isinstance(r, Exception) for r in results), results
    return results


async def test_default_raw_paths_decode_and_encode(nats_broker: NatsBroker) -> None:
    # The base class's fetch_raw/append_raw (what an adapter without raw paths gets) agree with NATS's own.
    events = [make_event("orders/created", f"d{i}") for i in range(3)]
    await nats_broker.append(events)
    consumer = await nats_broker.durable_consumer("default-raw")
    async with asyncio.timeout(BOUND):
        raw = RawBatch()
        while len(raw) < 3:
            part = await DurableConsumer.fetch_raw(consumer, 10, timeout=0.5)
            raw.ids.extend(part.ids)
            raw.headers.extend(part.headers)
            raw.data.extend(part.data)
            raw.sequences.extend(part.sequences)
            raw.tokens.extend(part.tokens)
    assert raw.headers == [header_lines(e) for e in events]
    await consumer.close()
    results = await Broker.append_raw(
        nats_broker,
        ids=["x0", "x1", "x2"],
        topics=["orders/default"] * 3,
        headers=raw.headers,
        data=raw.data,
        origin_sequences=raw.sequences,
        origin_streams=["p/0", "p/1", "p/2"],
    )
    sequences_of(results)
    copies = await read_events(nats_broker, "orders/default", 3, start=StartAt(earliest=True))
    assert [(c.id, c.origin_sequence, c.origin_stream, c.data) for c in copies] == [
        (f"x{i}", raw.sequences[i], f"p/{i}", events[i].data) for i in range(3)
    ]


def test_raw_batch_splits_by_encoded_size_in_order() -> None:
    batch = RawBatch(
        ids=[f"e{i}" for i in range(5)],
        topics=["orders/x"] * 5,
        sequences=[1, 2, 3, 4, 5],
        headers=[b"h: v\r\n" * 10] * 5,
        data=[b"d" * 200] * 5,
        tokens=list(range(5)),
    )
    assert batch.split(10_000) == [batch]
    parts = batch.split(1024 + 2 * 290)  # room for two events of about 280 bytes each
    assert [p.sequences for p in parts] == [[1, 2], [3, 4], [5]]
    assert [p.tokens for p in parts] == [[0, 1], [2, 3], [4]]
    # A single event larger than the limit still goes, alone.
    assert [len(p) for p in batch.split(10)] == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "public"])
async def test_raw_append_refuses_like_append_on_both_paths(
    nats_broker: NatsBroker, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    # Without nats-py's internals the raw append must check what the fast one checks.
    monkeypatch.setattr(nats_broker, "_fast_publish", fast)
    events = [make_event("orders/created", f"p{i}") for i in range(4)]
    events[2].data = b"x" * (nats_broker._max_payload + 1)
    results = await nats_broker.append_raw(
        ids=[events[0].id, "", events[2].id, events[3].id],
        topics=[e.topic for e in events],
        headers=[header_lines(e) for e in events],
        data=[e.data for e in events],
        origin_sequences=[1, 2, 3, 4],
    )
    assert [type(r).__name__ for r in results] == [
        "AppendResult",
        "EventRejectedError",
        "MessageTooLargeError",
        "AppendResult",
    ]
    copies = await read_events(nats_broker, "orders/created", 2, start=StartAt(earliest=True))
    assert [(c.id, c.origin_sequence) for c in copies] == [(events[0].id, 1), (events[3].id, 4)]


async def test_raw_append_of_one_known_origin_writes_what_each_event_alone_writes(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A destination that checked every event's origin says so (``origin=``): the adapter makes
    # the batch's header blocks and subjects at once. What it stores must be what the event by
    # event path stores: the same subjects, the same headers, the same duplicates on a resend.
    # One id needs escaping, and so takes the event by event path within the same call.
    events = [make_event("orders/created", f"e{i}", key=f"k{i}", origin="here", route=["there"]) for i in range(6)]
    ids = [e.id for e in events]
    headers = [header_lines(e) for e in events]
    streams = [f"p{i % 3}" for i in range(6)]
    stored: dict[str, list[tuple[str, dict[str, str]]]] = {}
    batched: list[bool] = []
    real_heads = NatsBroker._raw_heads

    def spy(self: NatsBroker, *args: Any, **kwargs: Any) -> Any:
        result = real_heads(self, *args, **kwargs)
        batched.append(result is not None)
        return result

    monkeypatch.setattr(NatsBroker, "_raw_heads", spy)
    for label, origin, stream in (("alone", "", "ALONE"), ("known", "here", "KNOWN")):
        settings = NatsSettings(stream=stream, subject_prefix=f"{stream.lower()}.")
        async with make_nats_broker(nats_server, settings=settings) as broker:
            for duplicate in (False, True):
                results = await broker.append_raw(
                    ids=ids,
                    topics=[e.topic for e in events],
                    headers=headers,
                    data=[e.data for e in events],
                    origin_sequences=list(range(11, 17)),
                    origin_streams=streams,
                    origin=origin,
                )
                assert [r.duplicate for r in sequences_of(results)] == [duplicate] * 6
        async with await nats.connect(nats_server.url) as nc:
            js = nc.jetstream()
            msgs = [await js.get_msg(stream, seq) for seq in range(1, 7)]
        prefix = f"{stream.lower()}."
        stored[label] = [(str(m.subject).removeprefix(prefix), dict(m.headers or {})) for m in msgs]
    assert stored["known"] == stored["alone"]
    # The batch path made the known origin's two writes; the path without an origin never asked it.
    assert batched == [True, True]
    assert stored["known"][4][0] == "here.1.orders.created"
    assert stored["known"][4][1]["mg-origin-stream"] == "p1"
    assert stored["known"][4][1]["mg-origin-seq"] == "15"

    # The fast path is taken for such a batch, and not when an id needs escaping.
    async with make_nats_broker(nats_server, settings=NatsSettings(stream="KNOWN", subject_prefix="known.")) as broker:
        topics, two = ["orders/created"] * 2, headers[:2]
        made = broker._raw_heads(
            "here", ids=ids[:2], topics=topics, headers=two, sequences=[1, 2], streams=["p0", "p1"]
        )
        assert made is not None
        assert (
            broker._raw_heads(
                "here", ids=["an id", ids[1]], topics=topics, headers=two, sequences=[1, 2], streams=["p0", "p1"]
            )
            is None
        )
        assert (
            broker._raw_heads(
                "here", ids=ids[:2], topics=topics, headers=two, sequences=[1, 2], streams=["orders/0", "p1"]
            )
            is None
        )


async def test_raw_fetch_of_a_whole_batch_at_once_takes_what_each_delivery_alone_takes(
    nats_broker: NatsBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch of deliveries that are all wanted, in Meshgate's own header form, is taken in
    # scans of them all; a reference consumer on the same log takes each alone. Batches mixing
    # in an event not routed to the destination, or an id that was escaped, fall back.
    events = [make_event("orders/created", f"all-{i}", key=f"k{i}", route=["there"]) for i in range(40)]
    events += [make_event("orders/created", "not-there", route=["here"])]
    events += [make_event("orders/paid", f"more-{i}", route=["here", "there"]) for i in range(20)]
    events += [make_event("orders/paid", "an id with spaces", route=["there"])]
    events += [make_event("orders/paid", f"last-{i}", route=["there"]) for i in range(20)]
    await nats_broker.append(events)
    fast = await nats_broker.durable_consumer("link-fast", origin="here", routed_to="there")
    each = await nats_broker.durable_consumer("link-each", origin="here", routed_to="there")
    taken: list[bool] = []
    real = type(fast)._take_plain

    def spy(self: Any, msgs: Any, batch: RawBatch) -> bool:
        if self is each:
            return False
        result = real(self, msgs, batch)
        taken.append(result)
        return result

    monkeypatch.setattr(type(fast), "_take_plain", spy)
    got: dict[str, list[RawBatch]] = {"fast": [], "each": []}
    for label, consumer in (("fast", fast), ("each", each)):
        async with asyncio.timeout(BOUND):
            # The skipped event is in no batch.
            while sum(len(p) for p in got[label]) < len(events) - 1:
                part = await consumer.fetch_raw(20, timeout=0.5)
                got[label].append(part)
                await consumer.ack_raw(part)
    for name in ("ids", "topics", "sequences", "headers", "data", "stored_ns", "streams"):
        flat = {label: [x for p in parts for x in getattr(p, name)] for label, parts in got.items()}
        assert flat["fast"] == flat["each"], name
    assert got["fast"][-1].pending == got["each"][-1].pending == 0
    assert [e.id for e in events if e.id != "not-there"] == [x for p in got["fast"] for x in p.ids]
    # Taken at once for the clean batches, not for those holding the skipped or the escaped event.
    assert True in taken and False in taken, taken
    for consumer in (fast, each):
        assert await consumer.pending() == 0
        await consumer.close()


async def test_recovery_scan_reads_the_origins_subjects_and_headers_only(
    nats_broker: NatsBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A destination's recovery scan reads only the origin's subjects, and of each event its
    # two position headers: what it finds must be what decoding every event of the log finds
    # (the one-stream default, SequencedLog's), and it must end when the origin's last event
    # lies far below the log's end (no event of the filter reaches that end).
    start = await nats_broker.log_position()
    events = [make_event("orders/a", "x-0", origin="there", origin_sequence=1)]
    events += [
        make_event("orders/b", f"y-{i}", origin="yonder", origin_sequence=i + 1, origin_stream="p1") for i in range(50)
    ]
    events += [
        make_event("orders/a", "x-1", origin="there", origin_sequence=7, origin_stream="orders/a 3"),
        make_event("orders/c", "x-2", origin="there", origin_sequence=8, origin_stream="p2"),
        make_event("orders/c", "h-1", origin="here"),
    ]
    events += [make_event("orders/d", f"z-{i}", origin="yonder", origin_sequence=100 + i) for i in range(2000)]
    await nats_broker.append(events)
    for position in (start, "1", "52"):
        got = await nats_broker.origin_sequences_after("there", position)
        assert got == await SequencedLog.origin_sequences_after(nats_broker, "there", position), position
    filters: list[str | None] = []
    real_open = NatsBroker._open_puller

    async def spy(self: NatsBroker, config: Any) -> Any:
        filters.append(config.filter_subject)
        return await real_open(self, config)

    monkeypatch.setattr(NatsBroker, "_open_puller", spy)
    found, end = await nats_broker.origin_sequences_after("there", start)
    assert filters == [nats_broker._layout.origin_filter("there")]
    assert found == {"": {1}, "orders/a 3": {7}, "p2": {8}}
    assert end == await nats_broker.log_position()
    assert await nats_broker.origin_sequences_after("nowhere", start) == ({}, end)


async def test_a_real_servers_acks_come_in_runs_and_a_duplicate_on_its_own(nats_broker: NatsBroker) -> None:
    # The run pattern is built from what nats-server sends: if its PubAck ever took another
    # shape, every ack would quietly go frame by frame again. Counted on a real server.
    runs: list[int] = []
    singles: list[bytes] = []
    on_acks, on_ack = nats_broker._on_acks, nats_broker._on_ack

    def counted_runs(run: list[tuple[bytes, bytes]]) -> None:
        runs.append(len(run))
        on_acks(run)

    def counted_single(subject: bytes, reply: bytes, hdr: bytes | None, data: bytes) -> None:
        singles.append(data)
        on_ack(subject, reply, hdr, data)

    parser = nats_broker._nc._ps  # type: ignore[union-attr]
    assert isinstance(parser, FastParser) and parser.acks is not None
    parser.acks.handler = counted_runs
    parser.raw = {sid: counted_single for sid in parser.raw}
    events = [make_event("orders/created", f"run-{i}") for i in range(300)]
    results = await nats_broker.append(events)
    assert [r.sequence for r in results if isinstance(r, AppendResult)] == list(range(1, 301))
    assert sum(runs) == 300 and not singles
    assert max(runs) > 1  # many to one call
    again = await nats_broker.append(events[:1])
    assert isinstance(again[0], AppendResult) and again[0].duplicate and again[0].sequence == 1
    assert sum(runs) == 300 and len(singles) == 1 and b'"duplicate"' in singles[0]

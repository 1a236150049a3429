"""The replication ingress's sorting: the whole-batch fast path decides as event by event does."""

from __future__ import annotations

import random
import uuid

from prometheus_client import CollectorRegistry

from meshgate.brokers._codec import check_header_lines, escape_header_value, plain_header_blocks, plain_values
from meshgate.gateway._classify import Classifier, ProcessedBatch
from meshgate.gateway._dedup import OriginState
from meshgate.gateway._metrics import GatewayMetrics
from meshgate.gateway._replication_peer import PeerCheck
from meshgate.v1 import replication_pb2

_FIELDS = ("ids", "seqs", "w_index", "w_ids", "w_topics", "w_headers", "w_data", "w_seqs", "w_streams", "last")


def _classifier() -> Classifier:
    metrics = GatewayMetrics(region="b", registry=CollectorRegistry())
    return Classifier(
        region="b", metrics=metrics, peers=PeerCheck(region="b", metrics=metrics, region_names=lambda: ["a", "b", "c"])
    )


def _lines(eid: str, *, route: str = "b", origin: str = "a") -> bytes:
    return (
        f"ce-id: {escape_header_value(eid)}\r\nce-source: bench\r\nce-type: t\r\nce-specversion: 1.0\r\n"
        f"mg-key: k\r\nmg-origin: {origin}\r\nmg-route: {route}\r\n"
    ).encode()


# Each turns one event into one that event by event is refused, a resend, or still written.
_MUTATIONS = [
    lambda e: e.update(lines=_lines(e["id"], origin="c")),
    lambda e: e.update(lines=e["lines"] + b"mg-origin: a\r\n"),
    lambda e: e.update(lines=e["lines"] + b"MG-Origin: a\r\n"),
    lambda e: e.update(lines=e["lines"] + b"x-note: mg-origin\r\n"),
    lambda e: e.update(lines=b"mg-origin: c\r\n" + e["lines"]),
    lambda e: e.update(lines=_lines(e["id"], route="c")),
    lambda e: e.update(lines=_lines(e["id"], route="c,b")),
    lambda e: e.update(lines=_lines(e["id"], route="c") + b"mg-route: b\r\n"),
    lambda e: e.update(lines=_lines(e["id"]) + b"mg-route: c\r\n"),
    lambda e: e.update(lines=_lines(e["id"]).replace(b"mg-route: b\r\n", b"")),
    lambda e: e.update(lines=_lines("other")),
    lambda e: e.update(id="id with space", lines=_lines("id with space")),
    lambda e: e.update(id=""),
    lambda e: e.update(lines=e["lines"] + b"Nats-Rollup: all\r\n"),
    lambda e: e.update(lines=e["lines"] + b"mg-origin-seq: 3\r\n"),
    lambda e: e.update(lines=e["lines"] + b"no colon\r\n"),
    lambda e: e.update(lines=e["lines"][:-2]),
    lambda e: e.update(lines=e["lines"] + b"\r\n"),
    lambda e: e.update(topic="orders.bad"),
    lambda e: e.update(seq=0),
    lambda e: e.update(seq=1),  # at or below what the stream handled: a resend
    lambda e: e.update(stream="p9"),
]


def _request(events: list[dict[str, object]], *, streams: bool) -> replication_pb2.ReplicateRequest:
    raw = replication_pb2.RawEvents()
    for e in events:
        raw.ids.append(str(e["id"]))
        raw.topics.append(str(e["topic"]))
        raw.sequences.append(int(str(e["seq"])))
        lines = e["lines"]
        assert isinstance(lines, bytes)
        raw.headers.append(lines)
        raw.data.append(b"payload")
        if streams:
            raw.streams.append(str(e["stream"]))
    return replication_pb2.ReplicateRequest(source_region="a", batch_id=1, raw=raw)


def _state(*, above: bool) -> OriginState:
    state = OriginState(origin="a")
    for name in ("", "p3", "p9"):
        state.stream(name).advance(10)
    if above:
        state.stream("p3").above.add(500)
    return state


def _same(a: ProcessedBatch, b: ProcessedBatch) -> None:
    for name in _FIELDS:
        assert getattr(a, name) == getattr(b, name), name
    assert a.duplicates == b.duplicates == 0
    assert a.refused == b.refused == []


def test_fast_path_decides_as_event_by_event() -> None:
    classifier = _classifier()
    rng = random.Random(17)
    taken = taken_merged = 0
    for round_ in range(600):
        n = rng.randint(1, 6)
        events: list[dict[str, object]] = []
        # Some batches hold two streams, as a source's merged partition batches do: runs of
        # each, in its own order.
        merged = round_ % 4 == 3
        next_seq = {"p3": 11, "p9": 11}
        for _ in range(n):
            eid = str(uuid.UUID(int=rng.getrandbits(128)))
            stream = rng.choice(("p3", "p9")) if merged else "p3"
            seq, next_seq[stream] = next_seq[stream], next_seq[stream] + 1
            events.append({"id": eid, "lines": _lines(eid), "topic": "orders/created", "seq": seq, "stream": stream})
        if round_ % 3:
            rng.choice(_MUTATIONS)(rng.choice(events))
        request = _request(events, streams=merged or bool(round_ % 2))
        plain = classifier._plain("a", _state(above=round_ % 5 == 0), request)
        slow = classifier._sort("a", _state(above=round_ % 5 == 0), request, peer_checked=False, invalid=None)
        if plain is None:
            continue
        taken += 1
        taken_merged += len(set(request.raw.streams)) > 1
        _same(plain, slow)
    # Clean batches (a third of the rounds, all but those with a stream that has events above) take it,
    # batches of two streams too.
    assert taken >= 150 and taken_merged >= 20, (taken, taken_merged)


def test_clean_batch_takes_the_fast_path_and_a_refusal_does_not() -> None:
    classifier = _classifier()
    ids = [str(uuid.uuid4()) for _ in range(50)]
    events: list[dict[str, object]] = [
        {"id": eid, "lines": _lines(eid), "topic": "orders/created", "seq": 11 + i, "stream": "p3"}
        for i, eid in enumerate(ids)
    ]
    request = _request(events, streams=True)
    batch = classifier.classify("a", _state(above=False), request, peer_checked=False)
    assert batch.w_index == list(range(50)) and batch.last == {"p3": 60}
    assert classifier._plain("a", _state(above=False), request) is not None
    events[7]["lines"] = _lines(ids[7], route="c")
    request = _request(events, streams=True)
    assert classifier._plain("a", _state(above=False), request) is None
    batch = classifier.classify("a", _state(above=False), request, peer_checked=False)
    assert [r.index for r in batch.refused] == [7] and len(batch.w_index) == 49


def test_plain_header_blocks_only_when_each_passes() -> None:
    pieces = [b"ce-id: a", b"x: 1", b"Nats-Rollup: all", b"mg-origin-seq: 5", b"no colon", b": e", b"", b"\r", b"\n"]
    rng = random.Random(3)
    plain = 0
    for _ in range(5000):
        blocks = [
            b"".join(rng.choice(pieces) + (b"\r\n" if rng.random() < 0.9 else b"") for _ in range(rng.randint(1, 3)))
            for _ in range(rng.randint(1, 4))
        ]
        # Stricter than each block alone may be (the caller then checks each); never more lenient.
        if plain_header_blocks(blocks):
            plain += 1
            assert all(check_header_lines(block) is None for block in blocks), blocks
    assert plain > 100


def test_plain_values_only_when_no_value_needs_escaping() -> None:
    alphabet = 'ab-_.:/%" \x00\x7f\té~!'
    rng = random.Random(5)
    for _ in range(5000):
        values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4))) for _ in range(rng.randint(1, 3))]
        assert plain_values(values) == all(escape_header_value(v) == v for v in values), values

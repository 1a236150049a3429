"""The Kafka adapter's pure parts: names and patterns, the id window, positions, error mapping."""

from __future__ import annotations

import random
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, cast

import aiokafka.errors as ke
import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from meshgate.brokers import BrokerError, BrokerUnavailableError, EventRejectedError, KafkaBroker, make_broker
from meshgate.brokers.kafka import KafkaMessageTooLargeError, KafkaNames, kafka_error, parse_stream, stream_of
from meshgate.brokers.kafka import _ids as ids_module
from meshgate.brokers.kafka._broker import (
    DEFAULT_FETCH_MAX_BYTES,
    DEFAULT_FETCH_MAX_WAIT,
    DEFAULT_MAX_WINDOW_IDS,
    DEFAULT_PARTITION_FETCH_BYTES,
)
from meshgate.brokers.kafka._follower import IdFollower
from meshgate.brokers.kafka._ids import ENTRY_BYTES, IdWindow
from meshgate.brokers.kafka._read import _decode_position, _encode_position
from meshgate.config import BrokerKind, KafkaSettings, RegionConfig


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("orders/created", ["mesh.orders.created"], ["mesh.orders.createdx", "mesh.orders", "other.orders.created"]),
        (
            "orders/*",
            ["mesh.orders.created", "mesh.orders.a-b_c"],
            ["mesh.orders.a.b", "mesh.orders", "mesh.ordersx.a"],
        ),
        ("orders/>", ["mesh.orders.a", "mesh.orders.a.b.c"], ["mesh.orders", "mesh.orders.", "mesh.orders..a"]),
        (">", ["mesh.a", "mesh.a.b"], ["mesh.", "mesh.__meshgate_checkpoints", "mesh.a b", "meshy.a"]),
        ("*/created", ["mesh.x.created"], ["mesh.x.y.created", "mesh.created"]),
    ],
)
def test_patterns_as_topic_regexes(pattern: str, matches: list[str], misses: list[str]) -> None:
    regex = KafkaNames("mesh.").regex(pattern)
    for topic in matches:
        assert regex.match(topic), topic
    for topic in misses:
        assert not regex.match(topic), topic


def test_prefix_is_literal_and_may_be_empty() -> None:
    dotted = KafkaNames("a.b.")
    assert dotted.regex(">").match("a.b.c") and not dotted.regex(">").match("aXb.c")
    bare = KafkaNames("")
    assert bare.kafka_topic("orders/created") == "orders.created"
    assert bare.mesh_topic("orders.created") == "orders/created"
    assert bare.is_mesh("orders.created") and not bare.is_mesh("__meshgate_checkpoints")
    assert bare.checkpoints == "__meshgate_checkpoints"


def test_invalid_pattern_refused() -> None:
    with pytest.raises(ValueError, match="pattern"):
        KafkaNames("mesh.").regex("orders/>/x")


def test_streams() -> None:
    assert stream_of("mesh.orders.created", 4) == "mesh.orders.created/4"
    assert parse_stream("mesh.orders.created/4") == TopicPartition("mesh.orders.created", 4)
    for bad in ("", "mesh.orders", "/3", "mesh.a/x", "mesh.a/-1"):
        with pytest.raises(ValueError, match="not a Kafka stream"):
            parse_stream(bad)


def test_id_window_remembers_within_the_window_only() -> None:
    window = IdWindow(window=10.0, max_ids=100)
    window.add("a", "t/0", 1, stored_at=1000.0)
    window.add("a", "t/1", 9, stored_at=1001.0)  # a second record of an id: the first is the original
    assert window.get("a", now=1005.0) == ("t/0", 1)
    assert window.get("a", now=1011.0) is None
    assert window.get("b", now=1005.0) is None
    window.prune(now=1011.0)
    assert len(window) == 0


def test_id_window_records_an_id_written_again_after_its_entry_went_stale() -> None:
    # Not pruned yet (pruning waits for the cap or the follower), the old entry must not hide
    # the new write: a retry of it within the window is a duplicate, not stored again.
    for add in ("add", "add_run"):
        window = IdWindow(window=10.0, max_ids=100)
        window.add("x", "t/0", 1, stored_at=1000.0)
        if add == "add":
            window.add("x", "t/1", 7, stored_at=1020.0)
        else:
            window.add_run(["x"], "t/1", 7, stored_at=1020.0)
        assert window.get("x", now=1021.0) == ("t/1", 7), add
        assert len(window) == 1


def test_id_window_is_bounded_oldest_first() -> None:
    window = IdWindow(window=3600.0, max_ids=3)
    now = time.time()
    for i in range(5):
        window.add(f"id-{i}", "t/0", i + 1, stored_at=now + i)
    assert len(window) == 3
    assert window.get("id-0", now=now) is None and window.get("id-1", now=now) is None
    assert window.get("id-4", now=now) == ("t/0", 5)


def test_id_window_past_its_cap_drops_a_tenth_at_once() -> None:
    # One entry dropped per add made every add past the cap walk the slots deleted before it
    # (quadratic in the window's size); a tenth at once keeps pruning a rare, single pass.
    window = IdWindow(window=3600.0, max_ids=100)
    now = time.time()
    window.add_run([f"id-{i}" for i in range(100)], "t/0", 1, stored_at=now)
    assert len(window) == 100
    window.add("id-100", "t/0", 101, stored_at=now)
    assert len(window) == 90
    assert window.get("id-10", now=now) is None and window.get("id-11", now=now) == ("t/0", 12)
    for i in range(101, 110):
        window.add(f"id-{i}", "t/0", i + 1, stored_at=now)
    assert len(window) == 99  # under the cap: nothing more dropped
    window.prune(now=now)
    assert len(window) == 99


def test_id_window_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="window"):
        IdWindow(window=0, max_ids=1)
    with pytest.raises(ValueError, match="max_ids"):
        IdWindow(window=1, max_ids=0)


def test_positions_round_trip_and_empty_is_the_beginning() -> None:
    assert _encode_position({}) == ""
    assert _encode_position({"b/0": 0}) == ""  # offset 0 is the beginning: left out
    position = _encode_position({"b/1": 7, "a/0": 3})
    assert position == '{"a/0":3,"b/1":7}'
    assert _decode_position(position) == {"a/0": 3, "b/1": 7}
    assert _decode_position("") == {}
    for bad in ("12", "[1]", '{"a/0": -1}', '{"a/0": "x"}', '{"a/0": true}', "{"):
        with pytest.raises(ValueError, match="not a Kafka region's position"):
            _decode_position(bad)


@pytest.mark.parametrize(
    ("error", "kind", "retriable"),
    [
        (ke.KafkaConnectionError("down"), BrokerUnavailableError, True),
        (ke.KafkaTimeoutError(), BrokerUnavailableError, True),
        (ke.RequestTimedOutError(), BrokerUnavailableError, True),
        (ke.NotLeaderForPartitionError(), BrokerUnavailableError, True),
        (ke.NotEnoughReplicasError(), BrokerUnavailableError, True),
        (ke.CommitFailedError("moved"), BrokerUnavailableError, True),
        (ke.MessageSizeTooLargeError(), EventRejectedError, False),
        (ke.TopicAuthorizationFailedError(), EventRejectedError, False),
        (ke.InvalidReplicationFactorError("3 > 1 brokers"), EventRejectedError, False),
        (OSError("connection reset"), BrokerUnavailableError, True),
        (ke.UnsupportedCodecError("zstd"), BrokerError, False),
    ],
)
def test_aiokafka_errors_become_broker_errors(error: Exception, kind: type[BrokerError], retriable: bool) -> None:
    mapped = kafka_error(error, "write to mesh.a/0")
    assert isinstance(mapped, kind)
    assert mapped.retriable is retriable
    assert str(mapped).startswith("write to mesh.a/0: ")
    assert type(error).__name__ in str(mapped)


def test_too_large_error_says_the_numbers() -> None:
    error = KafkaMessageTooLargeError(size=2000, data_size=1800, max_message_bytes=1024)
    assert not error.retriable
    assert "event of 2000 bytes" in str(error) and "1800 bytes of data" in str(error) and "1024 bytes" in str(error)


def test_broker_options_validated() -> None:
    settings = KafkaSettings()
    with pytest.raises(ValueError, match="idempotency_window_seconds"):
        KafkaBroker(bootstrap_servers=["k:9092"], settings=settings, idempotency_window_seconds=0)
    with pytest.raises(ValueError, match="partitions"):
        KafkaBroker(bootstrap_servers=["k:9092"], settings=KafkaSettings(partitions=0), idempotency_window_seconds=1)
    with pytest.raises(ValueError, match="max_message_bytes"):
        KafkaBroker(bootstrap_servers=["k:9092"], settings=settings, idempotency_window_seconds=1, max_message_bytes=10)


async def test_not_started_broker_says_so() -> None:
    broker = KafkaBroker(bootstrap_servers=["k:9092"], settings=KafkaSettings(), idempotency_window_seconds=60)
    assert await broker.append([]) == []  # an empty batch needs no broker
    with pytest.raises(BrokerError, match="not started") as info:
        await broker.log_position()
    assert info.value.retriable is False
    await broker.stop()  # never started: nothing to do, still safe
    assert broker.state.value == "new"


def test_id_window_keeps_streams_sequences_and_times_exactly() -> None:
    window = IdWindow(window=60.0, max_ids=10)
    largest = 2**63  # a Kafka offset is below 2**63, so offset + 1 is at most this
    window.add("far", "mesh.a.b/0", largest, stored_at=1_700_000_000.123)
    window.add("near", "mesh.a.b/1", 1, stored_at=1_700_000_000.5)
    window.add("other", "mesh.c/11", 42, stored_at=1_700_000_001.0)
    assert window.get("far", now=1_700_000_010.0) == ("mesh.a.b/0", largest)
    assert window.get("near", now=1_700_000_010.0) == ("mesh.a.b/1", 1)
    assert window.get("other", now=1_700_000_010.0) == ("mesh.c/11", 42)
    # Millisecond times: stored at .123, a window of 60 s ends at 60.123.
    assert window.get("far", now=1_700_000_060.12) is not None
    assert window.get("far", now=1_700_000_060.13) is None
    assert window.get("near", now=1_700_000_060.13) == ("mesh.a.b/1", 1)
    # The append path packs its run's time on its own.
    window.add_run(["run-a", "run-b"], "mesh.a.b/2", 5, stored_at=1_700_000_000.123)
    assert window.get("run-b", now=1_700_000_010.0) == ("mesh.a.b/2", 6)
    assert window.get("run-a", now=1_700_000_060.12) == ("mesh.a.b/2", 5)
    assert window.get("run-a", now=1_700_000_060.13) is None


def test_id_window_entry_is_compact() -> None:
    # The documented sizing (ENTRY_BYTES per id) holds for a full window of the default cap, and
    # the window keeps no Python object per id: no id string (a 36-character id alone is 85
    # bytes), no int (a 128-bit digest as an int is 44): a dict of digest ints took ~140 bytes.
    ids = [str(uuid.UUID(int=i)) for i in range(DEFAULT_MAX_WINDOW_IDS)]
    window = IdWindow(window=3600.0, max_ids=len(ids))
    now = time.time()
    tracemalloc.start()
    try:
        for n in range(0, len(ids), 500):
            window.add_run(ids[n : n + 500], f"mesh.orders/{n % 6}", n + 1, now)
        for n, event_id in enumerate(ids[:100]):
            window.add(event_id, "mesh.orders/0", n + 1, stored_at=now)  # all known: nothing added
        window.add_run(ids[:100], "mesh.orders/0", 1, now)
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(window) == len(ids)
    assert used / len(ids) <= ENTRY_BYTES <= 50
    refs = [sys.getrefcount(i) for i in ids[:100]]
    del window
    assert [sys.getrefcount(i) for i in ids[:100]] == refs


def test_id_window_tells_apart_ids_that_differ_anywhere() -> None:
    # Keys are digests: ids that share all but one character, or differ only in case or length,
    # are each their own entry, found where each was stored.
    base = "0123456789abcdef" + "0" * 20
    ids = [base, base.upper(), base + "0", base[:-1], "a" + base[1:], base[:-1] + "a", "é" + base[1:]]
    window = IdWindow(window=60.0, max_ids=100)
    for n, event_id in enumerate(ids, 1):
        window.add(event_id, "mesh.a.b/0", n, stored_at=time.time())
    assert len(window) == len(set(ids))
    assert [window.get(i) for i in ids] == [("mesh.a.b/0", n) for n in range(1, len(ids) + 1)]
    assert window.get("1" * 36) is None
    assert window.get("") is None
    # An append looks its ids up before it writes them: the run it adds then is found as such.
    fresh = [f"fresh-{n}" for n in range(5)]
    assert [window.get(i) for i in fresh[:3]] == [None] * 3
    window.add_run(fresh, "mesh.a.b/1", 10, stored_at=time.time())
    assert [window.get(i) for i in [*fresh, *ids[:1]]] == [
        *(("mesh.a.b/1", n) for n in range(10, 15)),
        ("mesh.a.b/0", 1),
    ]


def test_default_window_and_fetch_bounds() -> None:
    broker = KafkaBroker(bootstrap_servers=["k:9092"], settings=KafkaSettings(), idempotency_window_seconds=60)
    assert broker._ids.max_ids == DEFAULT_MAX_WINDOW_IDS
    assert (broker.fetch_max_bytes, broker.partition_fetch_bytes, broker.fetch_max_wait) == (
        DEFAULT_FETCH_MAX_BYTES,
        DEFAULT_PARTITION_FETCH_BYTES,
        DEFAULT_FETCH_MAX_WAIT,
    )
    sibling = broker.sibling()
    assert (sibling.fetch_max_bytes, sibling.partition_fetch_bytes, sibling._ids.max_ids) == (
        DEFAULT_FETCH_MAX_BYTES,
        DEFAULT_PARTITION_FETCH_BYTES,
        DEFAULT_MAX_WINDOW_IDS,
    )


def test_id_window_run_of_a_batch_is_added_like_one_by_one() -> None:
    runs, single = IdWindow(window=60.0, max_ids=4), IdWindow(window=60.0, max_ids=4)
    single.add("x", "t/0", 7, stored_at=1000.0)
    runs.add("x", "t/0", 7, stored_at=1000.0)
    runs.add_run(["a", "x", "", "b", "c"], "t/1", 10, stored_at=1001.0)
    for n, event_id in enumerate(["a", "x", "", "b", "c"]):
        single.add(event_id, "t/1", 10 + n, stored_at=1001.0)
    assert len(runs) == len(single) == 4  # "x" kept its first record, "" is no id
    for event_id in ("a", "x", "b", "c"):
        assert runs.get(event_id, now=1002.0) == single.get(event_id, now=1002.0)
    assert runs.get("b", now=1002.0) == ("t/1", 13)
    assert runs.get("x", now=1002.0) == ("t/0", 7)


class _WindowModel:
    """What an id window does, written plainly: an insertion-ordered dict of id -> record."""

    def __init__(self, *, window: float, max_ids: int, clock: Callable[[], float]) -> None:
        self.window, self.max_ids, self.clock = window, max_ids, clock
        self.entries: dict[str, tuple[str, int, int]] = {}

    def get(self, event_id: str, now: float) -> tuple[str, int] | None:
        entry = self.entries.get(event_id) if event_id else None
        if entry is None or entry[2] < (now - self.window) * 1000:
            return None
        return entry[0], entry[1]

    def put(self, event_id: str, stream: str, sequence: int, stored_at: float) -> None:
        # The first record of an id is kept; one older than the window before this write is
        # replaced where it stands (a dict keeps the key's place).
        if event_id and (event_id not in self.entries or self.get(event_id, stored_at) is None):
            self.entries[event_id] = (stream, sequence, min(max(0, int(stored_at * 1000)), 2**48 - 1))

    def add(self, event_id: str, stream: str, sequence: int, stored_at: float) -> None:
        self.put(event_id, stream, sequence, stored_at)
        if len(self.entries) > self.max_ids:
            self.prune(self.clock())

    def add_run(self, event_ids: list[str], stream: str, first_sequence: int, stored_at: float) -> None:
        for sequence, event_id in enumerate(event_ids, first_sequence):
            self.put(event_id, stream, sequence, stored_at)
        if len(self.entries) > self.max_ids:
            self.prune(self.clock())

    def prune(self, now: float) -> None:
        # Oldest first: past the cap down to 90 % of it, then while stale.
        over = len(self.entries) - (self.max_ids - self.max_ids // 10) if len(self.entries) > self.max_ids else 0
        for dropped, (event_id, entry) in enumerate(list(self.entries.items())):
            if dropped >= over and entry[2] >= (now - self.window) * 1000:
                break
            del self.entries[event_id]


@pytest.mark.parametrize(("max_ids", "pool", "seed"), [(5, 12, 1), (12, 40, 2), (60, 150, 3), (700, 1500, 4)])
def test_id_window_does_what_a_plain_dict_would(
    monkeypatch: pytest.MonkeyPatch, max_ids: int, pool: int, seed: int
) -> None:
    # Random gets, adds, runs (looked up first, as an append does, or not, as the follower's),
    # prunes, at times that go forward with jitter (partitions read out of time order) and
    # sometimes back, against the model; up to 1,500 ids in 1 to 64 buckets. The window's own
    # prunes past the cap read the clock: it is the test's.
    rng = random.Random(seed)
    clock = [1_700_000_000.0]
    monkeypatch.setattr(ids_module, "time", SimpleNamespace(time=lambda: clock[0]))
    window = IdWindow(window=30.0, max_ids=max_ids)
    model = _WindowModel(window=30.0, max_ids=max_ids, clock=lambda: clock[0])
    names = [f"id-{n}" for n in range(pool)] + [""]
    streams = [f"mesh.t{n}/{p}" for n in range(3) for p in range(2)]
    for step in range(4000):
        clock[0] += rng.choice((0.0, 0.001, 0.05, 0.5, 3.0))
        stored_at = clock[0] + rng.choice((0.0, -0.5, -2.0, -40.0, 0.25))
        op = rng.random()
        if op < 0.35:
            event_id, now = rng.choice(names), clock[0] + rng.choice((0.0, -5.0, 10.0, 31.0))
            assert window.get(event_id, now=now) == model.get(event_id, now), (step, event_id)
        elif op < 0.6:
            args = (rng.choice(names), rng.choice(streams), rng.randrange(1, 2**63), stored_at)
            window.add(*args)
            model.add(*args)
        elif op < 0.95:
            run = [rng.choice(names) for _ in range(rng.randrange(1, 3 * max_ids))]
            if rng.random() < 0.5:
                for event_id in run:
                    assert window.get(event_id, now=clock[0]) == model.get(event_id, clock[0])
            stream, first = rng.choice(streams), rng.randrange(1, 2**40)
            window.add_run(run, stream, first, stored_at)
            model.add_run(run, stream, first, stored_at)
        else:
            now = clock[0] + rng.choice((0.0, -20.0))
            window.prune(now=now)
            model.prune(now)
        assert len(window) == len(model.entries), step
    assert [window.get(n, now=clock[0]) for n in names] == [model.get(n, clock[0]) for n in names]


class _ChosenDigests:
    """Stands in for BLAKE2b: each id's digest is the one the test chose."""

    chosen: ClassVar[dict[str, bytes]] = {}

    def __init__(self, data: bytes, *, digest_size: int) -> None:
        self._digest = self.chosen[data.decode()][:digest_size]

    def digest(self) -> bytes:
        return self._digest


def test_id_window_finds_an_id_only_where_its_record_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    # The window's records lie one after another (a 16-byte digest, then 17 bytes: sequence,
    # stream index, time in ms); a digest whose bytes occur inside a record or across two is
    # not an entry of that id. Ids with such digests, chosen here, in a window of one bucket.
    monkeypatch.setattr(ids_module, "_blake2b", _ChosenDigests)
    stored_at = time.time()
    ms = int(stored_at * 1000)
    a, b = bytes(range(16)), bytes(range(100, 116))
    packed_a = ((ms << 88) | (0 << 64) | 7).to_bytes(17, "little")  # stream 0 ("mesh.t/0"), sequence 7
    inside = {"x": a[8:] + packed_a[:8], "y": packed_a[1:], "z": packed_a[9:] + b[:8]}
    monkeypatch.setattr(_ChosenDigests, "chosen", {"a": a, "b": b} | inside)
    window = IdWindow(window=60.0, max_ids=10)
    window.add("a", "mesh.t/0", 7, stored_at=stored_at)
    window.add_run(["b"], "mesh.t/1", 8, stored_at=stored_at)
    assert [window.get(i) for i in inside] == [None, None, None]
    window.add_run(["x", "y"], "mesh.t/2", 20, stored_at=stored_at)
    window.add("z", "mesh.t/3", 30, stored_at=stored_at)
    assert len(window) == 5
    assert [window.get(i) for i in ("a", "b", "x", "y", "z")] == [
        ("mesh.t/0", 7),
        ("mesh.t/1", 8),
        ("mesh.t/2", 20),
        ("mesh.t/2", 21),
        ("mesh.t/3", 30),
    ]
    window.prune(now=stored_at + 61)
    assert len(window) == 0 and [window.get(i) for i in inside] == [None, None, None]


def test_id_window_keeps_a_time_past_the_year_10000() -> None:
    # A record's timestamp is its producer's: one far in the future (2**62 ms) is kept as the
    # latest time a record holds, so the entry only leaves by the cap, as any future one.
    window = IdWindow(window=60.0, max_ids=10)
    window.add("future", "mesh.t/0", 1, stored_at=2**62 / 1000)
    window.add_run(["later"], "mesh.t/0", 2, stored_at=2**70 / 1000)
    window.prune()
    assert (window.get("future"), window.get("later"), len(window)) == (("mesh.t/0", 1), ("mesh.t/0", 2), 2)


def test_id_window_starts_afresh_past_its_stream_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # Entries point into a table of streams; past its size (2**24, 4 here) the window starts
    # afresh rather than grow the table: the add that found it full is the only entry left.
    monkeypatch.setattr(ids_module, "_STREAM_MASK", 3)
    window = IdWindow(window=60.0, max_ids=10)
    for n in range(4):
        window.add(f"id-{n}", f"mesh.t/{n}", n + 1, stored_at=time.time())
    window.add_run(["id-4"], "mesh.t/0", 5, stored_at=time.time())
    assert len(window) == 5
    window.add("late", "mesh.t/9", 9, stored_at=time.time())
    assert len(window) == 1
    assert [window.get(f"id-{n}") for n in range(5)] == [None] * 5
    assert window.get("late") == ("mesh.t/9", 9)
    window.add_run(["id-0", "late"], "mesh.t/8", 20, stored_at=time.time())
    assert (len(window), window.get("id-0"), window.get("late")) == (2, ("mesh.t/8", 20), ("mesh.t/9", 9))


def test_the_mesh_files_window_cap_reaches_the_broker(tmp_path: Path) -> None:
    region = RegionConfig(
        name="k", kind=BrokerKind.KAFKA, brokers=("k1:9092",), kafka=KafkaSettings(max_window_ids=1234)
    )
    broker = make_broker(region, idempotency_window_seconds=60, data_dir=tmp_path)
    assert isinstance(broker, KafkaBroker)
    assert broker._ids.max_ids == 1234
    assert broker.sibling()._ids.max_ids == 1234
    assert DEFAULT_MAX_WINDOW_IDS == KafkaSettings().max_window_ids == 200_000


class _SeekingConsumer:
    """Records the follower's seeks (the unit under test is the follower's range bookkeeping)."""

    def __init__(self) -> None:
        self.seeks: list[int] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)


def _records(tp: TopicPartition, first: int, end: int) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
    return {
        tp: [
            ConsumerRecord(
                tp.topic,
                tp.partition,
                o,
                int(time.time() * 1000),
                0,
                None,
                b"",
                None,
                0,
                0,
                [("ce_id", f"o{o}".encode())],
            )
            for o in range(first, end)
        ]
    }


def test_the_id_follower_passes_its_own_ranges_once_per_look_from_their_start_or_inside() -> None:
    tp = TopicPartition("mesh.orders", 0)
    window = IdWindow(window=3600.0, max_ids=1000)
    follower = IdFollower(
        make_consumer=lambda: cast(Any, None),
        list_partitions=lambda: cast(Any, None),
        window=window,
        probe=cast(Any, None),
        refresh_seconds=1.0,
        timeout=1.0,
    )
    consumer = _SeekingConsumer()
    follower._consumer = cast(Any, consumer)
    follower._positions = {tp: 0}
    follower.skip_own(tp, 0, 5)  # two calls' parts of one batch, acked one after the other
    follower.skip_own(tp, 5, 10)
    follower.skip_own(tp, 20, 30)  # someone else's 10-19 come first: kept for later
    follower._pass_own()  # a look: one seek, to the end of the batch
    assert (follower._positions[tp], consumer.seeks) == (10, [10])
    follower._take(_records(tp, 10, 20))  # read; the next look passes 20-29
    follower._pass_own()
    assert (follower._positions[tp], consumer.seeks) == (30, [10, 30])
    follower._take(_records(tp, 30, 35))  # a fetch that raced the ack of 30-39 ended inside it
    follower.skip_own(tp, 30, 40)
    follower._pass_own()
    assert (follower._positions[tp], consumer.seeks) == (40, [10, 30, 40])
    follower.skip_own(tp, 50, 60)  # acks of one partition out of order
    follower.skip_own(tp, 40, 50)
    follower._pass_own()
    assert (follower._positions[tp], consumer.seeks[-1]) == (60, 60)
    follower.skip_own(tp, 70, 80)  # behind someone else's 60-69
    follower._take(_records(tp, 60, 75))  # a fetch that ends inside the own range: on past it
    follower._pass_own()
    assert (follower._positions[tp], consumer.seeks[-1]) == (80, 80)
    assert len(consumer.seeks) == 5
    assert (follower.records_read, follower.records_skipped) == (30, 50)
    assert window.get("o12") is not None and window.get("o5") is None  # only what it read
    assert follower._own == {} and follower._own_count == 0

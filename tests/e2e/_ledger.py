"""The ledger of an end-to-end test: what was published, what was acked, and what each region holds.

``Ledger`` records every event a test sends (``sent``) and every ack it gets back. Only an
``ACCEPTED`` ack, or a ``DUPLICATE`` ack for an id this test sent (a retry), makes an event
*acked*; a ``REJECTED`` one does not. ``check(observed)`` is pure (unit-tested with hand-made
events) and returns the problems found in what each region holds:

- every acked event is in every region of its route exactly once (by id), with the topic, key,
  data, extensions, source and type it was published with, and ``origin`` = where it was acked;
- an event expected to be dead-lettered for a destination is not stored there;
- no event is in a region outside its route (for an acked event, the route of its ack; for one
  sent but never seen acked, the route stamped on it) and no region holds an id never sent;
- per ordering key (of one origin), the ids in each region come in the origin's order: the
  order of the origin's log, i.e. of the sequences in the acks. The acks themselves must agree:
  per key, ``ACCEPTED`` acks arrive with increasing sequences (acks of one PublishStream come
  back in send order), so the region order equals the order the events were acked in. A
  ``DUPLICATE`` ack of a retry carries the original (earlier) sequence and is exempt.

``verify(cluster)`` reads every region from the earliest (pattern ``>``, topics under
``meshgate/dlq/`` ignored), waits with bounded polling until every acked event arrived where it
must (or the timeout), lets the log settle so a late duplicate is seen too, and asserts
``check``. ``Producer`` publishes over PublishStream in batches, records into a ledger, and
after a broken stream resends what it did not see acked with the same ids.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from meshgate.v1 import event_pb2, gateway_pb2
from tests.gateway._helpers import read_all

if TYPE_CHECKING:
    from tests.e2e._mesh import MeshCluster

__all__ = ["DLQ_PREFIX", "AckRecord", "Ledger", "Producer", "make_event", "read_region"]

DLQ_PREFIX = "meshgate/dlq/"
_ACCEPTED = event_pb2.OUTCOME_ACCEPTED
_DUPLICATE = event_pb2.OUTCOME_DUPLICATE
_REJECTED = event_pb2.OUTCOME_REJECTED
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
_EXAMPLES = 5


def make_event(
    id: str,
    topic: str,
    *,
    key: str = "",
    data: bytes | None = None,
    extensions: Mapping[str, str] | None = None,
) -> event_pb2.Event:
    ev = event_pb2.Event(
        id=id,
        topic=topic,
        key=key,
        source="/tests/e2e",
        type="test.e2e",
        datacontenttype="application/json",
        data=data if data is not None else f'{{"id": "{id}"}}'.encode(),
    )
    if extensions:
        ev.extensions.update(extensions)
    return ev


@dataclass(frozen=True, slots=True)
class AckRecord:
    id: str
    origin: str
    topic: str
    key: str
    route: tuple[str, ...]
    sequence: int
    outcome: int
    # Position among every ack this ledger recorded (the order acks arrived in).
    order: int


def _examples(items: Iterable[object]) -> str:
    shown = list(itertools.islice(items, _EXAMPLES))
    return ", ".join(str(i) for i in shown)


class Ledger:
    def __init__(self) -> None:
        # id -> (origin, the event as sent: no origin, route or sequence)
        self.sent: dict[str, tuple[str, event_pb2.Event]] = {}
        self.acked: dict[str, AckRecord] = {}
        # id -> the last refusal (an id acked later is taken out)
        self.rejected: dict[str, event_pb2.EventResult] = {}
        # id -> destinations that must refuse it (it goes to the source's dead-letter topic)
        self.dead_letters: dict[str, set[str]] = {}
        # Inconsistencies seen while recording (e.g. an id ACCEPTED twice).
        self.problems: list[str] = []
        self._order = itertools.count()

    # --- recording ------------------------------------------------------------------------

    def record_sent(self, origin: str, event: event_pb2.Event) -> None:
        if not event.id:
            raise ValueError("ledger events need an id (the test's idempotency key)")
        known = self.sent.get(event.id)
        if known is not None and known[0] != origin:
            self.problems.append(f"id {event.id} sent from {known[0]} and from {origin}")
            return
        if known is None:
            copy = event_pb2.Event()
            copy.CopyFrom(event)
            self.sent[event.id] = (origin, copy)

    def record(
        self, origin: str, events: Sequence[event_pb2.Event], results: Sequence[event_pb2.EventResult]
    ) -> list[event_pb2.Event]:
        """Records one batch's acks (one result per event, in order); returns the events to
        retry (refused as UNAVAILABLE, or left without a result)."""
        retry: list[event_pb2.Event] = []
        if len(results) != len(events):
            self.problems.append(f"{origin}: a batch of {len(events)} events got {len(results)} results")
        for i, ev in enumerate(events):
            self.record_sent(origin, ev)
            if i >= len(results):
                retry.append(ev)
                continue
            r = results[i]
            if r.id != ev.id:
                self.problems.append(f"{origin}: result {i} of a batch is for id {r.id!r}, the event is {ev.id!r}")
            if r.outcome in (_ACCEPTED, _DUPLICATE):
                self._ack(origin, ev, r)
            else:
                self.rejected[ev.id] = r
                if r.outcome == _REJECTED and r.code == _UNAVAILABLE:
                    retry.append(ev)
        return retry

    def _ack(self, origin: str, ev: event_pb2.Event, r: event_pb2.EventResult) -> None:
        known = self.acked.get(ev.id)
        if known is not None:
            if r.outcome == _ACCEPTED:
                self.problems.append(
                    f"{origin}: id {ev.id} ACCEPTED again (first at sequence {known.sequence}, now {r.sequence}): "
                    "a retry was not deduplicated"
                )
            elif r.sequence != known.sequence:
                self.problems.append(
                    f"{origin}: DUPLICATE ack of id {ev.id} names sequence {r.sequence}, "
                    f"its first ack said {known.sequence}"
                )
            return
        self.rejected.pop(ev.id, None)
        self.acked[ev.id] = AckRecord(
            id=ev.id,
            origin=origin,
            topic=ev.topic,
            key=ev.key,
            route=tuple(r.route),
            sequence=r.sequence,
            outcome=r.outcome,
            order=next(self._order),
        )

    def expect_dead_letter(self, id: str, destination: str) -> None:
        """``destination`` refuses event ``id`` for good: it must not be stored there."""
        self.dead_letters.setdefault(id, set()).add(destination)

    def acked_from(self, origin: str) -> int:
        return sum(1 for rec in self.acked.values() if rec.origin == origin)

    def expected_in(self, region: str) -> set[str]:
        return {
            i for i, rec in self.acked.items() if region in rec.route and region not in self.dead_letters.get(i, ())
        }

    # --- checking --------------------------------------------------------------------------

    def check(self, observed: Mapping[str, Sequence[event_pb2.Event]]) -> list[str]:
        """The problems in what each region holds (``observed``: region -> events in log order)."""
        problems = list(self.problems)
        problems.extend(self._check_ack_order())
        for region, events in observed.items():
            problems.extend(self._check_region(region, events))
        # An acked event routed to a region the caller did not read is missing there.
        unread = sorted({r for rec in self.acked.values() for r in rec.route} - set(observed))
        problems.extend(f"region {r}: expected {len(self.expected_in(r))} events, region not read" for r in unread)
        return problems

    def _check_ack_order(self) -> list[str]:
        problems = []
        last: dict[tuple[str, str], AckRecord] = {}
        for rec in sorted(self.acked.values(), key=lambda r: r.order):
            if not rec.key or rec.outcome != _ACCEPTED:
                continue
            prev = last.get((rec.origin, rec.key))
            if prev is not None and rec.sequence <= prev.sequence:
                problems.append(
                    f"origin {rec.origin}: key {rec.key}: id {rec.id} was acked after id {prev.id} "
                    f"but stored before it (sequence {rec.sequence} <= {prev.sequence})"
                )
            last[(rec.origin, rec.key)] = rec
        return problems

    def _check_region(self, region: str, events: Sequence[event_pb2.Event]) -> list[str]:
        problems: list[str] = []
        counts = collections.Counter(e.id for e in events)
        present = set(counts)
        expected = self.expected_in(region)

        dups = [(i, n) for i, n in counts.items() if n > 1]
        if dups:
            problems.append(
                f"region {region}: {len(dups)} ids stored more than once "
                f"(e.g. {_examples(f'{i} x{n}' for i, n in sorted(dups))})"
            )
        missing = sorted(expected - present, key=lambda i: self.acked[i].order)
        if missing:
            problems.append(
                f"region {region}: {len(missing)} of {len(expected)} acked events routed here are missing "
                f"(holds {len(present & expected)} of them; e.g. {_examples(missing)})"
            )
        unknown = sorted(present - set(self.sent))
        if unknown:
            problems.append(f"region {region}: {len(unknown)} events this test never sent (e.g. {_examples(unknown)})")

        misrouted: list[str] = []
        mismatched: list[str] = []
        seen: set[str] = set()
        for e in events:
            if e.id in seen or e.id not in self.sent:
                continue
            seen.add(e.id)
            origin, sent = self.sent[e.id]
            rec = self.acked.get(e.id)
            route = rec.route if rec is not None else tuple(e.route)
            if region not in route:
                misrouted.append(f"{e.id} (route {','.join(route) or '-'})")
            elif region in self.dead_letters.get(e.id, ()):
                misrouted.append(f"{e.id} (refused here for good, must be dead-lettered at {origin})")
            diff = _differences(sent, origin, e)
            if rec is not None and tuple(e.route) != rec.route:
                diff.append(f"route {list(e.route)} != acked {list(rec.route)}")
            if diff:
                mismatched.append(f"{e.id}: {'; '.join(diff)}")
        if misrouted:
            problems.append(
                f"region {region}: {len(misrouted)} events not routed here are stored here "
                f"(e.g. {_examples(misrouted)})"
            )
        if mismatched:
            problems.append(
                f"region {region}: {len(mismatched)} events differ from what was published "
                f"(e.g. {_examples(mismatched)})"
            )
        problems.extend(self._check_key_order(region, events))
        return problems

    def _check_key_order(self, region: str, events: Sequence[event_pb2.Event]) -> list[str]:
        found: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
        seen: set[str] = set()
        for e in events:
            rec = self.acked.get(e.id)
            if rec is None or not rec.key or e.id in seen:
                continue
            seen.add(e.id)
            found[(rec.origin, rec.key)].append(e.id)
        want: dict[tuple[str, str], list[AckRecord]] = collections.defaultdict(list)
        for rec in self.acked.values():
            if rec.key and rec.id in seen:
                want[(rec.origin, rec.key)].append(rec)
        bad: list[str] = []
        for (origin, key), got in sorted(found.items()):
            expected = [r.id for r in sorted(want[(origin, key)], key=lambda r: r.sequence)]
            if got != expected:
                at = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
                bad.append(
                    f"key {key} from {origin}: position {at} of {len(got)} holds {got[at]}, expected {expected[at]} "
                    f"(found ...{got[max(0, at - 2) : at + 3]}, expected ...{expected[max(0, at - 2) : at + 3]})"
                )
        if bad:
            return [f"region {region}: {len(bad)} keys out of order: {'; '.join(bad[:3])}"]
        return []

    # --- against a running mesh ----------------------------------------------------------------

    async def verify(
        self, cluster: MeshCluster, *, timeout: float = 60.0, settle: float = 1.0, regions: Sequence[str] | None = None
    ) -> dict[str, list[event_pb2.Event]]:
        """Waits (bounded) until every acked event is in every region of its route, lets the logs
        settle for ``settle`` quiet seconds, then asserts ``check``. Returns what each region holds."""
        names = list(regions or cluster.regions)
        readers = {name: _RegionReader(cluster, name) for name in names}
        for r in readers.values():
            r.start()
        try:
            deadline = time.monotonic() + timeout
            complete = False
            while time.monotonic() < deadline:
                if all(self.expected_in(n) <= readers[n].ids() for n in names):
                    complete = True
                    break
                await asyncio.sleep(0.1)
            if complete:
                # Quiet for `settle` seconds: a late duplicate has the time to show up.
                settle_deadline = min(deadline, time.monotonic() + 4 * settle)
                while time.monotonic() < settle_deadline:
                    quiet = time.monotonic() - max(r.last_change for r in readers.values())
                    if quiet >= settle:
                        break
                    await asyncio.sleep(min(0.1, settle - quiet))
        finally:
            for r in readers.values():
                await r.stop()
        observed = {n: readers[n].events for n in names}
        problems = self.check(observed)
        if problems:
            summary = ", ".join(f"{n}: {len(observed[n])} events" for n in names)
            raise AssertionError(
                f"ledger: {len(self.acked)} acked events ({len(self.sent)} sent); regions hold {summary}"
                + ("" if complete else f"; not complete after {timeout:g} s")
                + "\n  "
                + "\n  ".join(problems)
            )
        return observed


def _differences(sent: event_pb2.Event, origin: str, got: event_pb2.Event) -> list[str]:
    diff = [
        f"{name} {getattr(got, name)!r} != sent {getattr(sent, name)!r}"
        for name in ("topic", "key", "source", "type", "datacontenttype")
        if getattr(sent, name) != getattr(got, name)
    ]
    if sent.data != got.data:
        diff.append(f"data of {len(got.data)} bytes differs from the {len(sent.data)} sent")
    if dict(sent.extensions) != dict(got.extensions):
        diff.append(f"extensions {dict(got.extensions)} != sent {dict(sent.extensions)}")
    if got.origin != origin:
        diff.append(f"origin {got.origin!r} != {origin!r}")
    return diff


class _RegionReader:
    """Reads a region's whole log (pattern ``>``, from the earliest) and keeps following it."""

    def __init__(self, cluster: MeshCluster, region: str, *, include_dlq: bool = False) -> None:
        self.cluster = cluster
        self.region = region
        self.include_dlq = include_dlq
        self.events: list[event_pb2.Event] = []
        self.last_change = time.monotonic()
        self._ids: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def ids(self) -> set[str]:
        return self._ids

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            # A fresh read from the earliest each attempt: a broken stream never leaves a gap.
            self.events, self._ids = [], set()
            self.last_change = time.monotonic()
            call = self.cluster.stub(self.region).Subscribe(
                gateway_pb2.SubscribeRequest(pattern=">", position=gateway_pb2.START_POSITION_EARLIEST, max_batch=1000)
            )
            try:
                async for resp in call:
                    for e in resp.events:
                        if not self.include_dlq and e.topic.startswith(DLQ_PREFIX):
                            continue
                        self.events.append(e)
                        self._ids.add(e.id)
                    self.last_change = time.monotonic()
            except grpc.aio.AioRpcError:
                pass
            finally:
                call.cancel()
            await asyncio.sleep(0.2)


async def read_region(
    cluster: MeshCluster, region: str, pattern: str = ">", *, expect: int | None = None, idle: float = 1.0
) -> list[event_pb2.Event]:
    """The events of ``pattern`` in a region, from the earliest; stops once ``expect`` arrived or
    the stream stays quiet for ``idle`` seconds (the stream itself never ends)."""
    return await read_all(cluster.stub(region), pattern, expect=expect, idle=idle, max_batch=1000)


class Producer:
    """Publishes ``events`` from ``origin`` over PublishStream in batches, recording into ``ledger``.

    At most ``max_inflight_batches`` batches wait for their ack; ``pace`` seconds between
    batches stretch the publishing over a fault. When the stream breaks (the gateway died) or an
    event is refused as UNAVAILABLE, what was not seen acked is sent again, first, with the same
    ids, once the gateway answers again; ``deadline`` bounds the whole run.
    """

    def __init__(
        self,
        cluster: MeshCluster,
        ledger: Ledger,
        origin: str,
        events: Sequence[event_pb2.Event],
        *,
        batch_size: int = 50,
        pace: float = 0.0,
        max_inflight_batches: int = 4,
        deadline: float = 90.0,
    ) -> None:
        self.cluster = cluster
        self.ledger = ledger
        self.origin = origin
        self.batch_size = batch_size
        self.pace = pace
        self.max_inflight_batches = max_inflight_batches
        self.deadline = deadline
        self.total = len(events)
        self.stream_failures: list[str] = []
        self.resent = 0
        self._pending: collections.deque[list[event_pb2.Event]] = collections.deque(
            list(events[i : i + batch_size]) for i in range(0, len(events), batch_size)
        )
        self._batch_ids = itertools.count(1)

    @property
    def acked(self) -> int:
        return self.ledger.acked_from(self.origin)

    async def run(self) -> None:
        end = time.monotonic() + self.deadline
        while self._pending:
            if time.monotonic() > end:
                left = sum(len(b) for b in self._pending)
                raise AssertionError(
                    f"producer {self.origin}: {left} events still unacked after {self.deadline:g} s; "
                    f"stream failures: {self.stream_failures[-3:]}"
                )
            try:
                await self._stream_once()
            except grpc.aio.AioRpcError as exc:
                self.stream_failures.append(f"{exc.code().name}: {exc.details()}")
                await asyncio.sleep(0.2)  # back off before reconnecting (bounded by the deadline)

    async def _stream_once(self) -> None:
        inflight: collections.deque[tuple[int, list[event_pb2.Event]]] = collections.deque()
        room = asyncio.Semaphore(self.max_inflight_batches)
        retry: list[event_pb2.Event] = []
        # Set when the call is over: gRPC may pull from the request iterator once more after
        # that, and a batch taken then would be lost.
        closed = False

        async def requests() -> AsyncIterator[gateway_pb2.PublishRequest]:
            while True:
                await room.acquire()
                if closed or not self._pending:
                    room.release()
                    return
                batch = self._pending.popleft()
                batch_id = next(self._batch_ids)
                inflight.append((batch_id, batch))  # before the yield: a cut stream resends it
                for ev in batch:
                    self.ledger.record_sent(self.origin, ev)
                yield gateway_pb2.PublishRequest(batch_id=batch_id, events=batch)
                if self.pace:
                    await asyncio.sleep(self.pace)

        call = self.cluster.stub(self.origin).PublishStream(requests())
        try:
            async for resp in call:
                if not inflight:
                    self.ledger.problems.append(f"{self.origin}: an ack for batch {resp.batch_id} nobody sent")
                    continue
                batch_id, batch = inflight.popleft()
                if resp.batch_id != batch_id:
                    self.ledger.problems.append(
                        f"{self.origin}: ack for batch {resp.batch_id} came when batch {batch_id} was next"
                    )
                retry.extend(self.ledger.record(self.origin, batch, resp.results))
                room.release()
        finally:
            closed = True
            call.cancel()
            self._requeue([ev for _, b in inflight for ev in b] + retry)
            inflight.clear()

    def _requeue(self, events: list[event_pb2.Event]) -> None:
        """Puts events back in front of the queue, in their order, as batches."""
        events = [ev for ev in events if ev.id not in self.ledger.acked]
        self.resent += len(events)
        batches = [events[i : i + self.batch_size] for i in range(0, len(events), self.batch_size)]
        self._pending.extendleft(reversed(batches))

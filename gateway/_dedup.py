"""Replication dedup at a destination: which of an origin's events this region already holds.

An origin region's log is made of streams, each sent in its own order by one sender at a time:
a NATS region's partitions (``p0`` ... ``p7``: subsequences of its one JetStream stream, whose
sequences number them, with gaps) or a Kafka region's topic-partitions, each numbering its
events on its own. The source sends its events for this region in the order of
each stream, each with its stream and its position there (``stream``/``sequence``, stored
here as ``origin_stream``/``origin_sequence``), and after any failure resends every stream
from its first unacked event. Streams may interleave within one Replicate call in any way.
So the destination keeps, per origin region and origin stream:

* ``acked``: every event of that stream for this region with origin sequence <= ``acked`` is
  stored here (or was refused for good); anything at or below it is a resend;
* ``above``: origin sequences above ``acked`` already stored (a batch that failed halfway);
* ``refused``: the recent refusals, so a resent poison event is refused again.

``acked`` of a stream moves to the highest sequence of that stream in a batch once the whole
batch is handled: batches are applied one at a time and a call ends at the first one that is
not, so every earlier event of the stream was handled before.

Everything is recovered from the broker, never from a gateway's memory. A source whose broker
has ``WorkSharing`` (Kafka) holds several calls to this region open at once, one per replica of
the source, each for its own share of the streams; so the state is kept per stream, and no
call ever writes a stream it does not handle. One checkpoint entry per (origin, stream), key
``replication.<origin>.<stream>`` (both escaped, see ``stream_key``), holds that stream's
state and its own opaque log ``position`` (``Broker.log_position``): every event of that
stream stored here at or below the position is ``<= acked`` or in ``above``. The entries:

* are written in the background after batches, only for the streams the call changed since
  its last save (each with the position read before the snapshot, and the snapshot taken
  once every write started before that read is applied to the state, so a write that landed
  at or below the position is in it);
* are read before each write: when the entry there knows of a stored event the call does not
  (another call handles the same stream: a rebalance's overlap, an old call saving late),
  its facts are merged in (and into the call's state) and the earlier of the two positions
  is kept, each having vouched for its own facts only; so a call saving late never hides a
  newer call's progress. Without a compare-and-set this is a read then a write: an entry
  written between the two by another call is overwritten by one that is older but true;
* are *registered* before a call first stores an event of a stream it has no entry for: the
  entry is written, synchronously, with the end of the call's recovery scan as its position
  (what the call knows for sure), before the event is stored. So no event is stored without
  an entry of its stream at or below it: at recovery, a stream without an entry has nothing
  stored here;
* are *moved up*: at the end of each recovery scan, every entry is written at the scan's end
  (the state is complete up to there, whoever stored what); and an open call rewrites the
  entries of the streams it has not changed every ``_REFRESH_EVERY`` (10 s) at the log's
  position, the same way as a save, except a stream whose entry another call has written
  since this call last did (that call stores the stream now and keeps it up to date). So
  while the origin's link is up, a quiet stream does not pin the next recovery's scan to
  where it went quiet; what it scans is this region's own traffic since the last call ended
  (plus up to 10 s).

A recovery (when a call opens) lists the origin's entries (``Broker.checkpoints``), then
scans this region's log once from the earliest of their positions (``Broker.earliest_position``,
``Broker.origin_sequences_after``) and adds what it finds above each stream's ``acked`` to
that stream's ``above`` (events found above a stream's own position are exactly what its
entry may lack; those below it are stored events too, so adding them is merely redundant).
That redundancy is what lets an adapter answer part of the scan from what it read of its log
already: a restarted Kafka gateway takes the range its start read for the id window from the
origin sequences it noted then (``brokers/kafka/_origins.py``), and scans only the rest.
An entry that is older but was true when written only makes that scan longer, never the
answer wrong. No entry at all (a checkpoint never written or lost) scans the whole log.
Nothing depends on how long an outage lasted, nor (with the moves up) on how long the origin
sent nothing while this region's own events grew the log.
Calls of one origin that open while its recovery is under way share it (one listing, one
scan), each taking its own copy of the result: a NATS origin opens one call per partition
link at once when this region comes back, and each scanning the same log on its own made the
first event wait for all of them.

Limits:

* Two calls storing the same stream at the same time (the short overlap of a rebalance, an
  old call not yet noticed dead) do not see each other's stores live: the broker's own id
  window (JetStream ``Nats-Msg-Id``) absorbs those duplicates (the same event sent to both).
* An entry vouches for everything stored at or below its position, but a call knows only its
  own stores and what its recovery scanned. A store by another call of the same stream that
  no entry records yet (that call was cut mid-write, or has not saved it yet) is hidden if
  this call then saves the stream under a newer position (the merge cannot see it either).
  The other call, if it goes on, saves it at once (merged in from then on); the source
  resends it to the stream's current owner first, which learns it from the id window. Only
  if neither happens and the next resend comes after the id window can a recovery take the
  event for new (``test_limit_store_of_a_cut_call_hidden_by_another_calls_save``). Exact
  would need calls to know of each other's stores: a scan of the log before each save, or
  one call per stream at a time fenced by compare-and-set entries checked before each
  store (which a compacted Kafka topic does not offer).
* A stream that moves from one call to another (a consumer-group rebalance) is trusted by the
  new call as it was when that call recovered; the source should start a new call when its
  share of the work changes (its consumer's fetch failing once does that), so that the new
  call recovers afresh.
* ``refused`` keeps the last ``_MAX_REFUSALS`` per stream; ``above`` is kept whole (it only
  holds what a failed batch left above ``acked``, and empties as ``acked`` passes it).
* Entries are never deleted: one per stream an origin ever sent (a Kafka topic-partition).
"""

from __future__ import annotations

import asyncio
import json
import logging
import string
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshgate.brokers import Broker, BrokerError

__all__ = ["OriginDedup", "OriginState", "StreamState", "origin_prefix", "stream_key"]

log = logging.getLogger("meshgate.gateway.replication")

# Refusals remembered per stream so that a resent poison event is refused again, not taken
# as a resend.
_MAX_REFUSALS = 1000
# The version of the entries, checked on reading: a later release that changes them can tell.
_FORMAT = 1
# Characters a key token keeps as they are; every other byte becomes "=XX" (hex), so that a
# token never holds a "." (the key separator) and is valid in any broker (NATS KV allows
# [-/_=.a-zA-Z0-9]).
_KEPT = frozenset("-/_" + string.ascii_letters + string.digits)
# The token of the empty stream (a one-stream origin): escaping never yields a lone "=".
_EMPTY = "="


def _escape(text: str) -> str:
    if not text:
        return _EMPTY
    return "".join(c if c in _KEPT else "".join(f"={b:02X}" for b in c.encode()) for c in text)


def _unescape(token: str) -> str:
    if token == _EMPTY:
        return ""
    out = bytearray()
    i = 0
    while i < len(token):
        c = token[i]
        if c == "=":
            digits = token[i + 1 : i + 3]
            if len(digits) != 2 or not all(d in string.hexdigits for d in digits):
                raise ValueError(f"key token {token!r} has a bad escape at {i}")
            out.append(int(digits, 16))
            i += 3
        elif c in _KEPT:
            out += c.encode()
            i += 1
        else:
            raise ValueError(f"key token {token!r} holds {c!r}, which escaping never leaves")
    return out.decode()


def origin_prefix(origin: str) -> str:
    """What every entry key of ``origin`` starts with (and no other origin's)."""
    return f"replication.{_escape(origin)}."


def stream_key(origin: str, stream: str) -> str:
    """The checkpoint key of one stream of an origin."""
    return origin_prefix(origin) + _escape(stream)


@dataclass(slots=True)
class StreamState:
    """What this region holds of one stream of an origin's log."""

    acked: int = 0
    above: set[int] = field(default_factory=set)
    refused: dict[int, str] = field(default_factory=dict)

    def is_resend(self, seq: int) -> bool:
        return seq <= self.acked or seq in self.above

    def advance(self, seq: int) -> None:
        """All events of the stream up to origin sequence ``seq`` are handled."""
        if seq > self.acked:
            self.acked = seq
            self.above = {s for s in self.above if s > seq}

    def refuse(self, seq: int, reason: str) -> None:
        self.refused[seq] = reason
        while len(self.refused) > _MAX_REFUSALS:
            del self.refused[next(iter(self.refused))]

    def copy(self) -> StreamState:
        return StreamState(acked=self.acked, above=set(self.above), refused=dict(self.refused))

    def lacks(self, other: StreamState) -> bool:
        """Whether ``other`` knows of a stored event that this state does not."""
        acked = self.acked
        return other.acked > acked or any(s > acked and s not in self.above for s in other.above)

    def merge(self, other: StreamState) -> None:
        """Adds what ``other`` knows: each of its facts is true, so their union is."""
        self.advance(other.acked)
        self.above.update(s for s in other.above if s > self.acked)
        for seq, reason in other.refused.items():
            self.refuse(seq, reason)

    def to_json(self) -> dict[str, object]:
        return {
            "acked": self.acked,
            # What a failed batch left above acked, so that no position has to be kept for it.
            "above": sorted(self.above),
            "refused": {str(k): v for k, v in self.refused.items()},
        }

    def to_entry(self, position: str) -> bytes:
        """The checkpoint entry: this state, accounting for the stream's events stored up to ``position``."""
        return json.dumps({"format": _FORMAT, **self.to_json(), "position": position}).encode()

    @classmethod
    def from_json(cls, data: object) -> StreamState:
        if not isinstance(data, dict):
            raise TypeError("a stream's state must be a JSON object")
        above = data.get("above", [])
        refused = data.get("refused", {})
        if not isinstance(above, list) or not isinstance(refused, dict):
            raise TypeError("above must be a list and refused a map")
        return cls(
            acked=int(data["acked"]),
            above={int(s) for s in above},
            refused={int(k): str(v) for k, v in refused.items()},
        )

    @classmethod
    def from_entry(cls, raw: bytes) -> tuple[StreamState, str]:
        """A checkpoint entry's state and position."""
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise TypeError(f"an entry must be a JSON object of format {_FORMAT}")
        position = data["position"]
        if not isinstance(position, str):
            raise TypeError("position must be a string")
        return cls.from_json(data), position


@dataclass(slots=True)
class OriginState:
    """One Replicate call's view of an origin: a ``StreamState`` per origin stream."""

    origin: str
    streams: dict[str, StreamState] = field(default_factory=dict)
    # The end of the call's recovery scan: every event of the origin stored at or below it,
    # by any call, is accounted for by ``streams``.
    position: str = ""
    # Streams with an entry in the broker (read at recovery or written since): an event of
    # any other stream may be stored only after its entry is written (``OriginDedup.register``).
    registered: set[str] = field(default_factory=set)
    # Each stream's entry as this call last read or wrote it: an entry that differs now was
    # written by another call since (``OriginDedup.save(refresh=...)`` leaves it to that call).
    entries: dict[str, bytes] = field(default_factory=dict)

    def stream(self, name: str) -> StreamState:
        state = self.streams.get(name)
        if state is None:
            state = self.streams[name] = StreamState()
        return state

    def snapshot(self, names: Iterable[str]) -> dict[str, StreamState]:
        """Copies of the states of streams ``names`` as they are now."""
        return {name: self.stream(name).copy() for name in names}


def _copy(state: OriginState) -> OriginState:
    """A call's own copy of a recovered state: each call changes its state as it stores."""
    return OriginState(
        origin=state.origin,
        streams={name: stream.copy() for name, stream in state.streams.items()},
        position=state.position,
        registered=set(state.registered),
        entries=dict(state.entries),
    )


class OriginDedup:
    """Loads and saves the per-stream states of origins in the destination's broker."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        # The recovery of each origin under way: calls of that origin opening meanwhile share it.
        self._recovering: dict[str, asyncio.Task[OriginState]] = {}

    async def recover(self, origin: str) -> OriginState:
        """The origin's state as the broker holds it: the call's own copy.

        Calls of one origin that open while its recovery is under way share that recovery
        (one checkpoint listing, one scan of the log) instead of each running its own: a
        source with several processes (a NATS region's replicas, each with its share of the
        partitions) opens them all at once after the destination restarts, and 8 scans of the same log took 8 times as
        long (0.9 s each here, one after the other, before the first event was stored) and
        as much memory. A call that joins gets the state as of the shared scan's end, the
        same as if it had opened when that recovery began: every event stored at or below
        that end is accounted for, and what other calls store after it is the case of two
        calls storing one stream at once (see the module's limits).
        """
        task = self._recovering.get(origin)
        if task is None:
            task = self._recovering[origin] = asyncio.create_task(self._recover(origin))
            task.add_done_callback(lambda done: self._forget(origin, done))
        # Shielded: one call going away does not cancel the recovery the others wait for.
        return _copy(await asyncio.shield(task))

    def _forget(self, origin: str, task: asyncio.Task[OriginState]) -> None:
        if self._recovering.get(origin) is task:
            del self._recovering[origin]
        if not task.cancelled():
            task.exception()  # retrieved: a recovery every caller left is not reported as lost

    async def _recover(self, origin: str) -> OriginState:
        state = OriginState(origin=origin)
        positions: list[str] = []
        # An entry that cannot be read has no position to start from: the whole log is scanned.
        whole = False
        prefix = origin_prefix(origin)
        for key, raw in (await self._broker.checkpoints(prefix)).items():
            try:
                name = _unescape(key[len(prefix) :])
                entry, position = StreamState.from_entry(raw)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("replication checkpoint %s unreadable (%s); scanning the whole log", key, exc)
                whole = True
                continue
            state.stream(name).merge(entry)
            state.registered.add(name)
            state.entries[name] = raw
            positions.append(position)
        start = ""
        if positions and not whole:
            try:
                start = self._broker.earliest_position(positions)
            except ValueError as exc:
                # A position this broker cannot read (written by another kind of broker).
                log.warning("replication checkpoints of %s unusable (%s); scanning the whole log", origin, exc)
        try:
            found, end = await self._broker.origin_sequences_after(origin, start)
        except ValueError as exc:
            log.warning("replication checkpoints of %s unusable (%s); scanning the whole log", origin, exc)
            start = ""
            found, end = await self._broker.origin_sequences_after(origin, "")
        for name, seqs in found.items():
            stream = state.stream(name)
            stream.above.update(s for s in seqs if s > stream.acked)
        log.info(
            "replication from %s: resends recognised in %d stream(s) (%d with an entry, highest acked %d), "
            "%d stored above acked (scanned the log after position %r up to %r)",
            origin,
            len(state.streams),
            len(state.registered),
            max((s.acked for s in state.streams.values()), default=0),
            sum(len(s.above) for s in state.streams.values()),
            start,
            end,
        )
        state.position = end
        if start != end and state.streams:
            await self._move_up(state)
        return state

    async def _move_up(self, state: OriginState) -> None:
        """Writes every stream's entry at the end of the recovery scan, which the state is complete up to.

        Otherwise an entry keeps the position of its stream's last save: a stream idle while
        this region's own traffic grows the log would make every later recovery scan all of
        it again (a long reconnect after a quiet week). A failed write only leaves that scan long.
        """
        failed = await self.save(state, state.snapshot(state.streams), state.position)
        if failed:
            log.warning(
                "replication checkpoints of %s not moved up to the scan's end for %d stream(s): %s",
                state.origin,
                len(failed),
                next(iter(failed.values())),
            )

    async def register(self, state: OriginState, names: Iterable[str]) -> None:
        """Writes an entry for each of ``names`` that has none, before an event of it is stored.

        Its position is the end of the call's recovery scan: the state of a stream the call
        has not stored in is known complete up to there, whoever else stores in it. Raises
        BrokerError if an entry could not be written: nothing of that stream may be stored then.
        """
        new = [name for name in names if name not in state.registered]
        if not new:
            return
        failed = await self.save(state, state.snapshot(new), state.position)
        if failed:
            raise BrokerError(f"checkpoint entries of {len(failed)} stream(s) not written: {failed}")

    async def position(self) -> str:
        return await self._broker.log_position()

    async def save(
        self,
        state: OriginState,
        snapshot: dict[str, StreamState],
        position: str,
        *,
        refresh: frozenset[str] = frozenset(),
    ) -> dict[str, BrokerError]:
        """Writes the entries of a snapshot taken at ``position``; the streams whose write failed, with why.

        A stream in ``refresh`` has not changed in this call since its last save, and is
        written only to move its position up; not if another call has written its entry
        since this call last did (that call is storing the stream, and keeps it up to date).
        """
        names = list(snapshot)
        results = await asyncio.gather(
            *(self._write(state, name, snapshot[name], position, refresh=name in refresh) for name in names),
            return_exceptions=True,
        )
        failed: dict[str, BrokerError] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BrokerError):
                failed[name] = result
            elif result is not None:
                raise result
        return failed

    async def _write(
        self, state: OriginState, name: str, mine: StreamState, position: str, *, refresh: bool = False
    ) -> None:
        """Writes one stream's entry, keeping what the entry there knows and this call does not.

        Another call of the origin may handle the same stream (a rebalance's overlap, an old
        call saving late): its entry may know of events stored after this call's view of the
        stream was complete. Overwriting it with this call's state under a newer position
        would hide them from the next recovery; so its facts are merged in (into the call's
        state too) and the entry takes the earlier of the two positions: each vouched for
        its own facts only up to there.
        """
        key = stream_key(state.origin, name)
        raw = await self._broker.get_checkpoint(key)
        if refresh and raw != state.entries.get(name):
            return
        if raw is not None:
            try:
                theirs, their_position = StreamState.from_entry(raw)
            except (ValueError, KeyError, TypeError):
                pass  # unreadable: replaced by a readable one
            else:
                if mine.lacks(theirs):
                    try:
                        position = self._broker.earliest_position([position, their_position])
                    except ValueError:
                        position = ""  # a position of another kind of broker: the next recovery scans it all
                mine.merge(theirs)
                state.stream(name).merge(theirs)
        entry = mine.to_entry(position)
        await self._broker.put_checkpoint(key, entry)
        state.registered.add(name)
        state.entries[name] = entry

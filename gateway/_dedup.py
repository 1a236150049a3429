"""Replication dedup at a destination: which of an origin's events this region already holds.

An origin region's log is one stream (NATS) or several (Kafka: one per topic-partition), each
numbering its events on its own. The source sends its events for this region in the order of
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

Everything is recovered from the broker, never from a gateway's memory: one checkpoint value
per origin (written in the background after acked batches) holding every stream's state and
one opaque log ``position`` (``Broker.log_position``) at or below which every event from the
origin, of any stream, is accounted for by those states; plus one scan of this region's log
after that position (``Broker.origin_sequences_after``), which finds whatever the checkpoint
had not recorded yet, in every stream. A checkpoint may lag; a lagging one makes the scan
longer, never the answer wrong.

The position is read from the broker first; the state is snapshotted only once every write
started before that read has been applied to it, so a write that landed at or below the
position is in the snapshot. Nothing depends on how long an outage lasted.

Limits:

* One call per origin at a time is what makes the one position true. The broker's own id
  window (JetStream ``Nats-Msg-Id``) absorbs the short race of two connections from one
  source writing at once. A source whose broker ``shares_work`` (Kafka: every gateway replica
  of the source runs the link for its share of the partitions) holds several calls open at
  once; each saves the whole origin's state as it knows it, so one can overwrite another's
  progress on the other's streams with an older state under a newer position. A recovery
  from such a checkpoint can take an event stored in that gap for new: it is then absorbed
  only by the destination broker's id window, if still within it. Making that exact needs a
  conditional (compare-and-set) checkpoint write or one checkpoint per source replica.
* A stream that moves from one call to another (a consumer-group rebalance) is trusted by the
  new call as it was when that call recovered; the source should start a new call when its
  share of the work changes (its consumer's fetch failing once does that), so that the new
  call recovers afresh.
* ``refused`` keeps the last ``_MAX_REFUSALS`` per stream; ``above`` is kept whole (it only
  holds what a failed batch left above ``acked``, and empties as ``acked`` passes it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from meshgate.brokers import Broker

__all__ = ["OriginDedup", "OriginState", "StreamState"]

log = logging.getLogger("meshgate.gateway.replication")

# Refusals remembered per stream so that a resent poison event is refused again, not taken
# as a resend.
_MAX_REFUSALS = 1000
_FORMAT = 2


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

    def to_json(self) -> dict[str, object]:
        return {
            "acked": self.acked,
            # What a failed batch left above acked, so that no position has to be kept for it.
            "above": sorted(self.above),
            "refused": {str(k): v for k, v in self.refused.items()},
        }

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


@dataclass(slots=True)
class OriginState:
    """One Replicate call's view of an origin: a ``StreamState`` per origin stream."""

    origin: str
    streams: dict[str, StreamState] = field(default_factory=dict)
    # Every event of the origin stored at or below it is accounted for by ``streams``.
    position: str = ""

    def stream(self, name: str) -> StreamState:
        state = self.streams.get(name)
        if state is None:
            state = self.streams[name] = StreamState()
        return state

    def to_bytes(self, position: str) -> bytes:
        """The checkpoint value: the states as they are now, accounting for the log up to ``position``."""
        return json.dumps(
            {
                "format": _FORMAT,
                "position": position,
                "streams": {name: s.to_json() for name, s in self.streams.items()},
            }
        ).encode()

    @classmethod
    def from_bytes(cls, origin: str, raw: bytes) -> OriginState:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError("a checkpoint must be a JSON object")
        if "streams" not in data:
            # Written before origins had streams: the state of the one-stream origin ("") and
            # the sequence it was written at.
            return cls(origin=origin, streams={"": StreamState.from_json(data)}, position=str(int(data["position"])))
        streams = data["streams"]
        if not isinstance(streams, dict):
            raise TypeError("streams must be a JSON object")
        position = data["position"]
        if not isinstance(position, str):
            raise TypeError("position must be a string")
        return cls(
            origin=origin,
            streams={str(name): StreamState.from_json(entry) for name, entry in streams.items()},
            position=position,
        )


class OriginDedup:
    """Loads and saves the per-origin state in the destination's broker."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    @staticmethod
    def _key(origin: str) -> str:
        return f"replication.{origin}"

    async def recover(self, origin: str) -> OriginState:
        state = OriginState(origin=origin)
        raw = await self._broker.get_checkpoint(self._key(origin))
        if raw is not None:
            try:
                state = OriginState.from_bytes(origin, raw)
            except (ValueError, KeyError, TypeError) as exc:
                # An unreadable checkpoint only costs a full scan of the log.
                log.warning("replication checkpoint of %s unreadable (%s); scanning the whole log", origin, exc)
        try:
            found, end = await self._broker.origin_sequences_after(origin, state.position)
        except ValueError as exc:
            # A position this broker cannot read (written by another kind of broker): as unreadable.
            log.warning("replication checkpoint of %s unusable (%s); scanning the whole log", origin, exc)
            state = OriginState(origin=origin)
            found, end = await self._broker.origin_sequences_after(origin, "")
        for name, seqs in found.items():
            stream = state.stream(name)
            stream.above.update(s for s in seqs if s > stream.acked)
        log.info(
            "replication from %s: resends recognised in %d stream(s) (highest acked %d), %d stored above acked "
            "(scanned the log after position %r up to %r)",
            origin,
            len(state.streams),
            max((s.acked for s in state.streams.values()), default=0),
            sum(len(s.above) for s in state.streams.values()),
            state.position,
            end,
        )
        state.position = end
        return state

    async def position(self) -> str:
        return await self._broker.log_position()

    async def save(self, origin: str, value: bytes) -> None:
        await self._broker.put_checkpoint(self._key(origin), value)

"""Replication dedup at a destination: which of an origin's events this region already holds.

The source sends its events for this region in the order of its own log, each with its
position there (the origin sequence), and resends from its first unacked batch after any
failure. So the destination needs, per origin:

* ``acked``: every event of the origin for this region with origin sequence <= ``acked`` is
  stored here (or was refused for good); anything at or below it is a resend;
* ``above``: origin sequences above ``acked`` already stored (a batch that failed halfway).

Both are recovered from the broker, never from a gateway's memory: a checkpoint (``acked``,
the log position ``position`` at or below which all those events sit, and the recent
refusals) written after acked batches, plus a scan of the log after ``position``, which finds
whatever the checkpoint had not recorded yet. A checkpoint may lag (it is written in the
background); a lagging checkpoint makes the scan longer, never the answer wrong. The broker's
own id window (JetStream ``Nats-Msg-Id``) still absorbs the short race of two connections
from one source writing at once. Nothing depends on how long an outage lasted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from meshgate.brokers import Broker

__all__ = ["OriginDedup", "OriginState"]

log = logging.getLogger("meshgate.gateway.replication")

# Refusals remembered so that a resent poison event is refused again, not taken as a resend.
_MAX_REFUSALS = 1000


@dataclass(slots=True)
class OriginState:
    origin: str
    acked: int = 0
    position: int = 0
    above: set[int] = field(default_factory=set)
    refused: dict[int, str] = field(default_factory=dict)

    def is_resend(self, seq: int) -> bool:
        return seq <= self.acked or seq in self.above

    def advance(self, seq: int, position: int) -> None:
        """All events up to origin sequence ``seq`` are handled; they sit at or below ``position``."""
        if seq > self.acked:
            self.acked = seq
            self.above = {s for s in self.above if s > seq}
        self.position = max(self.position, position)

    def refuse(self, seq: int, reason: str) -> None:
        self.refused[seq] = reason
        while len(self.refused) > _MAX_REFUSALS:
            del self.refused[next(iter(self.refused))]

    def to_bytes(self) -> bytes:
        return json.dumps(
            {"acked": self.acked, "position": self.position, "refused": {str(k): v for k, v in self.refused.items()}}
        ).encode()


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
                data = json.loads(raw)
                state.acked = int(data["acked"])
                state.position = int(data["position"])
                state.refused = {int(k): str(v) for k, v in data.get("refused", {}).items()}
            except (ValueError, KeyError, TypeError) as exc:
                # An unreadable checkpoint only costs a full scan of the log.
                log.warning("replication checkpoint of %s unreadable (%s); scanning the whole log", origin, exc)
                state = OriginState(origin=origin)
        found, end = await self._broker.origin_sequences_after(origin, state.position)
        state.above = {s for s in found if s > state.acked}
        log.info(
            "replication from %s: resends recognised up to %d, %d stored above it (scanned log %d..%d)",
            origin,
            state.acked,
            len(state.above),
            state.position + 1,
            end,
        )
        return state

    async def save(self, state: OriginState) -> None:
        await self._broker.put_checkpoint(self._key(state.origin), state.to_bytes())

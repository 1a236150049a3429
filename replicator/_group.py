"""The links of one destination: one per partition of a partitioned log (NATS), else one."""

from __future__ import annotations

from meshgate.brokers import Broker
from meshgate.replicator._link import Link, LinkCounters, LinkOptions, LinkState, lag_seconds_of, status_of
from meshgate.v1 import admin_pb2

__all__ = ["LinkGroup"]

# How bad a state is, for the one state a destination shows: a partition backing off is the
# destination's news, one replicating here outranks the others standing by.
_RANK = {
    LinkState.STOPPED: 0,
    LinkState.STANDBY: 1,
    LinkState.REPLICATING: 2,
    LinkState.CONNECTING: 3,
    LinkState.PAUSED: 4,
    LinkState.BACKING_OFF: 5,
}


class LinkGroup:
    """A destination's links, shown as one: summed counters and lag events, the oldest unacked
    event, the worst state, the latest error.

    Each link sends one partition of this region's log (``partitions`` of them), or the whole
    log (``partitions`` None); each runs in one replica at a time under its own lease, so a
    destination's work spreads over the replicas (``Replicator``).
    """

    __slots__ = ("destination", "parts")

    def __init__(
        self,
        *,
        source: str,
        destination: str,
        address: str | None,
        broker: Broker,
        options: LinkOptions,
        partitions: int | None,
    ) -> None:
        self.destination = destination
        keys: list[int | None] = list(range(partitions)) if partitions is not None else [None]
        self.parts: dict[int | None, Link] = {
            p: Link(
                source=source, destination=destination, address=address, broker=broker, options=options, partition=p
            )
            for p in keys
        }

    # --- the group as one link -------------------------------------------------------------

    @property
    def running(self) -> bool:
        return any(link.running for link in self.parts.values())

    @property
    def running_parts(self) -> int:
        """How many of the destination's partitions this replica sends now."""
        return sum(1 for link in self.parts.values() if link.running)

    @property
    def state(self) -> LinkState:
        return max((link.state for link in self.parts.values()), key=_RANK.__getitem__)

    @state.setter
    def state(self, state: LinkState) -> None:
        for link in self.parts.values():
            link.state = state

    @property
    def counters(self) -> LinkCounters:
        """A snapshot of the summed counters (a new object: the links' own stay theirs)."""
        total = LinkCounters()
        for link in self.parts.values():
            c = link.counters
            total.forwarded += c.forwarded
            total.dead_lettered += c.dead_lettered
            total.retries += c.retries
            # A link that stopped here (its lease went to another replica) had its lag cleared.
            total.lag_events += c.lag_events
            oldest = c.oldest_unacked
            if oldest is not None and (total.oldest_unacked is None or oldest < total.oldest_unacked):
                total.oldest_unacked = oldest
            if c.last_error and (total.last_error_time or 0.0) <= (c.last_error_time or 0.0):
                total.last_error, total.last_error_time = c.last_error, c.last_error_time
        return total

    @property
    def lag_seconds(self) -> float:
        return lag_seconds_of(self.counters)

    def status(self) -> admin_pb2.LinkStatus:
        status = status_of(self.destination, self.state, self.counters)
        # Which share of the destination this process carries (none for a whole-log link: Kafka).
        status.partitions.extend(sorted(p for p, link in self.parts.items() if p is not None and link.running))
        return status

    # --- control ---------------------------------------------------------------------------

    async def start(self) -> None:
        for link in self.parts.values():
            await link.start()

    def use_broker(self, broker: Broker) -> None:
        for link in self.parts.values():
            link.use_broker(broker)

    def set_address(self, address: str | None) -> None:
        for link in self.parts.values():
            link.set_address(address)

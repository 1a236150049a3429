"""The links of one destination: one per partition of a partitioned log (NATS), else one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from meshgate.brokers import Broker
from meshgate.replicator._link import Link, LinkCounters, LinkOptions, LinkState, lag_seconds_of, status_of
from meshgate.replicator._trunk import Trunk
from meshgate.v1 import admin_pb2

__all__ = ["BY_ATTENTION", "LinkGroup", "merge_statuses", "worst_state"]

# How much a link state needs the on-call engineer's eye, for the one state a merged line shows:
# of a destination's partition links here (``LinkGroup``), and of the processes that run one
# link on the link status board (``merge_statuses``). Down (failing, or no address to send
# to) before degraded before healthy before idle: a partition backing off is the destination's
# news, one replicating here outranks the others standing by. Least in need first.
BY_ATTENTION: Final = (
    LinkState.STOPPED,
    LinkState.STANDBY,
    LinkState.REPLICATING,
    LinkState.CONNECTING,
    LinkState.PAUSED,
    LinkState.BACKING_OFF,
)
# By the wire value a LinkStatus carries (a LinkState's value); a value this version does not
# know (a note posted by a newer one) ranks below all.
_ATTENTION: Final = {state.value: rank for rank, state in enumerate(BY_ATTENTION)}


def worst_state(states: Iterable[LinkState]) -> LinkState:
    """The state most in need of attention (``BY_ATTENTION``); ValueError when there is none."""
    return max(states, key=lambda state: _ATTENTION[state.value])


def merge_statuses(destination: str, statuses: Sequence[admin_pb2.LinkStatus]) -> admin_pb2.LinkStatus:
    """One status of ``destination``'s link from several processes' (the link status board).

    Each process reports its own share of the log: counters and lag events add up, the
    destination waits for the oldest unacked event of any, the partitions are their union (a
    lease passing between two posts may show one twice), the state the one most in need of
    attention and the error the latest. Which statuses count (all, or only the running
    ones') is the caller's.

    Across processes, a LinkStatus is all there is, so this merges protos; within one process
    ``LinkGroup.counters`` merges the links' own counters, which a LinkStatus lacks (retries,
    for the metrics; the oldest unacked event's time, where a status has only its age at the
    time it was made), and ``LinkGroup.status`` is made from that merge. The rules are the same.
    """
    out = admin_pb2.LinkStatus(destination=destination)
    if not statuses:
        return out
    out.state = max((s.state for s in statuses), key=lambda v: _ATTENTION.get(v, -1))
    out.forwarded = sum(s.forwarded for s in statuses)
    out.dead_lettered = sum(s.dead_lettered for s in statuses)
    out.lag_events = sum(s.lag_events for s in statuses)
    out.lag_seconds = max(s.lag_seconds for s in statuses)
    out.partitions.extend(sorted({p for s in statuses for p in s.partitions}))
    failed = [s for s in statuses if s.last_error]
    if failed:
        latest = max(failed, key=lambda s: s.last_error_time.ToNanoseconds())
        out.last_error = latest.last_error
        out.last_error_time.CopyFrom(latest.last_error_time)
    return out


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
        # The partition links running here share one call to the destination (replicator._trunk).
        trunk = Trunk(destination=destination, options=options) if partitions is not None else None
        self.parts: dict[int | None, Link] = {
            p: Link(
                source=source,
                destination=destination,
                address=address,
                broker=broker,
                options=options,
                partition=p,
                trunk=trunk,
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
        return worst_state(link.state for link in self.parts.values())

    @state.setter
    def state(self, state: LinkState) -> None:
        for link in self.parts.values():
            link.state = state

    @property
    def counters(self) -> LinkCounters:
        """A snapshot of the summed counters (a new object: the links' own stay theirs): the
        one merge of the destination's partition links, for the metrics and for ``status``
        (``merge_statuses`` merges processes' statuses, which carry less)."""
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
            if c.last_error and (total.last_error_time or 0.0) < (c.last_error_time or 0.0):
                total.last_error, total.last_error_time = c.last_error, c.last_error_time
        return total

    @property
    def lag_seconds(self) -> float:
        return lag_seconds_of(self.counters)

    def status(self) -> admin_pb2.LinkStatus:
        # All the parts, idle ones too: a partition whose lease went elsewhere had its lag
        # cleared, and one that stopped here keeps the error it stopped on.
        status = status_of(self.destination, self.state, self.counters)
        # Which share of the destination this process carries (none for a whole-log link: Kafka).
        status.partitions.extend(p for p, link in self.parts.items() if p is not None and link.running)
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

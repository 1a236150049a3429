"""A destination's replication in one process: one link, and on a partitioned log (NATS) a slot per partition."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Final

from meshgate.brokers import Broker
from meshgate.replicator._link import Link, LinkCounters, LinkOptions, LinkState, lag_seconds_of, status_of
from meshgate.v1 import admin_pb2

__all__ = ["BY_ATTENTION", "LinkGroup", "Part", "PartitionSlot", "merge_statuses", "worst_state"]

log = logging.getLogger("meshgate.replicator")

# A link restarted over more partitions lets its batches in flight be acked for up to this long.
_RESTART_DRAIN_SECONDS = 2.0

# How much a link state needs the on-call engineer's eye, for the one state a merged line shows:
# of a destination's partitions here (``LinkGroup``), and of the processes that run one
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


class PartitionSlot:
    """One partition of a destination's replication in this process: its lease, and whether the
    process sends it (``running``). The group's one ``Link`` sends the partitions whose slots run.

    The replicator holds a slot's lease as it would a link's: ``start`` asks the group to add the
    partition (at the next turn of the loop, so the partitions taken in one lease round restart
    the link once), ``stop`` removes it and returns once the link no longer sends it.
    """

    __slots__ = ("_group", "_state", "counters", "destination", "lease_renewed", "partition", "wanted")

    def __init__(self, group: LinkGroup, partition: int) -> None:
        self._group = group
        self.destination = group.destination
        self.partition: int | None = partition
        self.wanted = False
        # The state and error while this process does not send the partition (the replicator's).
        self._state = LinkState.STOPPED
        self.counters = LinkCounters()
        # When this replica last renewed the partition's lease (monotonic), None when it holds none.
        self.lease_renewed: float | None = None

    @property
    def running(self) -> bool:
        return self.wanted

    @property
    def state(self) -> LinkState:
        reader = self._group.reader
        return reader.state if self.wanted and reader.running else self._state

    @state.setter
    def state(self, state: LinkState) -> None:
        self._state = state

    async def start(self) -> None:
        if not self.wanted:
            self.wanted = True
            self._group.schedule()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stops sending the partition: the link's batches in flight are acked first, within ``timeout``."""
        if self.wanted:
            self.wanted = False
            await self._group.apply(timeout)
        self._state = LinkState.STOPPED

    def record_error(self, message: str) -> None:
        self.counters.record_error(message)

    def clear_error(self) -> None:
        self.counters.clear_error()


# What the replicator holds a lease for: a partition of a destination, or (no partitions) its link.
Part = Link | PartitionSlot


class LinkGroup:
    """A destination's replication in this process, shown as one: the link's counters and lag, the
    worst state, the latest error.

    On a partitioned log (NATS) the destination's partitions each have a lease (``parts``: a
    ``PartitionSlot`` each), and this process's one ``Link`` reads the partitions it holds
    through one durable consumer; when they change, the link restarts over the new set (its
    batches in flight acked first). Otherwise (``partitions`` None: Kafka, whose consumer group
    shares the log) ``parts`` holds the link itself.
    """

    __slots__ = ("_applying", "_lock", "destination", "parts", "reader")

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
        self.reader = Link(
            source=source,
            destination=destination,
            address=address,
            broker=broker,
            options=options,
            partitions=range(partitions) if partitions is not None else None,
        )
        self.parts: dict[int | None, Part] = (
            {p: PartitionSlot(self, p) for p in range(partitions)} if partitions is not None else {None: self.reader}
        )
        self._lock = asyncio.Lock()
        self._applying: asyncio.Task[None] | None = None

    # --- the group as one link -------------------------------------------------------------

    @property
    def running(self) -> bool:
        return any(part.running for part in self.parts.values())

    @property
    def running_parts(self) -> int:
        """How many of the destination's partitions this replica sends now."""
        return sum(1 for part in self.parts.values() if part.running)

    @property
    def state(self) -> LinkState:
        return worst_state(part.state for part in self.parts.values())

    @state.setter
    def state(self, state: LinkState) -> None:
        for part in self.parts.values():
            part.state = state
        self.reader.state = state

    @property
    def counters(self) -> LinkCounters:
        """A snapshot (a new object): the link's counters, with the latest error of a partition
        this process could not take (a lease the broker could not say of)."""
        c = self.reader.counters
        total = LinkCounters(
            forwarded=c.forwarded,
            dead_lettered=c.dead_lettered,
            retries=c.retries,
            # A link stopped here (its leases went to another replica) had its lag cleared.
            lag_events=c.lag_events,
            oldest_unacked=c.oldest_unacked,
            last_error=c.last_error,
            last_error_time=c.last_error_time,
        )
        for part in self.parts.values():
            if isinstance(part, PartitionSlot) and not part.wanted:
                pc = part.counters
                if pc.last_error and (total.last_error_time or 0.0) < (pc.last_error_time or 0.0):
                    total.last_error, total.last_error_time = pc.last_error, pc.last_error_time
        return total

    @property
    def lag_seconds(self) -> float:
        return lag_seconds_of(self.counters)

    def status(self) -> admin_pb2.LinkStatus:
        status = status_of(self.destination, self.state, self.counters)
        # Which share of the destination this process carries (none for a whole-log link: Kafka).
        status.partitions.extend(p for p, part in self.parts.items() if p is not None and part.running)
        return status

    # --- control ---------------------------------------------------------------------------

    async def start(self) -> None:
        for part in self.parts.values():
            await part.start()

    def schedule(self) -> None:
        """Applies the slots' partitions to the link at the next turn of the loop."""
        if self._applying is None or self._applying.done():
            self._applying = asyncio.ensure_future(self._apply_soon())

    async def _apply_soon(self) -> None:
        await asyncio.sleep(0)  # the rest of the lease round's partitions join this restart
        await self.apply(_RESTART_DRAIN_SECONDS)

    async def apply(self, drain: float) -> None:
        """Runs the link over the partitions whose slots run: restarted when they changed (its
        batches in flight acked first, within ``drain``), stopped when there are none."""
        async with self._lock:
            reader = self.reader
            while True:
                wanted = tuple(p for p, part in self.parts.items() if p is not None and part.running)
                if (reader.running and reader.partitions == wanted) or (not reader.running and not wanted):
                    return
                if reader.running:
                    await reader.stop(drain)
                    # Its lag is of partitions it may no longer send: the next poll reads it anew.
                    reader.counters.lag_events = 0
                    reader.counters.oldest_unacked = None
                    continue  # the slots may have changed meanwhile
                reader.set_partitions(wanted)
                log.info(
                    "link %s -> %s sends partitions %s here",
                    reader.source,
                    self.destination,
                    ",".join(map(str, wanted)),
                )
                await reader.start()

    def use_broker(self, broker: Broker) -> None:
        self.reader.use_broker(broker)

    def set_address(self, address: str | None) -> None:
        self.reader.set_address(address)

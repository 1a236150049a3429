"""The replicator of a region: one link per other region of the mesh."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

from meshgate.brokers import Broker, BrokerError, Leases, PartitionedLog, WorkSharing
from meshgate.config import MeshConfig, Settings
from meshgate.replicator._group import LinkGroup, Part
from meshgate.replicator._link import Link, LinkOptions, LinkState
from meshgate.v1 import admin_pb2

__all__ = ["DEFAULT_LEASE_TTL", "Replicator"]

log = logging.getLogger("meshgate.replicator")

# A dead replica's links are taken over by another replica within about this long
# (the mesh file's settings.lease_ttl; its default).
DEFAULT_LEASE_TTL = Settings().lease_ttl_seconds
_THREAD_JOIN_SECONDS = 5.0
# A replica's membership lease: the replicas alive are the holders of these.
_MEMBER_PREFIX = "member."
# A link handed to another replica lets its batches in flight be acked for up to this long.
_HAND_OVER_SECONDS = 2.0

T = TypeVar("T")


class Replicator:
    """Runs a link from ``region`` to every other region of the mesh file.

    Every other region gets a link, not only those today's rules name: routes are stamped at
    admission, so events routed by an older file still have to reach their regions.

    Several gateway replicas of a region share the work through leases kept in the broker:
    each partition of a link is sent by the one replica holding its lease (the others show it
    as standby), and a replica that stops renewing loses its leases within ``lease_ttl`` to
    one that is alive. One sender per partition is what keeps its events in log order at the
    destination.

    On a ``PartitionedLog`` (NATS) each partition of a destination has its own lease
    (``link.<destination>.p<n>``), balanced over the replicas: each replica renews a
    membership lease (``member.<owner>``), and its fair share of a destination's partitions
    is ceil(partitions / live replicas). A replica above it stops sending the extra
    partitions (its batches in flight acked first) and hands their leases back; one below
    takes free ones. A replica sends the partitions it holds through one link per
    destination (``LinkGroup``), restarted over them when they change. So a replica that
    joins gets its share within about a lease round or two, and one that dies leaves its
    partitions to the others once its leases lapse (``lease_ttl``).

    A broker with ``WorkSharing`` (Kafka consumer groups) splits each link's durable consumer
    across the replicas itself, each stream of the log to one replica: every replica then runs
    every link, no lease is taken, and each stream still has one sender.

    With ``own_thread`` (the default) and a broker that offers a ``sibling``, the links run in
    a thread with their own event loop and their own broker connection: a gateway busy with
    ingest does not starve them, nor they it. The methods here are called from the
    gateway's loop and run their work in the links' loop; ``statuses`` and the link
    counters are plain reads.
    """

    def __init__(
        self,
        *,
        region: str,
        broker: Broker,
        config: MeshConfig,
        options: LinkOptions | None = None,
        owner: str | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        own_thread: bool = True,
    ) -> None:
        if not isinstance(broker, WorkSharing | Leases):
            raise TypeError(
                f"{type(broker).__name__} neither shares work between replicas nor keeps leases: "
                "the replicator cannot tell which replica runs a link"
            )
        self.region = region
        self.owner = owner or f"{region}/{uuid.uuid4().hex[:12]}"
        self.lease_ttl = lease_ttl
        # The gateway's broker; the links use `_links_broker` (a sibling in the links' thread).
        self._broker: Broker = broker
        self._links_broker: Broker = broker
        self._options = options or LinkOptions()
        self._own_thread = own_thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.links: dict[str, LinkGroup] = {}
        self._started = False
        self._leases: asyncio.Task[None] | None = None
        # The membership lease: owner names may hold characters a lease name may not.
        self._member = _MEMBER_PREFIX + re.sub(r"[^-_=A-Za-z0-9]", "_", self.owner)
        self._partitions = broker.partitions if isinstance(broker, PartitionedLog) else None
        self._make_links(config)

    def _make_links(self, config: MeshConfig) -> None:
        for r in config.regions:
            if r.name == self.region:
                continue
            group = self.links.get(r.name)
            if group is None:
                group = self.links[r.name] = LinkGroup(
                    source=self.region,
                    destination=r.name,
                    address=r.gateway,
                    broker=self._links_broker,
                    options=self._options,
                    partitions=self._partitions,
                )
                if not self._shares_work:
                    group.reader.guard_fences(self._holds_leases_of)
            else:
                group.set_address(r.gateway)

    async def apply(self, config: MeshConfig) -> None:
        """A reloaded mesh file: new regions get links, moved gateways are reconnected.

        A region removed from the file keeps its link: events already routed to it wait in
        this region's log (its lag shows them) until it comes back or an operator acts.
        New links start with the next lease round (at once when the broker shares work).
        """
        await self._in_links_loop(self._apply(config))

    async def _apply(self, config: MeshConfig) -> None:
        self._make_links(config)
        if self._started and self._shares_work:
            await self._run_all()

    @property
    def threaded(self) -> bool:
        """True while the links run in their own thread."""
        return self._thread is not None

    async def _in_links_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        sibling = self._broker.sibling() if self._own_thread else None
        if sibling is not None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=self._run_loop, args=(loop,), name=f"links of {self.region}", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        try:
            await self._in_links_loop(self._start(sibling))
        except BaseException:
            self._started = False
            await self._end_thread()
            raise

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # Whatever is left (a link that did not stop in time) is cancelled with the loop.
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks, timeout=2.0))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _end_thread(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, _THREAD_JOIN_SECONDS)
        if thread.is_alive():
            log.warning("links thread of %s did not end within %g s", self.region, _THREAD_JOIN_SECONDS)

    async def _start(self, sibling: Broker | None) -> None:
        if sibling is not None:
            await sibling.start()
            self._links_broker = sibling
            for group in self.links.values():
                group.use_broker(sibling)
        for group in self.links.values():
            group.state = LinkState.STANDBY
        if self._shares_work:
            await self._run_all()
            return
        await self._lease_round()
        self._leases = asyncio.create_task(self._hold_leases())

    async def stop(self, timeout: float = 5.0) -> None:
        if not self._started:
            return
        self._started = False
        try:
            await self._in_links_loop(self._stop(timeout))
        finally:
            await self._end_thread()

    async def _stop(self, timeout: float) -> None:
        if self._leases is not None:
            self._leases.cancel()
            # Bounded: nats-py can swallow a cancellation that lands inside one of its requests.
            await asyncio.wait({self._leases}, timeout=2.0)
            self._leases = None
        running = [link for link in self._all_links() if link.running]
        await asyncio.gather(*(link.stop(timeout) for link in running))
        if not self._shares_work:  # else no leases were taken
            # Handing the leases back lets another replica take the links over at once.
            with contextlib.suppress(BrokerError):
                await self._lease_keeper().release_lease(self._member, self.owner)
            for link in running:
                with contextlib.suppress(BrokerError):
                    await self._lease_keeper().release_lease(self._lease_name(link), self.owner)
                link.lease_renewed = None
        if self._links_broker is not self._broker:
            sibling, self._links_broker = self._links_broker, self._broker
            for group in self.links.values():
                group.use_broker(self._broker)
            await sibling.stop()

    def _all_links(self) -> list[Part]:
        return [link for group in self.links.values() for link in group.parts.values()]

    @property
    def _shares_work(self) -> bool:
        """Whether the broker splits each link's work between the replicas (no leases then)."""
        return isinstance(self._broker, WorkSharing)

    def _lease_keeper(self) -> Leases:
        keeper = self._links_broker
        # Checked in __init__: a broker without WorkSharing keeps leases (and so does its sibling).
        if not isinstance(keeper, Leases):
            raise TypeError(f"{type(keeper).__name__} keeps no leases")
        return keeper

    @staticmethod
    def _lease_name(link: Part) -> str:
        if link.partition is None:
            return f"link.{link.destination}"
        return f"link.{link.destination}.p{link.partition}"

    async def _holds_leases_of(self, link: Link) -> str | None:
        """Why ``link`` may not open a new generation of its consumer here (``FenceGuard``): a
        lease of what it reads is not this replica's (any more), or the leases cannot be read."""
        group = self.links[link.destination]
        parts = [part for p, part in group.parts.items() if p is None or p in (link.partitions or ())]
        names = {self._lease_name(part): part for part in parts}
        # The partitions' leases only (``link.<destination>.p<n>``), or the whole link's.
        prefix = f"link.{link.destination}" + ("." if None not in group.parts else "")
        try:
            holders = await self._lease_keeper().lease_holders(prefix, ttl=self.lease_ttl)
        except BrokerError as exc:
            return f"its leases cannot be read: {exc}"
        lost = [self._shown(part) for name, part in names.items() if holders.get(name) != self.owner]
        if not lost:
            return None
        held_by = sorted({holders[n] for n in names if holders.get(n) not in (None, self.owner)})
        return (
            f"this replica ({self.owner}) no longer holds the lease of {', '.join(lost)}"
            + (f" (held by {', '.join(held_by)})" if held_by else " (lapsed)")
            + "; it stops at its next lease round"
        )

    async def _run_all(self) -> None:
        for group in self.links.values():
            if not group.running:
                log.info("link %s -> %s runs here; the broker shares its work", self.region, group.destination)
                await group.start()

    async def _hold_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            await self._lease_round()

    async def _lease_round(self) -> None:
        members, unknown = await self._members()
        for group in list(self.links.values()):
            links = list(group.parts.values())
            # All at once: with the broker away each renewal waits out a request timeout, and
            # one after another they would keep a destination's partitions running (and the
            # next round waiting) for partitions x that timeout.
            renewed = await asyncio.gather(*(self._renew(link) for link in links))
            held = [link for link, ok in zip(links, renewed, strict=True) if ok]
            # This replica's fair share of the destination's partitions; while the replicas alive
            # cannot be read, leases held are renewed and none is taken or handed over.
            share = math.ceil(len(links) / members) if members else len(held)
            if len(held) > share:
                await self._hand_over(held[share:])
                held = held[:share]
            idle: list[tuple[Part, str]] = []
            for link in links:
                if link in held:
                    continue
                problem = unknown
                if not problem and len(held) < share:
                    taken, problem = await self._take(link)
                    if taken:
                        held.append(link)
                        continue
                if link.running:
                    log.info("link %s -> %s: lease lost; another replica runs it", self.region, self._shown(link))
                idle.append((link, problem))
            # Together: a destination's partitions are one link here, restarted once without them.
            await asyncio.gather(*(link.stop(1.0) for link, _ in idle if link.running))
            for link, problem in idle:
                self._idle_state(link, problem)
            for link in held:
                if not link.running:
                    log.info("link %s -> %s runs in this replica (%s)", self.region, self._shown(link), self.owner)
                    await link.start()

    async def _members(self) -> tuple[int, str]:
        """How many replicas of the region are alive (this one included), renewing this one's membership."""
        keeper = self._lease_keeper()
        try:
            await keeper.hold_lease(self._member, self.owner, ttl=self.lease_ttl)
            holders = await keeper.lease_holders(_MEMBER_PREFIX, ttl=self.lease_ttl)
        except BrokerError as exc:
            log.warning("leases of %s cannot be read or taken: %s", self.region, exc)
            return 0, f"lease of the link cannot be read or taken, the broker is unreachable: {exc}"
        return max(1, len(set(holders.values()) | {self.owner})), ""

    async def _renew(self, link: Part) -> bool:
        """Renews a lease this replica holds; False when it holds none (or lost it)."""
        if link.lease_renewed is None:
            return False
        try:
            held = await self._lease_keeper().hold_lease(self._lease_name(link), self.owner, ttl=self.lease_ttl)
        except BrokerError as exc:
            # Not renewed: still ours until the TTL runs out, then another replica's.
            renewed = link.lease_renewed
            if time.monotonic() - renewed < self.lease_ttl * 2 / 3:
                return True
            link.lease_renewed = None
            log.warning(
                "link %s -> %s: stopped, its lease could not be renewed in time", self.region, self._shown(link)
            )
            if link.running:
                await link.stop(1.0)
            self._idle_state(link, f"lease of the link cannot be read or taken, the broker is unreachable: {exc}")
            return False
        link.lease_renewed = time.monotonic() if held else None
        return held

    async def _take(self, link: Part) -> tuple[bool, str]:
        """Takes a free lease: (taken, why the broker could not say)."""
        try:
            held = await self._lease_keeper().hold_lease(self._lease_name(link), self.owner, ttl=self.lease_ttl)
        except BrokerError as exc:
            return False, f"lease of the link cannot be read or taken, the broker is unreachable: {exc}"
        if held:
            link.lease_renewed = time.monotonic()
        return held, ""

    async def _hand_over(self, links: list[Part]) -> None:
        """Stops links above this replica's share (their batches in flight acked first), then frees their leases."""
        for link in links:
            log.info("link %s -> %s: handed to another replica (rebalance)", self.region, self._shown(link))
        # Bounded by a third of the TTL too: the leases this replica keeps are renewed only
        # once this round is over.
        drain = min(_HAND_OVER_SECONDS, self.lease_ttl / 3)
        await asyncio.gather(*(link.stop(drain) for link in links))
        for link in links:
            link.lease_renewed = None
            with contextlib.suppress(BrokerError):
                await self._lease_keeper().release_lease(self._lease_name(link), self.owner)
            self._idle_state(link, "")

    @staticmethod
    def _shown(link: Part) -> str:
        return link.destination if link.partition is None else f"{link.destination} partition {link.partition}"

    @staticmethod
    def _idle_state(link: Part, unknown: str) -> None:
        """The state of a link that does not run here: STANDBY only when another replica holds its lease."""
        if unknown:
            link.state = LinkState.BACKING_OFF
            link.record_error(unknown)
        else:
            link.state = LinkState.STANDBY
            # Its lag is the replica's that runs it now: not summed into this one's.
            link.counters.lag_events = 0
            link.counters.oldest_unacked = None
            # What this replica saw while it ran the link (or could not reach the broker) is
            # past: the replica that runs it now has the link's current story.
            link.clear_error()

    def statuses(self) -> list[admin_pb2.LinkStatus]:
        return [self.links[name].status() for name in sorted(self.links)]

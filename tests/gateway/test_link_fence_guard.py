"""A link that lost its leases while it stood still does not fence the replica that took them.

Two links of one destination over one real nats-server stand for two replicas of a region:
``stalled`` ran the link, then lost its leases (a SIGSTOP longer than the lease TTL) and
``successor`` opened a newer generation of the consumer, fencing it. Woken, ``stalled`` finds its
consumer gone; a reset would open a newer generation still and fence ``successor`` in turn,
which would fence it back at its next error, until ``stalled``'s next lease round stopped it.
Its guard (the replicator asks the lease bucket) keeps it from fencing anyone.

And the replicator's guard itself, against the lease bucket of a real nats-server.
"""

from __future__ import annotations

import asyncio

import nats

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.brokers.nats import NatsBroker
from meshgate.replicator import Link, LinkOptions, Replicator
from tests._servers import AcceptsAll, serve_destination
from tests._wait import eventually
from tests.brokers._contract import make_event
from tests.gateway.conftest import mesh_for


async def _link_consumers(server: EmbeddedNats) -> list[str]:
    nc = await nats.connect(server.url)
    try:
        infos = await nc.jetstream().consumers_info("MESHGATE")
    finally:
        await nc.close()
    return sorted(i.name for i in infos if i.name and i.name.startswith("mg-link-there@"))


async def test_a_link_whose_leases_went_elsewhere_does_not_fence_their_holder(
    nats_server: EmbeddedNats, nats_broker: NatsBroker
) -> None:
    sink = AcceptsAll()
    server, port = await serve_destination(sink)
    owns = {"stalled": True}
    asked: list[str] = []

    async def guard(link: Link) -> str | None:
        asked.append(link.destination)
        return None if owns["stalled"] else "the lease of there partition 0 is another replica's"

    def make_link() -> Link:
        return Link(
            source="here",
            destination="there",
            address=f"127.0.0.1:{port}",
            broker=nats_broker,
            options=LinkOptions(connect_timeout_seconds=2.0, backoff_initial_seconds=0.05, backoff_max_seconds=0.2),
            partitions=range(nats_broker.partitions),
        )

    async def publish(prefix: str, n: int) -> list[str]:
        ids = [f"{prefix}-{i}" for i in range(n)]
        events = [make_event("orders/created", i, key=i) for i in ids]
        assert all(not isinstance(r, Exception) for r in await nats_broker.append(events))
        return ids

    stalled, successor = make_link(), make_link()
    stalled.guard_fences(guard)
    try:
        first = await publish("a", 20)
        await stalled.start()
        await eventually(lambda: stalled.counters.forwarded == len(first), 20, what="the first events forwarded")
        assert asked, "the guard was not asked before the first open"
        # The leases go to the successor, which opens a newer generation: the stalled link's
        # consumer is deleted under it.
        owns["stalled"] = False
        await successor.start()
        await eventually(lambda: successor.state.name == "REPLICATING", 20, what="the successor replicating")
        second = await publish("b", 20)
        await eventually(
            lambda: successor.counters.forwarded == len(second), 20, what="the new events forwarded by the successor"
        )
        # The stalled link met its fenced consumer and asked its guard rather than reset.
        await eventually(
            lambda: "no longer" in stalled.counters.last_error or "another replica" in stalled.counters.last_error,
            20,
            what="the stalled link's error naming the lease",
        )
        # Its reset refused, then its reopens: each time it would have fenced the successor.
        refused = len(asked)
        await eventually(lambda: len(asked) >= refused + 3, 20, what="the stalled link's reopens refused")
        third = await publish("c", 20)
        await eventually(
            lambda: successor.counters.forwarded == len(second) + len(third), 20, what="the last events forwarded"
        )
        assert successor.counters.retries == 0, successor.counters.last_error  # never fenced
        consumers = await _link_consumers(nats_server)
        assert len(consumers) == 1, consumers  # the successor's generation, and no newer one
        # (A resend of what the stalled link had not yet acked to its consumer is the destination's to answer.)
        assert set(sink.ids) == set(first + second + third)
    finally:
        await asyncio.gather(stalled.stop(1.0), successor.stop(1.0))
        await server.stop(0)


async def test_the_replicator_lets_a_link_fence_only_with_every_lease_of_its_partitions(
    nats_server: EmbeddedNats, nats_broker: NatsBroker
) -> None:
    ttl = 30.0
    replicator = Replicator(
        region="here",
        broker=nats_broker,
        config=mesh_for(nats_server),
        owner="here/one",
        lease_ttl=ttl,
        own_thread=False,
    )
    link = replicator.links["there"].reader
    link.set_partitions([0, 1])
    guard = replicator._holds_leases_of  # what the links of this replicator are given

    reason = await guard(link)
    assert reason is not None and "partition 0, there partition 1" in reason and "(lapsed)" in reason, reason
    for p in (0, 1):
        assert await nats_broker.hold_lease(f"link.there.p{p}", "here/one", ttl=ttl)
    # Another partition's lease elsewhere is not this link's business.
    assert await nats_broker.hold_lease("link.there.p2", "here/two", ttl=ttl)
    assert await guard(link) is None

    await nats_broker.release_lease("link.there.p1", "here/one")
    assert await nats_broker.hold_lease("link.there.p1", "here/two", ttl=ttl)
    reason = await guard(link)
    assert reason is not None, "a partition's lease went to another replica, and the guard let the link fence it"
    assert "there partition 1" in reason and "partition 0" not in reason and "held by here/two" in reason, reason

"""Replication through faults: crashes of either side, a cut link, a slow link, a poison event.

Each test publishes a few thousand keyed events from us-west over PublishStream while the
fault happens and after it, then checks with the ledger that every acked event is in every
region of its route exactly once and in key order (see ``_ledger``).

The crash and cut cases run once per pair of brokers (``brokers``): both regions on embedded
NATS, a Kafka source (us-west on tansu) and a Kafka destination (eu-central on tansu). A Kafka
region's broker is a separate tansu process with memory storage only, so the crash cases kill
its gateway and leave tansu running (killing tansu would lose every acked event: not a
recovery to test). A Kafka source with two gateway replicas that lose one (a consumer-group
rebalance) is a case of its own.
"""

from __future__ import annotations

import asyncio
import collections
import re
import signal
from collections.abc import Callable
from typing import Any

import nats
import nats.js.errors
import pytest

from meshgate.brokers.nats._subjects import partition_of
from meshgate.testing import freeze
from meshgate.v1 import admin_pb2, event_pb2
from tests._wait import eventually
from tests.e2e._ledger import Ledger, Producer, make_event, read_region
from tests.e2e._mesh import MeshCluster, wait_links_idle
from tests.e2e._proxy import TcpProxy
from tests.e2e.conftest import MeshFactory

US, EU = "us-west", "eu-central"
ROUTING = [("orders/*", [US, EU]), ("inventory/>", [US, EU])]  # billing/* stays home
REPLICATING = admin_pb2.LINK_STATE_REPLICATING

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# Which regions are Kafka regions (with their kafka: settings), per case.
BROKERS: dict[str, dict[str, dict[str, Any]]] = {
    "nats": {},
    "kafka-source": {US: {"partitions": 4}},
    "kafka-destination": {EU: {"partitions": 4}},
}


@pytest.fixture(params=list(BROKERS))
def brokers(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    """The ``kafka=`` of the mesh: the same case runs on NATS only, a Kafka source, a Kafka destination."""
    return BROKERS[request.param]


def workload(origin: str, n: int, *, keys: int = 8) -> list[event_pb2.Event]:
    topics = ["orders/created", "inventory/eu/sku-1", "orders/paid", "billing/invoice"]
    return [make_event(f"{origin}-{i:05d}", topics[i % len(topics)], key=f"{origin}-key{i % keys}") for i in range(n)]


def routed(ledger: Ledger, source: str, dest: str) -> int:
    return sum(1 for rec in ledger.acked.values() if rec.origin == source and dest in rec.route)


async def forwarded(cluster: MeshCluster, source: str, dest: str) -> int:
    link = await cluster.link(source, dest)
    return link.forwarded if link is not None else 0


async def warm_up(cluster: MeshCluster, ledger: Ledger, events: list[event_pb2.Event], *, replicas: int = 1) -> None:
    """Publishes ``events`` and waits until the link forwarded them all (from each replica).

    A Kafka source's link forwards only once its consumer group has joined (a new group's first
    join takes seconds) and has seen the new topics: the fault must hit a link that runs.
    """
    await Producer(cluster, ledger, US, events, batch_size=50).run()

    async def forwarding() -> bool:
        shares = [await cluster.link(US, EU, replica=r) for r in range(replicas)]
        total = sum(link.forwarded for link in shares if link is not None)
        return total >= routed(ledger, US, EU) and all(link is not None and link.forwarded for link in shares)

    await eventually(forwarding, 45, what=f"the warm-up events forwarded {US} -> {EU} by {replicas} replica(s)")


async def mid_stream(cluster: MeshCluster, producer: Producer, *, acked: int, forwarded_at_least: int) -> None:
    """Waits until the producer is well under way and the link has forwarded some of it."""

    async def ready() -> bool:
        return producer.acked >= acked and await forwarded(cluster, US, EU) >= forwarded_at_least

    await eventually(ready, 30, what=f"{acked} acked at {US} and {forwarded_at_least} forwarded to {EU}")


async def finish(cluster: MeshCluster, ledger: Ledger, producing: asyncio.Task[None], total: int) -> None:
    await asyncio.wait_for(producing, 60)
    assert len(ledger.acked) == total, f"{len(ledger.acked)} of {total} acked; refused: {list(ledger.rejected)[:5]}"
    try:
        await ledger.verify(cluster, timeout=60)
    except AssertionError as exc:
        links = {name: str(await cluster.status(name)).replace("\n", "; ") for name in cluster.regions}
        raise AssertionError(f"{exc}\n  Admin.Status: {links}") from None
    await wait_links_idle(cluster, [US], timeout=30)


async def test_destination_gateway_and_broker_killed_mid_stream(
    make_mesh: MeshFactory, brokers: dict[str, dict[str, Any]]
) -> None:
    cluster: MeshCluster = await make_mesh([US, EU], ROUTING, kafka=brokers)
    ledger = Ledger()
    events = workload(US, 3000)
    await warm_up(cluster, ledger, events[:100])
    producer = Producer(cluster, ledger, US, events[100:], batch_size=50, pace=0.03)
    producing = asyncio.create_task(producer.run())
    await mid_stream(cluster, producer, acked=1000, forwarded_at_least=200)

    # A Kafka destination: its gateway only (tansu keeps its data in memory, see the docstring).
    await cluster.kill9(EU, broker_too=EU not in brokers)
    # The source goes on admitting; its link to the dead region is not replicating.
    down_at = producer.acked
    link = await wait_link(
        cluster,
        US,
        EU,
        lambda ln: ln.state != REPLICATING and ln.last_error != "",
        timeout=20,
        what=f"the {US} -> {EU} link to leave REPLICATING with a last_error",
    )
    await eventually(lambda: producer.acked >= min(3000, down_at + 300), 30, what="publishing during the outage")

    await cluster.restart(EU)
    await finish(cluster, ledger, producing, 3000)
    assert link.last_error
    # The destination stores a batch before the link reads its answer: the ledger can see the
    # last events there a moment before the link counts them.
    want = routed(ledger, US, EU)

    async def counted() -> bool:
        return await forwarded(cluster, US, EU) >= want

    await eventually(counted, 10, what=f"the {US} -> {EU} link to count the {want} events it forwarded")


async def test_source_gateway_killed_mid_batch_and_retries_are_absorbed(
    make_mesh: MeshFactory, brokers: dict[str, dict[str, Any]]
) -> None:
    cluster: MeshCluster = await make_mesh([US, EU], ROUTING, kafka=brokers)
    ledger = Ledger()
    events = workload(US, 3000)
    await warm_up(cluster, ledger, events[:100])
    # Slow enough that the kill lands mid-stream even on a loaded machine.
    producer = Producer(cluster, ledger, US, events[100:], batch_size=100, pace=0.25, max_inflight_batches=8)
    producing = asyncio.create_task(producer.run())
    await mid_stream(cluster, producer, acked=1000, forwarded_at_least=200)

    await cluster.kill9(US, broker_too=False)  # batches of the producer and of the link are in flight
    assert producer.acked < 3000, "the producer finished before the kill: nothing was mid-batch"
    await cluster.restart(US)
    await finish(cluster, ledger, producing, 3000)
    # The producer saw its stream break and sent again, with the same ids, what it had no ack for.
    assert producer.stream_failures, "the kill did not break the producer's stream"
    assert producer.resent > 0
    assert not ledger.problems


async def test_link_cut_reports_lag_and_catches_up_after_restore(
    make_mesh: MeshFactory, brokers: dict[str, dict[str, Any]]
) -> None:
    cluster: MeshCluster = await make_mesh([US, EU], ROUTING, proxied=[EU], kafka=brokers)
    proxy = cluster.proxy(EU)
    ledger = Ledger()
    events = workload(US, 3000)
    await warm_up(cluster, ledger, events[:100])
    producer = Producer(cluster, ledger, US, events[100:], batch_size=50, pace=0.03)
    producing = asyncio.create_task(producer.run())
    await mid_stream(cluster, producer, acked=800, forwarded_at_least=200)
    assert proxy.accepted >= 1  # replication really goes through the proxy

    proxy.cut()
    cut_at = producer.acked
    stuck = await wait_link_with(
        proxy,
        cluster,
        US,
        EU,
        lambda ln: ln.state != REPLICATING and ln.lag_events > 0 and ln.last_error != "",
        timeout=20,
        what=f"the {US} -> {EU} link to show the cut (not REPLICATING, lag_events > 0, last_error)",
    )
    await eventually(lambda: producer.acked >= min(3000, cut_at + 500), 30, what="publishing during the cut")
    # The age of the oldest event waiting grows while the link is stuck. Checked after the
    # catch-up below, so that a failure here does not hide how the rest went.
    aged: admin_pb2.LinkStatus | AssertionError
    try:
        aged = await wait_link(
            cluster,
            US,
            EU,
            lambda ln: ln.lag_seconds > 0 and ln.lag_events > 0,
            timeout=5,
            what="lag_seconds > 0 in the cut",
        )
    except AssertionError as exc:
        aged = exc

    proxy.restore()
    await finish(cluster, ledger, producing, 3000)
    assert stuck.last_error
    final = await cluster.link(US, EU)
    assert final is not None and final.lag_seconds == 0.0
    assert not isinstance(aged, AssertionError), f"lag_seconds stayed 0 while the link was cut: {aged}"
    assert aged.state != REPLICATING, aged


async def test_kafka_source_replica_killed_and_its_partitions_move_to_the_other(make_mesh: MeshFactory) -> None:
    cluster: MeshCluster = await make_mesh([US, EU], ROUTING, kafka={US: {"partitions": 4}}, replicas={US: 2})
    ledger = Ledger()
    events = workload(US, 3000)
    # Both replicas run the link, each for its share of the partitions (one consumer group).
    await warm_up(cluster, ledger, events[:200], replicas=2)
    producer = Producer(cluster, ledger, US, events[200:], batch_size=50, pace=0.05)
    producing = asyncio.create_task(producer.run())
    await mid_stream(cluster, producer, acked=800, forwarded_at_least=200)
    assert producer.acked < 3000, "the producer finished before the kill: nothing was in flight"
    await cluster.kill9(US, broker_too=False, replica=1)  # its batches to eu-central are in flight
    # The survivor takes the dead member's partitions once the group rebalances (its session
    # timeout) and goes on from their committed offsets: resends are absorbed by eu-central.
    await asyncio.wait_for(producing, 90)
    assert len(ledger.acked) == 3000, f"{len(ledger.acked)} of 3000 acked; refused: {list(ledger.rejected)[:5]}"
    await ledger.verify(cluster, timeout=90)
    assert not ledger.problems


PARTITIONS = 8  # the default nats.partitions of a region


def balanced_workload(origin: str, n: int, *, per_partition: int = 8) -> list[event_pb2.Event]:
    """Keyed events, every one routed to eu-central, spread evenly over the origin's partitions:
    ``per_partition`` keys of each partition, the events round-robin over the keys."""
    by_partition: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    i = 0
    while any(len(keys) < per_partition for keys in by_partition.values()):
        key = f"{origin}-key{i}"
        keys = by_partition[partition_of(key, PARTITIONS)]
        if len(keys) < per_partition:
            keys.append(key)
        i += 1
    keys = [key for p in range(PARTITIONS) for key in by_partition[p]]
    return [make_event(f"{origin}-{i:05d}", "orders/created", key=keys[i % len(keys)]) for i in range(n)]


async def _lease_owners(cluster: MeshCluster) -> collections.Counter[str]:
    """Owner -> how many of the us-west -> eu-central partitions' leases it holds."""
    async with await nats.connect(cluster.shared_nats[US].url) as nc:
        kv = await nc.jetstream().key_value("MESHGATE_LEASES")
        owners: collections.Counter[str] = collections.Counter()
        for p in range(PARTITIONS):
            try:
                entry = await kv.get(f"link.{EU}.p{p}")
            except nats.js.errors.KeyNotFoundError:
                continue
            if entry.value:
                owners[entry.value.decode()] += 1
        return owners


async def _link_consumers(cluster: MeshCluster) -> dict[int, frozenset[int]]:
    """The us-west -> eu-central link's consumers: generation -> the partitions it reads."""
    async with await nats.connect(cluster.shared_nats[US].url) as nc:
        infos = await nc.jetstream().consumers_info("MESHGATE")
    found: dict[int, frozenset[int]] = {}
    for info in infos:
        base, _, generation = info.name.rpartition("@")
        if base == f"mg-link-{EU}":
            reads = (info.config.metadata or {}).get("meshgate_partitions", "")
            found[int(generation)] = frozenset(int(p) for p in reads.split(",") if p)
    return found


# A clean stop (the leases handed back at once) is tests/gateway/test_replicas.py's case; these two
# are the hand-overs where the old holder cannot say it has gone, waiting out the lease TTL.
@pytest.mark.parametrize("how", ["kill-9", "stall"])
async def test_nats_partitions_move_to_the_other_replica_under_load(make_mesh: MeshFactory, how: str) -> None:
    """Two replicas of a NATS source share a nats-server and the partitions of its link to eu-central.

    Each runs half of the 8 partitions and carries half of the events (within 20 %). Then one
    dies (kill -9) or stalls mid-traffic: the other takes its partitions once their leases lapse
    and reads all eight through a new generation of its consumer, each partition from where the
    last reader of it stopped. A stalled
    holder (SIGSTOP, then SIGCONT once the other runs them) wakes up with batches in flight and
    acks them late: into its deleted generations; what it forwarded after a floor is sent again
    and answered as duplicates. Every acked event is at eu-central exactly once, in key order.
    """
    cluster: MeshCluster = await make_mesh([US, EU], ROUTING, replicas={US: 2})
    ledger = Ledger()
    events = balanced_workload(US, 3000)

    async def forwarded_by(replica: int) -> int:
        link = await cluster.link(US, EU, replica=replica)
        return link.forwarded if link is not None else 0

    async def split() -> bool:
        return sorted((await _lease_owners(cluster)).values()) == [PARTITIONS // 2] * 2

    await eventually(split, 45, what="the 8 partitions split 4/4 between the two replicas")
    # The producer publishes to replica 0; each partition goes out of the replica holding its lease.
    await Producer(cluster, ledger, US, events[:800], batch_size=50).run()

    async def warm() -> bool:
        return await forwarded_by(0) + await forwarded_by(1) >= 800

    await eventually(warm, 45, what=f"the warm-up events forwarded {US} -> {EU}")
    shares = [await forwarded_by(r) for r in (0, 1)]
    assert all(abs(share - 400) <= 80 for share in shares), f"events carried per replica: {shares}"
    owners = await _lease_owners(cluster)
    before = await _link_consumers(cluster)
    # One consumer per replica, each over the four partitions it holds.
    halves = list(before.values())
    assert len(halves) == 2 and all(len(h) == PARTITIONS // 2 for h in halves), before
    assert halves[0] | halves[1] == frozenset(range(PARTITIONS)), before
    # Spread over about 6 s: the hand-over (up to the mesh's lease TTL, 3 s) happens under load.
    producer = Producer(cluster, ledger, US, events[800:], batch_size=50, pace=0.12)
    producing = asyncio.create_task(producer.run())

    async def under_way() -> bool:
        return producer.acked >= 1200 and await forwarded_by(0) + await forwarded_by(1) >= 1000

    await eventually(under_way, 30, what=f"1200 acked at {US} and 1000 forwarded to {EU}")
    victim = 1  # the producer's replica (0) stays up
    if how == "kill-9":
        await cluster.kill9(US, broker_too=False, replica=victim)  # its batches to eu-central are in flight
    else:
        await freeze(cluster.process(US, victim).pid)
    assert producer.acked < 3000, "the producer finished before the replica died: nothing was in flight"

    async def taken_over() -> bool:
        return list((await _lease_owners(cluster)).values()) == [PARTITIONS]

    try:
        await eventually(taken_over, 45, what=f"replica 0 to hold every partition of {US} -> {EU}")
    finally:
        if how == "stall":
            cluster.process(US, victim).signal(signal.SIGCONT)
    survivor = next(iter(await _lease_owners(cluster)))
    assert survivor in owners and owners[survivor] == PARTITIONS // 2
    await asyncio.wait_for(producing, 90)
    assert len(ledger.acked) == 3000, f"{len(ledger.acked)} of 3000 acked; refused: {list(ledger.rejected)[:5]}"
    await ledger.verify(cluster, timeout=90)
    assert not ledger.problems
    # The consumers before were deleted by the opens over their partitions (the fence): those left
    # are newer, and read each partition once. A stalled replica that woke up may have its share
    # back (a rebalance); a killed one does not, and the survivor reads all eight through one.
    after = await _link_consumers(cluster)
    assert min(after) > max(before), (before, after)
    assert sum(map(len, after.values())) == PARTITIONS, after
    assert frozenset().union(*after.values()) == frozenset(range(PARTITIONS)), after
    if how == "kill-9":
        assert list(after.values()) == [frozenset(range(PARTITIONS))], after


async def test_slow_destination_gets_everything_once_in_order(make_mesh: MeshFactory) -> None:
    cluster: MeshCluster = await make_mesh([US, EU], ROUTING, proxied=[EU])
    proxy = cluster.proxy(EU)
    proxy.delay = 0.08  # each way: every replication round trip takes 160 ms or more
    ledger = Ledger()
    producer = Producer(cluster, ledger, US, workload(US, 3000), batch_size=50)
    producing = asyncio.create_task(producer.run())
    await finish(cluster, ledger, producing, 3000)
    assert proxy.accepted >= 1 and proxy.forwarded_bytes > 0
    want = routed(ledger, US, EU)

    async def counted() -> bool:
        return await forwarded(cluster, US, EU) >= want

    # Counted once the link reads the destination's answer, a moment after the ledger saw them stored.
    await eventually(counted, 10, what=f"the {US} -> {EU} link to count the {want} events it forwarded")
    assert await forwarded(cluster, US, EU) == want


async def test_poison_event_is_dead_lettered_and_never_blocks_the_link(make_mesh: MeshFactory) -> None:
    cluster: MeshCluster = await make_mesh(
        [US, EU],
        ROUTING,
        nats={EU: {"max_payload": "64KiB"}},
        limits={"max_data_bytes": "1MiB"},
    )
    ledger = Ledger()
    events = workload(US, 1500)
    poison: dict[str, event_pb2.Event] = {}
    for n, at in enumerate(range(40, 1500, 150)):
        normal = events[at]
        big = make_event(f"poison-{n}", normal.topic, key=normal.key, data=b"p" * (200 * 1024))
        if n % 2:
            big.topic = "inventory/eu/big"  # routed too, by the other rule
        poison[big.id] = big
        ledger.expect_dead_letter(big.id, EU)
        events.insert(at + n, big)
    assert len(poison) == 10
    await Producer(cluster, ledger, US, events, batch_size=50).run()
    assert len(ledger.acked) == len(events), list(ledger.rejected.items())[:3]
    assert all(EU in ledger.acked[i].route for i in poison)

    # Normal events (those after a poison one included) arrive once, in order; poison ones
    # stay in us-west only.
    await ledger.verify(cluster, timeout=60)

    dlq = await eventually(
        lambda: _read_at_least(cluster, US, "meshgate/dlq/>", len(poison)),
        30,
        what=f"{len(poison)} dead letters in {US}",
    )
    assert len(dlq) == len(poison), [e.extensions.get("dlqid") for e in dlq]
    assert {e.extensions["dlqid"] for e in dlq} == set(poison)
    for e in dlq:
        original = poison[e.extensions["dlqid"]]
        assert e.topic == f"meshgate/dlq/{EU}", e.topic
        assert e.extensions["dlqtopic"] == original.topic
        assert e.extensions["dlqdestination"] == EU
        reason = e.extensions["dlqreason"]
        assert re.search(r"payload|size|too large|bytes", reason, re.IGNORECASE), reason
        assert e.origin == US
    # Nothing of the dead letters crossed either.
    assert await read_region(cluster, EU, "meshgate/dlq/>", idle=0.5) == []

    await wait_links_idle(cluster, [US], timeout=30)
    link = await cluster.link(US, EU)
    assert link is not None
    assert link.dead_lettered == len(poison), link
    assert link.forwarded == routed(ledger, US, EU) - len(poison), link


async def wait_link_with(proxy: TcpProxy, *args: Any, **kwargs: Any) -> admin_pb2.LinkStatus:
    """``wait_link``, with the proxy's counters in the message of a timeout."""
    try:
        return await wait_link(*args, **kwargs)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n  {proxy!r}") from None


async def wait_link(
    cluster: MeshCluster,
    source: str,
    dest: str,
    cond: Callable[[admin_pb2.LinkStatus], bool],
    *,
    timeout: float,
    what: str,
) -> admin_pb2.LinkStatus:
    """Polls Admin.Status of ``source`` until its link to ``dest`` meets ``cond``; the message of a
    timeout shows the last status seen."""
    seen: list[admin_pb2.LinkStatus | None] = [None]

    async def check() -> admin_pb2.LinkStatus | None:
        link = await cluster.link(source, dest)
        seen[0] = link
        return link if link is not None and cond(link) else None

    try:
        return await eventually(check, timeout, what=what)
    except AssertionError as exc:
        last = seen[0]
        shown = "no such link" if last is None else str(last).replace("\n", "; ")
        raise AssertionError(f"{exc}\n  last {source} -> {dest} status: {shown}") from None


async def _read_at_least(cluster: MeshCluster, region: str, pattern: str, n: int) -> list[event_pb2.Event] | None:
    got = await read_region(cluster, region, pattern, expect=n, idle=0.5)
    return got if len(got) >= n else None

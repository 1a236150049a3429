"""The NATS adapter on a JetStream cluster of three nats-servers (routes), the stream replicated
three times: the stream leader killed (SIGKILL) while batches are in flight, for writes and for
replication (a link's consumer and its leases on the cluster too).

A careful producer publishes one event per key a round and retries a round (same ids) until
every event of it is acked, as a client retrying with the same id would. The ledger, read from
the stream after the dead node came back: every event stored exactly once (an ack, or a
duplicate answer to a retry, meant stored), and each key's events in the order published.
"""

from __future__ import annotations

import asyncio
import collections
from functools import partial
from pathlib import Path

import nats
import nats.js.errors

from meshgate.brokers import AppendResult
from meshgate.brokers.nats import NatsBroker
from meshgate.config import NatsSettings, load_config_text
from meshgate.replicator import LinkOptions, Replicator
from meshgate.v1 import event_pb2
from tests._nats_cluster import NatsCluster
from tests._servers import TEST_ACK_TIMEOUT, TEST_RECONNECT_WAIT, AcceptsAll, serve_destination
from tests._wait import eventually
from tests.brokers._contract import make_event

KEYS = 10
ROUNDS = 40
KILL_AT = 12  # the round in flight when the leader dies


def _broker(cluster: NatsCluster) -> NatsBroker:
    return NatsBroker(
        servers=cluster.urls,
        settings=NatsSettings(replicas=3),
        idempotency_window_seconds=120.0,
        connect_timeout=5.0,
        ack_timeout=TEST_ACK_TIMEOUT,
        reconnect_wait=TEST_RECONNECT_WAIT,
        name="meshgate-cluster-test",
    )


async def _stream_leader(url: str) -> str:
    async with await nats.connect(url) as nc:
        info = await nc.jetstream().stream_info("MESHGATE")
    assert info.config.num_replicas == 3, info.config
    assert info.cluster is not None and info.cluster.leader, info.cluster
    return info.cluster.leader


async def _consumer_leader(url: str) -> str:
    """The node leading the link's consumer (its newest generation)."""
    async with await nats.connect(url) as nc:
        infos = await nc.jetstream().consumers_info("MESHGATE")
    links = [i for i in infos if i.name and i.name.startswith("mg-link-there@")]
    assert links, [i.name for i in infos]
    newest = max(links, key=lambda i: int(i.name.rpartition("@")[2]))
    assert newest.cluster is not None and newest.cluster.leader, newest.cluster
    return newest.cluster.leader


async def _stored_ids(url: str, count: int) -> list[str]:
    """Every event id in the stream, in stream order (``count`` messages expected)."""
    async with await nats.connect(url) as nc:
        js = nc.jetstream()
        sub = await js.pull_subscribe("mesh.>", "ledger", stream="MESHGATE")
        ids: list[str] = []
        while len(ids) < count:
            # A consumer made just after a node rejoined answers 503 until its replicas elect a
            # leader: "not yet", within a bound.
            batch = await eventually(
                partial(sub.fetch, min(500, count - len(ids)), timeout=5),
                30,
                what="the ledger consumer's next messages",
                retry_on=(nats.js.errors.ServiceUnavailableError,),
            )
            for msg in batch:
                assert msg.headers is not None
                ids.append(msg.headers["Nats-Msg-Id"])
                await msg.ack()
        return ids


async def test_a_replicated_stream_keeps_every_acked_event_once_in_key_order_through_its_leaders_death(
    tmp_path: Path,
) -> None:
    async with NatsCluster(tmp_path) as cluster:
        broker = _broker(cluster)
        await broker.start()
        try:
            leader = cluster.node(await _stream_leader(cluster.urls[0]))
            in_flight = asyncio.Event()
            retried = 0

            async def publish_round(r: int) -> bool:
                nonlocal retried
                events = [make_event("orders/created", f"k{k}-r{r}", key=f"k{k}") for k in range(KEYS)]
                if r == KILL_AT:
                    in_flight.set()
                results = await broker.append(events)
                if all(isinstance(res, AppendResult) for res in results):
                    return True
                retried += 1
                return False

            async def produce() -> None:
                for r in range(ROUNDS):
                    # A round is retried (same ids) until all of it is acked, before the next one.
                    await eventually(partial(publish_round, r), 60, what=f"round {r} acked", interval=0.05)

            producing = asyncio.create_task(produce())
            await asyncio.wait_for(in_flight.wait(), 60)
            await leader.kill()  # while round KILL_AT awaits its acks
            await asyncio.wait_for(producing, 120)
            new_leader = await eventually(
                lambda: _stream_leader(next(n.url for n in cluster.nodes if n.running)),
                30,
                what="a new stream leader",
                retry_on=(OSError, TimeoutError, nats.errors.Error),
            )
            assert new_leader != leader.name
            assert retried, "the leader's death failed no write: nothing was in flight"
            # A client's retry of a round the old leader acked is answered by the new one as a
            # duplicate: the ids of the window live on with the stream, not with its leader.
            again = await broker.append(
                [make_event("orders/created", f"k{k}-r{KILL_AT - 1}", key=f"k{k}") for k in range(KEYS)]
            )
            assert all(isinstance(res, AppendResult) and res.duplicate for res in again), again
            await leader.start()  # back on its ports and store: it rejoins and catches up
            await cluster.wait_for_jetstream()
        finally:
            await broker.stop()

        ids = await _stored_ids(leader.url, KEYS * ROUNDS)
        counts = collections.Counter(ids)
        assert sorted(counts) == sorted(f"k{k}-r{r}" for k in range(KEYS) for r in range(ROUNDS))
        assert max(counts.values()) == 1, [i for i, c in counts.items() if c > 1][:5]
        per_key: dict[str, list[int]] = collections.defaultdict(list)
        for eid in ids:
            key, _, r = eid.partition("-r")
            per_key[key].append(int(r))
        assert all(rounds == list(range(ROUNDS)) for rounds in per_key.values()), "a key's events out of order"


def _in_key_order(ids: list[str]) -> bool:
    """Each key's rounds, first arrivals only (a resend is the destination's to answer), in order."""
    seen: set[str] = set()
    per_key: dict[str, list[int]] = collections.defaultdict(list)
    for eid in ids:
        if eid not in seen:
            seen.add(eid)
            key, _, r = eid.partition("-r")
            per_key[key].append(int(r))
    return all(rounds == sorted(rounds) for rounds in per_key.values())


async def test_replication_from_a_replicated_stream_goes_on_through_its_leaders_death(tmp_path: Path) -> None:
    sink = AcceptsAll()
    server, port = await serve_destination(sink)
    mesh = load_config_text(
        f"""
event_mesh:
  security: {{replication: anonymous}}
  regions:
    - {{name: here, kind: nats, brokers: ["127.0.0.1:4222"], gateway: "127.0.0.1:1"}}
    - {{name: there, kind: nats, brokers: ["127.0.0.1:4223"], gateway: "127.0.0.1:{port}"}}
  routing:
    - {{topic: "orders/*", regions: [here, there]}}
"""
    )
    try:
        async with NatsCluster(tmp_path) as cluster:
            broker = _broker(cluster)
            await broker.start()
            replicator = Replicator(
                region="here",
                broker=broker,
                config=mesh,
                options=LinkOptions(connect_timeout_seconds=2.0, backoff_max_seconds=0.5, ack_timeout_seconds=5.0),
                lease_ttl=3.0,
                own_thread=False,
            )
            try:
                await replicator.start()
                published: list[str] = []

                async def publish(rounds: range) -> None:
                    for r in rounds:
                        events = [make_event("orders/created", f"k{k}-r{r}", key=f"k{k}") for k in range(KEYS)]

                        async def stored(events: list[event_pb2.Event] = events) -> bool:
                            return all(isinstance(res, AppendResult) for res in await broker.append(events))

                        await eventually(stored, 60, what=f"round {r} acked", interval=0.05)
                        published.extend(e.id for e in events)

                await publish(range(KILL_AT))
                await eventually(lambda: set(sink.ids) >= set(published), 60, what="the first rounds replicated")
                # The node leading the link's consumer dies: its reads, its acks, a lease renewal.
                victim = cluster.node(await _consumer_leader(cluster.urls[0]))
                await victim.kill()
                await publish(range(KILL_AT, ROUNDS))
                await eventually(
                    lambda: set(sink.ids) >= set(published),
                    90,
                    what="every event replicated",
                    status=lambda: (len(set(sink.ids)), replicator.statuses()),
                )
                assert set(sink.ids) == set(published)
                assert _in_key_order(sink.ids), "a key's events reached the destination out of order"
            finally:
                await replicator.stop(1.0)
                await broker.stop()
    finally:
        await server.stop(0)

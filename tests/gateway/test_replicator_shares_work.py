"""The replicator on a broker that splits a durable consumer's work across replicas itself."""

from __future__ import annotations

from meshgate.brokers import NatsBroker
from meshgate.brokers.embedded import EmbeddedNats
from meshgate.replicator import Replicator
from tests._servers import make_nats_broker
from tests.gateway.conftest import mesh_for


async def test_every_link_runs_in_every_replica_without_leases(nats_server: EmbeddedNats) -> None:
    config = mesh_for(nats_server)
    # Two replicas on one log, the broker claiming to share the work (as Kafka consumer groups do).
    one, two = make_nats_broker(nats_server), make_nats_broker(nats_server)
    for broker in (one, two):
        broker.shares_work = True  # type: ignore[misc]
    async with one, two:
        first = Replicator(region="here", broker=one, config=config, owner="replica-1")
        second = Replicator(region="here", broker=two, config=config, owner="replica-2")
        await first.start()
        await second.start()
        try:
            assert first.links["there"].running and second.links["there"].running
            # No lease was taken: anyone can take the link's lease name.
            assert await one.hold_lease("link.there", "someone-else", ttl=30)
        finally:
            await first.stop(1.0)
            await second.stop(1.0)
        assert not first.links["there"].running and not second.links["there"].running
    assert not NatsBroker.shares_work

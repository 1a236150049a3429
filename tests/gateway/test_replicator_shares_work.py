"""The replicator on a broker that splits a durable consumer's work across replicas itself."""

from __future__ import annotations

from typing import cast

import pytest

from meshgate.brokers import Broker, Leases, NatsBroker, WorkSharing
from meshgate.brokers.embedded import EmbeddedNats
from meshgate.replicator import Replicator
from tests._servers import make_nats_broker
from tests.gateway.conftest import mesh_for


class _WorkSharingNatsBroker(NatsBroker, WorkSharing):
    """A NATS broker with the WorkSharing capability (as Kafka consumer groups have)."""


def _sharing(broker: NatsBroker) -> _WorkSharingNatsBroker:
    """The same broker (not started), claiming to share the work between replicas."""
    broker.__class__ = _WorkSharingNatsBroker
    assert isinstance(broker, _WorkSharingNatsBroker)
    return broker


async def test_every_link_runs_in_every_replica_without_leases(nats_server: EmbeddedNats) -> None:
    config = mesh_for(nats_server)
    # Two replicas on one log, the broker claiming to share the work (as Kafka consumer groups do).
    one, two = _sharing(make_nats_broker(nats_server)), _sharing(make_nats_broker(nats_server))
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
    assert not issubclass(NatsBroker, WorkSharing)


def test_a_broker_without_leases_or_work_sharing_runs_no_links(nats_server: EmbeddedNats) -> None:
    # Neither capability: nothing would say which replica runs a link. A bare object has none.
    broker = cast(Broker, object())
    assert not isinstance(broker, Leases | WorkSharing)
    with pytest.raises(TypeError, match="neither shares work between replicas nor keeps leases"):
        Replicator(region="here", broker=broker, config=mesh_for(nats_server), owner="replica-1")

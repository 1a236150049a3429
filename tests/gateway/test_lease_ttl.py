"""settings.lease_ttl reaches the replicator and the broker's lease bucket, also one made with another TTL."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nats

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.brokers.nats import NatsBroker
from meshgate.config import Settings
from meshgate.gateway import Gateway
from tests._servers import make_nats_broker
from tests.gateway._helpers import two_region_mesh

LEASES = "KV_MESHGATE_LEASES"  # the lease bucket of the default stream MESHGATE


async def _bucket_ttl(server: EmbeddedNats) -> tuple[float | None, float | None]:
    async with await nats.connect(server.url) as nc:
        info = await nc.jetstream().stream_info(LEASES)
    return info.config.max_age, info.config.duplicate_window


async def test_gateway_leases_links_for_the_mesh_files_ttl(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with EmbeddedNats(data_dir=tmp_path / "there-nats") as there:
        config = dataclasses.replace(two_region_mesh(nats_server, there), settings=Settings(lease_ttl_seconds=2.5))
        async with Gateway(config=config, region="here", data_dir=tmp_path / "here") as gateway:
            assert gateway.replicator is not None and gateway.replicator.lease_ttl == 2.5
            # The link's lease is taken at start; its entry lapses after the mesh file's TTL.
            assert (await _bucket_ttl(nats_server))[0] == 2.5


async def test_lease_bucket_made_with_another_ttl_takes_the_new_one(
    nats_server: EmbeddedNats, nats_broker: NatsBroker
) -> None:
    assert await nats_broker.hold_lease("link.there", "old", ttl=10.0)
    assert (await _bucket_ttl(nats_server))[0] == 10.0
    # A restart with a shorter settings.lease_ttl: the bucket made by the old run lapses entries at it.
    async with make_nats_broker(nats_server) as restarted:
        assert not await restarted.hold_lease("link.there", "new", ttl=2.0)
        max_age, window = await _bucket_ttl(nats_server)
        assert max_age == 2.0 and window is not None and window <= 2.0
        # The old holder is still the owner until its entry lapses: the change moved no lease by itself.
        assert await nats_broker.hold_lease("link.there", "old", ttl=10.0)

"""The replicator of a region: one link per other region of the mesh."""

from __future__ import annotations

import asyncio

from meshgate.brokers import Broker
from meshgate.config import MeshConfig
from meshgate.replicator._link import Link, LinkOptions
from meshgate.v1 import admin_pb2

__all__ = ["Replicator"]


class Replicator:
    """Runs a link from ``region`` to every other region of the mesh file.

    Every other region gets a link, not only those today's rules name: routes are stamped at
    admission, so events routed by an older file still have to reach their regions.
    """

    def __init__(self, *, region: str, broker: Broker, config: MeshConfig, options: LinkOptions | None = None) -> None:
        self.region = region
        self._broker = broker
        self._options = options or LinkOptions()
        self.links: dict[str, Link] = {}
        self._started = False
        self._make_links(config)

    def _make_links(self, config: MeshConfig) -> list[Link]:
        added = []
        for r in config.regions:
            if r.name == self.region:
                continue
            link = self.links.get(r.name)
            if link is None:
                link = Link(
                    source=self.region,
                    destination=r.name,
                    address=r.gateway,
                    broker=self._broker,
                    options=self._options,
                )
                self.links[r.name] = link
                added.append(link)
            else:
                link.set_address(r.gateway)
        return added

    async def apply(self, config: MeshConfig) -> None:
        """A reloaded mesh file: new regions get links, moved gateways are reconnected.

        A region removed from the file keeps its link: events already routed to it wait in
        this region's log (its lag shows them) until it comes back or an operator acts.
        """
        added = self._make_links(config)
        if self._started:
            for link in added:
                await link.start()

    async def start(self) -> None:
        self._started = True
        for link in self.links.values():
            await link.start()

    async def stop(self, timeout: float = 5.0) -> None:
        self._started = False
        await asyncio.gather(*(link.stop(timeout) for link in self.links.values()))

    def statuses(self) -> list[admin_pb2.LinkStatus]:
        return [self.links[name].status() for name in sorted(self.links)]

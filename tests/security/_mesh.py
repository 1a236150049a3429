"""``MeshCluster`` with mTLS on: the mesh file names the CA and each region's certificate, and the
test's own channels show the client certificate of the same CA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import yaml

from tests.e2e._mesh import _CHANNEL_OPTIONS, MeshCluster
from tests.security._pki import Pki


class TlsMeshCluster(MeshCluster):
    def __init__(self, root: Path, regions: list[str], routing: list[tuple[str, list[str]]], **options: Any) -> None:
        super().__init__(root, regions, routing, **options)
        self.pki = Pki(root / "certs")
        self.pki.regions(regions)
        self.pki.client()

    def mesh_text(self) -> str:
        doc = yaml.safe_load(super().mesh_text())
        mesh = doc["event_mesh"]
        mesh["security"] = {"ca": str(self.pki.ca_path)}
        for region in mesh["regions"]:
            name = region["name"]
            region["tls"] = {"cert": str(self.pki.cert(name)), "key": str(self.pki.key(name))}
        return yaml.safe_dump(doc, sort_keys=False)

    def channel(self, name: str, replica: int = 0) -> grpc.aio.Channel:
        region = self.replica(name, replica)
        if region.channel is None:
            region.channel = grpc.aio.secure_channel(
                region.listen, self.pki.credentials("client"), options=_CHANNEL_OPTIONS
            )
        return region.channel

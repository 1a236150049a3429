"""The mesh file of the one-region benchmarks: one ``kind: nats`` region on a given nats-server."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse


def one_region_mesh(folder: Path, *, region: str, nats_url: str) -> Path:
    """Writes ``folder/mesh.yaml``: region ``region`` on the nats-server at ``nats_url``; returns its path."""
    url = urlparse(nats_url)
    mesh = folder / "mesh.yaml"
    mesh.write_text(
        f"event_mesh:\n  regions:\n    - name: {region}\n      kind: nats\n"
        f'      brokers: ["{url.hostname}:{url.port}"]\n'
    )
    return mesh

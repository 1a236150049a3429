"""Gateways with client tokens on the test's nats-server, and channels that carry a token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import pytest

from meshgate.brokers.embedded import EmbeddedNats
from meshgate.cli._client import channel as cli_channel
from meshgate.gateway import Gateway
from meshgate.v1 import event_pb2
from tests._replication import SECURITY_YAML
from tests.gateway._helpers import running_gateway

# Each at least 16 characters; none a substring of another, so a leak of one is found by itself.
ORDERS_TOKEN = "orders-0f9e8d7c6b5a4938271605f4"
AUDIT_TOKEN = "audit-5c4b3a29180716253443526170"
ADMIN_TOKEN = "admin-a1b2c3d4e5f60718293a4b5c6d"
SPARE_TOKEN = "spare-77aa88bb99cc00dd11ee22ff33"
WRONG_TOKEN = "wrong-0000111122223333444455556666"
ALL_TOKENS = (ORDERS_TOKEN, AUDIT_TOKEN, ADMIN_TOKEN, SPARE_TOKEN, WRONG_TOKEN)
ENV = {"ORDERS_TOKEN": ORDERS_TOKEN, "AUDIT_TOKEN": AUDIT_TOKEN, "ADMIN_TOKEN": ADMIN_TOKEN, "SPARE_TOKEN": SPARE_TOKEN}

TOKENS = """\
    tokens:
      - name: orders-service
        token: ${ORDERS_TOKEN}
        publish: ["orders/>"]
        subscribe: ["orders/>"]
      - name: auditor
        token: ${AUDIT_TOKEN}
        publish: ["audit/*"]
        subscribe: ["orders/eu/>", "audit/>"]
      - name: ops
        token: ${ADMIN_TOKEN}
        admin: true
"""


def mesh_text(server: EmbeddedNats, *, tokens: str = TOKENS, limits: str = "") -> str:
    url = urlparse(server.url)
    limits_block = f"  settings:\n    limits:\n{limits}" if limits else ""
    # Two regions: replication authenticated by the suite's secret (tests/_replication.py).
    security_block = f"{SECURITY_YAML}{tokens}"
    return f"""\
event_mesh:
  regions:
    - name: here
      kind: nats
      brokers: ["{url.hostname}:{url.port}"]
    - name: there
      brokers: ["127.0.0.1:1"]
  routing:
    - topic: "orders/>"
      regions: ["here", "there"]
{security_block}{limits_block}"""


def ev(topic: str = "orders/created", data: bytes = b"{}", **fields: Any) -> event_pb2.Event:
    fields.setdefault("source", "/tests/security")
    fields.setdefault("type", "test.event")
    return event_pb2.Event(topic=topic, data=data, **fields)


def connect(gw: Gateway, token: str | None) -> grpc.aio.Channel:
    """The channel `meshgate publish/tail/status` would open with ``--token``."""
    return cli_channel(gw.address, token=token)


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    return ENV


@pytest.fixture
def write_mesh(tmp_path: Path, nats_server: EmbeddedNats, token_env: dict[str, str]) -> Any:
    path = tmp_path / "mesh.yaml"

    def write(**kwargs: Any) -> Path:
        path.write_text(mesh_text(nats_server, **kwargs))
        return path

    return write


@pytest.fixture
async def secure_gw(write_mesh: Any, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway whose mesh file has the three clients of TOKENS."""
    async with running_gateway(write_mesh(), tmp_path) as gw:
        yield gw

"""``meshgate status -g HOST:PORT [--json]``: the region's broker, and per link: destination, state, lag,
partitions run here, last error."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from meshgate.cli._client import add_gateway_arg, channel, print_rpc_error
from meshgate.cli._token import client_token

if TYPE_CHECKING:
    from meshgate.v1 import admin_pb2

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("status", help="a gateway's broker and replication links", description=__doc__)
    add_gateway_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object: the region, its broker and its links")
    p.set_defaults(func=run)


def _state(link: admin_pb2.LinkStatus) -> str:
    from meshgate.v1 import admin_pb2

    if link.state == admin_pb2.LINK_STATE_UNSPECIFIED:
        # A link nobody runs (no replicator process of the region posts it): as the metrics call it.
        return "stopped"
    return admin_pb2.LinkState.Name(link.state).removeprefix("LINK_STATE_").lower()


async def _status(args: argparse.Namespace) -> int:
    import grpc.aio

    from meshgate.v1 import admin_pb2, admin_pb2_grpc

    async with channel(args.gateway, args, token=client_token(args)) as ch:
        try:
            resp = await admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            print_rpc_error(exc, args.gateway)
            return 1
    if args.json:
        print(
            json.dumps(
                {
                    "region": resp.region,
                    "config_sha256": resp.config_sha256,
                    "broker": list(resp.broker_addresses),
                    "broker_monitor_url": resp.broker_monitor_url,
                    "links": [
                        {
                            "destination": link.destination,
                            "state": _state(link),
                            "lag_events": link.lag_events,
                            "lag_seconds": round(link.lag_seconds, 3),
                            "last_error": link.last_error,
                            "forwarded": link.forwarded,
                            "dead_lettered": link.dead_lettered,
                            "partitions": list(link.partitions),
                        }
                        for link in resp.links
                    ],
                }
            )
        )
        return 0
    print(f"region {resp.region} (config sha256 {resp.config_sha256[:12]})")
    if resp.broker_addresses:
        monitor = f" (monitoring {resp.broker_monitor_url})" if resp.broker_monitor_url else ""
        print(f"broker {', '.join(resp.broker_addresses)}{monitor}")
    if not resp.links:
        print("no replication links")
    for link in resp.links:
        err = f"  last error: {link.last_error}" if link.last_error else ""
        parts = f"  partitions {','.join(map(str, link.partitions))}" if link.partitions else ""
        print(
            f"-> {link.destination:<16} {_state(link):<12} lag {link.lag_events} events "
            f"{link.lag_seconds:.1f}s  forwarded {link.forwarded}  dead-lettered {link.dead_lettered}{parts}{err}"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_status(args))

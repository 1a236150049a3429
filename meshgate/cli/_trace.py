"""``meshgate trace EVENT_ID -g HOST:PORT [--since DURATION] [--json]``.

Which regions hold an event, and when each one's broker stored it: the gateway asks every
region's gateway, each of which scans its log from ``--since`` ago (default 1h). Exit 0 when
the event is in every region of its route, 1 when it is missing somewhere (or not found).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import TYPE_CHECKING, Any

from meshgate.cli._client import add_gateway_arg, channel, print_rpc_error
from meshgate.cli._token import client_token

if TYPE_CHECKING:
    from meshgate.v1 import admin_pb2

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "trace",
        help="which regions hold an event, and when they stored it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_gateway_arg(p)
    p.add_argument("event_id", metavar="EVENT_ID", help="the event's id, as publish printed it (id=...)")
    p.add_argument("--since", default="1h", help="look at events stored this long ago and later (default 1h)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: the event's route, the regions it is missing from, each region's answer",
    )
    p.set_defaults(func=run)


def _when(where: admin_pb2.Location) -> datetime.datetime | None:
    return where.stored_time.ToDatetime(tzinfo=datetime.UTC) if where.HasField("stored_time") else None


async def _trace(args: argparse.Namespace) -> int:
    import grpc.aio

    # The duration syntax only: meshgate.config loads its file loader (jsonschema, YAML,
    # certificates) when one of the loader's names is used, which trace never does.
    from meshgate.config import parse_duration
    from meshgate.v1 import admin_pb2, admin_pb2_grpc

    try:
        lookback = parse_duration(args.since)
    except ValueError as exc:
        print(f"meshgate trace: --since: {exc}", file=sys.stderr)
        return 2
    request = admin_pb2.LocateRequest(id=args.event_id, all_regions=True)
    request.since.FromDatetime(datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=lookback))
    async with channel(args.gateway, args, token=client_token(args)) as ch:
        try:
            resp = await admin_pb2_grpc.AdminStub(ch).Locate(request, timeout=120)
        except grpc.aio.AioRpcError as exc:
            print_rpc_error(exc, args.gateway)
            return 1
    found = [w for w in resp.locations if w.found]
    origin_hit = next((w for w in found if w.region == w.origin), found[0] if found else None)
    route = list(origin_hit.route) if origin_hit else []
    missing = [r for r in route if r not in {w.region for w in found}]
    if args.json:
        print(
            json.dumps(
                {
                    "id": args.event_id,
                    "topic": origin_hit.topic if origin_hit else None,
                    "origin": origin_hit.origin if origin_hit else None,
                    "route": route,
                    "missing": missing,
                    "regions": [
                        {
                            "region": w.region,
                            "found": w.found,
                            "sequence": w.sequence if w.found else None,
                            "stored_time": (t.isoformat() if (t := _when(w)) else None),
                            "error": w.error or None,
                        }
                        for w in resp.locations
                    ],
                }
            )
        )
        return 0 if found and not missing else 1
    if origin_hit is None:
        print(f"event {args.event_id}: not found in any region (looked back {args.since})")
        for w in resp.locations:
            if w.error:
                print(f"  {w.region:<16} {w.error}")
        return 1
    first = _when(origin_hit)
    print(f"event {args.event_id} (topic {origin_hit.topic}, origin {origin_hit.origin}, route {','.join(route)})")
    for w in resp.locations:
        if w.found:
            t = _when(w)
            delay = f" (+{(t - first).total_seconds() * 1000:.0f} ms)" if t and first and w is not origin_hit else ""
            print(f"  {w.region:<16} stored {t.isoformat() if t else '?'}  seq {w.sequence}{delay}")
        elif w.error:
            print(f"  {w.region:<16} unknown: {w.error}")
        elif w.region in route:
            print(f"  {w.region:<16} NOT YET STORED (in its route)")
        else:
            print(f"  {w.region:<16} -  (not in its route)")
    return 0 if not missing else 1


def run(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_trace(args))

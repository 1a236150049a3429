"""``meshgate tail -g HOST:PORT PATTERN [--from earliest|latest] [--limit N] [--json]``.

Prints the region's events of PATTERN (local and replicated), one per line:
``SEQ TOPIC origin=REGION key=KEY id=ID DATA``. ``--json`` prints
``{"id","topic","key","data","origin"}`` per line; data that is not UTF-8 text is base64 and
the object then has ``"data_encoding": "base64"``. While no event has come for a second, it
says on stderr that it waits, and for what (stdout carries events only).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import TYPE_CHECKING, Any

from meshgate.cli._client import add_gateway_arg, channel, print_rpc_error
from meshgate.cli._token import client_token

if TYPE_CHECKING:
    from meshgate.v1 import event_pb2

__all__ = ["register"]

# How long tail shows nothing before it says (on stderr) that it is waiting, not stuck.
_QUIET_SECONDS = 1.0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "tail",
        help="print a region's events of a pattern",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_gateway_arg(p)
    p.add_argument("pattern", metavar="PATTERN", help="e.g. 'orders/>' or 'orders/*'")
    p.add_argument(
        "--from",
        dest="start",
        choices=("earliest", "latest"),
        default="latest",
        help="earliest: every event the region still retains, then new ones; latest: only events stored from now on"
        " (default latest)",
    )
    p.add_argument("--limit", type=int, default=0, metavar="N", help="stop after N events (default: follow forever)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


def _line(ev: event_pb2.Event, as_json: bool) -> str:
    try:
        text: str | None = ev.data.decode()
    except UnicodeDecodeError:
        text = None
    if as_json:
        obj: dict[str, str] = {"id": ev.id, "topic": ev.topic, "key": ev.key, "data": "", "origin": ev.origin}
        if text is None:
            obj["data"] = base64.b64encode(ev.data).decode()
            obj["data_encoding"] = "base64"
        else:
            obj["data"] = text
        return json.dumps(obj, ensure_ascii=False)
    shown = text if text is not None else "base64:" + base64.b64encode(ev.data).decode()
    key = f" key={ev.key}" if ev.key else ""
    return f"{ev.sequence} {ev.topic} origin={ev.origin}{key} id={ev.id} {shown}"


def _waiting(args: argparse.Namespace) -> str:
    what = f"events of {args.pattern!r} at {args.gateway}"
    if args.start == "earliest":
        return f"meshgate tail: no {what} yet; waiting for new ones (Ctrl-C stops)"
    return (
        f"meshgate tail: waiting for new {what}, stored from now on"
        " (--from earliest shows those already stored; Ctrl-C stops)"
    )


async def _tail(args: argparse.Namespace) -> int:
    import asyncio

    import grpc.aio

    from meshgate.v1 import gateway_pb2, gateway_pb2_grpc

    position = gateway_pb2.START_POSITION_EARLIEST if args.start == "earliest" else gateway_pb2.START_POSITION_LATEST
    seen = 0
    async with channel(args.gateway, args, token=client_token(args)) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        call = stub.Subscribe(gateway_pb2.SubscribeRequest(pattern=args.pattern, position=position))
        # Said once, if nothing comes: a quiet tail looks stuck otherwise.
        notice = asyncio.get_running_loop().call_later(
            _QUIET_SECONDS, lambda: print(_waiting(args), file=sys.stderr, flush=True)
        )
        try:
            async for resp in call:
                for ev in resp.events:
                    notice.cancel()
                    print(_line(ev, args.json), flush=True)
                    seen += 1
                    if args.limit and seen >= args.limit:
                        call.cancel()
                        return 0
        except grpc.aio.AioRpcError as exc:
            print_rpc_error(exc, args.gateway)
            return 1
        finally:
            notice.cancel()
    return 0


def run(args: argparse.Namespace) -> int:
    if args.limit < 0:
        print("meshgate tail: --limit must be 0 or more", file=sys.stderr)
        return 2
    import asyncio

    return asyncio.run(_tail(args))

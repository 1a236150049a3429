"""``meshgate publish -g HOST:PORT TOPIC [DATA] [--id ID] [--key KEY]``.

Publishes one event, or one per line of stdin when DATA is absent (batched over one
PublishStream), and prints one ack per event:
``accepted id=ID seq=N route=a,b`` / ``duplicate ...`` / ``rejected id=ID CODE: message``
(on a Kafka region ``seq=N stream=TOPIC/PARTITION``: each partition counts on its own).
Exit 1 when any event was rejected.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from meshgate.cli._client import add_gateway_arg, channel, print_rpc_error
from meshgate.cli._token import client_token

if TYPE_CHECKING:
    from meshgate.v1 import event_pb2

__all__ = ["register"]

_STDIN_BATCH = 500
# Well below a gateway's max_message_bytes (4MiB by default), whatever the lines' length.
_STDIN_BATCH_BYTES = 1024 * 1024


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "publish",
        help="publish events to a gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_gateway_arg(p)
    p.add_argument("topic", metavar="TOPIC", help="e.g. orders/created")
    p.add_argument("data", metavar="DATA", nargs="?", help="the payload; absent: one event per line of stdin")
    p.add_argument("--id", help="idempotency key (with stdin: used as a prefix, ID-1, ID-2, ...)")
    p.add_argument("--key", help="ordering key")
    p.add_argument("--source", default="/meshgate/cli", help="CloudEvents source (default /meshgate/cli)")
    p.add_argument("--type", default="meshgate.cli.published", help="CloudEvents type")
    p.add_argument("--content-type", default="text/plain", help="datacontenttype (default text/plain)")
    p.set_defaults(func=run)


def _event(args: argparse.Namespace, data: str, event_id: str) -> event_pb2.Event:
    from meshgate.v1 import event_pb2

    return event_pb2.Event(
        id=event_id,
        topic=args.topic,
        key=args.key or "",
        source=args.source,
        type=args.type,
        datacontenttype=args.content_type,
        data=data.encode(),
    )


def _format(r: event_pb2.EventResult) -> str:
    import grpc

    from meshgate.v1 import event_pb2

    if r.outcome == event_pb2.OUTCOME_REJECTED:
        code = grpc.StatusCode.__members__
        name = next((c for c, v in code.items() if v.value[0] == r.code), str(r.code))
        return f"rejected id={r.id} {name}: {r.message}"
    word = "accepted" if r.outcome == event_pb2.OUTCOME_ACCEPTED else "duplicate"
    # A Kafka region numbers each topic-partition on its own: seq alone would be ambiguous.
    stream = f" stream={r.stream}" if r.stream else ""
    return f"{word} id={r.id} seq={r.sequence}{stream} route={','.join(r.route)}"


def _stdin_batches(args: argparse.Namespace) -> Iterator[list[event_pb2.Event]]:
    batch: list[event_pb2.Event] = []
    size = 0
    for n, line in enumerate(sys.stdin, start=1):
        text = line.rstrip("\n")
        event = _event(args, text, f"{args.id}-{n}" if args.id else "")
        event_size = event.ByteSize()
        if batch and size + event_size > _STDIN_BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(event)
        size += event_size
        if len(batch) >= _STDIN_BATCH:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


async def _publish(args: argparse.Namespace) -> int:
    import grpc.aio

    from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc

    rejected = 0
    async with channel(args.gateway, args, token=client_token(args)) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        try:
            if args.data is not None:
                resp = await stub.Publish(gateway_pb2.PublishRequest(events=[_event(args, args.data, args.id or "")]))
                results = list(resp.results)
            else:

                async def requests() -> AsyncIterator[gateway_pb2.PublishRequest]:
                    for i, batch in enumerate(_stdin_batches(args), start=1):
                        yield gateway_pb2.PublishRequest(events=batch, batch_id=i)

                results = []
                async for resp in stub.PublishStream(requests()):
                    for r in resp.results:
                        print(_format(r), flush=False)
                        rejected += r.outcome == event_pb2.OUTCOME_REJECTED
                sys.stdout.flush()
                return 1 if rejected else 0
        except grpc.aio.AioRpcError as exc:
            print_rpc_error(exc, args.gateway)
            return 1
    for r in results:
        print(_format(r))
        rejected += r.outcome == event_pb2.OUTCOME_REJECTED
    return 1 if rejected else 0


def run(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_publish(args))

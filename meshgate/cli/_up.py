"""``meshgate up [-c FILE] [--data-dir DIR]``: every region of the file on this machine."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshgate.gateway import Gateway

__all__ = ["register"]

# Regions without `gateway:` get consecutive loopback ports from here.
_FIRST_PORT = 7401


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("up", help="run every region of a mesh file on this machine", description=__doc__)
    p.add_argument("-c", "--config", type=Path, default=None, help="the mesh file (default: the quickstart)")
    p.add_argument("--data-dir", type=Path, default=Path(".meshgate"), help="embedded broker data (default .meshgate)")
    p.set_defaults(func=run)


def _banner(kinds: Sequence[str], gateways: Sequence[Gateway]) -> None:
    """One line per region once all serve: where its gateway, broker and monitoring are."""
    for kind, gw in zip(kinds, gateways, strict=True):
        broker = gw.broker
        where = f", broker {', '.join(broker.addresses)}" if broker.addresses else ""
        monitor = f", monitoring {broker.monitor_url}" if broker.monitor_url else ""
        print(f"region {gw.region} ({kind}): gateway {gw.address}{where}{monitor}", flush=True)
    print(f"{len(gateways)} regions serving; Ctrl-C drains and stops them", flush=True)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import functools
    import secrets

    from prometheus_client import CollectorRegistry

    from meshgate.cli._claim import ClaimError, UpClaim, endpoints_of
    from meshgate.cli._run import run_until_signalled, use_event_loop, use_switch_interval
    from meshgate.config import QUICKSTART_PATH, ConfigError, load_config, replication_auth_issue
    from meshgate.gateway import Gateway

    path: Path = args.config or QUICKSTART_PATH
    try:
        config = load_config(path)
    except ConfigError as exc:
        for issue in exc.errors:
            print(issue, file=sys.stderr)
        return 1
    # Every region runs in this process: when the file names no credential for replication,
    # a secret made for this run authenticates them to each other (nobody else knows it).
    secret = secrets.token_hex(32) if replication_auth_issue(config) is not None else None
    listens = [region.gateway or f"127.0.0.1:{_FIRST_PORT + i}" for i, region in enumerate(config.regions)]
    # Before any broker starts: a mesh already running on this data dir or these ports is named, not disturbed.
    claim = UpClaim(data_dir=args.data_dir, config_path=path)
    try:
        claim.acquire(endpoints_of(config, listens))
    except ClaimError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    gateways = []
    for i, region in enumerate(config.regions):
        listen = listens[i]
        gateways.append(
            Gateway(
                config=config,
                region=region.name,
                data_dir=args.data_dir,
                listen=listen,
                config_path=path,
                registry=CollectorRegistry(),
                replication_secret=secret,
            )
        )
    use_event_loop()
    use_switch_interval()
    try:
        banner = functools.partial(_banner, [str(region.kind) for region in config.regions], gateways)
        return asyncio.run(run_until_signalled(gateways, on_serving=banner))
    finally:
        claim.release()

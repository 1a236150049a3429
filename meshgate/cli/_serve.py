"""``meshgate serve -c FILE --region NAME [--data-dir DIR]``: one regional gateway."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("serve", help="run one regional gateway", description=__doc__)
    p.add_argument("-c", "--config", required=True, type=Path, help="the mesh file")
    p.add_argument("--region", required=True, help="the region this gateway serves")
    p.add_argument("--data-dir", type=Path, default=Path(".meshgate"), help="embedded broker data (default .meshgate)")
    p.add_argument("--listen", help="HOST:PORT to listen on instead of the region's 'gateway:' setting")
    p.add_argument("--no-watch", action="store_true", help="reload the mesh file on SIGHUP only, not on change")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from meshgate.cli._run import run_until_signalled, use_event_loop
    from meshgate.config import ConfigError, load_config
    from meshgate.gateway import Gateway

    try:
        # Only this region's certificate files need to be here (a pod has its own Secret only).
        config = load_config(args.config, region=args.region)
    except ConfigError as exc:
        for issue in exc.errors:
            print(issue, file=sys.stderr)
        return 1
    try:
        gw = Gateway(
            config=config,
            region=args.region,
            data_dir=args.data_dir,
            listen=args.listen,
            config_path=args.config,
            watch_config=not args.no_watch,
        )
    except KeyError as exc:
        close = difflib.get_close_matches(args.region, config.region_names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"meshgate serve: {exc.args[0]}{hint}", file=sys.stderr)
        return 2
    except ConfigError as exc:  # e.g. replication between the regions that nothing authenticates
        for issue in exc.errors:
            print(issue, file=sys.stderr)
        return 1
    use_event_loop()
    return asyncio.run(run_until_signalled([gw]))

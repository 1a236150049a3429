"""``meshgate serve -c FILE --region NAME [--role ROLE] [--replication-workers N]``: one regional process.

Roles: ``all`` (the default) is a whole gateway: gRPC ingest, Replicate, Admin, health and
metrics, and the region's replication links. ``gateway`` is all of that without the links: they
run in ``replicator`` processes of the region, and Status and the link metrics show them from
the link status board in the broker. ``replicator`` runs the links only: no gRPC port; health
(/healthz, /readyz) and metrics on ``--metrics HOST:PORT`` when given. Every process that runs
links is one more lease owner of the region: the links (or, with partitions, their parts)
spread over all of them.

``--replication-workers N`` (``all``, ``replicator``) runs the links in N child processes,
each with its own broker connection and cores, restarted with backoff when one dies and
stopped (SIGTERM, then SIGKILL) within the shutdown grace period.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshgate.cli._run import Served
    from meshgate.config import MeshConfig

__all__ = ["ROLES", "register"]

ROLES = ("all", "gateway", "replicator")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "serve",
        help="run one regional gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", required=True, type=Path, help="the mesh file")
    p.add_argument("--region", required=True, help="the region this gateway serves")
    p.add_argument("--data-dir", type=Path, default=Path(".meshgate"), help="embedded broker data (default .meshgate)")
    p.add_argument("--listen", help="HOST:PORT to listen on instead of the region's 'gateway:' setting")
    p.add_argument("--no-watch", action="store_true", help="reload the mesh file on SIGHUP only, not on change")
    p.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="all: ingest and replication (default); gateway: ingest, Replicate, Admin, no links; "
        "replicator: the replication links only (no gRPC port)",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve metrics, /healthz and /readyz here instead of the region's 'metrics:' setting "
        "(a replicator process has none unless given: two processes of a region cannot share a port)",
    )
    p.add_argument(
        "--replication-workers",
        type=int,
        default=0,
        metavar="N",
        help="run the replication links in N supervised child processes, each its own lease owner "
        "(roles all and replicator; default 0: in this process)",
    )
    # Set by a parent on the workers it starts, not by people.
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--broker-url", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> str | None:
    if args.replication_workers < 0:
        return f"--replication-workers must be >= 0, got {args.replication_workers}"
    if args.replication_workers and args.role == "gateway":
        return "--replication-workers runs links: a --role gateway process runs none (use all or replicator)"
    if args.worker is not None and (args.role != "replicator" or args.replication_workers):
        return "--worker is set by a parent process on its replication workers"
    if args.role == "replicator" and args.listen:
        return "--role replicator serves no gRPC: --listen does not apply (health and metrics: --metrics)"
    return None


def _make(args: argparse.Namespace, config: MeshConfig) -> Served:
    from meshgate.gateway import Gateway, ReplicatorProcess

    if args.role == "replicator":
        return ReplicatorProcess(
            config=config,
            region=args.region,
            data_dir=args.data_dir,
            config_path=args.config,
            watch_config=not args.no_watch,
            metrics_listen=args.metrics,
            workers=args.replication_workers,
            worker=args.worker,
            broker_url=args.broker_url,
        )
    return Gateway(
        config=config,
        region=args.region,
        data_dir=args.data_dir,
        listen=args.listen,
        config_path=args.config,
        watch_config=not args.no_watch,
        metrics_listen=args.metrics,
        replicate=args.role == "all",
        replication_workers=args.replication_workers,
        link_board=args.role == "gateway",
    )


def run(args: argparse.Namespace) -> int:
    import asyncio

    from meshgate.cli._run import run_until_signalled, use_event_loop, use_switch_interval
    from meshgate.config import ConfigError, load_config

    problem = _check(args)
    if problem is not None:
        print(f"meshgate serve: {problem}", file=sys.stderr)
        return 2
    try:
        # Only this region's certificate files need to be here (a pod has its own Secret only).
        config = load_config(args.config, region=args.region)
    except ConfigError as exc:
        for issue in exc.errors:
            print(issue, file=sys.stderr)
        return 1
    try:
        served = _make(args, config)
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
    use_switch_interval()
    return asyncio.run(run_until_signalled([served]))

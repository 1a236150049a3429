"""``meshgate route -c FILE TOPIC [--from REGION] [--json]``: where an event of TOPIC goes, and which rules say so."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register", "run"]

_EPILOG = """\
Destinations are the origin region plus the regions of every rule whose pattern matches TOPIC;
a topic no rule matches stays in its origin.

exit status:
  0  the route was printed
  1  FILE is invalid (FILE:LINE:COL lines on stderr), TOPIC is not a topic, or REGION is unknown
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "route",
        help="show the regions a topic goes to and the rules that chose them",
        description="Explain the route of a topic from an origin region.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", required=True, metavar="FILE", help="mesh file (YAML)")
    parser.add_argument("topic", metavar="TOPIC", help="a topic such as orders/created")
    parser.add_argument(
        "--from", dest="origin", metavar="REGION", help="origin region (default: the first region of FILE)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshgate.config import ConfigError, load_config
    from meshgate.router import Router, validate_topic

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 1
    reason = validate_topic(args.topic)
    if reason is not None:
        print(f"meshgate route: {reason}", file=sys.stderr)
        return 1
    origin: str = args.origin if args.origin is not None else config.regions[0].name
    if origin not in config.region_names:
        known = ", ".join(config.region_names)
        print(f"meshgate route: unknown region {origin!r} in {args.config}; regions: {known}", file=sys.stderr)
        return 1
    explanation = Router.from_config(config, cache_size=0).explain(args.topic, origin)
    if args.json:
        payload = {
            "topic": explanation.topic,
            "origin": explanation.origin,
            "destinations": list(explanation.destinations),
            "rules": [
                {"index": r.index, "pattern": r.topic, "regions": list(r.regions), "line": r.line}
                for r in explanation.rules
            ],
        }
        print(json.dumps(payload))
        return 0
    print(f"{explanation.topic} from {origin} -> {', '.join(explanation.destinations)}")
    if not explanation.rules:
        print(f"  no rule matches: the event stays in {origin}")
    for r in explanation.rules:
        print(f"  rule #{r.index} {r.topic} (line {r.line}) -> {', '.join(r.regions)}")
    return 0

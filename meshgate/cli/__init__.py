"""The ``meshgate`` command: one module per command group, each with ``register(subparsers)``.

A command module adds its parser and sets ``func`` to a ``(argparse.Namespace) -> int``
function; ``main`` parses and calls it. Exit codes: 0 success, 1 the command's own failure
(invalid file, refused event), 2 usage errors, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]

# Modules of meshgate.cli that add commands, in the order of `meshgate --help`.
_COMMAND_MODULES = ("_up", "_serve", "_config", "_route", "_publish", "_tail", "_status", "_trace", "_certs", "_bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshgate", description="Multi-region event mesh gateway.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"meshgate.cli.{name}")
        except ModuleNotFoundError as exc:
            # Only a command module that is not written yet may be missing, never its imports.
            if exc.name != f"meshgate.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if logging.getLogger().level > logging.DEBUG:
        # aiokafka logs every assignment of a consumer at INFO, and the Kafka adapter's lookup
        # consumer is reassigned on every lag poll; group joins and problems still show.
        logging.getLogger("aiokafka.consumer.subscription_state").setLevel(logging.WARNING)
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return rc

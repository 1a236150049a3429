"""The ``meshgate`` command: one module per command group, each with ``register(subparsers)``.

A command module adds its parser and sets ``func`` to a ``(argparse.Namespace) -> int``
function; ``main`` parses and calls it. Exit codes: 0 success, 1 the command's own failure
(invalid file, refused event), 2 usage errors, 130 interrupted.

Building the parser imports the command modules only, and they import nothing heavier than
argparse at module level: a command's ``run`` imports what it needs (gRPC, the config loader,
the gateway, the brokers' clients) when it runs. ``meshgate --help`` then starts in about
0.05 s instead of the 0.4 s that importing the gateway and every broker client took, and
``status``/``publish`` import gRPC but no server code; tests/unit/cli/test_cli_imports.py
holds that line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence

from meshgate import __version__

__all__ = ["build_parser", "main"]

# Modules of meshgate.cli that add commands, in the order of `meshgate --help`.
_COMMAND_MODULES = ("_up", "_serve", "_config", "_route", "_publish", "_tail", "_status", "_trace", "_certs", "_bench")

_LOG_LEVEL_HELP = "DEBUG, INFO, WARNING or ERROR (default INFO); before or after the command"


def _log_level(value: str) -> str:
    name = value.strip().upper()
    if name not in logging.getLevelNamesMapping():
        raise argparse.ArgumentTypeError(f"unknown level {value!r} (DEBUG, INFO, WARNING or ERROR)")
    return name


def _plain(text: str | None) -> str | None:
    # Module docstrings double as command descriptions; their ``literal`` markup is for readers
    # of the source, not for a terminal.
    return text.replace("``", "").replace("`", "") if text else text


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every subcommand's parser under it, nested ones (``config validate``) too."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # an alias maps to the same parser
                yield from _parsers(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshgate", description="Multi-region event mesh gateway.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}", help="print the version")
    parser.add_argument("--log-level", type=_log_level, default="INFO", metavar="LEVEL", help=_LOG_LEVEL_HELP)
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
    for p in _parsers(parser):
        if p is not parser:
            # SUPPRESS: unset unless given here, so a level given before the command stays.
            p.add_argument(
                "--log-level", type=_log_level, default=argparse.SUPPRESS, metavar="LEVEL", help=_LOG_LEVEL_HELP
            )
        p.description, p.epilog = _plain(p.description), _plain(p.epilog)
        for action in p._actions:
            action.help = _plain(action.help)
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    choice.help = _plain(choice.help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.getLevelNamesMapping()[args.log_level],
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

"""The client token of the person-facing commands: ``--token`` or ``$MESHGATE_TOKEN``, sent on every call
(by meshgate.cli._bearer's interceptors)."""

from __future__ import annotations

import argparse
import os

__all__ = ["TOKEN_ENV", "add_token_arg", "client_token"]

# Safer than --token, which other users of the machine can see in `ps`.
TOKEN_ENV = "MESHGATE_TOKEN"


def add_token_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"client token, sent as 'authorization: Bearer TOKEN' (default: ${TOKEN_ENV}; prefer the"
        " variable: arguments show in ps)",
    )


def client_token(args: argparse.Namespace) -> str | None:
    """--token, else $MESHGATE_TOKEN, else None (for a gateway without tokens)."""
    token: str | None = getattr(args, "token", None) or os.environ.get(TOKEN_ENV)
    return token.strip() or None if token else None

"""What the person-facing commands share: a channel to a gateway and readable gRPC errors."""

from __future__ import annotations

import argparse
import sys

import grpc

from meshgate.cli._token import add_token_arg, bearer_interceptors

__all__ = ["add_gateway_arg", "channel", "print_rpc_error"]


def add_gateway_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-g", "--gateway", required=True, metavar="HOST:PORT", help="the gateway to talk to")
    add_token_arg(p)


def channel(target: str, *, token: str | None = None) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.enable_retries", 1)],
        interceptors=bearer_interceptors(token) if token else None,
    )


def print_rpc_error(exc: grpc.aio.AioRpcError, target: str) -> None:
    code = exc.code()
    name = code.name if code is not None else "UNKNOWN"
    details = exc.details() or ""
    hint = ""
    if code is grpc.StatusCode.UNAVAILABLE:
        hint = f" (is a gateway running at {target}?)"
    elif code is grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in details:
        # gRPC's own words: name the gateway setting behind them.
        hint = " (the gateway's settings.limits.max_message_bytes; send smaller batches)"
    elif code is grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata size exceeds" in details:
        hint = " (the gateway's settings.limits.max_metadata_bytes)"
    print(f"error: {name}: {details}{hint}", file=sys.stderr)

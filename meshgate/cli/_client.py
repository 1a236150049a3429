"""What the person-facing commands share: a channel to a gateway and readable gRPC errors."""

from __future__ import annotations

import argparse
import sys

import grpc

__all__ = ["add_gateway_arg", "channel", "print_rpc_error"]


def add_gateway_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-g", "--gateway", required=True, metavar="HOST:PORT", help="the gateway to talk to")


def channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.enable_retries", 1)],
    )


def print_rpc_error(exc: grpc.aio.AioRpcError, target: str) -> None:
    code = exc.code()
    name = code.name if code is not None else "UNKNOWN"
    hint = ""
    if code is grpc.StatusCode.UNAVAILABLE:
        hint = f" (is a gateway running at {target}?)"
    print(f"error: {name}: {exc.details()}{hint}", file=sys.stderr)

"""The client token of the person-facing commands: ``--token`` or ``$MESHGATE_TOKEN``, sent on every call."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import grpc

__all__ = ["TOKEN_ENV", "add_token_arg", "bearer_interceptors", "client_token"]

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


class _Bearer:
    """Adds ``authorization: Bearer <token>`` to a call (gRPC's call credentials need TLS; this does not)."""

    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<hidden>)"

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add("authorization", self._value)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# One class per call kind: a channel files an interceptor under the first kind it is an instance of.
class _UnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _UnaryStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _StreamUnary(_Bearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(self._with_token(details), requests)


class _StreamStream(_Bearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(self._with_token(details), requests)


def bearer_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that send ``token`` on every kind of call of a channel."""
    return [kind(token) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]

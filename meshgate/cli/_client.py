"""What the person-facing commands share: a channel to a gateway and readable gRPC errors.

gRPC and the TLS code are imported when a channel is opened or an error printed, not when the
parser is built; a plaintext channel does not import the certificate code at all.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from meshgate.cli._token import add_token_arg

if TYPE_CHECKING:
    import grpc

__all__ = ["add_gateway_arg", "channel", "print_rpc_error"]

# TLS options and the variables that give their defaults.
_TLS_ENV = {
    "ca": "MESHGATE_CA",
    "cert": "MESHGATE_CERT",
    "cert_key": "MESHGATE_KEY",
    "server_name": "MESHGATE_SERVER_NAME",
}


def _gateway_address(value: str) -> str:
    # gRPC would look a bare "7401" up as a host name and fail on DNS; say what is meant instead.
    if value.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is a port only: give HOST:PORT, e.g. 127.0.0.1:{value.strip()}")
    return value


def add_gateway_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-g", "--gateway", required=True, type=_gateway_address, metavar="HOST:PORT", help="the gateway to talk to"
    )
    add_token_arg(p)
    tls = p.add_argument_group("TLS (plaintext unless one of these is given)")
    tls.add_argument("--ca", metavar="FILE", help="CA certificate(s) that signed the gateway's (env MESHGATE_CA)")
    tls.add_argument("--cert", metavar="FILE", help="client certificate of the mesh CA (env MESHGATE_CERT)")
    # Not --key: `publish --key` is the ordering key.
    tls.add_argument("--cert-key", metavar="FILE", help="the client certificate's private key (env MESHGATE_KEY)")
    tls.add_argument(
        "--server-name",
        metavar="NAME",
        help="the name the gateway's certificate must carry, instead of the host dialled (env MESHGATE_SERVER_NAME)",
    )


def _tls_option(args: argparse.Namespace | None, name: str) -> str | None:
    value = getattr(args, name, None) if args is not None else None
    return value or os.environ.get(_TLS_ENV[name]) or None


def channel(target: str, args: argparse.Namespace | None = None, *, token: str | None = None) -> grpc.aio.Channel:
    """A channel to the gateway: TLS when ``args`` (or the MESHGATE_* variables) name TLS files;
    ``token`` is sent on every call."""
    import grpc.aio

    from meshgate.cli._bearer import bearer_interceptors

    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.enable_retries", 1)]
    interceptors = bearer_interceptors(token) if token else None
    ca, cert, key = (_tls_option(args, n) for n in ("ca", "cert", "cert_key"))
    if not (ca or cert or key):
        # meshgate.tls.open_channel(target, None, ...) without importing the certificate code.
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    if bool(cert) != bool(key):
        raise SystemExit("error: --cert and --cert-key go together (or MESHGATE_CERT and MESHGATE_KEY)")
    from meshgate.tls import ClientTls, TlsError, TlsFiles, open_channel

    tls = ClientTls(
        TlsFiles(ca=Path(ca) if ca else None, cert=Path(cert) if cert else None, key=Path(key) if key else None)
    )
    try:
        return open_channel(
            target, tls, target_name=_tls_option(args, "server_name"), options=options, interceptors=interceptors
        )
    except TlsError as exc:
        raise SystemExit(f"error: {exc}") from None


def print_rpc_error(exc: grpc.aio.AioRpcError, target: str) -> None:
    import grpc

    code = exc.code()
    name = code.name if code is not None else "UNKNOWN"
    details = exc.details() or ""
    hint = ""
    if code is grpc.StatusCode.UNAVAILABLE:
        hint = f" (is a gateway running at {target}? one with TLS on needs --ca, --cert and --cert-key)"
    elif code is grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in details:
        # gRPC's own words: name the gateway setting behind them.
        hint = " (the gateway's settings.limits.max_message_bytes; send smaller batches)"
    elif code is grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata size exceeds" in details:
        hint = " (the gateway's settings.limits.max_metadata_bytes)"
    print(f"error: {name}: {details}{hint}", file=sys.stderr)

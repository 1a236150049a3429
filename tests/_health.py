"""The gRPC health service's stub, typed for the tests.

types-grpcio-health-checking declares ``HealthStub`` without its methods; these protocols say
what the generated stub has.
"""

from __future__ import annotations

from typing import Protocol, cast

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

__all__ = ["AsyncHealth", "Health", "async_health_stub", "health_stub"]


class AsyncHealth(Protocol):
    Check: grpc.aio.UnaryUnaryMultiCallable[HealthCheckRequest, HealthCheckResponse]
    Watch: grpc.aio.UnaryStreamMultiCallable[HealthCheckRequest, HealthCheckResponse]


class Health(Protocol):
    Check: grpc.UnaryUnaryMultiCallable[HealthCheckRequest, HealthCheckResponse]
    Watch: grpc.UnaryStreamMultiCallable[HealthCheckRequest, HealthCheckResponse]


def async_health_stub(channel: grpc.aio.Channel) -> AsyncHealth:
    return cast("AsyncHealth", health_pb2_grpc.HealthStub(channel))


def health_stub(channel: grpc.Channel) -> Health:
    return cast("Health", health_pb2_grpc.HealthStub(channel))

"""The regional gateway: gRPC servers (client API, replication ingress, admin), admission, lifecycle."""

from meshgate.gateway._admission import Admission
from meshgate.gateway._auth import Authenticator, Client
from meshgate.gateway._budget import InflightBudget
from meshgate.gateway._decode import MalformedRequestInterceptor
from meshgate.gateway._http import HEALTHZ_PATH, READYZ_PATH, HttpEndpoint, HttpEndpointState
from meshgate.gateway._ids import uuid7
from meshgate.gateway._limits import ClientRates, ClientStreams
from meshgate.gateway._replicator_process import ReplicatorProcess, ReplicatorProcessState
from meshgate.gateway._server import DEFAULT_LISTEN, Gateway, GatewayState
from meshgate.gateway._workers import WorkerPool, WorkerPoolState

__all__ = [
    "DEFAULT_LISTEN",
    "HEALTHZ_PATH",
    "READYZ_PATH",
    "Admission",
    "Authenticator",
    "Client",
    "ClientRates",
    "ClientStreams",
    "Gateway",
    "GatewayState",
    "HttpEndpoint",
    "HttpEndpointState",
    "InflightBudget",
    "MalformedRequestInterceptor",
    "ReplicatorProcess",
    "ReplicatorProcessState",
    "WorkerPool",
    "WorkerPoolState",
    "uuid7",
]

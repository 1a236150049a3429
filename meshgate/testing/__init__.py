"""Helpers for tests and benchmarks that run real gateways (not used by the gateway itself)."""

from meshgate.testing._freeze import all_threads_stopped, freeze
from meshgate.testing._serve import ChildProcess, ServeProcess
from meshgate.testing._tansu import Tansu, TansuError, TansuState, find_tansu

__all__ = [
    "ChildProcess",
    "ServeProcess",
    "Tansu",
    "TansuError",
    "TansuState",
    "all_threads_stopped",
    "find_tansu",
    "freeze",
]

"""Helpers for tests and benchmarks that run real gateways (not used by the gateway itself)."""

from meshgate.testing._serve import ServeProcess

__all__ = ["ServeProcess"]

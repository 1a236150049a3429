"""Meshgate: a multi-region event mesh gateway.

The import package gathers the architecture's top-level folders (``gateway/``, ``router/``,
``replicator/``, ``config/``, ``brokers/`` and the generated API in ``proto/meshgate/v1``)
under one name: ``meshgate.gateway``, ``meshgate.router``, ..., ``meshgate.v1``.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"

"""What a gateway reports about itself beyond its answers: OpenTelemetry traces of an event's path.

A layer of its own between the broker adapters and the replicator, because both the replicator
(its ``send`` spans) and the gateway (``publish`` and ``process``) trace events and the
replicator may not import the gateway. The folder also holds the promtool unit tests of the
alert rules (``prometheus/``); the rules and the Grafana dashboard themselves live in the Helm
chart (``helm/meshgate/files/``: Helm reads no file outside its chart, and there is one copy).
The metrics stay beside what they measure (``gateway/_metrics.py``, ``replicator/_metrics.py``):
each reads the objects of its own layer.
"""

from __future__ import annotations

from meshgate.observability._tracing import BatchTrace, Tracing, tracing_configured

__all__ = ["BatchTrace", "Tracing", "tracing_configured"]
